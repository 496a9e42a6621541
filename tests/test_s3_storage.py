"""`storage: s3://…`: Tune's state and checkpoints and the sweep record as objects in a bucket of a
real S3 endpoint (moto's server on 127.0.0.1, reached through AWS_ENDPOINT_URL as boto3 and pyarrow
read it), a driver killed mid-sweep resumed from the URI, and `status`/`report` reading it back."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import boto3
import pytest

from lop_ray import storage
from lop_ray.cli import main
from lop_ray.schema import load_sweep
from lop_ray.status import sweep_status
from lop_ray.sweep_record import SWEEP_FILE, read_sweep_record
from lop_ray.tracking import embedded_tracking_uri
from tests.conftest import TINY_REGRESSION, write_sweep
from tests.test_resume import LOP_RAY, _kill_session
from tests.test_sweep_ray import assert_runs_match_reference

BUCKET = "lop-data"


class TcpForwarder:
    """127.0.0.1:port → upstream, byte for byte. `stop()` closes the listener and every connection,
    so clients get "connection refused" until `start()` listens on the same port again: an endpoint
    that is down, while the server behind it (moto, which keeps its buckets in memory) lives on."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = 0
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            try:  # wakes the thread blocked in accept(); close() alone leaves the port listening
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        with self._lock:
            for sock in self._open:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by stop()
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            with self._lock:
                self._open.discard(source)
                self._open.discard(sink)
            source.close()


def s3_keys(prefix: str) -> list[str]:
    s3 = boto3.client("s3")
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys += [item["Key"] for item in page.get("Contents", [])]
    return keys


def s3_checkpoint_steps(prefix: str) -> dict[str, int]:
    """Trial directory → the most steps any of its checkpoints' manifests in the bucket records."""
    s3 = boto3.client("s3")
    steps: dict[str, int] = {}
    for key in s3_keys(prefix):
        if key.endswith("/manifest.json") and "/checkpoint_" in key:
            trial = key.split("/checkpoint_")[0]
            try:
                body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            except s3.exceptions.NoSuchKey:
                continue  # deleted by Tune (num_to_keep) since it was listed
            steps[trial] = max(steps.get(trial, 0), json.loads(body)["steps_done"])
    return steps


def test_locations_resolve_to_a_filesystem_and_bad_ones_name_the_key(tmp_path, s3_bucket):
    fs, path = storage.filesystem(f"{s3_bucket}/a/b/")
    assert path == f"{BUCKET}/a/b" and fs.type_name == "s3"
    options = fs.__reduce__()[1][0]  # what a trial actor's copy of it is rebuilt from
    assert options["endpoint_override"] == os.environ["AWS_ENDPOINT_URL"].removeprefix("http://")
    assert options["scheme"] == "http" and options["access_key"] is None  # no key pickled
    storage.write_text(f"{s3_bucket}/a/b", "x.json", "{}")
    assert boto3.client("s3").get_object(Bucket=BUCKET, Key="a/b/x.json")["Body"].read() == b"{}"
    assert storage.read_text(f"{s3_bucket}/a/b", "x.json") == "{}"
    assert storage.read_text(f"{s3_bucket}/a/b", "none.json") is None
    assert storage.filesystem(tmp_path)[1] == str(tmp_path.resolve())
    assert storage.driver_dir(tmp_path / "r") == (tmp_path / "r").resolve()

    storage.check_location(f"{s3_bucket}/sweeps")  # exists: no error
    with pytest.raises(storage.StorageError, match=r"storage: .*no bucket 'no-such-bucket' at http://127"):
        storage.check_location("s3://no-such-bucket/sweeps")
    for bad in ("s3://", "s3://Bad_Bucket/x", "s3://lop-data/a//b"):
        with pytest.raises(storage.StorageError, match="storage: "):
            storage.check_location(bad)
    with pytest.raises(storage.StorageError, match="only local directories and s3://"):
        storage.normalize("gs://bucket/x")


