"""Post-rollout performance: how latency grows with candidates and shown whispers, what a larger
``max_items`` would cost, and the plain recommendation that weighs it against the clicks gained.

Pure functions over the small frames of :mod:`whispers_lab.queries.performance` and
:mod:`whispers_lab.replay.max_items`:

* :func:`ols_from_groups`: least squares of a latency (``duration``, ``ranking`` or ``rest``) on
  ``[1, n_candidates, n_shown]`` from per-group sufficient statistics (requests, sum, sum of
  squares per (n_candidates, n_shown)), with heteroskedasticity-robust (HC1) standard errors:
  the same numbers as ``statsmodels.OLS(...).fit(cov_type="HC1")`` on the request rows, without
  the rows (the group's regressors are constant, so each group's squared residuals are
  ``sumsq - 2 fit sum + n fit^2``).
* :func:`max_items_cost`: extra shown whispers per request at each level (from the candidate
  counts: a request with n candidates shows ``min(n, max_items)``) times the cost per shown
  whisper, with its interval; the ranker scores every candidate whatever ``max_items`` is, so
  the cost per candidate does not change with it.
* :func:`recommend`: the largest level whose clicks gain is shown (its interval above 0, with the
  extrapolated examination decay) while its predicted mean and p95 latency stay within the plan's
  budgets at the upper end of their intervals; otherwise keep today's.

See ``docs/post-rollout.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .lazy import lazy_module
from .plan import Plan

stats = lazy_module("scipy.stats")

TERMS: tuple[str, ...] = ("intercept", "per_candidate", "per_shown")
TODAY = 6


@dataclass(frozen=True)
class LatencyModel:
    """``latency = intercept + per_candidate x n_candidates + per_shown x n_shown`` (ms)."""

    target: str
    coef: dict[str, float]
    se: dict[str, float]
    ci_low: dict[str, float]
    ci_high: dict[str, float]
    n: int
    r2: float
    note: str = ""

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame({"term": TERMS, "ms": [self.coef[t] for t in TERMS],
                             "se": [self.se[t] for t in TERMS],
                             "ci_low": [self.ci_low[t] for t in TERMS],
                             "ci_high": [self.ci_high[t] for t in TERMS]})


def ols_from_groups(profile: pd.DataFrame, target: str = "duration",
                    level: float = 0.95) -> LatencyModel:
    """OLS with HC1 standard errors from :func:`queries.performance.latency_profile`."""
    g = profile[profile["requests"] > 0]
    n_g = g["requests"].to_numpy(dtype=np.float64)
    X = np.column_stack([np.ones(len(g)), g["n_candidates"].to_numpy(dtype=np.float64),
                         g["n_shown"].to_numpy(dtype=np.float64)])
    s = g[f"sum_{target}"].to_numpy(dtype=np.float64)
    ss = g[f"sumsq_{target}"].to_numpy(dtype=np.float64)
    n, p = float(n_g.sum()), X.shape[1]
    nan = {t: float("nan") for t in TERMS}
    if n <= p or len(g) < p:
        return LatencyModel(target, nan, nan, nan, nan, int(n), float("nan"),
                            "too few requests or distinct candidate counts to fit")
    xtx = X.T @ (X * n_g[:, None])
    rank = np.linalg.matrix_rank(xtx)
    inv = np.linalg.pinv(xtx)
    beta = inv @ (X.T @ s)
    fit = X @ beta
    rss_g = np.maximum(ss - 2 * fit * s + n_g * fit * fit, 0.0)
    meat = X.T @ (X * rss_g[:, None])
    cov = inv @ meat @ inv * n / (n - p)
    se = np.sqrt(np.maximum(np.diag(cov), 0.0))
    z = stats.t.ppf(0.5 + level / 2, n - p)
    tss = float(ss.sum() - s.sum() ** 2 / n)
    r2 = 1 - float(rss_g.sum()) / tss if tss > 0 else float("nan")
    note = "" if rank == p else ("the counts are collinear here (every request shows "
                                 "min(candidates, 6)): the split between the two slopes is "
                                 "not identified")
    return LatencyModel(target, dict(zip(TERMS, map(float, beta), strict=True)),
                        dict(zip(TERMS, map(float, se), strict=True)),
                        dict(zip(TERMS, map(float, beta - z * se), strict=True)),
                        dict(zip(TERMS, map(float, beta + z * se), strict=True)),
                        int(n), r2, note)


def extra_shown(counts: pd.DataFrame, max_items: int, today: int = TODAY) -> float:
    """Mean extra whispers shown per request at ``max_items`` over today's cut."""
    n = counts["n_candidates"].to_numpy(dtype=np.float64)
    w = counts["requests"].to_numpy(dtype=np.float64)
    if w.sum() == 0:
        return float("nan")
    return float((w * (np.minimum(n, max_items) - np.minimum(n, today))).sum() / w.sum())


