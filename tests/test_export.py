"""`lop-ray report RESULTS_DIR --export OUT_DIR`: curves.csv in long format, loaded with pandas."""

from __future__ import annotations

import json

import pandas as pd

from lop_ray.cli import main


def _trial(root, trial_id, algorithm, seed, varying, errors):
    directory = root / f"{algorithm}_{seed}_{trial_id}"
    directory.mkdir(parents=True)
    trial = {
        "sweep": "s",
        "problem": "slowly_changing_regression",
        "algorithm": algorithm,
        "label": algorithm,
        "varying": varying,
        "fidelity": "original",
        "seed": seed,
    }
    (directory / "params.json").write_text(json.dumps({"trial": trial}))
    rows = [
        {"trial_id": trial_id, "step_index": i, "examples": 10_000 * (i + 1), "squared_error": e}
        for i, e in enumerate(errors)
    ]
    (directory / "result.json").write_text("\n".join(json.dumps(r) for r in rows))


def test_export_writes_binned_long_format_that_pandas_reads(tmp_path):
    results = tmp_path / "results"
    _trial(results, "t0", "bp", 0, {"step_size": 0.01}, [1.0, 2.0, 3.0, 4.0])
    _trial(results, "t1", "bp", 1, {"step_size": 0.003}, [0.5, 0.5, 0.25, 0.75, 9.0])  # 5th: partial bin
    _trial(results, "t2", "cbp", 0, {"step_size": 0.01, "replacement_rate": 1e-4}, [1.0, 1.0])

    assert (
        main(["report", str(results), "--export", str(tmp_path / "out"), "--out", str(tmp_path / "fig")]) == 0
    )

    curves = pd.read_csv(tmp_path / "out" / "curves.csv")
    assert list(curves.columns) == [
        "sweep", "trial_id", "problem", "algorithm", "label", "replacement_rate", "step_size",
        "fidelity", "seed", "metric", "bin", "x", "value",
    ]  # fmt: skip
    assert len(curves) == 2 + 2 + 1  # complete 20,000-example bins only
    bp0 = curves[(curves.trial_id == "t0")].sort_values("bin")
    assert list(bp0.value) == [1.5, 3.5] and list(bp0.x) == [20_000, 40_000]
    assert set(bp0.step_size) == {0.01} and bp0.replacement_rate.isna().all()
    bp1 = curves[curves.trial_id == "t1"]
    assert list(bp1.value) == [0.5, 0.5] and set(bp1.seed) == {1}
    cbp = curves[curves.algorithm == "cbp"].iloc[0]
    assert cbp.replacement_rate == 1e-4 and cbp.value == 1.0 and cbp.fidelity == "original"
    assert (curves.metric == "squared_error").all() and (curves.sweep == "s").all()
    assert (tmp_path / "fig" / "squared_error.png").exists() and (
        tmp_path / "fig" / "squared_error.svg"
    ).exists()


def test_report_on_a_directory_without_trials_is_rejected(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a sweep's results directory" in capsys.readouterr().err
