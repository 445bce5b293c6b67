"""Time to return: Kaplan-Meier curves per variant and a stratified log-rank test.

Time is measured in whole rollout days after the exposure day (a user who opens the app the day
after exposure returns at time 1). Follow-up and censoring are defined in
:func:`whispers_lab.queries.experiment.survival_cells`: a control user switched to treatment is
censored the day before the switch. Because the data are aggregated counts per (variant,
stratum, time, event), the curves use statsmodels' ``SurvfuncRight`` with frequency weights,
and the log-rank test is computed from the risk sets directly (discrete times, hypergeometric
variance), stratified by exposure day like every other retention comparison. The one-step
(Peto) hazard ratio ``exp((O - E) / V)`` summarises the direction: above 1 means treated users
return sooner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..lazy import lazy_function, lazy_module
from ..results import StatResult, Status
from .settings import StatSettings

stats = lazy_module("scipy.stats")
SurvfuncRight = lazy_function("statsmodels.duration.survfunc", "SurvfuncRight")
if TYPE_CHECKING:
    from statsmodels.duration import survfunc


@dataclass(frozen=True)
class LogRank:
    observed_minus_expected: float
    variance: float
    chi2: float
    p_value: float

    @property
    def hazard_ratio(self) -> float:
        """Peto's one-step hazard ratio estimate (treatment vs control)."""
        return math.exp(self.observed_minus_expected / self.variance) if self.variance > 0 else math.nan


