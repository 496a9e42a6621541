"""One seed per trial, and S seeds per trial, with this tree's code against an earlier commit's,
measured side by side in one run: the check that no problem got slower when the single-seed
learners were replaced by the one implementation with a seed axis (issue 14).

A baseline from issue 14 on has this tree's API; the workloads then build both trees' learners the
same way (the regression suite's kinds at S = 100 compare kernel changes).

The earlier commit is checked out into a temporary git worktree and each measurement runs in a
fresh process on one CPU thread, first with that tree's code, then with this one's, alternating
`--repeats` times (best of each kept: a shared machine's noise only slows a run down). Each
workload is two trainable steps of the real experiment, data stream included, after one warm-up
step and with the long-lived objects frozen out of the cyclic collector as a trial has them; the
earlier commit's single-seed classes and this tree's S = 1 get the same configuration.

    .venv/bin/python bench/against_commit.py [--baseline 81d9d90] [--repeats 3] [--only regression] [--match dropout 'online norm']
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASELINE = "81d9d90"  # the last landed commit before issue 14 (single-seed twins beside the batched)

# Each workload: (problem, label, seeds, code). The code runs in the tree under test with `OLD`
# True for the earlier commit's API; it defines `experiment` (built) and `units` (seed-steps, or
# seed-tasks, per `run_step`). The harness warms up one step, then times `STEPS` (default 2).
COMMON = """
import numpy as np, torch
from lop_ray.algos import CBPConfig
from lop_ray.experiments.learner import LearnerSettings
torch.set_num_threads(1)
LEARNERS = {
    "bp": LearnerSettings(step_size=0.01),
    "cbp": LearnerSettings(algorithm="cbp", step_size=0.01,
        cbp=CBPConfig(replacement_rate=1e-4, maturity_threshold=100, util_type="adaptable_contribution")),
    "bp_momentum": LearnerSettings(step_size=0.01, momentum=0.9),
    # the regression suite's other kinds (sweeps/regression/, sweeps/fidelity/regression_*.yaml)
    "l2": LearnerSettings(step_size=0.01, weight_decay=1e-3),
    "snp": LearnerSettings(algorithm="snp", step_size=0.01, weight_decay=1e-2, perturb_scale=1e-4),
    "adam": LearnerSettings(optimizer="adam", step_size=1e-3),
    "adam_l2": LearnerSettings(optimizer="adam", step_size=1e-3, weight_decay=1e-3),
    "adam_snp": LearnerSettings(algorithm="snp", optimizer="adam", step_size=1e-3, weight_decay=1e-3,
        perturb_scale=1e-4),
    # permuted MNIST's (sweeps/permuted_mnist/)
    "mnist_sgd": LearnerSettings(step_size=0.003),
    "mnist_adam": LearnerSettings(optimizer="adam", step_size=1e-4),
    "mnist_l2": LearnerSettings(step_size=0.003, weight_decay=1e-4),
    "mnist_snp": LearnerSettings(algorithm="snp", step_size=0.003, weight_decay=1e-4, perturb_scale=1e-5),
    "mnist_cbp": LearnerSettings(algorithm="cbp", step_size=0.003,
        cbp=CBPConfig(replacement_rate=1e-6, maturity_threshold=100, util_type="contribution")),
}
"""

REGRESSION = """
from lop_ray.experiments.regression import RegressionConfig, RegressionExperiment
config = RegressionConfig(examples_per_step=10_000, learner=LEARNERS[ALGORITHM])
seeds = list(range(SEEDS))
if OLD and SEEDS == 1:
    experiment = RegressionExperiment(config)
elif OLD:
    from lop_ray.experiments.seed_batched_regression import SeedBatchedRegressionExperiment
    experiment = SeedBatchedRegressionExperiment(config, seeds)
else:
    experiment = RegressionExperiment(config, seeds)
