"""The seed-batched CBP step on a GPU against the BP step: S seeds of online permuted MNIST's network
(784 → 2000 → 2000 → 2000 → 10, relu, SGD 0.003, one example per seed per step, CBP as
bench/seed_batching.py's: ρ = 1e-4, maturity 100, contribution utility).

Prints, for BP and CBP: the time per step (device-synchronised), the host's time per step (the time
to launch it; a step is launch-bound when the two are close), the host synchronisations per step
(`torch.cuda.set_sync_debug_mode("warn")`: CBP's pool refill, one per `refill_steps` steps, is the
only one expected), then torch.profiler's top CUDA kernels of the CBP step. The network steps on
random inputs of MNIST's shape (the step's cost does not depend on pixel values); CBP starts after
BP's steps, past maturity, so its timed steps replace units (≈ 0.2 per seed and layer per step).
About 20 s at S = 30 on an H100/H200 (most of it building S networks on the CPU):

    python3 bench/cbp_profile.py [--seeds 30] [--steps 200]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import torch
from torch.nn import functional as F

from lop_ray.algos import CBPConfig
from lop_ray.experiments.learner import LearnerSettings, build_learner, initial_mlp

SIZES = [784, 2000, 2000, 2000, 10]
BP = LearnerSettings(step_size=0.003)
CBP = LearnerSettings(
    algorithm="cbp",
    step_size=0.003,
    cbp=CBPConfig(replacement_rate=1e-4, maturity_threshold=100, util_type="contribution"),
)


def _steps(learner, inputs, labels, count: int, start: int = 0) -> None:
    for step in range(start, start + count):
        learner.learn(inputs[step % len(inputs)], labels[step % len(labels)])


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(learner, inputs, labels, count: int) -> tuple[float, float]:
    """(device ms per step, host ms per step)."""
    _synchronize(inputs.device)
    start = time.perf_counter()
    _steps(learner, inputs, labels, count)
    host = time.perf_counter() - start
    _synchronize(inputs.device)
    return 1e3 * (time.perf_counter() - start) / count, 1e3 * host / count


def _synchronisations(learner, inputs, labels, count: int) -> float:
    """Host synchronisations per step (NaN off CUDA, where there is nothing to synchronise with)."""
    if inputs.device.type != "cuda":
        return float("nan")
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            _steps(learner, inputs, labels, count)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--steps", type=int, default=200, help="timed steps per learner")
    parser.add_argument("--sync-steps", type=int, default=64, help="steps watched for synchronisations")
    parser.add_argument("--profile-steps", type=int, default=20)
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of this script")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    seeds = list(range(args.seeds))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{name}, torch {torch.__version__}, S = {args.seeds}, net {SIZES}")
    started = time.perf_counter()
    net = initial_mlp(SIZES, "relu", seeds).to(device)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.rand((64, args.seeds, 1, SIZES[0]), generator=generator).to(device)
    labels = torch.randint(0, SIZES[-1], (64, args.seeds, 1), generator=generator).to(device)
    print(f"built in {time.perf_counter() - started:.1f} s")

    bp, _ = build_learner(net, BP, seeds, device, F.cross_entropy)
    _steps(bp, inputs, labels, 20)  # warm-up
    bp_ms, bp_host = _timed(bp, inputs, labels, args.steps)
    bp_syncs = _synchronisations(bp, inputs, labels, args.sync_steps)

    cbp_learner, cbp = build_learner(net, CBP, seeds, device, F.cross_entropy)
    maturity = CBP.cbp.maturity_threshold
    _steps(cbp_learner, inputs, labels, maturity + 20)  # past maturity: units are replaced from here
    before = cbp.replaced_total.sum().item()
    cbp_ms, cbp_host = _timed(cbp_learner, inputs, labels, args.steps)
    replaced = (cbp.replaced_total.sum().item() - before) / args.steps
    cbp_syncs = _synchronisations(cbp_learner, inputs, labels, args.sync_steps)

    print(f"{'':6}{'ms per step':>14}{'host ms per step':>20}{'syncs per step':>17}")
    print(f"{'bp':6}{bp_ms:>14.3f}{bp_host:>20.3f}{bp_syncs:>17.3f}")
    print(f"{'cbp':6}{cbp_ms:>14.3f}{cbp_host:>20.3f}{cbp_syncs:>17.3f}")
    print(
        f"CBP / BP per step: {cbp_ms / bp_ms:.2f}×; units replaced per step (all seeds and layers): "
        f"{replaced:.1f}; pool refills (one sync each) every {cbp.refill_steps} steps"
    )

    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profile:
        _steps(cbp_learner, inputs, labels, args.profile_steps)
        _synchronize(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\ntorch.profiler, {args.profile_steps} CBP steps, by {key}:")
    print(profile.key_averages().table(sort_by=key, row_limit=20))
    print(f"total {time.perf_counter() - started:.1f} s")
    leaked = sorted(m for m in ("ray", "mlflow", "pydantic") if m in sys.modules)
    if leaked:
        raise SystemExit(f"imported {leaked}: it must run where they are not installed")


if __name__ == "__main__":
    main()