def logrank_from_counts(cells: pd.DataFrame) -> LogRank:
    """Stratified log-rank from counts: columns variant, stratum, time, event, n.

    For each stratum and event time: d events out of r at risk, d_t of them in treatment with
    r_t at risk; O - E = sum(d_t - d r_t / r), V = sum(d (r_t / r)(1 - r_t / r)(r - d) / (r - 1))."""
    if len(cells) == 0:
        return LogRank(math.nan, 0.0, math.nan, math.nan)
    c = cells.copy()
    c["is_t"] = (c["variant"] == "treatment").astype(int)
    c["d"] = c["n"] * c["event"]
    g = (c.groupby(["stratum", "time", "is_t"], sort=True)[["n", "d"]].sum()
         .unstack("is_t", fill_value=0))
    g.columns = [f"{a}_{b}" for a, b in g.columns]
    for col in ("n_0", "n_1", "d_0", "d_1"):
        if col not in g:
            g[col] = 0
    g = g.reset_index().sort_values(["stratum", "time"])
    # at risk at time t: units with time >= t (events and censorings at t are at risk)
    out_t = g.groupby("stratum")["n_1"].transform(lambda s: s[::-1].cumsum()[::-1])
    out_c = g.groupby("stratum")["n_0"].transform(lambda s: s[::-1].cumsum()[::-1])
    r_t, r_c = out_t.to_numpy(float), out_c.to_numpy(float)
    d_t, d = g["d_1"].to_numpy(float), (g["d_1"] + g["d_0"]).to_numpy(float)
    r = r_t + r_c
    use = (d > 0) & (r_t > 0) & (r_c > 0)
    if not use.any():
        return LogRank(0.0, 0.0, math.nan, math.nan)
    r, r_t, d, d_t = r[use], r_t[use], d[use], d_t[use]
    o_e = float((d_t - d * r_t / r).sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        v_terms = np.where(r > 1, d * (r_t / r) * (1 - r_t / r) * (r - d) / (r - 1), 0.0)
    v = float(v_terms.sum())
    if v <= 0:
        return LogRank(o_e, 0.0, math.nan, math.nan)
    chi2 = o_e * o_e / v
    return LogRank(o_e, v, chi2, float(stats.chi2.sf(chi2, 1)))


def km_curves(cells: pd.DataFrame, level: float) -> pd.DataFrame:
    """Kaplan-Meier "not yet returned" curves per variant (strata pooled, for display):
    variant, time, survival, ci_low, ci_high, at_risk, events."""
    rows = []
    for variant, part in cells.groupby("variant", sort=True):
        part = part[part["n"] > 0]
        if part.empty:
            continue
        sf = SurvfuncRight(part["time"].to_numpy(float), part["event"].to_numpy(int),
                           freq_weights=part["n"].to_numpy(float))
        lo, hi = sf_confint(sf, level)
        for t, s, a, b, risk, ev in zip(sf.surv_times, sf.surv_prob, lo, hi, sf.n_risk,
                                        sf.n_events, strict=True):
            rows.append({"variant": variant, "time": float(t), "survival": float(s),
                         "ci_low": float(a), "ci_high": float(b), "at_risk": float(risk),
                         "events": float(ev)})
    return pd.DataFrame(rows, columns=["variant", "time", "survival", "ci_low", "ci_high",
                                       "at_risk", "events"])


def sf_confint(sf: survfunc.SurvfuncRight, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise log(-log) intervals from Greenwood's standard errors."""
    s = np.asarray(sf.surv_prob, dtype=float)
    se = np.asarray(sf.surv_prob_se, dtype=float)
    z = stats.norm.isf((1 - level) / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        ll = np.log(-np.log(s))
        se_ll = se / (s * np.abs(np.log(s)))
        lo = np.exp(-np.exp(ll + z * se_ll))
        hi = np.exp(-np.exp(ll - z * se_ll))
    lo = np.where(np.isfinite(lo), lo, s)
    hi = np.where(np.isfinite(hi), hi, s)
    return lo, hi


@dataclass(frozen=True)
class SurvivalResult:
    """Curves for charts and the log-rank comparison as a StatResult."""

    curves: pd.DataFrame
    test: StatResult


def survival_comparison(cells: pd.DataFrame, settings: StatSettings,
                        day: int | None = None) -> SurvivalResult:
    """Kaplan-Meier curves and the stratified log-rank test (see module doc).

    Status: fail when treated users return significantly later (two-sided p < 2 alpha with a
    hazard ratio below 1), pass when significantly sooner, otherwise inconclusive (a test of
    difference cannot show equality); no_data without both arms."""
    method = "Kaplan-Meier per variant; log-rank stratified by exposure day"
    n_t = int(cells.loc[cells["variant"] == "treatment", "n"].sum()) if len(cells) else 0
    n_c = int(cells.loc[cells["variant"] == "control", "n"].sum()) if len(cells) else 0
    curves = km_curves(cells, settings.ci_level) if len(cells) else km_curves(
        pd.DataFrame(columns=["variant", "time", "event", "n"]), settings.ci_level)
    details = {"day": day, "n_treatment": n_t, "n_control": n_c}
    if min(n_t, n_c) < settings.min_group_users:
        return SurvivalResult(curves, StatResult(
            "time_to_return", None, None, None, None, n_t + n_c, method, "no_data",
            f"Too few randomised users with follow-up ({n_t} treated, {n_c} control) to "
            f"compare time to return.", None, details))
    lr = logrank_from_counts(cells)
    if not lr.variance > 0:
        return SurvivalResult(curves, StatResult(
            "time_to_return", None, None, None, None, n_t + n_c, method, "inconclusive",
            "No return events shared by both arms yet; the log-rank test has no information.",
            None, details))
    z = float(stats.norm.isf(settings.alpha))
    hr = lr.hazard_ratio
    lo = math.exp(lr.observed_minus_expected / lr.variance - z / math.sqrt(lr.variance))
    hi = math.exp(lr.observed_minus_expected / lr.variance + z / math.sqrt(lr.variance))
    details |= {"observed_minus_expected": lr.observed_minus_expected, "variance": lr.variance,
                "chi2": lr.chi2}
    status: Status
    if lr.p_value < 2 * settings.alpha and hr < 1:
        status, sentence = "fail", (f"Treated users return later than control (hazard ratio "
                                    f"{hr:.3f}, log-rank p = {lr.p_value:.2g}).")
    elif lr.p_value < 2 * settings.alpha:
        status, sentence = "pass", (f"Treated users return sooner than control (hazard ratio "
                                    f"{hr:.3f}, log-rank p = {lr.p_value:.2g}).")
    else:
        status, sentence = "inconclusive", (
            f"No difference in time to return shown (hazard ratio {hr:.3f}, "
            f"{settings.ci_level:.0%} CI {lo:.3f} to {hi:.3f}, log-rank p = {lr.p_value:.2g}).")
    return SurvivalResult(curves, StatResult("time_to_return", hr, lo, hi, lr.p_value, n_t + n_c,
                                             method, status, sentence, 1.0, details))
