"""Orchestration: every treatment-vs-control statistic of one rollout day.

:func:`experiment_results` is what the go/no-go rules and the notebooks call. Day N means data
through the end of rollout day N (``plan.day_start(N + 1)`` exclusive); nothing later is read.
SQL lives in :mod:`whispers_lab.queries.experiment`; everything here is arithmetic on the small
frames it returns. No statistic raises on thin data: it returns ``no_data`` / ``inconclusive``
with a sentence, and a missing number is never a pass.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .. import cohort
from ..export import Export
from ..plan import Plan
from ..queries import experiment as q
from ..results import StatResult
from . import power as pw
from .canary import canary_metric
from .rates import (
    order_statistic_ranks,
    proportion_vs_threshold,
    quantile_vs_threshold,
    ratio_vs_threshold,
    ticket_rate_ratio,
)
from .retention import analyse_retention, daily_accrual, empty_cells
from .settings import StatSettings
from .srm import srm_test
from .sufficient import RatioStat, ratio_from_row
from .survival import survival_comparison

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
    retention_relative: StatResult
    retention_by_k: dict[int, StatResult]
    retention_history: pd.DataFrame
    cuped: StatResult
    survival: StatResult
    survival_curves: pd.DataFrame
    ctr: StatResult
    ctr_requests: StatResult
    feedback_score: StatResult
    relevance: StatResult
    support_tickets: StatResult
    p95_response_ms: StatResult
    canary: list[StatResult]
    power: pd.DataFrame
    population: dict[str, Any] = field(default_factory=dict)

    def all_results(self) -> list[StatResult]:
        out = [self.srm, self.retention, self.retention_relative]
        out += [r for k, r in sorted(self.retention_by_k.items()) if r is not self.retention]
        out += [self.cuped, self.survival, self.ctr, self.ctr_requests, self.feedback_score,
                self.relevance, self.support_tickets, self.p95_response_ms, *self.canary]
        return out

    def summary(self) -> pd.DataFrame:
        """One row per result: metric, status, estimate, ci_low, ci_high, p_value, n, sentence."""
        return pd.DataFrame([{"metric": r.metric, "status": r.status, "estimate": r.estimate,
                              "ci_low": r.ci_low, "ci_high": r.ci_high, "p_value": r.p_value,
                              "n": r.n, "threshold": r.threshold, "sentence": r.sentence}
                             for r in self.all_results()])

    def to_dict(self) -> dict[str, Any]:
        return {"day": self.day, "phase": self.phase_id,
                "results": [r.to_dict() for r in self.all_results()],
                "power": self.power.replace({np.inf: None}).to_dict(orient="records"),
                "population": self.population}


def _first_look(plan: Plan) -> int | None:
    stages = plan.percentage_stages()
    return stages[0][0] if stages else None


def _ratio(frame: pd.DataFrame, metric: str) -> RatioStat:
    row = frame.loc[frame["metric"] == metric]
    if row.empty or pd.isna(row.iloc[0]["sum_den"]):
        return RatioStat(0, 0.0, 0.0, 0.0, 0.0, 0.0)
    return ratio_from_row(row.iloc[0].fillna(0))


def _phase_text(plan: Plan, day: int) -> str:
    ph = plan.phase_for_day(day)
    return f" ({ph.name})"


def experiment_results(export: Export, day: int, plan: Plan,
                       settings: StatSettings | None = None) -> ExperimentResults:
    """Every treatment-vs-control statistic for rollout ``day`` (see module doc)."""
    s = settings or StatSettings.from_plan(plan)
    phase = plan.phase_for_day(day)
    start: dt.date = plan.start_date
    t0, lo, hi = plan.day_start(0), plan.day_start(day), plan.day_start(day + 1)
    first_look = _first_look(plan)

    # -- cohort: reasons and switch days of every user --------------------------------------
    users = q.users_for_assignment(export)
    assigned = cohort.assign(users, day, plan)
    q.register_cohort(export, assigned)
    beta_sel = assigned.attrs.get("beta")
    beta_users = beta_sel.count if beta_sel is not None else 0
    quality = q.exposure_quality(export, start, t0, hi)
    # windows can only close on days the export covers: judge them as of its last day
    _, data_end = export.time_range("telemetry")
    obs_day = day if data_end is None else min(day, plan.day_of(pd.Timestamp(data_end)))
    obs_note = (f" The export's events end on day {obs_day}, so retention windows are judged "
                f"as of day {obs_day}." if obs_day < day else "")
    q.materialize_units(export, start, t0, hi, s.preperiod_days)
    population: dict[str, Any] = {"day": day, "phase": phase.id, "beta_users": beta_users,
                                  "observed_through_day": obs_day, **quality}

    # -- SRM ---------------------------------------------------------------------------------
    counts = q.srm_counts(export)
    counts = counts[(counts["day"] >= 0) & (counts["day"] <= day)].copy()
    counts["share_t"] = [cohort.expected_split(int(d), plan).treatment_share
                         for d in counts["day"]]
    srm = srm_test(counts, s, day)
    srm_flag = srm.status == "fail"

    # -- retention (every k), CUPED, history --------------------------------------------------
    ks = sorted(set(s.k_days) | {s.primary_k})
    cells_all = q.retention_cells(export, ks, obs_day)
    by_k: dict[int, Any] = {}
    for k in ks:
        cells = cells_all.loc[cells_all["k"] == k].drop(columns="k")
        if cells.empty:
            cells = empty_cells()
        by_k[k] = analyse_retention(cells, k, obs_day, first_look, s, srm_flag=srm_flag,
                                    srm_sentence=srm.sentence, phase_text=_phase_text(plan, day),
                                    beta_users=beta_users, look_offset=max(k - s.primary_k, 0))
    if obs_note:
        for a in by_k.values():
            for name in ("absolute", "relative", "cuped"):
                object.__setattr__(a, name, _with_note(getattr(a, name), obs_note,
                                                       {"observed_through_day": obs_day}))
    primary = by_k[s.primary_k]

    # -- survival -----------------------------------------------------------------------------
    surv = survival_comparison(q.survival_cells(export, obs_day), s, obs_day)

    # -- CTR (the day), feedback (since day 0) -----------------------------------------------
    ratios = q.ratio_units(export, lo, hi)
    ctr_thr = plan.threshold("ctr", day)
    ctr = ratio_vs_threshold("ctr", _ratio(ratios, "ctr"), ctr_thr, "min", s,
                             "Whispers click-through rate (clicks per impression)")
    ctr_req = ratio_vs_threshold("ctr_requests", _ratio(ratios, "ctr_requests"), ctr_thr, "min",
                                 s, "Share of whispers requests with at least one click")
    fb = q.feedback_units(export, t0, hi)
    has_feedback = export.has("feedback")
    feedback = ratio_vs_threshold("feedback_score", _ratio(fb, "feedback_score"),
                                  plan.threshold("feedback_score", day), "min", s,
                                  "Mean feedback rating (since day 0)", fmt="{:.2f}")
    relevance = proportion_vs_threshold("relevance", _ratio(fb, "relevance"),
                                        plan.threshold("relevance", day), s,
                                        "Share of feedback rating whispers relevant (since day 0)")
    if not has_feedback:
        feedback = _missing_table(feedback, "feedback")
        relevance = _missing_table(relevance, "feedback")

    if phase.audience == "beta":
        note = (f" Beta phase: these are the {beta_users} selected beta user(s), chosen for "
                f"engagement; they do not represent all users.")
        ctr, ctr_req, feedback, relevance = (_with_note(r, note, {"beta_only": True}) for r in
                                             (ctr, ctr_req, feedback, relevance))

    # -- support tickets ------------------------------------------------------------------------
    tickets = _tickets(export, plan, s, day, start, t0, hi, first_look)

    # -- p95 latency of the whispers endpoint (the day) ------------------------------------------
    p95 = _p95(export, plan, s, day, lo, hi)

    # -- canary ----------------------------------------------------------------------------------
    canary = _canary(export, s, day, lo, hi, first_look)

    # -- power -----------------------------------------------------------------------------------
    power = _power(s, day, phase.audience, beta_users, primary, by_k, ctr, feedback, relevance,
                   tickets, canary)

    return ExperimentResults(
        day=day, phase_id=phase.id, settings=s, srm=srm, retention=primary.absolute,
        retention_relative=primary.relative,
        retention_by_k={k: a.absolute for k, a in by_k.items()},
        retention_history=primary.history, cuped=primary.cuped, survival=surv.test,
        survival_curves=surv.curves, ctr=ctr, ctr_requests=ctr_req, feedback_score=feedback,
        relevance=relevance, support_tickets=tickets, p95_response_ms=p95, canary=canary,
        power=power, population=population,
    )


def _with_note(r: StatResult, note: str, extra: dict[str, Any]) -> StatResult:
    return StatResult(r.metric, r.estimate, r.ci_low, r.ci_high, r.p_value, r.n, r.method,
                      r.status, r.sentence + note, r.threshold, r.details | extra)


def _missing_table(r: StatResult, table: str) -> StatResult:
    return StatResult(r.metric, None, None, None, None, 0, r.method, "no_data",
                      f"The export has no {table} table.", r.threshold, r.details)


def _tickets(export: Export, plan: Plan, s: StatSettings, day: int, start: dt.date,
             t0: dt.datetime, hi: dt.datetime, first_look: int | None) -> StatResult:
    thr = plan.threshold("support_ticket_rate_ratio", day)
    if first_look is None or day < first_look:
        return StatResult("support_tickets", None, None, None, None, 0,
                          "Poisson rate ratio per user-day", "no_data",
                          f"Day {day}: no randomised treatment arm yet (beta users were "
                          f"selected, not randomised), so ticket rates cannot be compared.",
                          thr, {"first_look_day": first_look})
    tc = q.ticket_counts(export, start, t0, hi, first_look)
    users = q.ticket_users(export, first_look, day)
    agg = tc.groupby("variant")[["user_days", "tickets"]].sum()

    def get(v: str, c: str) -> float:
        return float(agg.loc[v, c]) if v in agg.index else 0.0

    res = ticket_rate_ratio(int(get("treatment", "tickets")), get("treatment", "user_days"),
                            int(get("control", "tickets")), get("control", "user_days"), thr, s,
                            users["users_t"], users["users_c"],
                            has_table=export.has("support_tickets"))
    # sensitivity: Mantel-Haenszel rate ratio stratified by calendar day
    wide = tc.pivot_table(index="day", columns="variant", values=["user_days", "tickets"],
                          aggfunc="sum", fill_value=0)
    if ("user_days", "treatment") in wide and ("user_days", "control") in wide:
        tt, ct = wide[("user_days", "treatment")], wide[("user_days", "control")]
        a, b = wide[("tickets", "treatment")], wide[("tickets", "control")]
        tot = tt + ct
        num, den = float((a * ct / tot).sum()), float((b * tt / tot).sum())
        res.details["rate_ratio_mh_by_day"] = num / den if den > 0 else None
    return res


def _p95(export: Export, plan: Plan, s: StatSettings, day: int, lo: dt.datetime,
         hi: dt.datetime) -> StatResult:
    thr = plan.threshold("p95_response_ms", day)
    summ = q.latency_summary(export, lo, hi, 0.95, thr)
    n = summ["n"]
    low = high = None
    if n > 0:
        r_lo, r_hi = order_statistic_ranks(n, 0.95, s.alpha)
        vals = q.latency_order_statistics(export, lo, hi, [r_lo, r_hi])
        low = vals.get(r_lo) if r_lo >= 1 else None
        high = vals.get(r_hi) if r_hi <= n else None
    return quantile_vs_threshold("p95_response_ms", n, summ["estimate"], low, high,
                                 summ["n_below"], 0.95, thr, s,
                                 "p95 latency of /api/whispers/context")


def _canary(export: Export, s: StatSettings, day: int, lo: dt.datetime, hi: dt.datetime,
            first_look: int | None) -> list[StatResult]:
    if first_look is None or day < first_look:
        return [StatResult(m, None, None, None, None, 0, "Mann-Whitney U / Hodges-Lehmann",
                           "no_data", f"{label}: no randomised treated users on day {day} "
                           f"(beta users are selected, not randomised).", None, {"day": day})
                for m, _, _, label in CANARY_METRICS]
    units = q.canary_units(export, lo, hi, day, s.canary_max_units, s.seed)
    popn = q.canary_population(export, lo, hi, day)
    out = []
    for metric, col, harm, label in CANARY_METRICS:
        t = units.loc[units["variant"] == "treatment", col].dropna().to_numpy(float)
        c = units.loc[units["variant"] == "control", col].dropna().to_numpy(float)
        out.append(canary_metric(metric, t, c, harm, s, label, day, popn))  # type: ignore[arg-type]
    return out


def _power(s: StatSettings, day: int, audience: str, beta_users: int, primary: Any,
           by_k: dict[int, Any], ctr: StatResult, feedback: StatResult, relevance: StatResult,
           tickets: StatResult, canary: list[StatResult]) -> pd.DataFrame:
    rows: list[pw.PowerRow] = []
    beta_note = (f"Day {day} is in the beta phase: {beta_users} selected user(s), no randomised "
                 f"control; this comparison cannot be judged." if audience == "beta" else "")
    for k, a in sorted(by_k.items()):
        d = a.absolute.details
        se = d.get("se")
        hist = a.history
        info = float(hist["information"].iloc[-1]) if len(hist) else 0.0
        m = pw.mde(se, s.alpha, s.power) if se else math.inf
        note = beta_note or (a.absolute.sentence if a.absolute.status == "no_data" else
                             f"smallest drop excludable with {s.power:.0%} power: "
                             f"{100 * m:.2f} pp vs margin {100 * s.margin:.1f} pp")
        rows.append(pw.PowerRow(f"retention_d{k}", "difference", a.absolute.n,
                                se, m, s.margin, info, daily_accrual(hist), note))
    for r, scale in ((ctr, "share"), (feedback, "rating"), (relevance, "share")):
        se = r.details.get("se")
        if se is None and r.ci_low is not None and r.ci_high is not None:
            se = (r.ci_high - r.ci_low) / (2 * 1.6448536269514722)
        m = pw.mde(se, s.alpha, s.power) if se else math.inf
        target = (abs(r.estimate - r.threshold) if r.estimate is not None and
                  r.threshold is not None else None)
        note = (f"{r.n} user(s): distances from the {r.threshold} target smaller than "
                f"{m:.3g} cannot be resolved" if math.isfinite(m) else
                f"{r.n} user(s): cannot be judged")
        if audience == "beta" and r.metric in ("feedback_score", "relevance"):
            note = (f"Beta: only {r.n} user(s) answered; " + note)
        per_day = None if r.metric == "ctr" else (r.n / max(day + 1, 1))
        rows.append(pw.PowerRow(r.metric, scale, r.n, se, m,
                                target if target else None, float(r.n), per_day, note))
    mde_rr = tickets.details.get("mde_rate_ratio")
    rows.append(pw.PowerRow(
        "support_tickets", "rate ratio", tickets.n, None,
        mde_rr if mde_rr is not None else math.inf, s.max_informative_rate_ratio,
        float(tickets.n), None,
        beta_note or (f"detectable increase: {mde_rr:.2f}x" if mde_rr and math.isfinite(mde_rr)
                      else tickets.sentence)))
    for r in canary:
        d = r.details
        se = None
        if r.ci_low and r.ci_high and r.estimate:
            se = (math.log(r.ci_high) - math.log(r.ci_low)) / (2 * 1.6448536269514722)
        m = math.exp(pw.mde(se, s.alpha, s.power)) if se else math.inf
        band = s.canary_band[1] if d.get("harm") == "increase" else 1 / s.canary_band[0]
        rows.append(pw.PowerRow(r.metric, "ratio", r.n, se, m, band, float(r.n), None,
                                beta_note or f"detectable ratio {m:.3f} vs band {band:.2f}"))
    return pw.power_table(rows)
