"""PPO's pieces (spec/algorithms.md, PPO) against hand computations, the runners' numpy policy against
the torch one, ReDo, the normalisers, exact resume, and (slow) that PPO learns Hopper."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from lop_ray.algos.cbp import CBPConfig
from lop_ray.algos.optim import make_optimizer
from lop_ray.algos.ppo import PPOConfig, clipped_policy_loss, gae
from lop_ray.algos.redo import ReDo, ReDoConfig
from lop_ray.algos.running_stats import RewardScaler, RunningMeanStd
from lop_ray.experiments.ppo import PPOExperiment, PPOExperimentConfig
from lop_ray.nets.policy import GaussianPolicy, ValueNetwork
from lop_ray.rl.acting import ActingPolicy
from lop_ray.rl.runner import policy_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

SMALL_PPO = PPOConfig(epochs=2, minibatch_size=64)


def test_gae_matches_a_hand_computation():
    gamma, lam = 0.9, 0.8
    rewards = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    values = torch.tensor([[0.5], [1.0], [1.5], [2.0]])
    dones = torch.tensor([[False], [True], [False], [False]])  # episode ends at step 1
    last = torch.tensor([3.0])
    # step 3: bootstraps from `last`; step 2 from V(s3); step 1 ends an episode: no bootstrap
    d3 = 4.0 + gamma * 3.0 - 2.0
    d2 = 3.0 + gamma * 2.0 - 1.5
    d1 = 2.0 - 1.0
    d0 = 1.0 + gamma * 1.0 - 0.5
    a3 = d3
    a2 = d2 + gamma * lam * a3
    a1 = d1  # nothing flows back through the episode's end
    a0 = d0 + gamma * lam * a1
    got = gae(rewards, values, last, dones, gamma, lam)
    torch.testing.assert_close(got, torch.tensor([[a0], [a1], [a2], [a3]]))


def test_gae_is_per_env():
    rewards = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    values = torch.zeros(2, 2)
    dones = torch.zeros(2, 2, dtype=torch.bool)
    got = gae(rewards, values, torch.zeros(2), dones, 0.5, 1.0)
    torch.testing.assert_close(got, torch.tensor([[1.0, 0.5], [0.0, 1.0]]))


def test_clipped_loss_on_a_tiny_case():
    old = torch.zeros(3)
    # ratios e^0.5 ≈ 1.65 (clipped to 1.2 for a positive advantage), e^-0.5 ≈ 0.61 (to 0.8 for a
    # negative one: min keeps the unclipped, more pessimistic 0.61·(−1)), 1.0
    new = torch.tensor([0.5, -0.5, 0.0])
    adv = torch.tensor([2.0, -1.0, 3.0])
    expected = -(min(math.exp(0.5) * 2.0, 1.2 * 2.0) + min(math.exp(-0.5) * -1.0, 0.8 * -1.0) + 3.0) / 3
    assert clipped_policy_loss(new, old, adv, 0.2).item() == pytest.approx(expected)
    # a pessimistic clip: a negative advantage with a large ratio is not clipped
    assert clipped_policy_loss(torch.tensor([1.0]), torch.zeros(1), torch.tensor([-1.0]), 0.2).item() == (
        pytest.approx(math.e)
    )


def test_networks_are_lecun_uniform_with_zero_bias():
    policy = GaussianPolicy(111, 8, generators=torch.Generator().manual_seed(0))
    value = ValueNetwork(111, generators=torch.Generator().manual_seed(0))
    for net in (policy, value):
        for layer in net.layers:
            assert layer.weight.shape[0] == 1  # one seed
            bound = math.sqrt(3.0 / layer.in_features)
            assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.95 * bound
            assert torch.all(layer.bias == 0)
    assert torch.all(policy.log_std == 0) and [g.width for g in policy.unit_groups()] == [
        256,
        256,
    ]


def test_acting_policy_computes_what_the_torch_policy_computes():
    policy = GaussianPolicy(11, 3, generators=torch.Generator().manual_seed(1))
    with torch.no_grad():
        policy.log_std.copy_(torch.tensor([[-0.5, 0.0, 0.3]]))
    acting = ActingPolicy()
    acting.load(policy_weights(policy), rows=[0] * 4)  # four envs of the one seed
    obs = np.random.default_rng(0).standard_normal((4, 11)).astype(np.float32)
    noise = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
    actions, log_probs = acting.act(obs, noise)
    with torch.no_grad():
        mean, _ = policy(torch.from_numpy(obs).unsqueeze(0))
        expected = mean + policy.log_std.exp().unsqueeze(1) * torch.from_numpy(noise)
        expected_logp = policy.log_prob(mean, expected)
    np.testing.assert_allclose(actions, expected[0].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(log_probs, expected_logp[0].numpy(), rtol=1e-5, atol=1e-5)


def test_redo_resets_dormant_units_every_period():
    torch.manual_seed(0)
    net = ValueNetwork(4, hidden=(6, 5), generators=torch.Generator().manual_seed(0))
    optimizer = make_optimizer(net.parameters(), "adam", 1e-3)
    redo = ReDo(
        net.unit_groups(),
        optimizer,
        ReDoConfig(threshold=0.1, reset_period=3),
        torch.Generator().manual_seed(1),
    )
    h1 = torch.tensor([[[1.0, 1.0, 0.0, 1.0, 0.05, 1.0]] * 2])  # units 2 (0) and 4 (score 0.06) dormant
    h2 = torch.ones(1, 2, 5)
    with torch.no_grad():
        net.layers[1].weight.fill_(0.7)
    before = net.layers[0].weight.detach().clone()
    redo.after_step([h1, h2])
    redo.after_step([h1, h2])
    assert torch.equal(net.layers[0].weight, before)  # not yet: every 3rd step
    redo.after_step([h1, h2])
    changed = (net.layers[0].weight[0] != before[0]).any(dim=1)
    assert changed.tolist() == [False, False, True, False, True, False]
    assert torch.all(net.layers[0].bias[0, [2, 4]] == 0)
    assert torch.all(net.layers[1].weight[0, :, [2, 4]] == 0) and torch.all(
        net.layers[1].weight[0, :, 0] == 0.7
    )
    assert redo.replaced_total == 2
    # an all-zero layer has no score: nothing happens (the original's NaN comparison)
    assert not redo.dormant(torch.zeros(1, 2, 6)).any()


def test_running_mean_std_merges_batches_exactly():
    data = torch.randn(1000, 3, generator=torch.Generator().manual_seed(0)) * 3 + 1
    stats = RunningMeanStd((3,), epsilon=0.0)
    for chunk in data.split(137):
        stats.update(chunk)
    torch.testing.assert_close(stats.mean, data.double().mean(0))
    torch.testing.assert_close(stats.var, data.double().var(0, unbiased=False))


def test_reward_scaler_divides_by_the_return_std():
    # γ = 0: the discounted return is the reward itself, so rewards of std 3 are scaled to std ~1
    scaler = RewardScaler(num_envs=2, gamma=0.0)
    rewards = 3.0 * torch.randn(2000, 2, generator=torch.Generator().manual_seed(0))
    scaled = scaler(rewards, torch.zeros(2000, 2, dtype=torch.bool))
    assert scaled[1000:].std().item() == pytest.approx(1.0, abs=0.05)
    torch.testing.assert_close(scaled[-1], rewards[-1] / scaler.stats.var.sqrt().float(), rtol=1e-4, atol=0)
    # an episode end restarts that env's return: with γ = 1 the return would otherwise keep growing
    ended = RewardScaler(num_envs=1, gamma=1.0)
    ended(torch.ones(3, 1), torch.tensor([[False], [True], [False]]))
    assert ended.returns.item() == 1.0  # 1 (step 0) + 1 (step 1, ends) → 0, then 1


def _tiny(env: str = "Hopper-v5", **kwargs) -> PPOExperimentConfig:
    base = dict(
        env=env,
        seed=3,
        batch_size=128,
        iterations_per_step=2,
        ppo=SMALL_PPO,
        hidden=(32, 32),
        max_episode_steps=50,
    )
    return PPOExperimentConfig(**{**base, **kwargs})


def _same(a: dict | list[dict], b: dict | list[dict]) -> bool:
    if isinstance(a, list):  # one metrics dict per seed
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    keys = set(a) - {"env_steps_per_second"}
    return keys == set(b) - {"env_steps_per_second"} and all(
        a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in keys
    )


@pytest.mark.parametrize(
    "config",
    [
        _tiny(),
        _tiny(
            "Ant-v5",
            ant_observation="original",
            num_runners=2,
            normalize_observations=True,
            normalize_rewards=True,
            policy_cbp=CBPConfig(
                replacement_rate=0.05, maturity_threshold=2, init="lecun", util_type="contribution"
            ),
            value_cbp=CBPConfig(
                replacement_rate=0.05, maturity_threshold=2, init="lecun", util_type="weight"
            ),
            weight_decay=1e-3,
        ),
        _tiny("Walker2d-v5", redo=ReDoConfig(threshold=0.5, reset_period=3), envs_per_runner=2),
    ],
    ids=["hopper", "ant-original-cbp-normalised", "walker-redo"],
)
def test_resume_is_bit_identical(config):
    """Two steps straight, or one step, a checkpoint through bytes, a fresh experiment, one step."""
    straight = PPOExperiment(config)
    expected = [straight.run_step(), straight.run_step()]

    first = PPOExperiment(config)
    assert _same(first.run_step(), expected[0])
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    first.close()
    buffer.seek(0)
    resumed = PPOExperiment(config)
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    assert _same(resumed.run_step(), expected[1])
    for a, b in zip(resumed.policy.parameters(), straight.policy.parameters(), strict=True):
        assert torch.equal(a, b)
    if config.policy_cbp is not None or config.redo is not None:
        assert expected[1][0]["replaced_units"] > 0  # the interventions ran, so their state was resumed


def test_same_seed_and_layout_give_the_same_run_and_another_seed_differs():
    a = PPOExperiment(_tiny(num_runners=2)).run_step()
    b = PPOExperiment(_tiny(num_runners=2)).run_step()
    c = PPOExperiment(_tiny(num_runners=2, seed=4)).run_step()
    assert _same(a, b) and not _same(a, c)


def test_the_plasticity_metrics_are_logged_and_measure_the_update():
    experiment = PPOExperiment(_tiny())
    [first] = experiment.run_step()
    assert first["distance_from_init"] > 0 and first["gradient_norm"] > 0
    assert 0 < first["active_fraction"] <= 1 and first["feature_churn"] > 0
    # the distance is ‖θ − θ₀‖₂ over both nets, θ₀ as built from the seed
    fresh = PPOExperiment(_tiny())
    params = [*experiment.policy.parameters(), *experiment.value.parameters()]
    initial = [*fresh.policy.parameters(), *fresh.value.parameters()]
    squares = sum(float((p - q).detach().double().pow(2).sum()) for p, q in zip(params, initial, strict=True))
    assert first["distance_from_init"] == pytest.approx(math.sqrt(squares), rel=1e-12)
    assert experiment.run_step()[0]["distance_from_init"] != first["distance_from_init"]


def _random_policy_return(env: str, episodes: int, seed: int = 0) -> float:
    from lop_ray.rl.envs import make_env

    env_ = make_env(env)
    env_.action_space.seed(seed)
    rng = np.random.default_rng(seed)
    total = []
    obs, _ = env_.reset(seed=seed)
    ret = 0.0
    while len(total) < episodes:
        # the untrained policy's own action distribution: N(0, 1) per dimension
        obs, reward, terminated, truncated, _ = env_.step(rng.standard_normal(env_.action_space.shape))
        ret += reward
        if terminated or truncated:
            total.append(ret)
            ret = 0.0
            obs, _ = env_.reset()
    return float(np.mean(total))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ppo_learns_hopper():
    """The paper's PPO (lr 1e-4 … here 3e-4 to learn within a short test) on Hopper-v5: after ~60k
    steps the mean return is clearly above a random policy's, measured here on the same env."""
    random_return = _random_policy_return("Hopper-v5", episodes=200)
    config = PPOExperimentConfig(env="Hopper-v5", seed=0, iterations_per_step=5, step_size=3e-4)
    experiment = PPOExperiment(config)
    returns = [experiment.run_step()[0]["episodic_return"] for _ in range(6)]
    assert returns[-1] > 5 * random_return, (random_return, returns)  # measured: ~15 vs ~200
