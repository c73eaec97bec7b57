"""Privacy accounting: every privatized release is an event in a ledger; ε(δ) by RDP and PLD.

- :mod:`privfl.accounting.analysis` — pure functions (subsampled Gaussian RDP via Opacus, exact
  RDP of finite-output mechanisms, the Balle et al. 2020 RDP → (ε, δ) conversion).
- :mod:`privfl.accounting.pld` — privacy-loss distributions through ``dp-accounting``.
- :mod:`privfl.accounting.guarantees` — constructors of :class:`~privfl.core.PrivacyGuarantee`.
- :mod:`privfl.accounting.ledger` — :class:`PrivacyLedger` (events, heterogeneous composition,
  per-client worst case).
"""

from privfl.accounting.analysis import (
    DEFAULT_ORDERS,
    gaussian_epsilon_rdp,
    gaussian_rdp,
    pmf_pure_epsilon,
    pmf_rdp,
    rdp_to_epsilon,
    subsampled_gaussian_rdp,
)
from privfl.accounting.guarantees import (
    gaussian_guarantee,
    pmf_guarantee,
    pure_guarantee,
    randomized_response_guarantee,
)
from privfl.accounting.ledger import (
    METHODS,
    NOT_A_GUARANTEE,
    PrivacyEvent,
    PrivacyLedger,
    VoidedGuaranteeError,
    threat_model_warning,
)
from privfl.accounting.pld import pld_epsilon

__all__ = [
    "DEFAULT_ORDERS",
    "METHODS",
    "NOT_A_GUARANTEE",
    "PrivacyEvent",
    "PrivacyLedger",
    "gaussian_epsilon_rdp",
    "gaussian_guarantee",
    "gaussian_rdp",
    "pld_epsilon",
    "pmf_guarantee",
    "pmf_pure_epsilon",
    "pmf_rdp",
    "pure_guarantee",
    "randomized_response_guarantee",
    "rdp_to_epsilon",
    "subsampled_gaussian_rdp",
    "threat_model_warning",
    "VoidedGuaranteeError",
]
