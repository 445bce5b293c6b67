"""Invariants with hypothesis: the ranker, the statistics' pure functions, the decision.

Not repeated here: context / use_count / recency monotonicity and a fixed permutation
(tests/test_ranker.py), cohort assignment (tests/test_cohort.py), "a fired trigger / a failing
required criterion never improves a decision" (tests/test_decision.py). Every property is
bounded (``max_examples``) so that the module stays well under 30 seconds.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from whispers_lab.decision import VERDICT_RANK, decide
from whispers_lab.plan import CRITERION_IDS, TRIGGER_IDS, load_plan
from whispers_lab.ranker import rank_batch, rank_request
from whispers_lab.results import STATUSES, CriterionResult
from whispers_lab.stats.cuped import cuped_difference
from whispers_lab.stats.noninferiority import ratio_interval, stratified_difference, z_interval
from whispers_lab.stats.rates import (
    exact_rate_ratio_ci,
    proportion_vs_threshold,
    quantile_ci_from_sorted,
    ratio_vs_threshold,
)
from whispers_lab.stats.settings import StatSettings
from whispers_lab.stats.srm import srm_test
from whispers_lab.stats.sufficient import ratio_from_units
from whispers_lab.weights import Weights

from factories import cuped_cells

PLAN = load_plan()
S = StatSettings()
Z = 1.6448536269514722  # two-sided 90%: the engine's intervals
#: Wilson intervals (statsmodels) can end one ulp short of 0 or 1 when the estimate is 0 or 1.
ULP = 1e-12
FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])

# ---------------------------------------------------------------------------------------------
# ranker

weights_st = st.builds(
    lambda ws, rh, nh, cap: Weights(*ws, recency_half_life_hours=rh, novelty_half_life_hours=nh,
                                    frequency_cap=cap),
    st.tuples(*[st.floats(0, 1)] * 5).filter(lambda ws: sum(ws) > 0),
    st.floats(0.01, 1e4), st.floats(0.01, 1e4), st.floats(0.01, 1e4),
)
FEATURES = ("context_similarity", "recency_hours", "use_count", "last_shown_hours", "pinned")
#: Coarse values, so that equal scores (and the tie rule) come up often.
candidate_st = st.fixed_dictionaries({
    "context_similarity": st.sampled_from([0.0, 0.25, 0.5, 1.0]),
    "recency_hours": st.sampled_from([0.0, 1.0, 24.0, 100.0]),
    "use_count": st.integers(0, 3),
    "last_shown_hours": st.none() | st.sampled_from([0.0, 6.0, 48.0]),
    "pinned": st.booleans(),
})


def _frame(cands: list[dict], request: str = "r1") -> pd.DataFrame:
    rows = [{**c, "memory_id": f"m{i:03d}", "request_id": request} for i, c in enumerate(cands)]
    frame = pd.DataFrame(rows, columns=["request_id", "memory_id", *FEATURES])
    frame["last_shown_hours"] = frame["last_shown_hours"].astype(float)
    return frame


@FAST
@given(cands=st.lists(candidate_st, max_size=14), max_items=st.integers(1, 9), w=weights_st)
def test_result_size_is_min_of_max_items_and_candidates(cands, max_items, w) -> None:
    frame = _frame(cands)
    items = rank_request(frame, w, max_items=max_items).items
    assert len(items) == min(max_items, len(cands))
    assert items["rank"].tolist() == list(range(1, len(items) + 1))
    if cands:
        assert int(rank_batch(frame, w, max_items=max_items)["selected"].sum()) == len(items)


@FAST
@given(cands=st.lists(candidate_st, min_size=1, max_size=14), w=weights_st, data=st.data(),
       context=st.booleans())
def test_permuting_the_rows_changes_nothing(cands, w, data, context) -> None:
    frame = _frame(cands)
    order = data.draw(st.permutations(range(len(frame))))
    shuffled = frame.iloc[list(order)]
    a = rank_request(frame, w, context_ranking=context).items
    b = rank_request(shuffled, w, context_ranking=context).items
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    batch = rank_batch(frame, w, context_ranking=context, contributions=True)
    again = rank_batch(shuffled, w, context_ranking=context, contributions=True)
    pd.testing.assert_frame_equal(again.loc[batch.index], batch, check_exact=True)


def _scores(rows: list[dict], w: Weights) -> np.ndarray:
    frame = pd.DataFrame([{**r, "memory_id": f"m{i}", "request_id": f"r{i}"}
                          for i, r in enumerate(rows)])
    frame["last_shown_hours"] = frame["last_shown_hours"].astype(float)
    return rank_batch(frame, w)["score"].to_numpy()


hours_st = st.floats(0, 1e5)


@FAST
@given(w=weights_st, base=candidate_st, a=hours_st, b=hours_st)
def test_longer_since_shown_never_lowers_the_score(w, base, a, b) -> None:
    """Novelty: more hours since the memory was last shown never lowers its score, and a
    memory never shown scores at least as high as one shown at any time."""
    sooner, later, never = _scores([{**base, "last_shown_hours": min(a, b)},
                                    {**base, "last_shown_hours": max(a, b)},
                                    {**base, "last_shown_hours": None}], w)
    assert sooner <= later <= never


@FAST
@given(w=weights_st, base=candidate_st)
def test_pinning_never_lowers_the_score(w, base) -> None:
    loose, pinned = _scores([{**base, "pinned": False}, {**base, "pinned": True}], w)
    assert loose <= pinned


@FAST
@given(cands=st.lists(candidate_st, min_size=1, max_size=12), w=weights_st, data=st.data())
def test_pinning_a_candidate_never_moves_it_down(cands, w, data) -> None:
    """Its score cannot drop and the others' are unchanged, so its rank cannot get worse."""
    i = data.draw(st.integers(0, len(cands) - 1))
    before = rank_batch(_frame(cands), w)["rank"].iloc[i]
    cands[i] = {**cands[i], "pinned": True}
    assert rank_batch(_frame(cands), w)["rank"].iloc[i] <= before


