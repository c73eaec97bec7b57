"""Loaders for CIFAR-10, CIFAR-100 and MNIST in their standard on-disk formats (never downloading).

The expected layouts are those torchvision's download step leaves behind:

* CIFAR-10: ``root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``
* CIFAR-100: ``root/cifar-100-python/{train, test, meta}``
* MNIST: ``root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (each optionally ``.gz``)

The CIFAR "python version" files are pickles (Krizhevsky, "Learning Multiple Layers of Features
from Tiny Images", 2009). They are read only through :class:`RestrictedUnpickler`, which admits the
handful of numpy globals those files contain and rejects every other global, so a tampered file
cannot run code. MNIST (LeCun et al., 1998) is parsed from the IDX format directly.

Images come back as float32 ``[N, C, H, W]``, normalised per channel with the training split's
mean and standard deviation (stored on the :class:`Dataset`); labels are int64.
"""

from __future__ import annotations

import codecs
import gzip
import os
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from privfl.data.base import Dataset
from privfl.params import Choice, Instance, Int, validated
from privfl.registry import register

__all__ = ["RejectedGlobalError", "RestrictedUnpickler", "load_cifar10", "load_cifar100", "load_mnist"]

_NO_DOWNLOAD = (
    "privfl never downloads data; obtain the files yourself (e.g. with torchvision) and point root at them"
)

CIFAR10_LAYOUT = "root/cifar-10-batches-py/{data_batch_1, ..., data_batch_5, test_batch, batches.meta}"
CIFAR100_LAYOUT = "root/cifar-100-python/{train, test, meta}"
MNIST_LAYOUT = (
    "root/MNIST/raw/{train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
    "t10k-labels-idx1-ubyte} (each optionally .gz)"
)


# --------------------------------------------------------------------------- restricted unpickling


class RejectedGlobalError(pickle.UnpicklingError):
    """A pickle referenced a global outside :class:`RestrictedUnpickler`'s allow-list."""


