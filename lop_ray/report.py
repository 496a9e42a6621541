"""Curves from a sweep's results: per-trial records → the paper's binned mean ± standard error
across seeds → a figure (PNG) and a summary table.

Reads the trials' MLflow runs (each step exactly once, whatever was killed and resumed) and the sweep
document in the results directory, so it works on finished, partial and resumed sweeps alike.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lop_ray.sweep_record import SweepRecord, read_sweep_record
from lop_ray.tracking import trial_histories, trial_line

# x-axis and binning of each problem's headline metric (spec/metrics.md, Aggregation in figures)
HEADLINE = {
    "slowly_changing_regression": {
        "metric": "squared_error",
        "x": "examples",
        "bin_x": 20_000,
        "ylabel": "online squared error",
        "xlabel": "examples",
    },
    "permuted_mnist": {
        "metric": "accuracy",
        "x": "tasks",
        "bin_x": 1,
        "ylabel": "online accuracy",
        "xlabel": "tasks",
    },
    "continual_imagenet": {
        "metric": "test_accuracy",
        "x": "tasks",
        "bin_x": 50,
        "ylabel": "test accuracy after the last epoch",
        "xlabel": "tasks",
    },
    "incremental_cifar": {
        "metric": "block_test_accuracy",
        "x": "epochs",
        "bin_x": 1,  # logged once per block: the best test accuracy of the block's epochs
        "ylabel": "best test accuracy of the block",
        "xlabel": "epochs",
    },
    "rl": {
        "metric": "episodic_return",
        "x": "env_steps",
        "bin_x": 250_000,  # Fig. 4a / ED 5; Slippery Ant's Fig. 3c bins 100k, Hopper's 500k
        "ylabel": "episodic return",
        "xlabel": "env steps",
    },
}


@dataclass
class TrialRecord:
    trial: dict[str, Any]
    rows: list[dict[str, Any]]
    run_id: str = ""  # its MLflow run

    @property
    def line(self) -> str:
        """The line a trial belongs to in a figure: its label and the values that vary (the `line`
        tag of its MLflow run)."""
        return trial_line(self.trial)


@dataclass
class Aggregate:
    line: str
    x: np.ndarray  # end of each bin
    mean: np.ndarray
    stderr: np.ndarray
    seeds: int
    per_seed: np.ndarray  # (seeds, bins)

    def window(self, fraction: float, late: bool) -> tuple[float, float]:
        """Mean ± SE over seeds of each seed's mean over the first (or last) `fraction` of the bins:
        steadier than a single bin, whose value depends on how hard that bin's targets happen to be."""
        count = max(1, int(len(self.x) * fraction))
        per_seed = (self.per_seed[:, -count:] if late else self.per_seed[:, :count]).mean(axis=1)
        stderr = per_seed.std(ddof=1) / math.sqrt(len(per_seed)) if len(per_seed) > 1 else 0.0
        return float(per_seed.mean()), float(stderr)


def load_trial_records(sweep: str | Path | SweepRecord) -> list[TrialRecord]:
    """Every trial of the sweep (its results directory, or its record already read) that has logged
    a step, with its rows from MLflow."""
    record = sweep if isinstance(sweep, SweepRecord) else read_sweep_record(sweep)
    histories = trial_histories(record.tracking)
    return [
        TrialRecord(trial, histories[trial["trial_index"]][1], histories[trial["trial_index"]][0])
        for trial in record.sweep.trials
        if trial["trial_index"] in histories
    ]


def load_results(sweeps: list[str | Path | SweepRecord]) -> list[TrialRecord]:
    """The trials of one or several sweeps (results directories or records), to be drawn together.
    Where the sweeps differ in their fidelity mode or name, that becomes part of each line (e.g.
    `cbp (fidelity=original)`), so the same algorithm from an original-mode and a corrected-mode
    sweep are two lines side by side."""
    records = [record for sweep in sweeps for record in load_trial_records(sweep)]
    if len(sweeps) == 1:
        return records
    # the mode tells the lines apart when it differs; otherwise the sweep's name does
    distinguishing = next(
        (key for key in ("fidelity", "sweep") if len({r.trial[key] for r in records}) > 1), None
    )
    if distinguishing is None:
        return records
    relabelled = []
    for record in records:
        varying = {**record.trial["varying"], distinguishing: record.trial[distinguishing]}
        relabelled.append(TrialRecord({**record.trial, "varying": varying}, record.rows, record.run_id))
    return relabelled


