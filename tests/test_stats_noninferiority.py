"""Stratified difference and non-inferiority verdicts against statsmodels."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from statsmodels.stats import proportion as smp
from statsmodels.stats.proportion import confint_proportions_2indep

from whispers_lab.stats.noninferiority import (
    ni_p_value,
    noninferiority_status,
    ratio_interval,
    stratified_difference,
    z_interval,
)

Z90 = 1.6448536269514722


def one_stratum(n_t, x_t, n_c, x_c):
    return pd.DataFrame({"n_t": [n_t], "sum_t": [x_t], "n_c": [n_c], "sum_c": [x_c]})


def test_single_stratum_difference_equals_statsmodels_wald():
    est = stratified_difference(one_stratum(1200, 480, 1500, 630))
    lo, hi = confint_proportions_2indep(480, 1200, 630, 1500, method="wald", compare="diff",
                                        alpha=0.10)
    ci = z_interval(est.diff, est.se, Z90)
    assert est.diff == pytest.approx(480 / 1200 - 630 / 1500)
    assert ci.low == pytest.approx(lo, rel=1e-9)
    assert ci.high == pytest.approx(hi, rel=1e-9)


def test_single_stratum_ratio_equals_statsmodels_log_method():
    est = stratified_difference(one_stratum(1200, 480, 1500, 630))
    lo, hi = confint_proportions_2indep(480, 1200, 630, 1500, method="log", compare="ratio",
                                        alpha=0.10)
    ci = ratio_interval(est.log_ratio, est.se_log_ratio, Z90)
    assert ci.low == pytest.approx(lo, rel=1e-9)
    assert ci.high == pytest.approx(hi, rel=1e-9)


def test_noninferiority_p_value_equals_statsmodels_wald_test():
    est = stratified_difference(one_stratum(5000, 2010, 5200, 2100))
    res = smp.test_proportions_2indep(2010, 5000, 2100, 5200, value=-0.02, method="wald",
                                  compare="diff", alternative="larger")
    assert ni_p_value(est.diff, est.se, -0.02) == pytest.approx(res.pvalue, rel=1e-6)


def test_stratified_estimate_equals_ols_with_stratum_fixed_effects():
    rng = np.random.default_rng(3)
    rows, cells = [], []
    for s, (nt, nc, pt, pc) in enumerate([(40, 400, 0.5, 0.45), (300, 300, 0.3, 0.32),
                                          (900, 100, 0.2, 0.18)]):
        yt, yc = rng.random(nt) < pt, rng.random(nc) < pc
        rows += [(s, 1, v) for v in yt] + [(s, 0, v) for v in yc]
        cells.append({"n_t": nt, "sum_t": yt.sum(), "n_c": nc, "sum_c": yc.sum()})
    df = pd.DataFrame(rows, columns=["s", "t", "y"]).astype(float)
    x = pd.get_dummies(df["s"].astype(int), prefix="s", dtype=float)
    x["t"] = df["t"]
    ols = sm.OLS(df["y"], x).fit()
    est = stratified_difference(pd.DataFrame(cells))
    assert est.diff == pytest.approx(ols.params["t"], rel=1e-9)
    assert est.n_strata == 3
    assert est.weight == pytest.approx(sum(c["n_t"] * c["n_c"] / (c["n_t"] + c["n_c"])
                                           for c in cells))


def test_strata_missing_an_arm_are_dropped_and_empty_input_is_coded():
    st = pd.DataFrame({"n_t": [0, 100, 50], "sum_t": [0, 40, 20], "n_c": [300, 100, 0],
                       "sum_c": [90, 35, 0]})
    est = stratified_difference(st)
    assert est.n_strata == 1
    assert est.diff == pytest.approx(0.40 - 0.35)
    empty = stratified_difference(st.iloc[0:0])
    assert not empty.ok and math.isnan(empty.diff)
    assert not stratified_difference(st.iloc[[0]]).ok


def test_status_rule():
    assert noninferiority_status(-0.01, 0.03, -0.02) == "pass"
    assert noninferiority_status(-0.06, -0.03, -0.02) == "fail"
    assert noninferiority_status(-0.03, 0.01, -0.02) == "inconclusive"
    assert noninferiority_status(math.nan, 0.01, -0.02) == "inconclusive"
    # infinite sequential bound (no alpha spent yet) never passes
    iv = z_interval(0.01, 0.001, math.inf)
    assert noninferiority_status(iv.low, iv.high, -0.02) == "inconclusive"
