"""Layer normalisation (Ba et al. 2016) of a hidden layer of S seeds, each seed its own gain and bias.

Lyle et al. 2024 ("Disentangling the Causes of Plasticity Loss in Neural Networks") find layer
normalisation of every hidden pre-activation, together with weight decay, the most robust single
mitigation of plasticity loss: it keeps pre-activations from drifting out of the nonlinearity's
useful range whatever the weights' scale, and the decay keeps that scale (hence the effective
step size) from growing. In a sweep: `layer_norm: true` on the network with algorithm `l2`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class SeedLayerNorm(nn.Module):
    """y = γ ⊙ (z − mean(z)) / √(var(z) + ε) + β over each example's `width` units, inputs
    (S, batch, width); γ, β (S, width). Every statistic is one example's of one seed, so a seed's
    values do not depend on the others in its batch."""

    def __init__(self, width: int, seeds: int = 1, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(seeds, width))
        self.bias = nn.Parameter(torch.zeros(seeds, width))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        normalised = F.layer_norm(z, z.shape[-1:], eps=self.eps)
        return normalised * self.weight.unsqueeze(1) + self.bias.unsqueeze(1)

    def unit_entries(self) -> dict[str, float]:
        """A fresh unit's gain and bias (continual backprop, ReDo, SNR, layer resets)."""
        return {"weight": 1.0, "bias": 0.0}


class SeedChannelNorm(nn.Module):
    """Layer normalisation of a conv layer's pre-activation, S seeds: each example's C·H·W values
    of one seed normalised together (a group norm of one group), then a gain and bias per channel,
    (S, C), so that a channel is a unit with its own norm entries as a linear layer's unit is."""

    def __init__(self, channels: int, seeds: int = 1, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(seeds, channels))
        self.bias = nn.Parameter(torch.zeros(seeds, channels))

    def of_seed(self, z: torch.Tensor, seed: int) -> torch.Tensor:
        """Seed `seed`'s (batch, C, H, W) pre-activations."""
        return F.group_norm(z, 1, self.weight[seed], self.bias[seed], self.eps)

    def grouped(self, z: torch.Tensor) -> torch.Tensor:
        """Every seed's pre-activations as one (batch, S·C, H, W) tensor, seed s the s-th C channels."""
        return F.group_norm(z, self.weight.shape[0], self.weight.flatten(), self.bias.flatten(), self.eps)

    def unit_entries(self) -> dict[str, float]:
        return {"weight": 1.0, "bias": 0.0}
