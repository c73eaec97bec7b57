"""On-disk loaders: exact round trips of tiny CIFAR/MNIST files, restricted unpickling, clear errors."""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import privfl
from privfl.data.files import load_cifar10, load_cifar100, load_mnist

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------- writers


def _py2(obj: object) -> bytes:
    """Pickle opcodes as Python 2's cPickle (protocol 2) wrote the official CIFAR files."""
    if isinstance(obj, dict):
        return b"}" + b"".join(_py2(k) + _py2(v) + b"s" for k, v in obj.items())
    if isinstance(obj, bytes):  # a Python 2 str
        if len(obj) < 256:
            return b"U" + bytes([len(obj)]) + obj
        return b"T" + struct.pack("<I", len(obj)) + obj
    if isinstance(obj, int):
        return b"K" + bytes([obj]) if 0 <= obj < 256 else b"J" + struct.pack("<i", obj)
    if isinstance(obj, list):
        return b"](" + b"".join(_py2(v) for v in obj) + b"e"
    if isinstance(obj, np.ndarray):  # numpy's ndarray.__reduce__ for a C-ordered uint8 array
        assert obj.dtype == np.uint8 and obj.ndim == 2
        dtype = (
            b"cnumpy\ndtype\n" + _py2(b"u1") + _py2(0) + _py2(1) + b"\x87R"
            + b"(" + _py2(3) + _py2(b"|") + b"NNN" + _py2(-1) + _py2(-1) + _py2(0) + b"tb"
        )
        shape = _py2(obj.shape[0]) + _py2(obj.shape[1]) + b"\x86"
        reconstruct = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
        return (
            reconstruct + _py2(0) + b"\x85" + _py2(b"b") + b"\x87R"
            + b"(" + _py2(1) + shape + dtype + b"\x89" + _py2(obj.tobytes()) + b"tb"
        )
    raise TypeError(type(obj))


def _dump(path: Path, obj: dict, style: str = "py2") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if style == "py2":
        path.write_bytes(b"\x80\x02" + _py2(obj) + b".")
    else:  # Python 3, protocol 2: bytes via _codecs.encode, numpy >= 2's numpy._core name
        path.write_bytes(pickle.dumps(obj, protocol=2))


def _images(n: int) -> np.ndarray:
    return RNG.integers(0, 256, size=(n, 3072), dtype=np.uint8)


CIFAR10_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship",
                 b"truck"]


def write_cifar10(root: Path, per_batch: int = 4, n_test: int = 6, style: str = "py2") -> dict:
    base = root / "cifar-10-batches-py"
    xs, ys = [], []
    for i in range(1, 6):
        x, y = _images(per_batch), RNG.integers(0, 10, per_batch).tolist()
        _dump(base / f"data_batch_{i}", {b"batch_label": b"training batch %d of 5" % i, b"labels": y,
                                         b"data": x, b"filenames": [b"f.png"] * per_batch}, style)
        xs.append(x)
        ys += y
    xt, yt = _images(n_test), RNG.integers(0, 10, n_test).tolist()
    _dump(base / "test_batch", {b"batch_label": b"testing batch 1 of 1", b"labels": yt, b"data": xt}, style)
    _dump(base / "batches.meta", {b"num_cases_per_batch": per_batch, b"label_names": CIFAR10_NAMES,
                                  b"num_vis": 3072}, style)
    return {"x_train": np.concatenate(xs), "y_train": np.array(ys), "x_test": xt, "y_test": np.array(yt)}


def write_cifar100(root: Path, n_train: int = 10, n_test: int = 5) -> dict:
    base = root / "cifar-100-python"
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = _images(n)
        fine, coarse = RNG.integers(0, 100, n).tolist(), RNG.integers(0, 20, n).tolist()
        _dump(base / split, {b"filenames": [b"a.png"] * n, b"batch_label": split.encode(),
                             b"fine_labels": fine, b"coarse_labels": coarse, b"data": x})
        out[split] = (x, np.array(fine), np.array(coarse))
    _dump(base / "meta", {b"fine_label_names": [b"fine%d" % i for i in range(100)],
                          b"coarse_label_names": [b"coarse%d" % i for i in range(20)]})
    return out


def _idx(data: np.ndarray) -> bytes:
    magic = 0x0800 | data.ndim
    header = struct.pack(">I", magic) + struct.pack(f">{data.ndim}I", *data.shape)
    return header + data.astype(np.uint8).tobytes()


def write_mnist(root: Path, n_train: int = 7, n_test: int = 3, gz: bool = False) -> dict:
    base = root / "MNIST" / "raw"
    base.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x, y = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8), RNG.integers(0, 10, n).astype(np.uint8)
        for stem, arr in ((f"{prefix}-images-idx3-ubyte", x), (f"{prefix}-labels-idx1-ubyte", y)):
            if gz:
                with gzip.open(base / f"{stem}.gz", "wb") as fh:
                    fh.write(_idx(arr))
            else:
                (base / stem).write_bytes(_idx(arr))
        out[prefix] = (x, y)
    return out


