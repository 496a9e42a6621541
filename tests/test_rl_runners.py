"""Env runners as Ray actors: the same numbers as the single-process path over the same layout, the
trial's placement group holds them, and a tiny PPO sweep runs through Ray Tune with 2 runner actors."""

from __future__ import annotations

import io
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from lop_ray.algos.ppo import PPOConfig
from lop_ray.experiments.ppo import PPOExperiment, PPOExperimentConfig, config_from_trial
from lop_ray.rl.runner import LocalRunners, policy_weights
from tests.conftest import write_sweep

CONFIG = PPOExperimentConfig(
    env="Hopper-v5",
    seed=5,
    batch_size=256,
    iterations_per_step=1,
    num_runners=2,
    ppo=PPOConfig(epochs=2, minibatch_size=64),
    hidden=(32, 32),
    max_episode_steps=100,
)


@pytest.fixture(scope="module")
def ray_3cpu():
    """A local Ray with 3 logical CPUs (a learner and 2 runner actors, on this 2-core machine), one
    for the module: starting Ray costs more than these tests."""
    import ray

    path = tempfile.mkdtemp(prefix="lopray-", dir="/tmp")
    before = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = path
    ray.init(num_cpus=3, include_dashboard=False, _temp_dir=path)
    yield
    ray.shutdown()
    if before is None:
        os.environ.pop("RAY_TMPDIR", None)
    else:
        os.environ["RAY_TMPDIR"] = before


def _same(a: dict | list[dict], b: dict | list[dict]) -> bool:
    if isinstance(a, list):  # one metrics dict per seed
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    keys = set(a) - {"env_steps_per_second"}
    return keys == set(b) - {"env_steps_per_second"} and all(
        a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in keys
    )


@pytest.mark.slow
def test_runner_actors_compute_what_in_process_runners_compute(ray_3cpu):
    from lop_ray.trainables.env_runners import RemoteRunners

    torch.set_num_threads(1)
    local = PPOExperiment(CONFIG)
    remote = PPOExperiment(CONFIG, RemoteRunners(CONFIG.runner_specs()))
    try:
        # rollouts themselves, then whole PPO steps, then a checkpoint moved between the two paths
        weights = policy_weights(local.policy)
        for a, b in zip(local.runners.collect(weights, 64), remote.runners.collect(weights, 64), strict=True):
            for name in ("obs", "actions", "log_probs", "rewards", "dones", "last_obs", "episode_returns"):
                np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
        for _ in range(2):
            assert _same(local.run_step(), remote.run_step())
        moved = PPOExperiment(CONFIG)  # in-process, from the actors' checkpoint (as saved: as bytes)
        buffer = io.BytesIO()
        torch.save(remote.state_dict(), buffer)
        buffer.seek(0)
        moved.load_state_dict(torch.load(buffer, weights_only=False))
        assert _same(moved.run_step(), remote.run_step())
    finally:
        remote.close()


def test_runner_layout_is_checked_on_restore():
    one = LocalRunners(PPOExperimentConfig(env="Hopper-v5", num_runners=1, envs_per_runner=2).runner_specs())
    two = LocalRunners(PPOExperimentConfig(env="Hopper-v5", num_runners=2).runner_specs())
    with pytest.raises(ValueError, match="checkpoint holds 1 runners, this run has 2"):
        two.load_state_dict(one.state_dict())


TINY_RL = """\
name: {name}
problem:
  name: rl
  env: Hopper-v5
  batch_size: 256
  minibatch_size: 64
  epochs: 2
  iterations_per_step: 1
  max_episode_steps: 100
  env_runners: 2
  envs_per_seed: 1
  runner_cpus: 0.5
network:
  hidden_units: 32
seeds: [0, 1]
seeds_per_trial: 2
num_tasks: 2
algorithms:
  - algorithm: ppo
    label: std
resources: {{cpu: 1}}
storage: {storage}
"""


def test_tiny_sweep_through_tune_with_two_runner_actors(tmp_path, ray_3cpu):
    """A Tune trial of 2 seeds reserves 1 + 2 bundles, starts its 2 actors in them (one seed's env
    each), and logs to each seed's MLflow run exactly what that seed alone computes in a plain
    in-process loop; its checkpoint resumes in-process bit-identically."""
    from lop_ray.schema import load_sweep
    from lop_ray.sweep import run_sweep
    from lop_ray.trainables.ppo import PPOTrainable, learner_threads, placement

    sweep = load_sweep(
        write_sweep(tmp_path / "rl.yaml", TINY_RL.format(name="tiny_rl", storage=tmp_path / "r"))
    )
    [group] = sweep.groups
    trial = group[0]
    request = placement(sweep.resources, trial["problem_settings"])
    assert request.bundles == [{"CPU": 1.0}, {"CPU": 0.5}, {"CPU": 0.5}]
    assert PPOTrainable.resource_request(sweep.resources)({"trials": group}).bundles == request.bundles
    assert learner_threads(request.bundles) == 2  # the runners' CPUs too: they wait during the update

    outcome = run_sweep(sweep, quiet=True)
    assert outcome.errors == 0

    torch.set_num_threads(2)
    client = MlflowClient(outcome.tracking_uri)
    experiment = client.get_experiment_by_name("tiny_rl")
    runs = {
        int(r.data.params["seed"]): r
        for r in client.search_runs([experiment.experiment_id])
        if r.data.tags.get("lop_ray.kind") == "trial"
    }
    assert sorted(runs) == [0, 1]
    for seed, run in runs.items():
        alone = PPOExperiment(config_from_trial(group[seed]), seeds=[seed])
        expected = [alone.run_step()[0] for _ in range(2)]
        assert run.info.status == "FINISHED"
        for key in (
            "episodic_return",
            "env_steps",
            "stable_rank",
            "dormant_units_percent",
            "weight_magnitude",
        ):
            history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
            assert [m.value for m in history] == [row[key] for row in expected], (seed, key)
        assert [m.value for m in client.get_metric_history(run.info.run_id, "env_steps")] == [256.0, 512.0]
    assert (Path(outcome.results_dir) / "episodic_return.png").exists()

    # the trial's last checkpoint (written with runner actors) resumes in-process, bit-identically
    [state_file] = sorted(Path(outcome.results_dir).glob("*/checkpoint_*/state.pt"))[-1:]
    moved = PPOExperiment(config_from_trial(trial), seeds=[0, 1])
    moved.load_state_dict(torch.load(state_file, weights_only=False)["experiment"])
    reference = PPOExperiment(config_from_trial(trial), seeds=[0, 1])
    for _ in range(2):
        reference.run_step()
    assert moved.steps_done == 2 and _same(moved.run_step(), reference.run_step())
