"""The paper's unit and rank metrics on matrices whose answers are known by hand."""

from __future__ import annotations

import math

import torch

from lop_ray.metrics import dead_units, effective_rank, rank_summaries
from lop_ray.nets import MLP


def _with_singular_values(values, rows=8, seed=0):
    """A rows × len(values) matrix whose singular values are exactly `values`."""
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(rows, len(values), generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(len(values), len(values), generator=gen, dtype=torch.float64))
    return (u * torch.tensor(values, dtype=torch.float64)) @ v.t()


def test_rank_summaries_count_singular_values_as_the_spec_defines():
    s = [10.0, 5.0, 3.0, 1.0, 1.0, 0.0]
    summary = rank_summaries(_with_singular_values(s).float())
    assert summary["rank"] == 5
    # squares: 100, 25, 9, 1, 1 of 136: 99 % needs 134.64 → 100+25+9+1 = 135 → 4 values
    assert summary["approximate_rank"] == 4
    # unsquared: 10, 5, 3, 1, 1 of 20: 99 % needs 19.8 → all 5
    assert summary["abs_approximate_rank"] == 5
    p = torch.tensor([10, 5, 3, 1, 1], dtype=torch.float64) / 20
    assert math.isclose(summary["effective_rank"], math.exp(-(p * p.log()).sum()), rel_tol=1e-5)


def test_effective_rank_of_equal_values_is_their_count_and_zero_matrix_is_zero():
    assert math.isclose(effective_rank(torch.ones(7, dtype=torch.float64)), 7.0, rel_tol=1e-12)
    assert rank_summaries(torch.zeros(4, 3)) == {
        "rank": 0.0,
        "effective_rank": 0.0,
        "approximate_rank": 0.0,
        "abs_approximate_rank": 0.0,
    }


def test_dead_units_are_zero_on_every_probe_example():
    h = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert dead_units(h) == 2


def test_weight_sums_follow_the_layers_per_seed():
    net = MLP([3, 4, 2], generators=[None, None])
    with torch.no_grad():
        net.layers[0].weight[0].fill_(-0.5)
        net.layers[1].weight[0].fill_(2.0)
        net.layers[0].weight[1].fill_(1.0)
        net.layers[1].weight[1].fill_(0.25)
    assert net.weight_abs_sums() == [[6.0, 16.0], [12.0, 2.0]]
