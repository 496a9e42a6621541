"""Slowly-changing regression in a sweep file."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lop_ray.data.regression import RegressionSettings
from lop_ray.nets.activations import ACTIVATIONS
from lop_ray.problems.base import Count, ProblemSpec, Real, Strict
from lop_ray.problems.learners import SUPERVISED_ALGORITHMS

_DEFAULT = RegressionSettings()


class RegressionProblem(Strict):
    num_inputs: Count = Field(_DEFAULT.num_inputs, ge=1)
    num_slow_bits: Count = Field(_DEFAULT.num_slow_bits, ge=0)
    flip_after: Count = Field(_DEFAULT.flip_after, ge=1)
    bit_change: Literal["redraw", "flip_one"] = _DEFAULT.bit_change
    target_hidden_units: Count = Field(_DEFAULT.target_hidden_units, ge=1)
    threshold_beta: Real = _DEFAULT.threshold_beta
    examples_per_step: Count | None = Field(None, ge=1)  # default: one task (flip_after examples)

    @model_validator(mode="after")
    def _slow_bits_fit(self):
        if self.num_slow_bits > self.num_inputs:
            raise ValueError(f"num_slow_bits ({self.num_slow_bits}) exceeds num_inputs ({self.num_inputs})")
        return self

    def stream_settings(self) -> RegressionSettings:
        return RegressionSettings(**self.model_dump(exclude={"examples_per_step"}))


class RegressionNetwork(Strict):
    activation: Literal[tuple(ACTIVATIONS)] = "relu"  # type: ignore[valid-type]
    hidden_units: Count = Field(5, ge=0)  # 0: the linear learner
    layer_norm: bool = False  # layer normalisation of the hidden layer (Lyle et al. 2024)
    crelu: bool = False  # CReLU hidden units (Abbas et al. 2023): relu of z and −z

    @model_validator(mode="after")
    def _crelu_of_relu(self):
        if self.crelu and self.activation != "relu":
            raise ValueError(f"crelu is built of ReLUs: activation must be relu, got {self.activation!r}")
        return self

    def weight_layer_count(self) -> int:
        return 2 if self.hidden_units else 1

    def injectable_layer_count(self) -> int:
        """Trailing weight layers that form a plain head: both, unless the hidden layer is normed
        or CReLU (then the output layer alone)."""
        return 1 if self.layer_norm or self.crelu else self.weight_layer_count()


def regression_steps(settings: RegressionProblem, num_tasks: int) -> int:
    per_step = settings.examples_per_step or settings.flip_after
    total = num_tasks * settings.flip_after
    if total % per_step:
        raise ValueError(
            f"examples_per_step ({per_step}) must divide num_tasks × flip_after = {total} examples "
            "(a trial is a whole number of steps)"
        )
    return total // per_step


REGRESSION = ProblemSpec(
    name="slowly_changing_regression",
    settings_model=RegressionProblem,
    network_model=RegressionNetwork,
    algorithms=SUPERVISED_ALGORITHMS,
    steps_for=regression_steps,
    trainable="lop_ray.trainables.regression:RegressionTrainable",
)
