"""Continual ImageNet's task stream (spec/problems.md §3): binary tasks over pairs of classes.

One random permutation of the classes per run, tiled: task t takes the classes at positions 2t and
2t+1 (so with 1,000 classes tasks t and t+500 are the same pair), label 0 for the first and 1 for the
second, all training images of both classes (600 each; or the first `train_per_class` of each, for
quick runs) and all their test images (100 each).

The class order comes from the generator (seed, STREAM, 0) and task t's epoch shuffles from
(seed, STREAM, 1, t), so every algorithm of a seed sees the same stream, and any task can be
regenerated from its index alone (resume needs nothing but the task count).

Images stay uint8 in the (possibly shared, read-only) dataset arrays; a task's images are gathered
and turned into float32 on the learner's device once per task, unscaled (0..255, as the paper feeds
them).
"""

from __future__ import annotations

import numpy as np
import torch

from lop_ray.data.idx import DataFormatError
from lop_ray.data.seeding import STREAM, generator
from lop_ray.data.shards import ImageDataset

CLASS_ORDER = 0
EPOCH_ORDERS = 1


class ClassPairTasks:
    def __init__(
        self, train: ImageDataset, test: ImageDataset, seed: int, train_per_class: int | None = None
    ) -> None:
        if train.num_classes < 2 or train.num_classes != test.num_classes:
            raise DataFormatError(
                f"a binary-task stream needs the same ≥ 2 classes in train and test, "
                f"got {train.num_classes} and {test.num_classes}"
            )
        self.seed = seed
        self.train, self.test = train, test
        self.num_classes = train.num_classes
        self.class_order = torch.randperm(self.num_classes, generator=generator(seed, STREAM, CLASS_ORDER))
        self.train_rows = _rows_by_class(train, "train")[:, :train_per_class]  # None: all of them
        self.test_rows = _rows_by_class(test, "test")

    def pair(self, task: int) -> tuple[int, int]:
        """The classes of task `task`: positions 2t and 2t+1 of the tiled class order."""
        order = self.class_order
        return int(order[(2 * task) % self.num_classes]), int(order[(2 * task + 1) % self.num_classes])

    def task(
        self, task: int, device: str | torch.device = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(train images, train labels, test images, test labels) of task `task`; images float32
        N×3×32×32 on `device`, the first class's first."""
        first, second = self.pair(task)
        return (
            *_gather(self.train, self.train_rows, first, second, device),
            *_gather(self.test, self.test_rows, first, second, device),
        )

    def epoch_orders(self, task: int) -> torch.Generator:
        """The generator of task `task`'s per-epoch reshuffles (one `randperm` per epoch, in order)."""
        return generator(self.seed, STREAM, EPOCH_ORDERS, task)


def _rows_by_class(dataset: ImageDataset, split: str) -> np.ndarray:
    """(classes, images per class) row indices, each class's rows in dataset order."""
    labels = np.asarray(dataset.labels)
    counts = np.bincount(labels, minlength=dataset.num_classes)
    if len(counts) != dataset.num_classes or len(set(counts.tolist())) != 1:
        raise DataFormatError(
            f"{split}: every class needs the same number of images; counts range "
            f"{counts.min()}..{counts.max()} over {len(counts)} labels for {dataset.num_classes} classes"
        )
    return np.argsort(labels, kind="stable").reshape(dataset.num_classes, -1)


def _gather(
    dataset: ImageDataset, rows: np.ndarray, first: int, second: int, device: str | torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    index = np.concatenate([rows[first], rows[second]])
    images = torch.from_numpy(dataset.images[index])  # a fresh, writable copy of the task's images
    labels = torch.cat(
        [torch.zeros(rows.shape[1], dtype=torch.long), torch.ones(rows.shape[1], dtype=torch.long)]
    )
    return images.to(device=device, dtype=torch.float32), labels.to(device)
