"""Orchestration: every treatment-vs-control statistic of one rollout day.

:func:`experiment_results` is what the go/no-go rules and the notebooks call. Day N means data
through the end of rollout day N (``plan.day_start(N + 1)`` exclusive); nothing later is read.
SQL lives in :mod:`whispers_lab.queries.experiment`; everything here is arithmetic on the small
frames it returns. No statistic raises on thin data: it returns ``no_data`` / ``inconclusive``
with a sentence and a reason code, and a missing number is never a pass.

The schedule (which buckets are enabled on which day, and the final look) comes from the plan's
calendar unless the caller passes the rollout's actual state (:class:`.design.Schedule`, or the
whole :class:`whispers_lab.state.RolloutState`: then each user's enabling day, the phase of the
day and the sample-ratio expectation follow the state too, see :func:`experiment_results`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .. import cohort
from ..export import Export
from ..lazy import lazy_module
from ..plan import Plan
from ..queries import experiment as q
from ..queries import state as qs
from ..queries.monitoring import latest_row
from ..queries.slots import day_slots
from ..results import StatResult
from . import design as dz
from . import power as pw
from .canary import canary_metric
from .rates import proportion_vs_threshold, ratio_vs_threshold
from .retention import (
    RetentionAnalysis,
    StagedData,
    analyse_retention,
    baseline_rate,
    daily_accrual,
)
from .sentiment import sentiment_power_row, sentiment_result
from .settings import StatSettings
from .srm import srm_test
from .sufficient import RatioStat, ratio_from_row
from .survival import survival_comparison
from .tickets import schedule_user_days, ticket_result

stats = lazy_module("scipy.stats")

if TYPE_CHECKING:
    from ..state import RolloutState

#: Shared metrics of the canary comparison: (metric id, column, harmful direction, label).
CANARY_METRICS: tuple[tuple[str, str, str, str], ...] = (
    ("canary_duration_ms", "duration_ms", "increase", "Duration of other endpoints per user"),
    ("canary_error_rate", "error_rate", "increase", "Error rate of other endpoints per user"),
    ("canary_app_opens", "opens", "decrease", "App opens per active user-day"),
)


@dataclass(frozen=True, eq=False)
class ExperimentResults:
    """All statistics of one day. Every field holding a verdict is a :class:`StatResult`."""

    day: int
    phase_id: str
    settings: StatSettings
    srm: StatResult
    retention: StatResult
    retention_unadjusted: StatResult
    retention_relative: StatResult
    retention_by_k: dict[int, StatResult]
    retention_history: pd.DataFrame
    survival: StatResult
    survival_curves: pd.DataFrame
    ctr: StatResult
    ctr_requests: StatResult
    feedback_score: StatResult
    relevance: StatResult
    support_tickets: StatResult
    ticket_history: pd.DataFrame
    canary: list[StatResult]
    power: pd.DataFrame
    design: dict[str, Any] = field(default_factory=dict)
    population: dict[str, Any] = field(default_factory=dict)
    #: issue 15: net sentiment ("Positive user sentiment"); None: the plan has no [sentiment]
    sentiment: StatResult | None = None

    def all_results(self) -> list[StatResult]:
        out = [self.srm, self.retention, self.retention_unadjusted, self.retention_relative]
        out += [r for k, r in sorted(self.retention_by_k.items()) if r is not self.retention]
        out += [self.survival, self.ctr, self.ctr_requests, self.feedback_score,
                self.relevance, self.support_tickets, *self.canary]
        if self.sentiment is not None:  # issue 15
            out.append(self.sentiment)
        return out

    def summary(self) -> pd.DataFrame:
        """One row per result: metric, status, code, estimate, ci_low, ci_high, p_value, n,
        threshold, sentence."""
        return pd.DataFrame([{"metric": r.metric, "status": r.status,
                              "code": r.details.get("code"), "estimate": r.estimate,
                              "ci_low": r.ci_low, "ci_high": r.ci_high, "p_value": r.p_value,
                              "n": r.n, "threshold": r.threshold, "sentence": r.sentence}
                             for r in self.all_results()])

    def to_dict(self) -> dict[str, Any]:
        return {"day": self.day, "phase": self.phase_id,
                "results": [r.to_dict() for r in self.all_results()],
                "power": self.power.replace({np.inf: None}).to_dict(orient="records"),
                "design": self.design, "population": self.population}


def plan_schedule(plan: Plan) -> dz.Schedule:
    """The plan's calendar as a schedule: stage days of the percentage phases, final look on
    the plan's last day (the schedule if every day is GO)."""
    return dz.Schedule(tuple(d for d, _ in plan.percentage_stages()), plan.last_day)


