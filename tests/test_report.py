"""End to end: ``whispers-lab report`` on one small simulated export (papermill runs twice in
this module: the shared report, and an invalid export found by the notebook)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
from pathlib import Path

import duckdb
import pytest

from whispers_lab.cli import main
from whispers_lab.contract import TABLES
from whispers_lab.decision import SCHEMA_VERSION
from whispers_lab.export import open_export
from whispers_lab.plan import CRITERION_IDS, FLAG_NAMES, TRIGGER_IDS, load_plan
from whispers_lab.report import privacy
from whispers_lab.report.index import collect_days, index_html
from whispers_lab.report.runner import REPORT_FILES, day_dir_name
from whispers_lab.simulate import simulate_to
from whispers_lab.timeline import PREFIX, TIMELINE_ENV, mark

from factories import error_lines

DAY = 9
ID_COLUMNS = ("user_id", "device_id", "request_id", "memory_id", "whisper_id")


@pytest.fixture(scope="module")
def export_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path, _ = simulate_to(tmp_path_factory.mktemp("export") / "rollout.duckdb", users=2000,
                          seed=11, through_day=DAY)
    return path


@pytest.fixture(scope="module")
def report(export_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One report written through the CLI, with its stage timeline on; returns what the tests
    look at."""
    out = tmp_path_factory.mktemp("reports")
    err = io.StringIO()
    os.environ[TIMELINE_ENV] = "1"
    try:
        with contextlib.redirect_stderr(err):
            code = main(["report", "--export", str(export_path), "--day", str(DAY),
                         "--out", str(out)])
    finally:
        del os.environ[TIMELINE_ENV]
    day_dir = out / day_dir_name(DAY)
    return {"code": code, "out": out, "dir": day_dir, "stderr": err.getvalue(),
            "html": (day_dir / "report.html").read_text(encoding="utf-8"),
            "decision": json.loads((day_dir / "decision.json").read_text(encoding="utf-8"))}


def all_export_ids(export_path: Path) -> set[str]:
    """Every user, device, request and memory id of the export (small export: fits a set)."""
    ids: set[str] = set()
    con = duckdb.connect(str(export_path), read_only=True)
    try:
        for table in TABLES:
            for col in table.columns:
                if col.name in ID_COLUMNS:
                    rows = con.execute(f'SELECT DISTINCT "{col.name}" FROM "{table.name}" '
                                       f'WHERE "{col.name}" IS NOT NULL').fetchall()
                    ids.update(r[0] for r in rows)
    finally:
        con.close()
    return ids


def test_report_writes_three_files_and_the_index(report: dict) -> None:
    assert report["code"] == 0
    for name in REPORT_FILES:
        assert (report["dir"] / name).is_file(), name
    index = (report["out"] / "index.html").read_text(encoding="utf-8")
    assert f"{day_dir_name(DAY)}/report.html" in index
    # nothing temporary left behind
    leftovers = [p.name for p in report["out"].iterdir() if p.name.startswith(".day")]
    assert leftovers == []


def test_the_timeline_shows_each_stage_once_on_one_clock(report: dict) -> None:
    """``WHISPERS_LAB_TIMELINE=1``: one line per stage of the run, each once, the run's own
    sequence in order; the evaluation's thread and the kernel mark on the same clock."""
    lines = [ln for ln in report["stderr"].splitlines() if ln.startswith(PREFIX)]
    found = [re.fullmatch(rf"{PREFIX} (\d+\.\d\d) s day {DAY}: (.+)", ln) for ln in lines]
    assert all(found), lines
    at = {m.group(2): float(m.group(1)) for m in found}
    assert len(at) == len(lines)  # each stage once
    run = ["report run starts", "export opened and validated", "day's evaluation done",
           "notebook done", "HTML written", "evaluation thread done", "privacy scan done",
           "report published"]
    assert [at[s] for s in run] == sorted(at[s] for s in run)
    assert at["report run starts"] < at["kernel ran its first cell"] <= at["notebook done"]
    assert at["export opened and validated"] <= at["HTML conversion set up"] <= at["HTML written"]
    assert at["day's evaluation done"] <= at["index charts drawn"]
    assert set(at) == {*run, "kernel ran its first cell", "HTML conversion set up",
                       "index charts drawn"}


def test_the_timeline_is_silent_unless_asked_for(capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TIMELINE_ENV, raising=False)
    mark("a stage")
    monkeypatch.setenv(TIMELINE_ENV, "0")
    mark("a stage")
    assert capsys.readouterr().err == ""
    monkeypatch.setenv(TIMELINE_ENV, "1")
    mark("a stage")
    assert re.fullmatch(rf"{PREFIX} \d+\.\d\d s a stage\n", capsys.readouterr().err)


def test_html_is_self_contained(report: dict) -> None:
    html = report["html"]
    assert 'src="http' not in html and "src='http" not in html
    assert "<script src=" not in html.lower()
    assert '<link href="http' not in html
    assert privacy.network_references(html) == []
    assert "<img" in html and "data:image/png;base64," in html  # charts embedded