@pytest.mark.parametrize(
    ("uri", "said"),
    [
        ("s3://no-such-bucket/sweeps", "no bucket 'no-such-bucket'"),
        ("s3://Not_A_Bucket/sweeps", "is not an S3 bucket name"),
    ],
)
def test_a_sweep_on_a_bad_s3_location_is_refused_before_ray_starts(tmp_path, s3_bucket, capsys, uri, said):
    import ray

    path = write_sweep(tmp_path / "s.yaml", TINY_REGRESSION.format(name="s", num_tasks=1, storage=uri))
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: storage: {uri}" in err and said in err, err
    assert not ray.is_initialized()
    assert s3_keys("") == []  # nothing written


def test_resume_status_and_report_of_a_uri_without_a_sweep_are_refused(s3_bucket, capsys):
    for command in ("resume", "status", "report"):
        assert main([command, f"{s3_bucket}/sweeps/none"]) == 2
        assert "no lop_ray_sweep.json here" in capsys.readouterr().err


ONE_SEED = TINY_REGRESSION.replace("seeds: [0, 1]", "seeds: [0]")


def start_s3_sweep(tmp_path: Path, name: str, num_tasks: int, env: dict, extra: str = ""):
    """`lop-ray sweep` of 2 trials (bp, cbp) on `s3://lop-data/sweeps`, in its own process session;
    MLflow's store goes beside the driver, under LOP_RAY_HOME=tmp_path/home."""
    text = ONE_SEED.format(name=name, num_tasks=num_tasks, storage=f"s3://{BUCKET}/sweeps") + extra
    path = write_sweep(tmp_path / f"{name}.yaml", text)
    log = tmp_path / f"{name}.log"
    driver = subprocess.Popen(
        [LOP_RAY, "sweep", str(path), "--quiet"],
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "LOP_RAY_HOME": str(tmp_path / "home"), **env},
        start_new_session=True,
    )
    return load_sweep(path), driver, log


def wait_for_s3_checkpoints(name: str, driver: subprocess.Popen, log: Path, steps: int) -> dict[str, int]:
    """Until both trials have a checkpoint of at least `steps` steps in the bucket, and Tune's state."""
    deadline = time.monotonic() + 300
    while True:
        found = s3_checkpoint_steps(f"sweeps/{name}/")
        if len(found) >= 2 and min(found.values()) >= steps:
            if any("experiment_state-" in k for k in s3_keys(f"sweeps/{name}/")):
                return found
        assert time.monotonic() < deadline and driver.poll() is None, log.read_text()
        time.sleep(0.2)


