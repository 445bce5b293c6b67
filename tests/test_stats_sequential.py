"""Group-sequential boundaries against published tables and an independent integration."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from whispers_lab.stats import sequential as seq


def test_classical_obrien_fleming_matches_published_table():
    # Jennison & Turnbull (2000) Table 2.3 / O'Brien & Fleming (1979): K = 5, two-sided 0.05
    # (one-sided 0.025, the lower crossing probability is negligible): 4.56, 3.23, 2.63, 2.28, 2.04
    b = seq.classical_boundaries(5, 0.025, "obrien_fleming")
    np.testing.assert_allclose(b, [4.56, 3.23, 2.63, 2.28, 2.04], atol=0.006)


def test_classical_pocock_matches_published_constant():
    # Pocock (1977): K = 5, two-sided 0.05 -> 2.413 at every look
    b = seq.classical_boundaries(5, 0.025, "pocock")
    np.testing.assert_allclose(b, 2.413, atol=0.001)


def test_lan_demets_obrien_fleming_spending_matches_published_values():
    # Lan-DeMets O'Brien-Fleming-type spending, 5 equally spaced looks, one-sided 0.025
    # (gsDesign sfLDOF / Jennison & Turnbull ch. 7): 4.877, 3.357, 2.680, 2.290, 2.031
    t = np.arange(1, 6) / 5
    b = seq.boundaries(t, t, 0.025, "obrien_fleming")
    np.testing.assert_allclose(b, [4.877, 3.357, 2.680, 2.290, 2.031], atol=0.002)


def test_lan_demets_pocock_spending_matches_published_values():
    # Pocock-type spending alpha*ln(1+(e-1)t), K = 5, one-sided 0.025: 2.438 2.427 2.410 2.397 2.386
    t = np.arange(1, 6) / 5
    b = seq.boundaries(t, t, 0.025, "pocock")
    np.testing.assert_allclose(b, [2.438, 2.427, 2.410, 2.397, 2.386], atol=0.002)


def test_spending_function_endpoints():
    for kind in ("obrien_fleming", "pocock"):
        assert seq.spending(0.0, 0.05, kind) == pytest.approx(0.0)
        assert seq.spending(1.0, 0.05, kind) == pytest.approx(0.05)
        s = seq.spending(np.linspace(0, 1, 11), 0.05, kind)
        assert np.all(np.diff(s) >= 0)


def test_unequal_looks_spend_exactly_and_agree_with_multivariate_normal():
    info = np.array([90.0, 250.0, 420.0, 600.0])
    frac = info / info[-1]
    b = seq.boundaries(info, frac, 0.05, "obrien_fleming")
    exits = seq.exit_probabilities(b, info)
    np.testing.assert_allclose(np.cumsum(exits), seq.spending(frac, 0.05, "obrien_fleming"),
                               atol=1e-7)
    # independent: P(Z_k < b_k for all k) under corr(Z_i, Z_j) = sqrt(I_i / I_j) (Genz)
    corr = np.sqrt(np.minimum.outer(info, info) / np.maximum.outer(info, info))
    p_continue = stats.multivariate_normal(mean=np.zeros(4), cov=corr, seed=1).cdf(b)
    assert 1 - p_continue == pytest.approx(0.05, abs=2e-4)


def test_drift_gives_power():
    # with the standardised effect making E[Z_K] = 2.49 the fixed design has ~80% power at
    # one-sided 0.025; the O'Brien-Fleming design loses only a little
    t = np.arange(1, 6) / 5
    b = seq.boundaries(t, t, 0.025, "obrien_fleming")
    power = seq.exit_probabilities(b, t * 100, drift=(1.96 + 0.8416) / 10).sum()
    assert 0.76 < power < 0.80


def test_projected_fractions_monotone_and_final_look_spends_everything():
    frac = seq.projected_fractions([0, 100, 101, 500, 800, 1100, 1100], 7)
    assert frac[0] == 0.0
    assert np.all(np.diff(frac) >= 0)
    assert frac[-1] == 1.0
    # a slow day does not make the design believe it is nearly complete
    assert frac[2] < 0.5


def test_monitor_skips_looks_without_information_and_handles_a_repeated_look():
    d = seq.monitor([0, 100, 250, 250, 500], 5, 0.05, "obrien_fleming")
    assert np.isinf(d["boundary"].iloc[0])
    assert np.isfinite(d["boundary"].iloc[-1])
    assert d["alpha_spent"].iloc[-1] == pytest.approx(0.05)
    exits = seq.exit_probabilities(d["boundary"].to_numpy(), d["information"].to_numpy())
    assert exits.sum() == pytest.approx(0.05, abs=1e-6)


def test_hwang_shih_decani_spending_matches_gsdesign():
    # gsDesign's default design (gsDesign(k = 3, test.type = 1): sfHSD, gamma = -4, one-sided
    # 0.025, equally spaced): upper bounds 3.0107, 2.5465, 1.9992
    t = np.arange(1, 4) / 3
    b = seq.boundaries(t, t, 0.025, "hsd", -4.0)
    np.testing.assert_allclose(b, [3.0107, 2.5465, 1.9992], atol=0.0006)


def test_parametric_spending_families():
    t = np.linspace(0, 1, 11)
    # HSD with gamma 0 is linear; the power family with rho 1 too
    np.testing.assert_allclose(seq.spending(t, 0.05, "hsd", 0.0), 0.05 * t)
    np.testing.assert_allclose(seq.spending(t, 0.05, "power", 1.0), 0.05 * t)
    for kind, param in (("hsd", 1.0), ("hsd", -4.0), ("power", 3.0)):
        s = seq.spending(t, 0.05, kind, param)
        assert s[0] == 0 and s[-1] == pytest.approx(0.05) and np.all(np.diff(s) >= 0)
    # gamma 1 spends early (Pocock-like), gamma -4 late (O'Brien-Fleming-like)
    assert seq.spending(0.3, 0.05, "hsd", 1.0) > seq.spending(0.3, 0.05, "hsd", -4.0) * 5


def test_the_banded_transition_equals_the_full_kernel():
    """``_transition`` computes only the kernel's pairs within ``_BAND`` standard deviations;
    against the full 401 x 401 kernel (a matrix product) on grids as ``_advance`` makes them,
    narrow kernels (a day's increment) and wide ones (an early look)."""
    from whispers_lab.stats import sequential as sq

    rng = np.random.default_rng(5)
    banded = 0
    for _ in range(200):
        prev = rng.uniform(0.05, 50.0)
        now = prev * (rng.uniform(1.01, 1.1) if rng.random() < 0.5 else rng.uniform(1.1, 20.0))
        drift, b = rng.normal(0, 1.5), rng.uniform(-1.0, 4.0)
        state = sq._advance(sq._advance(None, rng.uniform(1.5, 5.0), prev * 0.5, drift),
                            b, prev, drift)
        z, _ = sq._simpson(drift * np.sqrt(now) - sq._TAIL, drift * np.sqrt(now) + sq._TAIL)
        mean = (state.z * np.sqrt(state.info) + drift * (now - prev)) / np.sqrt(now)
        sd = np.sqrt((now - prev) / now)
        mass = state.w * state.f
        u = (z[:, None] - mean[None, :]) / sd
        full = np.exp(-0.5 * u * u) @ mass / (sd * np.sqrt(2 * np.pi))
        got = sq._transition(z, mean, sd, mass)
        scale = np.abs(mass).sum() / sd  # (the largest value the sum can take, times 2.5)
        np.testing.assert_allclose(got, full, rtol=1e-12, atol=1e-14 * scale)
        reach = np.searchsorted(mean, z + sq._BAND * sd) - np.searchsorted(mean, z - sq._BAND * sd)
        banded += 2 * reach.max() < mean.size  # (the band, not the full kernel)
    assert 40 < banded < 160  # both forms were exercised
