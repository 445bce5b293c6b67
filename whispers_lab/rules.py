"""The rollout plan's criteria and rollback triggers as pure functions.

Each function takes aggregates (plain numbers, dicts or small DataFrames as returned by
:mod:`whispers_lab.queries.monitoring`, or a :class:`~whispers_lab.results.StatResult` from the
statistics package), the plan and the rollout day, and returns one
:class:`~whispers_lab.results.CriterionResult` with a stable id, the observed value, the
threshold in force that day (phase overrides included), a status and one plain sentence.
Nothing here opens an export; :mod:`whispers_lab.evaluate` feeds these functions.

Conventions (see ``docs/rules.md``):

* "max" criteria pass when the value is at or below the threshold, "min" criteria when at or
  above (the plan file's convention). Triggers fire (status ``fail``) when the value is
  strictly above the trigger level for at least the trigger's number of counted minutes.
* Missing data is ``no_data``; data too thin to judge is ``inconclusive``. Neither is a pass.
* A rate or a mean is judged only on at least ``min_day_requests`` requests (see
  :func:`min_day_requests`); uptime only on at least ``ceil(1 / (1 - uptime))`` counted minutes.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd

from .lazy import lazy_function, lazy_module
from .plan import Plan
from .results import REASON_CODES, CriterionResult, StatResult, Status
from .stats.rates import (
    proportion_vs_threshold,
    quantile_vs_threshold,
    ratio_vs_threshold,
    threshold_status,
    woodruff_se,
)
from .stats.settings import StatSettings
from .stats.sufficient import RatioStat

stats = lazy_module("scipy.stats")
proportion_confint = lazy_function("statsmodels.stats.proportion", "proportion_confint")

Direction = Literal["max", "min"]


@dataclass(frozen=True)
class CriterionSpec:
    """How a criterion id maps onto the plan: its threshold key in ``[criteria]``, direction
    and unit. ``threshold_key`` None means the threshold comes from elsewhere (retention)."""

    id: str
    threshold_key: str | None
    direction: Direction
    unit: str


SPECS: dict[str, CriterionSpec] = {s.id: s for s in (
    CriterionSpec("telemetry_flowing", "telemetry_min_hourly_events", "min", "events/hour"),
    CriterionSpec("ranking_timeouts", "max_ranking_timeouts", "max", "requests"),
    CriterionSpec("weight_persistence", "max_weight_version_conflicts", "max", "users"),
    CriterionSpec("cue_cooldown", "max_cue_cooldown_violations", "max", "cues"),
    CriterionSpec("error_rate", "error_rate", "max", "share"),
    CriterionSpec("avg_response_ms", "avg_response_ms", "max", "ms"),
    CriterionSpec("p95_response_ms", "p95_response_ms", "max", "ms"),
    CriterionSpec("weight_fallback_rate", "weight_fallback_rate", "max", "share"),
    CriterionSpec("uptime", "uptime", "min", "share"),
    CriterionSpec("critical_bugs", "critical_bugs", "max", "tickets"),
    CriterionSpec("relevance", "relevance", "min", "share"),
    CriterionSpec("feedback_score", "feedback_score", "min", "rating"),
    # issue 15: "Positive user sentiment", the plan's [sentiment] (rules.sentiment)
    CriterionSpec("sentiment", None, "min", "net score"),
    CriterionSpec("ctr", "ctr", "min", "share"),
    CriterionSpec("retention", None, "min", "difference"),
    CriterionSpec("support_tickets", "support_ticket_rate_ratio", "max", "ratio"),
    CriterionSpec("srm", "srm_p_value", "min", "p-value"),
    # issue 15: judged by whispers_lab.qa.qa_scenarios (failing QA scenarios, none allowed)
    CriterionSpec("qa_scenarios", None, "max", "scenarios"),
    # issue 14: served against planned for every active user (assignment_integrity below)
    CriterionSpec("assignment_integrity", "assignment_mismatch_rate", "max", "share"),
)}

#: Criteria whose numbers come from the statistics package (``experiment_results``).
STAT_CRITERIA: tuple[str, ...] = (
    "relevance", "feedback_score", "ctr", "retention", "support_tickets", "srm",
)


@dataclass(frozen=True)
class Window:
    """A run of consecutive bad minutes, for charts: ``[start, end)``, counted minutes in the
    run (including any just before midnight), peak value, and whether it fired the trigger."""

    trigger: str
    start: dt.datetime
    end: dt.datetime
    minutes: int
    peak: float
    fired: bool

    def to_dict(self) -> dict[str, Any]:
        return {"trigger": self.trigger, "start": self.start.isoformat(),
                "end": self.end.isoformat(), "minutes": self.minutes, "peak": self.peak,
                "fired": self.fired}


# ---------------------------------------------------------------------------------------
# helpers


def threshold(plan: Plan, criterion: str, day: int) -> float | None:
    """The threshold of ``criterion`` in force on ``day`` (phase override, else [criteria])."""
    key = SPECS[criterion].threshold_key
    if key is None:
        if criterion == "retention":
            return -plan.retention.margin
        if criterion == "qa_scenarios":  # issue 15: no QA scenario may fail or error
            return 0.0
        if criterion == "sentiment":  # issue 15: the plan's [sentiment].net_score
            return plan.sentiment.net_score if plan.sentiment is not None else None
        return None
    return plan.threshold(key, day)


def min_day_requests(plan: Plan, rate_threshold: float | None = None) -> int:
    """Fewest requests on which a daily rate or mean is judged.

    At least ``criteria.min_day_requests``; for a rate budget ``b`` also at least ``1 / b``,
    so that the observed rate can resolve the budget (with fewer requests a single event moves
    the rate from 0 to above the budget)."""
    n = plan.criteria.min_day_requests
    if rate_threshold is not None and rate_threshold > 0:
        n = max(n, math.ceil(round(1.0 / rate_threshold, 9)))
    return int(n)


#: Uptime counts every minute with traffic. A thin minute is judged conservatively: it is down
#: when half or more of its requests failed, so one failed request in a one-request minute marks
#: it down. That can only understate uptime, never pass a day that should fail; it lets uptime be
#: judged at the traffic of the early percentage phases, where few minutes reach
#: ``min_minute_requests`` (which still governs the per-minute rollback triggers).
UPTIME_MIN_MINUTE_REQUESTS = 1


def min_uptime_minutes(uptime_threshold: float) -> int:
    """Fewest counted minutes on which uptime is judged: one down minute must be able to move
    the share by no more than the allowed downtime, i.e. ``ceil(1 / (1 - uptime))``."""
    allowed = 1.0 - uptime_threshold
    return 1 if allowed <= 0 else math.ceil(round(1.0 / allowed, 9))


def _compare(value: float, limit: float, direction: Direction) -> Status:
    return "pass" if (value <= limit if direction == "max" else value >= limit) else "fail"


def _pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def _num(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "n/a"
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:,.{digits}f}"


def _day(plan: Plan, day: int) -> str:
    return f"day {day} ({plan.day_start(day).date().isoformat()})"


def _criterion(cid: str, value: float | None, limit: float | None, status: Status, reason: str,
               _code: str = "", **details: Any) -> CriterionResult:
    return CriterionResult(id=cid, kind="criterion", value=value, threshold=limit, status=status,
                           reason=reason, unit=SPECS[cid].unit, details=dict(details),
                           code=_code)


def _wilson(events: int, n: int) -> tuple[float | None, float | None]:
    if n <= 0:
        return (None, None)
    lo, hi = proportion_confint(events, n, alpha=0.05, method="wilson")
    return (float(lo), float(hi))


def no_data(cid: str, kind: Literal["criterion", "trigger"], reason: str,
            limit: float | None = None, unit: str = "") -> CriterionResult:
    """A result that could not be computed at all (missing table, export ends earlier...)."""
    if kind == "criterion" and not unit:
        unit = SPECS[cid].unit
    return CriterionResult(id=cid, kind=kind, value=None, threshold=limit, status="no_data",
                           reason=reason, unit=unit)


# ---------------------------------------------------------------------------------------
# criteria from monitoring aggregates


def telemetry_flowing(hourly: pd.DataFrame, treated_active_users: int, plan: Plan, day: int,
                      data_end: dt.datetime | None = None) -> CriterionResult:
    """Every hour of the day carries at least ``telemetry_min_hourly_events`` events, and
    whispers_shown events exist whenever a treated user was active.

    ``hourly`` has one row per UTC hour of the day (hour, events, shown), zero-filled. Hours
    starting at or after ``data_end`` (the export's end) cannot be checked: if everything
    before passes, the result is inconclusive."""
    cid = "telemetry_flowing"
    limit = threshold(plan, cid, day)
    if hourly.empty or int(hourly["events"].sum()) == 0:
        return _criterion(cid, None, limit, "no_data",
                          f"No telemetry events at all on {_day(plan, day)}.")
    hours = pd.to_datetime(hourly["hour"])
    covered = hourly[hours <= pd.Timestamp(data_end)] if data_end is not None else hourly
    uncovered = len(hourly) - len(covered)
    low = covered[covered["events"] < limit]
    value = float(covered["events"].min()) if len(covered) else None
    shown = int(hourly["shown"].sum())
    details = {"hours_checked": len(covered), "hours_below": len(low),
               "low_hours": [pd.Timestamp(h).strftime("%H:00") for h in low["hour"]][:24],
               "whispers_shown": shown, "treated_active_users": int(treated_active_users)}
    if len(low):
        first = pd.Timestamp(low["hour"].iloc[0]).strftime("%H:00")
        return _criterion(cid, value, limit, "fail",
                          f"Telemetry gap: {len(low)} of {len(covered)} hours on {_day(plan, day)} "
                          f"had fewer than {_num(limit)} event(s), the first at {first} UTC.",
                          **details)
    if treated_active_users > 0 and shown == 0:
        return _criterion(cid, value, limit, "fail",
                          f"{treated_active_users} treated user(s) were active on "
                          f"{_day(plan, day)} but no whispers_shown event was logged.", **details)
    if uncovered:
        return _criterion(cid, value, limit, "inconclusive",
                          f"The export ends at {data_end}; {uncovered} hour(s) of "
                          f"{_day(plan, day)} after it cannot be checked.", **details)
    return _criterion(cid, value, limit, "pass",
                      f"Telemetry flowed in all 24 hours (at least {_num(value)} events an hour)"
                      f" and {shown:,} whispers_shown events were logged.", **details)


def ranking_timeouts(api: Mapping[str, Any], plan: Plan, day: int) -> CriterionResult:
    """No request's ranking_ms above ``criteria.ranking_timeout_ms`` (at most
    ``max_ranking_timeouts``), judged on at least ``min_day_requests`` ranked requests."""
    cid = "ranking_timeouts"
    limit = threshold(plan, cid, day)
    n = int(api.get("ranked_requests") or 0)
    count = int(api.get("ranking_timeouts") or 0)
    timeout = plan.criteria.ranking_timeout_ms
    details = {"ranked_requests": n, "timeout_ms": timeout, "max_ranking_ms": api.get("max_ranking_ms"),
               "users": api.get("ranked_users")}
    if n == 0:
        return _criterion(cid, None, limit, "no_data",
                          f"No whispers request with a ranking time on {_day(plan, day)}.", **details)
    if count > limit:
        return _criterion(cid, count, limit, "fail",
                          f"{count:,} of {n:,} requests ranked for longer than {_num(timeout)} ms "
                          f"(allowed: {_num(limit)}).", **details)
    need = min_day_requests(plan)
    if n < need:
        return _criterion(cid, count, limit, "inconclusive",
                          f"Only {n} ranked request(s) on {_day(plan, day)} (need {need}) to show "
                          f"ranking stays within {_num(timeout)} ms.", **details)
    return _criterion(cid, count, limit, "pass",
                      f"None of {n:,} requests ranked for longer than {_num(timeout)} ms "
                      f"(slowest {_num(api.get('max_ranking_ms'))} ms).", **details)


def weight_persistence(weights: Mapping[str, Any], plan: Plan, day: int) -> CriterionResult:
    """No user seen on two or more devices is served two or more weights_version values in a
    day. Users on a single device cannot show a cross-device problem and are not evidence."""
    cid = "weight_persistence"
    limit = threshold(plan, cid, day)
    users = int(weights.get("users") or 0)
    multi = int(weights.get("multi_device_users") or 0)
    conflicts = int(weights.get("conflict_users") or 0)
    details = {"users": users, "multi_device_users": multi}
    if users == 0:
        return _criterion(cid, None, limit, "no_data",
                          f"No whispers request carried a weights_version on {_day(plan, day)}.",
                          **details)
    if conflicts > limit:
        return _criterion(cid, conflicts, limit, "fail",
                          f"{conflicts:,} of {multi:,} multi-device user(s) were served different "
                          f"weights versions on different devices.", **details)
    if multi == 0:
        return _criterion(cid, conflicts, limit, "inconclusive",
                          f"No user used whispers from two devices on {_day(plan, day)}; "
                          f"persistence across devices could not be checked.", **details)
    return _criterion(cid, conflicts, limit, "pass",
                      f"All {multi:,} multi-device user(s) saw one weights version across devices.",
                      **details)


def cue_cooldown(cues: Mapping[str, Any], plan: Plan, day: int) -> CriterionResult:
    """No Maya cue fires within ``maya.cue_cooldown_minutes`` of the same user's previous cue."""
    cid = "cue_cooldown"
    limit = threshold(plan, cid, day)
    n = int(cues.get("cues") or 0)
    violations = int(cues.get("violations") or 0)
    cooldown = plan.cue_cooldown_minutes
    details = {"cues": n, "users": int(cues.get("users") or 0), "cooldown_minutes": cooldown,
               "min_gap_minutes": cues.get("min_gap_minutes")}
    if n == 0:
        return _criterion(cid, None, limit, "no_data",
                          f"No Maya cue fired on {_day(plan, day)}; the cooldown could not be "
                          f"checked.", **details)
    if violations > limit:
        return _criterion(cid, violations, limit, "fail",
                          f"{violations:,} of {n:,} Maya cues fired less than {_num(cooldown)} "
                          f"minutes after the same user's previous cue (shortest gap "
                          f"{_num(cues.get('min_gap_minutes'))} min).", **details)
    return _criterion(cid, violations, limit, "pass",
                      f"All {n:,} Maya cues respected the {_num(cooldown)}-minute cooldown.",
                      **details)