# ---------------------------------------------------------------------------------------------
# statistics: two-arm stratified difference (retention), CUPED

#: One stratum: (n_t, x_t, n_c, x_c) with 0 <= x <= n.
stratum_st = st.tuples(st.integers(2, 400), st.floats(0, 1), st.integers(2, 400),
                       st.floats(0, 1)).map(
    lambda t: (t[0], round(t[0] * t[1]), t[2], round(t[2] * t[3])))


def _strata(rows, swap: bool = False, scale: int = 1) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["n_t", "sum_t", "n_c", "sum_c"]).astype(float) * scale
    if swap:
        frame = frame.rename(columns={"n_t": "n_c", "sum_t": "sum_c", "n_c": "n_t",
                                      "sum_c": "sum_t"})
    return frame


@FAST
@given(rows=st.lists(stratum_st, min_size=1, max_size=5), k=st.integers(2, 50))
def test_stratified_difference_ci_sign_and_scale(rows, k) -> None:
    est = stratified_difference(_strata(rows))
    assume(est.ok)
    ci = z_interval(est.diff, est.se, Z)
    assert ci.low <= est.diff <= ci.high
    # swapping treatment and control flips the difference and inverts the ratio
    swapped = stratified_difference(_strata(rows, swap=True))
    assert swapped.diff == pytest.approx(-est.diff, abs=1e-12)
    assert swapped.se == pytest.approx(est.se, rel=1e-9)
    if math.isfinite(est.log_ratio):
        assert swapped.log_ratio == pytest.approx(-est.log_ratio, abs=1e-12)
        ratio = ratio_interval(est.log_ratio, est.se_log_ratio, Z)
        inverse = ratio_interval(swapped.log_ratio, swapped.se_log_ratio, Z)
        assert ratio.low <= math.exp(est.log_ratio) <= ratio.high
        assert inverse.low == pytest.approx(1 / ratio.high, rel=1e-9)
        assert inverse.high == pytest.approx(1 / ratio.low, rel=1e-9)
    # k times the users with the same rates: same estimate, a narrower interval
    bigger = stratified_difference(_strata(rows, scale=k))
    assert bigger.diff == pytest.approx(est.diff, abs=1e-12)
    assert bigger.se < est.se


def _cuped_cells(strata: list[tuple[np.ndarray, ...]], swap: bool = False) -> pd.DataFrame:
    groups = {i: ((yc, xc, yt, xt) if swap else (yt, xt, yc, xc))
              for i, (yt, xt, yc, xc) in enumerate(strata)}
    return cuped_cells(groups)


