"""SQL of the rollout's actual state: the flag log, and served against planned.

The planned variant of a user at time ``t`` comes from two registered relations:

* :data:`ASSIGNMENT_RELATION` (``user_id, category, bucket``; category ``internal``, ``beta``,
  ``bucketed`` or ``holdout``, see :func:`register_assignment`);
* :data:`INTERVALS_RELATION`, the state's intervals (:meth:`whispers_lab.state.RolloutState.
  intervals`: ``interval_id, start_at, end_at, internal_on, beta_on, threshold, unsure_lo,
  unsure_hi``).

Planned: holdout users never; internal and beta users when their audience is on; bucket-assigned
users when ``bucket < threshold``; unknown (-1) for an audience flagged unsure or a bucket in
``[unsure_lo, unsure_hi)``. Everything returns small aggregates (per day, category, interval).
"""

from __future__ import annotations

import datetime as dt
import weakref
from typing import Any

import pandas as pd

from ..contract import WHISPERS_ENDPOINT
from ..engine import variant
from ..export import Export

ASSIGNMENT_RELATION = "wl_assignment"
INTERVALS_RELATION = "wl_state_intervals"
CATEGORIES: tuple[str, ...] = ("internal", "beta", "bucketed", "holdout")


def flag_log(export: Export, hi: dt.datetime) -> pd.DataFrame:
    """The flag-change log before ``hi``: ``changed_at, flag, value, percentage, audience``
    in time order (empty when the export has no ``flag_changes`` table)."""
    return export.sql("SELECT changed_at, flag, value, percentage, audience FROM flag_changes "
                      "WHERE changed_at < $hi ORDER BY changed_at, flag", {"hi": hi})


def register_assignment(export: Export, user_ids: pd.Series, category: pd.Series | list,
                        bucket: pd.Series | list) -> None:
    """Register ``user_id, category, bucket`` as :data:`ASSIGNMENT_RELATION`."""
    # strings stay Arrow-backed arrays (no Python object per row), positional (no index)
    export.register(ASSIGNMENT_RELATION, pd.DataFrame({
        "user_id": pd.Series(user_ids).astype(str).array,
        "category": pd.Series(category).astype(str).array,
        "bucket": pd.Series(bucket).astype("int64").to_numpy(),
    }))


#: The intervals last registered on each export (see :func:`_interval_of`).
_REGISTERED: weakref.WeakKeyDictionary[Any, pd.DataFrame] = weakref.WeakKeyDictionary()


def register_intervals(export: Export, intervals: pd.DataFrame) -> None:
    """Register the state's intervals as :data:`INTERVALS_RELATION`."""
    frame = intervals.astype({
        "interval_id": "int64", "internal_on": "int64", "beta_on": "int64",
        "threshold": "int64", "unsure_lo": "int64", "unsure_hi": "int64"})
    export.register(INTERVALS_RELATION, frame)
    _REGISTERED[export] = frame.copy()


def _timestamp(value: Any) -> str:
    return f"TIMESTAMP '{pd.Timestamp(value).strftime('%Y-%m-%d %H:%M:%S.%f')}'"


def _interval_of(export: Export, col: str) -> str | None:
    """SQL of the id of the registered interval holding time ``col``, as one CASE over the
    few interval bounds (NULL outside them): a hash join on its result replaces a range join
    of every event with the intervals, several times slower. None when the intervals are not
    contiguous and in order (then the range join is used)."""
    frame = _REGISTERED.get(export)
    if frame is None or frame.empty:
        return None
    frame = frame.sort_values("start_at")
    starts = [pd.Timestamp(v) for v in frame["start_at"]]
    ends = [pd.Timestamp(v) for v in frame["end_at"]]
    if any(e != s for e, s in zip(ends[:-1], starts[1:], strict=True)):
        return None
    whens = " ".join(f"WHEN {col} < {_timestamp(e)} THEN {int(i)}"
                     for e, i in zip(ends, frame["interval_id"], strict=True))
    return f"CASE WHEN {col} < {_timestamp(starts[0])} THEN NULL {whens} ELSE NULL END"


