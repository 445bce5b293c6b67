"""Experiment SQL: the sufficient statistics behind :mod:`whispers_lab.stats`.

Every function returns a small aggregated frame (per stage, stratum, arm, day), never a row per
user, except :func:`canary_units`, which returns at most ``max_units`` users per arm drawn by a
seeded hash. Half-open windows ``[lo, hi)`` of naive UTC timestamps; rollout days are
``date_diff('day', start_date, CAST(ts AS DATE))``.

The cohort (reason and first enabled day of every user, from :mod:`whispers_lab.cohort`) is
registered by the caller as the relation :data:`COHORT_RELATION` with columns
``user_id, reason, first_enabled_day`` (DOUBLE, ``inf`` = never); see :func:`register_cohort`.

Randomised users: users in ``users`` whose cohort reason is neither ``internal`` nor ``beta``
(those were selected, not randomised). :func:`materialize_randomised` reads the app opens once
into :data:`RANDOMISED_TABLE` (one row per randomised user with a bit mask of active days);
:func:`materialize_stage_units` turns it into the staggered-adoption units of
:data:`STAGE_TABLE` (one row per user and stage day); cells, cross-stage pairs, survival, tickets
and the canary population read those tables, so call them in that order after
:func:`register_cohort`. See ``docs/statistics.md`` for the design.
"""

from __future__ import annotations

import datetime as dt
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ..contract import WHISPERS_ENDPOINT
from ..engine import mask_days, variant
from ..errors import WhispersLabError
from ..export import Export
from . import carried
from .monitoring import (
    APP_OPENS_TABLE,
    day_app_opens_source,
    exposures_source,
    made_day_opens,
    request_events_source,
)
from .slots import slot_case

COHORT_RELATION = "wl_cohort"
RANDOMISED_TABLE = "wl_randomised"
#: Per export, the slots (pieces with their bit ``position``) :data:`APP_OPENS_TABLE`
#: was made with.
_OPEN_SLOTS: weakref.WeakKeyDictionary[Any, pd.DataFrame] = weakref.WeakKeyDictionary()
#: Per export, the integer type of the activity masks :data:`APP_OPENS_TABLE` and
#: :data:`RANDOMISED_TABLE` were made with (:func:`mask_type_for`).
_MASK_TYPE: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
#: Widest span of days, and most state slots, a 64-bit mask holds (the sign bit and one spare
#: stay clear, as on Spark: :data:`whispers_lab.engine.MASK_DAYS`).
NARROW_MASK_BITS = 62
#: Every user's first exposure of the analysis window (:func:`materialize_first_exposures`).
FIRST_EXPOSURE_TABLE = "wl_first_exposure"
STAGE_TABLE = "wl_stage_units"
#: Widest span of rollout days (pre-period included) the 128-bit activity mask of a user holds
#: on DuckDB (62 days in Spark's 64-bit integers: :data:`whispers_lab.engine.MASK_DAYS`).
MAX_MASK_DAYS = 126
EXCLUDED_REASONS: tuple[str, ...] = ("internal", "beta")
ERROR_STATUS = 400  # an error is status >= 400, as the plan's dashboard counts it


def users_for_assignment(export: Export) -> pd.DataFrame:
    """The four users columns the cohort assignment reads (one row per user)."""
    return export.sql("SELECT user_id, is_internal, micro_memory_count, engagement_score "
                      "FROM users")


def label_strings(values: Any, relabel: Mapping[str, str] | None = None) -> pd.Series:
    """``values`` as an Arrow-backed string Series, each label through ``relabel`` (labels it
    does not name stay as they are). A categorical column (a cohort's reasons) is cast from its
    few labels and its codes in Arrow, without a Python string per row: 1M users, 0.2 s → a
    few ms. Missing values stay missing."""
    series = pd.Series(values)
    relabel = relabel or {}
    if not isinstance(series.dtype, pd.CategoricalDtype):
        out = series.astype(str)
        return out.replace(dict(relabel)) if relabel else out
    codes = series.cat.codes.to_numpy()
    labels = [relabel.get(str(c), str(c)) for c in series.cat.categories]
    strings = pa.DictionaryArray.from_arrays(pa.array(codes, mask=codes < 0),
                                             pa.array(labels, pa.string())).cast(pa.string())
    return pd.Series(pd.array(strings, dtype=pd.StringDtype("pyarrow", na_value=np.nan)),
                     index=series.index)


def register_cohort(export: Export, cohort: pd.DataFrame) -> None:
    """Register ``user_id, reason, first_enabled_day`` as :data:`COHORT_RELATION`."""
    frame = pd.DataFrame({
        "user_id": cohort["user_id"].astype(str),
        "reason": label_strings(cohort["reason"]),
        "first_enabled_day": cohort["first_enabled_day"].astype(float),
    })
    export.register(COHORT_RELATION, frame)


def _day_expr(start: dt.date, col: str) -> str:
    return f"date_diff('day', DATE '{start.isoformat()}', CAST({col} AS DATE))"


