"""``whispers-lab report`` at 1M users, old code against new, side by side in one run (issue 18).

    .venv/bin/python benchmarks/bench_report.py                # old = 89af25d, both exports
    .venv/bin/python benchmarks/bench_report.py --old none     # the new code only

Two 1M-user exports, built once into ``benchmarks/cache/`` when missing:

* ``sim``: the simulator's own L export (``benchmarks/run.py``'s, seed 20261201, 70.8M rows);
* ``steady``: ``benchmarks/steady_export.py`` (a steady user base, 102M rows), made without the
  simulator, so the figures are not those of the data the queries were tuned on;
* ``daily`` (``--exports sim,steady,daily``): the ``sim`` export day-partitioned
  (``<table>/date=YYYY-MM-DD/``, 2,960 Parquet files, as ``bench_validate_incremental.py``
  writes it), run as a scheduled day runs on it: each version gets its own copy (hard links)
  without the last day's partitions and reports the day before (untimed, its cache then holds
  every earlier partition); then the last day's partitions arrive and ``ranking_candidates``
  (one file, no date) is rewritten, and its **cold** run is that day's report: the new
  partitions validated, their repeated events searched and their id profiles read;
* ``sim-new`` and ``steady-new`` (``--exports sim-new,steady-new``): a DuckDB file written
  anew each day under a new name. Each version first reports the day before on a copy of the
  export without its last day (``<name>-day-before.duckdb`` in ``benchmarks/cache/``, written
  once; untimed), then its **cold** run reports the last day on the whole file, which it has
  never seen: what a scheduled day costs when the export is one DuckDB file.

For each export and each code version the report of ``--day`` (default 14, the plan's last day,
which also writes the stakeholder summary) runs as its own process, in two states:

* **cold**: an empty cache folder (``WHISPERS_LAB_CACHE``): the export is validated in full,
  its repeated events searched and its id profile read; what a new DuckDB-file export costs;
* **warm**: the same cache folder again: the export was seen before (e.g. ``validate`` ran, or
  an earlier report of the same file); for a day-partitioned export, everything but the new
  day's partitions is in this state (see ``bench_validate_incremental.py``). Run
  ``--warm-runs`` times (default 3): the table gives the fastest run and the median, since a
  machine whose page cache drops part of a 2.4 GB export between runs (memory reclaim) reads
  it from disk again in some runs; the JSON keeps every run.

Old and new alternate run by run (the two cold runs, then rounds of one warm run each, the
order swapped every round): this machine's speed drifts by a third or more within minutes, and
a version measured minutes after the other would carry the drift into the ratio. Besides the
ratio of the fastest runs, the table gives the ratio within each warm round, and before every
run a fixed CPU workload (``machine_seconds``) and the writing of 1 GB of fresh memory
(``memory_seconds``: 262K page faults, the cost a report pays some 700K times) are timed, to
tell a machine short of CPU time, or slow to hand out memory, from a slower version.

Time is wall time of the whole command; memory is the peak of the **sum** of the resident sets
of the command and every process it started (the report's kernel runs beside it), sampled every
20 ms with psutil. CPU is the user and system seconds of the command and of every process it
waited for (its kernel among them), with its minor page faults (``getrusage``): on two cores
that are busy about 90% of a report, the wall time follows the CPU spent, and a run's CPU moves
less than its wall time in the machine's slow stretches, so the CPU ratio run by run is
printed beside the time's. Each run writes its stages on one clock (``WHISPERS_LAB_TIMELINE``,
:mod:`whispers_lab.timeline`: the evaluation's hand-over, the kernel's first cell, the notebook's
end, the summary's evaluation, ...); the fastest warm run's and the cold run's are printed,
to say which stage the run waited for, each with the machine's mean busy cores over it
(:func:`busy_by_stage`, from its CPU counters sampled with the memory): below the 2 cores,
the stage waited on one thread. The old version runs from a temporary ``git worktree``
with the same virtualenv (``PYTHONPATH``; its kernel inherits it).

Then, per version, one in-process pass over the report's queries (open and validate, evaluate
the day, redact the decision, the summary's evaluation, the privacy scan) with DuckDB's
profiler on every query, to print where the time goes and how many times each table is scanned.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = HERE / "cache"
SIM = CACHE / "bench-L-1000000u-seed20261201.duckdb"
STEADY = CACHE / "steady-1m.duckdb"
OLD = "89af25d"  # main at the start of this work (the first build's report path + issue 18 so far)
GOALS = {"seconds": 15.0, "peak_mb": 2048.0}


def _ensure_exports(which: list[str]) -> dict[str, Path]:
    CACHE.mkdir(exist_ok=True)
    out = {}
    if ("sim" in which or "daily" in which) and not SIM.exists():
        print(f"simulating {SIM.name} (about 1.5 min) ...", flush=True)
        subprocess.run([sys.executable, "-m", "whispers_lab.cli", "simulate", "--users",
                        "1000000", "--seed", "20261201", "--through-day", "14", "--out",
                        str(SIM)], check=True, cwd=ROOT)
    if "sim" in which:
        out["sim"] = SIM
    if "steady" in which:
        if not STEADY.exists():
            print(f"writing {STEADY.name} (about 2 min) ...", flush=True)
            subprocess.run([sys.executable, str(HERE / "steady_export.py"), "--users", "1000000",
                            "--seed", "1", "--out", str(STEADY), "--quiet"], check=True, cwd=ROOT)
        out["steady"] = STEADY
    if "daily" in which:
        from bench_validate_incremental import _partitioned

        out["daily"] = _partitioned(SIM)
    for base in ("sim", "steady"):
        if f"{base}-new" in which:
            out[f"{base}-new"] = _ensure_exports([base])[base]
    return out


def duckdb_day_before(source: Path) -> Path:
    """``<source>-day-before.duckdb`` beside ``source`` (written once): the DuckDB export
    ``source`` as it stood a day earlier, every row of its last day (of ``api_logs``) left
    out, and the candidates of the requests left out with them; the rows kept in their order.
    (A file written before stop 37's last commits lost the candidates' order: delete it.)"""
    target = source.with_name(f"{source.stem}-day-before.duckdb")
    if not target.exists():
        print(f"writing {target.name} (about 40 s) ...", flush=True)
        # in a process of its own: a benchmark process that grew by the write's gigabytes
        # would hand its peak to every run it starts (Linux keeps ru_maxrss across fork)
        subprocess.run([sys.executable, __file__, "--day-before", str(source), str(target)],
                       check=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    return target


def _write_day_before(source: Path, target: Path) -> None:
    """The work of :func:`duckdb_day_before`."""
    import duckdb

    from whispers_lab.contract import CONTRACT

    tmp = target.with_name(f".{target.name}.tmp")
    tmp.unlink(missing_ok=True)
    con = duckdb.connect(str(tmp))
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(f"ATTACH '{source}' AS s (READ_ONLY)")
        last = con.execute("SELECT max(CAST(timestamp AS TIMESTAMP))::DATE FROM s.api_logs"
                           ).fetchone()[0]
        before = f"TIMESTAMP '{last}'"
        for (name,) in con.execute("SELECT table_name FROM information_schema.tables WHERE "
                                   "table_catalog = 's'").fetchall():
            time_col = CONTRACT[name].time_column if name in CONTRACT else None
            where = (f"WHERE coalesce(CAST({time_col} AS TIMESTAMP) < {before}, true)"
                     if time_col else
                     f"WHERE request_id IN (SELECT request_id FROM s.api_logs WHERE "
                     f"CAST(timestamp AS TIMESTAMP) < {before})"
                     if name == "ranking_candidates" else "")
            # (in the rows' order: the semi join of the candidates' filter does not keep it,
            # and a file written a day earlier holds its rows in the order they came)
            con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM s."{name}" {where} '
                        f'ORDER BY rowid')
    finally:
        con.close()
    tmp.rename(target)


def _last_date(folder: Path) -> str:
    """The last day (``YYYY-MM-DD``) of the partitioned export ``folder``'s telemetry."""
    return max(p.name.split("=", 1)[1] for p in folder.glob("telemetry/date=*"))


