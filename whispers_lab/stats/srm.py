"""Sample-ratio mismatch: is the observed treatment/control split the one the plan implies?

Population: external, non-beta users by the rollout day of their first exposure. For first
exposures on day d the plan implies a treatment share ``s_d`` (``cohort.expected_split``). Under
correct assignment the treatment count of day d is Binomial(n_d, s_d), independently over days,
so the pooled count ``O = sum_d O_d`` has mean ``E = sum_d n_d s_d`` and variance
``V = sum_d n_d s_d (1 - s_d)``. The test statistic ``(O - E)^2 / V`` is chi-square with one
degree of freedom; for a single day it is exactly Pearson's chi-square of the two cells
(``scipy.stats.chisquare``). Pooling with Pearson's formula on the summed counts would use
``N s(1 - s)`` with the average share, which overstates the variance when the share changes over
days (10% -> 95%) and makes the check blind; hence the exact variance. A mismatch is flagged
when ``p < srm_p_value``. The per-day Pearson tests and their sum (an omnibus with one degree of
freedom per day, which also catches mismatches of alternating sign) are kept in the details.
Days on which the split is not random (expected share 0 or 1, e.g. the beta phase, where every
non-beta user must be served control) are checked exactly: any user on the wrong side is a
mismatch.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..lazy import lazy_function, lazy_module
from ..results import StatResult
from .settings import StatSettings

stats = lazy_module("scipy.stats")
proportion_confint = lazy_function("statsmodels.stats.proportion", "proportion_confint")

METRIC = "srm"


def srm_test(by_day: pd.DataFrame, settings: StatSettings, day: int | None = None) -> StatResult:
    """SRM from a frame with one row per first-exposure day: ``day, n_t, n_c, share_t``
    (expected treatment share of that day's population)."""
    thr = settings.srm_p_value
    method = "chi-square (1 df) of the pooled treatment count, exact binomial variance over days"
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
    n_arr = d["n"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        day_chi2 = (d["n_t"].to_numpy(float) - n_arr * share) ** 2 / (n_arr * share * (1 - share))
    day_p = stats.chi2.sf(day_chi2, 1)  # Pearson's two-cell chi-square of each day
    for i, (dd, a, b) in enumerate(zip(d["day"], d["n_t"], d["n_c"], strict=True)):
        ok = not fixed[i] and n_arr[i] > 0
        details["per_day"].append({"day": int(dd), "n_t": int(a), "n_c": int(b),
                                   "expected_share_t": float(share[i]),
                                   "p_value": float(day_p[i]) if ok else None})
    lo, hi = proportion_confint(int(d["n_t"].sum()), n_total, alpha=1 - settings.ci_level,
                                method="wilson")
    if wrong.sum() == 0 and n_total < settings.min_group_users:
        return StatResult(METRIC, obs_share, None, None, None, n_total, method, "inconclusive",
                          f"Only {n_total} randomised user(s) exposed so far (fewer than "
                          f"{settings.min_group_users}); the split cannot be checked yet.", thr,
                          details)
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
    v = float((rand["n"] * rand["share_t"] * (1 - rand["share_t"])).sum())
    chi2 = (o_t - e_t) ** 2 / v
    p = float(stats.chi2.sf(chi2, 1))
    lo, hi = proportion_confint(int(o_t), int(n_r), alpha=1 - settings.ci_level, method="wilson")
    per_day = [e["p_value"] for e in details["per_day"] if e["p_value"] is not None]
    e_d = rand["n"] * rand["share_t"]
    omnibus = float(((rand["n_t"] - e_d) ** 2 / (rand["n"] * rand["share_t"]
                                                  * (1 - rand["share_t"]))).sum())
    details |= {"expected_share": e_t / n_r, "observed_share": o_t / n_r, "chi2": chi2,
                "n_randomised": int(n_r), "omnibus_chi2": omnibus,
                "omnibus_df": len(per_day),
                "omnibus_p_value": float(stats.chi2.sf(omnibus, len(per_day)))}
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