def _ratio(frame: pd.DataFrame, metric: str) -> RatioStat:
    row = frame.loc[frame["metric"] == metric]
    if row.empty or pd.isna(row.iloc[0]["sum_den"]):
        return RatioStat(0, 0.0, 0.0, 0.0, 0.0, 0.0)
    return ratio_from_row(row.iloc[0].fillna(0))


def _phase_text(plan: Plan, day: int) -> str:
    return f" ({plan.phase_for_day(day).name})"


def base_day(plan: Plan, settings: StatSettings, schedule: dz.Schedule) -> int:
    """First day of the activity masks: the pre-period start, or earlier when a covariate
    window needs it."""
    first_stage = min(schedule.stages) if schedule.stages else 0
    return min(-settings.preperiod_days, first_stage - settings.covariate_days)


def staged_data(export: Export, plan: Plan, settings: StatSettings, schedule: dz.Schedule,
                obs_day: int, hi: Any, intervals: pd.DataFrame | None = None) -> StagedData:
    """Materialise the randomised users and stage units and aggregate them (SQL).
    ``intervals``: the state's, so that the app opens are grouped per state slot in the same
    reading (served-vs-planned's, :func:`whispers_lab.queries.experiment.materialize_randomised`)."""
    b = base_day(plan, settings, schedule)
    slots = (None if intervals is None else
             day_slots(intervals, plan.start_date, plan.day_start(b), hi))
    n_users = q.materialize_randomised(export, plan.start_date, hi, b, slots)
    ks = sorted(set(settings.k_days) | {settings.primary_k})
    q.materialize_stage_units(export, schedule.stages, b, settings.covariate_days, ks, obs_day)
    cells = q.stage_cells(export, ks, obs_day)
    pairs = q.stage_pairs(export, ks, obs_day)
    lags = q.preperiod_lags(export, b, ks)
    max_lag = max(schedule.final_day - (min(schedule.stages) if schedule.stages else 0), 1) + 1
    profile = dz.arrival_profile(lags, n_users, max_lag)
    shares = dz.ArmShares.from_counts(q.enabled_day_counts(export))
    baseline = {k: baseline_rate(lags, k) for k in ks}
    return StagedData(cells, pairs, schedule, profile, shares, n_users,
                      {k: v for k, v in baseline.items() if v is not None})


