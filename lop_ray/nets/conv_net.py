"""Continual ImageNet's networks (spec/networks.md, problems.md §3) for S seeds at once: the small
conv net and the linear baseline, PyTorch's default initialisation drawn from each seed's generator.

Conv net: conv 3→32 5×5 → ReLU → maxpool 2 → conv 32→64 3×3 → ReLU → maxpool 2 → conv 64→128 3×3 →
ReLU → maxpool 2 → flatten (128·2·2 = 512) → fc 128 → ReLU → fc 128 → ReLU → fc 2. Its five hidden
layers are unit groups: conv→conv twice, conv→linear (each channel owns the 2·2 = 4 consecutive
columns it is flattened into) and linear→linear twice. The features CBP and the metrics read are taken
after ReLU and max-pool, as in the original.

Layout. A conv layer of S seeds is one grouped convolution's parameters, weight (S·out, in, k, k) and
bias (S·out); a linear layer is weight (S, out, in) and bias (S, out), applied with `torch.baddbmm`.
Inputs are (S, batch, 3, 32, 32), each seed its own images; logits (S, batch, outputs); every hidden
activation is seed-first, (S, batch, C, H, W) or (S, batch, width). The convolutions run either as
one grouped call (`groups=S`) or as S calls on the seeds' slices of the same parameters: measured on
a CPU (bench/seed_batching_imagenet.py, the report of issue 14) the loop is faster there, and it is
bit-identical to a seed alone, while a grouped call is one launch instead of S on a GPU. `grouped`
chooses; None (the default) takes the grouped call on CUDA and the loop elsewhere.

Seed s starts from exactly what the single-seed net drew from its generator: the same uniform draws,
layer by layer, weight then bias, in forward order.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from lop_ray.nets.activations import crelu, crelu_units
from lop_ray.nets.layer_norm import SeedChannelNorm, SeedLayerNorm
from lop_ray.nets.seed_linear import SeedLinear
from lop_ray.nets.units import SeedView, UnitGroup, UnitNetwork, WeightLayer, norm_entries

IMAGE_SHAPE = (3, 32, 32)
CONV_SHAPES = ((32, 3, 5, 5), (64, 32, 3, 3), (128, 64, 3, 3))  # (out, in, k, k)
POSITIONS_AFTER_CONV = 2 * 2  # 32 →conv5→ 28 →pool→ 14 →conv3→ 12 →pool→ 6 →conv3→ 4 →pool→ 2
HIDDEN = 128


def default_init(shape: tuple[int, ...], generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch's default init of one seed's linear/conv layer of weight `shape`: U(±1/√fan_in) for
    the weight, then the bias, drawn from `generator` (PyTorch's own `reset_parameters` can only draw
    from the global RNG). The order of draws is the seed's identity: keep it."""
    bound = 1.0 / math.sqrt(math.prod(shape[1:]))
    weight = torch.empty(shape).uniform_(-bound, bound, generator=generator)
    bias = torch.empty(shape[0]).uniform_(-bound, bound, generator=generator)
    return weight, bias


class SeedConv2d(nn.Module):
    """S conv layers (no padding, stride 1) as a grouped convolution's weight (S·out, in, k, k) and
    bias (S·out): seed s owns the s-th block of `out` output channels."""

    def __init__(self, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor]) -> None:
        super().__init__()
        self.seeds = len(weights)
        self.out_channels = weights[0].shape[0]
        self.weight = nn.Parameter(torch.cat(list(weights)))
        self.bias = nn.Parameter(torch.cat(list(biases)))

    def views(self) -> list[SeedView]:
        return [SeedView.split(self.weight, self.seeds), SeedView.split(self.bias, self.seeds)]


def _check_generators(generators: Sequence[torch.Generator]) -> int:
    if len(generators) == 0:
        raise ValueError("a network needs one generator per seed, got none")
    return len(generators)


def _default_layers(names: Sequence[str], layers: Sequence[nn.Module]) -> list[WeightLayer]:
    """Layers initialised by `default_init`, each with its draw (for layer and full resets)."""
    listed = []
    for name, layer in zip(names, layers, strict=True):
        weight, bias = layer.views()
        shape = weight.shape[1:]
        listed.append(WeightLayer(name, weight, bias, lambda g, shape=shape: default_init(shape, g)))
    return listed


