"""The rollout plan as data: load and validate the plan TOML into small frozen objects.

Every part of the lab (cohorts, simulator, statistics, rules, report) reads the plan through
:func:`load_plan`. A bad file raises :class:`~whispers_lab.errors.PlanError` naming the key.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Literal

from .contract import FLAG_NAMES as CONTRACT_FLAG_NAMES
from .errors import PlanError
from .paths import DEFAULT_PLAN

Audience = Literal["internal", "beta", "percentage"]
AUDIENCES: tuple[str, ...] = ("internal", "beta", "percentage")

#: Every criterion id the rules know. A phase may only require or watch these.
CRITERION_IDS: tuple[str, ...] = (
    "telemetry_flowing",
    "ranking_timeouts",
    "weight_persistence",
    "cue_cooldown",
    "error_rate",
    "avg_response_ms",
    "p95_response_ms",
    "weight_fallback_rate",
    "uptime",
    "critical_bugs",
    "relevance",
    "feedback_score",
    "sentiment",  # issue 15: Phase 2 "Positive user sentiment", the plan's [sentiment]
    "ctr",
    "retention",
    "support_tickets",
    "srm",
    "qa_scenarios",  # issue 15: Phase 1 "All QA scenarios pass" (whispers_lab/qa.py)
    "assignment_integrity",  # issue 14: served vs planned, every active user (whispers_lab/state.py)
)
TRIGGER_IDS: tuple[str, ...] = (
    "trigger_error_rate",
    "trigger_latency",
    "trigger_privacy",
    "trigger_db",
    "trigger_critical_bug",
)
FLAG_NAMES: tuple[str, ...] = CONTRACT_FLAG_NAMES  # declared once, in the contract
FlagValue = bool | int


@dataclass(frozen=True)
class Assignment:
    salt: str
    buckets: int
    holdout_share: float

    @property
    def holdout_buckets(self) -> int:
        """Buckets ``[buckets - holdout_buckets, buckets)`` form the holdout."""
        return round(self.buckets * self.holdout_share)


@dataclass(frozen=True)
class Beta:
    min_users: int
    max_users: int
    min_micro_memories: int
    order_by: Literal["engagement_desc"]


@dataclass(frozen=True)
class Phase:
    id: str
    name: str
    first_day: int
    last_day: int
    audience: Audience
    percentage: float
    environment: str
    required: tuple[str, ...]
    watched: tuple[str, ...]
    thresholds: Mapping[str, float]
    flags: Mapping[str, FlagValue]

    def covers(self, day: int) -> bool:
        return self.first_day <= day <= self.last_day


@dataclass(frozen=True)
class Criteria:
    ranking_timeout_ms: float
    max_ranking_timeouts: int
    error_rate: float
    avg_response_ms: float
    weight_fallback_rate: float
    uptime: float
    p95_response_ms: float
    ctr: float
    feedback_score: float
    relevance: float
    critical_bugs: int
    privacy_incidents: int
    support_ticket_rate_ratio: float
    srm_p_value: float
    min_minute_requests: int
    min_day_requests: int
    min_group_users: int
    telemetry_min_hourly_events: int
    max_weight_version_conflicts: int
    max_cue_cooldown_violations: int
    # issue 14 (optional keys, defaults here): served-vs-planned tolerance and flag grace
    assignment_mismatch_rate: float = 0.01
    assignment_grace_minutes: float = 5.0


SPENDING_NAMES: tuple[str, ...] = ("obrien_fleming", "pocock", "hsd", "power")
MARGIN_RULES: tuple[str, ...] = ("absolute", "relative", "smaller", "both")
#: Threshold criteria judged with a tolerance region over a cumulative window.
THRESHOLD_CRITERIA: tuple[str, ...] = (
    "error_rate", "avg_response_ms", "p95_response_ms", "weight_fallback_rate", "uptime",
    "ctr", "feedback_score", "relevance",
)
#: Windows a threshold criterion can be judged over (see docs/rules.md).
WINDOWS: tuple[str, ...] = ("day", "phase", "audience")
#: Criteria with a deterioration ("is it worse?") test.
DETERIORATION_CRITERIA: tuple[str, ...] = ("retention", "support_tickets")


@dataclass(frozen=True)
class Retention:
    k_days: tuple[int, ...]
    primary_k: int
    margin: float
    relative_margin: float
    margin_rule: Literal["absolute", "relative", "smaller", "both"]
    alpha: float
    power: float
    spending: Literal["obrien_fleming", "pocock", "hsd", "power"]
    spending_param: float | None
    covariate_days: int
    cuped: bool


@dataclass(frozen=True)
class Deterioration:
    """The family of "is it worse?" tests sharing one alpha over all looks."""

    alpha: float
    tests: tuple[str, ...]
    spending: Literal["obrien_fleming", "pocock", "hsd", "power"]
    spending_param: float | None
    rollback_on_harm: bool


@dataclass(frozen=True)
class Design:
    """What the plan expects of the user base: the design power is computed for it."""

    expected_users: int
    daily_active_share: float
    d1_return_rate: float


@dataclass(frozen=True)
class Sentiment:
    """issue 15: "Positive user sentiment" (Phase 2) from the in-app survey (``[sentiment]``).

    The net score of a window's answers is the share rated ``positive_ratings`` minus the
    share rated ``negative_ratings``; it must be at least ``net_score`` (tolerance region with
    ``tolerance``, as every threshold criterion), judged on at least ``min_answers`` answers,
    over the ``window`` (``day`` / ``phase`` / ``audience``, as ``[windows]``)."""

    positive_ratings: tuple[int, ...]
    negative_ratings: tuple[int, ...]
    net_score: float
    tolerance: float
    min_answers: int
    window: str


@dataclass(frozen=True)
class Triggers:
    error_rate: float
    error_rate_minutes: int
    avg_response_ms: float
    avg_response_minutes: int
    privacy_tickets: int
    critical_bugs: int
    db_p95_ratio: float
    db_minutes: int
    db_min_baseline_minutes: int


@dataclass(frozen=True)
class Plan:
    version: int
    name: str
    start_date: dt.date
    last_day: int
    assignment: Assignment
    beta: Beta
    flags: Mapping[str, FlagValue]
    phases: tuple[Phase, ...]
    criteria: Criteria
    retention: Retention
    deterioration: Deterioration
    tolerance: Mapping[str, float]
    windows: Mapping[str, str]
    design: Design
    triggers: Triggers
    cue_cooldown_minutes: float
    rollback_monitor_minutes: int
    rollback_flags: Mapping[str, FlagValue]
    #: issue 15: the plan's ``[sentiment]`` (None: the plan defines no sentiment criterion)
    sentiment: Sentiment | None = None
    source: str = field(default="<memory>", compare=False)
    #: Phase a rollout re-enabled after a rollback restarts from (never beyond the phase that
    #: was rolled back); None: the first percentage phase. See whispers_lab/state.py.
    rollback_restart_phase: str | None = None

    # -- calendar -------------------------------------------------------------------------
    def day_start(self, day: int) -> dt.datetime:
        """Start of rollout day ``day`` as a naive UTC datetime."""
        return dt.datetime.combine(self.start_date, dt.time()) + dt.timedelta(days=day)

    def day_of(self, when: dt.date | dt.datetime) -> int:
        """Rollout day of a UTC date or datetime (negative before the start)."""
        d = when.date() if isinstance(when, dt.datetime) else when
        return (d - self.start_date).days

    def phase_for_day(self, day: int) -> Phase:
        """The phase active on ``day``; after the last day, the last phase stays in force."""
        if day < 0:
            raise PlanError(f"day {day} is before the rollout start ({self.start_date}, day 0)")
        for phase in self.phases:
            if phase.covers(day):
                return phase
        return self.phases[-1]

    def next_phase(self, day: int) -> Phase | None:
        current = self.phase_for_day(day)
        later = [p for p in self.phases if p.first_day > current.last_day]
        return later[0] if later else None

    def percentage_on(self, day: int) -> float:
        """Share (0..100) of external, non-holdout users enabled by bucket on ``day``."""
        return self.phase_for_day(day).percentage if day >= 0 else 0.0

    def percentage_stages(self) -> tuple[tuple[int, float], ...]:
        """(first_day, percentage) of every percentage phase, in order."""
        return tuple((p.first_day, p.percentage) for p in self.phases if p.audience == "percentage")

    def beta_first_day(self) -> int | None:
        days = [p.first_day for p in self.phases if p.audience == "beta"]
        return min(days) if days else None

    def required_from(self, criterion: str) -> int | None:
        """First day on which a phase requires ``criterion`` (None: never required)."""
        days = [p.first_day for p in self.phases if criterion in p.required]
        return min(days) if days else None

    def window_start(self, criterion: str, day: int) -> int:
        """First day of the cumulative window ``criterion`` is judged over on ``day``:
        the day itself, the current phase's first day, or the first day of the current
        phase's audience (the first percentage day for every percentage phase)."""
        kind = self.windows.get(criterion, "day")
        phase = self.phase_for_day(day)
        if kind == "phase":
            return phase.first_day
        if kind == "audience":
            return min(p.first_day for p in self.phases if p.audience == phase.audience)
        return day

    def threshold(self, criterion: str, day: int) -> float:
        """The threshold of ``criterion`` in force on ``day`` (phase override, else default)."""
        phase = self.phase_for_day(day)
        if criterion in phase.thresholds:
            return float(phase.thresholds[criterion])
        return float(getattr(self.criteria, criterion))


