"""The sweep file: load, validate, resolve fidelity, expand into trials.

One source of truth for what a sweep may say. Every error names the file, the line, the key and what
is allowed, and all errors of a file are reported together, before Ray starts or anything is
written. Types come from pydantic models (lax where YAML is lax: PyYAML reads `1e-4` as a string,
which validates as the float 0.0001); a list where a single value is expected is a grid.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, Field

from lop_ray.problems import PROBLEMS, ProblemSpec
from lop_ray.problems.base import Count, Real, Strict

Fidelity = Literal["original", "corrected"]


class SeedRange(Strict):
    first: Count = Field(0, ge=0)
    count: Count = Field(ge=1)


class Resources(Strict):
    """Per trial. Fractional GPUs let several trials share one GPU."""

    cpu: Real = Field(1.0, gt=0)
    gpu: Real = Field(0.0, ge=0)


class SweepFile(Strict):
    """The top level of a sweep file (algorithms and network are validated per problem)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    description: str = ""
    problem: dict[str, Any]
    network: dict[str, Any] = {}
    algorithms: list[dict[str, Any]] = Field(min_length=1)
    seeds: list[Annotated[Count, Field(ge=0)]] | SeedRange = Field(default=[0])
    num_tasks: Count = Field(ge=1)
    fidelity: Fidelity = "corrected"
    resources: Resources = Resources()
    storage: str = "./results"
    tracking_uri: str | None = None
    checkpoint_every: Count = Field(1, ge=1)
    max_failures: Count = Field(3, ge=-1)
    max_concurrent_trials: Count | None = Field(None, ge=1)


@dataclass(frozen=True)
class Sweep:
    """A validated sweep: the file's settings and the fully resolved configuration of each trial."""

    path: str
    name: str
    problem: str
    storage: str
    tracking_uri: str | None
    resources: dict[str, float]
    checkpoint_every: int
    max_failures: int
    max_concurrent_trials: int | None
    steps_per_trial: int
    trials: list[dict[str, Any]] = field(repr=False)
    document: dict[str, Any] = field(repr=False)


class SweepError(Exception):
    """A sweep file that cannot run; `problems` lists every error, each naming file, line and key."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__("\n".join(problems))


def load_sweep(path: str | Path, storage: str | None = None) -> Sweep:
    """Read, validate and expand `path`; `storage` overrides the file's storage."""
    path = str(path)
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise SweepError(path, [f"{path}: cannot read the sweep file: {error.strerror}"]) from None
    try:
        document = yaml.safe_load(text)
        lines = _key_lines(yaml.compose(text))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        raise SweepError(path, [f"{where}: not valid YAML: {error}"]) from None
    if storage is not None and isinstance(document, dict):
        document["storage"] = storage
    return validate_sweep(document, path, lines)


def validate_sweep(document: Any, path: str, lines: dict[tuple, int] | None = None) -> Sweep:
    """Validate an already-parsed sweep document (`path` is only used in messages)."""
    if not isinstance(document, dict):
        raise SweepError(path, [f"{path}: a sweep file is a mapping of keys (name, problem, ...)"])
    return _Validator(path, lines or {}).validate(document)


