"""What the sweep schema needs to know about a problem."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from lop_ray.data.idx import DataFormatError
from lop_ray.data.shards import read_manifest


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    return value


Real = Annotated[float, BeforeValidator(_not_bool), Field(allow_inf_nan=False)]  # finite
Count = Annotated[int, BeforeValidator(_not_bool)]
Rate = Annotated[Real, Field(ge=0, le=1)]


def prepared_data(data: str, dataset: str, splits: tuple[str, ...] = ("train",)) -> str:
    """The absolute location of a dataset written by `lop-ray data prepare`, checked before any trial
    runs: its manifest is there, names `dataset` and has `splits`. Relative paths are relative to
    where the sweep is submitted; trials run in other processes, so they get the absolute path."""
    path = data if data.startswith("s3://") else str(Path(data).expanduser().resolve())
    try:
        manifest = read_manifest(path)
    except DataFormatError as error:
        raise ValueError(
            f"{error} (prepare it with `lop-ray data prepare {dataset} --src RAW_DIR --dest {data}`)"
        ) from None
    if manifest["dataset"] != dataset:
        raise ValueError(f"{path} holds {manifest['dataset']!r}, not {dataset!r}")
    missing = set(splits) - set(manifest["splits"])
    if missing:
        raise ValueError(f"{path} lacks the {sorted(missing)} split(s); prepare it again")
    return path


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OptimizerHyperparameters(Strict):
    """Keys every algorithm of a supervised problem accepts. L2 is coupled weight decay."""

    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    step_size: Real = Field(gt=0)
    momentum: Real = Field(0.0, ge=0, lt=1)
    beta1: Real = Field(0.9, ge=0, lt=1)
    beta2: Real = Field(0.999, ge=0, lt=1)
    eps: Real = Field(1e-8, gt=0)

    # option -> {fidelity: value}; filled in by the schema where the sweep leaves the option out
    fidelity_options: ClassVar[dict[str, dict[str, Any]]] = {}


@dataclass(frozen=True)
class ProblemSpec:
    name: str
    settings_model: type[BaseModel]
    network_model: type[BaseModel]
    algorithms: dict[str, type[BaseModel]]
    steps_for: Callable[[Any, int], int]  # (settings, num_tasks) -> trainable steps per trial
    trainable: str  # "module:Class", imported only when a sweep runs
