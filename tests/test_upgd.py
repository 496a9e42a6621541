"""UPGD (Elsayed & Mahmood 2024): the utility-gated noisy step pinned by hand, over several steps
against an element-by-element loop, per seed, through resets, checkpoints and the sweep schema."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lop_ray.algos.counter_rng import seed_keys
from lop_ray.algos.optim import reset_optimizer_entries
from lop_ray.algos.seed_noise import SeedNoise
from lop_ray.algos.upgd import UPGD, UPGDConfig
from lop_ray.experiments.learner import (
    UPGD_STREAM,
    LearnerSettings,
    build_learner,
    initial_mlp,
    learner_from_trial,
)
from lop_ray.nets.losses import per_seed_mse
from lop_ray.nets.units import SeedView
from lop_ray.schema import SweepError
from tests.method_sweeps import regression_sweep


def _upgd(params: list[torch.Tensor], config: UPGDConfig, lr: float = 0.1, wd: float = 0.0, seeds=(0,)):
    views = [SeedView.whole(p) for p in params]
    return UPGD(views, lr, wd, config, SeedNoise(views, seed_keys(list(seeds)), UPGD_STREAM))


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_one_noiseless_step_by_hand():
    theta = torch.tensor([[1.0, 2.0]])  # one seed, two weights
    optimizer = _upgd([theta], UPGDConfig(beta_utility=0.0, sigma=0.0), lr=0.1, wd=0.5)
    optimizer.apply_gradients([torch.tensor([[1.0, -1.0]])])
    # u = −gθ = (−1, 2), η = 2, s = σ(u/η); θ ← θ(1 − 0.1·0.5) − 0.2·g·(1 − s)
    expected = [1.0 * 0.95 - 0.2 * 1.0 * (1 - _sigmoid(-0.5)), 2.0 * 0.95 + 0.2 * (1 - _sigmoid(1.0))]
    assert theta[0].tolist() == pytest.approx(expected, rel=1e-6)


def test_steps_match_an_element_by_element_loop_with_bias_correction_and_noise():
    beta, sigma, lr = 0.9, 0.05, 0.05
    config = UPGDConfig(beta_utility=beta, sigma=sigma)
    weights = [torch.tensor([[0.5, -1.0, 2.0]]), torch.tensor([[[0.3], [-0.7]]])]
    optimizer = _upgd(weights, config, lr=lr)
    twin = SeedNoise([SeedView.whole(w.clone()) for w in weights], seed_keys([0]), UPGD_STREAM)
    flat = [v for w in weights for v in w.flatten().tolist()]
    average = [0.0] * len(flat)
    for t in range(1, 4):
        grads = [torch.tensor([[0.2 * t, -0.4, 0.1]]), torch.tensor([[[-0.3], [0.5 * t]]])]
        optimizer.apply_gradients(grads)
        g = [v for x in grads for v in x.flatten().tolist()]
        xi = [v for x in twin.draw() for v in x.flatten().tolist()]
        average = [beta * a + (1 - beta) * (-gi * wi) for a, gi, wi in zip(average, g, flat, strict=True)]
        eta = max(average)
        flat = [
            wi - 2 * lr * (gi + sigma * n) * (1 - _sigmoid((a / (1 - beta**t)) / eta))
            for wi, gi, n, a in zip(flat, g, xi, average, strict=True)
        ]
        got = [v for w in weights for v in w.flatten().tolist()]
        assert got == pytest.approx(flat, rel=1e-5, abs=1e-7), t


def test_no_useful_weight_means_the_plain_noisy_step_and_each_seed_has_its_own_max():
    theta = torch.tensor([[1.0, 1.0], [1.0, 4.0]])  # seed 0: every utility negative; seed 1: not
    optimizer = _upgd([theta], UPGDConfig(beta_utility=0.0, sigma=0.0), lr=0.1, seeds=(0, 1))
    optimizer.apply_gradients([torch.tensor([[1.0, 1.0], [1.0, -1.0]])])
    assert theta[0].tolist() == pytest.approx([0.8, 0.8])  # s = 0: θ − 2·lr·g
    # seed 1: u = (−1, 4), η = 4 (its own, not seed 0's)
    assert theta[1].tolist() == pytest.approx(
        [1 - 0.2 * (1 - _sigmoid(-0.25)), 4 + 0.2 * (1 - _sigmoid(1.0))]
    )


def test_a_restarted_weight_restarts_its_utility_and_bias_correction():
    theta = torch.tensor([[1.0, 1.0]])
    optimizer = _upgd([theta], UPGDConfig(beta_utility=0.5, sigma=0.0))
    optimizer.apply_gradients([torch.tensor([[-1.0, -1.0]])])
    reset_optimizer_entries(optimizer, theta, (0, 1))
    state = optimizer.state[theta]
    assert state["avg_utility"].tolist() == [[0.5, 0.0]] and state["step"].tolist() == [[1.0, 0.0]]


def _learner(seeds, config: UPGDConfig | None = None):
    net = initial_mlp([3, 5, 1], "relu", seeds)
    config = config or UPGDConfig(sigma=0.01)
    settings = LearnerSettings(algorithm="upgd", optimizer="upgd", step_size=0.05, upgd=config)
    return build_learner(net, settings, seeds, "cpu", per_seed_mse)[0]


def _data(seeds, step):
    x = torch.stack(
        [torch.randn(4, 3, generator=torch.Generator().manual_seed(100 * s + step)) for s in seeds]
    )
    return x, x.sum(dim=2, keepdim=True)


def test_each_seed_in_a_batch_steps_as_alone_and_a_resume_continues_bit_identically():
    seeds = [2, 9]
    batch = _learner(seeds)
    for step in range(5):
        batch.learn(*_data(seeds, step))
    for s, seed in enumerate(seeds):
        alone = _learner([seed])
        for step in range(5):
            alone.learn(*_data([seed], step))
        for a, b in zip(alone.net.parameter_views(), batch.net.parameter_views(), strict=True):
            assert torch.equal(a.of()[0], b.of()[s])
    saved = copy.deepcopy(batch.state_dict())
    resumed = _learner(seeds)
    resumed.load_state_dict(saved)
    for step in range(5, 8):
        batch.learn(*_data(seeds, step))
        resumed.learn(*_data(seeds, step))
    assert all(
        torch.equal(a, b) for a, b in zip(batch.net.parameters(), resumed.net.parameters(), strict=True)
    )
    with pytest.raises(ValueError, match="checkpoint is of UPGD"):
        _learner(seeds, UPGDConfig(sigma=0.5)).load_state_dict(saved)


def test_the_sweep_schema_takes_its_options_and_refuses_bad_ones(tmp_path):
    (trial,) = regression_sweep(tmp_path, "upgd", beta_utility=0.9, sigma=0.01, weight_decay=1e-3).trials
    settings = learner_from_trial(trial)
    assert (settings.optimizer, settings.weight_decay) == ("upgd", 1e-3)
    assert settings.upgd == UPGDConfig(beta_utility=0.9, sigma=0.01)
    for bad, key in (({"beta_utility": 1.0}, "beta_utility"), ({"momentum": 0.9}, "momentum")):
        with pytest.raises(SweepError) as error:
            regression_sweep(tmp_path, "upgd", **bad)
        assert f"algorithms[0].{key}" in str(error.value)
