"""The scheduled job: every morning, report the rollout day that just ended.

Which day: the job runs on UTC date ``today`` and reports the **last complete rollout day**,
``plan.day_of(today) - 1`` (yesterday's rollout day): a day can only be judged once all its 24
hours are in the export. Run at 00:00 UTC + however long the export takes to land. Before the
first report is due, or after the plan's last day has been reported, there is nothing to do.

Which export: the newest in the exports folder by modification time, among DuckDB files
(``*.duckdb``, ``*.db``, ``*.ddb``) and folders holding Parquet files; hidden and temporary
names (``.x.tmp-...``, ``.old-``) and ``*.truth.json`` are ignored. An export that ends before
the reported day begins is stale: the run fails rather than judge a day it cannot see.

QA results (Phase 1's "All QA scenarios pass"): ``--qa-results``, else the conventional place
beside the exports, ``<exports>/qa/<YYYY-MM-DD>/`` (a folder of JUnit XML files) or
``<exports>/qa/<YYYY-MM-DD>.xml``, dated with the reported day (see ``docs/qa.md``).

Safety:

* one run at a time: an exclusive ``fcntl.flock`` on ``<out>/.daily.lock``, the lock that
  ``report`` and ``demo`` take too (:class:`~whispers_lab.report.folder.FolderLock`); a second
  run exits non-zero with "another daily run holds the lock (pid N)". Taking it removes the
  staging folders of killed runs;
* stopped by SIGTERM / SIGINT / SIGHUP, it leaves nothing half-written, publishes the day's
  ERROR page saying the run was stopped, releases the lock and exits 128 + the signal number;
* idempotent: a re-run replaces the day's report atomically;
* a failed run never leaves an older report looking current: the day gets an ERROR page and an
  ERROR decision.json (the previous report of that day, if any, is kept beside it as
  superseded), the index shows it, and the job exits non-zero.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from ..errors import ReportError, WhispersLabError
from ..paths import REPORTS_DIR
from ..plan import Plan, load_plan
from ..progress import Progress
from ..qa import qa_results_path
from .coverage_check import check_export_covers
from .folder import LOCK_NAME, FolderLock, is_temp_name, utc_now
from .runner import (
    DEFAULT_CELL_TIMEOUT_S,
    ReportResult,
    publish_stopped,
    write_error_report,
    write_report,
)
from .stopping import RunStopped

__all__ = ["LOCK_NAME", "DailyLock", "DailyOutcome", "check_export_covers", "export_candidates",
           "newest_export", "remove_stale_temporaries", "report_day", "run_daily"]

DUCKDB_SUFFIXES: tuple[str, ...] = (".duckdb", ".db", ".ddb")
IGNORED_SUFFIXES: tuple[str, ...] = (".truth.json", ".wal", ".lock")


class DailyLock(FolderLock):
    """The report folder's lock as the scheduled job takes it (see
    :class:`~whispers_lab.report.folder.FolderLock`; ``report`` and ``demo`` take the same)."""

    def __init__(self, out_dir: str | Path) -> None:
        super().__init__(out_dir, "daily")


def remove_stale_temporaries(out_dir: Path) -> list[str]:
    """Take the folder's lock and sweep what killed runs left (staging folders no live lock
    holder owns); return the names removed. Raises :class:`ReportError` when another run
    holds the lock (its staging folder is then live and stays)."""
    with DailyLock(out_dir) as lock:
        return lock.swept


# ---------------------------------------------------------------------------------------
# which export, which day


def export_candidates(exports_dir: str | Path) -> list[Path]:
    """Every export in ``exports_dir``: DuckDB files by suffix and folders holding Parquet."""
    root = Path(exports_dir)
    if not root.is_dir():
        raise ReportError(f"exports folder {str(root)!r} does not exist")
    out = []
    for child in root.iterdir():
        name = child.name
        if is_temp_name(name) or name.endswith(IGNORED_SUFFIXES):
            continue
        if child.is_file() and name.lower().endswith(DUCKDB_SUFFIXES):
            out.append(child)
        elif child.is_dir() and any(child.rglob("*.parquet")):
            out.append(child)
    return out


def modified(path: Path) -> float:
    """Modification time of an export: the file's, or the newest of a folder and its files."""
    if path.is_dir():
        times = [path.stat().st_mtime] + [p.stat().st_mtime for p in path.rglob("*.parquet")]
        return max(times)
    return path.stat().st_mtime


