"""``whispers-lab validate`` before and after issue 18, side by side in one run.

    .venv/bin/python benchmarks/bench_validate_incremental.py [--users 1000000] [--old-commit dffcd9b]
        [--previous COMMIT] [--export PATH]

Checks out the old commit into a temporary folder (``git worktree``), then times, on the same
machine in the same run, each in its own process (peak RSS is the process's own):

* the DuckDB export of ``--users`` users (``benchmarks/cache/L-1m.duckdb`` for 1M, simulated
  once with ``whispers-lab simulate`` and reused): old validation; new validation with an empty
  cache (cold: every rule of a table in one scan, plus the one-off search for repeated
  events); new validation again (warm: nothing changed since, the manifest answers);
* with ``--previous``, a second old commit's cold validation of the same file (an
  intermediate version, as a further column of comparison);
* the same data as a day-partitioned Parquet export: new validation cold; warm; and after one
  day's telemetry and api_logs partitions were rewritten (incremental: only those re-checked).

``--export`` times an existing DuckDB export instead of simulating one. Prints one table
(ratios are old / new), then where a cold validation of the DuckDB file spends its time (each
statement of the new code, in process, put down to the table whose rules it checks or to the
repeated-event search), and writes both to ``benchmarks/results/bench_validate_<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = HERE / "cache"

_TIMED = """
import resource, sys, time
t = time.perf_counter()
from whispers_lab.cli import main
code = main(["validate", *sys.argv[1:]])
s = time.perf_counter() - t
print(f"RESULT {s:.3f} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} {code}")
"""


# A cold validation, each DuckDB statement timed and put down to what it reads: the table
# whose rules it checks, or the repeated-event search (it fills ``telemetry_duplicates``).
_BREAKDOWN = """
import collections, json, re, sys, time
import whispers_lab.export as ex

spent = collections.Counter()

class Timed:
    def __init__(self, con):
        self._con = con

    def __getattr__(self, name):
        return getattr(self._con, name)

    def execute(self, query, *params):
        t = time.perf_counter()
        out = self._con.execute(query, *params)
        text = str(query)
        table = re.search(r'src\\."?(\\w+)', text)
        what = ("the repeated-event search" if "telemetry_duplicates" in text
                else f"the {table.group(1)} table's rules" if table else "other statements")
        spent[what] += time.perf_counter() - t
        return out

