"""Staggered-adoption, intention-to-treat estimate of a per-user outcome (Dk retention).

Design. Every day ``s`` on which the plan enables new buckets is a small randomised experiment:
among the randomised users not enabled before ``s``, those whose bucket is enabled on ``s``
(treatment) against those not enabled through the end of their outcome window (control,
holdout included). A user enters stage ``s`` on ``a``, the first day on or after ``s`` with an
app open (a visit made before the user could have seen whispers, so ``a`` is a pre-treatment
variable); the outcome is Dk retention from ``a`` (an app open on a day in ``[a + 1, a + k]``)
and the CUPED covariate ``x`` the active days in the 14 days before ``s``. Strata are the pairs
``(s, a)``; inside a stratum the arms are a random split by bucket, because the enabling day is
a function of the bucket alone. A user takes part in several stages (control on day 8, treated
on day 10, ...), so the cells of different stages share users; their covariance enters the
variance through the cross-stage sums of :func:`whispers_lab.queries.experiment.stage_pairs`.

Estimator. Within stratum ``c`` the arms' adjusted means are ``r = mean(y) - theta mean(x)``
(``theta = 0``: unadjusted); the estimate is ``sum_c w_c (r_ct - r_cc) / W`` with
``w_c = n_ct n_cc / (n_ct + n_cc)`` and ``W = sum w_c`` (Mantel-Haenszel weights: inverse-variance
weights under a common outcome variance). ``theta`` is the pooled within-cell slope
``sum ss_xy / sum ss_xx`` (the ANCOVA slope). Writing the estimate as ``sum_i lambda_i r_i``
over cells ``i``, its variance is the quadratic form ``lambda' V lambda`` with
``V_ii = s_i^2 / n_i`` (within-cell variance of the residual ``y - theta x``) and, for cells
of different stages that share users, ``V_ij = sum_{u in i and j} (r_ui - r_i)(r_uj - r_j) /
(n_i n_j)``: the user-clustered (sandwich) covariance. Estimating ``theta`` adds O(1/n)
variance that is ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .sufficient import sums_by

#: Columns of the per-cell frame (one row per k, s, a, arm).
CELL_COLUMNS: tuple[str, ...] = ("k", "s", "a", "arm", "n", "sum_y", "sum_yy", "sum_x",
                                 "sum_xx", "sum_xy")
#: Columns of the cross-stage pair frame.
PAIR_COLUMNS: tuple[str, ...] = ("k", "s1", "a1", "arm1", "s2", "a2", "arm2", "n", "y1", "y2",
                                 "x1", "x2", "y1y2", "y1x2", "x1y2", "x1x2")


def empty_cells() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object" if c == "arm" else "float64")
                         for c in CELL_COLUMNS})


def empty_pairs() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object" if c.startswith("arm") else "float64")
                         for c in PAIR_COLUMNS})


@dataclass(frozen=True)
class StaggeredEstimate:
    """Treatment-minus-control estimate on one analysis day (see module doc)."""

    diff: float
    se: float
    diff_unadjusted: float
    se_unadjusted: float
    mean_t: float          # weighted arm means of the outcome (unadjusted)
    mean_c: float
    se_mean_t: float
    se_mean_c: float
    cov_means: float       # covariance of the two weighted arm means (shared users)
    theta: float
    corr_xy: float
    n_t: int               # user-stage units in treatment cells (a user may count in 2 stages)
    n_c: int
    weight: float          # W: the effective sample size
    n_strata: int
    strata: pd.DataFrame   # s, a, n_t, n_c, w

    @property
    def ok(self) -> bool:
        return self.n_strata > 0 and math.isfinite(self.diff) and self.se > 0

    @property
    def information(self) -> float:
        """Statistical information of the (adjusted) difference: 1 / variance."""
        return 1.0 / self.se ** 2 if self.ok else 0.0

    @property
    def variance_reduction(self) -> float:
        """``1 - var(adjusted) / var(unadjusted)`` (negative: CUPED made it worse)."""
        if not (self.se_unadjusted > 0 and math.isfinite(self.se)):
            return math.nan
        return 1.0 - (self.se / self.se_unadjusted) ** 2

    @property
    def relative(self) -> float:
        """The difference relative to the control mean (``diff / mean_c``)."""
        return self.diff / self.mean_c if self.mean_c > 0 else math.nan


def _nan_estimate(n_t: int, n_c: int) -> StaggeredEstimate:
    nan = math.nan
    return StaggeredEstimate(nan, nan, nan, nan, nan, nan, nan, nan, nan, nan, nan, n_t, n_c,
                             0.0, 0, pd.DataFrame(columns=["s", "a", "n_t", "n_c", "w"]))


def select_cells(cells: pd.DataFrame, k: int, day: int) -> pd.DataFrame:
    """The cells of window k whose outcome has closed by the end of ``day`` (``a + k <= day``)."""
    if cells.empty:
        return cells.iloc[0:0]
    return cells.loc[(cells["k"] == k) & (cells["a"] + k <= day)]


def estimate(cells: pd.DataFrame, pairs: pd.DataFrame, k: int, day: int,
             adjust: bool = True) -> StaggeredEstimate:
    """The staggered estimate of window ``k`` on ``day`` from the stage cells and pairs.

    ``adjust``: CUPED with the pooled within-cell slope (else ``theta = 0``). Strata lacking an
    arm are dropped; no usable stratum gives an estimate whose ``ok`` is False."""
    sel = select_cells(cells, k, day)
    if sel.empty:
        return _nan_estimate(0, 0)
    treat_all = (sel["arm"] == "treatment").to_numpy()
    n_all = sel["n"].to_numpy(float)
    n_t_all, n_c_all = int(n_all[treat_all].sum()), int(n_all[~treat_all].sum())
    key_all = sel["s"].to_numpy(np.int64) * 100_000 + sel["a"].to_numpy(np.int64)
    uniq, inv = np.unique(key_all, return_inverse=True)
    nt_s = np.bincount(inv, weights=n_all * treat_all, minlength=uniq.size)
    nc_s = np.bincount(inv, weights=n_all * ~treat_all, minlength=uniq.size)
    good = (nt_s > 0) & (nc_s > 0)
    keep = good[inv]
    if not keep.any():
        return _nan_estimate(n_t_all, n_c_all)
    c = sel.loc[keep].reset_index(drop=True)
    n = c["n"].to_numpy(float)
    sy, syy = c["sum_y"].to_numpy(float), c["sum_yy"].to_numpy(float)
    sx, sxx, sxy = (c[f].to_numpy(float) for f in ("sum_x", "sum_xx", "sum_xy"))
    ss_yy = syy - sy * sy / n
    ss_xx = sxx - sx * sx / n
    ss_xy = sxy - sx * sy / n
    den = float(ss_xx.sum())
    theta = float(ss_xy.sum()) / den if adjust and den > 0 else 0.0
    corr = (float(ss_xy.sum()) / math.sqrt(den * float(ss_yy.sum()))
            if den > 0 and float(ss_yy.sum()) > 0 else math.nan)
    treat = treat_all[keep]

    # stratum weights (MH): n_t n_c / (n_t + n_c), normalised
    w_s = np.where(good, nt_s * nc_s / np.where(good, nt_s + nc_s, 1.0), 0.0)
    big_w = float(w_s.sum())
    w = w_s[inv[keep]] / big_w
    strata = pd.DataFrame({"s": uniq[good] // 100_000, "a": uniq[good] % 100_000,
                           "n_t": nt_s[good], "n_c": nc_s[good], "w": w_s[good]})
    lam_t = np.where(treat, w, 0.0)
    lam_c = np.where(treat, 0.0, w)
    pr = _pairs_for(pairs, k, _cell_keys(c["s"], c["a"], c["arm"]))

    def moments(th: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mean_r = (sy - th * sx) / n
        ss_rr = np.maximum(ss_yy - 2 * th * ss_xy + th * th * ss_xx, 0.0)
        var_mean = ss_rr / np.maximum(n - 1.0, 1.0) / n
        if pr is None:
            return mean_r, var_mean, np.zeros(0)
        i, j, pn, y1, y2, x1, x2, y1y2, y1x2, x1y2, x1x2 = pr
        s1 = y1 - th * x1
        s2 = y2 - th * x2
        s12 = y1y2 - th * y1x2 - th * x1y2 + th * th * x1x2
        cp = s12 - mean_r[i] * s2 - mean_r[j] * s1 + pn * mean_r[i] * mean_r[j]
        return mean_r, var_mean, cp / (n[i] * n[j])

    def quad(a: np.ndarray, b: np.ndarray, var_mean: np.ndarray, cov: np.ndarray) -> float:
        out = float((a * b * var_mean).sum())
        if pr is not None and cov.size:
            i, j = pr[0], pr[1]
            out += float(((a[i] * b[j] + a[j] * b[i]) * cov).sum())
        return out

    mean_u, var_u, cov_u = moments(0.0)
    lam = lam_t - lam_c
    diff_u = float((lam * mean_u).sum())
    var_diff_u = quad(lam, lam, var_u, cov_u)
    if theta != 0.0:
        mean_a, var_a, cov_a = moments(theta)
        diff_a = float((lam * mean_a).sum())
        var_diff_a = quad(lam, lam, var_a, cov_a)
    else:
        diff_a, var_diff_a = diff_u, var_diff_u
    var_t = quad(lam_t, lam_t, var_u, cov_u)
    var_c = quad(lam_c, lam_c, var_u, cov_u)
    cov_tc = quad(lam_t, lam_c, var_u, cov_u)
    return StaggeredEstimate(
        diff=diff_a, se=math.sqrt(max(var_diff_a, 0.0)), diff_unadjusted=diff_u,
        se_unadjusted=math.sqrt(max(var_diff_u, 0.0)),
        mean_t=float((lam_t * mean_u).sum()), mean_c=float((lam_c * mean_u).sum()),
        se_mean_t=math.sqrt(max(var_t, 0.0)), se_mean_c=math.sqrt(max(var_c, 0.0)),
        cov_means=cov_tc, theta=theta, corr_xy=corr,
        n_t=int(n[treat].sum()), n_c=int(n[~treat].sum()), weight=big_w,
        n_strata=len(strata), strata=strata,
    )


def _cell_keys(s: pd.Series, a: pd.Series, arm: pd.Series) -> np.ndarray:
    return (s.to_numpy(np.int64) * 100_000 + a.to_numpy(np.int64)) * 2 + (
        arm.to_numpy(dtype=object) == "treatment")


def _pairs_for(pairs: pd.DataFrame, k: int, keys: np.ndarray) -> tuple[np.ndarray, ...] | None:
    """Pair rows of window k whose two cells are both among ``keys`` (the selected cells'
    :func:`_cell_keys`, in cell order), as arrays aligned with the cell positions."""
    if pairs is None or pairs.empty:
        return None
    p = pairs.loc[pairs["k"] == k]
    if p.empty:
        return None
    order = np.argsort(keys)
    sorted_keys = keys[order]

    def position(key: np.ndarray) -> np.ndarray:
        at = np.searchsorted(sorted_keys, key)
        at = np.minimum(at, sorted_keys.size - 1)
        return np.where(sorted_keys[at] == key, order[at], -1)

    i = position(_cell_keys(p["s1"], p["a1"], p["arm1"]))
    j = position(_cell_keys(p["s2"], p["a2"], p["arm2"]))
    ok = (i >= 0) & (j >= 0)
    if not ok.any():
        return None
    cols = [p[c].to_numpy(float)[ok] for c in ("n", "y1", "y2", "x1", "x2", "y1y2", "y1x2",
                                                "x1y2", "x1x2")]
    return (i[ok], j[ok], *cols)


# ---------------------------------------------------------------------------------------
# the same cells from per-user arrays (Monte Carlo studies; tested equal to the SQL)


def cells_from_activity(active: np.ndarray, f_day: np.ndarray, stages: tuple[int, ...] | list[int],
                        base_day: int, covariate_days: int, k_values: tuple[int, ...] | list[int],
                        last_day: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stage cells and cross-stage pairs (the frames of
    :func:`whispers_lab.queries.experiment.stage_cells` / ``stage_pairs``) from a boolean
    activity matrix ``active[user, day - base_day]`` covering days ``base_day..last_day`` and
    each user's enabling day (``inf`` = never). Vectorised over users; used by the Monte Carlo
    benchmark, and checked against the SQL on a simulated export."""
    active = np.asarray(active, dtype=bool)
    f = np.asarray(f_day, dtype=float)
    n_days = last_day - base_day + 1
    act = active[:, :n_days]
    csum = np.concatenate([np.zeros((act.shape[0], 1), np.int32),
                           np.cumsum(act, axis=1, dtype=np.int32)], axis=1)
    rows_u: dict[tuple[int, int], tuple[np.ndarray, ...]] = {}
    cell_parts = []
    ks = sorted(set(int(k) for k in k_values))
    for s in (int(x) for x in stages if int(x) <= last_day):
        si = s - base_day
        after = act[:, si:]
        has = after.any(axis=1) & (f >= s)
        idx = np.flatnonzero(has)
        a = s + np.argmax(after[idx], axis=1)
        x = (csum[idx, si] - csum[idx, si - covariate_days]).astype(float)
        for k in ks:
            closed = a + k <= last_day
            treat = f[idx] == s
            ctrl = f[idx] > a + k
            keep = closed & (treat | ctrl)
            ai = a[keep] - base_day
            y = ((csum[idx[keep], ai + k + 1] - csum[idx[keep], ai + 1]) > 0).astype(float)
            arm = np.where(treat[keep], 1, 0)
            users = idx[keep]
            rows_u[(k, s)] = (users, a[keep], arm, y, x[keep])
            cell_parts.append(_group_cells(k, s, a[keep], arm, y, x[keep]))
    cells = (pd.concat(cell_parts, ignore_index=True) if cell_parts else empty_cells())
    pair_parts = []
    for k in ks:
        st = sorted(s for kk, s in rows_u if kk == k)
        for i, s1 in enumerate(st):
            u1, a1, arm1, y1, x1 = rows_u[(k, s1)]
            for s2 in st[i + 1:]:
                u2, a2, arm2, y2, x2 = rows_u[(k, s2)]
                common, i1, i2 = np.intersect1d(u1, u2, assume_unique=True, return_indices=True)
                if common.size == 0:
                    continue
                pair_parts.append(_group_pairs(k, s1, s2, a1[i1], arm1[i1], y1[i1], x1[i1],
                                               a2[i2], arm2[i2], y2[i2], x2[i2]))
    pairs = pd.concat(pair_parts, ignore_index=True) if pair_parts else empty_pairs()
    return cells.sort_values(["k", "s", "a", "arm"]).reset_index(drop=True), pairs


