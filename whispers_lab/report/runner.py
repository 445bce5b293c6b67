"""Produce one day's go/no-go report: execute the notebook, convert it, check it, publish it.

:func:`write_report` is what ``whispers-lab report``, ``daily`` and ``demo`` call. It

1. checks the day against the plan and that the export can be opened, so that a bad day or a
   missing or corrupt export fails fast with a one-line message and no kernel is started;
2. executes ``notebooks/daily_report.ipynb`` with papermill (kernel ``python3``, a per-cell
   timeout) into a temporary folder next to the target, while a thread validates the export and
   evaluates the day (:mod:`.precomputed`; the notebook draws that evaluation, and a contract
   problem comes back through it as one line); the notebook writes ``decision.json``;
3. converts the executed notebook to one self-contained HTML file (no code, no prompts, images
   embedded, no script/stylesheet/font fetched from the network);
4. scans every output for ids of the export (:mod:`whispers_lab.report.privacy`) and for network
   references; a hit withholds the report;
5. moves the folder into place (``day-NN``) with renames, so that a reader sees the previous
   complete report or the new complete report, never a half-written one.

:func:`write_error_report` publishes the page a failed scheduled run leaves instead: decision
``ERROR``, why, and that no decision was made.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import replace_dir, restore_interrupted
from ..communications import load_communications
from ..decision import SCHEMA_VERSION
from ..errors import ExportNotArrivedError, ReportError, WhispersLabError
from ..export import Export, open_export
from ..paths import NOTEBOOKS_DIR, REPORTS_DIR
from ..plan import Plan, load_plan
from ..progress import Progress, advance, stage
from ..queries import carried
from ..timeline import mark
from . import privacy, stopping
from .coverage_check import check_export_covers
from .folder import FolderLock, day_dir_name, is_temp_name, make_tmp_dir, utc_now, utc_stamp
from .index import draw_trends_ahead, write_index
from .precomputed import Precompute

__all__ = [
    "DECISIONS",
    "ERROR",
    "REPORT_FILES",
    "ReportResult",
    "check_day",
    "day_dir_name",
    "execute_notebook",
    "is_temp_name",
    "keep_failed_notebook",
    "make_tmp_dir",
    "notebook_to_html",
    "publish_stopped",
    "rollout_last_day_or_none",
    "utc_now",
    "utc_stamp",
    "write_error_report",
    "write_report",
]

NOTEBOOK = NOTEBOOKS_DIR / "daily_report.ipynb"
KERNEL_NAME = "python3"
#: Seconds one notebook cell may run before the report is abandoned.
DEFAULT_CELL_TIMEOUT_S = 600
REPORT_FILES: tuple[str, ...] = ("report.html", "report.ipynb", "decision.json")
ERROR = "ERROR"
DECISIONS: tuple[str, ...] = ("GO", "NO_GO", "ROLLBACK", ERROR)


@dataclass(frozen=True)
class ReportResult:
    """What one report run produced."""

    day: int
    decision: str
    path: Path
    seconds: float
    export: str
    message: str = ""
    #: issue 15: the stakeholder summary written after the plan's last day (None: not due, or
    #: not written, ``message`` then says why)
    summary: Path | None = None


def check_day(plan: Plan, day: int, last_day: int | None = None) -> None:
    """Raise :class:`ReportError` unless ``day`` is a day of the plan (0 .. last_day), or of
    the rollout as its state projects it (``last_day``: later than the plan's after a hold,
    :func:`whispers_lab.state.rollout_last_day`)."""
    if last_day is not None and plan.last_day < day <= last_day:
        return
    if not 0 <= day <= plan.last_day:
        first = plan.day_start(0).date()
        last = plan.day_start(plan.last_day).date()
        raise ReportError(f"day {day} is outside the rollout: plan {plan.name!r} runs from day 0 "
                          f"({first}) to day {plan.last_day} ({last})")


# ---------------------------------------------------------------------------------------
# notebook execution and conversion


#: Seconds the HTML conversion waits for its set-up (:func:`warm_html`) to finish, at most.
HTML_SETUP_WAIT_S = 30.0
#: Seconds a stopped run waits for the notebook's thread to wind down after killing the kernel.
STOP_GRACE_S = 15.0


def execute_notebook(parameters: dict[str, Any], output: Path, *,
                     timeout: int = DEFAULT_CELL_TIMEOUT_S, notebook: Path = NOTEBOOK,
                     on_cell: Callable[[], None] | None = None) -> None:
    """Run ``notebook`` with papermill into ``output``; raise :class:`ReportError` on failure
    (papermill has then saved the failed notebook, with its error, at ``output``).

    Papermill runs in a worker thread while the calling thread waits: the caller's signal
    handlers (:mod:`.stopping`) stay in force, instead of nbclient's own. When the wait is
    interrupted (``RunStopped``, ``KeyboardInterrupt``) the kernel is killed, the thread is
    given a moment to finish, and the interruption goes on up."""
    if not notebook.is_file():
        raise ReportError(f"the report notebook {str(notebook)!r} is missing")
    kernels: list[Any] = []
    outcome: dict[str, BaseException] = {}
    stopped = threading.Event()

    def work() -> None:
        try:
            _run_papermill(parameters, output, timeout, notebook, kernels, on_cell, stopped)
        except BaseException as exc:  # handed to the waiting thread
            outcome["error"] = exc

    worker = stopping.Worker(work, "whispers-report-notebook")
    try:
        worker.start()  # a stop during the start comes out here, started
        worker.wait()
    except BaseException:
        stopped.set()   # no new kernel, and no kernel process, from here on
        _stop_kernels(worker.done, kernels, STOP_GRACE_S)
        raise
    if "error" in outcome:
        raise outcome["error"]


def _stop_kernels(done: threading.Event, kernels: list[Any], grace: float) -> None:
    """Kill the kernels of a stopped run until its notebook thread has given up (``done``, or
    ``grace`` seconds). A kernel whose launch was under way at the stop gets its process id
    only a moment later, and the thread waits for that kernel: killing it once and then
    waiting let a late kernel start in the staging folder the caller removes."""
    deadline = time.monotonic() + grace
    while True:
        _kill_kernels(kernels)
        if done.wait(0.1) or time.monotonic() >= deadline:
            break
    _kill_kernels(kernels)


def tracked_kernel_manager(kernels: list[Any], stopped: threading.Event | None) -> type:
    """nbclient's kernel manager class, each instance remembered in ``kernels`` so that a
    stopped run can kill its kernel; once ``stopped`` is set, no manager is made and no
    kernel process is started (a launch under way at the stop raises instead)."""
    from jupyter_client.manager import AsyncKernelManager

    class TrackedKernelManager(AsyncKernelManager):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if stopped is not None and stopped.is_set():
                raise ReportError("the report run was stopped before its kernel started")
            super().__init__(*args, **kwargs)
            kernels.append(self)

        async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
            if stopped is not None and stopped.is_set():
                raise ReportError("the report run was stopped before its kernel started")
            await super()._async_launch_kernel(kernel_cmd, **kw)

        _launch_kernel = _async_launch_kernel

    return TrackedKernelManager


def skip_iri_format_checker() -> None:
    """Keep jsonschema from importing ``rfc3987_syntax`` in this process.

    papermill imports nbformat, which imports jsonschema, whose format module imports
    ``rfc3987_syntax`` when it is installed (JupyterLab's jupyter-events pulls it in): that
    import compiles some 35 Earley parsers, about 0.7 s of CPU on the report's critical path
    (jsonschema issue 1428; measured: the 1M-user report 0.9 s faster without it). It only
    checks the ``iri`` and ``iri-reference`` formats, which no notebook schema uses. Marked
    as absent (jsonschema then leaves those two formats unchecked) only when neither module
    is loaded yet, so a process that already uses it keeps it."""
    if "jsonschema" not in sys.modules and "rfc3987_syntax" not in sys.modules:
        sys.modules["rfc3987_syntax"] = None  # type: ignore[assignment]


def _run_papermill(parameters: dict[str, Any], output: Path, timeout: int, notebook: Path,
                   kernels: list[Any], on_cell: Callable[[], None] | None = None,
                   stopped: threading.Event | None = None) -> None:
    skip_iri_format_checker()
    import papermill
    from papermill.exceptions import PapermillExecutionError
    from traitlets.config import Config

    # The kernel talks to us over Unix sockets in a private folder (mode 0700), not over
    # unencrypted localhost TCP ports that any local user could reach.
    sockets = tempfile.mkdtemp(prefix="whispers-kernel-")
    config = Config({"KernelManager": {"transport": "ipc", "ip": os.path.join(sockets, "k")}})
    try:
        papermill.execute_notebook(
            str(notebook), str(output), parameters=parameters, kernel_name=KERNEL_NAME,
            progress_bar=False, log_output=False, request_save_on_cell_execute=False,
            execution_timeout=timeout, cwd=str(output.parent), config=config,
            kernel_manager_class=tracked_kernel_manager(kernels, stopped),
            on_cell_executed=(lambda **_: on_cell()) if on_cell is not None else None,
            # the shutdown interrupt makes the kernel log a spurious "KeyboardInterrupt"
            extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
            # Once the last cell has replied, the kernel holds nothing the run needs (it read
            # the export read-only and wrote its files in cells that finished): stopping it at
            # once, instead of asking it to shut down and waiting for its exit, ends the
            # notebook 0.4-0.5 s sooner (0.13 s from the last cell's reply to papermill's
            # return, against 0.5-0.64 s; 1M users). On the plan's last day the summary's
            # evaluation beside it now ends about as late (docs/scale.md, stop 34).
            shutdown_kernel="immediate",
        )
    except PapermillExecutionError as exc:
        if _is_lab_error(exc.ename) and str(exc.evalue).strip():
            # bad input found by the notebook (an invalid export, a bad plan): say it as is
            raise ReportError(_one_line(str(exc.evalue))) from None
        detail = _first_line(exc.evalue) or exc.ename
        raise ReportError(f"the report notebook failed in cell {exc.exec_count}: "
                          f"{exc.ename}: {detail}") from None
    except WhispersLabError:
        raise
    except Exception as exc:  # kernel died, timeout, missing kernel spec...
        raise ReportError(f"the report notebook could not run: {type(exc).__name__}: "
                          f"{_first_line(str(exc))}") from None
    finally:
        shutil.rmtree(sockets, ignore_errors=True)


def _kill_kernels(kernels: list[Any]) -> None:
    """SIGKILL the kernel processes of a stopped run (they hold nothing worth saving)."""
    for km in kernels:
        pid = getattr(getattr(km, "provisioner", None), "pid", None)
        if pid:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _is_lab_error(name: str) -> bool:
    """Whether ``name`` is one of the lab's user-facing exception classes."""
    from .. import errors

    cls = getattr(errors, str(name), None)
    return isinstance(cls, type) and issubclass(cls, WhispersLabError)


def _one_line(message: str) -> str:
    """A multi-line lab error (e.g. every contract problem of an export) as one line: the
    headline, the first item, and how many more there are."""
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else ""
    items = [ln.lstrip("- ").strip() for ln in lines[1:]]
    more = (f"; and {len(items) - 1} more (`whispers-lab validate` lists them all)"
            if len(items) > 1 else "")
    return f"{lines[0].rstrip(':')}: {items[0]}{more}"


def _first_line(text: str) -> str:
    text = str(text or "").strip()
    return text.splitlines()[0] if text else ""


#: The lab template without anything that would load from the network (require.js, MathJax,
#: mermaid, widgets), plus a readable page layout for people who never saw a notebook.
_TEMPLATE_NAME = "whispers_report.html.j2"
_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{% block extra_css %}
<style type="text/css">
  body.jp-Notebook { max-width: 1100px; margin: 0 auto; padding: 16px 24px 48px;
    font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; }
  .jp-RenderedHTMLCommon { font-size: 15px; line-height: 1.5; }
  .jp-OutputArea-output img { max-width: 100%; height: auto; }
  .jp-Cell { padding: 2px 0; }
  /* narrow screens (a phone is ~400 px): long flag names and file names wrap instead of
     running off the page (the tables then wrap their cells and fit) */
  code, pre { overflow-wrap: anywhere; }
  pre { white-space: pre-wrap; }
  @media (max-width: 640px) {
    body.jp-Notebook { padding: 8px 12px 32px; }
  }
</style>
{% endblock extra_css %}
"""


def notebook_to_html(nb: Any, title: str) -> str:
    """One self-contained HTML page: outputs and markdown only, images embedded, no scripts.

    Stream outputs (stdout/stderr text, warnings) are left out of the page; they stay in the
    executed notebook for whoever debugs a run."""
    import jinja2
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.from_dict(json.loads(json.dumps(nb)))  # a copy we may edit
    for cell in nb.cells:
        if cell.get("cell_type") == "code":
            cell["outputs"] = [o for o in cell.get("outputs", []) if o.get("output_type") != "stream"]
    nb.metadata["title"] = title
    exporter = HTMLExporter(
        template_name="lab",
        extra_loaders=[jinja2.DictLoader({_TEMPLATE_NAME: _TEMPLATE})],
        exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True,
        exclude_anchor_links=True, embed_images=True,
    )
    exporter.template_file = _TEMPLATE_NAME
    body, _ = exporter.from_notebook_node(nb)
    return body


#: A notebook with what a report holds (markdown, HTML, an image) for :func:`warm_html`.
_WARM_NOTEBOOK = {
    "cells": [
        {"cell_type": "markdown", "id": "warm-text", "metadata": {},
         "source": "# warm-up\n\n*aggregates*"},
        {"cell_type": "code", "id": "warm-chart", "execution_count": 1, "metadata": {},
         "source": "show()",
         "outputs": [{"output_type": "display_data", "metadata": {},
                      "data": {"text/html": "<p>warm-up</p>", "text/plain": "warm-up",
                               "image/png": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAA"
                                            "DUlEQVR4nGNgYGBgAAAABQABpfZFQAAAAABJRU5ErkJggg=="}}]},
    ],
    "metadata": {}, "nbformat": 4, "nbformat_minor": 5,
}


def warm_html() -> None:
    """Convert a tiny notebook once, so that the day's conversion finds nbconvert imported and
    its templates, markdown and sanitizer set up: about 1 s at the first conversion of a process
    against 0.2 s later. The report run calls it in a thread of its own as the evaluation
    begins (:func:`_precompute`), moving that second out of the run's tail. A failure here is
    the real conversion's to report, so it is ignored."""
    try:
        notebook_to_html(_WARM_NOTEBOOK, "warm-up")
    except Exception:
        pass


FAILED_DIR = ".failed"


def keep_failed_notebook(notebook: Path, out_dir: Path, day: int,
                         export: Export | None = None) -> Path | None:
    """Move the notebook of a failed run (papermill saved it with the error) to
    ``<out_dir>/.failed/day-NN-<UTC time>.ipynb``: not published, but a readable record of
    what went wrong. With ``export``, every id of the export in it is redacted first (the
    error may quote an example value, e.g. a repeated user id). None when there is nothing
    to keep."""
    if not notebook.is_file():
        return None
    folder = out_dir / FAILED_DIR
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{day_dir_name(day)}-{utc_now():%Y%m%dT%H%M%S}.ipynb"
    if export is not None:
        content, _ = privacy.redact(export, json.loads(notebook.read_text(encoding="utf-8")))
        notebook.write_text(json.dumps(content, indent=1, ensure_ascii=False) + "\n",
                            encoding="utf-8")
    os.replace(notebook, target)
    return target


# ---------------------------------------------------------------------------------------
# the report


def write_report(export_path: str | Path, day: int, *, plan_path: str | Path | None = None,
                 out_dir: str | Path | None = None, timeout: int = DEFAULT_CELL_TIMEOUT_S,
                 refresh_index: bool = True, lock: bool = True,
                 command: str = "report", progress: Progress | None = None,
                 qa_results: str | Path | None = None,
                 check_coverage: bool = False) -> ReportResult:
    """Write ``<out_dir>/day-NN/`` (report.html, report.ipynb, decision.json) for ``day``.

    Holds the report folder's lock (:class:`~whispers_lab.report.folder.FolderLock`, the one
    ``daily`` holds) for the whole run, so two runs never write the same day at once; a run
    that finds the lock taken fails at once. ``lock=False`` is for a caller whose parent
    process holds the lock for it (``demo``'s workers). ``command`` names the run in the lock
    file (shown to a run that is refused). ``qa_results``: the day's QA results (a JUnit XML
    file or a folder of them, see :mod:`whispers_lab.qa`); None: none, so the ``qa_scenarios``
    criterion has no data. ``check_coverage``: fail, as soon as the export is open and
    validated, unless its data reach ``day`` (the daily job's check that the day's export has
    arrived, :func:`~.coverage_check.check_export_covers`). It is made on the opened export
    from validation's row counts per day, so it reads no table; checked before the run, it
    took an opening of its own and one scan of every activity table (1.4-1.7 s at 1M users
    on DuckDB, 14 s of the Spark Connect test, docs/scale.md).

    Raises :class:`~whispers_lab.errors.WhispersLabError` (``ReportError``, ``ExportError``,
    ``PlanError``) when no report could be written; the previous report of the day, if any,
    is then untouched."""
    started = time.monotonic()
    plan = load_plan(plan_path)
    out_guess = Path(out_dir) if out_dir is not None else REPORTS_DIR
    check_day(plan, day, rollout_last_day_or_none(export_path, plan, day, out_guess))
    load_communications(plan)  # a bad [[communications]] table fails before a kernel starts
    out = Path(out_dir) if out_dir is not None else REPORTS_DIR
    if lock:
        with FolderLock(out, command):
            return _write_report(export_path, day, plan, plan_path, out, timeout,
                                 refresh_index, started, progress, qa_results, check_coverage)
    return _write_report(export_path, day, plan, plan_path, out, timeout, refresh_index, started,
                         progress, qa_results, check_coverage)


def rollout_last_day_or_none(export_path: str | Path, plan: Plan, day: int, out: Path) -> int | None:
    """After the plan's last day: the rollout's last day as its state projects it (a held
    rollout goes on), None before it or when the export cannot tell."""
    if day <= plan.last_day:
        return None
    from ..state import rollout_last_day

    try:
        return rollout_last_day(export_path, plan, day, out)
    except WhispersLabError:
        return None


def _code_cells(notebook: Path) -> int | None:
    try:
        cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return sum(1 for c in cells if c.get("cell_type") == "code") + 1  # + papermill's parameters


def _write_report(export_path: str | Path, day: int, plan: Plan, plan_path: str | Path | None,
                  out: Path, timeout: int, refresh_index: bool, started: float,
                  progress: Progress | None = None,
                  qa_results: str | Path | None = None,
                  check_coverage: bool = False) -> ReportResult:
    # absolute for the kernel, but not resolved: a symlink keeps its own (published) name
    export_file = Path(os.path.abspath(Path(export_path).expanduser()))
    mark(f"day {day}: report run starts")
    # Attached here: missing or unreadable exports fail fast, before a kernel starts. The day
    # is evaluated (the contract validated once) in a thread while the kernel starts
    # (.precomputed), on this attachment; an error there comes back through the notebook
    # verbatim. for_errors: the export opened (without validation) only to keep its ids out of
    # an error message.
    with _check_openable(export_file) as attached, _ForErrors(export_file) as for_errors:
        # a run killed between the two renames of a previous publication left the old report
        # under a hidden name: put it back first, so it stays the day's report if this run fails
        restore_interrupted(out / day_dir_name(day))
        summary_due = refresh_index and day >= plan.last_day
        tmp = make_tmp_dir(out, day)
        pre: Precompute | None = None
        try:
            pre = _precompute(export_file, day, plan, out, qa_results, attached,
                              summary_day=day if summary_due else None,
                              index_due=refresh_index, check_coverage=check_coverage)
            parameters = {"export_path": str(export_file), "day": int(day),
                          "plan_path": str(Path(plan_path).resolve()) if plan_path else None,
                          # absolute: the kernel runs inside tmp, where a relative --out
                          # would point nowhere
                          "out_dir": os.path.abspath(tmp),
                          "qa_results": (os.path.abspath(Path(qa_results).expanduser())
                                         if qa_results is not None else None),
                          # earlier days' decisions (held communication tasks)
                          "reports_dir": os.path.abspath(out),
                          # the evaluation this run computes while the kernel starts
                          "evaluation_path": str(pre.path)}
            try:
                with stage(progress, f"day {day} notebook", _code_cells(NOTEBOOK),
                           "cells") as st:
                    cells = [0]

                    def on_cell() -> None:
                        cells[0] += 1
                        if cells[0] == 1:  # the parameters: the kernel has started
                            mark(f"day {day}: kernel ran its first cell")
                        if st is not None:
                            advance(st)

                    execute_notebook(parameters, tmp / "report.ipynb", timeout=timeout,
                                     on_cell=on_cell)
                mark(f"day {day}: notebook done")
            except ReportError as exc:
                pre.cancel()
                # bad input found by the evaluation (an invalid export): say it as is
                failure = (_one_line(str(pre.error)) if isinstance(pre.error, WhispersLabError)
                           else str(exc))
                # the message may quote data (a validation problem gives an example value):
                # no id of the export goes to the terminal, the cron mail or an error page
                try:
                    export = for_errors.export()
                    message, _ = privacy.redact(export, failure)
                    # (an export that has not arrived yet: nothing went wrong to keep a
                    # record of, and a scheduler retrying hourly would pile them up)
                    kept = (None if isinstance(pre.error, ExportNotArrivedError) else
                            keep_failed_notebook(tmp / "report.ipynb", out, day, export))
                except Exception as unreadable:  # the ids cannot be read (corrupt data blocks)
                    message = (f"the report failed and the export cannot be read back to keep "
                               f"its ids out of the error, so the details are withheld "
                               f"({type(unreadable).__name__}: {_first_line(str(unreadable))}); "
                               f"`whispers-lab validate` shows them")
                    kept = None
                if kept is not None:
                    message += f" (failed notebook kept at {kept})"
                raise ReportError(message) from None
            stopping.raise_if_stopped()  # (a stop swallowed while the notebook ran)
            decision_file = tmp / "decision.json"
            if not decision_file.is_file():
                raise ReportError("the report notebook ran but wrote no decision.json")
            document = json.loads(decision_file.read_text(encoding="utf-8"))
            verdict = str(document.get("decision"))
            if verdict not in DECISIONS:
                raise ReportError(f"the report notebook wrote an unknown decision {verdict!r}")

            import nbformat

            # the set-up started with the evaluation: long done at 1M users; on a small export
            # the conversion would otherwise repeat it beside it
            pre.html_ready.wait(HTML_SETUP_WAIT_S)
            with stage(progress, f"day {day} HTML"):
                nb = nbformat.read(tmp / "report.ipynb", as_version=4)
                title = f"Whispers rollout: day {day} go/no-go ({verdict.replace('_', '-')})"
                page = notebook_to_html(nb, title)
                (tmp / "report.html").write_text(page, encoding="utf-8")
            mark(f"day {day}: HTML written")

            network = privacy.network_references(page)
            if network:
                raise ReportError(f"report for day {day} withheld: the HTML would load "
                                  f"{len(network)} resource(s) from the network")
            document["report"] = {
                "export": export_file.name,
                "generated_at": utc_stamp(),
                "runtime_seconds": round(time.monotonic() - started, 2),
                "notebook": NOTEBOOK.name,
                "files": list(REPORT_FILES),
            }
            decision_file.write_text(json.dumps(document, indent=2, ensure_ascii=False,
                                                allow_nan=False) + "\n", encoding="utf-8")
            # here, not before the HTML: the evaluation thread may still be computing the
            # summary's evaluation on the export, which the HTML does not need
            scan_export, _ = pre.result()  # validated, with its id profile and query results
            mark(f"day {day}: evaluation thread done")
            with stage(progress, f"day {day} privacy scan"):
                leaks = privacy.scan_files(scan_export, [tmp / name for name in REPORT_FILES])
            mark(f"day {day}: privacy scan done")
            if leaks:
                raise ReportError(f"report for day {day} withheld: "
                                  + "; ".join(leak.sentence() for leak in leaks))
            for name in REPORT_FILES:
                os.chmod(tmp / name, 0o644)
            target = out / day_dir_name(day)
            stopping.raise_if_stopped()  # (one whose exception a finalizer swallowed)
            # a stop from here on waits until the report and the index are both published
            with stopping.deferred(finishes=True):
                replace_dir(tmp, target)
                seconds = time.monotonic() - started
                if refresh_index:
                    write_index(out, plan)
            mark(f"day {day}: report published")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if pre is not None:
                pre.cancel()
                pre.close()
            raise
    try:
        summary, note = (_write_summary(out, plan, export_file, pre.export, pre.then_result)
                         if summary_due else (None, ""))
        if summary_due:
            mark("rollout summary written" if summary is not None else "rollout summary failed")
    finally:
        pre.close()
    return ReportResult(day=day, decision=verdict, path=target, seconds=seconds,
                        export=export_file.name, message=note, summary=summary)


class _Attached:
    """The export as the run's early check attached it (:func:`_check_openable`), handed to
    the evaluation's thread so that it is not attached twice: a day-partitioned export's
    attachment lists its files and reads its many-file tables into memory (0.9 s of the
    1M-user benchmark's, before the kernel starts). Closed when the run's block ends, unless
    taken."""

    def __init__(self, attached: tuple[Any, str, list[str]] | None) -> None:
        self._attached = attached
        self._lock = threading.Lock()

    def take(self) -> tuple[Any, str, list[str]] | None:
        with self._lock:
            attached, self._attached = self._attached, None
        return attached

    def close(self) -> None:
        attached = self.take()
        if attached is not None:
            attached[0].close()

    def __enter__(self) -> _Attached:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()  # (unless the evaluation took it)


def _check_openable(export_file: Path) -> _Attached:
    """Raise :class:`~whispers_lab.errors.ExportError` for an export that cannot be opened (a
    missing path, a file that is not DuckDB, unreadable Parquet): attaching it is enough. The
    attachment is kept for the run's evaluation (:class:`_Attached`)."""
    from ..engine import default_engine
    from ..export import attach

    if default_engine() != "duckdb":  # the other engine opens it in the run's thread
        if not export_file.exists():
            from ..errors import ExportError

            raise ExportError(f"export {str(export_file)!r} does not exist")
        return _Attached(None)
    return _Attached(attach(export_file))


class _ForErrors:
    """The export opened without validation on first use (to redact an error message), closed
    at the end of the run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._export: Export | None = None

    def export(self) -> Export:
        if self._export is None:
            self._export = open_export(self.path, validate=False, copy_small_tables=False)
        return self._export

    def __enter__(self) -> _ForErrors:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._export is not None:
            self._export.close()


def _precompute(export_file: Path, day: int, plan: Plan, out: Path,
                qa_results: str | Path | None, attached: _Attached | None = None, *,
                summary_day: int | None,
                index_due: bool = True, check_coverage: bool = False) -> Precompute:
    """Start validating and evaluating the day in a thread (see :mod:`.precomputed`): what
    the notebook's setup cell would compute, with the same arguments; the export remembers
    its query results (:meth:`~whispers_lab.export.Export.memoize`). Once the day is handed
    over, while the kernel draws it, when the run writes the index (``index_due``; the demo
    writes it once at its end), the index's trend charts are drawn with the day's decision
    (:func:`~.index.draw_trends_ahead`). ``summary_day``: the stakeholder summary follows; its
    evaluation through that day (:func:`whispers_lab.report.summary.evaluate_ahead`) is
    computed in the same thread, beside the charts, which then run in a thread of their own.

    The evaluation's modules are imported in the thread, so the kernel is launched meanwhile
    and imports its own on the other core; scipy and statsmodels are imported in a thread of
    their own as the evaluation begins (:func:`whispers_lab.lazy.import_named_ahead`), while
    its first queries wait on DuckDB, and so is the HTML conversion set up
    (:func:`warm_html`). The kernel, which only draws the evaluation, never imports those.

    ``check_coverage``: once the export is open, raise unless its data reach ``day``
    (:func:`~.coverage_check.check_export_covers`; the extent it needs is the one the day's
    evaluation computes, from validation's counts, or remembered for it)."""

    def opened() -> Export:
        # (profile_ids: the privacy scan of the day's decision follows the evaluation)
        export = open_export(export_file, profile_ids=True,
                             attached=attached.take() if attached is not None else None)
        mark(f"day {day}: export opened and validated")
        # a query asked twice (by the day's evaluation, or again by the summary's) runs once
        export.memoize()
        return export

    handed: dict[str, Any] = {}  # the day's published decision, for then()
    html_ready = threading.Event()  # set once warm_html is done (work() starts it)

    def work(export: Export) -> tuple[Any, Any]:
        from ..evaluate import evaluate_day
        from ..lazy import import_named_ahead
        from ..qa import read_qa_results

        import_named_ahead()  # scipy and statsmodels, while the queries run
        # The HTML conversion's set-up (about 1 s of Python), also while the queries run: in
        # the run's tail, after the hand-over, it held the interpreter against the summary's
        # evaluation, which the run then waited for (WHISPERS_LAB_TIMELINE, docs/scale.md)
        threading.Thread(target=_warm_html_marked, args=(day, html_ready),
                         name="whispers-report-html", daemon=True).start()
        if check_coverage:  # (the run closes the export it opened, failed or not)
            check_export_covers(export_file, plan, day, export=export)
        # what the evaluation carries to the next day's report is written after the hand-over
        # (then), while the kernel draws the day, instead of on the way to it
        carried.defer(export)
        evaluation = evaluate_day(export, day, plan, qa=read_qa_results(qa_results),
                                  reports_dir=os.path.abspath(out))
        document, _ = privacy.redact(export, evaluation.decision.to_dict())
        handed["document"] = document
        handed["carry"] = carries_on(plan, day, evaluation.state)
        mark(f"day {day}: day's evaluation done")
        return evaluation, document

    def pages_ahead() -> None:
        if index_due:
            try:  # the index's trend charts, with the day's decision (failures: drawn later)
                draw_trends_ahead(out, plan, day, handed["document"])
            except Exception:
                pass
            mark(f"day {day}: index charts drawn")

    def then(export: Export) -> Any:
        # first (the summary's evaluation may make the same tables again): the tables for the
        # next day's report, none after the rollout's last day
        carried.flush(export, write=handed.get("carry", True))
        # while the kernel draws the day: what the run does after the notebook, set up ahead.
        # The summary's evaluation (DuckDB's threads, the GIL released) and the pages' Python
        # run side by side: one after the other, they outlasted the kernel's drawing by 0.6 s
        # that the run waited for (1M users, day 14)
        if summary_day is None:
            pages_ahead()
            return None
        side = threading.Thread(target=pages_ahead, name="whispers-report-pages", daemon=True)
        side.start()
        try:
            from .summary import evaluate_ahead

            ahead = evaluate_ahead(export_file, plan, int(summary_day), export)
            mark(f"day {day}: summary's evaluation done")
            return ahead
        finally:
            side.join()

    return Precompute(opened, work, then, html_ready)


def carries_on(plan: Plan, day: int, state: Any) -> bool:
    """Whether a report follows ``day``'s, so that what its evaluation carries (:mod:`..queries.
    carried`) is worth writing: not on the rollout's last day as ``state`` projects it (the
    plan's, or later after a hold; the reports go on until then, :func:`rollout_last_day_or_none`).
    A hold decided on that day moves the end a day on: the next day's report then reads what
    the day before carried and a day more of telemetry (the cache is a shortcut only), as a
    report of the last day made again does for the app opens."""
    last = plan.last_day if state is None else max(plan.last_day, int(state.final_day()))
    return day < last


def _warm_html_marked(day: int, done: threading.Event) -> None:
    try:
        warm_html()
        mark(f"day {day}: HTML conversion set up")
    finally:
        done.set()


def _write_summary(out: Path, plan: Plan, export_file: Path,
                   export: Export | None = None, ahead: Any = None) -> tuple[Path | None, str]:
    """issue 15: after the plan's last day is reported, the stakeholder summary of the whole
    rollout (:mod:`whispers_lab.report.summary`), then the index again (it links it). The
    day's report is published already: a failure here is returned as a message, never
    undoes it, and a stop signal now leaves that report standing (``finished``). ``ahead``:
    the summary's evaluation computed during the notebook (used when its day is the one the
    summary needs)."""
    from .summary import write_summary

    try:
        stopping.raise_if_stopped(finishes=True)
        result = write_summary(out, plan, export_file, export=export, ahead=ahead)
        write_index(out, plan)
    except stopping.RunStopped as stop:
        raise stopping.RunStopped(stop.signum, finished=True) from None
    except Exception as exc:  # the day's report stands; the summary can be re-run on its own
        return None, (f"the rollout summary was not written ({type(exc).__name__}: "
                      f"{_first_line(str(exc))}); `whispers-lab summary` writes it")
    return result.html, ""


# ---------------------------------------------------------------------------------------
# the error page


_ERROR_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>Whispers rollout: day {day} report FAILED</title>
<style>
  body {{ font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
         max-width: 900px; margin: 0 auto; padding: 24px; color: #222; line-height: 1.5; }}
  .banner {{ background: #6b7280; color: #fff; padding: 18px 22px; border-radius: 6px; }}
  .banner h1 {{ margin: 0 0 6px; font-size: 26px; }}
  pre {{ background: #f3f4f6; padding: 12px; border-radius: 4px; white-space: pre-wrap;
        overflow-wrap: anywhere; }}
  code {{ overflow-wrap: anywhere; }}
  @media (max-width: 640px) {{ body {{ padding: 12px; }} }}
  a {{ color: #1d4ed8; }}
</style>
</head>
<body>
<div class="banner">
  <h1>ERROR: no decision for day {day} ({date})</h1>
  <div>The scheduled report run failed, so <strong>no go/no-go decision was made</strong> for
  this day. Treat the day as undecided: do not advance the rollout on the strength of an older
  report.</div>
</div>
<h2>What went wrong</h2>
<pre>{reason}</pre>
<h2>Details</h2>
<ul>
  <li>Phase: {phase}</li>
  <li>Export: {export}</li>
  <li>Run failed at: {when} (UTC)</li>
</ul>
<h2>What to do</h2>
<p>Fix the cause above (for instance a missing, late or corrupt export), then run the job
again: <code>whispers-lab daily</code> (or <code>whispers-lab report --export PATH --day
{day}</code>). A successful run replaces this page.</p>
{previous}
<p><a href="../index.html">Back to the rollout timeline</a></p>
</body>
</html>
"""


def write_error_report(out_dir: str | Path, day: int, plan: Plan, reason: str, *,
                       export_name: str | None = None,
                       refresh_index: bool = True) -> Path:
    """Publish ``day-NN/`` for a failed run: report.html saying it failed and why, and a
    decision.json with decision ``ERROR``. A previous successful report of the day is kept
    beside it as ``previous-report.html`` / ``previous-decision.json``, clearly superseded.
    A stop signal arriving meanwhile waits until the page and the index are published."""
    with stopping.deferred():
        return _write_error_report(Path(out_dir), day, plan, reason, export_name,
                                   refresh_index)


def stopped_reason(stop: stopping.RunStopped) -> str:
    """The ERROR page's explanation for a run stopped by a signal."""
    return (f"the run was stopped by {stop.name} before it finished, so no decision was made "
            f"(nothing it had started writing was published)")


def publish_stopped(out_dir: str | Path, day: int, plan: Plan, stop: stopping.RunStopped, *,
                    export_name: str | None = None) -> Path | None:
    """After a run holding the folder lock was stopped: publish the day's ERROR page saying
    so, unless the stop came while the finished report was being published (then that report
    stands). Returns the day folder written, or None."""
    if stop.finished:
        return None
    return write_error_report(out_dir, day, plan, stopped_reason(stop), export_name=export_name)


def _write_error_report(out: Path, day: int, plan: Plan, reason: str, export_name: str | None,
                        refresh_index: bool) -> Path:
    target = out / day_dir_name(day)
    restore_interrupted(target)  # the previous report, if a kill hid it, is carried over below
    tmp = make_tmp_dir(out, day)
    try:
        previous_note = ""
        prev_doc = _read_json(target / "decision.json")
        carry: dict[str, Path] = {}
        if prev_doc is not None and prev_doc.get("decision") in ("GO", "NO_GO", "ROLLBACK"):
            carry = {"previous-report.html": target / "report.html",
                     "previous-decision.json": target / "decision.json"}
        elif prev_doc is not None:  # an earlier error page: keep what it kept
            carry = {name: target / name for name in ("previous-report.html",
                                                       "previous-decision.json")}
        for name, source in carry.items():
            if source.is_file():
                shutil.copy2(source, tmp / name)
        kept = _read_json(tmp / "previous-decision.json")
        if kept is not None and (tmp / "previous-report.html").is_file():
            generated = (kept.get("report") or {}).get("generated_at") or kept.get("generated_at")
            previous_note = (
                f"<h2>Earlier report</h2><p>An earlier report for this day (decision "
                f"<strong>{html.escape(str(kept.get('decision')))}</strong>, generated "
                f"{html.escape(str(generated))}) is kept for reference at "
                f"<a href=\"previous-report.html\">previous-report.html</a>. It is "
                f"<strong>superseded</strong>: it does not reflect the latest export.</p>")
        try:
            phase = plan.phase_for_day(day)
            phase_doc: dict[str, Any] | None = {
                "id": phase.id, "name": phase.name, "audience": phase.audience,
                "percentage": phase.percentage, "environment": phase.environment,
                "first_day": phase.first_day, "last_day": phase.last_day}
            phase_name = phase.name
        except WhispersLabError:
            phase_doc, phase_name = None, "(none: before the rollout)"
        when = utc_stamp()
        page = _ERROR_PAGE.format(
            day=day, date=plan.day_start(day).date().isoformat(), reason=html.escape(reason),
            phase=html.escape(phase_name), export=html.escape(export_name or "(none)"),
            when=when, previous=previous_note)
        (tmp / "report.html").write_text(page, encoding="utf-8")
        document = {
            "schema_version": SCHEMA_VERSION,
            "generated_at": when,
            "plan": {"name": plan.name, "source": plan.source, "version": plan.version},
            "day": day,
            "date": plan.day_start(day).date().isoformat(),
            "phase": phase_doc,
            "decision": ERROR,
            "reason_code": None,
            "reason_text": "the run failed: no decision",
            "error": reason,
            "next_step": None,
            "reasons": [f"The report run failed; no decision was made: {reason}"],
            "blocking": [],
            "fired": [],
            "harm": [],
            "notes": [],
            "criteria": [],
            "triggers": [],
            "report": {"export": export_name, "generated_at": when, "runtime_seconds": None,
                       "notebook": NOTEBOOK.name, "files": ["report.html", "decision.json"]},
        }
        (tmp / "decision.json").write_text(json.dumps(document, indent=2, ensure_ascii=False)
                                           + "\n", encoding="utf-8")
        for child in tmp.iterdir():
            os.chmod(child, 0o644)
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if refresh_index:
        write_index(out, plan)
    return target


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None
