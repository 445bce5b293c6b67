"""CUPED (Deng et al. 2013): regression adjustment on a pre-period covariate.

The outcome y (retained 0/1) is replaced by ``y - theta * (x - mean x)``, where x is the user's
pre-period activity (active days in the 14 days before the rollout start), which treatment
cannot have affected. ``theta`` is the pooled within-cell slope
``sum ss_xy / sum ss_xx`` over all (stratum, variant) cells, which is exactly the ANCOVA slope,
so the adjusted difference equals the treatment coefficient of ``y ~ cell + x`` (tested). The
adjusted difference keeps the stratified weights of :mod:`.noninferiority`; its variance uses
per-cell variances of ``y - theta x``. Estimating theta from the data adds O(1/n) variance that
is ignored (standard practice, negligible at rollout sample sizes).

The variance reduction reported is ``1 - var(adjusted diff) / var(unadjusted diff)``, both with
the same (n - 1) variance divisor so the comparison is like for like.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .noninferiority import TwoArmEstimate

#: Per-arm aggregate columns expected for each arm suffix ``_t`` / ``_c``.
CUPED_FIELDS: tuple[str, ...] = ("n", "sum_y", "sum_y2", "sum_x", "sum_x2", "sum_xy")


@dataclass(frozen=True)
class CupedEstimate:
    adjusted: TwoArmEstimate
    unadjusted: TwoArmEstimate
    theta: float
    variance_reduction: float
    corr_xy: float

    @property
    def ok(self) -> bool:
        return self.adjusted.ok and math.isfinite(self.theta)


def _arm(st: pd.DataFrame, suffix: str) -> dict[str, np.ndarray]:
    return {f: st[f"{f}_{suffix}"].to_numpy(float) for f in CUPED_FIELDS}


def _centred(a: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = a["n"]
    with np.errstate(divide="ignore", invalid="ignore"):
        ss_yy = a["sum_y2"] - a["sum_y"] ** 2 / n
        ss_xx = a["sum_x2"] - a["sum_x"] ** 2 / n
        ss_xy = a["sum_xy"] - a["sum_x"] * a["sum_y"] / n
    return np.nan_to_num(ss_yy), np.nan_to_num(ss_xx), np.nan_to_num(ss_xy)


def _combine(w: np.ndarray, mt: np.ndarray, mc: np.ndarray, vt: np.ndarray, vc: np.ndarray,
             nt: np.ndarray, nc: np.ndarray) -> TwoArmEstimate:
    big_w = float(w.sum())
    mean_t = float((w * mt).sum() / big_w)
    mean_c = float((w * mc).sum() / big_w)
    var_t = float((w * w * vt).sum() / big_w ** 2)
    var_c = float((w * w * vc).sum() / big_w ** 2)
    return TwoArmEstimate(mean_t - mean_c, math.sqrt(var_t + var_c), mean_t, mean_c,
                          math.sqrt(var_t), math.sqrt(var_c), int(nt.sum()), int(nc.sum()),
                          big_w, int(w.size))


def cuped_difference(strata: pd.DataFrame) -> CupedEstimate:
    """CUPED-adjusted stratified difference from per-stratum aggregates with columns
    ``<field>_t`` and ``<field>_c`` for each of :data:`CUPED_FIELDS`. Never raises: without
    usable strata or covariate variance the result's ``ok`` is False."""
    nan = math.nan
    empty = TwoArmEstimate(nan, nan, nan, nan, nan, nan, 0, 0, 0.0, 0)
    if len(strata) == 0:
        return CupedEstimate(empty, empty, nan, nan, nan)
    keep = (strata["n_t"].to_numpy(float) > 1) & (strata["n_c"].to_numpy(float) > 1)
    if not keep.any():
        return CupedEstimate(empty, empty, nan, nan, nan)
    st = strata.loc[keep]
    t, c = _arm(st, "t"), _arm(st, "c")
    yy_t, xx_t, xy_t = _centred(t)
    yy_c, xx_c, xy_c = _centred(c)
    sxx = float(xx_t.sum() + xx_c.sum())
    sxy = float(xy_t.sum() + xy_c.sum())
    syy = float(yy_t.sum() + yy_c.sum())
    nt, nc = t["n"], c["n"]
    w = nt * nc / (nt + nc)
    unadj = _combine(w, t["sum_y"] / nt, c["sum_y"] / nc,
                     yy_t / (nt - 1) / nt, yy_c / (nc - 1) / nc, nt, nc)
    if sxx <= 0:
        return CupedEstimate(empty, unadj, nan, nan, nan)
    theta = sxy / sxx
    corr = sxy / math.sqrt(sxx * syy) if syy > 0 else nan
    adj_mt = (t["sum_y"] - theta * t["sum_x"]) / nt
    adj_mc = (c["sum_y"] - theta * c["sum_x"]) / nc
    av_t = np.maximum(yy_t - 2 * theta * xy_t + theta ** 2 * xx_t, 0.0) / (nt - 1) / nt
    av_c = np.maximum(yy_c - 2 * theta * xy_c + theta ** 2 * xx_c, 0.0) / (nc - 1) / nc
    adj = _combine(w, adj_mt, adj_mc, av_t, av_c, nt, nc)
    # the adjusted arm means are shifted by theta * mean(x); put them back on the y scale
    x_bar = float((t["sum_x"].sum() + c["sum_x"].sum()) / (nt.sum() + nc.sum()))
    adj = TwoArmEstimate(adj.diff, adj.se, adj.mean_t + theta * x_bar, adj.mean_c + theta * x_bar,
                         adj.se_t, adj.se_c, adj.n_t, adj.n_c, adj.weight, adj.n_strata)
    vr = 1.0 - (adj.se ** 2) / (unadj.se ** 2) if unadj.se > 0 else nan
    return CupedEstimate(adj, unadj, theta, vr, corr)
