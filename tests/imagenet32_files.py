"""Small files in the downsampled ImageNet 32×32's real layouts (nothing is downloaded): the paper's
per-class `classes/<c>.npy` (700×3×32×32 uint8 each) and the official `train_data_batch_1` … `_10`
(pickled dicts, or `.npz`, with `data` N×3072 uint8 channel-major and 1-based `labels`). Only the
number of classes is small."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np

PER_CLASS = 700


def random_images(rng: np.random.Generator, c: int, count: int) -> np.ndarray:
    return rng.integers(0, 256, (count, 3, 32, 32), dtype=np.uint8)


def write_class_files(
    root: Path,
    classes: int = 4,
    seed: int = 0,
    images: Callable[[np.random.Generator, int, int], np.ndarray] = random_images,
) -> np.ndarray:
    """ROOT/classes/<c>.npy for c < `classes`; returns the (classes, 700, 3, 32, 32) array written."""
    rng = np.random.default_rng(seed)
    (root / "classes").mkdir(parents=True, exist_ok=True)
    written = np.stack([images(rng, c, PER_CLASS) for c in range(classes)])
    for c, array in enumerate(written):
        np.save(root / "classes" / f"{c}.npy", array)
    return written


def write_batch_files(
    root: Path, classes: int = 4, extra: int = 20, npz: bool = False, seed: int = 0
) -> np.ndarray:
    """ROOT/train_data_batch_1 … _10 holding 700 + `extra` images of each label 1..`classes`, shuffled
    across the files; returns what the reader must give back: per class the first 700 images of
    that label in file order, (classes, 700, 3, 32, 32)."""
    rng = np.random.default_rng(seed)
    total = classes * (PER_CLASS + extra)
    labels = rng.permutation(np.repeat(np.arange(1, classes + 1), PER_CLASS + extra))
    data = rng.integers(0, 256, (total, 3 * 32 * 32), dtype=np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    for index, rows in enumerate(np.array_split(np.arange(total), 10), start=1):
        batch = {"data": data[rows], "labels": labels[rows].tolist(), "mean": data[rows].mean(axis=0)}
        name = root / f"train_data_batch_{index}"
        if npz:
            np.savez(
                name.with_name(name.name + ".npz"), data=batch["data"], labels=np.asarray(batch["labels"])
            )
        else:
            name.write_bytes(pickle.dumps(batch))
    expected = np.empty((classes, PER_CLASS, 3, 32, 32), dtype=np.uint8)
    for c in range(classes):
        expected[c] = data[labels == c + 1][:PER_CLASS].reshape(PER_CLASS, 3, 32, 32)
    return expected
