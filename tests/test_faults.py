"""Fault injection with real processes and signals: a trial's worker SIGKILLed mid-task, and a
truncated newest checkpoint after a killed driver. Each case ends with every trial complete, its
per-step metrics bit-identical to an undisturbed run (the plain loop, which an undisturbed sweep
equals: tests/test_sweep_ray.py), and exactly one MLflow run per trial holding every step once.

Measured recovery times go to stderr (`pytest -s`) and into the notes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from lop_ray.schema import load_sweep
from lop_ray.status import sweep_status
from lop_ray.tracking import embedded_tracking_uri
from lop_ray.trial_checkpoints import CHECKPOINT_FILE
from tests.conftest import TINY_REGRESSION_HEAD, write_sweep
from tests.test_resume import LOP_RAY, _kill_session, _session_processes
from tests.test_sweep_ray import assert_runs_match_reference

pytestmark = pytest.mark.slow

FAULT_SWEEP = (
    TINY_REGRESSION_HEAD
    + """\
seeds: [0]
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
max_failures: {max_failures}
storage: {storage}
"""
)


def _start_sweep(
    tmp_path: Path,
    name: str,
    num_tasks: int,
    max_failures: int,
    env: dict | None = None,
    tracking_uri: str | None = None,
):
    storage = tmp_path / "results"
    text = FAULT_SWEEP.format(name=name, num_tasks=num_tasks, max_failures=max_failures, storage=storage)
    if tracking_uri:
        text += f"tracking_uri: {tracking_uri}\n"
    path = write_sweep(tmp_path / f"{name}.yaml", text)
    log = open(tmp_path / f"{name}.log", "w")
    driver = subprocess.Popen(
        [LOP_RAY, "sweep", str(path), "--quiet"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    return load_sweep(path), storage / name, driver


def _wait_for_checkpoint(
    results: Path, driver: subprocess.Popen, log: Path, steps: int, trials: int = 1
) -> None:
    """Until `trials` trials have a complete checkpoint of at least `steps` steps."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        done = {
            m.parent.parent.name
            for m in results.glob("*/checkpoint_*/manifest.json")
            if json.loads(m.read_text())["steps_done"] >= steps
        }
        if len(done) >= trials:
            return
        assert driver.poll() is None, log.read_text()
        time.sleep(0.1)
    raise AssertionError(f"no checkpoint of {steps} steps within 300 s:\n{log.read_text()}")


def _trial_workers(session_id: int) -> list[psutil.Process]:
    """The Ray worker processes holding a trial's actor: titled `ray::<Trainable class>` between
    calls and `ray::<Trainable class>.<method>` inside one (a fast trial is mostly between calls)."""
    workers = []
    for pid in _session_processes(session_id):
        try:
            title = " ".join(psutil.Process(pid).cmdline())
        except psutil.Error:
            continue
        if re.match(r"ray::\w*Trainable\b", title):  # e.g. ray::ResourceTrainable.train
            workers.append(psutil.Process(pid))
    return workers


def _reported(results: Path) -> dict[Path, tuple[int, int]]:
    """Each trial directory → (pid of the actor that reported last, steps reported): the last row of
    its result.json, which the driver appends as each step's result arrives."""
    reported = {}
    for path in results.glob("*/result.json"):
        lines = path.read_text().splitlines()
        try:
            row = json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError):  # none yet, or a row being written
            continue
        reported[path.parent] = (row["pid"], row["training_iteration"])
    return reported


def _a_trial_to_kill(results: Path, workers: list[psutil.Process], steps_per_trial: int):
    """Of the trials whose actor is one of `workers` and which have a checkpoint, the one furthest
    from its end, if it has at least 4 steps to go (so the kill lands mid-run however fast trials
    step), else None."""
    alive = {w.pid: w for w in workers}
    candidates = sorted(
        (steps, pid)
        for trial, (pid, steps) in _reported(results).items()
        if pid in alive and steps <= steps_per_trial - 4 and any(trial.glob("checkpoint_*/manifest.json"))
    )
    return alive[candidates[0][1]] if candidates else None


