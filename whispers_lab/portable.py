"""Portable metric queries: written once in the plan's own SQL dialect (PostgreSQL, as in the
seed plan's monitoring dashboard) and transpiled with SQLGlot for the engine at hand.

DuckDB runs them here; the same text transpiled for BigQuery, Snowflake, Spark or Trino is what a
warehouse runs when one machine is no longer enough (see docs/scale.md). Window bounds are
rendered from ``datetime`` objects only, never from user text, so nothing can be injected.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

import pandas as pd
import sqlglot

from .contract import WHISPERS_ENDPOINT

Dialect = Literal["duckdb", "bigquery", "snowflake", "spark", "trino", "postgres"]
SOURCE_DIALECT = "postgres"

#: The seed plan's dashboard queries, with the "last hour / last 7 days" window made explicit.
QUERIES: dict[str, str] = {
    "api_performance": f"""
        SELECT
          date_trunc('minute', timestamp) AS minute,
          count(*) AS requests,
          avg(duration_ms) AS avg_duration,
          count(*) FILTER (WHERE status >= 400) AS errors
        FROM api_logs
        WHERE endpoint = '{WHISPERS_ENDPOINT}'
          AND timestamp >= {{start}} AND timestamp < {{end}}
        GROUP BY 1 ORDER BY 1 DESC""",
    "user_engagement": """
        SELECT
          date_trunc('day', created_at) AS day,
          count(DISTINCT user_id) AS active_users,
          count(*) FILTER (WHERE event_type = 'whispers_shown') AS impressions,
          count(*) FILTER (WHERE event_type = 'whispers_used') AS clicks
        FROM telemetry
        WHERE created_at >= {start} AND created_at < {end}
        GROUP BY 1 ORDER BY 1 DESC""",
}


def _literal(when: dt.datetime) -> str:
    if not isinstance(when, dt.datetime):
        raise TypeError(f"window bounds must be datetime objects, got {type(when).__name__}")
    if when.tzinfo is not None:
        when = when.astimezone(dt.UTC).replace(tzinfo=None)
    return f"TIMESTAMP '{when:%Y-%m-%d %H:%M:%S}'"


def metric_sql(name: str, start: dt.datetime, end: dt.datetime, dialect: Dialect = "duckdb") -> str:
    """The named metric query for ``[start, end)`` (UTC), transpiled to ``dialect``."""
    try:
        template = QUERIES[name]
    except KeyError:
        raise KeyError(f"unknown metric query {name!r} (known: {', '.join(QUERIES)})") from None
    source = template.format(start=_literal(start), end=_literal(end))
    return sqlglot.transpile(source, read=SOURCE_DIALECT, write=dialect, pretty=True)[0]


def run_metric(export, name: str, start: dt.datetime, end: dt.datetime) -> pd.DataFrame:
    """Run a portable metric query on an opened export through its DuckDB transpilation."""
    return export.sql(metric_sql(name, start, end, "duckdb"))
