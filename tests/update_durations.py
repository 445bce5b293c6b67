"""Refresh ``tests/durations.json``: seconds per test file, from a JUnit XML report of a run.

    .venv/bin/python -m pytest --junitxml=/tmp/junit.xml
    .venv/bin/python tests/update_durations.py /tmp/junit.xml

The file is only a hint for ``conftest.py``'s scheduler, which hands the slowest remaining file
to whichever worker is free (longest first); a stale or missing entry changes the order, never
which tests run or what they check."""

from __future__ import annotations

import collections
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DURATIONS = Path(__file__).resolve().parent / "durations.json"


def file_of(classname: str) -> str:
    """``tests.test_x.TestY`` -> ``tests/test_x.py``; ``notebooks.x.ipynb`` -> ``notebooks/x.ipynb``."""
    if classname.endswith(".ipynb"):
        head, _, name = classname[: -len(".ipynb")].rpartition(".")
        return f"{head.replace('.', '/')}/{name}.ipynb"
    parts = classname.split(".")
    for n in range(len(parts), 0, -1):
        candidate = "/".join(parts[:n]) + ".py"
        if (ROOT / candidate).is_file():
            return candidate
    return "/".join(parts) + ".py"


def merged(previous: dict[str, float], measured: dict[str, float]) -> dict[str, float]:
    """The hint after a run: the run's seconds for the files it ran; the previous hint's for
    files it did not run that still exist (a partial run, e.g. ``-m "not spark"``, keeps the
    Spark group's entry); longest first."""
    out = {f: s for f, s in previous.items() if f not in measured and (ROOT / f).is_file()}
    out.update(measured)
    return {f: round(s, 1) for f, s in sorted(out.items(), key=lambda x: (-x[1], x[0]))}


def main(junit_xml: str) -> None:
    seconds: dict[str, float] = collections.defaultdict(float)
    for case in ET.parse(junit_xml).getroot().iter("testcase"):
        seconds[file_of(case.get("classname", ""))] += float(case.get("time") or 0)
    previous = (json.loads(DURATIONS.read_text(encoding="utf-8")) if DURATIONS.is_file()
                else {})
    ordered = merged(previous, seconds)
    tmp = DURATIONS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(ordered, indent=1) + "\n", encoding="utf-8")
    tmp.replace(DURATIONS)
    kept = len(ordered) - len(seconds)
    print(f"{DURATIONS}: {len(ordered)} files ({kept} kept from the previous hint), "
          f"{sum(ordered.values()):.0f} s in all")


if __name__ == "__main__":
    main(sys.argv[1])
