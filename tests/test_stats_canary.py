"""Canary: Hodges-Lehmann against brute force, Mann-Whitney against scipy, band and tails."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from whispers_lab.stats.canary import bounded_sample, canary_metric, hodges_lehmann, tails_check
from whispers_lab.stats.settings import StatSettings

S = StatSettings()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hodges_lehmann_equals_brute_force_pairwise_differences(seed):
    rng = np.random.default_rng(seed)
    t = rng.lognormal(0.1, 0.6, size=70)
    c = rng.lognormal(0.0, 0.6, size=55)
    h = hodges_lehmann(t, c, 0.05)
    d = np.sort((t[:, None] - c[None, :]).ravel())
    m, n = t.size, c.size
    assert h.shift == pytest.approx(np.median(d), abs=1e-9)
    # Lehmann's interval: the (k+1)-th smallest and (mn-k)-th smallest differences
    k = math.floor(m * n / 2 - stats.norm.isf(0.05) * math.sqrt(m * n * (m + n + 1) / 12))
    assert h.low == pytest.approx(d[k], abs=1e-9)
    assert h.high == pytest.approx(d[m * n - k - 1], abs=1e-9)
    mw = stats.mannwhitneyu(t, c, alternative="two-sided", method="asymptotic")
    assert h.p_value == pytest.approx(mw.pvalue)


def test_same_distribution_with_enough_users_passes():
    rng = np.random.default_rng(3)
    r = canary_metric("d", rng.lognormal(4, 0.5, 6000), rng.lognormal(4, 0.5, 6000), "increase",
                      S, "Duration")
    assert r.status == "pass", r.sentence
    assert r.ci_low < 1 < r.ci_high


def test_shift_beyond_the_band_fails():
    rng = np.random.default_rng(4)
    r = canary_metric("d", rng.lognormal(4.25, 0.5, 5000), rng.lognormal(4, 0.5, 5000),
                      "increase", S, "Duration")
    assert r.status == "fail"
    assert r.estimate > S.canary_band[1]
    # the same shift downwards is harmless for a latency
    r2 = canary_metric("d", rng.lognormal(3.75, 0.5, 5000), rng.lognormal(4, 0.5, 5000),
                       "increase", S, "Duration")
    assert r2.details["location_status"] == "pass"


def test_variance_blow_up_passes_location_but_fails_tails():
    rng = np.random.default_rng(5)
    c = rng.lognormal(4, 0.3, 8000)
    t = rng.lognormal(4, 0.9, 8000)  # same median, much wider
    r = canary_metric("d", t, c, "increase", S, "Duration")
    assert abs(r.details["hl_shift"]) < 0.2 * np.median(c) or r.details["location_status"] != "fail"
    assert r.details["tails"]["status"] == "fail"
    assert r.status == "fail"


def test_decrease_harm_for_app_opens():
    rng = np.random.default_rng(6)
    c = rng.poisson(4.0, 5000) + 1.0
    t = rng.poisson(3.0, 5000) + 1.0
    assert canary_metric("o", t, c, "decrease", S, "Opens").status == "fail"
    tails = tails_check(c, c, "decrease", S)
    assert tails["status"] != "fail"


def test_too_few_points_is_inconclusive_and_empty_is_no_data():
    rng = np.random.default_rng(7)
    assert canary_metric("d", rng.random(10), rng.random(500), "increase", S, "D").status == "inconclusive"
    assert canary_metric("d", np.array([]), rng.random(500), "increase", S, "D").status == "no_data"


def test_all_zero_error_rates_are_not_a_failure():
    r = canary_metric("e", np.zeros(500), np.zeros(500), "increase", S, "Errors")
    assert r.status == "pass"


def test_bounded_sample_is_seeded_and_bounded():
    v = np.arange(100000, dtype=float)
    a, b = bounded_sample(v, 1000, 3), bounded_sample(v, 1000, 3)
    assert a.size == 1000 and np.array_equal(a, b)
    assert bounded_sample(v[:10], 1000, 3).size == 10
