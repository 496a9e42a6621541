"""Self-Normalized Resets: per-example firing statistics by hand, the reset fires exactly when
(1 − p̂)^a drops below 1 − η, ReDo's re-initialisation and optimizer-state restart, seeds
independent of their batch, exact resume, config validation."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lop_ray.algos.optim import make_optimizer
from lop_ray.algos.snr import SelfNormalizedResets, SNRConfig
from lop_ray.data.seeding import LEARNER, generator
from lop_ray.experiments.learner import initial_mlp, learner_from_trial
from lop_ray.nets.losses import per_seed_mse
from lop_ray.schema import SweepError
from tests.method_sweeps import regression_sweep


def _snr(net, config: SNRConfig, seeds: list[int], optimizer=None):
    optimizer = optimizer or make_optimizer(net.parameters(), "sgd", 0.1, momentum=0.9)
    gens = [generator(s, LEARNER, 4000) for s in seeds]
    return optimizer, SelfNormalizedResets(net.unit_groups(), optimizer, config, gens)


def _params(net) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


def _fires(pattern: list[list[list[int]]]) -> torch.Tensor:
    """(S, batch, units) activations: 1.0 where the pattern says the unit fired, -0.0/0 elsewhere."""
    return torch.tensor(pattern, dtype=torch.float32)


def _step(net, optimizer, seeds: list[int], step: int, batch: int = 4):
    """One real SGD/Adam step on per-seed random data (each seed's data from its own generator)."""
    inputs = net.layers[0].weight.shape[2]
    x = torch.stack(
        [torch.randn(batch, inputs, generator=torch.Generator().manual_seed(1000 * s + step)) for s in seeds]
    )
    output, activations = net(x)
    loss = per_seed_mse(output, torch.ones_like(output)).sum()
    grads = torch.autograd.grad(loss, list(net.parameters()))
    optimizer.apply_gradients(grads)
    return [a.detach() for a in activations]


def test_hand_computed_statistics_and_the_single_reset_at_its_step():
    seeds = [0, 1]
    net = initial_mlp([3, 4, 2], "relu", seeds)
    _, snr = _snr(net, SNRConfig(rejection_percentile=0.9), seeds)  # reset iff (1 − p̂)^a < 0.1
    before = _params(net)
    # step 1, two examples; seed 1 fires everywhere
    snr.after_step([_fires([[[1, 1, 0, 1], [0, 1, 1, 0]], [[1, 1, 1, 1], [1, 1, 1, 1]]])])
    assert snr.fired[0].tolist() == [[1, 2, 1, 1], [2, 2, 2, 2]]
    assert snr.examples[0].tolist() == [[1, 2, 2, 1], [2, 2, 2, 2]]
    assert snr.age[0].tolist() == [[1, 0, 0, 1], [0, 0, 0, 0]]
    p_hat = snr.firing_probability()[0]
    assert torch.allclose(p_hat[0], torch.tensor([2 / 3, 3 / 4, 1 / 2, 2 / 3], dtype=torch.float64))
    # (1 − p̂)^a: 1/3, 1, 1, 1/3: nothing reset yet
    assert snr.replaced_total.tolist() == [0, 0]
    assert all(torch.equal(a, b) for a, b in zip(before, _params(net), strict=True))

    # step 2: unit 0 silent twice → a = 3, (1/3)^3 ≈ 0.037 < 0.1; unit 2 silent twice → (1/2)^2 = 0.25
    snr.after_step([_fires([[[0, 1, 0, 0], [0, 1, 0, 1]], [[1, 1, 1, 1], [1, 1, 1, 1]]])])
    assert snr.replaced_total.dtype == torch.long and snr.replaced_total.tolist() == [1, 0]
    # unit 0's statistics restarted; the others continue
    assert snr.fired[0].tolist() == [[0, 4, 1, 2], [4, 4, 4, 4]]
    assert snr.examples[0].tolist() == [[0, 4, 2, 4], [4, 4, 4, 4]]
    assert snr.age[0].tolist() == [[0, 0, 2, 0], [0, 0, 0, 0]]

    w0, b0, w1, b1 = before
    nw0, nb0, nw1, nb1 = _params(net)
    assert not torch.equal(nw0[0, 0], w0[0, 0])
    assert nw0[0, 0].abs().max() <= math.sqrt(3.0 / 3)  # lecun bound, fan-in 3
    assert nb0[0, 0] == 0 and torch.all(nw1[0, :, 0] == 0)
    assert torch.equal(nw0[0, 1:], w0[0, 1:]) and torch.equal(nb0[0, 1:], b0[0, 1:])
    assert torch.equal(nw1[0, :, 1:], w1[0, :, 1:]) and torch.equal(nb1, b1)
    for new, old in zip((nw0, nb0, nw1), (w0, b0, w1), strict=True):
        assert torch.equal(new[1], old[1])  # the other seed untouched


def test_a_firing_unit_is_never_reset_and_a_never_fired_unit_is_reset_at_its_quantile():
    net = initial_mlp([3, 2, 2], "relu", [5])
    _, snr = _snr(net, SNRConfig(rejection_percentile=0.99), [5])
    # unit 0 fires on every example, unit 1 never: p̂ = 1/2 (Beta(1, 1) prior), reset once
    # 0.5^a < 0.01, i.e. at a = 7 (0.5^6 ≈ 0.016 is not below)
    for step in range(1, 8):
        snr.after_step([_fires([[[1, 0]]])])
        if step < 7:
            assert snr.age[0].tolist() == [[0, step]] and snr.replaced_total.tolist() == [0]
    assert snr.replaced_total.tolist() == [1]
    assert snr.age[0].tolist() == [[0, 0]] and snr.fired[0].tolist() == [[7, 0]]
    for _ in range(6):  # the restarted unit needs its 7 silent examples again
        snr.after_step([_fires([[[1, 0]]])])
    assert snr.replaced_total.tolist() == [1]
    snr.after_step([_fires([[[1, 0]]])])
    assert snr.replaced_total.tolist() == [2]
    for _ in range(100):
        snr.after_step([_fires([[[1, 1]]])])
    assert snr.age[0][0, 0] == 0 and snr.replaced_total.tolist() == [2]


def test_silence_in_one_batch_counts_examples_in_order():
    net = initial_mlp([3, 1, 2], "relu", [0])
    _, snr = _snr(net, SNRConfig(rejection_percentile=0.999999), [0])
    snr.after_step([_fires([[[0], [1], [0], [1], [0], [0]]])])  # fired at positions 2 and 4 of 6
    assert (snr.fired[0].item(), snr.examples[0].item(), snr.age[0].item()) == (2, 4, 2)
    snr.after_step([_fires([[[0], [0], [1]]])])  # 2 + 2 silent, then a firing at position 3
    assert (snr.fired[0].item(), snr.examples[0].item(), snr.age[0].item()) == (3, 9, 0)


@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("reset_state", [True, False])
def test_optimizer_state_of_a_reset_unit(kind, reset_state):
    seeds = [2, 4]
    net = initial_mlp([3, 4, 2], "relu", seeds)
    if kind == "sgd":
        optimizer = make_optimizer(net.parameters(), "sgd", 0.1, momentum=0.9)
        keys = ["momentum_buffer"]
    else:
        optimizer = make_optimizer(net.parameters(), "adam", 0.01)
        keys = ["exp_avg", "exp_avg_sq", "step"]
    config = SNRConfig(rejection_percentile=0.9, reset_optimizer_state=reset_state)
    _, snr = _snr(net, config, seeds, optimizer)
    _step(net, optimizer, seeds, 0)
    w0, b0, w1, _ = list(net.parameters())
    states = {id(p): {k: optimizer.state[p][k].clone() for k in keys} for p in (w0, b0, w1)}
    assert all(states[id(w0)][k].abs().sum() > 0 for k in keys)
    # unit 2 of seed 0 silent on 4 examples from its start: 0.5^4 < 0.1
    silent = [[[1, 1, 0, 1]] * 4, [[1, 1, 1, 1]] * 4]
    snr.after_step([_fires(silent)])
    assert snr.replaced_total.tolist() == [1, 0]
    for key in keys:
        rows = optimizer.state[w0][key]
        bias = optimizer.state[b0][key]
        cols = optimizer.state[w1][key]
        old_rows, old_bias, old_cols = (states[id(p)][key] for p in (w0, b0, w1))
        if reset_state:
            assert torch.all(rows[0, 2] == 0) and bias[0, 2] == 0 and torch.all(cols[0, :, 2] == 0)
        else:
            assert torch.equal(rows[0, 2], old_rows[0, 2]) and torch.equal(cols[0, :, 2], old_cols[0, :, 2])
            assert torch.equal(bias[0, 2], old_bias[0, 2])
        keep = [0, 1, 3]
        assert torch.equal(rows[0, keep], old_rows[0, keep]) and torch.equal(rows[1], old_rows[1])
        assert torch.equal(cols[0][:, keep], old_cols[0][:, keep]) and torch.equal(cols[1], old_cols[1])


def _train(seeds: list[int], steps: int, config: SNRConfig):
    net = initial_mlp([5, 8, 8, 3], "relu", seeds)
    optimizer, snr = _snr(net, config, seeds)
    for step in range(steps):
        snr.after_step(_step(net, optimizer, seeds, step))
    return net, snr


def test_a_seed_in_a_batch_equals_the_seed_alone():
    config = SNRConfig(rejection_percentile=0.5)  # aggressive: resets in a few steps
    together, snr = _train([3, 7], 8, config)
    assert all(n > 0 for n in snr.replaced_total.tolist())
    for position, seed in enumerate([3, 7]):
        alone, snr_alone = _train([seed], 8, config)
        assert snr_alone.replaced_total.tolist() == [snr.replaced_total[position].item()]
        for p_batch, p_alone in zip(together.parameters(), alone.parameters(), strict=True):
            assert torch.equal(p_batch[position], p_alone[0]), seed
        for stat_batch, stat_alone in zip(snr.age, snr_alone.age, strict=True):
            assert torch.equal(stat_batch[position], stat_alone[0])


def test_state_dict_round_trip_continues_identically_and_refuses_another_config():
    seeds = [1, 6]
    config = SNRConfig(rejection_percentile=0.5)
    net = initial_mlp([5, 8, 3], "relu", seeds)
    optimizer, snr = _snr(net, config, seeds)
    for step in range(3):
        snr.after_step(_step(net, optimizer, seeds, step))
    saved = copy.deepcopy(snr.state_dict())
    net2, optimizer2 = copy.deepcopy((net, optimizer))
    gens = [torch.Generator().manual_seed(99) for _ in seeds]  # overwritten by the checkpoint
    resumed = SelfNormalizedResets(net2.unit_groups(), optimizer2, config, gens)
    resumed.load_state_dict(saved)
    for step in range(3, 8):
        snr.after_step(_step(net, optimizer, seeds, step))
        resumed.after_step(_step(net2, optimizer2, seeds, step))
    assert snr.replaced_total.sum() > saved["replaced_total"].sum()
    assert torch.equal(snr.replaced_total, resumed.replaced_total)
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), net2.parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(snr.examples, resumed.examples, strict=True))

    other = SelfNormalizedResets(net2.unit_groups(), optimizer2, SNRConfig(rejection_percentile=0.9), gens)
    with pytest.raises(ValueError, match="SNR config"):
        other.load_state_dict(saved)