def _group_cells(k: int, s: int, a: np.ndarray, arm: np.ndarray, y: np.ndarray,
                 x: np.ndarray) -> pd.DataFrame:
    uniq, t = sums_by(a.astype(np.int64) * 2 + arm, sum_y=y, sum_yy=y * y, sum_x=x,
                      sum_xx=x * x, sum_xy=x * y)
    return pd.DataFrame({"k": k, "s": s, "a": uniq // 2,
                         "arm": np.where(uniq % 2 == 1, "treatment", "control"),
                         "n": t["n"].astype(np.int64), **{c: t[c] for c in CELL_COLUMNS[5:]}})


def _group_pairs(k: int, s1: int, s2: int, a1: np.ndarray, arm1: np.ndarray, y1: np.ndarray,
                 x1: np.ndarray, a2: np.ndarray, arm2: np.ndarray, y2: np.ndarray,
                 x2: np.ndarray) -> pd.DataFrame:
    key = ((a1.astype(np.int64) * 2 + arm1) * 100_000 + a2.astype(np.int64) * 2 + arm2)
    uniq, t = sums_by(key, y1=y1, y2=y2, x1=x1, x2=x2, y1y2=y1 * y2, y1x2=y1 * x2,
                      x1y2=x1 * y2, x1x2=x1 * x2)
    left, right = uniq // 100_000, uniq % 100_000
    return pd.DataFrame({
        "k": k, "s1": s1, "a1": left // 2,
        "arm1": np.where(left % 2 == 1, "treatment", "control"), "s2": s2, "a2": right // 2,
        "arm2": np.where(right % 2 == 1, "treatment", "control"),
        "n": t["n"].astype(np.int64), **{c: t[c] for c in PAIR_COLUMNS[8:]}})


