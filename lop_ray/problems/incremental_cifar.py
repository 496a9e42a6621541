"""Class-incremental CIFAR-100 in a sweep file (spec/problems.md §4).

`num_tasks` counts class increments (blocks): the paper's 20 blocks of 200 epochs are `num_tasks: 20`
with `epochs_per_block: 200`, 4,000 trainable steps (one per epoch). The fidelity options of this
problem (spec/fidelity.md rows 1–3, 5, 9) are filled in from `fidelity:` where a file leaves them out.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from lop_ray.algos.cbp import InitDistribution, InitScheme, ReplacementBase, UtilityAverage
from lop_ray.algos.injection import InjectionConfig
from lop_ray.algos.layer_reset import LayerResetConfig
from lop_ray.problems.base import Count, ProblemSpec, Rate, Real, Strict, prepared_data

_LAYER_RESET = LayerResetConfig()
_INJECTION = InjectionConfig()


class IncrementalCifarProblem(Strict):
    dataset: Literal["cifar100"] = "cifar100"
    # a directory (or s3:// prefix) written by `lop-ray data prepare cifar100`
    data: str
    classes_per_block: Count = Field(5, ge=1)
    epochs_per_block: Count = Field(200, ge=1)
    validation_per_class: Count = Field(50, ge=1)
    probe_examples: Count = Field(1000, ge=2)

    @field_validator("data")
    @classmethod
    def _prepared(cls, data: str) -> str:
        return prepared_data(data, "cifar100", splits=("train", "test"))


class IncrementalCifarNetwork(Strict):
    width: Count = Field(64, ge=1)  # ResNet-18's base width: 64 in the paper (narrower for tests)

    def weight_layer_count(self) -> int:
        return 21  # the stem, 16 block convs, 3 downsampling convs, the output layer

    def injectable_layer_count(self) -> int:
        return 1  # the classifier behind the pooled features


class CifarSGD(Strict):
    """SGD with momentum and coupled weight decay; `step_size` is each block's first, divided by
    1/`step_size_decay` at 30 %, 60 % and 80 % of the block (epochs 60, 120, 160 of 200)."""

    step_size: Real = Field(0.1, gt=0)
    step_size_decay: Real = Field(0.2, gt=0, le=1)
    momentum: Real = Field(0.9, ge=0, lt=1)
    weight_decay: Real = Field(5e-4, ge=0)

    fidelity_options: ClassVar[dict[str, dict[str, Any]]] = {}


class Base(CifarSGD):
    """The base system: backprop with the schedule and early stopping, nothing else."""


class HeadReset(CifarSGD):
    """Re-initialise the whole fc layer at each class increment."""

    reset_optimizer_state: bool
    fidelity_options: ClassVar[dict[str, dict[str, Any]]] = {
        "reset_optimizer_state": {"original": False, "corrected": True},
    }


class RetrainedNetwork(CifarSGD):
    """Re-initialise the whole network at each class increment (the baseline)."""

    reset_optimizer_state: bool
    reset_bn_stats: bool
    fidelity_options: ClassVar[dict[str, dict[str, Any]]] = {
        "reset_optimizer_state": {"original": False, "corrected": True},
        "reset_bn_stats": {"original": False, "corrected": True},
    }


class L2Init(CifarSGD):
    """Regenerative regularisation (Kumar et al. 2023, docs/methods.md) beside the weight decay."""

    l2_init: Real = Field(gt=0)


class LayerReset(CifarSGD):
    """Layer and full resets (Nikishin et al. 2022, docs/methods.md): every `reset_period` optimizer
    steps the last `layers` weight layers (0: all of them, with their batch norms) are redrawn."""

    reset_period: Count = Field(_LAYER_RESET.reset_period, ge=1)  # optimizer (minibatch) steps
    layers: Count = Field(_LAYER_RESET.layers, ge=0)  # the last `layers`; 0: a full reset
    reset_optimizer_state: bool = _LAYER_RESET.reset_optimizer_state


class Parseval(CifarSGD):
    """Parseval regularisation (Chung et al. 2024, docs/methods.md) of every conv, beside the decay."""

    parseval_strength: Real = Field(1e-3, gt=0)  # λ
    parseval_scale: Real = Field(1.0, gt=0)  # s


class PlasticityInjection(CifarSGD):
    """Plasticity injection (Nikishin et al. 2023, docs/methods.md) of the classifier."""

    injection_period: Count = Field(_INJECTION.injection_period, ge=1)  # optimizer (minibatch) steps
    head_layers: Count = Field(1, ge=1)
    max_injections: Count = Field(_INJECTION.max_injections, ge=0)


class UPGD(Strict):
    """UPGD (Elsayed & Mahmood 2024, docs/methods.md) in place of SGD, on the same step-size schedule."""

    step_size: Real = Field(0.1, gt=0)
    step_size_decay: Real = Field(0.2, gt=0, le=1)
    weight_decay: Real = Field(5e-4, ge=0)  # decoupled, UPGD's own
    beta_utility: Real = Field(0.999, ge=0, lt=1)
    sigma: Real = Field(0.001, ge=0)


class ReDo(CifarSGD):
    """ReDo (Sokar et al. 2023, docs/methods.md) of the ResNet's conv units: every `reset_period`
    minibatch steps the units whose normalised mean |activation| is at most `threshold` restart
    (incoming weights redrawn, outgoing zeroed, their batch norm's γ = 1, β = 0 and statistics fresh)."""

    threshold: Real = Field(0.1, ge=0)
    reset_period: Count = Field(1000, ge=1)
    init: InitScheme = "kaiming"
    reset_optimizer_state: bool

    fidelity_options: ClassVar[dict[str, dict[str, Any]]] = {
        "reset_optimizer_state": {"original": False, "corrected": True},
    }


class SelfNormalizedResets(CifarSGD):
    """Self-normalised resets (Farias & Jozefiak 2024, docs/methods.md) of the ResNet's conv units."""

    rejection_percentile: Real = Field(0.99, gt=0, lt=1)
    init: InitScheme = "kaiming"
    reset_optimizer_state: bool = True


class ShrinkAndPerturb(CifarSGD):
    perturb_scale: Real = Field(1e-5, gt=0)  # on every parameter, BN's γ and β included


class ContinualBackprop(CifarSGD):
    """The CIFAR variant of CBP (spec/algorithms.md); `original` fills in its behaviour."""

    replacement_rate: Rate = 1e-5
    maturity_threshold: Count = Field(1000, ge=0)
    decay_rate: Real = Field(0.99, ge=0, lt=1)
    util_type: Literal["weight", "contribution"] = "contribution"
    init: InitScheme = "kaiming"
    accumulate: bool = True
    replacement_base: ReplacementBase
    utility_average: UtilityAverage
    init_distribution: InitDistribution
    bias_correction: bool
    reset_optimizer_state: bool

    fidelity_options: ClassVar[dict[str, dict[str, Any]]] = {
        "bias_correction": {"original": False, "corrected": True},
        "reset_optimizer_state": {"original": False, "corrected": True},
        "replacement_base": {"original": "width", "corrected": "eligible"},
        "utility_average": {"original": "cumulative", "corrected": "ema"},
        "init_distribution": {"original": "normal", "corrected": "uniform"},
    }


INCREMENTAL_CIFAR = ProblemSpec(
    name="incremental_cifar",
    settings_model=IncrementalCifarProblem,
    network_model=IncrementalCifarNetwork,
    algorithms={
        "bp": Base,
        "head_reset": HeadReset,
        "retrained_network": RetrainedNetwork,
        "snp": ShrinkAndPerturb,
        "cbp": ContinualBackprop,
        "l2_init": L2Init,
        "layer_reset": LayerReset,
        "parseval": Parseval,
        "upgd": UPGD,
        "snr": SelfNormalizedResets,
        "redo": ReDo,
        "plasticity_injection": PlasticityInjection,
    },
    steps_for=lambda settings, num_tasks: num_tasks * settings.epochs_per_block,  # one step = one epoch
    trainable="lop_ray.trainables.incremental_cifar:IncrementalCifarTrainable",
)