def _excluded_sql() -> str:
    return ", ".join(f"'{r}'" for r in EXCLUDED_REASONS)


def _int_values(values: Sequence[int]) -> str:
    return ", ".join(f"({int(v)})" for v in sorted(set(values)))


def materialize_randomised(export: Export, start: dt.date, hi: dt.datetime, base_day: int,
                           slots: pd.DataFrame | None = None) -> int:
    """Create the temporary table :data:`RANDOMISED_TABLE`, one row per randomised user (in
    ``users``, cohort reason neither internal nor beta): ``user_id, f_day`` (rollout day the
    state enables the user, ``inf`` = never), ``signup_day`` and ``m``, the user's active days
    (days with an ``app_open``) from ``base_day`` to the day before ``hi`` as the bits of one
    integer (bit ``d - base_day`` for rollout day d; 64-bit when the span and the slots fit in
    62 bits, else 128-bit on DuckDB: :func:`mask_type_for`, recorded for the readers as
    :func:`mask_type`; always 64-bit on Spark). Users without any app open have
    ``m = 0``; they still count as randomised (tickets, SRM denominators).

    App opens are read once, grouped by user into :data:`APP_OPENS_TABLE` (every user, not
    only the randomised: ``user_id, m``, ``o`` (the user's app opens per state slot) and
    ``day_opens`` (on the last day, ``[hi - 1 day, hi)``: the canary's and the day's active
    users', :func:`~whispers_lab.queries.monitoring.day_app_opens_source`));
    everything later is bit arithmetic on one row per user. ``slots``: the state's intervals cut
    at midnight (:func:`whispers_lab.queries.slots.day_slots` over the same span): bit ``p`` of
    ``o`` is set when the user opened the app in the ``p``-th piece in time order, so that
    served-vs-planned counts the app opens from this table instead of reading the telemetry
    again (:func:`open_slot_positions`); None, or more pieces than the mask holds: ``o = 0``.
    Returns the number of randomised users. Raises :class:`WhispersLabError` when the span
    from ``base_day`` to the last day exceeds what the engine's mask holds
    (:data:`MAX_MASK_DAYS` on DuckDB)."""
    last = (hi.date() - start).days - 1
    limit = mask_days(export)
    if last - base_day + 1 > limit:
        raise WhispersLabError(
            f"the analysis spans rollout days {base_day}..{last} ({last - base_day + 1} days); "
            f"the activity mask holds at most {limit} days on {export.engine}")
    lo = dt.datetime.combine(start, dt.time()) + dt.timedelta(days=base_day)
    day_lo = max(lo, hi - dt.timedelta(days=1))  # the last day's app opens (day_opens)
    # (64-bit only when the slots it holds fit in it too; more slots than the widest mask
    # holds are not held at all, o = 0, so they do not widen it)
    held = slots is not None and 0 < len(slots) < limit  # (bit ``limit`` would be the sign)
    mask = mask_type_for(export, last - base_day + 1, len(slots) if held else 0)
    pieces = None
    if held:
        pieces = (slots.sort_values("begin")[["begin", "end", "day", "slot"]]
                  .reset_index(drop=True))
        pieces["position"] = np.arange(len(pieces))
        position = slot_case(pieces.assign(slot=pieces["position"]), "created_at")
        o = f"bit_or(CAST(1 AS {mask}) << CAST({position} AS INTEGER))"
    else:
        o = f"CAST(0 AS {mask})"

    def grouped(since: str) -> str:  # every user's app opens from ``since`` to $hi
        return f"""
        SELECT user_id, bit_or(CAST(1 AS {mask}) << CAST(d - $base AS INTEGER)) AS m,
               coalesce({o}, CAST(0 AS {mask})) AS o,
               count(*) FILTER (WHERE created_at >= $day_lo) AS day_opens
        FROM (SELECT user_id, created_at, {_day_expr(start, 'created_at')} AS d
              FROM telemetry
              WHERE event_type = 'app_open' AND created_at >= {since} AND created_at < $hi
             ) AS opens
        GROUP BY user_id"""

    params = {"lo": lo, "hi": hi, "base": int(base_day), "day_lo": day_lo}
    _make_app_opens(export, grouped("$lo"), grouped("$day_lo"), params,
                    (start.isoformat(), int(base_day)), mask, pieces)
    made_day_opens(export, day_lo, hi)
    _MASK_TYPE[export] = mask
    if pieces is None:
        _OPEN_SLOTS.pop(export, None)
    else:
        _OPEN_SLOTS[export] = pieces
    q = f"""
    CREATE OR REPLACE TEMP TABLE {RANDOMISED_TABLE} AS
    SELECT c.user_id, c.first_enabled_day AS f_day,
           coalesce({_day_expr(start, 'u.signup_at')}, $base) AS signup_day,
           coalesce(k.m, CAST(0 AS {mask})) AS m
    FROM {COHORT_RELATION} c
    JOIN users u ON u.user_id = c.user_id
    LEFT JOIN {APP_OPENS_TABLE} k ON k.user_id = c.user_id
    WHERE c.reason NOT IN ({_excluded_sql()})
    """
    export.sql(q, {"base": int(base_day)})
    return int(export.scalar(f"SELECT count(*) FROM {RANDOMISED_TABLE}"))


