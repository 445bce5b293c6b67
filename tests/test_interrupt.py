"""Interrupted and concurrent runs, and output folders that cannot be written.

``whispers-lab report`` runs as a subprocess (``python -m whispers_lab.cli``) and is killed
(SIGKILL, once SIGTERM) at seeded random points of its run; the published report of the day and
the index must stay readable (the same bytes, or a complete new version), no partial file may
appear under a published name, the orphaned kernel must go away, and the next run must publish.
Two ``daily`` runs at once: the second refuses with the lock message and publishes nothing (in
particular no ERROR page over the first run's report); every file and log line of the winner is
scanned for ids of the export. Papermill runs about seven times here (four of them killed early).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import duckdb
import nbformat
import pytest

from whispers_lab.cli import main
from whispers_lab.contract import TABLES
from whispers_lab.plan import load_plan
from whispers_lab.report import privacy
from whispers_lab.report.daily import DailyLock
from whispers_lab.report.runner import DECISIONS, REPORT_FILES, day_dir_name
from whispers_lab.simulate import simulate_to

from factories import error_lines

PLAN = load_plan()
DAY = 4
TODAY = (PLAN.start_date + dt.timedelta(days=DAY + 1)).isoformat()
SEED = 20261201
ID_COLUMNS = ("user_id", "device_id", "request_id", "memory_id", "whisper_id")


@pytest.fixture(scope="module")
def export_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path, _ = simulate_to(tmp_path_factory.mktemp("sim") / "rollout.duckdb", users=1000, seed=5,
                          through_day=DAY + 1)
    return path


def _start(*args: object) -> subprocess.Popen:
    """``whispers-lab ARGS`` in its own process group (so that the group can be signalled)."""
    return subprocess.Popen([sys.executable, "-m", "whispers_lab.cli", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _report(export: Path, out: Path) -> subprocess.Popen:
    return _start("report", "--export", export, "--day", DAY, "--out", out)


def _staging(out: Path) -> list[str]:
    """Staging folders of report runs in ``out`` (``.day-NN.tmp-*``)."""
    return sorted(p.name for p in out.glob(".day-*.tmp-*"))


def _published(out: Path) -> dict[str, bytes]:
    """Every file under a published (non-hidden) name, relative path -> bytes."""
    files = {}
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            files[str(rel)] = path.read_bytes()
    return files


def _assert_complete(out: Path) -> None:
    """The published report of DAY and the index are whole and readable."""
    files = _published(out)
    folder = day_dir_name(DAY)
    assert sorted(files) == sorted([f"{folder}/{n}" for n in REPORT_FILES] + ["index.html"])
    doc = json.loads(files[f"{folder}/decision.json"])
    assert doc["day"] == DAY and doc["decision"] in DECISIONS and doc["decision"] != "ERROR"
    assert files[f"{folder}/report.html"].rstrip().endswith(b"</html>")
    nbformat.reads(files[f"{folder}/report.ipynb"].decode("utf-8"), as_version=4)
    index = files["index.html"].decode("utf-8")
    assert index.rstrip().endswith("</html>") and f"{folder}/report.html" in index


def _processes_in(folder: Path) -> list[int]:
    """Pids of processes working inside ``folder`` (the report and its kernel run in the
    temporary report folder): only processes this module started can be there."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if cwd == str(folder) or cwd.startswith(str(folder) + os.sep):
            pids.append(int(proc.name))
    return pids


