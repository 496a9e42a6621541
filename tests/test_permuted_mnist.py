"""Online permuted MNIST: the task stream (a function of seed and task only), the experiment's
metrics, and exact resume; on scikit-learn's real 8×8 digits."""

from __future__ import annotations

import copy

import pytest
import torch

from lop_ray.algos import CBPConfig
from lop_ray.data.permuted import PermutedTaskStream
from lop_ray.data.shards import ImageDataset, load_dataset
from lop_ray.experiments.learner import LearnerSettings
from lop_ray.experiments.permuted_mnist import PermutedMNISTConfig, PermutedMNISTExperiment
from lop_ray.metrics import dead_units


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    full = load_dataset("digits", None)
    return ImageDataset(full.images[:150], full.labels[:150], full.pixel_max, full.num_classes)


def _all(stream: PermutedTaskStream, task: int, chunk: int):
    xs, ys = zip(*stream.examples(task, chunk), strict=True)
    return torch.cat(xs), torch.cat(ys)


def test_a_task_is_every_example_once_permuted_by_one_pixel_permutation(digits):
    stream = PermutedTaskStream(digits, seed=3)
    x, y = _all(stream, 0, chunk=1000)
    images = torch.from_numpy(digits.images.reshape(150, 64)).float() / 16
    # recover the order and the permutation from the data and check them against each other
    assert sorted(y.tolist()) == sorted(digits.labels.tolist())
    permutation, order = stream._task_draws(0)
    assert sorted(order.tolist()) == list(range(150))
    torch.testing.assert_close(x, images[order][:, permutation], rtol=0, atol=0)
    assert x.min() >= 0 and x.max() <= 1


def test_the_stream_depends_on_seed_and_task_only_not_on_chunking(digits):
    a, b = PermutedTaskStream(digits, seed=5), PermutedTaskStream(digits, seed=5)
    for task in (2, 0, 1):  # any order: task t is regenerated from (seed, t)
        xa, ya = _all(a, task, chunk=7)
        xb, yb = _all(b, task, chunk=1000)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    x0, _ = _all(a, 0, 1000)
    x1, _ = _all(a, 1, 1000)
    other, _ = _all(PermutedTaskStream(digits, seed=6), 0, 1000)
    assert not torch.equal(x0, x1) and not torch.equal(x0, other)
    px, py = a.probe(1, 20)
    assert torch.equal(px, x1[:20])


def test_tasks_longer_than_the_dataset_repeat_its_order(digits):
    stream = PermutedTaskStream(digits, seed=0, examples_per_task=2 * 150 + 10)
    x, y = _all(stream, 0, chunk=64)
    assert len(y) == 310
    assert torch.equal(x[:150], x[150:300]) and torch.equal(x[:10], x[300:])


def _config(**learner) -> PermutedMNISTConfig:
    return PermutedMNISTConfig(
        seed=1, hidden_units=16, probe_examples=40, learner=LearnerSettings(**{"step_size": 0.01, **learner})
    )


def test_a_task_reports_online_accuracy_units_ranks_and_weights(digits):
    experiment = PermutedMNISTExperiment(_config(), digits)
    x, _ = experiment.streams[0].probe(0, 40)
    _, activations = experiment.net(x.unsqueeze(0))
    expected_dead = [dead_units(h[0]) for h in activations]  # measured before any training on the task

    metrics = experiment.run_step()[0]

    assert [metrics[f"dead_units_hidden{i}"] for i in (1, 2, 3)] == expected_dead
    assert metrics["dead_units_percent"] == pytest.approx(100 * sum(expected_dead) / 48)
    assert 0 <= metrics["accuracy"] <= 1 and metrics["loss"] > 0
    assert metrics["tasks"] == 1 and metrics["examples"] == 150
    assert 1 <= metrics["effective_rank_hidden1"] <= 16 and metrics["abs_approximate_rank"] >= 1
    sums = [metrics[f"weight_sum_layer{i}"] for i in range(4)]
    weights = sum(layer.weight.numel() for layer in experiment.net.layers)
    assert metrics["weight_magnitude"] == pytest.approx(sum(sums) / weights)


@pytest.mark.parametrize(
    "learner",
    [
        {},
        {"algorithm": "l2", "weight_decay": 1e-3, "momentum": 0.9},
        {"algorithm": "snp", "weight_decay": 1e-3, "perturb_scale": 1e-3},
        {
            "algorithm": "cbp",
            "optimizer": "adam",
            "step_size": 1e-3,
            "cbp": CBPConfig(replacement_rate=0.01, maturity_threshold=5, accumulate=True),
        },
    ],
    ids=["bp", "l2_momentum", "snp", "cbp_adam"],
)
def test_resumed_between_tasks_it_continues_bit_identically(digits, learner):
    config = _config(**learner)
    straight = PermutedMNISTExperiment(config, digits)
    expected = [straight.run_step()[0] for _ in range(3)]

    first = PermutedMNISTExperiment(config, digits)
    got = [first.run_step()[0]]
    state = copy.deepcopy(first.state_dict())  # as saved to disk: not aliased to live tensors
    first.run_step()[0]  # work past the checkpoint is lost with the process
    resumed = PermutedMNISTExperiment(config, digits)
    resumed.load_state_dict(state)
    got += [resumed.run_step()[0] for _ in range(2)]

    assert got == expected
    if "cbp" in learner:
        assert expected[-1]["replaced_units"] > 0


def test_every_algorithm_of_a_seed_sees_the_same_tasks(digits):
    bp = PermutedMNISTExperiment(_config(), digits)
    cbp = PermutedMNISTExperiment(_config(algorithm="cbp", cbp=CBPConfig()), digits)
    assert torch.equal(_all(bp.streams[0], 4, 50)[0], _all(cbp.streams[0], 4, 50)[0])
    assert all(torch.equal(a, b) for a, b in zip(bp.net.parameters(), cbp.net.parameters(), strict=True))


@pytest.mark.parametrize("network", [{"dropout": 0.1}, {"online_norm": True}], ids=["dropout", "online_norm"])
def test_extended_data_fig4_methods_resume_bit_identically(digits, network):
    config = PermutedMNISTConfig(seed=2, hidden_units=16, probe_examples=40, **network)
    straight = PermutedMNISTExperiment(config, digits)
    expected = [straight.run_step()[0] for _ in range(3)]
    first = PermutedMNISTExperiment(config, digits)
    got = [first.run_step()[0]]
    state = copy.deepcopy(first.state_dict())
    resumed = PermutedMNISTExperiment(config, digits)
    resumed.load_state_dict(state)
    got += [resumed.run_step()[0] for _ in range(2)]
    assert got == expected
    plain = PermutedMNISTExperiment(PermutedMNISTConfig(seed=2, hidden_units=16, probe_examples=40), digits)
    assert plain.run_step()[0]["accuracy"] != expected[0]["accuracy"]  # the option changes the learning
