"""CUPED against OLS (ANCOVA) and its variance reduction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from whispers_lab.stats.cuped import cuped_difference

from factories import cuped_cells

_cells = cuped_cells


def _draw(rng, n, effect=0.0):
    x = rng.poisson(4.0, size=n).astype(float)
    p = 1 / (1 + np.exp(-(-2.0 + 0.45 * x + effect)))
    return (rng.random(n) < p).astype(float), x


def test_single_stratum_equals_ancova_coefficient():
    rng = np.random.default_rng(11)
    yt, xt = _draw(rng, 3000, 0.1)
    yc, xc = _draw(rng, 2500)
    c = cuped_difference(_cells({0: (yt, xt, yc, xc)}))
    y = np.r_[yt, yc]
    design = np.column_stack([np.ones(y.size), np.r_[np.ones(3000), np.zeros(2500)], np.r_[xt, xc]])
    ols = sm.OLS(y, design).fit()
    assert c.adjusted.diff == pytest.approx(ols.params[1], rel=1e-9)
    assert c.adjusted.se == pytest.approx(ols.bse[1], rel=0.05)
    assert c.unadjusted.diff == pytest.approx(yt.mean() - yc.mean())


def test_multi_stratum_theta_is_the_pooled_within_cell_slope():
    rng = np.random.default_rng(5)
    groups, frames = {}, []
    for s, (nt, nc) in enumerate([(200, 1800), (900, 900), (1500, 300)]):
        yt, xt = _draw(rng, nt)
        yc, xc = _draw(rng, nc)
        groups[s] = (yt, xt, yc, xc)
        frames.append(pd.DataFrame({"y": np.r_[yt, yc], "x": np.r_[xt, xc],
                                    "cell": [f"{s}t"] * nt + [f"{s}c"] * nc}))
    df = pd.concat(frames)
    design = pd.get_dummies(df["cell"], dtype=float)
    design["x"] = df["x"].to_numpy()
    ols = sm.OLS(df["y"].to_numpy(), design).fit()
    c = cuped_difference(_cells(groups))
    assert c.theta == pytest.approx(ols.params["x"], rel=1e-9)
    # adjusted stratum differences: cell intercepts of the same regression
    w = np.array([200 * 1800 / 2000, 900 * 900 / 1800, 1500 * 300 / 1800])
    d = np.array([ols.params[f"{s}t"] - ols.params[f"{s}c"] for s in range(3)])
    assert c.adjusted.diff == pytest.approx((w * d).sum() / w.sum(), rel=1e-9)


def test_variance_reduction_when_the_covariate_predicts():
    rng = np.random.default_rng(2)
    yt, xt = _draw(rng, 4000)
    yc, xc = _draw(rng, 4000)
    c = cuped_difference(_cells({0: (yt, xt, yc, xc)}))
    assert c.variance_reduction > 0.15
    assert c.adjusted.se < c.unadjusted.se
    # a useless covariate gives (almost) nothing
    noise = rng.poisson(4.0, size=8000).astype(float)
    c0 = cuped_difference(_cells({0: (yt, noise[:4000], yc, noise[4000:])}))
    assert abs(c0.variance_reduction) < 0.01


def test_no_covariate_variance_is_coded_not_raised():
    y = np.r_[np.ones(30), np.zeros(70)]
    c = cuped_difference(_cells({0: (y, np.zeros(100), y, np.zeros(100))}))
    assert not c.ok
    assert c.unadjusted.diff == pytest.approx(0.0)
    assert not cuped_difference(_cells({})).ok
