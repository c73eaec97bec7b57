"""Server aggregation rules and Byzantine-robust defenses (``privfl.defenses``).

Aggregators ``[n, d] → [d]``: ``mean``, ``median``, ``trimmed-mean``, ``meamed``, ``geometric-median``,
``krum``, ``multi-krum``, ``bulyan``, ``centered-clipping``, ``mda``. Pre-aggregators ``[n, d] → [m, d]``:
``nnm``, ``bucketing``, ``clipping``, ``arc``. Decentralized mixing ``[n, d] → [n, d]``: ``nna``.
Every robust rule follows one non-finite policy (see :mod:`privfl.defenses._common`).
"""

from privfl.defenses import bucketing as _bucketing  # noqa: F401  (registers "bucketing")
from privfl.defenses import centered_clipping as _centered_clipping  # noqa: F401  (registers "centered-clipping")
from privfl.defenses import clipping as _clipping  # noqa: F401  (registers "clipping", "arc")
from privfl.defenses import coordinatewise as _coordinatewise  # noqa: F401  (registers "median", "trimmed-mean", "meamed")
from privfl.defenses import geometric_median as _geometric_median  # noqa: F401  (registers "geometric-median")
from privfl.defenses import krum as _krum  # noqa: F401  (registers "krum", "multi-krum", "bulyan")
from privfl.defenses import mda as _mda  # noqa: F401  (registers "mda")
from privfl.defenses import mean as _mean  # noqa: F401  (registers "mean")
from privfl.defenses import monna as _monna  # noqa: F401  (registers "nna")
from privfl.defenses import nnm as _nnm  # noqa: F401  (registers "nnm")
