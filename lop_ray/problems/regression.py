"""Slowly-changing regression in a sweep file."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from lop_ray.algos.cbp import CBPConfig, InitScheme, ReplacementBase, UtilType
from lop_ray.data.regression import RegressionSettings
from lop_ray.nets.activations import ACTIVATIONS
from lop_ray.problems.base import Count, OptimizerHyperparameters, ProblemSpec, Rate, Real, Strict

_DEFAULT = RegressionSettings()
_CBP = CBPConfig()


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


class BP(OptimizerHyperparameters):
    """Plain backprop: no weight decay, no intervention."""


class L2(OptimizerHyperparameters):
    weight_decay: Real = Field(gt=0)


class ShrinkAndPerturb(OptimizerHyperparameters):
    weight_decay: Real = Field(ge=0)
    perturb_scale: Real = Field(gt=0)


class ContinualBackprop(OptimizerHyperparameters):
    weight_decay: Real = Field(0.0, ge=0)
    replacement_rate: Rate = _CBP.replacement_rate
    maturity_threshold: Count = Field(_CBP.maturity_threshold, ge=0)
    decay_rate: Real = Field(_CBP.decay_rate, ge=0, lt=1)
    util_type: UtilType = "adaptable_contribution"
    init: InitScheme = _CBP.init
    accumulate: bool = _CBP.accumulate
    replacement_base: ReplacementBase = _CBP.replacement_base
    bias_correction: bool
    reset_optimizer_state: bool

    fidelity_options: ClassVar[dict[str, dict[str, Any]]] = {
        "bias_correction": {"original": False, "corrected": True},
        "reset_optimizer_state": {"original": False, "corrected": True},
    }


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
    algorithms={"bp": BP, "l2": L2, "snp": ShrinkAndPerturb, "cbp": ContinualBackprop},
    steps_for=regression_steps,
    trainable="lop_ray.trainables.regression:RegressionTrainable",
)
