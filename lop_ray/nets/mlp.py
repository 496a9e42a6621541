"""Fully connected networks: the regression learner (20 → 5 → 1), its linear baseline (20 → 1) and
the deep MLP of permuted MNIST (784 → 2000 × 3 → 10) are all `MLP`s of different sizes."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from lop_ray.nets.activations import init_gain, make_activation
from lop_ray.nets.mlp_gradients import mlp_loss_and_gradients
from lop_ray.nets.online_norm import OnlineNorm
from lop_ray.nets.units import UnitGroup, UnitNetwork


class MLP(UnitNetwork):
    """Linear layers with one activation between them; every hidden layer is a unit group.

    Initialisation (spec/networks.md): hidden weights Kaiming-uniform with the activation's gain,
    output weights Kaiming-uniform with the linear gain, all biases 0 — except that selu nets' hidden
    weights keep PyTorch's default U(±1/√fan_in) (their biases are 0 too). `generator` makes the draw
    a function of the seed.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        activation: str = "relu",
        generator: torch.Generator | None = None,
        dropout: float = 0.0,
        online_norm: bool = False,
    ) -> None:
        super().__init__()
        if len(sizes) < 2:
            raise ValueError(f"an MLP needs at least input and output sizes, got {list(sizes)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.activation_name = activation
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        # Extended Data Fig. 4's methods: online normalisation of each hidden layer's pre-activation,
        # dropout of each hidden layer's output (training mode only; masks from `noise_generator`)
        self.norms = nn.ModuleList(OnlineNorm(b) for b in sizes[1:-1]) if online_norm else None
        self.dropout = dropout
        self.noise_generator: torch.Generator | None = None
        self.activation = make_activation(activation)
        self._activation_fn = self.activation.forward
        self._hidden = list(self.layers[:-1])
        self._output = self.layers[-1]
        for index, layer in enumerate(self.layers):
            is_output = index == len(self.layers) - 1
            _initialise(layer, "linear" if is_output else activation, generator)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        # functional calls: at one example per step, nn.Module call overhead is a visible share
        activations = []
        act = self._activation_fn
        for index, layer in enumerate(self._hidden):
            z = F.linear(x, layer.weight, layer.bias)
            if self.norms is not None:
                z = self.norms[index](z)
            x = act(z)
            activations.append(x)
            if self.dropout and self.training:
                keep = torch.rand(x.shape, generator=self.noise_generator, device=x.device) >= self.dropout
                x = x * keep / (1.0 - self.dropout)
        out = self._output
        return F.linear(x, out.weight, out.bias), activations

    def loss_and_gradients(
        self, x: torch.Tensor, target: torch.Tensor, loss_fn: Callable
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]] | None:
        """Loss, output, hidden activations and gradients (in `parameters()` order) without autograd;
        None where the loss has no hand-written backward (see `mlp_gradients`), and with dropout or
        online normalisation (autograd then)."""
        if self.norms is not None or self.dropout:
            return None
        with torch.no_grad():
            return mlp_loss_and_gradients(
                [layer.weight for layer in self.layers],
                [layer.bias for layer in self.layers],
                self.activation_name,
                self._activation_fn,
                x,
                target,
                loss_fn,
            )

    def unit_groups(self) -> list[UnitGroup]:
        return [
            UnitGroup(
                f"hidden{i}",
                self.layers[i],
                self.layers[i + 1],
                self.activation_name,
                norm=self.norms[i] if self.norms is not None else None,
            )
            for i in range(len(self.layers) - 1)
        ]


def _initialise(layer: nn.Linear, activation: str, generator: torch.Generator | None) -> None:
    with torch.no_grad():
        if activation == "selu":  # PyTorch's default weight init, drawn from our generator
            bound = 1.0 / math.sqrt(layer.in_features)
            layer.weight.uniform_(-bound, bound, generator=generator)
            layer.bias.zero_()  # all biases start at 0 (spec/networks.md; the original zeroes it too)
            return
        bound = init_gain(activation) * math.sqrt(3.0 / layer.in_features)
        layer.weight.uniform_(-bound, bound, generator=generator)
        layer.bias.zero_()
