"""Server aggregation rules and Byzantine-robust defenses (``privfl.defenses``)."""

from privfl.defenses import mean as _mean  # noqa: F401  (registers "mean")
