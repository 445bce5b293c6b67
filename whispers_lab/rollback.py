"""Rollback confirmation ("Monitor for 15 minutes to confirm rollback") as pure functions.

After ``NEXT_PUBLIC_WHISPERS_ENABLED`` is set to false at ``disabled_at`` the export must show,
within ``rollback.monitor_minutes`` (15):

``whispers_traffic``
    requests to ``/api/whispers/context`` stopped. The first ``allowance_minutes`` after the flip
    are allowed anything (requests already in flight, clients that loaded the page before the
    flip, a CDN that still serves the old bundle until its cache is cleared: that is where
    "Clear the CDN cache for API routes" shows). From then to the end of the monitor window at
    most ``residual_share`` of the normal rate may remain (stragglers with an old page open):
    ``allowed = floor(residual_share x requests per minute in the baseline window x minutes)``.
    The normal rate is the baseline's (before the incident), not the hour before the flip, whose
    traffic the incident may have changed. No whispers traffic in the baseline window means there
    was nothing to stop that could be seen: inconclusive.
``whispers_shown``
    the same rule for ``whispers_shown`` telemetry events: no whispers on screens any more.
``recap_errors`` / ``recap_latency``
    the recap endpoint (the page whispers live on) is back within its pre-incident level: over
    ``[disabled_at + allowance, disabled_at + monitor)`` its error rate (Fisher's exact test,
    one-sided) and mean latency (Welch's t-test, one-sided) against the baseline window before
    the incident. ``pass``: not significantly above the baseline at ``alpha`` *and* within the
    tolerance (error rate at most ``max_error_rate_increase`` above, mean latency at most
    ``max_latency_ratio`` times the baseline), on at least ``min_recap_requests`` requests.
    ``fail``: significantly above *and* beyond the tolerance. Anything else is inconclusive.

The verdict: ``too_early`` when the export does not reach ``disabled_at + monitor_minutes``;
``confirmed`` when every check passes; otherwise ``not_confirmed`` (a failing check, or one that
cannot be shown). The settings live in the plan file under ``[rollback.confirmation]``
(every one ADDED; defaults below). See ``docs/rollback-confirmation.md``.
"""

from __future__ import annotations

import datetime as dt
import math
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from .errors import PlanError
from .plan import Plan
from .results import _clean

Verdict = Literal["confirmed", "not_confirmed", "too_early"]
CheckStatus = Literal["pass", "fail", "inconclusive"]
VERDICTS: tuple[str, ...] = ("confirmed", "not_confirmed", "too_early")
CHECK_IDS: tuple[str, ...] = ("whispers_traffic", "whispers_shown", "recap_errors",
                              "recap_latency")


@dataclass(frozen=True)
class Settings:
    """How the confirmation is judged (``[rollback.confirmation]`` of the plan)."""

    monitor_minutes: int = 15
    allowance_minutes: int = 5
    residual_share: float = 0.02
    baseline_minutes: int = 120
    recap_endpoint: str = "/api/recap"
    min_recap_requests: int = 100
    max_error_rate_increase: float = 0.01
    max_latency_ratio: float = 1.2
    alpha: float = 0.05

    @property
    def post_minutes(self) -> int:
        """Minutes judged after the allowance."""
        return self.monitor_minutes - self.allowance_minutes


