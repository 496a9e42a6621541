"""An env runner: a gymnasium vector env over MuJoCo and a copy of the policy, collecting rollouts.

A runner owns a fixed set of the run's envs, named by their global index; env i is seeded from (run
seed, i) and draws its action noise from its own numpy generator seeded from (run seed, i), so a run's
numbers depend on the seed and on how many envs it has, never on which process steps them. The
runner only samples: the learner sends the policy's weights (and the observation statistics) with
every request and computes values, advantages and updates itself.

Every env is stepped once per runner step (lockstep), so a run's global env-step count after t steps
of every env is t × total_envs; with one env this is exactly the original's step counter (Slippery
Ant's friction changes are timed by it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from lop_ray.data.seeding import LEARNER, STREAM, derived_seed
from lop_ray.nets.policy import GaussianPolicy
from lop_ray.rl.acting import ActingPolicy
from lop_ray.rl.envs import MAX_EPISODE_STEPS, env_state, load_env_state, make_env
from lop_ray.rl.friction import CHANGE_EVERY, FrictionSchedule, set_friction

ACTION_NOISE = 1  # learner-generator purpose tag of the per-env action noise
OBS_CLIP = 10.0


@dataclass(frozen=True)
class RunnerSpec:
    """What a runner needs to build its envs and its policy copy."""

    env: str
    seed: int
    env_indices: tuple[int, ...]  # the global indices of this runner's envs
    total_envs: int
    ant_observation: str = "v5"
    hidden: tuple[int, ...] = (256, 256)
    activation: str = "relu"
    friction_change_every: int = CHANGE_EVERY
    max_episode_steps: int = MAX_EPISODE_STEPS


@dataclass
class Rollout:
    """`steps` consecutive steps of a runner's envs; arrays are (time, env, ...)."""

    obs: np.ndarray  # float32, the raw observation each action was chosen on
    actions: np.ndarray  # float32
    log_probs: np.ndarray  # float32, under the policy that acted
    rewards: np.ndarray  # float32
    dones: np.ndarray  # bool: terminated or truncated (both end the bootstrap)
    last_obs: np.ndarray  # (env, obs): the observation after the last step
    episode_returns: np.ndarray  # of the episodes that ended in this rollout, in order of their end
    episode_lengths: np.ndarray
    episode_ends: np.ndarray  # global env step at each of those ends
    frictions: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per env, at the end (Slippery Ant)


def env_dims(env: str, ant_observation: str = "v5") -> tuple[int, int]:
    """(observation size, action size) of `env`."""
    probe = make_env(env, ant_observation)
    dims = probe.observation_space.shape[0], probe.action_space.shape[0]
    probe.close()
    return dims


def policy_weights(policy: GaussianPolicy) -> dict[str, np.ndarray]:
    """The policy as CPU numpy arrays: what goes to the runners (zero-copy in Ray's object store)."""
    return {name: t.detach().cpu().numpy().copy() for name, t in policy.state_dict().items()}


