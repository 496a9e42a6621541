"""Self-Normalized Resets (SNR; Farias & Jozefiak 2024, arXiv:2410.20098): reset a unit once its
current silence is too long to be chance under the unit's *own* firing rate.

Each hidden unit i of each seed keeps, since its start (initialisation or last reset), counted in
*examples* (a minibatch of B examples is B observations, taken in batch order):
- f_i, the number of examples it fired on (h_i > 0; a conv unit fires on an example when its mean
  over spatial positions is > 0, the per-unit reduction ReDo uses);
- m_i, the number of examples up to and including its last firing (the completed inter-firing
  intervals: m_i / f_i is the mean inter-firing time μ̂_i);
- a_i, its age: the number of consecutive examples since its last firing (or since its start).

Its firing probability is estimated from the completed intervals only, with one pseudo-firing in
two pseudo-examples (the posterior mean under a uniform Beta(1, 1) prior):

    p̂_i = (f_i + 1) / (m_i + 2)

so a unit that has never fired since its start (f_i = 0) gets p̂_i = 1/2 rather than 0/0, and the
current silent run, the data under test, does not dilute the estimate it is tested against. After
every optimizer step, under the null hypothesis "unit i still fires at rate p̂_i" its silent run is
geometric, P(A ≥ a) = (1 − p̂_i)^a, and the unit is reset when that p-value drops below 1 − η,
η being the paper's *rejection percentile* (`rejection_percentile`):

    reset_i  ⇔  (1 − p̂_i)^{a_i} < 1 − η   ⇔  a_i > q_η(p̂_i) = ln(1 − η) / ln(1 − p̂_i).

A reset re-initialises the unit exactly as ReDo does (the same code: incoming weights redrawn from
U(−B, B) with the layer's init bound from the seed's own generator, bias and outgoing weights
zeroed, per-unit norm entries restored, the optimizer's per-element state of those weights
restarted when `reset_optimizer_state`), and restarts the unit's statistics (f = m = a = 0).

Choices where the paper and the authors' code (github.com/ajozefiak/SelfNormalizedResets) leave
room (docs/methods.md, "Self-normalised resets"): per-example counting with exact positions
inside the batch (the authors' MLP code adds the batch size to the age of a unit silent on the whole batch and zeroes it
if it fired anywhere); the Beta(1, 1) prior (the authors' code starts its arrival count and sum at
1, i.e. p̂ = 1 for a fresh unit, and re-estimates per-unit thresholds periodically with an expansion
factor, which is not reproduced here); the exact geometric quantile instead of the authors'
exponential approximation −ln(1 − η)/λ̂. All layers are scored before any is reset, as in ReDo.
Every statistic is per seed and elementwise, and draws come from `generators[s]`, so a seed run in a
batch of S seeds equals it run alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from lop_ray.algos.cbp import InitScheme
from lop_ray.algos.redo import ReDo, ReDoConfig
from lop_ray.nets.activations import INIT_SCHEMES
from lop_ray.nets.units import UnitGroup


@dataclass(frozen=True)
class SNRConfig:
    """`rejection_percentile` η: a unit is reset when its silence is beyond the η-quantile of the
    geometric inter-firing time of its own estimated rate (false-reset rate 1 − η per test)."""

    rejection_percentile: float = 0.99
    init: InitScheme = "lecun"
    reset_optimizer_state: bool = True

    def __post_init__(self) -> None:
        eta = self.rejection_percentile
        if not isinstance(eta, int | float) or isinstance(eta, bool) or not 0.0 < eta < 1.0:
            raise ValueError(f"rejection_percentile must be in (0, 1), got {eta!r}")
        if self.init not in INIT_SCHEMES:
            raise ValueError(f"unknown init scheme {self.init!r}; allowed: {list(INIT_SCHEMES)}")


class SelfNormalizedResets:
    """An after-step intervention (see `lop_ray.algos.backprop.Intervention`) over groups of S
    seeds (`lop_ray.nets.units`; one seed: S = 1), each seed tested and reset on its own, drawing
    new weights from its own generator."""

    def __init__(
        self,
        groups: Sequence[UnitGroup],
        optimizer: torch.optim.Optimizer,
        config: SNRConfig,
        generators: Sequence[torch.Generator | None] | torch.Generator | None,
    ) -> None:
        self.groups = list(groups)
        self.optimizer = optimizer
        self.config = config
        # ReDo's re-initialisation, reused rather than copied (its threshold/period are unused)
        self._redo = ReDo(
            self.groups,
            optimizer,
            ReDoConfig(init=config.init, reset_optimizer_state=config.reset_optimizer_state),
            generators,
        )
        self.generators = self._redo.generators
        seeds = len(self.generators)
        self.fired = [self._zeros(group, seeds) for group in self.groups]
        self.examples = [self._zeros(group, seeds) for group in self.groups]
        self.age = [self._zeros(group, seeds) for group in self.groups]

    @staticmethod
    def _zeros(group: UnitGroup, seeds: int) -> torch.Tensor:
        return torch.zeros(seeds, group.width, dtype=torch.long, device=group.incoming.tensor.device)

    @property
    def replaced_total(self) -> torch.Tensor:
        """(S,) torch.long: units reset so far, per seed."""
        return self._redo.replaced_total

    def firing_probability(self) -> list[torch.Tensor]:
        """Per group, (S, width) p̂ = (f + 1) / (m + 2) in float64."""
        return [self._firing_probability(index) for index in range(len(self.groups))]

    def _firing_probability(self, index: int) -> torch.Tensor:
        return (self.fired[index].double() + 1) / (self.examples[index].double() + 2)

    @torch.no_grad()
    def after_step(self, activations: Sequence[torch.Tensor]) -> None:
        if len(activations) != len(self.groups):
            raise ValueError(f"{len(activations)} activations for {len(self.groups)} unit groups")
        for index, (group, h) in enumerate(zip(self.groups, activations, strict=True)):
            self._observe(index, group.seed_activations(h))
        # test every layer first: re-initialising one layer zeroes the next one's incoming weights
        masks = [self.to_reset(i) for i in range(len(self.groups))]
        for index, (group, mask) in enumerate(zip(self.groups, masks, strict=True)):
            for seed, row in enumerate(mask.cpu()):
                units = torch.nonzero(row).reshape(-1)
                if len(units):
                    units = units.to(group.incoming.tensor.device)
                    self._redo.reinitialise(group, seed, units)
                    for stat in (self.fired, self.examples, self.age):
                        stat[index][seed, units] = 0

    def _observe(self, index: int, h: torch.Tensor) -> None:
        """Fold the examples of `h` (S, batch, units, …) into group `index`'s statistics, in order."""
        per_example = h.reshape(h.shape[0], h.shape[1], h.shape[2], -1).mean(dim=3)
        fired = per_example > 0  # (S, B, width)
        batch = fired.shape[1]
        position = torch.arange(1, batch + 1, device=fired.device).view(1, batch, 1)
        last = (fired.long() * position).amax(dim=1)  # 1-based position of the last firing, 0: none
        any_fired = last > 0
        age = self.age[index]
        self.fired[index] += fired.sum(dim=1)
        self.examples[index] = torch.where(any_fired, self.examples[index] + age + last, self.examples[index])
        self.age[index] = torch.where(any_fired, batch - last, age + batch)

    def to_reset(self, index: int) -> torch.Tensor:
        """(S, width) mask of group `index`'s units with (1 − p̂)^a < 1 − η, in log form."""
        p_hat = self._firing_probability(index)
        log_p_value = self.age[index].double() * torch.log1p(-p_hat)
        return log_p_value < math.log1p(-self.config.rejection_percentile)

    def state_dict(self) -> dict[str, Any]:
        states = [None if g is None else g.get_state() for g in self.generators]
        return {
            "config": asdict(self.config),
            "fired": [t.clone() for t in self.fired],
            "examples": [t.clone() for t in self.examples],
            "age": [t.clone() for t in self.age],
            "replaced_total": self.replaced_total.clone(),
            "generators": states,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["config"] != asdict(self.config):
            raise ValueError(
                f"checkpoint was written with SNR config {state['config']}, not {asdict(self.config)}"
            )
        for name in ("fired", "examples", "age"):
            saved = state[name]
            if len(saved) != len(self.groups):
                raise ValueError(f"checkpoint has {len(saved)} groups of {name!r}, not {len(self.groups)}")
            loaded = []
            for tensor, current in zip(saved, getattr(self, name), strict=True):
                tensor = torch.as_tensor(tensor)
                if tensor.shape != current.shape:
                    raise ValueError(
                        f"checkpoint {name!r} of shape {tuple(tensor.shape)}, not {tuple(current.shape)}"
                    )
                loaded.append(tensor.to(device=current.device, dtype=torch.long).clone())
            setattr(self, name, loaded)
        total = torch.as_tensor(state["replaced_total"]).clone().reshape(len(self.generators))
        self._redo.replaced_total = total
        for generator, saved in zip(self.generators, state.get("generators", ()), strict=False):
            if generator is not None and saved is not None:
                generator.set_state(saved.cpu())
