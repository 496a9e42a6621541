"""Slippery Ant (spec/problems.md §5): the friction table, its schedule, and that a friction change
really changes contact under MuJoCo's rule that the larger friction of two touching geoms wins."""

from __future__ import annotations

import numpy as np
import pytest

from lop_ray.nets.policy import GaussianPolicy
from lop_ray.rl.envs import make_env
from lop_ray.rl.friction import FrictionSchedule, friction_rows, set_friction
from lop_ray.rl.runner import EnvRunner, RunnerSpec, policy_weights


def _slide(setup) -> float:
    """How far Ant's torso slides in 50 steps from 3 m/s with zero action, after `setup(model)`."""
    env = make_env("Ant-v5")
    env.reset(seed=0)
    core = env.unwrapped
    setup(core.model)
    for _ in range(20):  # settle on the floor
        env.step(np.zeros(8))
    qpos, qvel = core.data.qpos.copy(), core.data.qvel.copy()
    qvel[0] = 3.0
    core.set_state(qpos, qvel)
    start = core.data.qpos[0]
    for _ in range(50):
        env.step(np.zeros(8))
    return float(core.data.qpos[0] - start)


def test_friction_changes_how_far_ant_slides():
    default = _slide(lambda model: None)
    slippery = _slide(lambda model: set_friction(model, 0.02))
    grippy = _slide(lambda model: set_friction(model, 2.0))
    assert slippery > 3 * default > 3 * grippy  # measured: 7.0, 0.74, 0.25


def test_lowering_the_floor_alone_changes_nothing():
    """MuJoCo takes the larger friction of the two geoms: the legs' 1.0 wins over a 0.02 floor."""

    def floor_only(model):
        model.geom_friction[0, 0] = 0.02

    assert _slide(floor_only) == _slide(lambda model: None)


def test_friction_table_is_the_papers():
    rows = friction_rows()
    assert rows.shape == (100, 50)
    assert rows.min() >= 0.02 and rows.max() <= 2.0
    assert rows[0, 0] == pytest.approx(0.29608842251461931)


def test_schedule_changes_at_the_first_episode_end_after_the_period():
    schedule = FrictionSchedule(seed=7, change_every=100)
    row = friction_rows()[7]
    assert schedule.friction == row[0]
    assert not schedule.episode_ended(100)  # not *more* than 100 steps since the last change
    assert schedule.episode_ended(130) and schedule.friction == row[1]
    assert not schedule.episode_ended(200)
    assert schedule.episode_ended(231) and schedule.friction == row[2] and schedule.last_change == 231
    with pytest.raises(ValueError, match="run seed 100 has no friction row"):
        FrictionSchedule(seed=100)


def test_slippery_runner_follows_its_row_and_resumes_it():
    spec = RunnerSpec(
        env="SlipperyAnt-v5",
        seeds=(2,),
        slots=((0, 0),),
        total_envs=1,
        hidden=(8,),
        max_episode_steps=50,
        friction_change_every=120,
    )
    weights = policy_weights(GaussianPolicy(105, 8, hidden=(8,)))  # Ant-v5's 105-d observation
    runner = EnvRunner(spec)
    model = runner.envs[0].unwrapped.model
    row = friction_rows()[2]
    assert np.all(model.geom_friction[:, 0] == row[0]) and np.all(model.geom_friction[:, 1:] == 0.5)
    first = runner.collect(weights, 200)
    # episodes end by step 50 at the latest: the first end after step 120 moves to row[1]
    assert list(first.frictions) == [row[1]] and np.all(model.geom_friction[:, 0] == row[1])
    state = runner.state_dict()
    expected = runner.collect(weights, 200)
    resumed = EnvRunner(spec)
    resumed.load_state_dict(state)
    got = resumed.collect(weights, 200)
    index = runner.schedules[0].index
    assert index >= 2 and list(got.frictions) == list(expected.frictions) == [row[index]]
    np.testing.assert_array_equal(got.obs, expected.obs)
    np.testing.assert_array_equal(got.rewards, expected.rewards)
    assert np.all(resumed.envs[0].unwrapped.model.geom_friction[:, 0] == row[index])
