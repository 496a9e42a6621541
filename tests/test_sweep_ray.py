"""A sweep through the whole real stack: a local Ray running several trials at once, the embedded
MLflow store, and the figure. Each trial's per-step metrics equal a plain loop over the experiment."""

from __future__ import annotations

import json

import torch
from mlflow.tracking import MlflowClient

from lop_ray.experiments.regression import RegressionExperiment, config_from_trial
from lop_ray.schema import load_sweep
from lop_ray.sweep import run_sweep
from lop_ray.tracking import trial_run_name
from tests.conftest import TINY_REGRESSION, write_sweep


def reference_metrics(trial: dict) -> list[dict[str, float]]:
    """What the trial must report: the experiment stepped in a plain loop, no Ray."""
    torch.set_num_threads(1)
    experiment = RegressionExperiment(config_from_trial(trial), [trial["seed"]])  # its seed alone
    return [experiment.run_step()[0] for _ in range(trial["num_steps"])]


def mlflow_runs(tracking_uri: str, sweep_name: str):
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(sweep_name)
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("lop_ray.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("lop_ray.kind") == "trial"]
    return client, parents, children


def assert_runs_match_reference(tracking_uri: str, sweep) -> None:
    """Exactly one MLflow run per trial, each step logged once, values equal to the plain loop."""
    client, parents, children = mlflow_runs(tracking_uri, sweep.name)
    assert len(parents) == 1
    parent = parents[0]
    assert len(children) == len(sweep.trials)
    by_name = {r.info.run_name: r for r in children}
    assert len(by_name) == len(children), "two runs share a name: a trial was logged twice"
    for trial in sweep.trials:
        run = by_name[trial_run_name(trial)]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["algorithm"] == trial["algorithm"]
        assert run.data.tags["seed"] == str(trial["seed"])
        assert run.data.tags["problem"] == "slowly_changing_regression"
        assert run.data.tags["sweep"] == sweep.name
        assert run.data.params["hyperparameters.step_size"] == str(trial["hyperparameters"]["step_size"])
        assert run.info.status == "FINISHED"
        expected = reference_metrics(trial)
        for key in ("squared_error", "examples", "weight_magnitude"):
            history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
            assert [m.step for m in history] == list(range(trial["num_steps"])), key
            # float32 → float64 in MLflow is exact, so the comparison is exact
            assert [m.value for m in history] == [row[key] for row in expected], key


def test_sweep_runs_trials_concurrently_and_logs_to_mlflow(tmp_path, local_ray):
    path = write_sweep(
        tmp_path / "tiny.yaml",
        TINY_REGRESSION.format(name="tiny", num_tasks=3, storage=tmp_path / "results"),
    )
    sweep = load_sweep(path)
    assert len(sweep.trials) == 4 and sweep.steps_per_trial == 6

    outcome = run_sweep(sweep, quiet=True)

    assert outcome.errors == 0
    assert_runs_match_reference(outcome.tracking_uri, sweep)
    client, parents, _ = mlflow_runs(outcome.tracking_uri, sweep.name)
    assert parents[0].info.status == "FINISHED"
    artifacts = [a.path for a in client.list_artifacts(parents[0].info.run_id)]
    assert "squared_error.png" in artifacts
    # Tune ran trials side by side: some trial started before another finished
    spans, processes = [], set()
    for trial_dir in outcome.results_dir.glob("*/result.json"):
        lines = trial_dir.read_text().splitlines()
        first, last = json.loads(lines[0]), json.loads(lines[-1])
        spans.append((first["timestamp"] - first["time_this_iter_s"], last["timestamp"]))
        processes.add(first["pid"])
    spans.sort()
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:], strict=False)), spans
    # and a finished trial's actor ran the next (`reuse_actors`: no new process to start and no
    # imports per trial), its results those of the plain loop all the same (checked above)
    assert len(processes) < len(spans), processes


def test_every_algorithm_of_a_seed_sees_the_same_stream(tmp_path):
    """The seeding rule: the data stream depends on the run seed alone, not on what the learner
    draws (CBP and S&P draw from their own generator)."""
    path = write_sweep(tmp_path / "s.yaml", TINY_REGRESSION.format(name="s", num_tasks=2, storage=tmp_path))
    trials = [t for t in load_sweep(path).trials if t["seed"] == 1]
    streams = []
    for trial in trials:
        experiment = RegressionExperiment(config_from_trial(trial))
        experiment.run_step()  # the learner draws; the stream must not notice
        streams.append(experiment.streams[0].take(450))
    assert len({t["algorithm"] for t in trials}) == 2
    for x, y in streams[1:]:
        assert torch.equal(x, streams[0][0]) and torch.equal(y, streams[0][1])


