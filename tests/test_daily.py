"""The scheduled job: which export, which day, the lock, failures (papermill runs once here)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from whispers_lab.cli import main
from whispers_lab.errors import ReportError
from whispers_lab.plan import load_plan
from whispers_lab.report.daily import (
    DailyLock,
    newest_export,
    remove_stale_temporaries,
    report_day,
)
from whispers_lab.simulate import simulate_to

PLAN = load_plan()
REPORT_DAY = 9
TODAY = (PLAN.start_date + dt.timedelta(days=REPORT_DAY + 1)).isoformat()


def _touch(path: Path, mtime: float, *, folder: bool = False) -> Path:
    if folder:
        path.mkdir(parents=True)
        part = path / "users.parquet"
        part.write_bytes(b"PAR1")
        os.utime(part, (mtime, mtime))
    else:
        path.write_bytes(b"x")
    os.utime(path, (mtime, mtime))
    return path


def _fake_report(out: Path, day: int, decision: str = "GO") -> Path:
    folder = out / f"day-{day:02d}"
    folder.mkdir(parents=True)
    (folder / "report.html").write_text(f"report of day {day}", encoding="utf-8")
    (folder / "decision.json").write_text(json.dumps({"decision": decision, "day": day}),
                                          encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def export_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path, _ = simulate_to(tmp_path_factory.mktemp("sim") / "rollout.duckdb", users=1500, seed=3,
                          through_day=REPORT_DAY)
    return path


# -- choosing ---------------------------------------------------------------------------------


def test_newest_export_by_modification_time(tmp_path: Path) -> None:
    now = time.time()
    _touch(tmp_path / "2026-12-08.duckdb", now - 300)
    _touch(tmp_path / "2026-12-09", now - 200, folder=True)  # a Parquet folder
    _touch(tmp_path / "2026-12-09.duckdb.truth.json", now)  # ignored
    _touch(tmp_path / ".2026-12-10.duckdb.tmp-abc", now)  # an export being written: ignored
    _touch(tmp_path / "notes.txt", now)  # not an export
    assert newest_export(tmp_path).name == "2026-12-09"
    _touch(tmp_path / "2026-12-10.db", now - 100)
    assert newest_export(tmp_path).name == "2026-12-10.db"


def test_no_export_is_an_error(tmp_path: Path) -> None:
    from whispers_lab.errors import ReportError

    with pytest.raises(ReportError, match="no export"):
        newest_export(tmp_path)
    with pytest.raises(ReportError, match="does not exist"):
        newest_export(tmp_path / "missing")


def test_the_job_reports_yesterdays_rollout_day() -> None:
    start = PLAN.start_date
    assert report_day(PLAN, start + dt.timedelta(days=1)) == 0
    assert report_day(PLAN, start + dt.timedelta(days=10)) == 9
    assert report_day(PLAN, start) == -1


@pytest.mark.parametrize("offset", [0, -3, PLAN.last_day + 2])
def test_nothing_to_do_outside_the_rollout(tmp_path: Path, offset: int,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    today = (PLAN.start_date + dt.timedelta(days=offset)).isoformat()
    code = main(["daily", "--exports", str(tmp_path), "--out", str(tmp_path / "out"),
                 "--today", today])
    assert code == 0
    assert "nothing to do" in capsys.readouterr().out
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("day-*"))


# -- the lock ----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["daily", "report"])
def test_a_second_run_is_refused_while_the_lock_is_held(command: str, tmp_path: Path,
                                                        export_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """``daily`` and a manual ``report`` take the same lock, so they never write the same
    day at once: while a daily run holds it, either is refused and writes nothing."""
    out = tmp_path / "out"
    args = (["daily", "--exports", str(tmp_path), "--today", TODAY] if command == "daily"
            else ["report", "--export", str(export_path), "--day", str(REPORT_DAY)])
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from whispers_lab.report.daily import DailyLock\n"
         f"with DailyLock({str(out)!r}):\n"
         "    print('locked', flush=True)\n"
         "    time.sleep(30)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        code = main([*args, "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 1
        assert f"another daily run holds the lock (pid {holder.pid})" in err
        assert "Traceback" not in err
        assert not any(out.glob("day-*"))  # the refused run wrote nothing
        assert sorted(p.name for p in out.iterdir()) == [".daily.lock"]
    finally:
        holder.kill()
        holder.wait()
    with DailyLock(out):  # released when its holder died
        pass


# -- runs ----------------------------------------------------------------------------------------


def test_failed_run_publishes_an_error_page(tmp_path: Path, export_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    exports, out = tmp_path / "exports", tmp_path / "out"
    exports.mkdir()
    yesterday = _fake_report(out, REPORT_DAY - 1)
    before = (yesterday / "report.html").read_bytes()
    stale = _fake_report(out, REPORT_DAY, "GO")  # an earlier run of the same day
    corrupt = exports / "today.duckdb"
    corrupt.write_bytes(export_path.read_bytes()[:6000])
    code = main(["daily", "--exports", str(exports), "--out", str(out), "--today", TODAY])
    err = capsys.readouterr().err
    assert code == 1 and "ERROR page" in err and "Traceback" not in err
    doc = json.loads((stale / "decision.json").read_text(encoding="utf-8"))
    assert doc["decision"] == "ERROR" and "corrupt" in doc["error"]
    assert doc["day"] == REPORT_DAY and doc["report"]["export"] == "today.duckdb"
    page = (stale / "report.html").read_text(encoding="utf-8")
    assert "no go/no-go decision was made" in page and "superseded" in page
    assert (stale / "previous-report.html").read_text(encoding="utf-8") == f"report of day {REPORT_DAY}"
    assert (yesterday / "report.html").read_bytes() == before  # other days untouched
    index = (out / "index.html").read_text(encoding="utf-8")
    assert "Run failed, no decision" in index


def test_stale_export_is_refused(tmp_path: Path, export_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The newest export ends before the day to report: fail rather than judge an empty day."""
    exports, out = tmp_path / "exports", tmp_path / "out"
    exports.mkdir()
    os.symlink(export_path, exports / "rollout.duckdb")
    later = (PLAN.start_date + dt.timedelta(days=REPORT_DAY + 3)).isoformat()
    code = main(["daily", "--exports", str(exports), "--out", str(out), "--today", later])
    assert code == 1
    assert "has not arrived" in capsys.readouterr().err
    doc = json.loads((out / f"day-{REPORT_DAY + 2:02d}" / "decision.json").read_text("utf-8"))
    assert doc["decision"] == "ERROR" and "has not arrived" in doc["error"]
    # nothing went wrong to keep a record of: no failed notebook (a scheduler retrying
    # hourly until the export arrives would pile them up)
    assert "failed notebook" not in doc["error"]
    assert sorted(p.name for p in out.iterdir()) == [".daily.lock", f"day-{REPORT_DAY + 2:02d}",
                                                     "index.html"]


