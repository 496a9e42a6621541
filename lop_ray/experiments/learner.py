"""The learner of one trial, shared by every supervised problem: Backprop with its optimizer, L2,
and the interventions its algorithm asks for.

An intervention a sweep can name as its `algorithm` is a `Method` in `METHODS`: the dataclass of its
hyper-parameters and how to attach it to a learner of S seeds. With its schema entry
(`lop_ray.problems.learners.SUPERVISED_ALGORITHMS`) that is all a new method needs to run on every
supervised problem, seed-batched (docs/adding_a_method.md walks through ReDo).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lop_ray.algos import (
    Backprop,
    CBPConfig,
    ContinualBackprop,
    Intervention,
    ShrinkAndPerturb,
    make_optimizer,
)
from lop_ray.algos.counter_rng import seed_keys
from lop_ray.algos.injection import InjectionConfig, PlasticityInjection
from lop_ray.algos.layer_reset import LayerReset, LayerResetConfig
from lop_ray.algos.parseval import ParsevalConfig, ParsevalRegularisation
from lop_ray.algos.redo import ReDo, ReDoConfig
from lop_ray.algos.seed_noise import SeedNoise
from lop_ray.algos.snr import SelfNormalizedResets, SNRConfig
from lop_ray.algos.upgd import UPGD, UPGDConfig
from lop_ray.data.seeding import LEARNER, generator
from lop_ray.nets.mlp import MLP
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
    l2_init: float = 0.0  # L2 Init's λ (regularisation towards the initial weights)
    perturb_scale: float = 0.0
    cbp: CBPConfig | None = None
    upgd: UPGDConfig | None = None  # with optimizer "upgd": its utility and noise options
    method: Any = None  # the hyper-parameters of another registered method (`METHODS`)


@dataclass(frozen=True)
class Method:
    """An intervention a sweep names as its `algorithm`. `config`: the frozen dataclass of its
    hyper-parameters (a trial's hyper-parameters of those names go to it, the rest to the
    optimizer); `attach(net, optimizer, config, seeds, device, keys, stream=0)` builds it for a
    network of `len(seeds)` seeds, drawing what seed s draws alone (its own learner generator, or
    counter-based noise on `keys[s]`); a learner with a second network (PPO's value net) attaches it
    there with `stream=1`, so that the two draw apart."""

    config: type
    attach: Callable[..., Intervention]


def _streams(*key: int, stream: int) -> tuple[int, ...]:
    """A method's learner-generator key; another network of the same learner (`stream` > 0) gets
    its own stream of it."""
    return (*key, 1_000_000 + stream) if stream else key


def _continual_backprop(net, optimizer, config, seeds, device, keys, stream=0) -> ContinualBackprop:
    generators = [generator(*_streams(seed, LEARNER, stream=stream), device=device) for seed in seeds]
    return ContinualBackprop(net.unit_groups(), optimizer, config, generators, keys)


def _redo(net, optimizer, config, seeds, device, keys, stream=0) -> ReDo:
    generators = [generator(*_streams(seed, LEARNER, stream=stream), device=device) for seed in seeds]
    return ReDo(net.unit_groups(), optimizer, config, generators)


def _layer_reset(net, optimizer, config, seeds, device, keys, stream=0) -> LayerReset:
    # CPU generators: a reset redraws as the network's constructor drew, on the CPU
    generators = [generator(*_streams(seed, LEARNER, LayerReset.stream, stream=stream)) for seed in seeds]
    return LayerReset(net.weight_layers(), optimizer, config, generators)


def _injection(net, optimizer, config, seeds, device, keys, stream=0) -> PlasticityInjection:
    # CPU generators: a new head is drawn as the network's constructor drew it, on the CPU
    key = (LEARNER, PlasticityInjection.stream)
    generators = [generator(*_streams(seed, *key, stream=stream)) for seed in seeds]
    return PlasticityInjection(net, optimizer, config, generators)


def _snr(net, optimizer, config, seeds, device, keys, stream=0) -> SelfNormalizedResets:
    key = (LEARNER, SNR_STREAM)
    generators = [generator(*_streams(seed, *key, stream=stream), device=device) for seed in seeds]
    return SelfNormalizedResets(net.unit_groups(), optimizer, config, generators)


def _parseval(net, optimizer, config, seeds, device, keys, stream=0) -> ParsevalRegularisation:
    return ParsevalRegularisation(net.weight_layers(), config)


UPGD_STREAM = 5000  # the learner-generator stream and counter stream of UPGD's noise
SNR_STREAM = 6000  # the learner-generator stream of self-normalised resets' redraws

METHODS: dict[str, Method] = {
    "cbp": Method(CBPConfig, _continual_backprop),
    "redo": Method(ReDoConfig, _redo),
    "layer_reset": Method(LayerResetConfig, _layer_reset),
    "parseval": Method(ParsevalConfig, _parseval),
    "snr": Method(SNRConfig, _snr),
    "plasticity_injection": Method(InjectionConfig, _injection),
}


def _upgd(net: UnitNetwork, settings: LearnerSettings, seeds: Sequence[int], keys, device) -> UPGD:
    # a large network's noise comes from a generator per seed (`SeedNoise`), its own stream
    generators = [generator(seed, LEARNER, UPGD_STREAM, device=device) for seed in seeds]
    views = net.parameter_views()
    noise = SeedNoise(views, keys, UPGD_STREAM, generators)
    return UPGD(views, settings.step_size, settings.weight_decay, settings.upgd or UPGDConfig(), noise)


def optimizer_for(parameters, settings: LearnerSettings) -> torch.optim.Optimizer:
    """The trial's optimizer over `parameters` (L2 is its coupled weight decay; L2 Init anchors at
    the parameters' values now, the trial's initial network)."""
    return make_optimizer(
        parameters,
        settings.optimizer,
        settings.step_size,
        weight_decay=settings.weight_decay,
        momentum=settings.momentum,
        beta1=settings.beta1,
        beta2=settings.beta2,
        eps=settings.eps,
        l2_init=settings.l2_init,
    )


def build_learner(
    net: UnitNetwork,
    settings: LearnerSettings,
    seeds: Sequence[int],
    device: torch.device | str,
    loss_fn: Callable,
) -> tuple[Backprop, Intervention | None]:
    """Backprop with the interventions the algorithm asks for (its method, then shrink-and-perturb)
    for a network of `len(seeds)` seeds (one seed: S = 1), and the intervention that replaces units
    (its `replaced_total` is each seed's count), if any."""
    device = torch.device(device)
    keys = seed_keys(list(seeds), device)
    if settings.optimizer == "upgd":
        optimizer = _upgd(net, settings, seeds, keys, device)
    else:
        optimizer = optimizer_for(net.parameters(), settings)
    interventions = []
    replacer = None
    for config in (settings.cbp, settings.method):
        if config is not None:
            method = next(m for m in METHODS.values() if isinstance(config, m.config))
            interventions.append(method.attach(net, optimizer, config, seeds, device, keys))
            if hasattr(interventions[-1], "replaced_total"):  # it replaces units (or layers)
                replacer = interventions[-1]
    if settings.perturb_scale > 0:
        # a large network's noise comes from a generator per seed (`ShrinkAndPerturb`), its own
        noise = [generator(seed, LEARNER, ShrinkAndPerturb.stream, device=device) for seed in seeds]
        interventions.append(ShrinkAndPerturb(net.parameter_views(), settings.perturb_scale, keys, noise))
    return Backprop(net, optimizer, loss_fn, interventions), replacer


def learner_from_trial(trial: dict[str, Any]) -> LearnerSettings:
    """The learner settings of one trial of a validated sweep (see `lop_ray.schema`)."""
    return learner_settings(trial["algorithm"], dict(trial["hyperparameters"]))


def learner_settings(algorithm: str, hyper: dict[str, Any]) -> LearnerSettings:
    """`algorithm` with its hyper-parameters `hyper` (consumed): a method's own options go to its
    config (`METHODS`; UPGD's to the optimizer's), the rest to the optimizer and L2 / S&P."""
    method = METHODS.get(algorithm)
    if method is not None:
        fields = method.config.__dataclass_fields__
        config = method.config(**{k: hyper.pop(k) for k in list(hyper) if k in fields})
        if isinstance(config, CBPConfig):
            return LearnerSettings(algorithm=algorithm, cbp=config, **hyper)
        return LearnerSettings(algorithm=algorithm, method=config, **hyper)
    if algorithm == "upgd":
        fields = UPGDConfig.__dataclass_fields__
        config = UPGDConfig(**{k: hyper.pop(k) for k in list(hyper) if k in fields})
        return LearnerSettings(algorithm=algorithm, optimizer="upgd", upgd=config, **hyper)
    return LearnerSettings(algorithm=algorithm, **hyper)


def initial_mlp(
    sizes: Sequence[int],
    activation: str,
    seeds: Sequence[int],
    dropout: float = 0.0,
    online_norm: bool = False,
    layer_norm: bool = False,
    crelu: bool = False,
) -> MLP:
    """The MLP of seeds `seeds`: seed s's slice drawn on the CPU from the CPU generator
    (s, LEARNER, 0), so it depends neither on the device nor on the other seeds; dropout masks
    from each seed's counter key."""
    keys = seed_keys(list(seeds)) if dropout else None
    generators = [generator(seed, LEARNER, 0) for seed in seeds]
    return MLP(
        sizes,
        activation,
        generators,
        dropout=dropout,
        online_norm=online_norm,
        dropout_keys=keys,
        layer_norm=layer_norm,
        crelu=crelu,
    )