def experiment_results(export: Export, day: int, plan: Plan,
                       settings: StatSettings | None = None,
                       schedule: dz.Schedule | None = None,
                       state: RolloutState | None = None) -> ExperimentResults:
    """Every treatment-vs-control statistic for rollout ``day`` (see module doc).

    ``state``: the rollout's actual state (:mod:`whispers_lab.state`). The plan is then read
    as the state dated it (:meth:`~whispers_lab.state.RolloutState.dated_plan`: each user's
    enabling day is the day the stage admitting their bucket was actually enabled, the phase
    of the day is the stage in force), the schedule is the state's (actual stage days, the rest
    projected as every later day GO) and the sample-ratio expectation of a first exposure is
    the assignment in force at its time (users whose variant a change of unknown time moved
    are left out). With the plan's calendar as the state the results are those without it."""
    if state is not None:
        plan = state.dated_plan()
        schedule = schedule or state.schedule()
    s = settings or StatSettings.from_plan(plan)
    sched = schedule or plan_schedule(plan)
    phase = plan.phase_for_day(day)
    start = plan.start_date
    t0, hi = plan.day_start(0), plan.day_start(day + 1)
    first_look = min(sched.stages) if sched.stages else None

    # -- cohort: reasons and enabling days of every user ---------------------------------------
    users = q.users_for_assignment(export)
    assigned = cohort.assign(users, day, plan)
    q.register_cohort(export, assigned)
    intervals = None
    if state is not None:
        qs.register_assignment(export, assigned["user_id"], _categories(assigned["reason"]),
                               assigned["bucket"])
        intervals = state.intervals(day)
        qs.register_intervals(export, intervals)
    beta_sel = assigned.attrs.get("beta")
    beta_users = beta_sel.count if beta_sel is not None else 0
    quality = q.exposure_quality(export, start, t0, hi)
    # windows can only close on days the export covers: judge them as of its last day
    data_end = latest_row(export, "telemetry")
    obs_day = day if data_end is None else min(day, plan.day_of(pd.Timestamp(data_end)))
    obs_note = (f" The export's events end on day {obs_day}, so retention windows are judged "
                f"as of day {obs_day}." if obs_day < day else "")
    data = staged_data(export, plan, s, sched, obs_day, hi, intervals)
    population: dict[str, Any] = {"day": day, "phase": phase.id, "beta_users": beta_users,
                                  "observed_through_day": obs_day,
                                  "randomised_known": data.n_users, **quality}

    # -- SRM ---------------------------------------------------------------------------------
    if state is None:
        counts = q.srm_counts(export, start, t0, hi)
        counts = counts[(counts["day"] >= 0) & (counts["day"] <= day)].copy()
        counts["share_t"] = [cohort.expected_split(int(d), plan).treatment_share
                             for d in counts["day"]]
    else:  # the assignment in force at each first exposure (the state's intervals)
        counts = qs.srm_counts_by_state(export, start, t0, hi, q.COHORT_RELATION)
        counts = counts[(counts["day"] >= 0) & (counts["day"] <= day)].copy()
        share = qs.interval_share(intervals, plan.assignment.buckets,
                                  plan.assignment.holdout_buckets)
        counts["share_t"] = counts["interval_id"].map(dict(zip(intervals["interval_id"], share,
                                                               strict=True)))
        counts = counts[["day", "n_t", "n_c", "share_t"]].reset_index(drop=True)
    srm = srm_coded(srm_test(counts, s, day))
    srm_flag = srm.status == "fail"

    # -- retention (every k) -------------------------------------------------------------------
    by_k: dict[int, RetentionAnalysis] = {}
    for k in sorted(set(s.k_days) | {s.primary_k}):
        by_k[k] = analyse_retention(data, k, obs_day, s, primary=k == s.primary_k,
                                    srm_flag=srm_flag, srm_sentence=srm.sentence,
                                    phase_text=_phase_text(plan, day), beta_users=beta_users)
    if obs_note:
        for a in by_k.values():
            for name in ("result", "unadjusted", "relative"):
                object.__setattr__(a, name, _with_note(getattr(a, name), obs_note,
                                                       {"observed_through_day": obs_day}))
    primary = by_k[s.primary_k]
    for cohort_stage in data.cells["s"].unique() if len(data.cells) else []:
        population.setdefault("stage_units", {})[int(cohort_stage)] = int(
            data.cells.loc[(data.cells["s"] == cohort_stage)
                           & (data.cells["k"] == s.primary_k), "n"].sum())

    # -- survival (exploratory) ------------------------------------------------------------------
    surv = survival_comparison(q.stage_survival_cells(export, obs_day), s, obs_day)

    # -- CTR, feedback, relevance over their windows ------------------------------------------
    ctr_from = plan.window_start("ctr", day)
    ratios = q.ratio_units(export, plan.day_start(ctr_from), hi)
    ctr_thr = plan.threshold("ctr", day)
    win_txt = (f" (days {ctr_from}-{day})" if ctr_from != day else f" (day {day})")
    ctr = ratio_vs_threshold("ctr", _ratio(ratios, "ctr"), ctr_thr, "min", s,
                             f"Whispers click-through rate{win_txt}",
                             tolerance=plan.tolerance["ctr"])
    ctr_req = ratio_vs_threshold("ctr_requests", _ratio(ratios, "ctr_requests"), ctr_thr, "min",
                                 s, f"Share of whispers requests with a click{win_txt}",
                                 tolerance=plan.tolerance["ctr"])
    fb_from = plan.window_start("feedback_score", day)
    rel_from = plan.window_start("relevance", day)
    fb = q.feedback_units(export, plan.day_start(fb_from), hi)
    fb_rel = fb if rel_from == fb_from else q.feedback_units(export, plan.day_start(rel_from), hi)
    has_feedback = export.has("feedback")
    feedback = ratio_vs_threshold("feedback_score", _ratio(fb, "feedback_score"),
                                  plan.threshold("feedback_score", day), "min", s,
                                  f"Mean feedback rating (days {fb_from}-{day})", fmt="{:.2f}",
                                  tolerance=plan.tolerance["feedback_score"])
    relevance = proportion_vs_threshold("relevance", _ratio(fb_rel, "relevance"),
                                        plan.threshold("relevance", day), s,
                                        f"Share of feedback rating whispers relevant (days "
                                        f"{rel_from}-{day})",
                                        tolerance=plan.tolerance["relevance"])
    if not has_feedback:
        feedback = _missing_table(feedback, "feedback")
        relevance = _missing_table(relevance, "feedback")
    sentiment = sentiment_result(export, plan, s, day)  # issue 15: the plan's [sentiment]
    if phase.audience == "beta":
        note = (f" Beta phase: these are the {beta_users} selected beta user(s), chosen for "
                f"engagement; they do not represent all users.")
        ctr, ctr_req, feedback, relevance = (_with_note(r, note, {"beta_only": True}) for r in
                                             (ctr, ctr_req, feedback, relevance))
        if sentiment is not None:
            sentiment = _with_note(sentiment, note, {"beta_only": True})

    # -- support tickets ------------------------------------------------------------------------
    tickets, ticket_hist = _tickets(export, plan, s, day, sched, first_look)

    # -- canary ----------------------------------------------------------------------------------
    canary = _canary(export, s, day, plan.day_start(day), hi, first_look)

    # -- design and power -----------------------------------------------------------------------
    design = design_summary(plan, s, sched, data, primary, day)
    power = _power(s, day, phase.audience, beta_users, primary, data, sched, ctr, feedback,
                   relevance, tickets, canary, plan)
    if sentiment is not None:  # issue 15: its power row beside feedback's
        power = pd.concat([power, pw.power_table([sentiment_power_row(sentiment, s)])],
                          ignore_index=True)

    return ExperimentResults(
        day=day, phase_id=phase.id, settings=s, srm=srm, retention=primary.result,
        retention_unadjusted=primary.unadjusted, retention_relative=primary.relative,
        retention_by_k={k: a.result for k, a in by_k.items()},
        retention_history=primary.history, survival=surv.test,
        survival_curves=surv.curves, ctr=ctr, ctr_requests=ctr_req, feedback_score=feedback,
        relevance=relevance, support_tickets=tickets, ticket_history=ticket_hist, canary=canary,
        power=power, design=design, population=population, sentiment=sentiment,
    )