@st.composite
def cuped_strata(draw) -> list[tuple[np.ndarray, ...]]:
    seed = draw(st.integers(0, 2**32 - 1))
    sizes = draw(st.lists(st.tuples(st.integers(3, 60), st.integers(3, 60)), min_size=1,
                          max_size=4))
    rng = np.random.default_rng(seed)
    out = []
    for n_t, n_c in sizes:
        parts = []
        for n in (n_t, n_c):
            x = rng.poisson(4.0, n).astype(float)
            y = (rng.random(n) < 1 / (1 + np.exp(2.0 - 0.4 * x))).astype(float)
            parts += [y, x]
        out.append(tuple(parts))
    return out


@FAST
@given(strata=cuped_strata())
def test_cuped_ci_contains_the_estimate_and_swapping_flips_it(strata) -> None:
    est = cuped_difference(_cuped_cells(strata))
    assume(est.ok and est.adjusted.se > 0)
    ci = z_interval(est.adjusted.diff, est.adjusted.se, Z)
    assert ci.low <= est.adjusted.diff <= ci.high
    swapped = cuped_difference(_cuped_cells(strata, swap=True))
    assert swapped.theta == pytest.approx(est.theta, rel=1e-9, abs=1e-12)
    assert swapped.adjusted.diff == pytest.approx(-est.adjusted.diff, abs=1e-9)
    assert swapped.adjusted.se == pytest.approx(est.adjusted.se, rel=1e-9)
    assert swapped.unadjusted.diff == pytest.approx(-est.unadjusted.diff, abs=1e-9)


# ---------------------------------------------------------------------------------------------
# statistics: rates (CTR, relevance), ticket rate ratio, quantiles, SRM

clusters_st = st.lists(st.tuples(st.integers(0, 30), st.integers(1, 30)).map(
    lambda t: (min(t[0], t[1]), t[1])), min_size=2, max_size=60)


@FAST
@given(units=clusters_st, k=st.integers(2, 20))
def test_ratio_metric_ci_contains_the_estimate_and_narrows_with_more_users(units, k) -> None:
    num, den = np.array(units, dtype=float).T
    stat = ratio_from_units(num, den)
    res = ratio_vs_threshold("ctr", stat, 0.15, "min", S, "CTR", unit="users")
    assume(res.ci_low is not None)
    assert res.ci_low <= res.estimate <= res.ci_high
    more = ratio_vs_threshold("ctr", ratio_from_units(np.tile(num, k), np.tile(den, k)), 0.15,
                              "min", S, "CTR", unit="users")
    assert more.estimate == pytest.approx(res.estimate, rel=1e-12)
    assert more.ci_high - more.ci_low < res.ci_high - res.ci_low


@FAST
@given(units=clusters_st, k=st.integers(2, 20))
def test_proportion_ci_contains_the_estimate_and_narrows_with_more_users(units, k) -> None:
    num, den = np.array(units, dtype=float).T
    res = proportion_vs_threshold("relevance", ratio_from_units(num, den), 0.8, S, "Relevance")
    assert res.ci_low - ULP <= res.estimate <= res.ci_high + ULP
    more = proportion_vs_threshold("relevance", ratio_from_units(np.tile(num, k), np.tile(den, k)),
                                   0.8, S, "Relevance")
    assert more.ci_high - more.ci_low < res.ci_high - res.ci_low


@FAST
@given(ct=st.integers(0, 200), cc=st.integers(0, 200), et=st.floats(1, 1e5),
       ec=st.floats(1, 1e5), k=st.integers(2, 20))
def test_rate_ratio_ci_contains_inverts_and_narrows(ct, cc, et, ec, k) -> None:
    assume(ct + cc > 0)
    lo, hi = exact_rate_ratio_ci(ct, et, cc, ec, S.alpha)
    est = (ct / et) / (cc / ec) if cc else math.inf
    assert lo <= est <= hi
    # control vs treatment: the reciprocal interval
    lo2, hi2 = exact_rate_ratio_ci(cc, ec, ct, et, S.alpha)
    assert lo2 == pytest.approx(1 / hi if hi > 0 else math.inf, rel=1e-7)
    assert hi2 == pytest.approx(1 / lo if lo > 0 else math.inf, rel=1e-7)
    # k times the tickets over k times the user-days: the same ratio, a narrower interval
    lo3, hi3 = exact_rate_ratio_ci(k * ct, k * et, k * cc, k * ec, S.alpha)
    assert lo3 >= lo and hi3 <= hi and (lo3, hi3) != (lo, hi)


