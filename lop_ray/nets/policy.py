"""PPO's networks (spec/networks.md, RL): a Gaussian policy and a value network.

Both are obs → 256 → 256 → out ReLU MLPs with *every* layer (outputs too) lecun-uniform,
U(±√(3/fan_in)), and biases 0; the policy's log-std is a state-independent parameter initialised to
0 (std 1). Each hidden layer is a unit group, so continual backprop and ReDo act on them as on any
other network, and `forward` returns the hidden activations they and the metrics read.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from lop_ray.nets.activations import make_activation
from lop_ray.nets.units import SeedView, UnitGroup, UnitNetwork, WeightLayer


class LecunMLP(UnitNetwork):
    """An MLP whose layers are all lecun-uniform with zero biases; `forward` → (output, hidden)."""

    def __init__(
        self, sizes: Sequence[int], activation: str = "relu", generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        if len(sizes) < 2:
            raise ValueError(f"an MLP needs at least input and output sizes, got {list(sizes)}")
        self.activation_name = activation
        self.activation = make_activation(activation)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        with torch.no_grad():
            for layer in self.layers:
                weight, bias = _lecun_draw(layer.weight.shape, generator)
                layer.weight.copy_(weight)
                layer.bias.copy_(bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        activations = []
        for layer in self.layers[:-1]:
            x = self.activation(F.linear(x, layer.weight, layer.bias))
            activations.append(x)
        out = self.layers[-1]
        return F.linear(x, out.weight, out.bias), activations

    def unit_groups(self) -> list[UnitGroup]:
        return [
            UnitGroup.of_modules(f"hidden{i}", self.layers[i], self.layers[i + 1], self.activation_name)
            for i in range(len(self.layers) - 1)
        ]

    def weight_layers(self) -> list[WeightLayer]:
        """Each linear layer (one seed: S = 1) with the constructor's lecun-uniform draw."""
        return [
            WeightLayer(
                f"hidden{i}" if i < len(self.layers) - 1 else "output",
                SeedView.split(layer.weight),
                SeedView.split(layer.bias),
                functools.partial(_lecun_draw, layer.weight.shape),
            )
            for i, layer in enumerate(self.layers)
        ]

    def weight_matrices(self) -> list[torch.Tensor]:
        return [layer.weight for layer in self.layers]


def _lecun_draw(shape: torch.Size, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's (out, in) weights U(±√(3/fan_in)) and zero bias, drawn from `generator`."""
    bound = math.sqrt(3.0 / shape[1])
    return torch.empty(shape).uniform_(-bound, bound, generator=generator), torch.zeros(shape[0])


class GaussianPolicy(LecunMLP):
    """Mean from the MLP, std = exp(log_std) shared by every state; actions are not squashed (MuJoCo
    clamps the control; the control cost sees the raw action, as in the original)."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden: Sequence[int] = (256, 256),
        activation: str = "relu",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__([obs_dim, *hidden, action_dim], activation, generator)
        self.log_std = nn.Parameter(torch.zeros(action_dim))

    def log_prob(self, mean: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """log π(a|s) summed over action dimensions."""
        log_std = self.log_std.expand_as(mean)
        z = (actions - mean) * torch.exp(-log_std)
        return (-0.5 * z.square() - log_std - 0.5 * math.log(2 * math.pi)).sum(dim=-1)

    def entropy(self) -> torch.Tensor:
        """The Gaussian's entropy (state-independent), summed over action dimensions."""
        return (self.log_std + 0.5 * math.log(2 * math.pi * math.e)).sum()


class ValueNetwork(LecunMLP):
    def __init__(
        self,
        obs_dim: int,
        hidden: Sequence[int] = (256, 256),
        activation: str = "relu",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__([obs_dim, *hidden, 1], activation, generator)

    def value(self, obs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        out, activations = self(obs)
        return out.squeeze(-1), activations