def _window_text(plan: Plan, day: int, window_from: int | None) -> str:
    if window_from is None or window_from == day:
        return _day(plan, day)
    return f"days {window_from}-{day} ({plan.day_start(window_from).date()} to " \
           f"{plan.day_start(day).date()})"


def _from_window_stat(cid: str, stat: StatResult, plan: Plan, day: int,
                      window_from: int | None, **extra: Any) -> CriterionResult:
    """A window statistic (already judged by the tolerance region) as a criterion."""
    details: dict[str, Any] = {"ci_low": stat.ci_low, "ci_high": stat.ci_high,
                               "p_value": stat.p_value, "n": stat.n, "method": stat.method,
                               "window_from": window_from if window_from is not None else day,
                               "window_to": day, "tolerance": plan.tolerance.get(cid, 0.0),
                               **{k: v for k, v in stat.details.items() if k != "code"}, **extra}
    reason = stat.sentence
    if window_from is not None and window_from != day:
        reason += f" Judged over {_window_text(plan, day, window_from)}."
    return _criterion(cid, stat.estimate, threshold(plan, cid, day), stat.status, reason,
                      _code=stat.details.get("code", ""), **details)


def _window_ratio(win: Mapping[str, Any], prefix: str) -> RatioStat:
    vals = [win.get(f"{prefix}_{k}") for k in ("n", "num", "den", "num2", "den2", "numden")]
    if vals[0] is None or not vals[0] or vals[2] is None:
        return RatioStat(0, 0.0, 0.0, 0.0, 0.0, 0.0)
    # a NULL sum over present rows is a non-finite value in the data (NaN): keep it visible
    return RatioStat(int(vals[0]), *(math.nan if v is None else float(v) for v in vals[1:]))


