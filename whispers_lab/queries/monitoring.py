"""Monitoring SQL: the aggregates behind the go/no-go criteria and the rollback triggers.

Every function takes an opened :class:`~whispers_lab.export.Export` and a half-open UTC window
``[start, end)`` (a rollout day is ``[plan.day_start(N), plan.day_start(N + 1))``) and returns a
small aggregated DataFrame or a dict of numbers. All the heavy lifting (per-minute grouping, the
consecutive-minute run detection, LAG over cue events, percentiles) happens in DuckDB, so a day
of 10M ``api_logs`` rows stays a matter of seconds. The rules in :mod:`whispers_lab.rules` are
pure functions over what these return.

Definitions (also in ``docs/rules.md``):

* an *error* is a request with ``status >= 400``, as the plan's dashboard SQL counts it;
  a *server error* (``status >= 500``) is what makes a minute *down* for uptime;
* a *counted* minute has at least ``min_requests`` requests to the endpoint; a minute with fewer
  requests is *skipped*: it neither extends nor breaks a run of bad minutes;
* a *run* is a maximal sequence of counted minutes that are all above the threshold, with only
  skipped minutes between them (gaps-and-islands over the counted minutes). Runs are detected
  over ``[start - lookback, end)`` so that a run straddling midnight keeps its full length; only
  runs that reach into ``[start, end)`` are returned.
"""

from __future__ import annotations

import datetime as dt
import weakref
from dataclasses import replace
from typing import Any, Literal

import numpy as np
import pandas as pd

from ..contract import CONTRACT, WHISPERS_ENDPOINT
from ..coverage import ACTIVITY_TABLES, Extent, extent_from_days, merge_days
from ..export import Export
from ..sql import sql_ident, sql_string
from . import carried

ERROR_STATUS = 400
SERVER_ERROR_STATUS = 500
#: Example ticket ids of each kind (privacy, critical bug) that :func:`ticket_counts` returns.
TICKET_EXAMPLES = 10
DOWN_ERROR_SHARE = 0.5

MinuteMetric = Literal["error_rate", "avg_duration_ms"]
_MINUTE_METRICS: tuple[str, ...] = ("error_rate", "avg_duration_ms")


def _row(frame: pd.DataFrame) -> dict[str, Any]:
    """The first row of a one-row aggregate as plain Python values (NaN/NA/NULL -> None)."""
    if frame.empty:
        return {}
    out: dict[str, Any] = {}
    for key, value in frame.to_dict(orient="records")[0].items():
        if isinstance(value, (list, tuple, np.ndarray)):
            out[str(key)] = list(value)
        elif value is None or value is pd.NaT or pd.isna(value):
            out[str(key)] = None
        elif hasattr(value, "item"):
            out[str(key)] = value.item()
        else:
            out[str(key)] = value
    return out


# ---------------------------------------------------------------------------------------
# coverage


#: Time column of each activity table (what :func:`activity_days` reads), from the contract.
TIME_COLUMNS: dict[str, str] = {t: str(CONTRACT[t].time_column) for t in ACTIVITY_TABLES}


def activity_days(export: Export) -> pd.DataFrame:
    """Rows per activity table and UTC date (api_logs, telemetry, exposures, feedback,
    support_tickets, db_metrics; ``users.signup_at`` is not activity): source, date, rows,
    last (the latest timestamp of the table on that date). One scan of each table's time
    column serves the export's extent and each table's latest row (:func:`latest_row`)."""
    tables = " UNION ALL ".join(
        f"SELECT {sql_string(t)} AS source, {sql_ident(c)} AS t FROM {sql_ident(t)}"
        for t, c in TIME_COLUMNS.items())
    return export.sql(
        f"SELECT source, CAST(t AS DATE) AS date, count(*) AS rows, max(t) AS last FROM ("
        f"{tables}) WHERE t IS NOT NULL GROUP BY 1, 2 ORDER BY 2, 1")


def _validated(export: Export) -> dict[str, tuple[dict[dt.date, int], dt.datetime | None]] | None:
    """Per activity table, its rows per UTC date and its latest timestamp as the queries see
    them, from what the export's validation already counted in its one scan per table (or
    kept in its manifest): no table is read again. Validation counts rows as stored, so the
    repeated events the ``telemetry`` view leaves out are taken off their dates.

    None (the caller then reads the tables: :func:`activity_days`) when there is no clean
    DuckDB validation of every activity table, or when the latest telemetry row may be one of
    the repeated events (then the view's latest row is not validation's)."""
    from ..validation import DUPLICATE_EVENTS_TABLE

    result = getattr(export, "validation", None)
    if result is None or result.problems or getattr(export, "engine", None) != "duckdb":
        return None
    out: dict[str, tuple[dict[dt.date, int], dt.datetime | None]] = {}
    for table in TIME_COLUMNS:
        if not export.has(table):
            out[table] = ({}, None)
            continue
        summary = result.tables.get(table)
        if summary is None or sum(summary.days.values()) > summary.rows:
            return None
        out[table] = (dict(summary.days), summary.last)
    repeats = export.sql(f"SELECT CAST(ts AS DATE) AS date, count(*) AS n, "
                         f"count(ts) AS timed, max(ts) AS last "
                         f"FROM {DUPLICATE_EVENTS_TABLE} GROUP BY 1")
    if repeats.empty:
        return out
    if (repeats["n"] != repeats["timed"]).any():  # a list read without the times: unknown
        return None
    days, last = out["telemetry"]
    if last is not None and pd.Timestamp(repeats["last"].max()) >= pd.Timestamp(last):
        return None  # the latest row may be left out of the view: read it
    for date, n in zip(repeats["date"], repeats["n"], strict=True):
        d = pd.Timestamp(date).date()
        days[d] = days.get(d, 0) - int(n)
        if days[d] < 0:
            return None
        if days[d] == 0:
            del days[d]
    return out


def latest_row(export: Export, table: str) -> dt.datetime | None:
    """The latest timestamp of an activity table (every row, a future-stamped one too), from
    the export's validation when it has one (:func:`_validated`), else from
    :func:`activity_days`. None when the table holds no timed row."""
    known = _validated(export)
    if known is not None:
        last = known.get(table, ({}, None))[1]
        return None if last is None else pd.Timestamp(last).to_pydatetime()
    days = activity_days(export)
    last = days.loc[days["source"] == table, "last"]
    return None if last.empty else pd.Timestamp(last.max()).to_pydatetime()


