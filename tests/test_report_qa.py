"""End to end: QA results and the communication plan through ``report`` and ``daily`` on a small
simulated export of Phase 1 (papermill runs twice in this module)."""

from __future__ import annotations

import datetime as dt
import html
import json
import shutil
from pathlib import Path

import pytest

from whispers_lab.cli import main
from whispers_lab.paths import DATA_DIR
from whispers_lab.plan import load_plan
from whispers_lab.simulate import simulate_to

PLAN = load_plan()
DAY = 1
FAILING = DATA_DIR / "samples" / "qa-results-failing.xml"


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("exports")
    simulate_to(folder / "rollout.duckdb", users=2000, seed=5, through_day=DAY)
    return folder


def _read(out: Path, day: int) -> tuple[dict, str]:
    folder = out / f"day-{day:02d}"
    return (json.loads((folder / "decision.json").read_text(encoding="utf-8")),
            (folder / "report.html").read_text(encoding="utf-8"))


def test_report_lists_failing_scenarios_and_a_malformed_file_loses_nothing_else(
        exports: Path, tmp_path: Path) -> None:
    qa_dir = tmp_path / "qa-run"
    qa_dir.mkdir()
    shutil.copy(FAILING, qa_dir / "chrome.xml")
    (qa_dir / "firefox.xml").write_text("<testsuites><testsuite>", encoding="utf-8")
    out = tmp_path / "reports"
    code = main(["report", "--export", str(exports / "rollout.duckdb"), "--day", str(DAY),
                 "--out", str(out), "--qa-results", str(qa_dir)])
    assert code == 0
    doc, page = _read(out, DAY)
    (entry,) = [c for c in doc["criteria"] if c["id"] == "qa_scenarios"]
    assert entry["role"] == "required" and entry["status"] == "fail" and entry["blocking"]
    assert doc["decision"] == "NO_GO" and "qa_scenarios" in doc["blocking"]
    assert entry["details"]["file_errors"] == [
        "QA results file 'firefox.xml' is not well-formed XML (no element found: line 1, "
        "column 23)"]
    # the page names every failing scenario with its message, and the unreadable file
    text = html.unescape(page)
    for name in ("orders whispers by context fit", "persist a user's weights across two devices",
                 "sends whispers_shown and whispers_used with request and position"):
        assert name in text
    assert "Cannot read properties of undefined" in page and "firefox.xml" in page
    # ... and everything else of the report is there
    assert page.count("data:image/png;base64,") >= 5
    assert len(doc["criteria"]) > 10 and len(doc["triggers"]) == 5
    # the communication plan: day 2's tasks (none) and the next one in the plan
    assert doc["communications"]["for_day"] == DAY + 1
    assert doc["communications"]["tasks"] == []
    assert "Communication plan: due tomorrow (day 2" in page
    assert "Next in the plan: day 3" in page


def test_daily_reads_qa_results_from_the_conventional_place(exports: Path,
                                                           tmp_path: Path) -> None:
    date = PLAN.day_start(DAY).date()
    (exports / "qa").mkdir(exist_ok=True)
    (exports / "qa" / f"{date.isoformat()}.xml").write_text(
        "<html>502 Bad Gateway</html>", encoding="utf-8")
    out = tmp_path / "reports"
    # an unreadable file at the conventional place: the criterion says so, the report stands
    code = main(["daily", "--exports", str(exports), "--out", str(out),
                 "--today", (date + dt.timedelta(days=1)).isoformat()])
    assert code == 0
    doc, page = _read(out, DAY)
    (entry,) = [c for c in doc["criteria"] if c["id"] == "qa_scenarios"]
    assert entry["status"] == "no_data"
    assert f"'{date.isoformat()}.xml' is not JUnit XML" in entry["reason"]
    assert doc["decision"] == "NO_GO"
    assert page.count("data:image/png;base64,") >= 5