def _wait_for_orphans(folder: Path, seconds: float = 20.0) -> list[int]:
    """Wait until no process works in ``folder``; kill (by pid) and return any that stay."""
    deadline = time.monotonic() + seconds
    while (left := _processes_in(folder)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def _export_ids(export: Path) -> set[str]:
    ids: set[str] = set()
    con = duckdb.connect(str(export), read_only=True)
    try:
        for table in TABLES:
            for col in table.columns:
                if col.name in ID_COLUMNS:
                    ids.update(r[0] for r in con.execute(
                        f'SELECT DISTINCT "{col.name}" FROM "{table.name}" '
                        f'WHERE "{col.name}" IS NOT NULL').fetchall())
    finally:
        con.close()
    return ids


def _assert_no_ids(texts: dict[str, str], ids: set[str]) -> None:
    for name, text in texts.items():
        words = set(re.findall(r"[A-Za-z0-9]+", privacy.strip_embedded_binary(text)))
        assert not words & ids, f"{name} holds ids of the export"


# ---------------------------------------------------------------------------------------------


def test_killed_runs_leave_the_published_report_intact(export_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "reports"
    started = time.monotonic()
    first = _report(export_path, out)
    _, err = first.communicate(timeout=300)
    duration = time.monotonic() - started
    assert first.returncode == 0, err
    _assert_complete(out)

    rng = random.Random(SEED)
    # three SIGKILLs spread over the run (start-up, notebook, conversion/publication) and one
    # SIGTERM to the whole process group (what cron or systemd send on a timeout) at seeded
    # random points; a SIGTERM gets the day an ERROR page (see test_stopped_report_...), so
    # it comes last and its own checks follow the loop
    points = [(signal.SIGKILL, duration * rng.uniform(0.05, 0.25)),
              (signal.SIGKILL, duration * rng.uniform(0.35, 0.65)),
              (signal.SIGKILL, duration * rng.uniform(0.8, 1.0))]
    staged = False
    for sig, after in points:
        before = _published(out)
        run = _report(export_path, out)
        time.sleep(after)
        if run.poll() is None:
            staged |= bool(_staging(out))
            os.killpg(run.pid, sig)
        run.communicate(timeout=300)
        now = _published(out)
        assert sorted(now) == sorted(before), (sig, after)
        day_files = [f"{day_dir_name(DAY)}/{n}" for n in REPORT_FILES]
        if any(now[f] != before[f] for f in day_files):  # it got as far as publishing:
            assert all(now[f] != before[f] for f in day_files), (sig, after)  # all new
        _assert_complete(out)
        # leftovers of a killed run only under hidden temporary names
        assert all(p.name.startswith(".") for p in out.iterdir()
                   if p.name not in (day_dir_name(DAY), "index.html"))
    assert _wait_for_orphans(out) == [], "a kernel outlived its killed report run"

    # a SIGKILL while the report is staged leaves its staging folder behind (nothing can remove
    # it then); the seeded points above may all miss the staging window on a loaded machine, so
    # one more run is killed as soon as its staging folder appears
    before = _published(out)
    run = _report(export_path, out)
    deadline = time.monotonic() + 300
    while run.poll() is None and not _staging(out) and time.monotonic() < deadline:
        time.sleep(0.05)
    if run.poll() is None:
        staged = True
        os.killpg(run.pid, signal.SIGKILL)
    run.communicate(timeout=300)
    assert staged, "no report run was seen staging its report"
    if _published(out) == before:  # killed before publication (not in the instant of renaming)
        assert _staging(out), "a SIGKILL during staging left no staging folder"
    _assert_complete(out)
    assert _wait_for_orphans(out) == [], "a kernel outlived its killed report run"

    before = _published(out)
    run = _report(export_path, out)
    time.sleep(duration * rng.uniform(0.3, 0.7))
    if run.poll() is None:
        os.killpg(run.pid, signal.SIGTERM)
    _, err = run.communicate(timeout=300)
    assert "Traceback" not in err, err
    now = _published(out)
    day_files = [f"{day_dir_name(DAY)}/{n}" for n in REPORT_FILES]
    if run.returncode == 0 or json.loads(now[day_files[2]])["decision"] != "ERROR":
        assert sorted(now) == sorted(before)  # it had finished, or got stopped in publishing
        _assert_complete(out)
    else:  # stopped: the day says so, the last report is kept beside it as superseded
        assert run.returncode == 128 + signal.SIGTERM, err
        doc = json.loads(now[day_files[2]])
        assert "stopped by SIGTERM" in doc["error"]
        assert now[f"{day_dir_name(DAY)}/previous-decision.json"] == before[day_files[2]]
    assert _wait_for_orphans(out) == [], "a kernel outlived its stopped report run"

    final = _report(export_path, out)
    text, err = final.communicate(timeout=300)
    assert final.returncode == 0 and "Traceback" not in text + err, err
    _assert_complete(out)
    assert _published(out)[f"{day_dir_name(DAY)}/decision.json"] != before[
        f"{day_dir_name(DAY)}/decision.json"]
    # the next run swept what the killed runs left: no staging folder remains
    assert _staging(out) == []


def test_two_daily_runs_at_once(export_path: Path, tmp_path: Path) -> None:
    """The second run refuses while the first holds the lock and publishes nothing; the first
    publishes a real decision. Every file and log line of the run is free of export ids."""
    exports, out = tmp_path / "exports", tmp_path / "reports"
    exports.mkdir()
    os.symlink(export_path, exports / "rollout.duckdb")
    first = _start("daily", "--exports", exports, "--out", out, "--today", TODAY)
    lock = out / ".daily.lock"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and first.poll() is None:
        if lock.is_file() and lock.read_text().split()[:1] == [str(first.pid)]:
            break
        time.sleep(0.05)
    assert first.poll() is None, "the first run ended before the second could start"
    # the first run is paused while the second runs, so whatever appears in the reports folder
    # meanwhile can only come from the refused run
    os.killpg(first.pid, signal.SIGSTOP)
    try:
        before = sorted(p.name for p in out.iterdir())
        second = subprocess.run([sys.executable, "-m", "whispers_lab.cli", "daily", "--exports",
                                 str(exports), "--out", str(out), "--today", TODAY],
                                capture_output=True, text=True, timeout=120)
        after = sorted(p.name for p in out.iterdir())
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    assert second.returncode == 1 and second.stdout == ""
    assert f"another daily run holds the lock (pid {first.pid})" in second.stderr
    assert "Traceback" not in second.stderr
    assert after == before  # the refused run published (and staged) nothing
    log_out, log_err = first.communicate(timeout=300)
    assert first.returncode == 0, log_err
    assert f"daily: day {DAY}:" in log_out
    _assert_complete(out)
    assert _wait_for_orphans(out) == []
    # privacy of everything the scheduled job wrote: report files, index, its log lines
    texts = {str(p.relative_to(out)): p.read_text(encoding="utf-8", errors="replace")
             for p in out.rglob("*") if p.is_file()}
    texts |= {"stdout": log_out, "stderr": log_err, "refused stderr": second.stderr}
    assert "index.html" in texts and f"{day_dir_name(DAY)}/report.ipynb" in texts
    _assert_no_ids(texts, _export_ids(export_path))


def _wait_for_notebook(run: subprocess.Popen, out: Path, seconds: float = 120.0) -> None:
    """Wait until ``run`` executes the report notebook (its staged report.ipynb exists)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and run.poll() is None:
        if any((Path(p) / "report.ipynb").is_file() for p in out.glob(".day-*.tmp-*")):
            return
        time.sleep(0.05)
    raise AssertionError(f"the run never reached its notebook: {run.communicate()}")


def _assert_stopped(out: Path, run: subprocess.Popen, sig: signal.Signals,
                    command: str) -> dict:
    """``run`` ended on ``sig`` cleanly: exit 128 + sig, one line, the day's ERROR page says the
    run was stopped, nothing half-written or staged, the lock free and empty, no kernel left."""
    text, err = run.communicate(timeout=120)
    assert run.returncode == 128 + sig, (run.returncode, text, err)
    assert "Traceback" not in text + err and f"stopped by {sig.name}" in err, err
    assert len(error_lines(err)) == 1, err
    doc = json.loads((out / day_dir_name(DAY) / "decision.json").read_text(encoding="utf-8"))
    assert doc["decision"] == "ERROR" and f"stopped by {sig.name}" in doc["error"]
    page = (out / day_dir_name(DAY) / "report.html").read_text(encoding="utf-8")
    assert page.rstrip().endswith("</html>") and f"stopped by {sig.name}" in page
    index = (out / "index.html").read_text(encoding="utf-8")
    assert index.rstrip().endswith("</html>") and "Run failed, no decision" in index
    assert _staging(out) == [] and not list(out.glob(".*.tmp"))
    assert (out / ".daily.lock").read_text() == ""  # released, no stale holder
    with DailyLock(out):
        pass
    assert _wait_for_orphans(out) == [], f"a kernel outlived its stopped {command} run"
    return doc


def test_stopped_report_holds_the_lock_then_publishes_an_error_page(
        export_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A manual ``report`` holds the lock ``daily`` takes (a daily run meanwhile is refused);
    SIGTERM (cron's or systemd's timeout) stops it cleanly: the day shows an ERROR page saying
    the run was stopped."""
    out, exports = tmp_path / "reports", tmp_path / "exports"
    exports.mkdir()
    os.symlink(export_path, exports / "rollout.duckdb")
    run = _report(export_path, out)
    _wait_for_notebook(run, out)
    assert (out / ".daily.lock").read_text().split() == [str(run.pid), "report"]
    code = main(["daily", "--exports", str(exports), "--out", str(out), "--today", TODAY])
    err = capsys.readouterr().err
    assert code == 1 and f"another report run holds the lock (pid {run.pid})" in err
    assert not (out / day_dir_name(DAY)).exists()  # the refused daily run wrote nothing
    os.kill(run.pid, signal.SIGTERM)
    doc = _assert_stopped(out, run, signal.SIGTERM, "report")
    assert doc["report"]["export"] == export_path.name


def test_stopped_daily_run_publishes_an_error_page(export_path: Path, tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) in the middle of the scheduled job's notebook."""
    out, exports = tmp_path / "reports", tmp_path / "exports"
    exports.mkdir()
    os.symlink(export_path, exports / "rollout.duckdb")
    run = _start("daily", "--exports", exports, "--out", out, "--today", TODAY)
    _wait_for_notebook(run, out)
    os.kill(run.pid, signal.SIGINT)
    _assert_stopped(out, run, signal.SIGINT, "daily")


class _StoppedInFinalizer:
    """Receives SIGTERM inside ``__del__``: the handler's RunStopped is raised there, and
    Python prints it ("Exception ignored in ...") and drops it, as it does when the garbage
    collector runs a finalizer at the moment a stop signal arrives."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)  # interrupted: the handler runs here


class _Unraisable:
    def __del__(self) -> None:
        1 / 0  # noqa: B018


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_stop_swallowed_by_a_finalizer_is_not_lost() -> None:
    from whispers_lab.report.stopping import RunStopped, raise_if_stopped, stop_on_signals

    seen: list[object] = []
    previous_hook = sys.unraisablehook
    sys.unraisablehook = seen.append
    try:
        with stop_on_signals():
            raise_if_stopped()  # no stop yet: nothing happens
            _StoppedInFinalizer()  # its __del__ runs at once; the RunStopped is dropped
            with pytest.raises(RunStopped) as stop:
                raise_if_stopped()
            assert stop.value.signum == signal.SIGTERM and stop.value.exit_code == 128 + 15
        raise_if_stopped()  # the block is over: forgotten
        # the dropped RunStopped was not printed ("Exception ignored in ...": the one-line
        # contract of a stopped run's stderr); other unraisable errors still reach the hook
        assert seen == []
        _Unraisable()
        assert len(seen) == 1 and seen[0].exc_type is ZeroDivisionError
    finally:
        sys.unraisablehook = previous_hook


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_report_stopped_in_a_finalizer_publishes_the_error_page_not_the_report(
        export_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The CI failure this guards against: SIGTERM arrived while a finalizer ran, its
    RunStopped was dropped, and ``report`` went on to publish NO_GO and exit 0. A stop must
    still end the run before publication: exit 128 + 15 and the day's ERROR page."""
    from whispers_lab.report import runner

    scan = runner.privacy.scan_files

    def scan_then_stop(*args: object, **kwargs: object) -> object:
        found = scan(*args, **kwargs)
        _StoppedInFinalizer()  # just before the day is published
        return found

    monkeypatch.setattr(runner.privacy, "scan_files", scan_then_stop)
    out = tmp_path / "reports"
    code = main(["report", "--export", str(export_path), "--day", str(DAY), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    doc = json.loads((out / day_dir_name(DAY) / "decision.json").read_text(encoding="utf-8"))
    assert doc["decision"] == "ERROR" and "stopped by SIGTERM" in doc["error"]
    assert _staging(out) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root: chmod 0o555 does not stop "
                    "root's writes; tests/test_hardening.py::test_unwritable_out_is_a_one_line_"
                    "error covers the refusal with a folder under a regular file")
@pytest.mark.parametrize("command", ["report", "daily"])
def test_read_only_output_folder(command: str, export_path: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "reports"
    out.mkdir()
    exports = tmp_path / "exports"
    exports.mkdir()
    os.symlink(export_path, exports / "rollout.duckdb")
    out.chmod(0o555)
    try:
        args = (["--export", export_path, "--day", DAY] if command == "report"
                else ["--exports", exports, "--today", TODAY])
        code = main([command, *map(str, args), "--out", str(out)])
        _, err = capsys.readouterr()
        assert code == 1 and "Permission denied" in err and "Traceback" not in err
        assert len(error_lines(err)) == 1
        assert list(out.iterdir()) == []
    finally:
        out.chmod(0o755)


def test_unwritable_index_is_a_one_line_error(export_path: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A target the run cannot replace (root-proof: ``index.html`` is a folder). The day's
    report is complete and published first; the index cannot be, and the run says so on one
    line and exits 1."""
    out = tmp_path / "reports"
    (out / "index.html").mkdir(parents=True)
    code = main(["report", "--export", str(export_path), "--day", str(DAY), "--out", str(out)])
    _, err = capsys.readouterr()
    assert code == 1 and "Traceback" not in err and len(error_lines(err)) == 1
    assert "index.html" in err and "Is a directory" in err
    folder = out / day_dir_name(DAY)
    assert sorted(p.name for p in folder.iterdir()) == sorted(REPORT_FILES)
    assert not [p for p in out.iterdir() if p.name.startswith(".day-")]



def test_a_kernel_launch_under_way_at_a_stop_never_starts() -> None:
    """The CI flake this guards against: SIGTERM came while papermill was preparing the kernel
    (its manager made, its process not yet started); the process started after the run had
    removed its staging folder and printed a traceback (no working folder) into the run's
    one-line stderr. A manager made before the stop starts no process after it."""
    import asyncio

    from whispers_lab.errors import ReportError
    from whispers_lab.report import runner

    kernels: list[object] = []
    stopped = threading.Event()
    manager = runner.tracked_kernel_manager(kernels, stopped)()
    assert kernels == [manager]
    stopped.set()
    with pytest.raises(ReportError, match="stopped before its kernel started"):
        asyncio.run(manager._async_launch_kernel([sys.executable, "-c", "pass"]))
    assert manager.provisioner is None or manager.provisioner.pid is None  # nothing started
    with pytest.raises(ReportError, match="stopped before its kernel started"):
        runner.tracked_kernel_manager(kernels, stopped)()
    assert kernels == [manager]


def test_a_kernel_that_appears_after_the_stop_is_killed_at_once() -> None:
    """The notebook thread of a stopped run may get its kernel's process a moment after the
    stop, and then waits for that kernel: the run keeps killing until the thread gives up,
    instead of killing once and waiting out the grace (when the late kernel lived on)."""
    from types import SimpleNamespace

    from whispers_lab.report import runner

    kernels: list[object] = []
    process: list[subprocess.Popen] = []
    done = threading.Event()

    def notebook_thread() -> None:  # the launch finishes 0.3 s after the stop
        try:
            time.sleep(0.3)
            proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            process.append(proc)
            kernels.append(SimpleNamespace(provisioner=SimpleNamespace(pid=proc.pid)))
            proc.wait()  # nbclient waiting for the kernel to answer
        finally:
            done.set()

    worker = threading.Thread(target=notebook_thread, daemon=True)
    worker.start()
    started = time.monotonic()
    runner._stop_kernels(done, kernels, grace=30.0)
    assert time.monotonic() - started < 10.0
    assert done.is_set()
    assert process[0].wait(timeout=5) == -signal.SIGKILL


def _stopped_while_starting(name: str) -> type[threading.Thread]:
    """A ``Thread`` class whose ``start()``, for the thread called ``name``, receives SIGTERM
    after the new thread is running but before ``start()`` returns: where ``start()`` waits
    for the new thread, which a loaded machine (2 cores, the evaluation and its imports
    beside it) can make last long enough for a stop to land in it."""

    class StoppedWhileStarting(threading.Thread):
        def start(self) -> None:
            super().start()
            if self.name == name:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)  # the handler runs here, inside start()

    return StoppedWhileStarting


def test_a_stop_while_the_notebook_thread_starts_leaves_no_kernel(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CI failure of stop 41: SIGTERM to a report run 1.4 s into its notebook. The stop
    came out of the notebook thread's ``start()``, before the run's clean-up could stop that
    thread, which went on to start the kernel in the staging folder the run was removing; the
    kernel's traceback ("No such file or directory") reached the run's one-line stderr. The
    stop must reach the thread: it ends without starting a kernel."""
    from whispers_lab.report import runner
    from whispers_lab.report.stopping import RunStopped, stop_on_signals

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")
    staging = tmp_path / ".day-04.tmp-x"
    staging.mkdir()
    monkeypatch.setattr(threading, "Thread", _stopped_while_starting("whispers-report-notebook"))
    with stop_on_signals(), pytest.raises(RunStopped):
        runner.execute_notebook({"day": DAY}, staging / "report.ipynb", timeout=60)
    still = [t for t in threading.enumerate() if t.name == "whispers-report-notebook"]
    for thread in still:  # (the failure: let it go on to its kernel, then clean up)
        thread.join(30)
    assert not still, "the notebook thread outlived the stopped run"
    assert _wait_for_orphans(staging, seconds=1.0) == [], "a kernel started after the stop"


def test_a_stop_while_the_evaluation_thread_starts_cancels_its_work(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The same stop landing in the start of the run's evaluation thread: the run never gets
    the :class:`Precompute` to cancel, so the constructor cancels it (its work is not done and
    its hand-over folder is removed) before the stop goes on."""
    from whispers_lab.report.precomputed import Precompute
    from whispers_lab.report.stopping import RunStopped, stop_on_signals

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")
    worked: list[object] = []
    folders: list[Path] = []
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp(*args: object, **kwargs: object) -> str:
        folders.append(Path(real_mkdtemp(*args, **kwargs)))
        return str(folders[-1])

    def open_export() -> object:
        time.sleep(0.5)  # the export opening while the stop arrives
        return object()

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    monkeypatch.setattr(threading, "Thread", _stopped_while_starting("whispers-report-evaluation"))
    with stop_on_signals(), pytest.raises(RunStopped):
        Precompute(open_export, lambda export: worked.append(export) or ("e", {}))
    time.sleep(1.0)  # (the failure: the thread would have done its work by now)
    assert worked == []
    assert len(folders) == 1 and not folders[0].exists()


def test_a_stop_while_the_run_waits_for_its_notebook_kills_a_kernel_launched_after_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The CI failure of stop 41, as it most likely happened: SIGTERM 1.4 s into the notebook,
    while the run waited for its notebook thread and that thread was launching the kernel.
    The stop's exception interrupted ``Thread.join()``, and Python 3.11 then marks the running
    thread as ended; the run took the thread for finished, killed no kernel, removed its
    staging folder, and the kernel launched a moment later printed its traceback there. The
    run must go on killing until the thread has really given up."""
    from types import SimpleNamespace

    from whispers_lab.report import runner
    from whispers_lab.report.stopping import RunStopped, stop_on_signals

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")
    process: list[subprocess.Popen] = []

    def papermill(parameters: object, output: object, timeout: object, notebook: object,
                  kernels: list[object], on_cell: object, stopped: threading.Event) -> None:
        # a launch past the stopped check when the stop comes: its process 0.5 s later
        time.sleep(0.5)
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        process.append(proc)
        kernels.append(SimpleNamespace(provisioner=SimpleNamespace(pid=proc.pid)))
        proc.wait()  # nbclient waiting for the kernel to answer

    monkeypatch.setattr(runner, "_run_papermill", papermill)
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM))
    try:
        with stop_on_signals(), pytest.raises(RunStopped):
            timer.start()
            runner.execute_notebook({}, Path("unused.ipynb"))
        assert process, "execute_notebook returned before the kernel was launched"
        assert process[0].poll() == -signal.SIGKILL, "the kernel outlived the stopped run"
    finally:
        timer.cancel()
        for proc in process:
            proc.kill()
            proc.wait()



def test_a_stop_while_the_run_waits_for_its_evaluation_never_closes_the_export_under_it(
        ) -> None:
    """The same interrupted wait in :meth:`Precompute.result`: the evaluation's thread was
    then taken for ended, and the stopped run closed the export while a query still ran on
    it. The run's clean-up (``cancel``, ``close``) must wait for the work to end."""
    from whispers_lab.report.precomputed import Precompute
    from whispers_lab.report.stopping import RunStopped, stop_on_signals

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")
    working = threading.Event()
    closed_while_working: list[bool] = []

    class Export:
        def close(self) -> None:
            closed_while_working.append(working.is_set())

    def work(export: object) -> tuple[object, dict]:
        working.set()
        time.sleep(1.0)  # a query that cannot be interrupted
        working.clear()
        return "evaluation", {}

    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
    pre = Precompute(Export, work)
    try:
        with stop_on_signals(), pytest.raises(RunStopped):
            timer.start()
            pre.result()
        pre.cancel(grace=10.0)
        pre.close()
        assert closed_while_working == [False]
    finally:
        timer.cancel()
