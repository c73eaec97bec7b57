"""Datasets (embedded, no network) and loaders for standard on-disk formats."""

from privfl.data import embedded as _embedded  # noqa: F401
from privfl.data import files as _files  # noqa: F401
from privfl.data.base import Dataset

__all__ = ["Dataset"]