def test_html_shows_no_code_and_no_stray_reprs(report: dict) -> None:
    html = report["html"]
    assert "evaluate_day(" not in html and "import " not in html
    assert "<Figure" not in html and "&lt;Figure" not in html
    assert "DataFrame" not in html and "In&nbsp;[" not in html
    assert "Traceback" not in html
    assert report["decision"]["decision"].replace("_", "-") in html


def test_no_export_id_in_any_output(report: dict, export_path: Path) -> None:
    ids = all_export_ids(export_path)
    assert len(ids) > 1000
    for name in REPORT_FILES:
        text = privacy.strip_embedded_binary((report["dir"] / name).read_text(encoding="utf-8"))
        tokens = set(re.findall(r"[A-Za-z0-9]+", text))
        assert not tokens & ids, f"{name} holds ids of the export"
    with open_export(export_path, validate=False) as export:
        assert privacy.scan_files(export, [report["dir"] / n for n in REPORT_FILES]) == []


def test_decision_json_follows_the_schema(report: dict, export_path: Path) -> None:
    doc = report["decision"]
    assert doc["schema_version"] == SCHEMA_VERSION
    assert doc["day"] == DAY and doc["decision"] in ("GO", "NO_GO", "ROLLBACK")
    step = doc["next_step"]
    assert step["action"] in ("continue", "advance", "complete", "hold", "rollback")
    assert set(step["flags"]) == set(FLAG_NAMES)
    assert {c["id"] for c in doc["criteria"]} == set(CRITERION_IDS)
    assert {t["id"] for t in doc["triggers"]} == set(TRIGGER_IDS)
    for entry in doc["criteria"] + doc["triggers"]:
        assert entry["status"] in ("pass", "fail", "inconclusive", "no_data")
        assert entry["role"] in ("required", "watched", "info") and entry["reason"]
    meta = doc["report"]
    assert meta["export"] == export_path.name  # the file name only, never the path
    assert str(export_path.parent) not in json.dumps(doc)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", meta["generated_at"])
    assert meta["runtime_seconds"] > 0


def test_index_lists_every_day(report: dict) -> None:
    plan = load_plan()
    days = collect_days(report["out"])
    assert list(days) == [DAY]
    page = index_html(plan, days)
    for day in range(plan.last_day + 1):
        assert f"<td data-label='Day'>{day}</td>" in page
    assert page.count("no report yet") == plan.last_day


@pytest.mark.parametrize("day", ["15", "-1"])
def test_day_outside_the_plan_is_a_one_line_error(export_path: Path, tmp_path: Path, day: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["report", "--export", str(export_path), "--day", day, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1
    assert "outside the rollout" in err and "Traceback" not in err
    assert len(error_lines(err)) == 1
    assert list(tmp_path.iterdir()) == []


def test_missing_export_is_a_one_line_error(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["report", "--export", str(tmp_path / "nope.duckdb"), "--day", "3",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and "does not exist" in err and "Traceback" not in err


def test_failed_run_leaves_the_previous_report_intact(report: dict, tmp_path: Path,
                                                      export_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "reports"
    shutil.copytree(report["out"], out)
    before = {n: (out / day_dir_name(DAY) / n).read_bytes() for n in REPORT_FILES}
    corrupt = tmp_path / "corrupt.duckdb"
    corrupt.write_bytes(export_path.read_bytes()[:6000])
    code = main(["report", "--export", str(corrupt), "--day", str(DAY), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and "corrupt" in err
    after = {n: (out / day_dir_name(DAY) / n).read_bytes() for n in REPORT_FILES}
    assert after == before
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in report["out"].iterdir())


def test_invalid_export_fails_with_the_contract_problems(export_path: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A readable DuckDB file that breaks the contract: the notebook's validation error comes
    back verbatim, without a traceback, and nothing is published."""
    bad = tmp_path / "bad.duckdb"
    shutil.copy(export_path, bad)
    con = duckdb.connect(str(bad))
    con.execute("UPDATE api_logs SET status = 999 WHERE request_id IN "
                "(SELECT request_id FROM api_logs LIMIT 3)")
    con.execute("INSERT INTO users SELECT * FROM users LIMIT 1")  # a repeated user id
    con.close()
    out = tmp_path / "out"
    code = main(["report", "--export", str(bad), "--day", "4", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert "breaks the contract" in err and "Traceback" not in err
    assert "[redacted]" in err  # the validation example (a user id) is not repeated
    assert not set(re.findall(r"[A-Za-z0-9]+", err)) & all_export_ids(export_path)
    assert not (out / day_dir_name(4)).exists()
    kept = list((out / ".failed").glob("day-04-*.ipynb"))  # the failed run's record
    assert len(kept) == 1 and "failed notebook kept at" in err
    assert len(error_lines(err)) == 1
