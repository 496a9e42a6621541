"""PPO with a seed axis: each seed of a batch gets exactly what it gets in a batch of its own — every
algorithm, normalisers, several envs per seed, Slippery Ant's per-seed friction rows — whichever
runners and threads step its envs, and a batch resumes bit-identically."""

from __future__ import annotations

import dataclasses
import io
import math

import pytest
import torch

from lop_ray.algos.cbp import CBPConfig
from lop_ray.algos.injection import InjectionConfig
from lop_ray.algos.layer_reset import LayerResetConfig
from lop_ray.algos.parseval import ParsevalConfig
from lop_ray.algos.ppo import PPOConfig
from lop_ray.algos.redo import ReDoConfig
from lop_ray.algos.snr import SNRConfig
from lop_ray.experiments.ppo import PPOExperiment, PPOExperimentConfig
from lop_ray.rl.runner import LocalRunners, split_slots

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

CBP = CBPConfig(
    replacement_rate=0.05,
    maturity_threshold=2,
    init="lecun",
    util_type="contribution",
    bias_correction=True,
    reset_optimizer_state=True,  # our per-element-step Adam
)


def _tiny(env: str = "Hopper-v5", **kwargs) -> PPOExperimentConfig:
    base = dict(
        env=env,
        batch_size=128,
        iterations_per_step=2,
        ppo=PPOConfig(epochs=2, minibatch_size=64),
        hidden=(32, 32),
        max_episode_steps=50,
    )
    return PPOExperimentConfig(**{**base, **kwargs})


CONFIGS = {
    "bp": _tiny(),
    "l2-normalised-two-envs-threads": _tiny(
        weight_decay=1e-3,
        normalize_observations=True,
        normalize_rewards=True,
        envs_per_seed=2,
        env_threads=2,
        beta1=0.99,
        beta2=0.99,
    ),
    "cbp-ant-original": _tiny(
        "Ant-v5", ant_observation="original", policy_cbp=CBP, value_cbp=CBP, weight_decay=1e-4
    ),
    "redo-walker-clipped": _tiny(
        "Walker2d-v5",
        redo=ReDoConfig(threshold=0.5, reset_period=3),
        ppo=PPOConfig(epochs=2, minibatch_size=64, max_grad_norm=0.5),
    ),
    "slippery-ant": _tiny("SlipperyAnt-v5", friction_change_every=60, hidden=(16,)),
    # the methods since the paper, on both nets (docs/methods.md)
    "full-reset": _tiny(method=LayerResetConfig(reset_period=5, layers=0, reset_optimizer_state=True)),
    "parseval-l2-init": _tiny(method=ParsevalConfig(parseval_strength=1e-3), l2_init=0.1),
    "snr": _tiny(method=SNRConfig(rejection_percentile=0.5)),
    # the network options since the paper, the runners' numpy copy computing them too
    "layer-norm-crelu-cbp": _tiny(layer_norm=True, crelu=True, policy_cbp=CBP, value_cbp=CBP),
    # the runners act with the frozen heads too: a two-layer head, injected several times a step
    "plasticity-injection": _tiny(method=InjectionConfig(injection_period=7, head_layers=2)),
}


def _same(a: dict, b: dict) -> bool:
    keys = set(a) - {"env_steps_per_second"}
    return keys == set(b) - {"env_steps_per_second"} and all(
        a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in keys
    )


def _run(config: PPOExperimentConfig, seeds: list[int], steps: int = 2) -> tuple[list, PPOExperiment]:
    experiment = PPOExperiment(config, seeds=seeds)
    results = [experiment.run_step() for _ in range(steps)]
    experiment.close()
    return results, experiment


@pytest.mark.parametrize("name", list(CONFIGS))
def test_each_seed_of_a_batch_gets_what_it_gets_alone(name):
    config = CONFIGS[name]
    seeds = [3, 5, 8]
    batched, together = _run(config, seeds)
    for k, seed in enumerate(seeds):
        alone, by_itself = _run(config, [seed])
        for step in range(2):
            assert _same(batched[step][k], alone[step][0]), (name, seed, step)
        for a, b in zip(together.learner._params, by_itself.learner._params, strict=True):
            assert torch.equal(a[k], b[0])
    if (
        config.policy_cbp is not None
        or config.redo is not None
        or isinstance(config.method, LayerResetConfig)
    ):
        assert all(metrics["replaced_units"] > 0 for metrics in batched[1])  # the interventions ran
    if isinstance(config.method, InjectionConfig):  # injected on both nets, the runners acting with it
        assert together.policy.head_correction is not None and together.value.head_correction is not None
    if config.env == "SlipperyAnt-v5":  # each seed follows its own friction row
        assert len({metrics["friction"] for metrics in batched[1]}) == len(seeds)
    assert not _same(batched[1][0], batched[1][1])  # and the seeds differ