def _planned_sql(a: str = "a", s: str = "s") -> str:
    return f"""CASE WHEN {a}.category = 'holdout' THEN 0
                WHEN {a}.category = 'internal' THEN {s}.internal_on
                WHEN {a}.category = 'beta' THEN {s}.beta_on
                WHEN {a}.bucket >= {s}.unsure_lo AND {a}.bucket < {s}.unsure_hi THEN -1
                WHEN {a}.bucket < {s}.threshold THEN 1 ELSE 0 END"""


def _day_expr(start: dt.date, col: str) -> str:
    return f"date_diff('day', DATE '{start.isoformat()}', CAST({col} AS DATE))"


def _events_cte(export: Export, start: dt.date, endpoint: str) -> str:
    """Every whispers request (kind 1), exposure row (2) and app open (3) of the window,
    counted per user, rollout day and state interval (``pl``: ``user_id, interval_id, day,
    whispers`` (requests and ``treatment`` exposure rows), ``control_rows``, ``opens``,
    ``last_t`` (the group's latest event), ``category`` and the planned variant of the
    interval, ``planned``: 1 treatment, 0 control, -1 not known). The planned variant is the
    same for every event of a group, so grouping before the join with the assignment (one
    row per user) reads one row per group instead of one per event."""
    case = _interval_of(export, "e.t")
    in_interval = (f"s.interval_id = {case}" if case is not None
                   else "e.t >= s.start_at AND e.t < s.end_at")
    return f"""
    ev AS (
        SELECT user_id, "timestamp" AS t, 1 AS kind, CAST(NULL AS VARCHAR) AS variant
        FROM api_logs
        WHERE endpoint = $ep AND user_id IS NOT NULL AND "timestamp" >= $lo AND "timestamp" < $hi
        UNION ALL
        SELECT user_id, exposed_at, 2, variant FROM exposures
        WHERE exposed_at >= $lo AND exposed_at < $hi
        UNION ALL
        SELECT user_id, created_at, 3, NULL FROM telemetry
        WHERE event_type = 'app_open' AND created_at >= $lo AND created_at < $hi
    ),
    eg AS (
        SELECT e.user_id, s.interval_id, {_day_expr(start, 'e.t')} AS day,
               count(*) FILTER (WHERE e.kind = 1 OR (e.kind = 2 AND e.variant = 'treatment'))
                   AS whispers,
               count(*) FILTER (WHERE e.kind = 2 AND e.variant = 'control') AS control_rows,
               count(*) FILTER (WHERE e.kind = 3) AS opens,
               max(e.t) AS last_t
        FROM ev e
        JOIN {INTERVALS_RELATION} s ON {in_interval}
        GROUP BY e.user_id, s.interval_id, {_day_expr(start, 'e.t')}
    ),
    pl AS (
        SELECT g.user_id, g.interval_id, g.day, g.whispers, g.control_rows, g.opens, g.last_t,
               a.category, {_planned_sql()} AS planned
        FROM eg g
        JOIN {ASSIGNMENT_RELATION} a ON a.user_id = g.user_id
        JOIN {INTERVALS_RELATION} s ON s.interval_id = g.interval_id
    )"""


_SERVED_COLUMNS: tuple[str, ...] = ("users", "planned_control", "planned_treatment",
                                    "unsure_only", "control_served_whispers",
                                    "treatment_served_control")