def _stat_settings(plan: Plan) -> StatSettings:
    return StatSettings.from_plan(plan)


def error_rate(win: Mapping[str, Any], plan: Plan, day: int,
               window_from: int | None = None) -> CriterionResult:
    """Share of ``/api/whispers/context`` requests with status >= 400 over the criterion's
    window (the plan's SQL), judged by its upper bound: Wilson on the effective number of
    requests (clustered by minute), tolerance region."""
    cid = "error_rate"
    stat = proportion_vs_threshold(cid, _window_ratio(win, "errors"), threshold(plan, cid, day),
                                   _stat_settings(plan), "The error rate",
                                   tolerance=plan.tolerance.get(cid, 0.0), direction="max",
                                   unit="minute")
    if stat.status == "no_data":
        return _criterion(cid, None, threshold(plan, cid, day), "no_data",
                          f"No whispers requests on {_window_text(plan, day, window_from)}.")
    return _from_window_stat(cid, stat, plan, day, window_from, events=stat.details["positive"],
                             users=win.get("users"))


def weight_fallback_rate(win: Mapping[str, Any], plan: Plan, day: int,
                         window_from: int | None = None) -> CriterionResult:
    """Share of whispers requests with a weight source that used the fallback weights, judged
    like the error rate."""
    cid = "weight_fallback_rate"
    stat = proportion_vs_threshold(cid, _window_ratio(win, "fallbacks"),
                                   threshold(plan, cid, day), _stat_settings(plan),
                                   "The weight fallback rate",
                                   tolerance=plan.tolerance.get(cid, 0.0), direction="max",
                                   unit="minute")
    if stat.status == "no_data":
        return _criterion(cid, None, threshold(plan, cid, day), "no_data",
                          f"No whispers request with a weight source on "
                          f"{_window_text(plan, day, window_from)}.")
    return _from_window_stat(cid, stat, plan, day, window_from, users=win.get("users"))


