"""Privacy mechanisms (``privfl.mechanisms``): local randomizers with their exact guarantees.

One module per family: :mod:`~privfl.mechanisms.gaussian` (DP-FedAvg, local Gaussian),
:mod:`~privfl.mechanisms.rqm`, :mod:`~privfl.mechanisms.pbm`, :mod:`~privfl.mechanisms.dp_brem`
(DP-BREM, DP-BREM+), :mod:`~privfl.mechanisms.compression` (top-k, quantize, fp16: no guarantee).
"""

from privfl.mechanisms import compression as _compression  # noqa: F401  (registers top-k, quantize, fp16)
from privfl.mechanisms import ddg as _ddg  # noqa: F401  (registers ddg)
from privfl.mechanisms import dp_brem as _dp_brem  # noqa: F401  (registers dp-brem, dp-brem-plus)
from privfl.mechanisms import fedrand as _fedrand  # noqa: F401  (registers fedrand: partial release)
from privfl.mechanisms import gaussian as _gaussian  # noqa: F401  (registers gaussian, dp-fedavg)
from privfl.mechanisms import ldp as _ldp  # noqa: F401  (registers grr, olh, oue, sue)
from privfl.mechanisms import loloha as _loloha  # noqa: F401  (registers loloha, biloloha, ololoha)
from privfl.mechanisms import longitudinal as _longitudinal  # noqa: F401  (l-grr, l-osue, rappor, dbitflippm)
from privfl.mechanisms import pbm as _pbm  # noqa: F401  (registers pbm)
from privfl.mechanisms import rqm as _rqm  # noqa: F401  (registers rqm)
from privfl.mechanisms import skellam as _skellam  # noqa: F401  (registers skellam)