def _validated_extent(export: Export,
                      known: dict[str, tuple[dict[dt.date, int], dt.datetime | None]]) -> Extent:
    """:func:`export_extent` from validation's counts: the populated days from the rows per
    date; the end is each table's latest row, except for a table with rows after the last
    populated day, whose latest row on or before it is read (a time-filtered query)."""
    bare = extent_from_days(merge_days(*(days for days, _ in known.values())))
    if bare.last_day is None:
        return bare
    cut = dt.datetime.combine(bare.last_day + dt.timedelta(days=1), dt.time())
    ends = []
    for table, (_, last) in known.items():
        if last is None:
            continue
        if last < cut:
            ends.append(last)
            continue
        col = sql_ident(TIME_COLUMNS[table])
        before = export.sql(f"SELECT max({col}) AS t FROM {sql_ident(table)} WHERE {col} < $cut",
                            {"cut": cut}).iloc[0]["t"]
        if before is not None and not pd.isna(before):
            ends.append(pd.Timestamp(before).to_pydatetime())
    return replace(bare, end=max(ends) if ends else None)


def export_extent(export: Export) -> Extent:
    """Where the export's data lie, from the rows' day distribution (see
    :mod:`whispers_lab.coverage`): a row stamped in the future does not move its end.
    On a validated export the counts are validation's (:func:`_validated`): no table is
    scanned again; otherwise one scan of each table (:func:`activity_days`)."""
    known = _validated(export)
    if known is not None:
        return _validated_extent(export, known)
    days = activity_days(export).groupby("date", sort=True).agg(rows=("rows", "sum"),
                                                                last=("last", "max"))
    dates = [pd.Timestamp(d).date() for d in days.index]
    return extent_from_days(dict(zip(dates, days["rows"].astype(int), strict=True)),
                            {d: pd.Timestamp(t).to_pydatetime()
                             for d, t in zip(dates, days["last"], strict=True)})


def data_end(export: Export) -> dt.datetime | None:
    """Where the export ends: the latest activity timestamp on or before its last populated
    day (:func:`export_extent`), so that rows stamped beyond the export's own end (a wrong
    clock) do not make it look newer than it is. None when it holds no activity."""
    return export_extent(export).end


# ---------------------------------------------------------------------------------------
# the report's copies of the endpoint's requests and of the exposures (each read once)


#: Per export, the window ``[lo, hi)`` each table a report made from it holds (``lo`` None:
#: everything before ``hi``), so that a query reads the table only for a window inside it.
_MADE: weakref.WeakKeyDictionary[Any, dict[str, tuple[dt.datetime | None, dt.datetime]]] = (
    weakref.WeakKeyDictionary())


def _made(export: Export, table: str, lo: dt.datetime | None, hi: dt.datetime) -> None:
    _MADE.setdefault(export, {})[table] = (lo, hi)


def _holds(export: Export, table: str, lo: dt.datetime, hi: dt.datetime) -> bool:
    """Whether ``table`` was made from ``export`` for a window that holds ``[lo, hi)``."""
    made = _MADE.get(export, {}).get(table)
    return made is not None and (made[0] is None or made[0] <= lo) and hi <= made[1]


#: The ``/api/whispers/context`` rows of ``api_logs`` over a report's window, with the columns
#: the report's queries read (:func:`materialize_whispers_requests`).
WHISPERS_REQUESTS_TABLE = "wl_whispers_requests"


def materialize_whispers_requests(export: Export, lo: dt.datetime, hi: dt.datetime) -> None:
    """Create the temporary table :data:`WHISPERS_REQUESTS_TABLE`: the endpoint's requests in
    ``[lo, hi)`` (``timestamp, user_id, device_id, status, duration_ms, ranking_ms,
    weight_source, weights_version``). Every query of the endpoint whose window it holds reads
    it (:func:`whispers_requests`) instead of ``api_logs``, which then is read once for all of
    them: a report read api_logs 15-17 times, each query picking the endpoint's rows (1.5-3M
    of 32-36M at 1M users) out of the same days again. Its rows are in no particular order
    (``ordered=False``): every reader aggregates them."""
    export.sql(f"""CREATE OR REPLACE TEMP TABLE {WHISPERS_REQUESTS_TABLE} AS
        SELECT "timestamp", user_id, device_id, status, duration_ms, ranking_ms, weight_source,
               weights_version
        FROM api_logs
        WHERE endpoint = $endpoint AND "timestamp" >= $lo AND "timestamp" < $hi""",
               {"endpoint": WHISPERS_ENDPOINT, "lo": lo, "hi": hi}, ordered=False)
    _made(export, WHISPERS_REQUESTS_TABLE, lo, hi)


def whispers_requests(export: Export, lo: dt.datetime, hi: dt.datetime,
                      endpoint: str = WHISPERS_ENDPOINT) -> str:
    """A FROM item of ``endpoint``'s requests (at least the columns of
    :data:`WHISPERS_REQUESTS_TABLE`), named ``whispers_requests``, for a query that reads them
    in ``[lo, hi)`` only (its own time filter stays): the table when it was made for a window
    that holds this one (and ``endpoint`` is the whispers endpoint), else the rows of
    ``api_logs``."""
    if endpoint == WHISPERS_ENDPOINT and _holds(export, WHISPERS_REQUESTS_TABLE, lo, hi):
        return f"{WHISPERS_REQUESTS_TABLE} AS whispers_requests"
    return f"(SELECT * FROM api_logs WHERE endpoint = {sql_string(endpoint)}) AS whispers_requests"


#: Every ``exposures`` row before a report's day ends (:func:`materialize_exposures`).
EXPOSURES_TABLE = "wl_exposures"


def materialize_exposures(export: Export, hi: dt.datetime) -> None:
    """Create the temporary table :data:`EXPOSURES_TABLE`: ``user_id, exposed_at, variant`` of
    every exposure row before ``hi``. The report's readers of exposures (the daily series, the
    treated users, the first exposures, served-vs-planned and its as-of lookup) read it
    (:func:`exposures_source`) instead of the table, six times per report; it is a copy of
    three columns (1.4M rows at 1M users: about 0.05 s), read no slower than the file."""
    export.sql(f"CREATE OR REPLACE TEMP TABLE {EXPOSURES_TABLE} AS SELECT user_id, exposed_at, "
               f"variant FROM exposures WHERE exposed_at < $hi", {"hi": hi})
    _made(export, EXPOSURES_TABLE, None, hi)


def exposures_source(export: Export, hi: dt.datetime) -> str:
    """The relation to read exposure rows before ``hi`` from (a query's own filter on
    ``exposed_at`` stays): :data:`EXPOSURES_TABLE` when it was made for a window ending at or
    after ``hi``, else ``exposures``."""
    return EXPOSURES_TABLE if _holds(export, EXPOSURES_TABLE, hi, hi) else "exposures"


# ---------------------------------------------------------------------------------------
# per-minute API series and runs