def _partition_dirs(folder: Path, date: str) -> list[Path]:
    return sorted(folder.glob(f"*/date={date}"))


def _day_before(source: Path, date: str) -> Path:
    """A copy of the partitioned export ``source`` (hard links: no data is copied) without the
    partitions of ``date``; :func:`_new_day` adds them."""
    target = Path(tempfile.mkdtemp(prefix="bench-report-daily-"))
    shutil.copytree(source, target, dirs_exist_ok=True, copy_function=os.link,
                    ignore=lambda _dir, names: [n for n in names if n == f"date={date}"])
    return target


def _new_day(source: Path, target: Path, date: str) -> None:
    """The day ``date`` arrives in ``target``: its partitions (hard links), and a rewritten copy
    of every table stored as one file (a new file: its checksum changes, so it is validated
    again, as a new day's export would have it)."""
    for part in _partition_dirs(source, date):
        shutil.copytree(part, target / part.relative_to(source), copy_function=os.link)
    for single in source.glob("*.parquet"):
        (target / single.name).unlink()
        shutil.copy2(single, target / single.name)


def _tree_sample(proc, read: dict[int, int]) -> int:
    """The summed resident set of ``proc`` and its descendants; records in ``read`` each
    process's bytes read from storage so far (``/proc/<pid>/io``: page-cache hits excluded)."""
    import psutil

    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
            read[p.pid] = p.io_counters().read_bytes
        except (psutil.Error, AttributeError):
            pass
    return total


