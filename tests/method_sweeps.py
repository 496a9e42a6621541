"""A one-algorithm regression sweep file, written and loaded: how the method tests check that the
sweep schema takes a method's options and refuses bad ones, naming the key."""

from __future__ import annotations

from pathlib import Path

import yaml

from lop_ray.schema import Sweep, load_sweep


def regression_sweep(
    tmp_path: Path, algorithm: str, hidden_units: int = 5, network: dict | None = None, **options
) -> Sweep:
    sweep = {
        "name": algorithm,
        "problem": {"name": "slowly_changing_regression", "flip_after": 100},
        "network": {"hidden_units": hidden_units, **(network or {})},
        "seeds": [0],
        "num_tasks": 1,
        "algorithms": [{"algorithm": algorithm, "step_size": 0.01, **options}],
        "storage": str(tmp_path / "runs"),
    }
    path = tmp_path / f"{algorithm}.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return load_sweep(path)
