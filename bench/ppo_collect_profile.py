"""Where the time of one PPO collection step (acting in the env) goes: µs per env step, side by side.

Times, each as µs per env step (best of `--repeats`, `time.perf_counter`, after a warm-up), for the
paper's configuration (1 env, `ant_observation="original"`, a 111-256-256-8 relu policy):

1. `mujoco.mj_step(model, data, nstep=frame_skip)` alone on the env's model/data (the simulation floor);
2. the unwrapped MujocoEnv `step(action)` (simulation + gymnasium's observation/reward code);
3. the wrapped env from `make_env` (TimeLimit, TransformObservation, OrderEnforcing, ...), with resets;
4. a `SyncVectorEnv` of that one env (SAME_STEP autoreset, copy=False: how `EnvRunner` stepped its
   envs before the seed-batched runner, which steps the wrapped envs itself);
5. policy inference `ActingPolicy.act` on 1 observation, and on batches of 8 and 32 (per observation);
6. the action-noise draw (one numpy generator per env, stacked as the runner does);
7. the whole `EnvRunner.collect` of one seed per step; the residual (7 − 3 − 5 − 6) is the runner's
   bookkeeping;
9. the seed-batched collect: one runner of S seeds × 1 env (one stacked policy call per env step),
   its envs stepped in 1 or 2 threads, per env step.

Then (8) whether MuJoCo's step releases the GIL: N separate envs stepped by a 2-thread pool (each
thread its own half of the envs, for the same number of steps) against the same envs in one thread,
for the raw `mj_step` and for the wrapped env's step. `--cprofile` adds cProfile's top 25 functions
(by tottime) over one collect.

    .venv/bin/python bench/ppo_collect_profile.py --env Ant-v5 --steps 3000 --repeats 3
    .venv/bin/python bench/ppo_collect_profile.py --env Ant-v5 --steps 3000 --repeats 3 --cprofile
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import platform
import pstats
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import gymnasium as gym
import mujoco
import numpy as np
import torch

# Imported unguarded on purpose: an API change in lop_ray must break this script loudly.
from lop_ray.data.seeding import STREAM, derived_seed
from lop_ray.nets.policy import GaussianPolicy
from lop_ray.rl.acting import ActingPolicy
from lop_ray.rl.envs import make_env
from lop_ray.rl.runner import EnvRunner, RunnerSpec, policy_weights

ANT_OBSERVATION = "original"
HIDDEN = (256, 256)
ACTIVATION = "relu"
BATCHES = (8, 32)
BATCHED_SEEDS = 8
GIL_ENV_COUNTS = (2, 8)
BOOKKEEPING = "runner bookkeeping (buffers, episode accounting)"


def best_us_per_step(
    setup: Callable[[], Callable[[int], None]], steps: int, repeats: int, warmup: int
) -> float:
    """Best-of-`repeats` µs per step of `run(steps)`, each repeat on a fresh `run = setup()` (untimed), after
    one `setup()(warmup)`: every repeat replays the same trajectory from the same reset."""
    setup()(warmup)
    best = float("inf")
    for _ in range(repeats):
        run = setup()
        start = time.perf_counter()
        run(steps)
        best = min(best, time.perf_counter() - start)
    return best / steps * 1e6


def runner_spec(env: str, seeds: int = 1, threads: int = 1) -> RunnerSpec:
    """One runner of `seeds` seeds with one env each, stepped in `threads` threads."""
    return RunnerSpec(
        env=env,
        seeds=tuple(range(seeds)),
        slots=tuple((k, 0) for k in range(seeds)),
        total_envs=1,
        ant_observation=ANT_OBSERVATION,
        threads=threads,
    )


@dataclass(frozen=True)
class Trajectory:
    """What one collect did: its env's reset seed, the actions it sent and where its episodes ended. Replayed
    from the same reset, every component below steps exactly the collect's states (MuJoCo's cost depends
    on the state: contacts, solver iterations)."""

    seed: int
    actions: np.ndarray  # (steps, action_dim) float64, as the runner sends them
    dones: np.ndarray  # (steps,) bool


def reference_trajectory(env: str, weights: dict[str, np.ndarray], steps: int) -> Trajectory:
    runner = EnvRunner(runner_spec(env))
    rollout = runner.collect(weights, steps)
    runner.close()
    return Trajectory(
        derived_seed(0, STREAM, 0), rollout.actions[:, 0].astype(np.float64), rollout.dones[:, 0].copy()
    )


def env_stepper(env: gym.Env, trajectory: Trajectory, offset: int = 0) -> Callable[[int], None]:
    """`env.step` over the trajectory's actions (cycled, from `offset`), resetting on episode end."""
    env.reset(seed=trajectory.seed)
    actions, dones, n = trajectory.actions, trajectory.dones, len(trajectory.actions)
    cursor = [offset]

    def run(steps: int) -> None:
        i = cursor[0]
        for _ in range(steps):
            _, _, terminated, truncated, _ = env.step(actions[i % n])
            # replayed from offset 0 these agree; `dones` also ends the unwrapped env's 1000-step episodes
            if terminated or truncated or dones[i % n]:
                env.reset()
            i += 1
        cursor[0] = i

    return run


