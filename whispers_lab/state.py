"""The rollout's actual state: which stage was in force from when, and what follows from it.

The plan's calendar says what happens *if every day is GO*. A NO_GO holds the audience, a
ROLLBACK switches whispers off, and a stage can be switched on at 09:00 rather than midnight;
after any of these the calendar and production disagree. This module keeps the rollout's state
as data (:class:`RolloutState`: a list of :class:`Stage` changes, what actually happened through
the analysis day, then the rest projected as "every later day GO") and derives from it what the
rest of the lab used to read off the calendar:

* :meth:`RolloutState.dated_plan`: the plan re-dated, each phase from the day it was first
  reached (actual or projected). Everything that asks the plan "which phase is day N in" (the
  thresholds in force, criterion windows, each user's enabling day, the statistics' schedule and
  final look) asks this plan and so follows the state;
* :meth:`RolloutState.stage_on`, :meth:`phase_on`, :meth:`threshold_on`: the stage in force on a
  day (its audience and percentage), what the flag service must serve;
* :meth:`RolloutState.schedule`: the statistics' schedule (stage days and final day);
* :meth:`RolloutState.intervals`: time intervals with the assignment in force (for the
  served-vs-planned check and the sample-ratio expectation), including the stretches in which the
  variant of some buckets is not known (a stage change at an unknown time of day, or the minutes
  after a logged flag change while it propagates).

Sources, in order (:func:`resolve_state`):

1. **flag log**: the export's optional ``flag_changes`` table (every change of
   ``NEXT_PUBLIC_WHISPERS_ENABLED`` with its audience and percentage, at its UTC time). Before its
   first row whispers are off;
2. **decisions**: the workbench's own ``day-NN/decision.json`` files of earlier days
   (:func:`from_decisions`): a hold keeps the stage, a GO at a stage boundary advances it, a
   rollback ends it, a GO while whispers are off re-enables them from the plan's
   ``rollback.restart_phase``. The time of day of a change is not known, so on a stage day the
   users whose variant changes are not judged;
3. **calendar**: the plan's calendar, *assumed*, with a warning the report shows.

Stage rules (decisions and projection). A stage (a plan phase) in force since day ``a`` is at its
**boundary** on day ``d`` when it has been in force at least the phase's planned length
(``d - a + 1 >= last_day - first_day + 1``). Then

* GO at the boundary: the next phase from ``d + 1`` (the last phase stays: the rollout is
  complete); GO before the boundary: unchanged;
* NO_GO, ERROR or no decision: unchanged (a hold: no GO was given);
* ROLLBACK: whispers off from ``d + 1`` (audience ``none``);
* while off: GO re-enables from ``d + 1`` at the plan's restart phase (never beyond the phase
  that was rolled back); anything else keeps whispers off.

A user's enabling day (``f_day`` of the statistics) is the first day the state enabled their
bucket (intention to treat: a rollback does not undo it). Pure logic over small objects; the
flag log's SQL is in :mod:`whispers_lab.queries.state`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from .errors import WhispersLabError
from .plan import Phase, Plan

if TYPE_CHECKING:
    from .export import Export
    from .stats.design import Schedule

Source = Literal["flag_log", "decisions", "calendar"]
SOURCES: tuple[str, ...] = ("flag_log", "decisions", "calendar")
#: Audience of a stage in which whispers are off (after a rollback).
OFF = "none"
ENABLED_FLAG = "NEXT_PUBLIC_WHISPERS_ENABLED"
#: Decisions that advance a stage at its boundary; everything else holds.
GO = "GO"
ROLLBACK = "ROLLBACK"
#: Start and end of "always" for the SQL intervals (naive UTC).
_EPOCH = dt.datetime(1970, 1, 1)
_FAR = dt.datetime(9999, 1, 1)
#: Planned-variant codes of an interval's audience flags.
ON, OFF_CODE, UNSURE = 1, 0, -1


class StateError(WhispersLabError):
    """A flag log or decision history the state cannot be built from (names what is wrong)."""


@dataclass(frozen=True)
class Stage:
    """From ``day`` (at ``at`` when the time is known) the plan phase ``phase`` is in force with
    ``audience`` and ``percentage``; audience ``none``: whispers are off (``phase`` is then the
    phase that was rolled back). ``projected``: not happened yet ("every later day GO")."""

    day: int
    phase: str
    audience: str
    percentage: float
    at: dt.datetime | None = None
    projected: bool = False

    @property
    def off(self) -> bool:
        return self.audience == OFF

    def same_assignment(self, other: Stage) -> bool:
        return (self.phase, self.audience, float(self.percentage)) == (
            other.phase, other.audience, float(other.percentage))

    def to_dict(self) -> dict[str, Any]:
        return {"day": self.day, "at": self.at.isoformat() if self.at is not None else None,
                "phase": self.phase, "audience": self.audience,
                "percentage": float(self.percentage), "projected": self.projected}


def _phase(plan: Plan, pid: str) -> Phase:
    for p in plan.phases:
        if p.id == pid:
            return p
    raise StateError(f"plan {plan.name!r} has no phase {pid!r}")


def _index(plan: Plan, pid: str) -> int:
    return [p.id for p in plan.phases].index(pid)


def phase_length(phase: Phase) -> int:
    """Planned length of a phase in days."""
    return phase.last_day - phase.first_day + 1


def stage_of(phase: Phase, day: int, at: dt.datetime | None = None,
             projected: bool = False) -> Stage:
    return Stage(day, phase.id, phase.audience, float(phase.percentage), at, projected)


def restart_phase(plan: Plan, rolled_back: str) -> Phase:
    """The phase a re-enabled rollout restarts from: the plan's ``rollback.restart_phase``
    (default: the first percentage phase), never beyond the phase that was rolled back."""
    pid = plan.rollback_restart_phase
    if pid is None:
        pct = [p for p in plan.phases if p.audience == "percentage"]
        pid = pct[0].id if pct else plan.phases[0].id
    if _index(plan, pid) > _index(plan, rolled_back):
        pid = rolled_back
    return _phase(plan, pid)


def after_decision(plan: Plan, current: Stage, verdict: str | None, day: int) -> Stage:
    """The stage in force on ``day + 1`` after ``verdict`` on ``day`` (the module's rules).
    Returns ``current`` itself when nothing changes."""
    tomorrow = day + 1
    if current.off:
        if verdict == GO:
            return stage_of(restart_phase(plan, current.phase), tomorrow)
        return current
    if verdict == ROLLBACK:
        return Stage(tomorrow, current.phase, OFF, 0.0)
    if verdict == GO:
        phase = _phase(plan, current.phase)
        if day - current.day + 1 >= phase_length(phase):
            i = _index(plan, phase.id)
            if i + 1 < len(plan.phases):
                return stage_of(plan.phases[i + 1], tomorrow)
    return current


def at_boundary(plan: Plan, current: Stage, day: int) -> bool:
    """Whether a GO on ``day`` would move the rollout to its next phase."""
    if current.off:
        return False
    phase = _phase(plan, current.phase)
    return (day - current.day + 1 >= phase_length(phase)
            and _index(plan, phase.id) + 1 < len(plan.phases))


# ---------------------------------------------------------------------------------------
# the state


@dataclass(frozen=True)
class RolloutState:
    """The rollout's stages: what happened through ``known_through`` (from ``source``), then the
    rest projected as every later day GO. ``warnings`` are shown in the report."""

    plan: Plan
    source: Source
    stages: tuple[Stage, ...]
    known_through: int
    warnings: tuple[str, ...] = ()
    #: minutes after a logged flag change in which the users it moves are not judged
    grace_minutes: float = 0.0
    _cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    # -- what the state says -------------------------------------------------------------
    @property
    def assumed(self) -> bool:
        """True when the state is the plan's calendar, assumed for want of data."""
        return self.source == "calendar"

    @property
    def actual(self) -> tuple[Stage, ...]:
        return tuple(s for s in self.stages if not s.projected)

    def stage_on(self, day: int) -> Stage:
        """The stage in force at the end of ``day`` (the last change on or before it)."""
        found = None
        for s in self.stages:
            if s.day <= day:
                found = s
            else:
                break
        if found is None:  # before the first change: whispers off, nothing reached yet
            return Stage(day, self.plan.phases[0].id, OFF, 0.0)
        return found

    def stage_start(self, day: int) -> int:
        """First day of the continuous period of the stage in force on ``day``."""
        return self.stage_on(day).day

    def phase_on(self, day: int) -> Phase:
        """The plan phase in force on ``day``, dated as it actually ran (for an off day: the
        phase that was rolled back; its requirements still apply)."""
        stage = self.stage_on(day)
        dated = self.dated_plan()
        for p in dated.phases:
            if p.id == stage.phase:
                if p.covers(day):
                    return p
                # a phase re-entered after a rollback: dated from this stage
                return dataclasses.replace(p, first_day=stage.day, last_day=max(
                    stage.day, stage.day + phase_length(_phase(self.plan, p.id)) - 1))
        return _phase(self.plan, stage.phase)

    def planned_phase(self, day: int) -> Phase:
        """The phase the plan's calendar has on ``day`` (what every day GO would give)."""
        return self.plan.phase_for_day(day)

    def threshold_on(self, day: int) -> int:
        """Buckets below this are served whispers by percentage at the end of ``day``."""
        return _threshold(self.plan, self.stage_on(day))

    def treatment_share(self, day: int) -> float:
        """Expected treatment share among bucket-assigned users at the end of ``day``."""
        return self.threshold_on(day) / self.plan.assignment.buckets

    def internal_on(self, day: int) -> bool:
        return not self.stage_on(day).off

    def beta_on(self, day: int) -> bool:
        s = self.stage_on(day)
        return not s.off and s.audience in ("beta", "percentage")

    def beta_reached(self, day: int) -> bool:
        """Whether the beta users were enabled on or before ``day`` (they stay non-randomised)."""
        first = self.dated_plan().beta_first_day()
        return first is not None and first <= day

    # -- the plan as it actually unfolded --------------------------------------------------
    def first_reached(self) -> dict[str, int]:
        """Phase id -> first day it was in force (actual or projected), in plan order with the
        days made non-decreasing (a phase first reached after a later one is dropped)."""
        first: dict[str, int] = {}
        for s in self.stages:
            if not s.off and s.phase not in first:
                first[s.phase] = s.day
        out: dict[str, int] = {}
        running = None
        for p in self.plan.phases:
            if p.id not in first:
                continue
            d = first[p.id] if running is None else max(first[p.id], running)
            out[p.id] = d
            running = d
        return out

    def final_day(self) -> int:
        """The day the (projected) rollout reaches the end of its last phase."""
        reached = self.first_reached()
        if not reached:
            return self.plan.last_day
        last = list(reached)[-1]
        return reached[last] + phase_length(_phase(self.plan, last)) - 1

    def dated_plan(self) -> Plan:
        """The plan with every phase re-dated to the day it was first reached (actual, then
        projected); the first phase starts on day 0. Equal to the plan when the state follows
        its calendar."""
        if "dated" in self._cache:
            return self._cache["dated"]
        reached = self.first_reached()
        ids = [p.id for p in self.plan.phases if p.id in reached]
        if not ids:
            self._cache["dated"] = self.plan
            return self.plan
        final = self.final_day()
        phases: list[Phase] = []
        for i, pid in enumerate(ids):
            first = 0 if i == 0 else reached[pid]
            last = reached[ids[i + 1]] - 1 if i + 1 < len(ids) else final
            if last < first:
                continue
            phases.append(dataclasses.replace(_phase(self.plan, pid), first_day=first,
                                              last_day=last))
        # a dropped zero-length phase must not leave a gap
        for i in range(1, len(phases)):
            if phases[i].first_day != phases[i - 1].last_day + 1:
                phases[i] = dataclasses.replace(phases[i], first_day=phases[i - 1].last_day + 1)
        dated = dataclasses.replace(self.plan, phases=tuple(phases), last_day=phases[-1].last_day)
        self._cache["dated"] = dated
        return dated

    def schedule(self) -> Schedule:
        """The statistics' schedule: the first day of each percentage phase, actual or
        projected, and the final day (:class:`whispers_lab.stats.design.Schedule`)."""
        from .stats.design import Schedule

        dated = self.dated_plan()
        return Schedule(tuple(d for d, _ in dated.percentage_stages()), dated.last_day)

    def stage_days(self) -> tuple[tuple[int, int], ...]:
        """(first day, bucket threshold) of every percentage stage that enables new buckets."""
        out: list[tuple[int, int]] = []
        from .cohort import stage_threshold

        for d, pct in self.dated_plan().percentage_stages():
            out.append((int(d), stage_threshold(pct, self.plan)))
        return tuple(out)

    # -- time intervals for SQL ------------------------------------------------------------
    def intervals(self, through_day: int | None = None) -> pd.DataFrame:
        """The assignment in force, as half-open UTC intervals through the end of
        ``through_day`` (default: the last known day): ``interval_id, start_at, end_at,
        internal_on, beta_on`` (1 on, 0 off, -1 not known), ``threshold`` (buckets below it
        are enabled by percentage) and ``unsure_lo, unsure_hi`` (buckets in ``[lo, hi)`` have
        no known planned variant in the interval; ``lo = hi``: none).

        A change whose time is known starts its interval then; the ``grace_minutes`` after it
        are unsure for the buckets and audiences it moves. A change on a day at an unknown time
        (decisions) makes that whole day unsure for them. Days before the first stage, or
        before the first logged change, have whispers off."""
        last = self.known_through if through_day is None else through_day
        p = self.plan
        rows: list[tuple[dt.datetime, dt.datetime, int, int, int, int, int]] = []
        prev = Stage(0, p.phases[0].id, OFF, 0.0)
        cursor = _EPOCH
        actual = [s for s in self.stages if not s.projected and s.day <= last]
        for s in actual:
            if s.same_assignment(prev) and rows:
                continue
            old = _flags(p, prev)
            new = _flags(p, s)
            if s.at is not None:
                start = s.at
                unsure_end = s.at + dt.timedelta(minutes=self.grace_minutes)
            else:
                start = p.day_start(s.day)
                unsure_end = p.day_start(s.day + 1)
            start = max(start, cursor)
            if start > cursor:
                rows.append((cursor, start, *old, 0, 0))
            if unsure_end > start:
                lo, hi = sorted((old[2], new[2]))
                rows.append((start, unsure_end,
                             new[0] if new[0] == old[0] else UNSURE,
                             new[1] if new[1] == old[1] else UNSURE,
                             new[2], lo, hi))
                start = unsure_end
            cursor = start
            prev = s
        rows.append((cursor, _FAR, *_flags(p, prev), 0, 0))
        frame = pd.DataFrame(rows, columns=["start_at", "end_at", "internal_on", "beta_on",
                                            "threshold", "unsure_lo", "unsure_hi"])
        frame = frame.loc[frame["end_at"] > frame["start_at"]].reset_index(drop=True)
        frame.insert(0, "interval_id", range(len(frame)))
        return frame

    # -- the record --------------------------------------------------------------------------
    def sentence(self, day: int) -> str:
        stage = self.stage_on(day)
        planned = self.planned_phase(day)
        where = _stage_words(stage)
        source = {"flag_log": "the export's flag log", "decisions": "the workbench's own decisions",
                  "calendar": "the plan's calendar (assumed)"}[self.source]
        text = f"On day {day} the rollout is at {where} (from {source})"
        if stage.phase != planned.id or stage.off:
            text += f"; the plan's calendar has {planned.name} that day"
        return text + "."

    def to_dict(self, day: int) -> dict[str, Any]:
        """The ``state`` object of ``decision.json`` (see docs/decision-schema.md)."""
        stage = self.stage_on(day)
        planned = self.planned_phase(day)
        sched = self.schedule()
        return {
            "source": self.source,
            "assumed": self.assumed,
            "known_through": self.known_through,
            "stage": {"phase": stage.phase, "audience": stage.audience,
                      "percentage": float(stage.percentage), "since_day": stage.day,
                      "since": stage.at.isoformat() if stage.at is not None else None,
                      "off": stage.off},
            "planned": {"phase": planned.id, "audience": planned.audience,
                        "percentage": float(planned.percentage)},
            "on_plan": stage.phase == planned.id and not stage.off,
            "stages": [s.to_dict() for s in self.stages],
            "schedule": {"stages": list(sched.stages), "final_day": sched.final_day},
            "sentence": self.sentence(day),
            "warnings": list(self.warnings),
        }


def _threshold(plan: Plan, stage: Stage) -> int:
    from .cohort import stage_threshold

    if stage.off or stage.audience != "percentage":
        return 0
    return stage_threshold(stage.percentage, plan)


def _flags(plan: Plan, stage: Stage) -> tuple[int, int, int]:
    """(internal_on, beta_on, threshold) of a stage."""
    if stage.off:
        return (OFF_CODE, OFF_CODE, 0)
    beta = ON if stage.audience in ("beta", "percentage") else OFF_CODE
    return (ON, beta, _threshold(plan, stage))


def _stage_words(stage: Stage) -> str:
    if stage.off:
        return "whispers off (rolled back)"
    if stage.audience == "percentage":
        return f"{stage.percentage:g}% of active users ({stage.phase})"
    return {"internal": "the internal team", "beta": "the beta users"}.get(
        stage.audience, stage.audience) + f" ({stage.phase})"


# ---------------------------------------------------------------------------------------
# projection and the three sources


def project(plan: Plan, stages: Sequence[Stage], day: int, limit: int = 400) -> tuple[Stage, ...]:
    """``stages`` (actual through ``day``) extended by the stages every later day GO gives,
    from a GO on ``day`` itself, until the plan's last phase is reached."""
    out = list(stages)
    if not out:
        out = [stage_of(plan.phases[0], 0)]
    cur = out[-1]
    last = plan.phases[-1].id
    d = max(day, cur.day)
    while (cur.off or cur.phase != last) and d < day + limit:
        nxt = after_decision(plan, cur, GO, d)
        if nxt is not cur:
            nxt = dataclasses.replace(nxt, projected=True)
            out.append(nxt)
            cur = nxt
        d += 1
    return tuple(out)


def from_calendar(plan: Plan, day: int, why: str = "") -> RolloutState:
    """The plan's calendar, assumed: every phase from its first day at 00:00 UTC."""
    stages = tuple(stage_of(p, p.first_day, plan.day_start(p.first_day), projected=p.first_day > day)
                   for p in plan.phases)
    warning = ("The rollout's actual state is assumed: " + (why or "no flag log and no earlier "
               "decision") + ". The workbench takes the plan's calendar (every day GO) as what "
               "production served; if the rollout was held, rolled back or switched late, the "
               "sample-ratio and assignment checks compare against the wrong stage.")
    return RolloutState(plan, "calendar", stages, day, (warning,))


def from_decisions(plan: Plan, decisions: Mapping[int, str], day: int) -> RolloutState:
    """The stages the workbench's own decisions of days before ``day`` imply (module rules).

    ``decisions``: day -> ``GO`` / ``NO_GO`` / ``ROLLBACK`` / ``ERROR``. Days before the first
    decision on file are assumed to have followed the plan's calendar (GO); a later day without
    a decision is a hold (no GO was given). The first phase starts on day 0."""
    warnings: list[str] = ["Stage changes come from the workbench's own decisions; their time of "
                           "day is not known, so on a day the stage changed the users whose "
                           "variant it changed are not judged by the sample-ratio and assignment "
                           "checks."]
    known = {int(d): str(v) for d, v in decisions.items() if 0 <= int(d) < day}
    first = min(known) if known else day
    assumed = [d for d in range(0, first)]
    missing = [d for d in range(first, day) if d not in known]
    errors = [d for d in range(first, day) if known.get(d) not in (None, GO, "NO_GO", ROLLBACK)]
    if assumed:
        warnings.append(f"No decision on file for day(s) {_days(assumed)}: assumed GO (the plan's "
                        f"calendar) for those days.")
    if missing:
        warnings.append(f"No decision on file for day(s) {_days(missing)}: held (no GO was given).")
    if errors:
        warnings.append(f"Day(s) {_days(errors)} ended without a decision (ERROR): held.")
    cur = stage_of(plan.phases[0], 0, plan.day_start(0))
    stages = [cur]
    for d in range(0, day):
        verdict = GO if d < first else known.get(d)
        nxt = after_decision(plan, cur, verdict, d)
        if nxt is not cur:
            if d < first:  # assumed calendar days switch at midnight, like the calendar
                nxt = dataclasses.replace(nxt, at=plan.day_start(nxt.day))
            stages.append(nxt)
            cur = nxt
    return RolloutState(plan, "decisions", project(plan, stages, day), day, tuple(warnings))


def from_flag_log(plan: Plan, log: pd.DataFrame, day: int) -> RolloutState:
    """The stages logged in ``flag_changes`` up to the end of ``day``: ``changed_at, flag,
    value, percentage, audience`` (other flags than ``NEXT_PUBLIC_WHISPERS_ENABLED`` do not
    change the stage). Before the first logged change whispers are off."""
    end = plan.day_start(day + 1)
    rows = log.loc[(log["flag"] == ENABLED_FLAG)]
    rows = rows.loc[pd.to_datetime(rows["changed_at"]) < pd.Timestamp(end)]
    rows = rows.sort_values("changed_at", kind="stable")
    warnings: list[str] = []
    stages: list[Stage] = []
    cur = Stage(0, plan.phases[0].id, OFF, 0.0)
    for r in rows.itertuples(index=False):
        at = pd.Timestamp(r.changed_at).to_pydatetime()
        d = plan.day_of(at)
        value = str(r.value).strip().lower()
        if value == "false":
            nxt = Stage(d, cur.phase, OFF, 0.0, at)
        elif value == "true":
            audience = None if pd.isna(r.audience) else str(r.audience)
            pct = 0.0 if pd.isna(r.percentage) else float(r.percentage)
            if audience not in ("internal", "beta", "percentage"):
                raise StateError(f"flag_changes: a row at {at} sets {ENABLED_FLAG}=true without an "
                                 f"audience (internal, beta or percentage)")
            phase, note = _match_phase(plan, audience, pct)
            if note:
                warnings.append(f"Flag change at {at:%Y-%m-%d %H:%M} UTC: {note}")
            nxt = Stage(d, phase.id, audience, pct if audience == "percentage" else 0.0, at)
        else:
            raise StateError(f"flag_changes: {ENABLED_FLAG} value {r.value!r} at {at} is not "
                             f"'true' or 'false'")
        if stages and nxt.same_assignment(cur):
            continue
        stages.append(nxt)
        cur = nxt
    if stages and stages[0].day > 0:
        warnings.append(f"The flag log's first change of {ENABLED_FLAG} is on day "
                        f"{stages[0].day}: whispers were off before it.")
    grace = float(getattr(plan.criteria, "assignment_grace_minutes", 0.0))
    return RolloutState(plan, "flag_log", project(plan, stages, day), day, tuple(warnings),
                        grace_minutes=grace)


def _match_phase(plan: Plan, audience: str, pct: float) -> tuple[Phase, str]:
    """The plan phase a logged stage belongs to, and a note when it is not one the plan names."""
    same = [p for p in plan.phases if p.audience == audience]
    if not same:
        return plan.phases[0], f"audience {audience!r} is in no phase of the plan"
    if audience != "percentage":
        return same[0], ""
    exact = [p for p in same if abs(p.percentage - pct) < 1e-9]
    if exact:
        return exact[0], ""
    below = [p for p in same if p.percentage <= pct]
    phase = below[-1] if below else same[0]
    return phase, (f"{pct:g}% is not a stage of the plan; judged with the requirements of "
                   f"{phase.name}, buckets enabled at {pct:g}%")


def _days(days: Sequence[int]) -> str:
    """``0-2, 5`` for [0, 1, 2, 5]."""
    out: list[str] = []
    run: list[int] = []
    for d in sorted(days):
        if run and d == run[-1] + 1:
            run.append(d)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [d]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ", ".join(out)


def decision_history(reports_dir: str | Path | None, before: int) -> dict[int, str]:
    """Day -> decision of every ``day-NN/decision.json`` in ``reports_dir`` for days before
    ``before`` (unreadable files are left out; an ERROR page counts as ``ERROR``)."""
    out: dict[int, str] = {}
    if reports_dir is None:
        return out
    root = Path(reports_dir)
    if not root.is_dir():
        return out
    for d in range(max(before, 0)):
        try:
            doc = json.loads((root / f"day-{d:02d}" / "decision.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("decision"), str):
            out[d] = doc["decision"]
    return out


_UNSET: Any = object()


def resolve_state(export: Export | None, plan: Plan, day: int,
                  reports_dir: str | Path | None = None,
                  data_end: dt.datetime | None = _UNSET) -> RolloutState:
    """The rollout's state on ``day`` from the first source that has it: the export's flag log,
    else the decisions in ``reports_dir``, else the plan's calendar (assumed, with a warning).

    A flag log says nothing past the export's own end (``data_end``, default
    :func:`whispers_lab.queries.monitoring.data_end`): when the export ends before ``day``, the
    stages after its last day are projected (every later day GO), not taken as held."""
    why: list[str] = []
    if export is not None and export.has("flag_changes"):
        from .queries.state import flag_log

        log = flag_log(export, plan.day_start(day + 1))
        if (log["flag"] == ENABLED_FLAG).any():
            if data_end is _UNSET:
                from .queries.monitoring import data_end as export_end

                data_end = export_end(export)
            known = day if data_end is None else min(day, max(plan.day_of(data_end), 0))
            state = from_flag_log(plan, log, known)
            if known < day:
                state = dataclasses.replace(state, warnings=(
                    *state.warnings, f"The export's events end on day {known}: the stages "
                    f"after it are projected (every later day GO), not known."))
            return state
        why.append(f"the export's flag_changes table logs no change of {ENABLED_FLAG} before "
                   f"the end of day {day}")
    else:
        why.append("the export has no flag_changes table")
    history = decision_history(reports_dir, day)
    if history:
        return from_decisions(plan, history, day)
    why.append("no decision of an earlier day is on file" + (
        f" in {Path(reports_dir).name!r}" if reports_dir is not None else ""))
    return from_calendar(plan, day, " and ".join(why))


def rollout_last_day(export_path: str | Path | None, plan: Plan, day: int,
                     reports_dir: str | Path | None = None) -> int:
    """The last rollout day as the state on ``day`` projects it (later than the plan's last day
    after a hold): the reports go on until then. Reads the export's flag log (of the export
    validated, as the report will; as it is when it is not valid) or the decisions in
    ``reports_dir``."""
    if export_path is None:
        return resolve_state(None, plan, day, reports_dir).final_day()
    if day > plan.last_day + 3650:  # no rollout runs ten years late; nor can a date hold it
        return plan.last_day
    from .errors import ExportValidationError
    from .export import open_export

    try:
        # validated: the report that follows reads its validation and repeated events back
        # from the cache, and a DuckDB file never seen is searched for repeated events only
        # over the days its digests say are new (unvalidated, it was searched in full)
        opened = open_export(export_path, copy_small_tables=False)
    except ExportValidationError:  # (the report says what is wrong; the flag log may be fine)
        opened = open_export(export_path, validate=False, copy_small_tables=False)
    with opened as export:
        return max(plan.last_day, resolve_state(export, plan, day, reports_dir).final_day())


def simulated_state(plan: Plan, stages: Sequence[Stage], day: int) -> RolloutState:
    """A state made of given stages (for the simulator and tests), projected after ``day``."""
    known = [s for s in stages if s.day <= day]
    return RolloutState(plan, "flag_log", project(plan, known, day), day)


__all__ = ["ENABLED_FLAG", "OFF", "SOURCES", "RolloutState", "Stage", "StateError",
           "after_decision", "at_boundary", "decision_history", "from_calendar",
           "from_decisions", "from_flag_log", "phase_length", "project", "resolve_state",
           "restart_phase", "rollout_last_day", "simulated_state", "stage_of"]
