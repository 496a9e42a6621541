"""Shared fixtures: isolated Ray temp dirs, quiet MLflow, and small sweep files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture
def ray_tmp(monkeypatch):
    """A short, private Ray temp dir (unix socket paths must stay under ~100 characters)."""
    path = tempfile.mkdtemp(prefix="lopray-", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", path)
    yield Path(path)


@pytest.fixture
def local_ray(ray_tmp):
    """A real local Ray with 2 CPUs, shut down after the test."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(ray_tmp))
    yield
    ray.shutdown()


def write_sweep(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# a regression problem small enough for a sweep test: 2 steps of 150 examples per 300-example task
TINY_REGRESSION_HEAD = """\
name: {name}
problem:
  name: slowly_changing_regression
  flip_after: 300
  examples_per_step: 150
network:
  activation: relu
"""
TINY_REGRESSION = (
    TINY_REGRESSION_HEAD
    + """\
seeds: [0, 1]
num_tasks: {num_tasks}
algorithms:
  - algorithm: bp
    step_size: 0.01
  - algorithm: cbp
    optimizer: adam
    step_size: 0.001
    replacement_rate: 0.01
    maturity_threshold: 20
resources: {{cpu: 1}}
storage: {storage}
"""
)


def logged_sweep(results_dir: Path, sweep_text: str, rows_of) -> Path:
    """A results directory as a sweep leaves it for `report`: the sweep record and real MLflow runs
    (embedded sqlite store) whose steps are `rows_of(trial)` (None: the trial never logged)."""
    from mlflow.tracking import MlflowClient

    from lop_ray.schema import load_sweep
    from lop_ray.sweep_record import write_sweep_record
    from lop_ray.tracking import TrialTracker, embedded_tracking_uri, ensure_experiment, start_sweep_run

    results_dir.mkdir(parents=True, exist_ok=True)
    sweep = load_sweep(write_sweep(results_dir / "sweep.yaml", sweep_text))
    uri = embedded_tracking_uri(results_dir)
    client = MlflowClient(uri)
    experiment_id = ensure_experiment(client, sweep.name, (results_dir / "mlartifacts").as_uri())
    parent = start_sweep_run(client, experiment_id, sweep.name, sweep.problem, {})
    tracking = {"uri": uri, "experiment_id": experiment_id, "parent_run_id": parent}
    write_sweep_record(results_dir, sweep, tracking)
    for trial in sweep.trials:
        rows = rows_of(trial)
        if rows is None:
            continue
        tracker = TrialTracker(tracking, trial, None)
        for index, row in enumerate(rows):
            tracker.log_step(index, row)
    return results_dir


@pytest.fixture
def one_torch_thread():
    """One torch thread, as a trial on one CPU runs: the kernels of these tests are small, and on a
    shared 2-core machine a second thread spin-waits more than it computes."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def s3_bucket(monkeypatch):
    """A real S3 endpoint (moto's server, 127.0.0.1 only) with an empty bucket; its URI prefix."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="lop-data")
    yield "s3://lop-data"
    # moto keeps its buckets in the process, not in the server: empty it so the next test's is empty
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="lop-data"):
        for item in page.get("Contents", []):
            s3.delete_object(Bucket="lop-data", Key=item["Key"])
    s3.delete_bucket(Bucket="lop-data")
    server.stop()