def binned_metric(
    record: TrialRecord, metric: str, x_key: str, bin_x: int | None, reduce: str = "mean"
) -> tuple[np.ndarray, np.ndarray]:
    """One trial's metric as the paper bins it: the mean (or `reduce="max"`, ED Fig. 5c's largest
    weight change) over each complete bin of `bin_x` x-units (None: one bin per step); returns (x at
    each bin's end, bin values)."""
    rows = [row for row in record.rows if metric in row]
    if not rows:
        return np.zeros(0), np.zeros(0)
    x = np.array([row[x_key] for row in rows], dtype=float)
    y = np.array([row[metric] for row in rows], dtype=float)
    steps_per_bin = max(1, int(round(bin_x / x[0]))) if bin_x else 1
    bins = len(y) // steps_per_bin
    binned = getattr(np, reduce)(y[: bins * steps_per_bin].reshape(bins, steps_per_bin), axis=1)
    return x[steps_per_bin - 1 :: steps_per_bin][:bins], binned


def aggregate(
    records: list[TrialRecord], metric: str, x_key: str, bin_x: int | None, reduce: str = "mean"
) -> list[Aggregate]:
    """Per line: bin each seed's steps into bins of `bin_x` (x units; None: one bin per step), then
    mean ± SE over seeds.

    Seeds are cut to the number of complete bins the shortest one has, so a partial sweep plots what
    all its seeds have reached.
    """
    by_line: dict[str, list[np.ndarray]] = {}
    x_of_line: dict[str, np.ndarray] = {}
    for record in records:
        x, binned = binned_metric(record, metric, x_key, bin_x, reduce)
        if len(binned) == 0:
            continue
        by_line.setdefault(record.line, []).append(binned)
        x_of_line[record.line] = x
    aggregates = []
    for line, curves in sorted(by_line.items()):
        length = min(len(c) for c in curves)
        stacked = np.stack([c[:length] for c in curves])
        stderr = stacked.std(axis=0, ddof=1) / math.sqrt(len(curves)) if len(curves) > 1 else np.zeros(length)
        aggregates.append(
            Aggregate(line, x_of_line[line][:length], stacked.mean(axis=0), stderr, len(curves), stacked)
        )
    return aggregates


