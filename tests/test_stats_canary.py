"""Canary: Hodges-Lehmann against brute force, Mann-Whitney against scipy, band and tails."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from whispers_lab.stats.canary import (
    _first_not_below,
    _order_statistic,
    bounded_sample,
    canary_metric,
    hodges_lehmann,
    tails_check,
)
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


def _u_inversion(t, c, alpha):
    """Brute force over the m x n differences: the ends of ``{d : |U(d) - mn/2| <= z sd}`` and
    the median's two sides, each as (value, open) where open means "just past the value" (the
    infimum or supremum is not attained: U jumps over the target at that difference)."""
    d = (np.asarray(t, float)[:, None] - np.asarray(c, float)[None, :]).ravel()
    m, n = len(t), len(c)
    mn = m * n
    z = stats.norm.isf(alpha)
    sd = math.sqrt(mn * (m + n + 1) / 12)

    def u(x):
        return (d > x).sum() + 0.5 * (d == x).sum()

    def inf_at_most(target):
        for v in np.unique(d):
            if u(v) <= target:
                return v, False
            if (d > v).sum() <= target:
                return v, True
        raise AssertionError

    def sup_at_least(target):
        for v in np.unique(d)[::-1]:
            if u(v) >= target:
                return v, False
            if (d >= v).sum() >= target:
                return v, True
        raise AssertionError

    return (inf_at_most(mn / 2), sup_at_least(mn / 2), inf_at_most(mn / 2 + z * sd),
            sup_at_least(mn / 2 - z * sd))


def _placed(ref, upward):
    """The float a (value, open) end of :func:`_u_inversion` lands on."""
    v, is_open = ref
    return np.nextafter(v, np.inf if upward else -np.inf) if is_open else v


@pytest.mark.parametrize("seed", range(6))
def test_hodges_lehmann_inverts_the_mid_rank_test_exactly_on_ties(seed):
    """Count data (many equal values): every end is the difference where U crosses its target,
    exactly, or the float just past it when U jumps over the target there."""
    rng = np.random.default_rng(seed)
    m, n = rng.integers(30, 120, 2)
    lam = [0.3, 3.0][seed % 2]
    t, c = rng.poisson(lam, m).astype(float), rng.poisson(lam * 1.1, n).astype(float)
    h = hodges_lehmann(t, c, 0.05)
    a, b, low, high = _u_inversion(t, c, 0.05)
    assert h.low == _placed(low, upward=True) and h.high == _placed(high, upward=False)
    assert h.shift == pytest.approx(0.5 * (_placed(a, upward=True) + _placed(b, upward=False)),
                                    abs=1e-12)


def test_an_interval_end_on_a_tie_at_zero_is_zero_exactly():
    """33 of 40 treated users at 0 and the rest at 1, every control user at 0: the mid-rank
    U at zero shift (987) lies within mn/2 +- z sd (662.7 to 1017.3), so both ends of the
    interval are 0 exactly, and the location test (``low > 0``) does not call the shift
    significant. The bisection this replaced never probed exactly 0 and returned a lower end of
    1.6e-30, a float artifact that read as a significant increase."""
    t = np.array([0.0] * 33 + [1.0] * 7)
    c = np.zeros(42)
    h = hodges_lehmann(t, c, 0.05)
    assert (h.low, h.high, h.shift) == (0.0, 0.0, 0.0)
    assert h.u_statistic == 987.0


@pytest.mark.parametrize("values", ["tenths", "continuous"])
def test_pairwise_difference_selection_equals_sorting_every_difference(values):
    """Past the size where the remaining differences are sorted directly (a million cells
    here), with values in tenths (0.3 - 0.1 rounds to 0.19999999999999998, so a search for
    ``t_i - pivot`` in c can put a block of equal values on the wrong side of the pivot)."""
    rng = np.random.default_rng(7)
    if values == "tenths":
        t = np.sort(np.round(rng.lognormal(0.3, 0.4, 1000), 1))
        c = np.sort(np.round(rng.lognormal(0.2, 0.4, 1100), 1))
    else:
        t, c = np.sort(rng.normal(0.3, 1, 1000)), np.sort(rng.normal(0, 1, 1100))
    every = np.sort((t[:, None] - c[None, :]).ravel())
    for rank in (1, 17, every.size // 3, every.size // 2, every.size - 5, every.size):
        assert _order_statistic(t, c, rank) == every[rank - 1]


def test_counts_around_a_pivot_are_those_of_the_rounded_differences():
    """The selection's counts per row agree with the differences as numpy rounds them; the
    plain search for ``t_i - pivot`` in c disagreed for more than half of such pivots."""
    rng = np.random.default_rng(1)
    plain_wrong = 0
    for _ in range(300):
        t = np.sort(np.round(rng.uniform(0, 3, 50), 1))
        c = np.sort(np.round(rng.uniform(0, 3, 50), 1))
        d = t[:, None] - c[None, :]
        pivot = d[rng.integers(50), rng.integers(50)]
        for strict in (True, False):
            not_below = (d >= pivot) if strict else (d > pivot)
            assert (_first_not_below(t, c, pivot, strict) == not_below.sum(axis=1)).all()
        plain = np.searchsorted(c, t - pivot, side="right")
        plain_wrong += bool((plain != (d >= pivot).sum(axis=1)).any())
    assert plain_wrong > 100
