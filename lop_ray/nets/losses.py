"""Per-seed losses of networks with a seed axis (`lop_ray.nets.units`): one loss per seed, (S,).

`Backprop` takes the gradient of their sum, which for seeds that share no parameter is each seed's
own loss's gradient; the MLP's hand-written backward pass knows these two by name.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def per_seed_cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(S,) mean cross-entropy of each seed: logits (S, batch, classes), labels (S, batch)."""
    seeds, batch = target.shape
    losses = F.cross_entropy(output.reshape(seeds * batch, -1), target.reshape(-1), reduction="none")
    return losses.view(seeds, batch).mean(dim=1)


def per_seed_mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(S,) mean squared error of each seed: outputs and targets (S, batch, …)."""
    diff = output - target
    return (diff * diff).flatten(1).mean(dim=1)