def _minutes_cte(source: str) -> str:
    return f"""
minutes AS (
    SELECT date_trunc('minute', "timestamp") AS minute,
           count(*) AS requests,
           avg(duration_ms) AS avg_duration_ms,
           count(*) FILTER (WHERE status >= {ERROR_STATUS}) AS errors,
           count(*) FILTER (WHERE status >= {SERVER_ERROR_STATUS}) AS server_errors
    FROM {source}
    WHERE "timestamp" >= $lo AND "timestamp" < $hi
    GROUP BY 1
)"""


def minute_series(export: Export, start: dt.datetime, end: dt.datetime, *,
                  min_requests: int) -> pd.DataFrame:
    """Per-minute series of ``/api/whispers/context`` over ``[start, end)`` (the plan's dashboard
    query): minute, requests, users, avg_duration_ms, errors, server_errors, error_rate, counted.

    Only minutes with at least one request appear; ``counted`` marks minutes with at least
    ``min_requests`` requests (the others are skipped by the run detection); ``users``: the
    distinct users behind the minute's requests, so that a chart can withhold minutes of fewer
    than ``criteria.min_group_users`` users."""
    query = f"""
    WITH minutes AS (
        SELECT date_trunc('minute', "timestamp") AS minute,
               count(*) AS requests,
               count(DISTINCT user_id) AS users,
               avg(duration_ms) AS avg_duration_ms,
               count(*) FILTER (WHERE status >= {ERROR_STATUS}) AS errors,
               count(*) FILTER (WHERE status >= {SERVER_ERROR_STATUS}) AS server_errors
        FROM {whispers_requests(export, start, end)}
        WHERE "timestamp" >= $lo AND "timestamp" < $hi
        GROUP BY 1
    )
    SELECT minute, requests, users, avg_duration_ms, errors, server_errors,
           errors / requests AS error_rate,
           requests >= $min_requests AS counted
    FROM minutes ORDER BY minute
    """
    return export.sql(query, {"lo": start, "hi": end, "min_requests": min_requests})


#: Gaps-and-islands over a CTE ``flagged(minute, value, above)``: one row per run of consecutive
#: flagged minutes above the level (start, end, minutes, minutes_in_window, peak) that reaches
#: into the day (``$day_lo``). Shared by the API triggers and the database trigger.
_ISLANDS = """islands AS (
        SELECT *, row_number() OVER (ORDER BY minute)
                  - row_number() OVER (PARTITION BY above ORDER BY minute) AS island
        FROM flagged
    )
    SELECT min(minute) AS start,
           max(minute) + INTERVAL 1 MINUTE AS "end",
           count(*) AS minutes,
           count(*) FILTER (WHERE minute >= $day_lo) AS minutes_in_window,
           max(value) AS peak
    FROM islands WHERE above
    GROUP BY island
    HAVING max(minute) >= $day_lo
    ORDER BY start"""


def minute_runs(export: Export, start: dt.datetime, end: dt.datetime, *, metric: MinuteMetric,
                threshold: float, min_requests: int, lookback_minutes: int = 60) -> pd.DataFrame:
    """Runs of consecutive counted minutes whose ``metric`` is strictly above ``threshold``.

    Gaps-and-islands: over the counted minutes in time order, ``row_number() - row_number()
    PARTITION BY above`` is constant within a run. Returns start (first minute), end (exclusive:
    last minute + 1 minute), minutes (counted minutes in the run, including any before
    ``start`` within the lookback), minutes_in_window (those within ``[start, end)``) and
    peak (largest metric value in the run), for runs that reach into ``[start, end)``.
    """
    if metric not in _MINUTE_METRICS:
        raise ValueError(f"unknown minute metric {metric!r} (known: {_MINUTE_METRICS})")
    value = "errors / requests" if metric == "error_rate" else "avg_duration_ms"
    lo = start - dt.timedelta(minutes=lookback_minutes)
    query = f"""
    WITH {_minutes_cte(whispers_requests(export, lo, end))},
    flagged AS (
        SELECT minute, {value} AS value, ({value}) > $threshold AS above
        FROM minutes WHERE requests >= $min_requests
    ),
    {_ISLANDS}
    """
    return export.sql(query, {"lo": lo, "hi": end, "day_lo": start,
                              "threshold": float(threshold), "min_requests": min_requests})


def availability(export: Export, start: dt.datetime, end: dt.datetime, *,
                 min_requests: int) -> dict[str, Any]:
    """Minutes for uptime: observed (>= 1 request), counted (>= ``min_requests``), and down
    (counted minutes in which at least half of the requests got a server error, status >= 500)."""
    query = f"""
    WITH {_minutes_cte(whispers_requests(export, start, end))}
    SELECT count(*) AS observed_minutes,
           count(*) FILTER (WHERE requests >= $min_requests) AS counted_minutes,
           count(*) FILTER (WHERE requests >= $min_requests
                            AND server_errors >= $down_share * requests) AS down_minutes,
           count(*) FILTER (WHERE requests < $min_requests) AS skipped_minutes
    FROM minutes
    """
    return _row(export.sql(query, {"lo": start, "hi": end, "min_requests": min_requests,
                                   "down_share": DOWN_ERROR_SHARE}))


# ---------------------------------------------------------------------------------------
# daily API aggregates


def daily_api(export: Export, start: dt.datetime, end: dt.datetime, *,
              ranking_timeout_ms: float) -> dict[str, Any]:
    """One row of daily ``/api/whispers/context`` aggregates over ``[start, end)``.

    requests, errors, error_rate, avg_duration_ms, p95_duration_ms, ranked_requests (ranking_ms
    set), ranking_timeouts (ranking_ms strictly above ``ranking_timeout_ms``), max_ranking_ms,
    weight_requests (weight_source set), fallbacks (weight_source = 'fallback'),
    fallback_rate; users, ranked_users, weight_users: distinct users behind requests,
    ranked_requests and weight_requests (the report withholds figures of fewer than
    ``criteria.min_group_users`` users)."""
    query = f"""
    SELECT count(*) AS requests,
           count(DISTINCT user_id) AS users,
           count(DISTINCT user_id) FILTER (WHERE ranking_ms IS NOT NULL) AS ranked_users,
           count(DISTINCT user_id) FILTER (WHERE weight_source IS NOT NULL) AS weight_users,
           count(*) FILTER (WHERE status >= {ERROR_STATUS}) AS errors,
           count(*) FILTER (WHERE status >= {ERROR_STATUS}) / nullif(count(*), 0) AS error_rate,
           avg(duration_ms) AS avg_duration_ms,
           quantile_cont(duration_ms, 0.95) AS p95_duration_ms,
           count(ranking_ms) AS ranked_requests,
           count(*) FILTER (WHERE ranking_ms > $timeout) AS ranking_timeouts,
           max(ranking_ms) AS max_ranking_ms,
           count(weight_source) AS weight_requests,
           count(*) FILTER (WHERE weight_source = 'fallback') AS fallbacks,
           count(*) FILTER (WHERE weight_source = 'fallback')
               / nullif(count(weight_source), 0) AS fallback_rate
    FROM {whispers_requests(export, start, end)}
    WHERE "timestamp" >= $lo AND "timestamp" < $hi
    """
    return _row(export.sql(query, {"lo": start, "hi": end, "timeout": float(ranking_timeout_ms)}))


