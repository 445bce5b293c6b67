"""Two-arm comparisons of a mean or proportion, stratified, and the non-inferiority verdict.

The estimator. Units are grouped into strata (for retention: the rollout day of the user's first
exposure). Within stratum s the arms differ by ``d_s = m_ts - m_cs``; the overall difference is
``sum_s w_s d_s / sum_s w_s`` with ``w_s = n_ts n_cs / (n_ts + n_cs)``. These are the
Mantel-Haenszel risk-difference weights, and the weights of the treatment coefficient in OLS
with stratum fixed effects; they are inverse-variance weights when the outcome variance is the
same in every cell, which also makes successive daily estimates have (approximately)
independent increments, as group-sequential theory needs. Weights depend on counts only, so
the estimator is an unbiased linear combination of within-stratum differences and its variance
is ``sum_s w_s^2 (v_ts + v_cs) / (sum_s w_s)^2`` with the per-cell variances of the means
(``p(1-p)/n`` for proportions: the Wald form).

Why stratify: the treatment share rises from 10% to 95% during the rollout, and users who first
arrive late differ from those who arrive early. Pooling across arrival days would compare a
late-arriving treatment arm with an early-arriving control arm (Simpson's paradox); within a
stratum, assignment is a random split by bucket.

``sum_s w_s`` is the effective sample size: the information per unit of outcome variance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..lazy import lazy_module
from ..results import Status

stats = lazy_module("scipy.stats")


@dataclass(frozen=True)
class TwoArmEstimate:
    """Stratified treatment-minus-control estimate of a mean (or proportion)."""

    diff: float
    se: float
    mean_t: float
    mean_c: float
    se_t: float
    se_c: float
    n_t: int
    n_c: int
    weight: float
    n_strata: int

    @property
    def log_ratio(self) -> float:
        if self.mean_t > 0 and self.mean_c > 0:
            return math.log(self.mean_t / self.mean_c)
        return math.nan

    @property
    def se_log_ratio(self) -> float:
        """Delta method on log(m_t / m_c), independent arms."""
        if self.mean_t > 0 and self.mean_c > 0:
            return math.sqrt((self.se_t / self.mean_t) ** 2 + (self.se_c / self.mean_c) ** 2)
        return math.nan

    @property
    def ok(self) -> bool:
        return self.n_strata > 0 and math.isfinite(self.diff) and self.se > 0


def _cell_var(n: np.ndarray, s: np.ndarray, ss: np.ndarray | None) -> np.ndarray:
    """Variance of a cell mean: p(1-p)/n for 0/1 outcomes, else the unbiased sample variance / n."""
    with np.errstate(divide="ignore", invalid="ignore"):
        m = s / n
        if ss is None:
            return m * (1.0 - m) / n
        var = np.maximum(ss - s * s / n, 0.0) / np.maximum(n - 1.0, 1.0)
        return var / n


def stratified_difference(strata: pd.DataFrame, binary: bool = True) -> TwoArmEstimate:
    """Estimate from a frame with one row per stratum and columns ``n_t, sum_t, n_c, sum_c``
    (plus ``sum_sq_t, sum_sq_c`` when ``binary`` is False). Strata lacking either arm are
    dropped. An empty input gives an estimate whose ``ok`` is False (never an exception)."""
    nt_all = strata["n_t"].to_numpy(float) if len(strata) else np.zeros(0)
    nc_all = strata["n_c"].to_numpy(float) if len(strata) else np.zeros(0)
    keep = (nt_all > 0) & (nc_all > 0)
    n_t_total = int(nt_all.sum()) if nt_all.size else 0
    n_c_total = int(nc_all.sum()) if nc_all.size else 0
    if not keep.any():
        nan = math.nan
        return TwoArmEstimate(nan, nan, nan, nan, nan, nan, n_t_total, n_c_total, 0.0, 0)
    st = strata.loc[keep]
    nt, nc = st["n_t"].to_numpy(float), st["n_c"].to_numpy(float)
    xt, xc = st["sum_t"].to_numpy(float), st["sum_c"].to_numpy(float)
    sst = None if binary else st["sum_sq_t"].to_numpy(float)
    ssc = None if binary else st["sum_sq_c"].to_numpy(float)
    w = nt * nc / (nt + nc)
    big_w = float(w.sum())
    mt, mc = xt / nt, xc / nc
    vt, vc = _cell_var(nt, xt, sst), _cell_var(nc, xc, ssc)
    mean_t = float((w * mt).sum() / big_w)
    mean_c = float((w * mc).sum() / big_w)
    var_t = float((w * w * vt).sum() / big_w ** 2)
    var_c = float((w * w * vc).sum() / big_w ** 2)
    return TwoArmEstimate(
        diff=mean_t - mean_c, se=math.sqrt(var_t + var_c), mean_t=mean_t, mean_c=mean_c,
        se_t=math.sqrt(var_t), se_c=math.sqrt(var_c), n_t=int(nt.sum()), n_c=int(nc.sum()),
        weight=big_w, n_strata=int(keep.sum()),
    )


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


def z_interval(est: float, se: float, z: float) -> Interval:
    if not (math.isfinite(est) and math.isfinite(se)):
        return Interval(math.nan, math.nan)
    if not math.isfinite(z):
        return Interval(-math.inf, math.inf)
    return Interval(est - z * se, est + z * se)


def ratio_interval(log_est: float, se_log: float, z: float) -> Interval:
    """Interval of a ratio from its log-scale estimate and standard error."""
    iv = z_interval(log_est, se_log, z)
    if not math.isfinite(iv.low) and not math.isfinite(iv.high):
        if math.isnan(iv.low):
            return iv
        return Interval(0.0, math.inf)
    return Interval(math.exp(iv.low), math.exp(iv.high))


def noninferiority_status(low: float, high: float, bound: float) -> Status:
    """Pass when the lower end is above the non-inferiority bound (``-margin`` for a
    difference, ``1 - relative_margin`` for a ratio); fail when the upper end is below it
    (inferiority shown); inconclusive otherwise or when the interval is undefined."""
    if math.isnan(low) or math.isnan(high):
        return "inconclusive"
    if low > bound:
        return "pass"
    if high < bound:
        return "fail"
    return "inconclusive"


def ni_p_value(est: float, se: float, bound: float) -> float:
    """One-sided p-value of H0: effect <= bound against H1: effect > bound (normal theory)."""
    if not (math.isfinite(est) and se > 0):
        return math.nan
    return float(stats.norm.sf((est - bound) / se))
