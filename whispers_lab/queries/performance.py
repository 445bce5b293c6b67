"""Post-rollout performance SQL: where the time of ``/api/whispers/context`` goes.

Each served request (an ``api_logs`` row of the endpoint with a ``ranking_ms`` and logged
candidates, status < 400) is joined to its candidate count and shown items
(``ranking_candidates``). Everything is aggregated here; :mod:`whispers_lab.performance`
works on the small results. ``rest_ms = duration_ms - ranking_ms`` is the time outside the
ranker (fetching memories and weights, serialisation, network inside the data centre).
Windows are half-open UTC ``[start, end)``; ``None`` means unbounded.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd

from ..contract import WHISPERS_ENDPOINT
from ..export import Export

_REQUESTS = """
req AS (
    SELECT a.request_id, a."timestamp" AS ts, a.duration_ms, a.ranking_ms,
           a.duration_ms - a.ranking_ms AS rest_ms, c.n_candidates, c.n_shown
    FROM api_logs a
    JOIN (SELECT request_id, count(*) AS n_candidates, count(shown_position) AS n_shown
          FROM ranking_candidates GROUP BY request_id) c USING (request_id)
    WHERE a.endpoint = $endpoint AND a.status < 400 AND a.ranking_ms IS NOT NULL
      AND a."timestamp" >= $lo AND a."timestamp" < $hi
)"""

_FAR_PAST = dt.datetime(1970, 1, 1)
_FAR_FUTURE = dt.datetime(2200, 1, 1)


def _params(start: dt.datetime | None, end: dt.datetime | None) -> dict[str, Any]:
    return {"endpoint": WHISPERS_ENDPOINT, "lo": start or _FAR_PAST, "hi": end or _FAR_FUTURE}


def latency_profile(export: Export, start: dt.datetime | None = None,
                    end: dt.datetime | None = None) -> pd.DataFrame:
    """Sufficient statistics per (n_candidates, n_shown): requests, and sum and sum of squares
    of duration_ms, ranking_ms and rest_ms (what an OLS of latency on the two counts needs)."""
    query = f"""
    WITH {_REQUESTS}
    SELECT n_candidates, n_shown, count(*) AS requests,
           sum(duration_ms) AS sum_duration, sum(duration_ms * duration_ms) AS sumsq_duration,
           sum(ranking_ms) AS sum_ranking, sum(ranking_ms * ranking_ms) AS sumsq_ranking,
           sum(rest_ms) AS sum_rest, sum(rest_ms * rest_ms) AS sumsq_rest
    FROM req GROUP BY ALL ORDER BY n_candidates, n_shown
    """
    return export.sql(query, _params(start, end))


def breakdown(export: Export, by: str, start: dt.datetime | None = None,
              end: dt.datetime | None = None) -> pd.DataFrame:
    """Mean and p95 of duration, ranking and the rest, by ``n_candidates`` or UTC ``hour``
    (with the requests and mean candidates of each group)."""
    key = {"n_candidates": "n_candidates", "hour": "hour(ts)"}.get(by)
    if key is None:
        raise ValueError(f"breakdown by 'n_candidates' or 'hour', got {by!r}")
    query = f"""
    WITH {_REQUESTS}
    SELECT {key} AS {by}, count(*) AS requests, avg(n_candidates) AS mean_candidates,
           avg(duration_ms) AS mean_duration_ms, avg(ranking_ms) AS mean_ranking_ms,
           avg(rest_ms) AS mean_rest_ms,
           quantile_cont(duration_ms, 0.95) AS p95_duration_ms,
           quantile_cont(ranking_ms, 0.95) AS p95_ranking_ms,
           avg(ranking_ms) / nullif(avg(duration_ms), 0) AS ranking_share
    FROM req GROUP BY 1 ORDER BY 1
    """
    return export.sql(query, _params(start, end))


def slowest_minutes(export: Export, start: dt.datetime | None = None,
                    end: dt.datetime | None = None, *, min_requests: int = 2,
                    limit: int = 10) -> pd.DataFrame:
    """The ``limit`` minutes with the highest mean duration among minutes with at least
    ``min_requests`` served requests: minute, requests, mean duration / ranking / rest, mean
    candidates."""
    query = f"""
    WITH {_REQUESTS}
    SELECT date_trunc('minute', ts) AS minute, count(*) AS requests,
           avg(duration_ms) AS mean_duration_ms, avg(ranking_ms) AS mean_ranking_ms,
           avg(rest_ms) AS mean_rest_ms, avg(n_candidates) AS mean_candidates
    FROM req GROUP BY 1 HAVING count(*) >= $min_requests
    ORDER BY mean_duration_ms DESC, minute LIMIT $limit
    """
    return export.sql(query, {**_params(start, end), "min_requests": int(min_requests),
                              "limit": int(limit)})


def candidate_counts(export: Export, start: dt.datetime | None = None,
                     end: dt.datetime | None = None) -> pd.DataFrame:
    """Served requests per candidate count (n_candidates, requests): what a new max_items
    would show on them."""
    query = f"""
    WITH {_REQUESTS}
    SELECT n_candidates, count(*) AS requests FROM req GROUP BY 1 ORDER BY 1
    """
    return export.sql(query, _params(start, end))


def overall(export: Export, start: dt.datetime | None = None,
            end: dt.datetime | None = None) -> dict[str, Any]:
    """Served requests of the window: requests, mean and p95 of the duration (ms)."""
    query = f"""
    WITH {_REQUESTS}
    SELECT count(*) AS requests, avg(duration_ms) AS mean_duration_ms,
           quantile_cont(duration_ms, 0.95) AS p95_duration_ms
    FROM req
    """
    from .monitoring import _row

    return _row(export.sql(query, _params(start, end)))
