"""A report run's stages on one clock, for the benchmark that asks where the time goes.

With ``WHISPERS_LAB_TIMELINE=1`` in the environment, :func:`mark` writes one line per stage of
a ``report`` / ``daily`` run to stderr, e.g. ``timeline: 10.84 s day 14: day's evaluation
done``: seconds since the command line started (this module is imported first thing). Stages that
run side by side (the evaluation's thread, the kernel, the notebook's thread) mark on the same
clock, so the lines show which of them the run waited for. Without the variable nothing is
written: a scheduled run's log keeps its one line per stage (:mod:`whispers_lab.progress`).
``benchmarks/bench_report.py`` sets it and prints the fastest warm run's and the cold run's
lines.
"""

from __future__ import annotations

import os
import sys
import threading
import time

#: The environment variable that turns the lines on.
TIMELINE_ENV = "WHISPERS_LAB_TIMELINE"
#: What every line starts with (the benchmark picks the lines out of the output by it).
PREFIX = "timeline:"

_STARTED = time.monotonic()
_LOCK = threading.Lock()


def enabled() -> bool:
    return os.environ.get(TIMELINE_ENV, "") not in ("", "0")


def mark(stage: str) -> None:
    """Write ``stage`` with the seconds since the command line started (when enabled)."""
    if not enabled():
        return
    with _LOCK:  # (from several threads: whole lines)
        print(f"{PREFIX} {time.monotonic() - _STARTED:.2f} s {stage}", file=sys.stderr,
              flush=True)
