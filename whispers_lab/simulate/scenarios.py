"""Planted problems ("scenarios"): their parameters, defaults, time windows and expected verdicts.

A scenario is named on the command line as ``NAME`` or ``NAME:key=value,...``, e.g.
``error_spike:day=9,start=14:00,minutes=15,level=0.08``. Every scenario has a ``day`` (default 9,
a 10% day) and its own parameters; :func:`parse_scenario` checks names, keys and values and
:func:`resolve` fixes the window in UTC. The effects themselves are applied by the generating
modules (activity, ranking, clicks, ops, feedback), which read the resolved scenarios.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import WhispersLabError
from ..plan import Plan
from .timeline import US_PER_MINUTE, Calendar, from_us


class SimulationError(WhispersLabError):
    """Bad simulator input: unknown scenario or key, bad value, window outside the period."""


@dataclass(frozen=True)
class ScenarioDef:
    name: str
    description: str
    defaults: Mapping[str, Any]
    kind: str  # "window": [start, start+minutes); "from_day": day start .. period end; "point"
    expected_id: str
    decision: str  # "ROLLBACK" | "NO_GO" | "unaffected" (a state scenario: nothing may fail)
    #: more expected facts for the truth file (rollback scenarios: the confirmation verdict)
    expected_extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def expected_key(self) -> str:
        return "trigger" if self.expected_id.startswith("trigger_") else "criterion"


_D = 9  # default day: a 10% rollout day
#: Least whispers requests per minute in an error/latency spike window (default ``min_requests``
#: is the larger of this and ``plan.criteria.min_minute_requests + 10``).
MIN_WINDOW_REQUESTS = 30

SCENARIOS: dict[str, ScenarioDef] = {s.name: s for s in (
    ScenarioDef("error_spike", "whispers endpoint error rate `level` for `minutes` (exact count "
                "per minute); each minute of the window carries at least `min_requests` requests",
                {"day": _D, "start": "14:00", "minutes": 15, "level": 0.12, "min_requests": 0},
                "window", "trigger_error_rate", "ROLLBACK"),
    ScenarioDef("latency_spike", "whispers duration lognormal with mean `ms` for `minutes`; each "
                "minute carries at least `min_requests` requests",
                {"day": _D, "start": "15:00", "minutes": 10, "ms": 420.0, "min_requests": 0},
                "window", "trigger_latency", "ROLLBACK"),
    ScenarioDef("ranking_timeouts", "`count` whispers requests in the window with ranking_ms > 200",
                {"day": _D, "start": "16:00", "minutes": 60, "count": 5},
                "window", "ranking_timeouts", "NO_GO"),
    ScenarioDef("fallback_surge", "share `level` of whispers requests in the window use fallback "
                "weights", {"day": _D, "start": "00:00", "minutes": 1440, "level": 0.10},
                "window", "weight_fallback_rate", "NO_GO"),
    ScenarioDef("device_weight_mismatch", "from `day`, share `share` (at least `min_users`) of "
                "treated multi-device users carry a stale weights_version on their other devices",
                {"day": _D, "share": 0.10, "min_users": 3},
                "from_day", "weight_persistence", "NO_GO"),
    ScenarioDef("cue_cooldown_violation", "on `day`, share `share` (at least `min_users`) of users "
                "with a Maya cue get a second cue 3-20 minutes after it",
                {"day": _D, "share": 0.2, "min_users": 3},
                "window", "cue_cooldown", "NO_GO"),
    ScenarioDef("retention_drop", "from `day`, the daily return probability of users already "
                "served treatment drops by `size` (absolute)", {"day": _D, "size": 0.08},
                "from_day", "retention", "ROLLBACK"),
    ScenarioDef("ctr_drop", "from `day`, true relevance is multiplied by `factor`",
                {"day": _D, "factor": 0.4}, "from_day", "ctr", "NO_GO"),
    ScenarioDef("low_feedback", "from `day`, survey answers have mean rating ~`rating` and "
                "fewer 'relevant'", {"day": _D, "rating": 3.2},
                "from_day", "feedback_score", "NO_GO"),
    ScenarioDef("critical_bug", "`count` critical bug ticket(s) about whispers at `start`",
                {"day": _D, "start": "11:00", "count": 1}, "point", "trigger_critical_bug", "ROLLBACK"),
    ScenarioDef("privacy_ticket", "`count` privacy ticket(s) about whispers at `start`",
                {"day": _D, "start": "12:00", "count": 1}, "point", "trigger_privacy", "ROLLBACK"),
    ScenarioDef("db_degradation", "db p95_query_ms x `factor` for `minutes`",
                {"day": _D, "start": "17:00", "minutes": 30, "factor": 3.0},
                "window", "trigger_db", "ROLLBACK"),
    ScenarioDef("srm", "from `day`, share `share` of users assigned control are served treatment "
                "(exposures say treatment, they get whispers)", {"day": _D, "share": 0.3},
                "from_day", "srm", "NO_GO"),
    ScenarioDef("telemetry_gap", "no telemetry at all for `hours` hours from `start`",
                {"day": _D, "start": "02:00", "hours": 3.0}, "window", "telemetry_flowing", "NO_GO"),
    ScenarioDef("rollback_clean", "incident of `minutes` from `start` (whispers error rate "
                "`level`, recap latency x `recap_factor`), then whispers switched off at its "
                "end: afterwards only requests within `inflight_seconds` of the flip",
                {"day": _D, "start": "18:30", "minutes": 20, "level": 0.12, "min_requests": 0,
                 "recap_factor": 1.6, "inflight_seconds": 90.0},
                "window", "trigger_error_rate", "ROLLBACK", {"confirmation": "confirmed"}),
    # issue 14: the rollout's actual state departs from the plan's calendar
    ScenarioDef("held_rollout", "NO_GO on `days` day(s) from `day`: the stage in force is held "
                "(a hold at a stage boundary keeps it one more day), GO otherwise; production "
                "follows the decisions and logs every change in flag_changes",
                {"day": _D, "days": 2}, "from_day", "srm", "unaffected",
                {"unaffected": ["srm", "assignment_integrity"]}),
    ScenarioDef("late_flip", "the stage change of `day` is applied at `start` UTC (after the "
                "morning report), not at midnight", {"day": 10, "start": "09:00"}, "point", "srm",
                "unaffected", {"unaffected": ["srm", "assignment_integrity"]}),
    ScenarioDef("stale_flags", "from `day`, share `share` of the users the stage keeps in "
                "control are served whispers at returning visits (a stale cached flag); with "
                "`direction=control`, that share of the users a stage switched on keep being "
                "served control", {"day": 10, "share": 0.05, "direction": "whispers"},
                "from_day", "assignment_integrity", "NO_GO"),
    ScenarioDef("rollback_stale_cdn", "as rollback_clean, but a stale CDN keeps serving a "
                "share `share` of the whispers requests (and whispers) after the flip",
                {"day": _D, "start": "18:30", "minutes": 20, "level": 0.12, "min_requests": 0,
                 "recap_factor": 1.6, "inflight_seconds": 90.0, "share": 0.5},
                "window", "trigger_error_rate", "ROLLBACK", {"confirmation": "not_confirmed"}),
)}


@dataclass(frozen=True)
class ScenarioRequest:
    """A scenario as named by the user, before its window is fixed."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Scenario:
    """A resolved scenario: every parameter set, window in epoch microseconds."""

    name: str
    day: int
    params: Mapping[str, Any]
    start_us: int
    end_us: int
    definition: ScenarioDef

    def covers(self, ts_us: Any) -> Any:
        """Whether timestamps fall in [start, end) (arrays welcome)."""
        return (ts_us >= self.start_us) & (ts_us < self.end_us)

    def truth(self, plan: Plan) -> dict[str, Any]:
        d = self.definition
        return {
            "name": self.name,
            "day": self.day,
            "start": from_us(self.start_us).isoformat(),
            "end": from_us(self.end_us).isoformat(),
            "params": dict(self.params),
            "expected": {d.expected_key: d.expected_id, "decision": d.decision,
                         "first_decision_day": first_decision_day(plan, d, self.day),
                         **_expected_extra(self)},
        }


