"""Portable metric queries: the plan's dashboard SQL, transpiled by SQLGlot, runs on DuckDB and
agrees with a query written natively for DuckDB; other dialects get their own spelling."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from whispers_lab.export import open_export, write_export
from whispers_lab.portable import QUERIES, metric_sql, run_metric

from factories import T0, valid_tables

START, END = T0 - dt.timedelta(days=1), T0 + dt.timedelta(days=30)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    tables = valid_tables()
    more = pd.DataFrame({
        "request_id": [f"x{i}" for i in range(6)],
        "timestamp": [T0 + dt.timedelta(seconds=20 * i) for i in range(6)],
        "endpoint": ["/api/whispers/context"] * 6,
        "user_id": ["u1"] * 6, "device_id": ["d1"] * 6,
        "status": pd.array([200, 200, 503, 200, 404, 200], dtype="int32"),
        "duration_ms": [10.0, 20.0, 30.0, 40.0, 50.0, 60.0],
        "ranking_ms": [1.0] * 6, "weight_source": ["user"] * 6, "weights_version": ["v"] * 6,
    })
    tables["api_logs"] = pd.concat([tables["api_logs"], more], ignore_index=True)
    path = write_export(tables, tmp_path_factory.mktemp("portable") / "e.duckdb")
    with open_export(path) as e:
        yield e


def test_api_performance_matches_native_duckdb(export):
    portable = run_metric(export, "api_performance", START, END)
    native = export.sql("""
        SELECT time_bucket(INTERVAL 1 MINUTE, timestamp) AS minute, count(*) AS requests,
               avg(duration_ms) AS avg_duration, sum(CASE WHEN status >= 400 THEN 1 ELSE 0 END) AS errors
        FROM api_logs WHERE endpoint = '/api/whispers/context'
        GROUP BY 1 ORDER BY 1 DESC""")
    pd.testing.assert_frame_equal(portable.reset_index(drop=True), native.reset_index(drop=True),
                                  check_dtype=False)
    assert portable["errors"].sum() == 2 and portable["requests"].sum() == 7


def test_user_engagement_counts(export):
    out = run_metric(export, "user_engagement", START, END)
    assert out[["impressions", "clicks"]].sum().tolist() == [1, 1]
    assert out["active_users"].max() == 2


def test_window_excludes_rows_outside(export):
    out = run_metric(export, "api_performance", T0 + dt.timedelta(minutes=5), END)
    assert out.empty


@pytest.mark.parametrize(("dialect", "spelling"), [
    ("bigquery", "COUNTIF"), ("snowflake", "COUNT_IF"), ("spark", "FILTER"), ("trino", "FILTER")])
def test_other_dialects_transpile(dialect, spelling):
    for name in QUERIES:
        sql = metric_sql(name, START, END, dialect)
        assert spelling in sql


def test_bounds_must_be_datetimes():
    with pytest.raises(TypeError):
        metric_sql("api_performance", "2026-01-01'; DROP TABLE users; --", END)
    with pytest.raises(KeyError, match="unknown metric query"):
        metric_sql("nope", START, END)
