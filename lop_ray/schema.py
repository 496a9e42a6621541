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
from typing import Annotated, Any, Literal, get_args

import pydantic
import yaml
from pydantic import BaseModel, Discriminator, Field, Tag

from lop_ray.problems import PROBLEMS, ProblemSpec
from lop_ray.problems.base import Count, Real, Strict

Fidelity = Literal["original", "corrected"]


class SeedRange(Strict):
    first: Count = Field(0, ge=0)
    count: Count = Field(ge=1)


def _seeds_kind(value: Any) -> str | None:
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict | SeedRange):
        return "range"
    return None


SEEDS_ALLOWED = "a list of distinct non-negative integers, e.g. [0, 1, 2], or a range {first: 0, count: 100}"
Seeds = Annotated[
    Annotated[list[Annotated[Count, Field(ge=0)]], Field(min_length=1), Tag("list")]
    | Annotated[SeedRange, Tag("range")],
    Discriminator(_seeds_kind, custom_error_type="seeds", custom_error_message=f"seeds are {SEEDS_ALLOWED}"),
]
FIDELITY_ALLOWED = "'original' or 'corrected', or a list of both to run each trial in each mode"
FidelityChoice = Annotated[
    Annotated[Fidelity, Tag("one")]
    | Annotated[list[Fidelity], Field(min_length=1, max_length=2), Tag("grid")],
    Discriminator(
        lambda value: "grid" if isinstance(value, list) else "one",
        custom_error_type="fidelity",
        custom_error_message=f"fidelity is {FIDELITY_ALLOWED}",
    ),
]
_UNION_TAGS = {
    ("seeds",): {"list", "range"},
    ("fidelity",): {"one", "grid"},
}  # tags pydantic puts into error locations, dropped in messages


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
    seeds: Seeds = Field(default=[0])
    # seeds of one configuration run together in one Tune trial, in one network with a seed axis
    # (every algorithm of every problem)
    seeds_per_trial: Count = Field(1, ge=1)
    num_tasks: Count = Field(ge=1)
    # one mode, or a list of modes: a grid, every trial run in each (side by side on the same seeds)
    fidelity: FidelityChoice = "corrected"
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
    seeds_per_trial: int = 1

    @property
    def groups(self) -> list[list[dict[str, Any]]]:
        """The Tune trials: consecutive runs of one configuration, up to `seeds_per_trial` seeds each
        where the algorithm has a seed-batched learner, one otherwise."""
        groups: list[list[dict[str, Any]]] = []
        for trial in self.trials:
            last = groups[-1] if groups else None
            same = last is not None and _configuration(last[0]) == _configuration(trial)
            if same and len(last) < trial["seeds_per_trial"]:
                last.append(trial)
            else:
                groups.append([trial])
        return groups


def _configuration(trial: dict[str, Any]) -> tuple:
    """What a trial is apart from its seed and index."""
    return tuple(
        repr(trial[key])
        for key in ("problem_settings", "network", "algorithm", "label", "hyperparameters", "fidelity")
    )


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
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        reason = error.strerror or str(error)
        raise SweepError(path, [f"{path}: cannot read the sweep file: {reason}"]) from None
    except UnicodeDecodeError as error:
        raise SweepError(
            path, [f"{path}: cannot read the sweep file: not UTF-8 text (byte {error.start})"]
        ) from None
    try:
        document = yaml.safe_load(text)
        lines, duplicates = _key_lines(yaml.compose(text))
    except yaml.YAMLError as error:
        raise SweepError(path, [_yaml_problem(path, error)]) from None
    if storage is not None and isinstance(document, dict):
        document["storage"] = storage
    duplicated = [
        f"{path}:{line}: {_format_loc(loc)}: duplicate key (first given at line {first}); "
        "each key may appear once in a mapping"
        for loc, line, first in duplicates
    ]
    try:
        sweep = validate_sweep(document, path, lines)
    except SweepError as error:
        raise SweepError(path, duplicated + error.problems) from None
    if duplicated:
        raise SweepError(path, duplicated)
    return sweep


def validate_sweep(document: Any, path: str, lines: dict[tuple, int] | None = None) -> Sweep:
    """Validate an already-parsed sweep document (`path` is only used in messages)."""
    if not isinstance(document, dict):
        got = "an empty file" if document is None else f"a {_kind(document)} ({document!r:.60})"
        raise SweepError(
            path,
            [
                f"{path}:1: (top level): a sweep file is a mapping of keys "
                f"(name, problem, network, algorithms, seeds, num_tasks, ...); got {got}"
            ],
        )
    return _Validator(path, lines or {}).validate(document)


