"""Several single-seed experiments behind the seed-batched interface, stepped one after another.

A Tune trial may carry several seeds (`seeds_per_trial`); a configuration with no seed-batched form
(e.g. dropout) still runs them, one by one, with the same per-seed results and MLflow runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class SeedLoop:
    def __init__(self, experiments: Sequence[Any]) -> None:
        self.experiments = list(experiments)

    @property
    def steps_done(self) -> int:
        return self.experiments[0].steps_done

    def run_step(self) -> list[dict[str, float]]:
        return [experiment.run_step() for experiment in self.experiments]

    def state_dict(self) -> dict[str, Any]:
        return {"seeds": [experiment.state_dict() for experiment in self.experiments]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for experiment, saved in zip(self.experiments, state["seeds"], strict=True):
            experiment.load_state_dict(saved)
