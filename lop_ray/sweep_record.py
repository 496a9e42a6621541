"""`lop_ray_sweep.json`: what a results directory says about its sweep (the validated document, the
file it came from, and its MLflow ids), so that `resume` and `report` need nothing but the directory."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lop_ray import storage
from lop_ray.schema import Sweep, SweepError, validate_sweep

SWEEP_FILE = "lop_ray_sweep.json"


@dataclass(frozen=True)
class SweepRecord:
    sweep: Sweep
    tracking: dict[str, Any]  # uri, experiment_id, parent_run_id, git_commit


def write_sweep_record(results_dir: str | Path, sweep: Sweep, tracking: dict[str, Any]) -> None:
    """`results_dir`: a local directory or an s3:// URI (lop_ray/storage.py)."""
    document = {"sweep_file": sweep.path, "document": sweep.document, "tracking": tracking}
    storage.write_text(results_dir, SWEEP_FILE, json.dumps(document, indent=2))


def read_sweep_record(results_dir: str | Path) -> SweepRecord:
    try:
        results_dir = storage.normalize(results_dir)
        text = storage.read_text(results_dir, SWEEP_FILE)
    except (storage.StorageError, OSError) as error:
        raise SweepError(
            str(results_dir), [f"{results_dir}: cannot read the sweep's record: {error}"]
        ) from None
    if text is None:
        raise SweepError(
            str(results_dir),
            [f"{results_dir}: no {SWEEP_FILE} here: not a lop-ray sweep's results directory"],
        )
    meta = json.loads(text)
    return SweepRecord(validate_sweep(meta["document"], meta["sweep_file"]), meta["tracking"])
