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


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_quickstart_shows_bp_losing_plasticity_and_cbp_keeping_it(tmp_path, ray_tmp):
    run = subprocess.run(
        [LOP_RAY, "sweep", str(ROOT / "sweeps" / "quickstart.yaml"), "--storage", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=1400,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "last / first" in run.stdout and "mlflow ui --backend-store-uri sqlite:" in run.stdout
    results = tmp_path / "quickstart"
    assert (results / "squared_error.png").stat().st_size > 10_000

    records = report.load_trial_records(results)
    spec = report.HEADLINE["slowly_changing_regression"]
    curves = {a.line: a for a in report.aggregate(records, spec["metric"], spec["x"], spec["bin_x"])}
    assert set(curves) == {"bp", "l2", "snp", "cbp"}
    assert all(c.seeds == 2 and len(c.x) == 12 for c in curves.values())

    def early_late(line: str) -> tuple[float, float]:  # mean of the first and last three bins
        return curves[line].window(0.25, late=False)[0], curves[line].window(0.25, late=True)[0]

    bp_early, bp_late = early_late("bp")
    cbp_early, cbp_late = early_late("cbp")
    assert bp_late > 1.5 * bp_early, (bp_early, bp_late)
    assert cbp_late < 1.25 * cbp_early, (cbp_early, cbp_late)  # measured: 1.02 (bp: 1.96)
    assert cbp_late < 0.6 * bp_late

    client = MlflowClient(embedded_tracking_uri(results))
    experiment = client.get_experiment_by_name("quickstart")
    parent = client.search_runs([experiment.experiment_id], "tags.`lop_ray.kind` = 'sweep'")[0]
    assert "squared_error.png" in [a.path for a in client.list_artifacts(parent.info.run_id)]
