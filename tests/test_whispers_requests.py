"""The copies a report reads instead of the large tables: the whispers endpoint's requests
(``wl_whispers_requests``, from api_logs) and the exposure rows (``wl_exposures``). Every query
gives the same figures from a copy as from the table; a window the copy does not hold is read
from the table; a day's evaluation is the same with and without them; and the copy's counts are
those pandas computes from the raw rows."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest
from documents import assert_same_document

from whispers_lab import evaluate
from whispers_lab.contract import WHISPERS_ENDPOINT
from whispers_lab.export import open_export
from whispers_lab.plan import load_plan
from whispers_lab.queries import experiment as qe
from whispers_lab.queries import monitoring as qm
from whispers_lab.queries import state as qs
from whispers_lab.state import resolve_state

PLAN = load_plan()
STAMP = dt.datetime(2026, 12, 20, 12, 0, 0)


def _endpoint_figures(ex, day: int) -> dict[str, object]:
    """Every reader of the endpoint's requests, over the day and longer windows."""
    start, end = PLAN.day_start(day), PLAN.day_start(day + 1)
    return {
        "daily_api": qm.daily_api(ex, start, end, ranking_timeout_ms=150.0),
        "availability": qm.availability(ex, start, end, min_requests=1),
        "minute_series": qm.minute_series(ex, start, end, min_requests=1),
        "error_runs": qm.minute_runs(ex, start, end, metric="error_rate", threshold=0.0,
                                     min_requests=1, lookback_minutes=60),
        "latency_runs": qm.minute_runs(ex, start, end, metric="avg_duration_ms",
                                       threshold=100.0, min_requests=1, lookback_minutes=60),
        "weights": qm.weight_persistence(ex, start, end),
        "window": qm.api_window(ex, PLAN.day_start(day - 3), end),
        "quantiles": qm.api_quantiles(ex, PLAN.day_start(day - 2), end, [0.05, 0.5, 0.95]),
        "daily_series": qm.daily_series(ex, PLAN.day_start(0), end),
    }


def _assert_same(got: dict[str, object], want: dict[str, object]) -> None:
    assert got.keys() == want.keys()
    for name, value in want.items():
        if isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(got[name].reset_index(drop=True),
                                          value.reset_index(drop=True), obj=name)
        elif isinstance(value, dict):
            assert got[name].keys() == value.keys(), name
            for k, v in value.items():
                g = got[name][k]
                if isinstance(v, float) and not np.isnan(v):
                    assert g == pytest.approx(v, rel=1e-12, abs=1e-12), (name, k)
                else:
                    assert (pd.isna(g) and pd.isna(v)) or g == v, (name, k, g, v)
        else:
            assert got[name] == pytest.approx(value, rel=1e-12), name


def test_every_endpoint_query_reads_the_same_figures_from_the_table(small_export):
    with open_export(small_export) as ex:
        direct = _endpoint_figures(ex, 10)  # nothing made yet: api_logs
        assert "api_logs" in qm.whispers_requests(ex, PLAN.day_start(10), PLAN.day_start(11))
        assert direct["daily_api"]["requests"] > 100  # a real comparison
        assert direct["daily_api"]["errors"] > 0 and direct["weights"]["users"] > 0
        qm.materialize_whispers_requests(ex, PLAN.day_start(0) - dt.timedelta(hours=1),
                                         PLAN.day_start(11))
        assert qm.whispers_requests(ex, PLAN.day_start(10), PLAN.day_start(11)).startswith(
            qm.WHISPERS_REQUESTS_TABLE)
        _assert_same(_endpoint_figures(ex, 10), direct)


def test_a_window_the_table_does_not_hold_reads_api_logs(small_export):
    with open_export(small_export) as ex:
        want = _endpoint_figures(ex, 10)
        # made for days 9-10 only: the lookback before day 10 and day 7's window start fall
        # outside it, so those queries must read api_logs (else they would miss rows)
        qm.materialize_whispers_requests(ex, PLAN.day_start(9) + dt.timedelta(minutes=30),
                                         PLAN.day_start(11))
        for lo, hi, inside in ((PLAN.day_start(10), PLAN.day_start(11), True),
                               (PLAN.day_start(9), PLAN.day_start(11), False),
                               (PLAN.day_start(10), PLAN.day_start(12), False)):
            src = qm.whispers_requests(ex, lo, hi)
            assert src.startswith(qm.WHISPERS_REQUESTS_TABLE) is inside, (lo, hi, src)
            # another endpoint's requests are never the copy's
            assert "'/api/recap'" in qm.whispers_requests(ex, lo, hi, "/api/recap")
        _assert_same(_endpoint_figures(ex, 10), want)


def test_the_table_holds_the_endpoints_rows_as_pandas_counts_them(small_export):
    lo, hi = PLAN.day_start(8), PLAN.day_start(11)
    with open_export(small_export) as ex:
        raw = ex.sql('SELECT "timestamp", endpoint, user_id, device_id, status, weights_version '
                     'FROM api_logs WHERE "timestamp" >= $lo AND "timestamp" < $hi',
                     {"lo": lo, "hi": hi})
        qm.materialize_whispers_requests(ex, lo, hi)
        rows = raw.loc[raw["endpoint"] == WHISPERS_ENDPOINT]
        assert 0 < len(rows) < len(raw)  # other endpoints are left out
        assert int(ex.scalar(f"SELECT count(*) FROM {qm.WHISPERS_REQUESTS_TABLE}")) == len(rows)
        got = qm.daily_api(ex, lo, hi, ranking_timeout_ms=150.0)
        assert got["requests"] == len(rows)
        assert got["errors"] == int((rows["status"] >= 400).sum())
        assert got["users"] == rows["user_id"].nunique()
        per_user = (rows.dropna(subset=["user_id", "device_id", "weights_version"])
                    .groupby("user_id").agg(devices=("device_id", "nunique"),
                                            versions=("weights_version", "nunique")))
        weights = qm.weight_persistence(ex, lo, hi)
        assert weights["users"] == len(per_user)
        assert weights["multi_device_users"] == int((per_user["devices"] >= 2).sum())
        assert weights["conflict_users"] == int(
            ((per_user["devices"] >= 2) & (per_user["versions"] > 1)).sum())