def run_command(args: list[str], env: dict[str, str], cwd: Path) -> dict:
    """Wall seconds, peak summed RSS (MB) of ``args`` and its descendants, and the MB they
    read from storage (``disk_mb``: what the page cache did not hold; as last sampled, so a
    process's final 20 ms may be missed). ``cpu_s`` (``user_s`` + ``sys_s``) and ``minflt``:
    the CPU seconds and minor page faults of the command and of every descendant it waited
    for (the report's kernel is), from ``getrusage(RUSAGE_CHILDREN)`` around the run."""
    import resource

    import psutil

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    child = subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    watched = psutil.Process(child.pid)
    peak = [0]
    read: dict[int, int] = {}
    done = threading.Event()
    cpu = [(0.0, *_machine_cpu())]  # (seconds since the start, busy and all CPU seconds)

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _tree_sample(watched, read))
            cpu.append((time.perf_counter() - started, *_machine_cpu()))
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = child.communicate()
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    cpu.append((seconds, *_machine_cpu()))
    return {"seconds": seconds, "peak_mb": peak[0] / 2**20, "rc": child.returncode,
            "disk_mb": sum(read.values()) / 2**20, "user_s": user, "sys_s": system,
            "cpu_s": user + system, "minflt": after.ru_minflt - before.ru_minflt,
            "busy": _busy_series(cpu), "output": output}


def _cores() -> int:
    import psutil

    return psutil.cpu_count() or 1


def _machine_cpu() -> tuple[float, float]:
    """The machine's CPU seconds so far: busy (every state but idle and I/O wait) and all."""
    import psutil

    times = psutil.cpu_times()
    spent = sum(times)
    return spent - times.idle - getattr(times, "iowait", 0.0), spent


#: Width in seconds of a step of :func:`_busy_series`.
BUSY_STEP_S = 0.1


def _busy_series(samples: list[tuple[float, float, float]]) -> list[tuple[float, float]]:
    """``(end, busy cores)`` per step of :data:`BUSY_STEP_S` seconds from the machine's CPU
    counters sampled during a run (``(seconds, busy CPU s, all CPU s)``): how many of the
    machine's cores were busy on average (other processes too: the benchmark runs on a machine
    otherwise idle, which ``machine_seconds`` checks)."""
    cores = _cores()
    out: list[tuple[float, float]] = []
    last = samples[0]
    for sample in samples[1:]:
        if sample[0] - last[0] < BUSY_STEP_S and sample is not samples[-1]:
            continue
        spent = sample[2] - last[2]
        if spent > 0:
            out.append((round(sample[0], 3), round(cores * (sample[1] - last[1]) / spent, 3)))
        last = sample
    return out


