"""Learners with a seed axis: each seed of a batch follows exactly the trajectory it follows alone
(S = 1), bit for bit on the CPU; and one seed follows a plain PyTorch learner (`nn.Linear` layers,
`torch.optim`, autograd) to float rounding (batched kernels sum in another order)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

from lop_ray.algos import CBPConfig
from lop_ray.algos.cbp import UTIL_TYPES, ContinualBackprop
from lop_ray.algos.counter_rng import normal, random_bits, seed_keys, uniform
from lop_ray.algos.injection import InjectionConfig
from lop_ray.algos.layer_reset import LayerResetConfig
from lop_ray.algos.parseval import ParsevalConfig
from lop_ray.algos.redo import ReDoConfig
from lop_ray.algos.snr import SNRConfig
from lop_ray.algos.upgd import UPGDConfig
from lop_ray.data.regression import RegressionStream
from lop_ray.experiments.learner import LearnerSettings
from lop_ray.experiments.regression import RegressionConfig, RegressionExperiment
from lop_ray.nets import MLP
from lop_ray.nets.activations import make_activation
from lop_ray.nets.one_example_kernel import ACTIVATION_CODES


def _cbp(**options) -> LearnerSettings:
    config = CBPConfig(replacement_rate=0.01, maturity_threshold=20, **options)
    return LearnerSettings(algorithm="cbp", step_size=0.01, momentum=0.9, cbp=config)


LEARNERS = {
    **{f"cbp_{u}_accumulate": _cbp(util_type=u, accumulate=True) for u in UTIL_TYPES},
    "cbp_probabilistic": _cbp(util_type="contribution", accumulate=False),
    "cbp_original_width_base": _cbp(
        bias_correction=False, reset_optimizer_state=False, replacement_base="width"
    ),
    "bp_sgd": LearnerSettings(step_size=0.01),
    "l2_momentum": LearnerSettings(algorithm="l2", step_size=0.01, momentum=0.9, weight_decay=1e-3),
    "bp_adam": LearnerSettings(optimizer="adam", step_size=1e-3),
    "snp_sgd": LearnerSettings(algorithm="snp", step_size=0.01, weight_decay=1e-2, perturb_scale=1e-2),
    # a high threshold: some unit of some seed is dormant at most checks
    "redo_momentum": LearnerSettings(
        algorithm="redo", step_size=0.01, momentum=0.9, method=ReDoConfig(threshold=0.5, reset_period=7)
    ),
    # the methods since the paper (docs/methods.md), aggressive enough to act within the test
    "layer_reset": LearnerSettings(
        algorithm="layer_reset", step_size=0.01, method=LayerResetConfig(reset_period=50, layers=0)
    ),
    "parseval": LearnerSettings(
        algorithm="parseval", step_size=0.01, method=ParsevalConfig(parseval_strength=0.1)
    ),
    "upgd": LearnerSettings(
        algorithm="upgd", optimizer="upgd", step_size=0.01, upgd=UPGDConfig(beta_utility=0.9, sigma=0.1)
    ),
    "snr": LearnerSettings(algorithm="snr", step_size=0.01, method=SNRConfig(rejection_percentile=0.5)),
    # the whole two-layer net as the head: a pair of frozen heads per injection
    "plasticity_injection": LearnerSettings(
        algorithm="plasticity_injection",
        optimizer="adam",
        step_size=0.01,
        method=InjectionConfig(injection_period=50, head_layers=2),
    ),
    "plasticity_injection_output": LearnerSettings(
        algorithm="plasticity_injection", step_size=0.01, method=InjectionConfig(injection_period=40)
    ),
}


def _config(learner: LearnerSettings, per_step: int = 60, compiled: bool = True) -> RegressionConfig:
    return RegressionConfig(examples_per_step=per_step, learner=learner, compiled=compiled)


# both paths of the regression learner: the compiled kernel (where it has the learner) and PyTorch's
PATHS = [True, False]


@pytest.mark.parametrize("compiled", PATHS, ids=["compiled", "pytorch"])
@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_each_seed_of_a_batch_follows_its_own_trajectory_exactly(name, compiled):
    config = _config(LEARNERS[name], compiled=compiled)
    seeds = [3, 0, 7]
    batch = RegressionExperiment(config, seeds)
    together = [batch.run_step() for _ in range(3)]
    for position, seed in enumerate(seeds):
        alone = RegressionExperiment(config, [seed])
        assert [alone.run_step()[0] for _ in range(3)] == [step[position] for step in together], seed
    if any(method in name for method in ("cbp", "redo", "layer_reset", "snr")):
        assert all(step["replaced_units"] > 0 for step in together[-1])


class PlainLearner:
    """One seed's learner written the plain PyTorch way: `nn.Linear` layers holding the seed's
    slice of the batched network's initial weights, autograd, `torch.optim.SGD` / `Adam`; an
    independent check of the seed-axis learner (not a second implementation of it)."""

    def __init__(self, net: MLP, seed_index: int, settings: LearnerSettings) -> None:
        self.layers = torch.nn.ModuleList()
        for layer in net.layers:
            linear = torch.nn.Linear(layer.weight.shape[2], layer.weight.shape[1])
            with torch.no_grad():
                linear.weight.copy_(layer.weight[seed_index])
                linear.bias.copy_(layer.bias[seed_index])
            self.layers.append(linear)
        self.activation = make_activation(net.activation_name)
        if settings.optimizer == "adam":
            self.optimizer = torch.optim.Adam(
                self.layers.parameters(), settings.step_size, (settings.beta1, settings.beta2), settings.eps
            )
        else:
            self.optimizer = torch.optim.SGD(
                self.layers.parameters(),
                settings.step_size,
                settings.momentum,
                weight_decay=settings.weight_decay,
            )

    def learn(self, x: torch.Tensor, y: torch.Tensor) -> float:
        h = x
        for layer in self.layers[:-1]:
            h = self.activation(layer(h))
        loss = F.mse_loss(self.layers[-1](h), y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.item()


@pytest.mark.parametrize("compiled", PATHS, ids=["compiled", "pytorch"])
@pytest.mark.parametrize("name", ["bp_sgd", "l2_momentum", "bp_adam"])
def test_one_seed_follows_a_plain_pytorch_learner(name, compiled):
    """S = 1 is the single-seed learner: its online errors are those of the plain learner on the
    same stream to float rounding (the seed-axis step is hand-written and compiled, torch.optim's is
    autograd plus its own update)."""
    config = _config(LEARNERS[name], per_step=100, compiled=compiled)
    seeded = RegressionExperiment(config, [5])
    assert (seeded.compiled is not None) == compiled
    plain = PlainLearner(seeded.net, 0, LEARNERS[name])
    stream = RegressionStream(config.problem, 5)
    for _ in range(3):
        got = seeded.run_step()[0]
        x, y = stream.take(100)
        errors = [plain.learn(xi, yi) for xi, yi in zip(x.split(1), y.split(1), strict=True)]
        assert got["squared_error"] == pytest.approx(sum(errors) / len(errors), rel=1e-4)


@pytest.mark.parametrize("name", sorted(name for name in LEARNERS if name.startswith("cbp")))
def test_compiled_cbp_statistics_follow_the_pytorch_path(name, monkeypatch):
    """Small CPU layers update CBP's statistics in one compiled call; large ones (and CUDA) take
    PyTorch's ops. Both replace the same units at the same steps and agree to float rounding."""
    config = _config(LEARNERS[name], compiled=False)  # the PyTorch learner's two ways
    compiled = RegressionExperiment(config, [3, 0])
    assert compiled.compiled is None and compiled.cbp.compiled_statistics == [True]
    compiled_steps = [compiled.run_step() for _ in range(4)]
    monkeypatch.setattr(ContinualBackprop, "compiled_statistics_limit", 0)
    torch_ops = RegressionExperiment(config, [3, 0])
    assert torch_ops.cbp.compiled_statistics == [False]
    for got, expected in zip(compiled_steps, [torch_ops.run_step() for _ in range(4)], strict=True):
        for seed_got, seed_expected in zip(got, expected, strict=True):
            assert seed_got["replaced_units"] == seed_expected["replaced_units"]
            assert seed_got["squared_error"] == pytest.approx(seed_expected["squared_error"], rel=1e-5)
    assert compiled_steps[-1][0]["replaced_units"] > 0
    for mine, theirs in zip(compiled.cbp.state, torch_ops.cbp.state, strict=True):
        assert torch.equal(mine["age"], theirs["age"])
        for key in ("utility", "bias_corrected_utility", "mean_activation", "accumulated"):
            torch.testing.assert_close(mine[key], theirs[key], rtol=1e-5, atol=1e-7)