def _make_app_opens(export: Export, grouped: str, last_day: str, params: dict[str, Any],
                    layout: tuple[Any, ...], mask: str, pieces: pd.DataFrame | None) -> None:
    """Create :data:`APP_OPENS_TABLE` (``grouped``: its query over ``[$lo, $hi)``;
    ``last_day``: the same over ``[$day_lo, $hi)``), reading
    what an earlier report carried (:mod:`.carried`) when it can: the table of the same days
    as it is (a report made again), else that of every day but the last, with the last day's
    app opens grouped from the telemetry and joined to it (the next day's report: 1.1 s less
    of a 1M-user report, docs/scale.md). Then carries the table it made.

    The masks' bits are the days' from ``base`` and the state slots' positions in time order,
    so the earlier days' bits are the same in both: the days' rows are equal (their content
    keys), the slots before the last day the same pieces (in the key). ``layout``: the plan's
    start and the masks' first day; ``mask``: their integer type (64-bit masks only are
    carried)."""
    lo, hi, day_lo = params["lo"], params["hi"], params["day_lo"]

    def key(until: dt.datetime) -> str | None:
        held = None if pieces is None else tuple(
            (str(b), str(e), int(p)) for b, e, p in
            pieces.loc[pieces["end"] <= until, ["begin", "end", "position"]].itertuples(
                index=False))
        return carried.content_key(export, "app_opens", (*layout, mask, held), lo, until)

    whole = key(hi) if mask == "BIGINT" else None
    found = carried.source(whole)
    earlier = carried.source(key(day_lo)) if found is None and whole and day_lo > lo else None
    ways: list[tuple[str, Any]] = []
    if found is not None:
        ways.append((f"SELECT user_id, m, o, day_opens FROM {found}", None))
    elif earlier is not None:
        join = f"""
        SELECT coalesce(c.user_id, n.user_id) AS user_id, coalesce(c.m, 0) | coalesce(n.m, 0) AS m,
               coalesce(c.o, 0) | coalesce(n.o, 0) AS o, coalesce(n.day_opens, 0) AS day_opens
        FROM {earlier} AS c
        FULL JOIN ({last_day}) AS n
          ON c.user_id IS NOT DISTINCT FROM n.user_id"""
        ways.append((join, carried.bound(join, params)))
    ways.append((grouped, params))
    taken = carried.create(export, APP_OPENS_TABLE, whole, ways)
    if whole and taken >= 0 and (found is None or taken > 0):  # (not read as it was kept)
        carried.keep(export, APP_OPENS_TABLE, whole)


def mask_type_for(export: Export, days: int, slots: int) -> str:
    """The integer type of the activity masks over ``days`` days and ``slots`` state slots:
    64-bit when both fit in :data:`NARROW_MASK_BITS` bits (DuckDB aggregates and shifts them
    faster than its 128-bit integers: 0.2 s of a 1M-user day, docs/scale.md), else the engine's
    widest (``variant(export, "mask_type")``)."""
    if days <= NARROW_MASK_BITS and slots < NARROW_MASK_BITS:
        return "BIGINT"
    return variant(export, "mask_type")


def mask_type(export: Export) -> str:
    """The integer type :data:`RANDOMISED_TABLE`'s masks were made with (by
    :func:`materialize_randomised`; before that, the engine's widest)."""
    return _MASK_TYPE.get(export) or variant(export, "mask_type")


def open_slot_positions(export: Export, slots: pd.DataFrame) -> pd.Series | None:
    """The bit of :data:`APP_OPENS_TABLE`'s ``o`` that holds each of ``slots``' pieces (same
    index), or None when the table cannot answer for them: not made with slots, a piece it does
    not hold with the same bounds, or a day the pieces do not cover from midnight to midnight
    (served-vs-planned then needs the time of the user's last event of the day, which only
    the telemetry has)."""
    made = _OPEN_SLOTS.get(export)
    if made is None or not len(slots):
        return None
    key = ["begin", "end"]
    found = slots[key].merge(made[[*key, "position"]], on=key, how="left")
    if found["position"].isna().any():
        return None
    for _, day in slots.sort_values("begin").groupby("day"):
        begin, end = day["begin"].to_numpy(), day["end"].to_numpy()
        midnight = pd.Timestamp(begin[0]).normalize()
        if (pd.Timestamp(begin[0]) != midnight
                or pd.Timestamp(end[-1]) != midnight + pd.Timedelta(days=1)
                or (begin[1:] != end[:-1]).any()):
            return None
    return pd.Series(found["position"].astype("int64").to_numpy(), index=slots.index)


def enabled_day_counts(export: Export) -> pd.DataFrame:
    """Randomised users per enabling day: ``f_day`` (``inf`` = never), ``n``."""
    return export.sql(f"SELECT f_day, count(*) AS n FROM {RANDOMISED_TABLE} "
                      f"GROUP BY f_day ORDER BY f_day")


