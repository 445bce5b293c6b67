"""Bootstrap and delta-method intervals against independent formulas (scipy)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from whispers_lab.replay.uncertainty import (
    cluster_parts,
    delta_se,
    interval,
    mean_combine,
    paired,
    poisson_sums,
)


def _mean_parts(x):
    return np.column_stack([x, np.ones_like(x)])


def test_delta_se_of_mean_is_standard_error():
    x = np.random.default_rng(1).normal(size=500)
    assert delta_se(_mean_parts(x), mean_combine) == pytest.approx(stats.sem(x), rel=1e-6)


def test_delta_se_of_ratio_matches_textbook_formula():
    rng = np.random.default_rng(2)
    x = rng.uniform(1, 3, size=2000)
    y = 0.4 * x + rng.normal(0, 0.3, size=2000)
    r = y.sum() / x.sum()
    # ratio estimator: var(R) ~ var(y - R x) / (n * xbar^2)
    expected = np.sqrt(np.var(y - r * x, ddof=1) / (len(x) * x.mean() ** 2))
    got = delta_se(np.column_stack([y, x]), mean_combine)
    assert got == pytest.approx(expected, rel=1e-4)


def test_bootstrap_close_to_delta_and_seeded():
    x = np.random.default_rng(3).exponential(size=3000)
    b1 = interval(_mean_parts(x), n_boot=800, seed=5)
    b2 = interval(_mean_parts(x), n_boot=800, seed=5)
    d = interval(_mean_parts(x), method="delta")
    assert b1 == b2
    assert b1.estimate == pytest.approx(x.mean())
    assert b1.ci_low < x.mean() < b1.ci_high
    assert b1.se == pytest.approx(d.se, rel=0.15)
    assert b1.ci_low == pytest.approx(d.ci_low, abs=0.02)


def test_poisson_sums_chunks_agree():
    x = _mean_parts(np.arange(100.0))
    a = poisson_sums(x, 50, seed=9, chunk_cells=50 * 7)
    b = poisson_sums(x, 50, seed=9, chunk_cells=50 * 7)
    np.testing.assert_allclose(a, b)
    assert a.shape == (50, 2)
    assert abs(a[:, 1].mean() - 100) < 10  # Poisson(1) weights sum to ~n


def test_paired_matches_paired_t_test():
    rng = np.random.default_rng(4)
    base = rng.normal(size=4000)
    a = base + rng.normal(0.05, 0.5, size=4000)
    b = base
    res = paired(_mean_parts(a), mean_combine, _mean_parts(b), mean_combine, method="delta")
    t = stats.ttest_rel(a, b)
    assert res.estimate == pytest.approx((a - b).mean())
    assert res.p_value == pytest.approx(t.pvalue, rel=0.05)
    ci = t.confidence_interval()
    assert res.ci_low == pytest.approx(ci.low, rel=0.01)
    boot = paired(_mean_parts(a), mean_combine, _mean_parts(b), mean_combine, n_boot=1000, seed=1)
    assert boot.ci_low == pytest.approx(ci.low, abs=0.01)
    assert (boot.p_value < 0.05) == (t.pvalue < 0.05)


def test_paired_identical_is_zero_with_p_one():
    x = np.random.default_rng(0).normal(size=200)
    res = paired(_mean_parts(x), mean_combine, _mean_parts(x), mean_combine, n_boot=200)
    assert res.estimate == 0 and res.ci_low == 0 and res.ci_high == 0 and res.p_value == 1.0


def test_clusters_widen_interval_for_correlated_units():
    rng = np.random.default_rng(6)
    users = np.repeat(np.arange(200), 20)
    x = np.repeat(rng.normal(size=200), 20) + rng.normal(0, 0.1, size=4000)
    flat = interval(_mean_parts(x), method="delta")
    clus = interval(_mean_parts(x), method="delta", clusters=users)
    assert clus.n_units == 200 and flat.n_units == 4000
    assert clus.se > 3 * flat.se
    np.testing.assert_allclose(cluster_parts(_mean_parts(x), users)[:, 1], 20)


def test_empty_input():
    res = interval(np.zeros((0, 2)))
    assert res.n_units == 0 and np.isnan(res.estimate)
