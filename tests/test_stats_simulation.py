"""Monte Carlo checks of what the engine promises (pure numpy, seeded, bounded).

Populations here are deliberately unlike the simulator's defaults: a steady user base where
nearly everyone visits most days, and a churny one where most users come rarely. Everyone is
already active before the percentage phase; nobody arrives late. The decision-level error
rates (healthy rollouts held, harms caught) are measured by ``benchmarks/mc_decisions.py``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from whispers_lab.stats import design as dz
from whispers_lab.stats import sequential
from whispers_lab.stats.cuped import cuped_difference
from whispers_lab.stats.experiment import observed_design_power
from whispers_lab.stats.retention import StagedData, retention_history
from whispers_lab.stats.settings import StatSettings
from whispers_lab.stats.srm import srm_test
from whispers_lab.stats.staggered import (
    cells_from_activity,
    empty_pairs,
    estimate,
    preperiod_lags_from_activity,
)
from whispers_lab.stats.sufficient import regression_from_units

pytestmark = pytest.mark.slow

STAGES = (8, 10, 12, 14)
SHARES = (0.095, 0.1425, 0.2375, 0.475, 0.05)   # enabled on 8, 10, 12, 14, never


def _mc_bound(p: float, runs: int) -> float:
    return 3.5 * np.sqrt(p * (1 - p) / runs)


def _rollout(rng: np.random.Generator, users: int, beta: tuple[float, float], effect: float,
             last: int = 14) -> tuple[np.ndarray, np.ndarray]:
    """Daily visits from day -14 to ``last``; ``effect`` is added to the visit probability on
    the days after a user's first treated visit (as in the simulator)."""
    p = rng.beta(*beta, users)
    f = rng.choice([8, 10, 12, 14, np.inf], users, p=SHARES)
    days = np.arange(-14, last + 1)
    active = np.zeros((users, days.size), dtype=bool)
    treated_since = np.full(users, np.inf)
    for i, d in enumerate(days):
        q = np.clip(p + effect * (treated_since < d), 0, 1)
        active[:, i] = rng.random(users) < q
        treated_since[active[:, i] & (f <= d) & ~np.isfinite(treated_since)] = d
    return active, f


def _staged(rng: np.random.Generator, users: int, beta: tuple[float, float], effect: float = 0.0,
            last: int = 14) -> tuple[np.ndarray, np.ndarray, pd.DataFrame, pd.DataFrame]:
    """One rollout and its D1 stage cells and cross-stage pairs through ``last``."""
    active, f = _rollout(rng, users, beta, effect)
    cells, pairs = cells_from_activity(active, f, STAGES, -14, 14, [1], last)
    return active, f, cells, pairs


@pytest.mark.parametrize("beta", [(4.0, 3.0), (0.6, 2.4)], ids=["steady", "churny"])
def test_staggered_estimate_is_unbiased_and_its_variance_calibrated(beta):
    rng = np.random.default_rng(11)
    runs, users = 150, 6000
    z, z_no_pairs = [], []
    for _ in range(runs):
        _, _, cells, pairs = _staged(rng, users, beta)
        e = estimate(cells, pairs, 1, 14)
        z.append(e.diff / e.se)
        e0 = estimate(cells, empty_pairs(), 1, 14)
        z_no_pairs.append(e0.diff / e0.se)
    z = np.asarray(z)
    assert abs(z.mean()) < 3.5 / np.sqrt(runs)
    # the user-clustered variance (cross-stage covariances included) is calibrated
    assert abs(z.std(ddof=1) - 1.0) < 0.15, z.std(ddof=1)
    # two-sided 90% intervals cover about 90%
    assert abs(np.mean(np.abs(z) <= 1.645) - 0.90) < _mc_bound(0.9, runs)


def test_a_drop_in_return_is_estimated_at_its_size():
    rng = np.random.default_rng(12)
    runs, users, effect = 60, 8000, -0.03
    diffs = []
    for _ in range(runs):
        _, _, cells, pairs = _staged(rng, users, (4.0, 3.0), effect, last=13)
        diffs.append(estimate(cells, pairs, 1, 13).diff)
    diffs = np.asarray(diffs)
    assert abs(diffs.mean() - effect) < 3.5 * diffs.std(ddof=1) / np.sqrt(runs)


def _design_information() -> tuple[np.ndarray, np.ndarray]:
    """Expected information at the looks of the plan's schedule (100,000 users)."""
    sched = dz.Schedule(STAGES, 14)
    shares = dz.ArmShares(np.array([8, 10, 12, 14, np.inf]), np.asarray(SHARES))
    profile = dz.assumed_profile(0.4, 10)
    w = np.array([sum(dz.expected_weight(s, a, 1, profile, shares, 100_000)
                      for s, a in dz.strata_through(sched, 1, d)) for d in range(9, 15)])
    return w / 0.2475, w / w[-1]


def _canonical_z(rng: np.random.Generator, info: np.ndarray, drift: float, runs: int) -> np.ndarray:
    """Z at each look with independent increments: Z_k = S_k / sqrt(I_k), S a Brownian motion
    in information time with drift ``drift`` per unit information."""
    inc = np.diff(np.concatenate([[0.0], info]))
    s = np.cumsum(rng.normal(drift * inc, np.sqrt(inc), size=(runs, info.size)), axis=1)
    return s / np.sqrt(info)


