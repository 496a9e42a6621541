"""Plasticity metrics beside the paper's (docs/methods.md, "Metrics"), per seed, once per task.

The methods published since the paper argue from four measurements that the paper does not log:
the size of the gradient a new task starts with (a network that no longer learns has a vanishing
one), how far the weights have travelled from their initialisation (growing weights accompany
lost plasticity; L2 Init and resets act on exactly this), the fraction of units that are active on
an input (ReLU sparsity, beyond the paper's all-examples dead units), and feature churn (how much
training on a task moves the representation of that task's own inputs). Each is a cheap forward or
backward pass over a probe of a few hundred examples, so every problem can log them every task.

Pure PyTorch; seeds never mix (the network's parameters and activations are seed-first).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from lop_ray.nets.units import UnitNetwork


def active_fraction(activations: Sequence[torch.Tensor]) -> torch.Tensor:
    """(S,): the fraction of (example, unit) pairs with a nonzero activation over every hidden layer,
    each layer's activations (S, examples, units, …). For ReLU-family units it is the share that fire
    on a typical input; saturating units (tanh, sigmoid) are almost never exactly 0. A network
    without hidden units (a linear model) has nothing to be active: callers leave the metric out."""
    if not activations:
        raise ValueError("active_fraction needs at least one hidden layer's activations")
    active = sum(h.ne(0).reshape(h.shape[0], -1).sum(dim=1) for h in activations)
    total = sum(h[0].numel() for h in activations)
    return active / total


def feature_churn(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """(S,): ‖φ_after − φ_before‖_F / ‖φ_before‖_F of the features (S, examples, …) of the same
    inputs; 0 for an unchanged representation (and for one that was all zero and stayed so)."""
    change = per_seed_norm([after - before])
    size = per_seed_norm([before])
    return torch.where(size > 0, change / size.clamp_min(torch.finfo(size.dtype).tiny), change)


def per_seed_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """(S,): the 2-norm of each seed's slices (S, …) of all `tensors` together. Seed by seed, in
    float64, over a contiguous copy of the one seed: a reduction over (S, n) splits its work by the
    whole tensor's size, so the same seed would round differently in a batch than alone."""
    seeds = tensors[0].shape[0]
    norms = []
    for s in range(seeds):
        total = torch.zeros((), dtype=torch.float64, device=tensors[0].device)
        for tensor in tensors:
            total = total + tensor[s].contiguous().double().pow(2).sum()
        norms.append(total.sqrt())
    return torch.stack(norms)


class PlasticityProbe:
    """Holds every seed's initial parameters θ₀ (the network as built: a pure function of the seeds,
    so a resumed experiment, which rebuilds the network before loading its checkpoint, holds the same
    θ₀ without storing it) and measures the network against them."""

    def __init__(self, net: UnitNetwork, loss_fn: Callable, probe_examples: int = 500) -> None:
        self.net = net
        self.loss_fn = loss_fn
        self.probe_examples = probe_examples
        self.initial = [view.of().clone() for view in net.parameter_views()]
        self._task_start: tuple[torch.Tensor, list[torch.Tensor], torch.Tensor] | None = None

    def begin_task(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Measures the network on the first `probe_examples` of a new task's inputs (S, examples, …)
        and labels (S, examples, …) before it trains on them; `end_task` completes the measurement."""
        x, y = x[:, : self.probe_examples], y[:, : self.probe_examples]
        features = self.features(x)
        gradient = self.gradient_norm(x, y, self.loss_fn)
        self._task_start = (x, features, gradient)

    def end_task(self) -> list[dict[str, float]]:
        """Per seed: the gradient norm the task started with, the distance from θ₀ it ended at, and
        (for networks with hidden units) the fraction of active units at its start and the feature
        churn of its training on the last hidden layer's features of the probe."""
        if self._task_start is None:
            raise RuntimeError("end_task without begin_task")
        x, features, gradient = self._task_start
        self._task_start = None
        columns = {"gradient_norm": gradient, "distance_from_init": self.distance_from_initial()}
        if features:
            columns["active_fraction"] = active_fraction(features)
            columns["feature_churn"] = feature_churn(features[-1], self.features(x)[-1])
        names = list(columns)
        rows = torch.stack([columns[name].double().cpu() for name in names]).T.tolist()
        return [dict(zip(names, row, strict=True)) for row in rows]

    @torch.no_grad()
    def distance_from_initial(self) -> torch.Tensor:
        """(S,): ‖θ − θ₀‖₂ over every parameter of the seed."""
        views = self.net.parameter_views()
        return per_seed_norm([view.of() - start for view, start in zip(views, self.initial, strict=True)])

    def gradient_norm(self, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable) -> torch.Tensor:
        """(S,): ‖∇θ L‖₂ of each seed's loss on (x, y), its gradient at this point (in eval mode: no
        dropout, no update of normalisation statistics; nothing is stepped)."""
        training = self.net.training
        self.net.eval()
        try:
            output, _ = self.net(x)
            losses = loss_fn(output, y)
            params = list(self.net.parameters())
            grads = torch.autograd.grad(losses.sum(), params, allow_unused=True)
        finally:
            self.net.train(training)
        views = self.net.parameter_views()
        return per_seed_norm(
            [view.of(grad) for view, grad in zip(views, grads, strict=True) if grad is not None]
        )

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every hidden layer's activations of `x`, each (S, examples, units, …), in eval mode."""
        training = self.net.training
        self.net.eval()
        try:
            _, activations = self.net(x)
        finally:
            self.net.train(training)
        groups = self.net.unit_groups()
        return [group.seed_activations(h) for group, h in zip(groups, activations, strict=True)]
