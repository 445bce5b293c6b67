"""The pieces of the rollout's state intervals within UTC days (*slots*), shared by the
reading of the app opens for the activity masks
(:func:`whispers_lab.queries.experiment.materialize_randomised`) and the served-vs-planned
counts per slot (:mod:`whispers_lab.queries.state`)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd

__all__ = ["day_slots", "slot_case", "timestamp_literal"]


def timestamp_literal(value: Any) -> str:
    """A SQL TIMESTAMP literal of ``value`` (microseconds)."""
    return f"TIMESTAMP '{pd.Timestamp(value).strftime('%Y-%m-%d %H:%M:%S.%f')}'"


def day_slots(intervals: pd.DataFrame, start: dt.date, lo: dt.datetime, hi: dt.datetime
              ) -> pd.DataFrame:
    """The registered ``intervals`` cut at every UTC midnight inside ``[lo, hi)``: one row
    per piece, ``begin, end`` (half-open), ``day`` (rollout day, day 0 = ``start``),
    ``slot`` (the piece's rank within its day, from 0) and ``interval_id``. Times in no
    interval have no piece."""
    rows: list[tuple[pd.Timestamp, pd.Timestamp, int, int]] = []
    lo_t, hi_t = pd.Timestamp(lo), pd.Timestamp(hi)
    origin = pd.Timestamp(start)
    for iv in intervals.sort_values("start_at").itertuples(index=False):
        a, b = max(pd.Timestamp(iv.start_at), lo_t), min(pd.Timestamp(iv.end_at), hi_t)
        while a < b:
            day = (a.normalize() - origin).days
            cut = min(b, a.normalize() + pd.Timedelta(days=1))
            rows.append((a, cut, day, int(iv.interval_id)))
            a = cut
    out = pd.DataFrame(rows, columns=["begin", "end", "day", "interval_id"])
    out["slot"] = out.groupby("day").cumcount()
    return out[["begin", "end", "day", "slot", "interval_id"]]


def slot_case(slots: pd.DataFrame, col: str) -> str:
    """SQL of the slot of time ``col`` (see :func:`day_slots`; NULL outside every piece and
    for a NULL ``col``).

    The pieces' bounds in time order make a list of steps ``(bound, value)``: the value of
    the first step whose bound is above ``col`` (a gap's, or the time before the first piece:
    NULL), NULL from the last bound on. The CASE is a balanced binary search over the steps:
    about log2(steps) comparisons per row instead of one per step before the row's own (a
    linear CASE over a rollout's 40-odd pieces compared every app open of its last days some
    40 times)."""
    if not len(slots):
        return "CAST(NULL AS BIGINT)"
    steps: list[tuple[pd.Timestamp, int | None]] = []
    previous_end: pd.Timestamp | None = None
    for p in slots.itertuples(index=False):
        if previous_end is None or p.begin != previous_end:  # a gap (or the start)
            steps.append((p.begin, None))
        steps.append((p.end, int(p.slot)))
        previous_end = p.end

    def value(v: int | None) -> str:
        return "CAST(NULL AS BIGINT)" if v is None else str(v)

    def search(i: int, j: int, below_last: bool) -> str:
        # the value for steps[i:j], given col >= the bound of step i - 1 and, when
        # ``below_last``, col < the bound of step j - 1
        if j - i == 1:
            bound, v = steps[i]
            return (value(v) if below_last else
                    f"CASE WHEN {col} < {timestamp_literal(bound)} THEN {value(v)} END")
        m = (i + j) // 2
        return (f"CASE WHEN {col} < {timestamp_literal(steps[m - 1][0])} "
                f"THEN {search(i, m, True)} ELSE {search(m, j, below_last)} END")

    # (a NULL col fails every comparison: the ELSE branches lead to the last step's own test)
    return search(0, len(steps), False)
