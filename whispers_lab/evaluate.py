"""One rollout day, end to end: aggregates (SQL) -> rules -> statistics -> decision.

:func:`evaluate_day` is the only place that wires :mod:`whispers_lab.queries.monitoring`,
:mod:`whispers_lab.rules`, the statistics package and :mod:`whispers_lab.decision` together.
It reads data through the end of the requested day only (``[.., day_start(day + 1))``), so
evaluating day 9 of a 14-day export gives what an analyst would have seen on the evening of
day 9. An export that ends before the day yields no_data everywhere and a NO_GO that says so.
If the statistics package is missing, or raises a :class:`WhispersLabError` on the export, its
criteria are no_data with that message (never a pass).

Everything follows the rollout's actual state (:mod:`whispers_lab.state`): the export's flag
log, else the decisions of earlier days in the report folder, else the plan's calendar
(assumed, and the decision says so). The plan is read as the state dated it (the phase of the
day, thresholds, windows, each user's enabling day), the statistics get the state, and
``assignment_integrity`` compares what every active user was served with what the state plans.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import cohort, rules
from . import qa as qa_module
from .decision import Decision, decide
from .errors import WhispersLabError
from .export import Export
from .plan import CRITERION_IDS, TRIGGER_IDS, Phase, Plan
from .queries import experiment as qe
from .queries import monitoring as q
from .queries import state as qs
from .results import CriterionResult
from .rules import (
    STAT_CRITERIA,
    Window,
    from_stat,
    no_data,
    threshold,
    windows_from_runs,
)
from .state import RolloutState, resolve_state

#: Minutes before midnight searched for the start of a run that reaches into the day.
RUN_LOOKBACK_MINUTES = 60


@dataclass(frozen=True, eq=False)
class DayEvaluation:
    """Everything the daily report needs about one rollout day.

    ``minute_series``: per-minute whispers requests of the day (minute, requests,
    avg_duration_ms, errors, server_errors, error_rate, counted); ``db_series``: per-minute db
    p95 (minute, p95_query_ms) with ``db_limit_ms`` the trigger level; ``windows``: runs of bad
    minutes per trigger (fired or not) to shade on charts; ``daily``: days 0..day (exposures by
    variant, impressions, clicks, CTR, requests, error and fallback rates)."""

    day: int
    date: dt.date
    phase: Phase
    criteria: tuple[CriterionResult, ...]
    triggers: tuple[CriterionResult, ...]
    decision: Decision
    minute_series: pd.DataFrame
    db_series: pd.DataFrame
    windows: tuple[Window, ...]
    daily: pd.DataFrame
    data_end: dt.datetime | None
    db_limit_ms: float | None = None
    stats: Any = None
    aggregates: dict[str, Any] = field(default_factory=dict)
    state: RolloutState | None = None

    @property
    def results(self) -> tuple[CriterionResult, ...]:
        return self.criteria + self.triggers

    def result(self, rid: str) -> CriterionResult:
        for r in self.results:
            if r.id == rid:
                return r
        raise KeyError(rid)

    def windows_for(self, trigger: str) -> tuple[Window, ...]:
        return tuple(w for w in self.windows if w.trigger == trigger)


def _stat_results(export: Export, day: int, plan: Plan,
                  state: RolloutState | None = None) -> tuple[Any, str | None]:
    """The statistics package's results, or (None, why) when it is not installed yet."""
    try:
        from .stats import experiment_results  # the statistics package, optional at import
    except ImportError as exc:
        return None, f"The statistics package is not available ({exc})."
    try:
        return experiment_results(export, day, plan, state=state), None
    except WhispersLabError as exc:  # input the statistics cannot use: say so, do not pass
        return None, f"The statistics could not be computed: {exc}"


def _uncovered(day: int, plan: Plan, end: dt.datetime | None) -> tuple[CriterionResult, ...]:
    when = "holds no data" if end is None else f"ends at {end:%Y-%m-%d %H:%M} UTC"
    reason = (f"The export {when}, before day {day} ({plan.day_start(day).date()}); nothing on "
              f"that day can be judged.")
    out = [no_data(cid, "criterion", reason, threshold(plan, cid, day)) for cid in CRITERION_IDS]
    units = {"trigger_error_rate": "minutes", "trigger_latency": "minutes",
             "trigger_db": "minutes", "trigger_privacy": "tickets",
             "trigger_critical_bug": "tickets"}
    out += [no_data(tid, "trigger", reason, unit=units[tid]) for tid in TRIGGER_IDS]
    return tuple(out)


