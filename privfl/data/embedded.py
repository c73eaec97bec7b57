"""Datasets that ship with privfl's dependencies: no download, no network.

Registered as ``make("dataset", NAME, **params)``:

* ``"digits"``: scikit-learn's copy of the UCI optical handwritten digits (Alpaydin & Kaynak 1998),
  1,797 8x8 images, 10 classes.
* ``"lfw-faces"``: scikit-image's ``lfw_subset`` (Huang et al. 2012), 200 25x25 grayscale crops;
  its docs state the first 100 are faces and the last 100 non-faces (label 1 = face).
* ``"natural-patches"``: 32x32 RGB patches of seven colour photographs bundled with scikit-image,
  labelled by source photograph.
* ``"synthetic"``: a Gaussian-mixture classification task of any size.

Train/test splits are stratified and deterministic given ``split_seed`` (``seed`` for
``"synthetic"``). Normalisation statistics come from the training split only. Raw arrays are
cached; every call returns freshly allocated tensors.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import Tensor

from privfl.data.base import Dataset
from privfl.params import Constraint, Int, Real, validated
from privfl.registry import register

__all__ = ["NATURAL_IMAGES", "MIN_PATCH_STD"]

NATURAL_IMAGES = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
)
"""The scikit-image photographs behind ``"natural-patches"``; class ``k`` is ``NATURAL_IMAGES[k]``."""

MIN_PATCH_STD = 0.02
"""Patches whose pixel standard deviation (all channels, pixels in [0, 1]) is below this are
dropped as near-constant, e.g. the black surround of ``retina``."""

_MAX_SEED = 2**32 - 1  # scikit-learn's random_state range


# --------------------------------------------------------------------------------------------
# Declared parameters (checked by privfl.params.validated)
# --------------------------------------------------------------------------------------------
TEST_FRACTION = Real(0, 1, lo_open=True, hi_open=True, typical=(0.1, 0.5))
SEED = Int(0, _MAX_SEED, typical=(0, 100))
SPLIT = {"test_fraction": TEST_FRACTION, "split_seed": SEED}


# --------------------------------------------------------------------------------------------
# Split and normalisation
# --------------------------------------------------------------------------------------------
def _split(dataset: str, labels: np.ndarray, test_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Stratified train/test indices (scikit-learn ``train_test_split(stratify=labels)``).

    scikit-learn puts ``ceil(test_fraction * N)`` samples in the test split; stratification needs
    at least one sample of every class on each side and two samples per class.
    """
    n = len(labels)
    classes, counts = np.unique(labels, return_counts=True)
    c = len(classes)
    if counts.min() < 2:
        raise ValueError(
            f"dataset {dataset!r}: class {classes[counts.argmin()]} has only {counts.min()} sample(s); "
            "a stratified split needs at least 2 per class"
        )
    n_test = math.ceil(test_fraction * n)
    if n_test < c or n - n_test < c:
        raise ValueError(
            f"dataset {dataset!r}: test_fraction={test_fraction} puts {n_test} of {n} samples in the test "
            f"split, but a stratified split of {c} classes needs at least {c} on each side; allowed: "
            f"{(c - 1) / n:.4g} < test_fraction <= {(n - c) / n:.4g}"
        )
    train, test = train_test_split(
        np.arange(n), test_size=test_fraction, stratify=labels, random_state=seed, shuffle=True
    )
    return torch.as_tensor(train, dtype=torch.int64), torch.as_tensor(test, dtype=torch.int64)


def _normalised(
    name: str,
    raw: Tensor,
    labels: Tensor,
    train: Tensor,
    test: Tensor,
    num_classes: int,
    class_names: tuple[str, ...] | None,
) -> Dataset:
    """``Dataset`` with ``x = (raw - mean) / std``, statistics from the training rows.

    Images (``[N, C, H, W]``) get one mean/std per channel; vectors (``[N, d]``) one per feature.
    Standard deviations are population ones (``correction=0``); a constant channel keeps std 1.
    """
    x_train_raw, x_test_raw = raw[train], raw[test]
    dims = (0, 2, 3) if raw.dim() == 4 else (0,)
    mean64 = x_train_raw.double().mean(dim=dims)
    std64 = x_train_raw.double().std(dim=dims, correction=0)
    std64 = torch.where(std64 > 0, std64, torch.ones_like(std64))
    ds = Dataset(
        name=name,
        x_train=x_train_raw,
        y_train=labels[train],
        x_test=x_test_raw,
        y_test=labels[test],
        num_classes=num_classes,
        mean=tuple(float(m) for m in mean64),
        std=tuple(float(s) for s in std64),
        class_names=class_names,
    )
    # the same float32 arithmetic as Dataset.from_pixels, so to_pixels/from_pixels round-trip
    ds.x_train = ds.from_pixels(x_train_raw)
    ds.x_test = ds.from_pixels(x_test_raw)
    return ds


