"""Continual ImageNet (spec/problems.md §3) for S seeds of one configuration; one step of the
trainable = one binary task of every seed.

At the start of every task (task 0 too) the output layer's weights and bias are set to 0 — momentum is
kept, as in the original; the linear baseline is reset altogether (its only layer zeroed and its
optimizer state dropped). Then `epochs_per_task` epochs over the task's 1,200 training images,
reshuffled every epoch, mini-batches of 100, SGD (momentum 0.9 in the paper) with the algorithm's
interventions after every step. Reported per task and seed: the test accuracy after the last epoch
(what the figures plot), the last epoch's train accuracy (mean of its online mini-batch accuracies),
losses, the first epoch's train accuracy, and the mean weight magnitude. Beside the paper's
(`lop_ray.plasticity_metrics`), on the task's test images (up to `PLASTICITY_PROBE`): the gradient
norm the task starts with (output layer just zeroed), the fraction of active units and the feature
churn, and the distance from the initial weights.

The S seeds train in one network whose parameters hold all of them (`lop_ray.nets.conv_net`). Seed s
keeps everything it has alone: its class order and epoch shuffles (`ClassPairTasks` with its seed),
its initial network (drawn from (seed, LEARNER, 0)), its interventions' draws (`build_learner`). All
seeds are at the same task, so the output layer is zeroed for all at once. Nothing in a step mixes
seeds, so seed s's metrics do not depend on which seeds share its batch (tests/test_continual_imagenet.py).

Per-batch scores stay on the device and are read once per task, for every seed in one transfer: a
`.item()` per batch would make the GPU wait for the CPU at every step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lop_ray.algos.backprop import per_seed_cross_entropy
from lop_ray.data.class_pairs import ClassPairTasks
from lop_ray.data.seeding import LEARNER, generator
from lop_ray.data.shards import ImageDataset
from lop_ray.experiments.learner import LearnerSettings, build_learner, learner_from_trial
from lop_ray.nets.conv_net import NETWORKS
from lop_ray.plasticity_metrics import PlasticityProbe

NUM_OUTPUTS = 2
PLASTICITY_PROBE = 200  # the task's test images (100 per class in the paper; first class first)


@dataclass(frozen=True)
class ContinualImageNetConfig:
    """One configuration; the seeds it runs on are the experiment's."""

    network: str = "conv_net"  # or "linear": the 3072 → 2 baseline, reset every task
    epochs_per_task: int = 250
    batch_size: int = 100
    train_images_per_class: int | None = None  # None: all 600 (the paper); fewer for quick runs
    layer_norm: bool = False  # the conv net's hidden pre-activations normalised (Lyle et al. 2024)
    crelu: bool = False  # the conv net's hidden units CReLUs (Abbas et al. 2023)
    learner: LearnerSettings = field(default_factory=lambda: LearnerSettings(step_size=0.01, momentum=0.9))


