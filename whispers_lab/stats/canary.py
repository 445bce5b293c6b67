"""Canary comparison of what treated and control users share (other endpoints, app opens).

Per metric, per analysis day, on per-user values (aggregated in SQL, at most
``canary_max_units`` per arm drawn by a seeded hash):

* location: Mann-Whitney U test (scipy) with the Hodges-Lehmann shift and its distribution-free
  interval, found by inverting the rank-sum test (Lehmann 1963): each end is an order statistic
  of the pairwise differences, selected in O((m + n) log n) per round over about a dozen
  rounds, so no m x n matrix of pairwise differences is ever built;
* effect size in the manner of Kayenta's judge (Netflix/Spinnaker ACA): the ratio of means
  treated / control against a band ``(allowed decrease, allowed increase)``. Kayenta fails a
  metric when the rank test is significant and the ratio is outside the band. We fail the same
  way, but pass only when the whole interval of the ratio (delta method) is inside the band in the
  harmful direction, so too little data reads as inconclusive, never as a pass;
* tails: a location test passes a variance blow-up, so the p95 and p99 (p5 and p1 for metrics
  where a drop hurts) and the interdecile spread p90 - p10 are compared as ratios, with
  conservative intervals built from order-statistic intervals of each quantile (Bonferroni over
  the quantiles involved). A tail ratio shown above ``tail_band`` fails; all tail intervals
  inside the band pass; anything else is inconclusive.

The metric's status is fail if location or tails fail, pass if both pass, else inconclusive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..lazy import lazy_module
from ..results import StatResult, Status
from .rates import quantile_ci_from_sorted
from .settings import StatSettings

stats = lazy_module("scipy.stats")

Harm = Literal["increase", "decrease"]


@dataclass(frozen=True)
class ShiftEstimate:
    shift: float
    low: float
    high: float
    u_statistic: float
    p_value: float


def _u_at(t: np.ndarray, c_sorted: np.ndarray, delta: float) -> float:
    """U(delta) = #{t_i - delta > c_j} + 0.5 #{t_i - delta == c_j}."""
    s = t - delta
    left = np.searchsorted(c_sorted, s, side="left")
    right = np.searchsorted(c_sorted, s, side="right")
    return float(left.sum() + 0.5 * (right - left).sum())


def _first_not_below(t: np.ndarray, c: np.ndarray, pivot: float, strict: bool) -> np.ndarray:
    """Per row i, the number of c_j (ascending) whose difference ``t_i - c_j`` is not below
    ``pivot`` (``>= pivot`` when ``strict``, ``> pivot`` otherwise), counted on the rounded
    differences themselves: the differences fall as c grows, so the count is a search in c for
    ``t_i - pivot``, whose own rounding can put a block of equal c values on the wrong side;
    that block is moved across (at most a few passes), so a pivot's own cell is always counted
    with it and every round of the selection makes progress."""
    n = c.size
    k = np.searchsorted(c, t - pivot, side="right" if strict else "left")
    rows = np.arange(t.size)

    def below(j: np.ndarray, i: np.ndarray) -> np.ndarray:
        d = t[i] - c[j]
        return d < pivot if strict else d <= pivot

    for _ in range(64):
        # c[k - 1] counted as not below, but its difference is below: move k before its block
        i = rows[(k > 0)]
        i = i[below(k[i] - 1, i)]
        # c[k] counted as below, but its difference is not: move k past its block
        j = rows[(k < n)]
        j = j[~below(k[j], j)]
        if not i.size and not j.size:
            return k
        k[i] = np.searchsorted(c, c[k[i] - 1], side="left")
        k[j] = np.searchsorted(c, c[k[j]], side="right")
    return k  # pragma: no cover (rounding moves a block by one position at most)