units = 10_000 * SEEDS
"""

PERMUTED = """
from lop_ray.data.shards import ImageDataset
from lop_ray.experiments.permuted_mnist import PermutedMNISTConfig, PermutedMNISTExperiment
rng = np.random.default_rng(0)
dataset = ImageDataset(rng.integers(0, 256, (2000, 28, 28), dtype=np.uint8), rng.integers(0, 10, 2000), 255.0, 10)
config = PermutedMNISTConfig(hidden_units=HIDDEN, examples_per_task=EXAMPLES, probe_examples=100,
    learner=LEARNERS[LEARNER], **NETWORK)
seeds = list(range(SEEDS))
if OLD and SEEDS == 1:
    experiment = PermutedMNISTExperiment(config, dataset)
elif OLD:
    from lop_ray.experiments.seed_batched_permuted_mnist import SeedBatchedPermutedMNISTExperiment
    experiment = SeedBatchedPermutedMNISTExperiment(config, seeds, dataset)
else:
    experiment = PermutedMNISTExperiment(config, dataset, seeds=seeds)
units = EXAMPLES * SEEDS
"""

IMAGENET = """
from lop_ray.data.shards import ImageDataset
from lop_ray.experiments.continual_imagenet import ContinualImageNetConfig, ContinualImageNetExperiment
rng = np.random.default_rng(0)
def images(per_class):
    return ImageDataset(rng.integers(0, 256, (4 * per_class, 3, 32, 32), dtype=np.uint8),
                        np.repeat(np.arange(4), per_class), 255.0, 4)
train, test = images(100), images(100)
settings = dict(epochs_per_task=2, batch_size=100, train_images_per_class=100, learner=LEARNERS["bp_momentum"])
if OLD:
    experiment = ContinualImageNetExperiment(ContinualImageNetConfig(seed=0, **settings), train, test)
else:
    experiment = ContinualImageNetExperiment(ContinualImageNetConfig(**settings), [0], train, test)
units = 1
"""

CIFAR = """
from lop_ray.data.shards import ImageDataset
from lop_ray.experiments.incremental_cifar import IncrementalCifarConfig, IncrementalCifarExperiment
rng = np.random.default_rng(0)
def images(per_class):
    labels = np.tile(np.arange(100), per_class)
    return ImageDataset(rng.integers(0, 256, (len(labels), 3, 32, 32), dtype=np.uint8), labels, 255.0, 100)
train, test = images(12), images(2)
settings = dict(width=16, epochs_per_block=2, validation_per_class=2, probe_examples=20,
                learner=LearnerSettings(step_size=0.1, momentum=0.9, weight_decay=5e-4))
if OLD:
    experiment = IncrementalCifarExperiment(IncrementalCifarConfig(seed=0, **settings), train, test)
else:
    experiment = IncrementalCifarExperiment(IncrementalCifarConfig(**settings), [0], train, test)
units = 1
"""

# as a trial runs it (lop_ray/trainables/base.py): the long-lived objects frozen out of the cyclic
# collector's sight, so that a full collection's rescan of ~350k objects does not land in one
# tree's timed steps and not the other's
HARNESS = """
import gc, time
experiment.run_step()
gc.collect()
gc.freeze()
start = time.perf_counter()
for _ in range(STEPS):
    experiment.run_step()