# ---------------------------------------------------------------------------------------
# loading and validation


class _Reader:
    """Reads one TOML table, recording the dotted key path for error messages."""

    def __init__(self, data: Mapping[str, Any], prefix: str, source: str) -> None:
        if not isinstance(data, Mapping):
            raise PlanError(f"{source}: key '{prefix}' must be a table, got {type(data).__name__}")
        self.data = data
        self.prefix = prefix
        self.source = source
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def fail(self, name: str, message: str) -> PlanError:
        return PlanError(f"{self.source}: key '{self.key(name)}' {message}")

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        self.seen.add(name)
        if name not in self.data:
            if default is ...:
                raise self.fail(name, "is missing")
            return default
        value = self.data[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int in Python; a plan that says `true` where a number is due is wrong.
        if isinstance(value, bool) and bool not in kinds:
            raise self.fail(name, f"must be {_kind_name(kinds)}, got a boolean ({value!r})")
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kinds):
            raise self.fail(name, f"must be {_kind_name(kinds)}, got {type(value).__name__} ({value!r})")
        return value

    def number(self, name: str, lo: float | None = None, hi: float | None = None,
               lo_open: bool = False, integer: bool = False, default: Any = ...) -> Any:
        value = self.get(name, int if integer else float, default)
        if lo is not None and (value < lo or (lo_open and value == lo)):
            raise self.fail(name, f"must be {'>' if lo_open else '>='} {lo}, got {value}")
        if hi is not None and value > hi:
            raise self.fail(name, f"must be <= {hi}, got {value}")
        return value

    def table(self, name: str) -> _Reader:
        return _Reader(self.get(name, dict), self.key(name), self.source)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise self.fail(unknown[0], "is not a known plan key (typo?)")


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "a table", dt.date: "a date (YYYY-MM-DD)"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _flags(reader: _Reader) -> dict[str, FlagValue]:
    out: dict[str, FlagValue] = {}
    for name in list(reader.data):
        if name not in FLAG_NAMES:
            raise reader.fail(name, f"is not a known flag (known: {', '.join(FLAG_NAMES)})")
        kind = bool if name in FLAG_NAMES[:2] else int
        value = reader.get(name, kind)
        if kind is int and value <= 0:
            raise reader.fail(name, f"must be > 0, got {value}")
        out[name] = value
    return out