def _kind(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


def _yaml_problem(path: str, error: yaml.YAMLError) -> str:
    """One message for a YAML syntax error: file:line, what the parser expected, and the spot."""
    mark = getattr(error, "problem_mark", None)
    if mark is None:
        return f"{path}: not valid YAML: {error}"
    text = f"{path}:{mark.line + 1}: not valid YAML at line {mark.line + 1}, column {mark.column + 1}: "
    text += str(getattr(error, "problem", None) or error)
    context, context_mark = getattr(error, "context", None), getattr(error, "context_mark", None)
    if context and context_mark is not None:
        text += f" ({context} at line {context_mark.line + 1}, column {context_mark.column + 1})"
    snippet = mark.get_snippet()
    return f"{text}\n{snippet}" if snippet else text


class _Validator:
    def __init__(self, path: str, lines: dict[tuple, int]) -> None:
        self.path = path
        self.lines = lines
        self.problems: list[str] = []

    def error(self, loc: tuple, message: str) -> None:
        loc = _drop_union_tags(loc)
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
        spec = PROBLEMS.get(problem_name) if isinstance(problem_name, str) else None
        if spec is None:
            self.error(("problem", "name"), _choice_problem("problem", problem_name, sorted(PROBLEMS)))
            raise SweepError(self.path, self.problems)
        settings = self.model(
            spec.settings_model, {k: v for k, v in top.problem.items() if k != "name"}, ("problem",)
        )
        networks = self.grid(spec.network_model, top.network, ("network",))
        fidelities = top.fidelity if isinstance(top.fidelity, list) else [top.fidelity]
        if len(set(fidelities)) != len(fidelities):
            self.error(("fidelity",), f"a fidelity grid lists each mode once, got {fidelities}")
        algorithms_by_fidelity = {
            fidelity: [
                self.algorithm(spec, entry, fidelity, ("algorithms", i))
                for i, entry in enumerate(top.algorithms)
            ]
            for fidelity in fidelities
        }
        self.problems = list(dict.fromkeys(self.problems))  # each mode repeats an entry's own errors
        algorithms = algorithms_by_fidelity[fidelities[0]]
        steps = None
        if settings is not None:
            try:
                steps = spec.steps_for(settings, top.num_tasks)
            except ValueError as error:
                self.error(("problem", "examples_per_step"), str(error))
        if self.problems:
            raise SweepError(self.path, self.problems)
        self.unique_labels(algorithms)
        self.fit_networks(algorithms, networks)
        if self.problems:
            raise SweepError(self.path, self.problems)

        seeds = (
            top.seeds
            if isinstance(top.seeds, list)
            else list(range(top.seeds.first, top.seeds.first + top.seeds.count))
        )
        if len(set(seeds)) != len(seeds):
            repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
            self.error(("seeds",), f"seeds must be distinct; repeated: {repeated}")
            raise SweepError(self.path, self.problems)
        trials = []
        points = [
            (f, a[0], a[1], p) for f, algos in algorithms_by_fidelity.items() for a in algos for p in a[2]
        ]
        for (fidelity, label, algorithm, point), network, seed in itertools.product(points, networks, seeds):
            hyper, varying_algo = point
            net, varying_net = network
            varying_fidelity = {"fidelity": fidelity} if len(fidelities) > 1 else {}
            trials.append(
                {
                    "sweep": top.name,
                    "trial_index": len(trials),
                    "problem": spec.name,
                    "problem_settings": settings.model_dump(),
                    "network": net.model_dump(),
                    "algorithm": algorithm,
                    "label": label,
                    "hyperparameters": hyper.model_dump(),
                    "varying": {**varying_net, **varying_algo, **varying_fidelity},
                    "fidelity": fidelity,
                    "seed": seed,
                    "seeds_per_trial": top.seeds_per_trial,
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
            seeds_per_trial=top.seeds_per_trial,
            trials=trials,
            document=document,
        )

    def grid(
        self, model: type[BaseModel], data: dict[str, Any], loc: tuple, owner: str = ""
    ) -> list[tuple[BaseModel, dict]]:
        """Validate every point of a grid (lists are grids); returns (model, varying values) pairs."""
        allowed = set(model.model_fields)
        keys, choices = [], []
        ok = True
        for key, value in data.items():
            if key not in allowed:
                whose = f" for {owner}" if owner else ""
                self.error(loc + (key,), f"unknown key{whose}; allowed: {sorted(allowed)}")
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
        if not isinstance(name, str) or name not in spec.algorithms:
            allowed = sorted(spec.algorithms)
            self.error(loc + ("algorithm",), _choice_problem("algorithm", name, allowed, spec.name))
            return ("", "", [])
        model = spec.algorithms[name]
        label = entry.get("label", name)
        if not isinstance(label, str) or not label:
            self.error(loc + ("label",), "a label is a non-empty string")
        params = {k: v for k, v in entry.items() if k not in ("algorithm", "label")}
        for option, by_fidelity in getattr(model, "fidelity_options", {}).items():
            if option in model.model_fields and params.get(option) is None:
                params[option] = by_fidelity[fidelity]
        return (label, name, self.grid(model, params, loc, f"algorithm {name!r}"))

    def fit_networks(self, algorithms: list, networks: list) -> None:
        """A method that resets the last `layers` weight layers (layer resets) asks for no more than
        the network has, and one that regularises the hidden layers (Parseval) has some; networks
        say how many weight layers they have (`weight_layer_count()`)."""
        for i, (_, _, points) in enumerate(algorithms):
            for hyper, _ in points:
                wanted = getattr(hyper, "layers", None)
                for net, _ in networks:
                    count = getattr(net, "weight_layer_count", None)
                    if isinstance(wanted, int) and count is not None and wanted > count():
                        self.error(
                            ("algorithms", i, "layers"),
                            f"layers = {wanted}, but the network has {count()} weight layers"
                            f" (allowed: 0 for all of them, or 1 to {count()})",
                        )
                        return
                    head = getattr(hyper, "head_layers", None)
                    injectable = getattr(net, "injectable_layer_count", None)
                    if isinstance(head, int) and injectable is not None and head > injectable():
                        self.error(
                            ("algorithms", i, "head_layers"),
                            f"head_layers = {head}, but this network's plain linear head has"
                            f" {injectable()} layer(s) (allowed: 1 to {injectable()})",
                        )
                        return
                    if getattr(hyper, "parseval_strength", None) and count is not None and count() < 2:
                        self.error(
                            ("algorithms", i, "algorithm"),
                            "parseval regularises the hidden weight layers, and this network has none"
                            " (allowed: a network with a hidden layer)",
                        )
                        return

    def unique_labels(self, algorithms: list) -> None:
        first_use: dict[str, int] = {}
        for index, (label, _, _) in enumerate(algorithms):
            if label in first_use:
                self.error(
                    ("algorithms", index, "label"),
                    f"label {label!r} is already used by algorithms[{first_use[label]}]; "
                    "give each entry its own `label` (labels name the results)",
                )
            first_use.setdefault(label, index)


def _describe(model: type[BaseModel], item: dict[str, Any]) -> str:
    kind = item["type"]
    if kind == "extra_forbidden":
        owner = _model_at(model, _drop_union_tags(tuple(item["loc"]))[:-1])
        return f"unknown key; allowed: {sorted(owner.model_fields)}" if owner else "unknown key"
    if kind == "missing":
        return "required key is missing"
    message = item["msg"].rstrip(".").removeprefix("Value error, ")
    return f"{message} (got {item.get('input')!r})"


def _choice_problem(what: str, value: Any, allowed: list[str], scope: str = "") -> str:
    allowed_text = f"allowed{' for ' + scope if scope else ''}: {allowed}"
    if value is None:
        return f"required key is missing; {allowed_text}"
    if not isinstance(value, str):
        return f"expected one {what} name (not a {_kind(value)}: a grid is not allowed here); {allowed_text}"
    return f"unknown {what} {value!r}; {allowed_text}"


def _model_at(model: type[BaseModel] | None, loc: tuple) -> type[BaseModel] | None:
    """The (nested) model whose fields sit at `loc` inside `model`, or None if that is not a model."""
    for part in loc:
        if isinstance(part, int):
            continue  # an item of a list of models: the same model
        if model is None or part not in model.model_fields:
            return None
        model = _model_in(model.model_fields[part].annotation)
    return model


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _drop_union_tags(loc: tuple) -> tuple:
    for prefix, tags in _UNION_TAGS.items():
        n = len(prefix)
        if loc[:n] == prefix and len(loc) > n and loc[n] in tags:
            return loc[:n] + loc[n + 1 :]
    return loc


def _format_loc(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _key_lines(
    node: yaml.Node | None, loc: tuple = (), _open: frozenset[int] = frozenset()
) -> tuple[dict[tuple, int], list[tuple[tuple, int, int]]]:
    """Map each key path of the document to its 1-based line, so errors can point at it; also list
    the keys given twice in one mapping (PyYAML silently keeps the last) as (path, line, first line)."""
    lines: dict[tuple, int] = {}
    duplicates: list[tuple[tuple, int, int]] = []
    if node is None or id(node) in _open:  # an alias that contains itself: nothing more to map
        return lines, duplicates
    _open = _open | {id(node)}
    lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else repr(key.value)
            child = loc + (name,)
            line = key.start_mark.line + 1
            if name in seen and name != "<<":
                duplicates.append((child, line, seen[name]))
            seen.setdefault(name, line)
            sub_lines, sub_duplicates = _key_lines(value, child, _open)
            lines.update(sub_lines)
            duplicates += sub_duplicates
            lines[child] = line
    elif isinstance(node, yaml.SequenceNode):
        for index, value in enumerate(node.value):
            sub_lines, sub_duplicates = _key_lines(value, loc + (index,), _open)
            lines.update(sub_lines)
            duplicates += sub_duplicates
    return lines, duplicates


def _nearest_line(lines: dict[tuple, int], loc: tuple) -> int | None:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None
