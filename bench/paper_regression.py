"""What the paper's regression suite (`sweeps/regression/`, `make paper-regression`) costs on this
machine, from its parts measured side by side in one run, and the wall time they add up to.

1. The compiled kernel's seed-steps per second at S = 100 on one thread for every kind of trial in
   the suite (algorithm × optimizer, each at a configuration taken from the suite's own files), in
   the regime that fills 98 % of a run (after Adam's bias corrections have reached 1). Adam is also
   run through its per-element step counts (a CBP learner with ρ = 0, which never replaces a unit
   and so computes the same numbers) beside the one-count path a learner without resets takes.
2. MLflow for one Tune trial of 100 seeds: each seed's step logged by `log_batch` and each run ended
   by `set_terminated` (what a trial did before) against `TrialRuns` (one transaction per flush,
   one statement for the statuses), and the report's read of every history: `get_metric_history`
   per run and key against one query. Both on the embedded sqlite store, in temporary directories.
3. The suite: its seed-steps per kind (read from the 46 files) over the measured rates, plus the
   MLflow cost per Tune trial, spread over this machine's cores.

    .venv/bin/python bench/paper_regression.py [--seeds 100] [--examples 5000] [--log-steps 20]
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import dataclasses  # noqa: E402

import torch  # noqa: E402

from lop_ray.experiments.regression import RegressionExperiment, config_from_trial  # noqa: E402
from lop_ray.schema import load_sweep  # noqa: E402

WARM_UP = 20_000  # examples before timing: Adam's corrections are exactly 1 from ~17,000 steps


def suite_trials() -> tuple[dict[tuple[str, str, str], list[dict]], int]:
    """The suite's trials by (algorithm, optimizer, activation or `linear`), and its number of Tune
    trials."""
    kinds: dict[tuple[str, str, str], list[dict]] = {}
    tune_trials = 0
    for path in sorted(glob.glob(str(REPO / "sweeps/regression/*/*.yaml"))):
        sweep = load_sweep(path)
        tune_trials += len(sweep.groups)
        for trial in sweep.trials:
            network = trial["network"]["activation"] if trial["network"]["hidden_units"] else "linear"
            kind = (trial["algorithm"], trial["hyperparameters"].get("optimizer", "sgd"), network)
            kinds.setdefault(kind, []).append(trial)
    return kinds, tune_trials


def examples_of(trial: dict) -> int:
    return trial["num_tasks"] * trial["problem_settings"]["flip_after"]


def kernel_rate(config, seeds: int, examples: int, repeats: int = 3) -> float:
    experiment = RegressionExperiment(config, seeds=list(range(seeds)))
    assert experiment.compiled is not None, "the suite's trials all take the compiled path"
    experiment.compiled.advance(WARM_UP if config.learner.optimizer != "sgd" else examples)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        experiment.compiled.advance(examples)
        best = min(best, time.perf_counter() - start)
    return seeds * examples / best


def per_element_adam(config):
    """The same learner through the kernel's per-element step counts: CBP with ρ = 0."""
    from lop_ray.algos import CBPConfig

    learner = dataclasses.replace(
        config.learner,
        algorithm="cbp",
        cbp=CBPConfig(replacement_rate=0.0, maturity_threshold=100, util_type="contribution"),
    )
    return dataclasses.replace(config, learner=learner)


def _store(directory: str):
    """A sweep's embedded MLflow store in `directory`: its client and tracking ids."""
    from mlflow.tracking import MlflowClient

    from lop_ray.tracking import embedded_tracking_uri, ensure_experiment, start_sweep_run

    uri = embedded_tracking_uri(directory)
    client = MlflowClient(uri)
    experiment_id = ensure_experiment(client, "bench", None)
    parent = start_sweep_run(client, experiment_id, "bench", "slowly_changing_regression", {})
    return client, {"uri": uri, "experiment_id": experiment_id, "parent_run_id": parent}