def _id_list(reader: _Reader, name: str, known: tuple[str, ...]) -> tuple[str, ...]:
    values = reader.get(name, list, [])
    for v in values:
        if not isinstance(v, str) or v not in known:
            raise reader.fail(name, f"lists unknown criterion {v!r} (known: {', '.join(known)})")
    return tuple(values)


def _parse_assignment(top: _Reader) -> Assignment:
    a = top.table("assignment")
    assignment = Assignment(
        salt=a.get("salt", str),
        buckets=a.number("buckets", lo=100, integer=True),
        holdout_share=a.number("holdout_share", lo=0.0, hi=0.5),
    )
    if not assignment.salt.strip():
        raise a.fail("salt", "must not be empty")
    a.done()
    return assignment


def _parse_beta(top: _Reader) -> Beta:
    b = top.table("beta")
    beta = Beta(
        min_users=b.number("min_users", lo=1, integer=True),
        max_users=b.number("max_users", lo=1, integer=True),
        min_micro_memories=b.number("min_micro_memories", lo=0, integer=True),
        order_by=b.get("order_by", str),
    )
    if beta.order_by != "engagement_desc":
        raise b.fail("order_by", f"must be 'engagement_desc', got {beta.order_by!r}")
    if beta.min_users > beta.max_users:
        raise b.fail("min_users", f"({beta.min_users}) contradicts max_users ({beta.max_users})")
    b.done()
    return beta


