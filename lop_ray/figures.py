"""The paper's figures (spec/figures.md) from a sweep's trials: a catalogue of named figures per
problem, each a set of panels (a metric over x, binned as the paper bins it, one line per algorithm /
hyper-parameter value, mean ± SE across seeds), drawn as one PNG and one SVG.

Loading and binning are report.py's. This module says what each figure draws and adds only what the
headline curve does not need: derived x axes, per-trial scales (% of a layer's width), a baseline
subtracted run by run (CIFAR's retrained network), flat baseline lines, one panel per activation.
A figure reports which trials lack which metric rather than drawing a silently partial or empty plot.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lop_ray.report import Aggregate, TrialRecord, aggregate, binned_metric, draw_lines
from lop_ray.schema import Sweep
from lop_ray.tracking import trial_line, trial_run_name

X, Y, W = "x", "y", "w"  # the keys of the derived rows a panel aggregates (W: the value's weight)
NAMES_SHOWN = 8  # run names listed per missing-data message; the rest are counted

Trial = dict[str, Any]
BinRule = Callable[[list[TrialRecord]], int]  # a bin width chosen from the trials being drawn


@dataclass(frozen=True)
class Panel:
    metric: str
    ylabel: str
    x: str  # the row key of the x axis
    xlabel: str
    bin_x: int | BinRule | None = None  # x units per bin; None: one point per logged value
    reduce: str = "mean"  # the numpy reduction within a bin ("max": ED Fig. 5c)
    weight: str | None = None  # a row key weighting the mean within a bin (RL: episodes that ended)
    x_of: Callable[[dict[str, float]], float] | None = None  # a derived x (CIFAR: classes learnt)
    scale: Callable[[Trial], float] | None = None  # a per-trial factor (fraction → %, % of width)
    baseline: Callable[[Trial], bool] | None = None  # subtract this line's same-run values
    baseline_name: str = ""
    constant: Callable[[Trial], bool] | None = None  # lines drawn flat at their mean (a baseline)
    title: str = ""


@dataclass(frozen=True)
class Figure:
    name: str
    title: str
    panels: tuple[Panel, ...]
    split: str | None = None  # a network key: one row of panels per value the trials take
    shared: Callable[[Trial], bool] | None = None  # trials drawn in every row of a split (linear)
    relabel: Callable[[Trial], str | None] | None = None  # a line's name where the label is not it
    band: str = "se"  # across runs: "se" (±1 standard error) or "ci95" (95 % bootstrap interval, RL)


@dataclass
class PanelData:
    panel: Panel
    group: str | None  # the split value this panel draws (e.g. the activation)
    aggregates: list[Aggregate]
    bin_x: int | None  # the bin width used (None: one point per logged value)
    missing: list[str] = field(default_factory=list)
    intervals: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # ci95: per line

    def line(self, name: str) -> Aggregate:
        return next(agg for agg in self.aggregates if agg.line == name)


@dataclass
class FigureData:
    figure: Figure
    panels: list[PanelData]

    @property
    def missing(self) -> list[str]:
        return [message for panel in self.panels for message in panel.missing]

    @property
    def empty(self) -> bool:
        return not any(panel.aggregates for panel in self.panels)

    def panel(self, metric: str, group: str | None = None) -> PanelData:
        return next(p for p in self.panels if p.panel.metric == metric and p.group == group)


# --- the catalogue ----------------------------------------------------------------------------


def _percent(trial: Trial) -> float:
    return 100.0


def _linear_regression(trial: Trial) -> bool:
    return trial["network"].get("hidden_units") == 0


def _linear_imagenet(trial: Trial) -> bool:
    return trial["network"].get("architecture") == "linear"


def _regression_bin(records: list[TrialRecord]) -> int:
    """README figure: 20,000 examples; ED Fig. 2b (the flip_one stream): 40,000."""
    flip_one = bool(records) and all(
        r.trial["problem_settings"].get("bit_change") == "flip_one" for r in records
    )
    return 40_000 if flip_one else 20_000


RL_RETURN_BINS = {"SlipperyAnt-v5": 100_000, "Ant-v5": 250_000, "Walker2d-v5": 250_000, "Hopper-v5": 500_000}


def _rl_return_bin(records: list[TrialRecord]) -> int:
    """Fig. 3c bins Slippery Ant by 100k steps, Fig. 4a / ED 5 Ant and Walker2d by 250k, Hopper by
    500k; sweeps of several envs drawn together take Ant's."""
    envs = {r.trial["problem_settings"].get("env") for r in records}
    return RL_RETURN_BINS.get(envs.pop(), 250_000) if len(envs) == 1 else 250_000


