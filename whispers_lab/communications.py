"""The seed's communication plan as data, and which of its tasks each day's report lists.

The plan file holds the tasks as ``[[communications]]`` tables (read here from the raw TOML, so
:mod:`whispers_lab.plan` only has to accept the key)::

    [[communications]]
    id = "general_announcement"
    day = 8                    # rollout day the task is due (negative: before day 0)
    what = "General rollout announcement in product"
    audience = "all users"
    channel = "in-product"
    when = "go"                # "always", "go" (only once the rollout may proceed) or "rollback"
    instead = "..."            # optional: what to do when a "go" task is held

The report of day N lists the tasks due on day N + 1, conditional on day N's decision
(:func:`tasks_for_report`):

* ``when = "always"``: due whatever the decision;
* ``when = "go"``: due after a GO; after a NO_GO it is *held* (not sent; its ``instead`` text
  says what to do meanwhile) and comes back as due with the first GO after it (when the
  earlier decisions are known, see ``history``); after a ROLLBACK it is *cancelled*: no
  general announcement for a feature that is being switched off;
* ``when = "rollback"``: due the day after any ROLLBACK (no ``day``).

See ``docs/communications.md``; ``decision.json`` carries the result under ``communications``
(``docs/decision-schema.md``).
"""

from __future__ import annotations

import datetime as dt
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .errors import PlanError
from .plan import Plan

When = Literal["always", "go", "rollback"]
WHEN: tuple[str, ...] = ("always", "go", "rollback")
TaskStatus = Literal["due", "held", "cancelled"]
_KEYS = ("id", "day", "what", "audience", "channel", "when", "instead", "quote")


@dataclass(frozen=True)
class Communication:
    """One task of the communication plan."""

    id: str
    day: int | None
    what: str
    audience: str
    channel: str
    when: When = "always"
    instead: str = ""
    quote: str = ""


@dataclass(frozen=True)
class Task:
    """A task as one day's report lists it."""

    communication: Communication
    due_day: int
    status: TaskStatus
    note: str

    def to_dict(self) -> dict[str, Any]:
        c = self.communication
        return {"id": c.id, "day": c.day, "due_day": self.due_day, "what": c.what,
                "audience": c.audience, "channel": c.channel, "when": c.when,
                "status": self.status, "note": self.note}


# ---------------------------------------------------------------------------------------
# reading


