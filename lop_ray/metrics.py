"""Metrics of the paper (spec/metrics.md), as pure functions over tensors."""

from __future__ import annotations

import torch
from torch import nn


def bin_means(values: torch.Tensor, bin_size: int) -> torch.Tensor:
    """Means of consecutive bins of `bin_size` values (the paper's binned online error/accuracy).

    A trailing partial bin is dropped, as the paper's figures only show complete bins.
    """
    complete = values.shape[-1] // bin_size
    return values[..., : complete * bin_size].reshape(*values.shape[:-1], complete, bin_size).mean(-1)


def weight_magnitude(net: nn.Module) -> float:
    """Mean |w| over every weight matrix (not biases) of linear and conv layers."""
    total, count = 0.0, 0
    for module in net.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            total += module.weight.detach().abs().sum().item()
            count += module.weight.numel()
    return total / max(count, 1)


def dead_units(activations: torch.Tensor) -> int:
    """Units whose activation is exactly 0 on every example of `activations` (examples × units)."""
    return int((activations.reshape(activations.shape[0], -1) == 0).all(dim=0).sum().item())