def _classes_learnt(row: dict[str, float]) -> float:
    """CIFAR's x: the classes the network has been trained on. A block end's row carries its
    `classes`; the epoch-0 analysis of the initial network (a row without a block's accuracy) is 0."""
    return row["classes"] if "block_test_accuracy" in row else 0.0


def _retrained(trial: Trial) -> bool:
    return trial["algorithm"] == "retrained_network"


def _cifar_panel(metric: str, ylabel: str, **kwargs: Any) -> Panel:
    return Panel(metric, ylabel, "classes", "number of classes", None, x_of=_classes_learnt, **kwargs)


def _plasticity(x: str, xlabel: str, bin_x: int | BinRule | None, band: str = "se") -> Figure:
    """The metrics beside the paper's (docs/methods.md, "Metrics"), for comparing methods."""
    return Figure(
        "plasticity",
        "gradient norm, distance from the initial weights, active units, feature churn (docs/methods.md)",
        (
            Panel("gradient_norm", "gradient norm", x, xlabel, bin_x),
            Panel("distance_from_init", "‖θ − θ₀‖₂", x, xlabel, bin_x),
            Panel("active_fraction", "active units (%)", x, xlabel, bin_x, scale=lambda t: 100.0),
            Panel("feature_churn", "feature churn", x, xlabel, bin_x),
        ),
        band=band,
    )


FIGURES: dict[str, dict[str, Figure]] = {
    "slowly_changing_regression": {
        "error": Figure(
            "error",
            "online squared error per activation (README regression figure; ED Fig. 2b)",
            (Panel("squared_error", "online squared error", "examples", "examples", _regression_bin),),
            split="activation",
            shared=_linear_regression,
            relabel=lambda t: "linear" if _linear_regression(t) else None,
        ),
        "plasticity": _plasticity("examples", "examples", _regression_bin),
    },
    "permuted_mnist": {
        "accuracy": Figure(
            "accuracy",
            "online accuracy per task (ED Fig. 3b, 4a)",
            (Panel("accuracy", "online accuracy (%)", "tasks", "task", scale=_percent),),
        ),
        "representation": Figure(
            "representation",
            "dead units, weight magnitude and effective rank at each task's start (ED Fig. 3c, 4a)",
            (
                Panel("dead_units_percent", "dead units (%)", "tasks", "task"),
                Panel("weight_magnitude", "average weight magnitude", "tasks", "task"),
                Panel(
                    "effective_rank",
                    "effective rank (% of units)",
                    "tasks",
                    "task",
                    scale=lambda t: 100.0 / t["network"]["hidden_units"],
                ),
            ),
        ),
        "plasticity": _plasticity("tasks", "task", None),
    },
    "continual_imagenet": {
        "accuracy": Figure(
            "accuracy",
            "test accuracy after each task's last epoch (Fig. 1b, 1c)",
            (
                Panel(
                    "test_accuracy",
                    "test accuracy (%)",
                    "tasks",
                    "task",
                    50,
                    scale=_percent,
                    constant=_linear_imagenet,
                ),
            ),
            relabel=lambda t: "linear" if _linear_imagenet(t) else None,
        ),
        "plasticity": _plasticity("tasks", "task", 50),
    },
    "incremental_cifar": {
        "accuracy": Figure(
            "accuracy",
            "best test accuracy of each block, retrained network included (ED Fig. 1a)",
            (_cifar_panel("block_test_accuracy", "test accuracy (%)", scale=_percent),),
        ),
        "relative": Figure(
            "relative",
            "accuracy relative to the retrained network, dormant units, stable rank (Fig. 2b-d)",
            (
                _cifar_panel(
                    "block_test_accuracy",
                    "accuracy − retrained network's (points)",
                    scale=_percent,
                    baseline=_retrained,
                    baseline_name="the retrained network (algorithm retrained_network)",
                    title="relative accuracy",
                ),
                _cifar_panel("dormant_units_percent", "dormant units (%), next 5 classes"),
                _cifar_panel(
                    "stable_rank",
                    "stable rank (% of the pooled features)",
                    scale=lambda t: 100.0 / (8 * t["network"]["width"]),  # ResNet-18: 8 × width
                ),
            ),
        ),
        "plasticity": _plasticity("epochs", "epoch", 20),
    },
    "rl": {
        "return": Figure(
            "return",
            "episodic return (Fig. 3c Slippery Ant, Fig. 4a Ant, ED Fig. 5a)",
            (
                Panel(
                    "episodic_return",
                    "episodic return",
                    "env_steps",
                    "env steps",
                    _rl_return_bin,
                    weight="episodes",
                ),
            ),
            band="ci95",
        ),
        "representation": Figure(
            "representation",
            "dormant units, stable rank, weight magnitude of the policy (Fig. 4b-d)",
            (
                Panel("dormant_units_percent", "dormant policy units (%)", "env_steps", "env steps", 100_000),
                Panel("stable_rank_percent", "stable rank (% of units)", "env_steps", "env steps", 100_000),
                Panel(
                    "policy_weight_magnitude_layer1",
                    "mean |W|, policy hidden→hidden layer",
                    "env_steps",
                    "env steps",
                    100_000,
                ),
            ),
            band="ci95",
        ),
        "weight_change": Figure(
            "weight_change",
            "largest total weight change in one update (ED Fig. 5c)",
            (Panel("max_weight_change", "max Σ|ΔW| per update", "env_steps", "env steps", 1_000_000, "max"),),
            band="ci95",
        ),
        "plasticity": _plasticity("env_steps", "env steps", 100_000, band="ci95"),
    },
}


