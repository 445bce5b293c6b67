"""Rollback confirmation SQL: what the export shows around the moment whispers were switched off.

All aggregation happens here (per minute, per window); :mod:`whispers_lab.rollback` judges the
small results. Windows are half-open ``[start, end)`` in naive UTC.

* :func:`coverage_end`: where the export's traffic ends (the earlier of the last ``api_logs``
  row and the last ``telemetry`` event: both keep flowing after a rollback, because the recap
  page and app opens do not depend on whispers, so an export that stops early cannot pass for
  "traffic stopped").
* :func:`window_stats`: one window's whispers requests, ``whispers_shown`` events and the recap
  endpoint's requests, errors and latency sufficient statistics (n, sum, sum of squares).
* :func:`minute_series`: the same per minute, zero-filled, for the chart.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd

from ..contract import WHISPERS_ENDPOINT
from ..export import Export
from .monitoring import ERROR_STATUS, _row


def coverage_end(export: Export) -> dt.datetime | None:
    """The earlier of the last api_logs timestamp and the last telemetry event (None if either
    table is empty)."""
    value = export.scalar('SELECT least((SELECT max("timestamp") FROM api_logs), '
                          '(SELECT max(created_at) FROM telemetry))')
    return None if value is None else pd.Timestamp(value).to_pydatetime()


def window_stats(export: Export, start: dt.datetime, end: dt.datetime, *,
                 recap_endpoint: str) -> dict[str, Any]:
    """Aggregates of ``[start, end)``: whispers_requests, whispers_users, first_whispers and
    last_whispers (timestamps), shown_events, recap_requests, recap_errors, recap_sum_ms,
    recap_sumsq_ms (for means and variances)."""
    query = f"""
    WITH api AS (
        SELECT count(*) FILTER (WHERE endpoint = $whispers) AS whispers_requests,
               count(DISTINCT user_id) FILTER (WHERE endpoint = $whispers) AS whispers_users,
               min("timestamp") FILTER (WHERE endpoint = $whispers) AS first_whispers,
               max("timestamp") FILTER (WHERE endpoint = $whispers) AS last_whispers,
               count(*) FILTER (WHERE endpoint = $recap) AS recap_requests,
               count(*) FILTER (WHERE endpoint = $recap AND status >= {ERROR_STATUS})
                   AS recap_errors,
               coalesce(sum(duration_ms) FILTER (WHERE endpoint = $recap), 0) AS recap_sum_ms,
               coalesce(sum(duration_ms * duration_ms) FILTER (WHERE endpoint = $recap), 0)
                   AS recap_sumsq_ms
        FROM api_logs WHERE "timestamp" >= $lo AND "timestamp" < $hi
    ),
    tel AS (
        SELECT count(*) FILTER (WHERE event_type = 'whispers_shown') AS shown_events
        FROM telemetry WHERE created_at >= $lo AND created_at < $hi
    )
    SELECT * FROM api, tel
    """
    row = _row(export.sql(query, {"whispers": WHISPERS_ENDPOINT, "recap": recap_endpoint,
                                  "lo": start, "hi": end}))
    for key in ("first_whispers", "last_whispers"):
        if row.get(key) is not None:
            row[key] = pd.Timestamp(row[key]).to_pydatetime()
    return row


def minute_series(export: Export, start: dt.datetime, end: dt.datetime, *,
                  recap_endpoint: str) -> pd.DataFrame:
    """One row per minute of ``[start, end)`` (zero-filled): minute, whispers_requests,
    shown_events, recap_requests, recap_errors, recap_error_rate, recap_avg_ms."""
    query = f"""
    WITH minutes AS (
        SELECT unnest(generate_series($lo::TIMESTAMP, $hi::TIMESTAMP - INTERVAL 1 MINUTE,
                                      INTERVAL 1 MINUTE)) AS minute
    ),
    api AS (
        SELECT date_trunc('minute', "timestamp") AS minute,
               count(*) FILTER (WHERE endpoint = $whispers) AS whispers_requests,
               count(*) FILTER (WHERE endpoint = $recap) AS recap_requests,
               count(*) FILTER (WHERE endpoint = $recap AND status >= {ERROR_STATUS})
                   AS recap_errors,
               avg(duration_ms) FILTER (WHERE endpoint = $recap) AS recap_avg_ms
        FROM api_logs WHERE "timestamp" >= $lo AND "timestamp" < $hi GROUP BY 1
    ),
    tel AS (
        SELECT date_trunc('minute', created_at) AS minute,
               count(*) FILTER (WHERE event_type = 'whispers_shown') AS shown_events
        FROM telemetry WHERE created_at >= $lo AND created_at < $hi GROUP BY 1
    )
    SELECT m.minute,
           coalesce(a.whispers_requests, 0) AS whispers_requests,
           coalesce(t.shown_events, 0) AS shown_events,
           coalesce(a.recap_requests, 0) AS recap_requests,
           coalesce(a.recap_errors, 0) AS recap_errors,
           a.recap_errors / nullif(a.recap_requests, 0) AS recap_error_rate,
           a.recap_avg_ms
    FROM minutes m LEFT JOIN api a USING (minute) LEFT JOIN tel t USING (minute)
    ORDER BY m.minute
    """
    if end <= start:
        end = start + dt.timedelta(minutes=1)
    return export.sql(query, {"whispers": WHISPERS_ENDPOINT, "recap": recap_endpoint,
                              "lo": start, "hi": end})
