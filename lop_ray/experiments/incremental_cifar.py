"""Class-incremental CIFAR-100 (spec/problems.md §4): one step of the trainable = one epoch.

A run trains a ResNet-18 for `epochs_per_block` epochs on the classes seen so far, then adds the next
`classes_per_block` classes of the run's class order, until all classes are in. Within a block the
step size follows the paper's schedule and the state of the epoch with the best validation accuracy
is kept; at each block end it is restored, measured (dormant units, ranks, weights), and only then is
the network changed by the algorithm's reset (head resetting, retrained network), if any.

Randomness: the class order, every epoch's shuffles and augmentation parameters and the analysis
probes come from generators derived from the run seed and the epoch (lop_ray/data/seeding.py), so all
algorithms of a seed see the same data, and nothing about the stream needs checkpointing beyond the
epoch count. Initialisation, CBP, S&P and the resets draw from the learner's generator.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from lop_ray.algos import CBPConfig
from lop_ray.algos.optim import reset_optimizer_entries
from lop_ray.data.cifar_augment import augment, draw_augmentation, normalise
from lop_ray.data.seeding import LEARNER, STREAM, generator
from lop_ray.data.shards import ImageDataset
from lop_ray.experiments.learner import LearnerSettings, build_learner
from lop_ray.metrics import rank_summaries
from lop_ray.nets.resnet import CifarResNet18

ALGORITHMS = ("bp", "head_reset", "retrained_network", "snp", "cbp")
# the step size drops by `step_size_decay` at these fractions of a block (epochs 60, 120, 160 of 200)
MILESTONES = (0.3, 0.6, 0.8)
DORMANT_FRACTION = 0.01
_ORDER, _EPOCH, _PROBE, _CLASSES = 0, 1, 2, 3  # purposes of the stream's generators


@dataclass(frozen=True)
class IncrementalCifarConfig:
    seed: int = 0
    width: int = 64  # the ResNet's base width (the paper's 64; narrower for tests)
    classes_per_block: int = 5
    epochs_per_block: int = 200
    validation_per_class: int = 50  # the first images of each class in file order
    train_batch: int = 90
    test_batch: int = 100
    validation_batch: int = 50
    probe_examples: int = 1000
    step_size_decay: float = 0.2
    # head resetting / retrained network (spec/fidelity.md row 9): original keeps both
    reset_optimizer_state: bool = False
    reset_bn_stats: bool = False
    learner: LearnerSettings = field(
        default_factory=lambda: LearnerSettings(step_size=0.1, momentum=0.9, weight_decay=5e-4)
    )

    def __post_init__(self) -> None:
        if self.learner.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {self.learner.algorithm!r}; allowed: {list(ALGORITHMS)}")

    def step_size(self, epoch: int) -> float:
        """The step size of global epoch `epoch`: the schedule restarts every block."""
        within = epoch % self.epochs_per_block
        drops = sum(within >= round(f * self.epochs_per_block) for f in MILESTONES)
        return self.learner.step_size * self.step_size_decay**drops


class ClassSplit:
    """Which images belong to which class position: the run's class order, and per class the
    validation images (its first `validation_per_class` training images in file order), its other
    training images, and its test images. Labels are positions in the class order."""

    def __init__(self, train: ImageDataset, test: ImageDataset, seed: int, validation_per_class: int) -> None:
        num_classes = train.num_classes
        self.order = torch.randperm(num_classes, generator=generator(seed, STREAM, _ORDER))
        position = torch.empty(num_classes, dtype=torch.long)
        position[self.order] = torch.arange(num_classes)
        self.train_labels = position[torch.from_numpy(np.asarray(train.labels, dtype=np.int64).copy())]
        self.test_labels = position[torch.from_numpy(np.asarray(test.labels, dtype=np.int64).copy())]
        self.validation, self.train, self.all_train, self.test = [], [], [], []
        for j in range(num_classes):
            members = torch.nonzero(self.train_labels == j).reshape(-1)  # file order
            self.all_train.append(members)
            self.validation.append(members[:validation_per_class])
            self.train.append(members[validation_per_class:])
            self.test.append(torch.nonzero(self.test_labels == j).reshape(-1))

    @staticmethod
    def of(parts: list[torch.Tensor], classes: range | int) -> torch.Tensor:
        classes = range(classes) if isinstance(classes, int) else classes
        return torch.cat([parts[j] for j in classes]) if len(classes) else torch.zeros(0, dtype=torch.long)


class IncrementalCifarExperiment:
    """One run; `run_step()` trains one epoch and returns its metrics."""

    def __init__(
        self,
        config: IncrementalCifarConfig,
        train: ImageDataset,
        test: ImageDataset,
        device: str | torch.device = "cpu",
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        self.num_classes = train.num_classes
        self.split = ClassSplit(train, test, config.seed, config.validation_per_class)
        self.train_images = _read_only_tensor(train.images).to(self.device)
        self.test_images = _read_only_tensor(test.images).to(self.device)
        self.train_labels = self.split.train_labels.to(self.device)
        self.test_labels = self.split.test_labels.to(self.device)
        # drawn on the CPU from a CPU generator, so the initial network does not depend on the device
        self.net = CifarResNet18(self.num_classes, config.width, generator(config.seed, LEARNER, 0)).to(
            self.device
        )
        self.generator = generator(config.seed, LEARNER, device=self.device)
        self.learner, self.cbp = build_learner(self.net, config.learner, self.generator, self._loss)
        self.num_seen = min(config.classes_per_block, self.num_classes)
        self.steps_done = 0
        self._new_block()

    # --- the epoch ------------------------------------------------------------------------
    def _loss(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output[:, : self.num_seen], y)  # outputs of the classes seen so far

    def run_step(self) -> dict[str, float]:
        cfg = self.config
        epoch = self.steps_done
        metrics: dict[str, float] = {}
        if epoch == 0:  # the initial network, probed with the first block's classes
            metrics.update(self._analysis(0))
        step_size = cfg.step_size(epoch)
        for group in self.learner.optimizer.param_groups:
            group["lr"] = step_size
        stream = generator(cfg.seed, STREAM, _EPOCH, epoch)
        train_loss, train_accuracy = self._train_epoch(stream)
        validation_loss, validation_accuracy = self._evaluate(
            ClassSplit.of(self.split.validation, self.num_seen), cfg.validation_batch, None
        )
        test_loss, test_accuracy = self._evaluate(
            ClassSplit.of(self.split.test, self.num_seen), cfg.test_batch, stream
        )
        if validation_accuracy > self.best_validation:  # strictly better: early stopping's candidate
            self.best_validation = validation_accuracy
            self.best_state = copy.deepcopy(self.net.state_dict())
        self.best_test = max(self.best_test, test_accuracy)
        self.steps_done += 1
        metrics.update(
            epochs=float(self.steps_done),
            classes=float(self.num_seen),
            step_size=step_size,
            train_loss=train_loss,
            train_accuracy=train_accuracy,
            validation_loss=validation_loss,
            validation_accuracy=validation_accuracy,
            test_loss=test_loss,
            test_accuracy=test_accuracy,
        )
        if self.cbp is not None:
            metrics["replaced_units"] = float(self.cbp.replaced_total)
        if self.steps_done % cfg.epochs_per_block == 0:
            metrics.update(self._end_block())
        return metrics

    def _train_epoch(self, stream: torch.Generator) -> tuple[float, float]:
        indices = ClassSplit.of(self.split.train, self.num_seen)
        indices = indices[torch.randperm(len(indices), generator=stream)]
        self.net.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        for batch in indices.split(self.config.train_batch):
            params = draw_augmentation(len(batch), stream)
            batch = batch.to(self.device)
            x = augment(normalise(self.train_images[batch]), params)
            y = self.train_labels[batch]
            loss, output = self.learner.learn(x, y)
            loss_sum += loss * len(batch)
            correct += (output[:, : self.num_seen].argmax(dim=1) == y).sum()
        return float(loss_sum) / len(indices), float(correct) / len(indices)

    @torch.no_grad()
    def _evaluate(
        self, indices: torch.Tensor, batch_size: int, stream: torch.Generator | None
    ) -> tuple[float, float]:
        """Loss and accuracy in eval mode; with `stream`, shuffled and augmented (the test set, as the
        original), else as they are (validation)."""
        if stream is not None:
            indices = indices[torch.randperm(len(indices), generator=stream)]
        self.net.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        for batch in indices.split(batch_size):
            params = draw_augmentation(len(batch), stream) if stream is not None else None
            batch = batch.to(self.device)
            x = normalise(self.test_images[batch] if stream is not None else self.train_images[batch])
            y = (self.test_labels if stream is not None else self.train_labels)[batch]
            if params is not None:
                x = augment(x, params)
            output = self.net(x)[0][:, : self.num_seen]
            loss_sum += F.cross_entropy(output, y, reduction="sum")
            correct += (output.argmax(dim=1) == y).sum()
        self.net.train()
        return float(loss_sum) / max(len(indices), 1), float(correct) / max(len(indices), 1)

    @torch.no_grad()
    def _class_accuracies(self, stream: torch.Generator) -> dict[str, float]:
        """Test accuracy of each class, in presentation order (spec/metrics.md: at the end), the test
        pass as every epoch's: eval mode, augmented."""
        indices = ClassSplit.of(self.split.test, self.num_seen)
        indices = indices[torch.randperm(len(indices), generator=stream)]
        correct = torch.zeros(self.num_seen, device=self.device)
        self.net.eval()
        for batch in indices.split(self.config.test_batch):
            params = draw_augmentation(len(batch), stream)
            batch = batch.to(self.device)
            y = self.test_labels[batch]
            output = self.net(augment(normalise(self.test_images[batch]), params))[0][:, : self.num_seen]
            correct += torch.bincount(y[output.argmax(dim=1) == y], minlength=self.num_seen)
        self.net.train()
        counts = torch.bincount(self.test_labels[indices.to(self.device)], minlength=self.num_seen).clamp(
            min=1
        )
        return {f"test_accuracy_class{j:03d}": v for j, v in enumerate((correct / counts).tolist())}

    # --- block ends -----------------------------------------------------------------------
    def _new_block(self) -> None:
        self.best_validation = -1.0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_test = 0.0

    def _end_block(self) -> dict[str, float]:
        """Early-stopping restore, measurements, then the class increment and the algorithm's reset."""
        if self.best_state is not None:
            self.net.load_state_dict(self.best_state)
        metrics = {"block_test_accuracy": self.best_test, "block_validation_accuracy": self.best_validation}
        block = self.steps_done // self.config.epochs_per_block
        metrics.update(self._analysis(block))
        if self.num_seen == self.num_classes:  # the end: every class is in
            metrics.update(self._class_accuracies(generator(self.config.seed, STREAM, _CLASSES, block)))
        self._new_block()
        if self.num_seen < self.num_classes:
            self.num_seen = min(self.num_seen + self.config.classes_per_block, self.num_classes)
            self._reset_for_increment()
        return metrics

    def _reset_for_increment(self) -> None:
        algorithm = self.config.learner.algorithm
        optimizer = self.learner.optimizer
        if algorithm == "head_reset":
            self.net.reset_head(self.generator)
            if self.config.reset_optimizer_state:
                for param in self.net.fc.parameters():
                    reset_optimizer_entries(optimizer, param, (slice(None),))
        elif algorithm == "retrained_network":
            self.net.reinitialize(self.generator)
            if self.config.reset_bn_stats:
                self.net.reset_norm_statistics()
            if self.config.reset_optimizer_state:
                for param in self.net.parameters():
                    reset_optimizer_entries(optimizer, param, (slice(None),))

    def _analysis(self, block: int) -> dict[str, float]:
        """spec/metrics.md §CIFAR: on the classes about to be added (if any) and on all seen so far
        (after the first block), probed in train mode with BN's running statistics left untouched."""
        cfg = self.config
        seen = 0 if self.steps_done == 0 else self.num_seen
        new = range(seen, min(seen + cfg.classes_per_block, self.num_classes))
        metrics = {"weight_magnitude": weight_magnitude(self.net)}
        stream = generator(cfg.seed, STREAM, _PROBE, block)
        for suffix, classes in (("", new), ("_seen", range(seen))):
            if len(classes) == 0:
                continue
            features = self._probe(ClassSplit.of(self.split.all_train, classes), stream)
            ranks = rank_summaries(features[-1])
            metrics[f"dormant_units_percent{suffix}"] = 100.0 * dormant_fraction(features)
            metrics[f"stable_rank{suffix}"] = ranks["abs_approximate_rank"]
            metrics[f"effective_rank{suffix}"] = ranks["effective_rank"]
        return metrics

    @torch.no_grad()
    def _probe(self, candidates: torch.Tensor, stream: torch.Generator) -> list[torch.Tensor]:
        chosen = candidates[torch.randperm(len(candidates), generator=stream)[: self.config.probe_examples]]
        x = normalise(self.train_images[chosen.to(self.device)])
        buffers = {name: b.clone() for name, b in self.net.named_buffers()}
        self.net.train()  # BN on the probe's own statistics, as the original's analysis
        _, features = self.net(x)
        for name, saved in buffers.items():
            self.net.get_buffer(name).copy_(saved)
        return features

    # --- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "steps_done": self.steps_done,
            "num_seen": self.num_seen,
            "learner": self.learner.state_dict(),
            "generator": self.generator.get_state(),
            "best_validation": self.best_validation,
            "best_test": self.best_test,
            "best_state": self.best_state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps_done = int(state["steps_done"])
        self.num_seen = int(state["num_seen"])
        self.learner.load_state_dict(state["learner"])
        self.generator.set_state(state["generator"].cpu())
        self.best_validation = float(state["best_validation"])
        self.best_test = float(state["best_test"])
        best = state["best_state"]
        self.best_state = None if best is None else {k: v.to(self.device) for k, v in best.items()}