def avg_response_ms(win: Mapping[str, Any], plan: Plan, day: int,
                    window_from: int | None = None) -> CriterionResult:
    """Mean duration of whispers requests over the window: ratio of sums clustered by minute
    (delta method, t interval), judged by its upper bound with the tolerance region."""
    cid = "avg_response_ms"
    stat = ratio_vs_threshold(cid, _window_ratio(win, "duration"), threshold(plan, cid, day),
                              "max", _stat_settings(plan), "The average response time",
                              unit="minutes", fmt="{:.1f} ms",
                              tolerance=plan.tolerance.get(cid, 0.0))
    if stat.status == "no_data":
        return _criterion(cid, None, threshold(plan, cid, day), "no_data",
                          f"No whispers requests on {_window_text(plan, day, window_from)}.")
    return _from_window_stat(cid, stat, plan, day, window_from, requests=win.get("requests"),
                             users=win.get("users"))


def p95_response_ms(win: Mapping[str, Any], ends: Sequence[float | None], plan: Plan, day: int,
                    window_from: int | None = None) -> CriterionResult:
    """p95 of the endpoint's durations over the window with a Woodruff interval whose
    standard error is clustered by minute and by user (the larger), judged by its upper bound
    with the tolerance region. ``ends``: the quantiles at :func:`p95_probabilities`."""
    cid = "p95_response_ms"
    thr = threshold(plan, cid, day)
    n = int(win.get("requests") or 0)
    est = win.get("quantile")
    se, deff = woodruff_se(_window_ratio(win, "qm"), _window_ratio(win, "qu"), 0.95, n)
    lo = ends[0] if len(ends) > 0 else None
    hi = ends[1] if len(ends) > 1 else None
    stat = quantile_vs_threshold(cid, n, est, lo, hi, int(win.get("qm_num") or 0), 0.95, thr,
                                 _stat_settings(plan), "The p95 latency of /api/whispers/context",
                                 tolerance=plan.tolerance.get(cid, 0.0),
                                 method="Woodruff interval, clustered by minute and by user",
                                 extra={"se_share": se, "design_effect": deff})
    if stat.status == "no_data":
        return _criterion(cid, None, thr, "no_data",
                          f"No whispers requests on {_window_text(plan, day, window_from)}.")
    return _from_window_stat(cid, stat, plan, day, window_from, users=win.get("users"))


def p95_probabilities(win: Mapping[str, Any], plan: Plan) -> list[float]:
    """Probabilities whose quantiles bound the p95 (Woodruff): ``0.95 -+ z se``."""
    n = int(win.get("requests") or 0)
    if n == 0:
        return []
    se, _ = woodruff_se(_window_ratio(win, "qm"), _window_ratio(win, "qu"), 0.95, n)
    z = float(stats.norm.isf(_stat_settings(plan).alpha))
    return [0.95 - z * se, 0.95 + z * se]


