"""Live progress of a running sweep: a rich progress bar on a terminal, a status line every
`interval_s` seconds in logs (`ray job submit`, CI), nothing with `quiet`."""

from __future__ import annotations

import time
from collections import Counter

from ray.tune import Callback
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class SweepProgress(Callback):
    def __init__(
        self, total_trials: int, steps_per_trial: int, quiet: bool = False, interval_s: float = 30.0
    ):
        self.total_steps = total_trials * steps_per_trial
        self.total_trials = total_trials
        self.quiet = quiet
        self.interval_s = interval_s
        self.console: Console | None = None
        self._progress: Progress | None = None
        self._task = None
        self._last_line = 0.0

    def __getstate__(self) -> dict:
        # Tune pickles its callbacks with the experiment state; consoles and live displays stay here
        return {**self.__dict__, "console": None, "_progress": None, "_task": None}

    def setup(self, **info) -> None:
        self.console = Console(stderr=True, highlight=False)
        if self.quiet or not self.console.is_terminal:
            return
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("steps"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self._task = self._progress.add_task("sweep", total=self.total_steps)
        self._progress.start()

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        done = sum(int(t.last_result.get("step_index", -1)) + 1 for t in trials if t.last_result)
        states = Counter(t.status for t in trials)
        status = (
            f"{states.get('PENDING', 0)} pending, {states.get('RUNNING', 0)} running, "
            f"{states.get('TERMINATED', 0)} done, {states.get('ERROR', 0)} errored"
        )
        if self._progress is not None:
            self._progress.update(self._task, completed=done, description=status)
        elif not self.quiet and time.monotonic() - self._last_line > self.interval_s:
            self._last_line = time.monotonic()
            percent = 100.0 * done / max(self.total_steps, 1)
            self.console.print(
                f"[sweep] {done}/{self.total_steps} steps ({percent:.0f}%), {status}", highlight=False
            )

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        if not self.quiet:
            self.console.print(
                f"[sweep] trial {trial} errored; it is retried from its last checkpoint", highlight=False
            )

    def on_experiment_end(self, trials: list, **info) -> None:
        if self._progress is not None:
            self.on_step_end(0, trials)
            self._progress.stop()
            self._progress = None