def test_daily_reports_yesterday_from_the_newest_export(tmp_path: Path, export_path: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The newest export is reported, opened once: whether it covers the day is checked on
    the report's own opening (from validation's counts), not by an opening of its own."""
    import whispers_lab.export
    import whispers_lab.report.runner

    opened: list[str] = []
    real_open = whispers_lab.export.open_export

    def counted(path, *args, **kwargs):
        opened.append(Path(path).name)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(whispers_lab.export, "open_export", counted)
    monkeypatch.setattr(whispers_lab.report.runner, "open_export", counted)
    exports, out = tmp_path / "exports", tmp_path / "out"
    exports.mkdir()
    old = exports / "older.duckdb"  # older and broken: must not be picked
    old.write_bytes(b"not a database")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    os.symlink(export_path, exports / "newest.duckdb")
    (exports / "newest.duckdb.truth.json").write_text("{}", encoding="utf-8")
    code = main(["daily", "--exports", str(exports), "--out", str(out), "--today", TODAY])
    assert code == 0, capsys.readouterr().err
    assert f"day {REPORT_DAY}:" in capsys.readouterr().out
    folder = out / f"day-{REPORT_DAY:02d}"
    doc = json.loads((folder / "decision.json").read_text(encoding="utf-8"))
    assert doc["day"] == REPORT_DAY and doc["report"]["export"] == "newest.duckdb"
    assert doc["decision"] in ("GO", "NO_GO", "ROLLBACK")
    assert (folder / "report.html").is_file() and (folder / "report.ipynb").is_file()
    assert (out / "index.html").is_file()
    assert sorted(p.name for p in out.iterdir()) == [".daily.lock", f"day-{REPORT_DAY:02d}",
                                                     "index.html"]
    assert opened == ["newest.duckdb"]


def test_leftovers_of_a_killed_run_are_removed(tmp_path: Path) -> None:
    """Taking the lock sweeps the staging folders that no live lock holder owns, whatever
    their age; a folder staged by the live holder stays while it holds the lock."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    killed = tmp_path / f".day-03.tmp-{dead.stdout.strip()}-abc"  # its run was kill -9'd
    killed.mkdir()
    (killed / "report.ipynb").write_text("{", encoding="utf-8")  # a partial notebook
    legacy = tmp_path / ".day-05.tmp-xyz"  # staged by an older version (no pid in the name)
    legacy.mkdir()
    hidden = tmp_path / ".day-06.old-1-2"  # killed between the two renames of a publication
    hidden.mkdir()
    (hidden / "decision.json").write_text("{}", encoding="utf-8")
    (tmp_path / ".index.html.abc.tmp").write_text("<html", encoding="utf-8")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from whispers_lab.report.daily import DailyLock\n"
         "from whispers_lab.report.folder import make_tmp_dir\n"
         "from pathlib import Path\n"
         f"with DailyLock({str(tmp_path)!r}) as lock:\n"
         f"    print(make_tmp_dir(Path({str(tmp_path)!r}), 4).name, lock.swept, flush=True)\n"
         "    time.sleep(30)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        live, swept = holder.stdout.readline().split(" ", 1)
        assert swept.strip() == str(sorted([killed.name, legacy.name, ".index.html.abc.tmp"]))
        assert not killed.exists() and not legacy.exists()
        assert (tmp_path / "day-06" / "decision.json").is_file()  # the hidden day put back
        with pytest.raises(ReportError, match="holds the lock"):
            remove_stale_temporaries(tmp_path)
        assert (tmp_path / live).is_dir()  # the live holder's staging folder stays
    finally:
        holder.kill()
        holder.wait()
    assert remove_stale_temporaries(tmp_path) == [live]  # its holder is gone: stale now
    assert sorted(p.name for p in tmp_path.iterdir()) == [".daily.lock", "day-06"]