def _order_statistic(t: np.ndarray, c: np.ndarray, rank: int) -> float:
    """The ``rank``-th smallest (1-based) pairwise difference ``t_i - c_j`` (``t`` and ``c``
    sorted ascending) without building the m x n matrix: randomised selection in a matrix
    with sorted rows (row i is ``t_i - c`` read from the largest c down). Each round draws a
    pivot among the differences still in play, counts per row those below and at it (two
    searchsorted passes) and keeps one side; about a dozen rounds leave few enough
    differences to select among directly."""
    m, n = t.size, c.size
    lo = np.zeros(m, dtype=np.int64)   # per row, the columns [lo, hi) still in play
    hi = np.full(m, n, dtype=np.int64)
    need = int(rank)
    rng = np.random.default_rng(m * 1_000_003 + n)
    for _ in range(200):
        sizes = hi - lo
        ends = np.cumsum(sizes)
        total = int(ends[-1])
        if total <= max(8 * m, 200_000):
            rows = np.repeat(np.arange(m), sizes)
            cols = lo[rows] + np.arange(total) - np.repeat(ends - sizes, sizes)
            values = t[rows] - c[n - 1 - cols]
            return float(np.partition(values, need - 1)[need - 1])
        pick = int(rng.integers(total))
        row = int(np.searchsorted(ends, pick, side="right"))
        col = int(lo[row] + pick - (ends[row] - sizes[row]))
        pivot = t[row] - c[n - 1 - col]
        less = np.clip(n - _first_not_below(t, c, pivot, strict=True), lo, hi)
        at_most = np.clip(n - _first_not_below(t, c, pivot, strict=False), lo, hi)
        n_less, n_at_most = int((less - lo).sum()), int((at_most - lo).sum())
        if need <= n_less:
            hi = less
        elif need > n_at_most:
            need -= n_at_most
            lo = at_most
        else:
            return float(pivot)
    raise RuntimeError("pairwise-difference selection did not converge")  # pragma: no cover


def _inf_u_at_most(t: np.ndarray, c: np.ndarray, target: float, floor: float) -> float:
    """``inf{d : U(d) <= target}``. U steps down at each distinct difference v, from
    ``#{diff >= v}`` just below v through ``U(v)`` (ties count a half) to ``#{diff > v}``;
    the infimum is the smallest v with ``#{diff > v} <= target``, i.e. the ``ceil(mn -
    target)``-th smallest difference, itself when ``U(v) <= target`` and just above it
    otherwise. ``floor``: the answer when every d qualifies."""
    mn = t.size * c.size
    rank = math.ceil(mn - target)
    if rank < 1:
        return floor
    v = _order_statistic(t, c, min(rank, mn))
    return v if _u_at(t, c, v) <= target else float(np.nextafter(v, math.inf))


def _sup_u_at_least(t: np.ndarray, c: np.ndarray, target: float, ceiling: float) -> float:
    """``sup{d : U(d) >= target}``: the difference v with ``#{diff > v} < target <= #{diff >=
    v}``, i.e. the ``(floor(mn - target) + 1)``-th smallest, itself when ``U(v) >= target``
    and just below it otherwise. ``ceiling``: the answer when every d qualifies."""
    mn = t.size * c.size
    rank = math.floor(mn - target) + 1
    if rank > mn:
        return ceiling
    v = _order_statistic(t, c, max(rank, 1))
    return v if _u_at(t, c, v) >= target else float(np.nextafter(v, -math.inf))


def hodges_lehmann(t: np.ndarray, c: np.ndarray, alpha: float) -> ShiftEstimate:
    """Hodges-Lehmann shift (median of pairwise differences t_i - c_j) with the interval
    ``{d : |U(d) - mn/2| <= z_{1-alpha} sd(U)}`` (two-sided level 1 - 2 alpha) and the
    two-sided Mann-Whitney p-value at zero shift (scipy, asymptotic with tie correction).
    Each end is an order statistic of the pairwise differences (Lehmann 1963), found by
    selection (:func:`_order_statistic`); with ties the ends follow the test's mid-rank U, so
    the interval excludes 0 exactly when the one-sided test at 0 rejects."""
    t = np.sort(np.asarray(t, dtype=float))
    c = np.sort(np.asarray(c, dtype=float))
    m, n = t.size, c.size
    span_lo = float(t.min() - c.max()) - 1.0
    span_hi = float(t.max() - c.min()) + 1.0
    half = m * n / 2.0
    sd = math.sqrt(m * n * (m + n + 1) / 12.0)
    z = float(stats.norm.isf(alpha))
    # the median: where U falls through mn/2 (average the two sides, as with an even count)
    a = _inf_u_at_most(t, c, half, span_lo)
    b = _sup_u_at_least(t, c, half, span_hi)
    shift = 0.5 * (a + b)
    low = _inf_u_at_most(t, c, half + z * sd, span_lo)
    high = _sup_u_at_least(t, c, half - z * sd, span_hi)
    mw = stats.mannwhitneyu(t, c, alternative="two-sided", method="asymptotic")
    return ShiftEstimate(shift, low, high, float(mw.statistic), float(mw.pvalue))