def _categories(reason: pd.Series) -> pd.Series:
    """Assignment category of each cohort reason (internal, beta, holdout, else by bucket)."""
    text = q.label_strings(reason)  # (missing: not one of the three, so bucketed)
    return text.where(text.isin(("internal", "beta", "holdout")), "bucketed")


def srm_coded(r: StatResult) -> StatResult:
    """The SRM result with its reason code: a failed split means the assignment is broken."""
    code = {"pass": "pass", "fail": "assignment_broken", "inconclusive":
            "insufficient_evidence"}.get(r.status, "no_data")
    return _with_note(r, "", {"code": code})


def _with_note(r: StatResult, note: str, extra: dict[str, Any]) -> StatResult:
    return StatResult(r.metric, r.estimate, r.ci_low, r.ci_high, r.p_value, r.n, r.method,
                      r.status, r.sentence + note, r.threshold, r.details | extra)


def _missing_table(r: StatResult, table: str) -> StatResult:
    return StatResult(r.metric, None, None, None, None, 0, r.method, "no_data",
                      f"The export has no {table} table.", r.threshold,
                      r.details | {"code": "no_data"})


def _tickets(export: Export, plan: Plan, s: StatSettings, day: int, sched: dz.Schedule,
             first_look: int | None) -> tuple[StatResult, pd.DataFrame]:
    thr = plan.threshold("support_ticket_rate_ratio", day)
    if first_look is None or day < first_look:
        return StatResult("support_tickets", None, None, None, None, 0,
                          "Poisson rate ratio per user-day", "no_data",
                          f"Day {day}: no randomised treatment arm yet (beta users were "
                          f"selected, not randomised), so ticket rates cannot be compared.",
                          thr, {"first_look_day": first_look, "code": "no_data"}), pd.DataFrame()
    days = q.ticket_days(export, plan.start_date, first_look, day)
    pre = q.preperiod_ticket_rate(export, plan.start_date, -s.preperiod_days)
    rate = pre["tickets"] / pre["user_days"] if pre["user_days"] > 0 else 0.0
    future = schedule_user_days(q.enabled_day_counts(export), first_look, sched.final_day)
    return ticket_result(days, first_look, day, sched.final_day, future, rate, thr, s,
                         has_table=export.has("support_tickets"))