def _parse_flags(top: _Reader) -> dict[str, FlagValue]:
    f = top.table("flags")
    flags = _flags(f)
    missing = [n for n in FLAG_NAMES if n not in flags]
    if missing:
        raise f.fail(missing[0], "is missing")
    return flags


def _parse_phase(raw: Any, i: int, flags: Mapping[str, FlagValue], source: str) -> Phase:
    p = _Reader(raw, f"phases[{i}]", source)
    audience = p.get("audience", str)
    if audience not in AUDIENCES:
        raise p.fail("audience", f"must be one of {', '.join(AUDIENCES)}, got {audience!r}")
    thresholds_reader = _Reader(p.get("thresholds", dict, {}), p.key("thresholds"), source)
    thresholds = {}
    for key in list(thresholds_reader.data):
        if key not in Criteria.__dataclass_fields__:
            raise thresholds_reader.fail(key, "is not a criterion threshold in [criteria]")
        thresholds[key] = thresholds_reader.number(key, lo=0.0)
    phase_flags = dict(flags)
    phase_flags.update(_flags(_Reader(p.get("flags", dict, {}), p.key("flags"), source)))
    phase = Phase(
        id=p.get("id", str),
        name=p.get("name", str),
        first_day=p.number("first_day", lo=0, integer=True),
        last_day=p.number("last_day", lo=0, integer=True),
        audience=audience,
        percentage=p.number("percentage", lo=0.0, hi=100.0),
        environment=p.get("environment", str),
        required=_id_list(p, "required", CRITERION_IDS),
        watched=_id_list(p, "watched", CRITERION_IDS),
        thresholds=thresholds,
        flags=phase_flags,
    )
    p.done()
    if phase.first_day > phase.last_day:
        raise p.fail("first_day", f"({phase.first_day}) is after last_day ({phase.last_day})")
    if phase.audience == "percentage" and phase.percentage <= 0:
        raise p.fail("percentage", "must be > 0 for a percentage phase")
    if phase.audience != "percentage" and phase.percentage != 0:
        raise p.fail("percentage", f"must be 0 for a {phase.audience} phase")
    both = set(phase.required) & set(phase.watched)
    if both:
        raise p.fail("watched", f"repeats required criterion {sorted(both)[0]!r}")
    return phase


def _parse_phases(top: _Reader, flags: Mapping[str, FlagValue], last_day: int,
                  source: str) -> tuple[Phase, ...]:
    raw_phases = top.get("phases", list)
    if not raw_phases:
        raise top.fail("phases", "must list at least one phase")
    phases: list[Phase] = []
    for i, raw in enumerate(raw_phases):
        phase = _parse_phase(raw, i, flags, source)
        p = _Reader(raw, f"phases[{i}]", source)
        if phases:
            prev = phases[-1]
            if phase.first_day != prev.last_day + 1:
                raise p.fail("first_day", f"({phase.first_day}) must follow the previous phase's "
                                          f"last_day ({prev.last_day}) without gap or overlap")
            if phase.percentage < prev.percentage:
                raise p.fail("percentage", f"({phase.percentage}) is below the previous phase's "
                                           f"({prev.percentage}); the rollout must be monotone")
        elif phase.first_day != 0:
            raise p.fail("first_day", f"of the first phase must be 0, got {phase.first_day}")
        phases.append(phase)
    ids = [ph.id for ph in phases]
    dup = next((x for x in ids if ids.count(x) > 1), None)
    if dup:
        raise top.fail("phases", f"repeats phase id {dup!r}")
    if phases[-1].last_day != last_day:
        raise top.fail("last_day", f"({last_day}) contradicts the last phase's last_day "
                                   f"({phases[-1].last_day})")
    order = [AUDIENCES.index(ph.audience) for ph in phases]
    if order != sorted(order):
        raise top.fail("phases", "must go internal -> beta -> percentage")
    return tuple(phases)


