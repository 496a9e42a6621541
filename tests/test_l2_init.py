"""L2 Init (regenerative regularisation, Kumar et al. 2023): the loss L(θ) + λ‖θ − θ₀‖², i.e. the
gradient plus 2λ(θ − θ₀), θ₀ the parameters when the optimizer is built. Pinned on hand-computed
steps, against PyTorch's Adam fed the regularised gradient, through checkpoints and unit resets,
and in the sweep schema."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml

from lop_ray.algos import Backprop, make_optimizer, reset_optimizer_entries
from lop_ray.experiments.learner import LearnerSettings, build_learner, initial_mlp, learner_from_trial
from lop_ray.nets.losses import per_seed_cross_entropy
from lop_ray.schema import SweepError, load_sweep


def _param(*values: float) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.tensor(values, dtype=torch.float64))


def test_sgd_steps_by_hand():
    """θ₀ = (1, −2), g = 0.5 every step, lr 0.1, λ 0.25:
    step 1: θ₁ = θ₀ − 0.1·0.5 = (0.95, −2.05)       (θ₀ − θ₀ = 0: no pull yet)
    step 2: θ₂ = θ₁ − 0.1·(0.5 + 2·0.25·(−0.05)) = θ₁ − 0.0475 = (0.9025, −2.0975)."""
    param = _param(1.0, -2.0)
    optimizer = make_optimizer([param], "sgd", 0.1, l2_init=0.25)
    grad = torch.full((2,), 0.5, dtype=torch.float64)
    optimizer.apply_gradients([grad])
    torch.testing.assert_close(param.detach(), torch.tensor([0.95, -2.05], dtype=torch.float64))
    optimizer.apply_gradients([grad])
    torch.testing.assert_close(param.detach(), torch.tensor([0.9025, -2.0975], dtype=torch.float64))


def test_without_loss_gradient_the_weights_return_to_their_initial_values_geometrically():
    """g = 0: θ_t − θ₀ = (1 − 2λ·lr)^t (θ_start − θ₀); with L2 (wd) the fixed point is not θ₀ but
    2λθ₀/(2λ + wd) — the two terms add."""
    param = _param(3.0)
    optimizer = make_optimizer([param], "sgd", 0.1, l2_init=0.5)
    with torch.no_grad():
        param.add_(2.0)  # drifted away from θ₀ = 3
    for _ in range(10):
        optimizer.apply_gradients([torch.zeros(1, dtype=torch.float64)])
    assert float(param.detach()) == pytest.approx(3.0 + 2.0 * (1 - 2 * 0.5 * 0.1) ** 10, rel=1e-12)

    anchored = _param(3.0)
    both = make_optimizer([anchored], "sgd", 0.1, weight_decay=0.5, l2_init=0.5)
    for _ in range(2000):
        both.apply_gradients([torch.zeros(1, dtype=torch.float64)])
    assert float(anchored.detach()) == pytest.approx(2 * 0.5 * 3.0 / (2 * 0.5 + 0.5), rel=1e-9)


def test_adam_passes_the_term_through_its_moments_as_the_loss_gradient():
    """Ours with l2_init against PyTorch's Adam given g + 2λ(θ − θ₀) by hand, over 5 steps."""
    ours, reference = _param(0.3, -0.7, 1.1), _param(0.3, -0.7, 1.1)
    initial = reference.detach().clone()
    adam = make_optimizer([ours], "adam", 0.01, l2_init=0.2)
    torch_adam = torch.optim.Adam([reference], lr=0.01)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        grad = torch.randn(3, generator=gen, dtype=torch.float64)
        adam.apply_gradients([grad])
        reference.grad = grad + 2 * 0.2 * (reference.detach() - initial)
        torch_adam.step()
        torch.testing.assert_close(ours.detach(), reference.detach(), rtol=1e-12, atol=1e-14)
    assert not torch.equal(ours.detach(), initial)