def _canary(export: Export, s: StatSettings, day: int, lo: Any, hi: Any,
            first_look: int | None) -> list[StatResult]:
    if first_look is None or day < first_look:
        return [StatResult(m, None, None, None, None, 0, "Mann-Whitney U / Hodges-Lehmann",
                           "no_data", f"{label}: no randomised treated users on day {day} "
                           f"(beta users are selected, not randomised).", None,
                           {"day": day, "code": "no_data"})
                for m, _, _, label in CANARY_METRICS]
    units = q.canary_units(export, lo, hi, day, s.canary_max_units, s.seed)
    arms = units.groupby("variant", observed=True)["arm_active"].max()
    popn = {"active_treated": int(arms.get("treatment", 0)),
            "active_control": int(arms.get("control", 0))}
    out = []
    for metric, col, harm, label in CANARY_METRICS:
        t = units.loc[units["variant"] == "treatment", col].dropna().to_numpy(float)
        c = units.loc[units["variant"] == "control", col].dropna().to_numpy(float)
        out.append(canary_metric(metric, t, c, harm, s, label, day, popn))  # type: ignore[arg-type]
    return out


# ---------------------------------------------------------------------------------------
# design and power


def design_summary(plan: Plan, s: StatSettings, sched: dz.Schedule, data: StagedData,
                   primary: RetentionAnalysis, day: int) -> dict[str, Any]:
    """What the design promises: the power to pass retention by the first day the plan
    requires it, for the plan's expected size and for the traffic observed so far."""
    req = plan.required_from("retention")
    margin = float(primary.result.threshold) * -1 if primary.result.threshold is not None \
        else s.margin
    out: dict[str, Any] = {"required_from": req, "final_day": sched.final_day,
                           "stages": list(sched.stages), "margin": margin,
                           "spending": s.sequential, "spending_param": s.sequential_param,
                           "harm_spending": s.harm_sequential, "harm_alpha": s.harm_alpha,
                           "deterioration_alpha": s.deterioration_alpha}
    if req is None or not sched.stages:
        return out
    d = plan.design
    exp_shares = dz.ArmShares.from_counts(_plan_enabled_counts(plan, sched))
    exp_profile = dz.assumed_profile(d.daily_active_share, sched.final_day + 1)
    var = d.d1_return_rate * (1 - d.d1_return_rate)
    out["expected"] = design_power(sched, s.primary_k, exp_profile, exp_shares,
                                   d.expected_users, var, margin, s, req)
    out["expected"]["users"] = d.expected_users
    observed = observed_design_power(data, primary.history, margin, s, req, fallback_var=var)
    if observed is not None:
        out["observed"] = observed
    return out


