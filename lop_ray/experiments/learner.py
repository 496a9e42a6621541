"""The learner of one trial, shared by every supervised problem: Backprop with its optimizer, L2,
and the interventions its algorithm asks for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lop_ray.algos import Backprop, CBPConfig, ContinualBackprop, ShrinkAndPerturb, make_optimizer
from lop_ray.nets.units import UnitNetwork


@dataclass(frozen=True)
class LearnerSettings:
    """The algorithm of one trial: optimizer, L2, and the optional interventions."""

    algorithm: str = "bp"
    optimizer: str = "sgd"
    step_size: float = 0.01
    momentum: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    perturb_scale: float = 0.0
    cbp: CBPConfig | None = None


def optimizer_for(parameters, settings: LearnerSettings) -> torch.optim.Optimizer:
    """The trial's optimizer over `parameters` (L2 is its coupled weight decay)."""
    return make_optimizer(
        parameters,
        settings.optimizer,
        settings.step_size,
        weight_decay=settings.weight_decay,
        momentum=settings.momentum,
        beta1=settings.beta1,
        beta2=settings.beta2,
        eps=settings.eps,
    )


def build_learner(
    net: UnitNetwork, settings: LearnerSettings, gen: torch.Generator, loss_fn
) -> tuple[Backprop, ContinualBackprop | None]:
    """Backprop with the interventions the algorithm asks for (CBP, then shrink-and-perturb)."""
    optimizer = optimizer_for(net.parameters(), settings)
    interventions = []
    cbp = None
    if settings.cbp is not None:
        cbp = ContinualBackprop(net.unit_groups(), optimizer, settings.cbp, gen)
        interventions.append(cbp)
    if settings.perturb_scale > 0:
        interventions.append(ShrinkAndPerturb(net.parameters(), settings.perturb_scale, gen))
    return Backprop(net, optimizer, loss_fn, interventions), cbp


def learner_from_trial(trial: dict[str, Any]) -> LearnerSettings:
    """The learner settings of one trial of a validated sweep (see `lop_ray.schema`)."""
    hyper = dict(trial["hyperparameters"])
    cbp = None
    if trial["algorithm"] == "cbp":
        cbp_keys = CBPConfig.__dataclass_fields__
        cbp = CBPConfig(**{k: hyper.pop(k) for k in list(hyper) if k in cbp_keys})
    return LearnerSettings(algorithm=trial["algorithm"], cbp=cbp, **hyper)
