"""The README's main job, end to end (slow): `lop-ray sweep sweeps/quickstart.yaml` as a user runs it.

It must finish, print the summary table and the MLflow UI command, write the error-over-time figure
and log it to the sweep's MLflow run, and show the paper's effect: plain backprop's binned online
error clearly rises over the run while continual backprop's does not.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from lop_ray import report
from lop_ray.tracking import embedded_tracking_uri

ROOT = Path(__file__).resolve().parents[1]
LOP_RAY = str(Path(sys.executable).with_name("lop-ray"))


def _run_sweep_file(name: str, storage: Path, figure: str) -> tuple[str, Path]:
    """`lop-ray sweep sweeps/<name>.yaml` as a user runs it; its stdout and results directory."""
    run = subprocess.run(
        [LOP_RAY, "sweep", str(ROOT / "sweeps" / f"{name}.yaml"), "--storage", str(storage)],
        capture_output=True,
        text=True,
        timeout=1400,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "last / first" in run.stdout and "mlflow ui --backend-store-uri sqlite:" in run.stdout
    results = storage / name
    assert (results / figure).stat().st_size > 10_000
    return run.stdout, results


def _windows(
    results: Path, metric: str, x: str, bin_x: int, bins: int, seeds: int
) -> dict[str, tuple[tuple[float, float], tuple[float, float]]]:
    """Per algorithm: (mean, SE) over seeds of the first and of the last quarter of the run's bins."""
    curves = {a.line: a for a in report.aggregate(report.load_trial_records(results), metric, x, bin_x)}
    assert set(curves) == {"bp", "l2", "snp", "cbp"}
    assert all(c.seeds == seeds and len(c.x) == bins for c in curves.values())
    return {line: (c.window(0.25, late=False), c.window(0.25, late=True)) for line, c in curves.items()}


def _early_and_late(
    results: Path, metric: str, x: str, bin_x: int, bins: int, seeds: int = 2
) -> dict[str, tuple[float, float]]:
    """Per algorithm: the mean over seeds of the first and of the last quarter of the run's bins."""
    windows = _windows(results, metric, x, bin_x, bins, seeds)
    return {line: (early[0], late[0]) for line, (early, late) in windows.items()}


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_quickstart_shows_bp_losing_plasticity_and_cbp_keeping_it(tmp_path, ray_tmp):
    _, results = _run_sweep_file("quickstart", tmp_path, "squared_error.png")

    spec = report.HEADLINE["slowly_changing_regression"]
    # 20 seeds × 1M examples at the paper's step size, binned per 20,000 examples: 50 bins
    windows = _windows(results, spec["metric"], spec["x"], spec["bin_x"], bins=50, seeds=20)
    ((bp_early, bp_early_se), (bp_late, bp_late_se)) = windows["bp"]
    ((cbp_early, cbp_early_se), (cbp_late, cbp_late_se)) = windows["cbp"]
    # BP's rise and CBP's flat line, clear beyond the seed bands (measured: BP 0.87 → 1.22 ± 0.05,
    # CBP 0.58 → 0.52 ± 0.02)
    assert bp_late - bp_early > 3 * (bp_early_se + bp_late_se), windows["bp"]
    assert bp_late > 1.2 * bp_early, windows["bp"]
    assert cbp_late < cbp_early + 2 * (cbp_early_se + cbp_late_se), windows["cbp"]
    assert cbp_late < 0.6 * bp_late
    client = MlflowClient(embedded_tracking_uri(results))
    experiment = client.get_experiment_by_name("quickstart")
    parent = client.search_runs([experiment.experiment_id], "tags.`lop_ray.kind` = 'sweep'")[0]
    assert "squared_error.png" in [a.path for a in client.list_artifacts(parent.info.run_id)]


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_quickstart_digits_shows_bp_accuracy_falling_and_cbp_holding(tmp_path, ray_tmp):
    """`make quickstart-digits`: permuted MNIST's code path on scikit-learn's real 8×8 digits."""
    stdout, results = _run_sweep_file("quickstart_digits", tmp_path, "accuracy.png")
    assert "online accuracy per task" in stdout

    accuracy = _early_and_late(results, "accuracy", "tasks", 1, bins=40)
    (bp_early, bp_late), (cbp_early, cbp_late) = accuracy["bp"], accuracy["cbp"]
    assert bp_late < bp_early - 0.05, (bp_early, bp_late)
    assert cbp_late > cbp_early - 0.02, (cbp_early, cbp_late)
    assert cbp_late > bp_late + 0.05
    dead = _early_and_late(results, "dead_units_percent", "tasks", 1, bins=40)
    assert dead["bp"][1] > dead["cbp"][1]
