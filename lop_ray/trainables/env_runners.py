"""Env runners as Ray actors: the same `EnvRunner`s as the single-process path, one per actor, each
on a CPU of its own (a bundle of the trial's placement group, so Tune reserves it with the trial).

Each iteration the policy's weights go into the object store once (`ray.put`) and every actor reads
them from there (numpy arrays: zero-copy on the actor's node); the actors collect in parallel and
their rollouts come back in runner order, which is global env order. State and results are those of
`lop_ray.rl.runner.LocalRunners` over the same specs: the layout changes where envs step, not what
they compute.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import ray
import torch
from ray.util.placement_group import PlacementGroup
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from lop_ray.rl.runner import EnvRunner, Rollout, RunnerSpec


@ray.remote
class EnvRunnerActor:
    def __init__(self, spec: RunnerSpec) -> None:
        torch.set_num_threads(1)  # one core per runner: its policy forward must not spread
        self.runner = EnvRunner(spec)

    def collect(
        self,
        weights: dict[str, np.ndarray],
        num_steps: int,
        obs_stats: Sequence[tuple[np.ndarray, np.ndarray]] | None,
    ) -> Rollout:
        return self.runner.collect(weights, num_steps, obs_stats)

    def state_dict(self) -> dict[str, Any]:
        return self.runner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.runner.load_state_dict(state)


class RemoteRunners:
    """A pool of runner actors; `placement_group`: put runner i into bundle `first_bundle + i`."""

    def __init__(
        self,
        specs: Sequence[RunnerSpec],
        cpus_per_runner: float = 1.0,
        placement_group: PlacementGroup | None = None,
        first_bundle: int = 1,
    ) -> None:
        self.actors = []
        for index, spec in enumerate(specs):
            strategy = (
                PlacementGroupSchedulingStrategy(
                    placement_group, placement_group_bundle_index=first_bundle + index
                )
                if placement_group is not None
                else None
            )
            self.actors.append(
                EnvRunnerActor.options(num_cpus=cpus_per_runner, scheduling_strategy=strategy).remote(spec)
            )

    def collect(
        self,
        weights: dict[str, np.ndarray],
        num_steps: int,
        obs_stats: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> list[Rollout]:
        shared = ray.put(weights)  # once, whatever the number of runners
        return ray.get([actor.collect.remote(shared, num_steps, obs_stats) for actor in self.actors])

    def state_dict(self) -> list[dict[str, Any]]:
        return ray.get([actor.state_dict.remote() for actor in self.actors])

    def load_state_dict(self, state: list[dict[str, Any]]) -> None:
        if len(state) != len(self.actors):
            raise ValueError(f"checkpoint holds {len(state)} runners, this run has {len(self.actors)}")
        ray.get(
            [actor.load_state_dict.remote(saved) for actor, saved in zip(self.actors, state, strict=True)]
        )

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
