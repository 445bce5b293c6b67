"""``whispers-lab demo``: simulate a healthy rollout and produce every day's report.

Simulates ``--users`` users through the plan's last day (no planted problem), writes the export
to ``data/demo/`` with a passing QA run for each internal-phase day in ``data/demo/qa/``, then the report of every rollout day (0..last_day) to ``--out`` with
``--workers`` report processes, one progress line per day (plain text, no TTY needed), and the
index. Exit 0 when every day got a report. On a terminal the simulation and the reports get
progress bars on stderr; in a log, one line per stage.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from ..atomic import write_text_atomic
from ..errors import WhispersLabError
from ..paths import DATA_DIR
from ..plan import Plan, load_plan
from ..progress import Progress
from ..qa import QA_DIR_NAME, junit_xml, qa_results_path
from . import options

#: Default size: the plan's expected size, for which the decision statistics are designed
#: (a healthy rollout passes retention from day 12); the whole demo (simulation + 15 reports on
#: 2 workers) takes about 5 minutes on a 2-core machine.
DEFAULT_USERS = 100_000  # the plan's expected size: what the decisions are designed for
DEFAULT_SEED = 20261201


def _say(text: str, progress: Progress | None = None) -> None:
    if progress is not None and progress.live:  # above the live bar, not through it
        from tqdm import tqdm

        tqdm.write(text)
    else:
        print(text, flush=True)


def _report_day(export: str, day: int, plan: str | None, out: str,
                qa: str | None = None) -> tuple[int, str, float, str]:
    """Worker: one day's report; never raises (the error message comes back instead)."""
    from ..report.runner import write_report

    started = time.monotonic()
    try:
        # the parent process holds the report folder's lock for its workers
        result = write_report(export, day, plan_path=plan, out_dir=out, refresh_index=False,
                              lock=False, qa_results=qa)
    except WhispersLabError as exc:
        return day, "ERROR", time.monotonic() - started, str(exc).splitlines()[0]
    except Exception as exc:  # a bug in one day must not hide the other days
        return day, "ERROR", time.monotonic() - started, f"{type(exc).__name__}: {exc}"
    return day, result.decision, result.seconds, ""


def write_demo_qa_results(exports_dir: Path, plan: Plan) -> list[Path]:
    """A passing QA run (JUnit XML) for every day of the internal phase, at the conventional
    place beside the exports (``<exports>/qa/<date>.xml``), as the QA job would leave it."""
    written = []
    for phase in plan.phases:
        if phase.audience != "internal":
            continue
        for day in range(phase.first_day, phase.last_day + 1):
            when = plan.day_start(day) + dt.timedelta(hours=7, minutes=40)
            path = qa_results_path(exports_dir, when.date())
            written.append(write_text_atomic(path, junit_xml(timestamp=when)))
    return written


def run(args: argparse.Namespace) -> int:
    from ..report.folder import FolderLock
    from ..report.index import write_index
    from ..report.runner import write_error_report
    from ..simulate import simulate_to

    started = time.monotonic()
    plan = load_plan(args.plan)
    out = Path(args.out)
    export = DATA_DIR / "demo" / f"whispers-demo-{args.users}u-seed{args.seed}.duckdb"
    # the report folder's lock (the one `report` and `daily` take) for the whole demo: taken
    # first, so that a folder another run is writing is refused before minutes of simulation
    progress = Progress("demo")
    with FolderLock(out, "demo"):
        _say(f"demo: simulating a healthy rollout: {args.users:,} users, seed {args.seed}, "
             f"days 0..{plan.last_day} -> {export}")
        t0 = time.monotonic()
        simulate_to(export, users=args.users, seed=args.seed, plan=plan, progress=progress)
        qa_files = write_demo_qa_results(export.parent, plan)
        _say(f"demo: simulated in {time.monotonic() - t0:.1f} s; {len(qa_files)} passing QA "
             f"run(s) in {export.parent / QA_DIR_NAME}; writing {plan.last_day + 1} daily "
             f"reports to {out} with {args.workers} worker(s)")
        days = list(range(plan.last_day + 1))
        results: dict[int, tuple[str, float, str]] = {}
        plan_arg = str(Path(args.plan).resolve()) if args.plan else None
        context = multiprocessing.get_context("spawn")  # no fork of a process holding DuckDB threads
        with ProcessPoolExecutor(max_workers=args.workers, mp_context=context) as pool, \
                progress.stage("reports", len(days), "reports") as bar:
            futures = [pool.submit(_report_day, str(export), d, plan_arg, str(out),
                                   str(qa_results_path(export.parent, plan.day_start(d).date())))
                       for d in days]
            for future in as_completed(futures):
                day, decision, seconds, error = future.result()
                results[day] = (decision, seconds, error)
                line = f"  day {day:>2}  {decision:<8}  {seconds:5.1f} s"
                if error:
                    line += f"  {error}"
                    write_error_report(out, day, plan, error, export_name=export.name,
                                       refresh_index=False)
                _say(line, progress)
                bar.advance()
        summary_error = _write_demo_summary(out, plan, export)
        index = write_index(out, plan)
    counts: dict[str, int] = {}
    for decision, _, _ in results.values():
        counts[decision] = counts.get(decision, 0) + 1
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    _say(f"demo: {len(results)} reports in {time.monotonic() - started:.0f} s ({summary}); "
         f"open {index}")
    return 1 if counts.get("ERROR") or summary_error else 0


def _write_demo_summary(out: Path, plan: Plan, export: Path) -> str:
    """The stakeholder summary of the simulated rollout (the index links it); "" when written,
    else why not (issue 15)."""
    from ..report.summary import write_summary

    try:
        result = write_summary(out, plan, export)
    except WhispersLabError as exc:
        _say(f"demo: the rollout summary was not written: {exc}")
        return str(exc)
    _say(f"demo: rollout summary -> {result.html}")
    return ""



def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="simulate a healthy rollout and write all 15 daily reports and the index",
        description="Simulate a healthy whispers rollout (no planted problem) and produce the "
                    "go/no-go report of every rollout day plus the index, printing one line per "
                    "day. Open OUT/index.html afterwards.",
    )
    parser.add_argument("--users", type=options.int_at_least(1), default=DEFAULT_USERS, metavar="N",
                        help="simulated users (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, metavar="S",
                        help="random seed (default: %(default)s)")
    options.add_report_dir(parser)
    parser.add_argument("--workers", type=options.int_at_least(1), default=2, metavar="W",
                        help="report processes in parallel (default: %(default)s)")
    options.add_plan(parser)
    parser.set_defaults(func=run)