def _check_pixels(ds, x_train: np.ndarray, x_test: np.ndarray, shape: tuple[int, ...]) -> None:
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.x_train.shape == (len(x_train), *shape) and ds.x_test.shape == (len(x_test), *shape)
    for got, want in ((ds.x_train, x_train), (ds.x_test, x_test)):
        want = torch.from_numpy(want.reshape(len(want), *shape).astype(np.float32))
        torch.testing.assert_close(ds.to_pixels(got) * 255, want, atol=1e-4, rtol=0)
    # Normalisation uses the training split's per-channel statistics in [0, 1] pixel space.
    px = x_train.reshape(len(x_train), shape[0], -1).astype(np.float64) / 255
    np.testing.assert_allclose(ds.mean, px.mean(axis=(0, 2)), rtol=1e-9)
    np.testing.assert_allclose(ds.std, px.std(axis=(0, 2)), rtol=1e-9)
    flat = ds.x_train.transpose(0, 1).reshape(shape[0], -1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(shape[0]), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("style", ["py2", "py3"])
def test_cifar10_round_trip(tmp_path: Path, style: str) -> None:
    want = write_cifar10(tmp_path, style=style)
    ds = privfl.make("dataset", "cifar10", root=str(tmp_path))
    assert ds.name == "cifar10" and ds.num_classes == 10 and ds.input_shape == (3, 32, 32)
    _check_pixels(ds, want["x_train"], want["x_test"], (3, 32, 32))
    assert ds.y_train.tolist() == want["y_train"].tolist()
    assert ds.y_test.tolist() == want["y_test"].tolist()
    assert ds.class_names == tuple(n.decode() for n in CIFAR10_NAMES)


def test_cifar10_legacy_and_numpy2_reconstruct_names(tmp_path: Path) -> None:
    want = write_cifar10(tmp_path, style="py3")
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    raw = path.read_bytes()
    assert b"cnumpy._core.multiarray\n_reconstruct\n" in raw
    path.write_bytes(raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))
    ds = load_cifar10(str(tmp_path))
    _check_pixels(ds, want["x_train"], want["x_test"], (3, 32, 32))


def test_cifar10_limit(tmp_path: Path) -> None:
    want = write_cifar10(tmp_path, per_batch=4, n_test=6)
    ds = load_cifar10(tmp_path, limit=6)  # spans batches 1 and 2
    assert len(ds.x_train) == 6 and len(ds.x_test) == 6
    _check_pixels(ds, want["x_train"][:6], want["x_test"][:6], (3, 32, 32))
    assert ds.y_train.tolist() == want["y_train"][:6].tolist()
    ds = load_cifar10(tmp_path, limit=3)
    assert ds.y_train.tolist() == want["y_train"][:3].tolist() and len(ds.y_test) == 3
    assert len(load_cifar10(tmp_path, limit=1000).x_train) == 20


@pytest.mark.parametrize("label,classes", [("fine", 100), ("coarse", 20)])
def test_cifar100_round_trip(tmp_path: Path, label: str, classes: int) -> None:
    want = write_cifar100(tmp_path)
    ds = privfl.make("dataset", "cifar100", root=str(tmp_path), label=label)
    assert ds.num_classes == classes and len(ds.class_names) == classes
    assert ds.class_names[:2] == (f"{label}0", f"{label}1")
    _check_pixels(ds, want["train"][0], want["test"][0], (3, 32, 32))
    col = 1 if label == "fine" else 2
    assert ds.y_train.tolist() == want["train"][col].tolist()
    assert ds.y_test.tolist() == want["test"][col].tolist()
    assert len(load_cifar100(tmp_path, label=label, limit=4).x_train) == 4


# --------------------------------------------------------------------------- MNIST


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_round_trip(tmp_path: Path, gz: bool) -> None:
    want = write_mnist(tmp_path, gz=gz)
    ds = privfl.make("dataset", "mnist", root=str(tmp_path))
    assert ds.num_classes == 10 and ds.input_shape == (1, 28, 28) and ds.class_names == tuple("0123456789")
    _check_pixels(ds, want["train"][0], want["t10k"][0], (1, 28, 28))
    assert ds.y_train.tolist() == want["train"][1].tolist()
    assert ds.y_test.tolist() == want["t10k"][1].tolist()
    small = load_mnist(str(tmp_path), limit=2)
    assert small.y_train.tolist() == want["train"][1][:2].tolist() and len(small.x_test) == 2


