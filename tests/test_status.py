"""`lop-ray status` on results read without Ray. The states Tune records (errored, partly run,
then finished after a resume) are checked on real sweeps in tests/test_faults.py."""

from __future__ import annotations

import pyarrow.fs

from lop_ray.cli import main
from lop_ray.status import _error_summary, sweep_status
from lop_ray.sweep_record import SWEEP_FILE
from tests.conftest import TINY_REGRESSION, logged_sweep


def _sweep(tmp_path, steps_of):
    text = TINY_REGRESSION.format(name="st", num_tasks=3, storage=tmp_path)
    return logged_sweep(tmp_path / "st", text, steps_of)


def test_progress_and_run_links_come_from_mlflow(tmp_path, capsys, s3_bucket):
    # 4 trials × 6 steps: one finished, one 3 steps in, two never started
    logged = {0: 6, 1: 3}
    results = _sweep(
        tmp_path,
        lambda t: [{"squared_error": 1.0}] * logged[t["trial_index"]] if t["trial_index"] in logged else None,
    )

    statuses, tracking = sweep_status(str(results))

    assert [s.name for s in statuses] == ["bp seed=0", "bp seed=1", "cbp seed=0", "cbp seed=1"]
    assert [s.state for s in statuses] == ["FINISHED", "UNKNOWN", "NOT STARTED", "NOT STARTED"]
    assert [s.steps_done for s in statuses] == [6, 3, 0, 0]
    assert [s.tasks_done for s in statuses] == [3, 1, 0, 0]
    assert [len(s.run_links) for s in statuses] == [1, 1, 0, 0]
    assert (
        statuses[0]
        .run_links[0]
        .startswith(f"http://127.0.0.1:5000/#/experiments/{tracking['experiment_id']}/runs/")
    )
    assert all(s.checkpoint is None and not s.errors for s in statuses)

    assert main(["status", str(results)]) == 0
    out = capsys.readouterr().out
    assert "cbp seed=1" in out and "NOT STARTED" in out and "3/3" in out
    assert "mlflow ui --backend-store-uri sqlite:" in out

    # the same results read from S3 (moto's server; the endpoint from AWS_ENDPOINT_URL)
    import boto3

    boto3.client("s3").upload_file(str(results / SWEEP_FILE), "lop-data", f"sweeps/st/{SWEEP_FILE}")
    from_s3, _ = sweep_status(f"{s3_bucket}/sweeps/st")
    assert from_s3 == statuses


def test_status_of_a_directory_without_a_sweep_is_rejected(tmp_path, capsys):
    assert main(["status", str(tmp_path)]) == 2
    assert "not a lop-ray sweep's results directory" in capsys.readouterr().err


def test_each_tune_failure_is_summed_up_by_its_header_and_its_exception(tmp_path):
    (tmp_path / "error.txt").write_text(
        "Failure # 1 (occurred at 2026-01-01_00-00-00)\n"
        "\x1b[36mray::RegressionTrainable.train()\x1b[39m\n"
        'Traceback (most recent call last):\n  File "x.py", line 1, in f\n'
        "ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task.\n\n"
        "Failure # 2 (occurred at 2026-01-01_00-01-00)\nRuntimeError: out of memory\n"
    )
    summary = _error_summary(pyarrow.fs.LocalFileSystem(), str(tmp_path / "error.txt"))
    assert summary == [
        "Failure # 1 (occurred at 2026-01-01_00-00-00)",
        "ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task.",
        "Failure # 2 (occurred at 2026-01-01_00-01-00)",
        "RuntimeError: out of memory",
    ]
    assert _error_summary(pyarrow.fs.LocalFileSystem(), str(tmp_path / "none.txt")) == []
