"""Sample-ratio mismatch: is the observed treatment/control split the one the plan implies?

Population: external, non-beta users by the rollout day of their first exposure. For first
exposures on day d the plan implies a treatment share ``s_d`` (``cohort.expected_split``); the
expected treatment count over the days tested is ``E_t = sum_d n_d s_d``. Pearson's chi-square
of the two observed counts against ``(E_t, N - E_t)`` (one degree of freedom, pooled over days
so a persistent mismatch accumulates) flags a mismatch when ``p < srm_p_value``. Per-day tests
are kept in the details. Days on which the split is not random (expected share 0 or 1, e.g. the
beta phase, where every non-beta user must be served control) are checked exactly: any user on
the wrong side is a mismatch.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

from ..results import StatResult
from .settings import StatSettings

METRIC = "srm"


def srm_test(by_day: pd.DataFrame, settings: StatSettings, day: int | None = None) -> StatResult:
    """SRM from a frame with one row per first-exposure day: ``day, n_t, n_c, share_t``
    (expected treatment share of that day's population)."""
    thr = settings.srm_p_value
    method = "Pearson chi-square (1 df) of pooled observed vs expected counts"
    if len(by_day) == 0 or float(by_day["n_t"].sum() + by_day["n_c"].sum()) == 0:
        return StatResult(METRIC, None, None, None, None, 0, method, "no_data",
                          "No external, non-beta user has been exposed yet, so the split cannot "
                          "be checked.", thr, {"day": day})
    d = by_day.copy()
    d["n"] = d["n_t"] + d["n_c"]
    share = d["share_t"].to_numpy(float)
    fixed = (share <= 0.0) | (share >= 1.0)
    wrong = np.where(share <= 0.0, d["n_t"], np.where(share >= 1.0, d["n_c"], 0)).astype(int)
    n_total = int(d["n"].sum())
    obs_share = float(d["n_t"].sum()) / n_total
    details: dict = {"day": day, "n_treatment": int(d["n_t"].sum()),
                     "n_control": int(d["n_c"].sum()), "per_day": []}
    for row, fx in zip(d.itertuples(index=False), fixed, strict=True):
        entry = {"day": int(row.day), "n_t": int(row.n_t), "n_c": int(row.n_c),
                 "expected_share_t": float(row.share_t), "p_value": None}
        if not fx and row.n > 0:
            e_t = row.n * row.share_t
            entry["p_value"] = float(stats.chisquare([row.n_t, row.n_c],
                                                     [e_t, row.n - e_t]).pvalue)
        details["per_day"].append(entry)
    lo, hi = proportion_confint(int(d["n_t"].sum()), n_total, alpha=1 - settings.ci_level,
                                method="wilson")
    if wrong.sum() > 0:
        return StatResult(METRIC, obs_share, float(lo), float(hi), 0.0, n_total,
                          "exact check of non-random days", "fail",
                          f"{int(wrong.sum())} user(s) were served the variant the plan does not "
                          f"allow on their first-exposure day: the assignment is broken.", thr,
                          details | {"wrong_side": int(wrong.sum())})
    rand = d.loc[~fixed]
    details["expected_share"] = None
    if len(rand) == 0 or float(rand["n"].sum()) == 0:
        return StatResult(METRIC, obs_share, float(lo), float(hi), None, n_total,
                          "exact check of non-random days", "pass",
                          "No day so far has a random split; every user was served the variant "
                          "the plan allows.", thr, details)
    n_r = float(rand["n"].sum())
    e_t = float((rand["n"] * rand["share_t"]).sum())
    o_t = float(rand["n_t"].sum())
    res = stats.chisquare([o_t, n_r - o_t], [e_t, n_r - e_t])
    lo, hi = proportion_confint(int(o_t), int(n_r), alpha=1 - settings.ci_level, method="wilson")
    p = float(res.pvalue)
    details |= {"expected_share": e_t / n_r, "observed_share": o_t / n_r,
                "chi2": float(res.statistic), "n_randomised": int(n_r)}
    if p < thr:
        status, sentence = "fail", (
            f"Sample-ratio mismatch: {o_t / n_r:.2%} of {int(n_r):,} users were in treatment "
            f"where {e_t / n_r:.2%} was expected (p = {p:.1e} < {thr}); comparisons between "
            f"the arms cannot be trusted until the cause is found.")
    else:
        status, sentence = "pass", (
            f"The split matches the plan: {o_t / n_r:.2%} of {int(n_r):,} users in treatment, "
            f"{e_t / n_r:.2%} expected (p = {p:.3f}).")
    return StatResult(METRIC, o_t / n_r, float(lo), float(hi), p, n_total, method, status,
                      sentence, thr, details)