def _expected_extra(s: Scenario) -> dict[str, Any]:
    extra = dict(s.definition.expected_extra)
    if "confirmation" in extra:  # a rollback scenario: the flag flips at the window's end
        extra["disabled_at"] = from_us(s.end_us).isoformat()
    return extra


def first_decision_day(plan: Plan, d: ScenarioDef, day: int) -> int | None:
    """First rollout day >= ``day`` on which the expected criterion is required by the plan
    (triggers act on the day itself); None if never required. A state scenario (decision
    ``unaffected``) is checked from its day on."""
    if d.expected_key == "trigger" or d.decision == "unaffected":
        return day
    for p in plan.phases:
        if p.last_day >= day and d.expected_id in p.required:
            return max(day, p.first_day)
    return None


def _convert(name: str, key: str, raw: Any, default: Any) -> Any:
    try:
        if key == "start":
            if isinstance(raw, dt.time):
                return raw.strftime("%H:%M")
            t = dt.time.fromisoformat(str(raw))
            return t.strftime("%H:%M:%S") if t.second else t.strftime("%H:%M")
        if isinstance(default, bool):
            raise ValueError
        if isinstance(default, int):
            value = int(raw) if not isinstance(raw, str) else int(raw.strip())
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError
            return value
        if isinstance(default, float):
            return float(raw)
    except (TypeError, ValueError):
        kind = "HH:MM" if key == "start" else type(default).__name__
        raise SimulationError(f"scenario {name!r}: {key}={raw!r} is not a valid {kind}") from None
    return raw