def _readonly(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    for a in arrays:
        a.flags.writeable = False
    return arrays


# --------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = (bunch.images / 16.0).astype(np.float32)[:, None]  # values 0..16 -> [0, 1]
    return _readonly(pixels, bunch.target.astype(np.int64))


@register("dataset", "digits")
@validated(SPLIT, name="digits")
def digits(test_fraction: float = 0.2, split_seed: int = 0) -> Dataset:
    """UCI optical handwritten digits via ``sklearn.datasets.load_digits`` (Alpaydin & Kaynak 1998).

    1,797 images ``[N, 1, 8, 8]``, pixels = counts / 16 in [0, 1], 10 classes; stratified split.
    """
    test_fraction, split_seed = float(test_fraction), int(split_seed)
    pixels, labels = _digits_raw()
    train, test = _split("digits", labels, test_fraction, split_seed)
    return _normalised(
        "digits", torch.tensor(pixels), torch.tensor(labels), train, test, 10,
        tuple(str(k) for k in range(10)),
    )


# --------------------------------------------------------------------------------------------
# lfw-faces
# --------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _lfw_raw() -> tuple[np.ndarray, np.ndarray]:
    from skimage.data import lfw_subset

    images = lfw_subset()
    if np.issubdtype(images.dtype, np.integer):  # documented as uint8, shipped as float in [0, 1]
        images = images / 255.0
    pixels = np.clip(images, 0.0, 1.0).astype(np.float32)[:, None]
    n = len(pixels)
    labels = np.zeros(n, dtype=np.int64)
    labels[: n // 2] = 1  # "100 first images are faces and subsequent 100 are non-faces"
    return _readonly(pixels, labels)


@register("dataset", "lfw-faces")
@validated(SPLIT, name="lfw-faces")
def lfw_faces(test_fraction: float = 0.2, split_seed: int = 0) -> Dataset:
    """Face / non-face crops from LFW via ``skimage.data.lfw_subset`` (Huang et al. 2012).

    200 grayscale images ``[N, 1, 25, 25]`` in [0, 1]; label 1 = face (the first 100 in
    scikit-image's order), 0 = non-face (background crops); stratified split.
    """
    test_fraction, split_seed = float(test_fraction), int(split_seed)
    pixels, labels = _lfw_raw()
    train, test = _split("lfw-faces", labels, test_fraction, split_seed)
    return _normalised(
        "lfw-faces", torch.tensor(pixels), torch.tensor(labels), train, test, 2, ("non-face", "face")
    )


# --------------------------------------------------------------------------------------------
# natural-patches
# --------------------------------------------------------------------------------------------
@lru_cache(maxsize=32)
def _usable_patches(image: str, patch_size: int) -> np.ndarray:
    """All non-overlapping ``patch_size`` patches of one photograph, raster order, near-constant
    ones (std < ``MIN_PATCH_STD``) removed; uint8 ``[M, 3, p, p]``. The grid starts at the top-left
    corner; rows/columns that do not fill a whole patch are ignored."""
    import skimage.data

    img = getattr(skimage.data, image)()
    if img.ndim != 3 or img.shape[2] != 3:
        raise RuntimeError(f"skimage.data.{image}() is not an RGB image (shape {img.shape})")
    p = patch_size
    rows, cols = img.shape[0] // p, img.shape[1] // p
    grid = img[: rows * p, : cols * p].reshape(rows, p, cols, p, 3)
    patches = np.ascontiguousarray(grid.transpose(0, 2, 4, 1, 3).reshape(rows * cols, 3, p, p))
    std = (patches.reshape(len(patches), -1) / 255.0).std(axis=1)
    (kept,) = _readonly(patches[std >= MIN_PATCH_STD])
    return kept


@register("dataset", "natural-patches")
@validated({"patch_size": Int(4, None, typical=(8, 32)), "per_image": Int(2, None, typical=(2, 50)), **SPLIT},
           name="natural-patches")
def natural_patches(
    patch_size: int = 32, per_image: int = 200, test_fraction: float = 0.2, split_seed: int = 0
) -> Dataset:
    """RGB patches ``[N, 3, p, p]`` of scikit-image's bundled colour photographs, one class each.

    Classes, in order: astronaut, chelsea, coffee, rocket, immunohistochemistry,
    hubble_deep_field, retina. Each photograph is cut into a regular grid of non-overlapping
    ``patch_size`` patches; patches with pixel std < 0.02 (``MIN_PATCH_STD``) are dropped; of the
    ``M`` remaining, ``k = min(per_image, M)`` are kept at raster positions ``floor(j * M / k)``,
    ``j = 0..k-1`` (evenly spaced, no randomness). At the defaults chelsea (300x451) has only 126
    patches, the others contribute 200 each. Pixels = uint8 / 255; stratified split.
    """
    ds_name = "natural-patches"
    patch_size, per_image, split_seed, test_fraction = int(patch_size), int(per_image), int(split_seed), float(
        test_fraction)
    chunks, labels = [], []
    for k, image in enumerate(NATURAL_IMAGES):
        usable = _usable_patches(image, patch_size)
        m = len(usable)
        if m < 2:
            raise ValueError(
                f"dataset {ds_name!r}: patch_size={patch_size} leaves {m} usable patch(es) of image "
                f"{image!r}; at least 2 per image are needed, use a smaller patch_size"
            )
        take = min(per_image, m)
        chunks.append(usable[(np.arange(take) * m) // take])
        labels.append(np.full(take, k, dtype=np.int64))
    pixels = torch.tensor(np.concatenate(chunks)).float().div_(255.0)
    label_arr = np.concatenate(labels)
    train, test = _split(ds_name, label_arr, test_fraction, split_seed)
    return _normalised(
        ds_name, pixels, torch.tensor(label_arr), train, test, len(NATURAL_IMAGES), NATURAL_IMAGES
    )


# --------------------------------------------------------------------------------------------
# synthetic
# --------------------------------------------------------------------------------------------
@register("dataset", "synthetic")
@validated(
    {"n_samples": Int(4, None, typical=(40, 400)), "n_features": Int(1, None, typical=(1, 20)),
     "n_classes": Int(2, None, typical=(2, 5)), "separation": Real(0, None, typical=(0.0, 4.0)),
     "test_fraction": TEST_FRACTION, "seed": SEED},
    name="synthetic",
    constraints=(Constraint(("n_samples", "n_classes"), lambda v: v["n_samples"] >= 2 * v["n_classes"],
                            "n_samples must be >= 2·n_classes (two samples per class)"),),
)
def synthetic(
    n_samples: int = 2000,
    n_features: int = 20,
    n_classes: int = 4,
    separation: float = 2.0,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """Gaussian-mixture classification: ``x = mu_y + eps``, ``eps ~ N(0, I_d)``.

    Class means ``mu_k ~ N(0, I_d)``, then all rescaled by one factor so that the mean pairwise
    Euclidean distance between class means equals ``separation`` (0 gives an uninformative task).
    Classes are balanced (sizes differ by at most one) in random order. Everything is drawn from a
    ``torch.Generator`` seeded with ``seed``; the stratified split uses ``random_state=seed``.
    Features are standardised with the training split's per-feature mean and (population) std,
    stored in ``mean``/``std`` (``d`` entries each), so ``to_pixels(x)`` returns the raw mixture
    samples.
    """
    ds_name = "synthetic"
    n_classes, n_samples, n_features, seed = int(n_classes), int(n_samples), int(n_features), int(seed)
    separation, test_fraction = float(separation), float(test_fraction)

    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(n_classes, n_features, generator=gen, dtype=torch.float64)
    means *= separation / torch.pdist(means).mean()
    labels = (torch.arange(n_samples) % n_classes)[torch.randperm(n_samples, generator=gen)]
    noise = torch.randn(n_samples, n_features, generator=gen, dtype=torch.float64)
    raw = (means[labels] + noise).float()
    train, test = _split(ds_name, labels.numpy(), test_fraction, seed)
    return _normalised(ds_name, raw, labels, train, test, n_classes, None)