def observed_design_power(data: StagedData, history: pd.DataFrame, margin: float,
                          s: StatSettings, by_day: int, *, fallback_var: float | None = None
                          ) -> dict[str, Any] | None:
    """:func:`design_power` for the traffic observed so far: the export's arrival profile, arm
    shares and users, and the outcome variance implied by the latest look of ``history`` (a
    :func:`~whispers_lab.stats.retention.retention_history`), ``se^2 x weight``. None before
    the first look. Calibrated by simulation (``tests/test_stats_simulation.py``)."""
    if data.n_users <= 0 or not len(history) or not history["information"].gt(0).any():
        return None
    last = history.loc[history["information"] > 0].iloc[-1]
    if last["weight"] > 0:
        var = float(last["se"]) ** 2 * float(last["weight"])
    elif fallback_var is not None:
        var = fallback_var
    else:
        return None
    out = design_power(data.schedule, s.primary_k, data.profile, data.shares, data.n_users,
                       var, margin, s, by_day)
    out["users"] = data.n_users
    return out


def _plan_enabled_counts(plan: Plan, sched: dz.Schedule) -> pd.DataFrame:
    """Expected shares of the randomised users per enabling day, from the plan's buckets."""
    a = plan.assignment
    open_buckets = a.buckets - a.holdout_buckets
    thresholds = [cohort.stage_threshold(p, plan) for _, p in plan.percentage_stages()]
    prev = 0
    rows = []
    for s_day, thr in zip(sched.stages, thresholds, strict=False):
        rows.append((float(s_day), max(thr - prev, 0)))
        prev = max(prev, thr)
    rows.append((math.inf, open_buckets - prev + a.holdout_buckets))
    return pd.DataFrame(rows, columns=["f_day", "n"])


def design_power(sched: dz.Schedule, k: int, profile: np.ndarray, shares: dz.ArmShares,
                 n_users: float, outcome_var: float, margin: float, s: StatSettings,
                 by_day: int) -> dict[str, Any]:
    """Chance that a rollout with no effect passes non-inferiority by ``by_day`` (and by the
    final day), from the expected information at every look of the schedule."""
    days = list(range(min(sched.stages) + k, sched.final_day + 1))
    w = []
    for d in days:
        w.append(sum(dz.expected_weight(st, a, k, profile, shares, n_users)
                     for st, a in dz.strata_through(sched, k, d)))
    w_arr = np.asarray(w, dtype=float)
    keep = w_arr > 0
    if not keep.any() or not outcome_var > 0:
        return {"power_by_day": None, "power_final": None, "information": []}
    days_k = [d for d, ok in zip(days, keep, strict=True) if ok]
    info = w_arr[keep] / outcome_var
    frac = w_arr[keep] / w_arr[keep][-1]
    b = dz.sequential.boundaries(info, frac, s.alpha, s.sequential, s.sequential_param)
    cum = dz.crossing_probability(b, info, margin)
    by = [c for d, c in zip(days_k, cum, strict=True) if d <= by_day]
    return {"power_by_day": float(by[-1]) if by else 0.0, "power_final": float(cum[-1]),
            "by_day": by_day, "days": days_k, "boundaries": [float(x) for x in b],
            "cumulative_power": [float(x) for x in cum],
            "se_by_day": [float(math.sqrt(1 / i)) for i in info]}


