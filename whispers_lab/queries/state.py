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
from .experiment import (
    FIRST_EXPOSURE_TABLE,
    materialize_first_exposures,
    open_slot_positions,
)
from .monitoring import APP_OPENS_TABLE, exposures_source, whispers_requests
from .slots import day_slots
from .slots import slot_case as _slot_case
from .slots import timestamp_literal as _timestamp

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


#: The state's values that decide a planned variant (columns of the intervals relation).
_PLANNED_FIELDS: tuple[str, ...] = ("internal_on", "beta_on", "unsure_lo", "unsure_hi",
                                    "threshold")


def _planned_case(a: str, value: dict[str, str]) -> str:
    """SQL of the planned variant of assignment row ``a`` (1 treatment, 0 control, -1 not
    known) with ``value`` the SQL of each of :data:`_PLANNED_FIELDS`."""
    return f"""CASE WHEN {a}.category = 'holdout' THEN 0
                WHEN {a}.category = 'internal' THEN {value['internal_on']}
                WHEN {a}.category = 'beta' THEN {value['beta_on']}
                WHEN {a}.bucket >= {value['unsure_lo']} AND {a}.bucket < {value['unsure_hi']}
                    THEN -1
                WHEN {a}.bucket < {value['threshold']} THEN 1 ELSE 0 END"""


def _planned_sql(a: str = "a", s: str = "s") -> str:
    """:func:`_planned_case` with the intervals relation's row ``s``."""
    return _planned_case(a, {f: f"{s}.{f}" for f in _PLANNED_FIELDS})


def _planned_literal(row: Any, a: str = "a") -> str:
    """:func:`_planned_case` for one interval (``row``), its values written in."""
    return _planned_case(a, {f: str(int(getattr(row, f))) for f in _PLANNED_FIELDS})


def _day_expr(start: dt.date, col: str) -> str:
    return f"date_diff('day', DATE '{start.isoformat()}', CAST({col} AS DATE))"


def _interval_case(intervals: pd.DataFrame, col: str) -> str:
    """SQL of the id of the interval in ``intervals`` (``interval_id, start_at, end_at``) that
    holds time ``col``; NULL outside every one."""
    pieces = intervals.rename(columns={"start_at": "begin", "end_at": "end",
                                       "interval_id": "slot"})
    return _slot_case(pieces.sort_values("begin"), col)


def _per_slot_planned(slots: pd.DataFrame, intervals: pd.DataFrame, k: int) -> str:
    """SQL of the planned variant of user ``a`` in slot ``k`` of day ``g.day`` (NULL on a day
    without that slot)."""
    by_id = intervals.set_index("interval_id")
    whens = [f"WHEN {int(p.day)} THEN {_planned_literal(by_id.loc[p.interval_id])}"
             for p in slots.itertuples(index=False) if p.slot == k]
    return f"CASE g.day {' '.join(whens)} ELSE NULL END"


#: Slots per 64-bit word of marks (4 bits each, the word's value kept below 2**63).
SLOTS_PER_WORD = 15
#: The marks of a slot: any event, a whispers request or ``treatment`` exposure row (served),
#: a ``control`` exposure row, an app open.
_MARKS = {"any": 1, "served": 2, "control": 4, "open": 8}

_SERVED_COLUMNS: tuple[str, ...] = ("users", "planned_control", "planned_treatment",
                                    "unsure_only", "control_served_whispers",
                                    "treatment_served_control")


