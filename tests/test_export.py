"""`lop-ray report RESULTS_DIR --export OUT_DIR`: curves.csv in long format, loaded with pandas."""

from __future__ import annotations

import pandas as pd

from lop_ray.cli import main
from tests.conftest import logged_sweep

SWEEP = """\
name: s
problem: {name: slowly_changing_regression, flip_after: 10000}
seeds: [0, 1]
num_tasks: 5
fidelity: original
algorithms:
  - algorithm: bp
    step_size: [0.01, 0.003]
  - algorithm: cbp
    step_size: 0.01
    replacement_rate: 1.0e-4
    maturity_threshold: 10
storage: /unused
"""

ERRORS = {
    ("bp", 0, 0.01): [1.0, 2.0, 3.0, 4.0],
    ("bp", 1, 0.003): [0.5, 0.5, 0.25, 0.75, 9.0],  # the 5th step is a partial bin
    ("cbp", 0, 0.01): [1.0, 1.0],
}


def _rows_of(trial):
    errors = ERRORS.get((trial["algorithm"], trial["seed"], trial["hyperparameters"]["step_size"]))
    if errors is None:
        return None
    return [{"examples": 10_000 * (i + 1), "squared_error": e} for i, e in enumerate(errors)]


def test_export_writes_binned_long_format_that_pandas_reads(tmp_path):
    results = logged_sweep(tmp_path / "results", SWEEP, _rows_of)

    assert (
        main(["report", str(results), "--export", str(tmp_path / "out"), "--out", str(tmp_path / "fig")]) == 0
    )

    curves = pd.read_csv(tmp_path / "out" / "curves.csv")
    assert list(curves.columns) == [
        "sweep", "trial_id", "problem", "algorithm", "label", "step_size",
        "fidelity", "seed", "metric", "bin", "x", "value",
    ]  # fmt: skip
    assert len(curves) == 2 + 2 + 1  # complete 20,000-example bins only
    assert curves.trial_id.nunique() == 3  # one MLflow run id per trial
    bp0 = curves[(curves.algorithm == "bp") & (curves.seed == 0)].sort_values("bin")
    assert list(bp0.value) == [1.5, 3.5] and list(bp0.x) == [20_000, 40_000]
    assert set(bp0.step_size) == {0.01}
    bp1 = curves[(curves.algorithm == "bp") & (curves.seed == 1)]
    assert list(bp1.value) == [0.5, 0.5] and set(bp1.step_size) == {0.003}
    cbp = curves[curves.algorithm == "cbp"].iloc[0]
    assert pd.isna(cbp.step_size) and cbp.value == 1.0 and cbp.fidelity == "original"
    assert (curves.metric == "squared_error").all() and (curves.sweep == "s").all()
    assert (tmp_path / "fig" / "squared_error.png").exists() and (
        tmp_path / "fig" / "squared_error.svg"
    ).exists()


def test_report_on_a_directory_without_a_sweep_is_rejected(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a lop-ray sweep's results directory" in capsys.readouterr().err


def test_report_before_any_trial_logged_is_rejected(tmp_path, capsys):
    results = logged_sweep(tmp_path / "results", SWEEP, lambda trial: None)
    assert main(["report", str(results)]) == 2
    assert "no trial has logged a step yet" in capsys.readouterr().err


def test_original_and_corrected_sweeps_are_drawn_side_by_side(tmp_path, capsys):
    from lop_ray import report

    sweeps = {}
    for mode, level in (("original", 2.0), ("corrected", 1.0)):
        text = SWEEP.replace("name: s\n", f"name: s_{mode}\n").replace(
            "fidelity: original", f"fidelity: {mode}"
        )
        sweeps[mode] = logged_sweep(
            tmp_path / mode,
            text,
            lambda trial, level=level: [
                {"examples": 10_000 * (i + 1), "squared_error": level} for i in range(4)
            ],
        )

    records = report.load_results([sweeps["original"], sweeps["corrected"]])
    lines = {a.line: a for a in report.aggregate(records, "squared_error", "examples", 20_000)}
    assert lines["cbp (fidelity=original)"].mean.tolist() == [2.0, 2.0]
    assert lines["cbp (fidelity=corrected)"].mean.tolist() == [1.0, 1.0]
    out = tmp_path / "side"
    argv = [
        "report",
        str(sweeps["original"]),
        str(sweeps["corrected"]),
        "--out",
        str(out),
        "--export",
        str(out),
    ]
    assert main(argv) == 0
    assert "figure:" in capsys.readouterr().out and (out / "squared_error.png").exists()
    curves = pd.read_csv(out / "curves.csv")
    assert list(curves.columns).count("fidelity") == 1 and set(curves.fidelity) == {"original", "corrected"}
    assert set(curves.sweep) == {"s_original", "s_corrected"}