def _kill_a_trial_worker(driver: subprocess.Popen, results: Path, log: Path, steps_per_trial: int) -> float:
    """SIGKILL a trial's worker once both trials have checkpointed and still step; the kill time."""
    _wait_for_checkpoint(results, driver, log, steps=2, trials=2)
    deadline = time.monotonic() + 60
    while not (victim := _a_trial_to_kill(results, _trial_workers(driver.pid), steps_per_trial)):
        assert time.monotonic() < deadline and driver.poll() is None, log.read_text()
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    return time.monotonic()


def _wait(driver: subprocess.Popen, log: Path, timeout: float = 600) -> int:
    try:
        return driver.wait(timeout=timeout)
    finally:
        if driver.poll() is None or _session_processes(driver.pid):
            _kill_session(driver.pid)
            driver.wait()
            print(log.read_text(), file=sys.stderr)


def test_a_trial_worker_killed_mid_task_is_retried_from_its_checkpoint(tmp_path, ray_tmp):
    """(a) Tune's FailureConfig(max_failures=3) restarts the trial from its last checkpoint."""
    sweep, results, driver = _start_sweep(tmp_path, "workerkill", num_tasks=8, max_failures=3)
    log = tmp_path / "workerkill.log"
    started = time.monotonic()
    killed_at = _kill_a_trial_worker(driver, results, log, sweep.steps_per_trial)
    assert _wait(driver, log) == 0, log.read_text()
    finished = time.monotonic()

    assert_runs_match_reference(embedded_tracking_uri(results), sweep)
    statuses, _ = sweep_status(str(results))
    assert [s.state for s in statuses] == ["FINISHED"] * len(sweep.trials)
    assert sum(s.failures for s in statuses) == 1  # the kill was seen, and retried
    print(
        f"\n(a) worker SIGKILL: kill after {killed_at - started:.1f} s, sweep complete "
        f"{finished - killed_at:.1f} s later",
        file=sys.stderr,
    )


def test_status_of_an_errored_sweep_and_its_resume(tmp_path, ray_tmp, capsys):
    """With max_failures: 0 the killed trial errors: `lop-ray status` shows it partly run, with its
    checkpoint and error; `lop-ray resume` completes it from that checkpoint."""
    sweep, results, driver = _start_sweep(tmp_path, "errored", num_tasks=8, max_failures=0)
    log = tmp_path / "errored.log"
    _kill_a_trial_worker(driver, results, log, sweep.steps_per_trial)
    assert _wait(driver, log) == 1, log.read_text()  # the driver reports the failed trial
    assert "1 trial(s) failed" in log.read_text()

    statuses, _ = sweep_status(str(results))
    errored = [s for s in statuses if s.state == "ERROR"]
    assert len(errored) == 1, [(s.name, s.state) for s in statuses]
    bad = errored[0]
    assert 0 < bad.steps_done < sweep.steps_per_trial  # partly run
    assert bad.checkpoint is not None and 2 <= bad.checkpoint_steps <= bad.steps_done
    assert bad.failures == 1 and bad.errors[0].startswith("Failure # 1")
    assert any("actor" in line.lower() or "died" in line.lower() for line in bad.errors[1:]), bad.errors
    assert len(bad.run_links) == 1 and bad.run_links[0].startswith("http://127.0.0.1:5000/#/experiments/")
    others = [s for s in statuses if s is not bad]
    assert [s.state for s in others] == ["FINISHED"] and others[0].tasks_done == 8

    from lop_ray.cli import main

    capsys.readouterr()
    assert main(["status", str(results)]) == 0
    printed = capsys.readouterr().out
    assert "ERROR" in printed and "Failure # 1" in printed and bad.checkpoint.split("/")[0] in printed

    started = time.monotonic()
    resumed = subprocess.run(
        [LOP_RAY, "resume", str(results), "--quiet"], capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    print(f"\nresume of the errored trial: {time.monotonic() - started:.1f} s", file=sys.stderr)
    try:
        assert_runs_match_reference(embedded_tracking_uri(results), sweep)
    except AssertionError as error:  # what the resume printed says which actor did what
        raise AssertionError(f"{error}\nresume printed:\n{resumed.stdout}{resumed.stderr}") from error
    assert [s.state for s in sweep_status(str(results))[0]] == ["FINISHED", "FINISHED"]


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one_and_says_so(tmp_path, ray_tmp):
    """(f) The driver is killed; the newest checkpoint of an unfinished trial is cut short (as a copy
    interrupted by the crash leaves it). The resume warns, continues from the previous complete
    checkpoint, and still ends bit-identical."""
    sweep, results, driver = _start_sweep(
        tmp_path, "truncated", num_tasks=10, max_failures=3, env={"TUNE_GLOBAL_CHECKPOINT_S": "1"}
    )
    log = tmp_path / "truncated.log"
    _wait_for_checkpoint(results, driver, log, steps=4)
    _kill_session(driver.pid)
    driver.wait()

    unfinished = []
    for trial_dir in results.glob("*/params.json"):
        checkpoints = sorted(trial_dir.parent.glob("checkpoint_*/manifest.json"))
        steps = [json.loads(m.read_text())["steps_done"] for m in checkpoints]
        if len(checkpoints) >= 2 and steps[-1] < sweep.steps_per_trial:
            unfinished.append((checkpoints[-1].parent, steps[-2]))
    assert unfinished, "no unfinished trial with two checkpoints: the sweep ran too fast to test"
    newest, previous_steps = unfinished[0]
    state = newest / CHECKPOINT_FILE
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])

    started = time.monotonic()
    resumed = subprocess.run(
        [LOP_RAY, "resume", str(results), "--quiet"], capture_output=True, text=True, timeout=600
    )
    elapsed = time.monotonic() - started
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    said = [line for line in resumed.stderr.splitlines() if f"{newest} is incomplete" in line]
    assert len(said) == 1, resumed.stderr
    assert f"({previous_steps} steps done)" in said[0], said[0]
    assert "state.pt has" in said[0]
    assert_runs_match_reference(embedded_tracking_uri(results), sweep)
    print(f"\n(f) resume past a truncated checkpoint: {elapsed:.1f} s", file=sys.stderr)