def test_batched_network_starts_as_each_seeds_own_network_and_matches_autograd():
    generators = [torch.Generator().manual_seed(s) for s in (0, 1)]
    net = MLP([6, 4, 3], "tanh", generators)
    x, y = torch.randn(2, 1, 6), torch.randint(0, 3, (2, 1))
    loss, _, _, grads = net.loss_and_gradients(x, y, F.cross_entropy)
    for s in (0, 1):
        single = _one_seed(net, s)
        draw = torch.Generator().manual_seed(s)  # seed s's first layer: Kaiming-uniform, tanh gain
        bound = torch.nn.init.calculate_gain("tanh") * (3.0 / 6) ** 0.5
        assert torch.equal(torch.empty(4, 6).uniform_(-bound, bound, generator=draw), net.layers[0].weight[s])
        output, _ = single(x[s : s + 1])
        expected_loss = F.cross_entropy(output[0], y[s])
        expected = torch.autograd.grad(expected_loss, list(single.parameters()))
        assert loss[s].item() == pytest.approx(expected_loss.item(), rel=1e-6)
        for got, want in zip(grads, expected, strict=True):
            torch.testing.assert_close(got[s], want[0], rtol=1e-5, atol=1e-6)


def _one_seed(net: MLP, s: int) -> MLP:
    """Seed s's slice of `net` as a network of its own (S = 1), for autograd to differentiate."""
    sizes = [net.layers[0].weight.shape[2]] + [layer.weight.shape[1] for layer in net.layers]
    single = MLP(sizes, net.activation_name)
    with torch.no_grad():
        for layer, source in zip(single.layers, net.layers, strict=True):
            layer.weight.copy_(source.weight[s : s + 1])
            layer.bias.copy_(source.bias[s : s + 1])
    return single


