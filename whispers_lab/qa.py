"""Phase 1's "All QA scenarios pass (see scripts/qa-whispers.js)": the day's QA results as JUnit XML.

The QA suite is a JavaScript test run; jest-junit, mocha-junit-reporter and Playwright's junit
reporter all write JUnit XML, so that is what the lab reads, with ``junitparser`` (a maintained
parser) over ``defusedxml`` (no entity expansion, no external entities). One test case is one
QA *scenario*.

* :func:`read_qa_results` reads a file, or every ``*.xml`` under a folder, into a
  :class:`QaResults`. It never raises on bad input: a missing path, an empty folder or a
  malformed file is recorded (``errors`` names each file and what is wrong with it), so a broken
  QA upload costs the criterion, never the rest of the report.
* :func:`qa_scenarios` turns that into the criterion ``qa_scenarios``: ``pass`` only when at
  least one scenario ran and none failed or errored (skipped ones are listed, not counted as
  run); ``fail`` as soon as one failed or errored (even if another file was unreadable);
  ``no_data`` without results; ``inconclusive`` when some files were readable and passed but
  another was not (the unreadable one may hold the failure).
* :func:`qa_results_path` is where the scheduled job looks for a day's results beside the
  exports: ``<exports>/qa/<YYYY-MM-DD>/`` (a folder of XML files) or
  ``<exports>/qa/<YYYY-MM-DD>.xml``, the date being the reported rollout day's UTC date.
* :func:`junit_xml` writes a results file (the demo's simulated QA runs and the tests).

See ``docs/qa.md``.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .plan import Plan
from .results import CriterionResult

CRITERION_ID = "qa_scenarios"
QA_DIR_NAME = "qa"
#: At most this many failing / skipped scenarios are kept by name in a result's details.
MAX_LISTED = 50
#: A failure message is cut to this many characters (stack traces stay in the QA tool).
MAX_MESSAGE = 300

Outcome = Literal["passed", "failed", "error", "skipped"]

#: Scenarios of the (simulated) whispers QA suite: the demo's QA runs and the sample file. ADDED:
#: the seed names scripts/qa-whispers.js but not its scenarios; these follow the plan's checks.
DEFAULT_SCENARIOS: tuple[tuple[str, str], ...] = (
    ("recap page", "shows the whispers section with up to NEXT_PUBLIC_WHISPERS_MAX whispers"),
    ("recap page", "hides the whispers section when NEXT_PUBLIC_WHISPERS_ENABLED=false"),
    ("recap page", "shows the empty state for a user without micro-memories"),
    ("context ranking", "orders whispers by context fit"),
    ("context ranking", "falls back to recency order after the 200 ms ranking timeout"),
    ("weights", "persist a user's weights across two devices"),
    ("weights", "use the fallback weights when the user's weights cannot be loaded"),
    ("telemetry", "sends whispers_shown and whispers_used with request and position"),
    ("maya cue", "fires once and respects its cooldown"),
    ("privacy", "never shows another user's memories"),
)


@dataclass(frozen=True)
class Scenario:
    """One test case: ``classname`` (suite / describe block), ``name``, outcome, message."""

    suite: str
    name: str
    outcome: Outcome
    message: str = ""
    file: str = ""

    @property
    def title(self) -> str:
        return f"{self.suite} › {self.name}" if self.suite else self.name

    def to_dict(self) -> dict[str, Any]:
        return {"scenario": self.title, "outcome": self.outcome, "message": self.message,
                "file": self.file}


@dataclass(frozen=True)
class QaResults:
    """What the QA results at ``source`` say (``source`` None: none were given)."""

    source: str | None
    files: tuple[str, ...] = ()
    scenarios: tuple[Scenario, ...] = ()
    errors: tuple[str, ...] = ()
    run_at: tuple[str, ...] = ()
    missing: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def count(self, outcome: Outcome) -> int:
        return sum(1 for s in self.scenarios if s.outcome == outcome)

    @property
    def ran(self) -> int:
        """Scenarios that ran (passed, failed or errored; skipped ones did not run)."""
        return len(self.scenarios) - self.count("skipped")

    @property
    def failing(self) -> tuple[Scenario, ...]:
        return tuple(s for s in self.scenarios if s.outcome in ("failed", "error"))

    @property
    def skipped(self) -> tuple[Scenario, ...]:
        return tuple(s for s in self.scenarios if s.outcome == "skipped")


# ---------------------------------------------------------------------------------------
# reading


def _short(text: str | None) -> str:
    """First non-empty line of a message, cut to :data:`MAX_MESSAGE` characters."""
    for line in str(text or "").splitlines():
        line = line.strip()
        if line:
            return line if len(line) <= MAX_MESSAGE else line[:MAX_MESSAGE - 1] + "…"
    return ""


def _outcome(case: Any) -> tuple[Outcome, str]:
    from junitparser import Error, Failure, Skipped

    results = list(case.result)
    for kind, word in ((Error, "error"), (Failure, "failed"), (Skipped, "skipped")):
        for r in results:
            if isinstance(r, kind):
                return word, _short(r.message) or _short(r.text)  # type: ignore[return-value]
    return "passed", ""


def parse_file(path: str | os.PathLike[str], label: str | None = None
               ) -> tuple[list[Scenario], list[str]]:
    """Scenarios and suite timestamps of one JUnit XML file.

    Raises :class:`ValueError` naming the file (``label``, default its name) and the problem
    when it is not well-formed XML or not JUnit XML (root ``<testsuites>`` / ``<testsuite>``)."""
    import xml.etree.ElementTree as ET

    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import parse as safe_parse
    from junitparser import JUnitXml, JUnitXmlError

    p = Path(path)
    name = label or p.name
    try:
        xml = JUnitXml.fromfile(str(p), parse_func=safe_parse)
    except ET.ParseError as exc:
        raise ValueError(f"QA results file {name!r} is not well-formed XML ({exc})") from None
    except JUnitXmlError:
        raise ValueError(f"QA results file {name!r} is not JUnit XML (the root element must be "
                         f"<testsuites> or <testsuite>)") from None
    except DefusedXmlException as exc:
        raise ValueError(f"QA results file {name!r} was refused: {type(exc).__name__} "
                         f"(entity declarations are not allowed)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"QA results file {name!r} cannot be read ({exc})") from None
    scenarios: list[Scenario] = []
    stamps: list[str] = []
    for suite in xml:
        if suite.timestamp:
            stamps.append(str(suite.timestamp))
        for case in suite:
            outcome, message = _outcome(case)
            scenarios.append(Scenario(str(case.classname or suite.name or ""),
                                      str(case.name or "(unnamed)"), outcome, message, name))
    return scenarios, stamps


def _display(path: Path) -> str:
    """A path as shown in reports: its last two parts (never the whole server path)."""
    return str(Path(*path.parts[-2:])) if len(path.parts) >= 2 else str(path)


def read_qa_results(path: str | os.PathLike[str] | None) -> QaResults:
    """The QA results at ``path``: one JUnit XML file, or every ``*.xml`` below a folder
    (sorted by relative path). Never raises on bad input; see :class:`QaResults`."""
    if path is None:
        return QaResults(source=None, missing="no QA results were given")
    root = Path(path)
    source = str(root)
    if root.is_dir():
        files = sorted(p for p in root.rglob("*.xml") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(root).parts))
        if not files:
            return QaResults(source=source, missing=f"the QA results folder "
                                                    f"{_display(root)!r} holds no *.xml file")
        labels = [str(p.relative_to(root)) for p in files]
    elif root.is_file():
        files, labels = [root], [root.name]
    else:
        return QaResults(source=source, missing=f"no QA results file at {_display(root)!r}")
    scenarios: list[Scenario] = []
    stamps: list[str] = []
    errors: list[str] = []
    for f, label in zip(files, labels, strict=True):
        try:
            found, st = parse_file(f, label)
        except ValueError as exc:
            errors.append(str(exc))
            continue
        scenarios += found
        stamps += st
    return QaResults(source=source, files=tuple(labels), scenarios=tuple(scenarios),
                     errors=tuple(errors), run_at=tuple(sorted(set(stamps))))


def qa_results_path(exports_dir: str | os.PathLike[str], date: dt.date) -> Path:
    """The conventional place of one day's QA results beside the exports:
    ``<exports>/qa/<date>/`` if that folder exists, else ``<exports>/qa/<date>.xml`` (which
    may not exist: then the criterion has no data)."""
    base = Path(exports_dir) / QA_DIR_NAME
    folder = base / date.isoformat()
    return folder if folder.is_dir() else base / f"{date.isoformat()}.xml"


# ---------------------------------------------------------------------------------------
# the criterion


def _names(scenarios: Sequence[Scenario], with_message: bool) -> str:
    shown = [f"{s.title} ({s.message})" if with_message and s.message else s.title
             for s in scenarios[:3]]
    more = f" and {len(scenarios) - 3} more" if len(scenarios) > 3 else ""
    return "; ".join(shown) + more


def qa_scenarios(qa: QaResults | None, plan: Plan, day: int) -> CriterionResult:
    """The criterion ``qa_scenarios`` for rollout ``day`` (see the module docstring).

    ``value``: scenarios that failed or errored; ``threshold`` 0. ``details``: counts, the
    failing and skipped scenarios by name with their messages, files read, file errors."""
    when = f"day {day} ({plan.day_start(day).date().isoformat()})"
    qa = qa if qa is not None else read_qa_results(None)
    failing, skipped = qa.failing, qa.skipped
    details: dict[str, Any] = {
        "source": Path(qa.source).name if qa.source else None,
        "files": list(qa.files), "scenarios": len(qa.scenarios), "ran": qa.ran,
        "passed": qa.count("passed"), "failed": qa.count("failed"),
        "errored": qa.count("error"), "skipped": qa.count("skipped"),
        "failing": [s.to_dict() for s in failing[:MAX_LISTED]],
        "skipped_scenarios": [s.to_dict() for s in skipped[:MAX_LISTED]],
        "file_errors": list(qa.errors), "run_at": list(qa.run_at),
    }

    def result(status: str, value: float | None, reason: str) -> CriterionResult:
        return CriterionResult(id=CRITERION_ID, kind="criterion", value=value, threshold=0.0,
                               status=status, reason=reason, unit="scenarios",  # type: ignore[arg-type]
                               details=details)

    unreadable = (f" {len(qa.errors)} file(s) could not be read: {qa.errors[0]}"
                  + (f" (and {len(qa.errors) - 1} more)" if len(qa.errors) > 1 else "")
                  if qa.errors else "")
    skip_text = (f" Skipped: {_names(skipped, with_message=False)}." if skipped else "")
    if failing:
        return result("fail", float(len(failing)),
                      f"{len(failing)} of {qa.ran} QA scenario(s) failed on {when}: "
                      f"{_names(failing, with_message=True)}.{skip_text}{unreadable}")
    if qa.missing is not None:
        return result("no_data", None, f"No QA results for {when}: {qa.missing}.")
    if qa.errors and not qa.scenarios:
        return result("no_data", None, f"The QA results for {when} could not be used:"
                                       f"{unreadable}")
    if qa.errors:
        return result("inconclusive", 0.0,
                      f"{qa.ran} QA scenario(s) passed on {when}, but{unreadable}; it may hold "
                      f"a failure.{skip_text}")
    if qa.ran == 0:
        return result("no_data", None,
                      f"No QA scenario ran on {when} ({len(skipped)} skipped, none passed or "
                      f"failed).{skip_text}")
    return result("pass", 0.0, f"All {qa.ran} QA scenario(s) passed on {when}.{skip_text}")


# ---------------------------------------------------------------------------------------
# writing (simulated runs, samples, tests)


def junit_xml(scenarios: Iterable[tuple[str, str]] = DEFAULT_SCENARIOS, *,
              failures: Mapping[str, str] | None = None, errors: Mapping[str, str] | None = None,
              skipped: Mapping[str, str] | None = None, suite_name: str = "qa-whispers",
              timestamp: dt.datetime | None = None) -> str:
    """A JUnit XML document (jest-junit's layout: one ``<testsuite>`` per describe block)
    for ``(suite, name)`` scenarios; ``failures`` / ``errors`` / ``skipped`` map a scenario
    name to its message. Written with junitparser."""
    from junitparser import Error, Failure, JUnitXml, Skipped, TestCase, TestSuite

    failures, errors, skipped = dict(failures or {}), dict(errors or {}), dict(skipped or {})
    root = JUnitXml(suite_name)
    suites: dict[str, TestSuite] = {}
    for suite_title, name in scenarios:
        if suite_title not in suites:
            suites[suite_title] = TestSuite(suite_title)
            if timestamp is not None:
                suites[suite_title].timestamp = timestamp.replace(microsecond=0).isoformat()
        case = TestCase(name, classname=suite_title, time=0.25)
        if name in errors:
            case.result = [Error(errors[name], "Error")]
        elif name in failures:
            case.result = [Failure(failures[name], "AssertionError")]
        elif name in skipped:
            case.result = [Skipped(skipped[name])]
        suites[suite_title].add_testcase(case)
    for suite in suites.values():
        suite.update_statistics()
        root.add_testsuite(suite)
    root.update_statistics()
    import xml.etree.ElementTree as ET

    body = root.tostring()
    tree = ET.fromstring(body)  # our own document: re-read only to indent it
    ET.indent(tree)
    return ('<?xml version="1.0" encoding="utf-8"?>\n'
            + ET.tostring(tree, encoding="unicode") + "\n")
