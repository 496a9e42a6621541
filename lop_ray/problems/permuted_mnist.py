"""Online permuted MNIST in a sweep file (spec/problems.md §2); `dataset: digits` runs the same code
on scikit-learn's bundled 8×8 digits (offline demos and tests)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from lop_ray.nets.activations import ACTIVATIONS
from lop_ray.problems.base import Count, ProblemSpec, Real, Strict, prepared_data
from lop_ray.problems.learners import SUPERVISED_ALGORITHMS


class PermutedMNISTProblem(Strict):
    dataset: Literal["mnist", "digits"] = "mnist"
    # a directory written by `lop-ray data prepare`; digits may leave it out (bundled with scikit-learn)
    data: str | None = Field(None, validate_default=True)
    examples_per_task: Count | None = Field(None, ge=1)  # default: the dataset once (60,000 for MNIST)
    probe_examples: Count = Field(2000, ge=1)

    @field_validator("data")
    @classmethod
    def _prepared(cls, data: str | None, info: ValidationInfo) -> str | None:
        dataset = info.data.get("dataset")
        if data is None:
            if dataset == "mnist":
                raise ValueError(
                    f"required for {dataset}: a directory written by "
                    f"`lop-ray data prepare {dataset} --src RAW_DIR --dest DIR`"
                )
            return data
        return prepared_data(data, dataset or "mnist")


class PermutedMNISTNetwork(Strict):
    activation: Literal[tuple(ACTIVATIONS)] = "relu"  # type: ignore[valid-type]
    hidden_units: Count = Field(2000, ge=1)
    hidden_layers: Count = Field(3, ge=1)
    dropout: Real = Field(0.0, ge=0, lt=1)  # of every hidden layer's output, in training
    online_norm: bool = False  # online normalisation (Chiley et al. 2019) of every hidden layer
    layer_norm: bool = False  # layer normalisation of every hidden layer (Lyle et al. 2024)
    crelu: bool = False  # CReLU hidden units (Abbas et al. 2023): relu of z and −z

    @model_validator(mode="after")
    def _one_normalisation(self):
        if self.online_norm and self.layer_norm:
            raise ValueError("online_norm and layer_norm both normalise the pre-activations: pick one")
        if self.crelu and self.activation != "relu":
            raise ValueError(f"crelu is built of ReLUs: activation must be relu, got {self.activation!r}")
        return self

    def weight_layer_count(self) -> int:
        return self.hidden_layers + 1

    def injectable_layer_count(self) -> int:
        """Trailing weight layers that form a plain head: all of them, unless the hidden layers are
        normalised, dropped out or CReLU (then the output layer alone)."""
        special = self.dropout or self.online_norm or self.layer_norm or self.crelu
        return 1 if special else self.weight_layer_count()


PERMUTED_MNIST = ProblemSpec(
    name="permuted_mnist",
    settings_model=PermutedMNISTProblem,
    network_model=PermutedMNISTNetwork,
    algorithms=SUPERVISED_ALGORITHMS,
    steps_for=lambda settings, num_tasks: num_tasks,  # one step = one task
    trainable="lop_ray.trainables.permuted_mnist:PermutedMNISTTrainable",
)
