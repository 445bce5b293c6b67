"""scipy and statsmodels, imported where they are first used rather than where they are named.

Importing ``scipy.stats`` and statsmodels costs about 1.2 s of CPU. Every process that imports
the statistics modules paid it, whether it computed a test or not: the report notebook's kernel
(it imports them only to unpickle the run's evaluation and draw it, while the run's own
evaluation wants both cores), and every command that never reaches a statistic. The statistics
modules name these libraries through :func:`lazy_module` and :func:`lazy_function`; the import
happens on the first attribute access or call, once per process (Python's import lock makes a
first use from two threads at once safe).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

__all__ = ["lazy_function", "lazy_module"]


class _LazyModule(ModuleType):
    """Stands for the module of its name; imports it at the first attribute asked for and keeps
    every attribute it hands out (a module's functions do not change)."""

    def __getattr__(self, attr: str) -> Any:
        value = getattr(importlib.import_module(self.__name__), attr)
        setattr(self, attr, value)
        return value

    def __repr__(self) -> str:
        return f"<module {self.__name__!r}, imported when first used>"


def lazy_module(name: str) -> Any:
    """``name`` (e.g. ``"scipy.stats"``), imported when an attribute of it is first used."""
    return _LazyModule(name)


def lazy_function(module: str, name: str) -> Callable[..., Any]:
    """``module.name`` (a function or class to call), imported at its first call."""

    found: list[Callable[..., Any]] = []

    def call(*args: Any, **kwargs: Any) -> Any:
        if not found:
            found.append(getattr(importlib.import_module(module), name))
        return found[0](*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"``{module}.{name}``, imported at the first call."
    return call
