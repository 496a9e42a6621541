"""An env runner: MuJoCo envs and a copy of the policy, collecting rollouts.

A run trains S seeds, each with its own envs; a runner owns a fixed set of them (slots), each named
by its seed and its index among that seed's envs. Env i of seed s is seeded from (s, i) and draws its
action noise from its own numpy generator seeded from (s, i); Slippery Ant's friction schedule is
the seed's. So a seed's numbers depend on the seed and on how many envs it has, never on which
other seeds share the run or which process or thread steps its envs. The runner only samples: the
learner sends every seed's policy weights (and observation statistics) with every request, and one
stacked product per layer acts for all the runner's envs at once.

Every env is stepped once per runner step (lockstep), so a seed's global env-step count after t
steps of every env is t × (its envs); with one env this is exactly the original's step counter
(Slippery Ant's friction changes are timed by it).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

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
    """What a runner needs to build its envs and its policy copy.

    A run trains S seeds (`seeds`, in batch order), each with `total_envs` envs; a runner steps the
    envs named in `slots`, each (position of its seed in `seeds`, the env's index in that seed), and
    its rollouts are laid out in that order. `threads` > 1 steps the runner's envs in that many
    threads (MuJoCo's step releases the GIL).
    """

    env: str
    seeds: tuple[int, ...]
    slots: tuple[tuple[int, int], ...]
    total_envs: int
    ant_observation: str = "v5"
    hidden: tuple[int, ...] = (256, 256)
    activation: str = "relu"
    friction_change_every: int = CHANGE_EVERY
    max_episode_steps: int = MAX_EPISODE_STEPS
    threads: int = 1


@dataclass
class Rollout:
    """`steps` consecutive steps of a runner's envs; arrays are (time, slot, ...)."""

    obs: np.ndarray  # float32, the raw observation each action was chosen on
    actions: np.ndarray  # float32
    log_probs: np.ndarray  # float32, under the policy that acted
    rewards: np.ndarray  # float32
    dones: np.ndarray  # bool: terminated or truncated (both end the bootstrap)
    last_obs: np.ndarray  # (slot, obs): the observation after the last step
    episode_returns: np.ndarray  # of the episodes that ended in this rollout, in order of their end
    episode_lengths: np.ndarray
    episode_ends: np.ndarray  # the seed's global env step at each of those ends
    episode_seeds: np.ndarray  # the position (in the run's seeds) of each episode's seed
    frictions: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per slot, at the end (Slippery Ant)


def env_dims(env: str, ant_observation: str = "v5") -> tuple[int, int]:
    """(observation size, action size) of `env`."""
    probe = make_env(env, ant_observation)
    dims = probe.observation_space.shape[0], probe.action_space.shape[0]
    probe.close()
    return dims


def policy_weights(policy: GaussianPolicy) -> dict[str, np.ndarray]:
    """The policy as CPU numpy arrays: what goes to the runners (zero-copy in Ray's object store).
    An injected policy (plasticity injection) sends its frozen heads too, as `frozen.*` arrays."""
    weights = {name: t.detach().cpu().numpy().copy() for name, t in policy.state_dict().items()}
    if policy.crelu:
        weights["crelu"] = np.asarray(True)
    frozen = policy.head_correction
    if frozen is not None:
        weights["frozen.layers"] = np.asarray(frozen.layers)
        for j, (old, initial) in enumerate(frozen.heads):
            for part, head in (("old", old), ("initial", initial)):
                for i, (weight, bias) in enumerate(head or ()):
                    weights[f"frozen.{j}.{part}.{i}.weight"] = weight.detach().cpu().numpy().copy()
                    weights[f"frozen.{j}.{part}.{i}.bias"] = bias.detach().cpu().numpy().copy()
    return weights


class EnvRunner:
    def __init__(self, spec: RunnerSpec) -> None:
        self.spec = spec
        seeds = [spec.seeds[k] for k, _ in spec.slots]
        self.envs = [make_env(spec.env, spec.ant_observation, spec.max_episode_steps) for _ in spec.slots]
        first = [
            env.reset(seed=derived_seed(seed, STREAM, i))[0]
            for env, seed, (_, i) in zip(self.envs, seeds, spec.slots, strict=True)
        ]
        self.obs = np.stack(first).astype(np.float32)
        self.schedules = (
            [FrictionSchedule(seed, spec.friction_change_every) for seed in seeds]
            if spec.env == "SlipperyAnt-v5"
            else None
        )
        if self.schedules is not None:
            for env, schedule in zip(self.envs, self.schedules, strict=True):
                set_friction(env.unwrapped.model, schedule.friction)
        self.action_dim = self.envs[0].action_space.shape[0]
        self.policy = ActingPolicy(spec.activation)
        self.generators = [
            np.random.default_rng(derived_seed(seed, LEARNER, ACTION_NOISE, i))
            for seed, (_, i) in zip(seeds, spec.slots, strict=True)
        ]
        self.time = 0  # steps of each env so far
        self.episode_return = np.zeros(len(spec.slots), dtype=np.float64)
        self.episode_length = np.zeros(len(spec.slots), dtype=np.int64)
        self._chunks = [c for c in np.array_split(np.arange(len(spec.slots)), spec.threads) if len(c)]
        self._pool = ThreadPoolExecutor(len(self._chunks)) if len(self._chunks) > 1 else None

    @property
    def env_steps(self) -> int:
        """Global env steps of each seed (all its envs, on any runner) so far."""
        return self.time * self.spec.total_envs

    def collect(
        self,
        weights: dict[str, np.ndarray],
        num_steps: int,
        obs_stats: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> Rollout:
        """Act for `num_steps` steps of every env with the policy `weights` (every seed's); with
        `obs_stats` (each seed's (mean, var)), observations are normalised by their seed's."""
        rows = [k for k, _ in self.spec.slots]
        self.policy.load(weights, rows)
        stats = None
        if obs_stats is not None:
            stats = tuple(np.stack([obs_stats[k][part] for k in rows]) for part in (0, 1))
        num_envs = len(self.spec.slots)
        obs_buf = np.empty((num_steps, num_envs, self.obs.shape[1]), dtype=np.float32)
        act_buf = np.empty((num_steps, num_envs, self.action_dim), dtype=np.float32)
        logp_buf = np.empty((num_steps, num_envs), dtype=np.float32)
        rew_buf = np.empty((num_steps, num_envs), dtype=np.float32)
        done_buf = np.empty((num_steps, num_envs), dtype=bool)
        next_obs = np.empty((num_envs, self.obs.shape[1]), dtype=np.float64)
        reward = np.empty(num_envs, dtype=np.float64)
        done = np.empty(num_envs, dtype=bool)
        returns: list[float] = []
        lengths: list[int] = []
        ends: list[int] = []
        episode_seeds: list[int] = []
        for t in range(num_steps):
            obs_buf[t] = self.obs
            x = self.obs if stats is None else normalize_obs(self.obs, *stats)
            noise = np.stack([g.standard_normal(self.action_dim, dtype=np.float32) for g in self.generators])
            action, log_prob = self.policy.act(x, noise)
            act_buf[t] = action
            logp_buf[t] = log_prob
            self._step(action.astype(np.float64), next_obs, reward, done)
            self.time += 1
            rew_buf[t] = reward
            done_buf[t] = done
            self.episode_return += reward
            self.episode_length += 1
            for e in np.flatnonzero(done):
                returns.append(float(self.episode_return[e]))
                lengths.append(int(self.episode_length[e]))
                ends.append(self.env_steps)
                episode_seeds.append(rows[e])
                self.episode_return[e] = 0.0
                self.episode_length[e] = 0
                if self.schedules is not None and self.schedules[e].episode_ended(self.env_steps):
                    set_friction(self.envs[e].unwrapped.model, self.schedules[e].friction)
            self.obs = next_obs.astype(np.float32)
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
            episode_seeds=np.array(episode_seeds, dtype=np.int64),
            frictions=self.frictions(),
        )

    def _step(self, actions: np.ndarray, obs: np.ndarray, reward: np.ndarray, done: np.ndarray) -> None:
        """One step of every env (an ended episode resets at once: its next observation is the new
        episode's first, as gymnasium's same-step autoreset), in threads when there are several."""
        if self._pool is None:
            self._step_envs(self._chunks[0], actions, obs, reward, done)
            return
        for finished in [
            self._pool.submit(self._step_envs, chunk, actions, obs, reward, done) for chunk in self._chunks
        ]:
            finished.result()

    def _step_envs(
        self, indices: np.ndarray, actions: np.ndarray, obs: np.ndarray, reward: np.ndarray, done: np.ndarray
    ) -> None:
        for e in indices:
            env = self.envs[e]
            obs[e], reward[e], terminated, truncated, _ = env.step(actions[e])
            done[e] = terminated or truncated
            if done[e]:
                obs[e] = env.reset()[0]

    def frictions(self) -> np.ndarray:
        if self.schedules is None:
            return np.zeros(0)
        return np.array([s.friction for s in self.schedules])

    def state_dict(self) -> dict[str, Any]:
        return {
            "slots": [list(slot) for slot in self.spec.slots],
            "seeds": list(self.spec.seeds),
            "time": self.time,
            "obs": self.obs.copy(),
            "episode_return": self.episode_return.copy(),
            "episode_length": self.episode_length.copy(),
            "envs": [env_state(env) for env in self.envs],
            "generators": [g.bit_generator.state for g in self.generators],
            "schedules": None if self.schedules is None else [s.state_dict() for s in self.schedules],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = ([list(slot) for slot in self.spec.slots], list(self.spec.seeds))
        if (state["slots"], state["seeds"]) != mine:
            raise ValueError(
                f"runner state is of envs {state['slots']} of seeds {state['seeds']}, "
                f"this runner has {mine[0]} of {mine[1]}"
            )
        self.time = int(state["time"])
        self.obs = np.array(state["obs"], dtype=np.float32)
        self.episode_return = np.array(state["episode_return"], dtype=np.float64)
        self.episode_length = np.array(state["episode_length"], dtype=np.int64)
        for env, saved in zip(self.envs, state["envs"], strict=True):
            load_env_state(env, saved)
        for g, saved in zip(self.generators, state["generators"], strict=True):
            g.bit_generator.state = saved
        if self.schedules is not None:
            for env, schedule, saved in zip(self.envs, self.schedules, state["schedules"], strict=True):
                schedule.load_state_dict(saved)
                set_friction(env.unwrapped.model, schedule.friction)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        for env in self.envs:
            env.close()


def normalize_obs(obs: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """As `lop_ray.algos.running_stats.normalize` (float32, clipped to ±OBS_CLIP)."""
    scaled = (obs - mean.astype(np.float32)) / np.sqrt(var.astype(np.float32) + np.float32(1e-8))
    return np.clip(scaled, -OBS_CLIP, OBS_CLIP)


def split_slots(num_seeds: int, envs_per_seed: int, num_runners: int) -> list[tuple[tuple[int, int], ...]]:
    """Each runner's (seed position, env index) slots: the run's envs in seed-major order, cut into
    consecutive blocks whose sizes differ by at most one (joined in runner order, the runners'
    rollouts are in seed-major order; where an env steps never changes what it computes). A run with
    fewer envs than `num_runners` (one seed of a sweep's layout, run alone) has one runner per env."""
    if num_runners < 1:
        raise ValueError(f"a run needs at least one runner, got {num_runners}")
    slots = [(k, i) for k in range(num_seeds) for i in range(envs_per_seed)]
    runners = min(num_runners, len(slots))
    bounds = np.linspace(0, len(slots), runners + 1).round().astype(int)
    return [tuple(slots[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]


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
        obs_stats: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
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
