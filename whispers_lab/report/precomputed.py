"""The day's evaluation computed by the report run while the notebook's kernel starts.

A scheduled report spends most of its time in the queries, and a Jupyter kernel takes seconds
to start and import the lab. :class:`Precompute` opens (and validates) the export and evaluates
the day in a thread of the report run, while papermill starts the kernel; the notebook (its
``evaluation_path`` parameter) waits for the result and only draws it. The run keeps the
opened export and the evaluation: its privacy scan and, on the plan's last day, the stakeholder
summary reuse them (the export remembers its query results, so the summary's evaluation reruns
only the queries that differ, see :meth:`whispers_lab.export.Export.memoize`).

The hand-over is one pickle file in a private temporary folder, written under a temporary name
and renamed; a failure writes ``<file>.failed`` with the message instead, so the notebook never
waits for a result that will not come. Run interactively (no ``evaluation_path``), the notebook
computes everything itself.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import ReportError, WhispersLabError
from .stopping import Worker

__all__ = ["Precompute", "load_evaluation", "save_evaluation"]

#: Seconds the notebook waits for the run's evaluation before it gives up.
WAIT_S = 3600.0
FAILED_SUFFIX = ".failed"


def save_evaluation(path: str | Path, evaluation: Any, document: Any) -> None:
    """Write ``(evaluation, document)`` to ``path`` atomically."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    with tmp.open("wb") as fh:
        pickle.dump((evaluation, document), fh, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, target)


def _save_failure(path: str | Path, message: str) -> None:
    target = Path(str(path) + FAILED_SUFFIX)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(message, encoding="utf-8")
    os.replace(tmp, target)


def load_evaluation(path: str | Path, timeout: float = WAIT_S) -> tuple[Any, Any]:
    """``(evaluation, document)`` from the report run, waiting until it is there. Raises
    :class:`ReportError` with the run's message when its evaluation failed, or after
    ``timeout`` seconds."""
    target = Path(path)
    failed = Path(str(target) + FAILED_SUFFIX)
    deadline = time.monotonic() + timeout
    pause = 0.01
    while not target.exists():
        if failed.exists():
            raise ReportError(failed.read_text(encoding="utf-8"))
        if time.monotonic() > deadline:
            raise ReportError(f"the report run's evaluation did not arrive within {timeout:.0f} s")
        time.sleep(pause)
        pause = min(pause * 2, 0.1)
    with target.open("rb") as fh:
        # our own file, in a private folder the run made for this kernel
        evaluation, document = pickle.load(fh)
    return evaluation, document


class Precompute:
    """Open, validate and evaluate in a thread; hand the result over to the notebook.

    ``work(export)`` returns ``(evaluation, document)``; ``open_export()`` opens the export
    (validating it). Use :attr:`path` as the notebook's ``evaluation_path``; after the notebook,
    :meth:`result` gives ``(export, evaluation)`` or raises what the thread raised. ``then``:
    more work on the export once the evaluation is handed over, run while the kernel draws it
    (its value in :attr:`then_result`). The caller closes :attr:`export` (:meth:`close`)."""

    def __init__(self, open_export: Any, work: Any, then: Any = None,
                 html_ready: threading.Event | None = None) -> None:
        #: the event ``work`` sets once the HTML conversion is set up (the report run's,
        #: :func:`whispers_lab.report.runner._precompute`; None: one already set, as nothing
        #: sets it up ahead)
        self.html_ready = html_ready if html_ready is not None else threading.Event()
        if html_ready is None:
            self.html_ready.set()
        self._folder = Path(tempfile.mkdtemp(prefix="whispers-evaluation-"))
        self.path = self._folder / "evaluation.pickle"
        self.export: Any = None
        self.evaluation: Any = None
        self.error: BaseException | None = None
        #: what ``then(export)`` returned (None: no ``then``, or it failed: its caller
        #: computes it again and meets the error there)
        self.then_result: Any = None
        self._open = open_export
        self._work = work
        self._then = then
        self._cancelled = threading.Event()
        # (waited for on its own end, not Thread.join(): see stopping.Worker)
        self._worker = Worker(self._run, "whispers-report-evaluation")
        try:
            self._worker.start()
        except BaseException:  # a stop during the start: the caller never gets this object
            self.cancel()
            self.close()
            raise

    def _run(self) -> None:
        try:
            self.export = self._open()
            if self._cancelled.is_set():
                return
            self.evaluation, document = self._work(self.export)
            save_evaluation(self.path, self.evaluation, document)
        except BaseException as exc:
            self._fail(exc)
            return
        if self._then is not None and not self._cancelled.is_set():
            # while the kernel draws the day: work the run needs after the notebook (the
            # stakeholder summary's evaluation); the day's report never depends on it
            try:
                self.then_result = self._then(self.export)
            except Exception:
                self.then_result = None

    def _fail(self, exc: BaseException) -> None:
        """Hand the error to the run (:meth:`result`) and to the notebook."""
        self.error = exc
        message = (str(exc) if isinstance(exc, WhispersLabError) else
                   f"the report's evaluation failed: {type(exc).__name__}: {exc}")
        try:
            _save_failure(self.path, message)
        except OSError:
            pass

    def result(self) -> tuple[Any, Any]:
        """Wait for the thread; ``(export, evaluation)``, or raise its error."""
        self._worker.wait()
        if self.error is not None:
            raise self.error
        return self.export, self.evaluation

    def cancel(self, grace: float = 15.0) -> None:
        """Stop the work (a stopped run): interrupt the running query, wait a moment."""
        self._cancelled.set()
        con = getattr(self.export, "con", None)
        if con is not None:
            try:
                con.interrupt()
            except Exception:  # already closed, or not a DuckDB connection
                pass
        self._worker.wait(grace)

    def close(self) -> None:
        """Close the export (once the thread is done) and remove the hand-over folder."""
        if self._worker.done.is_set() and self.export is not None:
            try:
                self.export.close()
            except Exception:
                pass
        shutil.rmtree(self._folder, ignore_errors=True)
