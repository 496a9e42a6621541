"""Metrics of the paper (spec/metrics.md), as pure functions over tensors."""

from __future__ import annotations

import torch


def rank_summaries(features: torch.Tensor, prop: float = 0.99) -> dict[str, float]:
    """The singular-value summaries of a representation matrix (examples × units).

    rank: singular values above the numerical tolerance `torch.linalg.matrix_rank` uses;
    effective_rank: exp of the entropy of s/Σs; approximate_rank: fewest s whose squares hold
    `prop` of Σs²; abs_approximate_rank (the paper's "stable rank"): fewest s whose sum holds `prop`
    of Σs.
    """
    s = torch.linalg.svdvals(features.detach().double())
    tolerance = s.max() * max(features.shape) * torch.finfo(features.dtype).eps if s.numel() else 0.0
    return {
        "rank": float((s > tolerance).sum()),
        "effective_rank": effective_rank(s),
        "approximate_rank": _fewest_holding(s.square(), prop),
        "abs_approximate_rank": _fewest_holding(s, prop),
    }


def effective_rank(singular_values: torch.Tensor) -> float:
    total = singular_values.abs().sum()
    if total == 0:
        return 0.0
    p = singular_values.abs() / total
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return float(entropy.exp())


def _fewest_holding(values: torch.Tensor, prop: float) -> float:
    """The fewest of `values` (descending) whose sum reaches `prop` of their total."""
    total = values.sum()
    if total == 0:
        return 0.0
    cumulative = values.cumsum(0) / total
    # a tiny slack so that prop = 1.0 does not miss the last value to rounding
    return float(int((cumulative < prop - 1e-12).sum()) + 1)


def dead_units(activations: torch.Tensor) -> int:
    """Units (columns) whose activation is exactly 0 on every example (rows) of the probe."""
    return int((activations != 0).sum(dim=0).eq(0).sum())