def figure_names(problem: str) -> list[str]:
    return list(FIGURES.get(problem, {}))


def select(problem: str, names: list[str] | None) -> list[Figure]:
    """The named figures of `problem` (None: all of them); an unknown name is a ValueError that lists
    the allowed ones."""
    catalogue = FIGURES.get(problem, {})
    if not names:
        return list(catalogue.values())
    unknown = [name for name in names if name not in catalogue]
    if unknown:
        raise ValueError(
            f"--figure {', '.join(unknown)}: no such figure for {problem}; allowed: {', '.join(catalogue)}"
        )
    return [catalogue[name] for name in dict.fromkeys(names)]


# --- the data ---------------------------------------------------------------------------------


def figure_data(records: list[TrialRecord], figure: Figure) -> FigureData:
    """Every panel's lines (mean ± SE over seeds per bin), and what is missing from them."""
    records = [r for r in records if r.rows]
    groups = _groups(records, figure)
    panels = [
        _panel_data(panel, members, group, figure) for group, members in groups for panel in figure.panels
    ]
    return FigureData(figure, panels)


def _groups(records: list[TrialRecord], figure: Figure) -> list[tuple[str | None, list[TrialRecord]]]:
    if figure.split is None:
        return [(None, records)]
    own = [r for r in records if figure.shared is None or not figure.shared(r.trial)]
    shared = [r for r in records if figure.shared is not None and figure.shared(r.trial)]
    values = sorted({str(r.trial["network"].get(figure.split)) for r in own})
    if not values:
        return [(None, records)]
    return [
        (value, [r for r in own if str(r.trial["network"].get(figure.split)) == value] + shared)
        for value in values
    ]


def _panel_data(panel: Panel, records: list[TrialRecord], group: str | None, figure: Figure) -> PanelData:
    where = f"{figure.name}" + (f" [{figure.split}={group}]" if group is not None else "")
    has = [any(panel.metric in row for row in r.rows) for r in records]
    lacking = [r for r, ok in zip(records, has, strict=True) if not ok]
    missing = [_missing(where, panel.metric, lacking, len(records))] if lacking else []
    present = [r for r, ok in zip(records, has, strict=True) if ok]
    lines = _line_names(present, figure)
    derived = [_derived(panel, r, line) for r, line in zip(present, lines, strict=True)]
    if panel.baseline is not None:
        derived, messages = _relative(panel, derived, where)
        missing += messages
    bin_x = panel.bin_x(present) if callable(panel.bin_x) else panel.bin_x
    aggregates = _aggregate(panel, derived, bin_x)
    if bin_x is not None and derived and all(len(agg.x) < 2 for agg in aggregates):
        bin_x = None  # shorter than two of the paper's bins: every logged value
        aggregates = _aggregate(panel, derived, None)
    if panel.constant is not None:
        flat = {r.line for r in derived if panel.constant(r.trial)}
        aggregates = [_flat(agg) if agg.line in flat else agg for agg in aggregates]
    intervals = (
        {agg.line: bootstrap_interval(agg.per_seed) for agg in aggregates} if figure.band == "ci95" else {}
    )
    return PanelData(panel, group, aggregates, bin_x, missing, intervals)


