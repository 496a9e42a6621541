"""The Trainable base: seeding, the checkpoint format, device choice and metric reporting.

A problem's trainable only says how to build its experiment (`build_experiment`); everything that
makes a trial resumable lives here, once:

checkpoint = `state.pt` in Tune's checkpoint directory, a dict with
  format           CHECKPOINT_FORMAT
  experiment       the experiment's state_dict (network, optimizer, learner and intervention state,
                   its generators, the stream position)
  global_rng       torch / numpy / python global RNG states (nothing should draw from them; kept so
                   that a stray draw cannot break bit-identical resume)
  mlflow_run_ids   the MLflow run of each of the trial's seeds, continued after a restore
  last_result      the last step's result, replayed if a finished trial is restored and stepped
plus `manifest.json` (its size and step count, see lop_ray/trial_checkpoints.py).
"""

from __future__ import annotations

import gc
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray import tune

from lop_ray.tracking import TrialRuns, quiet_mlflow_environment
from lop_ray.trial_checkpoints import CHECKPOINT_FILE, write_manifest

CHECKPOINT_FORMAT = 3  # 3: every learner with a seed axis (issue 14)


class LopTrainable(tune.Trainable):
    """Class-API trainable: `step()` runs one step of the experiment (one task or one chunk).

    A Tune trial carries one or more of the sweep's trials, the same configuration on different
    seeds (`seeds_per_trial`), run together by one seed-batched experiment; each keeps its own
    MLflow run, so results read the same whichever way they were computed.
    """

    @classmethod
    def resource_request(cls, resources: dict[str, float]) -> Any:
        """What Tune reserves per trial (given to `tune.with_resources`): the sweep's `resources`
        (cpu, gpu); a trainable that starts actors of its own (PPO's env runners) reserves theirs too."""
        return resources

    def build_experiment(self, trials: list[dict[str, Any]], device: torch.device):
        """The pure-PyTorch experiment for `trials` (seeds of one configuration): `run_step()` returns
        the step's metrics (one trial) or a list of them (one per trial, in order), `steps_done`,
        `state_dict()`, `load_state_dict()`."""
        raise TypeError(f"{type(self).__name__} must define build_experiment")

    def setup(self, config: dict[str, Any]) -> None:
        quiet_mlflow_environment()
        # one INFO line per checkpoint per trial drowns the sweep's own progress in the driver's log
        logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
        self.trial_configs = config["trials"]
        self.tracking = config["tracking"]
        cpus = int(self.trial_resources.required_resources.get("CPU", 1)) if self.trial_resources else 1
        torch.set_num_threads(max(1, cpus))
        use_gpu = ray.is_initialized() and bool(ray.get_gpu_ids()) and torch.cuda.is_available()
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.experiment = self.build_experiment(self.trial_configs, self.device)
        # the trial's long-lived objects (torch's, numba's, the experiment's: ~350k) out of the
        # cyclic collector's sight: otherwise each full collection rescans them all (~0.2 s), which
        # at a few hundred µs per step of a small network is a visible share of a task
        gc.collect()
        gc.freeze()
        self.num_steps = int(self.trial_configs[0]["num_steps"])
        self._run_ids: list[str | None] = [None] * len(self.trial_configs)
        self._runs: TrialRuns | None = None
        self.last_step_result: dict[str, Any] = {}

    @property
    def runs(self) -> TrialRuns:
        # created on first use: a restored trial gets its run ids from load_checkpoint, after setup
        if self._runs is None:
            self._runs = TrialRuns(self.tracking, self.trial_configs, self._run_ids)
            self._run_ids = self._runs.run_ids
        return self._runs

    def step(self) -> dict[str, Any]:
        if self.experiment.steps_done >= self.num_steps:
            # restored from its final checkpoint by a driver whose record predates it: nothing to run
            return {**self.last_step_result, "done": True}
        results = self.experiment.run_step()
        per_trial = results if isinstance(results, list) else [results]
        step_index = self.experiment.steps_done - 1
        done = self.experiment.steps_done >= self.num_steps
        self.runs.log_step(step_index, per_trial)
        if done:
            self.runs.finish()
        # Tune's own record: the metrics themselves for one seed, their mean over the seeds otherwise
        summary = {key: sum(m[key] for m in per_trial) / len(per_trial) for key in per_trial[0]}
        self.last_step_result = {**summary, "step_index": step_index, "seeds": len(per_trial)}
        return {**self.last_step_result, "done": done}

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        if self._runs is not None:
            self._runs.flush()  # a checkpoint covers no step that MLflow lacks (lop_ray/tracking.py)
        state = {
            "format": CHECKPOINT_FORMAT,
            "experiment": self.experiment.state_dict(),
            "global_rng": {
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),
                "python": random.getstate(),
            },
            # a trial restored from its final checkpoint and saved again has not touched its runs
            "mlflow_run_ids": self._run_ids if None not in self._run_ids else self.runs.run_ids,
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
        self._run_ids = list(state["mlflow_run_ids"])
        self._runs = None
        self.last_step_result = state.get("last_result", {})
        # the checkpoint may be newer than the driver's record of it (lop_ray/trial_checkpoints.py)
        self._iteration = self.experiment.steps_done

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        """Take the next trial in this actor (`reuse_actors`): a new actor costs a process start
        and torch's, MLflow's and numba's imports, ~9 s on 2 cores, against a 100-seed regression
        trial's ~30 s. Nothing of the previous trial survives: its runs are ended as `cleanup`
        ends them, and the experiment, its generators and its MLflow runs are built afresh."""
        self.cleanup()
        gc.unfreeze()
        self.setup(new_config)
        return True

    def cleanup(self) -> None:
        if self._runs is not None and self.experiment.steps_done < self.num_steps:
            self._runs.stop_early(self.num_steps)
