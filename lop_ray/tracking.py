"""MLflow: one parent run per sweep, one child run per trial, metrics stepped by task index.

A trial's run id lives in its checkpoint, so a restored trial continues its own run; a trial that
dies before its first checkpoint finds its run again by the sweep's run id and its trial index. Because a trial
is deterministic, the steps between its last checkpoint and a crash are recomputed with identical
values after a resume; steps the run already holds are not logged again. Which steps it holds is read
from a `step_index` metric logged with every step's metrics: MLflow writes one batch's metrics in one
transaction (but its tags and params in others), so that metric is there exactly when the step's
metrics are. So after any kill and resume a run has every step exactly once.

A Tune trial's seeds (`TrialRuns`) log each step together. On the embedded sqlite store that is one
insert of every seed's rows in one transaction (`_SqliteSteps`): MLflow's `log_batch` costs ~0.2 ms
per value through its ORM and a commit per call, ~0.5 s a step for 100 seeds, which made MLflow most
of the paper's regression suite (docs/performance.md). The rows are the ones `log_batch` writes,
read back through MLflow's own API (tests/test_tracking.py pins the two against each other).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlRun
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.tracking import MlflowClient
from sqlalchemy import select, update
from sqlalchemy.dialects import sqlite

STEP_METRIC = "step_index"
TRIAL_INDEX_TAG = "lop_ray.trial_index"
TUNE_TRIAL_TAG = "lop_ray.tune_trial"  # the first trial index of the seeds run by one Tune trial
_BATCH = 100  # MLflow's limit of params per log_batch call
_METRICS_PER_CALL = 1000  # and of metrics


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

    def __init__(
        self,
        tracking: Mapping[str, str],
        trial: Mapping[str, Any],
        run_id: str | None,
        client: MlflowClient | None = None,
        searched: bool = False,
        tune_trial: int | None = None,
    ):
        """`run_id` None: no checkpoint names the run yet. The trial may still have created it before
        it died, so it is searched for, unless the caller has (`searched`) and found none."""
        self.client = client or MlflowClient(tracking["uri"])
        if run_id is None and not searched:
            run_id = self._find(tracking, trial)
        if run_id is None:
            run_id = self._create(tracking, trial, tune_trial)
            _log_params(self.client, run_id, flatten(trial))
            self.last_step = -1
        else:
            run = self.client.get_run(run_id)
            if not run.data.params:  # the trial died between creating its run and logging params
                _log_params(self.client, run_id, flatten(trial))
            self.last_step = _last_step_held(run)
            if run.info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def _find(self, tracking: Mapping[str, str], trial: Mapping[str, Any]) -> str | None:
        runs = _child_runs(self.client, tracking, {TRIAL_INDEX_TAG: trial["trial_index"]})
        return next((run.info.run_id for run in runs), None)

    def _create(self, tracking: Mapping[str, str], trial: Mapping[str, Any], tune_trial: int | None) -> str:
        tags = {
            "mlflow.parentRunId": tracking["parent_run_id"],
            "lop_ray.kind": "trial",
            TRIAL_INDEX_TAG: str(trial["trial_index"]),
            TUNE_TRIAL_TAG: str(trial["trial_index"] if tune_trial is None else tune_trial),
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
        self.client.log_batch(self.run_id, metrics=_step_metrics(step, metrics, int(time.time() * 1000)))
        self.last_step = step

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)

    def steps_held(self) -> int:
        """How many steps the store holds for this run now (another process may have logged since)."""
        return _last_step_held(self.client.get_run(self.run_id)) + 1


class TrialRuns:
    """The MLflow runs of one Tune trial's seeds, one per seed, logged together.

    Steps are buffered and written every `FLUSH_SECONDS`, and whenever the trainable is about to
    checkpoint (`flush`), finishes or stops: a checkpoint never covers a step the store lacks, so a
    trial restored from it recomputes exactly the steps that were lost with the buffer. On a sqlite
    store a flush is one transaction for every seed (`_SqliteSteps`); elsewhere one `log_batch` of
    whole steps per seed."""

    FLUSH_SECONDS = 10.0

    def __init__(
        self, tracking: Mapping[str, str], trials: list[Mapping[str, Any]], run_ids: list[str | None]
    ):
        self.client = MlflowClient(tracking["uri"])
        tune_trial = trials[0]["trial_index"]
        if None in run_ids:  # one search for the runs the trial may have made before it died
            found = self._find(tracking, tune_trial)
            run_ids = [
                run_id or found.get(t["trial_index"]) for t, run_id in zip(trials, run_ids, strict=True)
            ]
        self.trackers = [
            TrialTracker(tracking, trial, run_id, self.client, searched=True, tune_trial=tune_trial)
            for trial, run_id in zip(trials, run_ids, strict=True)
        ]
        self._sqlite = _SqliteSteps.of(self.client)
        self._buffer: list[tuple[int, list[Mapping[str, float]]]] = []
        self._flushed_at = time.monotonic()

    def _find(self, tracking: Mapping[str, str], tune_trial: int) -> dict[int, str]:
        """trial index → run id of the runs this Tune trial has made so far."""
        runs = _child_runs(self.client, tracking, {TUNE_TRIAL_TAG: tune_trial})
        return {int(run.data.tags[TRIAL_INDEX_TAG]): run.info.run_id for run in runs}

    @property
    def run_ids(self) -> list[str]:
        return [tracker.run_id for tracker in self.trackers]

    def log_step(self, step: int, per_seed: list[Mapping[str, float]]) -> None:
        """Each seed's metrics of `step`, for the runs that do not hold that step yet."""
        self._buffer.append((step, per_seed))
        if time.monotonic() - self._flushed_at >= self.FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Write every buffered step the runs do not hold yet."""
        now = int(time.time() * 1000)
        by_run: dict[int, list[Metric]] = {}
        for step, per_seed in self._buffer:
            for index, (tracker, metrics) in enumerate(zip(self.trackers, per_seed, strict=True)):
                if step > tracker.last_step:
                    by_run.setdefault(index, []).extend(_step_metrics(step, metrics, now))
        if by_run:
            if self._sqlite is not None:
                self._sqlite.write({self.trackers[i].run_id: batch for i, batch in by_run.items()})
            else:
                for index, batch in by_run.items():
                    _log_whole_steps(self.client, self.trackers[index].run_id, batch)
            last = self._buffer[-1][0]
            for index in by_run:
                self.trackers[index].last_step = last
        self._buffer.clear()
        self._flushed_at = time.monotonic()

    def finish(self) -> None:
        self.flush()
        self._set_status(self.run_ids, "FINISHED")

    def stop_early(self, num_steps: int) -> None:
        """The trial stops before its end (paused, errored, interrupted): its runs show KILLED and
        stay resumable. A run the store already holds every step of is FINISHED whichever process
        says so last: a stale actor of the trial may stop after another one has finished it."""
        self.flush()
        complete = [tracker.steps_held() >= num_steps for tracker in self.trackers]
        self._set_status([t.run_id for t, c in zip(self.trackers, complete, strict=True) if c], "FINISHED")
        self._set_status([t.run_id for t, c in zip(self.trackers, complete, strict=True) if not c], "KILLED")

    def _set_status(self, run_ids: list[str], status: str) -> None:
        if self._sqlite is not None:
            self._sqlite.set_status(run_ids, status)
            return
        for run_id in run_ids:
            self.client.set_terminated(run_id, status=status)


def _step_metrics(step: int, metrics: Mapping[str, float], now: int) -> list[Metric]:
    """One step of one run as MLflow metrics, ending with its STEP_METRIC (see the module docstring)."""
    return [
        *(Metric(k, float(v), now, step) for k, v in metrics.items()),
        Metric(STEP_METRIC, float(step), now, step),
    ]


def _last_step_held(run) -> int:
    """The highest step a run holds, −1 for none: its STEP_METRIC's latest value is that step."""
    latest = run.data.metrics.get(STEP_METRIC)
    return -1 if latest is None else int(latest)


