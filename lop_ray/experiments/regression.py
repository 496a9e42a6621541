"""Slowly-changing regression, one step of the trainable = `examples_per_step` online examples."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from lop_ray.data.regression import RegressionSettings, RegressionStream
from lop_ray.data.seeding import LEARNER, generator
from lop_ray.experiments.learner import LearnerSettings, build_learner, learner_from_trial
from lop_ray.metrics import weight_magnitude
from lop_ray.nets import MLP


@dataclass(frozen=True)
class RegressionConfig:
    seed: int = 0
    activation: str = "relu"
    hidden_units: int = 5  # 0: the linear learner (20 → 1)
    examples_per_step: int = 10_000
    problem: RegressionSettings = field(default_factory=RegressionSettings)
    learner: LearnerSettings = field(default_factory=LearnerSettings)


class RegressionExperiment:
    """One run of slowly-changing regression; `run_step()` advances it and returns the step's metrics."""

    def __init__(self, config: RegressionConfig, device: str | torch.device = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        self.stream = RegressionStream(config.problem, config.seed)
        self.generator = generator(config.seed, LEARNER, device=self.device)
        sizes = [config.problem.num_inputs]
        if config.hidden_units:
            sizes.append(config.hidden_units)
        sizes.append(1)
        # the net is initialised on the CPU from a CPU generator so the draw is device-independent
        init_gen = generator(config.seed, LEARNER, 0)
        self.net = MLP(sizes, config.activation, generator=init_gen).to(self.device)
        self.learner, self.cbp = build_learner(
            self.net, config.learner, self.generator, torch.nn.functional.mse_loss
        )
        self.steps_done = 0

    def run_step(self) -> dict[str, float]:
        """Learn online on the next `examples_per_step` examples; return their mean squared error."""
        x, y = self.stream.take(self.config.examples_per_step)
        x, y = x.to(self.device), y.to(self.device)
        learn = self.learner.learn
        errors = [learn(xi, yi)[0] for xi, yi in zip(x.split(1), y.split(1), strict=True)]
        self.steps_done += 1
        metrics = {
            "squared_error": torch.stack(errors).mean().item(),
            "examples": float(self.stream.position),
            "weight_magnitude": weight_magnitude(self.net),
        }
        if self.cbp is not None:
            metrics["replaced_units"] = float(self.cbp.replaced_total)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps_done": self.steps_done,
            "learner": self.learner.state_dict(),
            "stream": self.stream.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps_done = int(state["steps_done"])
        self.learner.load_state_dict(state["learner"])
        self.stream.load_state_dict(state["stream"])
        self.generator.set_state(state["generator"].cpu())  # RNG states are CPU byte tensors


def config_from_trial(trial: dict[str, Any]) -> RegressionConfig:
    """The experiment config of one trial of a validated sweep (see `lop_ray.schema`)."""
    problem = dict(trial["problem_settings"])
    examples_per_step = problem.pop("examples_per_step") or problem["flip_after"]
    return RegressionConfig(
        seed=int(trial["seed"]),
        activation=trial["network"]["activation"],
        hidden_units=trial["network"]["hidden_units"],
        examples_per_step=examples_per_step,
        problem=RegressionSettings(**problem),
        learner=learner_from_trial(trial),
    )
