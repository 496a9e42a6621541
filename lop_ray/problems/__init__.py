"""The problems a sweep can run: for each, its settings, network and algorithm schemas, how it turns
into trials, and which trainable runs it. Adding a problem is adding one entry here."""

from __future__ import annotations

from lop_ray.problems.base import ProblemSpec
from lop_ray.problems.continual_imagenet import CONTINUAL_IMAGENET
from lop_ray.problems.incremental_cifar import INCREMENTAL_CIFAR
from lop_ray.problems.permuted_mnist import PERMUTED_MNIST
from lop_ray.problems.regression import REGRESSION
from lop_ray.problems.rl import RL

PROBLEMS: dict[str, ProblemSpec] = {
    spec.name: spec for spec in (REGRESSION, PERMUTED_MNIST, CONTINUAL_IMAGENET, INCREMENTAL_CIFAR, RL)
}

__all__ = ["PROBLEMS", "ProblemSpec"]