def test_harm_and_pass_boundaries_hold_their_error_rates():
    s = StatSettings()
    info, frac = _design_information()
    rng = np.random.default_rng(13)
    runs = 20000
    b_harm = sequential.boundaries(info, frac, s.harm_alpha, s.harm_sequential)
    b_pass = sequential.boundaries(info, frac, s.alpha, s.sequential, s.sequential_param)
    # no effect: a false "harm" over all looks at most the harm test's share of alpha
    z0 = _canonical_z(rng, info, 0.0, runs)
    false_harm = (z0 >= b_harm).any(axis=1).mean()
    assert false_harm <= s.harm_alpha + _mc_bound(s.harm_alpha, runs)
    assert false_harm >= s.harm_alpha - _mc_bound(s.harm_alpha, runs)
    # a true drop exactly at the margin: a false "non-inferior" at most alpha
    z_margin = _canonical_z(rng, info, 0.0, runs)   # (diff + margin) / se has mean 0
    false_pass = (z_margin >= b_pass).any(axis=1).mean()
    assert false_pass <= s.alpha + _mc_bound(s.alpha, runs)
    # uncorrected daily looks at one-sided alpha would pass far more often
    assert (z_margin >= stats.norm.isf(s.alpha)).any(axis=1).mean() > s.alpha * 1.8


def test_srm_false_alarms_at_about_the_chosen_level():
    s = StatSettings(srm_p_value=0.05)
    rng = np.random.default_rng(5)
    n = np.array([3000, 2500, 2400, 2000, 1800, 1500, 1200])
    share = np.array([0.095, 0.095, 0.2375, 0.2375, 0.475, 0.475, 0.95])
    runs = 500
    flags = 0
    for _ in range(runs):
        nt = rng.binomial(n, share)
        f = pd.DataFrame({"day": np.arange(8, 15), "n_t": nt, "n_c": n - nt, "share_t": share})
        flags += srm_test(f, s).status == "fail"
    assert abs(flags / runs - 0.05) < _mc_bound(0.05, runs)


def test_cuped_narrows_the_interval_without_bias():
    rng = np.random.default_rng(6)
    runs, n, true = 300, 3000, -0.01

    def prob(x, eff):
        return np.clip(0.10 + 0.12 * x + eff, 0, 1)

    # the variance reduction to expect: squared correlation of y with x in the model
    xs = rng.poisson(2.0, size=400000).astype(float)
    ys = rng.random(xs.size) < prob(xs, 0.0)
    rho2 = np.corrcoef(xs, ys)[0, 1] ** 2
    diffs, covered, vr = [], 0, []
    z = stats.norm.isf(0.05)
    for _ in range(runs):
        row = {"stratum": 0}
        for suffix, eff in (("t", true), ("c", 0.0)):
            x = rng.poisson(2.0, size=n).astype(float)
            y = (rng.random(n) < prob(x, eff)).astype(float)
            r = regression_from_units(y, x)
            row |= {f"n_{suffix}": r.n, f"sum_y_{suffix}": r.sum_y, f"sum_y2_{suffix}": r.sum_y2,
                    f"sum_x_{suffix}": r.sum_x, f"sum_x2_{suffix}": r.sum_x2,
                    f"sum_xy_{suffix}": r.sum_xy}
        c = cuped_difference(pd.DataFrame([row]))
        diffs.append(c.adjusted.diff)
        vr.append(c.variance_reduction)
        covered += abs(c.adjusted.diff - true) <= z * c.adjusted.se
    assert abs(np.mean(diffs) - true) < 3 * np.std(diffs) / np.sqrt(runs)
    assert rho2 > 0.1
    assert np.mean(vr) == pytest.approx(rho2, abs=0.02)
    assert abs(covered / runs - 0.90) < _mc_bound(0.9, runs)


@pytest.mark.parametrize(("beta", "users"), [((4.0, 3.0), 10000), ((0.6, 2.4), 20000)],
                         ids=["steady", "churny"])
def test_observed_design_power_predicts_how_often_a_healthy_rollout_passes(beta, users):
    """The report's "chance to pass by day 12", computed on day 9 from the traffic seen so far,
    against how often rollouts with no effect actually pass by day 12. Sizes are chosen so the
    chance is about 40%, where a miscalibrated projection (information, boundaries, arrival
    profile) shows most."""
    s = StatSettings()
    sched = dz.Schedule(STAGES, 14)
    rng = np.random.default_rng(17)
    runs, margin = 150, 0.02
    predicted, passed = [], []
    for _ in range(runs):
        active, f, cells, pairs = _staged(rng, users, beta)
        lags = preperiod_lags_from_activity(active, -14, [1])
        counts = pd.DataFrame({"f_day": f}).value_counts().rename("n").reset_index()
        data = StagedData(cells, pairs, sched, dz.arrival_profile(lags, users, 14 - 8 + 1),
                          dz.ArmShares.from_counts(counts), users, {})
        on_day_9 = observed_design_power(data, retention_history(data, 1, 9, margin, s), margin,
                                         s, 12)
        predicted.append(on_day_9["power_by_day"])
        passed.append(retention_history(data, 1, 12, margin, s)["status"].iloc[-1] == "pass")
    p = float(np.mean(predicted))
    assert 0.2 < p < 0.7   # the informative range (the sizes above put it near 0.4)
    assert abs(float(np.mean(passed)) - p) < _mc_bound(p, runs)