def served_and_share(export: Export, start: dt.date, lo: dt.datetime, hi: dt.datetime,
                     share_from: dt.datetime, endpoint: str = WHISPERS_ENDPOINT
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`served_vs_planned` over ``[lo, hi)`` and :func:`bucket_share` over
    ``[share_from, hi)`` (a day start inside it) from one reading of the events: one query,
    whose two parts are told apart by a ``part`` column."""
    share_day = (pd.Timestamp(share_from).date() - start).days
    q = f"""
    WITH {_events_cte(export, start, endpoint)},
    ud_all AS (
        SELECT day, user_id, any_value(category) AS category,
               bool_or(planned = 0) AS in_c, bool_or(planned = 1) AS in_t,
               coalesce(sum(whispers) FILTER (WHERE planned = 0), 0) AS whispers_c,
               coalesce(sum(whispers) FILTER (WHERE planned = 1), 0) AS whispers_t,
               coalesce(sum(control_rows) FILTER (WHERE planned = 1), 0) AS control_rows_t,
               coalesce(sum(opens) FILTER (WHERE planned = 1), 0) AS opens_t,
               max(last_t) AS last_t
        FROM pl GROUP BY day, user_id
    ),
    -- the last exposure row is looked up only where it decides: treatment-planned users who
    -- opened the app, made no whispers request and got no control row that day
    ud AS (
        SELECT * FROM ud_all
        WHERE in_t AND control_rows_t = 0 AND opens_t > 0 AND whispers_t = 0
    ),
    {variant(export, "last_served")},
    opened_without AS (
        SELECT day, category, count(*) AS n FROM lx
        WHERE coalesce(last_variant, 'control') <> 'treatment' GROUP BY day, category
    ),
    counts AS (
        SELECT day, category, count(*) AS users,
               count(*) FILTER (WHERE in_c) AS planned_control,
               count(*) FILTER (WHERE in_t) AS planned_treatment,
               count(*) FILTER (WHERE NOT in_c AND NOT in_t) AS unsure_only,
               count(*) FILTER (WHERE in_c AND whispers_c > 0) AS control_served_whispers,
               count(*) FILTER (WHERE in_t AND control_rows_t > 0) AS control_rows_users
        FROM ud_all GROUP BY day, category
    ),
    ui AS (  -- one row per user, day and interval already
        SELECT day, interval_id, whispers > 0 AS served
        FROM pl WHERE category IN ('bucketed', 'holdout') AND planned >= 0
                  AND day >= $share_day
    ),
    share AS (
        SELECT day, interval_id, count(*) FILTER (WHERE served) AS n_t,
               count(*) FILTER (WHERE NOT served) AS n_c
        FROM ui GROUP BY day, interval_id
    )
    SELECT 'served' AS part, c.day, c.category, CAST(NULL AS BIGINT) AS interval_id,
           c.users, c.planned_control, c.planned_treatment, c.unsure_only,
           c.control_served_whispers,
           c.control_rows_users + coalesce(o.n, 0) AS treatment_served_control,
           CAST(NULL AS BIGINT) AS n_t, CAST(NULL AS BIGINT) AS n_c
    FROM counts c LEFT JOIN opened_without o ON o.day = c.day AND o.category = c.category
    UNION ALL
    SELECT 'share', day, CAST(NULL AS VARCHAR), interval_id, NULL, NULL, NULL, NULL, NULL,
           NULL, n_t, n_c
    FROM share
    """
    out = export.sql(q, {"ep": endpoint, "lo": lo, "hi": hi, "share_day": int(share_day)})
    served = out.loc[out["part"] == "served", ["day", "category", *_SERVED_COLUMNS]]
    served = served.astype({c: "int64" for c in ("day", *_SERVED_COLUMNS)})
    share = out.loc[out["part"] == "share", ["day", "interval_id", "n_t", "n_c"]]
    share = share.astype({c: "int64" for c in ("day", "interval_id", "n_t", "n_c")})
    return (served.sort_values(["day", "category"]).reset_index(drop=True),
            share.sort_values(["day", "interval_id"]).reset_index(drop=True))


def served_vs_planned(export: Export, start: dt.date, lo: dt.datetime, hi: dt.datetime,
                      endpoint: str = WHISPERS_ENDPOINT) -> pd.DataFrame:
    """Every user active in ``[lo, hi)`` (an app open, an exposure row or a whispers request),
    per rollout day and category: ``day, category, users, planned_control, planned_treatment,
    unsure_only`` (users with only events whose planned variant is not known) and the two kinds
    of mismatch:

    * ``control_served_whispers``: users with a whispers request, or a ``treatment`` exposure
      row, at a time the state plans them as control;
    * ``treatment_served_control``: users planned as treatment who got a ``control`` exposure
      row then, or who opened the app then, made no whispers request then, and whose latest
      exposure row (the variant they were last served, carried forward) is not ``treatment``
      (an as-of join on DuckDB; its Spark variant in :data:`whispers_lab.engine.VARIANTS`).
    """
    return served_and_share(export, start, lo, hi, hi, endpoint)[0]


def bucket_share(export: Export, start: dt.date, lo: dt.datetime, hi: dt.datetime,
                 endpoint: str = WHISPERS_ENDPOINT) -> pd.DataFrame:
    """Randomised users (bucket-assigned and holdout) active in each state interval of
    ``[lo, hi)`` whose planned variant is known: ``day, interval_id, n_t`` (served whispers in
    the interval: a request or a ``treatment`` exposure row), ``n_c`` (active, not served)."""
    return served_and_share(export, start, lo, hi, lo, endpoint)[1]


def srm_counts_by_state(export: Export, start: dt.date, t0: dt.datetime, hi: dt.datetime,
                        cohort_relation: str = "wl_cohort") -> pd.DataFrame:
    """The sample-ratio counts with the state's intervals: randomised users (cohort reason
    neither internal nor beta) by the day and state interval of their first exposure since
    ``t0``, leaving out users whose planned variant was not known then: ``day, interval_id,
    n_t, n_c``. With the plan's calendar this is
    :func:`whispers_lab.queries.experiment.srm_counts` (one interval per day)."""
    q = f"""
    WITH first_exp AS (
        SELECT user_id, min(exposed_at) AS first_at, arg_min(variant, exposed_at) AS variant
        FROM exposures WHERE exposed_at >= $t0 AND exposed_at < $hi GROUP BY user_id
    )
    SELECT {_day_expr(start, 'f.first_at')} AS day, s.interval_id,
           count(*) FILTER (WHERE f.variant = 'treatment') AS n_t,
           count(*) FILTER (WHERE f.variant = 'control') AS n_c
    FROM first_exp f
    JOIN {cohort_relation} c ON c.user_id = f.user_id
    JOIN {ASSIGNMENT_RELATION} a ON a.user_id = f.user_id
    JOIN {INTERVALS_RELATION} s ON f.first_at >= s.start_at AND f.first_at < s.end_at
    WHERE c.reason NOT IN ('internal', 'beta') AND {_planned_sql()} >= 0
    GROUP BY 1, 2 ORDER BY 1, 2
    """
    return export.sql(q, {"t0": t0, "hi": hi})


def interval_share(intervals: pd.DataFrame, buckets: int, holdout_buckets: int) -> pd.Series:
    """Expected treatment share, per interval, among bucket-assigned and holdout users whose
    planned variant is known: enabled buckets outside the unsure range over all buckets outside
    it (the holdout never enabled)."""
    thr = intervals["threshold"].astype(float).clip(upper=buckets - holdout_buckets)
    lo = intervals["unsure_lo"].astype(float)
    hi = intervals["unsure_hi"].astype(float)
    overlap = (thr.clip(upper=hi) - lo).clip(lower=0.0)
    width = (hi - lo).clip(lower=0.0)
    return ((thr - overlap) / (buckets - width)).rename("share_t")


__all__ = ["ASSIGNMENT_RELATION", "CATEGORIES", "INTERVALS_RELATION", "bucket_share",
           "flag_log", "interval_share", "register_assignment", "register_intervals",
           "served_and_share",
           "served_vs_planned", "srm_counts_by_state"]
