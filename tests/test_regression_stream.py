"""Slowly-changing regression (spec/problems.md §1): the target network, the stream of examples,
its seeding, chunking and checkpointing, and exact resume of the whole experiment."""

from __future__ import annotations

import io
import itertools
import math

import numpy as np
import pytest
import torch

from lop_ray.algos import CBPConfig
from lop_ray.data.regression import GENERATOR, RegressionSettings, RegressionStream, ThresholdTarget
from lop_ray.data.seeding import LEARNER, STREAM, TARGET, derived_seed, generator
from lop_ray.experiments.learner import LearnerSettings
from lop_ray.experiments.regression import RegressionConfig, RegressionExperiment

SMALL = RegressionSettings(flip_after=200)
MODES = ("redraw", "flip_one")


def hand_target(target: ThresholdTarget, rows, beta: float) -> tuple[list[float], int]:
    """y for each input row, by the spec's formula in plain Python; also counts exact ties
    (pre-activation == τ, which must not fire)."""
    w1, b1 = target.w1.tolist(), target.b1.tolist()
    w2, b2 = target.w2.tolist(), target.b2.tolist()
    m = len(w1[0])
    ties = 0
    outputs = []
    for x in rows:
        y = b2[0]
        for i, weights in enumerate(w1):
            pre = sum(w * v for w, v in zip(weights, x, strict=True)) + b1[i]
            s = (m - sum(weights) + b1[i]) / 2
            tau = beta * (m + 1) - s
            ties += pre == tau
            if pre > tau:
                y += w2[i]
        outputs.append(y)
    return outputs, ties


