"""``whispers-lab report``: one rollout day's go/no-go report.

Writes ``DIR/day-NN/`` (report.html, report.ipynb, decision.json) atomically and refreshes
``DIR/index.html``. Exit 0 whenever a report was written, whatever the decision; exit 1 with a
one-line message when it could not be (day outside the plan, export missing or invalid,
notebook failure, another run holding the report folder's lock). Stopped by SIGTERM / SIGINT /
SIGHUP, it leaves nothing half-written, releases the lock, publishes the day's ERROR page
saying the run was stopped, and exits 128 + the signal number. See ``docs/report.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..plan import load_plan
from ..progress import Progress
from ..report.folder import FolderLock
from ..report.runner import check_day, publish_stopped, rollout_last_day_or_none, write_report
from ..report.stopping import RunStopped, stop_on_signals
from . import options


def run(args: argparse.Namespace) -> int:
    with stop_on_signals(), options.engine_environment(args):
        plan = load_plan(args.plan)
        check_day(plan, args.day, rollout_last_day_or_none(args.export, plan, args.day, args.out))
        # the same lock as `daily` (and `demo`): never two runs writing this folder at once
        with FolderLock(args.out, "report"):
            try:
                result = write_report(args.export, args.day, plan_path=args.plan,
                                      out_dir=args.out, timeout=args.timeout,
                                      progress=Progress("report"),
                                      qa_results=args.qa_results)
            except RunStopped as stop:
                # SIGTERM / SIGINT: nothing half-written is left; the day says it was stopped
                publish_stopped(args.out, args.day, plan, stop, export_name=args.export.name)
                raise
    print(f"report: day {result.day}: {result.decision} -> {result.path / 'report.html'} "
          f"({result.seconds:.1f} s)")
    if result.summary is not None:  # the plan's last day: the stakeholder summary (issue 15)
        print(f"report: rollout summary -> {result.summary}")
    if result.message:
        print(f"report: warning: {result.message}", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write one rollout day's go/no-go report (HTML, notebook, decision.json)",
        description="Evaluate one rollout day of an export against the plan and write "
                    "DIR/day-NN/report.html (self-contained, no code), report.ipynb (the executed "
                    "notebook) and decision.json, then refresh DIR/index.html. The previous "
                    "report of the day stays in place until the new one is complete.",
    )
    parser.add_argument("--export", required=True, type=Path, metavar="PATH",
                        help="export: DuckDB file or folder of Parquet files")
    parser.add_argument("--day", required=True, type=int, metavar="N",
                        help="rollout day to report (0 = the plan's start date)")
    options.add_plan(parser)
    options.add_report_dir(parser)
    options.add_timeout(parser)
    options.add_engine(parser)
    options.add_qa_results(parser, "default: none (the qa_scenarios criterion, required in "
                                   "Phase 1, then has no data)")
    parser.set_defaults(func=run)