def _parse_criteria(top: _Reader) -> Criteria:
    c = top.table("criteria")
    prob = {"error_rate", "weight_fallback_rate", "uptime", "ctr", "relevance", "srm_p_value",
            "assignment_mismatch_rate"}
    values: dict[str, Any] = {}
    for fname, fdef in Criteria.__dataclass_fields__.items():
        integer = fdef.type in ("int", int)
        default = fdef.default if fdef.default is not MISSING else ...
        values[fname] = c.number(fname, lo=0.0 if not integer else 0,
                                 hi=1.0 if fname in prob else None, integer=integer,
                                 default=default)
    criteria = Criteria(**values)
    if not 1.0 <= criteria.feedback_score <= 5.0:
        raise c.fail("feedback_score", f"must be within the 1..5 rating scale, got {criteria.feedback_score}")
    c.done()
    return criteria


def _spending(reader: _Reader, name: str, param_name: str) -> tuple[Any, float | None]:
    kind = reader.get(name, str)
    if kind not in SPENDING_NAMES:
        raise reader.fail(name, f"must be one of {', '.join(SPENDING_NAMES)}, got {kind!r}")
    param = reader.get(param_name, float, None)
    if param is not None and kind not in ("hsd", "power"):
        raise reader.fail(param_name, f"only applies to the 'hsd' and 'power' families, not {kind!r}")
    if kind == "power" and param is not None and param <= 0:
        raise reader.fail(param_name, f"must be > 0 for the power family, got {param}")
    return kind, param


def _parse_retention(top: _Reader) -> Retention:
    r = top.table("retention")
    k_days = r.get("k_days", list)
    if not k_days or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in k_days):
        raise r.fail("k_days", f"must be a non-empty list of integers >= 1, got {k_days!r}")
    spending, param = _spending(r, "spending", "spending_param")
    retention = Retention(
        k_days=tuple(k_days),
        primary_k=r.number("primary_k", lo=1, integer=True),
        margin=r.number("margin", lo=0.0, hi=1.0, lo_open=True),
        relative_margin=r.number("relative_margin", lo=0.0, hi=1.0, lo_open=True),
        margin_rule=r.get("margin_rule", str),
        alpha=r.number("alpha", lo=0.0, hi=0.5, lo_open=True),
        power=r.number("power", lo=0.5, hi=1.0, lo_open=True),
        spending=spending,
        spending_param=param,
        covariate_days=r.number("covariate_days", lo=1, hi=60, integer=True),
        cuped=r.get("cuped", bool),
    )
    if retention.primary_k not in retention.k_days:
        raise r.fail("primary_k", f"({retention.primary_k}) is not one of k_days {list(retention.k_days)}")
    if retention.margin_rule not in MARGIN_RULES:
        raise r.fail("margin_rule", f"must be one of {', '.join(MARGIN_RULES)}, got "
                                    f"{retention.margin_rule!r}")
    r.done()
    return retention


def _parse_deterioration(top: _Reader) -> Deterioration:
    d = top.table("deterioration")
    spending, param = _spending(d, "spending", "spending_param")
    tests = d.get("tests", list)
    for t in tests:
        if t not in DETERIORATION_CRITERIA:
            raise d.fail("tests", f"lists {t!r}, which has no deterioration test (known: "
                                  f"{', '.join(DETERIORATION_CRITERIA)})")
    if len(set(tests)) != len(tests) or not tests:
        raise d.fail("tests", "must list each deterioration test once, at least one")
    out = Deterioration(alpha=d.number("alpha", lo=0.0, hi=0.5, lo_open=True),
                        tests=tuple(tests), spending=spending, spending_param=param,
                        rollback_on_harm=d.get("rollback_on_harm", bool))
    d.done()
    return out


