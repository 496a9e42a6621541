"""Small files in MNIST's real IDX layout (nothing is downloaded)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from lop_ray.data.idx import idx_bytes


def write_mnist(root: Path, train: int = 60, test: int = 20, gz: bool = False, seed: int = 0) -> Path:
    """ROOT/MNIST/raw/ with the four IDX files (gzipped with `gz`), random images and digit labels."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", train), ("t10k", test)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, count, dtype=np.uint8)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            path = raw / f"{prefix}-{kind}-ubyte"
            data = idx_bytes(array)
            if gz:
                path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
            else:
                path.write_bytes(data)
    return root