def served_and_share(export: Export, start: dt.date, lo: dt.datetime, hi: dt.datetime,
                     share_from: dt.datetime, endpoint: str = WHISPERS_ENDPOINT
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`served_vs_planned` over ``[lo, hi)`` and :func:`bucket_share` over
    ``[share_from, hi)`` (a day start inside it) from one reading of the events, with the
    intervals of :func:`register_intervals`.

    Every whispers request (kind 1), exposure row (2) and app open (3) is counted per user and
    rollout day in one grouping, with its counts kept apart per *slot*: the piece of a state
    interval that falls on the day (:func:`day_slots`; a day holds one slot per interval it
    meets, e.g. two on a stage day: before and after the change). The planned variant is one
    per user, day and slot, so it is written per slot into the query and every figure follows
    from one row per user and day: no regrouping of a row per user, interval and day (1M
    users: 3.3 → 1.3 s with the narrowed as-of lookup).

    The app opens come from the activity masks' reading of them
    (:data:`~whispers_lab.queries.monitoring.APP_OPENS_TABLE`, a bit per slot and user) when it
    holds every slot of the window and the state covers each day of it from midnight to
    midnight (:func:`~whispers_lab.queries.experiment.open_slot_positions`): one row per user
    and day opened, and the last exposure row up to the user's last event of a day is then the
    day's last. Otherwise they are read from the telemetry, each with its time."""
    frame = _REGISTERED.get(export)
    if frame is None:
        raise ValueError("served_and_share needs the state's intervals: call "
                         "register_intervals(export, intervals) first")
    share_day = (pd.Timestamp(share_from).date() - start).days
    exposures = exposures_source(export, hi)
    requests = whispers_requests(export, lo, hi, endpoint)
    slots = day_slots(frame, start, lo, hi)
    ks = range(int(slots["slot"].max()) + 1 if len(slots) else 0)
    if not len(ks):  # no interval meets the window: nobody to count
        return (pd.DataFrame({c: pd.Series(dtype="int64") for c in ("day", *_SERVED_COLUMNS)})
                .assign(category=pd.Series(dtype=object))[["day", "category",
                                                           *_SERVED_COLUMNS]],
                pd.DataFrame({c: pd.Series(dtype="int64")
                              for c in ("day", "interval_id", "n_t", "n_c")}))
    words = range(len(ks) // SLOTS_PER_WORD + (len(ks) % SLOTS_PER_WORD > 0))
    slot_of = {k: (k // SLOTS_PER_WORD, 16 ** (k % SLOTS_PER_WORD)) for k in ks}
    marks = ",\n".join(
        "CASE k " + " ".join(f"WHEN {k} THEN code * {m}" for k, (w, m) in
                             slot_of.items() if w == j) + f" END AS f{j}"
        for j in words)
    planned = ",\n".join(f"{_per_slot_planned(slots, frame, k)} AS p{k}" for k in ks)

    def has(mark: str, k: int) -> str:  # the slot's mark ``mark`` is set in the row's word
        j, m = slot_of[k]
        return f"(f{j} & {_MARKS[mark] * m}) <> 0"

    def any_(mark: str, p: str) -> str:
        return "(" + " OR ".join(f"({has(mark, k)} AND p{k} {p})" for k in ks) + ")"

    positions = open_slot_positions(export, slots)
    if positions is None:  # the app opens from the telemetry, each with its slot
        opens_branch = """
        UNION ALL
        SELECT user_id, created_at, 3, NULL FROM telemetry
        WHERE event_type = 'app_open' AND created_at >= $lo AND created_at < $hi"""
        opened_words = ""
        last_t = "max(t)"
    else:  # per user and slot already (APP_OPENS_TABLE): a row per user and day opened
        opens_branch = ""
        opened_words = "\n        UNION ALL" + "\n        UNION ALL".join(
            _opened_words(day, positions, len(words)) for _, day in slots.groupby("day"))
        # every event of a covered day is in a slot (open_slot_positions), so the latest
        # exposure row up to the user's last event of the day is the day's latest
        day_ends = slots.groupby("day")["end"].max()
        last_t = "CASE day " + " ".join(
            f"WHEN {int(d)} THEN {_timestamp(pd.Timestamp(e) - pd.Timedelta(microseconds=1))}"
            for d, e in day_ends.items()) + " END"
    share_cols = ",\n".join(
        f"count(*) FILTER (WHERE {has('any', k)} AND p{k} >= 0 AND {has('served', k)}) AS t{k}, "
        f"count(*) FILTER (WHERE {has('any', k)} AND p{k} >= 0 AND NOT {has('served', k)}) "
        f"AS c{k}" for k in ks)
    q = f"""
    WITH ev AS (
        SELECT user_id, "timestamp" AS t, 1 AS kind, CAST(NULL AS VARCHAR) AS variant
        FROM {requests}
        WHERE user_id IS NOT NULL AND "timestamp" >= $lo AND "timestamp" < $hi
        UNION ALL
        SELECT user_id, exposed_at, 2, variant FROM {exposures}
        WHERE exposed_at >= $lo AND exposed_at < $hi{opens_branch}
    ),
    es AS (
        SELECT user_id, t, {_slot_case(slots, 't')} AS k,
               1 + 2 * CAST(coalesce(kind = 1 OR (kind = 2 AND variant = 'treatment'), FALSE)
                            AS BIGINT)
                 + 4 * CAST(coalesce(kind = 2 AND variant = 'control', FALSE) AS BIGINT)
                 + 8 * CAST(kind = 3 AS BIGINT) AS code
        FROM ev
    ),
    ew AS (  -- each slot's marks in 4 bits of a 64-bit word
        SELECT user_id, {_day_expr(start, 't')} AS day, {marks}, t
        FROM es WHERE k IS NOT NULL{opened_words}
    ),
    eg AS (  -- one row per user and day
        SELECT user_id, day, {", ".join(f"bit_or(f{j}) AS f{j}" for j in words)},
               {last_t} AS last_t
        FROM ew GROUP BY user_id, day
    ),
    pl AS (
        SELECT g.user_id, g.day, g.last_t, a.category,
               {", ".join(f"coalesce(g.f{j}, 0) AS f{j}" for j in words)}, {planned}
        FROM eg g JOIN {ASSIGNMENT_RELATION} a ON a.user_id = g.user_id
    ),
    ud_all AS (
        SELECT day, user_id, category, last_t,
               {any_("any", "= 0")} AS in_c,
               {any_("any", "= 1")} AS in_t,
               {any_("served", "= 0")} AS whispers_c,
               {any_("served", "= 1")} AS whispers_t,
               {any_("control", "= 1")} AS control_rows_t,
               {any_("open", "= 1")} AS opens_t
        FROM pl
    ),
    -- the last exposure row is looked up only where it decides: treatment-planned users who
    -- opened the app, made no whispers request and got no control row that day
    ud AS (
        SELECT * FROM ud_all
        WHERE in_t AND NOT control_rows_t AND opens_t AND NOT whispers_t
    ),
    {variant(export, "last_served", exposures=exposures)},
    opened_without AS (
        SELECT day, category, count(*) AS n FROM lx
        WHERE coalesce(last_variant, 'control') <> 'treatment' GROUP BY day, category
    ),
    counts AS (
        SELECT day, category, count(*) AS users,
               count(*) FILTER (WHERE in_c) AS planned_control,
               count(*) FILTER (WHERE in_t) AS planned_treatment,
               count(*) FILTER (WHERE NOT in_c AND NOT in_t) AS unsure_only,
               count(*) FILTER (WHERE in_c AND whispers_c) AS control_served_whispers,
               count(*) FILTER (WHERE in_t AND control_rows_t) AS control_rows_users
        FROM ud_all GROUP BY day, category
    ),
    share AS (  -- randomised users whose planned variant is known, per day and slot
        SELECT day, {share_cols}
        FROM pl WHERE category IN ('bucketed', 'holdout') AND day >= $share_day
        GROUP BY day
    )
    SELECT 'served' AS part, c.day, c.category, c.users, c.planned_control,
           c.planned_treatment, c.unsure_only, c.control_served_whispers,
           c.control_rows_users + coalesce(o.n, 0) AS treatment_served_control,
           {", ".join(f"CAST(NULL AS BIGINT) AS t{k}, CAST(NULL AS BIGINT) AS c{k}" for k in ks)}
    FROM counts c LEFT JOIN opened_without o ON o.day = c.day AND o.category = c.category
    UNION ALL
    SELECT 'share', day, CAST(NULL AS VARCHAR), NULL, NULL, NULL, NULL, NULL, NULL,
           {", ".join(f"t{k}, c{k}" for k in ks)}
    FROM share
    """
    out = export.sql(q, {"lo": lo, "hi": hi, "share_day": int(share_day)})
    served = out.loc[out["part"] == "served", ["day", "category", *_SERVED_COLUMNS]]
    served = served.astype({c: "int64" for c in ("day", *_SERVED_COLUMNS)})
    wide = out.loc[out["part"] == "share"]
    pieces = [pd.DataFrame({"day": wide["day"].to_numpy(), "slot": k,
                            "n_t": wide[f"t{k}"].to_numpy(), "n_c": wide[f"c{k}"].to_numpy()})
              for k in ks]
    long = pd.concat(pieces, ignore_index=True) if pieces else pd.DataFrame(
        columns=["day", "slot", "n_t", "n_c"])
    long = long.astype({c: "int64" for c in ("day", "slot", "n_t", "n_c")})
    long = long.merge(slots[["day", "slot", "interval_id"]], on=["day", "slot"])
    long = long.loc[long["n_t"] + long["n_c"] > 0]
    # (an interval met twice on one day cannot happen: slots of a day are distinct intervals)
    share = long[["day", "interval_id", "n_t", "n_c"]].astype("int64")
    return (served.sort_values(["day", "category"]).reset_index(drop=True),
            share.sort_values(["day", "interval_id"]).reset_index(drop=True))


def _opened_words(day: pd.DataFrame, positions: pd.Series, n_words: int) -> str:
    """SELECT of one row per user who opened the app on ``day`` (its pieces, rows of
    :func:`day_slots`) from :data:`~whispers_lab.queries.experiment.APP_OPENS_TABLE`: the
    marks of an app open (any event and open, 1 + 8) of each piece the user opened the app in,
    in the words of served-vs-planned's grouping, and no time."""
    pos = positions.loc[day.index]
    first = int(pos.min())
    held = sum(1 << (int(p) - first) for p in pos)  # the day's bits, from ``first``
    words = []
    opened = _MARKS["any"] + _MARKS["open"]
    for j in range(n_words):
        terms = [f"CASE WHEN ((o >> {int(pos[i])}) & 1) <> 0 "
                 f"THEN {opened * 16 ** (int(k) % SLOTS_PER_WORD)} ELSE 0 END"
                 for i, k in day["slot"].items() if int(k) // SLOTS_PER_WORD == j]
        words.append(f"CAST({' + '.join(terms)} AS BIGINT)" if terms else "CAST(NULL AS BIGINT)")
    return f"""
        SELECT user_id, {int(day["day"].iloc[0])} AS day, {", ".join(
            f"{w} AS f{j}" for j, w in enumerate(words))}, CAST(NULL AS TIMESTAMP) AS t
        FROM {APP_OPENS_TABLE}
        WHERE ((o >> {first}) & {held}) <> 0"""


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
    frame = _REGISTERED.get(export)
    # the interval's id as one CASE over the registered bounds, then a hash join on it: a
    # range join of 0.9M users with the intervals was a merge join of 0.3 s (1M users)
    in_interval = ("f.first_at >= s.start_at AND f.first_at < s.end_at" if frame is None
                   else f"s.interval_id = {_interval_case(frame, 'f.first_at')}")
    materialize_first_exposures(export, t0, hi)
    q = f"""
    WITH first_exp AS (SELECT * FROM {FIRST_EXPOSURE_TABLE})
    SELECT {_day_expr(start, 'f.first_at')} AS day, s.interval_id,
           count(*) FILTER (WHERE f.variant = 'treatment') AS n_t,
           count(*) FILTER (WHERE f.variant = 'control') AS n_c
    FROM first_exp f
    JOIN {cohort_relation} c ON c.user_id = f.user_id
    JOIN {ASSIGNMENT_RELATION} a ON a.user_id = f.user_id
    JOIN {INTERVALS_RELATION} s ON {in_interval}
    WHERE c.reason NOT IN ('internal', 'beta') AND {_planned_sql()} >= 0
    GROUP BY 1, 2 ORDER BY 1, 2
    """
    return export.sql(q)


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
