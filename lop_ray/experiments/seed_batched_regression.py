"""Slowly-changing regression for S seeds at once: one `SeedBatchedMLP`, one step advances every
seed by `examples_per_step` examples. Seed s sees exactly its own stream (`RegressionStream(…, s)`)
and starts from exactly its single-seed network; see `SeedBatchedMLP` for why this is fast."""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F

from lop_ray.data.regression import RegressionStream
from lop_ray.experiments.regression import RegressionConfig
from lop_ray.experiments.seed_batched_learner import build_seed_batched_learner, initial_network


class SeedBatchedRegressionExperiment:
    def __init__(
        self, config: RegressionConfig, seeds: list[int], device: str | torch.device = "cpu"
    ) -> None:
        settings = config.learner
        self.config = config
        self.seeds = list(seeds)
        self.device = torch.device(device)
        self.streams = [RegressionStream(config.problem, seed) for seed in self.seeds]
        sizes = [config.problem.num_inputs, *([config.hidden_units] if config.hidden_units else []), 1]
        self.net = initial_network(sizes, config.activation, self.seeds).to(self.device)
        self.learner, self.cbp = build_seed_batched_learner(
            self.net, settings, self.seeds, self.device, F.mse_loss
        )
        self.steps_done = 0

    def run_step(self) -> list[dict[str, float]]:
        """Every seed learns online on its next `examples_per_step` examples; metrics per seed."""
        n = self.config.examples_per_step
        taken = [stream.take(n) for stream in self.streams]
        # example-major, (n, S, 1, features): each example of every seed is one contiguous block, so
        # the per-step kernels read dense memory instead of S rows strided by n
        x = torch.stack([t[0] for t in taken], dim=1).unsqueeze(2).to(self.device)
        y = torch.stack([t[1] for t in taken], dim=1).unsqueeze(2).to(self.device)
        learn = self.learner.learn
        losses = [learn(xi, yi)[0] for xi, yi in zip(x, y, strict=True)]
        self.steps_done += 1
        # per seed, each reduction over one contiguous row: the same sums whatever S is
        errors = [row.mean().item() for row in torch.stack(losses, dim=1)]
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
        return metrics

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