def test_a_retry_in_the_same_driver_falls_back_past_a_truncated_newest_checkpoint(tmp_path, ray_tmp):
    """(g) A trial's newest checkpoint is cut short (as an upload interrupted by a storage outage
    leaves it) while Tune's record names it, and then its worker dies. Tune retries the trial in the
    same driver: the retry continues from the previous complete checkpoint instead of failing on the
    truncated one until max_failures is spent, and the sweep still ends bit-identical."""
    sweep, results, driver = _start_sweep(tmp_path, "retrytruncated", num_tasks=10, max_failures=3)
    log = tmp_path / "retrytruncated.log"
    try:
        _wait_for_checkpoint(results, driver, log, steps=2, trials=2)
        deadline = time.monotonic() + 60
        while True:
            workers = _trial_workers(driver.pid)
            victim = _a_trial_to_kill(results, workers, sweep.steps_per_trial)
            trial = next(
                (t for t, (pid, _) in _reported(results).items() if victim and pid == victim.pid), None
            )
            if trial is not None and len(list(trial.glob("checkpoint_*/manifest.json"))) >= 2:
                break
            assert time.monotonic() < deadline and driver.poll() is None, log.read_text()
            time.sleep(0.05)
        victim.send_signal(signal.SIGSTOP)  # no new checkpoint while the newest is cut short
        time.sleep(1.0)  # the driver registers any checkpoint already reported
        newest = sorted(trial.glob("checkpoint_*/manifest.json"))[-1].parent
        state = newest / CHECKPOINT_FILE
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
        victim.send_signal(signal.SIGKILL)
        assert _wait(driver, log) == 0, log.read_text()
    finally:
        if driver.poll() is None or _session_processes(driver.pid):
            _kill_session(driver.pid)
            driver.wait()

    assert f"{newest} is incomplete" in log.read_text() or not newest.exists(), log.read_text()
    assert_runs_match_reference(embedded_tracking_uri(results), sweep)
    statuses, _ = sweep_status(str(results))
    assert [s.state for s in statuses] == ["FINISHED"] * len(sweep.trials)
    assert sum(s.failures for s in statuses) == 1  # one kill, one retry: the truncated state never loaded


