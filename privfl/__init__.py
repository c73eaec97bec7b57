"""privfl: privacy and robustness research toolkit for federated learning.

Components are built by short name::

    import privfl
    privfl.available("aggregator")
    agg = privfl.make("aggregator", "mean")
"""

from privfl.registry import available, make, register

__version__ = "0.1.0"
__all__ = ["available", "make", "register", "__version__"]