@pytest.mark.parametrize(
    "bad",
    [
        {"rejection_percentile": 0.0},
        {"rejection_percentile": 1.0},
        {"rejection_percentile": -0.5},
        {"rejection_percentile": 1.5},
        {"rejection_percentile": float("nan")},
        {"init": "bogus"},
    ],
)
def test_config_rejects_invalid_values(bad):
    with pytest.raises(ValueError):
        SNRConfig(**bad)


def test_after_step_needs_one_activation_per_group():
    net = initial_mlp([3, 4, 4, 2], "relu", [0])
    _, snr = _snr(net, SNRConfig(), [0])
    with pytest.raises(ValueError, match="unit groups"):
        snr.after_step([torch.zeros(1, 2, 4)])


def test_a_conv_unit_fires_on_an_example_when_its_spatial_mean_is_positive():
    from lop_ray.nets.conv_net import ConvNet

    net = ConvNet(generators=[torch.Generator().manual_seed(s) for s in (0, 1)])
    optimizer = make_optimizer(net.parameters(), "sgd", 0.1)
    config = SNRConfig(rejection_percentile=0.9)  # never fired: 0.5^4 < 0.1 resets after 4 examples
    snr = SelfNormalizedResets(
        net.unit_groups(), optimizer, config, [torch.Generator().manual_seed(s) for s in (5, 6)]
    )
    _, features = net(torch.randn(2, 5, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    features = [h.detach().clone() for h in features]
    features[0][0, :, 0] = 0.0  # seed 0, channel 0: silent on all 5 examples
    features[0][0, :, 1] = 0.0
    features[0][0, :, 1, 3, 4] = 1.0  # channel 1: one positive position, so it fires each time
    features[0][1] = 1.0  # seed 1: every channel fires
    for h in features[1:]:  # every later unit fires, so no other reset touches conv1's outgoing weights
        h.fill_(1.0)
    groups = net.unit_groups()
    before = groups[0].incoming.of()[0, 0].clone()
    snr.after_step(features)
    assert snr.fired[0][0, 1] == 5 and snr.age[0][0, 1] == 0
    assert snr.fired[0][0, 0] == 0 and snr.age[0][0, 0] == 0  # reset, statistics restarted
    assert snr.replaced_total.tolist() == [1, 0]
    assert not torch.equal(groups[0].incoming.of()[0, 0], before)
    assert groups[0].incoming_bias.of()[0, 0] == 0
    assert torch.all(groups[0].outgoing_by_unit()[0, :, 0] == 0)
    assert torch.all(snr.fired[0][1] == 5)


def test_the_sweep_schema_takes_its_options_and_refuses_bad_ones(tmp_path):
    (trial,) = regression_sweep(tmp_path, "snr", rejection_percentile=0.95, init="kaiming").trials
    assert learner_from_trial(trial).method == SNRConfig(rejection_percentile=0.95, init="kaiming")
    for bad, key in (({"rejection_percentile": 1.0}, "rejection_percentile"), ({"init": "zeros"}, "init")):
        with pytest.raises(SweepError) as error:
            regression_sweep(tmp_path, "snr", **bad)
        assert f"algorithms[0].{key}" in str(error.value)
