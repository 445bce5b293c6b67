"""Monte Carlo checks of the error rates the engine promises (pure numpy, seeded, seconds).

The retention machinery is simulated on aggregates: one new exposure-day stratum closes at each
of the 7 daily looks, with the treatment share growing as in the rollout (10% -> 95%). Within a
stratum the arms are binomial. Sample sizes are fixed per stratum, so the information sequence
(effective sample sizes) and hence the sequential boundaries are the same in every run.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from whispers_lab.stats import sequential
from whispers_lab.stats.cuped import cuped_difference
from whispers_lab.stats.noninferiority import stratified_difference
from whispers_lab.stats.retention import analyse_retention
from whispers_lab.stats.settings import StatSettings
from whispers_lab.stats.srm import srm_test
from whispers_lab.stats.sufficient import regression_from_units

pytestmark = pytest.mark.slow

#: New stratum per look: (n_treatment, n_control), shaped like the 10/25/50/100% schedule.
STRATA = 2 * np.array([(300, 2700), (250, 2250), (600, 1800), (550, 1650), (1200, 1200),
                       (1100, 1100), (2200, 120)])
P_CONTROL = 0.40
RUNS = 4000


def _mc_bound(p: float, runs: int) -> float:
    return 3.5 * np.sqrt(p * (1 - p) / runs)


def simulate_looks(seed: int, delta: float, settings: StatSettings, runs: int = RUNS):
    """Stratified difference, its se and the sequential / naive bounds at each look."""
    rng = np.random.default_rng(seed)
    nt, nc = STRATA[:, 0].astype(float), STRATA[:, 1].astype(float)
    xt = rng.binomial(STRATA[:, 0], P_CONTROL + delta, size=(runs, len(STRATA)))
    xc = rng.binomial(STRATA[:, 1], P_CONTROL, size=(runs, len(STRATA)))
    pt, pc = xt / nt, xc / nc
    w = nt * nc / (nt + nc)
    big_w = np.cumsum(w)
    diff = np.cumsum(w * (pt - pc), axis=1) / big_w
    var = np.cumsum(w ** 2 * (pt * (1 - pt) / nt + pc * (1 - pc) / nc), axis=1) / big_w ** 2
    se = np.sqrt(var)
    design = sequential.monitor(big_w, settings.planned_looks, settings.alpha, settings.sequential)
    b = design["boundary"].to_numpy()
    z = stats.norm.isf(settings.alpha)
    return {"diff": diff, "se": se, "b": b, "z": z, "xt": xt, "xc": xc}


def declared(sim, margin: float):
    seq_pass = (sim["diff"] - sim["b"] * sim["se"] > -margin).any(axis=1)
    seq_fail = (sim["diff"] + sim["b"] * sim["se"] < -margin).any(axis=1)
    naive_pass = (sim["diff"] - sim["z"] * sim["se"] > -margin).any(axis=1)
    final_pass = sim["diff"][:, -1] - sim["b"][-1] * sim["se"][:, -1] > -margin
    return seq_pass, seq_fail, naive_pass, final_pass


def test_vectorised_simulation_matches_the_engine_on_one_run():
    s = StatSettings(margin=0.02)
    sim = simulate_looks(1, 0.0, s, runs=1)
    rows = []
    for i, (a, b) in enumerate(STRATA):
        rows += [{"stratum": 8 + i, "variant": "treatment", "n": a, "sum_y": sim["xt"][0, i]},
                 {"stratum": 8 + i, "variant": "control", "n": b, "sum_y": sim["xc"][0, i]}]
    cells = pd.DataFrame(rows).assign(sum_x=0.0, sum_x2=0.0, sum_xy=0.0)
    res = analyse_retention(cells, 1, 15, 9, s)  # looks on days 9..15, stratum 8+i closes day 9+i
    hist = res.history
    np.testing.assert_allclose(hist["diff"], sim["diff"][0], rtol=1e-12)
    np.testing.assert_allclose(hist["seq_low"], sim["diff"][0] - sim["b"] * sim["se"][0], rtol=1e-9)


def test_aa_false_inferiority_and_false_superiority_at_about_alpha():
    # margin -> 0: "fail" is a one-sided test of harm, "pass" of benefit, each spending alpha
    s = StatSettings(margin=1e-12)
    seq_pass, seq_fail, naive_pass, _ = declared(simulate_looks(2, 0.0, s), s.margin)
    for rate in (seq_fail.mean(), seq_pass.mean()):
        assert abs(rate - s.alpha) < _mc_bound(s.alpha, RUNS), rate
    # seven uncorrected daily looks would declare far more often
    assert naive_pass.mean() > s.alpha + 2 * _mc_bound(s.alpha, RUNS)


def test_true_drop_at_the_margin_is_declared_non_inferior_at_most_alpha():
    s = StatSettings(margin=0.02)
    seq_pass, _, naive_pass, _ = declared(simulate_looks(3, -0.02, s), s.margin)
    assert seq_pass.mean() <= s.alpha + _mc_bound(s.alpha, RUNS), seq_pass.mean()
    assert naive_pass.mean() > seq_pass.mean()


def test_true_zero_effect_is_declared_non_inferior_in_most_runs():
    s = StatSettings(margin=0.02)
    seq_pass, seq_fail, _, _ = declared(simulate_looks(4, 0.0, s), s.margin)
    assert seq_pass.mean() > 0.85
    assert seq_fail.mean() < 0.001


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


def test_switch_rule_and_stratification_do_not_bias_a_null_effect():
    """Unit-level simulation of the rollout: engaged users arrive early, treatment share grows,
    control users switched before their window closes are dropped. With no true effect the
    stratified difference is centred on zero; the pooled one is not (why we stratify)."""
    rng = np.random.default_rng(7)
    runs, users, k, last = 60, 40000, 1, 14
    schedule = [(8, 0.095), (10, 0.2375), (12, 0.475), (14, 0.95)]
    strat, pooled = [], []
    for _ in range(runs):
        prop = rng.beta(2, 5, size=users)
        e = 3 + rng.geometric(np.clip(prop, 0.02, None)) - 1  # engaged users arrive early
        u = rng.random(users)  # bucket position
        f = np.full(users, np.inf)
        for day, share in reversed(schedule):
            f[u < share] = day
        treated = f <= e
        y = rng.random(users) < prop  # no treatment effect
        keep = (e + k <= last) & (treated | (e + k + 1 <= f))
        rows = []
        for s_day in np.unique(e[keep]):
            m = keep & (e == s_day)
            rows.append({"n_t": (m & treated).sum(), "sum_t": (y & m & treated).sum(),
                         "n_c": (m & ~treated).sum(), "sum_c": (y & m & ~treated).sum()})
        strat.append(stratified_difference(pd.DataFrame(rows)).diff)
        pooled.append(y[keep & treated].mean() - y[keep & ~treated].mean())
    strat, pooled = np.array(strat), np.array(pooled)
    assert abs(strat.mean()) < 3 * strat.std() / np.sqrt(runs)
    assert pooled.mean() < -5 * pooled.std() / np.sqrt(runs)
