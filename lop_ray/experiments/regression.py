"""Slowly-changing regression, one step of the trainable = `examples_per_step` online examples of
every seed of the trial, all seeds in one `MLP` (see `lop_ray.nets.mlp` for why this is fast). On
the CPU the step is one compiled call through all of them (`compiled_regression`) wherever the
kernel has the configuration's network and algorithm; the PyTorch learner otherwise (`compiled:
False` forces it). Both keep their state in the same tensors.

Beside the paper's squared error, every step logs the plasticity metrics (`lop_ray.plasticity_metrics`)
on its first `PLASTICITY_PROBE` examples: gradient norm and active units before the step's learning,
feature churn over it, distance from the initial weights after it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lop_ray.data.regression import RegressionSettings, RegressionStream
from lop_ray.experiments.compiled_regression import CompiledRegression, unsupported
from lop_ray.experiments.learner import LearnerSettings, build_learner, initial_mlp, learner_from_trial
from lop_ray.nets.losses import per_seed_mse
from lop_ray.plasticity_metrics import PlasticityProbe

PLASTICITY_PROBE = 500  # the step's first examples, on which the plasticity metrics are measured


@dataclass(frozen=True)
class RegressionConfig:
    seed: int = 0
    activation: str = "relu"
    hidden_units: int = 5  # 0: the linear learner (20 → 1)
    layer_norm: bool = False  # layer normalisation of the hidden layer (Lyle et al. 2024)
    crelu: bool = False  # CReLU hidden units (Abbas et al. 2023)
    examples_per_step: int = 10_000
    compiled: bool = True  # the compiled path where it applies (see `compiled_regression.unsupported`)
    problem: RegressionSettings = field(default_factory=RegressionSettings)
    learner: LearnerSettings = field(default_factory=LearnerSettings)


class RegressionExperiment:
    """S runs of slowly-changing regression (one configuration, seeds `seeds`; by default the
    config's one seed); `run_step()` advances every seed by `examples_per_step` examples and
    returns each seed's metrics. Seed s sees exactly its own stream (`RegressionStream(…, s)`) and
    starts from exactly its own network, whichever seeds share its batch."""

    def __init__(
        self,
        config: RegressionConfig,
        seeds: Sequence[int] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        settings = config.learner
        self.config = config
        self.seeds = [config.seed] if seeds is None else list(seeds)
        self.device = torch.device(device)
        self.streams = [RegressionStream(config.problem, seed) for seed in self.seeds]
        sizes = [config.problem.num_inputs, *([config.hidden_units] if config.hidden_units else []), 1]
        self.net = initial_mlp(
            sizes, config.activation, self.seeds, layer_norm=config.layer_norm, crelu=config.crelu
        ).to(self.device)
        self.learner, self.cbp = build_learner(self.net, settings, self.seeds, self.device, per_seed_mse)
        self.plasticity = PlasticityProbe(self.net, per_seed_mse, PLASTICITY_PROBE)
        self.steps_done = 0
        self.compiled: CompiledRegression | None = None
        if config.compiled and unsupported(self.net, self.learner, self.device) is None:
            self.compiled = CompiledRegression(self.net, self.learner, self.streams)

    def run_step(self) -> list[dict[str, float]]:
        """Every seed learns online on its next `examples_per_step` examples; metrics per seed."""
        n = self.config.examples_per_step
        if self.compiled is not None:
            probe = [stream.peek(min(n, PLASTICITY_PROBE)) for stream in self.streams]
            self.plasticity.begin_task(torch.stack([p[0] for p in probe]), torch.stack([p[1] for p in probe]))
            errors = self.compiled.advance(n).tolist()
        else:
            errors = self._learn_with_torch(n)
        self.steps_done += 1
        count = self.net.weights_per_seed
        magnitude = [sum(sums) / count for sums in self.net.weight_abs_sums()]
        examples = float(self.streams[0].position)
        metrics = [
            {"squared_error": error, "examples": examples, "weight_magnitude": mag}
            for error, mag in zip(errors, magnitude, strict=True)
        ]
        if self.cbp is not None:
            for seed_metrics, replaced in zip(metrics, self.cbp.replaced_total.tolist(), strict=True):
                seed_metrics["replaced_units"] = float(replaced)
        for seed_metrics, plasticity in zip(metrics, self.plasticity.end_task(), strict=True):
            seed_metrics.update(plasticity)
        return metrics

    def _learn_with_torch(self, n: int) -> list[float]:
        taken = [stream.take(n) for stream in self.streams]
        # example-major, (n, S, 1, features): each example of every seed is one contiguous block, so
        # the per-step kernels read dense memory instead of S rows strided by n
        x = torch.stack([t[0] for t in taken], dim=1).unsqueeze(2).to(self.device)
        y = torch.stack([t[1] for t in taken], dim=1).unsqueeze(2).to(self.device)
        probe = slice(0, PLASTICITY_PROBE)  # (S, examples, …): the step's first examples, seed first
        self.plasticity.begin_task(x[probe, :, 0].transpose(0, 1), y[probe, :, 0].transpose(0, 1))
        learn = self.learner.learn
        losses = [learn(xi, yi)[0] for xi, yi in zip(x, y, strict=True)]
        # per seed, each reduction over one contiguous row: the same sums whatever S is
        return [row.mean().item() for row in torch.stack(losses, dim=1)]

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps_done": self.steps_done,
            "learner": self.learner.state_dict(),
            "streams": [stream.state_dict() for stream in self.streams],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps_done = int(state["steps_done"])
        self.learner.load_state_dict(state["learner"])
        for stream, saved in zip(self.streams, state["streams"], strict=True):
            stream.load_state_dict(saved)


def config_from_trial(trial: dict[str, Any]) -> RegressionConfig:
    """The experiment config of one trial of a validated sweep (see `lop_ray.schema`)."""
    problem = dict(trial["problem_settings"])
    examples_per_step = problem.pop("examples_per_step") or problem["flip_after"]
    return RegressionConfig(
        seed=int(trial["seed"]),
        activation=trial["network"]["activation"],
        hidden_units=trial["network"]["hidden_units"],
        layer_norm=trial["network"].get("layer_norm", False),  # sweeps recorded before it: off
        crelu=trial["network"].get("crelu", False),
        examples_per_step=examples_per_step,
        problem=RegressionSettings(**problem),
        learner=learner_from_trial(trial),
    )
