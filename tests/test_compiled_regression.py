"""The compiled regression learner (`experiments.regression_kernel`) against the PyTorch learner it
stands in for: the same examples, the same units replaced at the same steps, errors and weights to
float32 rounding (the kernel's element-wise updates and S&P's Gaussian transform are its own code,
PyTorch's vectorised kernels fuse some multiply-adds), and within the kernel the guarantees of the
PyTorch path bit for bit: a seed alone equals it in any batch, in any cut of its examples into
calls, and resumed from a checkpoint."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from lop_ray.algos import CBPConfig
from lop_ray.algos.cbp import UTIL_TYPES
from lop_ray.algos.redo import ReDoConfig
from lop_ray.data.regression import RegressionSettings
from lop_ray.experiments.compiled_regression import unsupported
from lop_ray.experiments.learner import LearnerSettings
from lop_ray.experiments.regression import RegressionConfig, RegressionExperiment
from lop_ray.nets.one_example_kernel import ACTIVATION_CODES

SEEDS = [4, 0, 9]


def _cbp(optimizer: str = "sgd", **options) -> LearnerSettings:
    # replacing often: some seed replaces a unit every few steps, so the pool runs dry and refills
    config = CBPConfig(**{"replacement_rate": 0.05, "maturity_threshold": 15, **options})
    step = 0.01 if optimizer == "sgd" else 1e-3
    return LearnerSettings(algorithm="cbp", optimizer=optimizer, step_size=step, cbp=config)


LEARNERS = {
    "bp_sgd": LearnerSettings(step_size=0.01),
    "l2": LearnerSettings(algorithm="l2", step_size=0.01, weight_decay=1e-3),
    "l2_momentum": LearnerSettings(algorithm="l2", step_size=0.01, momentum=0.9, weight_decay=1e-3),
    "snp": LearnerSettings(algorithm="snp", step_size=0.01, weight_decay=1e-2, perturb_scale=1e-3),
    "adam": LearnerSettings(optimizer="adam", step_size=1e-3),
    "adam_l2": LearnerSettings(algorithm="l2", optimizer="adam", step_size=1e-3, weight_decay=1e-3),
    "adamw": LearnerSettings(optimizer="adamw", step_size=1e-3, weight_decay=1e-2),
    "adam_snp": LearnerSettings(
        algorithm="snp", optimizer="adam", step_size=1e-3, weight_decay=1e-3, perturb_scale=1e-3
    ),
    "l2_init": LearnerSettings(step_size=0.01, l2_init=1e-3),
    **{f"cbp_{u}": _cbp(util_type=u, accumulate=True) for u in UTIL_TYPES},
    "cbp_probabilistic": _cbp(util_type="contribution", accumulate=False),
    "cbp_original": _cbp(
        bias_correction=False, reset_optimizer_state=False, replacement_base="width", maturity_threshold=10
    ),
    "cbp_adam": _cbp("adam", util_type="adaptable_contribution"),
    "cbp_adam_original": _cbp("adam", bias_correction=False, reset_optimizer_state=False),
    "cbp_snp": dataclasses.replace(_cbp(), weight_decay=1e-3, perturb_scale=1e-3),
}


def _pair(config: RegressionConfig, seeds=SEEDS) -> tuple[RegressionExperiment, RegressionExperiment]:
    compiled = RegressionExperiment(config, seeds)
    pytorch = RegressionExperiment(dataclasses.replace(config, compiled=False), seeds)
    assert compiled.compiled is not None and pytorch.compiled is None
    return compiled, pytorch


def _assert_close_runs(compiled: RegressionExperiment, pytorch: RegressionExperiment, steps: int) -> list:
    together = []
    for _ in range(steps):
        got, expected = compiled.run_step(), pytorch.run_step()
        together.append(got)
        for mine, theirs in zip(got, expected, strict=True):
            assert mine.keys() == theirs.keys()
            if "replaced_units" in mine:
                assert mine["replaced_units"] == theirs["replaced_units"]
            for key in ("squared_error", "weight_magnitude", "gradient_norm"):
                assert mine[key] == pytest.approx(theirs[key], rel=2e-4, abs=1e-6), key
    for a, b in zip(compiled.net.parameters(), pytorch.net.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5)
    return together


@pytest.mark.parametrize("hidden_units", [5, 0], ids=["20-5-1", "linear"])
@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_the_kernel_follows_the_pytorch_learner(name, hidden_units):
    config = RegressionConfig(examples_per_step=400, hidden_units=hidden_units, learner=LEARNERS[name])
    compiled, pytorch = _pair(config)
    together = _assert_close_runs(compiled, pytorch, 3)
    if name.startswith("cbp") and hidden_units:
        assert all(seed["replaced_units"] > 0 for seed in together[-1])
        for mine, theirs in zip(compiled.cbp.state, pytorch.cbp.state, strict=True):
            assert torch.equal(mine["age"], theirs["age"])
            for key in ("utility", "bias_corrected_utility", "mean_activation", "accumulated"):
                torch.testing.assert_close(mine[key], theirs[key], rtol=1e-4, atol=1e-6)
        # the optimizer's state of the replaced units was reset alike
        for p, q in zip(compiled.net.parameters(), pytorch.net.parameters(), strict=True):
            for key, value in compiled.learner.optimizer.state[p].items():
                other = pytorch.learner.optimizer.state[q][key]
                torch.testing.assert_close(value, other, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("activation", sorted(ACTIVATION_CODES))
def test_every_compiled_activation_follows_the_pytorch_learner(activation):
    config = RegressionConfig(
        examples_per_step=300, activation=activation, learner=LEARNERS["cbp_contribution"]
    )
    _assert_close_runs(*_pair(config), 2)


@pytest.mark.parametrize("bit_change", ["redraw", "flip_one"])
def test_both_streams_and_steps_across_periods(bit_change):
    """Steps that start and end inside periods (flip_after 150, 400 examples a step), both ways of
    changing the slow bits, and more fast bits than the targets' table takes (computed directly)."""
    for problem in (
        RegressionSettings(flip_after=150, bit_change=bit_change),
        RegressionSettings(num_inputs=30, flip_after=150, bit_change=bit_change),
    ):
        config = RegressionConfig(examples_per_step=400, problem=problem, learner=LEARNERS["adam"])
        _assert_close_runs(*_pair(config), 3)


