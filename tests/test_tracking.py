"""A Tune trial's seeds log each step together (`TrialRuns`). On the embedded sqlite store that is one
insert into MLflow's tables; these tests pin what it writes against MLflow's own `log_batch`, read
back through MLflow's public API: histories, latest values (the runs table, `search_runs`), NaN and
infinities, a key missing from some steps, and exactly-once logging across a restart."""

from __future__ import annotations

import math

import pytest
from mlflow.tracking import MlflowClient

from lop_ray.tracking import (
    STEP_METRIC,
    TrialRuns,
    TrialTracker,
    _log_whole_steps,
    _SqliteSteps,
    embedded_tracking_uri,
    ensure_experiment,
    start_sweep_run,
    trial_histories,
)


def _trial(index: int, seed: int) -> dict:
    return {
        "trial_index": index,
        "sweep": "tracking",
        "problem": "slowly_changing_regression",
        "algorithm": "bp",
        "label": "bp",
        "seed": seed,
        "fidelity": "corrected",
        "varying": {},
        "hyperparameters": {"step_size": 0.01},
    }


def _steps() -> list[list[dict[str, float]]]:
    """Three seeds × four steps, with the awkward values: NaN, ±inf, and `replaced` only on steps 1, 3."""
    steps = []
    for step in range(4):
        per_seed = []
        for seed in range(3):
            metrics = {"squared_error": 0.5 + step + seed / 10, "weight_magnitude": 1.0 / (step + 1)}
            if step % 2:
                metrics["replaced"] = float(step * seed)
            per_seed.append(metrics)
        steps.append(per_seed)
    steps[1][0]["squared_error"] = math.nan
    steps[2][1]["squared_error"] = math.inf
    steps[3][2]["weight_magnitude"] = -math.inf
    return steps


@pytest.fixture
def tracking(tmp_path):
    uri = embedded_tracking_uri(tmp_path)
    client = MlflowClient(uri)
    experiment_id = ensure_experiment(client, "tracking", (tmp_path / "mlartifacts").as_uri())
    parent = start_sweep_run(client, experiment_id, "tracking", "slowly_changing_regression", {})
    return {"uri": uri, "experiment_id": experiment_id, "parent_run_id": parent}