def settings_from_plan(plan: Plan) -> Settings:
    """The plan's ``rollback.monitor_minutes`` and its ``[rollback.confirmation]`` table (read
    from the plan file; defaults for missing keys). A bad value raises :class:`PlanError`
    naming the key."""
    raw: Mapping[str, Any] = {}
    if plan.source != "<memory>":
        try:
            data = tomllib.loads(Path(plan.source).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise PlanError(f"plan file {plan.source!r} cannot be read: {exc}") from None
        raw = (data.get("rollback") or {}).get("confirmation") or {}
    if not isinstance(raw, Mapping):
        raise PlanError(f"{plan.source}: key 'rollback.confirmation' must be a table")
    known = {f.name: f for f in fields(Settings)}
    values: dict[str, Any] = {"monitor_minutes": plan.rollback_monitor_minutes}
    for key, value in raw.items():
        name = f"rollback.confirmation.{key}"
        if key not in known or key == "monitor_minutes":
            raise PlanError(f"{plan.source}: key '{name}' is not a known confirmation setting "
                            f"(known: {', '.join(k for k in known if k != 'monitor_minutes')})")
        default = getattr(Settings(), key)
        if isinstance(default, str):
            if not isinstance(value, str) or not value.strip():
                raise PlanError(f"{plan.source}: key '{name}' must be a non-empty string")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or \
                (isinstance(default, int) and not isinstance(value, int)) or value < 0:
            kind = "a whole number >= 0" if isinstance(default, int) else "a number >= 0"
            raise PlanError(f"{plan.source}: key '{name}' must be {kind}, got {value!r}")
        values[key] = value
    s = Settings(**values)
    if not 0 < s.allowance_minutes < s.monitor_minutes:
        raise PlanError(f"{plan.source}: key 'rollback.confirmation.allowance_minutes' "
                        f"({s.allowance_minutes}) must be between 1 and monitor_minutes - 1 "
                        f"({s.monitor_minutes - 1})")
    if not 0 < s.alpha < 1 or s.residual_share >= 1 or s.max_latency_ratio < 1:
        raise PlanError(f"{plan.source}: [rollback.confirmation] needs 0 < alpha < 1, "
                        f"residual_share < 1 and max_latency_ratio >= 1")
    return s


@dataclass(frozen=True)
class Check:
    """One confirmation check."""

    id: str
    status: CheckStatus
    value: float | None
    limit: float | None
    reason: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _clean(asdict(self))


@dataclass(frozen=True, eq=False)
class Confirmation:
    """The verdict and everything it rests on."""

    verdict: Verdict
    disabled_at: dt.datetime
    monitor_end: dt.datetime
    data_end: dt.datetime | None
    checks: tuple[Check, ...]
    reasons: tuple[str, ...]
    baseline: tuple[dt.datetime, dt.datetime]
    baseline_source: str
    settings: Settings
    minutes: pd.DataFrame
    actions: tuple[str, ...] = ()

    def check(self, cid: str) -> Check:
        for c in self.checks:
            if c.id == cid:
                return c
        raise KeyError(cid)

    def to_dict(self, plan: Plan) -> dict[str, Any]:
        """The ``confirmation.json`` document (docs/rollback-confirmation.md)."""
        day = plan.day_of(self.disabled_at)
        per_minute = []
        for r in self.minutes.itertuples(index=False):
            per_minute.append({
                "minute": pd.Timestamp(r.minute).isoformat(),
                "whispers_requests": int(r.whispers_requests),
                "shown_events": int(r.shown_events),
                "recap_requests": int(r.recap_requests),
                "recap_errors": int(r.recap_errors),
                "recap_error_rate": None if pd.isna(r.recap_error_rate) else float(r.recap_error_rate),
                "recap_avg_ms": None if pd.isna(r.recap_avg_ms) else round(float(r.recap_avg_ms), 3),
            })
        return _clean({
            "schema_version": 1,
            "kind": "rollback_confirmation",
            "verdict": self.verdict,
            "disabled_at": self.disabled_at.isoformat(),
            "rollout_day": day,
            "monitor_end": self.monitor_end.isoformat(),
            "data_end": self.data_end.isoformat() if self.data_end else None,
            "baseline": {"start": self.baseline[0].isoformat(), "end": self.baseline[1].isoformat(),
                         "source": self.baseline_source},
            "reasons": list(self.reasons),
            "actions": list(self.actions),
            "checks": [c.to_dict() for c in self.checks],
            "settings": asdict(self.settings),
            "plan": {"name": plan.name, "source": plan.source},
            "per_minute": per_minute,
        })


# ---------------------------------------------------------------------------------------
# checks


def _fmt_time(t: Any) -> str:
    return "" if t is None else f"{pd.Timestamp(t):%H:%M:%S}"


def stopped_check(cid: str, what: str, allowance_count: int, after_count: int,
                  base_count: int, settings: Settings, first_after: Any = None,
                  last_after: Any = None, observed_minutes: int | None = None) -> Check:
    """Traffic (``what``) stopped: ``after_count`` events from the end of the allowance to the
    end of the monitor window against ``base_count`` in the ``baseline_minutes`` of the
    baseline window (see the module docstring)."""
    minutes = settings.post_minutes if observed_minutes is None else observed_minutes
    pre_rate = base_count / settings.baseline_minutes
    allowed = math.floor(settings.residual_share * pre_rate * minutes + 1e-9)
    details = {"baseline_count": base_count, "baseline_per_minute": pre_rate,
               "within_allowance": allowance_count, "after_allowance": after_count,
               "allowed_after_allowance": allowed, "allowance_minutes": settings.allowance_minutes,
               "judged_minutes": minutes, "first_after": str(first_after) if first_after else None,
               "last_after": str(last_after) if last_after else None}
    share = after_count / (pre_rate * minutes) if pre_rate > 0 and minutes > 0 else None
    details["share_of_pre_flip_rate"] = share
    if after_count > allowed:
        span = (f" (from {_fmt_time(first_after)} to {_fmt_time(last_after)} UTC)"
                if first_after is not None else "")
        pct = f", {100 * share:.0f}% of the normal rate" if share is not None else ""
        return Check(cid, "fail", float(after_count), float(allowed),
                     f"{after_count:,} {what} in the {minutes} minutes after the "
                     f"{settings.allowance_minutes}-minute allowance{span}{pct}; at most "
                     f"{allowed} allowed: clients are still being served whispers.", details)
    if base_count == 0:
        return Check(cid, "inconclusive", float(after_count), float(allowed),
                     f"No {what} in the baseline window: there was no traffic to see "
                     f"stopping.", details)
    return Check(cid, "pass", float(after_count), float(allowed),
                 f"{after_count} {what} after the {settings.allowance_minutes}-minute allowance "
                 f"(allowed {allowed}: {100 * settings.residual_share:g}% of the normal "
                 f"{pre_rate:,.1f} a minute; {allowance_count} within the allowance).", details)


def recap_error_check(post_errors: int, post_n: int, base_errors: int, base_n: int,
                      settings: Settings) -> Check:
    """The recap endpoint's error rate after the allowance against the baseline (one-sided
    Fisher exact test, tolerance ``max_error_rate_increase``)."""
    cid = "recap_errors"
    base = base_errors / base_n if base_n else None
    post = post_errors / post_n if post_n else None
    limit = None if base is None else base + settings.max_error_rate_increase
    details: dict[str, Any] = {"post_errors": post_errors, "post_requests": post_n,
                               "baseline_errors": base_errors, "baseline_requests": base_n,
                               "baseline_rate": base, "tolerance": settings.max_error_rate_increase,
                               "test": "Fisher exact, one-sided (after > baseline)"}
    if base_n < settings.min_recap_requests:
        return Check(cid, "inconclusive", post, limit,
                     f"Only {base_n} recap request(s) in the baseline window (need "
                     f"{settings.min_recap_requests}): no pre-incident level to compare with.",
                     details)
    if post_n < settings.min_recap_requests:
        return Check(cid, "inconclusive", post, limit,
                     f"Only {post_n} recap request(s) after the allowance (need "
                     f"{settings.min_recap_requests}) to show the error rate is back.", details)
    from scipy import stats as sps  # (here: scipy.stats is 0.6 s of every command's start)

    p = float(sps.fisher_exact([[post_errors, post_n - post_errors],
                                [base_errors, base_n - base_errors]],
                               alternative="greater").pvalue)
    details["p_value"] = p
    assert post is not None and base is not None and limit is not None
    above, beyond = p < settings.alpha, post > limit
    words = (f"recap error rate {100 * post:.2f}% ({post_errors} of {post_n}) against "
             f"{100 * base:.2f}% before the incident (p = {p:.3g})")
    if above and beyond:
        return Check(cid, "fail", post, limit, f"The {words}: still above its pre-incident "
                                               f"level.", details)
    if not above and not beyond:
        return Check(cid, "pass", post, limit, f"The {words}: back within its pre-incident "
                                               f"level.", details)
    why = ("significantly above the baseline though within the tolerance" if above
           else f"above the tolerance of +{100 * settings.max_error_rate_increase:.1f} points, "
                f"though not significantly")
    return Check(cid, "inconclusive", post, limit, f"The {words} is {why}.", details)


def recap_latency_check(post_n: int, post_sum: float, post_sumsq: float, base_n: int,
                        base_sum: float, base_sumsq: float, settings: Settings) -> Check:
    """The recap endpoint's mean latency after the allowance against the baseline (one-sided
    Welch t-test from sufficient statistics, tolerance ``max_latency_ratio``)."""
    cid = "recap_latency"
    details: dict[str, Any] = {"post_requests": post_n, "baseline_requests": base_n,
                               "max_ratio": settings.max_latency_ratio,
                               "test": "Welch t-test, one-sided (after > baseline)"}
    base_mean = base_sum / base_n if base_n else None
    post_mean = post_sum / post_n if post_n else None
    limit = None if base_mean is None else base_mean * settings.max_latency_ratio
    details.update({"baseline_mean_ms": base_mean, "post_mean_ms": post_mean})
    if base_n < settings.min_recap_requests:
        return Check(cid, "inconclusive", post_mean, limit,
                     f"Only {base_n} recap request(s) in the baseline window (need "
                     f"{settings.min_recap_requests}): no pre-incident level to compare with.",
                     details)
    if post_n < settings.min_recap_requests:
        return Check(cid, "inconclusive", post_mean, limit,
                     f"Only {post_n} recap request(s) after the allowance (need "
                     f"{settings.min_recap_requests}) to show the latency is back.", details)
    assert post_mean is not None and base_mean is not None and limit is not None

    def sd(n: int, s: float, ss: float) -> float:
        return math.sqrt(max(ss - s * s / n, 0.0) / (n - 1))

    post_sd, base_sd = sd(post_n, post_sum, post_sumsq), sd(base_n, base_sum, base_sumsq)
    from scipy import stats as sps

    t = sps.ttest_ind_from_stats(post_mean, post_sd, post_n, base_mean, base_sd, base_n,
                                 equal_var=False, alternative="greater")
    p = float(t.pvalue) if math.isfinite(t.pvalue) else (1.0 if post_mean <= base_mean else 0.0)
    details.update({"post_sd_ms": post_sd, "baseline_sd_ms": base_sd, "p_value": p})
    above, beyond = p < settings.alpha, post_mean > limit
    words = (f"recap mean latency {post_mean:,.1f} ms over {post_n:,} requests against "
             f"{base_mean:,.1f} ms before the incident (p = {p:.3g})")
    if above and beyond:
        return Check(cid, "fail", post_mean, limit, f"The {words}: still above its "
                                                    f"pre-incident level.", details)
    if not above and not beyond:
        return Check(cid, "pass", post_mean, limit, f"The {words}: back within its "
                                                    f"pre-incident level.", details)
    why = ("significantly above the baseline though within the tolerance" if above
           else f"more than {settings.max_latency_ratio:g}x the baseline, though not "
                f"significantly")
    return Check(cid, "inconclusive", post_mean, limit, f"The {words} is {why}.", details)


# ---------------------------------------------------------------------------------------
# the verdict


ACTIONS: dict[str, str] = {
    "whispers_traffic": "Clear the CDN cache for API routes (and check the flag really is false "
                        "in every environment), then run the confirmation again.",
    "whispers_shown": "Whispers are still on screens: clear the CDN cache and check that the "
                      "deployed bundle has NEXT_PUBLIC_WHISPERS_ENABLED=false.",
    "recap_errors": "The recap page still fails more than before the incident: investigate "
                    "beyond whispers (the root cause may not be whispers alone).",
    "recap_latency": "The recap page is still slower than before the incident: investigate "
                     "beyond whispers.",
}


def verdict_of(checks: tuple[Check, ...], covered: bool) -> Verdict:
    if not covered:
        return "too_early"
    return "confirmed" if all(c.status == "pass" for c in checks) else "not_confirmed"


def confirm(disabled_at: dt.datetime, data_end: dt.datetime | None, *,
            allowance: Mapping[str, Any], after: Mapping[str, Any], baseline: Mapping[str, Any],
            baseline_window: tuple[dt.datetime, dt.datetime], baseline_source: str,
            minutes: pd.DataFrame, settings: Settings) -> Confirmation:
    """Judge the rollback from the windows' aggregates (:func:`queries.rollback.window_stats`
    of the allowance, the rest of the monitor window and the baseline)."""
    monitor_end = disabled_at + dt.timedelta(minutes=settings.monitor_minutes)
    covered = data_end is not None and data_end >= monitor_end - dt.timedelta(seconds=1)
    after_start = disabled_at + dt.timedelta(minutes=settings.allowance_minutes)
    observed = settings.post_minutes
    if not covered:
        seen = 0.0 if data_end is None else (data_end - after_start).total_seconds() / 60
        observed = max(0, min(settings.post_minutes, math.floor(seen)))

    def n(m: Mapping[str, Any], key: str) -> int:
        return int(m.get(key) or 0)

    checks = (
        stopped_check("whispers_traffic", "requests to /api/whispers/context",
                      n(allowance, "whispers_requests"), n(after, "whispers_requests"),
                      n(baseline, "whispers_requests"), settings, after.get("first_whispers"),
                      after.get("last_whispers"), observed),
        stopped_check("whispers_shown", "whispers_shown events", n(allowance, "shown_events"),
                      n(after, "shown_events"), n(baseline, "shown_events"), settings,
                      observed_minutes=observed),
        recap_error_check(n(after, "recap_errors"), n(after, "recap_requests"),
                          n(baseline, "recap_errors"), n(baseline, "recap_requests"), settings),
        recap_latency_check(n(after, "recap_requests"), float(after.get("recap_sum_ms") or 0),
                            float(after.get("recap_sumsq_ms") or 0),
                            n(baseline, "recap_requests"),
                            float(baseline.get("recap_sum_ms") or 0),
                            float(baseline.get("recap_sumsq_ms") or 0), settings),
    )
    verdict = verdict_of(checks, covered)
    flip = f"{disabled_at:%Y-%m-%d %H:%M:%S} UTC"
    if verdict == "too_early":
        end = "holds no traffic" if data_end is None else f"ends at {data_end:%H:%M:%S} UTC"
        reasons = [f"Too early: the export {end}; confirming the rollback of {flip} needs it to "
                   f"cover {settings.monitor_minutes} minutes after the flip (until "
                   f"{monitor_end:%H:%M} UTC). Run again with a later export."]
        actions = ("Wait for an export that covers the monitor window, then run the "
                   "confirmation again.",)
    elif verdict == "confirmed":
        reasons = [f"Rollback of {flip} confirmed: whispers traffic and whispers on screens "
                   f"stopped, and the recap endpoint is back within its pre-incident level."]
        actions = ("Investigate the root cause before re-enabling (the plan's step 4).",)
    else:
        bad = [c for c in checks if c.status != "pass"]
        reasons = [f"Rollback of {flip} NOT confirmed: "
                   + ", ".join(f"{c.id} {c.status}" for c in bad) + "."]
        actions = tuple(ACTIONS[c.id] for c in bad if c.status == "fail") or (
            "Some checks could not be shown to pass; monitor longer or look at the per-minute "
            "chart, then run the confirmation again.",)
    reasons += [c.reason for c in checks]
    return Confirmation(verdict, disabled_at, monitor_end, data_end, checks, tuple(reasons),
                        baseline_window, baseline_source, settings, minutes, actions)


def baseline_window(disabled_at: dt.datetime, settings: Settings,
                    incident_start: dt.datetime | None = None,
                    source: str | None = None) -> tuple[tuple[dt.datetime, dt.datetime], str]:
    """The pre-incident window: the ``baseline_minutes`` before ``incident_start``; without
    one, the same clock time a day before the flip (assumed free of the incident)."""
    span = dt.timedelta(minutes=settings.baseline_minutes)
    if incident_start is not None:
        if incident_start > disabled_at:
            raise ValueError(f"the incident start {incident_start} is after the flip "
                             f"{disabled_at}")
        return ((incident_start - span, incident_start),
                source or f"the {settings.baseline_minutes} minutes before the incident "
                          f"started ({incident_start:%Y-%m-%d %H:%M} UTC)")
    end = disabled_at - dt.timedelta(days=1)
    return ((end - span, end),
            f"the {settings.baseline_minutes} minutes before the same time the day before "
            f"(no incident start known: pass --incident-start, or keep the day's ROLLBACK "
            f"report in the report folder)")