def test_a_row_stamped_in_the_future_does_not_make_a_stale_export_current(
        tmp_path: Path, export_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The export holds days up to REPORT_DAY plus one event stamped three days later (a
    device with a wrong clock): the day after REPORT_DAY has not arrived, whatever that row
    says; validation flags the row."""
    import duckdb

    exports, out = tmp_path / "exports", tmp_path / "out"
    exports.mkdir()
    path = exports / "rollout.duckdb"
    path.write_bytes(export_path.read_bytes())
    stamp = PLAN.day_start(REPORT_DAY + 3) + dt.timedelta(hours=8)
    con = duckdb.connect(str(path))
    con.execute("INSERT INTO telemetry SELECT 'future-1', ?, user_id, device_id, 'app_open', "
                "NULL, NULL, NULL FROM telemetry LIMIT 1", [stamp])
    con.close()
    later = (PLAN.start_date + dt.timedelta(days=REPORT_DAY + 4)).isoformat()  # reports +3
    code = main(["daily", "--exports", str(exports), "--out", str(out), "--today", later])
    err = capsys.readouterr().err
    assert code == 1 and "has not arrived" in err, err
    assert "ignoring 1 row(s) stamped after that" in err
    doc = json.loads((out / f"day-{REPORT_DAY + 3:02d}" / "decision.json").read_text("utf-8"))
    assert doc["decision"] == "ERROR" and "has not arrived" in doc["error"]
    assert main(["validate", str(path)]) == 0
    assert "1 row(s) stamped after the export's end" in capsys.readouterr().out