def _log_whole_steps(client: MlflowClient, run_id: str, metrics: list[Metric]) -> None:
    """`log_batch` in calls of at most MLflow's 1,000 metrics, each holding whole steps (`metrics`
    is grouped by step, each step ending with its STEP_METRIC): a run then holds a step's
    `STEP_METRIC` exactly when it holds the step's other metrics."""
    batch: list[Metric] = []
    step: list[Metric] = []
    for metric in metrics:
        step.append(metric)
        if metric.key == STEP_METRIC:
            if batch and len(batch) + len(step) > _METRICS_PER_CALL:
                client.log_batch(run_id, metrics=batch)
                batch = []
            batch += step
            step = []
    if batch:
        client.log_batch(run_id, metrics=batch)


class _SqliteSteps:
    """Many runs' steps as one transaction in MLflow's sqlite tables: the `metrics` rows `log_batch`
    would add and the `latest_metrics` row of each key, through MLflow's own table models and
    session (pinned with MLflow in requirements.txt; tests/test_tracking.py reads them back through
    MLflow's API against `log_batch`'s)."""

    def __init__(self, store: SqlAlchemyStore) -> None:
        self.store = store

    @classmethod
    def of(cls, client: MlflowClient) -> _SqliteSteps | None:
        store = client._tracking_client.store  # the client's own store: MLflow has no public handle
        if isinstance(store, SqlAlchemyStore) and store.db_type == "sqlite":
            return cls(store)
        return None

    def write(self, metrics_of: Mapping[str, list[Metric]]) -> None:
        rows = []
        for run_id, metrics in metrics_of.items():
            for metric in metrics:
                is_nan, value = self.store.sanitize_metric_value(metric.value)
                rows.append(
                    {
                        "run_uuid": run_id,
                        "key": metric.key,
                        "value": value,
                        "is_nan": is_nan,
                        "timestamp": metric.timestamp,
                        "step": metric.step,
                    }
                )
        latest = sqlite.insert(SqlLatestMetric.__table__)
        newer = latest.excluded
        latest = latest.on_conflict_do_update(
            index_elements=["key", "run_uuid"],
            set_={
                "value": newer.value,
                "timestamp": newer.timestamp,
                "step": newer.step,
                "is_nan": newer.is_nan,
            },
            where=SqlLatestMetric.__table__.c.step <= newer.step,  # MLflow's latest: the highest step
        )
        with self.store.ManagedSessionMaker() as session:  # commits on exit, all or nothing
            session.execute(SqlMetric.__table__.insert(), rows)
            # each key's last row: `metrics_of` lists a run's steps in order
            last_rows = {(row["run_uuid"], row["key"]): row for row in rows}
            session.execute(latest, list(last_rows.values()))

    def histories(self, run_ids: list[str]) -> dict[str, dict[int, dict[str, float]]]:
        """run id → step → {key: value}, as `get_metric_history` returns them (NaN for a NaN)."""
        metrics = SqlMetric.__table__
        found: dict[str, dict[int, dict[str, float]]] = {}
        with self.store.ManagedSessionMaker() as session:
            for start in range(0, len(run_ids), 500):  # within sqlite's limit of bound parameters
                query = select(
                    metrics.c.run_uuid, metrics.c.step, metrics.c.key, metrics.c.value, metrics.c.is_nan
                )
                chunk = run_ids[start : start + 500]
                for run_id, step, key, value, is_nan in session.execute(
                    query.where(metrics.c.run_uuid.in_(chunk))
                ):
                    found.setdefault(run_id, {}).setdefault(step, {})[key] = math.nan if is_nan else value
        return found

    def set_status(self, run_ids: list[str], status: str) -> None:
        """What `set_terminated` stores, for many runs in one statement (it loads each whole run)."""
        if not run_ids:
            return
        runs = SqlRun.__table__
        with self.store.ManagedSessionMaker() as session:
            session.execute(
                update(runs)
                .where(runs.c.run_uuid.in_(run_ids))
                .values(status=status, end_time=int(time.time() * 1000))
            )