def test_mlflow_server_killed_and_restarted_mid_sweep(tmp_path, ray_tmp):
    """(e) The sweep logs to `lop-ray mlflow-server`; the server is SIGKILLed mid-sweep and started
    again on the same store and port. MLflow's client retries with backoff meanwhile, so the sweep
    completes, with every step in the server's store exactly once."""
    from tests.test_mlflow_server import _start, _stop

    store = tmp_path / "store"
    server, port = _start(tmp_path, "--dir", str(store))
    uri = f"http://127.0.0.1:{port}"
    sweep, results, driver = _start_sweep(
        tmp_path, "serverdown", num_tasks=8, max_failures=3, tracking_uri=uri
    )
    log = tmp_path / "serverdown.log"
    try:
        _wait_for_checkpoint(results, driver, log, steps=2)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        down_at = time.monotonic()
        time.sleep(10)
        server, _ = _start(tmp_path, "--dir", str(store), port=port)
        up_at = time.monotonic()
        assert _wait(driver, log) == 0, log.read_text()
        done_at = time.monotonic()
        assert_runs_match_reference(uri, sweep)
    finally:
        _stop(server)
    print(
        f"\n(e) MLflow server down {up_at - down_at:.1f} s (10 s + restart); sweep complete "
        f"{done_at - up_at:.1f} s after it answered again",
        file=sys.stderr,
    )


