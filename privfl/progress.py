"""Progress lines from inside long loops (gradient-inversion attacks, reference-model training,
empirical audits), on the standard :mod:`logging` loggers under ``"privfl"``.

A :class:`ProgressLog` writes at most one INFO line every ``every_s`` seconds (default
:data:`EVERY_S`, or the environment variable ``PRIVFL_PROGRESS_EVERY_S``) with the work done out of the
total, the rate and the time left, and a closing line when it wrote any; a loop shorter than ``every_s``
writes nothing. It only reads the clock (no device synchronisation), so it may sit in a hot loop. What
the lines reach is the application's choice: ``privfl`` on the command line prints them on stderr (and
the run's worker processes forward theirs to it, :mod:`privfl.evaluations.runner`); a library user
sees them after ``logging.basicConfig(level=logging.INFO)``.
"""

from __future__ import annotations

import logging
import os
import time

__all__ = ["ProgressLog", "EVERY_S", "every_s", "hms"]

EVERY_S = 10.0


def every_s() -> float:
    """Seconds between progress lines: ``PRIVFL_PROGRESS_EVERY_S`` when set (a number >= 0), else :data:`EVERY_S`."""
    text = os.environ.get("PRIVFL_PROGRESS_EVERY_S")
    if text is None:
        return EVERY_S
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"PRIVFL_PROGRESS_EVERY_S: got {text!r}; allowed: a number of seconds >= 0") from None
    if not value >= 0:
        raise ValueError(f"PRIVFL_PROGRESS_EVERY_S: got {text!r}; allowed: a number of seconds >= 0")
    return value


def hms(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss``."""
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressLog:
    """Throttled progress of one long loop: ``update(done)`` after each step.

    ``logger``: a ``logging.Logger`` or a logger name (``"privfl.attacks"``, ...); ``what``: the work,
    as the start of each line (``"inverting-gradients: Adam on 8 trial(s)"``); ``total``: steps in all;
    ``unit``: what a step is (``"iterations"``). A line reads::

        inverting-gradients: Adam on 8 trial(s): 1,200/4,800 iterations (25%), 31.5 iterations/s, ~1:54 left
    """

    def __init__(self, logger: logging.Logger | str, what: str, total: int, *, unit: str = "steps",
                 every: float | None = None) -> None:
        self.log = logging.getLogger(logger) if isinstance(logger, str) else logger
        self.what, self.total, self.unit = what, max(0, int(total)), unit
        self.every = every_s() if every is None else float(every)
        self.start = self.last = time.monotonic()
        self.done = 0
        self.lines = 0
        self.enabled = self.log.isEnabledFor(logging.INFO)

    def update(self, done: int, total: int | None = None) -> None:
        """``done`` steps finished (of ``total``, when the loop learns it late); logs when a line is due."""
        self.done = int(done)
        if total is not None:
            self.total = max(0, int(total))
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < self.every or self.done >= self.total > 0:
            return
        self.last = now
        self.lines += 1
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = f", ~{hms((self.total - self.done) / rate)} left" if rate > 0 and self.total else ""
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        self.log.info("%s: %s/%s %s%s, %.3g %s/s%s", self.what, f"{self.done:,}", f"{self.total:,}", self.unit, pct,
                      rate, self.unit, left)

    def finish(self) -> None:
        """A closing line, when the loop was long enough to write progress lines."""
        if self.enabled and self.lines:
            self.log.info("%s: done, %s %s in %s", self.what, f"{self.done:,}", self.unit,
                          hms(time.monotonic() - self.start))