def mj_stepper(env: gym.Env, trajectory: Trajectory, offset: int = 0) -> Callable[[int], None]:
    """`mj_step(model, data, nstep=frame_skip)` alone on the env's model/data with the control set, and
    the env's reset where the trajectory's episodes ended (gymnasium's step adds only outputs to this:
    `mj_rnePostConstraint`, observation, reward, so the states are the same)."""
    core = env.unwrapped
    core.reset(seed=trajectory.seed)
    model, frame_skip = core.model, core.frame_skip
    actions, dones, n = trajectory.actions, trajectory.dones, len(trajectory.actions)
    cursor = [offset]

    def run(steps: int) -> None:
        i = cursor[0]
        data = core.data
        for _ in range(steps):
            data.ctrl[:] = actions[i % n]
            mujoco.mj_step(model, data, nstep=frame_skip)
            if dones[i % n]:
                core.reset()
            i += 1
        cursor[0] = i

    return run


def contact_stats(env_name: str, trajectory: Trajectory) -> str:
    env = make_env(env_name, ANT_OBSERVATION)
    core = env.unwrapped
    core.reset(seed=trajectory.seed)
    contacts, iterations = [], []
    for action, done in zip(trajectory.actions, trajectory.dones, strict=True):
        core.data.ctrl[:] = action
        mujoco.mj_step(core.model, core.data, nstep=core.frame_skip)
        contacts.append(core.data.ncon)
        iterations.append(core.data.solver_niter[0])
        if done:
            core.reset()
    env.close()
    return (
        f"trajectory: {len(trajectory.dones)} steps, {int(trajectory.dones.sum())} episode ends, "
        f"mean contacts {np.mean(contacts):.2f}, mean solver iterations (last substep) {np.mean(iterations):.2f}"
    )


