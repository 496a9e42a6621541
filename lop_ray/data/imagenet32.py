"""Downsampled ImageNet 32×32 (Chrabaszcz et al. 2017) in the two layouts users have
(spec/data_formats.md), read into one array of 700 images per class.

- `classes/<c>.npy`, c = 0..K−1: the paper's own layout, each a 700×3×32×32 uint8 array.
- `train_data_batch_1` … `_10` (pickled dicts, or `.npz`): `data` N×3072 uint8, channel-major, and
  `labels` 1-based. Class c = label − 1 gets the first 700 images of that label in file order
  (batch 1 first), which is how the paper's per-class files were cut from these.

Per class the first 600 images are the training images and the last 100 the test images, in every run
(spec/problems.md §3). K is whatever the files hold (1,000 in the real data set; tests use a few): the
prepare command prints it, and the manifest records it with the layout it came from.

The batch files are pickles. They are unpickled by an unpickler that only builds numpy arrays, so a
foreign pickle is a `DataFormatError` naming the file, not code run on the user's machine.
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path

import numpy as np

from lop_ray.data.idx import DataFormatError

IMAGES_PER_CLASS = 700
TRAIN_PER_CLASS = 600  # the first 600 of each class; the last 100 are its test images
IMAGE_SHAPE = (3, 32, 32)
MAX_CLASSES = 1000
BATCH_FILES = tuple(f"train_data_batch_{i}" for i in range(1, 11))
_CLASS_FILE = re.compile(r"^(\d+)\.npy$")


def read_imagenet32(src: str | Path) -> tuple[np.ndarray, str]:
    """All classes' images, (K, 700, 3, 32, 32) uint8, and the layout read ("classes" or "batches").

    `src` is the directory holding `classes/` (or `classes/` itself), or the one holding the batch files.
    """
    src = Path(src)
    if not src.is_dir():
        raise DataFormatError(f"{src}: not a directory (expected classes/<c>.npy or train_data_batch_1..10)")
    if (src / "classes").is_dir():
        return read_class_files(src / "classes"), "classes"
    if any(_CLASS_FILE.match(p.name) for p in src.iterdir()):
        return read_class_files(src), "classes"
    if any(_batch_path(src, name) for name in BATCH_FILES):
        return read_batch_files(src), "batches"
    raise DataFormatError(
        f"{src}: no ImageNet 32×32 files: expected {src / 'classes'}/<c>.npy (c = 0..999) "
        f"or {src}/train_data_batch_1 … _10 (pickled or .npz)"
    )


def imagenet32_splits(src: str | Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict]:
    """The train and test splits (class-major: class 0's images first) and the manifest's extra keys."""
    images, layout = read_imagenet32(src)
    classes = len(images)
    splits = {}
    for split, part in (("train", slice(0, TRAIN_PER_CLASS)), ("test", slice(TRAIN_PER_CLASS, None))):
        chosen = images[:, part]
        per_class = chosen.shape[1]
        splits[split] = (
            chosen.reshape(classes * per_class, *IMAGE_SHAPE),
            np.repeat(np.arange(classes, dtype=np.int64), per_class),
        )
    info = {
        "pixel_max": 255.0,  # the paper feeds raw 0..255 values (no scaling); recorded for completeness
        "num_classes": classes,
        "source_layout": layout,
        "images_per_class": {"train": TRAIN_PER_CLASS, "test": IMAGES_PER_CLASS - TRAIN_PER_CLASS},
    }
    return splits, info


def read_class_files(directory: Path) -> np.ndarray:
    """`<c>.npy` for c = 0..K−1, each exactly 700×3×32×32 uint8."""
    found = {int(m.group(1)): p for p in directory.iterdir() if (m := _CLASS_FILE.match(p.name))}
    if len(found) < 2:
        raise DataFormatError(f"{directory}: expected class files 0.npy … 999.npy, found {len(found)}")
    missing = sorted(set(range(max(found) + 1)) - set(found))
    if missing:
        raise DataFormatError(
            f"{directory / f'{missing[0]}.npy'}: missing ({len(missing)} class file(s) missing)"
        )
    images = np.empty((len(found), IMAGES_PER_CLASS, *IMAGE_SHAPE), dtype=np.uint8)
    for c in range(len(found)):
        path = found[c]
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:
            raise DataFormatError(f"{path}: not a readable .npy array (truncated?): {error}") from None
        expected = (IMAGES_PER_CLASS, *IMAGE_SHAPE)
        if array.dtype != np.uint8 or array.shape != expected:
            raise DataFormatError(f"{path}: holds {array.shape} {array.dtype}, expected {expected} uint8")
        images[c] = array
    return images


def read_batch_files(directory: Path) -> np.ndarray:
    """The first 700 images of each label across `train_data_batch_1` … `_10`, in file order."""
    images = np.empty((MAX_CLASSES, IMAGES_PER_CLASS, int(np.prod(IMAGE_SHAPE))), dtype=np.uint8)
    counts = np.zeros(MAX_CLASSES, dtype=np.int64)
    for name in BATCH_FILES:
        path = _batch_path(directory, name)
        if path is None:
            raise DataFormatError(f"{directory / name}: missing (neither it nor {name}.npz exists)")
        data, labels = _read_batch(path)
        classes = labels - 1
        order = np.argsort(classes, kind="stable")  # rows grouped by class, file order kept within
        sorted_classes = classes[order]
        starts = np.searchsorted(sorted_classes, sorted_classes, side="left")
        rank = counts[sorted_classes] + np.arange(len(order)) - starts  # position within its class
        keep = rank < IMAGES_PER_CLASS
        images[sorted_classes[keep], rank[keep]] = data[order[keep]]
        counts += np.bincount(classes, minlength=MAX_CLASSES)
    num_classes = int(np.nonzero(counts)[0].max()) + 1 if counts.any() else 0
    short = np.nonzero(counts[:num_classes] < IMAGES_PER_CLASS)[0]
    if num_classes < 2 or len(short):
        c = int(short[0]) if len(short) else 0
        raise DataFormatError(
            f"{directory}: the batch files hold {int(counts[c])} images of label {c + 1}; "
            f"every label 1..{max(num_classes, 2)} needs at least {IMAGES_PER_CLASS}"
        )
    return images[:num_classes].reshape(num_classes, IMAGES_PER_CLASS, *IMAGE_SHAPE)


def _batch_path(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.npz"):
        if candidate.is_file():
            return candidate
    return None


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        raw = path.read_bytes()
        if raw[:4] == b"PK\x03\x04":  # a zip: numpy's .npz
            with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
                batch = {key: npz[key] for key in npz.files}
        else:
            batch = _ArrayUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except (OSError, ValueError, EOFError, pickle.UnpicklingError, KeyError, IndexError) as error:
        raise DataFormatError(f"{path}: not a readable ImageNet 32×32 batch (truncated?): {error}") from None
    if not isinstance(batch, dict):
        raise DataFormatError(f"{path}: holds a {type(batch).__name__}, expected a dict with data and labels")
    batch = {key.decode() if isinstance(key, bytes) else key: value for key, value in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise DataFormatError(f"{path}: keys {sorted(batch)}; expected 'data' and 'labels'")
    data, labels = np.asarray(batch["data"]), np.asarray(batch["labels"])
    width = int(np.prod(IMAGE_SHAPE))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != width:
        raise DataFormatError(f"{path}: data is {data.shape} {data.dtype}, expected N×{width} uint8")
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise DataFormatError(f"{path}: {labels.shape} labels ({labels.dtype}) for {len(data)} images")
    if len(labels) and (labels.min() < 1 or labels.max() > MAX_CLASSES):
        raise DataFormatError(
            f"{path}: labels span {labels.min()}..{labels.max()}, expected 1-based class ids 1..{MAX_CLASSES}"
        )
    return data, labels.astype(np.int64)


class _ArrayUnpickler(pickle.Unpickler):
    """Builds dicts, lists and numpy arrays only: what the batch files hold, and nothing that runs code."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: not an array")
        return super().find_class(module, name)
