"""Online permuted MNIST with a seed axis (on scikit-learn's real 8×8 digits): each seed of a batch
gets exactly what it gets in a batch of its own — every algorithm, dropout and online
normalisation too — and a batch resumes bit-identically."""

from __future__ import annotations

import pytest
import torch

from lop_ray.algos import CBPConfig
from lop_ray.algos.layer_reset import LayerResetConfig
from lop_ray.algos.parseval import ParsevalConfig
from lop_ray.algos.snr import SNRConfig
from lop_ray.algos.upgd import UPGDConfig
from lop_ray.data.shards import ImageDataset, load_dataset
from lop_ray.experiments.learner import LearnerSettings
from lop_ray.experiments.permuted_mnist import PermutedMNISTConfig, PermutedMNISTExperiment

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

LEARNERS = {
    "bp": {},
    "l2": {"algorithm": "l2", "weight_decay": 1e-3},
    "l2_momentum": {"algorithm": "l2", "weight_decay": 1e-3, "momentum": 0.9},
    "snp": {"algorithm": "snp", "weight_decay": 1e-3, "perturb_scale": 1e-3},
    "l2_init_adam": {"algorithm": "l2_init", "optimizer": "adam", "step_size": 1e-3, "l2_init": 0.1},
    "cbp_adam": {
        "algorithm": "cbp",
        "optimizer": "adam",
        "step_size": 1e-3,
        "cbp": CBPConfig(replacement_rate=0.01, maturity_threshold=5, accumulate=True),
    },
    "layer_reset": {
        "algorithm": "layer_reset",
        "momentum": 0.9,
        "method": LayerResetConfig(reset_period=25, layers=2),
    },
    "parseval": {"algorithm": "parseval", "method": ParsevalConfig(parseval_strength=0.01)},
    "snr": {"algorithm": "snr", "method": SNRConfig(rejection_percentile=0.9)},
    "upgd": {"algorithm": "upgd", "optimizer": "upgd", "upgd": UPGDConfig(beta_utility=0.9, sigma=0.01)},
}


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    full = load_dataset("digits", None)
    return ImageDataset(full.images[:120], full.labels[:120], full.pixel_max, full.num_classes)


def _config(
    seed: int = 0, hidden_units: int = 16, network: dict | None = None, **learner
) -> PermutedMNISTConfig:
    settings = LearnerSettings(**{"step_size": 0.01, **learner})
    return PermutedMNISTConfig(
        seed=seed, hidden_units=hidden_units, probe_examples=40, learner=settings, **(network or {})
    )


# 16 hidden units take the broadcast path of small layers, 80 the batched matrix products (with
# plain SGD, bp and l2, the update fused into the backward pass)
@pytest.mark.parametrize(
    ("name", "hidden_units"),
    [
        ("bp", 16),
        ("l2_momentum", 16),
        ("snp", 16),
        ("cbp_adam", 16),
        ("bp", 80),
        ("l2", 80),
        ("cbp_adam", 80),
        ("layer_reset", 16),
        ("parseval", 16),
        ("parseval", 80),
        ("upgd", 16),
        ("snr", 16),
        ("upgd", 80),
    ],
)
def test_each_seed_of_a_batch_gets_what_it_gets_alone(digits, name, hidden_units):
    config = _config(hidden_units=hidden_units, **LEARNERS[name])
    seeds = [4, 1]
    batch = PermutedMNISTExperiment(config, digits, seeds=seeds, chunk=50)
    together = [batch.run_step() for _ in range(2)]
    for position, seed in enumerate(seeds):
        alone = PermutedMNISTExperiment(config, digits, seeds=[seed], chunk=70)
        assert [alone.run_step()[0] for _ in range(2)] == [step[position] for step in together], seed
    if name.startswith("cbp") or name in ("layer_reset", "snr"):
        assert all(step["replaced_units"] > 0 for step in together[-1])


@pytest.mark.parametrize("network", [{"dropout": 0.1}, {"online_norm": True}], ids=["dropout", "online_norm"])
@pytest.mark.parametrize("name", ["bp", "cbp_adam"])
def test_extended_data_fig4_methods_batch_over_seeds(digits, network, name):
    """Dropout masks are counter-based draws of each seed's key and step, online normalisation's
    statistics are per seed: a seed's numbers are its own in any batch (autograd's kernels over the
    (S, 1, units) tensors give each seed's slice the same sums whatever S is)."""
    config = _config(network=network, **LEARNERS[name])
    seeds = [6, 2]
    batch = PermutedMNISTExperiment(config, digits, seeds=seeds)
    together = [batch.run_step() for _ in range(2)]
    for position, seed in enumerate(seeds):
        alone = PermutedMNISTExperiment(config, digits, seeds=[seed])
        assert [alone.run_step()[0] for _ in range(2)] == [step[position] for step in together], seed
    plain = PermutedMNISTExperiment(_config(**LEARNERS[name]), digits, seeds=seeds)
    assert plain.run_step()[0]["loss"] != together[0][0]["loss"]  # the option changes the learning


def test_resumed_between_tasks_a_batch_continues_bit_identically(digits):
    config = _config(**LEARNERS["cbp_adam"])
    straight = PermutedMNISTExperiment(config, digits, seeds=[0, 5])
    expected = [straight.run_step() for _ in range(3)]
    first = PermutedMNISTExperiment(config, digits, seeds=[0, 5])
    first.run_step()
    saved = first.state_dict()
    resumed = PermutedMNISTExperiment(config, digits, seeds=[0, 5])
    resumed.load_state_dict(saved)
    assert [resumed.run_step() for _ in range(2)] == expected[1:]
    assert torch.equal(resumed.net.layers[0].weight, straight.net.layers[0].weight)
