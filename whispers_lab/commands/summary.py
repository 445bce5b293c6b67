"""``whispers-lab summary``: the stakeholder summary of the whole rollout, on demand.

``report`` writes it by itself on the plan's last day; this command (re)writes it at any time
from the report folder's day folders, and with ``--export`` computes the success metrics
afresh over the whole rollout. Writes ``DIR/summary.html`` and ``DIR/summary.json`` (each
atomically, after the privacy scan) and refreshes ``DIR/index.html``, which links the summary.
Holds the report folder's lock, like ``report`` and ``daily``. Exit 0 when written, 1 with a
one-line message otherwise (no day report in the folder, an export that does not reach the last
reported day, a privacy-scan hit). See ``docs/report.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..paths import REPORTS_DIR
from ..plan import load_plan
from . import options


def run(args: argparse.Namespace) -> int:
    from ..report.folder import FolderLock
    from ..report.index import write_index
    from ..report.summary import write_summary

    plan = load_plan(args.plan)
    with FolderLock(args.reports, "summary"):
        result = write_summary(args.reports, plan, args.export)
        write_index(args.reports, plan)
    doc = result.document
    met = sum(1 for m in doc["metrics"] if m["status"] == "pass")
    print(f"summary: {doc['outcome']['headline']}; {met} of {len(doc['metrics'])} metrics met "
          f"-> {result.html}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "summary",
        help="write the stakeholder summary of the whole rollout (success metrics, every "
             "day's decision, incidents, trends)",
        description="Write DIR/summary.html (one self-contained page for stakeholders) and "
                    "DIR/summary.json from the day reports in DIR: every success metric of "
                    "the plan with its interval and verdict, the decision of every day with "
                    "its reason, incidents and holds, trend charts across days. With --export "
                    "the success metrics are computed afresh over the whole rollout; without "
                    "it they are the last report's. `report` writes it on the plan's last day.",
    )
    parser.add_argument("--reports", type=Path, default=REPORTS_DIR, metavar="DIR",
                        help=f"report folder holding the day-NN folders (default: {REPORTS_DIR})")
    parser.add_argument("--export", type=Path, default=None, metavar="PATH",
                        help="the rollout's export (DuckDB file or Parquet folder) reaching the "
                             "last reported day: success metrics over the whole rollout")
    options.add_plan(parser)
    parser.set_defaults(func=run)