class EnvRunner:
    def __init__(self, spec: RunnerSpec) -> None:
        self.spec = spec
        indices = spec.env_indices
        self.envs = gym.vector.SyncVectorEnv(
            [lambda: make_env(spec.env, spec.ant_observation, spec.max_episode_steps)] * len(indices),
            autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
            copy=False,
        )
        obs, _ = self.envs.reset(seed=[derived_seed(spec.seed, STREAM, i) for i in indices])
        self.obs = obs.astype(np.float32)
        self.schedules = (
            [FrictionSchedule(spec.seed, spec.friction_change_every) for _ in indices]
            if spec.env == "SlipperyAnt-v5"
            else None
        )
        if self.schedules is not None:
            for env, schedule in zip(self.envs.envs, self.schedules, strict=True):
                set_friction(env.unwrapped.model, schedule.friction)
        self.action_dim = self.envs.single_action_space.shape[0]
        self.policy = ActingPolicy(spec.activation)
        self.generators = [
            np.random.default_rng(derived_seed(spec.seed, LEARNER, ACTION_NOISE, i)) for i in indices
        ]
        self.time = 0  # steps of each env so far
        self.episode_return = np.zeros(len(indices), dtype=np.float64)
        self.episode_length = np.zeros(len(indices), dtype=np.int64)

    @property
    def env_steps(self) -> int:
        """Global env steps of the whole run (all runners) so far."""
        return self.time * self.spec.total_envs

    def collect(
        self,
        weights: dict[str, np.ndarray],
        num_steps: int,
        obs_stats: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> Rollout:
        """Act for `num_steps` steps of every env with the policy `weights`; observations are
        normalised with `obs_stats` (mean, var) when given."""
        self.policy.load(weights)
        num_envs = len(self.spec.env_indices)
        obs_buf = np.empty((num_steps, num_envs, self.obs.shape[1]), dtype=np.float32)
        act_buf = np.empty((num_steps, num_envs, self.action_dim), dtype=np.float32)
        logp_buf = np.empty((num_steps, num_envs), dtype=np.float32)
        rew_buf = np.empty((num_steps, num_envs), dtype=np.float32)
        done_buf = np.empty((num_steps, num_envs), dtype=bool)
        returns: list[float] = []
        lengths: list[int] = []
        ends: list[int] = []
        for t in range(num_steps):
            obs_buf[t] = self.obs
            x = self.obs if obs_stats is None else normalize_obs(self.obs, *obs_stats)
            noise = np.stack([g.standard_normal(self.action_dim, dtype=np.float32) for g in self.generators])
            action, log_prob = self.policy.act(x, noise)
            act_buf[t] = action
            logp_buf[t] = log_prob
            obs, reward, terminated, truncated, _ = self.envs.step(action.astype(np.float64))
            done = terminated | truncated
            self.time += 1
            rew_buf[t] = reward
            done_buf[t] = done
            self.episode_return += reward
            self.episode_length += 1
            for e in np.flatnonzero(done):
                returns.append(float(self.episode_return[e]))
                lengths.append(int(self.episode_length[e]))
                ends.append(self.env_steps)
                self.episode_return[e] = 0.0
                self.episode_length[e] = 0
                if self.schedules is not None and self.schedules[e].episode_ended(self.env_steps):
                    set_friction(self.envs.envs[e].unwrapped.model, self.schedules[e].friction)
            self.obs = obs.astype(np.float32)
        return Rollout(
            obs=obs_buf,
            actions=act_buf,
            log_probs=logp_buf,
            rewards=rew_buf,
            dones=done_buf,
            last_obs=self.obs.copy(),
            episode_returns=np.array(returns, dtype=np.float64),
            episode_lengths=np.array(lengths, dtype=np.int64),
            episode_ends=np.array(ends, dtype=np.int64),
            frictions=self.frictions(),
        )

    def frictions(self) -> np.ndarray:
        if self.schedules is None:
            return np.zeros(0)
        return np.array([s.friction for s in self.schedules])

    def state_dict(self) -> dict[str, Any]:
        return {
            "env_indices": list(self.spec.env_indices),
            "time": self.time,
            "obs": self.obs.copy(),
            "episode_return": self.episode_return.copy(),
            "episode_length": self.episode_length.copy(),
            "envs": [env_state(env) for env in self.envs.envs],
            "generators": [g.bit_generator.state for g in self.generators],
            "schedules": None if self.schedules is None else [s.state_dict() for s in self.schedules],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["env_indices"]) != list(self.spec.env_indices):
            raise ValueError(
                f"runner state is of envs {state['env_indices']}, this runner has {list(self.spec.env_indices)}"
            )
        self.time = int(state["time"])
        self.obs = np.array(state["obs"], dtype=np.float32)
        self.episode_return = np.array(state["episode_return"], dtype=np.float64)
        self.episode_length = np.array(state["episode_length"], dtype=np.int64)
        for env, saved in zip(self.envs.envs, state["envs"], strict=True):
            load_env_state(env, saved)
        for g, saved in zip(self.generators, state["generators"], strict=True):
            g.bit_generator.state = saved
        if self.schedules is not None:
            for env, schedule, saved in zip(self.envs.envs, self.schedules, state["schedules"], strict=True):
                schedule.load_state_dict(saved)
                set_friction(env.unwrapped.model, schedule.friction)

    def close(self) -> None:
        self.envs.close()


def normalize_obs(obs: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """As `lop_ray.algos.running_stats.normalize` (float32, clipped to ±OBS_CLIP)."""
    scaled = (obs - mean.astype(np.float32)) / np.sqrt(var.astype(np.float32) + np.float32(1e-8))
    return np.clip(scaled, -OBS_CLIP, OBS_CLIP)


def split_envs(total_envs: int, num_runners: int) -> list[tuple[int, ...]]:
    """Global env indices of each runner: consecutive blocks of equal size."""
    if num_runners < 1 or total_envs % num_runners:
        raise ValueError(f"{total_envs} envs cannot be split evenly over {num_runners} runners")
    per = total_envs // num_runners
    return [tuple(range(r * per, (r + 1) * per)) for r in range(num_runners)]


class LocalRunners:
    """Runners in this process, stepped one after another: the single-process path (tests, plain
    loops, the benchmark's baseline). The Ray-actor pool (`lop_ray.trainables.env_runners`) has the
    same interface."""

    def __init__(self, specs: Sequence[RunnerSpec]) -> None:
        self.runners = [EnvRunner(spec) for spec in specs]

    def collect(
        self,
        weights: dict[str, np.ndarray],
        num_steps: int,
        obs_stats: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> list[Rollout]:
        return [runner.collect(weights, num_steps, obs_stats) for runner in self.runners]

    def state_dict(self) -> list[dict[str, Any]]:
        return [runner.state_dict() for runner in self.runners]

    def load_state_dict(self, state: list[dict[str, Any]]) -> None:
        if len(state) != len(self.runners):
            raise ValueError(f"checkpoint holds {len(state)} runners, this run has {len(self.runners)}")
        for runner, saved in zip(self.runners, state, strict=True):
            runner.load_state_dict(saved)

    def close(self) -> None:
        for runner in self.runners:
            runner.close()
