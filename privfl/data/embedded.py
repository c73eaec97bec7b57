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
import numbers
from functools import lru_cache

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import Tensor

from privfl.data.base import Dataset
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
# Parameter checks
# --------------------------------------------------------------------------------------------
def _check_int(dataset: str, name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(
            f"dataset {dataset!r}: {name} must be an int {allowed}, got {type(value).__name__} {value!r}"
        )
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"dataset {dataset!r}: {name} must be an int {allowed}, got {value}")
    return value


def _check_real(dataset: str, name: str, value: object) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"dataset {dataset!r}: {name} must be a real number, got {type(value).__name__} "
                        f"{value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"dataset {dataset!r}: {name} must be finite, got {value}")
    return value


def _check_fraction(dataset: str, value: object) -> float:
    f = _check_real(dataset, "test_fraction", value)
    if not 0.0 < f < 1.0:
        raise ValueError(f"dataset {dataset!r}: test_fraction must lie strictly between 0 and 1, got {f}")
    return f


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
def digits(test_fraction: float = 0.2, split_seed: int = 0) -> Dataset:
    """UCI optical handwritten digits via ``sklearn.datasets.load_digits`` (Alpaydin & Kaynak 1998).

    1,797 images ``[N, 1, 8, 8]``, pixels = counts / 16 in [0, 1], 10 classes; stratified split.
    """
    test_fraction = _check_fraction("digits", test_fraction)
    split_seed = _check_int("digits", "split_seed", split_seed, 0, _MAX_SEED)
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
def lfw_faces(test_fraction: float = 0.2, split_seed: int = 0) -> Dataset:
    """Face / non-face crops from LFW via ``skimage.data.lfw_subset`` (Huang et al. 2012).

    200 grayscale images ``[N, 1, 25, 25]`` in [0, 1]; label 1 = face (the first 100 in
    scikit-image's order), 0 = non-face (background crops); stratified split.
    """
    test_fraction = _check_fraction("lfw-faces", test_fraction)
    split_seed = _check_int("lfw-faces", "split_seed", split_seed, 0, _MAX_SEED)
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
    patch_size = _check_int(ds_name, "patch_size", patch_size, 4)
    per_image = _check_int(ds_name, "per_image", per_image, 2)
    test_fraction = _check_fraction(ds_name, test_fraction)
    split_seed = _check_int(ds_name, "split_seed", split_seed, 0, _MAX_SEED)
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
    n_classes = _check_int(ds_name, "n_classes", n_classes, 2)
    n_samples = _check_int(ds_name, "n_samples", n_samples, 2 * n_classes)
    n_features = _check_int(ds_name, "n_features", n_features, 1)
    separation = _check_real(ds_name, "separation", separation)
    if separation < 0:
        raise ValueError(f"dataset {ds_name!r}: separation must be >= 0, got {separation}")
    test_fraction = _check_fraction(ds_name, test_fraction)
    seed = _check_int(ds_name, "seed", seed, 0, _MAX_SEED)

    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(n_classes, n_features, generator=gen, dtype=torch.float64)
    means *= separation / torch.pdist(means).mean()
    labels = (torch.arange(n_samples) % n_classes)[torch.randperm(n_samples, generator=gen)]
    noise = torch.randn(n_samples, n_features, generator=gen, dtype=torch.float64)
    raw = (means[labels] + noise).float()
    train, test = _split(ds_name, labels.numpy(), test_fraction, seed)
    return _normalised(ds_name, raw, labels, train, test, n_classes, None)
