"""`lop_ray_sweep.json`: what a results directory says about its sweep (the validated document, the
file it came from, and its MLflow ids), so that `resume` and `report` need nothing but the directory."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lop_ray.schema import Sweep, SweepError, validate_sweep

SWEEP_FILE = "lop_ray_sweep.json"


@dataclass(frozen=True)
class SweepRecord:
    sweep: Sweep
    tracking: dict[str, Any]  # uri, experiment_id, parent_run_id, git_commit


def write_sweep_record(results_dir: Path, sweep: Sweep, tracking: dict[str, Any]) -> None:
    document = {"sweep_file": sweep.path, "document": sweep.document, "tracking": tracking}
    (results_dir / SWEEP_FILE).write_text(json.dumps(document, indent=2))


def read_sweep_record(results_dir: str | Path) -> SweepRecord:
    results_dir = Path(results_dir).expanduser().resolve()
    path = results_dir / SWEEP_FILE
    if not path.exists():
        raise SweepError(
            str(results_dir),
            [f"{results_dir}: no {SWEEP_FILE} here: not a lop-ray sweep's results directory"],
        )
    meta = json.loads(path.read_text())
    return SweepRecord(validate_sweep(meta["document"], meta["sweep_file"]), meta["tracking"])
