"""CIFAR-100's "python version" files (`cifar-100-python/{train,test,meta}`, spec/data_formats.md).

torchvision's `CIFAR100(download=False)` refuses any file whose md5 is not the official one
(../shared/env-notes.md), so small files in the same format, and copies re-pickled by users, need our
own reader. The files are pickles; we unpickle them with an allow-list (numpy arrays, plain
containers) so that a foreign pickle cannot run code, and check every key the format promises.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from lop_ray.data.idx import DataFormatError

CIFAR100_DIR = "cifar-100-python"
SPLITS = ("train", "test")
IMAGE_SHAPE = (3, 32, 32)

# what the official pickles (protocol 2, written by Python 2 with numpy) reference
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("copy_reg", "_reconstructor"),
    ("copyreg", "_reconstructor"),
    ("__builtin__", "object"),
    ("builtins", "object"),
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refuses to load {module}.{name}")
        return super().find_class(module, name)


def find_cifar100_dir(root: str | Path) -> Path:
    """ROOT/cifar-100-python (torchvision's layout) or ROOT itself, whichever holds `train`."""
    root = Path(root)
    for folder in (root / CIFAR100_DIR, root):
        if (folder / "train").is_file():
            return folder
    raise DataFormatError(
        f"{root}: no CIFAR-100 files: expected {root / CIFAR100_DIR / 'train'} (or {root / 'train'})"
    )


def _load(path: Path) -> dict:
    try:
        with open(path, "rb") as stream:
            content = _Unpickler(stream, encoding="bytes").load()
    except FileNotFoundError:
        raise DataFormatError(
            f"{path}: missing (CIFAR-100's python version has train, test and meta)"
        ) from None
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError) as error:
        raise DataFormatError(f"{path}: not a CIFAR-100 pickle (truncated or foreign): {error}") from None
    if not isinstance(content, dict):
        raise DataFormatError(f"{path}: not a CIFAR-100 pickle: holds a {type(content).__name__}, not a dict")
    return content


def read_cifar100_meta(root: str | Path) -> list[str]:
    """The fine class names, in label order."""
    path = find_cifar100_dir(root) / "meta"
    meta = _load(path)
    names = meta.get(b"fine_label_names")
    if not isinstance(names, list) or not names:
        raise DataFormatError(f"{path}: no b'fine_label_names' list; keys: {sorted(meta)}")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def read_cifar100(root: str | Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(images N×3×32×32 uint8, fine labels N uint8) of the `train` or `test` split, in file order."""
    if split not in SPLITS:
        raise DataFormatError(f"CIFAR-100 has no split {split!r}; allowed: {', '.join(SPLITS)}")
    folder = find_cifar100_dir(root)
    num_classes = len(read_cifar100_meta(folder))
    path = folder / split
    content = _load(path)
    missing = [key for key in (b"data", b"fine_labels") if key not in content]
    if missing:
        raise DataFormatError(f"{path}: missing keys {missing}; it has {sorted(content)}")
    data, labels = content[b"data"], np.asarray(content[b"fine_labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.shape} {data.dtype}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataFormatError(f"{path}: b'data' must be an N×3072 uint8 array, got {got}")
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise DataFormatError(f"{path}: {labels.shape} b'fine_labels' for {len(data)} images")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataFormatError(
            f"{path}: fine labels must be 0..{num_classes - 1} (meta names {num_classes} classes), "
            f"found {int(labels.min())}..{int(labels.max())}"
        )
    return data.reshape(-1, *IMAGE_SHAPE), labels.astype(np.uint8)
