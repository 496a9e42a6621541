"""`lop-ray mlflow-server`: a real MLflow server, started as a cluster's head would start it, logged
to over HTTP, checked to listen on loopback only, and stopped."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
import psutil
import pytest
from mlflow.tracking import MlflowClient

from lop_ray.mlflow_server import redact, server_command

LOP_RAY = str(Path(sys.executable).with_name("lop-ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(tmp_path: Path, *args: str, port: int | None = None) -> tuple[subprocess.Popen, int]:
    port = port or _free_port()
    log = open(tmp_path / "server.log", "a")
    server = subprocess.Popen(
        [LOP_RAY, "mlflow-server", "--port", str(port), "--workers", "1", *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the test stops the server and its workers
    )
    deadline = time.monotonic() + 240  # ~10 s on a quiet machine; minutes on a loaded 2-core one
    while time.monotonic() < deadline:
        assert server.poll() is None, (tmp_path / "server.log").read_text()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return server, port
        except OSError:
            time.sleep(0.3)
    _stop(server)
    raise AssertionError("no answer within 240 s:\n" + (tmp_path / "server.log").read_text())


def _stop(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    try:  # uvicorn's workers leave with their parent; make sure
        os.killpg(server.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _listening(port: int) -> set[str]:
    return {
        c.laddr.ip
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }


def _log_a_run(port: int, artifact: Path) -> tuple[MlflowClient, str]:
    client = MlflowClient(f"http://127.0.0.1:{port}")
    experiment = client.create_experiment("served")
    run = client.create_run(experiment, run_name="trial")
    client.log_metric(run.info.run_id, "accuracy", 0.5, step=3)
    artifact.write_text("figure")
    client.log_artifact(run.info.run_id, str(artifact))
    return client, run.info.run_id


def test_server_answers_on_loopback_only_keeps_runs_in_sqlite_and_artifacts_in_s3(tmp_path, s3_bucket):
    """The cluster's setup: the default sqlite store on the head, artifacts proxied to S3."""
    server, port = _start(
        tmp_path, "--dir", str(tmp_path / "store"), "--artifact-root", f"{s3_bucket}/mlflow"
    )
    try:
        assert _listening(port) == {"127.0.0.1"}
        client, run_id = _log_a_run(port, tmp_path / "curve.txt")
        assert [m.step for m in client.get_metric_history(run_id, "accuracy")] == [3]
        assert [a.path for a in client.list_artifacts(run_id)] == ["curve.txt"]
    finally:
        _stop(server)
    assert not _listening(port)
    # the run is in the sqlite file under --dir, the artifact in the bucket: both outlive the server
    stored = MlflowClient(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    assert stored.get_run(run_id).data.metrics == {"accuracy": 0.5}
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="lop-data")["Contents"]]
    assert len(keys) == 1 and keys[0].startswith("mlflow/") and keys[0].endswith("/curve.txt"), keys
    s3 = boto3.client("s3").get_object(Bucket="lop-data", Key=keys[0])["Body"].read()
    assert s3 == b"figure"
    assert f"tracking_uri: http://127.0.0.1:{port}" in (tmp_path / "server.log").read_text()


@pytest.mark.slow
def test_server_with_a_given_backend_and_local_artifacts(tmp_path):
    backend = f"sqlite:///{tmp_path / 'runs.db'}"
    server, port = _start(tmp_path, "--backend-store-uri", backend, "--artifact-root", str(tmp_path / "art"))
    try:
        assert _listening(port) == {"127.0.0.1"}
        client, run_id = _log_a_run(port, tmp_path / "curve.txt")
        assert [a.path for a in client.list_artifacts(run_id)] == ["curve.txt"]
    finally:
        _stop(server)
    assert MlflowClient(backend).get_run(run_id).data.metrics == {"accuracy": 0.5}
    assert [p.read_text() for p in (tmp_path / "art").rglob("curve.txt")] == ["figure"]


def test_command_binds_what_it_is_told_and_hides_database_passwords():
    command = server_command("sqlite:///x.db", "s3://b/p", host="10.0.0.5", port=5001, workers=2)
    assert command[command.index("--host") + 1] == "10.0.0.5"
    assert command[command.index("--artifacts-destination") + 1] == "s3://b/p"
    assert "--serve-artifacts" in command
    assert redact("postgresql://lop:hunter2@db:5432/mlflow") == "postgresql://lop:***@db:5432/mlflow"
    assert redact("postgresql://lop@db/mlflow") == "postgresql://lop@db/mlflow"