def _power(s: StatSettings, day: int, audience: str, beta_users: int,
           primary: RetentionAnalysis, data: StagedData, sched: dz.Schedule, ctr: StatResult,
           feedback: StatResult, relevance: StatResult, tickets: StatResult,
           canary: list[StatResult], plan: Plan) -> pd.DataFrame:
    rows: list[pw.PowerRow] = []
    beta_note = (f"Day {day} is in the beta phase: {beta_users} selected user(s), no randomised "
                 f"control; this comparison cannot be judged." if audience == "beta" else "")
    z_g = float(stats.norm.ppf(s.guardrail_power))
    # retention: MDE of the harm test; days until the pass boundary is within reach
    r = primary.result
    hist = primary.history
    se = r.details.get("se") if r.details else None
    margin = -float(r.threshold) if r.threshold is not None else s.margin
    b_h = r.details.get("harm_boundary") if r.details else None
    b_h = float(b_h) if b_h is not None and math.isfinite(float(b_h)) else float(
        stats.norm.isf(s.harm_alpha))
    if se and math.isfinite(se) and se > 0:
        m_harm = (b_h + float(stats.norm.ppf(s.power))) * se
        note = beta_note or (f"a drop of {100 * m_harm:.2f} pp would be shown with "
                             f"{s.power:.0%} power today; the pass needs the lower bound above "
                             f"-{100 * margin:.2f} pp")
        if r.status != "pass":
            note += "; " + _retention_days_needed(data, sched, primary, margin, s, day)
        rows.append(pw.PowerRow(r.metric, "difference", r.n, se, m_harm, margin,
                                float(hist["information"].iloc[-1]) if len(hist) else 0.0,
                                daily_accrual(hist), note))
    else:
        rows.append(pw.PowerRow(r.metric, "difference", r.n, None, math.inf, margin, 0.0, None,
                                beta_note or r.sentence))
    for res, scale in ((ctr, "share"), (feedback, "rating"), (relevance, "share")):
        se_r = res.details.get("se")
        if se_r is None and res.ci_low is not None and res.ci_high is not None:
            se_r = (res.ci_high - res.ci_low) / (2 * float(stats.norm.isf(s.alpha)))
        m = (float(stats.norm.isf(s.alpha)) + z_g) * se_r if se_r else math.inf
        tol = plan.tolerance.get(res.metric, 0.0)
        gap = (abs(res.estimate - (res.threshold - tol)) if res.estimate is not None and
               res.threshold is not None else None)
        note = (f"{res.n} user(s): distances from the {res.threshold} target smaller than "
                f"{m:.3g} cannot be resolved with {s.guardrail_power:.0%} power"
                if math.isfinite(m) else f"{res.n} user(s): cannot be judged")
        if res.status == "inconclusive" and se_r and res.n > 0:
            note += "; " + _threshold_needs(res, se_r, tol, plan, day, s)
        if audience == "beta" and res.metric in ("feedback_score", "relevance"):
            note = f"Beta: only {res.n} user(s) answered; " + note
        rows.append(pw.PowerRow(res.metric, scale, res.n, se_r, m, gap if gap else None,
                                float(res.n), None, note))
    mde_rr = tickets.details.get("mde_rate_ratio")
    ticket_note = (f"detectable increase with {s.power:.0%} power: {mde_rr:.2f}x"
                   if mde_rr and math.isfinite(mde_rr) else tickets.sentence)
    if tickets.status == "inconclusive" and mde_rr and math.isfinite(mde_rr):
        ticket_note += "; " + _ticket_needs(tickets, s)
    rows.append(pw.PowerRow(
        "support_tickets", "rate ratio", tickets.n, None,
        mde_rr if mde_rr is not None else math.inf, s.max_informative_rate_ratio,
        float(tickets.details.get("information") or 0.0), None, beta_note or ticket_note))
    for c in canary:
        d = c.details
        se_c = None
        if c.ci_low and c.ci_high and c.estimate:
            se_c = (math.log(c.ci_high) - math.log(c.ci_low)) / (2 * float(stats.norm.isf(s.alpha)))
        m = math.exp(pw.mde(se_c, s.alpha, s.power)) if se_c else math.inf
        band = s.canary_band[1] if d.get("harm") == "increase" else 1 / s.canary_band[0]
        rows.append(pw.PowerRow(c.metric, "ratio", c.n, se_c, m, band, float(c.n), None,
                                beta_note or f"detectable ratio {m:.3f} vs band {band:.2f}"))
    return pw.power_table(rows)