def _parse_named_numbers(top: _Reader, name: str, known: tuple[str, ...]) -> dict[str, float]:
    t = top.table(name)
    out = {}
    for key in list(t.data):
        if key not in known:
            raise t.fail(key, f"is not a threshold criterion (known: {', '.join(known)})")
        out[key] = t.number(key, lo=0.0)
    missing = [k for k in known if k not in out]
    if missing:
        raise t.fail(missing[0], "is missing")
    t.done()
    return out


def _parse_windows(top: _Reader) -> dict[str, str]:
    t = top.table("windows")
    out = {}
    for key in list(t.data):
        if key not in THRESHOLD_CRITERIA:
            raise t.fail(key, f"is not a threshold criterion (known: {', '.join(THRESHOLD_CRITERIA)})")
        value = t.get(key, str)
        if value not in WINDOWS:
            raise t.fail(key, f"must be one of {', '.join(WINDOWS)}, got {value!r}")
        out[key] = value
    missing = [k for k in THRESHOLD_CRITERIA if k not in out]
    if missing:
        raise t.fail(missing[0], "is missing")
    t.done()
    return out


def _parse_design(top: _Reader) -> Design:
    d = top.table("design")
    out = Design(expected_users=d.number("expected_users", lo=1, integer=True),
                 daily_active_share=d.number("daily_active_share", lo=0.0, hi=1.0, lo_open=True),
                 d1_return_rate=d.number("d1_return_rate", lo=0.0, hi=1.0, lo_open=True))
    d.done()
    return out


def _ratings(reader: _Reader, name: str) -> tuple[int, ...]:
    values = reader.get(name, list)
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 5
                             for v in values) or len(set(values)) != len(values):
        raise reader.fail(name, f"must list distinct ratings of the 1..5 scale, got {values!r}")
    return tuple(sorted(values))


def _parse_sentiment(top: _Reader, phases: tuple[Phase, ...]) -> Sentiment | None:
    """issue 15: the optional ``[sentiment]`` table; a phase that lists ``sentiment`` needs it."""
    if "sentiment" not in top.data:
        top.seen.add("sentiment")
        user = next((p for p in phases if "sentiment" in p.required + p.watched), None)
        if user is not None:
            raise top.fail("sentiment", f"is missing: phase {user.id!r} lists the criterion "
                                        f"'sentiment', which the [sentiment] table defines")
        return None
    t = top.table("sentiment")
    out = Sentiment(positive_ratings=_ratings(t, "positive_ratings"),
                    negative_ratings=_ratings(t, "negative_ratings"),
                    net_score=t.number("net_score", lo=-1.0, hi=1.0),
                    tolerance=t.number("tolerance", lo=0.0, hi=1.0),
                    min_answers=t.number("min_answers", lo=1, integer=True),
                    window=t.get("window", str))
    if set(out.positive_ratings) & set(out.negative_ratings):
        raise t.fail("negative_ratings", f"{list(out.negative_ratings)} overlaps positive_ratings "
                                         f"{list(out.positive_ratings)}")
    if out.window not in WINDOWS:
        raise t.fail("window", f"must be one of {', '.join(WINDOWS)}, got {out.window!r}")
    t.done()
    return out


def _parse_triggers(top: _Reader, criteria: Criteria) -> Triggers:
    t = top.table("triggers")
    triggers = Triggers(
        error_rate=t.number("error_rate", lo=0.0, hi=1.0),
        error_rate_minutes=t.number("error_rate_minutes", lo=1, integer=True),
        avg_response_ms=t.number("avg_response_ms", lo=0.0, lo_open=True),
        avg_response_minutes=t.number("avg_response_minutes", lo=1, integer=True),
        privacy_tickets=t.number("privacy_tickets", lo=0, integer=True),
        critical_bugs=t.number("critical_bugs", lo=0, integer=True),
        db_p95_ratio=t.number("db_p95_ratio", lo=1.0, lo_open=True),
        db_minutes=t.number("db_minutes", lo=1, integer=True),
        db_min_baseline_minutes=t.number("db_min_baseline_minutes", lo=1, integer=True),
    )
    t.done()
    if triggers.error_rate < criteria.error_rate:
        raise t.fail("error_rate", f"({triggers.error_rate}) is below the monitoring budget "
                                   f"criteria.error_rate ({criteria.error_rate}): contradictory")
    if triggers.avg_response_ms < criteria.avg_response_ms:
        raise t.fail("avg_response_ms", f"({triggers.avg_response_ms}) is below the budget "
                                        f"criteria.avg_response_ms ({criteria.avg_response_ms}): contradictory")
    return triggers