def materialize_stage_units(export: Export, stages: Sequence[int], base_day: int,
                            covariate_days: int, k_values: Sequence[int], last_day: int) -> int:
    """Create :data:`STAGE_TABLE`: one row per (randomised user, stage day s) for every user
    not enabled before s who is active on or after s (through ``last_day``).

    Columns: ``user_id, f_day, s, a`` (first active day on or after s), ``x`` (active days in
    the ``covariate_days`` days before s: the CUPED covariate, untouched by whispers because
    nobody in the row was enabled before s), ``gap`` (days from a to the next active day, NULL:
    none yet) and ``y_<k>`` for each k (1 if active on a day in ``[a + 1, a + k]``, else 0).
    Whether the window ``[a + 1, a + k]`` has closed (``a + k <= day``) is for the caller.

    The arm is not stored: in stage s a row is treatment when ``f_day = s`` and control for
    window k when ``f_day > a + k`` (not enabled through the end of its outcome window);
    other rows (enabled during their window) take part in neither arm. Returns the row count.
    """
    st = [int(s) for s in stages if int(s) <= last_day]
    if not st:
        export.sql(f"CREATE OR REPLACE TEMP TABLE {STAGE_TABLE} AS SELECT NULL::VARCHAR AS user_id,"
                   f" NULL::DOUBLE AS f_day, NULL::INTEGER AS s, NULL::INTEGER AS a, "
                   f"NULL::INTEGER AS x, NULL::INTEGER AS gap"
                   + "".join(f", NULL::INTEGER AS y_{int(k)}" for k in sorted(set(k_values)))
                   + " WHERE false")
        return 0
    if min(st) - covariate_days < base_day:
        raise WhispersLabError(f"covariate window starts on day {min(st) - covariate_days}, "
                               f"before the activity mask (day {base_day})")
    mask = mask_type(export)
    ys = "".join(
        f""",
               CAST(((m >> CAST(a + 1 - $base AS INTEGER))
                     & CAST({(1 << int(k)) - 1} AS {mask})) <> 0 AS INTEGER) AS y_{int(k)}"""
        for k in sorted(set(k_values)))
    q = f"""
    CREATE OR REPLACE TEMP TABLE {STAGE_TABLE} AS
    WITH st(s) AS (VALUES {_int_values(st)}),
    su AS (
        SELECT r.user_id, r.f_day, st.s, r.m,
               r.m >> CAST(st.s - $base AS INTEGER) AS after_s
        FROM {RANDOMISED_TABLE} r CROSS JOIN st
        WHERE r.f_day >= st.s
    ),
    sa AS (
        SELECT user_id, f_day, s, m,
               s + bit_count(~after_s & (after_s - 1)) AS a,
               bit_count((m >> CAST(s - $cov - $base AS INTEGER))
                         & ((CAST(1 AS {mask}) << $cov) - 1)) AS x
        FROM su WHERE after_s <> 0
    ),
    nx AS (SELECT *, m >> CAST(a + 1 - $base AS INTEGER) AS later FROM sa)
    SELECT user_id, f_day, CAST(s AS INTEGER) AS s, CAST(a AS INTEGER) AS a,
           CAST(x AS INTEGER) AS x,
           CASE WHEN later = 0 THEN NULL
                ELSE CAST(bit_count(~later & (later - 1)) + 1 AS INTEGER) END AS gap{ys}
    FROM nx
    """
    export.sql(q, {"base": int(base_day), "cov": int(covariate_days)})
    return int(export.scalar(f"SELECT count(*) FROM {STAGE_TABLE}"))


def _arm_units(k_values: Sequence[int], last_day: int) -> str:
    """SELECT of (user, k, s, a, arm, y, x) rows with a closed window and an arm."""
    ks = sorted(set(int(k) for k in k_values))
    y_case = "CASE ks.k " + " ".join(f"WHEN {k} THEN g.y_{k}" for k in ks) + " END"
    return f"""
    WITH ks(k) AS (VALUES {_int_values(ks)})
    SELECT g.user_id, ks.k, g.s, g.a,
           CASE WHEN g.f_day = g.s THEN 'treatment' ELSE 'control' END AS arm,
           {y_case} AS y, g.x
    FROM {STAGE_TABLE} g CROSS JOIN ks
    WHERE g.a + ks.k <= {int(last_day)}
      AND (g.f_day = g.s OR g.f_day > g.a + ks.k)
    """


