"""The daily decision: GO / NO_GO / ROLLBACK, the plan's next step, and ``decision.json``.

:func:`decide` is a pure function of the day's criterion and trigger results and the plan:

1. ``ROLLBACK`` if any trigger fired (status ``fail``), in every phase; and, when the plan's
   ``deterioration.rollback_on_harm`` is on, if harm is shown (reason code ``harm_detected``)
   on a criterion the plan requires in any phase: proven harm on a metric the rollout can
   never pass is not a reason to wait at the current audience.
2. ``NO_GO`` if anything blocks the day:

   * a criterion the phase *requires* that does not pass (fail, inconclusive, no_data, or
     missing from the results altogether);
   * a criterion the phase *watches* that fails (inconclusive / no_data watched criteria are
     reported, not blocking);
   * a trigger with status ``no_data`` (what it watches could not be seen at all), in every
     phase;
   * a trigger that is ``inconclusive`` (data present but too thin for its minute rule) where
     the trigger is *required*: every trigger in percentage phases; in the internal and beta
     phases the two per-minute triggers (error rate, latency) are *watched*, because a handful
     of users rarely produce a minute with enough requests, and the daily error rate and average
     response criteria judge those days instead.

3. ``GO`` otherwise.

Every result carries a reason code (``results.REASON_CODES``) and so does the decision
(:data:`DECISION_CODES`): a hold says whether harm was detected, a criterion failed, or the
evidence is not there yet.

The next step follows the plan: on GO the audience of day + 1 (continue the phase, or advance to
the next phase on its first day; after the last day, stay at 100%); on NO_GO hold the current
phase's audience and flags; on ROLLBACK set the plan's rollback flags, monitor, investigate.
The JSON layout is documented in ``docs/decision-schema.md``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .atomic import write_text_atomic
from .plan import TRIGGER_IDS, FlagValue, Phase, Plan
from .results import CriterionResult

if TYPE_CHECKING:
    from .state import RolloutState

Verdict = Literal["GO", "NO_GO", "ROLLBACK"]
Action = Literal["continue", "advance", "complete", "hold", "rollback", "reenable"]
Role = Literal["required", "watched", "info"]

SCHEMA_VERSION = 2
#: Why the decision is what it is, worst first.
DECISION_CODES: tuple[str, ...] = ("trigger_fired", "harm_detected", "criterion_failed",
                                   "not_enough_evidence", "all_pass")
#: Result codes that mean "not enough evidence yet" (not a failure).
EVIDENCE_CODES: frozenset[str] = frozenset({"insufficient_evidence", "untrustworthy", "no_data"})
#: Plain words of each decision code for reports.
DECISION_CODE_TEXT: dict[str, str] = {
    "trigger_fired": "rollback trigger fired",
    "harm_detected": "harm detected",
    "criterion_failed": "a criterion failed",
    "not_enough_evidence": "not enough evidence yet",
    "all_pass": "all criteria pass",
}
#: Worst first: a decision with a lower rank is more conservative.
VERDICT_RANK: dict[str, int] = {"ROLLBACK": 0, "NO_GO": 1, "GO": 2}
#: Triggers that are only watched (not required) in phases without a percentage audience.
MINUTE_TRIGGERS: tuple[str, ...] = ("trigger_error_rate", "trigger_latency")

ROLLBACK_INSTRUCTIONS: tuple[str, ...] = (
    "Set the rollback flags (NEXT_PUBLIC_WHISPERS_ENABLED=false).",
    "Clear the CDN cache for API routes.",
    "Monitor for {minutes} minutes to confirm the rollback took effect.",
    "Investigate the root cause before re-enabling.",
)


def role_of(result: CriterionResult | str, phase: Phase, kind: str | None = None) -> Role:
    """Role of a criterion or trigger in ``phase``: required, watched or info."""
    rid = result if isinstance(result, str) else result.id
    kind = kind or (result.kind if isinstance(result, CriterionResult) else
                    ("trigger" if rid in TRIGGER_IDS else "criterion"))
    if kind == "trigger":
        if rid in MINUTE_TRIGGERS and phase.audience != "percentage":
            return "watched"
        return "required"
    if rid in phase.required:
        return "required"
    if rid in phase.watched:
        return "watched"
    return "info"


@dataclass(frozen=True)
class NextStep:
    """What to do next, with the flag values to set."""

    action: Action
    day: int
    phase: str
    audience: str
    percentage: float
    environment: str
    flags: Mapping[str, FlagValue]
    instructions: tuple[str, ...] = ()
    monitor_minutes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "day": self.day, "phase": self.phase,
                "audience": self.audience, "percentage": self.percentage,
                "environment": self.environment, "flags": dict(self.flags),
                "monitor_minutes": self.monitor_minutes,
                "instructions": list(self.instructions)}


@dataclass(frozen=True)
class Decision:
    """The decision for one rollout day and everything it rests on."""

    day: int
    date: dt.date
    phase: Phase
    decision: Verdict
    next_step: NextStep
    reasons: tuple[str, ...]
    results: tuple[CriterionResult, ...]
    roles: Mapping[str, Role]
    blocking: tuple[str, ...] = ()
    fired: tuple[str, ...] = ()
    plan_name: str = ""
    plan_source: str = ""
    plan_version: int = 1
    notes: tuple[str, ...] = field(default=())
    code: str = "all_pass"
    harm: tuple[str, ...] = ()
    #: the rollout's state (``RolloutState.to_dict(day)``); None: the plan's calendar, not
    #: recorded (decisions made without a state)
    state: Mapping[str, Any] | None = None

    @property
    def code_text(self) -> str:
        """The decision code in plain words ("held: not enough evidence yet")."""
        words = DECISION_CODE_TEXT.get(self.code, self.code)
        if self.decision == "NO_GO":
            return f"held: {words}"
        if self.decision == "ROLLBACK":
            return f"rolled back: {words}"
        return words

    @property
    def criteria(self) -> tuple[CriterionResult, ...]:
        return tuple(r for r in self.results if r.kind == "criterion")

    @property
    def triggers(self) -> tuple[CriterionResult, ...]:
        return tuple(r for r in self.results if r.kind == "trigger")

    def _entry(self, r: CriterionResult) -> dict[str, Any]:
        d = r.to_dict()
        return {"id": d["id"], "kind": d["kind"], "role": self.roles.get(r.id, "info"),
                "value": d["value"], "threshold": d["threshold"], "status": d["status"],
                "fired": r.fired if r.kind == "trigger" else None,
                "blocking": r.id in self.blocking or r.id in self.fired or r.id in self.harm,
                "code": r.code, "reason": d["reason"], "unit": d["unit"],
                "details": d["details"]}

    def to_dict(self, generated_at: dt.datetime | None = None) -> dict[str, Any]:
        """The ``decision.json`` document (see docs/decision-schema.md)."""
        when = generated_at or dt.datetime.now(dt.UTC).replace(tzinfo=None)
        return {
            "schema_version": SCHEMA_VERSION,
            "generated_at": when.replace(microsecond=0).isoformat() + "Z",
            "plan": {"name": self.plan_name, "source": self.plan_source,
                     "version": self.plan_version},
            "day": self.day,
            "date": self.date.isoformat(),
            "phase": {"id": self.phase.id, "name": self.phase.name,
                      "audience": self.phase.audience, "percentage": self.phase.percentage,
                      "environment": self.phase.environment,
                      "first_day": self.phase.first_day, "last_day": self.phase.last_day},
            "decision": self.decision,
            "reason_code": self.code,
            "reason_text": self.code_text,
            "next_step": self.next_step.to_dict(),
            "reasons": list(self.reasons),
            "blocking": list(self.blocking),
            "fired": list(self.fired),
            "harm": list(self.harm),
            "notes": list(self.notes),
            "criteria": [self._entry(r) for r in self.criteria],
            "triggers": [self._entry(r) for r in self.triggers],
            **({"state": dict(self.state)} if self.state is not None else {}),
        }

    def to_json(self, path: str | Path | None = None, *,
                generated_at: dt.datetime | None = None) -> str:
        """The decision as JSON text; also written to ``path`` (atomically) when given."""
        text = json.dumps(self.to_dict(generated_at), indent=2, ensure_ascii=False,
                          allow_nan=False) + "\n"
        if path is not None:
            write_text_atomic(path, text)
        return text


# ---------------------------------------------------------------------------------------
# next step


def _phase_step(action: Action, day: int, phase: Phase,
                instructions: tuple[str, ...] = ()) -> NextStep:
    return NextStep(action=action, day=day, phase=phase.id, audience=phase.audience,
                    percentage=phase.percentage, environment=phase.environment,
                    flags=dict(phase.flags), instructions=instructions)


def next_step(verdict: Verdict, day: int, plan: Plan,
              blocking: Sequence[str] = (), state: RolloutState | None = None) -> NextStep:
    """The plan's next step after ``verdict`` on ``day``: from the plan's calendar, or with
    ``state`` from the stage actually in force (a held stage is held again or advanced from
    where it is; a GO while whispers are off re-enables them at the plan's restart phase)."""
    if state is not None:
        return _state_step(verdict, day, state, blocking)
    current = plan.phase_for_day(day)
    tomorrow = day + 1
    if verdict == "ROLLBACK":
        return _rollback_step(plan, current, tomorrow)
    if verdict == "NO_GO":
        what = ", ".join(blocking) if blocking else "the blocking criteria"
        return _phase_step("hold", tomorrow, current, (
            f"Hold at the current audience ({_audience_text(current)}); do not advance.",
            f"Resolve {what} and evaluate again.",
        ))
    if day >= plan.last_day:
        return _complete_step(plan, tomorrow)
    nxt = plan.phase_for_day(tomorrow)
    if nxt.id != current.id:
        return _phase_step("advance", tomorrow, nxt, (
            f"Advance to {nxt.name}: {_audience_text(nxt)} from day {tomorrow}.",
        ))
    return _phase_step("continue", tomorrow, current, (
        f"Continue {current.name} ({_audience_text(current)}) on day {tomorrow}.",
    ))


def _rollback_step(plan: Plan, current: Phase, tomorrow: int) -> NextStep:
    flags = dict(current.flags)
    flags.update(plan.rollback_flags)
    steps = tuple(s.format(minutes=plan.rollback_monitor_minutes) for s in ROLLBACK_INSTRUCTIONS)
    return NextStep(action="rollback", day=tomorrow, phase=current.id, audience="none",
                    percentage=0.0, environment=current.environment, flags=flags,
                    instructions=steps, monitor_minutes=plan.rollback_monitor_minutes)


def _complete_step(plan: Plan, tomorrow: int) -> NextStep:
    return _phase_step("complete", tomorrow, plan.phases[-1], (
        "The plan's last day passed with GO: keep the full rollout.",
        "Post-rollout tasks: remove the feature flags, optimise performance, document "
        "lessons learned.",
    ))


def _state_step(verdict: Verdict, day: int, state: RolloutState,
                blocking: Sequence[str]) -> NextStep:
    from .state import after_decision

    plan = state.plan
    stage = state.stage_on(day)
    current = state.phase_on(day)
    tomorrow = day + 1
    planned = plan.phase_for_day(tomorrow)
    if verdict == "ROLLBACK":
        return _rollback_step(plan, current, tomorrow)
    nxt = after_decision(plan, stage, verdict, day)
    if stage.off:
        if nxt is not stage:  # GO while off: re-enable at the plan's restart phase
            phase = _plan_phase(plan, nxt.phase)
            return _phase_step("reenable", tomorrow, phase, (
                f"Re-enable whispers at {phase.name} ({_audience_text(phase)}) from day "
                f"{tomorrow}: the plan restarts a rolled-back rollout there.",
                "Only once the root cause of the rollback has been found and fixed.",
            ))
        flags = dict(current.flags)
        flags.update(plan.rollback_flags)
        what = ", ".join(blocking) if blocking else "the root cause"
        return NextStep(action="hold", day=tomorrow, phase=current.id, audience="none",
                        percentage=0.0, environment=current.environment, flags=flags,
                        instructions=(f"Keep whispers off (off since day {stage.day}).",
                                      f"Resolve {what}; a GO re-enables them at "
                                      f"{_plan_phase(plan, _restart(plan, stage.phase)).name}."))
    held = _stage_text(stage)
    if verdict == "NO_GO":
        what = ", ".join(blocking) if blocking else "the blocking criteria"
        behind = (f" The plan's calendar has {planned.name} on day {tomorrow}; every hold "
                  f"moves the later stages one day." if planned.id != stage.phase else "")
        return _held_step(tomorrow, current, stage, (
            f"Hold at the current audience ({held}, in force since day {stage.day}); do not "
            f"advance.{behind}",
            f"Resolve {what} and evaluate again.",
        ))
    if nxt is not stage:
        phase = _plan_phase(plan, nxt.phase)
        return _phase_step("advance", tomorrow, phase, (
            f"Advance to {phase.name}: {_audience_text(phase)} from day {tomorrow}"
            + (f" (the plan's calendar had it on day {phase.first_day})."
               if phase.first_day != tomorrow else "."),
        ))
    if stage.phase == plan.phases[-1].id:
        return _complete_step(plan, tomorrow)
    return _held_step(tomorrow, current, stage, (
        f"Continue {current.name} ({held}) on day {tomorrow}.",), action="continue")


def _held_step(tomorrow: int, current: Phase, stage: Any, instructions: tuple[str, ...],
               action: Action = "hold") -> NextStep:
    """The stage in force, as it is (its own percentage when the flag log has one the plan
    does not name)."""
    step = _phase_step(action, tomorrow, current, instructions)
    if stage.audience == "percentage" and float(stage.percentage) != float(current.percentage):
        step = NextStep(action=step.action, day=step.day, phase=step.phase,
                        audience=step.audience, percentage=float(stage.percentage),
                        environment=step.environment, flags=step.flags,
                        instructions=step.instructions)
    return step


def _plan_phase(plan: Plan, pid: str) -> Phase:
    return next(p for p in plan.phases if p.id == pid)


def _restart(plan: Plan, pid: str) -> str:
    from .state import restart_phase

    return restart_phase(plan, pid).id


def _stage_text(stage: Any) -> str:
    if stage.audience == "percentage":
        return f"{stage.percentage:g}% of active users"
    return {"beta": "the beta users", "internal": "the internal team"}.get(stage.audience,
                                                                           stage.audience)


def _audience_text(phase: Phase) -> str:
    if phase.audience == "percentage":
        return f"{phase.percentage:g}% of active users"
    if phase.audience == "beta":
        return "the beta users"
    return f"the internal team ({phase.environment})"


# ---------------------------------------------------------------------------------------
# decide


def decide(results: Sequence[CriterionResult], day: int, plan: Plan,
           state: RolloutState | None = None) -> Decision:
    """GO / NO_GO / ROLLBACK for ``day`` from the day's results (see the module docstring).

    ``state``: the rollout's actual state (:mod:`whispers_lab.state`): the phase whose
    requirements apply is the stage in force on ``day`` (after a hold on day 9, day 10 is
    still the 10% phase), the next step follows from it, and ``decision.json`` records it."""
    phase = state.phase_on(day) if state is not None else plan.phase_for_day(day)
    results = tuple(results)
    roles: dict[str, Role] = {r.id: role_of(r, phase) for r in results}
    present = {r.id for r in results if r.kind == "criterion"}
    missing = [cid for cid in phase.required if cid not in present]
    for cid in missing:
        roles[cid] = "required"

    fired = tuple(dict.fromkeys(r.id for r in results if r.kind == "trigger" and r.status == "fail"))
    blocking: list[str] = []
    fired_reasons: list[str] = []
    reasons: list[str] = []
    notes: list[str] = []
    for r in results:
        role = roles[r.id]
        if r.kind == "trigger":
            if r.status == "fail":
                fired_reasons.append(r.reason)
            elif r.status == "no_data":
                blocking.append(r.id)
                reasons.append(f"Trigger {r.id} could not be evaluated: {r.reason}")
            elif r.status == "inconclusive":
                if role == "required":
                    blocking.append(r.id)
                    reasons.append(f"Trigger {r.id} could not be evaluated: {r.reason}")
                else:
                    notes.append(f"Trigger {r.id} (watched in this phase): {r.reason}")
            continue
        if role == "required" and r.status != "pass":
            blocking.append(r.id)
            reasons.append(f"Required {r.id} is {r.status}: {r.reason}")
        elif role == "watched" and r.status == "fail":
            blocking.append(r.id)
            reasons.append(f"Watched {r.id} fails: {r.reason}")
        elif role == "watched" and r.status != "pass":
            notes.append(f"Watched {r.id} is {r.status}: {r.reason}")
    for cid in missing:
        blocking.append(cid)
        reasons.append(f"Required {cid} was not evaluated (no result).")
    blocking_ids = tuple(dict.fromkeys(blocking))
    reasons = fired_reasons + reasons
    by_id = {r.id: r for r in results}
    harm = tuple(r.id for r in results if r.kind == "criterion" and r.code == "harm_detected"
                 and plan.deterioration.rollback_on_harm and plan.required_from(r.id) is not None)

    verdict: Verdict
    if fired or harm:
        verdict = "ROLLBACK"
        if harm:
            reasons.insert(0, f"Harm shown on {', '.join(harm)}, which the plan requires: "
                              f"roll back (plan: deterioration.rollback_on_harm).")
        if fired:
            reasons.insert(0, f"{len(fired)} rollback trigger(s) fired: {', '.join(fired)}.")
        code = "trigger_fired" if fired else "harm_detected"
    elif blocking_ids:
        verdict = "NO_GO"
        codes = [by_id[b].code if b in by_id else "no_data" for b in blocking_ids]
        if "harm_detected" in codes:
            code = "harm_detected"
        elif any(c not in EVIDENCE_CODES for c in codes):
            code = "criterion_failed"
        else:
            code = "not_enough_evidence"
        reasons.insert(0, f"{len(blocking_ids)} item(s) block the day "
                          f"({DECISION_CODE_TEXT[code]}): {', '.join(blocking_ids)}.")
    else:
        verdict = "GO"
        code = "all_pass"
        n_req = len(phase.required)
        reasons.insert(0, f"All {n_req} required criteria of {phase.name} pass, no watched "
                          f"criterion fails and no rollback trigger fired.")
    step = next_step(verdict, day, plan, blocking_ids, state=state)
    record = state.to_dict(day) if state is not None else None
    if state is not None:
        notes.extend(f"Rollout state: {w}" for w in state.warnings)
    return Decision(day=day, date=plan.day_start(day).date(), phase=phase, decision=verdict,
                    next_step=step, reasons=tuple(reasons), results=results, roles=roles,
                    blocking=blocking_ids, fired=fired, plan_name=plan.name,
                    plan_source=plan.source, plan_version=plan.version, notes=tuple(notes),
                    code=code, harm=harm, state=record)