def test_mnist_bad_magic_rejected(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    raw = bytearray(path.read_bytes())
    raw[3] = 0x01  # an idx1 (labels) magic where images belong
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.*magic.*0x00000801.*0x00000803"):
        load_mnist(str(tmp_path))


def test_mnist_truncated_and_mismatched(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    raw_dir = tmp_path / "MNIST" / "raw"
    images = raw_dir / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-5])
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.*bytes"):
        load_mnist(str(tmp_path))
    write_mnist(tmp_path, n_train=7, n_test=3)
    (raw_dir / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.zeros(4, dtype=np.uint8)))
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.*4 labels for 3 images"):
        load_mnist(str(tmp_path))
    gz = raw_dir / "train-labels-idx1-ubyte"
    gz.unlink()
    (raw_dir / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip data")
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte\.gz"):
        load_mnist(str(tmp_path))


# --------------------------------------------------------------------------- restricted unpickling


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Payload:
    pass


def test_pickle_with_os_system_rejected_without_running(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    target = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    target.write_bytes(pickle.dumps({b"data": _Exploit(marker)}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match=r"data_batch_2.*(posix|nt|os)\.system"):
        load_cifar10(str(tmp_path))
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload,rejected",
    [
        (_Payload, rf"{__name__}\._Payload"),
        (_Payload(), rf"{__name__}\._Payload"),
        (eval, r"(__builtin__|builtins)\.eval"),
        (shutil.rmtree, r"shutil\.rmtree"),
    ],
)
def test_pickle_with_disallowed_global_rejected(tmp_path: Path, payload: object, rejected: str) -> None:
    write_cifar100(tmp_path)
    (tmp_path / "cifar-100-python" / "meta").write_bytes(pickle.dumps({b"x": payload}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match=rf"meta.*refusing.*{rejected}"):
        load_cifar100(str(tmp_path))


def test_codecs_encode_limited_to_latin1(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    meta = tmp_path / "cifar-10-batches-py" / "batches.meta"
    meta.write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x04\x00\x00\x00zlib\x86R.")
    with pytest.raises(pickle.UnpicklingError, match="batches.meta.*latin1.*zlib"):
        load_cifar10(str(tmp_path))


# --------------------------------------------------------------------------- content validation


@pytest.mark.parametrize(
    "batch,match",
    [
        ({b"data": np.zeros((4, 3000), np.uint8), b"labels": [0] * 4}, r"\[N, 3072\]"),
        ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0] * 3}, "one label per image"),
        ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 10]}, r"\[0, 10\)"),
        ({b"labels": [0] * 4}, "missing key b'data'"),
    ],
)
def test_cifar_content_validated(tmp_path: Path, batch: dict, match: str) -> None:
    write_cifar10(tmp_path)
    _dump(tmp_path / "cifar-10-batches-py" / "test_batch", batch)
    with pytest.raises(ValueError, match=rf"test_batch.*{match}"):
        load_cifar10(str(tmp_path))


def test_truncated_pickle_names_file(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="data_batch_1.*not a valid CIFAR"):
        load_cifar10(str(tmp_path))


# --------------------------------------------------------------------------- missing files, arguments


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "mnist"])
def test_missing_root_named(tmp_path: Path, name: str) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=rf"{missing}.*never downloads"):
        privfl.make("dataset", name, root=str(missing))


@pytest.mark.parametrize(
    "name,writer,victim",
    [
        ("cifar10", write_cifar10, "cifar-10-batches-py/data_batch_5"),
        ("cifar10", write_cifar10, "cifar-10-batches-py/batches.meta"),
        ("cifar100", write_cifar100, "cifar-100-python/test"),
        ("mnist", write_mnist, "MNIST/raw/t10k-images-idx3-ubyte"),
    ],
)
def test_missing_file_named(tmp_path: Path, name: str, writer, victim: str) -> None:
    writer(tmp_path)
    (tmp_path / victim).unlink()
    with pytest.raises(FileNotFoundError) as info:
        privfl.make("dataset", name, root=str(tmp_path))
    message = str(info.value)
    assert str(tmp_path / victim) in message and "never downloads" in message and "expected layout" in message


def test_bad_arguments(tmp_path: Path) -> None:
    write_cifar100(tmp_path)
    with pytest.raises(ValueError, match=r"label must be one of 'fine', 'coarse'.*'medium'"):
        load_cifar100(str(tmp_path), label="medium")
    with pytest.raises(TypeError, match="label"):
        load_cifar100(str(tmp_path), label=1)
    with pytest.raises(ValueError, match="limit.*0"):
        load_cifar100(str(tmp_path), limit=0)
    with pytest.raises(TypeError, match="limit.*str"):
        load_cifar100(str(tmp_path), limit="5")
    with pytest.raises(TypeError, match="root"):
        load_mnist(5)
    with pytest.raises(ValueError, match="missing required parameter 'root'"):
        privfl.make("dataset", "cifar10")