def draw_lines(
    ax: Any,
    aggregates: list[Aggregate],
    colors: dict[str, str] | None = None,
    bands: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> None:
    """Each line's mean with a ±1 SE band onto a matplotlib axes (shared by every figure); `colors`
    keeps a line's colour the same in every panel of a figure, `bands` replaces a line's ±1 SE by
    other bounds (RL's 95 % bootstrap interval)."""
    for agg in aggregates:
        marker = "o" if len(agg.x) < 12 else None
        color = (colors or {}).get(agg.line)
        label = f"{agg.line}, {agg.seeds} seeds"
        (handle,) = ax.plot(agg.x, agg.mean, marker=marker, label=label, color=color)
        low, high = (bands or {}).get(agg.line, (agg.mean - agg.stderr, agg.mean + agg.stderr))
        ax.fill_between(agg.x, low, high, alpha=0.25, color=handle.get_color())


def spans_decades(aggregates: list[Aggregate], decades: float = 2.0) -> bool:
    """Whether the lines' typical levels (each line's median) lie more than `decades` powers of ten
    apart, all of them positive: the case a log axis shows and a linear one hides (a diverging
    hyper-parameter beside the rest)."""
    levels = [float(np.median(agg.mean)) for agg in aggregates if len(agg.mean)]
    if len(levels) < 2 or not all(np.all(agg.mean > 0) for agg in aggregates):
        return False
    return max(levels) / min(levels) > 10.0**decades


def plot(aggregates: list[Aggregate], path: str | Path, title: str, xlabel: str, ylabel: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    draw_lines(ax, aggregates)
    ax.set_xlabel(xlabel)
    if spans_decades(aggregates):  # one diverging line would flatten the others on a linear axis
        ax.set_yscale("log")
        ylabel += " (log scale)"
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    fig.savefig(path.with_suffix(".svg"))
    plt.close(fig)
    return path


def headline_figure(
    records: list[TrialRecord], problem: str, title: str, out_dir: str | Path
) -> tuple[Path | None, list[Aggregate]]:
    """The problem's headline curve (regression: binned online error) as `<out>/<metric>.png` and
    `.svg`."""
    spec = HEADLINE[problem]
    aggregates = aggregate(records, spec["metric"], spec["x"], spec["bin_x"])
    if all(len(agg.x) < 2 for agg in aggregates):  # too short for the paper's bins: plot every step
        aggregates = aggregate(records, spec["metric"], spec["x"], None)
        title += f" (per step: shorter than two bins of {spec['bin_x']:,})"
    if not aggregates:
        return None, []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = plot(aggregates, out / f"{spec['metric']}.png", title, spec["xlabel"], spec["ylabel"])
    return path, aggregates


def panels_figure(sweeps: list[str | Path | SweepRecord], path: str | Path, columns: int = 6) -> Path | None:
    """Several sweeps side by side, one panel each with its headline curves (a whole suite of files,
    e.g. the paper's 46 regression files, in one picture); a panel whose lines lie decades apart is
    drawn on a log scale. Sweeps with no step logged yet are left out; None if none has any."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for sweep in sweeps:
        record = sweep if isinstance(sweep, SweepRecord) else read_sweep_record(sweep)
        records = load_trial_records(record)
        if not records:
            continue
        spec = HEADLINE[records[0].trial["problem"]]
        aggregates = aggregate(records, spec["metric"], spec["x"], spec["bin_x"])
        if any(len(agg.x) for agg in aggregates):
            panels.append((record.sweep.name, spec, aggregates))
    if not panels:
        return None
    rows = -(-len(panels) // columns)
    width = min(columns, len(panels))
    fig, axes = plt.subplots(rows, width, figsize=(3.3 * width, 2.5 * rows), squeeze=False)
    for ax, (name, _, aggregates) in zip(axes.flat, panels, strict=False):
        draw_lines(ax, aggregates)
        if spans_decades(aggregates):
            ax.set_yscale("log")
        ax.set_title(name + (" (log)" if ax.get_yscale() == "log" else ""), fontsize=7)
        ax.tick_params(labelsize=6)
        ax.xaxis.get_offset_text().set_fontsize(6)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=4.5, loc="best")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    spec = panels[0][1]
    fig.supxlabel(spec["xlabel"], fontsize=9)
    fig.supylabel(spec["ylabel"], fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    fig.savefig(path.with_suffix(".svg"))
    plt.close(fig)
    return path


# what `export_curves` writes per problem: (metric, x key, bin width in x units), spec/metrics.md
EXPORTED_METRICS = {
    "slowly_changing_regression": [("squared_error", "examples", 20_000)],
    "permuted_mnist": [
        (metric, "tasks", 1)
        for metric in (
            "accuracy",
            "dead_units_percent",
            "effective_rank",
            "abs_approximate_rank",
            "weight_magnitude",
        )
    ],
    "continual_imagenet": [
        (metric, "tasks", 1)
        for metric in ("test_accuracy", "train_accuracy", "first_epoch_train_accuracy", "weight_magnitude")
    ],
    "incremental_cifar": [
        (metric, "epochs", 1)
        for metric in (
            "test_accuracy",
            "block_test_accuracy",
            "dormant_units_percent",
            "stable_rank",
            "weight_magnitude",
        )
    ],
    "rl": [
        (metric, "env_steps", 100_000)
        for metric in (
            "episodic_return",
            "dormant_units_percent",
            "stable_rank",
            "policy_weight_magnitude_layer1",
            "max_weight_change",
        )
    ],
}
CURVE_COLUMNS = ["sweep", "trial_id", "problem", "algorithm", "label"]


def export_curves(records: list[TrialRecord], out_dir: str | Path) -> Path:
    """`curves.csv` in long format: one row per (trial, seed, metric, bin), with every
    hyper-parameter that varies in the sweep as its own column."""
    records = [r for r in records if r.rows]
    varying = sorted(
        {key for r in records for key in r.trial["varying"]} - {"fidelity", "sweep"}
    )  # own columns
    columns = CURVE_COLUMNS + varying + ["fidelity", "seed", "metric", "bin", "x", "value"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "curves.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for record in records:
            trial = record.trial
            base = {
                "sweep": trial["sweep"],
                "trial_id": record.run_id,
                "problem": trial["problem"],
                "algorithm": trial["algorithm"],
                "label": trial["label"],
                **{key: trial["varying"].get(key, "") for key in varying},
                "fidelity": trial["fidelity"],
                "seed": trial["seed"],
            }
            for metric, x_key, bin_x in EXPORTED_METRICS[trial["problem"]]:
                xs, values = binned_metric(record, metric, x_key, bin_x)
                for index, (x, value) in enumerate(zip(xs, values, strict=True)):
                    writer.writerow(
                        {**base, "metric": metric, "bin": index, "x": int(x), "value": repr(float(value))}
                    )
    return path
