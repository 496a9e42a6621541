"""Shared fixtures: isolated Ray temp dirs, quiet MLflow, and small sweep files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture
def ray_tmp(monkeypatch):
    """A short, private Ray temp dir (unix socket paths must stay under ~100 characters)."""
    path = tempfile.mkdtemp(prefix="lopray-", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", path)
    yield Path(path)


@pytest.fixture
def local_ray(ray_tmp):
    """A real local Ray with 2 CPUs, shut down after the test."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(ray_tmp))
    yield
    ray.shutdown()


def write_sweep(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


TINY_REGRESSION = """\
name: {name}
problem:
  name: slowly_changing_regression
  flip_after: 300
  examples_per_step: 150
network:
  activation: relu
seeds: [0, 1]
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
storage: {storage}
"""