class ConvNet(UnitNetwork):
    """The paper's conv net for 32×32 RGB inputs, S = len(generators) seeds; `forward` returns
    (logits, hidden features).

    Two options of the methods since the paper (docs/methods.md): `layer_norm` normalises every
    hidden pre-activation (a conv layer's per example over C·H·W with a gain and bias per channel,
    `SeedChannelNorm`; fc1 and fc2 over their units, `SeedLayerNorm`: Lyle et al. 2024), `crelu`
    makes every hidden unit (a channel, a linear unit) a CReLU (Abbas et al. 2023), doubling the next
    layer's inputs. Both keep PyTorch's default initialisation, over the wider fan-in for CReLU."""

    def __init__(
        self,
        num_outputs: int = 2,
        *,
        generators: Sequence[torch.Generator],
        layer_norm: bool = False,
        crelu: bool = False,
    ) -> None:
        super().__init__()
        self.seeds = _check_generators(generators)
        self.grouped: bool | None = None  # None: a grouped call on CUDA, a loop over seeds elsewhere
        self.positions_after_conv = POSITIONS_AFTER_CONV
        self.crelu = crelu
        self.layer_norm = layer_norm
        wide = 2 if crelu else 1  # a CReLU unit feeds two inputs of the next layer
        conv_shapes = [CONV_SHAPES[0], *((o, i * wide, k, k2) for o, i, k, k2 in CONV_SHAPES[1:])]
        fc_shapes = (
            (HIDDEN, CONV_SHAPES[-1][0] * wide * POSITIONS_AFTER_CONV),
            (HIDDEN, HIDDEN * wide),
            (num_outputs, HIDDEN * wide),
        )
        # one seed's draws: conv1, conv2, conv3, fc1, fc2, fc3 — so draw all six per generator first
        drawn = [[default_init(shape, g) for shape in (*conv_shapes, *fc_shapes)] for g in generators]

        def layer(i):
            return [seed[i][0] for seed in drawn], [seed[i][1] for seed in drawn]

        self.conv1, self.conv2, self.conv3 = (SeedConv2d(*layer(i)) for i in range(3))
        self.fc1, self.fc2, self.fc3 = (SeedLinear(*map(torch.stack, layer(i))) for i in range(3, 6))
        self.conv_norms = self.fc_norms = None
        if layer_norm:
            self.conv_norms = nn.ModuleList(SeedChannelNorm(shape[0], self.seeds) for shape in CONV_SHAPES)
            self.fc_norms = nn.ModuleList(SeedLayerNorm(HIDDEN, self.seeds) for _ in range(2))

    @property
    def output(self) -> SeedLinear:
        return self.fc3

    @property
    def convs(self) -> tuple[SeedConv2d, ...]:
        return (self.conv1, self.conv2, self.conv3)

    def weights(self) -> list[SeedView]:
        """The weight tensors (no biases), seed first: what the weight-magnitude metric averages."""
        return [layer.views()[0] for layer in (*self.convs, self.fc1, self.fc2, self.fc3)]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        grouped = self.grouped if self.grouped is not None else x.device.type == "cuda"
        features = self._grouped_convs(x) if grouped else self._convs_seed_by_seed(x)
        # channel-major flatten per seed: channel c owns columns 4c … 4c+3 (a view of either layout)
        flat = features[-1].reshape(self.seeds, x.shape[1], -1)
        h4 = self._hidden(self.fc1(flat), 0)
        h5 = self._hidden(self.fc2(h4), 1)
        return self._with_head_correction(self.fc3(h5), [flat, h4, h5]), [*features, h4, h5]

    def _hidden(self, z: torch.Tensor, index: int) -> torch.Tensor:
        """A fully connected layer's (S, batch, units) pre-activations → its features."""
        if self.fc_norms is not None:
            z = self.fc_norms[index](z)
        return crelu(z) if self.crelu else F.relu(z)

    def _conv_features(self, z: torch.Tensor, index: int, seed: int | None) -> torch.Tensor:
        """A conv layer's pre-activations → normalised, activated, pooled: one seed's (batch, C, H, W)
        (`seed`), or every seed's as (batch, S·C, H, W) (None)."""
        if self.conv_norms is not None:
            norm = self.conv_norms[index]
            z = norm.grouped(z) if seed is None else norm.of_seed(z, seed)
        if self.crelu:
            if seed is None:  # interleave each seed's channels apart from the others'
                batch, _, height, width = z.shape
                z = crelu(z.view(batch, self.seeds, -1, height, width), dim=2).flatten(1, 2)
            else:
                z = crelu(z, dim=1)
        else:
            z = F.relu(z)
        return F.max_pool2d(z, 2)

    def injectable_layers(self) -> int:
        """fc1, fc2 and the output, the fully connected head behind the convolutions; the output
        layer alone behind a norm or CReLU."""
        return 1 if self.layer_norm or self.crelu else 3

    def _grouped_convs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """One call per layer on (batch, S·C, H, W); each feature seed-first as a view of it."""
        seeds, batch = x.shape[:2]
        h = x.transpose(0, 1).reshape(batch, seeds * x.shape[2], *x.shape[3:])
        features = []
        for index, conv in enumerate(self.convs):
            h = self._conv_features(F.conv2d(h, conv.weight, conv.bias, groups=seeds), index, None)
            features.append(h.view(batch, seeds, -1, *h.shape[2:]).transpose(0, 1))
        return features

    def _convs_seed_by_seed(self, x: torch.Tensor) -> list[torch.Tensor]:
        """S calls per layer on the seeds' slices of the parameters (unbound, so that the backward
        pass stacks the S gradients once instead of summing S zero-padded copies)."""
        per_seed = list(x.unbind(0))
        features = []
        for index, conv in enumerate(self.convs):
            weights = conv.weight.view(self.seeds, conv.out_channels, *conv.weight.shape[1:]).unbind(0)
            biases = conv.bias.view(self.seeds, conv.out_channels).unbind(0)
            per_seed = [
                self._conv_features(F.conv2d(h, w, b), index, seed)
                for seed, (h, w, b) in enumerate(zip(per_seed, weights, biases, strict=True))
            ]
            # one seed: a view, not a copy of its features
            features.append(per_seed[0].unsqueeze(0) if self.seeds == 1 else torch.stack(per_seed))
        return features

    def unit_groups(self) -> list[UnitGroup]:
        chain = (*self.convs, self.fc1, self.fc2, self.fc3)
        names = ("conv1", "conv2", "conv3", "fc1", "fc2")
        norms = self._norms()
        wide = 2 if self.crelu else 1
        groups = []
        for index, (name, layer, following) in enumerate(zip(names, chain, chain[1:], strict=False)):
            (weight, bias), (next_weight, next_bias) = layer.views(), following.views()
            groups.append(
                UnitGroup(
                    name,
                    weight,
                    next_weight,
                    "relu",
                    incoming_bias=bias,
                    outgoing_bias=next_bias,
                    norm=norm_entries(norms[index], self.seeds) if norms else (),
                    fan_out_per_unit=wide * (self.positions_after_conv if name == "conv3" else 1),
                    # CReLU: a unit's two outputs together (activations are seed-first already)
                    **({"seed_activations": crelu_units} if self.crelu else {}),
                )
            )
        return groups

    def _norms(self) -> list[nn.Module]:
        """The norm of each hidden layer's output, in forward order (none without `layer_norm`)."""
        return [*self.conv_norms, *self.fc_norms] if self.layer_norm else []

    def parameter_views(self) -> list[SeedView]:
        views = [view for layer in (*self.convs, self.fc1, self.fc2, self.fc3) for view in layer.views()]
        return views + [SeedView.whole(p) for norm in self._norms() for p in (norm.weight, norm.bias)]

    def weight_layers(self) -> list[WeightLayer]:
        layers = (*self.convs, self.fc1, self.fc2, self.fc3)
        listed = _default_layers(("conv1", "conv2", "conv3", "fc1", "fc2", "output"), layers)
        for index, norm in enumerate(self._norms()):  # a reset layer's norm restarts with it
            listed[index] = dataclasses.replace(listed[index], norm=norm_entries(norm, self.seeds))
        return listed


class LinearNet(UnitNetwork):
    """The linear baseline, 3072 → 2 on the raw pixels, S seeds: no hidden units, nothing for CBP."""

    def __init__(self, num_outputs: int = 2, *, generators: Sequence[torch.Generator]) -> None:
        super().__init__()
        self.seeds = _check_generators(generators)
        drawn = [default_init((num_outputs, math.prod(IMAGE_SHAPE)), g) for g in generators]
        self.fc = SeedLinear(torch.stack([w for w, _ in drawn]), torch.stack([b for _, b in drawn]))

    @property
    def output(self) -> SeedLinear:
        return self.fc

    def weights(self) -> list[SeedView]:
        return [self.fc.views()[0]]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        flat = x.reshape(*x.shape[:2], -1)
        return self._with_head_correction(self.fc(flat), [flat]), []

    def unit_groups(self) -> list[UnitGroup]:
        return []

    def parameter_views(self) -> list[SeedView]:
        return self.fc.views()

    def weight_layers(self) -> list[WeightLayer]:
        return _default_layers(("output",), (self.fc,))


NETWORKS: dict[str, type[UnitNetwork]] = {"conv_net": ConvNet, "linear": LinearNet}