def uptime(avail: Mapping[str, Any], plan: Plan, day: int,
           window_from: int | None = None) -> CriterionResult:
    """Share of counted minutes in which the endpoint was up, i.e. fewer than half of the
    minute's requests got a server error (status >= 500), over the window. Minutes without
    traffic are neither up nor down. Judged with a Wilson interval on the minutes and the
    tolerance region: pass when the lower bound clears ``uptime - tolerance``, fail when the
    upper bound is below ``uptime``."""
    cid = "uptime"
    limit = threshold(plan, cid, day)
    observed = int(avail.get("observed_minutes") or 0)
    counted = int(avail.get("counted_minutes") or 0)
    down = int(avail.get("down_minutes") or 0)
    tol = plan.tolerance.get(cid, 0.0)
    where = _window_text(plan, day, window_from)
    details = {"observed_minutes": observed, "counted_minutes": counted, "down_minutes": down,
               "min_minute_requests": plan.criteria.min_minute_requests, "tolerance": tol,
               "window_from": window_from if window_from is not None else day, "window_to": day}
    if observed == 0:
        return _criterion(cid, None, limit, "no_data", f"No whispers requests on {where}.",
                          **details)
    if counted == 0:
        return _criterion(cid, None, limit, "inconclusive",
                          f"No minute of {where} had {plan.criteria.min_minute_requests}"
                          f" or more requests; uptime cannot be measured.", **details)
    value = 1.0 - down / counted
    alpha = _stat_settings(plan).alpha
    lo, hi = proportion_confint(counted - down, counted, alpha=2 * alpha, method="wilson")
    details |= {"ci_low": float(lo), "ci_high": float(hi), "ci_method": "wilson"}
    status = threshold_status(float(lo), float(hi), limit, "min", tol)
    text = (f"Uptime {_pct(value, 2)} ({down} down of {counted:,} counted minutes on {where}; "
            f"{1 - 2 * alpha:.0%} CI {_pct(lo, 2)} to {_pct(hi, 2)})")
    verdict = {"pass": f"meets the {_pct(limit)} target (tolerance {_pct(tol, 1)}).",
               "fail": f"is shown below the {_pct(limit)} target.",
               "inconclusive": f"cannot yet be shown to meet the {_pct(limit)} target: too "
                               f"few minutes or too many down."}[status]
    return _criterion(cid, value, limit, status, f"{text} {verdict}",
                      _code={"fail": "threshold_missed"}.get(status, ""), **details)


def critical_bugs(tickets: Mapping[str, Any] | None, plan: Plan, day: int) -> CriterionResult:
    """Critical-priority bug tickets about whispers created on the day (at most
    ``criteria.critical_bugs``). ``tickets`` None: the export has no support_tickets table."""
    cid = "critical_bugs"
    limit = threshold(plan, cid, day)
    if tickets is None:
        return _criterion(cid, None, limit, "no_data",
                          "The export has no support_tickets table; critical bugs cannot be "
                          "counted.")
    count = int(tickets.get("critical_bugs") or 0)
    ids = list(tickets.get("critical_bug_ids") or [])
    status = _compare(count, limit, "max")
    if status == "fail":
        return _criterion(cid, count, limit, "fail",
                          f"{count} critical bug ticket(s) about whispers on {_day(plan, day)} "
                          f"({', '.join(ids[:3])}).", ticket_ids=ids)
    return _criterion(cid, count, limit, "pass",
                      f"No critical bug ticket about whispers on {_day(plan, day)}.", ticket_ids=ids)


# ---------------------------------------------------------------------------------------
# criteria from the statistics package


def from_stat(cid: str, stat: StatResult | None, plan: Plan, day: int,
              missing_reason: str | None = None) -> CriterionResult:
    """Map a :class:`StatResult` onto the criterion ``cid``: its status (which already applies
    the plan threshold) is kept, value = estimate, CI / p-value / n / method in details.

    Where the plan's threshold is on the p-value (``srm``: flagged when p < srm_p_value) the
    value is the p-value, so value and threshold are on one scale; the estimate (the observed
    treatment share) goes to details."""
    limit = threshold(plan, cid, day)
    if stat is None:
        return _criterion(cid, None, limit, "no_data",
                          missing_reason or f"The statistics package gave no {cid} result.")
    details: dict[str, Any] = {"ci_low": stat.ci_low, "ci_high": stat.ci_high,
                               "p_value": stat.p_value, "n": stat.n, "method": stat.method,
                               "metric": stat.metric}
    if stat.details:
        details["stat"] = dict(stat.details)
    code = str(stat.details.get("code", "")) if stat.details else ""
    if code not in REASON_CODES:
        code = ""
    if SPECS[cid].unit == "p-value":
        details["estimate"] = stat.estimate
        return _criterion(cid, stat.p_value, limit, stat.status, stat.sentence, _code=code,
                          **details)
    return _criterion(cid, stat.estimate, stat.threshold if stat.threshold is not None else limit,
                      stat.status, stat.sentence, _code=code, **details)


# ---------------------------------------------------------------------------------------
# triggers


def _trigger(tid: str, value: float | None, limit: float | None, status: Status, reason: str,
             unit: str, **details: Any) -> CriterionResult:
    return CriterionResult(id=tid, kind="trigger", value=value, threshold=limit, status=status,
                           reason=reason, unit=unit, details=dict(details))


def windows_from_runs(trigger: str, runs: pd.DataFrame, required_minutes: int) -> tuple[Window, ...]:
    """Runs (start, end, minutes, peak) from the SQL as :class:`Window` objects."""
    if runs is None or runs.empty:
        return ()
    return tuple(
        Window(trigger, pd.Timestamp(r.start).to_pydatetime(), pd.Timestamp(r.end).to_pydatetime(),
               int(r.minutes), float(r.peak), int(r.minutes) >= required_minutes)
        for r in runs.itertuples(index=False)
    )