def mlflow_costs(seeds: int, steps: int, read_steps: int) -> dict[str, float]:
    """Seconds to start, per step, to end and to read back one Tune trial of `seeds` seeds, both
    ways (the read: `get_metric_history` per run and key, or `trial_histories`' one query)."""
    from lop_ray.tracking import TrialRuns, TrialTracker, trial_histories

    trial = load_sweep(str(REPO / "sweeps/regression/sgd/relu.yaml")).groups[0][:seeds]
    metrics = {
        key: 0.5
        for key in (
            "squared_error",
            "examples",
            "weight_magnitude",
            "gradient_norm",
            "distance_from_init",
            "active_fraction",
            "feature_churn",
        )
    }
    costs = {}
    for way in ("log_batch", "TrialRuns"):
        with tempfile.TemporaryDirectory() as directory:
            client, tracking = _store(directory)
            start = time.perf_counter()
            if way == "log_batch":
                trackers = [TrialTracker(tracking, t, None, client) for t in trial]
                costs[f"start {way}"] = time.perf_counter() - start
                start = time.perf_counter()
                for step in range(steps):
                    for tracker in trackers:
                        tracker.log_step(step, metrics)
                costs[f"step {way}"] = (time.perf_counter() - start) / steps
                start = time.perf_counter()
                for tracker in trackers:
                    tracker.finish()
                costs[f"end {way}"] = time.perf_counter() - start
            else:
                runs = TrialRuns(tracking, trial, [None] * len(trial))
                costs[f"start {way}"] = time.perf_counter() - start
                start = time.perf_counter()
                for step in range(steps):
                    runs.log_step(step, [metrics] * len(trial))
                    runs.flush()  # a flush per step: what a trial checkpointing every step does
                costs[f"step {way}"] = (time.perf_counter() - start) / steps
                start = time.perf_counter()
                runs.finish()
                costs[f"end {way}"] = time.perf_counter() - start
    # the report's read of a trial's whole history (`read_steps` steps of every seed), both ways
    with tempfile.TemporaryDirectory() as directory:
        client, tracking = _store(directory)
        runs = TrialRuns(tracking, trial, [None] * len(trial))
        for step in range(read_steps):
            runs.log_step(step, [metrics] * len(trial))
        runs.finish()
        start = time.perf_counter()
        parent = tracking["parent_run_id"]
        for run in client.search_runs([tracking["experiment_id"]], f"tags.`mlflow.parentRunId` = '{parent}'"):
            for key in run.data.metrics:
                client.get_metric_history(run.info.run_id, key)
        costs["read log_batch"] = time.perf_counter() - start
        start = time.perf_counter()
        trial_histories(tracking)
        costs["read TrialRuns"] = time.perf_counter() - start
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--examples", type=int, default=5000, help="examples per timed kernel call")
    parser.add_argument("--log-steps", type=int, default=20, help="steps logged per MLflow measurement")
    args = parser.parse_args()
    torch.set_num_threads(1)
    kinds, tune_trials = suite_trials()

    print(f"1. kernel, S = {args.seeds}, one thread (seed-steps/s, Adam's after {WARM_UP:,} examples)")
    rates: dict[tuple[str, str, str], float] = {}
    for kind, trials in sorted(kinds.items()):
        # the kind's most common configuration in the suite
        common = Counter(repr(sorted(t["hyperparameters"].items())) for t in trials).most_common(1)[0][0]
        trial = next(t for t in trials if repr(sorted(t["hyperparameters"].items())) == common)
        config = config_from_trial(trial)
        rates[kind] = kernel_rate(config, args.seeds, args.examples)
        line = f"   {' '.join(kind):28} {rates[kind] / 1e6:6.2f}M"
        if kind[1] == "adam":
            per_element = kernel_rate(per_element_adam(config), args.seeds, args.examples)
            line += f"   per-element counts {per_element / 1e6:5.2f}M: one count {rates[kind] / per_element:4.2f}x"
        print(line, flush=True)

    runs = [t for trials in kinds.values() for t in trials]
    steps_per_trial = sum(t["num_tasks"] for t in runs) / len(runs)  # a Tune trial's seeds share theirs
    costs = mlflow_costs(args.seeds, args.log_steps, round(steps_per_trial))
    print(
        f"2. MLflow, one Tune trial of {args.seeds} seeds, embedded sqlite store (seconds;"
        f" read: {round(steps_per_trial)} steps of each seed)"
    )
    for part in ("start", "step", "end", "read"):
        old, new = costs[f"{part} log_batch"], costs[f"{part} TrialRuns"]
        print(f"   {part:5} per-seed log_batch {old:7.3f}   TrialRuns {new:7.3f}   {old / new:6.1f}x")

    cores = os.cpu_count() or 1
    print(
        f"3. the suite: {sum(len(t) for t in kinds.values()):,} runs in {tune_trials} Tune trials, {cores} cores"
    )
    kernel_seconds = 0.0
    by_learner: dict[tuple[str, str], list[float]] = {}
    for kind, trials in sorted(kinds.items()):
        seed_steps = sum(examples_of(t) for t in trials)
        seconds = seed_steps / rates[kind]
        kernel_seconds += seconds
        totals = by_learner.setdefault(kind[:2], [0.0, 0.0])
        totals[0] += seed_steps
        totals[1] += seconds
    for (algorithm, optimizer), (seed_steps, seconds) in sorted(by_learner.items()):
        print(
            f"   {algorithm:>4} ({optimizer:4}) {seed_steps:.2e} seed-steps at {seed_steps / seconds / 1e6:4.2f}M/s:"
            f" {seconds / 3600:5.2f} core-hours"
        )
    for way in ("log_batch", "TrialRuns"):
        parts = ("start", "end", "read")
        per_trial = sum(costs[f"{part} {way}"] for part in parts) + steps_per_trial * costs[f"step {way}"]
        logging = per_trial * tune_trials
        total = (kernel_seconds + logging) / cores
        print(
            f"   kernel {kernel_seconds / 3600:.2f} + MLflow ({way}) {logging / 3600:.2f} core-hours"
            f" = {total / 3600:.2f} h on {cores} cores"
        )


if __name__ == "__main__":
    main()
