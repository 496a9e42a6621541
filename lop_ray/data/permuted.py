"""Online permuted MNIST (spec/problems.md §2): each task is a fresh pixel permutation of the images
and a fresh order of the examples, each example seen once at batch size 1.

Task t's permutation and order come from the generator (seed, STREAM, t) alone, so any task can be
regenerated on its own (resume needs only the task index), and every algorithm of a seed sees the
same stream. The original composes each task's permutation and order with the previous task's,
which is statistically the same. A task longer than the dataset repeats its order (as the code does
for the `rate` configs).

Images stay uint8 (shared, read-only, possibly zero-copy from Ray's object store); each chunk is
gathered, permuted and scaled to [0, 1] on the learner's device when it is used.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterator

import torch

from lop_ray.data.seeding import STREAM, generator
from lop_ray.data.shards import ImageDataset


class PermutedTaskStream:
    def __init__(
        self,
        dataset: ImageDataset,
        seed: int,
        examples_per_task: int | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.seed = seed
        self.device = torch.device(device)
        with warnings.catch_warnings():  # read-only shared memory is fine: the stream never writes
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            images = torch.from_numpy(dataset.images.reshape(len(dataset), -1))  # no copy
            labels = torch.from_numpy(dataset.labels)
        self.images = images.to(self.device)  # a copy only when the device is not the CPU
        self.labels = labels.to(self.device)
        self.scale = 1.0 / dataset.pixel_max
        self.num_examples = len(dataset)
        self.num_inputs = self.images.shape[1]
        self.num_classes = dataset.num_classes
        self.examples_per_task = examples_per_task or self.num_examples

    @classmethod
    def for_seeds(
        cls,
        dataset: ImageDataset,
        seeds: list[int],
        examples_per_task: int | None = None,
        device: str | torch.device = "cpu",
    ) -> list[PermutedTaskStream]:
        """One stream per seed, all reading one copy of the images on `device` (a seed-batched
        trial on a GPU would otherwise hold S copies of the dataset there)."""
        first = cls(dataset, seeds[0], examples_per_task, device)
        streams = [first]
        for seed in seeds[1:]:
            stream = copy.copy(first)  # the seed is a stream's only state of its own
            stream.seed = seed
            streams.append(stream)
        return streams

    def _task_draws(self, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = generator(self.seed, STREAM, task)
        permutation = torch.randperm(self.num_inputs, generator=gen)
        order = torch.randperm(self.num_examples, generator=gen)
        repeats = math.ceil(self.examples_per_task / self.num_examples)
        order = order.repeat(repeats)[: self.examples_per_task]
        return permutation.to(self.device), order.to(self.device)

    def examples(self, task: int, chunk: int = 10_000) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Task `task`'s examples in order, as (inputs chunk × pixels float32, labels chunk) pieces."""
        permutation, order = self._task_draws(task)
        for start in range(0, len(order), chunk):
            yield self._gather(order[start : start + chunk], permutation)

    def probe(self, task: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `size` examples of task `task` (what the paper measures its units on)."""
        permutation, order = self._task_draws(task)
        return self._gather(order[:size], permutation)

    def _gather(self, index: torch.Tensor, permutation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[index][:, permutation].to(torch.float32) * self.scale
        return x, self.labels[index]
