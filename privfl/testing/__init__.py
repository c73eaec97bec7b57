"""Public testing API: hypothesis strategies and statistical checks for mechanisms and aggregators.

Our own tests use these; users run them on their own components.
"""
from privfl.testing import robustness  # noqa: F401  (strategies and checks for robust aggregation)
from privfl.testing.mechanisms import (  # noqa: E402,F401  (privacy mechanism and accounting checks)
    check_epsilon_decreasing_in_noise,
    check_epsilon_monotone,
    check_rdp,
    check_rdp_dominates_pld,
    check_unbiased,
)
