"""Memory of K concurrent trials reading one dataset: private copies vs one copy in Ray's object store.

Prepares an MNIST-sized dataset (60,000 × 28 × 28 uint8, 47 MB of images, random pixels in the real
IDX format), then starts K trial-like actors on one node, twice: each loading its own copy
(`load_dataset`), and each taking the node's shared copy (`shared_dataset`). Every actor touches
all of its images, then reports how much its memory grew: USS (pages only it holds) and PSS (its
share of every page, shared ones divided among the processes mapping them). Summed over the K
actors, PSS growth is the memory the dataset costs; the target is one copy, not K.

    .venv/bin/python bench/object_store_sharing.py [--trials 4]
"""

from __future__ import annotations

import argparse
import gc
import tempfile
from pathlib import Path

import numpy as np
import psutil
import ray

from lop_ray.data.idx import idx_bytes
from lop_ray.data.shards import load_dataset, prepare_dataset
from lop_ray.trainables.shared_data import release_shared_datasets, shared_dataset

MB = 2**20


def _write_mnist_sized(root: Path) -> Path:
    rng = np.random.default_rng(0)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, count in (("train", 60_000), ("t10k", 10_000)):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            idx_bytes(rng.integers(0, 256, (count, 28, 28), dtype=np.uint8))
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            idx_bytes(rng.integers(0, 10, count, dtype=np.uint8))
        )
    return root


@ray.remote(num_cpus=0)
class Trial:
    def __init__(self) -> None:
        self.dataset = None

    def warm_up(self) -> None:
        # the first object fetch maps the object store and starts client threads: not the dataset's cost
        ray.get(ray.put(np.zeros(1)))

    def memory(self) -> tuple[int, int]:
        gc.collect()
        info = psutil.Process().memory_full_info()
        return info.uss, info.pss

    def load(self, data: str, shared: bool) -> int:
        self.dataset = shared_dataset("mnist", data) if shared else load_dataset("mnist", data)
        return int(self.dataset.images.sum(dtype=np.int64))  # touch every page


def measure(data: str, trials: int, shared: bool) -> tuple[float, float]:
    actors = [Trial.remote() for _ in range(trials)]
    ray.get([a.warm_up.remote() for a in actors])
    before = ray.get([a.memory.remote() for a in actors])
    checksums = ray.get([a.load.remote(data, shared) for a in actors])
    assert len(set(checksums)) == 1
    after = ray.get([a.memory.remote() for a in actors])
    uss = sum(a[0] - b[0] for a, b in zip(after, before, strict=True)) / MB
    pss = sum(a[1] - b[1] for a, b in zip(after, before, strict=True)) / MB
    for actor in actors:
        ray.kill(actor)
    release_shared_datasets()
    return uss, pss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = str(Path(tmp) / "prepared")
        prepare_dataset("mnist", _write_mnist_sized(Path(tmp) / "raw"), data)
        size = load_dataset("mnist", data).images.nbytes / MB
        ray.init(num_cpus=args.trials, include_dashboard=False, object_store_memory=512 * MB)
        try:
            private = measure(data, args.trials, shared=False)
            shared = measure(data, args.trials, shared=True)
        finally:
            ray.shutdown()
    print(f"dataset: {size:.1f} MB of images; {args.trials} trials on one node")
    print(f"{'':28}{'Σ USS growth':>14}{'Σ PSS growth':>14}{'copies (PSS)':>14}")
    for name, (uss, pss) in (("private copy per trial", private), ("shared (object store)", shared)):
        print(f"{name:28}{uss:>11.1f} MB{pss:>11.1f} MB{pss / size:>14.2f}")
    print(f"shared / private memory (PSS): {shared[1] / private[1]:.2f}")


if __name__ == "__main__":
    main()
