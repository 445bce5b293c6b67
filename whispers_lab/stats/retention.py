"""Dk retention, treatment vs control: stratified non-inferiority with daily sequential looks.

Pure functions over the per-(stratum, variant) cells of
:func:`whispers_lab.queries.experiment.retention_cells`; see ``docs/statistics.md`` for the
window, censoring and switch rules. For each analysis day D (one look per day from the first
percentage day for ``planned_looks`` days) the strata with closed windows (``e <= D - k``) give
the stratified difference (:mod:`.noninferiority`); its effective sample size is the
information that drives Lan-DeMets spending (:mod:`.sequential`). The reported interval of the
result is the sequential (repeated) interval; the naive one is in the details and the history.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from ..results import StatResult, Status
from . import sequential
from .cuped import cuped_difference
from .noninferiority import (
    TwoArmEstimate,
    ni_p_value,
    noninferiority_status,
    ratio_interval,
    stratified_difference,
    z_interval,
)
from .settings import StatSettings

HISTORY_COLUMNS: tuple[str, ...] = (
    "day", "k", "look", "n_treatment", "n_control", "mean_treatment", "mean_control", "diff",
    "se", "naive_low", "naive_high", "information", "fraction", "alpha_spent", "boundary",
    "seq_low", "seq_high", "ratio", "ratio_naive_low", "ratio_naive_high", "ratio_seq_low",
    "ratio_seq_high", "status", "relative_status",
)


def strata_frame(cells: pd.DataFrame, max_stratum: int | None = None) -> pd.DataFrame:
    """Pivot cells (stratum, variant, n, sum_y, sum_x, sum_x2, sum_xy) to one row per stratum
    with ``<field>_t`` / ``<field>_c`` columns plus the ``sum_t`` / ``sum_c`` aliases."""
    fields = ["n", "sum_y", "sum_x", "sum_x2", "sum_xy"]
    c = cells if max_stratum is None else cells[cells["stratum"] <= max_stratum]
    if len(c) == 0:
        cols = [f"{f}_{s}" for s in ("t", "c") for f in [*fields, "sum_y2"]]
        return pd.DataFrame(columns=["stratum", *cols, "sum_t", "sum_c"], dtype=float)
    wide = c.pivot_table(index="stratum", columns="variant", values=fields, aggfunc="sum",
                         fill_value=0)
    out = pd.DataFrame(index=wide.index)
    for f in fields:
        for v, s in (("treatment", "t"), ("control", "c")):
            out[f"{f}_{s}"] = (wide[(f, v)].astype(float) if (f, v) in wide.columns
                               else 0.0)
    out["sum_y2_t"], out["sum_y2_c"] = out["sum_y_t"], out["sum_y_c"]  # 0/1 outcome
    out["sum_t"], out["sum_c"] = out["sum_y_t"], out["sum_y_c"]
    return out.reset_index()


def look_days(first_look: int, settings: StatSettings) -> list[int]:
    return list(range(first_look, first_look + settings.planned_looks))


@dataclass(frozen=True, eq=False)
class RetentionAnalysis:
    k: int
    absolute: StatResult
    relative: StatResult
    cuped: StatResult
    history: pd.DataFrame


def _pp(x: float) -> str:
    return f"{100 * x:+.2f} pp"


def _history(cells: pd.DataFrame, k: int, day: int, first_look: int,
             settings: StatSettings) -> tuple[pd.DataFrame, dict[int, TwoArmEstimate]]:
    looks = look_days(first_look, settings)
    days = list(range(first_look, day + 1))
    ests: dict[int, TwoArmEstimate] = {}
    info = []
    for d in days:
        est = stratified_difference(strata_frame(cells, d - k))
        ests[d] = est
        enough = est.ok and min(est.n_t, est.n_c) >= settings.min_group_users
        info.append(est.weight if enough else 0.0)
    seq_days = [d for d in days if d in looks]
    design = sequential.monitor(info[:len(seq_days)], settings.planned_looks, settings.alpha,
                                settings.sequential)
    z_naive = float(stats.norm.isf(settings.alpha))
    rows = []
    for i, d in enumerate(days):
        est = ests[d]
        in_design = i < len(design)
        b = float(design["boundary"].iloc[i]) if in_design else math.nan
        naive = z_interval(est.diff, est.se, z_naive)
        seq = z_interval(est.diff, est.se, b) if in_design and info[i] > 0 else None
        rnaive = ratio_interval(est.log_ratio, est.se_log_ratio, z_naive)
        rseq = ratio_interval(est.log_ratio, est.se_log_ratio, b) if seq is not None else None
        rows.append({
            "day": d, "k": k, "look": i + 1 if in_design else None,
            "n_treatment": est.n_t, "n_control": est.n_c, "mean_treatment": est.mean_t,
            "mean_control": est.mean_c, "diff": est.diff, "se": est.se,
            "naive_low": naive.low, "naive_high": naive.high, "information": info[i],
            "fraction": float(design["fraction"].iloc[i]) if in_design else math.nan,
            "alpha_spent": float(design["alpha_spent"].iloc[i]) if in_design else math.nan,
            "boundary": b,
            "seq_low": seq.low if seq else math.nan, "seq_high": seq.high if seq else math.nan,
            "ratio": math.exp(est.log_ratio) if math.isfinite(est.log_ratio) else math.nan,
            "ratio_naive_low": rnaive.low, "ratio_naive_high": rnaive.high,
            "ratio_seq_low": rseq.low if rseq else math.nan,
            "ratio_seq_high": rseq.high if rseq else math.nan,
            "status": (noninferiority_status(seq.low, seq.high, -settings.margin)
                       if seq and info[i] > 0 else "no_data"),
            "relative_status": (noninferiority_status(rseq.low, rseq.high,
                                                      1 - settings.relative_margin)
                                if rseq and info[i] > 0 else "no_data"),
        })
    hist = pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))
    if len(hist) > len(design) and len(design):
        # after the final planned look the verdict stays the final look's
        final = hist.iloc[len(design) - 1]
        hist.loc[hist.index[len(design):], "status"] = final["status"]
        hist.loc[hist.index[len(design):], "relative_status"] = final["relative_status"]
    return hist, ests


def _no_randomised(metric: str, k: int, day: int, first_look: int, why: str,
                   threshold: float, details: dict) -> StatResult:
    return StatResult(metric, None, None, None, None, 0, "stratified non-inferiority",
                      "no_data", why, threshold, details | {"k": k, "first_look_day": first_look})


def analyse_retention(cells: pd.DataFrame, k: int, day: int, first_look: int | None,
                      settings: StatSettings, *, srm_flag: bool = False,
                      srm_sentence: str = "", phase_text: str = "",
                      beta_users: int = 0, look_offset: int = 0) -> RetentionAnalysis:
    """Absolute and relative non-inferiority of Dk retention on ``day``, CUPED, and history.

    ``cells``: rows of one k (stratum, variant, n, sum_y, sum_x, sum_x2, sum_xy).
    ``first_look``: the first percentage day (None: the plan has no randomised phase).
    ``look_offset``: the k's looks start ``look_offset`` days after ``first_look`` (a secondary
    k is shifted by ``k - primary_k`` so its windows can close within its looks)."""
    metric = f"retention_d{k}"
    margin, rel_bound = settings.margin, 1 - settings.relative_margin
    method = (f"D{k} retention, difference stratified by exposure day (MH weights), Wald; "
              f"Lan-DeMets {settings.sequential.replace('_', '-')} spending over "
              f"{settings.planned_looks} daily looks")
    rel_method = method.replace("difference", "ratio (delta method on the log)")
    base = {"k": k, "margin": margin, "relative_margin": settings.relative_margin,
            "alpha": settings.alpha, "sequential": settings.sequential}
    empty_hist = pd.DataFrame(columns=list(HISTORY_COLUMNS))
    if first_look is None or day < first_look:
        why = (f"Day {day}{phase_text}: there is no randomised comparison yet"
               + (f"; the {beta_users} beta user(s) were selected for engagement, not "
                  f"randomised, so their retention says nothing about the effect"
                  if beta_users else "")
               + (f". Randomised looks start on day {first_look}." if first_look is not None
                  else "."))
        res = _no_randomised(metric, k, day, first_look or -1, why, -margin, base)
        rel = _no_randomised(metric + "_relative", k, day, first_look or -1, why, rel_bound, base)
        cup = _no_randomised(metric + "_cuped", k, day, first_look or -1, why, -margin, base)
        return RetentionAnalysis(k, res, rel, cup, empty_hist)

    start_look = first_look + look_offset
    if day < start_look:
        why = (f"D{k} retention on day {day}: its daily looks run from day {start_look} to day "
               f"{start_look + settings.planned_looks - 1}; no {k}-day window of a treated user "
               f"has closed yet.")
        res = StatResult(metric, None, None, None, None, 0, method, "no_data", why, -margin,
                         base | {"first_look_day": start_look})
        rel = StatResult(metric + "_relative", None, None, None, None, 0, rel_method, "no_data",
                         why, rel_bound, base | {"first_look_day": start_look})
        cup = StatResult(metric + "_cuped", None, None, None, None, 0, method, "no_data", why,
                         -margin, base | {"first_look_day": start_look})
        return RetentionAnalysis(k, res, rel, cup, empty_hist)
    first_look = start_look
    hist, ests = _history(cells, k, day, first_look, settings)
    looks = look_days(first_look, settings)
    last_look = looks[-1]
    # after the final planned look the sequential verdict is frozen at that look: the result's
    # estimate and intervals are the final look's; today's estimate goes into the details
    decision_day = min(day, last_look)
    drow = hist.loc[hist["day"] == decision_day].iloc[0]
    row = drow
    est = ests[decision_day]
    today = ests[day]
    details = base | {
        "day": day, "look": None if pd.isna(drow["look"]) else int(drow["look"]),
        "planned_looks": settings.planned_looks, "decision_day": decision_day,
        "n_treatment": est.n_t, "n_control": est.n_c, "strata": est.n_strata,
        "mean_treatment": est.mean_t, "mean_control": est.mean_c, "se": est.se,
        "naive_low": row["naive_low"], "naive_high": row["naive_high"],
        "boundary": drow["boundary"], "alpha_spent": drow["alpha_spent"],
        "information_fraction": drow["fraction"], "untrustworthy": srm_flag,
        "diff_today": today.diff, "n_today": today.n_t + today.n_c,
    }
    if min(est.n_t, est.n_c) < settings.min_group_users or not est.ok:
        why = (f"D{k} retention on day {day}: only {est.n_t} treated and {est.n_c} control "
               f"users have a closed {k}-day window in shared exposure days (at least "
               f"{settings.min_group_users} per arm needed); it cannot be judged yet.")
        res = StatResult(metric, None, None, None, None, est.n_t + est.n_c, method, "no_data",
                         why, -margin, details)
        rel = StatResult(metric + "_relative", None, None, None, None, est.n_t + est.n_c,
                         rel_method, "no_data", why, rel_bound, details)
        cup = StatResult(metric + "_cuped", None, None, None, None, est.n_t + est.n_c,
                         method, "no_data", why, -margin, details)
        return RetentionAnalysis(k, res, rel, cup, hist)

    seq_low, seq_high = float(drow["seq_low"]), float(drow["seq_high"])
    status: Status = noninferiority_status(seq_low, seq_high, -margin)
    p = ni_p_value(est.diff, est.se, -margin)
    frozen = day > last_look
    look_txt = (f"look {int(drow['look'])} of {settings.planned_looks}" if not frozen else
                f"final look on day {last_look}; later days are shown with naive intervals only")
    diff_txt = (f"treatment {est.mean_t:.1%} vs control {est.mean_c:.1%}, difference "
                f"{_pp(est.diff)} (sequential {settings.ci_level:.0%} CI {_pp(seq_low)} to "
                f"{_pp(seq_high)}; naive {_pp(row['naive_low'])} to {_pp(row['naive_high'])})")
    harm = math.isfinite(seq_high) and seq_high < 0
    details["harm_shown"] = bool(harm)
    if status == "pass":
        sentence = (f"D{k} retention is non-inferior: {diff_txt}, above the "
                    f"{_pp(-margin)} margin ({look_txt}).")
        if harm:
            sentence += " Retention is lower, significantly, but by less than the margin."
    elif status == "fail":
        sentence = (f"D{k} retention is worse by more than the margin: {diff_txt}, entirely "
                    f"below {_pp(-margin)} ({look_txt}).")
    else:
        sentence = (f"D{k} retention is not yet shown non-inferior: {diff_txt}; the interval "
                    f"still reaches {_pp(-margin)} ({look_txt}).")
    if frozen:
        sentence += (f" On day {day} the difference is {_pp(today.diff)} (naive interval "
                     f"only).")
    res_status, res_sentence = status, sentence
    if srm_flag:
        res_status = "inconclusive"
        res_sentence = (f"Untrustworthy because of a sample-ratio mismatch ({srm_sentence}); "
                        f"without it the verdict would be '{status}'. " + sentence)
    absolute = StatResult(metric, est.diff, seq_low, seq_high, p, est.n_t + est.n_c, method,
                          res_status, res_sentence, -margin, details | {"status_before_srm": status})

    # relative
    ratio = float(drow["ratio"])
    r_lo, r_hi = float(drow["ratio_seq_low"]), float(drow["ratio_seq_high"])
    r_status: Status = noninferiority_status(r_lo, r_hi, rel_bound)
    r_p = ni_p_value(est.log_ratio, est.se_log_ratio, math.log(rel_bound))
    r_txt = (f"treatment/control {float(row['ratio']):.3f} (sequential "
             f"{settings.ci_level:.0%} CI {r_lo:.3f} to {r_hi:.3f}; naive "
             f"{row['ratio_naive_low']:.3f} to {row['ratio_naive_high']:.3f})")
    r_sentence = {
        "pass": f"D{k} retention is non-inferior relative to control: {r_txt}, above {rel_bound:.2f}.",
        "fail": f"D{k} retention is more than {settings.relative_margin:.0%} below control: {r_txt}.",
        "inconclusive": f"D{k} relative retention not yet shown above {rel_bound:.2f}: {r_txt}.",
    }[r_status]
    r_res_status = r_status
    if srm_flag:
        r_res_status = "inconclusive"
        r_sentence = f"Untrustworthy because of a sample-ratio mismatch; would be '{r_status}'. " + r_sentence
    relative = StatResult(metric + "_relative", ratio, r_lo, r_hi, r_p, est.n_t + est.n_c,
                          rel_method, r_res_status, r_sentence, rel_bound,
                          details | {"ratio_naive_low": row["ratio_naive_low"],
                                     "ratio_naive_high": row["ratio_naive_high"],
                                     "status_before_srm": r_status})
    cup = cuped_result(cells, k, decision_day, float(drow["boundary"]),
                       settings, srm_flag, details)
    return RetentionAnalysis(k, absolute, relative, cup, hist)


def cuped_result(cells: pd.DataFrame, k: int, day: int, boundary: float,
                 settings: StatSettings, srm_flag: bool, base: dict) -> StatResult:
    """CUPED-adjusted Dk difference on ``day``, judged with the same sequential boundary."""
    metric = f"retention_d{k}_cuped"
    method = ("CUPED on pre-period active days (pooled within-cell theta), stratified "
              "difference, sequential boundary of the primary analysis")
    c = cuped_difference(strata_frame(cells, day - k))
    margin = settings.margin
    if not c.ok:
        return StatResult(metric, None, None, None, None, c.unadjusted.n_t + c.unadjusted.n_c,
                          method, "inconclusive",
                          "CUPED cannot adjust: the pre-period covariate has no variance "
                          "(no pre-period activity in the export?).", -margin,
                          base | {"theta": None})
    a = c.adjusted
    naive = z_interval(a.diff, a.se, float(stats.norm.isf(settings.alpha)))
    seq = z_interval(a.diff, a.se, boundary) if math.isfinite(boundary) else z_interval(
        a.diff, a.se, math.inf)
    status: Status = noninferiority_status(seq.low, seq.high, -margin)
    width_gain = 1 - a.se / c.unadjusted.se if c.unadjusted.se > 0 else math.nan
    gain = (f"cuts the variance by {c.variance_reduction:.0%} (interval {width_gain:.0%} "
            f"narrower)" if c.variance_reduction > 0 else
            f"does not help here (variance {-c.variance_reduction:+.0%}: the covariate predicts "
            f"too little for this sample)")
    sentence = (f"CUPED on pre-period activity (theta {c.theta:.3f}, correlation "
                f"{c.corr_xy:.2f}) {gain}: adjusted difference {_pp(a.diff)}, sequential "
                f"CI {_pp(seq.low)} to {_pp(seq.high)} -> {status}.")
    res_status = status
    if srm_flag:
        res_status = "inconclusive"
        sentence = "Untrustworthy because of a sample-ratio mismatch. " + sentence
    return StatResult(metric, a.diff, seq.low, seq.high, ni_p_value(a.diff, a.se, -margin),
                      a.n_t + a.n_c, method, res_status, sentence, -margin,
                      base | {"theta": c.theta, "corr_xy": c.corr_xy,
                              "variance_reduction": c.variance_reduction,
                              "interval_narrowing": width_gain, "se_adjusted": a.se,
                              "se_unadjusted": c.unadjusted.se,
                              "diff_unadjusted": c.unadjusted.diff, "naive_low": naive.low,
                              "naive_high": naive.high, "status_before_srm": status})


def empty_cells() -> pd.DataFrame:
    return pd.DataFrame({"stratum": pd.Series(dtype="int64"),
                         "variant": pd.Series(dtype="object"),
                         **{c: pd.Series(dtype="float64")
                            for c in ("n", "sum_y", "sum_x", "sum_x2", "sum_xy")}})


def daily_accrual(history: pd.DataFrame) -> float:
    """Recent daily increase of the information (effective sample size), for power."""
    info = history["information"].to_numpy(float) if len(history) else np.zeros(0)
    info = info[np.isfinite(info)]
    if info.size == 0:
        return 0.0
    if info.size == 1:
        return float(info[0])
    inc = np.diff(info)
    return float(max(inc[-1], info[-1] / info.size, 0.0))