def _latin1_encode(obj: object, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` limited to the latin-1 round trip protocol-2 pickles use for ``bytes``."""
    canonical = encoding.replace("-", "").replace("_", "").lower() if isinstance(encoding, str) else None
    if not isinstance(obj, str) or canonical not in ("latin1", "iso88591"):
        raise RejectedGlobalError(
            "_codecs.encode is only allowed as encode(str, 'latin1') for pickled bytes, "
            f"got encode({type(obj).__name__}, {encoding!r})"
        )
    return codecs.encode(obj, encoding, errors)


def _numpy_reconstruct() -> Any:
    core = getattr(np, "_core", None)  # numpy >= 2
    if core is not None and hasattr(core, "multiarray"):
        return core.multiarray._reconstruct
    return np.core.multiarray._reconstruct  # numpy < 2


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler admitting only the globals the CIFAR python-version files contain.

    Allowed: numpy array reconstruction (``numpy.core.multiarray._reconstruct``, its numpy >= 2 name
    ``numpy._core.multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype``) and
    ``_codecs.encode`` restricted to latin-1 (how protocol 2 stores ``bytes`` written by Python 3).
    Any other global raises :class:`RejectedGlobalError` (a :class:`pickle.UnpicklingError`) naming
    it, before anything is called.
    Globals are resolved here, never imported by name.
    """

    def __init__(self, file: Any, *, source: str = "<pickle>") -> None:
        super().__init__(file, encoding="bytes")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        allowed = {
            ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
            ("numpy", "ndarray"): lambda: np.ndarray,
            ("numpy", "dtype"): lambda: np.dtype,
            ("_codecs", "encode"): lambda: _latin1_encode,
        }
        resolve = allowed.get((module, name))
        if resolve is None:
            names = ", ".join(f"{m}.{n}" for m, n in allowed)
            raise RejectedGlobalError(
                f"{self._source}: refusing to unpickle global {module}.{name}; "
                f"only these globals are allowed in CIFAR files: {names}"
            )
        return resolve()


_PICKLE_ERRORS = (
    pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
    struct.error,
)


def _load_pickle(path: Path) -> dict[bytes, Any]:
    try:
        with open(path, "rb") as fh:
            obj = RestrictedUnpickler(fh, source=str(path)).load()
    except RejectedGlobalError as exc:
        if str(path) in str(exc):
            raise
        raise RejectedGlobalError(f"{path}: {exc}") from exc
    except _PICKLE_ERRORS as exc:
        raise ValueError(
            f"{path}: not a valid CIFAR python-version pickle ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return obj


# --------------------------------------------------------------------------- shared helpers


#: ``root`` (the data directory) and ``limit`` (first examples kept) of the file loaders
ROOT = Instance(str, os.PathLike)
LIMIT = Int(1, None, optional=True, typical=(1, 100))


def _check_root(root: str | os.PathLike, dataset: str, layout: str) -> Path:
    """The data directory (its type is declared: :data:`ROOT`); ``FileNotFoundError`` when missing."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"{dataset}: root directory {path} does not exist; expected layout {layout}. {_NO_DOWNLOAD}."
        )
    return path


def _require(paths: list[Path], dataset: str, layout: str) -> None:
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(
                f"{dataset}: missing file {path}; expected layout {layout}. {_NO_DOWNLOAD}."
            )


def _channel_stats(pixels: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean/std of uint8 ``[N, C, H, W]`` pixels in [0, 1] (via value counts).

    A channel with zero spread gets std 1.0 so normalisation stays finite.
    """
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(pixels.shape[1]):
        counts = np.bincount(pixels[:, c].reshape(-1), minlength=256).astype(np.float64)
        total = counts.sum()
        mean = float((counts * values).sum() / total)
        var = float((counts * (values - mean) ** 2).sum() / total)
        means.append(mean)
        stds.append(var**0.5 if var > 0 else 1.0)
    return tuple(means), tuple(stds)


def _normalise(pixels: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    x = torch.from_numpy(pixels.astype(np.float32)).div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return x.sub_(m).div_(s)


def _build(
    name: str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    class_names: tuple[str, ...] | None,
    limit: int | None,
) -> Dataset:
    (xtr, ytr), (xte, yte) = train, test
    if limit is not None:
        xtr, ytr, xte, yte = xtr[:limit], ytr[:limit], xte[:limit], yte[:limit]
    mean, std = _channel_stats(xtr)
    return Dataset(
        name=name,
        x_train=_normalise(xtr, mean, std),
        y_train=torch.from_numpy(np.array(ytr, dtype=np.int64)),
        x_test=_normalise(xte, mean, std),
        y_test=torch.from_numpy(np.array(yte, dtype=np.int64)),
        num_classes=num_classes,
        mean=mean,
        std=std,
        class_names=class_names,
    )


# --------------------------------------------------------------------------- CIFAR


def _names(meta: dict[bytes, Any], key: bytes, path: Path, expected: int) -> tuple[str, ...]:
    raw = meta.get(key)
    if not isinstance(raw, (list, tuple)) or not all(isinstance(n, (bytes, str)) for n in raw):
        raise ValueError(f"{path}: expected {key!r} to be a list of class names, got {type(raw).__name__}")
    if len(raw) != expected:
        raise ValueError(f"{path}: expected {expected} class names under {key!r}, got {len(raw)}")
    return tuple(n.decode("utf-8") if isinstance(n, bytes) else n for n in raw)


def _cifar_batch(path: Path, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images ``uint8 [N, 3, 32, 32]`` and labels ``int64 [N]`` from one CIFAR pickle."""
    batch = _load_pickle(path)
    for key in (b"data", label_key):
        if key not in batch:
            found = ", ".join(repr(k) for k in batch)
            raise ValueError(f"{path}: missing key {key!r} (keys found: {found})")
    data = batch[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        if isinstance(data, np.ndarray):
            desc = f"{data.dtype} array of shape {data.shape}"
        else:
            desc = type(data).__name__
        raise ValueError(f"{path}: b'data' must be a uint8 array of shape [N, 3072], got {desc}")
    try:
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {label_key!r} must be a list of integer labels ({exc})") from exc
    if labels.shape != (data.shape[0],):
        raise ValueError(
            f"{path}: {label_key!r} has shape {labels.shape}, expected one label per image ({data.shape[0]})"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{path}: {label_key!r} values must lie in [0, {num_classes}), got range "
            f"[{labels.min()}, {labels.max()}]"
        )
    return data.reshape(-1, 3, 32, 32), labels


def _concat(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


@register("dataset", "cifar10")
@validated({"root": ROOT, "limit": LIMIT}, name="cifar10")
def load_cifar10(root: str, limit: int | None = None) -> Dataset:
    """CIFAR-10 (Krizhevsky 2009) from ``root/cifar-10-batches-py``: 50,000 train / 10,000 test.

    Reads the five training batches in order and the test batch; class names from
    ``batches.meta``. ``limit`` keeps the first ``limit`` training and test examples. Never downloads.
    """
    base = _check_root(root, "cifar10", CIFAR10_LAYOUT) / "cifar-10-batches-py"
    train_files = [base / f"data_batch_{i}" for i in range(1, 6)]
    test_file, meta_file = base / "test_batch", base / "batches.meta"
    _require([*train_files, test_file, meta_file], "cifar10", CIFAR10_LAYOUT)
    names = _names(_load_pickle(meta_file), b"label_names", meta_file, 10)
    parts, have = [], 0
    for path in train_files:
        if limit is not None and have >= limit:
            break
        parts.append(_cifar_batch(path, b"labels", 10))
        have += len(parts[-1][1])
    train = _concat(parts)
    test = _cifar_batch(test_file, b"labels", 10)
    return _build("cifar10", train, test, 10, names, limit)


@register("dataset", "cifar100")
@validated({"root": ROOT, "label": Choice("fine", "coarse"), "limit": LIMIT}, name="cifar100")
def load_cifar100(root: str, label: str = "fine", limit: int | None = None) -> Dataset:
    """CIFAR-100 (Krizhevsky 2009) from ``root/cifar-100-python``: 50,000 train / 10,000 test.

    ``label="fine"`` (default) gives the 100 classes, ``"coarse"`` the 20 superclasses; names from
    ``meta``. ``limit`` keeps the first ``limit`` training and test examples. Never downloads.
    """
    base = _check_root(root, "cifar100", CIFAR100_LAYOUT) / "cifar-100-python"
    train_file, test_file, meta_file = base / "train", base / "test", base / "meta"
    _require([train_file, test_file, meta_file], "cifar100", CIFAR100_LAYOUT)
    num_classes = 100 if label == "fine" else 20
    names = _names(_load_pickle(meta_file), f"{label}_label_names".encode(), meta_file, num_classes)
    key = f"{label}_labels".encode()
    train = _cifar_batch(train_file, key, num_classes)
    test = _cifar_batch(test_file, key, num_classes)
    return _build("cifar100", train, test, num_classes, names, limit)


# --------------------------------------------------------------------------- MNIST

_IDX_IMAGES, _IDX_LABELS = 0x00000803, 0x00000801


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes: big-endian magic, one uint32 per dim, uint8 payload."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: cannot read IDX file ({type(exc).__name__}: {exc})") from exc
    if len(raw) < 4:
        raise ValueError(f"{path}: too short for an IDX header ({len(raw)} bytes)")
    (found,) = struct.unpack(">I", raw[:4])
    if found != magic:
        raise ValueError(f"{path}: bad IDX magic number 0x{found:08X}, expected 0x{magic:08X}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header})")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        raise ValueError(
            f"{path}: IDX dimensions {dims} need {expected} bytes in total, but the file has {len(raw)}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _mnist_file(base: Path, stem: str) -> Path:
    plain = base / stem
    if plain.is_file():
        return plain
    gz = base / f"{stem}.gz"
    if gz.is_file():
        return gz
    raise FileNotFoundError(
        f"mnist: missing file {plain} (or {gz}); expected layout {MNIST_LAYOUT}. {_NO_DOWNLOAD}."
    )


def _mnist_split(base: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    img_path = _mnist_file(base, f"{prefix}-images-idx3-ubyte")
    lbl_path = _mnist_file(base, f"{prefix}-labels-idx1-ubyte")
    images = _read_idx(img_path, _IDX_IMAGES)
    labels = _read_idx(lbl_path, _IDX_LABELS)
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{lbl_path}: {labels.shape[0]} labels for {images.shape[0]} images in {img_path}")
    if labels.size and labels.max() > 9:
        raise ValueError(f"{lbl_path}: labels must lie in [0, 10), got maximum {labels.max()}")
    return images[:, None], labels.astype(np.int64)


@register("dataset", "mnist")
@validated({"root": ROOT, "limit": LIMIT}, name="mnist")
def load_mnist(root: str, limit: int | None = None) -> Dataset:
    """MNIST (LeCun et al. 1998) from ``root/MNIST/raw`` IDX files: 60,000 train / 10,000 test.

    Images are ``[N, 1, 28, 28]`` (pixels / 255, then normalised); class names are the digits
    "0".."9". Plain and ``.gz`` files are both read (plain preferred). ``limit`` keeps the first
    ``limit`` training and test examples. Never downloads.
    """
    base = _check_root(root, "mnist", MNIST_LAYOUT) / "MNIST" / "raw"
    if not base.is_dir():
        raise FileNotFoundError(
            f"mnist: missing directory {base}; expected layout {MNIST_LAYOUT}. {_NO_DOWNLOAD}."
        )
    train = _mnist_split(base, "train")
    test = _mnist_split(base, "t10k")
    if train[0].shape[1:] != test[0].shape[1:]:
        raise ValueError(
            f"mnist: train images are {train[0].shape[2:]} but test images are {test[0].shape[2:]}"
        )
    return _build("mnist", train, test, 10, tuple(str(d) for d in range(10)), limit)
