"""One rollout day, end to end: aggregates (SQL) -> rules -> statistics -> decision.

:func:`evaluate_day` is the only place that wires :mod:`whispers_lab.queries.monitoring`,
:mod:`whispers_lab.rules`, the statistics package and :mod:`whispers_lab.decision` together.
It reads data through the end of the requested day only (``[.., day_start(day + 1))``), so
evaluating day 9 of a 14-day export gives what an analyst would have seen on the evening of
day 9. An export that ends before the day yields no_data everywhere and a NO_GO that says so.
If the statistics package is missing, or raises a :class:`WhispersLabError` on the export, its
criteria are no_data with that message (never a pass).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from . import qa as qa_module
from . import rules
from .decision import Decision, decide
from .errors import WhispersLabError
from .export import Export
from .plan import CRITERION_IDS, TRIGGER_IDS, Phase, Plan
from .queries import monitoring as q
from .results import CriterionResult
from .rules import (
    STAT_CRITERIA,
    Window,
    from_stat,
    no_data,
    threshold,
    windows_from_runs,
)

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


def _stat_results(export: Export, day: int, plan: Plan) -> tuple[Any, str | None]:
    """The statistics package's results, or (None, why) when it is not installed yet."""
    try:
        from .stats import experiment_results  # the statistics package, optional at import
    except ImportError as exc:
        return None, f"The statistics package is not available ({exc})."
    try:
        return experiment_results(export, day, plan), None
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


def evaluate_day(export: Export, day: int, plan: Plan,
                 qa: qa_module.QaResults | None = None) -> DayEvaluation:
    """Evaluate rollout day ``day``: every criterion and trigger, the decision, chart series.

    ``qa``: the day's QA results (:func:`whispers_lab.qa.read_qa_results`); None: none given,
    so ``qa_scenarios`` has no data."""
    phase = plan.phase_for_day(day)
    start, end = plan.day_start(day), plan.day_start(day + 1)
    crit = plan.criteria
    trig = plan.triggers
    data_end = q.data_end(export)
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
        decision = decide(results, day, plan)
        empty_minutes = q.minute_series(export, start, start, min_requests=crit.min_minute_requests)
        return DayEvaluation(
            day=day, date=start.date(), phase=phase,
            criteria=tuple(r for r in results if r.kind == "criterion"),
            triggers=tuple(r for r in results if r.kind == "trigger"),
            decision=decision, minute_series=empty_minutes,
            db_series=q.db_minute_series(export, start, start), windows=(), daily=daily,
            data_end=data_end)

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
    treated_active = q.treated_active_users(export, start, end)
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
    stats, stats_missing = _stat_results(export, day, plan)

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
    }
    for cid in STAT_CRITERIA:
        stat = getattr(stats, cid, None) if stats is not None else None
        by_id[cid] = _with_power(from_stat(cid, stat, plan, day, stats_missing), stats)
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
    decision = decide(criteria + triggers, day, plan)
    windows = (windows_from_runs("trigger_error_rate", err_runs, trig.error_rate_minutes)
               + windows_from_runs("trigger_latency", lat_runs, trig.avg_response_minutes)
               + windows_from_runs("trigger_db", db_runs, trig.db_minutes))
    aggregates = {"api": api, "availability": avail, "weights": weights, "cues": cues,
                  "tickets": tickets, "db_baseline": baseline, "treated_active_users": treated_active}
    return DayEvaluation(
        day=day, date=start.date(), phase=phase, criteria=criteria, triggers=triggers,
        decision=decision, minute_series=minutes, db_series=db_series, windows=windows,
        daily=daily, data_end=data_end, db_limit_ms=db_limit, stats=stats, aggregates=aggregates)