def _aggregate(panel: Panel, derived: list[TrialRecord], bin_x: int | None) -> list[Aggregate]:
    """Per seed, bin; then mean ± SE over seeds. A weighted panel's bin is Σ value·weight / Σ weight:
    RL's "mean return of the episodes ending in each bin" from each step's mean and episode count."""
    if panel.weight is None:
        return aggregate(derived, Y, X, bin_x, panel.reduce)
    binned = []
    for record in derived:
        x, total = binned_metric(record, Y, X, bin_x, "sum")
        _, weight = binned_metric(record, W, X, bin_x, "sum")
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = total / weight  # NaN in a bin where nothing was weighed (no episode ended)
        rows = [{X: a, Y: b} for a, b in zip(x, mean, strict=True)]
        binned.append(TrialRecord(record.trial, rows, record.run_id))
    return aggregate(binned, Y, X, None)


BOOTSTRAP_RESAMPLES = 2_000


def bootstrap_interval(per_seed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 95 % percentile-bootstrap interval of the mean over runs, per bin (spec/metrics.md: the RL
    figures' band); a single run has no spread: its own values. Seeded, so a figure redraws alike."""
    if len(per_seed) < 2:
        return per_seed[0], per_seed[0]
    from scipy.stats import bootstrap

    result = bootstrap(
        (per_seed,),
        np.mean,
        axis=0,
        confidence_level=0.95,
        method="percentile",
        n_resamples=BOOTSTRAP_RESAMPLES,
        rng=np.random.default_rng(0),
    )
    return result.confidence_interval.low, result.confidence_interval.high


def unlogged(sweeps: list[Sweep], records: list[TrialRecord]) -> list[str]:
    """Per sweep, the trials that have logged no step yet (absent from every figure), by run name."""
    logged = {(r.trial["sweep"], r.trial["trial_index"]) for r in records if r.rows}
    messages = []
    for sweep in sweeps:
        absent = [t for t in sweep.trials if (t["sweep"], t["trial_index"]) not in logged]
        if absent:
            messages.append(
                f"{sweep.name}: {len(absent)} of {len(sweep.trials)} trial(s) have logged no step yet: "
                f"{_run_names(absent)}"
            )
    return messages


def _missing(where: str, metric: str, lacking: list[TrialRecord], total: int) -> str:
    return (
        f"{where}: {metric} missing from {len(lacking)} of {total} trial(s): "
        f"{_run_names([r.trial for r in lacking])}"
    )


def _run_names(trials: list[Trial]) -> str:
    """The first NAMES_SHOWN trials' MLflow run names, and how many more."""
    names = [trial_run_name(t) for t in trials]
    more = f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else ""
    return f"{'; '.join(names[:NAMES_SHOWN])}{more}"


def _line_names(records: list[TrialRecord], figure: Figure) -> list[str]:
    """Each trial's line name: its label (or the figure's name for it) and the values that vary,
    without the split key (the panel says it) and without the sweep's name where that tells no two
    lines of the panel apart (e.g. sgd/relu.yaml and sgd/linear.yaml drawn together)."""

    def line(record: TrialRecord, drop: set[str]) -> str:
        return trial_line(record.trial, figure.relabel(record.trial) if figure.relabel else None, drop)

    drop = {figure.split} if figure.split else set()
    sweeps_of: dict[str, set[str]] = {}
    for record in records:
        sweeps_of.setdefault(line(record, drop | {"sweep"}), set()).add(record.trial["sweep"])
    if all(len(sweeps) == 1 for sweeps in sweeps_of.values()):
        drop.add("sweep")
    return [line(record, drop) for record in records]


def _derived(panel: Panel, record: TrialRecord, line: str) -> TrialRecord:
    """The trial as the panel draws it: rows of (x, y) with the panel's x and scale, under its line."""
    factor = panel.scale(record.trial) if panel.scale else 1.0
    rows = [
        {X: panel.x_of(row) if panel.x_of else row[panel.x], Y: row[panel.metric] * factor}
        for row in record.rows
        if panel.metric in row
    ]
    if panel.weight is not None:  # Y becomes value × weight; a step that weighs nothing adds 0
        weights = [row.get(panel.weight, 1.0) for row in record.rows if panel.metric in row]
        for row, weight in zip(rows, weights, strict=True):
            row[Y], row[W] = (row[Y] * weight if weight else 0.0), weight
    trial = {**record.trial, "label": line, "varying": {}}  # TrialRecord.line is then `line`
    return TrialRecord(trial, rows, record.run_id)


def _relative(panel: Panel, derived: list[TrialRecord], where: str) -> tuple[list[TrialRecord], list[str]]:
    """Each trial minus its baseline's value at the same x, the baseline run matched by seed (and by
    fidelity mode where the baseline ran in that mode): spec/metrics.md, CIFAR's relative accuracy.
    The baseline's own line is then 0 and not drawn."""
    assert panel.baseline is not None
    baselines = {
        (r.trial["seed"], r.trial["fidelity"]): {row[X]: row[Y] for row in r.rows}
        for r in derived
        if panel.baseline(r.trial)
    }
    others = [r for r in derived if not panel.baseline(r.trial)]
    if not baselines:
        if not others:
            return [], []
        return [], [f"{where}: {panel.metric} relative to {panel.baseline_name}: no such trial has logged it"]
    relative, unmatched = [], []
    for record in others:
        seed = record.trial["seed"]
        base = baselines.get((seed, record.trial["fidelity"])) or next(
            (values for (s, _), values in baselines.items() if s == seed), None
        )
        if base is None:
            unmatched.append(record)
            continue
        rows = [{X: row[X], Y: row[Y] - base[row[X]]} for row in record.rows if row[X] in base]
        relative.append(TrialRecord(record.trial, rows, record.run_id))
    messages = []
    if unmatched:
        seeds = [str(seed) for seed in sorted({r.trial["seed"] for r in unmatched})]
        names = [trial_run_name({**r.trial, "varying": {}}) for r in unmatched]
        messages.append(
            f"{where}: {panel.metric} relative to {panel.baseline_name}: no baseline run for seed(s) "
            f"{', '.join(seeds)}, so not drawn: {'; '.join(names[:NAMES_SHOWN])}"
            + (f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else "")
        )
    return relative, messages


def _flat(agg: Aggregate) -> Aggregate:
    """A baseline drawn as a constant at its mean over x (Fig. 1b's linear network): mean ± SE over
    seeds of each seed's mean."""
    per_seed = agg.per_seed.mean(axis=1)
    stderr = per_seed.std(ddof=1) / math.sqrt(len(per_seed)) if len(per_seed) > 1 else 0.0
    ones = np.ones_like(agg.x, dtype=float)
    return Aggregate(agg.line, agg.x, ones * per_seed.mean(), ones * stderr, agg.seeds, agg.per_seed)


# --- drawing ----------------------------------------------------------------------------------


def draw(data: FigureData, out_dir: str | Path, title: str) -> list[Path]:
    """`<out_dir>/<name>.png` and `.svg`, every panel in one figure; nothing when nothing has data."""
    if data.empty:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = data.panels
    per_row = len(data.figure.panels)
    ncols = per_row if per_row > 1 else min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.4 * ncols, 3.8 * nrows + 0.6), squeeze=False)
    names = sorted({agg.line for panel in panels for agg in panel.aggregates})
    colors = {name: f"C{index % 10}" for index, name in enumerate(names)}
    for ax, panel in zip(axes.flat, panels, strict=False):
        _draw_panel(ax, panel, colors)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    band = "95 % bootstrap interval" if data.figure.band == "ci95" else "±1 standard error"
    fig.suptitle(f"{title}: {data.figure.title}\nmean over seeds, {band}", fontsize=10)
    fig.tight_layout()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"{data.figure.name}.png"
    fig.savefig(png, dpi=120)
    fig.savefig(png.with_suffix(".svg"))
    plt.close(fig)
    return [png, png.with_suffix(".svg")]


