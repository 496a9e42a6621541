"""No credential ends up in what a sweep writes: fake AWS keys planted in the environment of a real
sweep (driver, Ray and its trial workers inherit it) must appear nowhere in the MLflow store (params,
tags, artifacts), the Tune results and checkpoints, Ray's logs, or the sweep's own output."""

from __future__ import annotations

import os
import secrets
import string
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from lop_ray.sweep_record import read_sweep_record
from tests.conftest import write_sweep
from tests.test_resume import LOP_RAY

SWEEP = """\
name: leak
problem: {{name: slowly_changing_regression, flip_after: 300, examples_per_step: 150}}
seeds: [0]
num_tasks: 1
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


def _fake_credentials() -> dict[str, str]:
    upper = string.ascii_uppercase + string.digits
    base64 = string.ascii_letters + string.digits + "/+"
    return {
        "AWS_ACCESS_KEY_ID": "AKIA" + "".join(secrets.choice(upper) for _ in range(16)),
        "AWS_SECRET_ACCESS_KEY": "".join(secrets.choice(base64) for _ in range(40)),
        "AWS_SESSION_TOKEN": "".join(secrets.choice(base64) for _ in range(120)),
    }


def _needles(credentials: dict[str, str]) -> dict[str, bytes]:
    """Each credential, and its first 16 characters (a value cut or wrapped in a log line)."""
    found = {}
    for name, value in credentials.items():
        found[name] = value.encode()
        found[f"{name} (first 16)"] = value[:16].encode()
    return found


def _scan(root: Path, needles: dict[str, bytes]) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            hits += [f"{path}: {name}" for name, needle in needles.items() if needle in data]
    return hits


@pytest.mark.slow
def test_planted_aws_keys_appear_in_nothing_a_sweep_writes(tmp_path, ray_tmp):
    credentials = _fake_credentials()
    needles = _needles(credentials)
    path = write_sweep(tmp_path / "leak.yaml", SWEEP.format(storage=tmp_path / "results"))
    sweep = subprocess.run(
        [LOP_RAY, "sweep", str(path), "--quiet"],
        capture_output=True,
        env={**os.environ, **credentials},  # ray_tmp: Ray's session and logs go under RAY_TMPDIR
        timeout=600,
    )
    assert sweep.returncode == 0, (sweep.stdout + sweep.stderr).decode()
    results = tmp_path / "results" / "leak"

    # the scan finds what it looks for (a control: the same bytes in a file of their own)
    control = tmp_path / "control"
    control.mkdir()
    (control / "env.txt").write_text(f"x={credentials['AWS_SESSION_TOKEN'][:20]}")
    assert _scan(control, needles) == [f"{control / 'env.txt'}: AWS_SESSION_TOKEN (first 16)"]

    output = sweep.stdout + sweep.stderr
    assert not [name for name, needle in needles.items() if needle in output]
    assert (results / "mlflow.db").exists() and list(results.glob("*/checkpoint_*/state.pt"))
    assert list(ray_tmp.rglob("session_*/logs/*")), "Ray's logs are not where the scan looks"
    assert _scan(results, needles) == []  # MLflow db + artifacts, Tune results, checkpoints
    assert _scan(ray_tmp, needles) == []  # Ray's logs (driver, raylet, GCS, trial workers)

    # and what MLflow serves: every param, tag and artifact of every run
    tracking = read_sweep_record(results).tracking
    client = MlflowClient(tracking["uri"])
    runs = client.search_runs([tracking["experiment_id"]])
    assert len(runs) == 3  # the sweep's run and one per trial
    for run in runs:
        text = repr(run.data.params) + repr(run.data.tags)
        assert not [name for name, needle in needles.items() if needle.decode() in text], run.info.run_name
        downloaded = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / run.info.run_id)))
        assert _scan(downloaded, needles) == []


def test_tune_does_not_copy_aws_keys_into_a_trials_runtime_env(tmp_path, monkeypatch):
    """What the sweep above depends on, checked fast: Tune's actor for a sweep's trainable carries no
    AWS key in its runtime env (Ray's runtime-env agent would log it)."""
    from ray.tune.execution.class_cache import _ActorClassCache

    from lop_ray.schema import load_sweep
    from lop_ray.sweep import _trainable

    for name, value in _fake_credentials().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(
        "AWS_ENDPOINT_URL", "http://127.0.0.1:9"
    )  # not a secret: still propagated if Tune does
    sweep = load_sweep(write_sweep(tmp_path / "leak.yaml", SWEEP.format(storage=tmp_path)))
    trainable = _trainable(sweep)
    actor = _ActorClassCache().get(trainable)
    env_vars = actor._default_options["runtime_env"]["env_vars"]
    assert not {k for k in env_vars if k.startswith("AWS_") and k != "AWS_ENDPOINT_URL"}, env_vars