def stage_cells(export: Export, k_values: Sequence[int], last_day: int) -> pd.DataFrame:
    """Per (k, s, a, arm) of the stage units with a closed window by ``last_day``:
    ``n, sum_y, sum_yy, sum_x, sum_xx, sum_xy`` (y the Dk outcome, x the covariate).

    The outcome of a closed window does not depend on the analysis day, so one call gives every
    earlier look's cells too (keep ``a <= day - k``)."""
    q = f"""
    SELECT k, s, a, arm, count(*) AS n,
           sum(y)::DOUBLE AS sum_y, sum(y * y)::DOUBLE AS sum_yy,
           sum(x)::DOUBLE AS sum_x, sum(x * x)::DOUBLE AS sum_xx, sum(x * y)::DOUBLE AS sum_xy
    FROM ({_arm_units(k_values, last_day)})
    GROUP BY ALL ORDER BY k, s, a, arm
    """
    return export.sql(q)


def stage_pairs(export: Export, k_values: Sequence[int], last_day: int) -> pd.DataFrame:
    """Cross-products of the users who sit in two cells of different stages (same k): per
    (k, s1, a1, arm1, s2, a2, arm2) with ``s1 < s2``: ``n`` and the sums ``y1, y2, x1, x2,
    y1y2, y1x2, x1y2, x1x2`` over those users. They give the covariance between the cells'
    means (the same user is control in one stage and treatment or control in a later one)."""
    q = f"""
    WITH u AS ({_arm_units(k_values, last_day)})
    SELECT u1.k, u1.s AS s1, u1.a AS a1, u1.arm AS arm1, u2.s AS s2, u2.a AS a2,
           u2.arm AS arm2, count(*) AS n,
           sum(u1.y)::DOUBLE AS y1, sum(u2.y)::DOUBLE AS y2,
           sum(u1.x)::DOUBLE AS x1, sum(u2.x)::DOUBLE AS x2,
           sum(u1.y * u2.y)::DOUBLE AS y1y2, sum(u1.y * u2.x)::DOUBLE AS y1x2,
           sum(u1.x * u2.y)::DOUBLE AS x1y2, sum(u1.x * u2.x)::DOUBLE AS x1x2
    FROM u u1 JOIN u u2 ON u1.user_id = u2.user_id AND u1.k = u2.k AND u1.s < u2.s
    GROUP BY ALL ORDER BY ALL
    """
    return export.sql(q)


def preperiod_lags(export: Export, base_day: int, k_values: Sequence[int] = (1,)
                   ) -> pd.DataFrame:
    """Arrivals and returns before the rollout (nobody randomised is enabled yet, so nothing
    here can depend on the outcome): for every pseudo-start day ``p`` in ``[base_day, -1]``,
    the number of randomised users whose first active day on or after p is ``p + lag``
    (before day 0), and for each k how many of them returned within k days (``returned_<k>``,
    NULL when that window reaches day 0): ``p, lag, users, returned_<k>...``."""
    days = list(range(int(base_day), 0))
    ks = sorted(set(int(k) for k in k_values))
    if not days:
        return pd.DataFrame({"p": [], "lag": [], "users": [], **{f"returned_{k}": [] for k in ks}})
    mask = mask_type(export)
    rets = "".join(
        f""",
           CASE WHEN p + lag + {k} <= -1 THEN
               sum(CASE WHEN ((w >> CAST(lag + 1 AS INTEGER)) & CAST({(1 << k) - 1} AS {mask}))
                             <> 0 THEN 1 ELSE 0 END) END AS returned_{k}"""
        for k in ks)
    q = f"""
    WITH ps(p) AS (VALUES {_int_values(days)}),
    w AS (
        SELECT ps.p, (r.m >> CAST(ps.p - $base AS INTEGER))
                     & ((CAST(1 AS {mask}) << CAST(-ps.p AS INTEGER)) - 1) AS w
        FROM {RANDOMISED_TABLE} r CROSS JOIN ps
    ),
    l AS (SELECT p, w, CAST(bit_count(~w & (w - 1)) AS INTEGER) AS lag FROM w WHERE w <> 0)
    SELECT p, lag, count(*) AS users{rets}
    FROM l GROUP BY p, lag ORDER BY p, lag
    """
    return export.sql(q, {"base": int(base_day)})


def stage_survival_cells(export: Export, last_day: int) -> pd.DataFrame:
    """Days to return after the first active day a of each stage: per (arm, stratum = s * 1000
    + a, time, event) the number of stage units. Follow-up runs from a to the last full day the
    unit is observed in its arm: ``last_day`` for treatment (``f = s``), ``min(last_day, f - 1)``
    for control (enabled later). Units without follow-up are left out."""
    q = f"""
    WITH per AS (
        SELECT CASE WHEN f_day = s THEN 'treatment' ELSE 'control' END AS variant,
               s, a, a + gap AS r,
               CASE WHEN f_day = s THEN $last::DOUBLE ELSE least($last::DOUBLE, f_day - 1) END AS c
        FROM {STAGE_TABLE}
    )
    SELECT variant, s * 1000 + a AS stratum,
           CAST(CASE WHEN r IS NOT NULL AND r <= c THEN r - a ELSE c - a END AS BIGINT) AS time,
           CASE WHEN r IS NOT NULL AND r <= c THEN 1 ELSE 0 END AS event,
           count(*) AS n
    FROM per WHERE c > a
    GROUP BY ALL ORDER BY variant, stratum, time, event
    """
    return export.sql(q, {"last": int(last_day)})


