"""The plasticity metrics beside the paper's: each pinned on a hand-computed case, measured per seed
(a seed's value is the same alone and in a batch), and logged by every supervised problem."""

from __future__ import annotations

import math

import pytest
import torch

from lop_ray.experiments.learner import initial_mlp
from lop_ray.nets.conv_net import ConvNet, LinearNet
from lop_ray.nets.losses import per_seed_cross_entropy, per_seed_mse
from lop_ray.plasticity_metrics import PlasticityProbe, active_fraction, feature_churn

PLASTICITY_KEYS = {"gradient_norm", "distance_from_init", "active_fraction", "feature_churn"}


def test_active_fraction_counts_nonzero_pairs_over_every_layer():
    first = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[2.0, 3.0], [4.0, 0.0]]])  # (S=2, 2 examples, 2 units)
    second = torch.tensor([[[0.0], [5.0]], [[0.0], [0.0]]])  # (2, 2, 1)
    # seed 0: 1 + 1 active of 4 + 2; seed 1: 3 + 0 of 6
    assert active_fraction([first, second]).tolist() == pytest.approx([2 / 6, 3 / 6])
    with pytest.raises(ValueError, match="hidden layer"):
        active_fraction([])


def test_feature_churn_is_relative_frobenius_change():
    before = torch.tensor([[[3.0, 4.0]], [[0.0, 0.0]], [[1.0, 0.0]]])  # norms 5, 0, 1
    after = torch.tensor([[[3.0, 4.0]], [[0.0, 0.0]], [[1.0, 2.0]]])
    assert feature_churn(before, after).tolist() == pytest.approx([0.0, 0.0, 2.0])
    moved_from_zero = feature_churn(torch.zeros(1, 1, 2), torch.tensor([[[3.0, 4.0]]]))
    assert moved_from_zero.tolist() == pytest.approx([5.0])  # the absolute change when there was nothing


def test_distance_from_initial_is_the_seeds_own_parameter_distance():
    net = initial_mlp([3, 2, 1], "relu", [0, 1])
    probe = PlasticityProbe(net, per_seed_mse)
    assert probe.distance_from_initial().tolist() == [0.0, 0.0]
    with torch.no_grad():
        net.layers[0].weight[1, 0, 0] += 3.0  # seed 1 only
        net.layers[1].bias[1] += 4.0
    assert probe.distance_from_initial().tolist() == pytest.approx([0.0, 5.0])


def test_gradient_norm_equals_autograd_of_one_seeds_loss_and_steps_nothing():
    seeds = [3, 8]
    net = initial_mlp([4, 5, 2], "tanh", seeds)
    x = torch.randn(2, 7, 4, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 2, (2, 7), generator=torch.Generator().manual_seed(1))
    before = [p.clone() for p in net.parameters()]
    norms = PlasticityProbe(net, per_seed_cross_entropy).gradient_norm(x, y, per_seed_cross_entropy)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    for s, seed in enumerate(seeds):
        alone = initial_mlp([4, 5, 2], "tanh", [seed])
        output, _ = alone(x[s : s + 1])
        loss = torch.nn.functional.cross_entropy(output[0], y[s])
        grads = torch.autograd.grad(loss, list(alone.parameters()))
        expected = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))
        assert norms[s].item() == pytest.approx(expected, rel=1e-6)


def test_a_task_measured_alone_and_in_a_batch_gives_each_seed_the_same_numbers():
    def measure(seeds):
        net = initial_mlp([4, 6, 6, 3], "relu", seeds)
        probe = PlasticityProbe(net, per_seed_cross_entropy, probe_examples=5)
        x = torch.stack([torch.randn(9, 4, generator=torch.Generator().manual_seed(s)) for s in seeds])
        y = torch.stack(
            [torch.randint(0, 3, (9,), generator=torch.Generator().manual_seed(s)) for s in seeds]
        )
        probe.begin_task(x, y)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
        for _ in range(3):
            optimizer.zero_grad()
            per_seed_cross_entropy(net(x)[0], y).sum().backward()
            optimizer.step()
        return probe.end_task()

    together = measure([5, 11, 2])
    assert set(together[0]) == PLASTICITY_KEYS
    assert all(row["distance_from_init"] > 0 and row["feature_churn"] > 0 for row in together)
    for s, seed in enumerate([5, 11, 2]):
        assert measure([seed])[0] == together[s]


def test_a_network_without_hidden_units_logs_gradient_and_distance_only():
    net = LinearNet(2, generators=[torch.Generator().manual_seed(0)])
    probe = PlasticityProbe(net, per_seed_cross_entropy)
    probe.begin_task(torch.randn(1, 4, 3, 32, 32), torch.tensor([[0, 1, 0, 1]]))
    (row,) = probe.end_task()
    assert set(row) == {"gradient_norm", "distance_from_init"} and row["gradient_norm"] > 0
    with pytest.raises(RuntimeError, match="begin_task"):
        probe.end_task()


def test_conv_net_features_are_per_seed_and_fractions_in_range():
    net = ConvNet(2, generators=[torch.Generator().manual_seed(s) for s in (0, 1)])
    probe = PlasticityProbe(net, per_seed_cross_entropy)
    probe.begin_task(torch.randn(2, 6, 3, 32, 32), torch.randint(0, 2, (2, 6)))
    rows = probe.end_task()
    assert len(rows) == 2 and set(rows[0]) == PLASTICITY_KEYS
    assert all(0 < row["active_fraction"] < 1 and row["feature_churn"] == 0.0 for row in rows)