def max_items_cost(model: LatencyModel, counts: pd.DataFrame, levels: Sequence[int],
                   mean_ms: float, p95_ms: float, today: int = TODAY) -> pd.DataFrame:
    """Per level: extra shown per request, added mean latency (with interval), and the mean
    and p95 latency predicted by shifting today's by that amount."""
    rows = []
    for k in levels:
        extra = extra_shown(counts, k, today)
        cost = model.coef["per_shown"] * extra
        lo, hi = model.ci_low["per_shown"] * extra, model.ci_high["per_shown"] * extra
        rows.append({"max_items": k, "extra_shown": extra, "added_ms": cost,
                     "added_ci_low": min(lo, hi), "added_ci_high": max(lo, hi),
                     "mean_ms": mean_ms + cost, "mean_ci_high": mean_ms + max(lo, hi),
                     "p95_ms": p95_ms + cost, "p95_ci_high": p95_ms + max(lo, hi)})
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Recommendation:
    max_items: int
    sentence: str
    evidence: tuple[str, ...]


def recommend(clicks: pd.DataFrame, cost: pd.DataFrame, plan: Plan,
              today: int = TODAY) -> Recommendation:
    """The plain recommendation (see the module docstring). ``clicks``: the table of
    :func:`whispers_lab.replay.max_items.clicks_what_if`; ``cost``: :func:`max_items_cost`."""
    mean_budget = plan.criteria.avg_response_ms
    p95_budget = plan.criteria.p95_response_ms
    evidence, ok_levels = [], []
    for k in sorted(int(x) for x in cost["max_items"] if int(x) > today):
        c = clicks[(clicks["max_items"] == k) & (clicks["reading"] == "extrapolated")]
        u = clicks[(clicks["max_items"] == k) & (clicks["reading"] == "upper")]
        m = cost[cost["max_items"] == k].iloc[0]
        if c.empty:
            continue
        c, u = c.iloc[0], u.iloc[0] if not u.empty else None
        gain_shown = bool(np.isfinite(c["ci_low"]) and c["ci_low"] > 0)
        fits = bool(np.isfinite(m["mean_ci_high"]) and m["mean_ci_high"] <= mean_budget
                    and m["p95_ci_high"] <= p95_budget)
        upper = (f"; at most {u['relative_gain']:+.1%} if positions 7+ were looked at as "
                 f"much as position 6" if u is not None else "")
        evidence.append(
            f"max_items {k}: {c['clicks_gained']:+.3f} clicks per request "
            f"[{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] ({c['relative_gain']:+.1%} of today's "
            f"clicks){upper}; {m['extra_shown']:.2f} more whispers per request cost "
            f"{m['added_ms']:+.1f} ms [{m['added_ci_low']:+.1f}, {m['added_ci_high']:+.1f}], "
            f"mean {m['mean_ms']:.0f} ms (budget {mean_budget:g}), p95 {m['p95_ms']:.0f} ms "
            f"(budget {p95_budget:g}) at the upper end "
            f"{m['mean_ci_high']:.0f} / {m['p95_ci_high']:.0f} ms.")
        if gain_shown and fits:
            ok_levels.append(k)
    if ok_levels:
        k = max(ok_levels)
        sentence = (f"Raise NEXT_PUBLIC_WHISPERS_MAX from {today} to {k}: the extra clicks are "
                    f"shown (interval above zero) and the latency stays within the plan's "
                    f"budgets even at the upper end of its interval. Confirm it with a staged "
                    f"rollout of the new value, since positions beyond {today} were never "
                    f"logged.")
    else:
        sentence = (f"Keep NEXT_PUBLIC_WHISPERS_MAX at {today}: no larger value both shows a "
                    f"click gain and keeps the latency within the budgets with confidence.")
        k = today
    return Recommendation(k, sentence, tuple(evidence))
