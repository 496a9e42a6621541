"""Small CIFAR-100 "python version" directories in exactly the official format: pickled (protocol 2)
dicts with bytes keys — `train`/`test`: b'data' uint8 N×3072 (channel-major), b'fine_labels',
b'coarse_labels', b'filenames', b'batch_label'; `meta`: b'fine_label_names', b'coarse_label_names'."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def cifar_split(num_classes: int, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(images N×3×32×32 uint8, fine labels) with classes interleaved, as in the real files."""
    rng = np.random.default_rng(seed)
    labels = np.tile(np.arange(num_classes), per_class)
    rng.shuffle(labels)
    images = rng.integers(0, 256, (len(labels), 3, 32, 32), dtype=np.uint8)
    return images, labels


def write_cifar100(
    root: Path, num_classes: int = 100, train_per_class: int = 4, test_per_class: int = 2, seed: int = 0
) -> Path:
    """ROOT/cifar-100-python/{train,test,meta}; returns ROOT (what `--src` takes)."""
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for offset, (split, per_class) in enumerate((("train", train_per_class), ("test", test_per_class))):
        images, labels = cifar_split(num_classes, per_class, seed + offset)
        content = {
            b"filenames": [f"image_{i}.png".encode() for i in range(len(labels))],
            b"batch_label": f"{split}ing batch 1 of 1".encode(),
            b"fine_labels": [int(v) for v in labels],
            b"coarse_labels": [int(v) // 5 for v in labels],
            b"data": images.reshape(len(images), 3072),
        }
        (folder / split).write_bytes(pickle.dumps(content, protocol=2))
    meta = {
        b"fine_label_names": [f"class_{i}".encode() for i in range(num_classes)],
        b"coarse_label_names": [f"super_{i}".encode() for i in range(max(1, num_classes // 5))],
    }
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return Path(root)


def read_back(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """What the file holds, unpickled as the official instructions do (for comparisons)."""
    with open(Path(root) / "cifar-100-python" / split, "rb") as stream:
        content = pickle.load(stream, encoding="bytes")
    return content[b"data"].reshape(-1, 3, 32, 32), np.array(content[b"fine_labels"])