def _read_only_tensor(array: np.ndarray) -> torch.Tensor:
    """The images without a copy: arrays from the object store are read-only, and nothing here
    writes to them (torch warns about that possibility on every such conversion)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.as_tensor(array)


def dormant_fraction(features: list[torch.Tensor]) -> float:
    """Fraction of units that are dormant (spec/metrics.md): a channel non-zero on < 1 % of
    (examples × positions), a pooled unit non-zero on < 1 % of examples."""
    dormant, total = 0, 0
    for h in features:
        active = (h != 0).float()
        fraction = active.mean(dim=0) if h.dim() == 2 else active.mean(dim=(0, 2, 3))
        dormant += int((fraction < DORMANT_FRACTION).sum())
        total += fraction.numel()
    return dormant / total


def weight_magnitude(net: torch.nn.Module) -> float:
    """Σ|p| / Σ numel over every parameter (conv and fc weights and biases, BN γ and β)."""
    params = list(net.parameters())
    return float(sum(p.detach().abs().sum() for p in params)) / sum(p.numel() for p in params)


def config_from_trial(trial: dict[str, Any]) -> IncrementalCifarConfig:
    """The experiment config of one trial of a validated sweep (see `lop_ray.schema`)."""
    settings, network = trial["problem_settings"], trial["network"]
    hyper = dict(trial["hyperparameters"])
    resets = {k: hyper.pop(k) for k in ("reset_bn_stats",) if k in hyper}
    if trial["algorithm"] != "cbp" and "reset_optimizer_state" in hyper:
        resets["reset_optimizer_state"] = hyper.pop("reset_optimizer_state")
    step_size_decay = hyper.pop("step_size_decay")
    cbp = None
    if trial["algorithm"] == "cbp":
        keys = CBPConfig.__dataclass_fields__
        cbp = CBPConfig(**{k: hyper.pop(k) for k in list(hyper) if k in keys})
    return IncrementalCifarConfig(
        seed=int(trial["seed"]),
        width=network["width"],
        classes_per_block=settings["classes_per_block"],
        epochs_per_block=settings["epochs_per_block"],
        validation_per_class=settings["validation_per_class"],
        probe_examples=settings["probe_examples"],
        step_size_decay=step_size_decay,
        learner=LearnerSettings(algorithm=trial["algorithm"], optimizer="sgd", cbp=cbp, **hyper),
        **resets,
    )
