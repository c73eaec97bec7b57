"""The harness's bad-input error, in a module of its own so that the command line can refuse a spec
(a grid too large, a missing file) without importing torch."""

from __future__ import annotations

__all__ = ["SpecError"]


class SpecError(ValueError):
    """Bad input in a scenario or spec: which field, what it got, what is allowed."""