def test_with_more_threads_than_seeds_a_seed_alone_still_gets_what_it_gets_in_a_batch():
    """The learner's threads: a seed alone with two threads computes what it does in a batch of
    two (MKL would split one seed's products across the threads; `PPOLearner.update`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        config = dataclasses.replace(_tiny(), hidden=(32, 32))
        batched, _ = _run(config, [0, 1])
        alone, _ = _run(config, [1])
    finally:
        torch.set_num_threads(threads)
    assert all(_same(b[1], a[0]) for b, a in zip(batched, alone, strict=True))
    assert torch.get_num_threads() == threads


def test_where_envs_step_changes_nothing():
    """One runner, two runners splitting the seeds' envs unevenly, threads within a runner."""
    config = _tiny(envs_per_seed=2)
    seeds = [0, 1, 2]
    reference, _ = _run(config, seeds, steps=1)
    for layout in (dict(num_runners=2), dict(num_runners=4, env_threads=2), dict(env_threads=3)):
        moved = PPOExperimentConfig(**{**config.__dict__, **layout})
        assert [len(s.slots) for s in moved.runner_specs(seeds)] == [
            len(block) for block in split_slots(3, 2, moved.num_runners)
        ]
        got, _ = _run(moved, seeds, steps=1)
        assert all(_same(a, b) for a, b in zip(got[0], reference[0], strict=True)), layout


@pytest.mark.parametrize("name", ["cbp-ant-original", "plasticity-injection"])
def test_a_batch_resumes_bit_identically(name):
    """Plasticity injection's frozen heads, installed in the nets, come back with the checkpoint."""
    config = CONFIGS[name]
    seeds = [1, 2]
    straight = PPOExperiment(config, seeds=seeds)
    expected = [straight.run_step(), straight.run_step()]
    first = PPOExperiment(config, seeds=seeds)
    first.run_step()
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = PPOExperiment(config, seeds=seeds)
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    assert all(_same(a, b) for a, b in zip(resumed.run_step(), expected[1], strict=True))
    buffer.seek(0)
    other = PPOExperiment(config, seeds=[1, 3])
    with pytest.raises(ValueError, match=r"checkpoint is of seeds \[1, 2\], this run has \[1, 3\]"):
        other.load_state_dict(torch.load(buffer, weights_only=False))


def test_a_run_with_fewer_envs_than_runners_has_one_runner_per_env():
    specs = _tiny(num_runners=3, envs_per_seed=1).runner_specs([0, 1])
    assert [spec.slots for spec in specs] == [((0, 0),), ((1, 0),)]
    LocalRunners(specs).close()


def test_worker_processes_compute_what_in_process_runners_compute():
    """The pure-PyTorch loop's process pool: the same numbers, a checkpoint moved between the two
    layouts, and a worker's error raised in the parent."""
    from lop_ray.rl.process_runners import ProcessRunners

    config = _tiny(num_runners=2, envs_per_seed=1, normalize_observations=True)
    seeds = [0, 1, 2]
    local = PPOExperiment(config, seeds=seeds)
    pooled = PPOExperiment(config, ProcessRunners(config.runner_specs(seeds)), seeds=seeds)
    try:
        assert all(_same(a, b) for a, b in zip(local.run_step(), pooled.run_step(), strict=True))
        buffer = io.BytesIO()
        torch.save(pooled.state_dict(), buffer)
        buffer.seek(0)
        moved = PPOExperiment(config, seeds=seeds)
        moved.load_state_dict(torch.load(buffer, weights_only=False))
        assert all(_same(a, b) for a, b in zip(moved.run_step(), pooled.run_step(), strict=True))
        with pytest.raises(RuntimeError, match="env runner worker failed in load_state_dict: ValueError"):
            pooled.runners.load_state_dict([{"slots": [], "seeds": []}] * 2)
    finally:
        pooled.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (bench/device_ppo.sh)")
def test_the_learner_on_cuda_follows_the_cpu_learner():
    """Rollouts on the CPU, the update on the GPU: the same run as on the CPU up to the GPU's
    rounding (its reductions sum in another order), CBP's new units drawn on the CPU as there."""
    config = dataclasses.replace(CONFIGS["cbp-ant-original"], iterations_per_step=1)
    cpu, _ = _run(config, [0, 1], steps=1)
    experiment = PPOExperiment(config, device="cuda", seeds=[0, 1])
    gpu = [experiment.run_step()]
    experiment.close()
    for a, b in zip(cpu[0], gpu[0], strict=True):
        assert b["episodes"] == a["episodes"]  # one iteration: it acts with the same initial nets
        for key in ("policy_loss", "value_loss", "gradient_norm", "distance_from_init"):
            assert b[key] == pytest.approx(a[key], rel=1e-2), key


def test_a_method_on_both_nets_draws_apart_and_its_term_reaches_the_update():
    """A full reset redraws the policy's and the value net's same-shaped hidden layer from streams
    of their own; Parseval's gradient term moves the update."""
    config = _tiny(method=LayerResetConfig(reset_period=1, layers=0))
    experiment = PPOExperiment(config, seeds=[0])
    experiment.run_step()
    policy_hidden, value_hidden = experiment.policy.layers[1].weight, experiment.value.layers[1].weight
    assert policy_hidden.shape == value_hidden.shape and not torch.equal(policy_hidden, value_hidden)
    experiment.close()
    plain, _ = _run(_tiny(), [0], steps=1)
    regularised, _ = _run(_tiny(method=ParsevalConfig(parseval_strength=1e-2)), [0], steps=1)
    assert regularised[0][0]["distance_from_init"] != plain[0][0]["distance_from_init"]