def _free_ports(count: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _ray_node(ray_tmp: Path, env: dict, log: Path, *args: str) -> subprocess.Popen:
    """One Ray node (`ray start --block`) in its own session, its per-node ports free ones."""
    agent, grpc, metrics, runtime_env = _free_ports(4)
    return subprocess.Popen(
        [
            str(Path(sys.executable).with_name("ray")),
            "start",
            "--block",
            "--num-cpus=1",
            "--node-ip-address=127.0.0.1",
            f"--temp-dir={ray_tmp}",
            f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={grpc}",
            f"--metrics-export-port={metrics}",
            f"--runtime-env-agent-port={runtime_env}",
            "--disable-usage-stats",
            *args,
        ],
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )


def test_a_worker_node_killed_mid_sweep_on_a_token_authenticated_cluster(tmp_path, ray_tmp):
    """(c) A two-node Ray cluster on this machine (head and worker, one CPU each, token auth): the
    worker node and its trial are SIGKILLed mid-sweep; Tune reruns that trial from its checkpoint
    on the head, and a client without the token is refused."""
    import secrets

    token = secrets.token_hex(32)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    (port,) = _free_ports(1)
    address = f"127.0.0.1:{port}"
    head = _ray_node(
        ray_tmp, env, tmp_path / "head.log", "--head", f"--port={port}", "--include-dashboard=false"
    )
    worker = None
    try:
        status = [str(Path(sys.executable).with_name("ray")), "status", f"--address={address}"]
        deadline = time.monotonic() + 240
        while subprocess.run(status, env=env, capture_output=True).returncode != 0:
            assert time.monotonic() < deadline and head.poll() is None, (tmp_path / "head.log").read_text()
            time.sleep(2)
        worker = _ray_node(ray_tmp, env, tmp_path / "worker.log", f"--address={address}")
        while "/2.0 CPU" not in (
            text := subprocess.run(status, env=env, capture_output=True, text=True).stdout
        ):
            assert time.monotonic() < deadline and worker.poll() is None, (
                text + (tmp_path / "worker.log").read_text()
            )
            time.sleep(2)

        refused = subprocess.run(
            [sys.executable, "-c", f"import ray; ray.init(address='{address}')"],
            env={**env, "RAY_AUTH_TOKEN": "not-the-token"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert refused.returncode != 0, refused.stdout + refused.stderr

        sweep, results, driver = _start_sweep(
            tmp_path,
            "nodekill",
            num_tasks=40,  # the worker node's trial still runs when it is seen, however fast the machine
            max_failures=3,
            env={**env, "RAY_ADDRESS": address},
        )
        log = tmp_path / "nodekill.log"
        _wait_for_checkpoint(results, driver, log, steps=2)
        # one trial per node (one CPU each): kill once the worker node's trial has checkpointed too
        deadline = time.monotonic() + 240
        while not _a_trial_to_kill(results, _trial_workers(worker.pid), sweep.steps_per_trial):
            assert time.monotonic() < deadline and driver.poll() is None, "no trial seen on the worker node"
            time.sleep(0.1)
        _kill_session(worker.pid)
        worker.wait()
        killed_at = time.monotonic()
        assert _wait(driver, log) == 0, log.read_text()
        print(
            f"\n(c) worker node SIGKILL: sweep complete {time.monotonic() - killed_at:.1f} s later",
            file=sys.stderr,
        )
        assert_runs_match_reference(embedded_tracking_uri(results), sweep)
        statuses, _ = sweep_status(str(results))
        assert sum(s.failures for s in statuses) == 1
    finally:
        for node in (worker, head):
            if node is not None and _session_processes(node.pid):
                _kill_session(node.pid)
            if node is not None:
                node.wait()


def test_d_s3_endpoint_down_30_s_while_checkpoints_are_written(tmp_path, ray_tmp, s3_bucket):
    """(d) The sweep stores its checkpoints on S3 (moto's server) reached through a TCP forwarder on
    127.0.0.1; the forwarder is stopped for 30 s (connections refused; moto and its bucket live on)
    while the trials checkpoint every step. A checkpoint upload that fails fails its trial, and Tune
    retries it (FailureConfig.max_failures) from its last good checkpoint once S3 answers again."""
    from urllib.parse import urlparse

    import boto3
    from botocore.config import Config
    from botocore.exceptions import EndpointConnectionError

    from lop_ray.sweep_record import read_sweep_record
    from tests.test_s3_storage import (
        TcpForwarder,
        s3_checkpoint_steps,
        start_s3_sweep,
        wait_for_s3_checkpoints,
    )

    moto = urlparse(os.environ["AWS_ENDPOINT_URL"])
    forwarder = TcpForwarder((moto.hostname, moto.port))
    forwarder.start()
    sweep, driver, log = start_s3_sweep(
        tmp_path,
        "s3down",
        num_tasks=20,  # still writing checkpoints when S3 goes down, however fast the machine
        env={"AWS_ENDPOINT_URL": forwarder.url},  # the driver, Ray and the trials reach S3 through it
        extra="max_failures: 20\n",
    )
    uri = f"{s3_bucket}/sweeps/s3down"
    try:
        wait_for_s3_checkpoints("s3down", driver, log, steps=2)
        before = s3_checkpoint_steps("sweeps/s3down/")
        forwarder.stop()
        down_at = time.monotonic()
        through_forwarder = boto3.client(
            "s3", endpoint_url=forwarder.url, config=Config(retries={"max_attempts": 1})
        )
        with pytest.raises(EndpointConnectionError):  # really unreachable
            through_forwarder.list_objects_v2(Bucket="lop-data")
        time.sleep(max(0.0, 30 - (time.monotonic() - down_at)))
        during = s3_checkpoint_steps("sweeps/s3down/")
        forwarder.start()
        up_at = time.monotonic()
        # recovery: every trial's checkpoints in the bucket move past where they stood when it went up
        while True:
            now = s3_checkpoint_steps("sweeps/s3down/")
            if all(now.get(t, 0) > during.get(t, 0) or now.get(t, 0) == sweep.steps_per_trial for t in now):
                break
            assert time.monotonic() - up_at < 300 and driver.poll() is None, log.read_text()
            time.sleep(0.2)
        writing_at = time.monotonic()
        assert _wait(driver, log) == 0, log.read_text()
        done_at = time.monotonic()
    finally:
        forwarder.stop()
        if driver.poll() is None or _session_processes(driver.pid):  # a failed test leaves no sweep
            _kill_session(driver.pid)
            driver.wait()

    tracking_uri = read_sweep_record(uri).tracking["uri"]
    assert_runs_match_reference(tracking_uri, sweep)
    os.environ["LOP_RAY_HOME"] = str(tmp_path / "home")
    try:
        statuses, _ = sweep_status(uri)
    finally:
        del os.environ["LOP_RAY_HOME"]
    assert [s.state for s in statuses] == ["FINISHED"] * len(sweep.trials)
    failures = sum(s.failures for s in statuses)
    assert failures >= 1  # the outage failed a checkpoint upload, which Tune retried
    print(
        f"\n(d) S3 endpoint down {up_at - down_at:.1f} s (checkpoints before {before}, at the end of the "
        f"outage {during}); every trial writing checkpoints again {writing_at - up_at:.1f} s after it "
        f"answered; sweep complete {done_at - up_at:.1f} s after; {failures} trial failure(s) retried",
        file=sys.stderr,
    )
