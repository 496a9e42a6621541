"""MNIST's IDX files (http://yann.lecun.com/exdb/mnist/), plain or gzipped, in torchvision's layout.

torchvision's `MNIST(download=False)` finds only the un-gzipped names, and users have `.gz`-only
copies too (../shared/env-notes.md), so the format's few lines are ours.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

# IDX type codes → numpy dtypes (big-endian for the multi-byte ones)
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DataFormatError(ValueError):
    """A data file that is missing or not in the format it claims; the message names the file."""


def read_idx(path: str | Path) -> np.ndarray:
    """One IDX file as an array of its declared type and shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as stream:
            data = stream.read()
    except (OSError, EOFError) as error:
        raise DataFormatError(f"{path}: cannot read: {error}") from error
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise DataFormatError(f"{path}: not an IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, offset=4))
    dtype = np.dtype(_DTYPES[data[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise DataFormatError(
            f"{path}: {len(data)} bytes, but its header declares shape {shape} of {dtype} ({expected} bytes)"
        )
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def idx_bytes(array: np.ndarray) -> bytes:
    """`array` in IDX format (the inverse of `read_idx`): for test and benchmark files."""
    code = next(code for code, dtype in _DTYPES.items() if np.dtype(dtype) == array.dtype.newbyteorder(">"))
    big_endian = array.astype(array.dtype.newbyteorder(">"))
    header = bytes([0, 0, code, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    return header + big_endian.tobytes()


def find_mnist_file(root: str | Path, name: str) -> Path:
    """`name` or `name.gz` under ROOT/MNIST/raw/ (torchvision's layout), ROOT/raw/ or ROOT itself."""
    root = Path(root)
    for folder in (root / "MNIST" / "raw", root / "raw", root):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise DataFormatError(
        f"{root}: no {name} (or {name}.gz) in {root / 'MNIST' / 'raw'}, {root / 'raw'} or {root}"
    )


def read_mnist(root: str | Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(images N×28×28 uint8, labels N uint8) of MNIST's `train` or `test` split."""
    image_name, label_name = MNIST_FILES[split]
    image_path, label_path = find_mnist_file(root, image_name), find_mnist_file(root, label_name)
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataFormatError(
            f"{image_path}: expected N×rows×cols uint8 images, got {images.shape} {images.dtype}"
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataFormatError(
            f"{label_path}: {labels.shape[0] if labels.ndim else 0} labels for {len(images)} images in {image_path}"
        )
    if labels.max(initial=0) > 9:
        raise DataFormatError(f"{label_path}: labels must be digits 0-9, found {int(labels.max())}")
    return images, labels
