"""Fully connected networks for S seeds at once: the regression learner (20 → 5 → 1), its linear
baseline (20 → 1) and the deep MLP of permuted MNIST (784 → 2000 × 3 → 10) are all `MLP`s of
different sizes; one seed is S = 1.

Weights are (S, out, in) and every product is batched. At one example per step a learner's cost is
the number of kernel launches, not arithmetic (docs/performance.md), so stepping S seeds through one
batched network costs about what one seed costs. Nothing in a step mixes seeds, so each seed's
trajectory does not depend on which other seeds share its batch.

Inputs are (S, batch, features); a per-seed loss is the mean over that seed's batch and outputs
(`lop_ray.nets.losses`). The backward pass is hand-written (and compiled for one-hidden-layer
regression nets), dropout and online normalisation included: at one example per step the autograd
engine's fixed cost per node is most of a small net's step, and for permuted MNIST's 2000-wide layers
a hand-written pass can add the SGD update straight into the weights (`fused_sgd_step`);
tests/test_mlp_gradients.py checks it against autograd.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from lop_ray.nets.activations import crelu, init_gain, make_activation
from lop_ray.nets.layer_norm import SeedLayerNorm
from lop_ray.nets.losses import per_seed_cross_entropy, per_seed_mse
from lop_ray.nets.mlp_gradients import DERIVATIVES
from lop_ray.nets.one_example_kernel import ACTIVATION_CODES, one_hidden_layer_squared_error
from lop_ray.nets.online_norm import OnlineNorm
from lop_ray.nets.seed_linear import SeedLinear
from lop_ray.nets.units import (
    SeedView,
    UnitGroup,
    UnitNetwork,
    WeightLayer,
    linear_stack_groups,
    norm_entries,
)

_MSE = (F.mse_loss, per_seed_mse)
_CROSS_ENTROPY = (F.cross_entropy, per_seed_cross_entropy)
_HAND_LOSSES = _MSE + _CROSS_ENTROPY  # the losses the hand-written backward pass knows


def _initial_weight(
    fan_in: int, fan_out: int, activation: str, generator: torch.Generator | None
) -> torch.Tensor:
    """One seed's (out, in) weights: Kaiming-uniform with the activation's gain (selu: PyTorch's
    default U(±1/√fan_in)), drawn from `generator`."""
    if activation == "selu":
        bound = 1.0 / math.sqrt(fan_in)
    else:
        bound = init_gain(activation) * math.sqrt(3.0 / fan_in)
    return torch.empty(fan_out, fan_in).uniform_(-bound, bound, generator=generator)


class MLP(UnitNetwork):
    """Linear layers with one activation between them, for S seeds; every hidden layer is a unit
    group.

    Initialisation (spec/networks.md): hidden weights Kaiming-uniform with the activation's gain,
    output weights Kaiming-uniform with the linear gain, all biases 0 — except that selu nets' hidden
    weights keep PyTorch's default U(±1/√fan_in) (their biases are 0 too). Seed s draws its layers in
    order from `generators[s]`, so its slice is a function of its seed alone.

    Extended Data Fig. 4's methods: `online_norm` normalises each hidden layer's pre-activation
    (`OnlineNorm`; `layer_norm` instead: `SeedLayerNorm`, Lyle et al. 2024), `dropout` drops each
    hidden layer's output in training mode, with masks that are counter-based draws of each seed's
    `dropout_keys` and the step (`dropout_steps`, a buffer, so in the checkpoint), the same for a
    seed in any batch. `crelu` makes every hidden unit a CReLU (`crelu`, Abbas et al. 2023).
    """

    # one-hidden-layer regression nets step through `one_example_kernel`; False keeps PyTorch ops
    # (bench/seed_batching.py measures both)
    use_compiled_step: bool = True
    dropout_stream = 3000  # counter streams 3000 + layer: apart from CBP's and S&P's

    def __init__(
        self,
        sizes: Sequence[int],
        activation: str = "relu",
        generators: Sequence[torch.Generator | None] = (None,),
        dropout: float = 0.0,
        online_norm: bool = False,
        dropout_keys: torch.Tensor | None = None,
        layer_norm: bool = False,
        crelu: bool = False,
    ) -> None:
        super().__init__()
        if crelu and activation != "relu":
            raise ValueError(
                f"crelu concatenates ReLUs of z and −z: activation must be relu, got {activation!r}"
            )
        if online_norm and layer_norm:
            raise ValueError("online_norm and layer_norm both normalise the pre-activations: pick one")
        if len(sizes) < 2:
            raise ValueError(f"an MLP needs at least input and output sizes, got {list(sizes)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if dropout and (dropout_keys is None or len(dropout_keys) != len(generators)):
            raise ValueError("dropout needs one counter key per seed (dropout_keys)")
        self.num_seeds = len(generators)
        self.activation_name = activation
        self.activation = make_activation(activation)
        self._activation_fn = self.activation.forward
        self.crelu = crelu
        # a CReLU layer of w units feeds 2w values to the next layer
        fans_in = [sizes[0], *(2 * b if crelu else b for b in sizes[1:-1])]
        pairs = list(zip(fans_in, sizes[1:], strict=True))
        drawn = [
            [
                _initial_weight(a, b, activation if i < len(pairs) - 1 else "linear", g)
                for i, (a, b) in enumerate(pairs)
            ]
            for g in generators
        ]
        self.layers = nn.ModuleList(
            SeedLinear(
                torch.stack([seed_layers[i] for seed_layers in drawn]),
                torch.zeros(self.num_seeds, b),
            )
            for i, (_, b) in enumerate(pairs)
        )
        self.norms = (
            nn.ModuleList(OnlineNorm(b, self.num_seeds) for b in sizes[1:-1]) if online_norm else None
        )
        self.layer_norm = layer_norm
        if layer_norm:  # autograd computes its gradients: the hand-written backward knows online norm
            self.norms = nn.ModuleList(SeedLayerNorm(b, self.num_seeds) for b in sizes[1:-1])
        self.dropout = dropout
        self.dropout_keys = dropout_keys
        # training forward passes so far, the dropout masks' counter (a buffer: in the checkpoint)
        self.register_buffer("dropout_steps", torch.zeros((), dtype=torch.long))
        self._dropout_noise: dict = {}  # (layer, values per seed, device) → its CounterNoise
        # the Parameter objects stay for the network's life (`.to()`, `load_state_dict` swap their
        # storage): at one example per step, rebuilding these lists ~14 times a step through
        # nn.Module's attribute lookup was a visible share of a small network's step
        self._weight_list = [layer.weight for layer in self.layers]
        self._bias_list = [layer.bias for layer in self.layers]
        # the hand-written backward pass knows dropout (the forward's masks) and online normalisation
        # (its corrected backward pass); the one-example and compiled steps of small layers know
        # neither option
        self.plain = not online_norm and not dropout and not layer_norm and not crelu

    def unit_groups(self) -> list[UnitGroup]:
        """Each hidden layer, its parameters already (S, …)."""
        return linear_stack_groups(self.layers, self.activation_name, self.norms, self.crelu)

    def parameter_views(self) -> list[SeedView]:
        return [SeedView.whole(p) for p in self.parameters()]

    def weight_layers(self) -> list[WeightLayer]:
        """Each linear layer with its constructor's draw (hidden: the activation's Kaiming-uniform,
        output: the linear gain; biases 0); a hidden layer's online norm belongs to its output."""
        last = len(self.layers) - 1
        listed = []
        for i, layer in enumerate(self.layers):
            fan_out, fan_in = layer.weight.shape[1:]
            activation = self.activation_name if i < last else "linear"

            def draw(g, fan_in=fan_in, fan_out=fan_out, activation=activation):
                return _initial_weight(fan_in, fan_out, activation, g), torch.zeros(fan_out)

            norm = norm_entries(self.norms[i], self.num_seeds) if self.norms is not None and i < last else ()
            name = f"hidden{i}" if i < last else "output"
            listed.append(
                WeightLayer(name, SeedView.whole(layer.weight), SeedView.whole(layer.bias), draw, norm)
            )
        return listed

    @property
    def weights(self) -> list[nn.Parameter]:
        return self._weight_list

    @property
    def biases(self) -> list[nn.Parameter]:
        return self._bias_list

    def weight_abs_sums(self) -> list[list[float]]:
        """Σ|W| of each layer, per seed (the weight-magnitude metric). Each seed's sums run over its
        own slice alone, so they are what that seed gives alone, whatever the batch."""
        weights = [w.detach() for w in self.weights]
        return [[w[s].abs().sum().item() for w in weights] for s in range(self.num_seeds)]

    @property
    def weights_per_seed(self) -> int:
        return sum(w[0].numel() for w in self.weights)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x (S, batch, inputs) → (outputs (S, batch, outputs), each hidden layer's (S, batch, units))."""
        activations = []
        dropping = self.dropout and self.training
        step = int(self.dropout_steps) if dropping else 0  # one read per step, not per layer
        layer_inputs = []
        for index, (weight, bias) in enumerate(zip(self.weights[:-1], self.biases[:-1], strict=True)):
            layer_inputs.append(x)
            z = _linear(x, weight, bias)
            if self.norms is not None:
                z = self.norms[index](z)
            x = crelu(z) if self.crelu else self._activation_fn(z)
            activations.append(x)  # CBP and the probes see the units' own activations
            if dropping:
                x = x * self._kept(index, x, step) / (1.0 - self.dropout)
        if dropping:
            self.dropout_steps += 1
        output = _linear(x, self.weights[-1], self.biases[-1])
        return self._with_head_correction(output, [*layer_inputs, x]), activations

    def injectable_layers(self) -> int:
        """Every layer of a plain MLP; the output layer alone behind a norm, dropout or CReLU."""
        return len(self.layers) if self.plain else 1

    def head_activation(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return self._activation_fn

    def _kept(self, layer: int, h: torch.Tensor, step: int) -> torch.Tensor:
        """Step `step`'s dropout mask of hidden layer `layer`, (S, batch, units)."""
        key = (layer, h.numel() // h.shape[0], h.device)
        noise = self._dropout_noise.get(key)
        if noise is None:
            from lop_ray.algos.counter_rng import CounterNoise  # (algos imports nets)

            keys = self.dropout_keys.to(h.device)
            noise = self._dropout_noise[key] = CounterNoise(
                keys, self.dropout_stream + layer, key[1], "uniform"
            )
        return (noise.at(step) >= self.dropout).view(h.shape)

    def _gradient_buffer(self, layer: int) -> torch.Tensor | None:
        """A reused output tensor for a large layer's weight gradient. At S × 2000 × 2000 a fresh
        tensor per step is a fresh mapping of fresh pages (beyond the allocator's cache on the CPU),
        which costs more than the product; the optimizer consumes gradients within the step."""
        weight = self.weights[layer]
        if weight[0].numel() <= _SMALL:
            return None
        buffers = self.__dict__.setdefault("_gradient_buffers", {})
        buffer = buffers.get(layer)
        if buffer is None or buffer.shape != weight.shape or buffer.device != weight.device:
            buffer = buffers[layer] = torch.empty_like(weight, memory_format=torch.contiguous_format)
        return buffer

    def loss_and_gradients(
        self, x: torch.Tensor, target: torch.Tensor, loss_fn: Callable
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Per-seed losses (S,), outputs, hidden activations and gradients in `parameters()` order;
        None for another loss, or online normalisation outside training mode (autograd then)."""
        if not self._hand_backward_applies(loss_fn):
            return None
        arrays = self._compiled_step(x, loss_fn) if x.shape[1] == 1 and self.plain else None
        if arrays is not None:  # no autograd involved: no no_grad context to enter (~µs per step)
            return self._compiled_one_example_gradients(x, target, arrays)
        return self._torch_loss_and_gradients(x, target, loss_fn)

    @torch.no_grad()
    def _torch_loss_and_gradients(
        self, x: torch.Tensor, target: torch.Tensor, loss_fn: Callable
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        if self.plain and x.shape[1] == 1 and all(w.shape[1] * w.shape[2] <= _SMALL for w in self.weights):
            return self._one_example_gradients(x, target, loss_fn)
        passed = self._forward_for_backward(x)
        loss, delta = _per_seed_loss_gradient(passed.output, target, loss_fn)
        grads: list[torch.Tensor] = []
        norm_grads: list[torch.Tensor] = []  # (gain, bias) of each hidden layer's normalisation, top down
        one_example = x.shape[1] == 1  # a sum over one example is that example: a view, not a kernel
        for layer in range(len(self.weights) - 1, -1, -1):
            grads.append(delta.squeeze(1) if one_example else delta.sum(dim=1))
            grads.append(_outer(delta, passed.inputs[layer], self._gradient_buffer(layer)))
            if layer:
                delta, affine = self._delta_below(passed, layer, _backward(delta, self.weights[layer]))
                norm_grads.extend(reversed(affine))
        grads.reverse()
        norm_grads.reverse()  # `parameters()` order: the layers, then each norm's gain and bias
        return loss, passed.output, passed.hidden, grads + norm_grads

    def _hand_backward_applies(self, loss_fn: Callable) -> bool:
        # online normalisation's backward pass is defined for training steps only (eval mode
        # normalises with frozen estimates, which `forward` and autograd handle)
        autograd_only = self.layer_norm or self.crelu or self.head_correction is not None
        return loss_fn in _HAND_LOSSES and not autograd_only and (self.norms is None or self.training)

    def _forward_for_backward(self, x: torch.Tensor) -> _ForwardPass:
        """The forward pass with what the backward pass reads; in training mode with dropout, the
        same masks (and the same step count advance) as `forward`."""
        dropping = self.dropout and self.training
        step = int(self.dropout_steps) if dropping else 0
        passed = _ForwardPass([x], [], [], [], [], None)
        h = x
        for index, (weight, bias) in enumerate(zip(self.weights[:-1], self.biases[:-1], strict=True)):
            z = _linear(h, weight, bias)
            if self.norms is not None:  # as `OnlineNorm.forward` in training mode: the same values
                norm = self.norms[index]
                normalised, std = norm.train_forward_parts(z)
                passed.normalised.append((normalised, std))
                z = normalised * norm.weight.unsqueeze(1) + norm.bias.unsqueeze(1)
            h = self._activation_fn(z)
            passed.pre_activations.append(z)
            passed.hidden.append(h)
            if dropping:
                kept = self._kept(index, h, step)
                passed.kept.append(kept)
                h = h * kept / (1.0 - self.dropout)  # as `forward`: the same values
            passed.inputs.append(h)
        if dropping:
            self.dropout_steps += 1
        passed.output = _linear(h, self.weights[-1], self.biases[-1])
        return passed

    def _delta_below(
        self, passed: _ForwardPass, layer: int, back: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """δ of hidden layer `layer` − 1 from the gradient `back` reaching its (dropped) output, in
        autograd's order: through the dropout scaling and mask, the activation, then the online
        normalisation's gain and bias (whose gradients come back too; () without it) and its
        corrected backward pass."""
        unit = layer - 1
        if passed.kept:
            back = back / (1.0 - self.dropout) * passed.kept[unit]
        derivative = DERIVATIVES[self.activation_name]
        delta = back * derivative(passed.pre_activations[unit], passed.hidden[unit])
        if self.norms is None:
            return delta, ()
        norm = self.norms[unit]
        normalised, std = passed.normalised[unit]
        gain_grad, bias_grad = (delta * normalised).squeeze(1), delta.squeeze(1)
        grad_normalised = delta * norm.weight.unsqueeze(1)
        return norm.backward_parts(grad_normalised, normalised, std), (gain_grad, bias_grad)

    @torch.no_grad()
    def fused_sgd_step(
        self, x: torch.Tensor, target: torch.Tensor, loss_fn: Callable, lr: float, weight_decay: float
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]] | None:
        """Forward, backward and a stateless SGD update in one pass over the layers, each weight
        gradient added straight into its weights; (per-seed losses, outputs, hidden activations), or
        None for small layers (the one-example paths are cheaper there).

        For permuted MNIST's 2000 × 2000 layers a step's cost is moving weights: handing a gradient
        to the optimizer writes an S × out × in tensor and reads it back, two of the six passes over
        the weights; W ← (1 − lr·wd)·W − lr·δxᵀ in place leaves the four a step needs (forward,
        backward, read and write). Each layer's δ for the layer below is taken before the update."""
        if not self._hand_backward_applies(loss_fn) or all(_small(x, w) for w in self.weights):
            return None
        passed = self._forward_for_backward(x)
        inputs = passed.inputs
        loss, delta = _per_seed_loss_gradient(passed.output, target, loss_fn)
        one_example = x.shape[1] == 1
        for layer in range(len(self.weights) - 1, -1, -1):
            weight, bias = self.weights[layer], self.biases[layer]
            back = _backward(delta, weight) if layer else None
            if weight_decay:
                weight.mul_(1.0 - lr * weight_decay)
                bias.mul_(1.0 - lr * weight_decay)
            if one_example:
                weight.addcmul_(delta.transpose(1, 2), inputs[layer], value=-lr)
                bias.sub_(delta.squeeze(1), alpha=lr)
            else:
                weight.baddbmm_(delta.transpose(1, 2), inputs[layer], alpha=-lr)
                bias.sub_(delta.sum(dim=1), alpha=lr)
            if layer:
                delta, affine = self._delta_below(passed, layer, back)
                if affine:  # the layer's online normalisation: its gain and bias, updated alike
                    norm = self.norms[layer - 1]
                    for parameter, grad in zip((norm.weight, norm.bias), affine, strict=True):
                        if weight_decay:
                            parameter.mul_(1.0 - lr * weight_decay)
                        parameter.sub_(grad, alpha=lr)
        return loss, passed.output, passed.hidden

    def _one_example_gradients(
        self, x: torch.Tensor, target: torch.Tensor, loss_fn: Callable
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """`loss_and_gradients` for one example per seed through small layers (regression).

        The same products and sums as the general path, in the same order, so the same values; what
        differs is the bookkeeping around them. At this size every PyTorch call costs its dispatch
        (~3–10 µs here) and almost no arithmetic, so the step's cost is its number of calls: per-seed
        vectors stay (S, width), each (S, 1, width) form is made once as a view, the ReLU gate is
        PyTorch's own one-kernel ReLU backward, and a gradient summed over one example is not summed.
        """
        derivative = DERIVATIVES[self.activation_name]
        relu = self.activation_name == "relu"
        inputs = [x]  # (S, 1, features): what each layer's weights multiply, broadcast over outputs
        pre_activations = []
        for weight, bias in zip(self.weights[:-1], self.biases[:-1], strict=True):
            z = (weight * inputs[-1]).sum(dim=2) + bias
            pre_activations.append(z)
            inputs.append(self._activation_fn(z).unsqueeze(1))
        output = (self.weights[-1] * inputs[-1]).sum(dim=2) + self.biases[-1]  # (S, outputs)
        if loss_fn in _MSE and output.shape[1] == 1:
            diff = output - target.view(output.shape)
            loss = (diff * diff).view(-1)
            delta = diff + diff  # 2·diff, exactly, without a scalar operand's conversion
        else:
            loss, delta = _per_seed_loss_gradient(output.unsqueeze(1), target, loss_fn)
            delta = delta.squeeze(1)
        grads: list[torch.Tensor] = []
        for layer in range(len(self.weights) - 1, -1, -1):
            column = delta.unsqueeze(2)  # (S, out, 1)
            grads.append(delta)
            grads.append(column * inputs[layer])
            if layer:
                back = (column * self.weights[layer]).sum(dim=1)
                h = inputs[layer].squeeze(1)
                if relu:
                    delta = torch.ops.aten.threshold_backward(back, h, 0.0)
                else:
                    delta = back * derivative(pre_activations[layer - 1], h)
        grads.reverse()
        return loss, output.unsqueeze(1), inputs[1:], grads

    def _compiled_step(self, x: torch.Tensor, loss_fn: Callable) -> list | None:
        """The compiled step's arrays (numpy views of the parameters and of reused buffers), or
        None where it does not apply. Views are made once per parameter storage: a step is a few
        tens of microseconds, and converting 14 tensors costs ~10 of them."""
        if (
            not self.use_compiled_step
            or loss_fn not in _MSE
            or x.dtype != torch.float32
            or x.device.type != "cpu"
        ):
            return None
        parameters = self.__dict__.get("_parameter_tuple")
        if parameters is None:  # the Parameter objects stay; `.to()` and friends swap their storage
            parameters = self.__dict__["_parameter_tuple"] = tuple(self.parameters())
        key = tuple(p.data_ptr() for p in parameters)
        cached = self.__dict__.get("_compiled_step_arrays")
        if cached is not None and cached[0] == key:
            return cached[1]
        applies = (
            len(self.weights) == 2
            and self.weights[1].shape[1] == 1
            and self.activation_name in ACTIVATION_CODES
            and all(p.device.type == "cpu" and p.dtype == torch.float32 for p in parameters)
        )
        arrays = None
        if applies:
            w1, w2 = self.weights
            buffers = [
                torch.empty_like(w1),
                torch.empty(w1.shape[:2]),
                torch.empty_like(w2),
                torch.empty(w2.shape[:2]),
                torch.empty(w1.shape[:2]),  # hidden activations
            ]
            arrays = [[p.detach().numpy() for p in parameters], buffers, [b.numpy() for b in buffers]]
        self.__dict__["_compiled_step_arrays"] = (key, arrays)
        return arrays

    def _compiled_one_example_gradients(
        self, x: torch.Tensor, target: torch.Tensor, arrays: list
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """The one-example step of a one-hidden-layer net as one compiled call (`one_example_kernel`).
        Loss and output are fresh each step (callers keep them); the hidden activations and the
        gradients live in buffers reused every step, which the optimizer and the interventions
        consume within the step."""
        parameters, buffers, buffer_arrays = arrays
        seeds = x.shape[0]
        loss, output = torch.empty(seeds), torch.empty(seeds, 1)
        one_hidden_layer_squared_error(
            x.view(seeds, -1).numpy(),
            target.view(seeds).numpy(),
            *parameters,
            ACTIVATION_CODES[self.activation_name],
            loss.numpy(),
            output.numpy(),
            *buffer_arrays,
        )
        return loss, output.unsqueeze(1), [buffers[4].unsqueeze(1)], buffers[:4]


@dataclass
class _ForwardPass:
    """A training forward pass as the hand-written backward pass reads it: each layer's input
    (after dropout), each hidden layer's pre-activation (after normalisation) and own activation
    (before dropout: what CBP and the probes see), the dropout masks, the output."""

    inputs: list[torch.Tensor]
    pre_activations: list[torch.Tensor]
    hidden: list[torch.Tensor]
    kept: list[torch.Tensor]
    normalised: list[tuple[torch.Tensor, torch.Tensor]]  # online normalisation's (y, σ) per layer
    output: torch.Tensor | None


# Small layers at one example per seed (regression: 20 → 5 → 1) are cheaper as broadcast products
# and sums, which vectorise across seeds, than as batched matmuls, which loop over tiny matrices.
_SMALL = 4096


def _small(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return x.shape[1] == 1 and weight.shape[1] * weight.shape[2] <= _SMALL


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x (S, B, in) → (S, B, out) through each seed's own layer."""
    if _small(x, weight):
        return ((weight * x).sum(dim=2) + bias).unsqueeze(1)
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


def _outer(delta: torch.Tensor, inputs: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Weight gradient Σ_b δ_b x_bᵀ per seed: (S, out, in), written into `out` when given."""
    if out is None and _small(inputs, delta.transpose(1, 2)):
        return delta.transpose(1, 2) * inputs
    if inputs.shape[1] == 1:  # one example: an outer product, which bmm would also compute this way
        return torch.mul(delta.transpose(1, 2), inputs, out=out)
    return torch.bmm(delta.transpose(1, 2), inputs, out=out)


def _backward(delta: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """δ W per seed: (S, B, in)."""
    if _small(delta, weight):
        return (delta.transpose(1, 2) * weight).sum(dim=1, keepdim=True)
    return torch.bmm(delta, weight)


def _per_seed_loss_gradient(
    output: torch.Tensor, target: torch.Tensor, loss_fn: Callable
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss per seed, d Σ_s loss_s / d output) for mean-reduced MSE or cross-entropy."""
    if loss_fn in _MSE:
        diff = output - target
        per_seed = diff[0].numel()
        squared = diff * diff
        loss = squared.view(-1) if per_seed == 1 else squared.flatten(1).mean(dim=1)
        return loss, diff * (2.0 / per_seed)
    if loss_fn in _CROSS_ENTROPY:
        log_probs = torch.log_softmax(output, dim=2)
        picked = log_probs.gather(2, target.unsqueeze(2))
        grad = log_probs.exp()
        grad.scatter_add_(2, target.unsqueeze(2), torch.full_like(picked, -1.0))
        return -picked.flatten(1).mean(dim=1), grad / target.shape[1]
    raise ValueError(f"no per-seed gradient for {loss_fn}; use per_seed_mse or per_seed_cross_entropy")