class ContinualImageNetExperiment:
    """S seeds of one configuration; `run_step()` learns every seed's next task and returns one
    metrics dict per seed, in the order of `seeds`."""

    def __init__(
        self,
        config: ContinualImageNetConfig,
        seeds: Sequence[int],
        train: ImageDataset,
        test: ImageDataset,
        device: str | torch.device = "cpu",
    ) -> None:
        if config.network not in NETWORKS:
            raise ValueError(f"unknown network {config.network!r}; allowed: {sorted(NETWORKS)}")
        if not seeds:
            raise ValueError("an experiment needs at least one seed")
        options = {"layer_norm": config.layer_norm, "crelu": config.crelu}
        if any(options.values()) and config.network != "conv_net":
            raise ValueError(f"layer_norm and crelu are options of the conv net, not of {config.network!r}")
        self.config = config
        self.seeds = [int(seed) for seed in seeds]
        self.device = torch.device(device)
        self.tasks = [ClassPairTasks(train, test, seed, config.train_images_per_class) for seed in self.seeds]
        # drawn on the CPU from CPU generators, so the initial network does not depend on the device
        generators = [generator(seed, LEARNER, 0) for seed in self.seeds]
        options = options if config.network == "conv_net" else {}
        self.net = NETWORKS[config.network](NUM_OUTPUTS, generators=generators, **options).to(self.device)
        self.learner, self.cbp = build_learner(
            self.net, config.learner, self.seeds, self.device, per_seed_cross_entropy
        )
        self.plasticity = PlasticityProbe(self.net, per_seed_cross_entropy, PLASTICITY_PROBE)
        self._seed_rows = torch.arange(len(self.seeds), device=self.device).unsqueeze(1)
        self.steps_done = 0

    def run_step(self) -> list[dict[str, float]]:
        task = self.steps_done
        self._start_task()
        x, y, x_test, y_test = self._task(task)
        self.plasticity.begin_task(x_test, y_test)
        shuffles = [tasks.epoch_orders(task) for tasks in self.tasks]
        epochs, batch, size = self.config.epochs_per_task, self.config.batch_size, y.shape[1]
        batches = -(-size // batch)
        seeds = len(self.seeds)
        accuracy = torch.zeros(epochs, seeds, device=self.device)  # sums of mini-batch accuracies
        loss = torch.zeros(epochs, seeds, device=self.device)
        learn, rows = self.learner.learn, self._seed_rows
        # every epoch's reshuffle of every seed, (epochs, S, N), sent in one copy: a copy per epoch
        # would make the host wait for the device's queue each time
        orders = torch.stack(
            [torch.stack([torch.randperm(size, generator=g) for _ in range(epochs)]) for g in shuffles], dim=1
        ).to(self.device)
        for epoch, order in enumerate(orders):
            for start in range(0, size, batch):
                index = order[:, start : start + batch]
                xb, yb = x[rows, index], y[rows, index]  # (S, batch, 3, 32, 32), (S, batch)
                batch_loss, output = learn(xb, yb)
                accuracy[epoch] += (output.argmax(dim=2) == yb).float().mean(dim=1)
                loss[epoch] += batch_loss
        with torch.no_grad():
            output, _ = self.net(x_test)
            test_loss = per_seed_cross_entropy(output, y_test)
            test_accuracy = (output.argmax(dim=2) == y_test).float().mean(dim=1)
            weight_sums = torch.stack(
                [w.of().reshape(seeds, -1).abs().sum(dim=1) for w in self.net.weights()]
            )
        self.steps_done += 1
        accuracy, loss = accuracy / batches, loss / batches
        scores = torch.stack([test_accuracy, test_loss, accuracy[-1], loss[-1], accuracy[0], *weight_sums])
        read = scores.cpu().tolist()  # the task's one read from the device, every seed
        weight_count = sum(w.of()[0].numel() for w in self.net.weights())
        replaced = self.cbp.replaced_total.tolist() if self.cbp is not None else None
        metrics = []
        for s in range(seeds):
            seed_metrics = {
                "test_accuracy": read[0][s],
                "test_loss": read[1][s],
                "train_accuracy": read[2][s],
                "train_loss": read[3][s],
                "first_epoch_train_accuracy": read[4][s],
                "tasks": float(self.steps_done),
                "weight_magnitude": sum(layer[s] for layer in read[5:]) / weight_count,
            }
            if replaced is not None:
                seed_metrics["replaced_units"] = float(replaced[s])
            metrics.append(seed_metrics)
        for seed_metrics, plasticity in zip(metrics, self.plasticity.end_task(), strict=True):
            seed_metrics.update(plasticity)
        return metrics

    def _task(self, task: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every seed's task `task`, seed first: images (S, N, 3, 32, 32), labels (S, N)."""
        per_seed = [tasks.task(task, self.device) for tasks in self.tasks]
        return tuple(torch.stack(parts) for parts in zip(*per_seed, strict=True))  # type: ignore[return-value]

    @torch.no_grad()
    def _start_task(self) -> None:
        output = self.net.output
        output.weight.zero_()
        output.bias.zero_()
        if self.config.network == "linear":  # the baseline starts every task afresh: no momentum either
            self.learner.optimizer.state.clear()

    def state_dict(self) -> dict[str, Any]:
        # the stream needs nothing but the task count; every generator is the learner's
        return {
            "seeds": list(self.seeds),
            "steps_done": self.steps_done,
            "learner": self.learner.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["seeds"]) != self.seeds:
            raise ValueError(
                f"checkpoint holds seeds {list(state['seeds'])}, this experiment runs {self.seeds}"
            )
        self.steps_done = int(state["steps_done"])
        self.learner.load_state_dict(state["learner"])


def config_from_trial(trial: dict[str, Any]) -> ContinualImageNetConfig:
    """The experiment config of one trial of a validated sweep (see `lop_ray.schema`); its seed is
    given to the experiment with those of the trials batched with it."""
    settings = trial["problem_settings"]
    return ContinualImageNetConfig(
        network=trial["network"]["architecture"],
        epochs_per_task=settings["epochs_per_task"],
        batch_size=settings["batch_size"],
        train_images_per_class=settings["train_images_per_class"],
        layer_norm=trial["network"].get("layer_norm", False),
        crelu=trial["network"].get("crelu", False),
        learner=learner_from_trial(trial),
    )