def parse_scenario(text: str | ScenarioRequest | Mapping[str, Any]) -> ScenarioRequest:
    """Parse ``NAME[:key=value,...]`` (or pass a :class:`ScenarioRequest` / ``{"name":..}``)."""
    if isinstance(text, ScenarioRequest):
        name, raw = text.name, dict(text.params)
    elif isinstance(text, Mapping):
        raw = dict(text)
        name = str(raw.pop("name", ""))
    else:
        name, _, rest = str(text).strip().partition(":")
        raw = {}
        for part in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = part.partition("=")
            if not eq or not key.strip():
                raise SimulationError(f"scenario {text!r}: expected key=value, got {part!r}")
            raw[key.strip()] = value.strip()
    name = name.strip()
    if name not in SCENARIOS:
        raise SimulationError(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})")
    d = SCENARIOS[name]
    params = {}
    for key, value in raw.items():
        if key not in d.defaults:
            raise SimulationError(f"scenario {name!r} has no parameter {key!r} "
                                  f"(known: {', '.join(d.defaults)})")
        params[key] = _convert(name, key, value, d.defaults[key])
    return ScenarioRequest(name, params)


def resolve(requests: Iterable[str | ScenarioRequest | Mapping[str, Any]], plan: Plan,
            cal: Calendar) -> tuple[Scenario, ...]:
    """Fill defaults, check values, fix windows; the order of the requests is kept."""
    out = []
    for req in requests:
        r = parse_scenario(req)
        d = SCENARIOS[r.name]
        params = {**d.defaults, **r.params}
        if params.get("min_requests", None) == 0:  # default: enough for a per-minute rate ~ level
            params["min_requests"] = max(plan.criteria.min_minute_requests + 10, MIN_WINDOW_REQUESTS)
        day = int(params["day"])
        if not 0 <= day <= cal.through_day:
            raise SimulationError(f"scenario {r.name!r}: day {day} is outside rollout days "
                                  f"0..{cal.through_day}")
        _check_values(r.name, params)
        day_us = cal.day_start_us(day)
        if d.kind == "from_day":
            start, end = day_us, cal.period_end_us
        else:
            t = dt.time.fromisoformat(params["start"]) if "start" in params else dt.time()
            start = day_us + (t.hour * 60 + t.minute) * US_PER_MINUTE + t.second * 1_000_000
            if "minutes" in params:
                end = start + int(params["minutes"]) * US_PER_MINUTE
            elif "hours" in params:
                end = start + round(float(params["hours"]) * 60) * US_PER_MINUTE
            elif d.kind == "point":
                end = start + US_PER_MINUTE
            else:  # whole day
                end = day_us + 24 * 60 * US_PER_MINUTE
            if end > cal.period_end_us:
                raise SimulationError(f"scenario {r.name!r}: window {from_us(start)} .. "
                                      f"{from_us(end)} runs past the simulated period")
        out.append(Scenario(r.name, day, params, start, end, d))
    return tuple(out)


def _check_values(name: str, p: Mapping[str, Any]) -> None:
    def bad(key: str, what: str) -> SimulationError:
        return SimulationError(f"scenario {name!r}: {key}={p[key]!r} must be {what}")

    for key in ("level", "share"):
        if key in p and not 0 < p[key] <= 1:
            raise bad(key, "in (0, 1]")
    if "size" in p and not 0 < p["size"] < 1:
        raise bad("size", "in (0, 1)")
    if "factor" in p and not p["factor"] > 0:
        raise bad("factor", "> 0")
    if name == "ctr_drop" and p["factor"] >= 1:
        raise bad("factor", "< 1 (a drop)")
    if name == "db_degradation" and p["factor"] <= 1:
        raise bad("factor", "> 1")
    for key in ("minutes", "count", "min_users", "min_requests"):
        if key in p and p[key] < (0 if key == "min_requests" else 1):
            raise bad(key, ">= 1")
    if "hours" in p and not 0 < p["hours"] <= 24:
        raise bad("hours", "in (0, 24]")
    if "recap_factor" in p and not p["recap_factor"] >= 1:
        raise bad("recap_factor", ">= 1")
    if "inflight_seconds" in p and not 0 <= p["inflight_seconds"] <= 3600:
        raise bad("inflight_seconds", "in [0, 3600]")
    if "ms" in p and not p["ms"] > 0:
        raise bad("ms", "> 0")
    if "rating" in p and not 1 <= p["rating"] <= 5:
        raise bad("rating", "in [1, 5]")
    if "days" in p and p["days"] < 1:
        raise bad("days", ">= 1")
    if "direction" in p and p["direction"] not in ("whispers", "control"):
        raise bad("direction", "'whispers' or 'control'")


def active(scenarios: Iterable[Scenario], name: str) -> list[Scenario]:
    return [s for s in scenarios if s.name == name]
