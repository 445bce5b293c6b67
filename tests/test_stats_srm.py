"""Sample-ratio mismatch against scipy's chi-square."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from whispers_lab.stats.settings import StatSettings
from whispers_lab.stats.srm import srm_test

S = StatSettings()


def frame(rows):
    return pd.DataFrame(rows, columns=["day", "n_t", "n_c", "share_t"])


def test_single_day_equals_scipy_pearson_chi_square():
    f = frame([(8, 120, 880, 0.095)])
    r = srm_test(f, S, 8)
    assert r.p_value == pytest.approx(stats.chisquare([120, 880], [95, 905]).pvalue, rel=1e-12)


def test_pooled_statistic_uses_the_exact_variance_over_days():
    f = frame([(5, 0, 900, 0.0), (8, 95, 905, 0.095), (9, 110, 890, 0.095), (10, 240, 760, 0.2375)])
    r = srm_test(f, S, 10)
    rand = f[f["share_t"] > 0]
    n = rand["n_t"] + rand["n_c"]
    e_t = float((n * rand["share_t"]).sum())
    v = float((n * rand["share_t"] * (1 - rand["share_t"])).sum())
    z = (rand["n_t"].sum() - e_t) / np.sqrt(v)
    assert r.p_value == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-9)
    assert r.status == "pass"
    assert r.estimate == pytest.approx(rand["n_t"].sum() / n.sum())
    assert r.ci_low < r.estimate < r.ci_high
    # the omnibus in the details is the sum of the per-day Pearson statistics
    per_day = [stats.chisquare([a, b], [m * s, m * (1 - s)]).statistic
               for a, b, m, s in zip(rand["n_t"], rand["n_c"], n, rand["share_t"], strict=True)]
    assert r.details["omnibus_chi2"] == pytest.approx(sum(per_day))


def test_mismatch_fails_with_a_sentence():
    r = srm_test(frame([(8, 150, 850, 0.095)]), S, 8)
    assert r.status == "fail"
    assert r.p_value < S.srm_p_value
    assert "mismatch" in r.sentence.lower()


def test_treatment_on_a_day_without_random_split_is_a_mismatch():
    r = srm_test(frame([(4, 3, 900, 0.0), (5, 0, 800, 0.0)]), S, 5)
    assert r.status == "fail"
    assert r.details["wrong_side"] == 3
    ok = srm_test(frame([(4, 0, 900, 0.0)]), S, 4)
    assert ok.status == "pass"


def test_no_users_is_no_data():
    assert srm_test(frame([]), S, 3).status == "no_data"
    assert srm_test(frame([(3, 0, 0, 0.0)]), S, 3).status == "no_data"
