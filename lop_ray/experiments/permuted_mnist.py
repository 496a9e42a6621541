"""Online permuted MNIST (spec/problems.md §2), one step of the trainable = one task of every seed.

Before training on a task, the network's hidden units are measured on the task's first
`probe_examples` examples (dead units, ranks); then every example is seen once at batch size 1, the
prediction scored before the update (online accuracy); at the task's end the weight magnitudes.
Beside the paper's (`lop_ray.plasticity_metrics`): the gradient norm the task starts with, the
fraction of active units and the feature churn on (up to `PLASTICITY_PROBE` of) the same probe
examples, and the distance from the initial weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lop_ray.data.permuted import PermutedTaskStream
from lop_ray.data.shards import ImageDataset
from lop_ray.experiments.learner import LearnerSettings, build_learner, initial_mlp, learner_from_trial
from lop_ray.metrics import dead_units, rank_summaries
from lop_ray.nets.losses import per_seed_cross_entropy
from lop_ray.plasticity_metrics import PlasticityProbe

RANK_METRICS = ("effective_rank", "approximate_rank", "abs_approximate_rank", "rank")
PLASTICITY_PROBE = 500  # probe examples of the gradient norm and churn: a small share of a task's cost


@dataclass(frozen=True)
class PermutedMNISTConfig:
    seed: int = 0
    hidden_units: int = 2000
    hidden_layers: int = 3
    activation: str = "relu"
    dropout: float = 0.0  # Extended Data Fig. 4: p = 0.1 (0.03 was best)
    online_norm: bool = False  # Extended Data Fig. 4: online normalisation of every hidden layer
    layer_norm: bool = False  # layer normalisation of every hidden layer (Lyle et al. 2024)
    crelu: bool = False  # CReLU hidden units (Abbas et al. 2023)
    examples_per_task: int | None = None  # None: the whole dataset, once
    probe_examples: int = 2000
    learner: LearnerSettings = field(default_factory=lambda: LearnerSettings(step_size=0.003))


class PermutedMNISTExperiment:
    """S runs of online permuted MNIST (one configuration, seeds `seeds`; by default the config's
    one seed) in one `MLP`; `run_step()` learns every seed's next task and returns each seed's
    metrics. Seed s reads its own task stream (its own permutations and example orders) and starts
    from exactly its own network, so its metrics are what it gives alone, to float rounding (a
    batched matrix product is not the single-seed matrix-vector product, so the last bits may
    differ; tests/test_permuted_mnist.py)."""

    def __init__(
        self,
        config: PermutedMNISTConfig,
        dataset: ImageDataset,
        device: str | torch.device = "cpu",
        seeds: Sequence[int] | None = None,
        chunk: int = 1000,
    ) -> None:
        self.config = config
        self.seeds = [config.seed] if seeds is None else list(seeds)
        self.device = torch.device(device)
        self.chunk = chunk
        self.streams = PermutedTaskStream.for_seeds(
            dataset, self.seeds, config.examples_per_task, self.device
        )
        stream = self.streams[0]
        sizes = [stream.num_inputs, *[config.hidden_units] * config.hidden_layers, stream.num_classes]
        self.net = initial_mlp(
            sizes,
            config.activation,
            self.seeds,
            config.dropout,
            config.online_norm,
            config.layer_norm,
            config.crelu,
        ).to(self.device)
        self.learner, self.cbp = build_learner(
            self.net, config.learner, self.seeds, self.device, per_seed_cross_entropy
        )
        self.plasticity = PlasticityProbe(self.net, per_seed_cross_entropy, PLASTICITY_PROBE)
        self.steps_done = 0

    def run_step(self) -> list[dict[str, float]]:
        """Every seed learns its next task; metrics per seed, in the order of `seeds`."""
        task = self.steps_done
        metrics = self._probe(task)
        num_seeds = len(self.seeds)
        correct = torch.zeros(num_seeds, dtype=torch.long, device=self.device)
        loss_sum = torch.zeros(num_seeds, dtype=torch.float64, device=self.device)
        learn = self.learner.learn
        chunks = zip(*(stream.examples(task, self.chunk) for stream in self.streams), strict=True)
        for per_seed in chunks:
            # example-major (chunk, S, 1, pixels): one contiguous block per step
            x = torch.stack([chunk_x for chunk_x, _ in per_seed], dim=1).unsqueeze(2)
            y = torch.stack([chunk_y for _, chunk_y in per_seed], dim=1).unsqueeze(2)
            steps = [learn(xi, yi) for xi, yi in zip(x, y, strict=True)]
            losses = torch.stack([loss for loss, _ in steps])  # (chunk, S)
            outputs = torch.stack([output for _, output in steps])  # (chunk, S, 1, classes)
            correct += (outputs.argmax(dim=3) == y).sum(dim=(0, 2))
            loss_sum += losses.sum(dim=0, dtype=torch.float64)
        self.steps_done += 1
        seen = self.streams[0].examples_per_task
        count = self.net.weights_per_seed
        for s, (seed_metrics, sums) in enumerate(zip(metrics, self.net.weight_abs_sums(), strict=True)):
            seed_metrics.update(
                accuracy=int(correct[s]) / seen,
                loss=float(loss_sum[s]) / seen,
                tasks=float(self.steps_done),
                examples=float(self.steps_done * seen),
                weight_magnitude=sum(sums) / count,
                **{f"weight_sum_layer{i}": value for i, value in enumerate(sums)},
            )
            if self.cbp is not None:
                seed_metrics["replaced_units"] = float(self.cbp.replaced_total[s])
        for seed_metrics, plasticity in zip(metrics, self.plasticity.end_task(), strict=True):
            seed_metrics.update(plasticity)
        return metrics

    def _probe(self, task: int) -> list[dict[str, float]]:
        """Each seed's units measured on its own new task's first examples, before training (and the
        plasticity metrics' first half, on the first `PLASTICITY_PROBE` of them)."""
        probes = [stream.probe(task, self.config.probe_examples) for stream in self.streams]
        x = torch.stack([probe_x for probe_x, _ in probes])
        self.net.eval()  # no dropout, no update of online normalisation's statistics
        with torch.no_grad():
            _, activations = self.net(x)  # (S, examples, units) per layer
        self.net.train()
        y = torch.stack([probe_y for _, probe_y in probes]).to(x.device)
        self.plasticity.begin_task(x, y)
        return [probe_metrics([h[s] for h in activations]) for s in range(len(self.seeds))]

    def state_dict(self) -> dict[str, Any]:
        return {"steps_done": self.steps_done, "learner": self.learner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps_done = int(state["steps_done"])
        self.learner.load_state_dict(state["learner"])


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
        layer_norm=network.get("layer_norm", False),  # sweeps recorded before it: off
        crelu=network.get("crelu", False),
        examples_per_task=settings["examples_per_task"],
        probe_examples=settings["probe_examples"],
        learner=learner_from_trial(trial),
    )