def _minute_trigger(tid: str, runs: pd.DataFrame, avail: Mapping[str, Any], level: float,
                    required: int, what: str, fmt: Any, plan: Plan, day: int) -> CriterionResult:
    observed = int(avail.get("observed_minutes") or 0)
    counted = int(avail.get("counted_minutes") or 0)
    windows = windows_from_runs(tid, runs, required)
    longest = max((w.minutes for w in windows), default=0)
    min_req = plan.criteria.min_minute_requests
    details = {"level": level, "required_minutes": required, "observed_minutes": observed,
               "counted_minutes": counted, "min_minute_requests": min_req,
               "windows": [w.to_dict() for w in windows]}
    if observed == 0:
        return _trigger(tid, None, required, "no_data",
                        f"No whispers requests on {_day(plan, day)}: {what} could not be watched.",
                        "minutes", **details)
    fired = [w for w in windows if w.fired]
    if fired:
        w = max(fired, key=lambda x: x.minutes)
        return _trigger(tid, longest, required, "fail",
                        f"Rollback trigger: {what} above {fmt(level)} for {w.minutes} consecutive "
                        f"minutes from {w.start:%H:%M} to {w.end:%H:%M} UTC (peak {fmt(w.peak)}; "
                        f"trigger at {required} minutes).", "minutes", **details)
    if counted < required:
        return _trigger(tid, longest, required, "inconclusive",
                        f"Only {counted} minute(s) of {_day(plan, day)} had {min_req} or more "
                        f"requests; a {required}-minute run of {what} above {fmt(level)} could "
                        f"not be observed.", "minutes", **details)
    return _trigger(tid, longest, required, "pass",
                    f"No run of {required}+ minutes with {what} above {fmt(level)} "
                    f"(longest {longest} minute(s) over {counted:,} counted minutes).",
                    "minutes", **details)


def trigger_error_rate(runs: pd.DataFrame, avail: Mapping[str, Any], plan: Plan,
                       day: int) -> CriterionResult:
    """Fires when the per-minute error rate stays strictly above ``triggers.error_rate`` for at
    least ``triggers.error_rate_minutes`` consecutive counted minutes. ``runs`` come from
    :func:`whispers_lab.queries.monitoring.minute_runs` with that level."""
    t = plan.triggers
    return _minute_trigger("trigger_error_rate", runs, avail, t.error_rate, t.error_rate_minutes,
                           "the error rate", lambda x: _pct(x), plan, day)


def trigger_latency(runs: pd.DataFrame, avail: Mapping[str, Any], plan: Plan,
                    day: int) -> CriterionResult:
    """Fires when the per-minute average duration stays strictly above
    ``triggers.avg_response_ms`` for at least ``triggers.avg_response_minutes`` counted minutes."""
    t = plan.triggers
    return _minute_trigger("trigger_latency", runs, avail, t.avg_response_ms,
                           t.avg_response_minutes, "the average response time",
                           lambda x: f"{_num(x)} ms", plan, day)


def _ticket_trigger(tid: str, tickets: Mapping[str, Any] | None, key: str, ids_key: str,
                    limit: int, what: str, plan: Plan, day: int) -> CriterionResult:
    if tickets is None:
        return _trigger(tid, None, limit, "no_data",
                        f"The export has no support_tickets table; {what} cannot be seen.",
                        "tickets")
    count = int(tickets.get(key) or 0)
    ids = list(tickets.get(ids_key) or [])
    if count > limit:
        return _trigger(tid, count, limit, "fail",
                        f"Rollback trigger: {count} {what} on {_day(plan, day)} "
                        f"({', '.join(ids[:3])}).", "tickets", ticket_ids=ids)
    return _trigger(tid, count, limit, "pass", f"No {what} on {_day(plan, day)}.", "tickets",
                    ticket_ids=ids)


def trigger_privacy(tickets: Mapping[str, Any] | None, plan: Plan, day: int) -> CriterionResult:
    """Fires on more than ``triggers.privacy_tickets`` privacy tickets about whispers."""
    return _ticket_trigger("trigger_privacy", tickets, "privacy", "privacy_ids",
                           plan.triggers.privacy_tickets,
                           "privacy ticket(s) about whispers", plan, day)


def trigger_critical_bug(tickets: Mapping[str, Any] | None, plan: Plan,
                         day: int) -> CriterionResult:
    """Fires on more than ``triggers.critical_bugs`` critical bug tickets about whispers."""
    return _ticket_trigger("trigger_critical_bug", tickets, "critical_bugs", "critical_bug_ids",
                           plan.triggers.critical_bugs, "critical bug ticket(s) about whispers",
                           plan, day)


