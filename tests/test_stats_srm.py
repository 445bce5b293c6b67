"""Sample-ratio mismatch against scipy's chi-square."""

from __future__ import annotations

import pandas as pd
import pytest
from scipy import stats

from whispers_lab.stats.settings import StatSettings
from whispers_lab.stats.srm import srm_test

S = StatSettings()


def frame(rows):
    return pd.DataFrame(rows, columns=["day", "n_t", "n_c", "share_t"])


def test_pooled_chi_square_equals_scipy():
    f = frame([(5, 0, 900, 0.0), (8, 95, 905, 0.095), (9, 110, 890, 0.095), (10, 240, 760, 0.2375)])
    r = srm_test(f, S, 10)
    rand = f[f["share_t"] > 0]
    n = rand["n_t"] + rand["n_c"]
    e_t = float((n * rand["share_t"]).sum())
    o_t = float(rand["n_t"].sum())
    expected = stats.chisquare([o_t, n.sum() - o_t], [e_t, n.sum() - e_t]).pvalue
    assert r.p_value == pytest.approx(expected, rel=1e-12)
    assert r.status == "pass"
    assert r.estimate == pytest.approx(o_t / n.sum())
    assert r.ci_low < r.estimate < r.ci_high


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