def _draw_panel(ax: Any, data: PanelData, colors: dict[str, str]) -> None:
    panel = data.panel
    draw_lines(ax, data.aggregates, colors, data.intervals)
    if panel.baseline is not None:
        ax.axhline(0.0, linestyle="--", color="grey", linewidth=1)
    if data.aggregates:
        ax.legend(fontsize=7)
    else:
        note = "\n".join(textwrap.wrap("no data: " + " ".join(data.missing), 60))
        ax.text(0.5, 0.5, note, ha="center", va="center", fontsize=7, transform=ax.transAxes)
    binned = f" (bins of {data.bin_x:,})" if data.bin_x else ""
    ax.set_xlabel(panel.xlabel + binned)
    ax.set_ylabel(panel.ylabel, fontsize=8)
    heading = panel.title or panel.metric.replace("_", " ")
    ax.set_title(f"{data.group}: {heading}" if data.group is not None else heading, fontsize=9)
    ax.grid(alpha=0.3)


def draw_figures(
    records: list[TrialRecord], problem: str, out_dir: str | Path, title: str, names: list[str] | None = None
) -> list[tuple[FigureData, list[Path]]]:
    """Each selected figure's data and the files written for it (none: it had no data)."""
    results = []
    for figure in select(problem, names):
        data = figure_data(records, figure)
        results.append((data, draw(data, out_dir, title)))
    return results
