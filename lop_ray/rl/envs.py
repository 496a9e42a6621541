"""The MuJoCo envs of the paper (gymnasium v5), and their state as far as MuJoCo exposes it.

`original` Ant observation (spec/fidelity.md row 12): the original ran Ant-v3 on mujoco-py ≥ 2,
whose 84 contact-force entries were always 0 and whose contact cost was therefore 0; here Ant-v5
without contact forces and without contact cost, padded with zeros to the original's 111 dims so
that initial and CBP bounds (which depend on the fan-in) match.

An env's state (`env_state`/`load_env_state`) is the whole `MjData` (pickled: positions, velocities,
time, the solver's warm start *and* the derived quantities the next reward reads, e.g. Ant's body
positions, which MuJoCo leaves one substep stale after `mj_step`), the time limit's step count and the
env's random generator (reset noise). Restored, an env continues bit-identically.
"""

from __future__ import annotations

import pickle
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import TimeLimit, TransformObservation

ENVS = ("Ant-v5", "Hopper-v5", "Walker2d-v5", "SlipperyAnt-v5")
EnvName = Literal["Ant-v5", "Hopper-v5", "Walker2d-v5", "SlipperyAnt-v5"]
AntObservation = Literal["original", "v5"]
ORIGINAL_ANT_OBS_DIM = 111
MAX_EPISODE_STEPS = 1000


def is_ant(name: str) -> bool:
    return name in ("Ant-v5", "SlipperyAnt-v5")


def make_env(
    name: str, ant_observation: AntObservation = "v5", max_episode_steps: int = MAX_EPISODE_STEPS
) -> gym.Env:
    """One env; `SlipperyAnt-v5` is Ant-v5 whose friction `lop_ray.rl.friction` sets."""
    if name not in ENVS:
        raise ValueError(f"unknown env {name!r}; allowed: {list(ENVS)}")
    base = "Ant-v5" if is_ant(name) else name
    kwargs: dict[str, Any] = {}
    if is_ant(name) and ant_observation == "original":
        kwargs = {"include_cfrc_ext_in_observation": False, "contact_cost_weight": 0.0}
    env = gym.make(base, max_episode_steps=max_episode_steps, disable_env_checker=True, **kwargs)
    if is_ant(name) and ant_observation == "original":
        padding = ORIGINAL_ANT_OBS_DIM - env.observation_space.shape[0]
        space = gym.spaces.Box(-np.inf, np.inf, (ORIGINAL_ANT_OBS_DIM,), np.float64)
        env = TransformObservation(env, lambda obs: np.concatenate([obs, np.zeros(padding)]), space)
    return env


def _time_limit(env: gym.Env) -> TimeLimit:
    while not isinstance(env, TimeLimit):
        env = env.env
    return env


def env_state(env: gym.Env) -> dict[str, Any]:
    core = env.unwrapped
    return {
        "data": pickle.dumps(core.data),
        "elapsed_steps": _time_limit(env)._elapsed_steps,
        "np_random": core.np_random.bit_generator.state,
    }


def load_env_state(env: gym.Env, state: dict[str, Any]) -> None:
    core = env.unwrapped
    core.data = pickle.loads(state["data"])
    _time_limit(env)._elapsed_steps = state["elapsed_steps"]
    core.np_random.bit_generator.state = state["np_random"]
