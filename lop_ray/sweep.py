"""Run a validated sweep on Ray Tune, and resume an interrupted one.

The sweep's results directory (`<storage>/<name>`) holds Tune's experiment state and trial
checkpoints, `lop_ray_sweep.json` (the sweep document and its tracking ids, so that `lop-ray resume
DIR` needs nothing else), and, with the embedded store, MLflow's sqlite database and artifacts.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from mlflow.tracking import MlflowClient
from ray import tune
from rich.console import Console
from rich.table import Table

from lop_ray import report, storage
from lop_ray.cli import trial_count
from lop_ray.progress import QUIET_ENV, SweepProgress
from lop_ray.schema import Sweep, SweepError
from lop_ray.sweep_record import SWEEP_FILE, read_sweep_record, write_sweep_record
from lop_ray.tracking import (
    embedded_tracking_uri,
    ensure_experiment,
    git_commit,
    missing_sqlite_store,
    quiet_mlflow_environment,
    start_sweep_run,
    trial_run_name,
    ui_command,
)
from lop_ray.trainables.shared_data import release_shared_datasets
from lop_ray.trial_checkpoints import ReconcileCheckpoints
from lop_ray.tune_decisions import forget_decisions_when_an_actor_starts

# Checkpointing after every task is what makes any trial resumable; Tune warns about it by default.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


@dataclass
class SweepOutcome:
    results_dir: Path | str  # an s3:// URI for a sweep stored on S3
    tracking_uri: str
    parent_run_id: str
    errors: int
    figure: Path | None
    aggregates: list[report.Aggregate]


def results_dir_of(sweep: Sweep) -> Path | str:
    """`<storage>/<name>`: a local directory, or an s3:// URI whose bucket exists (checked here,
    before anything runs; a bad URI or a missing bucket is an error naming `storage`)."""
    try:
        storage.check_location(sweep.storage)
    except storage.StorageError as error:
        raise SweepError(sweep.path, [f"{sweep.path}: {error}"]) from None
    if storage.is_remote(sweep.storage):
        return storage.join(sweep.storage, sweep.name)
    return Path(sweep.storage).expanduser().resolve() / sweep.name


def refuse_existing_results(sweep: Sweep) -> Path | str:
    """The sweep's results directory, which must not hold a sweep yet (SweepError naming the file)."""
    results_dir = results_dir_of(sweep)
    if storage.read_text(results_dir, SWEEP_FILE) is not None:
        raise SweepError(
            sweep.path,
            [
                f"{sweep.path}: name: results of a sweep named {sweep.name!r} already exist in "
                f"{results_dir}; continue it with `lop-ray resume {results_dir}`, or choose another "
                "name or --storage"
            ],
        )
    return results_dir


def run_sweeps(sweeps: list[Sweep], quiet: bool = False) -> list[SweepOutcome]:
    """Several sweeps one after another in one Ray session (a suite such as `sweeps/regression/`).
    Every results directory is checked first, and two sweeps may not share one, so that a clash is
    found before the first sweep runs, not after it; a summary table ends the run."""
    directories: dict[str, str] = {}
    problems = []
    for sweep in sweeps:
        try:
            directory = str(refuse_existing_results(sweep))
        except SweepError as error:
            problems += error.problems
            continue
        if directory in directories:
            problems.append(
                f"{sweep.path}: name: {sweep.name!r} is also the name of {directories[directory]}; their "
                f"results would share {directory}: rename one"
            )
        directories.setdefault(directory, sweep.path)
    if problems:
        raise SweepError(sweeps[0].path, problems)
    outcomes, seconds = [], []
    for sweep in sweeps:
        start = time.perf_counter()
        outcomes.append(run_sweep(sweep, quiet))
        seconds.append(time.perf_counter() - start)
    if len(sweeps) > 1:
        table = Table(title=f"{len(sweeps)} sweeps, {sum(seconds) / 60:.1f} min")
        for column in ("sweep", "trials", "errors", "minutes", "figure"):
            table.add_column(column)
        for sweep, outcome, took in zip(sweeps, outcomes, seconds, strict=True):
            figure = str(outcome.figure) if outcome.figure else "-"
            table.add_row(sweep.name, trial_count(sweep), str(outcome.errors), f"{took / 60:.1f}", figure)
        Console(stderr=True, width=max(160, Console(stderr=True).width)).print(table)
    return outcomes