def materialize_first_exposures(export: Export, t0: dt.datetime, hi: dt.datetime) -> None:
    """Create the temporary table :data:`FIRST_EXPOSURE_TABLE`: every user's first exposure
    row in ``[t0, hi)``, ``user_id, first_at, variant`` (the variant first served). The
    sample-ratio counts and the exposure checks read it; made once per report (a memoizing
    export skips making it again with the same window)."""
    export.sql(f"""
    CREATE OR REPLACE TEMP TABLE {FIRST_EXPOSURE_TABLE} AS
    SELECT user_id, min(exposed_at) AS first_at, arg_min(variant, exposed_at) AS variant
    FROM {exposures_source(export, hi)} WHERE exposed_at >= $t0 AND exposed_at < $hi
    GROUP BY user_id
    """, {"t0": t0, "hi": hi})


def srm_counts(export: Export, start: dt.date, t0: dt.datetime, hi: dt.datetime) -> pd.DataFrame:
    """Randomised users by the rollout day of their first exposure since ``t0`` and the variant
    they were first served: ``day, n_t, n_c``."""
    materialize_first_exposures(export, t0, hi)
    q = f"""
    WITH first_exp AS (SELECT * FROM {FIRST_EXPOSURE_TABLE})
    SELECT {_day_expr(start, 'f.first_at')} AS day,
           count(*) FILTER (WHERE f.variant = 'treatment') AS n_t,
           count(*) FILTER (WHERE f.variant = 'control') AS n_c
    FROM first_exp f JOIN {COHORT_RELATION} c ON c.user_id = f.user_id
    WHERE c.reason NOT IN ({_excluded_sql()})
    GROUP BY 1 ORDER BY 1
    """
    return export.sql(q)


def exposure_quality(export: Export, start: dt.date, t0: dt.datetime, hi: dt.datetime
                     ) -> dict[str, int]:
    """Counts that qualify the randomised population: exposed users unknown to the cohort,
    excluded (internal / beta) users, and users first served against the plan."""
    excluded = _excluded_sql()
    materialize_first_exposures(export, t0, hi)
    q = f"""
    WITH first_exp AS (SELECT * FROM {FIRST_EXPOSURE_TABLE}), j AS (
        SELECT f.*, c.reason, c.first_enabled_day AS f_day,
               {_day_expr(start, 'f.first_at')} AS e
        FROM first_exp f LEFT JOIN {COHORT_RELATION} c ON c.user_id = f.user_id
    )
    SELECT count(*) AS exposed,
           count(*) FILTER (WHERE reason IS NULL) AS unknown_users,
           count(*) FILTER (WHERE reason = 'internal') AS internal_users,
           count(*) FILTER (WHERE reason = 'beta') AS beta_users,
           count(*) FILTER (WHERE reason NOT IN ({excluded})) AS randomised_users,
           count(*) FILTER (WHERE reason NOT IN ({excluded}) AND variant = 'treatment'
                            AND f_day > e) AS treatment_before_enabled,
           count(*) FILTER (WHERE reason NOT IN ({excluded}) AND variant = 'control'
                            AND f_day <= e) AS control_after_enabled
    FROM j
    """
    row = export.sql(q).iloc[0]
    return {k: int(v) for k, v in row.items()}


def ratio_units(export: Export, lo: dt.datetime, hi: dt.datetime) -> pd.DataFrame:
    """Clustered sums for CTR over one window, external users (beta included):
    metric 'ctr' (num = whispers_used, den = whispers_shown events per user) and
    'ctr_requests' (num = requests with a whispers_used event, den = requests with a
    whispers_shown event per user), each as n, sum_num, sum_den, sum_num2, sum_den2,
    sum_num_den."""
    # grouped per request and per user first, the cohort joined on one row per user: the
    # same users (every key holds the user), a join of 0.5 M rows instead of 8 M (1M users)
    q = f"""
    WITH per_req AS (SELECT * FROM {request_events_source(export, lo, hi)} AS r),
    grouped AS (
        SELECT user_id, sum(used)::DOUBLE AS clicks, sum(shown)::DOUBLE AS impressions,
               count(*) FILTER (WHERE used > 0 AND shown > 0 AND request_id IS NOT NULL)::DOUBLE
                   AS clicked_requests,
               count(*) FILTER (WHERE shown > 0 AND request_id IS NOT NULL)::DOUBLE AS requests
        FROM per_req GROUP BY user_id
        HAVING sum(shown) > 0
    ),
    per_user AS (
        SELECT g.* FROM grouped g JOIN {COHORT_RELATION} c ON c.user_id = g.user_id
        WHERE c.reason <> 'internal'
    )
    SELECT 'ctr' AS metric, count(*) AS n, sum(clicks) AS sum_num, sum(impressions) AS sum_den,
           sum(clicks * clicks) AS sum_num2, sum(impressions * impressions) AS sum_den2,
           sum(clicks * impressions) AS sum_num_den
    FROM per_user
    UNION ALL
    SELECT 'ctr_requests', count(*), sum(clicked_requests), sum(requests),
           sum(clicked_requests * clicked_requests), sum(requests * requests),
           sum(clicked_requests * requests)
    FROM per_user WHERE requests > 0
    """
    return export.sql(q, {"lo": lo, "hi": hi})


