"""Prepared datasets: raw files in their official formats → checksummed `.npy` shards + a manifest.

Trials never parse raw files: `lop-ray data prepare` does it once, and every trial loads the shards,
each checked against the SHA-256 in the manifest, so a truncated or tampered file is an error that
names it, never silently wrong data. Arrays are split along their first axis into shards of at most
`shard_bytes` so that big datasets (ImageNet 32×32: ~4 GB) copy and verify piecewise.

manifest.json
  format        MANIFEST_FORMAT
  dataset       "mnist" | "digits"
  pixel_max     the value of a white pixel (255 for MNIST, 16 for scikit-learn's digits)
  num_classes
  splits        {split: {array: {"dtype", "shape", "shards": [{"file", "rows", "bytes", "sha256"}]}}}
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lop_ray.data.idx import DataFormatError, read_mnist
from lop_ray.data.locations import Location, LocationError, MissingFile, location

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1
DEFAULT_SHARD_BYTES = 256 * 2**20
DATASETS = ("mnist", "digits", "cifar100", "imagenet32")


@dataclass(frozen=True)
class ImageDataset:
    """One split of a prepared dataset: images N×H×W (grey) or N×C×H×W, uint8; labels N, int64."""

    images: np.ndarray
    labels: np.ndarray
    pixel_max: float
    num_classes: int

    def __len__(self) -> int:
        return len(self.labels)


def read_raw(dataset: str, src: str | Path | None) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict]:
    """The splits of `dataset` from its official files under `src` (digits: bundled with scikit-learn)."""
    if dataset == "mnist":
        if src is None:
            raise DataFormatError("mnist: --src DIR is required (the directory holding MNIST/raw/)")
        splits = {split: read_mnist(src, split) for split in ("train", "test")}
        return splits, {"pixel_max": 255.0, "num_classes": 10}
    if dataset == "cifar100":
        if src is None:
            raise DataFormatError("cifar100: --src DIR is required (the directory holding cifar-100-python/)")
        from lop_ray.data.cifar100 import read_cifar100, read_cifar100_meta

        names = read_cifar100_meta(src)
        splits = {split: read_cifar100(src, split) for split in ("train", "test")}
        return splits, {"pixel_max": 255.0, "num_classes": len(names), "class_names": names}
    if dataset == "imagenet32":
        if src is None:
            raise DataFormatError(
                "imagenet32: --src DIR is required (holding classes/ or train_data_batch_*)"
            )
        from lop_ray.data.imagenet32 import imagenet32_splits

        return imagenet32_splits(src)
    if dataset == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = digits.images.astype(np.uint8)  # integer grey levels 0..16
        return {"train": (images, digits.target.astype(np.uint8))}, {"pixel_max": 16.0, "num_classes": 10}
    raise DataFormatError(f"unknown dataset {dataset!r}; allowed: {', '.join(DATASETS)}")


def prepare_dataset(
    dataset: str, src: str | Path | None, dest: str | Path, shard_bytes: int = DEFAULT_SHARD_BYTES
) -> str:
    """Write `dataset`'s shards, then its manifest, into `dest` (a directory or an s3:// prefix);
    returns where the manifest is. The manifest goes last, so a prepare cut short leaves no
    manifest, not one that lists missing shards."""
    splits, info = read_raw(dataset, src)
    dest = location(dest)
    manifest = {"format": MANIFEST_FORMAT, "dataset": dataset, **info, "splits": {}}
    for split, (images, labels) in splits.items():
        manifest["splits"][split] = {
            "images": _write_array(dest, f"{split}-images", images, shard_bytes),
            "labels": _write_array(dest, f"{split}-labels", labels.astype(np.int64), shard_bytes),
        }
    dest.write(MANIFEST_FILE, json.dumps(manifest, indent=1).encode())
    return dest.describe(MANIFEST_FILE)


def _write_array(dest: Location, stem: str, array: np.ndarray, shard_bytes: int) -> dict:
    row_bytes = max(1, array[0].nbytes if len(array) else 1)
    rows_per_shard = max(1, shard_bytes // row_bytes)
    shards = []
    for index, start in enumerate(range(0, len(array), rows_per_shard)):
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(array[start : start + rows_per_shard]), allow_pickle=False)
        data = buffer.getvalue()
        name = f"{stem}-{index:05d}.npy"
        dest.write(name, data)
        shards.append(
            {
                "file": name,
                "rows": min(rows_per_shard, len(array) - start),
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
    return {"dtype": str(array.dtype), "shape": list(array.shape), "shards": shards}


def read_manifest(path: str | Path) -> dict:
    """The manifest of a prepared dataset (directory or s3:// prefix), checked for the keys the
    loaders rely on."""
    where = location(path)
    try:
        manifest = json.loads(where.read(MANIFEST_FILE))
    except MissingFile as error:
        raise DataFormatError(
            f"{error}: not found: prepare the dataset first "
            f"(`lop-ray data prepare DATASET --src RAW --dest {where.describe()}`)"
        ) from None
    except LocationError as error:
        raise DataFormatError(str(error)) from None
    except json.JSONDecodeError as error:
        raise DataFormatError(f"{where.describe(MANIFEST_FILE)}: not valid JSON: {error}") from error
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("dataset") not in DATASETS:
        raise DataFormatError(
            f"{where.describe(MANIFEST_FILE)}: format {manifest.get('format')!r} dataset "
            f"{manifest.get('dataset')!r}; expected format {MANIFEST_FORMAT} and one of {', '.join(DATASETS)}"
        )
    return manifest


def load_split(path: str | Path, split: str = "train", dataset: str | None = None) -> ImageDataset:
    """One split of a prepared dataset, every shard verified against its checksum; with `dataset`,
    the manifest must name it (checked before any shard is read)."""
    where = location(path)
    manifest = read_manifest(path)
    if dataset is not None and manifest["dataset"] != dataset:
        raise DataFormatError(
            f"{where.describe(MANIFEST_FILE)}: holds {manifest['dataset']!r}, not {dataset!r}"
        )
    if split not in manifest["splits"]:
        raise DataFormatError(
            f"{where.describe(MANIFEST_FILE)}: no split {split!r}; it has {', '.join(manifest['splits'])}"
        )
    arrays = {name: _read_array(where, spec) for name, spec in manifest["splits"][split].items()}
    return ImageDataset(
        arrays["images"], arrays["labels"], float(manifest["pixel_max"]), int(manifest["num_classes"])
    )


def load_dataset(dataset: str, data: str | Path | None, split: str = "train") -> ImageDataset:
    """A prepared dataset's split; scikit-learn's digits need no preparing (`data` None)."""
    if data is None:
        if dataset != "digits":
            raise DataFormatError(f"{dataset}: no prepared data given; run `lop-ray data prepare {dataset}`")
        splits, info = read_raw("digits", None)
        images, labels = splits[split]
        return ImageDataset(images, labels.astype(np.int64), info["pixel_max"], info["num_classes"])
    return load_split(data, split, dataset)


def _npy_view(data: bytes) -> np.ndarray:
    """The array in `.npy` bytes without copying them (read-only, like the object store's arrays)."""
    stream = io.BytesIO(data)
    version = np.lib.format.read_magic(stream)
    read_header = (
        np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    )
    shape, fortran_order, dtype = read_header(stream)
    if fortran_order or dtype.hasobject:
        raise DataFormatError("shard is not a C-ordered plain array")
    return np.frombuffer(data, dtype, offset=stream.tell(), count=int(np.prod(shape))).reshape(shape)


def _read_array(where: Location, spec: dict) -> np.ndarray:
    parts = []
    for shard in spec["shards"]:
        try:
            data = where.read(shard["file"])
        except MissingFile as error:
            raise DataFormatError(
                f"{error}: shard listed in {where.describe(MANIFEST_FILE)} is missing"
            ) from None
        digest = hashlib.sha256(data).hexdigest()
        if len(data) != shard["bytes"] or digest != shard["sha256"]:
            raise DataFormatError(
                f"{where.describe(shard['file'])}: {len(data)} bytes with sha256 {digest}, but the manifest says "
                f"{shard['bytes']} bytes with sha256 {shard['sha256']}: truncated or modified; prepare it again"
            )
        parts.append(_npy_view(data))
    array = np.concatenate(parts) if len(parts) > 1 else parts[0]
    if list(array.shape) != spec["shape"] or str(array.dtype) != spec["dtype"]:
        raise DataFormatError(
            f"{where.describe()}: shards hold {array.shape} {array.dtype}, "
            f"the manifest says {spec['shape']} {spec['dtype']}"
        )
    return array