def run_sweep(sweep: Sweep, quiet: bool = False) -> SweepOutcome:
    """Start a new sweep. Refuses (before anything runs) if its results directory already holds one.

    On S3 storage, Tune's state, the checkpoints and the sweep record are objects under
    `<storage>/<name>`; MLflow logs to `tracking_uri`, or without one to a sqlite store beside the
    driver (`storage.driver_dir`) with its artifacts on S3, which only a one-machine Ray can reach."""
    quiet_mlflow_environment()
    results_dir = refuse_existing_results(sweep)
    remote = storage.is_remote(results_dir)
    local_dir = storage.driver_dir(results_dir)
    tracking_uri = sweep.tracking_uri or embedded_tracking_uri(local_dir)
    if remote and _on_the_drivers_disk(tracking_uri):
        _connect_ray()
        _refuse_a_driver_local_store_on_a_cluster(sweep.path, sweep.storage)
    local_dir.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri)
    artifacts = None
    if sweep.tracking_uri is None:
        artifacts = (
            storage.join(results_dir, "mlartifacts") if remote else (results_dir / "mlartifacts").as_uri()
        )
    experiment_id = ensure_experiment(client, sweep.name, artifacts)
    parent_run_id = start_sweep_run(client, experiment_id, sweep.name, sweep.problem, sweep.document)
    tracking = {
        "uri": tracking_uri,
        "experiment_id": experiment_id,
        "parent_run_id": parent_run_id,
        "git_commit": git_commit(),
    }
    write_sweep_record(results_dir, sweep, tracking)
    _announce(results_dir, tracking_uri, sweep, quiet)
    fs, fs_path = storage.filesystem(results_dir)
    tuner = tune.Tuner(
        _trainable(sweep),
        param_space={"trials": tune.grid_search(sweep.groups), "tracking": tracking},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=sweep.max_concurrent_trials,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_dirname,
            reuse_actors=True,  # a finished trial's actor runs the next (LopTrainable.reset_config)
        ),
        run_config=tune.RunConfig(
            name=sweep.name,
            storage_path=fs_path.rsplit("/", 1)[0] if remote else str(results_dir.parent),
            storage_filesystem=fs if remote else None,
            stop={"training_iteration": sweep.steps_per_trial},
            checkpoint_config=tune.CheckpointConfig(
                checkpoint_frequency=sweep.checkpoint_every, checkpoint_at_end=True, num_to_keep=2
            ),
            failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
            callbacks=[
                ReconcileCheckpoints(),
                SweepProgress(len(sweep.groups), sweep.steps_per_trial, quiet),
            ],
            verbose=0,
        ),
    )
    _connect_ray(quiet)
    os.environ[QUIET_ENV] = "1" if quiet else "0"
    forget_decisions_when_an_actor_starts()  # a retried trial must not inherit a dead actor's STOP
    grid = tuner.fit()
    return _finish(sweep, results_dir, tracking, grid, quiet)


def resume_sweep(results_dir: str | Path, quiet: bool = False) -> SweepOutcome:
    """Continue an interrupted sweep: unfinished and errored trials resume from their checkpoints."""
    quiet_mlflow_environment()
    record = read_sweep_record(results_dir)
    remote = storage.is_remote(results_dir)
    results_dir = storage.normalize(results_dir) if remote else Path(storage.normalize(results_dir))
    sweep, tracking = record.sweep, record.tracking
    if remote and tracking["uri"].startswith("sqlite:"):
        _refuse_a_missing_driver_local_store(results_dir, tracking["uri"])
    _announce(results_dir, tracking["uri"], sweep, quiet)
    _connect_ray(quiet)
    os.environ[QUIET_ENV] = "1" if quiet else "0"
    if remote and _on_the_drivers_disk(tracking["uri"]):
        _refuse_a_driver_local_store_on_a_cluster(str(results_dir), str(results_dir))
    fs, fs_path = storage.filesystem(results_dir)
    tuner = tune.Tuner.restore(
        fs_path if remote else str(results_dir),
        trainable=_trainable(sweep),
        resume_errored=True,
        storage_filesystem=fs if remote else None,
    )
    forget_decisions_when_an_actor_starts()  # the experiment state may hold a dead actor's STOP
    grid = tuner.fit()
    return _finish(sweep, results_dir, tracking, grid, quiet)


