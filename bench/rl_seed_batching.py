"""Would seed batching pay for PPO's networks? One PPO minibatch update (forward and backward of
the 256-256 policy and value MLPs on a minibatch of 128, Ant's 111-d observations, Adam) for S seeds
one after another against S seeds as one batched network (weights (S, out, in), `torch.baddbmm`),
measured side by side in one run.

Unlike one-example regression, a PPO minibatch is real arithmetic (~12 MFLOP per net per pass at
batch 128), so the per-seed cost is compute, not dispatch, and batching can only win where one seed
leaves the device idle (a GPU). Imports nothing from Ray, MLflow or gymnasium:

    .venv/bin/python bench/rl_seed_batching.py [--device cuda] [--seeds 1 8 32]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

SIZES = (111, 256, 256, 8)
MINIBATCH = 128


def mlp_weights(seeds: int, device: torch.device) -> list[torch.Tensor]:
    params = []
    for fan_in, fan_out in zip(SIZES[:-1], SIZES[1:], strict=True):
        bound = math.sqrt(3.0 / fan_in)
        params.append(
            (torch.rand(seeds, fan_out, fan_in, device=device) * 2 - 1).mul_(bound).requires_grad_()
        )
        params.append(torch.zeros(seeds, 1, fan_out, device=device, requires_grad=True))
    return params


def batched_loss(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    h = x
    for index in range(0, len(params), 2):
        h = torch.baddbmm(params[index + 1], h, params[index].transpose(1, 2))
        if index + 2 < len(params):
            h = torch.relu(h)
    return h.square().mean(dim=(1, 2)).sum()  # each seed's loss; summed, gradients stay per seed


def updates_per_second(seeds: int, batched: bool, device: torch.device, repeats: int) -> float:
    """Seed-updates per second: one update = policy and value, forward + backward + Adam."""
    count = 1 if not batched else seeds
    nets = [[mlp_weights(count, device) for _ in range(2)] for _ in range(1 if batched else seeds)]
    optimizers = [torch.optim.Adam([p for net in pair for p in net], lr=3e-4) for pair in nets]
    x = torch.randn(count, MINIBATCH, SIZES[0], device=device)

    def one_round() -> None:
        for pair, optimizer in zip(nets, optimizers, strict=True):
            optimizer.zero_grad(set_to_none=True)
            (batched_loss(pair[0], x) + batched_loss(pair[1], x)).backward()
            optimizer.step()

    one_round()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        one_round()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seeds * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {device} ({name}), torch {torch.__version__}, CPU threads {args.threads}")
    print(f"{'S':>4}{'one after another':>22}{'batched':>18}{'batched / one-by-one':>24}")
    for seeds in args.seeds:
        alone = updates_per_second(seeds, False, device, args.repeats)
        together = updates_per_second(seeds, True, device, args.repeats)
        print(
            f"{seeds:>4}{alone:>14,.0f} upd/s{together:>12,.0f} upd/s{together / alone:>23.2f}×", flush=True
        )


if __name__ == "__main__":
    main()