@pytest.mark.parametrize("name", ["bp_sgd", "adam_snp", "cbp_probabilistic", "cbp_random", "cbp_adam"])
def test_a_seed_is_the_same_alone_in_any_batch_and_any_cut_into_steps(name):
    whole = RegressionExperiment(RegressionConfig(examples_per_step=600, learner=LEARNERS[name]), SEEDS)
    expected = whole.run_step()
    for seeds in ([9], [9, 4, 0, 2]):
        cut = RegressionExperiment(RegressionConfig(examples_per_step=200, learner=LEARNERS[name]), seeds)
        for _ in range(3):
            cut.run_step()
        position = seeds.index(9)
        for mine, theirs in zip(cut.net.parameters(), whole.net.parameters(), strict=True):
            assert torch.equal(mine[position], theirs[2])
        if whole.cbp is not None:
            assert cut.cbp.replaced_total[position] == whole.cbp.replaced_total[2] > 0
            assert torch.equal(cut.cbp.state[0]["utility"][position], whole.cbp.state[0]["utility"][2])
    assert expected[2]["squared_error"] > 0


@pytest.mark.parametrize("name", ["l2_momentum", "adam_snp", "cbp_probabilistic", "cbp_adam", "cbp_snp"])
def test_resumed_it_continues_bit_identically(name):
    config = RegressionConfig(examples_per_step=500, learner=LEARNERS[name])
    straight = RegressionExperiment(config, SEEDS)
    expected = [straight.run_step() for _ in range(4)]
    first = RegressionExperiment(config, SEEDS)
    got = [first.run_step(), first.run_step()]
    state = copy.deepcopy(first.state_dict())  # as written to disk: nothing aliased
    first.run_step()  # lost with the process
    resumed = RegressionExperiment(config, SEEDS)
    resumed.load_state_dict(state)
    got += [resumed.run_step() for _ in range(2)]
    assert got == expected
    for a, b in zip(straight.net.parameters(), resumed.net.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_checkpoint_moves_between_the_two_paths():
    """Both paths keep their state in the same tensors: a checkpoint of one continues on the other
    (to rounding, as the two paths agree)."""
    config = RegressionConfig(examples_per_step=300, learner=LEARNERS["cbp_adam"])
    compiled, pytorch = _pair(config)
    compiled.run_step()
    pytorch.load_state_dict(copy.deepcopy(compiled.state_dict()))
    _assert_close_runs(compiled, pytorch, 2)


def test_what_the_kernel_does_not_have_runs_on_pytorch():
    def reason(**changes):
        config = dataclasses.replace(RegressionConfig(examples_per_step=10), **changes)
        experiment = RegressionExperiment(config, [0])
        found = unsupported(experiment.net, experiment.learner, experiment.device)
        assert (experiment.compiled is None) == (found is not None)
        return found

    assert reason() is None
    assert "layer norm" in reason(layer_norm=True)
    assert "CReLU" in reason(crelu=True)
    assert "selu" in reason(activation="selu")
    redo = LearnerSettings(algorithm="redo", step_size=0.01, method=ReDoConfig())
    assert "ReDo" in reason(learner=redo)
    upgd = LearnerSettings(algorithm="upgd", optimizer="upgd", step_size=0.01)
    assert "UPGD" in reason(learner=upgd)
    cumulative = _cbp(utility_average="cumulative", util_type="contribution")
    assert "EMA" in reason(learner=cumulative)
    # applicable, but asked to stay on PyTorch
    assert RegressionExperiment(RegressionConfig(compiled=False), [0]).compiled is None


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_adams_one_step_count_path_equals_its_per_element_path(optimizer):
    """Adam without unit resets keeps one step count per seed (`advance_seeds`'s one-pass update, with the
    bias corrections' divisions left out once both are exactly 1); CBP with ρ = 0 never replaces a
    unit but keeps the per-element counts. The two are bit-identical, early on and across the count
    from which the corrections are 1."""
    from lop_ray.experiments.regression_kernel import correction_tables

    saturated = len(correction_tables(0.9, 0.999)[0]) - 1
    plain = LearnerSettings(optimizer=optimizer, step_size=1e-3, weight_decay=1e-3)
    never_replacing = dataclasses.replace(_cbp(optimizer, replacement_rate=0.0), weight_decay=1e-3)
    for preset in (None, saturated - 150):
        one_count, per_element = (
            RegressionExperiment(RegressionConfig(examples_per_step=200, learner=learner), SEEDS)
            for learner in (plain, never_replacing)
        )
        assert one_count.compiled is not None and per_element.compiled is not None
        for experiment in (one_count, per_element):
            experiment.run_step()
            if preset is not None:
                for state in experiment.learner.optimizer.state.values():
                    state["step"].fill_(preset)
            experiment.run_step()
            experiment.run_step()
        assert all(seed["replaced_units"] == 0 for seed in per_element.run_step())
        one_count.run_step()
        for p, q in zip(one_count.net.parameters(), per_element.net.parameters(), strict=True):
            assert torch.equal(p, q)
            for key in ("step", "exp_avg", "exp_avg_sq"):
                mine, theirs = (
                    one_count.learner.optimizer.state[p][key],
                    per_element.learner.optimizer.state[q][key],
                )
                assert torch.equal(mine, theirs), key
        if preset is not None:
            assert one_count.learner.optimizer.state[p]["step"].min() > saturated


def test_the_linear_learners_adam_follows_pytorch_across_the_count_where_corrections_reach_1():
    """The linear learner (no hidden layer, so no CBP stand-in for the per-element path) against the
    PyTorch learner, early and from just before its bias corrections become exactly 1: the same
    errors and weights to rounding, and the same step counts exactly."""
    from lop_ray.experiments.regression_kernel import correction_tables

    saturated = len(correction_tables(0.9, 0.999)[0]) - 1
    learner = LearnerSettings(optimizer="adam", step_size=1e-3)
    for preset in (None, saturated - 150):
        compiled, pytorch = _pair(RegressionConfig(examples_per_step=200, hidden_units=0, learner=learner))
        for experiment in (compiled, pytorch):
            experiment.run_step()
            if preset is not None:
                for state in experiment.learner.optimizer.state.values():
                    state["step"].fill_(preset)
        _assert_close_runs(compiled, pytorch, 2)
        for p, q in zip(compiled.net.parameters(), pytorch.net.parameters(), strict=True):
            steps = compiled.learner.optimizer.state[p]["step"]
            assert torch.equal(steps, pytorch.learner.optimizer.state[q]["step"])
        if preset is not None:
            assert steps.min() > saturated