def trigger_db(baseline: Mapping[str, Any], day_minutes: int, runs: pd.DataFrame, plan: Plan,
               day: int) -> CriterionResult:
    """Fires when db ``p95_query_ms`` stays strictly above ``triggers.db_p95_ratio`` x the
    pre-rollout median for at least ``triggers.db_minutes`` consecutive observed minutes.

    ``baseline``: minutes and median_p95_ms before day 0; ``day_minutes``: db_metrics minutes on
    the day; ``runs`` from :func:`whispers_lab.queries.monitoring.db_runs` at that limit."""
    tid = "trigger_db"
    t = plan.triggers
    base_minutes = int(baseline.get("minutes") or 0)
    median = baseline.get("median_p95_ms")
    windows = windows_from_runs(tid, runs, t.db_minutes)
    longest = max((w.minutes for w in windows), default=0)
    limit_ms = None if median is None else t.db_p95_ratio * float(median)
    details = {"baseline_minutes": base_minutes, "baseline_median_ms": median,
               "limit_ms": limit_ms, "ratio": t.db_p95_ratio, "required_minutes": t.db_minutes,
               "day_minutes": int(day_minutes), "windows": [w.to_dict() for w in windows]}
    if base_minutes < t.db_min_baseline_minutes or median is None:
        return _trigger(tid, None, t.db_minutes, "no_data",
                        f"Only {base_minutes} pre-rollout minute(s) of db_metrics (need "
                        f"{t.db_min_baseline_minutes}); no baseline to judge database health.",
                        "minutes", **details)
    if day_minutes == 0:
        return _trigger(tid, None, t.db_minutes, "no_data",
                        f"No db_metrics on {_day(plan, day)}.", "minutes", **details)
    fired = [w for w in windows if w.fired]
    if fired:
        w = max(fired, key=lambda x: x.minutes)
        return _trigger(tid, longest, t.db_minutes, "fail",
                        f"Rollback trigger: database p95 above {_num(limit_ms)} ms "
                        f"({_num(t.db_p95_ratio)}x the pre-rollout median {_num(median)} ms) for "
                        f"{w.minutes} consecutive minutes from {w.start:%H:%M} to {w.end:%H:%M} "
                        f"UTC (peak {_num(w.peak)} ms).", "minutes", **details)
    if day_minutes < t.db_minutes:
        return _trigger(tid, longest, t.db_minutes, "inconclusive",
                        f"Only {day_minutes} minute(s) of db_metrics on {_day(plan, day)}; a "
                        f"{t.db_minutes}-minute degradation could not be observed.", "minutes",
                        **details)
    return _trigger(tid, longest, t.db_minutes, "pass",
                    f"Database p95 never stayed above {_num(limit_ms)} ms "
                    f"({_num(t.db_p95_ratio)}x baseline) for {t.db_minutes}+ minutes "
                    f"(longest {longest} minute(s)).", "minutes", **details)


def results_by_id(results: Sequence[CriterionResult]) -> dict[str, CriterionResult]:
    """Index results by id (the last one wins on a repeated id)."""
    return {r.id: r for r in results}


# ---------------------------------------------------------------------------------------
# served against planned (issue 14)


def _one_sided_wilson(events: int, n: int, alpha: float) -> tuple[float | None, float | None]:
    if n <= 0:
        return (None, None)
    lo, hi = proportion_confint(events, n, alpha=2 * alpha, method="wilson")
    return (float(lo), float(hi))


def assignment_integrity(counts: pd.DataFrame, share: StatResult | None, plan: Plan, day: int,
                         *, state_sentence: str = "") -> CriterionResult:
    """Every user active on the day served what the rollout's state plans for them.

    ``counts``: the day's rows of :func:`whispers_lab.queries.state.served_vs_planned` (per
    category: users, planned_control, planned_treatment, unsure_only, control_served_whispers,
    treatment_served_control); ``share``: the bucket-share test of the day's active randomised
    users (:func:`whispers_lab.stats.srm.srm_test` on the per-interval counts; None: not run).

    Tolerance ``b = criteria.assignment_mismatch_rate`` for each kind of mismatch (control
    users served whispers, enabled users served control). **fail** (code
    ``assignment_broken``) when either rate's one-sided lower bound (Wilson, ``alpha`` of the
    guardrails) is above ``b``, or the bucket share is off (``p < srm_p_value``); **pass**
    when both observed rates are at most ``b``, each on at least ``max(min_group_users,
    ceil(1 / b))`` users (so a single mismatch could show); otherwise **inconclusive**;
    **no_data** when nobody was active."""
    cid = "assignment_integrity"
    tol = float(threshold(plan, cid, day) or 0.0)
    alpha = _stat_settings(plan).alpha
    rows = counts if counts is not None else pd.DataFrame()

    def total(col: str) -> int:
        return int(rows[col].sum()) if len(rows) and col in rows else 0

    users, unsure = total("users"), total("unsure_only")
    n_c, a = total("planned_control"), total("control_served_whispers")
    n_t, b = total("planned_treatment"), total("treatment_served_control")
    rate_a = a / n_c if n_c else None
    rate_b = b / n_t if n_t else None
    lo_a, hi_a = _one_sided_wilson(a, n_c, alpha)
    lo_b, hi_b = _one_sided_wilson(b, n_t, alpha)
    need = max(plan.criteria.min_group_users, math.ceil(round(1.0 / tol, 9)) if tol > 0 else 1)
    by_cat = ({str(r.category): {"users": int(r.users), "planned_control": int(r.planned_control),
                                 "planned_treatment": int(r.planned_treatment),
                                 "control_served_whispers": int(r.control_served_whispers),
                                 "treatment_served_control": int(r.treatment_served_control)}
               for r in rows.itertuples(index=False)} if len(rows) else {})
    details: dict[str, Any] = {
        "users": users, "planned_control": n_c, "planned_treatment": n_t, "unsure_only": unsure,
        "control_served_whispers": a, "treatment_served_control": b,
        "control_served_whispers_rate": rate_a, "treatment_served_control_rate": rate_b,
        "ci_low_control": lo_a, "ci_high_control": hi_a, "ci_low_treatment": lo_b,
        "ci_high_treatment": hi_b, "ci_method": "wilson, one-sided", "tolerance": tol,
        "min_users": need, "by_category": by_cat,
        "bucket_share": share.to_dict() if share is not None else None,
    }
    values = [r for r in (rate_a, rate_b) if r is not None]
    value = max(values) if values else None
    tail = f" {state_sentence}" if state_sentence else ""
    if users == 0:
        return _criterion(cid, None, tol, "no_data",
                          f"Nobody was active on {_day(plan, day)}; what was served could not be "
                          f"compared with the rollout's state.{tail}", **details)
    seen = (f"Of {users:,} active user(s) on {_day(plan, day)}, {a:,} of {n_c:,} planned as "
            f"control were served whispers ({_pct(rate_a, 2)}) and {b:,} of {n_t:,} planned as "
            f"enabled were served control ({_pct(rate_b, 2)})")
    if unsure:
        seen += f"; {unsure:,} changed stage at a time not known and are not judged"
    problems = []
    if n_c and lo_a is not None and lo_a > tol:
        problems.append(f"control users served whispers above the {_pct(tol)} tolerance "
                        f"(lower bound {_pct(lo_a, 2)})")
    if n_t and lo_b is not None and lo_b > tol:
        problems.append(f"enabled users served control above the {_pct(tol)} tolerance "
                        f"(lower bound {_pct(lo_b, 2)})")
    if share is not None and share.status == "fail":
        problems.append(f"the share of the day's active users served whispers is off: "
                        f"{share.sentence}")
    if problems:
        return _criterion(cid, value, tol, "fail",
                          f"Assignment broken: {'; '.join(problems)}. {seen}.{tail}",
                          _code="assignment_broken", **details)
    within = all(r is None or r <= tol for r in (rate_a, rate_b))
    enough = (n_c >= need or n_c == 0) and (n_t >= need or n_t == 0) and (n_c + n_t) > 0
    if within and enough:
        return _criterion(cid, value, tol, "pass",
                          f"{seen}: within the {_pct(tol)} tolerance.{tail}", **details)
    if not within:
        why = (f"a mismatch rate is above the {_pct(tol)} tolerance but not yet shown to be")
    else:
        why = f"too few users to show the rates within {_pct(tol)} (need {need:,} of each kind)"
    return _criterion(cid, value, tol, "inconclusive", f"{seen}: {why}.{tail}", **details)


