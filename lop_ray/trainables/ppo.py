"""PPO on MuJoCo on Ray Tune: one step = `iterations_per_step` PPO iterations of every seed the
trial carries (`seeds_per_trial`: one seed-batched learner, each seed with its own envs and MLflow run).

With `env_runners: N > 0` the trial reserves a placement group of its own bundle (the sweep's
`resources`, where the learner runs) plus N bundles of `runner_cpus` each, and starts one env runner
actor in each, which steps its share of the seeds' envs; with 0, the trial's own process steps the
envs (in `env_threads` threads). The learner's update uses every CPU the trial reserves (the runners
idle meanwhile: `learner_threads`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ray
import torch
from ray.tune import PlacementGroupFactory

from lop_ray.experiments.ppo import PPOExperiment, config_from_trial
from lop_ray.trainables.base import LopTrainable
from lop_ray.trainables.env_runners import RemoteRunners


def placement(resources: dict[str, float], settings: dict[str, Any]) -> PlacementGroupFactory:
    """The learner's bundle, then one bundle per env runner actor."""
    learner = {"CPU": resources["cpu"]}
    if resources.get("gpu"):
        learner["GPU"] = resources["gpu"]
    runners = [{"CPU": settings["runner_cpus"]}] * settings["env_runners"]
    return PlacementGroupFactory([learner, *runners])


def learner_threads(bundles: list[dict[str, float]]) -> int:
    """The learner's threads: every CPU of the trial, its runners' too. PPO is synchronous, so the
    runners wait while the learner updates and the learner waits while they collect; the cores the
    trial reserves are used by one phase at a time."""
    return max(1, round(sum(bundle.get("CPU", 0.0) for bundle in bundles)))


class PPOTrainable(LopTrainable):
    @classmethod
    def resource_request(cls, resources: dict[str, float]) -> Callable[[dict], PlacementGroupFactory]:
        return lambda config: placement(resources, config["trials"][0]["problem_settings"])

    def build_experiment(self, trials: list[dict[str, Any]], device: torch.device) -> PPOExperiment:
        if self.trial_resources is not None:
            torch.set_num_threads(learner_threads(self.trial_resources.bundles))
        config = config_from_trial(trials[0])  # the trial's seeds share one configuration
        seeds = [int(trial["seed"]) for trial in trials]
        settings = trials[0]["problem_settings"]
        runners = None
        if settings["env_runners"] > 0:
            runners = RemoteRunners(
                config.runner_specs(seeds),
                settings["runner_cpus"],
                ray.util.get_current_placement_group() if ray.is_initialized() else None,
            )
        return PPOExperiment(config, runners, device, seeds)

    def cleanup(self) -> None:
        if hasattr(self, "experiment"):  # setup may have failed before building it
            super().cleanup()
            self.experiment.close()  # ends the runner actors
