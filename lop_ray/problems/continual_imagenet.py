"""Continual ImageNet in a sweep file (spec/problems.md §3): binary tasks over pairs of the 32×32
downsampled ImageNet's classes, prepared once with `lop-ray data prepare imagenet32`."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from lop_ray.algos.cbp import InitScheme, ReplacementBase
from lop_ray.problems.base import Count, ProblemSpec, Strict, prepared_data
from lop_ray.problems.learners import SUPERVISED_ALGORITHMS, ContinualBackprop


class ContinualImageNetProblem(Strict):
    dataset: Literal["imagenet32"] = "imagenet32"
    # a directory (or s3:// prefix) written by `lop-ray data prepare imagenet32`
    data: str
    epochs_per_task: Count = Field(250, ge=1)
    batch_size: Count = Field(100, ge=1)
    # the first N training images of each class (None: all 600, the paper); fewer for quick runs
    train_images_per_class: Count | None = Field(None, ge=1, le=600)

    @field_validator("data")
    @classmethod
    def _prepared(cls, data: str) -> str:
        return prepared_data(data, "imagenet32")


class ContinualImageNetNetwork(Strict):
    # conv_net: the paper's conv net; linear: the 3072 → 2 baseline, reset at every task
    architecture: Literal["conv_net", "linear"] = "conv_net"
    layer_norm: bool = False  # every hidden pre-activation normalised (Lyle et al. 2024): conv_net
    crelu: bool = False  # CReLU hidden units and channels (Abbas et al. 2023): conv_net

    @model_validator(mode="after")
    def _options_of_the_conv_net(self):
        for option in ("layer_norm", "crelu"):
            if getattr(self, option) and self.architecture != "conv_net":
                raise ValueError(f"{option} is an option of architecture conv_net, not {self.architecture}")
        return self

    def weight_layer_count(self) -> int:
        return 6 if self.architecture == "conv_net" else 1

    def injectable_layer_count(self) -> int:
        """The conv net's fully connected head (fc1, fc2, output), its output layer alone behind a
        norm or CReLU; the linear net's one layer."""
        plain = self.architecture == "conv_net" and not (self.layer_norm or self.crelu)
        return 3 if plain else 1


class ImageNetContinualBackprop(ContinualBackprop):
    """CBP on the conv net. The original's conv variant always accumulates its replacement count,
    counts ρ·(layer width) and draws new weights U(±√(1/fan_in)) in every layer (spec/fidelity.md
    rows 3 and 4): those two follow `fidelity:` unless the sweep states them."""

    accumulate: bool = True
    init: InitScheme
    replacement_base: ReplacementBase

    fidelity_options: ClassVar[dict[str, dict[str, Any]]] = {
        **ContinualBackprop.fidelity_options,
        "init": {"original": "default", "corrected": "kaiming"},
        "replacement_base": {"original": "width", "corrected": "eligible"},
    }


CONTINUAL_IMAGENET = ProblemSpec(
    name="continual_imagenet",
    settings_model=ContinualImageNetProblem,
    network_model=ContinualImageNetNetwork,
    algorithms={**SUPERVISED_ALGORITHMS, "cbp": ImageNetContinualBackprop},
    steps_for=lambda settings, num_tasks: num_tasks,  # one step = one task
    trainable="lop_ray.trainables.continual_imagenet:ContinualImageNetTrainable",
)