def dilution(counts: pd.DataFrame) -> dict[str, Any]:
    """How much the by-plan (intention-to-treat) comparisons are diluted, from the per-day rows
    of :func:`whispers_lab.queries.state.served_vs_planned` over the comparisons' days: of the
    randomised users' active days planned as control, the share served whispers (``p_c``), of
    those planned as enabled, the share served control (``p_t``); a by-plan difference
    estimates about ``1 - p_c - p_t`` of the effect of being served whispers."""
    rand = counts.loc[counts["category"].isin(["bucketed", "holdout"])] if len(counts) else counts
    n_c = int(rand["planned_control"].sum()) if len(rand) else 0
    n_t = int(rand["planned_treatment"].sum()) if len(rand) else 0
    a = int(rand["control_served_whispers"].sum()) if len(rand) else 0
    b = int(rand["treatment_served_control"].sum()) if len(rand) else 0
    p_c = a / n_c if n_c else 0.0
    p_t = b / n_t if n_t else 0.0
    days = sorted(int(d) for d in rand["day"].unique()) if len(rand) else []
    factor = max(0.0, 1.0 - p_c - p_t)
    sentence = ""
    if a or b:
        sentence = (f" By-plan comparison diluted: on days {days[0]}-{days[-1]}, {_pct(p_c, 2)} of "
                    f"the control user-days were served whispers and {_pct(p_t, 2)} of the "
                    f"enabled user-days were served control, so the difference estimates about "
                    f"{factor:.0%} of the effect of being served whispers.")
    return {"user_days_control": n_c, "user_days_treatment": n_t,
            "control_served_whispers": a, "treatment_served_control": b,
            "control_served_whispers_rate": p_c, "treatment_served_control_rate": p_t,
            "factor": factor, "days": [days[0], days[-1]] if days else [], "sentence": sentence}


# ---------------------------------------------------------------------------------------
# sentiment (issue 15)


def sentiment(stat: StatResult | None, plan: Plan, day: int,
              missing_reason: str | None = None) -> CriterionResult:
    """"Positive user sentiment" (Phase 2): the net score of the survey's answers over the
    plan's ``[sentiment]`` window (:func:`whispers_lab.stats.sentiment.net_score_vs_threshold`:
    clustered by user, tolerance region, at least ``min_answers`` answers), mapped like every
    statistic (:func:`from_stat`). ``no_data`` when the plan defines no ``[sentiment]``."""
    if plan.sentiment is None:
        return _criterion("sentiment", None, None, "no_data",
                          "The plan defines no [sentiment] table, so sentiment is not judged.")
    details_from = from_stat("sentiment", stat, plan, day, missing_reason)
    if stat is None or not stat.details:
        return details_from
    # the answers and shares up front, where the report and the summary read them
    keep = ("answers", "users", "share_positive", "share_negative", "min_answers")
    extra = {k: stat.details[k] for k in keep if k in stat.details}
    return CriterionResult(id=details_from.id, kind=details_from.kind, value=details_from.value,
                           threshold=details_from.threshold, status=details_from.status,
                           reason=details_from.reason, unit=details_from.unit,
                           details=details_from.details | extra, code=details_from.code)
