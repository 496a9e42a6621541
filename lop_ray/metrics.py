"""Metrics of the paper (spec/metrics.md), as pure functions over tensors."""

from __future__ import annotations

from torch import nn


def weight_magnitude(net: nn.Module) -> float:
    """Mean |w| over every weight matrix (not biases) of linear and conv layers."""
    total, count = 0.0, 0
    for module in net.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            total += module.weight.detach().abs().sum().item()
            count += module.weight.numel()
    return total / max(count, 1)
