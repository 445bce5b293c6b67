"""Comparing two decision documents (JSON-like: dicts, lists, numbers, strings)."""

from __future__ import annotations

from typing import Any

import pytest


def assert_same_document(got: Any, want: Any, rel: float = 1e-12, path: str = "") -> None:
    """Equal documents, floats to ``rel`` relative: DuckDB's parallel sums may add in
    another order, and the same figures read from another relation do."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), path
        for k in want:
            assert_same_document(got[k], want[k], rel, f"{path}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same_document(g, w, rel, f"{path}[{i}]")
    elif isinstance(want, float) and isinstance(got, float):
        assert got == pytest.approx(want, rel=rel, abs=1e-12, nan_ok=True), path
    else:
        assert got == want, path