@FAST
@given(values=st.lists(st.floats(0, 1e4), min_size=1, max_size=200),
       q=st.sampled_from([0.05, 0.1, 0.5, 0.9, 0.95, 0.01, 0.99]),
       alpha=st.sampled_from([S.alpha, S.alpha / 2, S.alpha / 4]))
def test_quantile_interval_contains_the_sample_quantile(values, q, alpha) -> None:
    """As the lab uses it: p95 latency at any n; the canary's 1% / 99% tails only from
    canary_min_units (30) points. (With 2-5 points a 1% / 99% interval can miss the
    interpolated sample quantile: its lower end is the largest point.)"""
    assume(q not in (0.01, 0.99) or len(values) >= S.canary_min_units)
    lo, hi = quantile_ci_from_sorted(np.array(values), q, alpha)
    assert lo <= float(np.quantile(values, q)) <= hi


@FAST
@given(days=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 400),
                               st.sampled_from([0.1, 0.25, 0.5, 0.95])), min_size=1, max_size=5),
       k=st.integers(2, 20))
def test_srm_ci_contains_the_share_symmetric_and_sharper_with_more_users(days, k) -> None:
    frame = pd.DataFrame([(i, a, b, s) for i, (a, b, s) in enumerate(days)],
                         columns=["day", "n_t", "n_c", "share_t"])
    assume(int((frame["n_t"] + frame["n_c"]).sum()) >= S.min_group_users)
    res = srm_test(frame, S)
    assert res.ci_low - ULP <= res.estimate <= res.ci_high + ULP
    swapped = srm_test(frame.assign(n_t=frame["n_c"], n_c=frame["n_t"],
                                    share_t=1 - frame["share_t"]), S)
    assert swapped.estimate == pytest.approx(1 - res.estimate, abs=1e-12)
    assert swapped.p_value == pytest.approx(res.p_value, rel=1e-9, abs=1e-300)
    bigger = srm_test(frame.assign(n_t=frame["n_t"] * k, n_c=frame["n_c"] * k), S)
    assert bigger.ci_high - bigger.ci_low < res.ci_high - res.ci_low
    assert bigger.p_value <= res.p_value + 1e-12


# ---------------------------------------------------------------------------------------------
# decision


def _result(rid: str, status: str) -> CriterionResult:
    kind = "trigger" if rid in TRIGGER_IDS else "criterion"
    return CriterionResult(id=rid, kind=kind, value=1.0, threshold=1.0, status=status,
                           reason=f"{rid} is {status}.", unit="x")


results_st = st.lists(st.builds(_result, st.sampled_from(CRITERION_IDS + TRIGGER_IDS),
                                st.sampled_from(STATUSES)), max_size=25)
days_st = st.integers(0, PLAN.last_day + 2)
no_evidence_st = st.sampled_from(["no_data", "inconclusive"])


@settings(max_examples=300, deadline=None)
@given(results=results_st, day=days_st, status=no_evidence_st, data=st.data())
def test_a_required_criterion_without_evidence_never_improves_the_decision(results, day, status,
                                                                         data) -> None:
    cid = data.draw(st.sampled_from(PLAN.phase_for_day(day).required))
    before = decide(results, day, PLAN).decision
    after = decide([*results, _result(cid, status)], day, PLAN)
    assert after.decision != "GO" and cid in after.blocking
    assert VERDICT_RANK[after.decision] <= VERDICT_RANK[before]


@settings(max_examples=300, deadline=None)
@given(results=results_st, day=days_st, tid=st.sampled_from(TRIGGER_IDS), data=st.data())
def test_a_trigger_without_data_never_improves_the_decision(results, day, tid, data) -> None:
    before = decide(results, day, PLAN).decision
    after = decide([*results, _result(tid, "no_data")], day, PLAN).decision
    assert after != "GO" and VERDICT_RANK[after] <= VERDICT_RANK[before]


@settings(max_examples=300, deadline=None)
@given(results=results_st, day=days_st, status=no_evidence_st, data=st.data())
def test_a_watched_criterion_without_evidence_changes_nothing(results, day, status, data) -> None:
    """Missing evidence on a watched criterion is reported in the notes, never decisive."""
    watched = PLAN.phase_for_day(day).watched
    assume(watched)
    cid = data.draw(st.sampled_from(watched))
    before = decide(results, day, PLAN)
    after = decide([*results, _result(cid, status)], day, PLAN)
    assert after.decision == before.decision
    assert any(cid in note for note in after.notes)