print("RATE", STEPS * units / (time.perf_counter() - start))
"""

WORKLOADS = [
    ("regression", "bp, S = 1", REGRESSION, dict(ALGORITHM="bp", SEEDS=1), "seed-steps/s"),
    ("regression", "cbp, S = 1", REGRESSION, dict(ALGORITHM="cbp", SEEDS=1), "seed-steps/s"),
    ("regression", "bp, S = 100", REGRESSION, dict(ALGORITHM="bp", SEEDS=100), "seed-steps/s"),
    ("regression", "cbp, S = 100", REGRESSION, dict(ALGORITHM="cbp", SEEDS=100), "seed-steps/s"),
    *(
        ("regression", f"{name}, S = 100", REGRESSION, dict(ALGORITHM=name, SEEDS=100), "seed-steps/s")
        for name in ("l2", "snp", "adam", "adam_l2", "adam_snp")
    ),
    (
        "permuted_mnist",
        "bp 2000 × 3, S = 1",
        PERMUTED,
        dict(HIDDEN=2000, NETWORK={}, SEEDS=1, EXAMPLES=200, LEARNER="mnist_sgd"),
        "seed-steps/s",
    ),
    (
        "permuted_mnist",
        "bp 100 × 3, S = 1",
        PERMUTED,
        dict(HIDDEN=100, NETWORK={}, SEEDS=1, EXAMPLES=1000, LEARNER="mnist_sgd"),
        "seed-steps/s",
    ),
    (
        "permuted_mnist",
        "bp 100 × 3, S = 10",
        PERMUTED,
        dict(HIDDEN=100, NETWORK={}, SEEDS=10, EXAMPLES=1000, LEARNER="mnist_sgd"),
        "seed-steps/s",
    ),
    (
        "permuted_mnist",
        "dropout 2000 × 3, S = 1",
        PERMUTED,
        dict(HIDDEN=2000, NETWORK={"dropout": 0.1}, SEEDS=1, EXAMPLES=200, LEARNER="mnist_sgd"),
        "seed-steps/s",
    ),
    (
        "permuted_mnist",
        "online norm 2000 × 3, S = 1",
        PERMUTED,
        dict(HIDDEN=2000, NETWORK={"online_norm": True}, SEEDS=1, EXAMPLES=200, LEARNER="mnist_sgd"),
        "seed-steps/s",
    ),
    *(
        (
            "permuted_mnist",
            f"{name} 2000 × 3, S = 1",
            PERMUTED,
            dict(HIDDEN=2000, NETWORK={}, SEEDS=1, EXAMPLES=200, LEARNER=f"mnist_{name}"),
            "seed-steps/s",
        )
        for name in ("adam", "l2", "snp", "cbp")
    ),
    ("continual_imagenet", "bp, S = 1 (400 images, 2 epochs)", IMAGENET, {}, "tasks/s"),
    ("incremental_cifar", "bp, S = 1 (width 16, 60 images)", CIFAR, {}, "epochs/s"),
]


def measure(tree: Path, old: bool, code: str, values: dict) -> float | None:
    header = f"OLD = {old}\nSTEPS = {values.get('STEPS', 2)}\n"
    header += "".join(f"{k} = {v!r}\n" for k, v in values.items())
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", header + COMMON + code + HARNESS],
        env=env,
        cwd=tree,
        capture_output=True,
        text=True,
    )
    rates = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("RATE ")]
    if done.returncode or not rates:
        print(f"    ({'baseline' if old else 'this tree'} failed: {done.stderr.strip().splitlines()[-1:]})")
        return None
    return float(rates[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default=BASELINE, help="the earlier commit")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="+", help="problems to measure")
    parser.add_argument("--match", nargs="+", help="workloads whose label contains one of these")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lop-baseline-") as scratch:
        baseline = Path(scratch) / "tree"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(baseline), args.baseline],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        # a baseline from before issue 14 has the single-seed classes beside the batched ones
        old_api = (baseline / "lop_ray/experiments/seed_batched_regression.py").exists()
        try:
            print(f"baseline {args.baseline} against this tree, one CPU thread, best of {args.repeats}")
            print(f"{'problem':20}{'workload':36}{'baseline':>14}{'this tree':>14}{'ratio':>8}  unit")
            for problem, label, code, values, unit in WORKLOADS:
                if args.only and problem not in args.only:
                    continue
                if args.match and not any(m in label for m in args.match):
                    continue
                before, after = [], []
                for _ in range(args.repeats):
                    before.append(measure(baseline, old_api, code, values))
                    after.append(measure(REPO, False, code, values))
                old = max((r for r in before if r is not None), default=None)
                new = max((r for r in after if r is not None), default=None)
                ratio = f"{new / old:7.2f}×" if old and new else "      —"
                print(
                    f"{problem:20}{label:36}{old or 0:>14,.1f}{new or 0:>14,.1f}{ratio:>8}  {unit}",
                    flush=True,
                )
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(baseline)], cwd=REPO, capture_output=True
            )


if __name__ == "__main__":
    main()
