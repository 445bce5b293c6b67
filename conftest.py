"""Session-wide test settings that must reach every test, the notebooks (nbval) and the
processes they start (report kernels, ``whispers-lab`` subprocesses), under pytest-xdist too.

* Validation manifests (``whispers_lab.validation``) go to a temporary cache folder of this
  test session, never to the developer's ``~/.cache``.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

_CACHE_ENV = "WHISPERS_LAB_CACHE"
_created: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    if _CACHE_ENV not in os.environ:  # xdist workers inherit the controller's folder
        folder = tempfile.mkdtemp(prefix="whispers-lab-test-cache-")
        os.environ[_CACHE_ENV] = folder
        _created.append(folder)


def pytest_unconfigure(config: pytest.Config) -> None:
    for folder in _created:
        shutil.rmtree(folder, ignore_errors=True)
        os.environ.pop(_CACHE_ENV, None)
