"""Layer normalisation with weight decay (Lyle et al. 2024): the normalisation per seed and example,
pinned against PyTorch's LayerNorm, trained by autograd, reset with its units, and in the schema."""

from __future__ import annotations

import pytest
import torch

from lop_ray.algos import CBPConfig
from lop_ray.experiments.learner import LearnerSettings, build_learner, initial_mlp
from lop_ray.experiments.regression import RegressionConfig, RegressionExperiment, config_from_trial
from lop_ray.nets.layer_norm import SeedLayerNorm
from lop_ray.nets.losses import per_seed_mse
from lop_ray.schema import SweepError
from tests.method_sweeps import regression_sweep


def test_each_seed_is_normalised_as_torchs_layer_norm_with_its_own_gain_and_bias():
    norm = SeedLayerNorm(4, seeds=2)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.5, 0.5, 0.5, 0.5]]))
        norm.bias.copy_(torch.tensor([[0.0, 1.0, 0.0, 1.0], [-1.0, 0.0, 0.0, 0.0]]))
    z = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    out = norm(z)
    for s in range(2):
        reference = torch.nn.LayerNorm(4)
        with torch.no_grad():
            reference.weight.copy_(norm.weight[s])
            reference.bias.copy_(norm.bias[s])
        torch.testing.assert_close(out[s], reference(z[s]))
    by_hand = (z[0, 0] - z[0, 0].mean()) / torch.sqrt(z[0, 0].var(unbiased=False) + 1e-5)
    torch.testing.assert_close(out[0, 0], by_hand * norm.weight[0] + norm.bias[0])


def test_the_network_trains_by_autograd_and_its_units_reset_with_their_norm_entries():
    net = initial_mlp([3, 6, 1], "relu", [0, 1], layer_norm=True)
    assert net.loss_and_gradients(torch.zeros(2, 1, 3), torch.zeros(2, 1, 1), per_seed_mse) is None
    (group,) = net.unit_groups()
    assert {entry.fresh for entry in group.norm} == {0.0, 1.0}
    settings = LearnerSettings(
        algorithm="cbp", step_size=0.1, cbp=CBPConfig(replacement_rate=0.5, maturity_threshold=1)
    )
    learner, cbp = build_learner(net, settings, [0, 1], "cpu", per_seed_mse)
    x = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(1))
    for _ in range(6):
        learner.learn(x, x.sum(dim=2, keepdim=True))
    assert (cbp.replaced_total > 0).all()
    assert not torch.equal(net.norms[0].weight, torch.ones(2, 6))  # learnt


def test_a_seed_runs_alone_as_in_a_batch_and_the_schema_takes_the_option(tmp_path):
    config = RegressionConfig(
        examples_per_step=50,
        layer_norm=True,
        learner=LearnerSettings(algorithm="l2", step_size=0.01, weight_decay=1e-3),
    )
    together = RegressionExperiment(config, [4, 1]).run_step()
    for s, seed in enumerate([4, 1]):
        assert RegressionExperiment(config, [seed]).run_step()[0] == together[s]
    (trial,) = regression_sweep(tmp_path, "l2", weight_decay=1e-3).trials
    assert config_from_trial(trial).layer_norm is False
    with pytest.raises(ValueError, match="pick one"):
        initial_mlp([3, 4, 1], "relu", [0], online_norm=True, layer_norm=True)


def test_permuted_mnist_refuses_both_normalisations(tmp_path):
    import yaml

    from lop_ray.schema import load_sweep

    sweep = {
        "name": "n",
        "problem": {"name": "permuted_mnist", "dataset": "digits"},
        "network": {"hidden_units": 8, "hidden_layers": 1, "online_norm": True, "layer_norm": True},
        "seeds": [0],
        "num_tasks": 1,
        "algorithms": [{"algorithm": "l2", "step_size": 0.01, "weight_decay": 1e-3}],
        "storage": str(tmp_path / "runs"),
    }
    path = tmp_path / "n.yaml"
    path.write_text(yaml.safe_dump(sweep))
    with pytest.raises(SweepError) as error:
        load_sweep(path)
    assert "network" in str(error.value) and "pick one" in str(error.value)
