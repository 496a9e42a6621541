"""Exact resume: from a trainable checkpoint, and after SIGKILL of a whole running sweep."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from lop_ray.schema import load_sweep
from lop_ray.tracking import embedded_tracking_uri, ensure_experiment, start_sweep_run
from lop_ray.trainables.regression import RegressionTrainable
from tests.conftest import TINY_REGRESSION, write_sweep
from tests.test_sweep_ray import assert_runs_match_reference

LOP_RAY = str(Path(sys.executable).with_name("lop-ray"))
METRICS = ("squared_error", "examples", "weight_magnitude", "replaced_units")


def _trainable_config(tmp_path: Path, trial: dict) -> dict:
    uri = embedded_tracking_uri(tmp_path)
    client = MlflowClient(uri)
    experiment_id = ensure_experiment(client, "resume", (tmp_path / "artifacts").as_uri())
    parent = start_sweep_run(client, experiment_id, "resume", trial["problem"], {})
    return {
        "trials": [trial],
        "tracking": {"uri": uri, "experiment_id": experiment_id, "parent_run_id": parent},
    }


def test_restored_trainable_continues_bit_identically_in_its_own_run(tmp_path):
    path = write_sweep(tmp_path / "s.yaml", TINY_REGRESSION.format(name="s", num_tasks=3, storage=tmp_path))
    trial = next(t for t in load_sweep(path).trials if t["algorithm"] == "cbp")
    config = _trainable_config(tmp_path, trial)

    straight = RegressionTrainable(config)
    expected = [straight.train() for _ in range(6)]
    straight.stop()

    first = RegressionTrainable(config)
    got = [first.train() for _ in range(2)]
    checkpoint = first.save(str(tmp_path / "ckpt"))
    first.train()  # a step past the checkpoint, as when a trial dies after logging, before saving
    first.stop()
    resumed = RegressionTrainable(config)
    resumed.restore(checkpoint)
    got += [resumed.train() for _ in range(4)]
    resumed.stop()

    for key in METRICS:
        assert [r[key] for r in got] == [r[key] for r in expected], key
    client = MlflowClient(config["tracking"]["uri"])
    runs = client.search_runs([config["tracking"]["experiment_id"]], "tags.`lop_ray.kind` = 'trial'")
    resumed_run = next(r for r in runs if r.info.run_id == resumed._run_ids[0])
    history = client.get_metric_history(resumed_run.info.run_id, "squared_error")
    assert sorted(m.step for m in history) == list(range(6))  # each step once, none lost
    assert resumed_run.info.status == "FINISHED"


def _session_processes(session_id: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                zombie = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
                if os.getsid(int(entry)) == session_id and not zombie:
                    pids.append(int(entry))
            except (ProcessLookupError, FileNotFoundError):
                pass
    return pids


def _kill_session(session_id: int) -> None:
    """SIGKILL the driver and every process it started (Ray's GCS, raylet, trial workers)."""
    deadline = time.monotonic() + 30
    while (pids := _session_processes(session_id)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    assert not _session_processes(session_id)


def _kill_sweep_after_checkpoints(tmp_path: Path, state_period_s: str, checkpoints_per_trial: int):
    """Start a sweep in its own session, SIGKILL it and all of Ray once some trial has written
    `checkpoints_per_trial` checkpoints; Tune writes its experiment state every `state_period_s`."""
    storage = tmp_path / "results"
    path = write_sweep(
        tmp_path / "kill.yaml", TINY_REGRESSION.format(name="kill", num_tasks=30, storage=storage)
    )
    sweep = load_sweep(path)
    results = storage / "kill"
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": state_period_s}
    log = open(tmp_path / "sweep.log", "w")
    driver = subprocess.Popen(
        [LOP_RAY, "sweep", str(path), "--quiet"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            newest = max(
                (_checkpoint_index(p) for p in results.glob("*/checkpoint_*/manifest.json")), default=-1
            )
            if newest + 1 >= checkpoints_per_trial and list(results.glob("experiment_state-*.json")):
                break
            assert driver.poll() is None, (tmp_path / "sweep.log").read_text()
            time.sleep(0.1)
        else:
            raise AssertionError("no checkpoints within 240 s:\n" + (tmp_path / "sweep.log").read_text())
    finally:
        _kill_session(driver.pid)
        driver.wait()
    finished = [
        p for p in results.glob("*/result.json") if len(p.read_text().splitlines()) == sweep.steps_per_trial
    ]
    assert len(finished) < len(sweep.trials), "the sweep finished before it could be killed"
    return sweep, results, env


def _checkpoint_index(manifest: Path) -> int:
    return int(manifest.parent.name.removeprefix("checkpoint_"))


def _resume(results: Path, env: dict) -> None:
    resumed = subprocess.run(
        [LOP_RAY, "resume", str(results), "--quiet"], capture_output=True, text=True, env=env, timeout=400
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "results:" in resumed.stdout and "mlflow ui --backend-store-uri sqlite:" in resumed.stdout


def test_sweep_killed_mid_run_resumes_with_nothing_lost(tmp_path, ray_tmp):
    sweep, results, env = _kill_sweep_after_checkpoints(tmp_path, state_period_s="1", checkpoints_per_trial=3)
    _resume(results, env)
    assert_runs_match_reference(embedded_tracking_uri(results), sweep)


def test_resume_adopts_checkpoints_newer_than_tunes_stale_record(tmp_path, ray_tmp):
    """Tune's experiment state written once, at the start: every checkpoint it could name is gone
    (num_to_keep=2) and the ones on disk are unknown to it. The resume must continue each trial
    from its newest complete checkpoint, not from scratch and not fail."""
    sweep, results, env = _kill_sweep_after_checkpoints(
        tmp_path, state_period_s="3600", checkpoints_per_trial=6
    )
    before = {}
    for trial_dir in sorted(p for p in results.iterdir() if (p / "params.json").exists()):
        newest = max((_manifest_steps(m) for m in trial_dir.glob("checkpoint_*/manifest.json")), default=0)
        result_file = trial_dir / "result.json"
        before[trial_dir] = (newest, len(_logged_steps(result_file)) if result_file.exists() else 0)
    assert any(newest >= 4 for newest, _ in before.values())

    _resume(results, env)

    assert_runs_match_reference(embedded_tracking_uri(results), sweep)
    for trial_dir, (newest, rows_before) in before.items():
        resumed_steps = _logged_steps(trial_dir / "result.json")[rows_before:]
        # a trial restored from its final checkpoint replays its last result once
        first_expected = min(newest, sweep.steps_per_trial - 1)
        assert resumed_steps[0] == first_expected, f"{trial_dir.name}: resumed at {resumed_steps[0]}"
        kept = sorted(p.name for p in trial_dir.glob("checkpoint_*"))
        assert len(kept) <= 2, f"{trial_dir.name}: stale checkpoints left behind: {kept}"


def _manifest_steps(manifest: Path) -> int:
    return json.loads(manifest.read_text())["steps_done"]


def _logged_steps(result_file: Path) -> list[int]:
    return [json.loads(line)["step_index"] for line in result_file.read_text().splitlines() if line.strip()]


def test_a_stop_decision_left_by_an_actor_that_died_saving_does_not_end_the_resumed_trial(tmp_path, ray_tmp):
    """An actor killed while saving leaves Tune a cached STOP decision under its trial's id, and the
    experiment state keeps it: restored with it, the resumed trial ran one step, saved, and stopped
    short of its end without an error (lop_ray/tune_decisions.py). Planted here for every unfinished
    trial, as a kill during a save leaves it; each must still run to its last step."""
    sweep, results, env = _kill_sweep_after_checkpoints(tmp_path, state_period_s="1", checkpoints_per_trial=3)
    state_path = max(results.glob("experiment_state-*.json"))
    state = json.loads(state_path.read_text())
    unfinished = [
        json.loads(trial)["trial_id"]
        for trial, _ in state["trial_data"]
        if json.loads(trial)["status"] != "TERMINATED"
    ]
    assert unfinished
    state["runner_data"]["_cached_trial_decisions"] = dict.fromkeys(unfinished, "STOP")
    state_path.write_text(json.dumps(state))
    _resume(results, env)
    assert_runs_match_reference(embedded_tracking_uri(results), sweep)
