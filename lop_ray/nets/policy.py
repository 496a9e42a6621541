"""PPO's networks (spec/networks.md, RL) for S seeds at once: a Gaussian policy and a value network.

Both are obs → 256 → 256 → out ReLU MLPs with *every* layer (outputs too) lecun-uniform,
U(±√(3/fan_in)), and biases 0; the policy's log-std is a state-independent parameter initialised to
0 (std 1). Weights are (S, out, in), inputs (S, batch, in); one seed is S = 1. Seed s draws its
layers from `generators[s]` (the policy's, then the value network's), so its slice is a function of
its seed alone, and nothing in a pass mixes seeds: each seed's numbers are those it gets alone
(batched products and the per-seed transcendentals are seed-invariant on the CPU,
tests/test_ppo_seed_batched.py). Each hidden layer is a unit group, so continual backprop and ReDo
act on them as on any other network, and `forward` returns the hidden activations they and the
metrics read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from lop_ray.nets.activations import crelu, make_activation
from lop_ray.nets.layer_norm import SeedLayerNorm
from lop_ray.nets.seed_elementwise import per_seed_elementwise
from lop_ray.nets.seed_linear import SeedLinear, seed_linear
from lop_ray.nets.units import (
    SeedView,
    UnitGroup,
    UnitNetwork,
    WeightLayer,
    linear_stack_groups,
    norm_entries,
)

Generators = Sequence[torch.Generator | None] | torch.Generator | None


def _as_generators(generators: Generators) -> list[torch.Generator | None]:
    if generators is None or isinstance(generators, torch.Generator):
        return [generators]
    return list(generators)


class LecunMLP(UnitNetwork):
    """An MLP of S seeds whose layers are all lecun-uniform with zero biases; `forward(x)` with x
    (S, batch, in) → (output (S, batch, out), hidden activations (S, batch, width) per layer).

    `layer_norm` normalises every hidden pre-activation (`SeedLayerNorm`, Lyle et al. 2024); `crelu`
    makes every hidden unit a CReLU (Abbas et al. 2023), the next layer's fan-in doubled and
    initialised for it. The runners' numpy copy computes both (`lop_ray.rl.acting`)."""

    def __init__(
        self,
        sizes: Sequence[int],
        activation: str = "relu",
        generators: Generators = None,
        layer_norm: bool = False,
        crelu: bool = False,
    ) -> None:
        super().__init__()
        if len(sizes) < 2:
            raise ValueError(f"an MLP needs at least input and output sizes, got {list(sizes)}")
        if crelu and activation != "relu":
            raise ValueError(f"crelu is built of ReLUs: activation must be relu, got {activation!r}")
        generators = _as_generators(generators)
        self.num_seeds = len(generators)
        self.activation_name = activation
        self.activation = make_activation(activation)
        self.crelu = crelu
        fans_in = [sizes[0], *(2 * b if crelu else b for b in sizes[1:-1])]
        shapes = [torch.Size((b, a)) for a, b in zip(fans_in, sizes[1:], strict=True)]
        drawn = [[_lecun_draw(shape, g) for shape in shapes] for g in generators]
        self.layers = nn.ModuleList(
            SeedLinear(torch.stack([d[i][0] for d in drawn]), torch.stack([d[i][1] for d in drawn]))
            for i in range(len(shapes))
        )
        self.norms = (
            nn.ModuleList(SeedLayerNorm(b, self.num_seeds) for b in sizes[1:-1]) if layer_norm else None
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        activations, layer_inputs = [], []
        for index, layer in enumerate(self.layers[:-1]):
            layer_inputs.append(x)
            z = layer(x)
            if self.norms is not None:
                z = self.norms[index](z)
            x = crelu(z) if self.crelu else self.activation(z)
            activations.append(x)
        output = self.layers[-1]
        return self._with_head_correction(
            seed_linear(x, output.weight, output.bias), [*layer_inputs, x]
        ), activations

    def injectable_layers(self) -> int:
        return 1 if self.norms is not None or self.crelu else len(self.layers)

    def head_activation(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return self.activation

    def unit_groups(self) -> list[UnitGroup]:
        return linear_stack_groups(self.layers, self.activation_name, self.norms, self.crelu)

    def parameter_views(self) -> list[SeedView]:
        return [SeedView.whole(p) for p in self.parameters()]

    def weight_layers(self) -> list[WeightLayer]:
        """Each linear layer with the constructor's lecun-uniform draw."""
        last = len(self.layers) - 1
        return [
            WeightLayer(
                f"hidden{i}" if i < last else "output",
                SeedView.whole(layer.weight),
                SeedView.whole(layer.bias),
                lambda g, shape=layer.weight.shape[1:]: _lecun_draw(shape, g),
                norm_entries(self.norms[i], self.num_seeds) if self.norms is not None and i < last else (),
            )
            for i, layer in enumerate(self.layers)
        ]

    def weight_matrices(self) -> list[torch.Tensor]:
        """Each layer's (S, out, in) weights."""
        return [layer.weight for layer in self.layers]


def _lecun_draw(shape: torch.Size, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's (out, in) weights U(±√(3/fan_in)) and zero bias, drawn from `generator`."""
    bound = math.sqrt(3.0 / shape[1])
    return torch.empty(shape).uniform_(-bound, bound, generator=generator), torch.zeros(shape[0])


class GaussianPolicy(LecunMLP):
    """Mean from the MLP, std = exp(log_std) shared by every state of a seed (log_std (S, actions));
    actions are not squashed (MuJoCo clamps the control; the control cost sees the raw action, as in
    the original)."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden: Sequence[int] = (256, 256),
        activation: str = "relu",
        generators: Generators = None,
        **options: bool,
    ) -> None:
        """`options`: `layer_norm`, `crelu` (see `LecunMLP`)."""
        super().__init__([obs_dim, *hidden, action_dim], activation, generators, **options)
        self.log_std = nn.Parameter(torch.zeros(self.num_seeds, action_dim))

    def log_prob(self, mean: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """log π(a|s) summed over action dimensions: mean, actions (S, batch, A) → (S, batch)."""
        log_std = self.log_std.unsqueeze(1).expand_as(mean)
        z = (actions - mean) * per_seed_elementwise(torch.exp, -log_std)
        return (-0.5 * z.square() - log_std - 0.5 * math.log(2 * math.pi)).sum(dim=-1)

    def entropy(self) -> torch.Tensor:
        """(S,): each seed's Gaussian entropy (state-independent), summed over action dimensions."""
        return (self.log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(dim=-1)


class ValueNetwork(LecunMLP):
    def __init__(
        self,
        obs_dim: int,
        hidden: Sequence[int] = (256, 256),
        activation: str = "relu",
        generators: Generators = None,
        **options: bool,
    ) -> None:
        super().__init__([obs_dim, *hidden, 1], activation, generators, **options)

    def value(self, obs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(S, batch, obs) → values (S, batch), hidden activations."""
        out, activations = self(obs)
        return out.squeeze(-1), activations