@pytest.mark.parametrize("activation", sorted(ACTIVATION_CODES))
def test_compiled_one_example_step_matches_autograd_for_every_activation(activation):
    # regression's 20 → 5 → 1 at one example per seed takes the compiled path (one_example_kernel)
    seeds = (0, 1, 2)
    net = MLP([20, 5, 1], activation, [torch.Generator().manual_seed(s) for s in seeds])
    data = torch.Generator().manual_seed(1)
    x, y = torch.randn(3, 1, 20, generator=data), torch.randn(3, 1, 1, generator=data)
    assert net._compiled_step(x, F.mse_loss) is not None
    loss, output, (hidden,), grads = net.loss_and_gradients(x, y, F.mse_loss)
    for s in seeds:
        single = _one_seed(net, s)
        single.use_compiled_step = False
        expected_output, (expected_hidden,) = single(x[s : s + 1])
        expected_loss = F.mse_loss(expected_output, y[s : s + 1])
        expected = torch.autograd.grad(expected_loss, list(single.parameters()))
        expected_output, expected_hidden = expected_output[0], expected_hidden[0]
        expected = [e[0] for e in expected]
        # float32 rounding apart (sums in index order; numba's exp and tanh against PyTorch's)
        assert loss[s].item() == pytest.approx(expected_loss.item(), rel=1e-4)
        torch.testing.assert_close(output[s], expected_output.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(hidden[s], expected_hidden.detach(), rtol=1e-5, atol=1e-6)
        for got, want in zip(grads, expected, strict=True):
            torch.testing.assert_close(got[s], want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("examples", "weight_decay"), [(1, 0.0), (1, 0.01), (3, 0.0), (3, 0.01)])
def test_fused_sgd_step_is_the_gradient_step_followed_by_sgd(examples, weight_decay):
    from lop_ray.algos.optim import SGD

    generators = [torch.Generator().manual_seed(s) for s in (0, 1)]
    fused = MLP([70, 80, 10], "relu", generators)  # 70 × 80 is beyond the small layers
    stepped, initial = copy.deepcopy(fused), copy.deepcopy(fused)
    x, y = torch.randn(2, examples, 70), torch.randint(0, 10, (2, examples))
    loss, output, activations, grads = stepped.loss_and_gradients(x, y, F.cross_entropy)
    SGD(stepped.parameters(), lr=0.1, weight_decay=weight_decay).apply_gradients(grads)
    fused_loss, fused_output, fused_activations = fused.fused_sgd_step(
        x, y, F.cross_entropy, 0.1, weight_decay
    )
    assert torch.equal(fused_loss, loss) and torch.equal(fused_output, output)
    assert torch.equal(fused_activations[0], activations[0])
    for got, want, before in zip(fused.parameters(), stepped.parameters(), initial.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
        assert not torch.equal(got, before)


def test_compiled_step_is_not_taken_where_it_does_not_apply():
    two_hidden = MLP([20, 5, 5, 1], "relu", [torch.Generator().manual_seed(0)])
    selu = MLP([20, 5, 1], "selu", [torch.Generator().manual_seed(0)])
    one_hidden = MLP([20, 5, 1], "relu", [torch.Generator().manual_seed(0)])
    x = torch.randn(1, 1, 20)
    assert two_hidden._compiled_step(x, F.mse_loss) is None
    assert selu._compiled_step(x, F.mse_loss) is None
    assert one_hidden._compiled_step(x, F.cross_entropy) is None
    assert one_hidden.double()._compiled_step(x.double(), F.mse_loss) is None


@pytest.mark.parametrize("compiled", PATHS, ids=["compiled", "pytorch"])
@pytest.mark.parametrize(
    "name",
    [
        "snp_sgd",
        "cbp_probabilistic",
        "cbp_random_accumulate",
        "redo_momentum",
        "upgd",
        "snr",
        "plasticity_injection",
    ],
)
def test_resumed_batch_continues_bit_identically(name, compiled):
    config = _config(LEARNERS[name], compiled=compiled)
    straight = RegressionExperiment(config, [0, 1])
    expected = [straight.run_step() for _ in range(3)]
    first = RegressionExperiment(config, [0, 1])
    got = [first.run_step()]
    state = copy.deepcopy(first.state_dict())
    resumed = RegressionExperiment(config, [0, 1])
    resumed.load_state_dict(state)
    got += [resumed.run_step() for _ in range(2)]
    assert got == expected


def test_counter_based_draws_depend_on_key_counter_stream_and_element_only():
    keys = seed_keys([0, 1, 2])
    assert torch.equal(random_bits(keys, 4, 1, 50)[1:2], random_bits(seed_keys([1]), 4, 1, 50))
    assert not torch.equal(random_bits(keys, 4, 1, 50), random_bits(keys, 5, 1, 50))
    assert not torch.equal(random_bits(keys, 4, 1, 50), random_bits(keys, 4, 2, 50))
    u = uniform(keys, 0, 0, 100_000)
    assert 0 < u.min() and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.01
    z = normal(keys, 0, 0, 100_000)
    assert abs(z.mean().item()) < 0.02 and abs(z.std().item() - 1) < 0.02


@pytest.mark.parametrize("counter", [0, 5, 2**32 - 1, torch.arange(100, 140)])
def test_compiled_cpu_draws_are_the_integer_hash_every_device_computes(counter):
    # the CPU takes a compiled loop; other devices the tensor expression: the same integers
    from lop_ray.algos.counter_rng import _MASK32, hash32

    keys = seed_keys([0, 3, 11])
    counters = torch.as_tensor(counter)
    for stream in (0, 7):
        salt = hash32((counters * 0x9E3779B1 + stream * 0x85EBCA77) & _MASK32)
        base = hash32(keys.reshape(-1, *([1] * counters.dim())) ^ salt).unsqueeze(-1)
        expected = hash32(hash32((base + torch.arange(33)) & _MASK32) ^ base)
        assert torch.equal(random_bits(keys, counter, stream, 33), expected)


def test_block_drawn_noise_is_a_function_of_seed_and_step_only():
    from lop_ray.algos.counter_rng import CounterNoise

    together = CounterNoise(seed_keys([4, 9]), 3, 5, "normal", block_values=64)
    alone = CounterNoise(seed_keys([9]), 3, 5, "normal", block_values=64)
    assert together.block_steps != alone.block_steps  # different blocks, same values
    sequential = [together.at(step)[1] for step in range(20)]
    jumping = [alone.at(step)[0] for step in (13, 2, 19, 0, 7)]  # as a resume would
    for step, values in zip((13, 2, 19, 0, 7), jumping, strict=True):
        assert torch.equal(values, sequential[step])
    assert not torch.equal(sequential[0], sequential[1])
    assert torch.equal(sequential[5], normal(seed_keys([9]), 5, 3, 5)[0])  # block = the per-step draw


@pytest.mark.parametrize("seed", [0, 7])
def test_compiled_normals_are_pytorchs_float64_box_muller_in_float32(seed):
    """The compiled loops' Box–Muller (fdlibm's log and sin/cos as vectorisable loops, what `normal`
    computes on the CPU) against PyTorch's float64 log, cos and sin (what a GPU computes): after
    rounding to float32 the same values, but for a rare one ulp where a float64 result sits on a
    float32 rounding boundary (none in 2M measured). Several counters at once, as the regression
    kernel and `CounterNoise` draw them, and an odd count (the last pair's sine unused)."""
    import numpy as np

    from lop_ray.algos.counter_rng import _torch_normal

    keys = seed_keys([seed, seed + 1])
    counters, stream, count = torch.tensor([12, 13, 500_000]), 1000, 33_333
    got = normal(keys, counters, stream, count).numpy()
    expected = _torch_normal(keys, counters, stream, count).to(torch.float32).numpy()
    assert got.shape == (2, 3, count)
    differing = got != expected
    assert differing.sum() <= 2
    assert np.all(np.abs(got - expected)[differing] <= np.spacing(np.abs(expected))[differing])
    assert abs(got.std() - 1.0) < 0.01
    half = (count + 1) // 2  # a pair's sine is the element half a row later: the same radius
    radius = np.hypot(got[..., : count - half].astype(np.float64), got[..., half:].astype(np.float64))
    u1 = uniform(keys, counters, 2 * stream, count - half, torch.float64).numpy()
    np.testing.assert_allclose(radius, np.sqrt(-2.0 * np.log(u1)), rtol=1e-6)
