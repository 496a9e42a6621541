"""Continual ImageNet (spec/problems.md §3), one step of the trainable = one binary task.

At the start of every task (task 0 too) the output layer's weights and bias are set to 0 — momentum is
kept, as in the original; the linear baseline is reset altogether (its only layer zeroed and its
optimizer state dropped). Then `epochs_per_task` epochs over the task's 1,200 training images,
reshuffled every epoch, mini-batches of 100, SGD (momentum 0.9 in the paper) with the algorithm's
interventions after every step. Reported per task: the test accuracy after the last epoch (what the
figures plot), the last epoch's train accuracy (mean of its online mini-batch accuracies), losses,
the first epoch's train accuracy, and the mean weight magnitude.

Per-batch scores stay on the device and are read once per task: a `.item()` per batch would make the
GPU wait for the CPU at every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn import functional as F

from lop_ray.data.class_pairs import ClassPairTasks
from lop_ray.data.seeding import LEARNER, generator
from lop_ray.data.shards import ImageDataset
from lop_ray.experiments.learner import LearnerSettings, build_learner, learner_from_trial
from lop_ray.nets.conv_net import NETWORKS

NUM_OUTPUTS = 2


@dataclass(frozen=True)
class ContinualImageNetConfig:
    seed: int = 0
    network: str = "conv_net"  # or "linear": the 3072 → 2 baseline, reset every task
    epochs_per_task: int = 250
    batch_size: int = 100
    train_images_per_class: int | None = None  # None: all 600 (the paper); fewer for quick runs
    learner: LearnerSettings = field(default_factory=lambda: LearnerSettings(step_size=0.01, momentum=0.9))


class ContinualImageNetExperiment:
    """One run; `run_step()` learns the next task and returns its metrics."""

    def __init__(
        self,
        config: ContinualImageNetConfig,
        train: ImageDataset,
        test: ImageDataset,
        device: str | torch.device = "cpu",
    ) -> None:
        if config.network not in NETWORKS:
            raise ValueError(f"unknown network {config.network!r}; allowed: {sorted(NETWORKS)}")
        self.config = config
        self.device = torch.device(device)
        self.tasks = ClassPairTasks(train, test, config.seed, config.train_images_per_class)
        # drawn on the CPU from a CPU generator, so the initial network does not depend on the device
        self.net = NETWORKS[config.network](NUM_OUTPUTS, generator=generator(config.seed, LEARNER, 0))
        self.net.to(self.device)
        self.generator = generator(config.seed, LEARNER, device=self.device)
        self.learner, self.cbp = build_learner(self.net, config.learner, self.generator, F.cross_entropy)
        self.steps_done = 0

    def run_step(self) -> dict[str, float]:
        task = self.steps_done
        self._start_task()
        x, y, x_test, y_test = self.tasks.task(task, self.device)
        shuffles = self.tasks.epoch_orders(task)
        epochs, batch = self.config.epochs_per_task, self.config.batch_size
        batches = -(-len(y) // batch)
        accuracy = torch.zeros(epochs, device=self.device)  # sums of mini-batch accuracies per epoch
        loss = torch.zeros(epochs, device=self.device)
        learn = self.learner.learn
        for epoch in range(epochs):
            order = torch.randperm(len(y), generator=shuffles).to(self.device)
            for index in order.split(batch):
                xb, yb = x[index], y[index]
                batch_loss, output = learn(xb, yb)
                accuracy[epoch] += (output.argmax(dim=1) == yb).float().mean()
                loss[epoch] += batch_loss
        with torch.no_grad():
            output, _ = self.net(x_test)
            test_loss = F.cross_entropy(output, y_test)
            test_accuracy = (output.argmax(dim=1) == y_test).float().mean()
        self.steps_done += 1
        accuracy, loss = (accuracy / batches).tolist(), (loss / batches).tolist()
        weights = [m.weight for m in self.net.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
        metrics = {
            "test_accuracy": float(test_accuracy),
            "test_loss": float(test_loss),
            "train_accuracy": accuracy[-1],
            "train_loss": loss[-1],
            "first_epoch_train_accuracy": accuracy[0],
            "tasks": float(self.steps_done),
            "weight_magnitude": float(sum(w.detach().abs().sum() for w in weights))
            / sum(w.numel() for w in weights),
        }
        if self.cbp is not None:
            metrics["replaced_units"] = float(self.cbp.replaced_total)
        return metrics

    @torch.no_grad()
    def _start_task(self) -> None:
        output = self.net.output
        output.weight.zero_()
        output.bias.zero_()
        if self.config.network == "linear":  # the baseline starts every task afresh: no momentum either
            self.learner.optimizer.state.clear()

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


def config_from_trial(trial: dict[str, Any]) -> ContinualImageNetConfig:
    """The experiment config of one trial of a validated sweep (see `lop_ray.schema`)."""
    settings = trial["problem_settings"]
    return ContinualImageNetConfig(
        seed=int(trial["seed"]),
        network=trial["network"]["architecture"],
        epochs_per_task=settings["epochs_per_task"],
        batch_size=settings["batch_size"],
        train_images_per_class=settings["train_images_per_class"],
        learner=learner_from_trial(trial),
    )