def busy_by_stage(busy: Sequence[Sequence[float]], stages: Sequence[tuple[float, str]],
                  end: float) -> list[tuple[str, float, float]]:
    """The mean busy cores between consecutive stages of a run's timeline (and from its start
    to the first, from the last to ``end``): ``(span, seconds, busy cores)``, each step of
    ``busy`` (:func:`_busy_series`) weighted by how much of it falls in the span. Where the
    cores were not busy is where the run waited on one thread: the only time that more
    overlap, rather than less CPU, could take off."""
    marks = [(0.0, "start"), *[(t, what) for t, what in stages if 0 < t < end], (end, "end")]
    out = []
    for (lo, a), (hi, b) in itertools.pairwise(marks):
        if hi <= lo:
            continue
        weight = cores = 0.0
        start = 0.0
        for stop, value in busy:
            overlap = min(stop, hi) - max(start, lo)
            if overlap > 0:
                weight += overlap
                cores += overlap * value
            start = stop
        if weight > 0:
            out.append((f"{a} -> {b}", hi - lo, cores / weight))
    return out


def _read_through(path: str | Path) -> int:
    """Read every byte of the file ``path`` (or of every file under the folder ``path``) once;
    the bytes read."""
    path = Path(path)
    total = 0
    for file in [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file()):
        with open(file, "rb", buffering=0) as fh:
            while chunk := fh.read(16 << 20):
                total += len(chunk)
    return total


def _timeline(output: str) -> list[tuple[float, str]]:
    """The ``timeline:`` lines of a run's output (:mod:`whispers_lab.timeline`) as
    ``(seconds, stage)``, without the day prefix; none from a version that writes none."""
    found = []
    for line in output.splitlines():
        m = re.fullmatch(r"timeline: (\d+\.\d+) s (?:day \d+: )?(.+)", line.strip())
        if m:
            found.append((float(m.group(1)), m.group(2)))
    return found


def machine_seconds() -> float:
    """Seconds of a fixed CPU workload on DuckDB (2 threads, hashing 40M integers), timed just
    before each run: the CPU time the machine gives at that moment (other tenants of the host
    take some), to tell such a stretch from a slower version."""
    import duckdb

    con = duckdb.connect(config={"threads": 2})
    started = time.perf_counter()
    con.execute("SELECT sum(hash(i) % 7) FROM range(40000000) t(i)").fetchone()
    seconds = time.perf_counter() - started
    con.close()
    return seconds


def memory_seconds(mb: int = 1024) -> float:
    """Seconds to take ``mb`` MB of fresh memory from the system, write one byte per 4 KB page
    (a page fault each, as DuckDB's block allocator does) and give it back, timed just before
    each run: what a page fault costs at that moment (on a VM, the host may have to supply the
    page), to tell such a stretch from a slower version."""
    import mmap

    import numpy as np

    started = time.perf_counter()
    area = mmap.mmap(-1, mb << 20)
    pages = np.frombuffer(area, dtype=np.uint8)
    pages[::4096] = 1
    del pages
    area.close()
    return time.perf_counter() - started


def _report_args(export: Path, day: int, out: Path) -> list[str]:
    # the console script's entry point (the old version's, when it has none: main)
    return [sys.executable, "-c", "import sys; import whispers_lab.cli as c; "
            "sys.exit(getattr(c, 'entry', c.main)())",
            "report", "--export", str(export), "--day", str(day), "--out", str(out)]


# ---------------------------------------------------------------------------------------
# the in-process pass with DuckDB's profiler (runs as a child, under either version)


