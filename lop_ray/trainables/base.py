"""The Trainable base: seeding, the checkpoint format, device choice and metric reporting.

A problem's trainable only says how to build its experiment (`build_experiment`); everything that
makes a trial resumable lives here, once:

checkpoint = `state.pt` in Tune's checkpoint directory, a dict with
  format           CHECKPOINT_FORMAT
  experiment       the experiment's state_dict (network, optimizer, learner and intervention state,
                   its generators, the stream position)
  global_rng       torch / numpy / python global RNG states (nothing should draw from them; kept so
                   that a stray draw cannot break bit-identical resume)
  mlflow_run_id    the trial's MLflow run, continued after a restore
  last_result      the last step's result, replayed if a finished trial is restored and stepped
plus `manifest.json` (its size and step count, see lop_ray/trial_checkpoints.py).
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray import tune

from lop_ray.tracking import TrialTracker, quiet_mlflow_environment
from lop_ray.trial_checkpoints import CHECKPOINT_FILE, write_manifest

CHECKPOINT_FORMAT = 1


class LopTrainable(tune.Trainable):
    """Class-API trainable: `step()` runs one step of the experiment (one task or one chunk)."""

    def build_experiment(self, trial: dict[str, Any], device: torch.device):
        """The pure-PyTorch experiment: `run_step() -> metrics`, `state_dict()`, `load_state_dict()`."""
        raise TypeError(f"{type(self).__name__} must define build_experiment")

    def setup(self, config: dict[str, Any]) -> None:
        quiet_mlflow_environment()
        # one INFO line per checkpoint per trial drowns the sweep's own progress in the driver's log
        logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
        self.trial_config = config["trial"]
        self.tracking = config["tracking"]
        cpus = int(self.trial_resources.required_resources.get("CPU", 1)) if self.trial_resources else 1
        torch.set_num_threads(max(1, cpus))
        use_gpu = ray.is_initialized() and bool(ray.get_gpu_ids()) and torch.cuda.is_available()
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.experiment = self.build_experiment(self.trial_config, self.device)
        self.num_steps = int(self.trial_config["num_steps"])
        self._run_id: str | None = None
        self._tracker: TrialTracker | None = None
        self.last_step_result: dict[str, Any] = {}

    @property
    def tracker(self) -> TrialTracker:
        # created on first use: a restored trial gets its run id from load_checkpoint, after setup
        if self._tracker is None:
            self._tracker = TrialTracker(self.tracking, self.trial_config, self._run_id)
            self._run_id = self._tracker.run_id
        return self._tracker

    def step(self) -> dict[str, Any]:
        if self.experiment.steps_done >= self.num_steps:
            # restored from its final checkpoint by a driver whose record predates it: nothing to run
            return {**self.last_step_result, "done": True}
        metrics = self.experiment.run_step()
        step_index = self.experiment.steps_done - 1
        tracker = self.tracker
        tracker.log_step(step_index, metrics)
        done = self.experiment.steps_done >= self.num_steps
        if done:
            tracker.finish("FINISHED")
        self.last_step_result = {**metrics, "step_index": step_index}
        return {**self.last_step_result, "done": done}

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        state = {
            "format": CHECKPOINT_FORMAT,
            "experiment": self.experiment.state_dict(),
            "global_rng": {
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),
                "python": random.getstate(),
            },
            "mlflow_run_id": self.tracker.run_id,
            "last_result": self.last_step_result,
        }
        path = Path(checkpoint_dir) / CHECKPOINT_FILE
        partial = path.with_suffix(".partial")
        torch.save(state, partial)
        os.replace(partial, path)
        write_manifest(checkpoint_dir, self.experiment.steps_done)

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        path = Path(checkpoint_dir) / CHECKPOINT_FILE
        state = torch.load(path, map_location=self.device, weights_only=False)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: checkpoint format {state.get('format')}, expected {CHECKPOINT_FORMAT}")
        self.experiment.load_state_dict(state["experiment"])
        torch.set_rng_state(state["global_rng"]["torch"].cpu())
        np.random.set_state(state["global_rng"]["numpy"])
        random.setstate(state["global_rng"]["python"])
        self._run_id = state["mlflow_run_id"]
        self._tracker = None
        self.last_step_result = state.get("last_result", {})
        # the checkpoint may be newer than the driver's record of it (lop_ray/trial_checkpoints.py)
        self._iteration = self.experiment.steps_done

    def cleanup(self) -> None:
        if self._tracker is not None and self.experiment.steps_done < self.num_steps:
            # stopped early (paused, errored, sweep interrupted): the run stays resumable
            self._tracker.client.set_terminated(self._tracker.run_id, status="KILLED")
