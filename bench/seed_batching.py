"""Seed-steps per second: S single-seed learners stepped one after another (the original's way, in
our code) against one S-seed batched learner, measured side by side in one run.

Slowly-changing regression (20 → 5 → 1, relu, SGD 0.01; one step = one example of every seed).
Each measurement is one trainable step of `--examples` examples per seed, stream generation
included, as a sweep runs it. The one-after-another rate does not depend on S (each seed runs
alone), so it is measured on min(S, 10) of the S seeds.

    .venv/bin/python bench/seed_batching.py [--examples 2000] [--seeds 1 8 32 100]
"""

from __future__ import annotations

import argparse
import time

import torch

from lop_ray.algos import CBPConfig
from lop_ray.experiments.learner import LearnerSettings
from lop_ray.experiments.regression import RegressionConfig, RegressionExperiment
from lop_ray.experiments.seed_batched_regression import SeedBatchedRegressionExperiment

LEARNERS = {
    "bp (sgd)": LearnerSettings(step_size=0.01),
    "snp (sgd)": LearnerSettings(algorithm="snp", step_size=0.01, weight_decay=1e-2, perturb_scale=1e-4),
    "bp (adam)": LearnerSettings(optimizer="adam", step_size=0.001),
    "cbp (sgd)": LearnerSettings(
        algorithm="cbp",
        step_size=0.01,
        cbp=CBPConfig(replacement_rate=1e-4, maturity_threshold=100, util_type="adaptable_contribution"),
    ),
}


def one_after_another(settings: LearnerSettings, seeds: int, examples: int) -> float:
    """Seed-steps/s of `seeds` single-seed experiments, each run for `examples` steps in turn."""
    measured = min(seeds, 10)
    experiments = [
        RegressionExperiment(RegressionConfig(seed=s, examples_per_step=examples, learner=settings))
        for s in range(measured)
    ]
    start = time.perf_counter()
    for experiment in experiments:
        experiment.run_step()
    return measured * examples / (time.perf_counter() - start)


def batched(settings: LearnerSettings, seeds: int, examples: int) -> float:
    config = RegressionConfig(examples_per_step=examples, learner=settings)
    experiment = SeedBatchedRegressionExperiment(config, list(range(seeds)))
    start = time.perf_counter()
    experiment.run_step()
    return seeds * examples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=2000, help="steps per seed per measurement")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 8, 32, 100])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"slowly-changing regression, {args.examples} steps per seed, torch threads: 1")
    print(f"{'learner':12}{'S':>5}{'one after another':>20}{'batched':>14}{'batched / one-by-one':>22}")
    for name, settings in LEARNERS.items():
        batched(settings, 2, 20)  # warm-up: first-call costs out of the timings
        for seeds in args.seeds:
            single = one_after_another(settings, seeds, args.examples)
            together = batched(settings, seeds, args.examples)
            print(
                f"{name:12}{seeds:>5}{single:>14,.0f} st/s{together:>10,.0f} st/s{together / single:>21.1f}×"
            )


if __name__ == "__main__":
    main()