def component_times(
    args: argparse.Namespace, weights: dict[str, np.ndarray], trajectory: Trajectory
) -> dict[str, float]:
    steps, repeats, warmup = args.steps, args.repeats, args.warmup
    probe = make_env(args.env, ANT_OBSERVATION)
    obs_dim, action_dim = probe.observation_space.shape[0], probe.action_space.shape[0]
    frame_skip = probe.unwrapped.frame_skip
    times: dict[str, float] = {}

    times[f"mujoco.mj_step(nstep={frame_skip})"] = best_us_per_step(
        lambda: mj_stepper(probe, trajectory), steps, repeats, warmup
    )
    times["unwrapped MujocoEnv.step"] = best_us_per_step(
        lambda: env_stepper(probe.unwrapped, trajectory), steps, repeats, warmup
    )
    times["wrapped make_env(...).step"] = best_us_per_step(
        lambda: env_stepper(probe, trajectory), steps, repeats, warmup
    )
    probe.close()

    vector = gym.vector.SyncVectorEnv(
        [lambda: make_env(args.env, ANT_OBSERVATION)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
        copy=False,
    )
    vector_actions = trajectory.actions[:, None, :]

    def vector_setup() -> Callable[[int], None]:
        vector.reset(seed=[trajectory.seed])

        def run(n: int) -> None:
            for t in range(n):
                vector.step(vector_actions[t % steps])

        return run

    times["SyncVectorEnv(1).step"] = best_us_per_step(vector_setup, steps, repeats, warmup)
    vector.close()

    acting = ActingPolicy(ACTIVATION)
    rng = np.random.default_rng(0)
    for batch in (1, *BATCHES):
        acting.load(weights, rows=[0] * batch)
        obs = rng.standard_normal((batch, obs_dim)).astype(np.float32)
        noise = rng.standard_normal((batch, action_dim)).astype(np.float32)

        def act_run(n: int, obs: np.ndarray = obs, noise: np.ndarray = noise) -> None:
            for _ in range(n):
                acting.act(obs, noise)

        label = "policy ActingPolicy.act, batch 1" if batch == 1 else f"  act, batch {batch} (per obs)"
        times[label] = best_us_per_step(lambda act_run=act_run: act_run, steps, repeats, warmup) / batch

    generators = [np.random.default_rng(0)]

    def noise_run(n: int) -> None:
        for _ in range(n):
            np.stack([g.standard_normal(action_dim, dtype=np.float32) for g in generators])

    times["action noise (1 generator, stacked)"] = best_us_per_step(lambda: noise_run, steps, repeats, warmup)

    runners: list[EnvRunner] = []

    def collect_setup() -> Callable[[int], None]:
        runner = EnvRunner(runner_spec(args.env))
        runners.append(runner)
        return lambda n: runner.collect(weights, n)

    times["whole EnvRunner.collect"] = best_us_per_step(collect_setup, steps, repeats, warmup)
    for seeds, threads in ((BATCHED_SEEDS, 1), (BATCHED_SEEDS, 2)):
        policy = GaussianPolicy(
            obs_dim, action_dim, HIDDEN, ACTIVATION, [torch.Generator().manual_seed(s) for s in range(seeds)]
        )
        batched_weights = policy_weights(policy)

        def batched_setup(
            seeds: int = seeds, threads: int = threads, w=batched_weights
        ) -> Callable[[int], None]:
            runner = EnvRunner(runner_spec(args.env, seeds, threads))
            runners.append(runner)
            return lambda n: runner.collect(w, n)

        label = (
            f"seed-batched collect, S = {seeds}, {threads} thread{'s' if threads > 1 else ''} (per env step)"
        )
        # each timed step steps every seed's env: per env step is per runner step / S
        times[label] = best_us_per_step(batched_setup, steps // seeds, repeats, warmup // seeds) / seeds
    for runner in runners:
        runner.close()
    return times


def table(times: dict[str, float]) -> str:
    whole = times["whole EnvRunner.collect"]
    residual = (
        whole
        - times["wrapped make_env(...).step"]
        - times["policy ActingPolicy.act, batch 1"]
        - times["action noise (1 generator, stacked)"]
    )
    rows = [*times.items(), (BOOKKEEPING, residual)]
    width = max(len(name) for name, _ in rows)
    lines = [f"{'component':<{width}}  {'µs/step':>9}  {'share of collect':>16}", "-" * (width + 29)]
    for name, us in rows:
        lines.append(f"{name:<{width}}  {us:9.1f}  {us / whole:15.1%}")
    return "\n".join(lines)


def threaded_ratio(
    make_runs: Callable[[], list[Callable[[int], None]]], steps: int, repeats: int, warmup: int
) -> tuple[float, float]:
    """(1-thread, 2-thread) µs per env step of the envs whose step loops `make_runs` builds; in the
    2-thread case each thread steps its own half of the envs for the same number of steps."""
    pool = ThreadPoolExecutor(2)

    def step_all(part: list[Callable[[int], None]], n: int) -> None:
        for _ in range(n):
            for run in part:
                run(1)

    def serial_setup() -> Callable[[int], None]:
        runs = make_runs()
        return lambda n: step_all(runs, n)

    def threaded_setup() -> Callable[[int], None]:
        runs = make_runs()
        halves = [runs[: len(runs) // 2], runs[len(runs) // 2 :]]

        def run(n: int) -> None:
            futures = [pool.submit(step_all, half, n) for half in halves]
            for future in futures:
                future.result()

        return run

    count = len(make_runs())
    serial_us = best_us_per_step(serial_setup, steps, repeats, warmup) / count
    threaded_us = best_us_per_step(threaded_setup, steps, repeats, warmup) / count
    pool.shutdown()
    return serial_us, threaded_us


def gil_release(args: argparse.Namespace, trajectory: Trajectory) -> str:
    lines = [
        f"{'stepper':<22} {'N':>3}  {'1 thread µs/env-step':>20}  {'2 threads µs/env-step':>21}  {'ratio':>6}",
        "-" * 80,
    ]
    for label, factory in (("raw mj_step(nstep=5)", mj_stepper), ("wrapped env step", env_stepper)):
        for count in GIL_ENV_COUNTS:
            envs = [make_env(args.env, ANT_OBSERVATION) for _ in range(count)]
            stride = len(trajectory.actions) // count

            def make_runs(envs: list[gym.Env] = envs, stride: int = stride, factory=factory):
                # env i replays the collect's actions from its own offset (its own states)
                return [factory(env, trajectory, offset=i * stride) for i, env in enumerate(envs)]

            serial_us, threaded_us = threaded_ratio(make_runs, args.gil_steps, args.repeats, args.warmup)
            lines.append(
                f"{label:<22} {count:>3}  {serial_us:20.1f}  {threaded_us:21.1f}  {threaded_us / serial_us:6.2f}"
            )
            for env in envs:
                env.close()
    lines.append("ratio = 2-thread time / 1-thread time (0.5: GIL released, 2 free cores; 1.0: no gain)")
    return "\n".join(lines)


def profile_collect(args: argparse.Namespace, weights: dict[str, np.ndarray]) -> str:
    runner = EnvRunner(runner_spec(args.env))
    runner.collect(weights, args.warmup)
    profiler = cProfile.Profile()
    profiler.enable()
    runner.collect(weights, args.steps)
    profiler.disable()
    runner.close()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="Ant-v5")
    parser.add_argument("--steps", type=int, default=3000, help="env steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=200, help="steps run once before timing")
    parser.add_argument("--gil-steps", type=int, default=1000, help="steps of each env in the GIL test")
    parser.add_argument("--cprofile", action="store_true", help="also cProfile one collect (top 25, tottime)")
    args = parser.parse_args()

    print(
        f"env {args.env}, ant_observation {ANT_OBSERVATION!r}, 1 env, hidden {HIDDEN}, {ACTIVATION}; "
        f"steps {args.steps}, repeats {args.repeats} (best), warm-up {args.warmup}"
    )
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, mujoco {mujoco.__version__}, "
        f"gymnasium {gym.__version__}, cpus {os.cpu_count()}, load {os.getloadavg()}"
    )
    probe = make_env(args.env, ANT_OBSERVATION)
    obs_dim, action_dim = probe.observation_space.shape[0], probe.action_space.shape[0]
    probe.close()
    policy = GaussianPolicy(obs_dim, action_dim, HIDDEN, ACTIVATION, [torch.Generator().manual_seed(0)])
    weights = policy_weights(policy)
    trajectory = reference_trajectory(args.env, weights, args.steps)
    print(contact_stats(args.env, trajectory))
    times = component_times(args, weights, trajectory)
    print()
    print(table(times))
    print()
    print(f"GIL release (each env {args.gil_steps} steps, best of {args.repeats}):")
    print(gil_release(args, trajectory))
    if args.cprofile:
        print()
        print(f"cProfile over one collect of {args.steps} steps (top 25 by tottime):")
        print(profile_collect(args, weights))
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