#: Row of the statistics' power table that belongs to each criterion.
POWER_ROWS: dict[str, str] = {"retention": "retention_d{k}", "ctr": "ctr",
                              "feedback_score": "feedback_score", "relevance": "relevance",
                              "support_tickets": "support_tickets",
                              "sentiment": "sentiment"}  # issue 15


def _with_power(result: CriterionResult, stats: Any) -> CriterionResult:
    """The criterion with its power row (minimum detectable effect today, what it still
    needs) in ``details["power"]``, for the report."""
    if stats is None or result.id not in POWER_ROWS or stats.power is None:
        return result
    name = POWER_ROWS[result.id].format(k=stats.settings.primary_k)
    rows = stats.power.loc[stats.power["metric"] == name]
    if rows.empty:
        return result
    row = rows.iloc[0].replace({float("inf"): None}).to_dict()
    power = {"mde": row.get("mde"), "target": row.get("target"), "note": row.get("note"),
             "information": row.get("information")}
    extra: dict[str, Any] = {"power": power}
    if result.id == "retention" and getattr(stats, "design", None):
        extra["design"] = stats.design
    return CriterionResult(id=result.id, kind=result.kind, value=result.value,
                           threshold=result.threshold, status=result.status,
                           reason=result.reason, unit=result.unit,
                           details=result.details | extra, code=result.code)


#: Criteria whose by-plan (intention-to-treat) comparison the dilution note goes with.
DILUTED_CRITERIA: tuple[str, ...] = ("retention", "support_tickets")


def _with_dilution(result: CriterionResult, dil: dict[str, Any] | None) -> CriterionResult:
    """A by-plan comparison with how much serving against the plan diluted it."""
    if dil is None or result.id not in DILUTED_CRITERIA:
        return result
    return CriterionResult(id=result.id, kind=result.kind, value=result.value,
                           threshold=result.threshold, status=result.status,
                           reason=result.reason + dil["sentence"], unit=result.unit,
                           details=result.details | {"dilution": {
                               k: v for k, v in dil.items() if k != "sentence"}},
                           code=result.code)


def _integrity(export: Export, day: int, plan: Plan, state: RolloutState
               ) -> tuple[CriterionResult, dict[str, Any] | None, pd.DataFrame]:
    """``assignment_integrity`` of the day, the dilution of the by-plan comparisons since the
    first percentage day, and the per-day served-vs-planned counts behind them."""
    from .stats.settings import StatSettings
    from .stats.srm import srm_test

    users = qe.users_for_assignment(export)
    if len(users):
        bucket, category, _ = cohort.categories(users, plan)
        names = pd.Series(np.asarray(cohort.CATEGORY_NAMES, dtype=object)[category], dtype=str)
    else:  # no users: nobody can be compared (no_data)
        bucket, names = [], []
    qs.register_assignment(export, users["user_id"], names, bucket)
    intervals = state.intervals(day)
    qs.register_intervals(export, intervals)
    first_pct = min((d for d, _ in plan.percentage_stages()), default=day)
    lo_day = min(first_pct, day)
    counts, shares = qs.served_and_share(export, plan.start_date, plan.day_start(lo_day),
                                         plan.day_start(day + 1), plan.day_start(day))
    share_of = dict(zip(intervals["interval_id"],
                        qs.interval_share(intervals, plan.assignment.buckets,
                                          plan.assignment.holdout_buckets), strict=True))
    shares["share_t"] = shares["interval_id"].map(share_of)
    random = shares.loc[(shares["share_t"] > 0) & (shares["share_t"] < 1)]
    share_stat = (srm_test(random[["day", "n_t", "n_c", "share_t"]].reset_index(drop=True),
                           StatSettings.from_plan(plan), day) if len(random) else None)
    today = counts.loc[counts["day"] == day]
    result = rules.assignment_integrity(today, share_stat, plan, day,
                                        state_sentence=state.sentence(day))
    dil = rules.dilution(counts.loc[counts["day"] >= first_pct]) if day >= first_pct else None
    return result, dil, counts


