"""Env runners in worker processes, for the pure-PyTorch loop on a machine without Ray.

Threads step MuJoCo in parallel only while it holds no GIL (the simulation itself); gymnasium's
observation and reward code and the runner's own bookkeeping stay serial (docs/performance.md,
seed-batched PPO). Worker processes step everything in parallel. In a Ray Tune trial the runner
actors (`lop_ray.trainables.env_runners`) do this job; this pool is the same `EnvRunner`s in
`multiprocessing` workers, for `PPOExperiment` run on its own (benchmarks, a GPU machine with no Ray).
State and results are those of `LocalRunners` over the same specs: the layout changes where envs
step, never what they compute.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import traceback
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from lop_ray.rl.runner import EnvRunner, Rollout, RunnerSpec

_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """The environment a spawned worker starts with (read when it imports numpy and torch)."""
    before = {name: os.environ.get(name) for name in _THREAD_VARIABLES}
    os.environ.update(dict.fromkeys(_THREAD_VARIABLES, "1"))
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _serve(spec: RunnerSpec, connection: Connection) -> None:
    """A worker: one `EnvRunner`, answering (method, args) requests until told to close."""
    runner = EnvRunner(spec)
    while True:
        method, args = connection.recv()
        if method == "close":
            runner.close()
            connection.close()
            return
        try:
            connection.send(("ok", getattr(runner, method)(*args)))
        except Exception as error:  # the parent re-raises it, with the worker's traceback
            connection.send(("error", f"{type(error).__name__}: {error}\n{traceback.format_exc()}"))


class ProcessRunners:
    """One worker process per spec (spawned: nothing of the parent's torch or OpenMP state is
    inherited); the interface of `LocalRunners`."""

    def __init__(self, specs: Sequence[RunnerSpec], start_method: str = "spawn") -> None:
        context = multiprocessing.get_context(start_method)
        self.connections: list[Connection] = []
        self.workers = []
        with _one_blas_thread():  # a worker's products are tiny: a thread pool each would oversubscribe
            for spec in specs:
                parent, child = context.Pipe()
                worker = context.Process(target=_serve, args=(spec, child), daemon=True)
                worker.start()
                child.close()
                self.connections.append(parent)
                self.workers.append(worker)

    def _call(self, method: str, args_per_runner: Sequence[tuple]) -> list[Any]:
        for connection, args in zip(self.connections, args_per_runner, strict=True):
            connection.send((method, args))
        answers = [connection.recv() for connection in self.connections]  # every worker answers
        for status, value in answers:
            if status == "error":
                raise RuntimeError(f"env runner worker failed in {method}: {value}")
        return [value for _, value in answers]

    def collect(
        self,
        weights: dict[str, np.ndarray],
        num_steps: int,
        obs_stats: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> list[Rollout]:
        return self._call("collect", [(weights, num_steps, obs_stats)] * len(self.connections))

    def state_dict(self) -> list[dict[str, Any]]:
        return self._call("state_dict", [()] * len(self.connections))

    def load_state_dict(self, state: list[dict[str, Any]]) -> None:
        if len(state) != len(self.connections):
            raise ValueError(f"checkpoint holds {len(state)} runners, this run has {len(self.connections)}")
        self._call("load_state_dict", [(saved,) for saved in state])

    def close(self) -> None:
        for connection in self.connections:
            connection.send(("close", ()))
            connection.close()
        for worker in self.workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.terminate()
        self.connections, self.workers = [], []
