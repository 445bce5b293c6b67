"""Sufficient statistics: the small aggregates DuckDB returns and every test consumes.

In the manner of GrowthBook's gbstats, no test in :mod:`whispers_lab.stats` sees a row per user.
SQL returns, per variant (and per stratum), counts, sums, sums of squares and cross-products; the
dataclasses here turn them into means, variances and covariances. Degenerate inputs (n = 0,
n = 1) give NaN, never an exception; callers turn NaN into a coded result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd


def _div(a: float, b: float) -> float:
    return a / b if b else math.nan


@dataclass(frozen=True)
class ProportionStat:
    """``successes`` out of ``n`` independent Bernoulli units."""

    n: int
    successes: float

    @property
    def mean(self) -> float:
        return _div(self.successes, self.n)

    @property
    def variance(self) -> float:
        """Per-unit variance p(1 - p) (the maximum-likelihood form used by Wald intervals)."""
        p = self.mean
        return p * (1.0 - p)

    @property
    def var_of_mean(self) -> float:
        return _div(self.variance, self.n)


@dataclass(frozen=True)
class SampleMeanStat:
    """n, sum and sum of squares of a per-unit value."""

    n: int
    sum: float
    sum_sq: float

    @property
    def mean(self) -> float:
        return _div(self.sum, self.n)

    @property
    def variance(self) -> float:
        """Unbiased per-unit variance (divisor n - 1); NaN below two units."""
        if self.n < 2:
            return math.nan
        return max(self.sum_sq - self.sum * self.sum / self.n, 0.0) / (self.n - 1)

    @property
    def var_of_mean(self) -> float:
        return _div(self.variance, self.n)


@dataclass(frozen=True)
class RegressionStat:
    """Outcome y and covariate x of n units: the cross-products CUPED needs."""

    n: int
    sum_y: float
    sum_y2: float
    sum_x: float
    sum_x2: float
    sum_xy: float

    @property
    def mean_y(self) -> float:
        return _div(self.sum_y, self.n)

    @property
    def mean_x(self) -> float:
        return _div(self.sum_x, self.n)

    @property
    def ss_yy(self) -> float:
        """Centred sum of squares of y."""
        return self.sum_y2 - _div(self.sum_y * self.sum_y, self.n) if self.n else 0.0

    @property
    def ss_xx(self) -> float:
        return self.sum_x2 - _div(self.sum_x * self.sum_x, self.n) if self.n else 0.0

    @property
    def ss_xy(self) -> float:
        return self.sum_xy - _div(self.sum_x * self.sum_y, self.n) if self.n else 0.0


@dataclass(frozen=True)
class RatioStat:
    """A ratio metric sum(num) / sum(den) over independent clusters (users or requests).

    Carries per-cluster n, sums, sums of squares and the cross-product, so the delta method
    gives a variance that respects the clustering (clicks of one user are not independent).
    """

    n: int
    sum_num: float
    sum_den: float
    sum_num2: float
    sum_den2: float
    sum_num_den: float

    @property
    def ratio(self) -> float:
        return _div(self.sum_num, self.sum_den)

    @property
    def var_of_ratio(self) -> float:
        """Delta-method variance of the ratio, sample (n - 1) moments; NaN below two clusters."""
        n = self.n
        if n < 2 or self.sum_den == 0:
            return math.nan
        r = self.ratio
        mean_den = self.sum_den / n
        s_nn = (self.sum_num2 - self.sum_num ** 2 / n) / (n - 1)
        s_dd = (self.sum_den2 - self.sum_den ** 2 / n) / (n - 1)
        s_nd = (self.sum_num_den - self.sum_num * self.sum_den / n) / (n - 1)
        var = (s_nn - 2.0 * r * s_nd + r * r * s_dd) / (n * mean_den * mean_den)
        return max(var, 0.0)

    @property
    def design_effect(self) -> float:
        """Var(ratio) relative to treating every denominator unit as independent Bernoulli
        (meaningful for a proportion of events); 1 with one unit per cluster, above 1 when
        units of a cluster are positively correlated."""
        r = self.ratio
        naive = _div(r * (1.0 - r), self.sum_den)
        # both variances with divisor n, so that one unit per cluster gives exactly 1
        return _div(self.var_of_ratio * (self.n - 1) / self.n, naive) if self.n else math.nan


def ratio_from_units(num: np.ndarray, den: np.ndarray) -> RatioStat:
    """Aggregate per-cluster values into a :class:`RatioStat` (tests and small data)."""
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    return RatioStat(int(num.size), float(num.sum()), float(den.sum()), float((num * num).sum()),
                     float((den * den).sum()), float((num * den).sum()))


def ratio_from_row(row: pd.Series | dict, prefix: str = "") -> RatioStat:
    """A :class:`RatioStat` from one row of an aggregate frame (columns n, sum_num, ...)."""
    v = [row[f"{prefix}{k}"] for k in ("n", "sum_num", "sum_den", "sum_num2", "sum_den2",
                                         "sum_num_den")]
    return RatioStat(int(v[0]), *(float(x) for x in v[1:]))


#: The columns of a per-(stratum, variant) regression aggregate frame.
REGRESSION_COLUMNS: tuple[str, ...] = ("n", "sum_y", "sum_y2", "sum_x", "sum_x2", "sum_xy")


def regression_from_units(y: np.ndarray, x: np.ndarray) -> RegressionStat:
    y = np.asarray(y, dtype=float)
    x = np.asarray(x, dtype=float)
    return RegressionStat(int(y.size), float(y.sum()), float((y * y).sum()), float(x.sum()),
                          float((x * x).sum()), float((x * y).sum()))


def sums_by(key: np.ndarray, **values: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Group rows by an integer ``key``: the sorted distinct keys, and for each named column
    its sum per key (``n``: the row count per key, always included). The numpy building block
    of the aggregates built outside SQL (Monte Carlo twins, small frames)."""
    uniq, inv = np.unique(np.asarray(key), return_inverse=True)
    out = {"n": np.bincount(inv, minlength=uniq.size).astype(float)}
    for name, v in values.items():
        out[name] = np.bincount(inv, weights=np.asarray(v, dtype=float), minlength=uniq.size)
    return uniq, out
