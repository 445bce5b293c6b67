"""The sequential design fitted to the rollout plan: schedule, information and boundaries.

The information a comparison will have by the plan's last day is not a mystery: the schedule
says which buckets are enabled on which day, and how many users arrive in each stratum can be
projected from arrivals that cannot depend on the outcome. This module turns both into

* the **arrival profile** ``A(L)``: the share of randomised users whose first active day on or
  after a given day ``p`` is ``p + L``, measured on the pre-rollout days (nobody randomised is
  enabled then) or assumed from the plan's design figures;
* the **arm shares** of each stratum ``(s, a)`` from the distribution of enabling days;
* the **projected maximum information** of the staggered retention estimate at each look
  (observed strata as they are, future strata at their expected weight, rescaled by how many
  users the observed strata actually had), hence the information fraction that drives alpha
  spending. The projection uses enabling days and first visits only, never an outcome, so the
  spending stays valid (Lan & DeMets 1983; Jennison & Turnbull 2000, sec. 7.2);
* one-sided **group-sequential monitors** (:func:`monitor_one_sided`) for the non-inferiority
  (pass) boundary and the deterioration (harm) boundary, and the **design power**: the chance
  that a healthy rollout of the plan's expected size passes by a given day.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..lazy import lazy_module
from . import sequential
from .settings import SpendingName

special = lazy_module("scipy.special")
stats = lazy_module("scipy.stats")

#: Beta concentration (a + b) of the daily-visit propensity assumed by the plan-level design
#: (heterogeneous users: a few come daily, many rarely). Only the design power uses it.
DESIGN_CONCENTRATION = 3.5


@dataclass(frozen=True)
class Schedule:
    """When buckets are enabled: the stage days (first day of each percentage stage, in the
    state in force) and the final look (the day the schedule reaches its last stage)."""

    stages: tuple[int, ...]
    final_day: int

    def stages_through(self, day: int) -> tuple[int, ...]:
        return tuple(s for s in self.stages if s <= day)


# ---------------------------------------------------------------------------------------
# arrivals and arm shares


def arrival_profile(lags: pd.DataFrame, n_users: int, max_lag: int) -> np.ndarray:
    """``A(L)`` for ``L = 0..max_lag`` from :func:`queries.experiment.preperiod_lags`
    (``p, lag, users``): the mean over pseudo-starts ``p`` that can observe lag L
    (``p + L <= -1``) of ``users / n_users``. Lags no pseudo-start observes are extrapolated
    geometrically from the last two observed ones (0 when those are 0)."""
    out = np.zeros(max_lag + 1)
    if n_users <= 0 or lags is None or lags.empty:
        return out
    p = lags["p"].to_numpy(int)
    lag = lags["lag"].to_numpy(int)
    users = lags["users"].to_numpy(float)
    starts = np.unique(p)
    seen = np.zeros(max_lag + 1, dtype=bool)
    for L in range(max_lag + 1):
        able = starts[starts + L <= -1]
        if able.size == 0:
            continue
        mask = (lag == L) & np.isin(p, able)
        out[L] = users[mask].sum() / (able.size * n_users)
        seen[L] = True
    last = np.flatnonzero(seen)
    if last.size and last[-1] < max_lag:
        j = last[-1]
        ratio = out[j] / out[j - 1] if j >= 1 and out[j - 1] > 0 else 0.0
        ratio = min(max(ratio, 0.0), 0.99)
        for L in range(j + 1, max_lag + 1):
            out[L] = out[L - 1] * ratio
    return out


def assumed_profile(daily_active_share: float, max_lag: int,
                    concentration: float = DESIGN_CONCENTRATION) -> np.ndarray:
    """``A(L)`` when every user visits each day with a propensity ``p ~ Beta`` of mean
    ``daily_active_share``: ``E[p (1 - p)^L] = B(a + 1, b + L) / B(a, b)``."""
    a = daily_active_share * concentration
    b = (1.0 - daily_active_share) * concentration
    L = np.arange(max_lag + 1, dtype=float)
    return np.exp(special.betaln(a + 1.0, b + L) - special.betaln(a, b))


@dataclass(frozen=True)
class ArmShares:
    """Shares of the randomised users by enabling day (``inf`` = never)."""

    days: np.ndarray     # sorted enabling days (inf last)
    shares: np.ndarray   # share of randomised users per day

    @classmethod
    def from_counts(cls, counts: pd.DataFrame) -> ArmShares:
        """From ``f_day, n`` (e.g. :func:`queries.experiment.enabled_day_counts`)."""
        if counts is None or counts.empty or float(counts["n"].sum()) <= 0:
            return cls(np.zeros(0), np.zeros(0))
        c = counts.sort_values("f_day")
        n = c["n"].to_numpy(float)
        return cls(c["f_day"].to_numpy(float), n / n.sum())

    def treatment(self, s: int) -> float:
        return float(self.shares[self.days == s].sum())

    def control(self, after: float) -> float:
        """Share not enabled through day ``after`` (enabling day > after)."""
        return float(self.shares[self.days > after].sum())


def expected_weight(s: int, a: int, k: int, profile: np.ndarray, shares: ArmShares,
                    n_users: float) -> float:
    """Expected stratum weight ``n_t n_c / (n_t + n_c)`` of stratum (s, a) for window k."""
    L = a - s
    if L < 0 or L >= profile.size:
        return 0.0
    pt, pc = shares.treatment(s), shares.control(a + k)
    if pt <= 0 or pc <= 0:
        return 0.0
    return n_users * profile[L] * pt * pc / (pt + pc)


def _expected_units(s: int, a: int, k: int, profile: np.ndarray, shares: ArmShares,
                    n_users: float) -> float:
    L = a - s
    if L < 0 or L >= profile.size:
        return 0.0
    return n_users * profile[L] * (shares.treatment(s) + shares.control(a + k))


def strata_through(schedule: Schedule, k: int, day: int) -> list[tuple[int, int]]:
    """Every stratum (s, a) of window k whose outcome closes by ``day``."""
    return [(s, a) for s in schedule.stages for a in range(s, day - k + 1)]


def projected_max_weight(observed: pd.DataFrame, day: int, k: int, schedule: Schedule,
                         profile: np.ndarray, shares: ArmShares, n_users: float) -> float:
    """The effective sample size the estimate will have at the final look, projected on
    ``day``: observed strata (``s, a, n_t, n_c, w``) as observed, strata still to come at
    their expected weight, rescaled by ``rho`` = observed units / expected units of the
    observed strata (so a user base busier or quieter than the pre-period is followed)."""
    w_obs = float(observed["w"].sum()) if len(observed) else 0.0
    exp_obs = sum(_expected_units(int(s), int(a), k, profile, shares, n_users)
                  for s, a in zip(observed["s"], observed["a"], strict=True)) if len(observed) else 0.0
    units_obs = float((observed["n_t"] + observed["n_c"]).sum()) if len(observed) else 0.0
    rho = units_obs / exp_obs if exp_obs > 0 else 1.0
    seen = {(int(s), int(a)) for s, a in zip(observed["s"], observed["a"], strict=True)} \
        if len(observed) else set()
    future = [(s, a) for s, a in strata_through(schedule, k, schedule.final_day)
              if (s, a) not in seen and a > day - k]
    w_future = rho * sum(expected_weight(s, a, k, profile, shares, n_users) for s, a in future)
    return w_obs + w_future


# ---------------------------------------------------------------------------------------
# group-sequential monitoring


def information_fractions(weights: Sequence[float], projected_max: Sequence[float],
                          final: Sequence[bool]) -> np.ndarray:
    """Fractions ``W_j / max(W_max_j, W_j)``, non-decreasing, 1 at (and after) a final look."""
    w = np.asarray(weights, dtype=float)
    m = np.maximum(np.asarray(projected_max, dtype=float), w)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(m > 0, w / m, 0.0)
    t = np.where(np.asarray(final, dtype=bool), 1.0, t)
    return np.maximum.accumulate(np.clip(t, 0.0, 1.0)) if t.size else t


@dataclass(frozen=True)
class Monitor:
    """A one-sided group-sequential test over the looks so far (rejection when z >= b)."""

    boundary: np.ndarray     # per look (inf: no alpha to spend at that look)
    z: np.ndarray
    crossed: np.ndarray      # bool per look
    alpha_spent: np.ndarray  # cumulative

    @property
    def first_crossing(self) -> int | None:
        idx = np.flatnonzero(self.crossed)
        return int(idx[0]) if idx.size else None


def monitor_one_sided(z: Sequence[float], information: Sequence[float],
                      fractions: Sequence[float], alpha: float, kind: SpendingName,
                      param: float | None = None) -> Monitor:
    """Boundaries of a one-sided Lan-DeMets design and whether each look's z crosses.

    Looks without information (0) get ``inf``. The correlation of successive statistics is the
    canonical ``sqrt(I_i / I_j)`` (independent increments)."""
    zz = np.asarray(z, dtype=float)
    info = np.asarray(information, dtype=float)
    frac = np.asarray(fractions, dtype=float)
    if zz.size == 0:
        empty = np.zeros(0)
        return Monitor(empty, empty, np.zeros(0, dtype=bool), empty)
    # information must not decrease for the recursion: carry the running maximum
    info_m = np.where(info > 0, np.maximum.accumulate(np.where(info > 0, info, 0.0)), 0.0)
    b = sequential.boundaries(info_m, frac, alpha, kind, param)
    crossed = np.isfinite(zz) & (zz >= b)
    spent = sequential.spending(np.maximum.accumulate(np.clip(frac, 0, 1)), alpha, kind, param)
    return Monitor(b, zz, crossed, spent)


def crossing_probability(bounds: Sequence[float], information: Sequence[float],
                         drift: float) -> np.ndarray:
    """Cumulative probability of having crossed by each look when ``E[Z_j] = drift sqrt(I_j)``."""
    return np.cumsum(sequential.exit_probabilities(bounds, information, drift))


def z_sum(alpha: float, power: float) -> float:
    return float(stats.norm.isf(alpha) + stats.norm.ppf(power))


def information_for_power(boundary: float, margin: float, power: float) -> float:
    """Information at which a fixed look with boundary ``boundary`` has ``power`` against a
    true effect ``margin`` away from the null: ``((b + z_power) / margin)^2``."""
    if not (margin > 0 and math.isfinite(boundary)):
        return math.inf
    return ((boundary + float(stats.norm.ppf(power))) / margin) ** 2