def _child_scans(export_path: str, day: int, out_json: str) -> None:
    import duckdb
    import psutil

    import whispers_lab.export as ex
    from whispers_lab.evaluate import evaluate_day
    from whispers_lab.plan import load_plan
    from whispers_lab.report import privacy
    from whispers_lab.report.summary import full_rollout_plan

    # Imported before the clock starts, under either version: since stop 29 the package imports
    # them where a statistic first needs them (whispers_lab.lazy), which would put about 1.5 s
    # of imports into "evaluate the day"; the report run imports them in its evaluation thread
    # either way, so this keeps the phases comparable.
    for module in ("scipy.optimize", "scipy.signal", "scipy.special", "scipy.stats",
                   "statsmodels.duration.survfunc", "statsmodels.genmod.generalized_linear_model",
                   "statsmodels.stats.proportion", "statsmodels.stats.rates"):
        importlib.import_module(module)

    scans: collections.Counter[str] = collections.Counter()
    phase_of_query: list[tuple[str, float, str]] = []  # (phase, seconds, statement's start)
    current = ["open"]

    def count(node: dict) -> None:
        if node.get("name") in ("TABLE_SCAN", "SEQ_SCAN", "READ_PARQUET", "PARQUET_SCAN"):
            table = (node.get("extra_info") or {}).get("Table") or "?"
            scans[str(table).split(".")[-1]] += 1
        for kid in node.get("children", []):
            count(kid)

    class Profiled:
        """A DuckDB connection that reads its profiler after every statement."""

        engine = "duckdb"

        def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
            self._con = con
            con.execute("PRAGMA enable_profiling = 'no_output'")

        def __getattr__(self, name: str):
            return getattr(self._con, name)

        def execute(self, query, *params):
            t = time.perf_counter()
            self._con.execute(query, *params)
            phase_of_query.append((current[0], time.perf_counter() - t,
                                   " ".join(str(query).split())[:90]))
            try:
                info = json.loads(self._con.get_profiling_information(format="json"))
                for op in info.get("operator", []):
                    count(op)
            except (duckdb.Error, ValueError):
                pass
            return self._con

    real_connect = ex.connect
    ex.connect = lambda *a, **k: Profiled(real_connect(*a, **k))
    plan = load_plan(None)
    me = psutil.Process()
    times = {}
    disk_mb = {}  # what each phase read from storage (not the page cache)
    t0, r0 = time.perf_counter(), me.io_counters().read_bytes
    export = ex.open_export(export_path)
    if hasattr(export, "memoize"):
        export.memoize()
    times["open + validate"] = time.perf_counter() - t0
    disk_mb["open + validate"] = (me.io_counters().read_bytes - r0) / 2**20
    for name, work in (
        ("evaluate the day", lambda: evaluate_day(export, day, plan)),
        ("redact the decision", None),
        ("summary's evaluation", lambda: evaluate_day(export, day, full_rollout_plan(plan))),
        ("privacy scan of a report", None),
    ):
        current[0] = name
        t, r0 = time.perf_counter(), me.io_counters().read_bytes
        if name == "evaluate the day":
            evaluation = work()
        elif name == "redact the decision":
            privacy.redact(export, evaluation.decision.to_dict())
        elif name == "privacy scan of a report":
            privacy.find_ids(export, {"report.html": json.dumps(evaluation.decision.to_dict(),
                                                                default=str)})
        else:
            work()
        times[name] = time.perf_counter() - t
        disk_mb[name] = (me.io_counters().read_bytes - r0) / 2**20
    Path(out_json).write_text(json.dumps({"times": times, "disk_mb": disk_mb, "scans": dict(scans),
                                          "queries": len(phase_of_query),
                                          "slowest": sorted(phase_of_query, key=lambda q: -q[1])[:6]}))


def scans_pass(pythonpath: str | None, export: Path, day: int, cache: Path) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        target = fh.name
    env = dict(os.environ, WHISPERS_LAB_CACHE=str(cache))
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    res = run_command([sys.executable, str(Path(__file__).resolve()), "--child-scans",
                       str(export), str(day), target], env, ROOT)
    try:
        doc = json.loads(Path(target).read_text())
    except (OSError, ValueError):
        doc = {"error": res["output"][-2000:]}
    finally:
        Path(target).unlink(missing_ok=True)
    return doc


# ---------------------------------------------------------------------------------------


def _old_tree(commit: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="bench-report-old-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(folder),
                    commit], check=True)
    return folder