def parse_communications(raw: Any, source: str = "<memory>") -> tuple[Communication, ...]:
    """Validate the raw ``communications`` list of a plan file; a bad entry raises
    :class:`PlanError` naming the key (``communications[2].day``)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise PlanError(f"{source}: key 'communications' must be a list of tables "
                        f"([[communications]]), got {type(raw).__name__}")
    out: list[Communication] = []
    seen: set[str] = set()
    for i, entry in enumerate(raw):
        key = f"communications[{i}]"
        if not isinstance(entry, Mapping):
            raise PlanError(f"{source}: key '{key}' must be a table, got {type(entry).__name__}")
        unknown = sorted(set(entry) - set(_KEYS))
        if unknown:
            raise PlanError(f"{source}: key '{key}.{unknown[0]}' is not a known communication "
                            f"key (known: {', '.join(_KEYS)})")

        def text(name: str, required: bool = True, k: str = key, e: Mapping = entry) -> str:
            value = e.get(name)
            if value is None and not required:
                return ""
            if not isinstance(value, str) or not value.strip():
                raise PlanError(f"{source}: key '{k}.{name}' must be a non-empty string"
                                + ("" if name in e else " (missing)"))
            return value.strip()

        cid, when = text("id"), entry.get("when", "always")
        if when not in WHEN:
            raise PlanError(f"{source}: key '{key}.when' must be one of {', '.join(WHEN)}, "
                            f"got {when!r}")
        day = entry.get("day")
        if when == "rollback":
            if day is not None:
                raise PlanError(f"{source}: key '{key}.day' must be absent for a rollback task "
                                f"(it is due the day after any ROLLBACK)")
        elif isinstance(day, bool) or not isinstance(day, int):
            raise PlanError(f"{source}: key '{key}.day' must be an integer rollout day "
                            f"(negative: before day 0), got {day!r}")
        if cid in seen:
            raise PlanError(f"{source}: key '{key}.id' repeats {cid!r}")
        seen.add(cid)
        out.append(Communication(cid, day, text("what"), text("audience"), text("channel"),
                                 when, text("instead", False), text("quote", False)))
    return tuple(sorted(out, key=lambda c: (c.day is None, c.day if c.day is not None else 0)))


def load_communications(plan: Plan | str | Path | None = None) -> tuple[Communication, ...]:
    """The communication plan of a plan file (a :class:`Plan`, whose ``source`` is read, a
    path, or None for the packaged plan). A plan without ``[[communications]]`` has none."""
    from .paths import DEFAULT_PLAN

    if isinstance(plan, Plan):
        if plan.source == "<memory>":
            return ()
        path = Path(plan.source)
    else:
        path = Path(plan) if plan is not None else DEFAULT_PLAN
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PlanError(f"plan file {str(path)!r} cannot be read for its communication plan: "
                        f"{exc}") from None
    return parse_communications(data.get("communications"), source=str(path))


# ---------------------------------------------------------------------------------------
# what a day's report lists


def _pending(c: Communication, day: int, history: Mapping[int, str]) -> bool:
    """Whether a ``go`` task planned for day ``c.day <= day`` is still waiting: the reports of
    days ``c.day - 1 .. day - 1`` are all known and none was a GO (it would have gone out) or
    a ROLLBACK (it was cancelled)."""
    if c.when != "go" or c.day is None or c.day > day or not history:
        return False
    days = range(max(c.day - 1, 0), day)
    if not all(d in history for d in days):
        return False
    return not any(history[d] in ("GO", "ROLLBACK") for d in days)


def tasks_for_report(communications: Sequence[Communication], day: int, decision: str,
                     history: Mapping[int, str] | None = None) -> tuple[Task, ...]:
    """The tasks day ``day``'s report lists as due on day ``day + 1`` after ``decision``
    (``GO`` / ``NO_GO`` / ``ROLLBACK``; anything else, e.g. ``ERROR``, holds ``go`` tasks).

    ``history``: earlier days' decisions (day -> decision). With it, a ``go`` task held by an
    earlier NO_GO and not released since is listed again (due with the first GO)."""
    history = dict(history or {})
    tomorrow = day + 1
    out: list[Task] = []
    for c in communications:
        if c.when == "rollback":
            if decision == "ROLLBACK":
                out.append(Task(c, tomorrow, "due", "whispers are being rolled back"))
            continue
        pending = _pending(c, day, history)
        if c.day != tomorrow and not pending:
            continue
        late = "" if c.day == tomorrow else f" (planned for day {c.day}, held until now)"
        if c.when == "always":
            out.append(Task(c, tomorrow, "due", "due whatever the decision"))
        elif decision == "GO":
            out.append(Task(c, tomorrow, "due", "the rollout may proceed" + late))
        elif decision == "ROLLBACK":
            out.append(Task(c, tomorrow, "cancelled",
                            "cancelled: whispers are being rolled back"))
        else:
            word = "NO-GO (hold)" if decision == "NO_GO" else f"{decision} (no GO)"
            note = f"held: the day's decision is {word}; send it with the first GO"
            out.append(Task(c, tomorrow, "held", note + (f". Meanwhile: {c.instead}"
                                                         if c.instead else "")))
    return tuple(out)


def history_from_reports(reports_dir: str | Path | None, before: int) -> dict[int, str]:
    """Day -> decision of the published reports in ``reports_dir`` for days before
    ``before`` (``day-NN/decision.json``; unreadable ones are left out): the same history the
    rollout's state is read from (:func:`whispers_lab.state.decision_history`)."""
    from .state import decision_history

    return decision_history(reports_dir, before)


def communications_document(plan: Plan, day: int, decision: str,
                            history: Mapping[int, str] | None = None,
                            communications: Sequence[Communication] | None = None
                            ) -> dict[str, Any]:
    """The ``communications`` object of ``decision.json`` (see docs/decision-schema.md)."""
    comms = load_communications(plan) if communications is None else tuple(communications)
    tasks = tasks_for_report(comms, day, decision, history)
    tomorrow = day + 1
    upcoming = [c for c in comms if c.day is not None and c.day > tomorrow]
    return {
        "for_day": tomorrow,
        "date": (plan.start_date + dt.timedelta(days=tomorrow)).isoformat(),
        "decision": decision,
        "tasks": [t.to_dict() for t in tasks],
        "next": ([{"id": c.id, "day": c.day, "what": c.what, "when": c.when}
                  for c in upcoming[:1]]),
        "plan": [{"id": c.id, "day": c.day, "what": c.what, "audience": c.audience,
                  "channel": c.channel, "when": c.when} for c in comms],
    }