def read(stream: RegressionStream, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    return stream.take(count)


def through_bytes(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


# --- seeding ------------------------------------------------------------------------------------
def test_derived_seed_is_a_deterministic_63_bit_function_of_the_key():
    seeds = {key: derived_seed(*key) for key in itertools.product(range(3), (TARGET, STREAM, LEARNER))}
    assert len(set(seeds.values())) == len(seeds)  # every (run, purpose) its own seed
    for key, value in seeds.items():
        assert value == derived_seed(*key)
        assert 0 <= value < 2**63
    assert derived_seed(1, 2) != derived_seed(2, 1)
    assert derived_seed(0, STREAM, 0) != derived_seed(0, STREAM, 1)
    assert len({TARGET, STREAM, LEARNER}) == 3


def test_generator_draws_depend_on_the_key_only():
    a = torch.rand(5, generator=generator(7, STREAM, 3))
    b = torch.rand(5, generator=generator(7, STREAM, 3))
    c = torch.rand(5, generator=generator(7, STREAM, 4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert generator(7, STREAM, 3).initial_seed() == derived_seed(7, STREAM, 3)


# --- the target network -------------------------------------------------------------------------
def test_target_weights_are_signs_of_the_right_shape():
    target = ThresholdTarget(RegressionSettings(), seed=0)
    assert target.w1.shape == (100, 20) and target.b1.shape == (100,)
    assert target.w2.shape == (100,) and target.b2.shape == (1,)
    for tensor in (target.w1, target.b1, target.w2):
        assert set(tensor.unique().tolist()) == {-1.0, 1.0}
    assert target.b2.item() in (-1.0, 1.0)
    # τ_i = β(m + 1) − S_i,  S_i = (m − Σ_j W_ij + b_i)/2  (β = 0.7, m = 20)
    w1, b1 = target.w1.tolist(), target.b1.tolist()
    expected = [0.7 * 21 - (20 - sum(w1[i]) + b1[i]) / 2 for i in range(100)]
    assert target.threshold.tolist() == pytest.approx(expected, abs=1e-5)


def test_target_output_by_hand_on_stream_inputs():
    stream = RegressionStream(SMALL, seed=11)
    x, y = stream.take(40)
    expected, _ = hand_target(stream.target, x.tolist(), beta=0.7)
    assert y.shape == (40, 1)
    assert y.reshape(-1).tolist() == expected
    assert len(set(expected)) > 1  # not a degenerate constant target


@pytest.mark.parametrize("mode", ["redraw", "flip_one"])
def test_looked_up_targets_equal_the_target_network_on_every_example(mode):
    # periods longer than the 2^5 fast-bit patterns take their targets from a table
    stream = RegressionStream(RegressionSettings(flip_after=1000, bit_change=mode), seed=5)
    x, y = stream.take(3000)
    assert torch.equal(y, stream.target(x))
    assert len(torch.unique(y)) > 1


def test_target_fires_only_when_strictly_above_threshold():
    """m = 4 and β = 0.5 make τ = 2.5 − S an integer (S is a half-integer), so integer
    pre-activations can equal it; enumerating all 16 inputs must hit such ties, which must not
    fire. (With β = 0.7 ties are impossible: τ ends in .2.)"""
    settings = RegressionSettings(num_inputs=4, num_slow_bits=2, target_hidden_units=12, threshold_beta=0.5)
    target = ThresholdTarget(settings, seed=5)
    rows = [list(bits) for bits in itertools.product((0.0, 1.0), repeat=4)]
    expected, ties = hand_target(target, rows, beta=0.5)
    assert ties > 0
    assert target(torch.tensor(rows)).reshape(-1).tolist() == expected


def test_target_depends_on_the_seed():
    a, b = ThresholdTarget(SMALL, 0), ThresholdTarget(SMALL, 1)
    assert torch.equal(a.w1, ThresholdTarget(SMALL, 0).w1)
    assert not torch.equal(a.w1, b.w1)


# --- the stream ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_slow_bits_constant_within_a_period_and_fresh_bits_vary(mode):
    settings = RegressionSettings(flip_after=200, bit_change=mode)
    stream = RegressionStream(settings, seed=2)
    x, y = stream.take(1000)
    assert x.shape == (1000, 20)
    assert set(x.unique().tolist()) == {0.0, 1.0}
    for period in range(5):
        block = x[period * 200 : (period + 1) * 200]
        assert (block[:, :15] == block[0, :15]).all(), "slow bits change inside a period"
        fast = block[:, 15:]
        fraction = fast.mean(dim=0)
        assert ((fraction > 0.35) & (fraction < 0.65)).all()  # i.i.d. fair bits, 200 each
        changes = (fast[1:] != fast[:-1]).any(dim=1).float().mean().item()
        assert changes > 0.9  # 5 fresh bits: P(no change) = 1/32
    expected = (
        (x @ stream.target.w1.T + stream.target.b1)
        > 0.7 * 21 - (20 - stream.target.w1.sum(dim=1) + stream.target.b1) / 2
    ).float() @ stream.target.w2 + stream.target.b2
    assert torch.equal(y.reshape(-1), expected)


def _slow_patterns(mode: str, periods: int, seed: int = 4) -> list[list[float]]:
    stream = RegressionStream(RegressionSettings(flip_after=200, bit_change=mode), seed=seed)
    x, _ = stream.take(200 * periods)
    return [x[p * 200, :15].tolist() for p in range(periods)]


def test_flip_one_changes_exactly_one_slow_bit_per_period():
    patterns = _slow_patterns("flip_one", 30)
    flipped = []
    for before, after in itertools.pairwise(patterns):
        differing = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
        assert len(differing) == 1
        flipped.append(differing[0])
    assert len(set(flipped)) > 5  # the flipped bit is drawn, not fixed
    assert 0 < sum(patterns[0]) < 15  # period 0 is random


def test_redraw_draws_all_slow_bits_afresh():
    patterns = _slow_patterns("redraw", 30)
    distances = [sum(a != b for a, b in zip(p, q, strict=True)) for p, q in itertools.pairwise(patterns)]
    # Binomial(15, 1/2) distances: mean 7.5; a flip_one stream would give 1 every time
    assert 5.0 < sum(distances) / len(distances) < 10.0
    assert max(distances) > 1
    assert 0 < sum(patterns[0]) < 15


@pytest.mark.parametrize("mode", MODES)
def test_same_seed_same_stream_and_different_seeds_differ(mode):
    settings = RegressionSettings(flip_after=200, bit_change=mode)
    xa, ya = RegressionStream(settings, 3).take(1000)
    xb, yb = RegressionStream(settings, 3).take(1000)
    xc, yc = RegressionStream(settings, 4).take(1000)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(xa, xc)
    assert not torch.equal(ya, yc)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "chunks",
    [
        [3000, 7000],
        [1, 199, 200, 401, 3000, 6199],
        [7] * 1428 + [4],
        [10_000],
    ],
    ids=["3000+7000", "ragged", "sevens", "whole"],
)
def test_stream_is_identical_however_it_is_chunked(mode, chunks):
    settings = RegressionSettings(flip_after=200, bit_change=mode)
    whole_x, whole_y = RegressionStream(settings, 9).take(10_000)
    stream = RegressionStream(settings, 9)
    parts = [stream.take(n) for n in chunks]
    assert sum(chunks) == 10_000 and stream.position == 10_000
    assert torch.equal(torch.cat([p[0] for p in parts]), whole_x)
    assert torch.equal(torch.cat([p[1] for p in parts]), whole_y)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("position", [0, 1, 150, 199, 200, 350, 400, 599, 600])
def test_stream_checkpoint_continues_identically(mode, position):
    settings = RegressionSettings(flip_after=200, bit_change=mode)
    reference_x, reference_y = RegressionStream(settings, 6).take(position + 700)
    stream = RegressionStream(settings, 6)
    if position:
        stream.take(position)
    saved = through_bytes(stream.state_dict())
    assert saved["position"] == position
    resumed = RegressionStream(settings, 6)
    resumed.load_state_dict(saved)
    # a checkpoint of the just-resumed stream (nothing read since the load) works too
    twice = RegressionStream(settings, 6)
    twice.load_state_dict(through_bytes(resumed.state_dict()))
    expected_x, expected_y = reference_x[position:], reference_y[position:]
    for candidate in (stream, resumed, twice):
        x1, y1 = candidate.take(123)  # across boundaries in pieces
        x2, y2 = candidate.take(577)
        assert torch.equal(torch.cat([x1, x2]), expected_x)
        assert torch.equal(torch.cat([y1, y2]), expected_y)


def test_stream_checkpoint_holds_the_slow_bits_flip_one_walks_on_from():
    settings = RegressionSettings(flip_after=200, bit_change="flip_one")
    x, _ = RegressionStream(settings, 6).take(600)
    stream = RegressionStream(settings, 6)
    assert stream.state_dict()["pattern_period"] == -1  # nothing drawn yet
    stream.take(150)  # mid period 0
    state = stream.state_dict()
    assert state["pattern_period"] == 0 and state["pattern"].tolist() == x[0, :15].tolist()
    assert state["generator"] == GENERATOR
    stream.take(50)  # at the boundary: still period 0's bits, which period 1 flips one of
    assert stream.state_dict()["pattern"].tolist() == x[0, :15].tolist()
    stream.take(1)
    assert stream.state_dict()["pattern"].tolist() == x[200, :15].tolist()


@pytest.mark.parametrize("mode", MODES)
def test_any_position_is_reached_without_reading_the_examples_before_it(mode):
    """Counter-based: an example is a function of (seed, period, offset); flip_one's slow bits walk
    forward from whatever period the stream holds, so a stream moved ahead serves the same examples
    as one that read its way there."""
    settings = RegressionSettings(flip_after=200, bit_change=mode)
    x, y = RegressionStream(settings, 6).take(1500)
    jumped = RegressionStream(settings, 6)
    jumped.take(10)
    jumped.position = 1234  # not through take(): six periods ahead
    x2, y2 = jumped.take(266)
    assert torch.equal(x2, x[1234:]) and torch.equal(y2, y[1234:])


def test_a_checkpoint_of_the_old_stream_is_refused():
    stream = RegressionStream(SMALL, 0)
    with pytest.raises(ValueError, match="Mersenne-twister generator of before 2026-12-06"):
        stream.load_state_dict({"position": 400, "pattern_before_period": None})


def test_peek_leaves_the_stream_where_it_is():
    stream = RegressionStream(SMALL, 3)
    stream.take(150)
    peeked = stream.peek(100)
    taken = stream.take(100)
    assert stream.position == 250
    assert torch.equal(peeked[0], taken[0]) and torch.equal(peeked[1], taken[1])


@pytest.mark.parametrize("fast_bits", [13, 20])
def test_periods_with_many_fast_bits_compute_each_target(fast_bits):
    # beyond TABLE_BITS fast bits a table of every pattern would outgrow the period
    settings = RegressionSettings(num_inputs=15 + fast_bits, flip_after=300)
    stream = RegressionStream(settings, 4)
    x, y = stream.take(700)
    assert torch.equal(y, stream.target(x)) and len(torch.unique(y)) > 1
    assert 0.4 < x[:, 15:].mean().item() < 0.6


# --- the experiment -----------------------------------------------------------------------------
CBP_SGD = CBPConfig(
    replacement_rate=0.05,
    maturity_threshold=10,
    decay_rate=0.99,
    util_type="adaptable_contribution",
    accumulate=False,
)
CBP_ACCUMULATE = CBPConfig(
    replacement_rate=0.05,
    maturity_threshold=10,
    decay_rate=0.99,
    util_type="contribution",
    accumulate=True,
)
LEARNERS = {
    "bp_sgd": LearnerSettings(),
    "bp_adam": LearnerSettings(optimizer="adam", step_size=0.001),
    "l2_sgd": LearnerSettings(algorithm="l2", weight_decay=0.01),
    "l2_adam": LearnerSettings(algorithm="l2", optimizer="adam", step_size=0.001, weight_decay=0.01),
    "snp_sgd": LearnerSettings(algorithm="snp", weight_decay=0.01, perturb_scale=0.01),
    "snp_adam": LearnerSettings(
        algorithm="snp", optimizer="adam", step_size=0.001, weight_decay=0.001, perturb_scale=0.001
    ),
    "cbp_sgd": LearnerSettings(algorithm="cbp", cbp=CBP_SGD),
    "cbp_sgd_momentum": LearnerSettings(algorithm="cbp", momentum=0.9, step_size=0.001, cbp=CBP_ACCUMULATE),
    "cbp_adam": LearnerSettings(algorithm="cbp", optimizer="adam", step_size=0.001, cbp=CBP_ACCUMULATE),
    "cbp_snp_adam": LearnerSettings(
        algorithm="cbp", optimizer="adam", step_size=0.001, perturb_scale=0.001, cbp=CBP_SGD
    ),
}


# Small enough to run the 8 experiment steps of a resume check in well under a second: 25 examples
# per step and slow bits that change every 50, so the checkpoint after step 2 is at a period
# boundary (30 per step puts it at 60, inside period 1).
def experiment_config(learner: LearnerSettings, examples_per_step=25, mode="redraw", activation="relu"):
    return RegressionConfig(
        seed=3,
        activation=activation,
        hidden_units=5,
        examples_per_step=examples_per_step,
        problem=RegressionSettings(flip_after=50, bit_change=mode),
        learner=learner,
    )


def _resume_case(config, tmp_path):
    straight = RegressionExperiment(config)
    expected = [straight.run_step()[0] for _ in range(4)]
    first = RegressionExperiment(config)
    before = [first.run_step()[0] for _ in range(2)]
    path = tmp_path / "checkpoint.pt"
    torch.save(first.state_dict(), path)
    resumed = RegressionExperiment(config)
    resumed.load_state_dict(torch.load(path, weights_only=False))
    after = [resumed.run_step()[0] for _ in range(2)]
    assert before + after == expected  # bit-identical metrics, not approximately equal
    assert resumed.steps_done == 4
    for (key, value), other in zip(
        straight.net.state_dict().items(), resumed.net.state_dict().values(), strict=True
    ):
        assert torch.equal(value, other), key
    return straight, expected


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_experiment_resumes_bit_identically(name, tmp_path):
    straight, metrics = _resume_case(experiment_config(LEARNERS[name]), tmp_path)
    assert [m["examples"] for m in metrics] == [25.0, 50.0, 75.0, 100.0]
    if LEARNERS[name].cbp is not None:
        assert metrics[1]["replaced_units"] > 0  # replacements before the checkpoint ...
        assert metrics[3]["replaced_units"] > metrics[1]["replaced_units"]  # ... and after it
    else:
        assert "replaced_units" not in metrics[0]


@pytest.mark.parametrize(
    ("name", "examples_per_step", "mode"),
    [("cbp_adam", 30, "redraw"), ("snp_sgd", 30, "flip_one"), ("cbp_sgd", 25, "flip_one")],
)
def test_experiment_resumes_mid_period_and_in_flip_one(name, examples_per_step, mode, tmp_path):
    # 30 examples per step: the checkpoint after step 2 is at position 60, inside period 1
    _resume_case(experiment_config(LEARNERS[name], examples_per_step, mode), tmp_path)


def test_interventions_change_the_run():
    runs = {}
    for name in ("bp_sgd", "l2_sgd", "snp_sgd", "cbp_sgd"):
        experiment = RegressionExperiment(experiment_config(LEARNERS[name]))
        runs[name] = [experiment.run_step()[0]["squared_error"] for _ in range(2)]
    assert len({tuple(v) for v in runs.values()}) == 4


def test_experiment_step_by_hand_sgd():
    """The first step of plain BP equals a hand-written online SGD loop over the same stream and
    the same initial network: error before each update, w ← w − α·∇(out − y)²."""
    config = experiment_config(LEARNERS["bp_sgd"])
    experiment = RegressionExperiment(config)
    metrics = experiment.run_step()[0]

    # the initial network by the spec's rule, drawn from the seed's generator (seed, LEARNER, 0):
    # Kaiming-uniform with relu's gain, then the linear gain for the output layer; biases 0
    draws = generator(config.seed, LEARNER, 0)
    w1 = torch.empty(5, 20).uniform_(-math.sqrt(6 / 20), math.sqrt(6 / 20), generator=draws).requires_grad_()
    w2 = torch.empty(1, 5).uniform_(-math.sqrt(3 / 5), math.sqrt(3 / 5), generator=draws).requires_grad_()
    b1, b2 = torch.zeros(5, requires_grad=True), torch.zeros(1, requires_grad=True)
    params = [w1, b1, w2, b2]
    x, y = RegressionStream(config.problem, config.seed).take(25)
    errors = []
    for i in range(25):
        out = torch.relu(x[i : i + 1] @ w1.T + b1) @ w2.T + b2
        loss = ((out - y[i : i + 1]) ** 2).sum()
        errors.append(loss.item())
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for param, grad in zip(params, grads, strict=True):
                param -= 0.01 * grad
    assert metrics["squared_error"] == pytest.approx(float(np.mean(errors)), rel=1e-5)
    for mine, theirs in zip(params, experiment.net.parameters(), strict=True):
        torch.testing.assert_close(mine.detach(), theirs[0], atol=1e-6, rtol=0)
    weights = [experiment.net.layers[0].weight, experiment.net.layers[1].weight]
    magnitude = sum(w.abs().sum().item() for w in weights) / (100 + 5)
    assert metrics["weight_magnitude"] == pytest.approx(magnitude, rel=1e-6)
    assert metrics["examples"] == 25.0


def test_linear_learner_has_no_hidden_layer():
    config = RegressionConfig(
        seed=1, hidden_units=0, examples_per_step=50, problem=RegressionSettings(flip_after=200)
    )
    experiment = RegressionExperiment(config)
    assert [tuple(layer.weight.shape) for layer in experiment.net.layers] == [(1, 1, 20)]
    assert experiment.net.unit_groups() == []
    assert experiment.run_step()[0]["examples"] == 50.0


def test_load_state_dict_refuses_a_different_algorithm(tmp_path):
    cbp = RegressionExperiment(experiment_config(LEARNERS["cbp_sgd"]))
    cbp.run_step()
    bp = RegressionExperiment(experiment_config(LEARNERS["bp_sgd"]))
    with pytest.raises(ValueError):
        bp.load_state_dict(through_bytes(cbp.state_dict()))