def preperiod_lags_from_activity(active: np.ndarray, base_day: int,
                                 k_values: tuple[int, ...] | list[int] = (1,)) -> pd.DataFrame:
    """The frame of :func:`whispers_lab.queries.experiment.preperiod_lags` (``p, lag, users,
    returned_<k>``) from a boolean activity matrix ``active[user, day - base_day]`` that covers
    at least days ``base_day..-1``: for every pseudo-start ``p`` in ``[base_day, -1]``, the
    users whose first active day on or after ``p`` is ``p + lag``, and how many of them were
    active again within k days (NaN when that window reaches day 0). Vectorised over users;
    checked against the SQL on a hand-made export."""
    active = np.asarray(active, dtype=bool)
    pre = -int(base_day)
    ks = sorted(set(int(k) for k in k_values))
    cols = ["p", "lag", "users", *(f"returned_{k}" for k in ks)]
    if pre <= 0:
        return pd.DataFrame({c: [] for c in cols})
    act = active[:, :pre]
    csum = np.concatenate([np.zeros((act.shape[0], 1), np.int32),
                           np.cumsum(act, axis=1, dtype=np.int32)], axis=1)
    parts = []
    for p in range(int(base_day), 0):
        w = act[:, p - int(base_day):]
        rows = np.flatnonzero(w.any(axis=1))
        lag = np.argmax(w[rows], axis=1)
        users = np.bincount(lag, minlength=w.shape[1])
        lags = np.flatnonzero(users)
        part = {"p": np.full(lags.size, p), "lag": lags, "users": users[lags]}
        first = p - int(base_day) + lag      # column of the first active day
        for k in ks:
            end = np.minimum(first + k + 1, pre)
            back = (csum[rows, end] - csum[rows, first + 1]) > 0
            returned = np.bincount(lag, weights=back, minlength=w.shape[1])[lags]
            part[f"returned_{k}"] = np.where(p + lags + k <= -1, returned, np.nan)
        parts.append(pd.DataFrame(part))
    return pd.concat(parts, ignore_index=True)[cols]
