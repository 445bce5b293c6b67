"""Dk retention, treatment vs control: staggered adoption, CUPED, a pass and a harm boundary.

Pure functions over the stage cells and cross-stage pairs of
:mod:`whispers_lab.queries.experiment` (the design is in :mod:`.staggered`; the schedule,
information and boundaries in :mod:`.design`). On every analysis day D the strata with a closed
window (``a + k <= D``) give the CUPED-adjusted estimate, its standard error and information.
Two one-sided group-sequential tests watch it from the first day with data to the schedule's
final day:

* **non-inferiority** (the guardrail, the plan's pass): H0 ``diff <= -margin``; passes when
  ``(diff + margin) / se`` reaches the pass boundary (alpha spending ``plan.retention.spending``,
  one-sided ``plan.retention.alpha``). Once passed it stays passed;
* **deterioration** (harm): H0 ``diff >= 0``; harm is shown when ``-diff / se`` reaches the harm
  boundary (``plan.deterioration``: a share of one family-wise alpha, spent early). Harm
  overrides a pass and stays.

If the final look comes without a pass, non-inferiority was not demonstrated with the evidence
the schedule allowed: the result fails with the code ``not_demonstrated`` (never an
"inconclusive" that lasts forever). The margin in force is fixed before the first look from the
plan and the pre-rollout baseline (:func:`margin_in_force`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..lazy import lazy_module
from ..results import StatResult, Status
from . import design as dz
from .settings import StatSettings
from .staggered import StaggeredEstimate, empty_cells, empty_pairs, estimate

stats = lazy_module("scipy.stats")

HISTORY_COLUMNS: tuple[str, ...] = (
    "day", "k", "look", "n_treatment", "n_control", "mean_treatment", "mean_control", "diff",
    "se", "diff_unadjusted", "se_unadjusted", "naive_low", "naive_high", "information",
    "weight", "weight_max", "fraction", "boundary", "harm_boundary", "seq_low", "seq_high",
    "z_pass", "z_harm", "status", "code",
)

#: Reason codes of a retention result (see docs/decision-schema.md).
CODES = ("pass", "harm_detected", "not_demonstrated", "insufficient_evidence", "no_data",
         "untrustworthy")


@dataclass(frozen=True, eq=False)
class StagedData:
    """Everything the retention analysis reads, already aggregated."""

    cells: pd.DataFrame
    pairs: pd.DataFrame
    schedule: dz.Schedule
    profile: np.ndarray          # arrival profile A(L) per randomised user
    shares: dz.ArmShares
    n_users: int                 # randomised users
    baseline: dict[int, float] = field(default_factory=dict)   # pre-rollout Dk rate per k

    @classmethod
    def empty(cls, schedule: dz.Schedule) -> StagedData:
        return cls(empty_cells(), empty_pairs(), schedule, np.zeros(1), dz.ArmShares(
            np.zeros(0), np.zeros(0)), 0, {})


@dataclass(frozen=True, eq=False)
class RetentionAnalysis:
    k: int
    result: StatResult           # the decision: CUPED-adjusted (or as the plan says)
    unadjusted: StatResult       # the same design without CUPED, for reference
    relative: StatResult         # the difference relative to the control mean
    history: pd.DataFrame        # one row per look


def _pp(x: float) -> str:
    return f"{100 * x:+.2f} pp"


def margin_in_force(settings: StatSettings, baseline: float | None) -> tuple[float, str]:
    """The absolute non-inferiority margin the plan's ``margin_rule`` sets, and a sentence.

    ``absolute``: ``margin``; ``relative``: ``relative_margin x baseline``; ``smaller`` and
    ``both`` (both must hold, i.e. the smaller binds): the smaller of the two. The baseline is
    the pre-rollout Dk return rate, so the margin is fixed before the first look. Without a
    baseline the absolute margin is used and the sentence says so."""
    m_abs = settings.margin
    rule = settings.margin_rule
    if rule == "absolute":
        return m_abs, f"absolute margin {_pp(-m_abs)[1:]}"
    if baseline is None or not baseline > 0:
        return m_abs, (f"absolute margin {_pp(-m_abs)[1:]} (no pre-rollout baseline to apply the "
                       f"{settings.relative_margin:.0%} relative margin to)")
    m_rel = settings.relative_margin * baseline
    rel_txt = (f"{settings.relative_margin:.0%} of the pre-rollout baseline {baseline:.1%} = "
               f"{100 * m_rel:.2f} pp")
    if rule == "relative":
        return m_rel, f"relative margin: {rel_txt}"
    if m_rel < m_abs:
        return m_rel, f"margin {100 * m_rel:.2f} pp: the smaller of {100 * m_abs:.1f} pp and {rel_txt}"
    return m_abs, f"margin {100 * m_abs:.1f} pp: the smaller of it and {rel_txt}"


def baseline_rate(lags: pd.DataFrame, k: int) -> float | None:
    """Pre-rollout Dk return rate of users entering a pseudo-stage (from
    :func:`queries.experiment.preperiod_lags`): returned / entered over closed windows."""
    col = f"returned_{k}"
    if lags is None or lags.empty or col not in lags:
        return None
    closed = lags[col].notna()
    users = float(lags.loc[closed, "users"].sum())
    return float(lags.loc[closed, col].sum()) / users if users > 0 else None


@dataclass(frozen=True)
class _Look:
    day: int
    est: StaggeredEstimate
    weight_max: float
    final: bool


def _looks(data: StagedData, k: int, day: int, settings: StatSettings) -> list[_Look]:
    """Every day from the first closed window to ``day`` with the estimate and projection."""
    sched = data.schedule
    if not sched.stages:
        return []
    out = []
    for d in range(min(sched.stages) + k, day + 1):
        est = estimate(data.cells, data.pairs, k, d, adjust=settings.cuped)
        w_max = dz.projected_max_weight(est.strata, d, k, sched, data.profile, data.shares,
                                        data.n_users)
        out.append(_Look(d, est, w_max, d >= sched.final_day))
    return out


def retention_history(data: StagedData, k: int, day: int, margin: float,
                      settings: StatSettings) -> pd.DataFrame:
    """One row per day from the first closed window to ``day``: estimate, information,
    fraction, both boundaries, the sequential bounds and the status on that day.

    A day is a look when both arms have at least ``min_group_users`` units, the information
    grew, and it is not after the final look; other days show the estimate only."""
    looks = _looks(data, k, day, settings)
    z_naive = float(stats.norm.isf(settings.alpha))
    rows = []
    look_idx: list[int] = []
    prev_info = 0.0
    final_seen = False
    for i, lk in enumerate(looks):
        e = lk.est
        usable = e.ok and min(e.n_t, e.n_c) >= settings.min_group_users
        is_look = usable and not final_seen and e.information > prev_info * (1 + 1e-9)
        if usable and lk.final and not final_seen:
            is_look, final_seen = True, True
        if is_look:
            look_idx.append(i)
            prev_info = max(prev_info, e.information)
        rows.append({
            "day": lk.day, "k": k, "look": len(look_idx) if is_look else None,
            "n_treatment": e.n_t, "n_control": e.n_c, "mean_treatment": e.mean_t,
            "mean_control": e.mean_c, "diff": e.diff, "se": e.se,
            "diff_unadjusted": e.diff_unadjusted, "se_unadjusted": e.se_unadjusted,
            "naive_low": e.diff - z_naive * e.se if usable else math.nan,
            "naive_high": e.diff + z_naive * e.se if usable else math.nan,
            "information": e.information if usable else 0.0, "weight": e.weight,
            "weight_max": lk.weight_max, "fraction": math.nan, "boundary": math.nan,
            "harm_boundary": math.nan, "seq_low": math.nan, "seq_high": math.nan,
            "z_pass": (e.diff + margin) / e.se if usable else math.nan,
            "z_harm": -e.diff / e.se if usable else math.nan,
            "status": "no_data", "code": "no_data",
        })
    hist = pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))
    if not look_idx:
        return hist
    lk_rows = hist.iloc[look_idx]
    frac = dz.information_fractions(lk_rows["weight"], lk_rows["weight_max"],
                                    [looks[i].final for i in look_idx])
    info = lk_rows["information"].to_numpy(float)
    ni = dz.monitor_one_sided(lk_rows["z_pass"], info, frac, settings.alpha,
                              settings.sequential, settings.sequential_param)
    harm = dz.monitor_one_sided(lk_rows["z_harm"], info, frac, settings.harm_alpha,
                                settings.harm_sequential, settings.harm_sequential_param)
    n = len(hist)
    fraction = np.full(n, np.nan)
    b_ni = np.full(n, np.nan)
    b_harm = np.full(n, np.nan)
    fraction[look_idx], b_ni[look_idx], b_harm[look_idx] = frac, ni.boundary, harm.boundary
    # carry the latest boundaries to days that are not looks, for the intervals shown
    b_ni = pd.Series(b_ni).ffill().to_numpy()
    b_harm = pd.Series(b_harm).ffill().to_numpy()
    se = hist["se"].to_numpy(float)
    diff = hist["diff"].to_numpy(float)
    with np.errstate(invalid="ignore"):
        seq_low = np.where(np.isfinite(b_ni), diff - b_ni * se, -np.inf)
        seq_high = np.where(np.isfinite(b_harm), diff + b_harm * se, np.inf)
    final_i = next((i for i in look_idx if looks[i].final), None)
    position = {i: j for j, i in enumerate(look_idx)}
    status = np.array(hist["status"], dtype=object)
    code = np.array(hist["code"], dtype=object)
    passed = harmed = started = False
    for i in range(n):
        if i in position:
            j = position[i]
            passed = passed or bool(ni.crossed[j])
            harmed = harmed or bool(harm.crossed[j])
            started = True
        if started:
            status[i], code[i] = _verdict(passed, harmed, final_i is not None and i >= final_i)
    return hist.assign(fraction=fraction, boundary=b_ni, harm_boundary=b_harm, seq_low=seq_low,
                       seq_high=seq_high, status=status, code=code)


def _verdict(passed: bool, harmed: bool, final_done: bool) -> tuple[Status, str]:
    if harmed:
        return "fail", "harm_detected"
    if passed:
        return "pass", "pass"
    if final_done:
        return "fail", "not_demonstrated"
    return "inconclusive", "insufficient_evidence"


def _no_data(metric: str, why: str, threshold: float, details: dict, method: str) -> StatResult:
    return StatResult(metric, None, None, None, None, 0, method, "no_data", why, threshold,
                      details | {"code": "no_data"})


def analyse_retention(data: StagedData, k: int, day: int, settings: StatSettings, *,
                      primary: bool = True, srm_flag: bool = False, srm_sentence: str = "",
                      phase_text: str = "", beta_users: int = 0) -> RetentionAnalysis:
    """Dk retention on ``day`` (see module doc). ``primary``: the plan's decision metric (a
    secondary k is reported with its naive interval only: its windows close after the
    rollout)."""
    metric = f"retention_d{k}"
    baseline = data.baseline.get(k)
    margin, margin_txt = margin_in_force(settings, baseline)
    adj = "CUPED-adjusted " if settings.cuped else ""
    method = (f"D{k} retention, staggered adoption (intention to treat per stage day, strata "
              f"stage x first visit, MH weights, user-clustered variance), {adj}estimate; "
              f"{settings.sequential} spending for the pass boundary, "
              f"{settings.harm_sequential} spending for the harm boundary")
    base = {"k": k, "margin": margin, "margin_rule": settings.margin_rule,
            "margin_text": margin_txt, "baseline": baseline, "alpha": settings.alpha,
            "harm_alpha": settings.harm_alpha, "spending": settings.sequential,
            "harm_spending": settings.harm_sequential, "final_day": data.schedule.final_day,
            "stages": list(data.schedule.stages)}
    sched = data.schedule
    empty_hist = pd.DataFrame(columns=list(HISTORY_COLUMNS))
    first = (min(sched.stages) + k) if sched.stages else None
    if first is None or day < first:
        why = (f"Day {day}{phase_text}: no randomised D{k} window has closed yet"
               + (f"; the {beta_users} beta user(s) were selected for engagement, not randomised"
                  if beta_users else "")
               + (f". The first one closes on day {first}." if first is not None else
                  "; the plan has no percentage stage."))
        res = _no_data(metric, why, -margin, base | {"first_look_day": first}, method)
        return RetentionAnalysis(k, res, _no_data(metric + "_unadjusted", why, -margin, base,
                                                  method),
                                 _no_data(metric + "_relative", why, 1 - margin, base, method),
                                 empty_hist)
    hist = retention_history(data, k, day, margin, settings)
    row = hist.iloc[-1]
    est = estimate(data.cells, data.pairs, k, day, adjust=settings.cuped)
    z_naive = float(stats.norm.isf(settings.alpha))
    details = base | {
        "day": day, "look": None if pd.isna(row["look"]) else int(row["look"]),
        "looks_so_far": int(hist["look"].notna().sum()),
        "n_treatment": est.n_t, "n_control": est.n_c, "strata": est.n_strata,
        "mean_treatment": est.mean_t, "mean_control": est.mean_c, "se": est.se,
        "diff_unadjusted": est.diff_unadjusted, "se_unadjusted": est.se_unadjusted,
        "theta": est.theta, "corr_xy": est.corr_xy,
        "variance_reduction": est.variance_reduction, "weight": est.weight,
        "weight_max": row["weight_max"], "information_fraction": row["fraction"],
        "boundary": row["boundary"], "harm_boundary": row["harm_boundary"],
        "naive_low": row["naive_low"], "naive_high": row["naive_high"],
        "untrustworthy": srm_flag,
    }
    if not (est.ok and min(est.n_t, est.n_c) >= settings.min_group_users):
        why = (f"D{k} retention on day {day}: only {est.n_t} treated and {est.n_c} control "
               f"user-stage units have a closed {k}-day window in shared strata (at least "
               f"{settings.min_group_users} per arm needed); it cannot be judged yet.")
        res = StatResult(metric, None, None, None, None, est.n_t + est.n_c, method, "no_data",
                         why, -margin, details | {"code": "no_data"})
        return RetentionAnalysis(k, res, res, res, hist)
    status: Status = row["status"] if primary else "inconclusive"
    code = row["code"] if primary else "insufficient_evidence"
    lo, hi = float(row["seq_low"]), float(row["seq_high"])
    diff_txt = (f"treatment {est.mean_t:.1%} vs control {est.mean_c:.1%}, {adj.lower()}"
                f"difference {_pp(est.diff)} (sequential bounds {_pp(lo)} / {_pp(hi)}; naive "
                f"{settings.ci_level:.0%} CI {_pp(row['naive_low'])} to {_pp(row['naive_high'])})")
    look_txt = (f"look {int(row['look'])}" if not pd.isna(row["look"]) else "no new look today")
    look_txt += f", information fraction {float(row['fraction']) if not pd.isna(row['fraction']) else 0:.0%}"
    sentence = {
        "pass": f"D{k} retention is non-inferior: {diff_txt}; the lower bound is above the "
                f"{_pp(-margin)} margin ({margin_txt}; {look_txt}).",
        "harm_detected": f"D{k} retention is worse with treatment: {diff_txt}; the harm "
                         f"boundary was crossed, so the drop is shown ({look_txt}).",
        "not_demonstrated": f"D{k} retention was not shown non-inferior by the final look on day "
                            f"{sched.final_day}: {diff_txt}; the lower bound still reaches the "
                            f"{_pp(-margin)} margin.",
        "insufficient_evidence": f"D{k} retention is not yet shown non-inferior: {diff_txt}; the "
                                 f"lower bound still reaches {_pp(-margin)} ({look_txt}).",
    }.get(code, f"D{k} retention: {diff_txt}.")
    if code == "pass" and row["naive_high"] < 0:
        sentence += " The point estimate is below zero but no drop is shown yet; harm is still watched."
    if not primary:
        sentence = (f"D{k} retention (secondary, naive interval): difference {_pp(est.diff)}, "
                    f"{settings.ci_level:.0%} CI {_pp(row['naive_low'])} to "
                    f"{_pp(row['naive_high'])}.")
        lo, hi = float(row["naive_low"]), float(row["naive_high"])
    res_status, res_code = status, code
    if srm_flag and code != "harm_detected":
        res_status, res_code = "inconclusive", "untrustworthy"
        sentence = (f"Untrustworthy because of a sample-ratio mismatch ({srm_sentence}); "
                    f"without it the verdict would be '{status}'. " + sentence)
    from .noninferiority import ni_p_value
    p = ni_p_value(est.diff, est.se, -margin)
    result = StatResult(metric, est.diff, lo, hi, p, est.n_t + est.n_c, method, res_status,
                        sentence, -margin, details | {"code": res_code,
                                                      "status_before_srm": status})
    # unadjusted (reference) and relative (display)
    un_lo = est.diff_unadjusted - z_naive * est.se_unadjusted
    un_hi = est.diff_unadjusted + z_naive * est.se_unadjusted
    unadjusted = StatResult(
        metric + "_unadjusted", est.diff_unadjusted, un_lo, un_hi,
        ni_p_value(est.diff_unadjusted, est.se_unadjusted, -margin), est.n_t + est.n_c,
        method.replace(adj, "unadjusted "), "inconclusive",
        f"Without CUPED the difference is {_pp(est.diff_unadjusted)} (naive "
        f"{settings.ci_level:.0%} CI {_pp(un_lo)} to {_pp(un_hi)}); CUPED on the "
        f"{settings.covariate_days} days before each stage "
        + (f"cuts the variance by {est.variance_reduction:.0%}." if est.variance_reduction > 0
           else "does not help here."),
        -margin, {"code": "reference", "se": est.se_unadjusted})
    rel = est.relative
    mc = est.mean_c
    r_lo = 1 + lo / mc if mc > 0 and math.isfinite(lo) else math.nan
    r_hi = 1 + hi / mc if mc > 0 and math.isfinite(hi) else math.nan
    relative = StatResult(
        metric + "_relative", 1 + rel if math.isfinite(rel) else None,
        r_lo if math.isfinite(r_lo) else None, r_hi if math.isfinite(r_hi) else None, None,
        est.n_t + est.n_c, "the difference and its sequential bounds over the control mean",
        res_status, f"Relative to control: {1 + rel:.3f} (sequential bounds {r_lo:.3f} / "
        f"{r_hi:.3f}); the decision uses the absolute {margin_txt}.",
        1 - margin / mc if mc > 0 else None, {"code": res_code})
    return RetentionAnalysis(k, result, unadjusted, relative, hist)


def daily_accrual(history: pd.DataFrame) -> float:
    """Recent daily increase of the information (1 / variance), for power."""
    info = history["information"].to_numpy(float) if len(history) else np.zeros(0)
    info = info[np.isfinite(info) & (info > 0)]
    if info.size == 0:
        return 0.0
    if info.size == 1:
        return float(info[0])
    inc = np.diff(info)
    return float(max(inc[-1], info[-1] / info.size, 0.0))