real = ex.connect
ex.connect = lambda *a, **k: Timed(real(*a, **k))
t = time.perf_counter()
ex.open_export(sys.argv[1]).close()
spent["in all"] = time.perf_counter() - t
print("BREAKDOWN " + json.dumps(spent))
"""


def _breakdown(duck: Path) -> dict[str, float]:
    """Where a cold validation of ``duck`` spends its time (new code, empty cache)."""
    cache = Path(tempfile.mkdtemp(prefix="whispers-bench-cache-"))
    try:
        env = dict(os.environ, PYTHONPATH=str(ROOT), WHISPERS_LAB_CACHE=str(cache))
        proc = subprocess.run([sys.executable, "-c", _BREAKDOWN, str(duck)], capture_output=True,
                              text=True, env=env, cwd=ROOT, check=False)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("BREAKDOWN ")]
    if not line:
        return {"failed": proc.stderr[-500:]}
    return json.loads(line[-1].split(" ", 1)[1])


def _run(src: Path, args: list[str], cache: Path | None) -> tuple[float, float]:
    env = dict(os.environ, PYTHONPATH=str(src))
    env["WHISPERS_LAB_CACHE"] = str(cache) if cache is not None else ""
    proc = subprocess.run([sys.executable, "-c", _TIMED, *args], capture_output=True, text=True,
                          env=env, cwd=src, check=False)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if not line or not line[-1].endswith(" 0"):
        raise SystemExit(f"validation failed ({src}): {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
    _, seconds, mb, _ = line[-1].split()
    return float(seconds), float(mb)


def _export(users: int) -> Path:
    path = CACHE / ("L-1m.duckdb" if users == 1_000_000 else f"sim-{users}.duckdb")
    if not path.exists():
        CACHE.mkdir(exist_ok=True)
        subprocess.run([sys.executable, "-m", "whispers_lab.cli", "simulate", "--users", str(users),
                        "--seed", "20261201", "--through-day", "14", "--out", str(path)],
                       check=True, cwd=ROOT)
    return path


def _partitioned(duck: Path) -> Path:
    """The DuckDB export as ``<table>/date=YYYY-MM-DD/*.parquet`` (the layout
    ``whispers_lab.export.write_partitioned_export`` writes), made once and reused."""
    folder = duck.with_name(duck.stem + "-partitioned")
    if not folder.exists():
        from whispers_lab.contract import CONTRACT
        from whispers_lab.export import attach, sql_string

        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
        con, _, found = attach(duck)
        for name in found:
            col = CONTRACT[name].time_column
            if col:
                con.execute(f'COPY (SELECT *, CAST("{col}" AS DATE) AS date FROM src."{name}") '
                            f"TO {sql_string(str(tmp / name))} (FORMAT parquet, PARTITION_BY (date))")
            else:
                con.execute(f'COPY src."{name}" TO {sql_string(str(tmp / (name + ".parquet")))} '
                            f"(FORMAT parquet)")
        con.close()
        os.replace(tmp, folder)
    return folder


def _rewrite_one_day(folder: Path) -> str:
    import pyarrow.parquet as pq

    day = sorted(p.name for p in (folder / "telemetry").iterdir())[-3]
    for table in ("telemetry", "api_logs"):
        for file in (folder / table / day).glob("*.parquet"):
            pq.write_table(pq.read_table(file, partitioning=None), file)
    return day


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--old-commit", default="dffcd9b")
    ap.add_argument("--previous", help="an intermediate commit: its cold validation of the file")
    ap.add_argument("--export", type=Path, help="an existing DuckDB export to time")
    args = ap.parse_args()
    duck = args.export.resolve() if args.export else _export(args.users)
    folder = _partitioned(duck)
    old = Path(tempfile.mkdtemp(prefix="whispers-old-"))
    cache = Path(tempfile.mkdtemp(prefix="whispers-bench-cache-"))
    olds = [("src", args.old_commit)] + ([("prev", args.previous)] if args.previous else [])
    for folder_name, commit in olds:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach",
                        str(old / folder_name), commit], check=True, capture_output=True)
    rows = []
    try:
        src_old, src_new = old / "src", ROOT
        o = _run(src_old, [str(duck)], None)
        rows.append((f"DuckDB file, old ({args.old_commit})", o, None))
        if args.previous:
            p = _run(old / "prev", [str(duck)], Path(tempfile.mkdtemp(dir=cache)))
            rows.append((f"DuckDB file, {args.previous}, cold cache", p, o))
        n = _run(src_new, [str(duck)], cache)
        rows.append(("DuckDB file, new, cold cache", n, o))
        rows.append(("DuckDB file, new, warm (unchanged)", _run(src_new, [str(duck)], cache), o))
        po = _run(src_old, [str(folder)], None)
        rows.append(("partitioned Parquet, old", po, None))
        rows.append(("partitioned Parquet, new, cold", _run(src_new, [str(folder)], cache), po))
        rows.append(("partitioned Parquet, new, warm", _run(src_new, [str(folder)], cache), po))
        day = _rewrite_one_day(folder)
        rows.append((f"partitioned, new, {day} rewritten", _run(src_new, [str(folder)], cache), po))
    finally:
        for folder_name, _ in olds:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(old / folder_name)], check=False, capture_output=True)
        shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
    where = _breakdown(duck)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    head = (f"whispers-lab validate, {duck.name}, {os.cpu_count()} cores, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / f"bench_validate_{stamp}.json").write_text(json.dumps(
        {"title": head, "rows": [{"case": label, "seconds": sec, "peak_mb": mb,
                                  "old_seconds": base[0] if base else None}
                                 for label, (sec, mb), base in rows],
         "cold_breakdown_s": where}, indent=1) + "\n")
    print(head)
    print(f"  {'case':<42} {'seconds':>8} {'peak MB':>8} {'old/new':>8}")
    for label, (sec, mb), base in rows:
        ratio = f"{base[0] / sec:.1f}x" if base else ""
        print(f"  {label:<42} {sec:8.2f} {mb:8.0f} {ratio:>8}")
    print("where a cold validation of the DuckDB file spends its time (new code, in process, "
          "each statement put down to what it reads):")
    if "failed" in where:
        print(f"  the breakdown's run failed: {where['failed']}")
        return
    for what, sec in sorted(where.items(), key=lambda kv: (kv[0] == "in all", -kv[1])):
        print(f"  {what:<42} {sec:8.2f}")


if __name__ == "__main__":
    main()
