"""A simulated rollout whose production follows the workbench's own decisions.

Every morning the workbench reports yesterday's rollout day; production then does what the
report said (hold, advance, roll back, re-enable), at ``flip_time`` UTC on the next day. A hold
in the decisions therefore holds the data of the following days too. :func:`follow_decisions`
runs that loop: for each day, the stages the decisions of the earlier days imply
(:func:`stages_from_reports`, the rules of :mod:`whispers_lab.state`), an export simulated with
those stages (the same seed, so earlier days never change), and the day's report.

The report is a callable ``(export path, day) -> decision``; the default runs the scheduled job
(:func:`whispers_lab.report.daily.run_daily`) on the morning after the day. :func:`decision_only`
does what the report notebook does for ``decision.json`` without executing it (seconds, not a
minute, per day). The export is re-simulated only when the stages change (the days before a
report never depend on the stages after it, and evaluating day N reads data through day N only).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import write_text_atomic
from ..plan import Plan, load_plan
from ..qa import junit_xml, qa_results_path
from ..state import Stage, decision_history, from_decisions
from .core import simulate_to
from .params import ModelParams

Reporter = Callable[[Path, int], str]


def stages_from_reports(plan: Plan, reports_dir: str | Path | None, day: int,
                        flip_time: dt.time | None = None) -> tuple[Stage, ...]:
    """The stages production went through by the end of ``day`` when it follows the decisions
    in ``reports_dir`` (days before ``day``), each change applied at ``flip_time`` (default
    00:00) on its day; the plan's calendar when there is no decision yet."""
    state = from_decisions(plan, decision_history(reports_dir, day), day)
    at = flip_time or dt.time()
    return tuple(
        dataclasses.replace(s, at=s.at if s.day == 0 else dt.datetime.combine(
            plan.day_start(s.day).date(), at))
        for s in state.actual)


def decision_only(plan: Plan, reports_dir: Path, exports_dir: Path | None = None) -> Reporter:
    """A reporter that evaluates the day in-process and publishes ``day-NN/decision.json`` as
    the report notebook does (ids redacted; QA results from the conventional place beside the
    exports), without the notebook and its HTML."""
    from ..evaluate import evaluate_day
    from ..export import open_export
    from ..qa import qa_results_path, read_qa_results
    from ..report import privacy

    def report(export_path: Path, day: int) -> str:
        qa = read_qa_results(qa_results_path(exports_dir or export_path.parent,
                                             plan.day_start(day).date()))
        with open_export(export_path) as export:
            ev = evaluate_day(export, day, plan, qa=qa, reports_dir=reports_dir)
            document, _ = privacy.redact(export, ev.decision.to_dict())
        folder = reports_dir / f"day-{day:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "decision.json").write_text(json.dumps(document, indent=2, allow_nan=False)
                                              + "\n", encoding="utf-8")
        return str(document["decision"])

    return report


def daily_job(plan: Plan, reports_dir: Path, exports_dir: Path,
              plan_path: str | Path | None = None) -> Reporter:
    """A reporter that runs the scheduled job on the morning after the day."""
    from ..report.daily import run_daily

    def report(export_path: Path, day: int) -> str:
        today = plan.start_date + dt.timedelta(days=day + 1)
        outcome = run_daily(exports_dir, plan_path=plan_path, out_dir=reports_dir, today=today)
        if outcome.result is None:
            return "ERROR"
        return outcome.result.decision

    return report


@dataclass
class FollowedRollout:
    """What the loop did: each day's decision and the stages production went through."""

    decisions: dict[int, str] = field(default_factory=dict)
    stages: tuple[Stage, ...] = ()
    simulations: int = 0
    export: Path | None = None


def follow_decisions(exports_dir: str | Path, reports_dir: str | Path, users: int, seed: int, *,
                     plan: Plan | None = None, last_day: int | None = None,
                     flip_time: dt.time | None = dt.time(9, 0), with_flag_log: bool = False,
                     scenarios: Sequence[str] = (), params: ModelParams | None = None,
                     report: Reporter | None = None,
                     reporters: dict[int, Reporter] | None = None,
                     passing_qa: bool = True) -> FollowedRollout:
    """Simulate and report days ``0..last_day`` (default: the plan's last day) with production
    following each morning's decision (module docstring). ``report`` (default: the scheduled
    job) reports a day; ``reporters`` overrides it for given days; ``passing_qa`` leaves a
    passing QA run for each day at the conventional place (``<exports>/qa/<date>.xml``). The
    export is
    ``<exports_dir>/rollout.duckdb``; ``with_flag_log`` writes the flag log into it (then the
    state comes from the log, else from the decisions)."""
    plan = plan or load_plan()
    exports = Path(exports_dir)
    reports = Path(reports_dir)
    exports.mkdir(parents=True, exist_ok=True)
    reports.mkdir(parents=True, exist_ok=True)
    last = plan.last_day if last_day is None else int(last_day)
    report = report or daily_job(plan, reports, exports)
    out = FollowedRollout(export=exports / "rollout.duckdb")
    simulated: tuple[Stage, ...] | None = None
    for day in range(0, last + 1):
        if passing_qa:  # the QA job's run of the morning (Phase 1 requires it)
            when = plan.day_start(day) + dt.timedelta(hours=7, minutes=40)
            write_text_atomic(qa_results_path(exports, when.date()), junit_xml(timestamp=when))
        stages = stages_from_reports(plan, reports, day, flip_time)
        if stages != simulated:  # the data through `day` depend on these stages only
            simulate_to(out.export, users, seed, through_day=last, scenarios=scenarios,
                        plan=plan, params=params, stages=stages, with_flag_log=with_flag_log)
            simulated = stages
            out.simulations += 1
        out.decisions[day] = (reporters or {}).get(day, report)(out.export, day)
        out.stages = stages
    return out


__all__ = ["FollowedRollout", "Reporter", "daily_job", "decision_only", "follow_decisions",
           "stages_from_reports"]
