"""Class-incremental CIFAR-100 (spec/problems.md §4) for S seeds of one configuration at once: one
step of the trainable = one epoch of every seed.

A run trains a ResNet-18 for `epochs_per_block` epochs on the classes seen so far, then adds the next
`classes_per_block` classes of the run's class order, until all classes are in. Within a block the
step size follows the paper's schedule and the state of the epoch with the best validation accuracy
is kept; at each block end it is restored, measured (dormant units, ranks, weights), and only then is
the network changed by the algorithm's reset (head resetting, retrained network), if any. Every
epoch also logs the plasticity metrics beside the paper's (`lop_ray.plasticity_metrics`): gradient
norm and active units at its start, feature churn over it, distance from the initial weights at its
end, on up to `PLASTICITY_PROBE` validation images of the classes seen so far.

Seeds: one `CifarResNet18` holds every seed (grouped convolutions, `lop_ray.nets.resnet`), and each
step feeds seed s a batch of its own images, so everything that is a seed's own stays its own: its
class order, epoch shuffles and augmentation draws, its best epoch (a seed's best epoch restores
only its slice of the network), its resets. The schedule depends only on the epoch, the same for
all. Seeds must see equally many images per step, so S > 1 needs equally many images in every
class (CIFAR-100 has 500 + 100).

Randomness: the class order, every epoch's shuffles and augmentation parameters and the analysis
probes come from generators derived from the run seed and the epoch (lop_ray/data/seeding.py), so all
algorithms of a seed see the same data, and nothing about the stream needs checkpointing beyond the
epoch count. Initialisation and the resets draw from the seed's learner generator; CBP and S&P take
their draws as `build_learner` gives them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from lop_ray.algos.backprop import per_seed_cross_entropy
from lop_ray.algos.optim import reset_optimizer_entries
from lop_ray.data.cifar_augment import augment, draw_augmentation, normalise
from lop_ray.data.seeding import LEARNER, STREAM, generator
from lop_ray.data.shards import ImageDataset
from lop_ray.experiments.learner import METHODS, LearnerSettings, build_learner, learner_settings
from lop_ray.metrics import rank_summaries
from lop_ray.nets.resnet import CifarResNet18
from lop_ray.plasticity_metrics import PlasticityProbe

ALGORITHMS = (
    "bp",
    "head_reset",
    "retrained_network",
    "snp",
    "cbp",
    "l2_init",
    "layer_reset",
    "parseval",
    "upgd",
    "snr",
    "redo",
    "plasticity_injection",
)
# the step size drops by `step_size_decay` at these fractions of a block (epochs 60, 120, 160 of 200)
MILESTONES = (0.3, 0.6, 0.8)
DORMANT_FRACTION = 0.01
PLASTICITY_PROBE = 100  # validation images of the plasticity metrics, every epoch
_ORDER, _EPOCH, _PROBE, _CLASSES = 0, 1, 2, 3  # purposes of the stream's generators


@dataclass(frozen=True)
class IncrementalCifarConfig:
    """One configuration; the seeds it runs on are the experiment's."""

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
    """Which images belong to which class position for one seed: its class order, and per class the
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


Parts = Callable[[ClassSplit], list[torch.Tensor]]  # which images of a seed's split: train, test, …


class IncrementalCifarExperiment:
    """S runs of one configuration, one per seed; `run_step()` trains one epoch of every seed and
    returns each seed's metrics, in the order of `seeds`."""

    def __init__(
        self,
        config: IncrementalCifarConfig,
        seeds: Sequence[int],
        train: ImageDataset,
        test: ImageDataset,
        device: str | torch.device = "cpu",
    ) -> None:
        self.config = config
        self.seeds = [int(seed) for seed in seeds]
        if not self.seeds:
            raise ValueError("at least one seed is needed")
        if len(self.seeds) > 1:
            _check_balanced(train, "train")
            _check_balanced(test, "test")
        self.device = torch.device(device)
        self.num_classes = train.num_classes
        self.splits = [ClassSplit(train, test, seed, config.validation_per_class) for seed in self.seeds]
        self.train_images = _read_only_tensor(train.images).to(self.device)
        self.test_images = _read_only_tensor(test.images).to(self.device)
        # (S, N): each seed's label (class position) of every image
        self.train_labels = torch.stack([s.train_labels for s in self.splits]).to(self.device)
        self.test_labels = torch.stack([s.test_labels for s in self.splits]).to(self.device)
        # drawn on the CPU from CPU generators, so the initial network does not depend on the device
        initial = [generator(seed, LEARNER, 0) for seed in self.seeds]
        self.net = CifarResNet18(self.num_classes, config.width, initial).to(self.device)
        self.groups = self.net.unit_groups()
        self.state_views = self.net.seed_state_views()
        # the head and network resets draw from these
        self.generators = [generator(seed, LEARNER, device=self.device) for seed in self.seeds]
        self.learner, self.cbp = build_learner(self.net, config.learner, self.seeds, self.device, self._loss)
        self.plasticity = PlasticityProbe(self.net, self._loss, PLASTICITY_PROBE)
        self.num_seen = min(config.classes_per_block, self.num_classes)
        self.steps_done = 0
        self._new_block()

    @property
    def num_seeds(self) -> int:
        return len(self.seeds)

    # --- the epoch ------------------------------------------------------------------------
    def _loss(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return per_seed_cross_entropy(output[..., : self.num_seen], y)  # the classes seen so far

    def run_step(self) -> list[dict[str, float]]:
        cfg = self.config
        epoch = self.steps_done
        metrics: list[dict[str, float]] = [{} for _ in self.seeds]
        if epoch == 0:  # the initial network, probed with the first block's classes
            _merge(metrics, self._analysis(0))
        step_size = cfg.step_size(epoch)
        for group in self.learner.optimizer.param_groups:
            group["lr"] = step_size
        streams = [generator(seed, STREAM, _EPOCH, epoch) for seed in self.seeds]
        self._begin_plasticity()
        train_loss, train_accuracy = self._train_epoch(streams)
        _merge(metrics, self.plasticity.end_task())
        validation_loss, validation_accuracy = self._evaluate(
            lambda split: split.validation, cfg.validation_batch, None
        )
        test_loss, test_accuracy = self._evaluate(lambda split: split.test, cfg.test_batch, streams)
        for s, accuracy in enumerate(validation_accuracy):
            if accuracy > self.best_validation[s]:  # strictly better: early stopping's candidate
                self.best_validation[s] = accuracy
                self._keep_best(s)
            self.best_test[s] = max(self.best_test[s], test_accuracy[s])
        self.steps_done += 1
        replaced = self.cbp.replaced_total.tolist() if self.cbp is not None else None
        for s, row in enumerate(metrics):
            row.update(
                epochs=float(self.steps_done),
                classes=float(self.num_seen),
                step_size=step_size,
                train_loss=train_loss[s],
                train_accuracy=train_accuracy[s],
                validation_loss=validation_loss[s],
                validation_accuracy=validation_accuracy[s],
                test_loss=test_loss[s],
                test_accuracy=test_accuracy[s],
            )
            if replaced is not None:
                row["replaced_units"] = float(replaced[s])
        if self.steps_done % cfg.epochs_per_block == 0:
            _merge(metrics, self._end_block())
        return metrics

    def _begin_plasticity(self) -> None:
        """The plasticity metrics' probe: up to `PLASTICITY_PROBE` validation images of the classes
        seen so far, evenly spread over them (the validation images are class by class)."""
        indices = self._indices(lambda split: split.validation)
        stride = max(1, indices.shape[1] // PLASTICITY_PROBE)
        chosen = indices[:, ::stride][:, :PLASTICITY_PROBE]
        x = self._batch(self.train_images, chosen, None)
        self.plasticity.begin_task(x, self.train_labels.gather(1, chosen.to(self.device)))

    def _indices(self, parts: Parts, classes: range | int | None = None) -> torch.Tensor:
        """(S, n): each seed's images of `parts` of `classes` (default: those seen so far)."""
        classes = self.num_seen if classes is None else classes
        rows = [ClassSplit.of(parts(split), classes) for split in self.splits]
        if len({len(row) for row in rows}) > 1:
            raise ValueError(f"seeds hold {[len(r) for r in rows]} images: a step needs as many of each")
        return torch.stack(rows)

    def _batch(
        self,
        images: torch.Tensor,
        indices: torch.Tensor,
        streams: Sequence[torch.Generator] | None,
    ) -> torch.Tensor:
        """(S, b, 3, 32, 32) normalised images of each seed's (S, b) `indices`; with `streams`,
        each seed's images augmented by parameters from its own stream."""
        seeds, size = indices.shape
        x = normalise(images[indices.reshape(-1).to(self.device)])
        if streams is not None:
            drawn = [draw_augmentation(size, stream) for stream in streams]
            x = augment(x, {key: torch.cat([d[key] for d in drawn]) for key in drawn[0]})
        return x.view(seeds, size, *x.shape[1:])

    @staticmethod
    def _shuffled(indices: torch.Tensor, streams: Sequence[torch.Generator]) -> torch.Tensor:
        size = indices.shape[1]
        orders = [torch.randperm(size, generator=stream) for stream in streams]
        return indices.gather(1, torch.stack(orders))

    def _train_epoch(self, streams: Sequence[torch.Generator]) -> tuple[list[float], list[float]]:
        indices = self._shuffled(self._indices(lambda split: split.train), streams)
        count = indices.shape[1]
        self.net.train()
        loss_sum = torch.zeros(self.num_seeds, device=self.device)
        correct = torch.zeros(self.num_seeds, device=self.device, dtype=torch.long)
        for batch in indices.split(self.config.train_batch, dim=1):
            x = self._batch(self.train_images, batch, streams)
            y = self.train_labels.gather(1, batch.to(self.device))
            loss, output = self.learner.learn(x, y)
            loss_sum += loss * batch.shape[1]
            correct += (output[..., : self.num_seen].argmax(dim=2) == y).sum(dim=1)
        return _per_seed(loss_sum, count), _per_seed(correct, count)

    @torch.no_grad()
    def _evaluate(
        self, parts: Parts, batch_size: int, streams: Sequence[torch.Generator] | None
    ) -> tuple[list[float], list[float]]:
        """Each seed's loss and accuracy in eval mode; with `streams`, shuffled and augmented (the
        test set, as the original), else as they are (validation, from the training images)."""
        indices = self._indices(parts)
        if streams is not None:
            indices = self._shuffled(indices, streams)
        images, labels = (
            (self.test_images, self.test_labels)
            if streams is not None
            else (self.train_images, self.train_labels)
        )
        count = indices.shape[1]
        self.net.eval()
        loss_sum = torch.zeros(self.num_seeds, device=self.device)
        correct = torch.zeros(self.num_seeds, device=self.device, dtype=torch.long)
        for batch in indices.split(batch_size, dim=1):
            y = labels.gather(1, batch.to(self.device))
            output = self.net(self._batch(images, batch, streams))[0][..., : self.num_seen]
            losses = F.cross_entropy(output.reshape(-1, self.num_seen), y.reshape(-1), reduction="none")
            loss_sum += losses.view(y.shape).sum(dim=1)
            correct += (output.argmax(dim=2) == y).sum(dim=1)
        self.net.train()
        return _per_seed(loss_sum, count), _per_seed(correct, count)

    @torch.no_grad()
    def _class_accuracies(self, block: int) -> list[dict[str, float]]:
        """Each seed's test accuracy of each class, in its presentation order (spec/metrics.md: at
        the end), the test pass as every epoch's: eval mode, augmented."""
        streams = [generator(seed, STREAM, _CLASSES, block) for seed in self.seeds]
        indices = self._shuffled(self._indices(lambda split: split.test), streams)
        correct = torch.zeros(self.num_seeds, self.num_seen, device=self.device)
        self.net.eval()
        for batch in indices.split(self.config.test_batch, dim=1):
            y = self.test_labels.gather(1, batch.to(self.device))
            output = self.net(self._batch(self.test_images, batch, streams))[0][..., : self.num_seen]
            correct.scatter_add_(1, y, (output.argmax(dim=2) == y).to(correct.dtype))
        self.net.train()
        labels = self.test_labels.gather(1, indices.to(self.device))
        counts = torch.zeros_like(correct).scatter_add_(
            1, labels, torch.ones_like(labels, dtype=correct.dtype)
        )
        accuracies = (correct / counts.clamp(min=1)).tolist()
        return [{f"test_accuracy_class{j:03d}": v for j, v in enumerate(row)} for row in accuracies]

    # --- block ends -----------------------------------------------------------------------
    def _new_block(self) -> None:
        self.best_validation = [-1.0] * self.num_seeds
        self.best_test = [0.0] * self.num_seeds
        self.has_best = [False] * self.num_seeds
        self.best_state: dict[str, torch.Tensor] | None = None

    def _keep_best(self, seed: int) -> None:
        """Seed `seed`'s slice of every per-seed tensor (parameters, BN statistics) as its candidate;
        the other seeds' candidates stay as they are."""
        self.has_best[seed] = True
        if self.best_state is None:
            self.best_state = {name: view.of().clone() for name, view in self.state_views.items()}
            return
        for name, view in self.state_views.items():
            self.best_state[name][seed].copy_(view.of()[seed])

    @torch.no_grad()
    def _restore_best(self) -> None:
        """Every seed back to its own best epoch of the block (what the single-seed run restores:
        the network's parameters and BN statistics; the optimizer's momentum stays)."""
        if self.best_state is None:
            return
        for name, view in self.state_views.items():
            for seed in range(self.num_seeds):
                if self.has_best[seed]:
                    view.of()[seed].copy_(self.best_state[name][seed])

    def _end_block(self) -> list[dict[str, float]]:
        """Early-stopping restore, measurements, then the class increment and the algorithm's reset."""
        self._restore_best()
        metrics = [
            {"block_test_accuracy": test, "block_validation_accuracy": validation}
            for test, validation in zip(self.best_test, self.best_validation, strict=True)
        ]
        block = self.steps_done // self.config.epochs_per_block
        _merge(metrics, self._analysis(block))
        if self.num_seen == self.num_classes:  # the end: every class is in
            _merge(metrics, self._class_accuracies(block))
        self._new_block()
        if self.num_seen < self.num_classes:
            self.num_seen = min(self.num_seen + self.config.classes_per_block, self.num_classes)
            self._reset_for_increment()
        return metrics

    def _reset_for_increment(self) -> None:
        """Every seed reset at the same block end, each from its own generator."""
        algorithm = self.config.learner.algorithm
        optimizer = self.learner.optimizer
        if algorithm == "head_reset":
            self.net.reset_head(self.generators)
            if self.config.reset_optimizer_state:
                for param in self.net.fc.parameters():
                    reset_optimizer_entries(optimizer, param, (slice(None),))
        elif algorithm == "retrained_network":
            self.net.reinitialize(self.generators)
            if self.config.reset_bn_stats:
                self.net.reset_norm_statistics()
            if self.config.reset_optimizer_state:
                for param in self.net.parameters():
                    reset_optimizer_entries(optimizer, param, (slice(None),))

    def _analysis(self, block: int) -> list[dict[str, float]]:
        """spec/metrics.md §CIFAR: on the classes about to be added (if any) and on all seen so far
        (after the first block), probed in train mode with BN's running statistics left untouched."""
        cfg = self.config
        seen = 0 if self.steps_done == 0 else self.num_seen
        new = range(seen, min(seen + cfg.classes_per_block, self.num_classes))
        metrics = [{"weight_magnitude": m} for m in self.weight_magnitudes()]
        streams = [generator(seed, STREAM, _PROBE, block) for seed in self.seeds]
        for suffix, classes in (("", new), ("_seen", range(seen))):
            if len(classes) == 0:
                continue
            features = self._probe(self._indices(lambda split: split.all_train, classes), streams)
            dormant = dormant_fractions(features)
            for s, row in enumerate(metrics):
                ranks = rank_summaries(features[-1][s])
                row[f"dormant_units_percent{suffix}"] = 100.0 * dormant[s]
                row[f"stable_rank{suffix}"] = ranks["abs_approximate_rank"]
                row[f"effective_rank{suffix}"] = ranks["effective_rank"]
        return metrics

    @torch.no_grad()
    def _probe(self, candidates: torch.Tensor, streams: Sequence[torch.Generator]) -> list[torch.Tensor]:
        """Every group's features, (S, examples, units, …), on each seed's own shuffled probe."""
        chosen = self._shuffled(candidates, streams)[:, : self.config.probe_examples]
        x = self._batch(self.train_images, chosen, None)
        buffers = {name: b.clone() for name, b in self.net.named_buffers()}
        self.net.train()  # BN on the probe's own statistics, as the original's analysis
        _, features = self.net(x)
        for name, saved in buffers.items():
            self.net.get_buffer(name).copy_(saved)
        return [group.seed_activations(h) for group, h in zip(self.groups, features, strict=True)]

    def weight_magnitudes(self) -> list[float]:
        """Each seed's Σ|p| / Σ numel over its parameters (conv and fc weights and biases, BN γ, β)."""
        total = torch.zeros(self.num_seeds, device=self.device)
        count = 0
        for view in self.net.parameter_views():
            weights = view.of().reshape(self.num_seeds, -1)
            total += weights.abs().sum(dim=1)
            count += weights.shape[1]
        return [t / count for t in total.tolist()]

    # --- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "seeds": list(self.seeds),
            "steps_done": self.steps_done,
            "num_seen": self.num_seen,
            "learner": self.learner.state_dict(),
            "generators": [g.get_state() for g in self.generators],
            "best_validation": list(self.best_validation),
            "best_test": list(self.best_test),
            "has_best": list(self.has_best),
            "best_state": None
            if self.best_state is None
            else {k: v.clone() for k, v in self.best_state.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["seeds"]) != self.seeds:
            raise ValueError(f"checkpoint holds seeds {state['seeds']}, this experiment runs {self.seeds}")
        self.steps_done = int(state["steps_done"])
        self.num_seen = int(state["num_seen"])
        self.learner.load_state_dict(state["learner"])
        for g, saved in zip(self.generators, state["generators"], strict=True):
            g.set_state(saved.cpu())
        self.best_validation = [float(v) for v in state["best_validation"]]
        self.best_test = [float(v) for v in state["best_test"]]
        self.has_best = [bool(v) for v in state["has_best"]]
        best = state["best_state"]
        self.best_state = None if best is None else {k: v.to(self.device).clone() for k, v in best.items()}


def _merge(rows: list[dict[str, float]], more: list[dict[str, float]]) -> None:
    for row, extra in zip(rows, more, strict=True):
        row.update(extra)


def _per_seed(total: torch.Tensor, count: int) -> list[float]:
    return [float(v) / count for v in total.tolist()]


def _check_balanced(dataset: ImageDataset, split: str) -> None:
    counts = np.bincount(np.asarray(dataset.labels), minlength=dataset.num_classes)
    if len(set(counts.tolist())) > 1:
        raise ValueError(
            f"{split}: classes hold {counts.min()}–{counts.max()} images; several seeds in one trial "
            "(seeds_per_trial > 1) need the same number in every class"
        )


def _read_only_tensor(array: np.ndarray) -> torch.Tensor:
    """The images without a copy: arrays from the object store are read-only, and nothing here
    writes to them (torch warns about that possibility on every such conversion)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.as_tensor(array)


def dormant_fractions(features: list[torch.Tensor]) -> list[float]:
    """Each seed's fraction of dormant units (spec/metrics.md) from features (S, examples, units, …):
    a channel non-zero on < 1 % of (examples × positions), a pooled unit on < 1 % of examples."""
    dormant, total = 0, 0
    for h in features:
        active = (h != 0).float()
        fraction = active.mean(dim=1) if h.dim() == 3 else active.mean(dim=(1, 3, 4))  # (S, units)
        dormant = dormant + (fraction < DORMANT_FRACTION).sum(dim=1)
        total += fraction.shape[1]
    return [int(d) / total for d in dormant.tolist()]


def config_from_trial(trial: dict[str, Any]) -> IncrementalCifarConfig:
    """The experiment config of one trial of a validated sweep (see `lop_ray.schema`); its seed is
    the experiment's."""
    settings, network = trial["problem_settings"], trial["network"]
    hyper = dict(trial["hyperparameters"])
    resets = {k: hyper.pop(k) for k in ("reset_bn_stats",) if k in hyper}
    if trial["algorithm"] not in METHODS and "reset_optimizer_state" in hyper:  # the increment's resets
        resets["reset_optimizer_state"] = hyper.pop("reset_optimizer_state")
    step_size_decay = hyper.pop("step_size_decay")
    return IncrementalCifarConfig(
        width=network["width"],
        classes_per_block=settings["classes_per_block"],
        epochs_per_block=settings["epochs_per_block"],
        validation_per_class=settings["validation_per_class"],
        probe_examples=settings["probe_examples"],
        step_size_decay=step_size_decay,
        learner=learner_settings(trial["algorithm"], hyper),  # SGD (the schema has no optimizer key), or UPGD
        **resets,
    )