@pytest.mark.parametrize("day", [0, 9, 14])
def test_a_days_evaluation_is_the_same_without_the_table(scenario_export, monkeypatch, day):
    """Day 9 holds every planted scenario (error and latency runs, fallbacks, device
    mismatches); day 0's lookback reaches before the rollout."""
    with open_export(scenario_export) as ex:
        state = resolve_state(ex, PLAN, day, None)
        with_table = evaluate.evaluate_day(ex, day, PLAN, state=state)
        assert qm._MADE[ex].keys() >= {qm.WHISPERS_REQUESTS_TABLE, qm.EXPOSURES_TABLE}
    monkeypatch.setattr(qm, "materialize_whispers_requests", lambda *a, **k: None)
    monkeypatch.setattr(qm, "materialize_exposures", lambda *a, **k: None)
    with open_export(scenario_export) as ex:
        without = evaluate.evaluate_day(ex, day, PLAN, state=state)
        # every query read api_logs and exposures
        assert not {qm.WHISPERS_REQUESTS_TABLE, qm.EXPOSURES_TABLE} & qm._MADE[ex].keys()
    # the same document, but for the last bits of sums added up in another order
    assert_same_document(json.loads(json.dumps(with_table.decision.to_dict(STAMP), default=str)),
                         json.loads(json.dumps(without.decision.to_dict(STAMP), default=str)),
                         rel=1e-9)
    for name in ("minute_series", "daily"):
        pd.testing.assert_frame_equal(getattr(with_table, name), getattr(without, name),
                                      check_exact=False, rtol=1e-9)
    for a, b in zip(with_table.windows, without.windows, strict=True):
        assert a == b
    if day == 9:
        assert any(r.fired for r in with_table.triggers)  # the scenarios were seen


def test_served_vs_planned_reads_the_same_requests_from_the_table(small_export):
    with open_export(small_export) as ex:
        state = resolve_state(ex, PLAN, 12, None)
        evaluate.evaluate_day(ex, 12, PLAN, state=state)  # registers the state's intervals
        lo, hi = PLAN.day_start(8), PLAN.day_start(13)
        assert qm.whispers_requests(ex, lo, hi).startswith(qm.WHISPERS_REQUESTS_TABLE)
        shared = qs.served_and_share(ex, PLAN.start_date, lo, hi, PLAN.day_start(12))
        qm._MADE[ex].pop(qm.WHISPERS_REQUESTS_TABLE)  # as if never made: api_logs
        assert "api_logs" in qm.whispers_requests(ex, lo, hi)
        direct = qs.served_and_share(ex, PLAN.start_date, lo, hi, PLAN.day_start(12))
    assert shared[0]["users"].sum() > 100
    for a, b in zip(shared, direct, strict=True):
        pd.testing.assert_frame_equal(a, b)


def _exposure_figures(ex, day: int) -> dict[str, object]:
    """Every reader of the exposure rows in a report, up to the end of ``day``."""
    start, end = PLAN.day_start(day), PLAN.day_start(day + 1)
    qe.materialize_first_exposures(ex, PLAN.day_start(0), end)
    return {
        "daily_series": qm.daily_series(ex, PLAN.day_start(0), end),
        "treated_active": {"n": qm.treated_active_users(ex, start, end)},
        "first_exposures": ex.sql(f"SELECT * FROM {qe.FIRST_EXPOSURE_TABLE} "
                                  f"ORDER BY user_id"),
        "served": qs.served_and_share(ex, PLAN.start_date, PLAN.day_start(8), end,
                                      PLAN.day_start(day))[0],
    }


def test_every_reader_of_exposures_reads_the_same_rows_from_the_copy(small_export):
    with open_export(small_export) as ex:
        state = resolve_state(ex, PLAN, 12, None)
        evaluate.evaluate_day(ex, 12, PLAN, state=state)  # the intervals, the assignment
        qm._MADE[ex].pop(qm.EXPOSURES_TABLE)  # as if the copy were never made
        direct = _exposure_figures(ex, 12)
        assert qm.exposures_source(ex, PLAN.day_start(13)) == "exposures"
        assert direct["treated_active"]["n"] > 100 and len(direct["first_exposures"]) > 500
        assert direct["served"]["users"].sum() > 100
        # made up to day 12's end: the readers of day 12 read the copy, those of day 13 not
        qm.materialize_exposures(ex, PLAN.day_start(13))
        assert qm.exposures_source(ex, PLAN.day_start(13)) == qm.EXPOSURES_TABLE
        assert qm.exposures_source(ex, PLAN.day_start(14)) == "exposures"
        _assert_same(_exposure_figures(ex, 12), direct)
        later = _exposure_figures(ex, 13)  # beyond the copy: the table
        qm._MADE[ex].pop(qm.EXPOSURES_TABLE)
        _assert_same(later, _exposure_figures(ex, 13))
        n = int(ex.sql("SELECT count(*) AS n FROM exposures WHERE exposed_at < $hi",
                       {"hi": PLAN.day_start(13)})["n"].iloc[0])
        assert int(ex.scalar(f"SELECT count(*) FROM {qm.EXPOSURES_TABLE}")) == n > 0

