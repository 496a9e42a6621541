"""Env steps per second of the whole PPO loop (collect + update), single process vs Ray runner actors.

For each runner count n, two layouts that compute *the same numbers* (tests/test_rl_runners.py) are
timed side by side: n runners stepped one after another in this process (the single-process loop),
and n runner actors stepping in parallel, each with `--envs-per-runner` envs. The learner (GAE, 10
epochs × 16 minibatches) runs in this process in both. Speedup = actors / single process at the same
n; efficiency = speedup / n. The PPO batch is 2048 steps (rounded up to a multiple of n × envs and
of 16 minibatches where 2048 is not).

    .venv/bin/python bench/ppo_runners.py [--env Ant-v5] [--runners 1,2] [--iterations 3]
    .venv/bin/python bench/ppo_runners.py --runners 1,2,4,8,14      # a machine with ≥ 15 cores
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time

import ray
import torch

from lop_ray.algos.ppo import PPOConfig
from lop_ray.experiments.ppo import PPOExperiment, PPOExperimentConfig
from lop_ray.rl.runner import policy_weights

MINIBATCHES = 16


class TimedRunners:
    """Wraps a runner pool to time its `collect` (the rest of an iteration is the learner's)."""

    def __init__(self, pool) -> None:
        self.pool = pool
        self.seconds = 0.0

    def collect(self, *args, **kwargs):
        start = time.perf_counter()
        result = self.pool.collect(*args, **kwargs)
        self.seconds += time.perf_counter() - start
        return result

    def close(self) -> None:
        self.pool.close()


def batch_size(total_envs: int) -> int:
    unit = math.lcm(total_envs, MINIBATCHES)
    return unit * math.ceil(2048 / unit)


def measure(env: str, runners: int, envs_per_runner: int, iterations: int, remote: bool) -> dict[str, float]:
    total = runners * envs_per_runner
    size = batch_size(total)
    config = PPOExperimentConfig(
        env=env,
        ant_observation="original" if "Ant" in env else "v5",
        batch_size=size,
        iterations_per_step=iterations,
        num_runners=runners,
        envs_per_runner=envs_per_runner,
        ppo=PPOConfig(minibatch_size=size // MINIBATCHES),
    )
    pool = None
    if remote:
        from lop_ray.trainables.env_runners import RemoteRunners

        pool = RemoteRunners(config.runner_specs())
    experiment = PPOExperiment(config, pool)
    timed = TimedRunners(experiment.runners)
    experiment.runners = timed
    timed.collect(policy_weights(experiment.policy), 50)  # actors started, envs warmed up
    timed.seconds = 0.0
    start = time.perf_counter()
    metrics = experiment.run_step()
    seconds = time.perf_counter() - start
    experiment.close()
    return {
        "steps_per_second": metrics["env_steps_per_second"],
        "collect_share": timed.seconds / seconds,
        "batch": size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Ant-v5")
    parser.add_argument("--runners", default="1,2", help="comma-separated runner counts")
    parser.add_argument("--envs-per-runner", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=3, help="timed PPO iterations per layout")
    parser.add_argument("--learner-threads", type=int, default=1)
    args = parser.parse_args()
    counts = [int(n) for n in args.runners.split(",")]
    torch.set_num_threads(args.learner_threads)
    ray.init(num_cpus=max(counts) + 1, include_dashboard=False, _temp_dir=tempfile.mkdtemp(prefix="lopray-"))
    print(f"{args.env}, {args.envs_per_runner} env(s) per runner, {args.iterations} iterations per layout")
    header = (
        f"{'runners':>7} {'batch':>6} {'single-process':>15} {'actors':>9} {'speedup':>8} {'efficiency':>10}"
    )
    print(header + "  collect share (single / actors)  collection speedup")
    for n in counts:
        single = measure(args.env, n, args.envs_per_runner, args.iterations, remote=False)
        actors = measure(args.env, n, args.envs_per_runner, args.iterations, remote=True)
        speedup = actors["steps_per_second"] / single["steps_per_second"]
        # seconds of collection per env step in each layout: the part that parallelises, alone
        collect_speedup = (single["collect_share"] / single["steps_per_second"]) / (
            actors["collect_share"] / actors["steps_per_second"]
        )
        print(
            f"{n:>7} {single['batch']:>6} {single['steps_per_second']:>11.0f} st/s {actors['steps_per_second']:>5.0f} st/s"
            f" {speedup:>7.2f}x {speedup / n:>9.0%}  {single['collect_share']:.0%} / {actors['collect_share']:.0%}"
            f"  {collect_speedup:>26.2f}x ({collect_speedup / n:.0%} of linear)",
            flush=True,
        )
    ray.shutdown()


if __name__ == "__main__":
    main()
