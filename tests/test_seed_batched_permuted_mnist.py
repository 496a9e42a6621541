"""Seed-batched online permuted MNIST (on scikit-learn's real 8×8 digits): each seed of a batch gets
exactly what it gets in a batch of its own, a batch of one follows the single-seed experiment to
float rounding, resume is bit-identical, and configurations without a batched form loop over seeds."""

from __future__ import annotations

import pytest
import torch

from lop_ray.algos import CBPConfig
from lop_ray.data.shards import ImageDataset, load_dataset
from lop_ray.experiments.learner import LearnerSettings
from lop_ray.experiments.permuted_mnist import PermutedMNISTConfig, PermutedMNISTExperiment
from lop_ray.experiments.seed_batched_permuted_mnist import SeedBatchedPermutedMNISTExperiment
from lop_ray.experiments.seed_loop import SeedLoop

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

LEARNERS = {
    "bp": {},
    "l2": {"algorithm": "l2", "weight_decay": 1e-3},
    "l2_momentum": {"algorithm": "l2", "weight_decay": 1e-3, "momentum": 0.9},
    "cbp_adam": {
        "algorithm": "cbp",
        "optimizer": "adam",
        "step_size": 1e-3,
        "cbp": CBPConfig(replacement_rate=0.01, maturity_threshold=5, accumulate=True),
    },
}


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    full = load_dataset("digits", None)
    return ImageDataset(full.images[:120], full.labels[:120], full.pixel_max, full.num_classes)


def _config(seed: int = 0, hidden_units: int = 16, **learner) -> PermutedMNISTConfig:
    settings = LearnerSettings(**{"step_size": 0.01, **learner})
    return PermutedMNISTConfig(seed=seed, hidden_units=hidden_units, probe_examples=40, learner=settings)


# 16 hidden units take the broadcast path of small layers, 80 the batched matrix products (with
# plain SGD, bp and l2, the update fused into the backward pass)
@pytest.mark.parametrize(
    ("name", "hidden_units"),
    [("bp", 16), ("l2_momentum", 16), ("cbp_adam", 16), ("bp", 80), ("l2", 80), ("cbp_adam", 80)],
)
def test_each_seed_of_a_batch_gets_what_it_gets_alone(digits, name, hidden_units):
    config = _config(hidden_units=hidden_units, **LEARNERS[name])
    seeds = [4, 1]
    batch = SeedBatchedPermutedMNISTExperiment(config, seeds, digits, chunk=50)
    together = [batch.run_step() for _ in range(2)]
    for position, seed in enumerate(seeds):
        alone = SeedBatchedPermutedMNISTExperiment(config, [seed], digits, chunk=70)
        assert [alone.run_step()[0] for _ in range(2)] == [step[position] for step in together], seed
    if name.startswith("cbp"):
        assert all(step["replaced_units"] > 0 for step in together[-1])


@pytest.mark.parametrize(
    ("name", "hidden_units"), [(name, 16) for name in sorted(LEARNERS)] + [("bp", 80), ("l2", 80)]
)
def test_a_batch_of_one_follows_the_single_seed_experiment(digits, name, hidden_units):
    config = _config(seed=3, hidden_units=hidden_units, **LEARNERS[name])
    batched = SeedBatchedPermutedMNISTExperiment(config, [3], digits)
    single = PermutedMNISTExperiment(config, digits)
    for _ in range(3):
        got, expected = batched.run_step()[0], single.run_step()
        assert got.keys() == expected.keys()
        for key in ("tasks", "examples", "dead_units_percent", "replaced_units"):
            assert got.get(key) == expected.get(key), key
        for key in ("accuracy", "loss", "weight_magnitude", "effective_rank"):
            assert got[key] == pytest.approx(expected[key], rel=1e-4), key


def test_resumed_between_tasks_a_batch_continues_bit_identically(digits):
    config = _config(**LEARNERS["cbp_adam"])
    straight = SeedBatchedPermutedMNISTExperiment(config, [0, 5], digits)
    expected = [straight.run_step() for _ in range(3)]
    first = SeedBatchedPermutedMNISTExperiment(config, [0, 5], digits)
    first.run_step()
    saved = first.state_dict()
    resumed = SeedBatchedPermutedMNISTExperiment(config, [0, 5], digits)
    resumed.load_state_dict(saved)
    assert [resumed.run_step() for _ in range(2)] == expected[1:]
    assert torch.equal(resumed.net.layers[0].weight, straight.net.layers[0].weight)


def test_configurations_without_a_batched_form_run_seed_by_seed(digits):
    dropout = [PermutedMNISTConfig(seed=s, hidden_units=16, probe_examples=40, dropout=0.1) for s in (2, 7)]
    with pytest.raises(ValueError, match="dropout"):
        SeedBatchedPermutedMNISTExperiment(dropout[0], [2, 7], digits)
    loop = SeedLoop([PermutedMNISTExperiment(config, digits) for config in dropout])
    alone = [PermutedMNISTExperiment(config, digits).run_step() for config in dropout]
    assert loop.run_step() == alone and loop.steps_done == 1
    restored = SeedLoop([PermutedMNISTExperiment(config, digits) for config in dropout])
    restored.load_state_dict(loop.state_dict())
    assert restored.run_step() == loop.run_step()