def _on_the_drivers_disk(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri


def _refuse_a_driver_local_store_on_a_cluster(where: str, storage_uri: str) -> None:
    """An S3 sweep's sqlite or file store (the default one included) is on the driver's disk; trials
    on other nodes would each log to a store of their own, so on a multi-node Ray it is refused."""
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    if len(nodes) > 1:
        raise SweepError(
            where,
            [
                f"{where}: tracking_uri: storage {storage_uri} on a {len(nodes)}-node Ray cluster needs an "
                "MLflow server that every node reaches (a sqlite or file store is on the driver's disk): "
                "start `lop-ray mlflow-server` on the head and set tracking_uri: http://HEAD-IP:5000"
            ],
        )


def _refuse_a_missing_driver_local_store(results_dir: str, tracking_uri: str) -> None:
    """An S3 sweep's default MLflow store is on the machine that started it; resumed elsewhere, a new
    empty store would give every trial a second run."""
    database = missing_sqlite_store(tracking_uri)
    if database is not None:
        raise SweepError(
            results_dir,
            [
                f"{results_dir}: its MLflow store {database} is not on this machine (an S3 sweep without "
                "tracking_uri keeps it beside the driver that started it): resume it there, or copy the "
                "file to that path first"
            ],
        )


def _trainable(sweep: Sweep):
    from lop_ray.problems import PROBLEMS

    _keep_credentials_out_of_runtime_envs()

    module, name = PROBLEMS[sweep.problem].trainable.split(":")
    cls = getattr(importlib.import_module(module), name)
    resources = {"cpu": sweep.resources["cpu"], "gpu": sweep.resources["gpu"]}
    return tune.with_resources(cls, cls.resource_request(resources))


# Tune copies these from the driver's environment into each trainable's runtime env, which Ray's
# runtime-env agent then logs verbatim (session_*/logs/runtime_env_agent.log). Trial workers do not
# need the copy: on one machine they inherit the environment of the Ray the driver started, on a
# cluster each node has its own instance profile (clusters/). tests/test_security.py checks.
_AWS_CREDENTIALS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"}


def _keep_credentials_out_of_runtime_envs() -> None:
    from ray.tune.execution import class_cache  # private to Tune; Ray is pinned in requirements.txt

    class_cache.ENV_VARS_TO_PROPAGATE = set(class_cache.ENV_VARS_TO_PROPAGATE) - _AWS_CREDENTIALS


def _trial_name(trial) -> str:
    group = trial.config["trials"]
    name = trial_run_name(group[0])
    if len(group) > 1:
        name = name.rsplit(" seed=", 1)[0] + f" seeds={group[0]['seed']}-{group[-1]['seed']}"
    return name


def _trial_dirname(trial) -> str:
    group = trial.config["trials"]
    config = group[0]
    varying = "_".join(f"{k}={v}" for k, v in config["varying"].items())
    seeds = f"seed={config['seed']}" if len(group) == 1 else f"seeds={config['seed']}-{group[-1]['seed']}"
    parts = [config["label"], varying, seeds, trial.trial_id]
    return "_".join(p for p in parts if p).replace("/", "-")


def _connect_ray(quiet: bool = False) -> None:
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    level = logging.WARNING if quiet else logging.INFO  # quiet: no start-up chatter in job logs
    if address:
        ray.init(address=address, log_to_driver=True, logging_level=level)
    else:
        ray.init(include_dashboard=False, log_to_driver=True, logging_level=level)


def _announce(results_dir: Path | str, tracking_uri: str, sweep: Sweep, quiet: bool) -> None:
    if quiet:  # the summary at the end names the same paths
        return
    print(
        f"{sweep.name}: {trial_count(sweep)}\n"
        f"  results: {results_dir}\n  MLflow:  {tracking_uri}\n  UI:      {ui_command(tracking_uri)}",
        file=sys.stderr,
        flush=True,
    )


def _finish(
    sweep: Sweep, results_dir: Path | str, tracking: dict[str, Any], grid, quiet: bool
) -> SweepOutcome:
    release_shared_datasets()
    errors = len(grid.errors)
    client = MlflowClient(tracking["uri"])
    title = f"{sweep.name}: {sweep.problem}"
    records = report.load_trial_records(results_dir)
    figure, aggregates = report.headline_figure(
        records, sweep.problem, title, storage.driver_dir(results_dir)
    )
    if figure is not None:
        client.log_artifact(tracking["parent_run_id"], str(figure))
    client.set_terminated(tracking["parent_run_id"], status="FAILED" if errors else "FINISHED")
    console = Console(highlight=False)
    if aggregates:
        console.print(_summary_table(sweep, aggregates))
    if figure is not None:
        console.print(f"figure: {figure}")
    print(f"results: {results_dir}\nMLflow:  {tracking['uri']}\nUI:      {ui_command(tracking['uri'])}")
    if errors:
        console.print(
            f"[red]{errors} trial(s) failed[/]; fix the cause and run `lop-ray resume {results_dir}`"
        )
    return SweepOutcome(results_dir, tracking["uri"], tracking["parent_run_id"], errors, figure, aggregates)


def _summary_table(sweep: Sweep, aggregates: list[report.Aggregate]) -> Table:
    spec = report.HEADLINE[sweep.problem]
    table = Table(
        title=f"{sweep.name}: {spec['ylabel']} per {_bin_name(spec)}, "
        "first and last quarter of the run (mean ± SE over seeds)"
    )
    table.add_column("algorithm")
    table.add_column("seeds", justify="right")
    table.add_column("first quarter", justify="right")
    table.add_column("last quarter", justify="right")
    table.add_column("last / first", justify="right")
    for agg in aggregates:
        early, early_se = agg.window(0.25, late=False)
        late, late_se = agg.window(0.25, late=True)
        table.add_row(
            agg.line,
            str(agg.seeds),
            f"{early:.4g} ± {early_se:.2g}",
            f"{late:.4g} ± {late_se:.2g}",
            f"{late / early:.2f}",
        )
    return table


def _bin_name(spec: dict[str, Any]) -> str:
    return spec["xlabel"].removesuffix("s") if spec["bin_x"] == 1 else f"{spec['bin_x']:,} {spec['xlabel']}"
