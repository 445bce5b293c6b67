"""Each criterion and rollback trigger at its boundaries, on tiny hand-made exports.

The exports go through ``write_export`` / ``open_export`` so the monitoring SQL (per-minute
grouping, gaps-and-islands runs, LAG over cues) is exercised, not just the pure rules.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from whispers_lab import rules
from whispers_lab.contract import CONTRACT, WHISPERS_ENDPOINT
from whispers_lab.export import Export, open_export, write_export
from whispers_lab.plan import load_plan
from whispers_lab.queries import monitoring as q
from whispers_lab.results import StatResult

PLAN = load_plan()
DAY = 9                      # a 10% day
D0 = PLAN.day_start(DAY)
D1 = PLAN.day_start(DAY + 1)
MIN_REQ = PLAN.criteria.min_minute_requests

_ARROW = {"VARCHAR": pa.string(), "TIMESTAMP": pa.timestamp("us"), "BOOLEAN": pa.bool_(),
          "INTEGER": pa.int64(), "DOUBLE": pa.float64()}


# ---------------------------------------------------------------------------------------
# builders (also used by tests/test_evaluate.py)


def table(name: str, columns: Mapping[str, Any] | None = None) -> pa.Table:
    """An Arrow table of contract table ``name`` with contract types; absent columns are NULL."""
    columns = dict(columns or {})
    n = len(next(iter(columns.values()))) if columns else 0
    arrays, fields = [], []
    for c in CONTRACT[name].columns:
        typ = _ARROW[c.type]
        values = columns.get(c.name)
        arrays.append(pa.array([None] * n if values is None else values, type=typ))
        fields.append(pa.field(c.name, typ))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def api_minutes(start: dt.datetime, specs: Sequence[tuple[int, int, float]], *,
                prefix: str = "r", endpoint: str = WHISPERS_ENDPOINT,
                error_status: int = 500) -> dict[str, np.ndarray]:
    """api_logs columns for consecutive minutes from ``start``: one (requests, errors,
    duration_ms) per minute; requests spread over the minute, errors first."""
    ts, status, dur = [], [], []
    for i, (n, errors, ms) in enumerate(specs):
        base = np.datetime64(start + dt.timedelta(minutes=i), "us")
        offsets = (np.arange(n) * (59_000_000 // max(n, 1))).astype("timedelta64[us]")
        ts.append(base + offsets)
        st = np.full(n, 200)
        st[:errors] = error_status
        status.append(st)
        dur.append(np.full(n, float(ms)))
    t = np.concatenate(ts) if ts else np.array([], dtype="datetime64[us]")
    n = len(t)
    return {
        "request_id": np.array([f"{prefix}{i}" for i in range(n)], dtype=object),
        "timestamp": t,
        "endpoint": np.full(n, endpoint, dtype=object),
        "user_id": np.full(n, "u1", dtype=object),
        "device_id": np.full(n, "d1", dtype=object),
        "status": np.concatenate(status) if status else np.array([], dtype=int),
        "duration_ms": np.concatenate(dur) if dur else np.array([], dtype=float),
    }


def concat(*parts: Mapping[str, Any]) -> dict[str, Any]:
    keys = parts[0].keys()
    return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in keys}


def build(tmp_path: Path, name: str = "export.duckdb", **tables: Mapping[str, Any] | None) -> Export:
    """Write and open an export. Required tables default to empty; optional tables
    (feedback, support_tickets, db_metrics) are written only when given."""
    out: dict[str, pa.Table] = {}
    for t in ("users", "exposures", "telemetry", "api_logs", "ranking_candidates"):
        out[t] = table(t, tables.get(t))
    for t in ("feedback", "support_tickets", "db_metrics"):
        if tables.get(t) is not None:
            out[t] = table(t, tables[t])
    return open_export(write_export(out, tmp_path / name))


@pytest.fixture
def export_of(tmp_path: Path):
    opened: list[Export] = []

    def make(**tables: Any) -> Export:
        ex = build(tmp_path, f"e{len(opened)}.duckdb", **tables)
        opened.append(ex)
        return ex

    yield make
    for ex in opened:
        ex.close()


def minute_trigger(ex: Export, which: str, day: int = DAY):
    start, end = PLAN.day_start(day), PLAN.day_start(day + 1)
    avail = q.availability(ex, start, end, min_requests=MIN_REQ)
    if which == "error":
        runs = q.minute_runs(ex, start, end, metric="error_rate", threshold=PLAN.triggers.error_rate,
                             min_requests=MIN_REQ)
        return rules.trigger_error_rate(runs, avail, PLAN, day)
    runs = q.minute_runs(ex, start, end, metric="avg_duration_ms",
                         threshold=PLAN.triggers.avg_response_ms, min_requests=MIN_REQ)
    return rules.trigger_latency(runs, avail, PLAN, day)


NOON = D0 + dt.timedelta(hours=12)
OK = (100, 0, 40.0)           # a healthy counted minute


# ---------------------------------------------------------------------------------------
# trigger_error_rate: > 5.0% (strictly) for >= 10 consecutive counted minutes


def test_error_trigger_fires_at_ten_minutes_not_nine(export_of):
    bad = (1000, 51, 40.0)    # 5.1%
    ten = export_of(api_logs=api_minutes(NOON, [OK] * 5 + [bad] * 10 + [OK] * 5))
    nine = export_of(api_logs=api_minutes(NOON, [OK] * 5 + [bad] * 9 + [OK] * 6))
    fired, quiet = minute_trigger(ten, "error"), minute_trigger(nine, "error")
    assert fired.status == "fail" and fired.fired and fired.value == 10
    assert quiet.status == "pass" and quiet.value == 9
    (w,) = fired.details["windows"]
    assert w["start"] == (NOON + dt.timedelta(minutes=5)).isoformat()
    assert w["end"] == (NOON + dt.timedelta(minutes=15)).isoformat()
    assert w["peak"] == pytest.approx(0.051) and w["fired"]
    assert "10 consecutive minutes" in fired.reason


def test_error_trigger_five_percent_exactly_does_not_fire(export_of):
    at = export_of(api_logs=api_minutes(NOON, [(1000, 50, 40.0)] * 20))
    above = export_of(api_logs=api_minutes(NOON, [(1000, 51, 40.0)] * 20))
    assert minute_trigger(at, "error").status == "pass"
    assert minute_trigger(at, "error").value == 0
    assert minute_trigger(above, "error").status == "fail"


def test_error_trigger_counts_4xx_as_errors(export_of):
    ex = export_of(api_logs=api_minutes(NOON, [(100, 10, 40.0)] * 10, error_status=404))
    assert minute_trigger(ex, "error").status == "fail"


def test_low_traffic_minute_is_skipped_neither_breaks_nor_extends(export_of):
    bad = (100, 10, 40.0)
    quiet_ok = (MIN_REQ - 1, 0, 40.0)       # 19 requests, all fine: skipped
    quiet_bad = (MIN_REQ - 1, MIN_REQ - 1, 40.0)   # 19 requests, all failing: skipped too
    # 5 bad + skipped + 5 bad = a run of 10 counted minutes: fires
    bridged = export_of(api_logs=api_minutes(NOON, [OK] * 3 + [bad] * 5 + [quiet_ok] + [bad] * 5))
    # 5 bad + a counted good minute + 5 bad: broken
    broken = export_of(api_logs=api_minutes(NOON, [OK] * 3 + [bad] * 5 + [OK] + [bad] * 5 + [OK] * 3))
    # 9 bad + a low-traffic failing minute: 9 counted minutes, does not fire
    short = export_of(api_logs=api_minutes(NOON, [OK] * 3 + [bad] * 9 + [quiet_bad] + [OK] * 3))
    r = minute_trigger(bridged, "error")
    assert r.status == "fail" and r.value == 10
    assert r.details["windows"][0]["end"] == (NOON + dt.timedelta(minutes=14)).isoformat()
    assert minute_trigger(broken, "error").status == "pass"
    assert minute_trigger(short, "error").status == "pass"


def test_minute_with_exactly_min_requests_counts(export_of):
    at_min = (MIN_REQ, MIN_REQ // 2, 40.0)        # counted, 50% errors
    below = (MIN_REQ - 1, MIN_REQ // 2, 40.0)     # skipped
    counted = export_of(api_logs=api_minutes(NOON, [at_min] * 10))
    skipped = export_of(api_logs=api_minutes(NOON, [below] * 10 + [OK] * 10))
    assert minute_trigger(counted, "error").status == "fail"
    r = minute_trigger(skipped, "error")
    assert r.status == "pass" and r.details["counted_minutes"] == 10


def test_gap_without_requests_is_skipped(export_of):
    bad = (100, 10, 40.0)
    first = api_minutes(NOON, [bad] * 5, prefix="a")
    second = api_minutes(NOON + dt.timedelta(minutes=30), [bad] * 5 + [OK] * 5, prefix="b")
    ex = export_of(api_logs=concat(first, second))
    assert minute_trigger(ex, "error").status == "fail"


def test_error_trigger_empty_day_is_no_data(export_of):
    ex = export_of(api_logs=api_minutes(D0 - dt.timedelta(hours=3), [OK] * 5))
    r = minute_trigger(ex, "error")
    assert r.status == "no_data" and not r.fired and "No whispers requests" in r.reason


def test_error_trigger_too_few_counted_minutes_is_inconclusive(export_of):
    ex = export_of(api_logs=api_minutes(NOON, [(MIN_REQ - 1, 0, 40.0)] * 200 + [OK] * 9))
    r = minute_trigger(ex, "error")
    assert r.status == "inconclusive" and r.details["counted_minutes"] == 9
    assert "Only 9 minute(s)" in r.reason


def test_run_straddling_midnight_keeps_its_length(export_of):
    bad = (100, 10, 40.0)
    ex = export_of(api_logs=api_minutes(D1 - dt.timedelta(minutes=5), [bad] * 10 + [OK] * 20))
    next_day = minute_trigger(ex, "error", DAY + 1)
    assert next_day.status == "fail" and next_day.value == 10
    # the day before sees only its own 5 minutes (no look-ahead)
    assert minute_trigger(ex, "error", DAY).value == 5


def test_runs_stay_inside_the_requested_day(export_of):
    bad = (100, 10, 40.0)
    # a long run on the day before, ending more than an hour before midnight
    ex = export_of(api_logs=concat(api_minutes(D0 - dt.timedelta(hours=3), [bad] * 30, prefix="a"),
                                   api_minutes(NOON, [OK] * 20, prefix="b")))
    r = minute_trigger(ex, "error")
    assert r.status == "pass" and r.details["windows"] == []


# ---------------------------------------------------------------------------------------
# trigger_latency: avg > 300 ms (strictly) for >= 5 consecutive counted minutes


def test_latency_trigger_boundaries(export_of):
    cases = {
        "five_301": ([OK] * 3 + [(30, 0, 301.0)] * 5 + [OK] * 3, "fail"),
        "four_301": ([OK] * 3 + [(30, 0, 301.0)] * 4 + [OK] * 4, "pass"),
        "five_300": ([OK] * 3 + [(30, 0, 300.0)] * 5 + [OK] * 3, "pass"),
    }
    for name, (specs, expected) in cases.items():
        r = minute_trigger(export_of(api_logs=api_minutes(NOON, specs)), "latency")
        assert r.status == expected, name
    r = minute_trigger(export_of(api_logs=api_minutes(NOON, cases["five_301"][0])), "latency")
    assert r.value == 5 and r.details["windows"][0]["peak"] == pytest.approx(301.0)


def test_latency_low_traffic_minutes_are_skipped(export_of):
    slow = (30, 0, 400.0)
    quiet_slow = (MIN_REQ - 1, 0, 2000.0)
    ex = export_of(api_logs=api_minutes(NOON, [OK] * 3 + [slow] * 4 + [quiet_slow] * 3 + [OK] * 3))
    assert minute_trigger(ex, "latency").status == "pass"


# ---------------------------------------------------------------------------------------
# trigger_db


def _db(baseline_minutes: int, day_values: Sequence[float], base: float = 20.0) -> dict[str, Any]:
    pre_start = PLAN.day_start(0) - dt.timedelta(minutes=baseline_minutes)
    pre_ts = [pre_start + dt.timedelta(minutes=i) for i in range(baseline_minutes)]
    day_ts = [NOON + dt.timedelta(minutes=i) for i in range(len(day_values))]
    return {"timestamp": pre_ts + day_ts, "p95_query_ms": [base] * baseline_minutes + list(day_values)}


def db_trigger(ex: Export, day: int = DAY):
    start, end = PLAN.day_start(day), PLAN.day_start(day + 1)
    baseline = q.db_baseline(ex, PLAN.day_start(0))
    series = q.db_minute_series(ex, start, end)
    median = baseline["median_p95_ms"]
    runs = q.db_runs(ex, start, end, limit_ms=PLAN.triggers.db_p95_ratio * median) \
        if median is not None else None
    return rules.trigger_db(baseline, len(series), runs, PLAN, day)


def test_db_trigger_boundaries(export_of):
    limit = PLAN.triggers.db_p95_ratio * 20.0           # 40 ms
    need = PLAN.triggers.db_minutes
    fires = export_of(db_metrics=_db(120, [20.0] * 5 + [limit + 0.1] * need + [20.0] * 5))
    short = export_of(db_metrics=_db(120, [20.0] * 5 + [limit + 0.1] * (need - 1) + [20.0] * 5))
    at = export_of(db_metrics=_db(120, [20.0] * 5 + [limit] * need + [20.0] * 5))
    r = db_trigger(fires)
    assert r.status == "fail" and r.value == need and r.details["limit_ms"] == pytest.approx(limit)
    assert db_trigger(short).status == "pass"
    assert db_trigger(at).status == "pass"


def test_db_trigger_needs_a_baseline(export_of):
    need = PLAN.triggers.db_min_baseline_minutes
    thin = export_of(db_metrics=_db(need - 1, [100.0] * 20))
    enough = export_of(db_metrics=_db(need, [100.0] * 20))
    r = db_trigger(thin)
    assert r.status == "no_data" and not r.fired and f"need {need}" in r.reason
    assert db_trigger(enough).status == "fail"


def test_db_trigger_without_day_rows_or_table(export_of):
    no_day = export_of(db_metrics=_db(120, []))
    absent = export_of()
    assert db_trigger(no_day).status == "no_data"
    assert db_trigger(absent).status == "no_data"
    few = export_of(db_metrics=_db(120, [20.0] * 5))
    assert db_trigger(few).status == "inconclusive"


def test_db_baseline_is_the_pre_rollout_median(export_of):
    pre = [PLAN.day_start(0) - dt.timedelta(minutes=i + 1) for i in range(61)]
    values = list(np.linspace(10, 70, 61))
    ex = export_of(db_metrics={"timestamp": [*pre, NOON], "p95_query_ms": [*values, 500.0]})
    b = q.db_baseline(ex, PLAN.day_start(0))
    assert b["minutes"] == 61 and b["median_p95_ms"] == pytest.approx(40.0)


# ---------------------------------------------------------------------------------------
# tickets: trigger_privacy, trigger_critical_bug, critical_bugs


def _tickets(rows: Sequence[tuple[str, str, bool]], when: dt.datetime = NOON) -> dict[str, list]:
    return {"ticket_id": [f"t{i}" for i in range(len(rows))], "created_at": [when] * len(rows),
            "category": [r[0] for r in rows], "priority": [r[1] for r in rows],
            "about_whispers": [r[2] for r in rows]}


def _ticket_results(ex: Export, day: int = DAY):
    start, end = PLAN.day_start(day), PLAN.day_start(day + 1)
    t = q.ticket_counts(ex, start, end) if ex.has("support_tickets") else None
    return (rules.trigger_privacy(t, PLAN, day), rules.trigger_critical_bug(t, PLAN, day),
            rules.critical_bugs(t, PLAN, day))


def test_ticket_triggers(export_of):
    quiet = export_of(support_tickets=_tickets([
        ("privacy", "high", False), ("bug", "critical", False), ("bug", "high", True),
        ("other", "critical", True)]))
    assert [r.status for r in _ticket_results(quiet)] == ["pass", "pass", "pass"]
    privacy = export_of(support_tickets=_tickets([("privacy", "low", True)]))
    p, b, c = _ticket_results(privacy)
    assert p.fired and p.value == 1 and "t0" in p.reason
    assert b.status == "pass" and c.status == "pass"
    bug = export_of(support_tickets=_tickets([("bug", "critical", True)]))
    p, b, c = _ticket_results(bug)
    assert p.status == "pass" and b.fired and c.status == "fail" and c.kind == "criterion"
    assert "t0" in b.reason and b.details["ticket_ids"] == ["t0"]


def test_tickets_only_count_on_their_day(export_of):
    ex = export_of(support_tickets=_tickets([("privacy", "low", True)], when=D0 - dt.timedelta(seconds=1)))
    assert _ticket_results(ex, DAY)[0].status == "pass"
    assert _ticket_results(ex, DAY - 1)[0].status == "fail"


def test_no_ticket_table_is_no_data(export_of):
    ex = export_of()
    assert [r.status for r in _ticket_results(ex)] == ["no_data"] * 3
    assert not any(r.fired for r in _ticket_results(ex))


# ---------------------------------------------------------------------------------------
# daily API criteria


def _api_day(ex: Export, day: int = DAY) -> dict[str, Any]:
    return q.daily_api(ex, PLAN.day_start(day), PLAN.day_start(day + 1),
                       ranking_timeout_ms=PLAN.criteria.ranking_timeout_ms)


def _win(ex: Export, day: int = DAY) -> dict[str, Any]:
    return q.api_window(ex, PLAN.day_start(day), PLAN.day_start(day + 1))


@pytest.mark.parametrize("shared", [False, True])
def test_api_window_clusters_by_minute_and_by_user_each_userless_request_alone(export_of, shared):
    """The clustered sums of :func:`api_window` against pandas: per minute, and per user with
    every request without a user a cluster of its own; from api_logs and (``shared``) from the
    report's table of the endpoint's requests, which keeps the requests without a user."""
    rng = np.random.default_rng(5)
    api = api_minutes(NOON, [(int(n), 0, 40.0) for n in rng.integers(5, 40, 30)])
    n = len(api["timestamp"])
    api["duration_ms"] = rng.gamma(2.0, 30.0, n).round(1)
    api["status"] = np.where(rng.random(n) < 0.05, 500, 200)
    users = np.array([f"u{i}" for i in rng.integers(0, 25, n)], dtype=object)
    users[rng.random(n) < 0.2] = None
    api["user_id"] = users
    ex = export_of(api_logs=api)
    if shared:
        q.materialize_whispers_requests(ex, D0 - dt.timedelta(hours=1), PLAN.day_start(DAY + 1))
    assert q.whispers_requests(ex, D0, PLAN.day_start(DAY + 1)).startswith(
        q.WHISPERS_REQUESTS_TABLE) is shared
    got = _win(ex)
    frame = pd.DataFrame({"minute": pd.to_datetime(api["timestamp"]).floor("min"),
                          "user": api["user_id"], "ms": api["duration_ms"],
                          "err": api["status"] >= 400})
    q95 = float(np.quantile(frame["ms"], 0.95))  # numpy's default is the continuous quantile
    frame["below"] = frame["ms"] <= q95
    frame["cluster"] = frame["user"].where(frame["user"].notna(),
                                           "request " + frame.index.astype(str))
    per_user = frame.groupby("cluster").agg(n=("ms", "size"), below=("below", "sum"))
    per_minute = frame.groupby("minute").agg(n=("ms", "size"), err=("err", "sum"),
                                             below=("below", "sum"))
    assert got["quantile"] == pytest.approx(q95)
    assert got["requests"] == n and got["users"] == frame["user"].nunique()
    assert got["qu_n"] == len(per_user) > 25  # every userless request alone
    for name, g, col in (("qu", per_user, "below"), ("qm", per_minute, "below"),
                         ("errors", per_minute, "err")):
        num, den = g[col].astype(float), g["n"].astype(float)
        assert got[f"{name}_num"] == pytest.approx(num.sum())
        assert got[f"{name}_den"] == pytest.approx(den.sum())
        assert got[f"{name}_num2"] == pytest.approx((num * num).sum())
        assert got[f"{name}_den2"] == pytest.approx((den * den).sum())
        assert got[f"{name}_numden"] == pytest.approx((num * den).sum())


def test_error_rate_is_judged_by_its_upper_bound_with_the_tolerance_region(export_of):
    tol = PLAN.tolerance["error_rate"]
    assert (PLAN.criteria.error_rate, tol) == (0.02, 0.005)

    def rate(errors_per_minute: int, minutes: int = 20, n: int = 500):
        ex = export_of(api_logs=api_minutes(NOON, [(n, errors_per_minute, 40.0)] * minutes))
        return rules.error_rate(_win(ex), PLAN, DAY)

    low = rate(1)                      # 0.2% of 10,000: upper bound far below 2%
    assert low.status == "pass" and low.code == "pass" and low.threshold == 0.02
    assert low.details["ci_high"] < 0.02 + tol
    assert rate(11).status == "pass"   # 2.2%: within the tolerance, not shown above 2%
    high = rate(13)                    # 2.6%: the lower bound is above 2%: shown to miss
    assert high.status == "fail" and high.code == "threshold_missed"
    assert high.details["ci_low"] > 0.02


def test_a_rate_never_passes_on_its_point_estimate(export_of):
    # 3 errors in 100 requests (a true 3% budget-breaker) and 0 errors in 100: neither passes
    three = export_of(api_logs=api_minutes(NOON, [(10, 1, 40.0)] * 3 + [(10, 0, 40.0)] * 7))
    none = export_of(api_logs=api_minutes(NOON, [(10, 0, 40.0)] * 10))
    enough = export_of(api_logs=api_minutes(NOON, [(15, 0, 40.0)] * 10))
    assert rules.error_rate(_win(three), PLAN, DAY).status == "inconclusive"
    r = rules.error_rate(_win(none), PLAN, DAY)
    assert r.status == "inconclusive" and r.code == "insufficient_evidence"
    assert r.details["ci_high"] > 0.02 + PLAN.tolerance["error_rate"]
    assert rules.error_rate(_win(enough), PLAN, DAY).status == "pass"   # 0 of 150
    r = rules.error_rate(_win(export_of()), PLAN, DAY)
    assert r.status == "no_data" and r.value is None


def test_error_rate_counts_minutes_as_clusters(export_of):
    # the same 2.2% overall, but all errors packed into a few minutes: the design effect
    # widens the interval, so the tolerance region no longer passes it
    spread = export_of(api_logs=api_minutes(NOON, [(500, 11, 40.0)] * 20))
    packed = export_of(api_logs=api_minutes(NOON, [(500, 110, 40.0)] * 2
                                            + [(500, 0, 40.0)] * 18))
    s, p = rules.error_rate(_win(spread), PLAN, DAY), rules.error_rate(_win(packed), PLAN, DAY)
    assert s.value == pytest.approx(p.value)
    assert p.details["design_effect"] > 10 * s.details["design_effect"]
    assert s.status == "pass" and p.status == "inconclusive"


def test_avg_response_is_clustered_by_minute_with_the_tolerance_region(export_of):
    def avg(durations):
        ex = export_of(api_logs=api_minutes(NOON, [(50, 0, ms) for ms in durations]))
        return rules.avg_response_ms(_win(ex), PLAN, DAY)

    assert avg([90.0, 110.0] * 10).status == "pass"      # mean 100, upper bound < 110
    r = avg([112.0, 118.0] * 10)                         # mean 115: shown above 100
    assert r.status == "fail" and r.code == "threshold_missed"
    assert avg([60.0, 150.0] * 3).status == "inconclusive"   # 6 noisy minutes
    assert avg([90.0, 110.0]).status == "inconclusive"       # 2 minutes: too few clusters


def _with_weights(n: int, fallbacks: int, minutes: int = 20) -> dict[str, Any]:
    api = api_minutes(NOON, [(n, 0, 40.0)] * minutes)
    source = np.full(n * minutes, "user", dtype=object)
    for m in range(minutes):
        source[m * n:m * n + fallbacks] = "fallback"
    api["weight_source"] = source
    return api


def test_fallback_rate_uses_the_phase_threshold(export_of):
    ex = export_of(api_logs=_with_weights(500, 24))          # 4.8%
    beta_day = 4
    ex_beta = export_of(api_logs={**_with_weights(500, 24),
                                  "timestamp": _with_weights(500, 24)["timestamp"]
                                  - np.timedelta64(5, "D")})
    beta = rules.weight_fallback_rate(_win(ex_beta, beta_day), PLAN, beta_day)
    assert beta.threshold == 0.05 and beta.status == "pass"
    rollout = rules.weight_fallback_rate(_win(ex), PLAN, DAY)
    assert rollout.threshold == 0.02 and rollout.status == "fail"
    ex_no_source = export_of(api_logs=api_minutes(NOON, [(100, 0, 40.0)]))
    assert rules.weight_fallback_rate(_win(ex_no_source), PLAN, DAY).status == "no_data"


def test_p95_woodruff_interval_is_clustered_by_minute(export_of):
    calm = [(100, 0, 60.0)] * 19 + [(100, 0, 140.0)]
    ex = export_of(api_logs=api_minutes(NOON, calm * 3))
    win = _win(ex)
    ends = q.api_quantiles(ex, D0, D1, rules.p95_probabilities(win, PLAN))
    r = rules.p95_response_ms(win, ends, PLAN, DAY)
    assert r.details["design_effect"] > 1   # slow requests come in whole minutes
    assert r.details["ci_low"] <= r.value <= r.details["ci_high"]
    slow = export_of(api_logs=api_minutes(NOON, [(100, 0, 200.0)] * 60))
    win = _win(slow)
    r = rules.p95_response_ms(win, q.api_quantiles(slow, D0, D1,
                                                   rules.p95_probabilities(win, PLAN)), PLAN, DAY)
    assert r.status == "fail" and r.code == "threshold_missed"
    assert rules.p95_response_ms(_win(export_of()), [], PLAN, DAY).status == "no_data"


def test_ranking_timeouts_boundary(export_of):
    api = api_minutes(NOON, [(30, 0, 40.0)])
    api["ranking_ms"] = np.full(30, 200.0)
    at = export_of(api_logs=api)
    over = export_of(api_logs={**api, "ranking_ms": np.r_[np.full(29, 10.0), 200.1]})
    few = export_of(api_logs={**api_minutes(NOON, [(5, 0, 40.0)]), "ranking_ms": np.full(5, 10.0)})
    assert rules.ranking_timeouts(_api_day(at), PLAN, DAY).status == "pass"
    r = rules.ranking_timeouts(_api_day(over), PLAN, DAY)
    assert r.status == "fail" and r.value == 1
    assert rules.ranking_timeouts(_api_day(few), PLAN, DAY).status == "inconclusive"
    assert rules.ranking_timeouts(_api_day(export_of()), PLAN, DAY).status == "no_data"


# ---------------------------------------------------------------------------------------
# uptime


def test_uptime_tolerance_region_on_counted_minutes(export_of):
    up = (MIN_REQ, 0, 40.0)
    down = (MIN_REQ, MIN_REQ // 2, 40.0)         # half the requests 5xx: down
    almost = (MIN_REQ, MIN_REQ // 2 - 1, 40.0)    # just under half: up

    def uptime(specs, error_status=500):
        ex = export_of(api_logs=api_minutes(D0 + dt.timedelta(hours=1), specs,
                                            error_status=error_status))
        avail = q.availability(ex, D0, D1, min_requests=MIN_REQ)
        return rules.uptime(avail, PLAN, DAY)

    assert uptime([up] * 600).status == "pass"             # lower bound above 99.3%
    r = uptime([up] * 200)                                  # all up, but too few minutes
    assert r.status == "inconclusive" and r.code == "insufficient_evidence"
    r = uptime([up] * 1199 + [down])
    assert r.status == "pass" and r.value == pytest.approx(1199 / 1200)
    assert uptime([up] * 300 + [down]).status == "inconclusive"   # 99.7%, but not shown
    r = uptime([up] * 10 + [down] * 2)                      # shown below 99.5% on few minutes
    assert r.status == "fail" and r.code == "threshold_missed"
    assert uptime([up] * 599 + [almost]).value == 1.0
    assert uptime([up] * 599 + [down], error_status=404).value == 1.0   # 4xx: still up
    assert uptime([(MIN_REQ - 1, MIN_REQ - 1, 40.0)] * 300).status == "inconclusive"


# ---------------------------------------------------------------------------------------
# weight persistence and the Maya cue


def _weights_rows(rows: Sequence[tuple[str, str, str]]) -> dict[str, Any]:
    n = len(rows)
    api = api_minutes(NOON, [(n, 0, 40.0)])
    api["user_id"] = np.array([r[0] for r in rows], dtype=object)
    api["device_id"] = np.array([r[1] for r in rows], dtype=object)
    api["weights_version"] = np.array([r[2] for r in rows], dtype=object)
    return api


def _persistence(ex: Export):
    return rules.weight_persistence(q.weight_persistence(ex, D0, D1), PLAN, DAY)


def test_weight_persistence(export_of):
    consistent = export_of(api_logs=_weights_rows([("a", "d1", "v1"), ("a", "d2", "v1"),
                                                   ("b", "d3", "v1"), ("b", "d3", "v2")]))
    r = _persistence(consistent)
    assert r.status == "pass" and r.value == 0 and r.details["multi_device_users"] == 1
    conflict = export_of(api_logs=_weights_rows([("a", "d1", "v1"), ("a", "d2", "v2"),
                                                 ("b", "d3", "v1"), ("b", "d4", "v1")]))
    r = _persistence(conflict)
    assert r.status == "fail" and r.value == 1 and "examples" not in r.details  # counts only: no user id
    single = export_of(api_logs=_weights_rows([("b", "d3", "v1"), ("b", "d3", "v2")]))
    assert _persistence(single).status == "inconclusive"
    assert _persistence(export_of()).status == "no_data"


def _cues(times: Sequence[dt.datetime], users: Sequence[str] | None = None) -> dict[str, Any]:
    n = len(times)
    return {"event_id": [f"c{i}" for i in range(n)], "created_at": list(times),
            "user_id": list(users or ["u1"] * n), "device_id": ["d1"] * n,
            "event_type": ["maya_cue_fired"] * n}


def _cooldown(ex: Export):
    cues = q.cue_cooldown(ex, D0, D1, cooldown_minutes=PLAN.cue_cooldown_minutes)
    return rules.cue_cooldown(cues, PLAN, DAY)


def test_cue_cooldown_boundaries(export_of):
    gap = dt.timedelta(minutes=PLAN.cue_cooldown_minutes)
    ok = export_of(telemetry=_cues([NOON, NOON + gap, NOON + 2 * gap]))
    r = _cooldown(ok)
    assert r.status == "pass" and r.value == 0 and r.details["min_gap_minutes"] == pytest.approx(30)
    close = export_of(telemetry=_cues([NOON, NOON + gap - dt.timedelta(seconds=1)]))
    r = _cooldown(close)
    assert r.status == "fail" and r.value == 1
    other_users = export_of(telemetry=_cues([NOON, NOON + dt.timedelta(minutes=1)], ["u1", "u2"]))
    assert _cooldown(other_users).status == "pass"
    assert _cooldown(export_of()).status == "no_data"


def test_cue_cooldown_sees_the_previous_day(export_of):
    ex = export_of(telemetry=_cues([D0 - dt.timedelta(minutes=10), D0 + dt.timedelta(minutes=10)]))
    r = _cooldown(ex)
    assert r.status == "fail" and r.details["cues"] == 1


# ---------------------------------------------------------------------------------------
# telemetry flowing


def _hourly_events(hours: Sequence[int], shown_hours: Sequence[int] = ()) -> dict[str, Any]:
    times = [D0 + dt.timedelta(hours=h, minutes=7) for h in hours]
    types = ["whispers_shown" if h in shown_hours else "app_open" for h in hours]
    n = len(times)
    return {"event_id": [f"e{i}" for i in range(n)], "created_at": times, "user_id": ["u1"] * n,
            "device_id": ["d1"] * n, "event_type": types,
            "position": [1 if t == "whispers_shown" else None for t in types]}


def _telemetry(ex: Export):
    end = q.data_end(ex)
    return rules.telemetry_flowing(q.hourly_telemetry(ex, D0, D1), q.treated_active_users(ex, D0, D1),
                                   PLAN, DAY, end)


def test_telemetry_flowing(export_of):
    treated = {"user_id": ["u1"], "exposed_at": [D0 - dt.timedelta(days=1)], "variant": ["treatment"]}
    full = export_of(telemetry=_hourly_events(range(24), shown_hours=[12]), exposures=treated)
    r = _telemetry(full)
    assert r.status == "pass" and r.value == 1
    gap = export_of(telemetry=_hourly_events([h for h in range(24) if h not in (2, 3, 4)], [12]),
                    exposures=treated)
    r = _telemetry(gap)
    assert r.status == "fail" and r.details["low_hours"] == ["02:00", "03:00", "04:00"]
    no_shown = export_of(telemetry=_hourly_events(range(24)), exposures=treated)
    r = _telemetry(no_shown)
    assert r.status == "fail" and "no whispers_shown" in r.reason
    control = {**treated, "variant": ["control"]}
    assert _telemetry(export_of(telemetry=_hourly_events(range(24)), exposures=control)).status == "pass"
    assert _telemetry(export_of()).status == "no_data"


def test_telemetry_partial_day_is_inconclusive(export_of):
    ex = export_of(telemetry=_hourly_events(range(10)))
    r = _telemetry(ex)
    assert r.status == "inconclusive" and "cannot be checked" in r.reason


# ---------------------------------------------------------------------------------------
# statistics mapping


def test_from_stat_keeps_status_and_moves_ci_to_details():
    stat = StatResult(metric="ctr", estimate=0.17, ci_low=0.15, ci_high=0.19, p_value=None, n=800,
                      method="wilson", status="pass", sentence="CTR 17% is above 15%.",
                      threshold=0.15, details={"clicks": 136})
    r = rules.from_stat("ctr", stat, PLAN, DAY)
    assert (r.id, r.kind, r.status, r.value, r.threshold) == ("ctr", "criterion", "pass", 0.17, 0.15)
    assert r.details["ci_low"] == 0.15 and r.details["stat"] == {"clicks": 136}
    assert r.reason == stat.sentence and r.unit == "share"
    missing = rules.from_stat("retention", None, PLAN, DAY, "stats not installed")
    assert missing.status == "no_data" and missing.threshold == -PLAN.retention.margin


def test_every_criterion_has_a_spec_and_a_threshold():
    from whispers_lab.plan import CRITERION_IDS
    assert set(rules.SPECS) == set(CRITERION_IDS)
    for cid in CRITERION_IDS:
        for day in (0, 4, 9, 14):
            assert rules.threshold(PLAN, cid, day) is not None