def test_resume_of_a_directory_without_a_sweep_is_rejected(tmp_path, capsys):
    from lop_ray.cli import main

    assert main(["resume", str(tmp_path)]) == 2
    assert "not a lop-ray sweep's results directory" in capsys.readouterr().err


DIGITS_SWEEP = """\
name: digits
problem:
  name: permuted_mnist
  dataset: digits
  data: {data}
  probe_examples: 100
network:
  hidden_units: 12
seeds: [0, 1]
seeds_per_trial: 2
num_tasks: 2
algorithms:
  - algorithm: bp
    step_size: 0.01
  - algorithm: cbp
    step_size: 0.01
    replacement_rate: 0.001
    maturity_threshold: 50
    accumulate: true
resources: {{cpu: 1}}
storage: {storage}
"""


def test_seed_batched_permuted_digits_sweep_from_prepared_shards_matches_a_plain_loop(tmp_path, local_ray):
    from lop_ray.cli import main
    from lop_ray.data.shards import load_dataset
    from lop_ray.experiments.permuted_mnist import PermutedMNISTExperiment
    from lop_ray.experiments.permuted_mnist import config_from_trial as permuted_config

    assert main(["data", "prepare", "digits", "--dest", str(tmp_path / "digits")]) == 0
    path = write_sweep(
        tmp_path / "d.yaml", DIGITS_SWEEP.format(data=tmp_path / "digits", storage=tmp_path / "results")
    )
    sweep = load_sweep(path)

    outcome = run_sweep(sweep, quiet=True)

    assert outcome.errors == 0
    assert len(list(outcome.results_dir.glob("*/params.json"))) == 2  # both seeds in one Tune trial
    client, parents, children = mlflow_runs(outcome.tracking_uri, sweep.name)
    assert len(children) == 4  # one MLflow run per seed
    dataset = load_dataset("digits", tmp_path / "digits")
    by_name = {r.info.run_name: r for r in children}
    torch.set_num_threads(1)
    for trial in sweep.trials:  # a seed alone gets what it gets in its batch
        experiment = PermutedMNISTExperiment(permuted_config(trial), dataset, seeds=[trial["seed"]])
        expected = [experiment.run_step()[0] for _ in range(2)]
        run = by_name[trial_run_name(trial)]
        for key in ("accuracy", "dead_units_percent", "effective_rank", "weight_magnitude"):
            history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
            assert [m.value for m in history] == [row[key] for row in expected], (trial["label"], key)
    artifacts = [a.path for a in client.list_artifacts(parents[0].info.run_id)]
    assert "accuracy.png" in artifacts
    assert main(["report", str(outcome.results_dir), "--export", str(tmp_path / "curves")]) == 0
    import pandas as pd

    curves = pd.read_csv(tmp_path / "curves" / "curves.csv")
    assert set(curves.metric) >= {"accuracy", "dead_units_percent", "effective_rank"}
    assert len(curves[curves.metric == "accuracy"]) == 4 * 2  # one bin per task


BATCHED_SWEEP = """\
name: batched
problem: {{name: slowly_changing_regression, flip_after: 300, examples_per_step: 150}}
seeds: [0, 1, 2]
seeds_per_trial: 2
num_tasks: 2
algorithms:
  - algorithm: bp
    step_size: 0.01
  - algorithm: snp
    optimizer: adam
    step_size: 0.001
    weight_decay: 1.0e-3
    perturb_scale: 1.0e-3
resources: {{cpu: 1}}
storage: {storage}
"""


def test_seed_batched_trials_log_one_mlflow_run_per_seed(tmp_path, local_ray):
    sweep = load_sweep(write_sweep(tmp_path / "b.yaml", BATCHED_SWEEP.format(storage=tmp_path / "results")))
    assert [[t["seed"] for t in group] for group in sweep.groups] == [[0, 1], [2], [0, 1], [2]]

    outcome = run_sweep(sweep, quiet=True)

    assert outcome.errors == 0
    assert len(list(outcome.results_dir.glob("*/params.json"))) == 4  # Tune trials: one per group
    assert_runs_match_reference(outcome.tracking_uri, sweep)  # and one MLflow run per seed
