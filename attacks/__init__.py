"""Privacy attacks on shared updates and Byzantine attacks on aggregation (``privfl.attacks``)."""

from privfl.attacks import analytic as _analytic  # noqa: F401  (privacy attacks on shared updates)
from privfl.attacks import byzantine as _byzantine  # noqa: F401  (registers the Byzantine attacks)
from privfl.attacks import dlg as _dlg  # noqa: F401
from privfl.attacks import fedavg_inversion as _fedavg_inversion  # noqa: F401
from privfl.attacks import inverting_gradients as _inverting_gradients  # noqa: F401
from privfl.attacks import label_recovery as _label_recovery  # noqa: F401
from privfl.attacks import membership as _membership  # noqa: F401  (membership inference: LiRA, RMIA, ...)
from privfl.attacks import sme as _sme  # noqa: F401