class _Validator:
    def __init__(self, path: str, lines: dict[tuple, int]) -> None:
        self.path = path
        self.lines = lines
        self.problems: list[str] = []

    def error(self, loc: tuple, message: str) -> None:
        line = _nearest_line(self.lines, loc)
        where = f"{self.path}:{line}" if line else self.path
        key = _format_loc(loc) or "(top level)"
        self.problems.append(f"{where}: {key}: {message}")

    def model(self, model: type[BaseModel], data: Any, loc: tuple) -> BaseModel | None:
        try:
            return model.model_validate(data)
        except pydantic.ValidationError as error:
            for item in error.errors():
                self.error(loc + tuple(item["loc"]), _describe(model, item))
            return None

    def validate(self, document: dict[str, Any]) -> Sweep:
        top = self.model(SweepFile, document, ())
        if top is None:
            raise SweepError(self.path, self.problems)
        problem_name = top.problem.get("name")
        spec = PROBLEMS.get(problem_name)
        if spec is None:
            self.error(("problem", "name"), f"unknown problem {problem_name!r}; allowed: {sorted(PROBLEMS)}")
            raise SweepError(self.path, self.problems)
        settings = self.model(
            spec.settings_model, {k: v for k, v in top.problem.items() if k != "name"}, ("problem",)
        )
        networks = self.grid(spec.network_model, top.network, ("network",))
        algorithms = [
            self.algorithm(spec, entry, top.fidelity, ("algorithms", i))
            for i, entry in enumerate(top.algorithms)
        ]
        steps = None
        if settings is not None:
            try:
                steps = spec.steps_for(settings, top.num_tasks)
            except ValueError as error:
                self.error(("problem", "examples_per_step"), str(error))
        if self.problems:
            raise SweepError(self.path, self.problems)
        self.unique_labels(algorithms)
        if self.problems:
            raise SweepError(self.path, self.problems)

        seeds = (
            top.seeds
            if isinstance(top.seeds, list)
            else list(range(top.seeds.first, top.seeds.first + top.seeds.count))
        )
        if len(set(seeds)) != len(seeds):
            self.error(("seeds",), f"seeds repeat: {seeds}")
            raise SweepError(self.path, self.problems)
        trials = []
        for (label, algorithm, points), network, seed in itertools.product(
            [(a[0], a[1], p) for a in algorithms for p in a[2]], networks, seeds
        ):
            hyper, varying_algo = points
            net, varying_net = network
            trials.append(
                {
                    "sweep": top.name,
                    "problem": spec.name,
                    "problem_settings": settings.model_dump(),
                    "network": net.model_dump(),
                    "algorithm": algorithm,
                    "label": label,
                    "hyperparameters": hyper.model_dump(),
                    "varying": {**varying_net, **varying_algo},
                    "fidelity": top.fidelity,
                    "seed": seed,
                    "num_tasks": top.num_tasks,
                    "num_steps": steps,
                }
            )
        return Sweep(
            path=self.path,
            name=top.name,
            problem=spec.name,
            storage=top.storage,
            tracking_uri=top.tracking_uri,
            resources=top.resources.model_dump(),
            checkpoint_every=top.checkpoint_every,
            max_failures=top.max_failures,
            max_concurrent_trials=top.max_concurrent_trials,
            steps_per_trial=steps,
            trials=trials,
            document=document,
        )

    def grid(self, model: type[BaseModel], data: dict[str, Any], loc: tuple) -> list[tuple[BaseModel, dict]]:
        """Validate every point of a grid (lists are grids); returns (model, varying values) pairs."""
        allowed = set(model.model_fields)
        keys, choices = [], []
        ok = True
        for key, value in data.items():
            if key not in allowed:
                self.error(loc + (key,), f"unknown key; allowed: {sorted(allowed)}")
                ok = False
            elif isinstance(value, list):
                if not value:
                    self.error(loc + (key,), "empty grid: give at least one value")
                    ok = False
                keys.append(key)
                choices.append(value)
        if not ok:
            return []
        points, seen_errors = [], set()
        for combination in itertools.product(*choices):
            point = {**data, **dict(zip(keys, combination, strict=True))}
            before = len(self.problems)
            validated = self.model(model, point, loc)
            new = self.problems[before:]
            del self.problems[before:]
            for problem in new:  # one report per distinct error, not one per grid point
                if problem not in seen_errors:
                    seen_errors.add(problem)
                    self.problems.append(problem)
            if validated is not None:
                points.append((validated, {k: getattr(validated, k) for k in keys if len(data[k]) > 1}))
        return points

    def algorithm(self, spec: ProblemSpec, entry: dict[str, Any], fidelity: str, loc: tuple):
        name = entry.get("algorithm")
        if name not in spec.algorithms:
            self.error(
                loc + ("algorithm",),
                f"unknown or missing algorithm {name!r}; allowed for {spec.name}: {sorted(spec.algorithms)}",
            )
            return ("", "", [])
        model = spec.algorithms[name]
        label = entry.get("label", name)
        if not isinstance(label, str) or not label:
            self.error(loc + ("label",), "a label is a non-empty string")
        params = {k: v for k, v in entry.items() if k not in ("algorithm", "label")}
        for option, by_fidelity in getattr(model, "fidelity_options", {}).items():
            if option in model.model_fields and params.get(option) is None:
                params[option] = by_fidelity[fidelity]
        return (label, name, self.grid(model, params, loc))

    def unique_labels(self, algorithms: list) -> None:
        labels = [label for label, _, _ in algorithms]
        for label in set(labels):
            if labels.count(label) > 1:
                self.error(
                    ("algorithms",),
                    f"label {label!r} is used by {labels.count(label)} entries; give each entry its own `label`",
                )


def _describe(model: type[BaseModel], item: dict[str, Any]) -> str:
    kind = item["type"]
    if kind == "extra_forbidden":
        return f"unknown key; allowed: {sorted(model.model_fields)}"
    if kind == "missing":
        return "required key is missing"
    value = item.get("input")
    return f"{item['msg'].rstrip('.')} (got {value!r})"


def _format_loc(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _key_lines(node: yaml.Node | None, loc: tuple = ()) -> dict[tuple, int]:
    """Map each key path of the document to its 1-based line, so errors can point at it."""
    lines: dict[tuple, int] = {}
    if node is None:
        return lines
    lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = loc + (key.value,)
            lines.update(_key_lines(value, child))
            lines[child] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, value in enumerate(node.value):
            lines.update(_key_lines(value, loc + (index,)))
    return lines


def _nearest_line(lines: dict[tuple, int], loc: tuple) -> int | None:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None
