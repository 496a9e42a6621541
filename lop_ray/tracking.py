"""MLflow: one parent run per sweep, one child run per trial, metrics stepped by task index.

A trial's run id lives in its checkpoint, so a restored trial continues its own run; a trial that
dies before its first checkpoint finds its run again by the sweep's run id and its trial index. Because a trial
is deterministic, the steps between its last checkpoint and a crash are recomputed with identical
values after a resume; steps the run already holds are not logged again. Which steps it holds is read
from a `step_index` metric logged with every step's metrics: MLflow writes one batch's metrics in one
transaction (but its tags and params in others), so that metric is there exactly when the step's
metrics are. So after any kill and resume a run has every step exactly once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

STEP_METRIC = "step_index"
TRIAL_INDEX_TAG = "lop_ray.trial_index"
_BATCH = 100  # MLflow's limit of params per log_batch call


def embedded_tracking_uri(results_dir: str | Path) -> str:
    """The default store: a sqlite file inside the sweep's results directory (no server)."""
    return f"sqlite:///{Path(results_dir).resolve() / 'mlflow.db'}"


def missing_sqlite_store(tracking_uri: str) -> Path | None:
    """The sqlite file `tracking_uri` names when it is not on this machine (MLflow would silently
    create an empty one, and a resumed trial a second run); None for a present file or a server."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    return None if database.exists() else database


def ui_command(tracking_uri: str) -> str:
    """The command that opens the MLflow UI on this store (the `mlflow` beside this Python)."""
    if tracking_uri.startswith("sqlite:"):
        beside = Path(sys.executable).with_name("mlflow")
        mlflow = str(beside) if beside.exists() else "mlflow"
        return f"{mlflow} ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000"
    return f"open {tracking_uri} in a browser"


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config → {"a.b": "value"}, the shape MLflow params take."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location)


def start_sweep_run(
    client: MlflowClient, experiment_id: str, sweep_name: str, problem: str, params: Mapping
) -> str:
    run = client.create_run(
        experiment_id,
        run_name=sweep_name,
        tags={
            "lop_ray.kind": "sweep",
            "sweep": sweep_name,
            "problem": problem,
            "git_commit": git_commit(),
        },
    )
    _log_params(client, run.info.run_id, flatten(params))
    return run.info.run_id


def trial_run_name(trial: Mapping[str, Any]) -> str:
    """e.g. `cbp replacement_rate=0.0001 seed=3`: what varies, then the seed."""
    varying = " ".join(f"{k}={v}" for k, v in trial["varying"].items())
    return " ".join(part for part in (trial["label"], varying, f"seed={trial['seed']}") if part)


def trial_line(trial: Mapping[str, Any], label: str | None = None, leave_out: Collection[str] = ()) -> str:
    """The line a trial belongs to in `lop-ray report`'s figures: its label and what varies, not its
    seed. As a tag it is what MLflow's runs table groups the seeds of one configuration by. A figure
    may name the line otherwise (`label`) and leave out varying keys its panels already say."""
    varying = ", ".join(f"{k}={v}" for k, v in trial["varying"].items() if k not in leave_out)
    label = label or trial["label"]
    return f"{label} ({varying})" if varying else label


class TrialTracker:
    """The MLflow run of one trial, created on first use or re-attached after a restore."""

    def __init__(self, tracking: Mapping[str, str], trial: Mapping[str, Any], run_id: str | None):
        self.client = MlflowClient(tracking["uri"])
        if run_id is None:  # no checkpoint yet; the trial may still have started a run before it died
            run_id = self._find(tracking, trial) or self._create(tracking, trial)
        run = self.client.get_run(run_id)
        if not run.data.params:  # new, or the trial died between creating its run and logging params
            _log_params(self.client, run_id, flatten(trial))
        self.last_step = max(
            (m.step for m in self.client.get_metric_history(run_id, STEP_METRIC)), default=-1
        )
        if run.info.status != "RUNNING":
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def _find(self, tracking: Mapping[str, str], trial: Mapping[str, Any]) -> str | None:
        runs = self.client.search_runs(
            [tracking["experiment_id"]],
            filter_string=(
                f"tags.`mlflow.parentRunId` = '{tracking['parent_run_id']}' "
                f"and tags.`{TRIAL_INDEX_TAG}` = '{trial['trial_index']}'"
            ),
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def _create(self, tracking: Mapping[str, str], trial: Mapping[str, Any]) -> str:
        tags = {
            "mlflow.parentRunId": tracking["parent_run_id"],
            "lop_ray.kind": "trial",
            TRIAL_INDEX_TAG: str(trial["trial_index"]),
            "sweep": trial["sweep"],
            "problem": trial["problem"],
            "algorithm": trial["algorithm"],
            "label": trial["label"],
            "seed": str(trial["seed"]),
            "fidelity": trial["fidelity"],
            "git_commit": tracking.get("git_commit", "unknown"),
            "line": trial_line(trial),
            **{f"varying.{k}": str(v) for k, v in trial["varying"].items()},
        }
        for key, value in flatten(trial["hyperparameters"]).items():  # `tags.step_size = '0.01'`
            tags.setdefault(key, value)
        run = self.client.create_run(tracking["experiment_id"], run_name=trial_run_name(trial), tags=tags)
        return run.info.run_id  # its params are logged by __init__, which also repairs a half-made run

    def log_step(self, step: int, metrics: Mapping[str, float]) -> None:
        """Log one step's metrics, unless this run already holds that step (after a resume)."""
        if step <= self.last_step:
            return
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        batch.append(Metric(STEP_METRIC, float(step), now, step))
        self.client.log_batch(self.run_id, metrics=batch)
        self.last_step = step

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def trial_histories(tracking: Mapping[str, str]) -> dict[int, tuple[str, list[dict[str, float]]]]:
    """Every trial run of a sweep: trial index → (run id, one row of metrics per logged step, in step
    order). MLflow holds each step exactly once (see the module docstring), unlike Tune's result
    files, which a killed driver leaves behind its checkpoints."""
    client = MlflowClient(tracking["uri"])
    found: dict[int, tuple[str, list[dict[str, float]]]] = {}
    for run in _child_runs(client, tracking):
        steps: dict[int, dict[str, float]] = {}
        for key in run.data.metrics:
            for metric in client.get_metric_history(run.info.run_id, key):
                steps.setdefault(metric.step, {})[key] = metric.value
        found[int(run.data.tags[TRIAL_INDEX_TAG])] = (run.info.run_id, [steps[k] for k in sorted(steps)])
    return found


def _child_runs(client: MlflowClient, tracking: Mapping[str, str]):
    token = None
    while True:
        page = client.search_runs(
            [tracking["experiment_id"]],
            filter_string=f"tags.`mlflow.parentRunId` = '{tracking['parent_run_id']}'",
            max_results=1000,
            page_token=token,
        )
        yield from page
        token = page.token
        if not token:
            return


def _log_params(client: MlflowClient, run_id: str, params: Mapping[str, str]) -> None:
    items = [Param(k, v[:6000]) for k, v in params.items()]
    for start in range(0, len(items), _BATCH):
        client.log_batch(run_id, params=items[start : start + _BATCH])


def quiet_mlflow_environment() -> None:
    """No telemetry, no 'new version' chatter from the tracking client."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
