"""Embedded datasets: sizes, dtypes, normalisation, determinism, parameter checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import privfl
from privfl.data import Dataset
from privfl.data.embedded import MIN_PATCH_STD, NATURAL_IMAGES

# name -> (total samples or None, input shape, num_classes)
EXPECTED = {
    "digits": (1797, (1, 8, 8), 10),
    "lfw-faces": (200, (1, 25, 25), 2),
    "natural-patches": (6 * 200 + 126, (3, 32, 32), 7),  # chelsea (300x451) has 9 x 14 patches
    "synthetic": (2000, (20,), 4),
}


@pytest.fixture(scope="module")
def loaded() -> dict[str, Dataset]:
    return {name: privfl.make("dataset", name) for name in EXPECTED}


def test_registered():
    assert set(EXPECTED) <= set(privfl.available("dataset"))


@pytest.mark.parametrize("name", list(EXPECTED))
def test_sizes_dtypes_labels(loaded, name):
    ds = loaded[name]
    total, shape, classes = EXPECTED[name]
    assert isinstance(ds, Dataset) and ds.name == name
    assert len(ds.x_train) + len(ds.x_test) == total
    assert len(ds.x_test) == math.ceil(0.2 * total)
    assert ds.input_shape == shape and ds.x_test.shape[1:] == shape
    assert ds.num_classes == classes
    assert ds.x_train.dtype == ds.x_test.dtype == torch.float32
    assert ds.y_train.dtype == ds.y_test.dtype == torch.int64
    assert len(ds.y_train) == len(ds.x_train) and len(ds.y_test) == len(ds.x_test)
    for y in (ds.y_train, ds.y_test):  # stratified: every class on both sides
        assert torch.equal(torch.unique(y), torch.arange(classes))
    n_stats = shape[0]
    assert len(ds.mean) == len(ds.std) == n_stats
    if ds.class_names is not None:
        assert len(ds.class_names) == classes
    # stratification keeps class shares within one sample of the overall ones
    y_all = torch.cat([ds.y_train, ds.y_test])
    share = torch.bincount(y_all, minlength=classes) * len(ds.y_test) / len(y_all)
    assert torch.all(torch.abs(torch.bincount(ds.y_test, minlength=classes) - share) <= 1.0)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_normalised_by_training_statistics(loaded, name):
    ds = loaded[name]
    dims = (0, 2, 3) if ds.is_image else (0,)
    x = ds.x_train.double()
    assert torch.allclose(x.mean(dims), torch.zeros(1, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(x.std(dims, correction=0), torch.ones(1, dtype=torch.float64), atol=1e-3)
    # x is exactly (raw - mean) / std with the stored statistics
    for split in (ds.x_train, ds.x_test):
        assert torch.allclose(ds.from_pixels(ds.to_pixels(split)), split, atol=1e-5)


@pytest.mark.parametrize("name", ["digits", "lfw-faces", "natural-patches"])
def test_pixels_in_unit_interval(loaded, name):
    ds = loaded[name]
    for split in (ds.x_train, ds.x_test):
        pix = ds.to_pixels(split)
        assert float(pix.min()) >= -1e-5 and float(pix.max()) <= 1 + 1e-5
    pix = ds.to_pixels(ds.x_train)
    assert float(pix.min()) < 0.01 and float(pix.max()) > 0.99  # the full range is used


def test_digits_pixels_are_sixteenths(loaded):
    pix = loaded["digits"].to_pixels(loaded["digits"].x_train) * 16
    assert torch.allclose(pix, pix.round(), atol=1e-4)


def test_lfw_label_one_is_face(loaded):
    from skimage.data import lfw_subset

    raw = torch.tensor(lfw_subset(), dtype=torch.float32).flatten(1)  # first 100 are faces
    ds = loaded["lfw-faces"]
    assert ds.class_names == ("non-face", "face")
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        source = torch.cdist(ds.to_pixels(x).flatten(1), raw).argmin(1)
        assert torch.equal((source < 100).long(), y)


def test_natural_patches_structure(loaded):
    import skimage.data

    ds = loaded["natural-patches"]
    assert ds.class_names == NATURAL_IMAGES
    y_all = torch.cat([ds.y_train, ds.y_test])
    assert torch.bincount(y_all).tolist() == [200, 126, 200, 200, 200, 200, 200]
    pix = ds.to_pixels(torch.cat([ds.x_train, ds.x_test]))
    assert float(pix.flatten(1).std(1, correction=0).min()) >= MIN_PATCH_STD - 1e-4
    # every astronaut sample is a grid patch of the astronaut photograph
    img = skimage.data.astronaut()
    grid = img.reshape(16, 32, 16, 32, 3).transpose(0, 2, 4, 1, 3).reshape(256, -1)
    grid_keys = {row.tobytes() for row in grid}
    ours = (pix[y_all == 0] * 255).round().to(torch.uint8).flatten(1).numpy()
    assert all(row.tobytes() in grid_keys for row in ours)
    assert len({row.tobytes() for row in ours}) == 200


def test_natural_patches_parameters():
    ds = privfl.make("dataset", "natural-patches", patch_size=16, per_image=10, test_fraction=0.3)
    assert ds.input_shape == (3, 16, 16)
    assert len(ds.x_train) + len(ds.x_test) == 70 and len(ds.x_test) == 21


def test_synthetic_parameters_and_separation():
    ds = privfl.make("dataset", "synthetic", n_samples=301, n_features=5, n_classes=3, seed=2)
    assert ds.input_shape == (5,) and len(ds.mean) == 5
    assert len(ds.x_train) + len(ds.x_test) == 301
    assert sorted(torch.bincount(torch.cat([ds.y_train, ds.y_test])).tolist()) == [100, 100, 101]

    def centroid_accuracy(d: Dataset) -> float:
        centroids = torch.stack([d.x_train[d.y_train == k].mean(0) for k in range(d.num_classes)])
        return float((torch.cdist(d.x_test, centroids).argmin(1) == d.y_test).float().mean())

    assert centroid_accuracy(privfl.make("dataset", "synthetic", separation=8.0)) > 0.95
    assert centroid_accuracy(privfl.make("dataset", "synthetic", separation=0.0)) < 0.35

    # raw-space class means are `separation` apart on average (plus a small sampling bias)
    ds = privfl.make("dataset", "synthetic", separation=3.0)
    raw = ds.to_pixels(torch.cat([ds.x_train, ds.x_test]))
    y = torch.cat([ds.y_train, ds.y_test])
    means = torch.stack([raw[y == k].mean(0) for k in range(4)])
    assert abs(float(torch.pdist(means).mean()) - 3.0) < 0.2


@pytest.mark.parametrize("name", list(EXPECTED))
def test_deterministic_and_fresh(name):
    seed_key = "seed" if name == "synthetic" else "split_seed"
    a = privfl.make("dataset", name)
    b = privfl.make("dataset", name)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert a.mean == b.mean and a.std == b.std
    a.x_train.zero_()  # callers may modify what they get
    c = privfl.make("dataset", name)
    assert torch.equal(c.x_train, b.x_train)
    d = privfl.make("dataset", name, **{seed_key: 1})
    assert not torch.equal(d.y_test, b.y_test) or not torch.equal(d.x_test, b.x_test)


@pytest.mark.parametrize(
    ("name", "params", "exc", "match"),
    [
        ("digits", {"test_fraction": 0.0}, ValueError, "test_fraction"),
        ("digits", {"test_fraction": 1.0}, ValueError, "test_fraction"),
        ("digits", {"test_fraction": 0.001}, ValueError, "test_fraction"),  # 2 test samples < 10 classes
        ("digits", {"test_fraction": float("nan")}, ValueError, "test_fraction"),
        ("digits", {"test_fraction": "0.2"}, TypeError, "test_fraction"),
        ("digits", {"split_seed": -1}, ValueError, "split_seed"),
        ("digits", {"split_seed": 1.5}, TypeError, "split_seed"),
        ("digits", {"seed": 0}, ValueError, "split_seed"),  # unknown parameter lists the valid ones
        ("lfw-faces", {"test_fraction": 0.999}, ValueError, "test_fraction"),
        ("lfw-faces", {"split_seed": True}, TypeError, "split_seed"),
        ("natural-patches", {"patch_size": 3}, ValueError, "patch_size"),
        ("natural-patches", {"patch_size": 400}, ValueError, "patch_size"),
        ("natural-patches", {"patch_size": 32.0}, TypeError, "patch_size"),
        ("natural-patches", {"per_image": 1}, ValueError, "per_image"),
        ("synthetic", {"n_classes": 1}, ValueError, "n_classes"),
        ("synthetic", {"n_samples": 7, "n_classes": 4}, ValueError, "n_samples"),
        ("synthetic", {"n_features": 0}, ValueError, "n_features"),
        ("synthetic", {"separation": -1.0}, ValueError, "separation"),
        ("synthetic", {"separation": float("inf")}, ValueError, "separation"),
        ("synthetic", {"separation": None}, TypeError, "separation"),
        ("synthetic", {"seed": -3}, ValueError, "seed"),
        ("synthetic", {"test_fraction": 1.5}, ValueError, "test_fraction"),
    ],
)
def test_bad_parameters(name, params, exc, match):
    with pytest.raises(exc, match=match):
        privfl.make("dataset", name, **params)


def test_numpy_integer_parameters_accepted():
    ds = privfl.make("dataset", "synthetic", n_samples=np.int64(40), n_classes=np.int32(2), seed=np.int64(1))
    assert len(ds.x_train) + len(ds.x_test) == 40