def _history(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    run = client.get_run(run_id)
    return {
        key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
        for key in sorted(run.data.metrics)
    }


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def test_one_transaction_per_step_reads_back_as_log_batch_writes_it(tracking):
    steps = _steps()
    trials = [_trial(i, seed) for i, seed in enumerate((0, 1, 2))]
    together = TrialRuns(tracking, trials, [None] * 3)
    assert together._sqlite is not None  # the embedded store takes the one-insert path
    alone = [TrialTracker(tracking, _trial(10 + i, seed), None) for i, seed in enumerate((0, 1, 2))]
    for step, per_seed in enumerate(steps):
        together.log_step(step, per_seed)
        if step == 1:
            together.flush()  # two transactions of two steps each
        for tracker, metrics in zip(alone, per_seed, strict=True):
            tracker.log_step(step, metrics)
    together.flush()

    client = MlflowClient(tracking["uri"])
    for bulk_id, tracker in zip(together.run_ids, alone, strict=True):
        bulk, reference = _history(client, bulk_id), _history(client, tracker.run_id)
        assert (
            bulk.keys() == reference.keys() == {"replaced", "squared_error", STEP_METRIC, "weight_magnitude"}
        )
        for key in bulk:
            assert [s for s, _ in bulk[key]] == [s for s, _ in reference[key]], key
            assert all(_same(a, b) for (_, a), (_, b) in zip(bulk[key], reference[key], strict=True)), key
        latest, expected = client.get_run(bulk_id).data.metrics, client.get_run(tracker.run_id).data.metrics
        assert latest.keys() == expected.keys()
        assert all(_same(latest[k], expected[k]) for k in latest)
        assert latest[STEP_METRIC] == 3
    # the report's one-query read of every history equals MLflow's per-run, per-key reads
    histories = trial_histories(tracking)
    assert sorted(histories) == [0, 1, 2, 10, 11, 12]
    for run_id, rows in histories.values():
        reference = _history(client, run_id)
        assert len(rows) == 4
        for key, points in reference.items():
            assert all(_same(rows[step][key], value) for step, value in points), key
        assert sum(len(row) for row in rows) == sum(len(points) for points in reference.values())
    # the runs table's filters see the latest values the same way
    found = client.search_runs([tracking["experiment_id"]], "metrics.weight_magnitude > 0")
    names = sorted(int(r.data.tags["lop_ray.trial_index"]) for r in found)
    assert names == [0, 1, 10, 11]  # seeds 0 and 1 end at 0.25, seed 2 at -inf
    found = client.search_runs([tracking["experiment_id"]], "metrics.replaced = 3")
    assert sorted(int(r.data.tags["lop_ray.trial_index"]) for r in found) == [1, 11]


def test_a_restarted_trial_logs_each_step_once_and_finishes_or_is_killed(tracking):
    steps = _steps()
    trials = [_trial(i, seed) for i, seed in enumerate((0, 1, 2))]
    first = TrialRuns(tracking, trials, [None] * 3)
    for step in range(3):
        first.log_step(step, steps[step])
    first.stop_early(num_steps=4)
    client = MlflowClient(tracking["uri"])
    assert [client.get_run(r).info.status for r in first.run_ids] == ["KILLED"] * 3

    # restored from a checkpoint of step 1: steps 1 and 2 are recomputed and not logged again
    again = TrialRuns(tracking, trials, first.run_ids)
    assert [client.get_run(r).info.status for r in again.run_ids] == ["RUNNING"] * 3
    for step in range(1, 4):
        again.log_step(step, steps[step])
    again.flush()
    history = client.get_metric_history(again.run_ids[0], STEP_METRIC)
    assert [m.step for m in history] == [0, 1, 2, 3]
    # a stale actor of the trial stopping after the run was completed does not mark it KILLED
    again.finish()
    stale = TrialRuns(tracking, trials, first.run_ids)
    stale.stop_early(num_steps=4)
    assert [client.get_run(r).info.status for r in again.run_ids] == ["FINISHED"] * 3


def test_a_tracking_server_is_written_through_log_batch():
    assert _SqliteSteps.of(MlflowClient("http://127.0.0.1:9")) is None  # nothing is contacted


def test_buffered_steps_reach_a_store_without_bulk_writes_in_calls_of_whole_steps(tracking):
    """Through `log_batch` (a tracking server's path): 1,200 metrics of 100 steps go in calls of at
    most 1,000 metrics, each ending with a step's STEP_METRIC, so no call leaves half a step."""
    from mlflow.entities import Metric

    client = MlflowClient(tracking["uri"])
    calls = []

    class Recording:
        def log_batch(self, run_id, metrics):
            calls.append([m.key for m in metrics])
            client.log_batch(run_id, metrics=metrics)

    run_id = TrialTracker(tracking, _trial(0, 0), None).run_id
    metrics = []
    for step in range(100):
        metrics += [Metric(f"m{i}", float(step + i), 0, step) for i in range(11)]
        metrics.append(Metric(STEP_METRIC, float(step), 0, step))
    _log_whole_steps(Recording(), run_id, metrics)
    assert [len(c) for c in calls] == [996, 204]
    assert all(c[-1] == STEP_METRIC for c in calls)
    assert [m.step for m in client.get_metric_history(run_id, STEP_METRIC)] == list(range(100))
    assert len(client.get_metric_history(run_id, "m10")) == 100


def test_a_trial_that_died_before_its_first_checkpoint_finds_its_runs_again(tracking):
    """No checkpoint names the runs yet: the restarted trial finds all its seeds' runs in one search
    (by the Tune trial's tag) and continues them; another Tune trial's runs are not taken."""
    trials = [_trial(i, seed) for i, seed in enumerate((0, 1, 2))]
    others = [_trial(3 + i, seed) for i, seed in enumerate((3, 4))]
    first, neighbour = TrialRuns(tracking, trials, [None] * 3), TrialRuns(tracking, others, [None] * 2)
    first.log_step(0, _steps()[0])
    first.flush()
    again = TrialRuns(tracking, trials, [None] * 3)
    assert again.run_ids == first.run_ids
    assert [t.last_step for t in again.trackers] == [0, 0, 0]
    assert set(again.run_ids).isdisjoint(neighbour.run_ids)
    client = MlflowClient(tracking["uri"])
    assert len(client.search_runs([tracking["experiment_id"]], "tags.`lop_ray.kind` = 'trial'")) == 5