def test_a_sweep_on_s3_runs_end_to_end_and_status_and_report_read_it(
    tmp_path, monkeypatch, s3_bucket, local_ray, capsys
):
    """Tune's state, every trial's checkpoints and the sweep record are objects in the bucket (read
    back with boto3); MLflow holds one run per trial, equal to the plain loop; the figure is an
    artifact on S3; `lop-ray status` and `lop-ray report` read the sweep from its URI."""
    from lop_ray.sweep import run_sweep

    monkeypatch.setenv("LOP_RAY_HOME", str(tmp_path / "home"))  # s3_bucket set the endpoint before Ray
    path = write_sweep(
        tmp_path / "e2e.yaml", ONE_SEED.format(name="e2e", num_tasks=1, storage=f"{s3_bucket}/sweeps")
    )
    sweep = load_sweep(path)
    outcome = run_sweep(sweep, quiet=True)

    uri = f"{s3_bucket}/sweeps/e2e"
    assert outcome.errors == 0 and outcome.results_dir == uri
    store = tmp_path / "home" / "sweeps" / BUCKET / "sweeps" / "e2e"
    assert outcome.tracking_uri == embedded_tracking_uri(store)
    assert_runs_match_reference(outcome.tracking_uri, sweep)
    s3 = boto3.client("s3")
    record = json.loads(s3.get_object(Bucket=BUCKET, Key=f"sweeps/e2e/{SWEEP_FILE}")["Body"].read())
    assert record["tracking"]["parent_run_id"] == outcome.parent_run_id
    keys = s3_keys("sweeps/e2e/")
    assert any(k.startswith("sweeps/e2e/experiment_state-") for k in keys), keys
    assert any(k.endswith("/squared_error.png") and "/mlartifacts/" in k for k in keys), keys
    steps = s3_checkpoint_steps("sweeps/e2e/")
    assert sorted(steps.values()) == [sweep.steps_per_trial] * 2
    for trial in steps:
        state = [k for k in keys if k.startswith(f"{trial}/checkpoint_") and k.endswith("/state.pt")]
        assert state and s3.head_object(Bucket=BUCKET, Key=state[-1])["ContentLength"] > 0
    assert not (tmp_path / "sweeps").exists() and not Path("s3:").exists()  # nothing mistaken for a path

    statuses, _ = sweep_status(uri)
    assert [(s.state, s.checkpoint_steps) for s in statuses] == [("FINISHED", sweep.steps_per_trial)] * 2
    capsys.readouterr()
    assert main(["status", uri]) == 0
    assert "FINISHED" in capsys.readouterr().out
    out = tmp_path / "figures"
    assert main(["report", uri, "--out", str(out)]) == 0
    assert (out / "squared_error.png").exists()
    assert main(["report", uri]) == 0  # without --out: beside the sweep's local MLflow store
    assert (store / "squared_error.png").exists() and not Path("s3:").exists()