def trial_histories(tracking: Mapping[str, str]) -> dict[int, tuple[str, list[dict[str, float]]]]:
    """Every trial run of a sweep: trial index → (run id, one row of metrics per logged step, in step
    order). MLflow holds each step exactly once (see the module docstring), unlike Tune's result
    files, which a killed driver leaves behind its checkpoints. On a sqlite store every run's history
    is one query (one `get_metric_history` per run and key cost ~15 s for a file of 300 runs)."""
    client = MlflowClient(tracking["uri"])
    runs = list(_child_runs(client, tracking))
    sqlite_store = _SqliteSteps.of(client)
    if sqlite_store is not None:
        steps_of = sqlite_store.histories([run.info.run_id for run in runs])
    else:
        steps_of = {}
        for run in runs:
            steps = steps_of.setdefault(run.info.run_id, {})
            for key in run.data.metrics:
                for metric in client.get_metric_history(run.info.run_id, key):
                    steps.setdefault(metric.step, {})[key] = metric.value
    found: dict[int, tuple[str, list[dict[str, float]]]] = {}
    for run in runs:
        steps = steps_of.get(run.info.run_id, {})
        found[int(run.data.tags[TRIAL_INDEX_TAG])] = (run.info.run_id, [steps[k] for k in sorted(steps)])
    return found


def _child_runs(client: MlflowClient, tracking: Mapping[str, str], tags: Mapping[str, Any] | None = None):
    """The sweep's trial runs (those with `tags` only), page by page."""
    filters = [f"tags.`mlflow.parentRunId` = '{tracking['parent_run_id']}'"]
    filters += [f"tags.`{key}` = '{value}'" for key, value in (tags or {}).items()]
    token = None
    while True:
        page = client.search_runs(
            [tracking["experiment_id"]],
            filter_string=" and ".join(filters),
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