def evaluate_day(export: Export, day: int, plan: Plan,
                 qa: qa_module.QaResults | None = None, *,
                 state: RolloutState | None = None,
                 reports_dir: str | Path | None = None) -> DayEvaluation:
    """Evaluate rollout day ``day``: every criterion and trigger, the decision, chart series.

    ``qa``: the day's QA results (:func:`whispers_lab.qa.read_qa_results`); None: none given,
    so ``qa_scenarios`` has no data. ``state``: the rollout's actual state; None: resolved
    (:func:`whispers_lab.state.resolve_state`) from the export's flag log, else the decisions
    of earlier days in ``reports_dir``, else the plan's calendar (assumed)."""
    data_end = q.data_end(export)
    if state is None:
        state = resolve_state(export, plan, day, reports_dir, data_end=data_end)
    plan = state.dated_plan()
    phase = state.phase_on(day)
    start, end = plan.day_start(day), plan.day_start(day + 1)
    crit = plan.criteria
    trig = plan.triggers
    # every query of the whispers endpoint below reads its rows from one table made here
    # (from the run lookback before day 0 to the day's end), not from api_logs again
    q.materialize_whispers_requests(
        export, plan.day_start(0) - dt.timedelta(minutes=RUN_LOOKBACK_MINUTES), end)
    q.materialize_exposures(export, end)  # and every reader of exposures from one copy
    # and the telemetry's whispers events (daily series, CTR), the day's events (per hour,
    # active users, the canary's app opens) and the cues of the cooldown's lookback from one
    # grouping of the telemetry
    q.materialize_request_events(
        export, plan.day_start(0), end, day_lo=start,
        cue_lo=start - dt.timedelta(minutes=float(plan.cue_cooldown_minutes)))
    daily = q.daily_series(export, plan.day_start(0), end)

    if data_end is None or data_end < start:
        results = _uncovered(day, plan, data_end)
        if export.has("support_tickets"):
            # a day the export does not cover may still hold a ticket (a stray row, or an
            # export cut early): a privacy or critical-bug ticket about whispers is a rollback
            # trigger on its own, so it is never hidden behind "no data"
            tickets = q.ticket_counts(export, start, end)
            fired = {r.id: r for r in (rules.trigger_privacy(tickets, plan, day),
                                        rules.trigger_critical_bug(tickets, plan, day))
                     if r.fired}
            results = tuple(fired.get(r.id, r) for r in results)
        decision = decide(results, day, plan, state=state)
        empty_minutes = q.minute_series(export, start, start, min_requests=crit.min_minute_requests)
        return DayEvaluation(
            day=day, date=start.date(), phase=phase,
            criteria=tuple(r for r in results if r.kind == "criterion"),
            triggers=tuple(r for r in results if r.kind == "trigger"),
            decision=decision, minute_series=empty_minutes,
            db_series=q.db_minute_series(export, start, start), windows=(), daily=daily,
            data_end=data_end, state=state)

    # -- aggregates (SQL) -----------------------------------------------------------------
    api = q.daily_api(export, start, end, ranking_timeout_ms=crit.ranking_timeout_ms)
    avail = q.availability(export, start, end, min_requests=rules.UPTIME_MIN_MINUTE_REQUESTS)
    trigger_minutes = q.availability(export, start, end, min_requests=crit.min_minute_requests)
    minutes = q.minute_series(export, start, end, min_requests=crit.min_minute_requests)
    err_runs = q.minute_runs(export, start, end, metric="error_rate", threshold=trig.error_rate,
                             min_requests=crit.min_minute_requests,
                             lookback_minutes=RUN_LOOKBACK_MINUTES)
    lat_runs = q.minute_runs(export, start, end, metric="avg_duration_ms",
                             threshold=trig.avg_response_ms, min_requests=crit.min_minute_requests,
                             lookback_minutes=RUN_LOOKBACK_MINUTES)
    weights = q.weight_persistence(export, start, end)
    hourly = q.hourly_telemetry(export, start, end)
    cues = q.cue_cooldown(export, start, end, cooldown_minutes=plan.cue_cooldown_minutes)
    tickets = q.ticket_counts(export, start, end) if export.has("support_tickets") else None
    baseline = q.db_baseline(export, plan.day_start(0))
    db_series = q.db_minute_series(export, start, end)
    median = baseline.get("median_p95_ms")
    db_limit = None if median is None else trig.db_p95_ratio * float(median)
    db_runs = (q.db_runs(export, start, end, limit_ms=db_limit, lookback_minutes=RUN_LOOKBACK_MINUTES)
               if db_limit is not None else pd.DataFrame(columns=["start", "end", "minutes", "peak"]))

    # -- threshold criteria over their windows (tolerance region, clustered intervals) ------
    windows: dict[int, dict[str, Any]] = {}

    def window(cid: str) -> tuple[dict[str, Any], int]:
        first = plan.window_start(cid, day)
        if first not in windows:
            windows[first] = q.api_window(export, plan.day_start(first), end)
        return windows[first], first

    err_win, err_from = window("error_rate")
    fb_win, fb_from = window("weight_fallback_rate")
    avg_win, avg_from = window("avg_response_ms")
    p95_win, p95_from = window("p95_response_ms")
    p95_ends = q.api_quantiles(export, plan.day_start(p95_from), end,
                               rules.p95_probabilities(p95_win, plan))
    up_from = plan.window_start("uptime", day)
    up_avail = (avail if up_from == day else
                q.availability(export, plan.day_start(up_from), end,
                               min_requests=rules.UPTIME_MIN_MINUTE_REQUESTS))

    # -- statistics ------------------------------------------------------------------------
    stats, stats_missing = _stat_results(export, day, plan, state)
    # after the statistics: who opened the app that day comes from their reading of the opens
    treated_active = q.treated_active_users(export, start, end)
    integrity, dil, served = _integrity(export, day, plan, state)

    # -- rules -----------------------------------------------------------------------------
    by_id: dict[str, CriterionResult] = {
        "telemetry_flowing": rules.telemetry_flowing(hourly, treated_active, plan, day, data_end),
        "ranking_timeouts": rules.ranking_timeouts(api, plan, day),
        "weight_persistence": rules.weight_persistence(weights, plan, day),
        "cue_cooldown": rules.cue_cooldown(cues, plan, day),
        "error_rate": rules.error_rate(err_win, plan, day, err_from),
        "avg_response_ms": rules.avg_response_ms(avg_win, plan, day, avg_from),
        "p95_response_ms": rules.p95_response_ms(p95_win, p95_ends, plan, day, p95_from),
        "weight_fallback_rate": rules.weight_fallback_rate(fb_win, plan, day, fb_from),
        "uptime": rules.uptime(up_avail, plan, day, up_from),
        "critical_bugs": rules.critical_bugs(tickets, plan, day),
        "qa_scenarios": qa_module.qa_scenarios(qa, plan, day),
        "assignment_integrity": integrity,
    }
    for cid in STAT_CRITERIA:
        stat = getattr(stats, cid, None) if stats is not None else None
        by_id[cid] = _with_dilution(
            _with_power(from_stat(cid, stat, plan, day, stats_missing), stats), dil)
    by_id["sentiment"] = _with_power(rules.sentiment(  # issue 15: "Positive user sentiment"
        getattr(stats, "sentiment", None), plan, day, stats_missing), stats)
    criteria = tuple(by_id[cid] for cid in CRITERION_IDS)
    triggers = (
        rules.trigger_error_rate(err_runs, trigger_minutes, plan, day),
        rules.trigger_latency(lat_runs, trigger_minutes, plan, day),
        rules.trigger_privacy(tickets, plan, day),
        rules.trigger_db(baseline, len(db_series), db_runs, plan, day),
        rules.trigger_critical_bug(tickets, plan, day),
    )
    decision = decide(criteria + triggers, day, plan, state=state)
    windows = (windows_from_runs("trigger_error_rate", err_runs, trig.error_rate_minutes)
               + windows_from_runs("trigger_latency", lat_runs, trig.avg_response_minutes)
               + windows_from_runs("trigger_db", db_runs, trig.db_minutes))
    aggregates = {"api": api, "availability": avail, "weights": weights, "cues": cues,
                  "tickets": tickets, "db_baseline": baseline, "treated_active_users": treated_active,
                  "served_vs_planned": served, "dilution": dil}
    return DayEvaluation(
        day=day, date=start.date(), phase=phase, criteria=criteria, triggers=triggers,
        decision=decision, minute_series=minutes, db_series=db_series, windows=windows,
        daily=daily, data_end=data_end, db_limit_ms=db_limit, stats=stats, aggregates=aggregates,
        state=state)