def newest_export(exports_dir: str | Path) -> Path:
    """The newest export in ``exports_dir`` (by modification time; ties broken by name)."""
    candidates = export_candidates(exports_dir)
    if not candidates:
        raise ReportError(f"no export in {str(exports_dir)!r} (looked for *.duckdb / *.db "
                          f"files and folders of Parquet files)")
    return max(candidates, key=lambda p: (modified(p), p.name))


def report_day(plan: Plan, today: dt.date) -> int:
    """The rollout day the job reports when run on UTC date ``today``: the last complete day."""
    return plan.day_of(today) - 1


def _state_last_day(exports_dir: str | Path, plan: Plan, day: int, out: Path) -> int:
    """The rollout's last day as its state projects it (a held rollout runs past the plan's
    last day: the job reports until then); the plan's when no export can tell."""
    from ..state import rollout_last_day

    try:
        return rollout_last_day(newest_export(exports_dir), plan, day, out)
    except WhispersLabError:
        return plan.last_day


@dataclass(frozen=True)
class DailyOutcome:
    """What one run did: ``status`` is ``reported``, ``nothing_to_do`` or ``failed``."""

    status: str
    message: str
    day: int | None = None
    result: ReportResult | None = None

    @property
    def exit_code(self) -> int:
        return 1 if self.status == "failed" else 0


def run_daily(exports_dir: str | Path, *, plan_path: str | Path | None = None,
              out_dir: str | Path | None = None, today: dt.date | None = None,
              timeout: int = DEFAULT_CELL_TIMEOUT_S,
              progress: Progress | None = None,
              qa_results: str | Path | None = None) -> DailyOutcome:
    """One scheduled run (see the module docstring). Raises :class:`ReportError` only when the
    lock is held; every other failure is published as the day's ERROR page and returned.

    ``qa_results``: the day's QA results; None: the conventional place beside the exports,
    ``<exports>/qa/<YYYY-MM-DD>/`` or ``<exports>/qa/<YYYY-MM-DD>.xml`` (the reported day's
    date; :func:`whispers_lab.qa.qa_results_path`)."""
    plan = load_plan(plan_path)
    out = Path(out_dir) if out_dir is not None else REPORTS_DIR
    today = today or utc_now().date()
    day = report_day(plan, today)
    if day < 0:
        due = plan.start_date + dt.timedelta(days=1)
        return DailyOutcome("nothing_to_do", f"nothing to do: {today} is before the first "
                            f"complete rollout day; the first report (day 0, {plan.start_date}) "
                            f"is due on {due}")
    if day > plan.last_day and day > _state_last_day(exports_dir, plan, day, out):
        last = plan.start_date + dt.timedelta(days=plan.last_day)
        return DailyOutcome("nothing_to_do", f"nothing to do: the rollout's last day "
                            f"({plan.last_day}, {last}) is over; its report was due on "
                            f"{last + dt.timedelta(days=1)}")
    with DailyLock(out):  # taking it sweeps what killed runs left (folder.sweep_staging)
        export_name = None
        try:
            export = newest_export(exports_dir)
            export_name = export.name
            qa = (qa_results if qa_results is not None
                  else qa_results_path(exports_dir, plan.day_start(day).date()))
            # whether the export covers the day is checked by the run once the export is open
            # and validated (from validation's counts), not by an opening of its own first
            result = write_report(export, day, plan_path=plan_path, out_dir=out, timeout=timeout,
                                  command="daily", progress=progress, qa_results=qa,
                                  check_coverage=True)
        except RunStopped as stop:  # SIGTERM / SIGINT: the day says so, then the run ends
            publish_stopped(out, day, plan, stop, export_name=export_name)
            raise
        except WhispersLabError as exc:
            reason = str(exc)
        except Exception as exc:  # a bug: still publish that the day has no decision
            reason = f"unexpected {type(exc).__name__}: {exc}"
        else:
            extra = (f"; rollout summary -> {result.summary}" if result.summary else "") + (
                f"; warning: {result.message}" if result.message else "")  # issue 15
            return DailyOutcome("reported", f"day {day}: {result.decision} "
                                f"({result.seconds:.1f} s, export {export_name}){extra}", day,
                                result)
        write_error_report(out, day, plan, reason, export_name=export_name)
        first = reason.strip().splitlines()[0] if reason.strip() else "unknown error"
        return DailyOutcome("failed", f"day {day}: no decision, ERROR page published: {first}",
                            day)