def api_window(export: Export, start: dt.datetime, end: dt.datetime, *, q: float = 0.95
               ) -> dict[str, Any]:
    """Clustered sums of ``/api/whispers/context`` over ``[start, end)`` for the threshold
    criteria judged over a window (error rate, fallback rate, mean duration, the q-quantile).

    Clusters are UTC minutes (requests of one minute share the load). Per metric ``<m>``:
    ``<m>_n`` clusters, ``<m>_num``, ``<m>_den``, ``<m>_num2``, ``<m>_den2``, ``<m>_numden``
    (sums over clusters of the per-cluster numerator, denominator, their squares and product):
    ``errors`` (status >= 400 / requests), ``fallbacks`` (weight_source 'fallback' / requests
    with a weight source), ``duration`` (sum of duration_ms / requests). For the quantile:
    ``quantile`` (continuous) and the Woodruff pieces: per-minute and per-user clustered sums of
    ``#{duration <= quantile}`` over requests (``qm_*`` and ``qu_*``, same suffixes; requests
    without a user form one cluster each). Also ``requests`` and ``users``."""
    query = f"""
    WITH r AS (
        SELECT date_trunc('minute', "timestamp") AS minute, user_id, status, duration_ms,
               weight_source
        FROM {whispers_requests(export, start, end)}
        WHERE "timestamp" >= $lo AND "timestamp" < $hi
    ),
    qv AS (SELECT quantile_cont(duration_ms, $q) AS quantile FROM r),
    pm AS (
        SELECT minute, count(*)::DOUBLE AS n,
               count(*) FILTER (WHERE status >= 400)::DOUBLE AS err,
               count(weight_source)::DOUBLE AS wreq,
               count(*) FILTER (WHERE weight_source = 'fallback')::DOUBLE AS fb,
               sum(duration_ms) AS dur,
               count(*) FILTER (WHERE duration_ms <= (SELECT quantile FROM qv))::DOUBLE AS below
        FROM r GROUP BY minute
    ),
    -- a user's requests are one cluster, and a request without a user one of its own (no
    -- row number for it: numbering the rows made every run of this query single-threaded)
    pu AS (
        SELECT count(*)::DOUBLE AS n,
               count(*) FILTER (WHERE duration_ms <= (SELECT quantile FROM qv))::DOUBLE AS below
        FROM r WHERE user_id IS NOT NULL GROUP BY user_id
        UNION ALL
        SELECT 1.0, CASE WHEN duration_ms <= (SELECT quantile FROM qv) THEN 1.0 ELSE 0.0 END
        FROM r WHERE user_id IS NULL
    )
    SELECT (SELECT count(*) FROM r) AS requests,
           (SELECT count(DISTINCT user_id) FROM r) AS users,
           (SELECT quantile FROM qv) AS quantile,
           count(*) AS errors_n, sum(err) AS errors_num, sum(n) AS errors_den,
           sum(err * err) AS errors_num2, sum(n * n) AS errors_den2, sum(err * n) AS errors_numden,
           count(*) FILTER (WHERE wreq > 0) AS fallbacks_n, sum(fb) AS fallbacks_num,
           sum(wreq) AS fallbacks_den, sum(fb * fb) AS fallbacks_num2,
           sum(wreq * wreq) AS fallbacks_den2, sum(fb * wreq) AS fallbacks_numden,
           count(*) AS duration_n, sum(dur) AS duration_num, sum(n) AS duration_den,
           sum(dur * dur) AS duration_num2, sum(n * n) AS duration_den2,
           sum(dur * n) AS duration_numden,
           count(*) AS qm_n, sum(below) AS qm_num, sum(n) AS qm_den, sum(below * below) AS qm_num2,
           sum(n * n) AS qm_den2, sum(below * n) AS qm_numden,
           (SELECT count(*) FROM pu) AS qu_n, (SELECT sum(below) FROM pu) AS qu_num,
           (SELECT sum(n) FROM pu) AS qu_den, (SELECT sum(below * below) FROM pu) AS qu_num2,
           (SELECT sum(n * n) FROM pu) AS qu_den2, (SELECT sum(below * n) FROM pu) AS qu_numden
    FROM pm
    """
    return _row(export.sql(query, {"lo": start, "hi": end, "q": float(q)}))


def api_quantiles(export: Export, start: dt.datetime, end: dt.datetime,
                  probabilities: list[float]) -> list[float | None]:
    """Continuous quantiles of the endpoint's durations at ``probabilities`` (Woodruff ends)."""
    if not probabilities:
        return []
    probs = [min(max(float(p), 0.0), 1.0) for p in probabilities]
    row = export.sql(
        f"""SELECT quantile_cont(duration_ms, $p) AS v
            FROM {whispers_requests(export, start, end)}
            WHERE "timestamp" >= $lo AND "timestamp" < $hi""",
        {"lo": start, "hi": end, "p": probs}).iloc[0]["v"]
    if row is None or (not isinstance(row, (list, tuple, np.ndarray)) and pd.isna(row)):
        return [None] * len(probs)
    return [None if v is None or pd.isna(v) else float(v) for v in list(row)]


def weight_persistence(export: Export, start: dt.datetime, end: dt.datetime) -> dict[str, Any]:
    """Weights seen per user across devices over ``[start, end)``.

    users (with a weights_version on the endpoint), multi_device_users (seen on two or more
    devices), conflict_users (multi-device users served more than one distinct weights_version
    that day). Counts only: no user id leaves this query, since the result reaches reports."""
    query = f"""
    WITH per_user AS (
        SELECT user_id,
               count(DISTINCT device_id) AS devices,
               count(DISTINCT weights_version) AS versions
        FROM {whispers_requests(export, start, end)}
        WHERE "timestamp" >= $lo AND "timestamp" < $hi
          AND user_id IS NOT NULL AND device_id IS NOT NULL AND weights_version IS NOT NULL
        GROUP BY user_id
    )
    SELECT count(*) AS users,
           count(*) FILTER (WHERE devices >= 2) AS multi_device_users,
           count(*) FILTER (WHERE devices >= 2 AND versions > 1) AS conflict_users
    FROM per_user
    """
    return _row(export.sql(query, {"lo": start, "hi": end}))


# ---------------------------------------------------------------------------------------
# telemetry and the Maya cue