def _parse_rollback(top: _Reader, source: str,
                    phases: tuple[Phase, ...]) -> tuple[int, dict[str, FlagValue], str | None]:
    rb = top.table("rollback")
    monitor = rb.number("monitor_minutes", lo=1, integer=True)
    rollback_flags = _flags(_Reader(rb.get("flags", dict), rb.key("flags"), source))
    rb.get("confirmation", dict, {})  # issue 15: read by whispers_lab.rollback.settings_from_plan
    restart = rb.get("restart_phase", str, None)  # issue 14: where a re-enabled rollout restarts
    if rollback_flags.get("NEXT_PUBLIC_WHISPERS_ENABLED", True):
        raise rb.fail("flags", "must set NEXT_PUBLIC_WHISPERS_ENABLED = false")
    if restart is not None and restart not in [p.id for p in phases]:
        raise rb.fail("restart_phase", f"names no phase of the plan ({restart!r}; phases: "
                                       f"{', '.join(p.id for p in phases)})")
    rb.done()
    return monitor, rollback_flags, restart


def parse_plan(data: Mapping[str, Any], source: str = "<memory>") -> Plan:
    """Validate a parsed TOML mapping into a :class:`Plan` (one small validator per section)."""
    top = _Reader(data, "", source)
    version = top.number("version", integer=True)
    if version != 1:
        raise top.fail("version", f"must be 1 (the only plan format this lab reads), got {version}")
    name = top.get("name", str)
    start = top.get("start_date", dt.date)
    if isinstance(start, dt.datetime):
        raise top.fail("start_date", "must be a date without a time (YYYY-MM-DD)")
    last_day = top.number("last_day", lo=0, integer=True)
    assignment = _parse_assignment(top)
    beta = _parse_beta(top)
    flags = _parse_flags(top)
    phases = _parse_phases(top, flags, last_day, source)
    criteria = _parse_criteria(top)
    retention = _parse_retention(top)
    deterioration = _parse_deterioration(top)
    tolerance = _parse_named_numbers(top, "tolerance", THRESHOLD_CRITERIA)
    windows = _parse_windows(top)
    design = _parse_design(top)
    sentiment = _parse_sentiment(top, phases)  # issue 15: its tolerance and window join the rest
    if sentiment is not None:
        tolerance["sentiment"], windows["sentiment"] = sentiment.tolerance, sentiment.window
    triggers = _parse_triggers(top, criteria)
    m = top.table("maya")
    cooldown = m.number("cue_cooldown_minutes", lo=0.0, lo_open=True)
    m.done()
    monitor, rollback_flags, restart = _parse_rollback(top, source, phases)
    top.get("communications", list, [])  # validated by whispers_lab.communications
    top.done()
    return Plan(
        version=version, name=name, start_date=start, last_day=last_day, assignment=assignment,
        sentiment=sentiment,
        beta=beta, flags=flags, phases=phases, criteria=criteria, retention=retention,
        deterioration=deterioration, tolerance=tolerance, windows=windows, design=design,
        triggers=triggers, cue_cooldown_minutes=cooldown, rollback_monitor_minutes=monitor,
        rollback_flags=rollback_flags, source=source, rollback_restart_phase=restart,
    )


def load_plan(path: str | Path | None = None) -> Plan:
    """Read and validate a plan file (the packaged default when ``path`` is None)."""
    p = Path(path) if path is not None else DEFAULT_PLAN
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlanError(f"plan file {str(p)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanError(f"plan file {str(p)!r} cannot be read: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PlanError(f"plan file {str(p)!r} is not valid TOML: {exc}") from None
    return parse_plan(data, source=str(p))
