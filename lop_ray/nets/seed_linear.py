"""A linear layer of S seeds: weight (S, out, in), bias (S, out), applied as one batched product.

The MLP, the conv net's fully connected layers and ResNet-18's head are all this layer; seed s's
rows are its own layer, and nothing in the product mixes seeds."""

from __future__ import annotations

import torch
from torch import nn

from lop_ray.nets.units import SeedView


def seed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x (S, batch, in) through each seed's (out, in) weight and (out,) bias. One output as a
    broadcast product summed over the inputs: a batched matrix product with one output column takes
    a path whose sums depend on S."""
    if weight.shape[1] == 1:
        return (x * weight).sum(dim=-1, keepdim=True) + bias.unsqueeze(1)
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


class SeedLinear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """From each seed's weights and biases, stacked: (S, out, in) and (S, out)."""
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = nn.Parameter(bias.detach().clone())

    @classmethod
    def zeros(cls, seeds: int, in_features: int, out_features: int) -> SeedLinear:
        return cls(torch.zeros(seeds, out_features, in_features), torch.zeros(seeds, out_features))

    @property
    def in_features(self) -> int:
        return self.weight.shape[2]

    @property
    def out_features(self) -> int:
        return self.weight.shape[1]

    def views(self) -> list[SeedView]:
        """Weight and bias, already seed-first."""
        return [SeedView.whole(self.weight), SeedView.whole(self.bias)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(S, batch, in) → (S, batch, out); x may be a strided view."""
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))
