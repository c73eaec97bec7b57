"""Public testing API: hypothesis strategies and statistical checks for mechanisms and aggregators.

Our own tests use these; users run them on their own components.
"""
from privfl.testing import robustness  # noqa: F401  (strategies and checks for robust aggregation)
from privfl.testing.contract import ContractReport, check_contract, check_param_space  # noqa: E402,F401
from privfl.testing.mechanisms import (  # noqa: E402,F401  (privacy mechanism and accounting checks)
    check_claim,
    check_epsilon_decreasing_in_noise,
    check_epsilon_monotone,
    check_rdp,
    check_rdp_dominates_pld,
    check_unbiased,
)
from privfl.testing.privacy import PrivacyLossResult, SamplingCheck, check_privacy_loss  # noqa: E402,F401
from privfl.testing.robustness import FuzzReport, RobustnessReport, check_robust, fuzz_nonfinite  # noqa: E402,F401
from privfl.testing.strategies import (  # noqa: E402,F401  (hypothesis strategies; need hypothesis when called)
    NeighbouringPair,
    adversarial_sets,
    component_params,
    mechanism_params,
    mechanisms,
    neighbouring_pairs,
    update_matrices,
)
