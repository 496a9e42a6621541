"""Env steps per second of the whole PPO loop (collect + update): seed batching, and runner actors.

Default (`--compare seeds`): the paper's Ant configuration (111-d original observation, one env per
seed, 2048-step batches, 10 epochs × 16 minibatches of 128, 256-256 nets), measured side by side in
one run:
  (a) today's single-seed loop: one seed per process, its env stepped in the trial's process, one
      learner thread (S seeds one after another: their rate is one seed's);
  (a2) two such loops side by side in two processes (what a sweep of `cpu: 1` trials runs on 2 cores);
  (b) one S-seed batched loop (`seeds_per_trial: S`): in-process with 1 or 2 env threads, or with 2
      env-runner actors each serving S/2 seeds; the learner with 1 or 2 threads.
Ratios are against (a). The actor layout needs Ray; `--no-ray` leaves it out (a machine without Ray:
the pure-PyTorch loop), `--device cuda` puts the learner on the GPU (rollouts stay on the CPU).

    .venv/bin/python bench/ppo_runners.py --seeds 8 [--iterations 2]
    python3 bench/ppo_runners.py --seeds 32 --device cuda --no-ray --env-threads 16   # a GPU machine

`--compare runners`: for each runner count n, two layouts that compute *the same numbers*
(tests/test_rl_runners.py) side by side: n runners stepped one after another in this process (the
single-process loop), and n runner actors stepping in parallel, each with `--envs-per-runner` envs.
The learner (GAE, 10 epochs × 16 minibatches) runs in this process in both. Speedup = actors /
single process at the same n; efficiency = speedup / n. The PPO batch is 2048 steps (rounded up to a
multiple of n × envs and of 16 minibatches where 2048 is not).

    .venv/bin/python bench/ppo_runners.py --compare runners --runners 1,2 --iterations 3
    .venv/bin/python bench/ppo_runners.py --compare runners --runners 1,2,4,8,14   # ≥ 15 cores
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import tempfile
import time

import torch

from lop_ray.algos.ppo import PPOConfig
from lop_ray.experiments.ppo import PPOExperiment, PPOExperimentConfig
from lop_ray.rl.process_runners import ProcessRunners
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
    [metrics] = experiment.run_step()
    seconds = time.perf_counter() - start
    experiment.close()
    return {
        "steps_per_second": metrics["env_steps_per_second"],
        "collect_share": timed.seconds / seconds,
        "batch": size,
    }


def paper_ant(**layout) -> PPOExperimentConfig:
    """The paper's Ant PPO (sweeps/rl/ant.yaml), one env per seed, one iteration per step, in the
    given runner layout."""
    return PPOExperimentConfig(
        env="Ant-v5", ant_observation="original", iterations_per_step=1, envs_per_seed=1, **layout
    )


def measure_seeds(
    seeds: int,
    iterations: int,
    learner_threads: int = 1,
    env_threads: int = 1,
    actors: int = 0,
    processes: int = 0,
    device: str = "cpu",
    first_seed: int = 0,
) -> dict[str, float]:
    """Env steps per second (all seeds) of one `seeds`-seed loop over `iterations` PPO iterations,
    after one untimed iteration (actors started, caches warm), and the share spent collecting."""
    torch.set_num_threads(learner_threads)
    runners = max(actors, processes, 1)
    config = paper_ant(num_runners=runners, env_threads=env_threads)
    seed_list = list(range(first_seed, first_seed + seeds))
    pool = None
    if actors:
        from lop_ray.trainables.env_runners import RemoteRunners

        pool = RemoteRunners(config.runner_specs(seed_list))
    elif processes:
        pool = ProcessRunners(config.runner_specs(seed_list))
    experiment = PPOExperiment(config, pool, device, seed_list)
    experiment.run_step()  # warm-up
    timed = TimedRunners(experiment.runners)
    experiment.runners = timed
    start = time.perf_counter()
    for _ in range(iterations):
        experiment.run_step()
    seconds = time.perf_counter() - start
    experiment.close()
    return {
        "steps_per_second": seeds * iterations * config.batch_size / seconds,
        "collect_share": timed.seconds / seconds,
    }


def _one_single_seed_loop(args: tuple[int, int]) -> float:
    seed, iterations = args
    return measure_seeds(1, iterations, first_seed=seed)["steps_per_second"]


def compare_seeds(args: argparse.Namespace) -> None:
    S, iterations = args.seeds, args.iterations
    print(f"Ant-v5 (original observation), paper PPO, 1 env per seed, {iterations} timed iterations per row")
    print(f"{'layout':<58} {'env steps/s':>12} {'vs (a)':>7}  collect share", flush=True)

    def row(label: str, result: dict[str, float], baseline: float) -> None:
        share = f"{result['collect_share']:.0%}" if "collect_share" in result else "-"
        print(
            f"{label:<58} {result['steps_per_second']:>12,.0f} {result['steps_per_second'] / baseline:>6.2f}x  {share}",
            flush=True,
        )

    single = [measure_seeds(1, iterations, first_seed=seed) for seed in range(args.baseline_seeds)]
    rate = len(single) / sum(1 / r["steps_per_second"] for r in single)  # seeds one after another
    share = sum(r["collect_share"] for r in single) / len(single)
    baseline = rate
    row(
        f"(a) single-seed loop, {len(single)} seeds one after another",
        {"steps_per_second": rate, "collect_share": share},
        baseline,
    )
    if args.parallel_baseline:
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            rates = pool.map(_one_single_seed_loop, [(0, iterations), (1, iterations)])
        row(
            "(a2) two single-seed loops side by side (2 processes)",
            {"steps_per_second": sum(rates)},
            baseline,
        )
    layouts = [
        (f"(b) S = {S}, in-process, 1 env thread, 1 learner thread", dict(env_threads=1, learner_threads=1)),
        (
            f"(b) S = {S}, in-process, {args.env_threads} env threads, 2 learner threads",
            dict(env_threads=args.env_threads, learner_threads=2),
        ),
    ]
    layouts.append(
        (
            f"(b) S = {S}, {args.processes} worker processes (no Ray), 2 learner threads",
            dict(processes=args.processes, learner_threads=2),
        )
    )
    if not args.no_ray:
        layouts.append(
            (
                f"(b) S = {S}, 2 runner actors ({S // 2} seeds each), 2 learner threads",
                dict(actors=2, learner_threads=2),
            )
        )
    for label, layout in layouts:
        row(label, measure_seeds(S, iterations, device=args.device, **layout), baseline)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Ant-v5")
    parser.add_argument("--runners", default="1,2", help="comma-separated runner counts")
    parser.add_argument("--envs-per-runner", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=3, help="timed PPO iterations per layout")
    parser.add_argument("--learner-threads", type=int, default=1)
    parser.add_argument("--compare", choices=("seeds", "runners"), default="seeds")
    parser.add_argument("--seeds", type=int, default=8, help="S of the seed-batched loop")
    parser.add_argument("--baseline-seeds", type=int, default=2, help="single-seed loops timed for (a)")
    parser.add_argument("--parallel-baseline", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--env-threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--processes", type=int, default=2, help="worker processes of the no-Ray layout")
    args = parser.parse_args()
    if args.compare == "seeds":
        if not args.no_ray:
            import ray

            ray.init(num_cpus=3, include_dashboard=False, _temp_dir=tempfile.mkdtemp(prefix="lopray-"))
        compare_seeds(args)
        return
    import ray

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
