"""scipy and statsmodels, imported where they are first used rather than where they are named.

Importing ``scipy.stats`` and statsmodels costs about 1.2 s of CPU. Every process that imports
the statistics modules paid it, whether it computed a test or not: the report notebook's kernel
(it imports them only to unpickle the run's evaluation and draw it, while the run's own
evaluation wants both cores), and every command that never reaches a statistic. The statistics
modules name these libraries through :func:`lazy_module` and :func:`lazy_function`; the import
happens on the first attribute access or call, once per process (Python's import lock makes a
first use from two threads at once safe). A process that will need them soon and has a core
to spare meanwhile imports them all in a thread (:func:`import_named_ahead`).
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

__all__ = ["import_named", "import_named_ahead", "lazy_function", "lazy_module",
           "named_modules"]

#: Every module a :func:`lazy_module` or :func:`lazy_function` of this process stands for.
_NAMED: dict[str, None] = {}
#: (thread, its end) of the :func:`import_named_ahead` running, if one is.
_ahead: tuple[threading.Thread, threading.Event] | None = None
_AHEAD_LOCK = threading.Lock()


def _after_ahead() -> None:
    """Wait for :func:`import_named_ahead`'s thread (from any other thread), so that a module
    is never imported by two threads at once."""
    running = _ahead
    if running is not None and running[0] is not threading.current_thread():
        running[1].wait()


class _LazyModule(ModuleType):
    """Stands for the module of its name; imports it at the first attribute asked for and keeps
    every attribute it hands out (a module's functions do not change)."""

    def __getattr__(self, attr: str) -> Any:
        _after_ahead()
        value = getattr(importlib.import_module(self.__name__), attr)
        setattr(self, attr, value)
        return value

    def __repr__(self) -> str:
        return f"<module {self.__name__!r}, imported when first used>"


def lazy_module(name: str) -> Any:
    """``name`` (e.g. ``"scipy.stats"``), imported when an attribute of it is first used."""
    _NAMED[name] = None
    return _LazyModule(name)


def lazy_function(module: str, name: str) -> Callable[..., Any]:
    """``module.name`` (a function or class to call), imported at its first call."""
    _NAMED[module] = None
    found: list[Callable[..., Any]] = []

    def call(*args: Any, **kwargs: Any) -> Any:
        if not found:
            _after_ahead()
            found.append(getattr(importlib.import_module(module), name))
        return found[0](*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"``{module}.{name}``, imported at the first call."
    return call


def named_modules() -> tuple[str, ...]:
    """The modules the lazy names of the modules imported so far stand for, in naming order."""
    return tuple(_NAMED)


def import_named() -> None:
    """Import every module of :func:`named_modules` now (e.g. in a thread of its own while
    the caller waits on DuckDB, before a statistic needs them). A module that fails to import
    is left for its first use to report."""
    for name in named_modules():
        try:
            importlib.import_module(name)
        except Exception:
            pass


def import_named_ahead() -> threading.Thread:
    """Start :func:`import_named` in a thread of its own and return it (the one already
    running, if any: two report runs in one process do not import side by side). Until it
    ends, a first use of a lazy name from another thread waits for it rather than importing
    beside it. The report run starts it as the day's evaluation begins: the imports (about
    0.7 s of CPU) then run while the evaluation waits on DuckDB, instead of at its first
    statistic, when only one core is busy."""
    global _ahead
    with _AHEAD_LOCK:
        if _ahead is not None:
            return _ahead[0]
        ended = threading.Event()

        def run() -> None:
            global _ahead
            try:
                import_named()
            finally:
                ended.set()
                with _AHEAD_LOCK:
                    _ahead = None

        thread = threading.Thread(target=run, name="whispers-lab-imports", daemon=True)
        _ahead = (thread, ended)  # published before it starts: a first use waits on `ended`
        thread.start()
        return thread
