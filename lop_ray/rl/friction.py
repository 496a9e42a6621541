"""Slippery Ant's friction schedule (spec/problems.md §5).

Run seed s uses row s of `data/slippery_ant_frictions.csv` (the original's `cfg/frictions`: 100 rows
× 50 log-uniform values in [0.02, 2]). The friction starts at row[0]; at the first episode end after
more than `change_every` env steps since the last change, it moves to the next value.

MuJoCo uses the *larger* friction of two touching geoms, and Ant's legs are at 1.0, so lowering the
floor alone would change nothing: like the original (which edits the default geom class of ant.xml),
every geom's friction is set to `f 0.5 0.5`. The schedule is part of the checkpoint (the original
restarted it on resume, spec/fidelity.md row 10).
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import numpy as np

CHANGE_EVERY = 2_000_000


@functools.cache
def friction_rows() -> np.ndarray:
    """The 100 × 50 friction table shipped with the package."""
    with resources.files("lop_ray.rl").joinpath("data/slippery_ant_frictions.csv").open() as handle:
        return np.loadtxt(handle, delimiter=",", dtype=np.float64)


def set_friction(model, friction: float) -> None:
    """Every geom's (sliding, torsional, rolling) friction to (f, 0.5, 0.5)."""
    model.geom_friction[:, 0] = friction
    model.geom_friction[:, 1:] = 0.5


class FrictionSchedule:
    """One env's position in its friction row."""

    def __init__(self, seed: int, change_every: int = CHANGE_EVERY) -> None:
        rows = friction_rows()
        if not 0 <= seed < len(rows):
            raise ValueError(
                f"Slippery Ant run seed {seed} has no friction row: the table has rows 0-{len(rows) - 1} "
                "(run seed s uses row s)"
            )
        self.values = rows[seed]
        self.change_every = change_every
        self.index = 0
        self.last_change = 0

    @property
    def friction(self) -> float:
        return float(self.values[self.index])

    def episode_ended(self, global_step: int) -> bool:
        """Called at each episode end; True when the friction moved to the next value."""
        if global_step - self.last_change > self.change_every and self.index + 1 < len(self.values):
            self.index += 1
            self.last_change = global_step
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"index": self.index, "last_change": self.last_change}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.index = int(state["index"])
        self.last_change = int(state["last_change"])
