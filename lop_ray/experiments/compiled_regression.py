"""The regression experiment's compiled path: hands the learner's own tensors to
`regression_kernel.advance_seeds` as numpy views, so one call advances every seed through a whole
step of examples and leaves the network, optimizer, CBP and S&P state exactly where the PyTorch
learner keeps it (checkpoints, metrics and the plasticity probe are shared).

`unsupported` says why a configuration stays on the PyTorch path (another device, a network option
or method the kernel does not have); `RegressionExperiment` picks the path.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lop_ray.algos import ContinualBackprop, ShrinkAndPerturb
from lop_ray.algos.backprop import Backprop
from lop_ray.algos.cbp_statistics_kernel import UTILITY_CODES
from lop_ray.algos.optim import SGD, Adam
from lop_ray.data.regression import RegressionStream
from lop_ray.experiments.regression_kernel import ADAM, ADAMW, advance_seeds
from lop_ray.experiments.regression_kernel import SGD as SGD_CODE
from lop_ray.nets.mlp import MLP
from lop_ray.nets.one_example_kernel import ACTIVATION_CODES


def unsupported(net: MLP, learner: Backprop, device: torch.device) -> str | None:
    """Why the kernel cannot run this learner (None: it can)."""
    if device.type != "cpu":
        return f"the compiled path runs on the CPU, not {device.type}"
    if not net.plain:
        return "the kernel's network has no layer norm, online norm, dropout or CReLU"
    if net.activation_name not in ACTIVATION_CODES:
        return f"activation {net.activation_name!r} is not compiled"
    if len(net.weights) > 2 or net.weights[-1].shape[1] != 1:
        return "the kernel's network has at most one hidden layer and one output"
    if any(p.dtype != torch.float32 for p in net.parameters()):
        return "the kernel computes in float32"
    optimizer = learner.optimizer
    if type(optimizer) not in (SGD, Adam) or len(optimizer.param_groups) != 1:
        return f"the kernel's optimizers are SGD and Adam, not {type(optimizer).__name__}"
    for intervention in learner.interventions:
        if isinstance(intervention, ContinualBackprop):
            config = intervention.config
            if config.utility_average != "ema" or config.init_distribution != "uniform":
                return "the kernel's CBP averages utilities by EMA and draws new weights uniformly"
        elif isinstance(intervention, ShrinkAndPerturb):
            if intervention.generators is not None:
                return "the kernel draws S&P's noise counter-based"
        else:
            return f"{type(intervention).__name__} is not compiled"
    return None


class CompiledRegression:
    """The kernel's view of one `RegressionExperiment`'s streams and learner."""

    def __init__(self, net: MLP, learner: Backprop, streams: Sequence[RegressionStream]) -> None:
        self.net = net
        self.learner = learner
        self.streams = list(streams)
        self.cbp = next((i for i in learner.interventions if isinstance(i, ContinualBackprop)), None)
        self.perturb = next((i for i in learner.interventions if isinstance(i, ShrinkAndPerturb)), None)
        if self.cbp is not None:
            self.cbp.draw_from_pool()  # the kernel reads new weights through per-seed cursors
        settings = self.streams[0].settings
        self.flip_after = settings.flip_after
        self.flip_one = settings.bit_change == "flip_one"
        self.stream_keys = np.array([s.key for s in self.streams], dtype=np.uint64)
        targets = [s.target.arrays() for s in self.streams]
        self.targets = tuple(np.ascontiguousarray(np.stack(parts)) for parts in zip(*targets, strict=True))

    def advance(self, count: int) -> np.ndarray:
        """Every seed learns online on its next `count` examples; returns each seed's mean squared
        error over them (float64 sums of the float32 per-example errors)."""
        streams = self.streams
        first = streams[0].position
        if any(s.position != first for s in streams):
            raise RuntimeError("the seeds' streams are at different positions")
        patterns = np.stack([s.pattern for s in streams])  # (S, slow bits); (S, 0) without slow bits
        periods = np.array([s.pattern_period for s in streams], dtype=np.int64)
        stream = (
            self.stream_keys,
            patterns,
            periods,
            first,
            count,
            self.flip_after,
            self.flip_one,
            *self.targets,
        )
        progress = np.zeros(len(streams), dtype=np.int64)
        error_sums = np.zeros(len(streams), dtype=np.float64)
        with torch.no_grad():
            while True:
                advance_seeds(
                    stream, self._net_arrays(), ACTIVATION_CODES[self.net.activation_name],
                    self._optimizer(), self._optimizer_state(), self._perturb(), *self._cbp(),
                    progress, error_sums,
                )  # fmt: skip
                if (progress == count).all():
                    break
                self.cbp.refill_pool()  # a seed stopped: its pool might not hold the next step
        for s, stream_ in enumerate(streams):
            stream_.position = first + count
            stream_.pattern = patterns[s].copy()
            stream_.pattern_period = int(periods[s])
        if self.cbp is not None:
            self.cbp.steps += count
        if self.perturb is not None:
            self.perturb.noise.steps += count
        return error_sums / count

    # --- the kernel's arguments: numpy views of the learner's tensors, fetched every call (a
    # checkpoint load swaps optimizer and CBP tensors; a call is a whole step of examples)
    def _net_arrays(self) -> tuple[np.ndarray, ...]:
        params = [p.detach().numpy() for p in self.net.parameters()]
        if len(params) == 4:
            return tuple(params)
        seeds, _, inputs = params[0].shape
        return (np.zeros((seeds, 0, inputs), np.float32), np.zeros((seeds, 0), np.float32), *params)

    def _optimizer(self) -> tuple:
        group = self.learner.optimizer.param_groups[0]
        if isinstance(self.learner.optimizer, SGD):
            code, betas, eps = SGD_CODE, (0.9, 0.999), 1e-8
        else:
            code = ADAMW if group["decoupled_weight_decay"] else ADAM
            betas, eps = group["betas"], group["eps"]
        return (
            code,
            float(group["lr"]),
            float(group.get("momentum", 0.0)),
            float(group["weight_decay"]),
            float(group.get("l2_init", 0.0)),
            float(betas[0]),
            float(betas[1]),
            float(eps),
        )

    def _optimizer_state(self) -> tuple[np.ndarray, ...]:
        """Per parameter (hidden w, b, output w, b): (momentum, -, -, θ₀) for SGD, (step, m, v, θ₀)
        for Adam; zeros of the parameter's shape where a slot is unused (the kernel's loops have no
        branches: a zero coefficient times zeros)."""
        optimizer = self.learner.optimizer
        group = optimizer.param_groups[0]
        params = list(self.net.parameters())
        arrays: list[np.ndarray] = []
        if len(params) == 2:  # the linear learner: no hidden layer
            seeds, _, inputs = params[0].shape
            arrays += [np.zeros((seeds, 0, inputs), np.float32)] * 4 + [np.zeros((seeds, 0), np.float32)] * 4
        for param in params:
            state = optimizer.state[param]
            if isinstance(optimizer, Adam):
                full = optimizer._state_of(param)
                slots = [full["step"], full["exp_avg"], full["exp_avg_sq"]]
            elif group.get("momentum"):
                if "momentum_buffer" not in state:  # buffer·μ + g from zeros is the first step's g
                    state["momentum_buffer"] = torch.zeros_like(param)
                slots = [state["momentum_buffer"], None, None]
            else:
                slots = [None, None, None]
            slots.append(state.get("initial"))
            arrays += [np.zeros(param.shape, np.float32) if t is None else t.numpy() for t in slots]
        return tuple(arrays)

    def _perturb(self) -> tuple:
        if self.perturb is None:
            return (0.0, np.zeros(1, np.uint64), 0, 0)
        keys = self.perturb.noise.noise.keys.numpy().astype(np.uint64)
        return (float(self.perturb.perturb_scale), keys, self.perturb.noise.steps, ShrinkAndPerturb.stream)

    def _cbp(self) -> tuple[tuple, tuple]:
        seeds = len(self.streams)
        cbp = self.cbp
        if cbp is None or not cbp.groups:
            none = (False, 0, 0.0, 0, 0.0, True, False, False, False, np.zeros(seeds, np.uint64), 0, 1, 0.0,
                    np.zeros((seeds, 0), np.float32), np.zeros(seeds, np.int64), -1)  # fmt: skip
            state = (np.zeros((seeds, 1), np.float32),) * 3 + (np.zeros((seeds, 1), np.int64),)
            return none, (*state, np.zeros(seeds), np.zeros(seeds, np.int64))
        config = cbp.config
        group_state = cbp.state[0]
        settings = (
            True,
            UTILITY_CODES[config.util_type],
            float(config.decay_rate),
            int(config.maturity_threshold),
            float(config.replacement_rate),
            config.replacement_base == "eligible",
            bool(config.accumulate),
            bool(config.bias_correction),
            bool(config.reset_optimizer_state),
            cbp.keys.numpy().astype(np.uint64),
            cbp.steps,
            cbp.most_per_step[0],
            cbp._pool_bounds[0],
            cbp._pool.numpy(),
            cbp._cursor.numpy(),
            cbp.saturated_age,
        )
        keys = ("utility", "bias_corrected_utility", "mean_activation", "age", "accumulated")
        return settings, (*(group_state[k].numpy() for k in keys), cbp.replaced_total.numpy())
