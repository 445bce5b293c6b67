"""Progress of the long commands (``simulate``, ``report``, ``daily``, ``demo``), on stderr.

On a terminal each stage gets a live bar (tqdm) with its count, rate and time left; in a log
(cron, a pipe: not a TTY) each stage prints one plain line when it ends, with its duration and
rate, e.g. ``simulate: days 29/29 in 81.2 s (0.36 days/s)``. Library code takes an optional
:class:`Progress` and calls :meth:`Progress.stage`; ``None`` means silence (tests, notebooks).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO


class Stage:
    """One stage of a run: call :meth:`advance` as work gets done."""

    def __init__(self, progress: Progress, name: str, total: float | None, unit: str) -> None:
        self.progress = progress
        self.name = name
        self.total = total
        self.unit = unit
        self.done = 0.0
        self.started = time.monotonic()
        self._bar: Any = None
        if progress.live:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=f"{progress.command}: {name}", unit=f" {unit}",
                             file=progress.stream, leave=True, dynamic_ncols=True,
                             unit_scale=total is not None and total >= 10_000,
                             bar_format=None if total else "{desc}: {n_fmt} {unit} "
                                                           "[{elapsed}, {rate_fmt}]")

    def advance(self, n: float = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        seconds = time.monotonic() - self.started
        if self._bar is not None:
            self._bar.close()
            return
        count = f"{self.done:,.0f}" + (f"/{self.total:,.0f}" if self.total else "")
        rate = f" ({self.done / seconds:,.1f} {self.unit}/s)" if self.done and seconds > 0 else ""
        what = f" {count} {self.unit}" if self.unit else ""
        self.progress.say(f"{self.name}{what} in {seconds:.1f} s{rate}")


class Progress:
    """Stages of one command's run. ``live``: draw bars (default: when ``stream`` is a TTY)."""

    def __init__(self, command: str, stream: TextIO | None = None,
                 live: bool | None = None) -> None:
        self.command = command
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.live = bool(isatty and isatty()) if live is None else live

    def say(self, text: str) -> None:
        """One plain line (in a log) or a line above the bars (on a terminal)."""
        line = f"{self.command}: {text}"
        if self.live:
            from tqdm import tqdm

            tqdm.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    @contextmanager
    def stage(self, name: str, total: float | None = None, unit: str = "") -> Iterator[Stage]:
        """A stage named ``name`` of ``total`` ``unit`` (None: not known beforehand)."""
        stage = Stage(self, name, total, unit)
        try:
            yield stage
        finally:
            stage.close()


@contextmanager
def stage(progress: Progress | None, name: str, total: float | None = None,
          unit: str = "") -> Iterator[Stage | None]:
    """:meth:`Progress.stage`, or nothing when ``progress`` is None."""
    if progress is None:
        yield None
        return
    with progress.stage(name, total, unit) as s:
        yield s


def advance(s: Stage | None, n: float = 1) -> None:
    if s is not None:
        s.advance(n)
