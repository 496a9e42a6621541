"""Online permuted MNIST (spec/problems.md §2), one step of the trainable = one task.

Before training on a task, the network's hidden units are measured on the task's first
`probe_examples` examples (dead units, ranks); then every example is seen once at batch size 1, the
prediction scored before the update (online accuracy); at the task's end the weight magnitudes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn import functional as F

from lop_ray.data.permuted import PermutedTaskStream
from lop_ray.data.seeding import LEARNER, generator
from lop_ray.data.shards import ImageDataset
from lop_ray.experiments.learner import LearnerSettings, build_learner, learner_from_trial
from lop_ray.metrics import dead_units, layer_weight_sums, rank_summaries
from lop_ray.nets import MLP

RANK_METRICS = ("effective_rank", "approximate_rank", "abs_approximate_rank", "rank")


@dataclass(frozen=True)
class PermutedMNISTConfig:
    seed: int = 0
    hidden_units: int = 2000
    hidden_layers: int = 3
    activation: str = "relu"
    dropout: float = 0.0  # Extended Data Fig. 4: p = 0.1 (0.03 was best)
    online_norm: bool = False  # Extended Data Fig. 4: online normalisation of every hidden layer
    examples_per_task: int | None = None  # None: the whole dataset, once
    probe_examples: int = 2000
    learner: LearnerSettings = field(default_factory=lambda: LearnerSettings(step_size=0.003))


class PermutedMNISTExperiment:
    """One run; `run_step()` learns the next task and returns its metrics."""

    def __init__(
        self, config: PermutedMNISTConfig, dataset: ImageDataset, device: str | torch.device = "cpu"
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        self.stream = PermutedTaskStream(dataset, config.seed, config.examples_per_task, self.device)
        sizes = [self.stream.num_inputs, *[config.hidden_units] * config.hidden_layers, dataset.num_classes]
        # drawn on the CPU from a CPU generator, so the initial network does not depend on the device
        self.net = MLP(
            sizes,
            config.activation,
            generator=generator(config.seed, LEARNER, 0),
            dropout=config.dropout,
            online_norm=config.online_norm,
        ).to(self.device)
        self.generator = generator(config.seed, LEARNER, device=self.device)
        self.net.noise_generator = self.generator  # dropout masks: part of the learner's randomness
        self.learner, self.cbp = build_learner(self.net, config.learner, self.generator, F.cross_entropy)
        self.steps_done = 0

    def run_step(self) -> dict[str, float]:
        task = self.steps_done
        metrics = self._probe(task)
        correct, loss_sum, seen = 0, 0.0, 0
        learn = self.learner.learn
        for x, y in self.stream.examples(task):
            # predictions are scored once per chunk: per-example reductions would double the op count
            steps = [learn(xi, yi) for xi, yi in zip(x.split(1), y.split(1), strict=True)]
            losses, outputs = zip(*steps, strict=True)
            correct += int((torch.cat(outputs).argmax(dim=1) == y).sum())
            loss_sum += float(torch.stack(losses).sum())
            seen += len(y)
        self.steps_done += 1
        sums = layer_weight_sums(self.net)
        metrics.update(
            accuracy=correct / seen,
            loss=loss_sum / seen,
            tasks=float(self.steps_done),
            examples=float(self.steps_done * self.stream.examples_per_task),
            weight_magnitude=sum(sums) / sum(p.numel() for p in self._weights()),
            **{f"weight_sum_layer{i}": value for i, value in enumerate(sums)},
        )
        if self.cbp is not None:
            metrics["replaced_units"] = float(self.cbp.replaced_total)
        return metrics

    def _probe(self, task: int) -> dict[str, float]:
        """Dead units and ranks of each hidden layer on the new task's first examples, before training."""
        x, _ = self.stream.probe(task, self.config.probe_examples)
        self.net.eval()  # no dropout, no update of online normalisation's statistics
        with torch.no_grad():
            _, activations = self.net(x)
        self.net.train()
        return probe_metrics(activations)

    def _weights(self):
        return [layer.weight for layer in self.net.layers]

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps_done": self.steps_done,
            "learner": self.learner.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps_done = int(state["steps_done"])
        self.learner.load_state_dict(state["learner"])
        self.generator.set_state(state["generator"].cpu())


def probe_metrics(activations: list[torch.Tensor]) -> dict[str, float]:
    """Dead units and ranks of each hidden layer's (examples, units) activations, and their summaries."""
    metrics: dict[str, float] = {}
    total_dead = 0
    for index, h in enumerate(activations, start=1):
        dead = dead_units(h)
        total_dead += dead
        metrics[f"dead_units_hidden{index}"] = float(dead)
        for name, value in rank_summaries(h).items():
            metrics[f"{name}_hidden{index}"] = value
    hidden = sum(h.shape[1] for h in activations)
    metrics["dead_units_percent"] = 100.0 * total_dead / hidden
    for name in RANK_METRICS:  # the paper's figures show the mean over layers
        values = [metrics[f"{name}_hidden{i}"] for i in range(1, len(activations) + 1)]
        metrics[name] = sum(values) / len(values)
    return metrics


def config_from_trial(trial: dict[str, Any]) -> PermutedMNISTConfig:
    """The experiment config of one trial of a validated sweep (see `lop_ray.schema`)."""
    settings = trial["problem_settings"]
    network = trial["network"]
    return PermutedMNISTConfig(
        seed=int(trial["seed"]),
        hidden_units=network["hidden_units"],
        hidden_layers=network["hidden_layers"],
        activation=network["activation"],
        dropout=network["dropout"],
        online_norm=network["online_norm"],
        examples_per_task=settings["examples_per_task"],
        probe_examples=settings["probe_examples"],
        learner=learner_from_trial(trial),
    )
