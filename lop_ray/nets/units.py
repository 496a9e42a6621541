"""The unit-group contract: what one generic generate-and-test needs to know about a network.

A *unit* is a hidden feature (a row of a linear layer, an output channel of a conv layer). CBP and
ReDo replace units; to do so they touch the unit's incoming weights and bias, the matching entries of
an optional norm layer, and the unit's outgoing weights in the next weight layer. Every network in
`lop_ray.nets` lists its hidden layers as `UnitGroup`s in forward order and returns, from the same
forward pass that computes its output, one activation tensor per group. Nothing else about the
network's structure is visible to the algorithms, so one CBP serves MLPs, conv nets and ResNets.

Every tensor of a group is seen with a leading *seed* axis: a network that trains S seeds at once
(weights (S, out, in), or a grouped convolution's (S·out, in, k, k)) and a network of one seed
(PyTorch's own modules, S = 1) present the same shapes, so the interventions have one
implementation. The views share storage with the parameters, so writing through them writes the
network; `SeedView` keeps the parameter itself too, because an optimizer's state is keyed by it.

Shapes, for S seeds and a group of `width` units:
- incoming weight (S, width, *fan-in), incoming bias (S, width);
- outgoing weight (S, next, width · fan_out_per_unit, *kernel): a unit owns `fan_out_per_unit`
  consecutive columns (H·W when a conv layer is flattened into a linear one; 1 otherwise);
- per-unit norm entries (S, width), each with the value a fresh unit gets;
- activations (S, batch, width, *positions) once passed through `seed_activations`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass(frozen=True)
class SeedView:
    """A parameter or buffer seen as `shape`, whose first axis is the seed axis."""

    tensor: torch.Tensor
    shape: tuple[int, ...]

    @classmethod
    def split(cls, tensor: torch.Tensor, seeds: int = 1) -> SeedView:
        """The leading axis holds S consecutive blocks, one per seed (a module of one seed: S = 1;
        a grouped convolution's weight (S·out, in, k, k); a batch norm over S·C channels)."""
        if tensor.shape[0] % seeds:
            raise ValueError(f"leading axis of {tuple(tensor.shape)} does not split into {seeds} seeds")
        return cls(tensor, (seeds, tensor.shape[0] // seeds, *tensor.shape[1:]))

    @classmethod
    def whole(cls, tensor: torch.Tensor) -> SeedView:
        """The tensor already has the seed axis first ((S, out, in) weights)."""
        return cls(tensor, tuple(tensor.shape))

    def of(self, like: torch.Tensor | None = None) -> torch.Tensor:
        """The tensor (or `like`, a tensor of its shape such as an optimizer moment) as `shape`,
        sharing storage, outside autograd."""
        return (self.tensor if like is None else like).detach().view(self.shape)

    @property
    def seeds(self) -> int:
        return self.shape[0]


@dataclass(frozen=True)
class NormEntry:
    """A per-unit entry of a norm layer and the value a fresh unit gets (BN's γ = 1, β = 0,
    running mean 0, running variance 1)."""

    view: SeedView
    fresh: float


def _add_seed_axis(h: torch.Tensor) -> torch.Tensor:
    return h.unsqueeze(0)


def _already_seed_first(h: torch.Tensor) -> torch.Tensor:
    return h


@dataclass(frozen=True)
class UnitGroup:
    """One replaceable hidden layer, for S seeds (see the module docstring for the shapes).

    `activation` names the nonlinearity whose gain sets the initialisation bound of new units.
    `seed_activations` turns the network's activation of this group into (S, batch, width, …).
    """

    name: str
    incoming: SeedView
    outgoing: SeedView
    activation: str
    incoming_bias: SeedView | None = None
    outgoing_bias: SeedView | None = None
    norm: tuple[NormEntry, ...] = ()
    fan_out_per_unit: int = 1
    seed_activations: Callable[[torch.Tensor], torch.Tensor] = field(default=_already_seed_first)

    @classmethod
    def of_modules(
        cls,
        name: str,
        incoming: nn.Linear | nn.Conv2d,
        outgoing: nn.Linear | nn.Conv2d,
        activation: str,
        norm: nn.Module | None = None,
        fan_out_per_unit: int = 1,
    ) -> UnitGroup:
        """The group of one seed's PyTorch modules (S = 1); activations (batch, width, …)."""
        return cls(
            name,
            SeedView.split(incoming.weight),
            SeedView.split(outgoing.weight),
            activation,
            incoming_bias=None if incoming.bias is None else SeedView.split(incoming.bias),
            outgoing_bias=None if outgoing.bias is None else SeedView.split(outgoing.bias),
            norm=norm_entries(norm) if norm is not None else (),
            fan_out_per_unit=fan_out_per_unit,
            seed_activations=_add_seed_axis,
        )

    @classmethod
    def of_seed_layers(
        cls, name: str, incoming: nn.Module, outgoing: nn.Module, activation: str, **options
    ) -> UnitGroup:
        """The group between two layers whose weight and bias are already seed-first ((S, out, in)
        and (S, out): `SeedLinear`); `options` are the other fields (norm, fan_out_per_unit, …)."""
        return cls(
            name,
            SeedView.whole(incoming.weight),
            SeedView.whole(outgoing.weight),
            activation,
            incoming_bias=SeedView.whole(incoming.bias),
            outgoing_bias=SeedView.whole(outgoing.bias),
            **options,
        )

    @property
    def seeds(self) -> int:
        return self.incoming.shape[0]

    @property
    def width(self) -> int:
        return self.incoming.shape[1]

    @property
    def fan_in(self) -> int:
        """Incoming weights of one unit (in·k·k for a conv unit)."""
        size = 1
        for n in self.incoming.shape[2:]:
            size *= n
        return size

    @property
    def fan_out(self) -> int:
        """Fan-out of one unit as `xavier` initialisation counts it (that of the incoming layer)."""
        kernel = 1
        for n in self.incoming.shape[3:]:
            kernel *= n
        return self.width * kernel

    def outgoing_by_unit(self, like: torch.Tensor | None = None) -> torch.Tensor:
        """The outgoing weight (or `like`, its optimizer state) as (S, next, width, columns·kernel):
        axis 2 is the unit, the last axis everything one unit feeds in one output."""
        weight = self.outgoing.of(like)
        return weight.reshape(weight.shape[0], weight.shape[1], self.width, -1)

    def incoming_magnitude(self) -> torch.Tensor:
        """(S, width): mean |incoming weight| of each unit."""
        weight = self.incoming.of()
        return weight.abs().reshape(weight.shape[0], self.width, -1).mean(dim=2)

    def outgoing_magnitude(self) -> torch.Tensor:
        """(S, width): mean |outgoing weight| of each unit, over every output and column it feeds."""
        weight = self.outgoing.of().abs()
        if weight.dim() == 3 and self.fan_out_per_unit == 1:  # linear → linear, the hot path
            return weight.mean(dim=1)
        seeds, columns = weight.shape[0], weight.shape[2]
        per_column = weight.transpose(1, 2).reshape(seeds, columns, -1).mean(dim=2)
        return per_column.reshape(seeds, self.width, self.fan_out_per_unit).mean(dim=2)


@dataclass(frozen=True)
class WeightLayer:
    """One weight layer of a network, with the draw that initialised it, so that a reset returns it
    to its initial *distribution* (layer and full resets, Nikishin et al. 2022) without knowing how
    each network initialises.

    `weight` (S, …) and `bias` (S, …) are seed-first views of the layer's parameters; `draw(g)`
    returns one seed's fresh (weight, bias) in those per-seed shapes, drawn on the CPU from `g` as the
    network's constructor draws them; `norm` lists the entries of a norm layer that belongs to this
    layer's output and the values a fresh layer gets.
    """

    name: str
    weight: SeedView
    bias: SeedView | None
    draw: Callable[[torch.Generator | None], tuple[torch.Tensor, torch.Tensor | None]]
    norm: tuple[NormEntry, ...] = ()


def norm_entries(norm: nn.Module, seeds: int = 1) -> tuple[NormEntry, ...]:
    """The per-unit entries of a batch norm over S·width channels (or of any norm that lists its
    own: `unit_entries()` → {tensor name: fresh value}). An entry is (S·width,), S blocks of
    consecutive channels, or already (S, width)."""
    listed = getattr(norm, "unit_entries", None)
    if listed is not None:
        fresh = listed()
    else:
        fresh = {}
        if getattr(norm, "affine", False):
            fresh.update(weight=1.0, bias=0.0)
        if getattr(norm, "track_running_stats", False):
            fresh.update(running_mean=0.0, running_var=1.0)
    entries = []
    for name, value in fresh.items():
        tensor = getattr(norm, name)
        view = SeedView.whole(tensor) if tensor.dim() == 2 else SeedView.split(tensor, seeds)
        entries.append(NormEntry(view, value))
    return tuple(entries)


class UnitNetwork(nn.Module, abc.ABC):
    """A network whose `forward(x)` returns `(output, activations)`, one activation per unit group.

    Every network ends in linear layers of the seed axis ((S, out, in) weights); the trailing ones
    that form a plain stack (one elementwise activation between them, no norm, no dropout) are a
    *head* that plasticity injection (`lop_ray.algos.injection`) may freeze and add a fresh one to.
    `head_correction`, when set, maps the inputs of those trailing layers to a term the forward pass
    adds to its output (`_with_head_correction`)."""

    head_correction: Callable[[Sequence[torch.Tensor]], torch.Tensor] | None = None

    def injectable_layers(self) -> int:
        """How many trailing weight layers form a plain linear stack (at least the output layer)."""
        return 1

    def head_activation(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The activation between the layers of that stack."""
        return torch.relu

    def _with_head_correction(
        self, output: torch.Tensor, head_inputs: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """`output` plus the head correction of the trailing layers' inputs (forward order), if any."""
        if self.head_correction is None:
            return output
        return output + self.head_correction(head_inputs)

    @abc.abstractmethod
    def unit_groups(self) -> list[UnitGroup]:
        """The hidden layers that CBP and ReDo may replace units of, in forward order."""

    def parameter_views(self) -> list[SeedView]:
        """Every parameter with its seed axis, in `parameters()` order (what shrink-and-perturb
        perturbs per seed). A network of one seed's modules: each parameter as S = 1."""
        return [SeedView.split(p) for p in self.parameters()]

    @abc.abstractmethod
    def weight_layers(self) -> list[WeightLayer]:
        """Every weight layer in forward order, the output layer last, each with its constructor's
        draw (what layer and full resets redraw, and Parseval regularises)."""


def linear_stack_groups(
    layers: Sequence[nn.Module],
    activation: str,
    norms: Sequence[nn.Module] | None = None,
    crelu: bool = False,
) -> list[UnitGroup]:
    """The hidden layers of a stack of seed-first linear layers (an MLP's), each with its norm's
    entries; a CReLU unit j feeds the next layer's columns 2j (its ReLU) and 2j + 1 (of −z)."""
    from lop_ray.nets.activations import crelu_units

    seeds = layers[0].weight.shape[0]
    return [
        UnitGroup.of_seed_layers(
            f"hidden{i}",
            layers[i],
            layers[i + 1],
            activation,
            norm=norm_entries(norms[i], seeds) if norms is not None else (),
            **({"fan_out_per_unit": 2, "seed_activations": crelu_units} if crelu else {}),
        )
        for i in range(len(layers) - 1)
    ]
