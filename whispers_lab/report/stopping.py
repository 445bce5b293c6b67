"""Stopping a report run cleanly on SIGTERM, SIGINT or SIGHUP.

``whispers-lab report`` and ``daily`` run inside :func:`stop_on_signals`: the first of these
signals raises :class:`RunStopped` in the main thread (further ones are ignored while the run
cleans up). Everything the run writes is staged and removed on any exception, the report
folder's lock is released on the way out, and the command then publishes the day's ERROR page
saying the run was stopped (see :func:`whispers_lab.report.runner.publish_stopped`).

The notebook itself runs in a worker thread (:func:`whispers_lab.report.runner.execute_notebook`)
so that these handlers stay in force while it runs; on a stop the kernel is killed.

Critical sections (the two renames that publish a folder, and the index refresh right after)
run inside :func:`deferred`: a signal arriving there is held until the section is over, so a
stop never leaves a publication half done.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

#: The signals a run stops on: ``kill``/systemd/cron timeouts, Ctrl-C, a closed terminal.
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class RunStopped(BaseException):
    """The run was stopped by a signal. A ``BaseException``, like ``KeyboardInterrupt``, so
    that no ``except Exception`` on the way up swallows it.

    ``finished``: the signal arrived during the final publication, which completed, so the
    day's report is whole and current."""

    def __init__(self, signum: int, *, finished: bool = False) -> None:
        self.signum = int(signum)
        self.finished = finished
        super().__init__(f"stopped by {self.name}")

    @property
    def name(self) -> str:
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number."""
        return 128 + self.signum


_state = threading.local()


def _depth() -> int:
    return getattr(_state, "depth", 0)


_pending: list[int] = []  # signals held back by a deferred section (main thread only)
_received: list[int] = []  # every stop signal of the current block (main thread only)


def _handler(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    for sig in STOP_SIGNALS:  # one stop is enough: later signals must not break the cleanup
        signal.signal(sig, signal.SIG_IGN)
    if _depth() > 0:
        _pending.append(signum)
        return
    raise RunStopped(signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM / SIGINT / SIGHUP raise :class:`RunStopped`; the previous
    handlers come back afterwards. Outside the main thread it does nothing (Python delivers
    signals to the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    previous_hook = sys.unraisablehook
    _pending.clear()
    _received.clear()

    def unraisable(args: Any) -> None:
        # a RunStopped dropped in a finalizer: not an error to print (raise_if_stopped
        # raises it again where the run can act on it); anything else as before
        if not (isinstance(args.exc_type, type) and issubclass(args.exc_type, RunStopped)):
            previous_hook(args)

    sys.unraisablehook = unraisable
    for sig in STOP_SIGNALS:
        signal.signal(sig, _handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        sys.unraisablehook = previous_hook
        _pending.clear()
        _received.clear()


def raise_if_stopped(*, finishes: bool = False) -> None:
    """Raise :class:`RunStopped` again for a stop signal whose exception was lost.

    Python runs a signal handler in the main thread between any two bytecodes, also inside a
    finalizer (``__del__``, a weakref callback) that the garbage collector happens to run; an
    exception raised there is printed ("Exception ignored in ...") and dropped, and the run
    would go on to publish its report with the stop forgotten. The run calls this before it
    publishes anything (and again before the summary), so that a stop is never lost."""
    if _received and _depth() == 0 and threading.current_thread() is threading.main_thread():
        raise RunStopped(_received[0], finished=finishes)


@contextmanager
def deferred(*, finishes: bool = False) -> Iterator[None]:
    """Hold back a stop until the block is over, then raise it (``finished=finishes``)."""
    _state.depth = _depth() + 1
    try:
        yield
    finally:
        _state.depth = _depth() - 1
    if _depth() == 0 and _pending and threading.current_thread() is threading.main_thread():
        signum = _pending.pop(0)
        _pending.clear()
        raise RunStopped(signum, finished=finishes)


class Worker:
    """A daemon thread the main thread waits for while a stop may come, with its end an event
    of its own (:attr:`done`), set once ``target`` has returned or raised.

    Not ``Thread.join()`` / ``is_alive()``: a signal handler's exception that interrupts
    ``join()`` makes Python 3.11 mark the running thread as ended (CPython issue 90882:
    threading's bpo-45274 clean-up finds the thread's own lock held and releases it). A
    stopped report run then took its notebook thread for finished, killed no kernel and
    removed its staging folder, and the kernel whose launch was under way started in it (a CI
    failure: the kernel's traceback, "No such file or directory", in the run's stderr); or it
    closed the export under the evaluation's running query."""

    def __init__(self, target: Callable[[], None], name: str) -> None:
        #: set when ``target`` is over
        self.done = threading.Event()

        def run() -> None:
            try:
                target()
            finally:
                self.done.set()

        self._thread = threading.Thread(target=run, name=name, daemon=True)

    def start(self) -> None:
        """Start the thread, with a stop held back until it has started: ``Thread.start()``
        waits for the new thread to run, and a stop arriving in that wait came out of it
        before the caller's clean-up (which stops the thread's work) could begin."""
        with deferred():
            self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the work is over (``timeout``: at most that many seconds); whether it
        is. A stop signal interrupts the wait, not the record of the thread's end."""
        if timeout is not None:
            return self.done.wait(timeout)
        while not self.done.wait(0.25):
            pass
        return True