def _remove_old_tree(folder: Path) -> None:
    """Remove the worktree :func:`_old_tree` made."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(folder)],
                   check=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", default=OLD, help=f"commit to compare with (default {OLD}; "
                                                 "'none': new code only)")
    ap.add_argument("--exports", default="sim,steady",
                    help="comma list of sim, steady, daily, sim-new, steady-new (default "
                         "sim,steady)")
    ap.add_argument("--day", type=int, default=14)
    ap.add_argument("--no-scans", action="store_true", help="skip the profiled pass")
    ap.add_argument("--warm-runs", type=int, default=3,
                    help="warm runs per version; the table gives the fastest and the median "
                         "(default 3)")
    ap.add_argument("--child-scans", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--day-before", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.day_before:
        _write_day_before(*args.day_before)
        return 0
    if args.child_scans:
        _child_scans(args.child_scans[0], int(args.child_scans[1]), args.child_scans[2])
        return 0

    exports = _ensure_exports([s.strip() for s in args.exports.split(",") if s.strip()])
    versions: dict[str, str | None] = {"new": str(ROOT)}
    old_tree = None
    if args.old.lower() != "none":
        old_tree = _old_tree(args.old)
        versions = {f"old {args.old}": str(old_tree), "new": str(ROOT)}
    results: dict = {}
    try:
        for name, source in exports.items():
            caches = {v: Path(tempfile.mkdtemp(prefix="bench-report-cache-")) for v in versions}
            paths = {v: source for v in versions}
            if name == "daily":
                # Each step for every version before the next: a hard link made or removed
                # changes the change time of its file (one inode, every link), and with it the
                # checksum the validation manifest keeps, so a version's copy made after
                # another's report would make that report's cache stale. The copies are removed
                # only after every run of this export.
                last = _last_date(source)
                for version in versions:
                    paths[version] = _day_before(source, last)
                for version, tree in versions.items():
                    env = dict(os.environ, WHISPERS_LAB_CACHE=str(caches[version]),
                               PYTHONPATH=str(tree))
                    out = Path(tempfile.mkdtemp(prefix="bench-report-out-"))
                    print(f"[{name}] {version}: the day before ({last} not yet in the export), "
                          f"untimed ...", flush=True)
                    res = run_command(_report_args(paths[version], args.day - 1, out), env,
                                      Path(tree))
                    shutil.rmtree(out, ignore_errors=True)
                    if res["rc"] != 0:
                        print(res["output"][-3000:])
                    print(f"    {res['seconds']:.1f} s, rc {res['rc']}", flush=True)
                for version in versions:
                    _new_day(source, paths[version], last)
            if name.endswith("-new"):
                before = duckdb_day_before(source)
                for version, tree in versions.items():
                    env = dict(os.environ, WHISPERS_LAB_CACHE=str(caches[version]),
                               PYTHONPATH=str(tree))
                    out = Path(tempfile.mkdtemp(prefix="bench-report-out-"))
                    print(f"[{name}] {version}: the day before, its own file, untimed ...",
                          flush=True)
                    res = run_command(_report_args(before, args.day - 1, out), env, Path(tree))
                    shutil.rmtree(out, ignore_errors=True)
                    if res["rc"] != 0:
                        print(res["output"][-3000:])
                    print(f"    {res['seconds']:.1f} s, rc {res['rc']}", flush=True)
            # The export read once beforehand, so that the first cold run does not read it from
            # storage while the second finds it in the page cache (at stop 41 and 42 the old
            # version, first, read 1.8-2.4 GB of a new DuckDB file from disk, the new 45 MB):
            # "cold" is the cache folder's state, not the page cache's.
            started = time.monotonic()
            read = sum(_read_through(p) for p in {str(p) for p in paths.values()})
            print(f"[{name}] the export read into the page cache: {read / 2**20:.0f} MB in "
                  f"{time.monotonic() - started:.1f} s", flush=True)
            # Old and new alternate, run by run: this machine's speed drifts by a third or more
            # within minutes, and a version measured minutes after the other would carry that
            # drift into the ratio. Each round of warm runs swaps the order.
            runs = [("cold", 1, v) for v in versions] + [
                ("warm", i + 1, v) for i in range(args.warm_runs)
                for v in (list(versions) if i % 2 == 0 else list(reversed(versions)))]
            for state, i, version in runs:
                tree = versions[version]
                env = dict(os.environ, WHISPERS_LAB_CACHE=str(caches[version]),
                           PYTHONPATH=str(tree), WHISPERS_LAB_TIMELINE="1")
                out = Path(tempfile.mkdtemp(prefix="bench-report-out-"))
                print(f"[{name}] {version} {state}"
                      f"{f' {i}/{args.warm_runs}' if state == 'warm' else ''} ...", flush=True)
                speed, memory = machine_seconds(), memory_seconds()
                res = run_command(_report_args(paths[version], args.day, out), env, Path(tree))
                res["machine_s"], res["memory_s"] = speed, memory
                res["timeline"] = _timeline(res["output"])
                shutil.rmtree(out, ignore_errors=True)
                if res["rc"] != 0:
                    print(res["output"][-3000:])
                results.setdefault((name, version, state + " runs"), []).append(
                    {k: v for k, v in res.items() if k != "output"})
                # warm: the fastest run (the machine's page cache drops part of the
                # export between runs; every run is kept in "warm runs")
                best = results.get((name, version, state))
                if best is None or res["seconds"] < best["seconds"]:
                    results[(name, version, state)] = res
                print(f"    {res['seconds']:.1f} s, CPU {res['user_s']:.1f} s user + "
                      f"{res['sys_s']:.1f} s system ({res['minflt'] / 1000:.0f}K page faults), "
                      f"peak {res['peak_mb']:.0f} MB, read from "
                      f"disk {res['disk_mb']:.0f} MB, rc {res['rc']}; the machine's fixed CPU "
                      f"workload just before: {speed:.2f} s, 1 GB of fresh memory "
                      f"{memory:.2f} s", flush=True)
                for line in res["output"].splitlines():
                    if " in " in line and ("notebook" in line or "HTML" in line
                                           or "privacy" in line or "coverage" in line):
                        print("      " + line.strip())
            for version, tree in versions.items():
                if not args.no_scans:
                    print(f"[{name}] {version}: profiled pass (warm cache) ...", flush=True)
                    results[(name, version, "scans")] = scans_pass(tree, paths[version],
                                                                   args.day, caches[version])
                shutil.rmtree(caches[version], ignore_errors=True)
            for version in versions:
                if paths[version] != source:
                    shutil.rmtree(paths[version], ignore_errors=True)
    finally:
        if old_tree is not None:
            _remove_old_tree(old_tree)

    print()
    print(f"whispers-lab report --day {args.day} at 1M users (goal: under "
          f"{GOALS['seconds']:.0f} s and {GOALS['peak_mb']:.0f} MB); load average now "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'export':<8} {'version':<14} {'cold s':>8} {'cold MB':>8} {'warm s':>8} "
          f"{'warm MB':>8} {'disk MB':>8} {'warm median':>12}  (warm: fastest of "
          f"{args.warm_runs}; disk MB: what that run read from storage, not the page cache"
          + ("; daily, *-new cold: the new day's report" if "daily" in exports or any(
              n.endswith("-new") for n in exports) else "") + ")")
    for name in exports:
        for version in versions:
            c, w = results[(name, version, "cold")], results[(name, version, "warm")]
            med = statistics.median(r["seconds"] for r in results[(name, version, "warm runs")])
            print(f"{name:<8} {version:<14} {c['seconds']:>8.1f} {c['peak_mb']:>8.0f} "
                  f"{w['seconds']:>8.1f} {w['peak_mb']:>8.0f} {w.get('disk_mb', 0):>8.0f} "
                  f"{med:>12.1f}")
        if len(versions) == 2:
            (o, n) = versions
            for state in ("cold", "warm"):
                a, b = results[(name, o, state)], results[(name, n, state)]
                print(f"{name:<8} new/old {state}: time {b['seconds'] / a['seconds']:.2f}x, "
                      f"memory {b['peak_mb'] / a['peak_mb']:.2f}x")
            # each warm round ran old and new back to back: the ratio within a round is what
            # the machine's drift between rounds does not move. On 2 busy cores the wall time
            # follows the CPU spent, and a run's CPU moves less with the machine's slow
            # stretches than its wall time does.
            for key, what in (("seconds", "warm"),
                              ("cpu_s", "warm CPU (user + system of the command and its "
                                        "kernel)")):
                paired = [b[key] / a[key] for a, b in
                          zip(results[(name, o, "warm runs")],
                              results[(name, n, "warm runs")], strict=True)]
                print(f"{name:<8} new/old {what}, run by run: "
                      f"{' / '.join(f'{r:.2f}x' for r in paired)} (median "
                      f"{statistics.median(paired):.2f}x)")
        for version in versions:
            warm = results[(name, version, "warm runs")]
            print(f"{name:<8} {version}: warm CPU {min(r['cpu_s'] for r in warm):.1f}-"
                  f"{max(r['cpu_s'] for r in warm):.1f} s (median "
                  f"{statistics.median(r['cpu_s'] for r in warm):.1f} s), page faults "
                  f"{min(r['minflt'] for r in warm) / 1000:.0f}-"
                  f"{max(r['minflt'] for r in warm) / 1000:.0f}K")
        speeds = [r["machine_s"] for v in versions for st in ("cold runs", "warm runs")
                  for r in results[(name, v, st)]]
        print(f"{name:<8} the machine's fixed CPU workload before each run: {min(speeds):.2f}-"
              f"{max(speeds):.2f} s")
        faults = [r["memory_s"] for v in versions for st in ("cold runs", "warm runs")
                  for r in results[(name, v, st)]]
        print(f"{name:<8} 1 GB of fresh memory (262K page faults) before each run: "
              f"{min(faults):.2f}-{max(faults):.2f} s")
    print("\nthe command's stages, fastest warm run and cold run (seconds since its command "
          "line started; WHISPERS_LAB_TIMELINE):")
    for name in exports:
        for state in ("warm", "cold"):
            for version in versions:
                stages = results[(name, version, state)].get("timeline") or []
                print(f"{name} {version} {state}: "
                      + ("; ".join(f"{what} {t:.2f}" for t, what in stages)
                         or "no timeline (this version writes none)"))
    print("\nthe machine's busy cores in each stage of those runs (of "
          f"{_cores()}; the rest is where a stage waited on one thread):")
    for name in exports:
        for state in ("warm", "cold"):
            for version in versions:
                res = results[(name, version, state)]
                busy = res.get("busy") or []
                if not busy:
                    continue
                spans = busy_by_stage(busy, res.get("timeline") or [], res["seconds"])
                whole = sum(s * c for _, s, c in spans) / max(res["seconds"], 1e-9)
                print(f"{name} {version} {state}: {whole:.2f} over the run; "
                      + "; ".join(f"{span} {seconds:.2f} s at {cores:.2f}"
                                  for span, seconds, cores in spans))
    if not args.no_scans:
        print("\nwhere the time goes (in process, warm cache) and scans per table:")
        for name in exports:
            for version in versions:
                doc = results.get((name, version, "scans"), {})
                if "error" in doc:
                    print(f"{name} {version}: profiled pass failed: {doc['error'][-300:]}")
                    continue
                disk = doc.get("disk_mb", {})
                times = ", ".join(f"{k} {v:.1f} s" + (f" (disk {disk[k]:.0f} MB)" if k in disk else "")
                                  for k, v in doc.get("times", {}).items())
                big = {t: n for t, n in sorted(doc.get("scans", {}).items())
                       if t in ("telemetry", "api_logs", "ranking_candidates", "exposures",
                                "users")}
                print(f"{name} {version}: {times}; {doc.get('queries')} statements; "
                      f"scans {big}")
                for phase, seconds, text in doc.get("slowest", []):
                    print(f"    {seconds:5.2f} s  ({phase}) {text}")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = HERE / "results" / f"bench_report_{stamp}.json"
    target.write_text(json.dumps({f"{a}|{b}|{c}": (r if isinstance(r, list) else
                                                   {k: v for k, v in r.items() if k != "output"})
                                  for (a, b, c), r in results.items()}, indent=1, default=str))
    print(f"results: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
