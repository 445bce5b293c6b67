"""``whispers-lab daily``: the scheduled job (run it from cron shortly after 00:00 UTC).

Reports yesterday's rollout day (the last complete UTC day) from the newest export in
``--exports``; one run at a time (lock file in the report folder); a failed run publishes an
ERROR page for the day and exits 1. See ``docs/report.md`` for the crontab line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from ..progress import Progress
from ..report.daily import run_daily
from ..report.stopping import stop_on_signals
from . import options


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    with stop_on_signals(), options.engine_environment(args):
        outcome = run_daily(args.exports, plan_path=args.plan, out_dir=args.out,
                            today=args.today, timeout=args.timeout, progress=Progress("daily"),
                            qa_results=args.qa_results)
    stream = sys.stderr if outcome.exit_code else sys.stdout
    print(f"daily: {outcome.message}", file=stream)
    return outcome.exit_code


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "daily",
        help="scheduled job: report yesterday's rollout day from the newest export",
        description="Report the last complete rollout day (yesterday, UTC) from the newest export "
                    "in --exports (DuckDB files and Parquet folders, by modification time). "
                    "Idempotent; refuses to run while another run holds the lock; on failure "
                    "publishes an ERROR page for the day (no decision) and exits 1.",
    )
    parser.add_argument("--exports", required=True, type=Path, metavar="DIR",
                        help="folder the daily exports land in")
    options.add_plan(parser)
    options.add_report_dir(parser)
    parser.add_argument("--today", type=_date, default=None, metavar="YYYY-MM-DD",
                        help="pretend today is this UTC date (testing; default: today)")
    options.add_timeout(parser)
    options.add_engine(parser)
    options.add_qa_results(parser, "default: EXPORTS/qa/YYYY-MM-DD/ or EXPORTS/qa/YYYY-MM-DD.xml "
                                   "for the reported day")
    parser.set_defaults(func=run)