def mean_ratio(t: np.ndarray, c: np.ndarray, alpha: float) -> tuple[float, float, float]:
    """Ratio of means treated / control with a delta-method interval on the log scale."""
    mt, mc = float(np.mean(t)), float(np.mean(c))
    if mt <= 0 or mc <= 0:
        if mt == 0 and mc == 0:
            return 1.0, math.nan, math.nan
        return (mt / mc if mc > 0 else math.inf), math.nan, math.nan
    se = math.sqrt(np.var(t, ddof=1) / (t.size * mt * mt) + np.var(c, ddof=1) / (c.size * mc * mc))
    z = float(stats.norm.isf(alpha))
    r = mt / mc
    return r, r * math.exp(-z * se), r * math.exp(z * se)


def _ratio_bounds(t_lo: float, t_hi: float, c_lo: float, c_hi: float) -> tuple[float, float]:
    """Conservative bounds of x_t / x_c from bounds of each (non-negative values)."""
    def div(a: float, b: float) -> float:
        if b > 0:
            return a / b
        return 1.0 if a <= 0 else math.inf

    return div(t_lo, c_hi), div(t_hi, c_lo)


def tails_check(t: np.ndarray, c: np.ndarray, harm: Harm, settings: StatSettings) -> dict:
    """Tail and spread ratios treated / control with conservative intervals and a status."""
    alpha = settings.alpha
    band = settings.tail_band
    qs = (0.95, 0.99) if harm == "increase" else (0.05, 0.01)
    out: dict = {"band": band, "quantiles": {}}
    verdicts: list[str] = []
    # each ratio uses two quantile intervals: alpha / 2 per end keeps the ratio end at alpha
    for q in qs:
        t_lo, t_hi = quantile_ci_from_sorted(t, q, alpha / 2)
        c_lo, c_hi = quantile_ci_from_sorted(c, q, alpha / 2)
        est = _ratio_bounds(float(np.quantile(t, q)), float(np.quantile(t, q)),
                            float(np.quantile(c, q)), float(np.quantile(c, q)))[0]
        lo, hi = _ratio_bounds(t_lo, t_hi, c_lo, c_hi)
        if harm == "increase":
            v = "fail" if lo > band else "pass" if hi <= band else "inconclusive"
        else:
            v = "fail" if hi < 1 / band else "pass" if lo >= 1 / band else "inconclusive"
        out["quantiles"][f"p{round(q * 100)}"] = {"ratio": est, "low": lo, "high": hi, "verdict": v}
        verdicts.append(v)
    # spread: (p90 - p10) ratio; four quantile intervals at alpha / 4 per end
    t90, t10 = quantile_ci_from_sorted(t, 0.9, alpha / 4), quantile_ci_from_sorted(t, 0.1, alpha / 4)
    c90, c10 = quantile_ci_from_sorted(c, 0.9, alpha / 4), quantile_ci_from_sorted(c, 0.1, alpha / 4)
    s_t = float(np.quantile(t, 0.9) - np.quantile(t, 0.1))
    s_c = float(np.quantile(c, 0.9) - np.quantile(c, 0.1))
    lo, hi = _ratio_bounds(max(t90[0] - t10[1], 0.0), t90[1] - t10[0],
                           max(c90[0] - c10[1], 0.0), c90[1] - c10[0])
    est = _ratio_bounds(s_t, s_t, s_c, s_c)[0]
    v = "fail" if lo > band else "pass" if hi <= band else "inconclusive"
    out["spread"] = {"ratio": est, "low": lo, "high": hi, "verdict": v}
    verdicts.append(v)
    out["status"] = ("fail" if "fail" in verdicts else
                     "pass" if all(x == "pass" for x in verdicts) else "inconclusive")
    return out


def bounded_sample(values: np.ndarray, max_units: int, seed: int) -> np.ndarray:
    """At most ``max_units`` values, drawn without replacement with a seeded generator."""
    v = np.asarray(values, dtype=float)
    if v.size <= max_units:
        return v
    rng = np.random.default_rng(seed)
    return v[rng.choice(v.size, size=max_units, replace=False)]