def hourly_telemetry(export: Export, start: dt.datetime, end: dt.datetime) -> pd.DataFrame:
    """Events per UTC hour over ``[start, end)`` with zero-filled hours: hour, events, shown."""
    query = f"""
    WITH hours AS (
        SELECT unnest(generate_series($lo::TIMESTAMP, $hi::TIMESTAMP - INTERVAL 1 HOUR,
                                      INTERVAL 1 HOUR)) AS hour
    ),
    counts AS (
        SELECT hour, CAST(sum(events) AS BIGINT) AS events,
               CAST(sum(shown) AS BIGINT) AS shown
        FROM {day_events_source(export, start, end)} GROUP BY 1
    )
    SELECT h.hour, coalesce(c.events, 0) AS events, coalesce(c.shown, 0) AS shown
    FROM hours h LEFT JOIN counts c USING (hour)
    ORDER BY h.hour
    """
    return export.sql(query, {"lo": start, "hi": end})


def _active_users(export: Export, lo: dt.datetime, hi: dt.datetime) -> str:
    """SELECT of the distinct users with any telemetry event in ``[$lo, $hi)``: the day's
    table (:func:`day_events_source`, users of events other than app opens) and the users
    who opened the app that day (:data:`APP_OPENS_TABLE`) when both hold the window, else the
    telemetry."""
    if _holds_day(export, lo, hi) and _opens_of_the_day(export, lo, hi):
        return f"""SELECT user_id FROM {day_events_source(export, lo, hi)} AS e
            WHERE user_id IS NOT NULL
            UNION
            SELECT user_id FROM {APP_OPENS_TABLE} WHERE day_opens > 0"""
    return "SELECT DISTINCT user_id FROM telemetry WHERE created_at >= $lo AND created_at < $hi"


def treated_active_users(export: Export, start: dt.datetime, end: dt.datetime) -> int:
    """Users served the treatment at some time in ``[start, end)`` (an exposure row in the
    window, or the latest row before it) who also sent any telemetry event in the window."""
    exposures = exposures_source(export, end)
    query = f"""
    WITH before AS (
        SELECT user_id, arg_max(variant, exposed_at) AS variant
        FROM {exposures} WHERE exposed_at < $lo GROUP BY user_id
    ),
    treated AS (
        SELECT user_id FROM before WHERE variant = 'treatment'
        UNION
        SELECT user_id FROM {exposures}
        WHERE exposed_at >= $lo AND exposed_at < $hi AND variant = 'treatment'
    ),
    active AS ({_active_users(export, start, end)})
    SELECT count(*) FROM treated JOIN active USING (user_id)
    """
    return int(export.sql(query, {"lo": start, "hi": end}).iloc[0, 0])


def cue_cooldown(export: Export, start: dt.datetime, end: dt.datetime, *,
                 cooldown_minutes: float) -> dict[str, Any]:
    """Maya cue spacing over ``[start, end)``: cues, users, violations, min_gap_minutes.

    A violation is a ``maya_cue_fired`` event of a user that follows that user's previous cue
    by strictly less than ``cooldown_minutes`` (LAG per user; the previous cue may lie up to one
    cooldown before ``start``). The cues are read from :data:`REQUEST_EVENTS_TABLE` when it
    holds the lookback, one row per user and time with how many cues share it (``n``: the
    second and later of them follow the first by 0 minutes), else from the telemetry."""
    cooldown = dt.timedelta(minutes=float(cooldown_minutes))
    lookback = start - cooldown
    if _holds(export, _CUE_EVENTS, lookback, end):
        times = f"""SELECT user_id, t AS created_at, CAST(sum(cues) AS BIGINT) AS n
            FROM {REQUEST_EVENTS_TABLE}
            WHERE cues > 0 AND t >= $lookback AND t < $hi GROUP BY 1, 2"""
    else:
        times = """SELECT user_id, created_at, count(*) AS n FROM telemetry
            WHERE event_type = 'maya_cue_fired' AND created_at >= $lookback
              AND created_at < $hi
            GROUP BY 1, 2"""
    query = f"""
    WITH cues AS (
        SELECT user_id, created_at, n,
               lag(created_at) OVER (PARTITION BY user_id ORDER BY created_at) AS prev
        FROM ({times}) AS t
    ),
    today AS (
        SELECT *, epoch_us(created_at) - epoch_us(prev) AS gap_us
        FROM cues WHERE created_at >= $lo
    )
    SELECT CAST(coalesce(sum(n), 0) AS BIGINT) AS cues,
           count(DISTINCT user_id) AS users,
           CAST(count(*) FILTER (WHERE gap_us < $cooldown_us)
                + coalesce(sum(n - 1) FILTER (WHERE $cooldown_us > 0), 0) AS BIGINT)
               AS violations,
           least(min(gap_us), CASE WHEN max(n) > 1 THEN 0 END) / 60e6 AS min_gap_minutes
    FROM today
    """
    return _row(export.sql(query, {"lo": start, "hi": end, "lookback": lookback,
                                   "cooldown_us": cooldown / dt.timedelta(microseconds=1)}))


# ---------------------------------------------------------------------------------------
# support tickets


def ticket_counts(export: Export, start: dt.datetime, end: dt.datetime) -> dict[str, Any]:
    """Tickets about whispers over ``[start, end)``: about_whispers, privacy (category
    'privacy'), critical_bugs (category 'bug' and priority 'critical'), with example ids."""
    query = """
    SELECT count(*) AS about_whispers,
           count(*) FILTER (WHERE category = 'privacy') AS privacy,
           count(*) FILTER (WHERE category = 'bug' AND priority = 'critical') AS critical_bugs
    FROM support_tickets
    WHERE about_whispers AND created_at >= $lo AND created_at < $hi
    """
    row = _row(export.sql(query, {"lo": start, "hi": end}))
    # the first ids of each kind in time order (ties by id), at most TICKET_EXAMPLES rows
    examples = export.sql(f"""
    SELECT kind, ticket_id FROM (
        SELECT CASE WHEN category = 'privacy' THEN 'privacy_ids' ELSE 'critical_bug_ids' END
                   AS kind, ticket_id, created_at
        FROM support_tickets
        WHERE about_whispers AND created_at >= $lo AND created_at < $hi
          AND (category = 'privacy' OR (category = 'bug' AND priority = 'critical'))
    )
    QUALIFY row_number() OVER (PARTITION BY kind ORDER BY created_at, ticket_id)
            <= {TICKET_EXAMPLES}
    ORDER BY kind, created_at, ticket_id
    """, {"lo": start, "hi": end})
    for key in ("privacy_ids", "critical_bug_ids"):
        row[key] = [str(i) for i in examples.loc[examples["kind"] == key, "ticket_id"]]
    return row


