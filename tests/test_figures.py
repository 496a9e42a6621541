"""The paper's figures (`lop-ray report --figure`): each figure's lines as numbers (means, standard
errors, bin ends, CIFAR's relative accuracy, the per-activation split), what a figure says is missing,
and one end-to-end call through the CLI that logs the PNG and SVG to the sweep's MLflow run."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lop_ray import figures
from lop_ray.cli import main
from lop_ray.report import TrialRecord
from lop_ray.schema import load_sweep
from tests.conftest import logged_sweep, write_sweep

REGRESSION = """\
name: {name}
problem: {{name: slowly_changing_regression, flip_after: 10000, bit_change: {bit_change}}}
network: {network}
seeds: [0, 1]
num_tasks: 4
algorithms:
  - algorithm: bp
    step_size: 0.01
  - algorithm: snp
    step_size: 0.01
    weight_decay: 1.0e-3
    perturb_scale: [1.0e-3, 1.0e-4]
storage: /unused
"""


def _regression_trials(tmp_path, name="reg", network="{activation: [relu, tanh]}", bit_change="redraw"):
    text = REGRESSION.format(name=name, network=network, bit_change=bit_change)
    return load_sweep(write_sweep(tmp_path / f"{name}.yaml", text)).trials


def _trial(problem: str, label: str, seed: int, **parts) -> dict:
    """A trial as a validated sweep lists it, with the keys the figures read."""
    return {
        "sweep": parts.get("sweep", "s"),
        "trial_index": 0,
        "problem": problem,
        "problem_settings": parts.get("settings", {}),
        "network": parts.get("network", {}),
        "algorithm": parts.get("algorithm", label),
        "label": label,
        "hyperparameters": {},
        "varying": parts.get("varying", {}),
        "fidelity": "original",
        "seed": seed,
    }


def _rows(x_key: str, x_step: float, **metrics: list[float]) -> list[dict[str, float]]:
    length = max(len(v) for v in metrics.values())
    rows = [{x_key: x_step * (i + 1)} for i in range(length)]
    for metric, values in metrics.items():
        for row, value in zip(rows, values, strict=False):
            row[metric] = value
    return rows


def _se(*values: float) -> float:
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))


def test_regression_one_panel_per_activation_with_the_linear_learner_in_each(tmp_path):
    trials = _regression_trials(tmp_path)
    linear = _regression_trials(tmp_path, name="lin", network="{hidden_units: 0}")
    level = {"relu": 1.0, "tanh": 2.0}
    records = []
    for trial in trials:
        base = level[trial["network"]["activation"]] + (trial["algorithm"] == "snp") * 10
        base += trial["hyperparameters"].get("perturb_scale", 0) * 1000
        errors = [base + trial["seed"], base + trial["seed"] + 2, base, base]  # 10,000 examples a step
        records.append(TrialRecord(trial, _rows("examples", 10_000, squared_error=errors)))
    for trial in linear[:2]:  # bp, seeds 0 and 1
        records.append(TrialRecord(trial, _rows("examples", 10_000, squared_error=[5.0, 7.0, 5.0, 5.0])))

    data = figures.figure_data(records, figures.select("slowly_changing_regression", ["error"])[0])

    assert [p.group for p in data.panels] == ["relu", "tanh"] and data.missing == []
    relu = data.panel("squared_error", "relu")
    assert relu.bin_x == 20_000
    assert sorted(a.line for a in relu.aggregates) == [
        "bp",
        "linear",
        "snp (perturb_scale=0.0001)",
        "snp (perturb_scale=0.001)",
    ]  # the activation is the panel's, the sweep's name tells no lines apart: neither is in a line
    bp = relu.line("bp")
    np.testing.assert_array_equal(bp.x, [20_000, 40_000])
    np.testing.assert_array_equal(bp.per_seed, [[2.0, 1.0], [3.0, 1.0]])  # relu: seed s → 1 + s, 3 + s
    np.testing.assert_allclose(bp.mean, [2.5, 1.0])
    np.testing.assert_allclose(bp.stderr, [_se(2.0, 3.0), 0.0])
    tanh_snp = data.panel("squared_error", "tanh").line("snp (perturb_scale=0.001)")
    np.testing.assert_allclose(tanh_snp.mean, [13.0 + 1.5, 13.0])
    for panel in data.panels:  # the linear learner in every activation's panel
        np.testing.assert_allclose(panel.line("linear").mean, [6.0, 5.0])
        assert panel.line("linear").seeds == 2


def test_regression_flip_one_bins_40000_and_short_runs_plot_every_step(tmp_path):
    trials = _regression_trials(tmp_path, network="{activation: relu}", bit_change="flip_one")
    records = [
        TrialRecord(t, _rows("examples", 10_000, squared_error=[1, 2, 3, 4, 5, 6, 7, 8])) for t in trials
    ]
    panel = figures.figure_data(records, figures.FIGURES["slowly_changing_regression"]["error"]).panels[0]
    assert panel.group == "relu" and panel.bin_x == 40_000
    np.testing.assert_array_equal(panel.line("bp").x, [40_000, 80_000])
    np.testing.assert_allclose(panel.line("bp").mean, [2.5, 6.5])

    short = [TrialRecord(t, _rows("examples", 10_000, squared_error=[1, 3])) for t in trials]
    panel = figures.figure_data(short, figures.FIGURES["slowly_changing_regression"]["error"]).panels[0]
    assert panel.bin_x is None  # shorter than two bins of 40,000: every logged value
    np.testing.assert_array_equal(panel.line("bp").x, [10_000, 20_000])


def test_permuted_mnist_accuracy_in_percent_and_effective_rank_as_percent_of_width():
    net = {"hidden_units": 100, "hidden_layers": 3}
    records = [
        TrialRecord(
            _trial("permuted_mnist", "bp", seed, network=net, varying={"step_size": 0.01}),
            _rows(
                "tasks",
                1,
                accuracy=[0.9, 0.8 + 0.1 * seed, 0.7],
                dead_units_percent=[0.0, 1.0 + seed, 2.0],
                weight_magnitude=[0.05, 0.06, 0.07],
                effective_rank=[90.0, 80.0, 70.0 - 10 * seed],
            ),
        )
        for seed in (0, 1)
    ]
    accuracy = figures.figure_data(records, figures.FIGURES["permuted_mnist"]["accuracy"])
    assert accuracy.panel("accuracy").intervals == {}  # supervised: ±1 SE
    line = accuracy.panel("accuracy").line("bp (step_size=0.01)")
    np.testing.assert_array_equal(line.x, [1, 2, 3])  # per task
    np.testing.assert_allclose(line.mean, [90.0, 85.0, 70.0])
    np.testing.assert_allclose(line.stderr, [0.0, _se(80.0, 90.0), 0.0], atol=1e-12)

    representation = figures.figure_data(records, figures.FIGURES["permuted_mnist"]["representation"])
    assert [p.panel.metric for p in representation.panels] == [
        "dead_units_percent",
        "weight_magnitude",
        "effective_rank",
    ]
    rank = representation.panel("effective_rank").line("bp (step_size=0.01)")
    np.testing.assert_allclose(rank.mean, [90.0, 80.0, 65.0])  # of 100 units: the same numbers in %
    dead = representation.panel("dead_units_percent").line("bp (step_size=0.01)")
    np.testing.assert_allclose(dead.mean, [0.0, 1.5, 2.0])


def test_a_metric_missing_from_some_trials_is_named_and_the_rest_is_drawn(tmp_path):
    net = {"hidden_units": 10}
    records = [
        TrialRecord(_trial("permuted_mnist", "bp", 0, network=net), _rows("tasks", 1, accuracy=[0.5, 0.6])),
        TrialRecord(
            _trial("permuted_mnist", "cbp", 3, network=net, varying={"replacement_rate": 1e-4}),
            _rows("tasks", 1, accuracy=[0.4, 0.4], dead_units_percent=[1.0, 2.0]),
        ),
    ]
    data = figures.figure_data(records, figures.FIGURES["permuted_mnist"]["representation"])
    assert not data.empty
    assert [a.line for a in data.panel("dead_units_percent").aggregates] == ["cbp (replacement_rate=0.0001)"]
    assert data.missing == [
        "representation: dead_units_percent missing from 1 of 2 trial(s): bp seed=0",
        "representation: weight_magnitude missing from 2 of 2 trial(s): "
        "bp seed=0; cbp replacement_rate=0.0001 seed=3",
        "representation: effective_rank missing from 2 of 2 trial(s): "
        "bp seed=0; cbp replacement_rate=0.0001 seed=3",
    ]
    paths = figures.draw(data, tmp_path, "t")
    assert [p.name for p in paths] == ["representation.png", "representation.svg"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_a_figure_without_any_data_is_skipped_with_the_message(tmp_path):
    records = [TrialRecord(_trial("rl", "std", 0), _rows("env_steps", 20_480, episodic_return=[1.0]))]
    [(data, paths)] = figures.draw_figures(records, "rl", tmp_path, "t", ["weight_change"])
    assert data.empty and paths == [] and not list(tmp_path.iterdir())
    assert data.missing == ["weight_change: max_weight_change missing from 1 of 1 trial(s): std seed=0"]


def test_imagenet_bins_50_tasks_and_draws_the_linear_network_flat_at_its_mean():
    records = [
        TrialRecord(
            _trial("continual_imagenet", "bp", seed, network={"architecture": "conv_net"}),
            _rows("tasks", 1, test_accuracy=[0.8 + 0.02 * seed] * 50 + [0.7] * 50 + [0.1] * 10),
        )
        for seed in (0, 1)
    ] + [
        TrialRecord(
            _trial("continual_imagenet", "bp", seed, network={"architecture": "linear"}),
            _rows("tasks", 1, test_accuracy=[0.76] * 50 + [0.78 + 0.02 * seed] * 50),
        )
        for seed in (0, 1)
    ]
    panel = figures.figure_data(records, figures.FIGURES["continual_imagenet"]["accuracy"]).panels[0]
    assert panel.bin_x == 50
    conv = panel.line("bp")
    np.testing.assert_array_equal(conv.x, [50, 100])  # the 10 tasks of a partial bin are not drawn
    np.testing.assert_allclose(conv.mean, [81.0, 70.0])
    np.testing.assert_allclose(conv.stderr, [1.0, 0.0], atol=1e-12)
    linear = panel.line("linear")  # per seed: mean 77 and 78 over the tasks
    np.testing.assert_allclose(linear.mean, [77.5, 77.5])
    np.testing.assert_allclose(linear.stderr, [0.5, 0.5])


def _cifar_rows(accuracy: list[float], dormant: list[float]) -> list[dict[str, float]]:
    """Two epochs a block: the first row holds the initial network's analysis, each block end its best
    test accuracy and the analysis on the next classes."""
    rows = [{"epochs": 1.0, "classes": 5.0, "dormant_units_percent": dormant[0], "stable_rank": 32.0}]
    for block, value in enumerate(accuracy):
        rows.append({"epochs": 2.0 * block + 2, "classes": 5.0 * (block + 1)})
        rows[-1].update(block_test_accuracy=value, dormant_units_percent=dormant[block + 1], stable_rank=16.0)
        if block + 1 < len(accuracy):
            rows.append({"epochs": 2.0 * block + 3, "classes": 5.0 * (block + 2)})
    return rows


def _cifar(label: str, seed: int, accuracy: list[float], dormant: list[float]) -> TrialRecord:
    return TrialRecord(
        _trial("incremental_cifar", label, seed, network={"width": 8}), _cifar_rows(accuracy, dormant)
    )


def test_cifar_accuracy_relative_to_the_retrained_network_of_the_same_run():
    records = [
        _cifar("bp", 0, [0.50, 0.40, 0.30], [0.0, 1.0, 2.0, 3.0]),
        _cifar("bp", 1, [0.60, 0.50, 0.40], [0.0, 3.0, 4.0, 5.0]),
        _cifar("retrained_network", 0, [0.50, 0.45, 0.40], [0.0, 0.0, 0.0, 0.0]),
        _cifar("retrained_network", 1, [0.55, 0.60, 0.45], [0.0, 0.0, 0.0, 0.0]),
    ]
    data = figures.figure_data(records, figures.FIGURES["incremental_cifar"]["relative"])
    assert data.missing == []
    relative = data.panel("block_test_accuracy")
    assert [a.line for a in relative.aggregates] == ["bp"]  # the baseline itself is the dashed 0
    bp = relative.line("bp")
    np.testing.assert_array_equal(bp.x, [5, 10, 15])
    np.testing.assert_allclose(bp.per_seed, [[0.0, -5.0, -10.0], [5.0, -10.0, -5.0]], atol=1e-9)
    np.testing.assert_allclose(bp.mean, [2.5, -7.5, -7.5], atol=1e-9)
    np.testing.assert_allclose(bp.stderr, [2.5, 2.5, 2.5], atol=1e-9)
    dormant = data.panel("dormant_units_percent").line("bp")
    np.testing.assert_array_equal(dormant.x, [0, 5, 10, 15])  # the initial network, then block ends
    np.testing.assert_allclose(dormant.mean, [0.0, 2.0, 3.0, 4.0])
    rank = data.panel("stable_rank").line("bp")  # % of the 64 pooled features of a width-8 ResNet-18
    np.testing.assert_allclose(rank.mean, [50.0, 25.0, 25.0, 25.0])

    absolute = figures.figure_data(records, figures.FIGURES["incremental_cifar"]["accuracy"]).panels[0]
    np.testing.assert_allclose(absolute.line("retrained_network").mean, [52.5, 52.5, 42.5])


def test_cifar_without_its_baseline_draws_the_other_panels_and_says_what_is_missing(tmp_path):
    partial = [
        _cifar("bp", 0, [0.5, 0.4], [0.0, 1.0, 2.0]),
        _cifar("bp", 1, [0.6, 0.5], [0.0, 1.0, 2.0]),
        _cifar("retrained_network", 0, [0.5, 0.5], [0.0, 0.0, 0.0]),
    ]
    corrected = _cifar("cbp", 0, [0.7, 0.6], [0.0, 1.0, 2.0])
    corrected.trial["fidelity"] = "corrected"  # measured against the original-mode baseline of its seed
    data = figures.figure_data(partial + [corrected], figures.FIGURES["incremental_cifar"]["relative"])
    assert data.panel("block_test_accuracy").line("bp").seeds == 1
    np.testing.assert_allclose(data.panel("block_test_accuracy").line("cbp").mean, [20.0, 10.0])
    assert data.missing == [
        "relative: block_test_accuracy relative to the retrained network (algorithm retrained_network): "
        "no baseline run for seed(s) 1, so not drawn: bp seed=1"
    ]

    no_baseline = partial[:2]
    data = figures.figure_data(no_baseline, figures.FIGURES["incremental_cifar"]["relative"])
    assert data.panel("block_test_accuracy").aggregates == []
    assert data.panel("dormant_units_percent").line("bp").seeds == 2
    assert data.missing == [
        "relative: block_test_accuracy relative to the retrained network (algorithm retrained_network): "
        "no such trial has logged it"
    ]
    assert [p.name for p in figures.draw(data, tmp_path, "t")] == ["relative.png", "relative.svg"]


@pytest.mark.parametrize(("env", "bin_x"), [("SlipperyAnt-v5", 100_000), ("Hopper-v5", 500_000)])
def test_rl_return_bins_by_env_weighs_episodes_and_weight_change_takes_the_largest(env, bin_x):
    steps_per_bin = bin_x // 50_000
    returns = np.arange(2.0 * steps_per_bin)
    episodes = np.ones_like(returns)
    returns[steps_per_bin], episodes[steps_per_bin] = math.nan, 0  # a step in which no episode ended
    episodes[0] = 3  # its mean return counts three episodes
    records = [
        TrialRecord(
            _trial("rl", "std", seed, settings={"env": env}, algorithm="ppo"),
            _rows(
                "env_steps",
                50_000,
                episodic_return=list(returns + seed),
                episodes=list(episodes),
                max_weight_change=[1.0] * 19 + [5.0 + seed] + [2.0] * 20,
            ),
        )
        for seed in (0, 1)
    ]
    ret = figures.figure_data(records, figures.FIGURES["rl"]["return"]).panels[0]
    assert ret.bin_x == bin_x
    std = ret.line("std")
    np.testing.assert_array_equal(std.x, [bin_x, 2 * bin_x])
    first = np.nansum((returns * episodes)[:steps_per_bin]) / episodes[:steps_per_bin].sum()
    assert first != np.nanmean(returns[:steps_per_bin])  # the mean over episodes, not over steps
    second = np.nanmean(returns[steps_per_bin:])
    np.testing.assert_allclose(std.mean, [first + 0.5, second + 0.5])
    np.testing.assert_allclose(std.stderr, [0.5, 0.5])
    low, high = ret.intervals["std"]  # RL: a 95 % bootstrap interval over runs, here of 2 runs 1 apart
    np.testing.assert_allclose(low, std.mean - 0.5)
    np.testing.assert_allclose(high, std.mean + 0.5)

    change = figures.figure_data(records, figures.FIGURES["rl"]["weight_change"]).panels[0]
    np.testing.assert_array_equal(change.line("std").x, [1_000_000, 2_000_000])
    np.testing.assert_allclose(change.line("std").mean, [5.5, 2.0])
    np.testing.assert_allclose(change.intervals["std"], [[5.0, 2.0], [6.0, 2.0]])


def test_unknown_figure_names_list_the_allowed_ones():
    with pytest.raises(
        ValueError, match="no such figure for permuted_mnist; allowed: accuracy, representation, plasticity"
    ):
        figures.select("permuted_mnist", ["accuracy", "error"])
    assert [f.name for f in figures.select("rl", None)] == [
        "return",
        "representation",
        "weight_change",
        "plasticity",
    ]


def test_report_figure_writes_png_and_svg_and_logs_them_to_the_sweeps_mlflow_run(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from lop_ray.sweep_record import read_sweep_record

    text = REGRESSION.format(name="e2e", network="{activation: [relu, tanh]}", bit_change="redraw")
    text = text.replace("perturb_scale: [1.0e-3, 1.0e-4]", "perturb_scale: 1.0e-3").replace("[0, 1]", "[0]")

    def rows_of(trial):
        if trial["network"]["activation"] == "tanh":  # bp never started; snp lacks the error
            if trial["algorithm"] == "bp":
                return None
            return [{"examples": 10_000.0 * (i + 1), "weight_magnitude": 1.0} for i in range(4)]
        return [{"examples": 10_000.0 * (i + 1), "squared_error": float(i)} for i in range(4)]

    results = logged_sweep(tmp_path / "results", text, rows_of)
    out = tmp_path / "out"

    assert main(["report", str(results), "--figure", "nope"]) == 2
    assert "allowed: error" in capsys.readouterr().err
    assert main(["report", str(results), "--figure", "error", "--out", str(out)]) == 0

    captured = capsys.readouterr()
    assert (out / "figures" / "error.png").stat().st_size > 1000
    assert (out / "figures" / "error.svg").read_text().lstrip().startswith("<?xml")
    assert not (out / "squared_error.png").exists()  # a named figure only
    assert "e2e: 1 of 4 trial(s) have logged no step yet: bp activation=tanh seed=0" in captured.err
    assert "error [activation=tanh]: squared_error missing from 1 of 1 trial(s): snp activation=tanh" in (
        captured.err
    )
    tracking = read_sweep_record(results).tracking
    logged = MlflowClient(tracking["uri"]).list_artifacts(tracking["parent_run_id"], "figures")
    assert sorted(a.path for a in logged) == ["figures/error.png", "figures/error.svg"]
