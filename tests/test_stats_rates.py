"""Threshold metrics: ratio (CTR), proportion (relevance), rate ratio (tickets), quantile (p95)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import stats
from statsmodels.stats import rates as smr
from statsmodels.stats.proportion import proportion_confint

from whispers_lab.stats.rates import (
    exact_rate_ratio_ci,
    order_statistic_ranks,
    proportion_vs_threshold,
    quantile_ci_from_sorted,
    quantile_vs_threshold,
    rate_ratio_mde,
    ratio_vs_threshold,
    threshold_status,
    ticket_rate_ratio,
)
from whispers_lab.stats.settings import StatSettings
from whispers_lab.stats.sufficient import ratio_from_units

S = StatSettings()


def _clicks(rng, users, ctr):
    impressions = rng.integers(1, 30, size=users)
    user_ctr = np.clip(rng.normal(ctr, 0.08, size=users), 0.01, 0.99)
    return rng.binomial(impressions, user_ctr), impressions


def test_delta_method_ratio_variance_equals_cluster_robust_ols():
    rng = np.random.default_rng(0)
    clicks, imps = _clicks(rng, 400, 0.2)
    stat = ratio_from_units(clicks, imps)
    # one row per impression, clicked 0/1, clustered by user
    user = np.repeat(np.arange(400), imps)
    y = np.concatenate([np.r_[np.ones(c), np.zeros(m - c)] for c, m in zip(clicks, imps, strict=True)])
    fit = sm.OLS(y, np.ones_like(y)).fit(cov_type="cluster", cov_kwds={"groups": user})
    assert stat.ratio == pytest.approx(fit.params[0])
    assert math.sqrt(stat.var_of_ratio) == pytest.approx(fit.bse[0], rel=1e-9)


def test_ctr_verdicts():
    rng = np.random.default_rng(1)
    good = ratio_vs_threshold("ctr", ratio_from_units(*_clicks(rng, 2000, 0.22)), 0.15, "min", S, "CTR")
    bad = ratio_vs_threshold("ctr", ratio_from_units(*_clicks(rng, 2000, 0.10)), 0.15, "min", S, "CTR")
    near = ratio_vs_threshold("ctr", ratio_from_units(*_clicks(rng, 30, 0.15)), 0.15, "min", S, "CTR")
    assert (good.status, bad.status, near.status) == ("pass", "fail", "inconclusive")
    assert good.p_value < S.alpha < bad.p_value
    few = ratio_vs_threshold("ctr", ratio_from_units([1, 2], [5, 6]), 0.15, "min", S, "CTR")
    assert few.status == "inconclusive" and "only 2" in few.sentence
    none = ratio_vs_threshold("ctr", ratio_from_units([], []), 0.15, "min", S, "CTR")
    assert none.status == "no_data"


def test_relevance_with_one_answer_per_user_is_wilson_and_exact_binomial():
    relevant = np.r_[np.ones(172), np.zeros(28)]
    r = proportion_vs_threshold("relevance", ratio_from_units(relevant, np.ones(200)), 0.8, S,
                                "Relevance")
    lo, hi = proportion_confint(172, 200, alpha=0.10, method="wilson")
    assert (r.ci_low, r.ci_high) == pytest.approx((lo, hi))
    assert r.p_value == pytest.approx(stats.binomtest(172, 200, 0.8, alternative="greater").pvalue)
    assert r.status == "pass"


def test_relevance_clustered_answers_widen_the_interval():
    rng = np.random.default_rng(4)
    answers = rng.integers(1, 12, size=60)
    p_user = rng.choice([0.3, 0.95], size=60)
    relevant = rng.binomial(answers, p_user)
    r = proportion_vs_threshold("relevance", ratio_from_units(relevant, answers), 0.8, S, "R")
    naive = proportion_confint(relevant.sum(), answers.sum(), alpha=0.1, method="wilson")
    assert r.details["design_effect"] > 1.5
    assert r.ci_high - r.ci_low > naive[1] - naive[0]


def test_exact_rate_ratio_interval_inverts_the_exact_conditional_test():
    lo, hi = exact_rate_ratio_ci(30, 10000.0, 50, 25000.0, 0.05)
    # at each end the one-sided exact conditional test sits exactly at alpha
    p_lo = smr.test_poisson_2indep(30, 10000.0, 50, 25000.0, value=lo, method="exact-cond",
                               alternative="larger").pvalue
    p_hi = smr.test_poisson_2indep(30, 10000.0, 50, 25000.0, value=hi, method="exact-cond",
                               alternative="smaller").pvalue
    assert p_lo == pytest.approx(0.05, abs=1e-6)
    assert p_hi == pytest.approx(0.05, abs=1e-6)


def test_ticket_verdicts():
    inc = ticket_rate_ratio(80, 10000.0, 30, 10000.0, 1.0, S, 500, 500)
    same = ticket_rate_ratio(400, 100000.0, 410, 100000.0, 1.0, S, 5000, 5000)
    thin = ticket_rate_ratio(2, 1000.0, 1, 1000.0, 1.0, S, 100, 100)
    zero = ticket_rate_ratio(0, 1000.0, 0, 1000.0, 1.0, S, 100, 100)
    assert inc.status == "fail"
    assert same.status == "pass" and same.details["mde_rate_ratio"] < 2
    assert thin.status == "inconclusive"
    assert zero.status == "inconclusive"
    assert ticket_rate_ratio(1, 10.0, 1, 10.0, 1.0, S, 2, 2).status == "inconclusive"
    assert ticket_rate_ratio(0, 0.0, 1, 10.0, 1.0, S, 0, 2).status == "no_data"
    assert ticket_rate_ratio(0, 5.0, 1, 10.0, 1.0, S, 9, 9, has_table=False).status == "no_data"


def test_rate_ratio_mde_is_detected_with_the_stated_power():
    # simulate the exact conditional test at the MDE: power should be close to 80%
    rng = np.random.default_rng(9)
    e_t, e_c, base = 20000.0, 20000.0, 0.01
    mde = rate_ratio_mde(2 * e_t * base, e_t, e_c, 0.05, 0.8)
    c_t = rng.poisson(base * mde * e_t, size=2000)
    c_c = rng.poisson(base * e_c, size=2000)
    rejected = [smr.test_poisson_2indep(a, e_t, b, e_c, value=1.0, method="exact-cond",
                                    alternative="larger").pvalue < 0.05 for a, b in zip(c_t, c_c, strict=True)]
    assert 0.70 < np.mean(rejected) < 0.86


def test_order_statistic_interval_equals_scipy_quantile_test():
    rng = np.random.default_rng(0)
    for n in (50, 300, 2000):
        x = rng.lognormal(4.5, 0.4, size=n)
        ci = stats.quantile_test(x, q=np.quantile(x, 0.95), p=0.95).confidence_interval(0.9)
        lo, hi = quantile_ci_from_sorted(x, 0.95, 0.05)
        assert lo == pytest.approx(ci.low)
        assert (hi == pytest.approx(ci.high)) if np.isfinite(ci.high) else math.isinf(hi)
    assert order_statistic_ranks(1000, 0.95, 0.05) == (938, 962)


def test_p95_verdicts_and_p_value():
    rng = np.random.default_rng(2)
    x = np.sort(rng.lognormal(4.5, 0.3, size=5000))  # p95 ~ 147 ms
    lo_r, hi_r = order_statistic_ranks(x.size, 0.95, 0.05)
    below = int((x < 200).sum())
    r = quantile_vs_threshold("p95", x.size, float(np.quantile(x, 0.95)), x[lo_r - 1],
                              x[hi_r - 1], below, 0.95, 200.0, S, "p95")
    assert r.status == "pass"
    assert r.p_value == pytest.approx(stats.binomtest(below, x.size, 0.95,
                                                      alternative="greater").pvalue)
    r2 = quantile_vs_threshold("p95", x.size, float(np.quantile(x, 0.95)), x[lo_r - 1],
                               x[hi_r - 1], int((x < 100).sum()), 0.95, 100.0, S, "p95")
    assert r2.status == "fail"
    assert quantile_vs_threshold("p95", 0, None, None, None, 0, 0.95, 150.0, S, "p95").status == "no_data"


def test_threshold_status_table():
    assert threshold_status(0.16, 0.2, 0.15, "min") == "pass"
    assert threshold_status(0.1, 0.14, 0.15, "min") == "fail"
    assert threshold_status(0.14, 0.16, 0.15, "min") == "inconclusive"
    assert threshold_status(100, 140, 150, "max") == "pass"
    assert threshold_status(151, 170, 150, "max") == "fail"
    assert threshold_status(math.nan, 170, 150, "max") == "inconclusive"
