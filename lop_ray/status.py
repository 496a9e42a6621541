"""`lop-ray status DIR_OR_S3_URI`: where each trial of a sweep stands, read from what the sweep left
on storage, without Ray running.

Three sources, each the authority on one thing: Tune's experiment state (the trial's state and its
errors, as of the driver's last write), the checkpoint directories (checked for completeness as a
resume would check them, lop_ray/trial_checkpoints.py), and MLflow (the steps logged, which a
resume never repeats nor loses, lop_ray/tracking.py). A trial shows FINISHED once MLflow holds all
its steps; otherwise Tune's state is as the driver last wrote it, so a sweep whose driver was killed
shows its trials RUNNING until `lop-ray resume` continues them. A trial whose error.txt holds more
failures than Tune's record shows ERROR (Tune does not record the failure that ends a trial; a trial
being retried may show ERROR until the driver next writes its state, every 10 s or more).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs
from mlflow.tracking import MlflowClient
from rich.console import Console
from rich.table import Table

from lop_ray import storage
from lop_ray.schema import SweepError, validate_sweep
from lop_ray.sweep_record import SWEEP_FILE
from lop_ray.tracking import (
    STEP_METRIC,
    TRIAL_INDEX_TAG,
    missing_sqlite_store,
    quiet_mlflow_environment,
    ui_command,
)
from lop_ray.trial_checkpoints import stored_checkpoints


@dataclass
class TrialStatus:
    """One Tune trial (one or more seeds of one configuration)."""

    name: str
    state: str  # Tune's last recorded state, "FINISHED" once MLflow holds every step
    steps_done: int  # the fewest steps any of its seeds has in MLflow
    num_steps: int
    num_tasks: int
    checkpoint: str | None = None  # the newest complete checkpoint
    checkpoint_steps: int | None = None
    run_links: list[str] = field(default_factory=list)
    failures: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def tasks_done(self) -> int:
        return self.steps_done * self.num_tasks // self.num_steps


def sweep_status(location: str) -> tuple[list[TrialStatus], dict[str, Any]]:
    """Every trial of the sweep at `location` (a directory or s3:// URI), and its tracking ids."""
    quiet_mlflow_environment()
    fs, root = _filesystem(location)
    record = _read_json(fs, f"{root}/{SWEEP_FILE}")
    if record is None:
        raise SweepError(
            location, [f"{location}: no {SWEEP_FILE} here: not a lop-ray sweep's results directory"]
        )
    sweep = validate_sweep(record["document"], record["sweep_file"])
    tracking = record["tracking"]
    runs = _mlflow_runs(tracking)
    tune_trials = _tune_trials(fs, root)
    statuses = []
    for group in sweep.groups:
        indices = [t["trial_index"] for t in group]
        tune = tune_trials.get(indices[0], {})
        seeds = [runs.get(i) for i in indices]
        steps = min((run[1] if run else 0) for run in seeds)
        status = TrialStatus(
            name=tune.get("custom_trial_name") or _group_name(group),
            state=tune.get("status", "UNKNOWN" if steps else "NOT STARTED"),  # UNKNOWN: no Tune record
            steps_done=steps,
            num_steps=sweep.steps_per_trial,
            num_tasks=group[0]["num_tasks"],
            run_links=[_run_link(tracking, run[0]) for run in seeds if run],
            failures=tune.get("num_failures", 0),
        )
        if steps >= sweep.steps_per_trial:
            status.state = "FINISHED"
        if "relative_logdir" in tune:
            trial_path = f"{root}/{tune['relative_logdir']}"
            complete = [c for c in stored_checkpoints(fs, trial_path) if c.complete]
            if complete:
                newest = max(complete, key=lambda c: (c.steps_done, c.index))
                status.checkpoint = newest.path.removeprefix(f"{root}/")
                status.checkpoint_steps = newest.steps_done
            status.errors = _error_summary(fs, f"{trial_path}/error.txt")
            # Tune appends every failure to error.txt, but its experiment state (Ray 2.60) keeps the
            # trial RUNNING with the failures before the last one when that one ends the trial
            failed = sum(e.startswith("Failure # ") for e in status.errors)
            if failed > status.failures and status.state != "FINISHED":
                status.state = "ERROR"
            status.failures = max(status.failures, failed)
        statuses.append(status)
    return statuses, tracking


def print_status(location: str) -> int:
    statuses, tracking = sweep_status(location)
    table = Table(title=f"{location}: {len(statuses)} trials", show_lines=True)
    for column in ("trial", "state", "tasks done", "last checkpoint", "MLflow run", "errors"):
        table.add_column(column, overflow="fold")
    for s in statuses:
        checkpoint = f"{s.checkpoint}\n({s.checkpoint_steps} steps)" if s.checkpoint else "none"
        table.add_row(
            s.name,
            s.state if not s.failures else f"{s.state}\n{s.failures} failure(s)",
            f"{s.tasks_done}/{s.num_tasks}\n(step {s.steps_done}/{s.num_steps})",
            checkpoint,
            "\n".join(s.run_links) or "none yet",
            "\n".join(s.errors),
        )
    console = Console(highlight=False, width=max(160, Console().width))
    console.print(table)
    if tracking["uri"].startswith("sqlite:"):
        print(f"MLflow UI (for the run links): {ui_command(tracking['uri'])}", flush=True)
    return 0


def _filesystem(location: str) -> tuple[pyarrow.fs.FileSystem, str]:
    try:
        return storage.filesystem(location)  # S3: the endpoint override as the sweep used it
    except storage.StorageError as error:
        raise SweepError(location, [str(error)]) from None


def _read_json(fs: pyarrow.fs.FileSystem, path: str) -> Any:
    text = _read_text(fs, path)
    return None if text is None else json.loads(text)


def _read_text(fs: pyarrow.fs.FileSystem, path: str) -> str | None:
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        return stream.read().decode(errors="replace")


def _tune_trials(fs: pyarrow.fs.FileSystem, root: str) -> dict[int, dict[str, Any]]:
    """Tune's newest experiment state: first trial index of each Tune trial → its recorded state."""
    states = [
        info.path
        for info in fs.get_file_info(pyarrow.fs.FileSelector(root))
        if info.base_name.startswith("experiment_state-") and info.base_name.endswith(".json")
    ]
    if not states:
        return {}
    state = _read_json(fs, max(states))  # the names end in a sortable timestamp
    trials = {}
    for trial_json, metadata_json in state["trial_data"]:
        trial = json.loads(trial_json)
        metadata = json.loads(metadata_json)
        trial["num_failures"] = int(metadata.get("num_failures", 0))
        trials[trial["config"]["trials"][0]["trial_index"]] = trial
    return trials


def _mlflow_runs(tracking: dict[str, Any]) -> dict[int, tuple[str, int]]:
    """Trial index → (MLflow run id, steps it holds)."""
    database = missing_sqlite_store(tracking["uri"])
    if database is not None:
        raise SweepError(
            tracking["uri"],
            [f"{database}: the sweep's MLflow store is not on this machine (the driver's `MLflow:` line)"],
        )
    client = MlflowClient(tracking["uri"])
    runs = client.search_runs(
        [tracking["experiment_id"]],
        filter_string=f"tags.`mlflow.parentRunId` = '{tracking['parent_run_id']}'",
        max_results=50000,
    )
    found = {}
    for run in runs:
        last = run.data.metrics.get(STEP_METRIC)  # its latest value: the last step logged
        found[int(run.data.tags[TRIAL_INDEX_TAG])] = (run.info.run_id, 0 if last is None else int(last) + 1)
    return found


def _run_link(tracking: dict[str, Any], run_id: str) -> str:
    base = tracking["uri"] if tracking["uri"].startswith("http") else "http://127.0.0.1:5000"
    return f"{base.rstrip('/')}/#/experiments/{tracking['experiment_id']}/runs/{run_id}"


def _error_summary(fs: pyarrow.fs.FileSystem, path: str) -> list[str]:
    """Each failure in Tune's error.txt as its header line and the exception it ended with."""
    text = _read_text(fs, path)
    if not text:
        return []
    summary = []
    for block in text.split("Failure # ")[1:]:
        lines = [line.strip() for line in block.splitlines() if line.strip()]
        summary.append(f"Failure # {lines[0]}")
        if len(lines) > 1:
            summary.append(lines[-1][:200])
    return summary


def _group_name(group: list[dict[str, Any]]) -> str:
    from lop_ray.tracking import trial_run_name

    name = trial_run_name(group[0])
    if len(group) > 1:
        name = name.rsplit(" seed=", 1)[0] + f" seeds={group[0]['seed']}-{group[-1]['seed']}"
    return name
