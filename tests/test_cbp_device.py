"""Seed-batched continual backprop on any device: replacement decided and applied on the device
without reading anything back to the host between the draw pool's refills, new weights drawn from
each seed's own CPU generator (exactly the draws it takes alone, step by step), and a CUDA run that
follows the CPU run (the CUDA tests run where a GPU is)."""

from __future__ import annotations

import pytest
import torch

from lop_ray.algos import CBPConfig
from lop_ray.algos.cbp import ContinualBackprop
from lop_ray.data.seeding import LEARNER, generator
from lop_ray.experiments.learner import LearnerSettings
from lop_ray.experiments.regression import RegressionConfig, RegressionExperiment

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

SEEDS = [3, 0, 7]
LEARNERS = {
    "probabilistic": LearnerSettings(
        algorithm="cbp", step_size=0.01, cbp=CBPConfig(replacement_rate=0.01, maturity_threshold=20)
    ),
    # ρ·width = 2.25 with 5 hidden units: up to 3 units of a seed in one step
    "several_per_step_original_adam": LearnerSettings(
        algorithm="cbp",
        optimizer="adam",
        step_size=1e-3,
        cbp=CBPConfig(
            replacement_rate=0.45,
            maturity_threshold=5,
            accumulate=True,
            bias_correction=False,
            replacement_base="width",
        ),
    ),
    "contribution_momentum": LearnerSettings(
        algorithm="cbp",
        step_size=0.01,
        momentum=0.9,
        cbp=CBPConfig(replacement_rate=0.02, maturity_threshold=10, util_type="contribution"),
    ),
}


def _experiment(name: str, device: str = "cpu", per_step: int = 50) -> RegressionExperiment:
    # the PyTorch learner's CBP (on the CPU the compiled kernel would run it, always from the pool)
    config = RegressionConfig(examples_per_step=per_step, learner=LEARNERS[name], compiled=False)
    return RegressionExperiment(config, SEEDS, device)


def _drawing_ahead(experiment: RegressionExperiment) -> RegressionExperiment:
    """The experiment with its CBP drawing new weights ahead into the pool, as on a CUDA device
    (on the CPU it draws them when needed); built before any step, so from the same generators."""
    old = experiment.cbp
    cbp = ContinualBackprop(old.groups, old.optimizer, old.config, old.generators, old.keys, draw_ahead=True)
    interventions = experiment.learner.interventions
    interventions[interventions.index(old)] = cbp
    experiment.cbp = cbp
    return experiment


def _tensors(state, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, list) else ()
    found = {}
    for key, value in items:
        found.update(_tensors(value, f"{prefix}/{key}"))
    return found


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_masked_replacement_every_step_equals_skipping_layers_where_no_seed_replaces(name):
    gated, masked = _experiment(name), _drawing_ahead(_experiment(name))
    assert gated.cbp.host_gate and not gated.cbp.draw_ahead  # on the CPU: drawn when needed, and
    # a layer where no seed replaces is skipped
    masked.cbp.host_gate = False  # what a CUDA device runs: the masked writes on every step, new
    # weights from the pool
    assert [masked.run_step() for _ in range(3)] == [gated.run_step() for _ in range(3)]
    assert all(m["replaced_units"] > 0 for m in masked.run_step())
    gated.run_step()
    expected, got = _tensors(gated.state_dict()), _tensors(masked.state_dict())
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        assert torch.equal(value, got[key]), key


def test_new_weights_take_exactly_the_seeds_own_draws_across_refills_and_checkpoints(monkeypatch):
    monkeypatch.setattr(ContinualBackprop, "refill_steps", 3)
    name = "several_per_step_original_adam"
    straight, interrupted = _drawing_ahead(_experiment(name)), _drawing_ahead(_experiment(name))
    for _ in range(2):
        straight.run_step()
    interrupted.run_step()
    interrupted.state_dict()  # a checkpoint between refills moves the pool's bookkeeping
    interrupted.run_step()
    saved = interrupted.state_dict()
    resumed = _drawing_ahead(_experiment(name))
    resumed.load_state_dict(saved)
    assert resumed.run_step() == straight.run_step()
    states = resumed.cbp.state_dict()["generators"]
    fan_in = resumed.net.layers[0].weight.shape[2]
    for seed, replaced, state in zip(SEEDS, resumed.cbp.replaced_total.tolist(), states, strict=True):
        # alone, seed s draws fan_in uniforms per new unit from its learner generator, nothing else
        alone = generator(seed, LEARNER)
        torch.empty(replaced * fan_in).uniform_(generator=alone)
        assert replaced > 20 and torch.equal(state, alone.get_state()), seed


HOST_READS = ("item", "tolist", "cpu", "nonzero", "__bool__", "__int__", "__float__")


def test_the_masked_step_reads_from_the_device_only_to_refill_its_pool(monkeypatch):
    monkeypatch.setattr(ContinualBackprop, "refill_steps", 4)
    experiment = _drawing_ahead(_experiment("contribution_momentum", per_step=40))
    cbp = experiment.cbp
    cbp.host_gate = False  # what a CUDA device runs: masked writes, PyTorch's statistics
    cbp.compiled_statistics = [False] * len(cbp.compiled_statistics)
    reads: list[str] = []
    inside = [False]

    def counted(name, original):
        def read(*args, **kwargs):
            if inside[0]:
                reads.append(name)
            return original(*args, **kwargs)

        return read

    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, counted(name, getattr(torch.Tensor, name)))
    monkeypatch.setattr(torch, "nonzero", counted("torch.nonzero", torch.nonzero))
    after_step = cbp.after_step

    def watched(activations):
        inside[0] = True
        try:
            after_step(activations)
        finally:
            inside[0] = False

    monkeypatch.setattr(cbp, "after_step", watched)
    metrics = experiment.run_step()
    assert min(m["replaced_units"] for m in metrics) > 0  # steps that replaced are among the 40
    assert reads == ["tolist"] * 9  # refills before steps 5, 9, …, 37: one read each


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
@pytest.mark.parametrize("name", ["probabilistic", "several_per_step_original_adam"])
def test_a_cuda_batch_follows_the_cpu_batch(name):
    cpu, cuda = _experiment(name, "cpu", per_step=200), _experiment(name, "cuda", per_step=200)
    for _ in range(2):
        expected, got = cpu.run_step(), cuda.run_step()
        for want, have in zip(expected, got, strict=True):
            assert have["replaced_units"] == want["replaced_units"] > 0
            assert have["squared_error"] == pytest.approx(want["squared_error"], rel=1e-3)
    assert torch.equal(cpu.cbp.state_dict()["generators"][0], cuda.cbp.state_dict()["generators"][0])


@needs_cuda
def test_a_cuda_single_seed_learner_follows_the_cpu_one():
    config = RegressionConfig(seed=4, examples_per_step=200, learner=LEARNERS["probabilistic"])
    cpu, cuda = RegressionExperiment(config, device="cpu"), RegressionExperiment(config, device="cuda")
    for _ in range(2):
        expected, got = cpu.run_step(), cuda.run_step()
        assert got["replaced_units"] == expected["replaced_units"] > 0
        assert got["squared_error"] == pytest.approx(expected["squared_error"], rel=1e-3)
    assert torch.equal(cpu.cbp.generators[0].get_state(), cuda.cbp.generators[0].get_state())
