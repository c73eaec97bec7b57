"""Privacy attacks on shared updates and Byzantine attacks on aggregation (``privfl.attacks``)."""
