"""Post-rollout analyses: the latency model against statsmodels on raw rows, the performance SQL
on a simulated export, the maxItems what-if against the synthetic logs' exact truth, the
recommendation rule and the lessons-learned skeleton."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from whispers_lab import lessons, performance
from whispers_lab.export import open_export
from whispers_lab.plan import load_plan
from whispers_lab.queries import performance as perf_sql
from whispers_lab.replay import prepare_replay
from whispers_lab.replay.engine import logged_ranks
from whispers_lab.replay.max_items import clicks_what_if, max_items_parts
from whispers_lab.replay.synthetic import synthetic_log
from whispers_lab.simulate.clicks import EXAMINATION

PLAN = load_plan()


def _rows(seed: int = 0, n: int = 4000) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    cand = rng.integers(1, 26, n)
    shown = np.minimum(cand, 6) - (rng.random(n) < 0.1) * (cand > 6)  # a few short slates
    sigma = 0.5 + 0.02 * cand  # heteroskedastic, mean-zero noise (what HC1 is for)
    dur = 50 + 0.8 * cand + 2.5 * shown + rng.lognormal(3, sigma, n) - np.exp(3 + sigma ** 2 / 2)
    return pd.DataFrame({"n_candidates": cand, "n_shown": shown, "duration": dur})


def _profile(rows: pd.DataFrame) -> pd.DataFrame:
    g = rows.assign(sq=rows.duration ** 2).groupby(["n_candidates", "n_shown"])
    return pd.DataFrame({"requests": g.size(), "sum_duration": g.duration.sum(),
                         "sumsq_duration": g.sq.sum()}).reset_index()


def test_grouped_ols_equals_statsmodels_hc1_on_the_rows():
    rows = _rows()
    model = performance.ols_from_groups(_profile(rows))
    ref = sm.OLS(rows.duration, sm.add_constant(rows[["n_candidates", "n_shown"]])).fit(
        cov_type="HC1")
    assert [model.coef[t] for t in performance.TERMS] == pytest.approx(list(ref.params), rel=1e-9)
    assert [model.se[t] for t in performance.TERMS] == pytest.approx(list(ref.bse), rel=1e-6)
    assert model.r2 == pytest.approx(ref.rsquared, rel=1e-9)
    assert model.n == len(rows) and model.note == ""
    # the planted slopes are inside the intervals
    assert model.ci_low["per_candidate"] < 0.8 < model.ci_high["per_candidate"]
    assert model.ci_low["per_shown"] < 2.5 < model.ci_high["per_shown"]


def test_degenerate_profiles_say_so():
    one = pd.DataFrame({"n_candidates": [5], "n_shown": [5], "requests": [3],
                        "sum_duration": [150.0], "sumsq_duration": [7600.0]})
    assert "too few" in performance.ols_from_groups(one).note
    rows = _rows().query("n_candidates <= 6")  # shown == candidates: collinear
    rows = rows.assign(n_shown=rows.n_candidates)
    assert "collinear" in performance.ols_from_groups(_profile(rows)).note


def test_max_items_cost_counts_extra_shown_whispers():
    counts = pd.DataFrame({"n_candidates": [3, 7, 12], "requests": [10, 10, 20]})
    assert performance.extra_shown(counts, 8) == pytest.approx((0 + 1 * 10 + 2 * 20) / 40)
    assert performance.extra_shown(counts, 6) == 0
    model = performance.ols_from_groups(_profile(_rows()))
    cost = performance.max_items_cost(model, counts, [6, 8, 10], 60.0, 110.0)
    row = cost.set_index("max_items").loc[10]
    assert row.extra_shown == pytest.approx((0 + 1 * 10 + 4 * 20) / 40)
    assert row.added_ms == pytest.approx(model.coef["per_shown"] * row.extra_shown)
    assert row.added_ci_low <= row.added_ms <= row.added_ci_high
    assert row.p95_ms == pytest.approx(110.0 + row.added_ms)


@pytest.fixture(scope="module")
def synthetic():
    frame = synthetic_log(20_000, seed=1, epsilon=0.2)
    data = prepare_replay(frame)
    return frame, data, clicks_what_if(data, (6, 8, 10), n_boot=200, seed=0)


def test_what_if_covers_the_exact_clicks_of_the_synthetic_world(synthetic):
    frame, data, w = synthetic
    ranks = logged_ranks(data)
    rel = frame["true_relevance"].to_numpy()
    n = data.n_requests
    # position-based truth; past position 6 the examination of position 6 (upper bound) or the
    # exponential continuation of the true curve (what the extrapolation assumes)
    decay = float(np.exp(np.polyfit(np.arange(6), np.log(EXAMINATION), 1)[0]))
    assert w.decay.ci_low < decay < w.decay.ci_high
    assert w.exam_ratios == pytest.approx(np.array(EXAMINATION) / EXAMINATION[-1], rel=0.1)
    t = w.table.set_index(["max_items", "reading"])
    for k in (8, 10):
        sel = (ranks > 6) & (ranks <= k)
        upper = EXAMINATION[-1] * rel[sel].sum() / n
        extrapolated = (EXAMINATION[-1] * rel[sel] * decay ** (ranks[sel] - 6)).sum() / n
        assert t.loc[(k, "upper"), "ci_low"] < upper < t.loc[(k, "upper"), "ci_high"]
        assert (t.loc[(k, "extrapolated"), "ci_low"] < extrapolated
                < t.loc[(k, "extrapolated"), "ci_high"])
    assert t.loc[(6, "today"), "clicks_gained"] == 0
    assert w.logged_clicks_per_request == pytest.approx(frame["click"].sum() / n)
    assert (t.loc[(10, "upper"), "clicks_gained"] > t.loc[(8, "upper"), "clicks_gained"]
            > t.loc[(8, "extrapolated"), "clicks_gained"] > 0)


def test_what_if_without_randomised_requests_has_no_estimate():
    data = prepare_replay(synthetic_log(2000, seed=2, epsilon=0.0))
    w = clicks_what_if(data, (6, 8), n_boot=50)
    row = w.table.query("max_items == 8 and reading == 'upper'").iloc[0]
    assert not np.isfinite(row.clicks_gained) or row.clicks_gained == 0
    assert w.randomised_requests == 0
    with pytest.raises(ValueError, match="k_max"):
        max_items_parts(data, 6)


def test_recommendation_needs_a_shown_gain_within_budget():
    clicks = pd.DataFrame([
        {"max_items": 8, "reading": "extrapolated", "clicks_gained": 0.02, "ci_low": 0.01,
         "ci_high": 0.03, "relative_gain": 0.02},
        {"max_items": 8, "reading": "upper", "clicks_gained": 0.03, "ci_low": 0.02,
         "ci_high": 0.04, "relative_gain": 0.03},
        {"max_items": 10, "reading": "extrapolated", "clicks_gained": 0.03, "ci_low": -0.01,
         "ci_high": 0.06, "relative_gain": 0.03},
    ])
    cost = pd.DataFrame([{"max_items": k, "extra_shown": 1.0, "added_ms": 1.0,
                          "added_ci_low": 0.0, "added_ci_high": 2.0, "mean_ms": 61.0,
                          "mean_ci_high": 62.0, "p95_ms": 120.0, "p95_ci_high": 121.0}
                         for k in (6, 8, 10)])
    rec = performance.recommend(clicks, cost, PLAN)
    assert rec.max_items == 8 and "Raise NEXT_PUBLIC_WHISPERS_MAX from 6 to 8" in rec.sentence
    assert len(rec.evidence) == 2
    slow = cost.assign(p95_ci_high=151.0)
    assert performance.recommend(clicks, slow, PLAN).max_items == 6


def test_performance_sql_on_a_simulated_export(small_export):
    with open_export(small_export) as ex:
        by_n = perf_sql.breakdown(ex, "n_candidates")
        by_hour = perf_sql.breakdown(ex, "hour")
        slow = perf_sql.slowest_minutes(ex, limit=5, min_requests=2)
        prof = perf_sql.latency_profile(ex)
        counts = perf_sql.candidate_counts(ex)
        now = perf_sql.overall(ex)
        raw = ex.sql("""SELECT a.duration_ms, a.ranking_ms FROM api_logs a
                        WHERE a.endpoint = '/api/whispers/context' AND a.status < 400
                          AND a.request_id IN (SELECT request_id FROM ranking_candidates)""")
    assert int(by_n.requests.sum()) == int(by_hour.requests.sum()) == int(prof.requests.sum()) \
        == int(counts.requests.sum()) == now["requests"] == len(raw)
    assert now["mean_duration_ms"] == pytest.approx(raw.duration_ms.mean())
    assert set(by_hour.hour) <= set(range(24)) and len(slow) == 5
    assert slow.mean_duration_ms.is_monotonic_decreasing and (slow.requests >= 2).all()
    np.testing.assert_allclose(by_n.mean_ranking_ms + by_n.mean_rest_ms, by_n.mean_duration_ms)
    with pytest.raises(ValueError, match="breakdown by"):
        with open_export(small_export) as ex:
            perf_sql.breakdown(ex, "weekday")


def _decision(folder: Path, day: int, decision: str, **extra) -> None:
    (folder / f"day-{day:02d}").mkdir(parents=True)
    doc = {"day": day, "date": f"2026-12-{day + 1:02d}", "decision": decision,
           "reasons": [f"reason of day {day}"], "phase": {"name": "Phase 3"}, **extra}
    (folder / f"day-{day:02d}" / "decision.json").write_text(json.dumps(doc), encoding="utf-8")


def test_lessons_skeleton_lists_holds_incidents_and_confirmations(tmp_path: Path):
    _decision(tmp_path, 0, "GO")
    _decision(tmp_path, 1, "NO_GO", blocking=["weight_persistence"], criteria=[
        {"id": "weight_persistence", "status": "fail", "reason": "3 users saw two versions"}])
    _decision(tmp_path, 2, "ROLLBACK", fired=["trigger_error_rate"], triggers=[
        {"id": "trigger_error_rate", "status": "fail", "reason": "error rate above 5% for 15 min"}])
    _decision(tmp_path, 3, "ERROR", error="export missing")
    (tmp_path / "rollback-20261203T185000Z").mkdir()
    (tmp_path / "rollback-20261203T185000Z" / "confirmation.json").write_text(json.dumps(
        {"verdict": "confirmed", "disabled_at": "2026-12-03T18:50:00", "rollout_day": 2}))
    out = lessons.write_skeleton(tmp_path, tmp_path / "lessons-learned.md")
    text = out.read_text(encoding="utf-8")
    assert "| 1 | 2026-12-02 | Phase 3 | NO_GO | reason of day 1 |" in text
    assert "**Day 1** (2026-12-02): held by weight_persistence" in text
    assert "`weight_persistence` (fail): 3 users saw two versions" in text
    assert "`trigger_error_rate`: error rate above 5% for 15 min" in text
    assert "confirmed (`rollback-20261203T185000Z/confirmation.html`)" in text
    assert "Day 3: export missing" in text and "Root cause (to write)" in text
    assert "No decision" in lessons.skeleton_markdown(lessons.collect(tmp_path / "none"))
