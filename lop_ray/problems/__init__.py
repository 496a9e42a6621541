"""The problems a sweep can run: for each, its settings, network and algorithm schemas, how it turns
into trials, and which trainable runs it. Adding a problem is adding one entry here."""

from __future__ import annotations

from lop_ray.problems.base import ProblemSpec
from lop_ray.problems.permuted_mnist import PERMUTED_MNIST
from lop_ray.problems.regression import REGRESSION

PROBLEMS: dict[str, ProblemSpec] = {spec.name: spec for spec in (REGRESSION, PERMUTED_MNIST)}

__all__ = ["PROBLEMS", "ProblemSpec"]
