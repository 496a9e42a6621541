"""CReLU (Abbas et al. 2023): each hidden unit outputs ReLU(z) and ReLU(−z), interleaved, to a next
layer of twice the fan-in; its units reset as pairs of columns, per seed, and the schema checks it."""

from __future__ import annotations

import pytest
import torch

from lop_ray.algos import CBPConfig
from lop_ray.algos.redo import ReDoConfig
from lop_ray.data.shards import ImageDataset, load_dataset
from lop_ray.experiments.learner import LearnerSettings, build_learner, initial_mlp
from lop_ray.experiments.permuted_mnist import PermutedMNISTConfig, PermutedMNISTExperiment
from lop_ray.nets.activations import crelu
from lop_ray.nets.losses import per_seed_mse
from lop_ray.schema import SweepError
from tests.method_sweeps import regression_sweep


def test_crelu_by_hand_and_the_next_layer_takes_twice_the_units():
    z = torch.tensor([[[1.5, -2.0, 0.0]]])
    assert crelu(z).tolist() == [[[1.5, 0.0, 0.0, 2.0, 0.0, 0.0]]]
    net = initial_mlp([4, 3, 2], "relu", [0, 1], crelu=True)
    assert net.layers[1].weight.shape == (2, 2, 6)
    output, (hidden,) = net(torch.randn(2, 5, 4))
    assert hidden.shape == (2, 5, 6) and output.shape == (2, 5, 2)
    (group,) = net.unit_groups()
    assert group.width == 3 and group.seed_activations(hidden).shape == (2, 5, 3, 2)
    # unit 1 of seed 0 feeds columns 2 and 3 of the next layer
    assert torch.equal(group.outgoing_by_unit()[0, :, 1], net.layers[1].weight[0, :, 2:4])
    with pytest.raises(ValueError, match="activation must be relu"):
        initial_mlp([4, 3, 2], "tanh", [0], crelu=True)


def test_a_reset_unit_zeroes_both_of_its_outgoing_columns_and_nothing_else():
    net = initial_mlp([4, 3, 2], "relu", [0, 1], crelu=True)
    settings = LearnerSettings(
        algorithm="redo", step_size=0.1, method=ReDoConfig(threshold=10.0, reset_period=1)
    )
    learner, redo = build_learner(net, settings, [0, 1], "cpu", per_seed_mse)
    x = torch.randn(2, 8, 4, generator=torch.Generator().manual_seed(0))
    # threshold 10: every unit scores below it (scores average 1), so ReDo resets them at the step
    learner.learn(x, torch.zeros(2, 8, 2))
    assert (redo.replaced_total > 0).all()
    outgoing = net.unit_groups()[0].outgoing_by_unit()
    reset = (outgoing == 0).all(dim=(1, 3))  # (S, width): a unit's both columns in every output
    assert reset.any() and ((outgoing == 0).all(dim=1) == reset.unsqueeze(-1)).all()


def test_each_seed_trains_alone_as_in_a_batch_with_cbp():
    full = load_dataset("digits", None)
    digits = ImageDataset(full.images[:80], full.labels[:80], full.pixel_max, full.num_classes)
    learner = LearnerSettings(
        algorithm="cbp", step_size=0.01, cbp=CBPConfig(replacement_rate=0.05, maturity_threshold=5)
    )
    config = PermutedMNISTConfig(
        hidden_units=8, hidden_layers=2, crelu=True, probe_examples=20, learner=learner
    )
    together = PermutedMNISTExperiment(config, digits, seeds=[3, 0]).run_step()
    for s, seed in enumerate([3, 0]):
        assert PermutedMNISTExperiment(config, digits, seeds=[seed]).run_step()[0] == together[s]
    assert all(row["replaced_units"] > 0 for row in together)
    assert all(row["active_fraction"] > 0.4 for row in together)  # half of the outputs fire, always


def test_the_schema_takes_crelu_with_relu_only(tmp_path):
    (trial,) = regression_sweep(tmp_path, "bp", network={"crelu": True}).trials
    assert trial["network"]["crelu"] is True
    with pytest.raises(SweepError) as error:
        regression_sweep(tmp_path, "bp", network={"crelu": True, "activation": "tanh"})
    assert "network" in str(error.value) and "activation must be relu" in str(error.value)