@pytest.mark.slow
def test_a_sweep_on_s3_killed_mid_run_resumes_from_its_uri(tmp_path, ray_tmp, s3_bucket, monkeypatch):
    """The driver (and its Ray) SIGKILLed once checkpoints are in the bucket; `lop-ray resume
    s3://…` completes every trial bit-identically, one MLflow run per trial; Tune's state, the
    checkpoints and the sweep record are objects in the bucket; `status` and `report` read them."""
    uri = f"{s3_bucket}/sweeps/s3kill"
    env = {"TUNE_GLOBAL_CHECKPOINT_S": "1"}
    sweep, driver, log = start_s3_sweep(tmp_path, "s3kill", num_tasks=5, env=env)
    try:
        wait_for_s3_checkpoints("s3kill", driver, log, steps=2)
    finally:
        _kill_session(driver.pid)
        driver.wait()
    assert min(s3_checkpoint_steps("sweeps/s3kill/").values()) < sweep.steps_per_trial, "ran to the end"
    record = json.loads(
        boto3.client("s3").get_object(Bucket=BUCKET, Key=f"sweeps/s3kill/{SWEEP_FILE}")["Body"].read()
    )
    store = tmp_path / "home" / "sweeps" / BUCKET / "sweeps" / "s3kill"
    assert record["tracking"]["uri"] == embedded_tracking_uri(store)  # MLflow beside the driver

    monkeypatch.setenv("LOP_RAY_HOME", str(tmp_path / "home"))
    started = time.monotonic()
    resumed = subprocess.run(
        [LOP_RAY, "resume", uri, "--quiet"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=400,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    print(f"\nresume from {uri}: {time.monotonic() - started:.1f} s")

    assert_runs_match_reference(record["tracking"]["uri"], sweep)
    assert read_sweep_record(uri).sweep.trials == sweep.trials
    keys = s3_keys("sweeps/s3kill/")
    assert any(k.endswith(".png") and "/mlartifacts/" in k for k in keys), keys  # the figure, on S3
    finished = s3_checkpoint_steps("sweeps/s3kill/")
    assert sorted(finished.values()) == [sweep.steps_per_trial] * len(sweep.trials)
    for trial in finished:
        assert any(k.startswith(f"{trial}/checkpoint_") and k.endswith("/state.pt") for k in keys)

    statuses, _ = sweep_status(uri)
    assert [s.state for s in statuses] == ["FINISHED"] * len(sweep.trials)
    assert all(s.checkpoint_steps == sweep.steps_per_trial for s in statuses)
    out = tmp_path / "figures"
    assert main(["report", uri, "--out", str(out)]) == 0
    assert (out / "squared_error.png").exists()


def test_an_s3_sweep_is_not_resumed_where_its_mlflow_store_is_missing(tmp_path, s3_bucket, capsys):
    """Its default store is beside the driver that started it: elsewhere a new empty one would give
    every trial a second run."""
    from lop_ray.sweep_record import write_sweep_record

    path = write_sweep(tmp_path / "s.yaml", TINY_REGRESSION.format(name="s", num_tasks=1, storage=s3_bucket))
    gone = tmp_path / "elsewhere" / "mlflow.db"
    write_sweep_record(f"{s3_bucket}/s", load_sweep(path), {"uri": f"sqlite:///{gone}"})
    assert main(["resume", f"{s3_bucket}/s"]) == 2
    err = capsys.readouterr().err
    assert f"its MLflow store {gone} is not on this machine" in err, err
    assert main(["status", f"{s3_bucket}/s"]) == 2
    err = capsys.readouterr().err
    assert f"{gone}: the sweep's MLflow store is not on this machine" in err, err
    assert not gone.parent.exists()


def test_checkpoint_completeness_is_read_from_s3_as_from_a_directory(s3_bucket):
    """The reconciliation (lop_ray/trial_checkpoints.py) lists and checks checkpoints through Tune's
    storage filesystem; on S3 a `checkpoint_*` prefix is a directory and a short `state.pt` is seen."""
    from lop_ray.trial_checkpoints import stored_checkpoints

    fs, trial = storage.filesystem(f"{s3_bucket}/sweeps/x/trial_0")
    for index, (size, said) in enumerate([(64, 64), (64, 64), (32, 64)]):
        storage.write_text(f"{s3_bucket}/sweeps/x/trial_0/checkpoint_{index:06d}", "state.pt", "s" * size)
        manifest = json.dumps({"state_bytes": said, "steps_done": 2 * (index + 1)})
        storage.write_text(f"{s3_bucket}/sweeps/x/trial_0/checkpoint_{index:06d}", "manifest.json", manifest)
    storage.write_text(f"{s3_bucket}/sweeps/x/trial_0", "result.json", "")

    found = stored_checkpoints(fs, trial)
    assert [(c.index, c.path, c.steps_done) for c in found] == [
        (0, f"{trial}/checkpoint_000000", 2),
        (1, f"{trial}/checkpoint_000001", 4),
        (2, f"{trial}/checkpoint_000002", None),  # truncated: never restored
    ]
    assert stored_checkpoints(fs, f"{BUCKET}/sweeps/x/not_started") == []


@pytest.mark.slow
def test_a_driver_local_mlflow_store_is_refused_on_a_multi_node_ray(
    tmp_path, ray_tmp, s3_bucket, monkeypatch
):
    """Two raylets on this machine (Ray's own test cluster): the trials of the second node could not
    log to a sqlite store on the driver's disk, so an S3 sweep without tracking_uri is refused there,
    before anything is written."""
    import ray
    from ray.cluster_utils import Cluster

    from lop_ray.schema import SweepError
    from lop_ray.sweep import run_sweep

    monkeypatch.setenv("LOP_RAY_HOME", str(tmp_path / "home"))
    cluster = Cluster(initialize_head=True, connect=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        path = write_sweep(
            tmp_path / "mn.yaml", ONE_SEED.format(name="mn", num_tasks=1, storage=f"{s3_bucket}/sweeps")
        )
        with pytest.raises(SweepError) as refused:
            run_sweep(load_sweep(path), quiet=True)
        message = "\n".join(refused.value.problems)
        assert "tracking_uri: storage s3://lop-data/sweeps on a 2-node Ray cluster" in message, message
        assert "lop-ray mlflow-server" in message
        assert s3_keys("") == [] and not (tmp_path / "home").exists()  # nothing written
    finally:
        ray.shutdown()
        cluster.shutdown()
