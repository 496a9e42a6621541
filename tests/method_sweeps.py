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


def permuted_mnist_sweep(tmp_path: Path, name: str, entry: dict, network: dict | None = None) -> str:
    """A two-seed permuted-MNIST sweep file of one algorithm entry (the digits set: nothing to
    prepare), written to `tmp_path/NAME.yaml`; returns its path."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "problem": {"name": "permuted_mnist", "dataset": "digits"},
                "network": network or {"hidden_units": 10, "hidden_layers": 2},
                "seeds": [0, 1],
                "seeds_per_trial": 2,
                "num_tasks": 1,
                "algorithms": [entry],
                "storage": str(tmp_path / "results"),
            }
        )
    )
    return str(path)
