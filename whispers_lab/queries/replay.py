"""Replay SQL: logged candidates joined with their clicks, user, time and survey feedback.

A *click* is a ``whispers_used`` telemetry event joined to a candidate on
``(request_id, whisper_id = memory_id)``; several events for one pair count as one click
(``n_used`` keeps the count). A request's time and user come from ``api_logs`` (the request's
own row), falling back to its ``whispers_shown`` telemetry when the API row is absent.

Feedback: the ``feedback`` table is a per-user survey with no request or memory id, so it cannot
label individual memories. Each request gets the user's first survey answer submitted within
``feedback_window_hours`` after the request (``feedback_relevant``, NULL when there is none);
:mod:`whispers_lab.replay.engine` uses it as a request-level label (see ``docs/replay.md``).

Dates: ``date_from`` / ``date_to`` are inclusive UTC calendar dates on the request time.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd

from ..contract import WHISPERS_ENDPOINT
from ..export import Export, sql_string

#: Columns of :func:`replay_candidates`, in order.
REPLAY_COLUMNS: tuple[str, ...] = (
    "request_id", "memory_id", "context_similarity", "recency_hours", "use_count",
    "last_shown_hours", "pinned", "logged_score", "shown_position", "propensity", "click",
    "n_used", "user_id", "request_ts", "weights_version", "feedback_relevant",
)


def _as_date(value: Any) -> dt.date | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value))


def _requests_cte(date_from: Any, date_to: Any) -> tuple[str, list[Any]]:
    """The ``req`` CTE (request_id, request_ts, user_id, weights_version) and its parameters."""
    lo, hi = _as_date(date_from), _as_date(date_to)
    where, params = [], []
    if lo is not None:
        where.append("request_ts >= ?")
        params.append(dt.datetime.combine(lo, dt.time()))
    if hi is not None:
        where.append("request_ts < ?")
        params.append(dt.datetime.combine(hi + dt.timedelta(days=1), dt.time()))
    filt = ("WHERE " + " AND ".join(where)) if where else ""
    sql = f"""
    cand_req AS (SELECT DISTINCT request_id FROM ranking_candidates),
    api AS (
        SELECT request_id, min("timestamp") AS ts, any_value(user_id) AS user_id,
               any_value(weights_version) AS weights_version
        FROM api_logs WHERE endpoint = {sql_string(WHISPERS_ENDPOINT)}
        GROUP BY request_id
    ),
    shown AS (
        SELECT request_id, min(created_at) AS ts, any_value(user_id) AS user_id
        FROM telemetry WHERE event_type = 'whispers_shown' AND request_id IS NOT NULL
        GROUP BY request_id
    ),
    req_all AS (
        SELECT c.request_id, coalesce(a.ts, s.ts) AS request_ts,
               coalesce(a.user_id, s.user_id) AS user_id, a.weights_version
        FROM cand_req c LEFT JOIN api a USING (request_id) LEFT JOIN shown s USING (request_id)
    ),
    req AS (SELECT * FROM req_all {filt})"""
    return sql, params


def replay_candidates(exp: Export, *, date_from: Any = None, date_to: Any = None,
                      feedback_window_hours: float = 24.0) -> pd.DataFrame:
    """One row per logged candidate with its click, user, request time and feedback label.

    Rows are ordered by ``request_id`` then ``memory_id`` (the replay engine needs each
    request's rows contiguous). ``click`` is 1 if the candidate has a ``whispers_used`` event.
    """
    req_sql, params = _requests_cte(date_from, date_to)
    hours = float(feedback_window_hours)
    query = f"""
    WITH {req_sql},
    used AS (
        SELECT request_id, whisper_id AS memory_id, count(*) AS n_used
        FROM telemetry
        WHERE event_type = 'whispers_used' AND request_id IS NOT NULL AND whisper_id IS NOT NULL
        GROUP BY ALL
    ),
    fb AS (
        SELECT r.request_id,
               CASE WHEN f.submitted_at < r.request_ts + to_microseconds(CAST({hours} * 3600e6 AS BIGINT))
                    THEN f.relevant END AS feedback_relevant
        FROM req r ASOF LEFT JOIN feedback f
          ON r.user_id = f.user_id AND f.submitted_at >= r.request_ts
    )
    SELECT c.request_id, c.memory_id, c.context_similarity, c.recency_hours, c.use_count,
           c.last_shown_hours, c.pinned, c.logged_score, c.shown_position, c.propensity,
           CAST(coalesce(u.n_used, 0) > 0 AS INTEGER) AS click,
           coalesce(u.n_used, 0) AS n_used,
           r.user_id, r.request_ts, r.weights_version, fb.feedback_relevant
    FROM ranking_candidates c
    JOIN req r USING (request_id)
    LEFT JOIN used u ON u.request_id = c.request_id AND u.memory_id = c.memory_id
    LEFT JOIN fb ON fb.request_id = c.request_id
    ORDER BY c.request_id, c.memory_id
    """
    return exp.sql(query, params)


def replay_quality(exp: Export, *, date_from: Any = None, date_to: Any = None) -> dict[str, Any]:
    """Counts that qualify a replay: clicks that match no candidate or an unshown one, position
    disagreements, requests without time or user, and propensity coverage of shown rows."""
    req_sql, params = _requests_cte(date_from, date_to)
    query = f"""
    WITH {req_sql},
    used AS (
        SELECT request_id, whisper_id AS memory_id, min(position) AS used_position
        FROM telemetry
        WHERE event_type = 'whispers_used' AND request_id IS NOT NULL AND whisper_id IS NOT NULL
        GROUP BY ALL
    ),
    used_in AS (SELECT u.* FROM used u JOIN req USING (request_id))
    SELECT
        (SELECT count(*) FROM req) AS requests,
        (SELECT count(*) FROM req_all WHERE request_ts IS NULL) AS requests_without_time,
        (SELECT count(*) FROM req WHERE user_id IS NULL) AS requests_without_user,
        (SELECT count(*) FROM used_in) AS clicked_pairs,
        (SELECT count(*) FROM used_in u ANTI JOIN ranking_candidates c
            ON c.request_id = u.request_id AND c.memory_id = u.memory_id) AS clicks_without_candidate,
        (SELECT count(*) FROM used_in u JOIN ranking_candidates c
            ON c.request_id = u.request_id AND c.memory_id = u.memory_id
            WHERE c.shown_position IS NULL) AS clicks_on_unshown,
        (SELECT count(*) FROM used_in u JOIN ranking_candidates c
            ON c.request_id = u.request_id AND c.memory_id = u.memory_id
            WHERE c.shown_position IS NOT NULL AND u.used_position IS DISTINCT FROM c.shown_position)
            AS clicks_position_mismatch,
        (SELECT count(*) FROM ranking_candidates c JOIN req USING (request_id)
            WHERE c.shown_position IS NOT NULL) AS shown_rows,
        (SELECT count(*) FROM ranking_candidates c JOIN req USING (request_id)
            WHERE c.shown_position IS NOT NULL AND c.propensity IS NULL) AS shown_without_propensity
    """
    row = exp.sql(query, params)
    return {k: (None if pd.isna(v) else int(v)) for k, v in row.iloc[0].items()}