def feedback_units(export: Export, lo: dt.datetime, hi: dt.datetime) -> pd.DataFrame:
    """Clustered sums of survey answers of external users: metric 'feedback_score'
    (num = sum of ratings, den = answers per user) and 'relevance' (num = 'relevant' answers,
    den = answers with a relevance judgement)."""
    q = f"""
    WITH per_user AS (
        SELECT f.user_id, sum(f.rating)::DOUBLE AS rating_sum, count(*)::DOUBLE AS answers,
               count(*) FILTER (WHERE f.relevant)::DOUBLE AS relevant,
               count(f.relevant)::DOUBLE AS judged
        FROM feedback f JOIN {COHORT_RELATION} c ON c.user_id = f.user_id
        WHERE f.submitted_at >= $lo AND f.submitted_at < $hi AND c.reason <> 'internal'
        GROUP BY f.user_id
    )
    SELECT 'feedback_score' AS metric, count(*) AS n, sum(rating_sum) AS sum_num,
           sum(answers) AS sum_den, sum(rating_sum * rating_sum) AS sum_num2,
           sum(answers * answers) AS sum_den2, sum(rating_sum * answers) AS sum_num_den
    FROM per_user
    UNION ALL
    SELECT 'relevance', count(*), sum(relevant), sum(judged), sum(relevant * relevant),
           sum(judged * judged), sum(relevant * judged)
    FROM per_user WHERE judged > 0
    """
    return export.sql(q, {"lo": lo, "hi": hi})


def ticket_days(export: Export, start: dt.date, lo_day: int, last_day: int) -> pd.DataFrame:
    """Support tickets and user-days of the randomised users per rollout day and planned arm,
    days ``[lo_day, last_day]``: ``day, arm, users, tickets``.

    Intention to treat by the state in force: on day d a user is treatment when ``f_day <= d``,
    else control; every randomised user signed up by day d counts, active or not (a rate ratio
    is unaffected by users who can file no ticket in either arm). Tickets without a user id
    cannot be attributed and are not counted. User-days come from users grouped by
    (f_day, signup_day), never from a row per user-day."""
    if last_day < lo_day:
        return pd.DataFrame({"day": [], "arm": [], "users": [], "tickets": []})
    q = f"""
    WITH days AS (SELECT unnest(range($lo_day, $last + 1)) AS d),
    g AS (SELECT f_day, signup_day, count(*) AS n FROM {RANDOMISED_TABLE} GROUP BY ALL),
    ud AS (
        SELECT d.d AS day, CASE WHEN g.f_day <= d.d THEN 'treatment' ELSE 'control' END AS arm,
               sum(g.n) AS users
        FROM g JOIN days d ON g.signup_day <= d.d
        GROUP BY ALL
    ),
    tk AS (
        SELECT {_day_expr(start, 't.created_at')} AS day,
               CASE WHEN r.f_day <= {_day_expr(start, 't.created_at')} THEN 'treatment'
                    ELSE 'control' END AS arm,
               count(*) AS tickets
        FROM support_tickets t JOIN {RANDOMISED_TABLE} r ON r.user_id = t.user_id
        WHERE t.created_at >= $lo AND t.created_at < $hi
        GROUP BY ALL
    )
    SELECT ud.day, ud.arm, ud.users::DOUBLE AS users, coalesce(tk.tickets, 0)::BIGINT AS tickets
    FROM ud LEFT JOIN tk USING (day, arm)
    ORDER BY ud.day, ud.arm
    """
    lo = dt.datetime.combine(start, dt.time()) + dt.timedelta(days=int(lo_day))
    hi = dt.datetime.combine(start, dt.time()) + dt.timedelta(days=int(last_day) + 1)
    return export.sql(q, {"lo_day": int(lo_day), "last": int(last_day), "lo": lo, "hi": hi})


def preperiod_ticket_rate(export: Export, start: dt.date, first_day: int) -> dict[str, float]:
    """Tickets and user-days of the randomised users on days ``[first_day, -1]`` (before anyone
    randomised is enabled): the baseline rate that projects the ticket test's information."""
    if first_day >= 0:
        return {"tickets": 0.0, "user_days": 0.0}
    q = f"""
    WITH days AS (SELECT unnest(range($first, 0)) AS d),
    g AS (SELECT signup_day, count(*) AS n FROM {RANDOMISED_TABLE} GROUP BY ALL)
    SELECT (SELECT coalesce(sum(g.n), 0) FROM g JOIN days ON g.signup_day <= days.d)::DOUBLE
               AS user_days,
           (SELECT count(*) FROM support_tickets t JOIN {RANDOMISED_TABLE} r
                ON r.user_id = t.user_id
            WHERE t.created_at >= $lo AND t.created_at < $hi)::DOUBLE AS tickets
    """
    lo = dt.datetime.combine(start, dt.time()) + dt.timedelta(days=int(first_day))
    hi = dt.datetime.combine(start, dt.time())
    row = export.sql(q, {"first": int(first_day), "lo": lo, "hi": hi}).iloc[0]
    return {"tickets": float(row["tickets"]), "user_days": float(row["user_days"])}