def _threshold_needs(res: StatResult, se: float, tol: float, plan: Plan, day: int,
                     s: StatSettings) -> str:
    """What an inconclusive threshold metric needs to pass, if its estimate holds: the users
    at which the interval clears the tolerance region (the standard error shrinking as one over
    the square root of the users), and the days at the window's traffic so far."""
    if res.estimate is None or res.threshold is None:
        return "no estimate yet"
    direction = "min" if res.metric in ("ctr", "ctr_requests", "feedback_score", "relevance") \
        else "max"
    gap = (res.estimate - (res.threshold - tol) if direction == "min"
           else (res.threshold + tol) - res.estimate)
    if gap <= 0:
        return "at this estimate more data cannot make it pass"
    z = float(stats.norm.isf(s.alpha))
    need = math.ceil(res.n * (z * se / gap) ** 2)
    if need <= res.n:
        return "enough users now if the estimate holds"
    days = max(day - plan.window_start(res.metric, day) + 1, 1)
    per_day = res.n / days
    more = math.ceil((need - res.n) / per_day) if per_day > 0 else math.inf
    return (f"needs about {need:,} users to pass if the estimate holds (about {more} more "
            f"day(s) at this traffic)")


def _ticket_needs(tickets: StatResult, s: StatSettings) -> str:
    """Days until an increase of ``max_informative_rate_ratio`` becomes detectable, at the
    information (tickets) gathered per day so far."""
    v = float(tickets.details.get("information") or 0.0)
    b = float(tickets.details.get("boundary") or stats.norm.isf(s.harm_alpha))
    days = int(tickets.details.get("days") or 0)
    if v <= 0 or days <= 0:
        return "no tickets yet"
    need = ((b + float(stats.norm.ppf(s.power))) / math.log(s.max_informative_rate_ratio)) ** 2
    more = math.ceil((need - v) / (v / days))
    return f"about {more} more day(s) of tickets at this rate to detect a {s.max_informative_rate_ratio:g}x increase"


def _retention_days_needed(data: StagedData, sched: dz.Schedule, primary: RetentionAnalysis,
                           margin: float, s: StatSettings, day: int) -> str:
    """How long until a rollout with no effect would pass with the guardrail power, at the
    traffic and schedule observed so far (the projected information by day)."""
    hist = primary.history.loc[primary.history["information"] > 0]
    if hist.empty:
        return "no information yet"
    last = hist.iloc[-1]
    var = float(last["se"]) ** 2 * float(last["weight"])
    b = float(last["boundary"]) if math.isfinite(float(last["boundary"])) else float(
        stats.norm.isf(s.alpha))
    need_info = dz.information_for_power(b, margin, s.guardrail_power)
    k = int(last["k"])
    est = primary.history
    obs = est.iloc[-1]
    w_now = float(obs["weight"])
    for d in range(day + 1, sched.final_day + 1):
        w_d = w_now + sum(dz.expected_weight(st, a, k, data.profile, data.shares, data.n_users)
                          for st, a in dz.strata_through(sched, k, d) if a > day - k)
        if w_d / var >= need_info:
            return f"about {d - day} more day(s) at this traffic (by day {d})"
    w_final = float(obs["weight_max"]) if math.isfinite(float(obs["weight_max"])) else w_now
    factor = need_info * var / w_final if w_final > 0 else math.inf
    return (f"not reachable by the final day {sched.final_day} at this traffic: about "
            f"{factor:.1f}x the users would be needed")