# ---------------------------------------------------------------------------------------
# database health


def db_baseline(export: Export, before: dt.datetime) -> dict[str, Any]:
    """Pre-rollout database baseline: minutes and median of ``p95_query_ms`` before ``before``."""
    query = """
    SELECT count(*) AS minutes, median(p95_query_ms) AS median_p95_ms
    FROM db_metrics WHERE "timestamp" < $before
    """
    return _row(export.sql(query, {"before": before}))


_DB_MINUTES_CTE = """
db AS (
    SELECT date_trunc('minute', "timestamp") AS minute, max(p95_query_ms) AS p95_query_ms
    FROM db_metrics WHERE "timestamp" >= $lo AND "timestamp" < $hi
    GROUP BY 1
)"""


def db_minute_series(export: Export, start: dt.datetime, end: dt.datetime) -> pd.DataFrame:
    """Per-minute ``p95_query_ms`` over ``[start, end)`` (the max if a minute has several rows)."""
    query = f"WITH {_DB_MINUTES_CTE} SELECT minute, p95_query_ms FROM db ORDER BY minute"
    return export.sql(query, {"lo": start, "hi": end})


def db_runs(export: Export, start: dt.datetime, end: dt.datetime, *, limit_ms: float,
            lookback_minutes: int = 60) -> pd.DataFrame:
    """Runs of consecutive observed minutes with ``p95_query_ms`` strictly above ``limit_ms``
    (minutes without a row neither extend nor break a run), reaching into ``[start, end)``;
    same columns as :func:`minute_runs`."""
    query = f"""
    WITH {_DB_MINUTES_CTE},
    flagged AS (SELECT minute, p95_query_ms AS value, p95_query_ms > $limit AS above FROM db),
    {_ISLANDS}
    """
    return export.sql(query, {"lo": start - dt.timedelta(minutes=lookback_minutes), "hi": end,
                              "day_lo": start, "limit": float(limit_ms)})


# ---------------------------------------------------------------------------------------
# daily series for charts


#: The telemetry a report reads, grouped once (:func:`materialize_request_events`): the
#: whispers_shown / whispers_used events per UTC day, user and request, and every event of the
#: report's day (per hour) and the Maya cues of its cooldown lookback.
REQUEST_EVENTS_TABLE = "wl_request_events"
#: Keys of :data:`_MADE` for the parts of :data:`REQUEST_EVENTS_TABLE` beyond the whispers
#: events: every event from the day's start, the Maya cues from the cooldown lookback.
_DAY_EVENTS = REQUEST_EVENTS_TABLE + ":day"
_CUE_EVENTS = REQUEST_EVENTS_TABLE + ":cues"
#: Every user's app opens over the activity masks' span, grouped once per user
#: (:func:`whispers_lab.queries.experiment.materialize_randomised`): ``user_id, m`` (active
#: days), ``o`` (state slots) and ``day_opens`` (app opens on the span's last day).
APP_OPENS_TABLE = "wl_app_opens"
#: Key of :data:`_MADE` for the day :data:`APP_OPENS_TABLE`'s ``day_opens`` counts.
_DAY_OPENS = APP_OPENS_TABLE + ":day"


def materialize_request_events(export: Export, lo: dt.datetime, hi: dt.datetime, *,
                               day_lo: dt.datetime | None = None,
                               cue_lo: dt.datetime | None = None) -> None:
    """Create the temporary table :data:`REQUEST_EVENTS_TABLE` from one reading of the
    telemetry: the whispers_shown and whispers_used events of ``[lo, hi)``, every event of
    ``[day_lo, hi)`` (the report's day) and the ``maya_cue_fired`` events of ``[cue_lo, hi)``
    (its cooldown lookback), grouped per ``d`` (the UTC day), ``user_id, request_id`` and
    ``t``: a cue's time from ``cue_lo`` on, the UTC hour of any other event from ``day_lo`` on,
    else NULL; with the counts ``shown, used, cues`` and ``events`` (all types). The day's app
    opens are counted per hour only (``user_id`` and ``request_id`` NULL): who opened the app
    that day is :data:`APP_OPENS_TABLE`'s ``day_opens``, from the reading of the app opens for
    the activity masks, so the many (user, hour) groups they would make are not made twice.

    Its readers: the daily series and the CTR statistic's clustered sums (the groups with a
    whispers event, :func:`request_events_source`), the day's events per hour
    (:func:`hourly_telemetry`), its active users (:func:`treated_active_users`, with
    :data:`APP_OPENS_TABLE`) and the cue spacing (:func:`cue_cooldown`). Each reads it only for
    a window it holds, else the telemetry. ``day_lo`` / ``cue_lo`` None: no day's or cue rows
    beyond the whispers events. Its rows are in no particular order (``ordered=False``): every
    reader aggregates them (the cue spacing orders each user's cue times itself)."""
    day_lo = hi if day_lo is None else max(day_lo, lo)
    cue_lo = hi if cue_lo is None else max(min(cue_lo, day_lo), lo)
    params = {"lo": lo, "hi": hi, "day_lo": day_lo, "cue_lo": cue_lo}

    def grouped(since: str, start: str | None = None) -> str:
        # the telemetry to $hi: its whispers events from ``since``, the day's events and the
        # cues as above; ``start``: the earlier of ``since`` and $cue_lo (default ``since``),
        # where the reading starts
        return f"""
        SELECT date_trunc('day', created_at) AS d,
               CASE WHEN event_type = 'app_open' THEN NULL ELSE user_id END AS user_id,
               CASE WHEN event_type = 'app_open' THEN NULL ELSE request_id END AS request_id,
               CASE WHEN event_type = 'maya_cue_fired' AND created_at >= $cue_lo THEN created_at
                    WHEN created_at >= $day_lo THEN date_trunc('hour', created_at) END AS t,
               count(*) FILTER (WHERE event_type = 'whispers_shown') AS shown,
               count(*) FILTER (WHERE event_type = 'whispers_used') AS used,
               count(*) FILTER (WHERE event_type = 'maya_cue_fired') AS cues,
               count(*) AS events
        FROM telemetry
        WHERE created_at >= {start or since} AND created_at < $hi
          AND ((event_type IN ('whispers_shown', 'whispers_used') AND created_at >= {since})
               OR created_at >= $day_lo
               OR (event_type = 'maya_cue_fired' AND created_at >= $cue_lo))
        GROUP BY 1, 2, 3, 4"""

    _make_request_events(export, grouped, params)
    _made(export, REQUEST_EVENTS_TABLE, lo, hi)
    _made(export, _DAY_EVENTS, day_lo, hi)
    _made(export, _CUE_EVENTS, cue_lo, hi)


