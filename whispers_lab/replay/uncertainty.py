"""Uncertainty for replay metrics and off-policy estimates: bootstrap and delta-method intervals,
and paired comparisons of two weight settings over the same requests.

Every estimator in :mod:`whispers_lab.replay` is written as **unit-level additive parts** and a
**combine** function: ``parts`` is an ``(n_units, m)`` array (one row per request), and the
estimate is ``combine(parts.sum(axis=0))``. ``combine`` must be vectorised over leading axes and
homogeneous of degree 0 (a ratio of sums: a mean is ``sum(x) / sum(1)``), so it gives the same
value on sums and on means. This covers means over requests, ratio (per-impression) rates and
self-normalised estimators alike, and lets one resampling matrix serve every estimator at once.

* Bootstrap: Poisson(1) weights per unit (or per cluster, e.g. user, when requests of one user
  are not independent), ``B`` replicates, drawn with ``numpy.random.default_rng(seed)`` in chunks
  of units so memory stays bounded; the replicate sums are ``W @ parts``. Percentile interval.
* Delta method: ``var(combine(mean)) ~= grad' Cov(parts) grad / n`` with a numerical gradient;
  valid for smooth combines and enough units (it reduces to ``sd / sqrt(n)`` for a mean).
* Paired: two estimators over the same units share the resampling weights; the difference gets
  a percentile interval and a two-sided p-value ``2 * min(P*(d <= 0), P*(d >= 0))`` (bootstrap)
  or a normal-theory one (delta).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

Combine = Callable[[np.ndarray], np.ndarray]
Method = Literal["bootstrap", "delta"]


def mean_combine(s: np.ndarray) -> np.ndarray:
    """``parts = [x, 1]`` -> the mean of x."""
    return s[..., 0] / s[..., 1]


@dataclass(frozen=True)
class Interval:
    """An estimate with a two-sided interval; ``n_units`` is what was resampled."""

    estimate: float
    ci_low: float
    ci_high: float
    se: float
    n_units: int
    method: str
    level: float = 0.95
    p_value: float | None = None


def cluster_parts(parts: np.ndarray, clusters: np.ndarray | None) -> np.ndarray:
    """Sum the parts of units sharing a cluster id (codes 0..C-1 or any labels)."""
    parts = np.asarray(parts, dtype=np.float64)
    if clusters is None:
        return parts
    _, codes = np.unique(np.asarray(clusters), return_inverse=True)
    c = int(codes.max()) + 1 if len(codes) else 0
    return np.column_stack([np.bincount(codes, weights=parts[:, j], minlength=c)
                            for j in range(parts.shape[1])])


def poisson_sums(parts: np.ndarray, n_boot: int = 1000, seed: int = 0,
                 chunk_cells: int = 4_000_000) -> np.ndarray:
    """Bootstrap replicate sums ``W @ parts`` (``(n_boot, m)``), W ~ Poisson(1), in unit chunks.

    Each chunk draws an ``(n_boot, chunk)`` weight matrix, so peak memory is about
    ``chunk_cells * 8`` bytes whatever the number of units.
    """
    parts = np.asarray(parts, dtype=np.float64)
    n, m = parts.shape
    rng = np.random.default_rng(seed)
    out = np.zeros((n_boot, m))
    step = max(1, chunk_cells // max(n_boot, 1))
    for start in range(0, n, step):  # loop over chunks of units, not over units
        block = parts[start:start + step]
        w = rng.poisson(1.0, size=(n_boot, len(block))).astype(np.float64)
        out += w @ block
    return out


def _numeric_grad(combine: Combine, point: np.ndarray) -> np.ndarray:
    m = len(point)
    h = 1e-6 * np.maximum(np.abs(point), 1e-3)
    eye = np.eye(m) * h
    up = combine(point[None, :] + eye)
    down = combine(point[None, :] - eye)
    return (up - down) / (2 * h)


def delta_se(parts: np.ndarray, combine: Combine) -> float:
    """Delta-method standard error of ``combine(mean(parts))`` over independent units."""
    n = len(parts)
    if n < 2:
        return float("nan")
    mean = parts.mean(axis=0)
    grad = _numeric_grad(combine, mean)
    # influence values: the variance of grad . parts_i is grad' Cov grad
    infl = parts @ grad
    return float(np.std(infl, ddof=1) / np.sqrt(n))


def interval(parts: np.ndarray, combine: Combine = mean_combine, *, method: Method = "bootstrap",
             n_boot: int = 1000, seed: int = 0, level: float = 0.95,
             clusters: np.ndarray | None = None) -> Interval:
    """Estimate ``combine(sum(parts))`` with a ``level`` interval (see module docstring)."""
    units = cluster_parts(parts, clusters)
    n = len(units)
    if n == 0:
        nan = float("nan")
        return Interval(nan, nan, nan, nan, 0, method, level)
    with np.errstate(invalid="ignore", divide="ignore"):
        est = float(combine(units.sum(axis=0)))
        if method == "delta":
            se = delta_se(units, combine)
            z = stats.norm.ppf(0.5 + level / 2)
            return Interval(est, est - z * se, est + z * se, se, n, "delta", level)
        reps = combine(poisson_sums(units, n_boot, seed))
    reps = reps[np.isfinite(reps)]
    if len(reps) < 2:
        nan = float("nan")
        return Interval(est, nan, nan, nan, n, "bootstrap", level)
    a = (1 - level) / 2
    lo, hi = np.quantile(reps, [a, 1 - a])
    return Interval(est, float(lo), float(hi), float(np.std(reps, ddof=1)), n,
                    f"poisson bootstrap (B={n_boot}, seed={seed})", level)


def paired(parts_a: np.ndarray, combine_a: Combine, parts_b: np.ndarray, combine_b: Combine, *,
           method: Method = "bootstrap", n_boot: int = 1000, seed: int = 0, level: float = 0.95,
           clusters: np.ndarray | None = None) -> Interval:
    """Difference ``estimate_a - estimate_b`` over the same units, with interval and p-value."""
    pa, pb = np.asarray(parts_a, dtype=np.float64), np.asarray(parts_b, dtype=np.float64)
    if len(pa) != len(pb):
        raise ValueError("paired comparison needs the same units on both sides")
    ma = pa.shape[1]
    joint = cluster_parts(np.hstack([pa, pb]), clusters)

    def diff(s: np.ndarray) -> np.ndarray:
        return combine_a(s[..., :ma]) - combine_b(s[..., ma:])

    n = len(joint)
    nan = float("nan")
    if n == 0:
        return Interval(nan, nan, nan, nan, 0, method, level)
    with np.errstate(invalid="ignore", divide="ignore"):
        est = float(diff(joint.sum(axis=0)))
        if method == "delta":
            se = delta_se(joint, diff)
            z = stats.norm.ppf(0.5 + level / 2)
            p = float(2 * stats.norm.sf(abs(est) / se)) if se > 0 else (1.0 if est == 0 else 0.0)
            return Interval(est, est - z * se, est + z * se, se, n, "delta (paired)", level, p)
        reps = diff(poisson_sums(joint, n_boot, seed))
    reps = reps[np.isfinite(reps)]
    if len(reps) < 2:
        return Interval(est, nan, nan, nan, n, "bootstrap (paired)", level)
    a = (1 - level) / 2
    lo, hi = np.quantile(reps, [a, 1 - a])
    b = len(reps)
    p = min(1.0, 2 * min((np.sum(reps <= 0) + 1) / (b + 1), (np.sum(reps >= 0) + 1) / (b + 1)))
    return Interval(est, float(lo), float(hi), float(np.std(reps, ddof=1)), n,
                    f"paired poisson bootstrap (B={n_boot}, seed={seed})", level, float(p))
