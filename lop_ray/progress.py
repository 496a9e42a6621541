"""Live progress of a running sweep: a rich progress bar on a terminal, a status line every
`interval_s` seconds and at the end in logs (`ray job submit`, CI), only trial errors with `quiet`.
Both say how many trials are pending, running, done and errored, how many steps of the sweep are
done, and when it should end."""

from __future__ import annotations

import os
import time
from collections import Counter
from datetime import timedelta

from ray.tune import Callback
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

# set by the driver for each run or resume: Tune restores its callbacks pickled with the sweep's
# state, so a resumed sweep would otherwise keep the quiet flag of the run that started it
QUIET_ENV = "LOP_RAY_QUIET"


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
        self._first: tuple[float, int] | None = None  # (time, steps done) when steps began to count

    def __getstate__(self) -> dict:
        # Tune pickles its callbacks with the experiment state; consoles and live displays stay here,
        # and so do clock readings, which mean nothing in the process that resumes the sweep
        return {
            **self.__dict__,
            "console": None,
            "_progress": None,
            "_task": None,
            "_first": None,
            "_last_line": 0.0,
        }

    def setup(self, **info) -> None:
        self.quiet = os.environ.get(QUIET_ENV, "1" if self.quiet else "0") == "1"
        self.console = Console(stderr=True, highlight=False)
        if self.quiet or not self.console.is_terminal:
            return
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("steps, ETA"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self._task = self._progress.add_task("sweep", total=self.total_steps)
        self._progress.start()

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        done, status = self._count(trials)
        if self._progress is not None:
            self._progress.update(self._task, completed=done, description=status)
        elif not self.quiet and time.monotonic() - self._last_line > self.interval_s:
            self._print_line(done, status)

    def _count(self, trials: list) -> tuple[int, str]:
        """Steps done over all Tune trials (a seed-batched trial's step is one step), and the trials by
        state."""
        done = sum(int(t.last_result.get("step_index", -1)) + 1 for t in trials if t.last_result)
        states = Counter(t.status for t in trials)
        status = (
            f"{states.get('PENDING', 0)} pending, {states.get('RUNNING', 0)} running, "
            f"{states.get('TERMINATED', 0)} done, {states.get('ERROR', 0)} errored"
        )
        now = time.monotonic()
        if self._first is None and done > 0:  # not from setup: Ray's start would skew the rate
            self._first = (now, done)
        return done, status

    def eta(self, done: int, now: float | None = None) -> str:
        """Time left at the rate since steps began to count; `?` until there is a rate."""
        if done >= self.total_steps:
            return "0:00:00"
        if self._first is None or done <= self._first[1]:
            return "?"
        now = time.monotonic() if now is None else now
        rate = (done - self._first[1]) / max(now - self._first[0], 1e-9)
        return str(timedelta(seconds=round((self.total_steps - done) / rate)))

    def _print_line(self, done: int, status: str) -> None:
        self._last_line = time.monotonic()
        percent = 100.0 * done / max(self.total_steps, 1)
        self.console.print(
            f"[sweep] {done}/{self.total_steps} steps ({percent:.0f}%), {status}, ETA {self.eta(done)}",
            highlight=False,
            markup=False,
            soft_wrap=True,  # one line in a log, however narrow the console
        )

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        """Shown even with `quiet`: an error is what a job log is read for."""
        self.console.print(
            f"[sweep] trial {trial} errored; it is retried from its last checkpoint",
            highlight=False,
            markup=False,
            soft_wrap=True,  # one line in a log, however narrow the console
        )

    def on_experiment_end(self, trials: list, **info) -> None:
        done, status = self._count(trials)
        if self._progress is not None:
            self._progress.update(self._task, completed=done, description=status)
            self._progress.stop()
            self._progress = None
        elif not self.quiet:
            self._print_line(done, status)