def _make_request_events(export: Export, grouped: Any, params: dict[str, Any]) -> None:
    """Create :data:`REQUEST_EVENTS_TABLE` (``grouped(since, start)``: its query to ``$hi``,
    whispers events from ``since``), reading what an earlier report carried (:mod:`.carried`)
    when it can.

    A day before the report's own holds its whispers events grouped without a time (and the
    cues of the cooldown's lookback, each with its time): those rows, a function of that
    day's telemetry alone, are what a report keeps, for every day through its own (whose
    rows, per hour, it sums to the same shape). The next day's report reads them and only its
    own day and the lookback's cues from the telemetry, instead of every day of the rollout
    (until stop 42 the kept rows ended where the lookback's day began: three days read). A
    report made again reads what the day before kept, as the first time."""
    lo, day_lo, hi = (pd.Timestamp(params[k]) for k in ("lo", "day_lo", "hi"))
    until = day_lo.floor("D")  # what is read: the days before the report's day
    keys = carried.own_and_day_befores(export, "request_events", (), params["lo"],
                                       until.to_pydatetime())
    cue_lo = pd.Timestamp(params["cue_lo"])
    ways: list[tuple[str, Any]] = []
    for end, key in keys.items():
        found = carried.source(key)
        if found is not None:
            joined = f"SELECT * FROM {found} UNION ALL {grouped('$since', '$start')}"
            ways.append((joined, (carried.bound(joined, params) or {})
                         | {"since": end.to_pydatetime(),
                            "start": min(end, cue_lo).to_pydatetime()}))
    ways.append((grouped("$lo"), params))
    taken = carried.create(export, REQUEST_EVENTS_TABLE, (REQUEST_EVENTS_TABLE, *params.values()),
                           ways, ordered=False)
    # what the next day's report reads: every whole day to $hi, without a time
    through = hi.floor("D")
    kept = (carried.content_key(export, "request_events", (), lo.to_pydatetime(),
                                through.to_pydatetime())
            if through >= until else None)
    if kept is not None and taken >= 0 and carried.source(kept) is None:  # (not made before)
        carried.keep(export, _untimed_rows(until, through), kept)


def _untimed_rows(until: pd.Timestamp, through: pd.Timestamp) -> str:
    """:data:`REQUEST_EVENTS_TABLE`'s rows of the days before ``through`` as a report whose
    day starts at ``through`` makes them: the whispers events per day, user and request
    without a time. Before ``until`` they are the rows without a time as they are (the cues'
    rows have one); from ``until`` (the report's day, grouped per hour with every event) the
    whispers events' counts summed over the hours."""
    def ts(t: pd.Timestamp) -> str:
        return f"TIMESTAMP '{t.isoformat(sep=' ')}'"

    return f"""(
        SELECT * FROM {REQUEST_EVENTS_TABLE} WHERE d < {ts(until)} AND t IS NULL
        UNION ALL
        SELECT d, user_id, request_id, CAST(NULL AS TIMESTAMP) AS t,
               CAST(sum(shown) AS BIGINT) AS shown, CAST(sum(used) AS BIGINT) AS used,
               CAST(0 AS BIGINT) AS cues, CAST(sum(shown) + sum(used) AS BIGINT) AS events
        FROM {REQUEST_EVENTS_TABLE}
        WHERE d >= {ts(until)} AND d < {ts(through)}
        GROUP BY d, user_id, request_id
        HAVING sum(shown) + sum(used) > 0)"""


def _on_the_hour(t: dt.datetime) -> bool:
    return pd.Timestamp(t) == pd.Timestamp(t).floor("h")


def _holds_day(export: Export, lo: dt.datetime, hi: dt.datetime) -> bool:
    """Whether :data:`REQUEST_EVENTS_TABLE` holds every event of ``[lo, hi)`` (whole hours)."""
    return _holds(export, _DAY_EVENTS, lo, hi) and _on_the_hour(lo) and _on_the_hour(hi)


def day_events_source(export: Export, lo: dt.datetime, hi: dt.datetime) -> str:
    """A FROM clause of the telemetry's events in ``[$lo, $hi)`` per hour, user and request:
    ``hour, user_id, request_id, shown, events`` (counts). Read from
    :data:`REQUEST_EVENTS_TABLE` when it holds every event of the window (whole hours; its
    app opens are there per hour, without a user), else from the telemetry (a query naming it
    binds ``$lo`` and ``$hi`` to the window)."""
    if _holds_day(export, lo, hi):
        return f"""(SELECT date_trunc('hour', t) AS hour, user_id, request_id, shown, events
            FROM {REQUEST_EVENTS_TABLE} WHERE t >= $lo AND t < $hi)"""
    return """(SELECT date_trunc('hour', created_at) AS hour, user_id, request_id,
            count(*) FILTER (WHERE event_type = 'whispers_shown') AS shown,
            count(*) AS events
        FROM telemetry WHERE created_at >= $lo AND created_at < $hi
        GROUP BY 1, 2, 3)"""


def made_day_opens(export: Export, lo: dt.datetime, hi: dt.datetime) -> None:
    """Record that :data:`APP_OPENS_TABLE` was just made with ``day_opens`` counting
    ``[lo, hi)`` (by :func:`whispers_lab.queries.experiment.materialize_randomised`)."""
    _made(export, _DAY_OPENS, lo, hi)


def _opens_of_the_day(export: Export, lo: dt.datetime, hi: dt.datetime) -> bool:
    """Whether :data:`APP_OPENS_TABLE`'s ``day_opens`` counts the app opens of ``[lo, hi)``."""
    made = _MADE.get(export, {}).get(_DAY_OPENS)
    return made is not None and made == (lo, hi)


def day_app_opens_source(export: Export, lo: dt.datetime, hi: dt.datetime) -> str:
    """A FROM clause of the app opens per user in ``[$lo, $hi)``: ``user_id, opens``, from
    :data:`APP_OPENS_TABLE` when it counted that day, else from the telemetry."""
    if _opens_of_the_day(export, lo, hi):
        return f"(SELECT user_id, day_opens AS opens FROM {APP_OPENS_TABLE} WHERE day_opens > 0)"
    return """(SELECT user_id, count(*) AS opens FROM telemetry
        WHERE created_at >= $lo AND created_at < $hi AND event_type = 'app_open'
        GROUP BY user_id)"""


def _midnight(t: dt.datetime) -> bool:
    return pd.Timestamp(t) == pd.Timestamp(t).normalize()


