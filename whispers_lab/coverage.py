"""Which days an export covers, from how its rows spread over UTC days (pure logic, no I/O).

The latest timestamp is not where an export ends: one row stamped in the future (a device with a
wrong clock, a bad backfill) would make a stale export look current. The rows' day
distribution is robust to that. A day is *populated* when it holds at least
:data:`POPULATED_SHARE` of the median populated day's rows (and at least
:data:`MIN_POPULATED_ROWS` rows); the export's **last day** is its last populated day, and it
**ends** at the latest timestamp on or before that day. The day after the last day is the
export's tail (an export cut shortly after midnight holds a few rows of it); rows dated later
than that are *stamped beyond the export's end*: validation reports them, and they never count
as coverage.

Used by :func:`whispers_lab.queries.monitoring.data_end` (the daily job's and the report's
coverage checks) and by :mod:`whispers_lab.validation` (the notice about such rows).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

#: A day with fewer rows than this share of the median day's is not evidence of coverage.
POPULATED_SHARE = 0.01
#: ... nor is a day with fewer rows than this (so a lone stray row never is).
MIN_POPULATED_ROWS = 2
#: Tables whose time column records activity (``users.signup_at`` does not).
ACTIVITY_TABLES: tuple[str, ...] = ("exposures", "telemetry", "api_logs", "feedback",
                                    "support_tickets", "db_metrics")


@dataclass(frozen=True)
class Extent:
    """Where an export's data lie: ``first_day`` .. ``last_day`` (populated days), ``end``
    (latest timestamp on or before ``last_day``; None without data), and ``beyond``: rows
    dated after the tail day (``last_day`` + 1), by date."""

    first_day: dt.date | None
    last_day: dt.date | None
    end: dt.datetime | None
    beyond: Mapping[dt.date, int]

    @property
    def beyond_rows(self) -> int:
        return int(sum(self.beyond.values()))

    def covers(self, day: dt.date) -> bool:
        """Whether the export's data reach ``day`` (on or before its last populated day)."""
        return self.last_day is not None and day <= self.last_day


def populated_threshold(rows_per_day: Mapping[dt.date, int]) -> float:
    """Fewest rows a day needs to count as populated."""
    counts = np.array([n for n in rows_per_day.values() if n > 0], dtype=float)
    if counts.size == 0:
        return float(MIN_POPULATED_ROWS)
    return max(float(MIN_POPULATED_ROWS), POPULATED_SHARE * float(np.median(counts)))


def extent_from_days(rows_per_day: Mapping[dt.date, int],
                     last_stamp: Mapping[dt.date, dt.datetime] | None = None) -> Extent:
    """The :class:`Extent` of rows spread as ``rows_per_day`` (UTC date -> rows, all activity
    tables together); ``last_stamp``: the latest timestamp of each date (for ``end``)."""
    days = {d: int(n) for d, n in rows_per_day.items() if n and int(n) > 0}
    if not days:
        return Extent(None, None, None, {})
    threshold = populated_threshold(days)
    populated = sorted(d for d, n in days.items() if n >= threshold)
    if not populated:  # a handful of rows in all: nothing to tell body from strays
        populated = sorted(days)
    first, last = populated[0], populated[-1]
    tail = last + dt.timedelta(days=1)
    beyond = {d: n for d, n in sorted(days.items()) if d > tail}
    end = None
    if last_stamp:
        stamps = [t for d, t in last_stamp.items() if d <= last and t is not None]
        end = max(stamps) if stamps else None
    return Extent(first, last, end, beyond)


def merge_days(*histograms: Mapping[dt.date, int]) -> dict[dt.date, int]:
    """Rows per day summed over several tables' histograms."""
    out: dict[dt.date, int] = {}
    for hist in histograms:
        for d, n in hist.items():
            out[d] = out.get(d, 0) + int(n)
    return out