def canary_metric(metric: str, treated: np.ndarray, control: np.ndarray, harm: Harm,
                  settings: StatSettings, what: str, day: int | None = None,
                  population: dict | None = None) -> StatResult:
    """Judge one shared metric, treated vs control users (see module doc)."""
    t = bounded_sample(np.asarray(treated, dtype=float), settings.canary_max_units, settings.seed)
    c = bounded_sample(np.asarray(control, dtype=float), settings.canary_max_units,
                       settings.seed + 1)
    t, c = t[np.isfinite(t)], c[np.isfinite(c)]
    lo_band, hi_band = settings.canary_band
    method = ("Mann-Whitney U with Hodges-Lehmann shift; Kayenta-style band on the ratio of "
              "means; tail and spread ratios by order statistics")
    details: dict = {"day": day, "n_treated": int(t.size), "n_control": int(c.size),
                     "harm": harm, "band": [lo_band, hi_band]} | (population or {})
    n = int(t.size + c.size)
    if t.size == 0 or c.size == 0:
        return StatResult(metric, None, None, None, None, n, method, "no_data",
                          f"{what}: no {'treated' if t.size == 0 else 'control'} users with "
                          f"data on this day.", hi_band if harm == "increase" else lo_band, details)
    if min(t.size, c.size) < settings.canary_min_units:
        return StatResult(metric, None, None, None, None, n, method, "inconclusive",
                          f"{what}: only {min(t.size, c.size)} users in the smaller arm (fewer "
                          f"than {settings.canary_min_units}); too few points to compare.",
                          hi_band if harm == "increase" else lo_band, details)
    hl = hodges_lehmann(t, c, settings.alpha)
    ratio, r_lo, r_hi = mean_ratio(t, c, settings.alpha)
    tails = tails_check(t, c, harm, settings)
    details |= {"hl_shift": hl.shift, "hl_low": hl.low, "hl_high": hl.high,
                "median_treated": float(np.median(t)), "median_control": float(np.median(c)),
                "mean_treated": float(np.mean(t)), "mean_control": float(np.mean(c)),
                "tails": tails}
    if harm == "increase":
        significant = hl.low > 0
        outside = ratio > hi_band
        inside = math.isfinite(r_hi) and r_hi <= hi_band
        bad_word, threshold = "higher", hi_band
    else:
        significant = hl.high < 0
        outside = ratio < lo_band
        inside = math.isfinite(r_lo) and r_lo >= lo_band
        bad_word, threshold = "lower", lo_band
    if math.isnan(r_lo) and ratio == 1.0:  # both arms identically zero
        inside = True
    location: Status = ("fail" if significant and outside else
                        "pass" if inside else "inconclusive")
    details["location_status"] = location
    status: Status = ("fail" if "fail" in (location, tails["status"]) else
                      "pass" if location == tails["status"] == "pass" else "inconclusive")
    ratio_txt = (f"treated/control mean ratio {ratio:.3f}" +
                 (f" ({settings.ci_level:.0%} CI {r_lo:.3f} to {r_hi:.3f})"
                  if math.isfinite(r_lo) else ""))
    if status == "fail" and location == "fail":
        sentence = (f"{what} is significantly {bad_word} for treated users: {ratio_txt}, outside "
                    f"the allowed band (MW p = {hl.p_value:.1e}).")
    elif status == "fail":
        sentence = (f"{what}: the typical value is within the band ({ratio_txt}) but the tail or "
                    f"spread is shown to exceed {settings.tail_band:.2f}x control.")
    elif status == "pass":
        sentence = (f"{what} is within the allowed band: {ratio_txt}; tails and spread also "
                    f"within {settings.tail_band:.2f}x.")
    else:
        why = ("the tail or spread intervals are still too wide" if location == "pass" else
               "the interval of the ratio still reaches outside the band")
        sentence = f"{what}: {ratio_txt}; not yet judged because {why}."
    return StatResult(metric, ratio, r_lo if math.isfinite(r_lo) else None,
                      r_hi if math.isfinite(r_hi) else None, hl.p_value, n, method, status,
                      sentence, threshold, details)
