"""Online permuted MNIST for S seeds at once (issue 6): one `SeedBatchedMLP`, one trainable step =
one task of every seed. Seed s reads its own task stream (`PermutedTaskStream` with its seed: its own
permutations and example orders) and starts from exactly its single-seed network, so its metrics
are what it gives alone, to float rounding (a batched matrix product is not the single-seed
matrix-vector product, so the last bits may differ; tests/test_seed_batched_permuted_mnist.py).

Dropout and online normalisation are not seed-batched; those configurations run seed by seed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F

from lop_ray.data.permuted import PermutedTaskStream
from lop_ray.data.shards import ImageDataset
from lop_ray.experiments.permuted_mnist import PermutedMNISTConfig, probe_metrics
from lop_ray.experiments.seed_batched_learner import build_seed_batched_learner, initial_network


def seed_batchable(config: PermutedMNISTConfig) -> bool:
    """Whether a configuration's network has a seed-batched form."""
    return config.dropout == 0 and not config.online_norm


class SeedBatchedPermutedMNISTExperiment:
    def __init__(
        self,
        config: PermutedMNISTConfig,
        seeds: list[int],
        dataset: ImageDataset,
        device: str | torch.device = "cpu",
        chunk: int = 1000,
    ) -> None:
        if not seed_batchable(config):
            raise ValueError("dropout and online normalisation run one seed per experiment")
        self.config = config
        self.seeds = list(seeds)
        self.device = torch.device(device)
        self.chunk = chunk
        self.streams = PermutedTaskStream.for_seeds(
            dataset, self.seeds, config.examples_per_task, self.device
        )
        stream = self.streams[0]
        sizes = [stream.num_inputs, *[config.hidden_units] * config.hidden_layers, stream.num_classes]
        self.net = initial_network(sizes, config.activation, self.seeds).to(self.device)
        self.learner, self.cbp = build_seed_batched_learner(
            self.net, config.learner, self.seeds, self.device, F.cross_entropy
        )
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
        return metrics

    def _probe(self, task: int) -> list[dict[str, float]]:
        """Each seed's units measured on its own new task's first examples, before training."""
        probes = [stream.probe(task, self.config.probe_examples)[0] for stream in self.streams]
        with torch.no_grad():
            _, activations = self.net(torch.stack(probes))  # (S, examples, units) per layer
        return [probe_metrics([h[s] for h in activations]) for s in range(len(self.seeds))]

    def state_dict(self) -> dict[str, Any]:
        return {"steps_done": self.steps_done, "learner": self.learner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps_done = int(state["steps_done"])
        self.learner.load_state_dict(state["learner"])