def request_events_source(export: Export, lo: dt.datetime, hi: dt.datetime) -> str:
    """A FROM clause of the per-request counts of the whispers events
    over ``[lo, hi)``: ``user_id, request_id, shown, used``. Read from
    :data:`REQUEST_EVENTS_TABLE` when it was made for a window that holds this one and the
    window is whole UTC days; else from the telemetry itself."""
    if _holds(export, REQUEST_EVENTS_TABLE, lo, hi) and _midnight(lo) and _midnight(hi):
        # (the table's other groups hold no whispers event; a request's events may be split
        # over groups by their hour or a cue, hence the sums)
        return f"""(SELECT user_id, request_id, sum(shown) AS shown, sum(used) AS used
            FROM {REQUEST_EVENTS_TABLE}
            WHERE d >= $lo AND d < $hi AND (shown > 0 OR used > 0)
            GROUP BY user_id, request_id)"""
    return """(SELECT user_id, request_id,
           count(*) FILTER (WHERE event_type = 'whispers_shown') AS shown,
           count(*) FILTER (WHERE event_type = 'whispers_used') AS used
        FROM telemetry
        WHERE created_at >= $lo AND created_at < $hi
          AND event_type IN ('whispers_shown', 'whispers_used')
        GROUP BY user_id, request_id)"""


def daily_series(export: Export, start: dt.datetime, end: dt.datetime) -> pd.DataFrame:
    """One row per UTC day from ``start`` (day 0) to ``end`` (exclusive), zero-filled:
    day, date, treatment_exposures, control_exposures, treatment_users, control_users,
    impressions (whispers_shown), clicks (whispers_used), ctr (clicks / impressions, the plan's
    dashboard definition), shown_users (users with a whispers_shown event), requests,
    request_users (users with a whispers request), error_rate, weight_requests, fallbacks,
    fallback_rate. The user counts let a chart withhold cells from fewer than
    ``criteria.min_group_users`` users.

    Each day's row is a function of that day's exposures, telemetry and API rows alone, so a
    report keeps its rows (:mod:`.carried`, named by those days' contents) and the next day's
    report reads them and computes its own day's row only; a report made again reads all of
    its own."""
    if not (_holds(export, REQUEST_EVENTS_TABLE, start, end) and _midnight(start)):
        materialize_request_events(export, start, end)
    keys = carried.own_and_day_befores(export, "daily_series",
                                       (pd.Timestamp(start).isoformat(),), start,
                                       pd.Timestamp(end).floor("D").to_pydatetime(),
                                       _DAILY_TABLES)
    for until, key in keys.items():
        rows = carried.read_frame(export, key)
        if rows is None:
            continue
        if until >= pd.Timestamp(end):
            return rows
        out = pd.concat([rows, _daily_rows(export, start, until.to_pydatetime(), end)],
                        ignore_index=True)
        break
    else:
        out = _daily_rows(export, start, start, end)
    own = next(iter(keys.values()), None) if _midnight(end) else None
    if own is not None and carried.source(own) is None:
        carried.keep_frame(export, out, own)
    return out


#: The tables a day's row of :func:`daily_series` is made from.
_DAILY_TABLES = ("exposures", "telemetry", "api_logs")


def _daily_rows(export: Export, start: dt.datetime, lo: dt.datetime,
                end: dt.datetime) -> pd.DataFrame:
    """:func:`daily_series`'s rows of the days from ``lo`` to ``end``, numbered from
    ``start`` (day 0)."""
    query = f"""
    WITH days AS (
        SELECT unnest(generate_series($lo::TIMESTAMP, $hi::TIMESTAMP - INTERVAL 1 DAY,
                                      INTERVAL 1 DAY)) AS d
    ),
    -- per user and day first as well: one grouping instead of one per filtered distinct count
    ex_user AS (
        SELECT date_trunc('day', exposed_at) AS d, user_id,
               count(*) FILTER (WHERE variant = 'treatment') AS n_t,
               count(*) FILTER (WHERE variant = 'control') AS n_c
        FROM {exposures_source(export, end)}
        WHERE exposed_at >= $lo AND exposed_at < $hi GROUP BY 1, 2
    ),
    ex AS (
        SELECT d, CAST(sum(n_t) AS BIGINT) AS treatment_exposures,
               CAST(sum(n_c) AS BIGINT) AS control_exposures,
               count(*) FILTER (WHERE n_t > 0 AND user_id IS NOT NULL) AS treatment_users,
               count(*) FILTER (WHERE n_c > 0 AND user_id IS NOT NULL) AS control_users
        FROM ex_user GROUP BY d
    ),
    -- per user and day first: grouping the shown and used events twice is ~3x cheaper than a
    -- filtered count(DISTINCT user_id) over all of the telemetry; from the per-request
    -- counts, which the CTR statistic reads again
    tel_user AS (
        SELECT d, user_id, sum(shown) AS n_shown, sum(used) AS n_used
        FROM {REQUEST_EVENTS_TABLE}
        WHERE (shown > 0 OR used > 0) AND d >= $lo AND d < $hi GROUP BY 1, 2
    ),
    tel AS (
        SELECT d, CAST(sum(n_shown) AS BIGINT) AS impressions,
               CAST(sum(n_used) AS BIGINT) AS clicks,
               count(*) FILTER (WHERE n_shown > 0) AS shown_users
        FROM tel_user GROUP BY d
    ),
    api AS (
        SELECT date_trunc('day', "timestamp") AS d, count(*) AS requests,
               count(DISTINCT user_id) AS request_users,
               count(*) FILTER (WHERE status >= {ERROR_STATUS}) AS errors,
               count(weight_source) AS weight_requests,
               count(*) FILTER (WHERE weight_source = 'fallback') AS fallbacks
        FROM {whispers_requests(export, lo, end)}
        WHERE "timestamp" >= $lo AND "timestamp" < $hi GROUP BY 1
    )
    SELECT date_diff('day', $start::TIMESTAMP, days.d) AS day,
           CAST(days.d AS DATE) AS date,
           coalesce(treatment_exposures, 0) AS treatment_exposures,
           coalesce(control_exposures, 0) AS control_exposures,
           coalesce(treatment_users, 0) AS treatment_users,
           coalesce(control_users, 0) AS control_users,
           coalesce(impressions, 0) AS impressions,
           coalesce(clicks, 0) AS clicks,
           clicks / nullif(impressions, 0) AS ctr,
           coalesce(shown_users, 0) AS shown_users,
           coalesce(requests, 0) AS requests,
           coalesce(request_users, 0) AS request_users,
           errors / nullif(requests, 0) AS error_rate,
           coalesce(weight_requests, 0) AS weight_requests,
           coalesce(fallbacks, 0) AS fallbacks,
           fallbacks / nullif(weight_requests, 0) AS fallback_rate
    FROM days
    LEFT JOIN ex ON ex.d = days.d
    LEFT JOIN tel ON tel.d = days.d
    LEFT JOIN api ON api.d = days.d
    ORDER BY days.d
    """
    return export.sql(query, {"start": start, "lo": lo, "hi": end})
