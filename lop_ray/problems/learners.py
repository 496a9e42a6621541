"""The algorithms every supervised problem offers, as sweep-file schemas (spec/algorithms.md)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, Field

from lop_ray.algos.cbp import CBPConfig, InitScheme, ReplacementBase, UtilType
from lop_ray.algos.injection import InjectionConfig
from lop_ray.algos.layer_reset import LayerResetConfig
from lop_ray.algos.parseval import ParsevalConfig
from lop_ray.algos.redo import ReDoConfig
from lop_ray.algos.snr import SNRConfig
from lop_ray.algos.upgd import UPGDConfig
from lop_ray.problems.base import Count, OptimizerHyperparameters, Rate, Real, Strict

_CBP = CBPConfig()
_REDO = ReDoConfig()
_LAYER_RESET = LayerResetConfig()
_PARSEVAL = ParsevalConfig()
_UPGD = UPGDConfig()
_SNR = SNRConfig()
_INJECTION = InjectionConfig()


class BP(OptimizerHyperparameters):
    """Plain backprop: no weight decay, no intervention."""


class L2(OptimizerHyperparameters):
    weight_decay: Real = Field(gt=0)


class L2InitHyperparameters(Strict):
    """Regenerative regularisation (Kumar et al. 2023, docs/methods.md): λ‖θ − θ₀‖² added to the
    loss, θ₀ the trial's initial parameters."""

    l2_init: Real = Field(gt=0)


class L2Init(L2InitHyperparameters, OptimizerHyperparameters):
    pass


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


class ReDoHyperparameters(Strict):
    """ReDo's options (Sokar et al. 2023, spec/algorithms.md), for every problem that offers it:
    every `reset_period` optimizer steps the units whose normalised mean |activation| on the step's
    batch is at most `threshold` are re-initialised."""

    weight_decay: Real = Field(0.0, ge=0)
    threshold: Real = Field(_REDO.threshold, ge=0)
    reset_period: Count = Field(_REDO.reset_period, ge=1)  # optimizer (minibatch) steps
    init: InitScheme = _REDO.init
    reset_optimizer_state: bool

    fidelity_options: ClassVar[dict[str, dict[str, Any]]] = {
        "reset_optimizer_state": {"original": False, "corrected": True},
    }


class ReDo(ReDoHyperparameters, OptimizerHyperparameters):
    pass


class LayerResetHyperparameters(Strict):
    """Layer and full resets (Nikishin et al. 2022, docs/methods.md): every `reset_period` optimizer
    steps the last `layers` weight layers (0: all of them) are redrawn from their initial
    distribution."""

    weight_decay: Real = Field(0.0, ge=0)
    reset_period: Count = Field(_LAYER_RESET.reset_period, ge=1)  # optimizer (minibatch) steps
    layers: Count = Field(_LAYER_RESET.layers, ge=0)  # the last `layers`; 0: a full reset
    reset_optimizer_state: bool = _LAYER_RESET.reset_optimizer_state


class LayerReset(LayerResetHyperparameters, OptimizerHyperparameters):
    pass


class ParsevalHyperparameters(Strict):
    """Parseval regularisation (Chung et al. 2024, docs/methods.md): λ Σ‖WWᵀ − sI‖²_F over the hidden
    weight layers added to the loss."""

    weight_decay: Real = Field(0.0, ge=0)
    parseval_strength: Real = Field(_PARSEVAL.parseval_strength, gt=0)  # λ
    parseval_scale: Real = Field(_PARSEVAL.parseval_scale, gt=0)  # s


class Parseval(ParsevalHyperparameters, OptimizerHyperparameters):
    pass


class UPGDHyperparameters(Strict):
    """UPGD (Elsayed & Mahmood 2024, docs/methods.md): its own optimizer, the gradient step scaled
    down on useful weights and perturbed on the others; decoupled weight decay."""

    step_size: Real = Field(gt=0)
    weight_decay: Real = Field(0.0, ge=0)
    beta_utility: Real = Field(_UPGD.beta_utility, ge=0, lt=1)
    sigma: Real = Field(_UPGD.sigma, ge=0)


class SNRHyperparameters(Strict):
    """Self-normalised resets (Farias & Jozefiak 2024, docs/methods.md): a unit is reset once its
    silence is beyond the `rejection_percentile` quantile of its own inter-firing time."""

    weight_decay: Real = Field(0.0, ge=0)
    rejection_percentile: Real = Field(_SNR.rejection_percentile, gt=0, lt=1)
    init: InitScheme = _SNR.init
    reset_optimizer_state: bool = _SNR.reset_optimizer_state


class SNR(SNRHyperparameters, OptimizerHyperparameters):
    pass


class InjectionHyperparameters(Strict):
    """Plasticity injection (Nikishin et al. 2023, docs/methods.md): every `injection_period`
    optimizer steps (at most `max_injections` times; 0: no limit) the last `head_layers` weight
    layers are frozen and a fresh head is added beside a frozen copy of its initial parameters."""

    weight_decay: Real = Field(0.0, ge=0)
    injection_period: Count = Field(_INJECTION.injection_period, ge=1)  # optimizer (minibatch) steps
    head_layers: Count = Field(_INJECTION.head_layers, ge=1)
    max_injections: Count = Field(_INJECTION.max_injections, ge=0)


class PlasticityInjection(InjectionHyperparameters, OptimizerHyperparameters):
    pass


SUPERVISED_ALGORITHMS: dict[str, type[BaseModel]] = {
    "bp": BP,
    "l2": L2,
    "l2_init": L2Init,
    "snp": ShrinkAndPerturb,
    "cbp": ContinualBackprop,
    "redo": ReDo,
    "layer_reset": LayerReset,
    "parseval": Parseval,
    "upgd": UPGDHyperparameters,
    "snr": SNR,
    "plasticity_injection": PlasticityInjection,
}