def canary_units(export: Export, lo: dt.datetime, hi: dt.datetime, day: int, max_units: int,
                 seed: int, endpoint: str = WHISPERS_ENDPOINT) -> pd.DataFrame:
    """Per-user values on one day for the canary comparison, at most ``max_units`` users per
    planned variant, chosen by a seeded hash of the user id (deterministic, thread-safe; MD5,
    which DuckDB and Spark compute alike, so both engines draw the same users).

    Population: randomised units first exposed on or before ``day``; variant by plan on the day
    (treatment iff ``f <= day``: intention to treat, so that being served does not select the
    more active users). Columns: variant, duration_ms (mean of the user's requests to other
    endpoints), error_rate (share with status >= 400), opens (app_open events), each NULL when
    the user had no such activity that day; ``arm_active``: how many active users the arm had
    before the draw (for the record)."""
    q = f"""
    WITH pop AS (
        SELECT user_id, CASE WHEN f_day <= $day THEN 'treatment' ELSE 'control' END AS variant
        FROM {RANDOMISED_TABLE}
    ),
    api AS (
        SELECT user_id, avg(duration_ms) AS duration_ms,
               avg(CASE WHEN status >= {ERROR_STATUS} THEN 1.0 ELSE 0.0 END) AS error_rate
        FROM api_logs
        WHERE "timestamp" >= $lo AND "timestamp" < $hi AND endpoint <> $ep AND user_id IS NOT NULL
        GROUP BY user_id
    ),
    op AS (
        SELECT user_id, CAST(opens AS DOUBLE) AS opens
        FROM {day_app_opens_source(export, lo, hi)} AS o
    ),
    joined AS (
        SELECT p.variant, a.duration_ms, a.error_rate, o.opens,
               count(*) OVER (PARTITION BY p.variant) AS arm_active,
               row_number() OVER (PARTITION BY p.variant
                                  ORDER BY md5(p.user_id || ':' || CAST($seed AS VARCHAR)),
                                  p.user_id) AS rk
        FROM pop p LEFT JOIN api a ON a.user_id = p.user_id
                   LEFT JOIN op o ON o.user_id = p.user_id
        WHERE a.user_id IS NOT NULL OR o.user_id IS NOT NULL
    )
    SELECT variant, duration_ms, error_rate, opens, arm_active FROM joined
    WHERE rk <= $max_units
    """
    return export.sql(q, {"lo": lo, "hi": hi, "day": int(day), "ep": endpoint,
                          "seed": int(seed), "max_units": int(max_units)})


def first_exposure_cells(export: Export, start: dt.date, t0: dt.datetime, hi: dt.datetime,
                         base_day: int, k_values: Sequence[int], last_day: int) -> pd.DataFrame:
    """The first build's retention cells, for comparison with the staggered design: per
    (k, e, variant) with ``e`` the rollout day of a randomised user's first exposure since
    ``t0`` and ``variant`` the one first served: ``n, sum_y`` (back within k days after e).
    A unit counts when its window closed (``e + k <= last_day``) and, for control, before
    the plan enabled it (``e + k + 1 <= f``). Needs :data:`RANDOMISED_TABLE`."""
    ks = sorted(set(int(k) for k in k_values))
    mask = mask_type(export)
    q = f"""
    WITH ks(k) AS (VALUES {_int_values(ks)}),
    first_exp AS (
        SELECT user_id, min(exposed_at) AS first_at, arg_min(variant, exposed_at) AS variant
        FROM {exposures_source(export, hi)} WHERE exposed_at >= $t0 AND exposed_at < $hi
        GROUP BY user_id
    ),
    u AS (
        SELECT r.f_day, r.m, f.variant, {_day_expr(start, 'f.first_at')} AS e
        FROM first_exp f JOIN {RANDOMISED_TABLE} r ON r.user_id = f.user_id
    )
    SELECT ks.k, u.e, u.variant, count(*) AS n,
           sum(CASE WHEN ((u.m >> CAST(u.e + 1 - $base AS INTEGER))
                          & ((CAST(1 AS {mask}) << ks.k) - 1)) <> 0 THEN 1 ELSE 0 END)::DOUBLE
               AS sum_y
    FROM u CROSS JOIN ks
    WHERE u.e + ks.k <= $last AND (u.variant = 'treatment' OR u.e + ks.k + 1 <= u.f_day)
    GROUP BY ALL ORDER BY ALL
    """
    return export.sql(q, {"t0": t0, "hi": hi, "base": int(base_day), "last": int(last_day)})