def test_the_anchor_is_checkpointed_and_survives_unit_resets():
    param = _param(1.0, 2.0)
    optimizer = make_optimizer([param], "sgd", 0.1, momentum=0.9, l2_init=0.25)
    optimizer.apply_gradients([torch.tensor([1.0, -1.0], dtype=torch.float64)])
    saved, saved_param = copy.deepcopy(optimizer.state_dict()), param.detach().clone()

    reset_optimizer_entries(optimizer, param, (slice(0, 1),))  # what CBP / ReDo do to a fresh unit
    torch.testing.assert_close(
        optimizer.state[param]["initial"], torch.tensor([1.0, 2.0], dtype=torch.float64)
    )
    assert float(optimizer.state[param]["momentum_buffer"][0]) == 0.0

    # a fresh process: another network's values, the checkpoint loaded; the anchor is the saved one
    restored = torch.nn.Parameter(saved_param.clone())
    again = make_optimizer([restored], "sgd", 0.1, momentum=0.9, l2_init=0.25)
    again.load_state_dict(saved)
    original = torch.nn.Parameter(saved_param.clone())
    first = make_optimizer([original], "sgd", 0.1, momentum=0.9, l2_init=0.25)
    first.load_state_dict(copy.deepcopy(saved))
    for opt in (again, first):
        opt.apply_gradients([torch.tensor([0.5, 0.5], dtype=torch.float64)])
    assert torch.equal(restored.detach(), original.detach())
    torch.testing.assert_close(
        again.state[restored]["initial"], torch.tensor([1.0, 2.0], dtype=torch.float64)
    )


def test_the_fused_sgd_step_is_not_taken_and_the_learner_applies_the_term():
    """The fused step adds only wd·W into the weights; with L2 Init the learner hands its gradients
    to the optimizer instead. Permuted MNIST's width (2000): the layers are above the small size."""
    settings = LearnerSettings(algorithm="l2_init", step_size=0.01, l2_init=1.0)
    net = initial_mlp([20, 2000, 10], "relu", [0])
    learner, _ = build_learner(net, settings, [0], "cpu", per_seed_cross_entropy)
    assert learner.optimizer.stateless_update() is None
    initial = [p.detach().clone() for p in net.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)  # one unit of drift everywhere
    x, y = torch.rand(1, 1, 20), torch.tensor([[3]])
    reference = copy.deepcopy(net)
    _, _, _, grads = reference.loss_and_gradients(x, y, per_seed_cross_entropy)
    learner.learn(x, y)
    for param, before, grad in zip(net.parameters(), initial, grads, strict=True):
        expected = (before + 1.0) - 0.01 * (grad + 2 * 1.0 * 1.0)
        torch.testing.assert_close(param.detach(), expected, rtol=1e-6, atol=1e-6)


def test_a_negative_strength_is_refused():
    with pytest.raises(ValueError, match="l2_init must be >= 0"):
        make_optimizer([_param(1.0)], "sgd", 0.1, l2_init=-1.0)


def _sweep(tmp_path, entry: dict, problem: dict | None = None):
    path = tmp_path / "l2_init.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "l2_init",
                "problem": problem or {"name": "slowly_changing_regression"},
                "seeds": [0, 1],
                "seeds_per_trial": 2,
                "num_tasks": 1,
                "algorithms": [entry],
                "storage": str(tmp_path / "results"),
            }
        )
    )
    return path


def test_the_sweep_schema_offers_l2_init_and_names_bad_values(tmp_path):
    sweep = load_sweep(_sweep(tmp_path, {"algorithm": "l2_init", "step_size": 0.01, "l2_init": 1e-3}))
    settings = learner_from_trial(sweep.trials[0])
    assert settings.algorithm == "l2_init" and settings.l2_init == 1e-3
    for bad, message in ((0.0, "greater than 0"), (None, "l2_init")):
        entry = {"algorithm": "l2_init", "step_size": 0.01}
        if bad is not None:
            entry["l2_init"] = bad
        with pytest.raises(SweepError, match=message) as error:
            load_sweep(_sweep(tmp_path, entry))
        assert "l2_init.yaml" in str(error.value)


def test_backprop_with_l2_init_differs_from_plain_backprop():
    """A learner-level check that the option reaches the optimizer on the supervised problems."""
    nets = [initial_mlp([5, 8, 3], "tanh", [0]) for _ in range(2)]
    learners = [
        Backprop(net, make_optimizer(net.parameters(), "sgd", 0.1, l2_init=strength), per_seed_cross_entropy)
        for net, strength in zip(nets, (0.0, 10.0), strict=True)
    ]
    x, y = torch.rand(1, 1, 5), torch.tensor([[0]])
    for _ in range(3):
        for learner in learners:
            learner.learn(x, y)
    assert any(not torch.equal(a, b) for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True))
