"""One daily evaluation on DuckDB and on Spark (local mode), from the same query text.

    .venv/bin/python benchmarks/bench_spark.py --users 1000000          # ~1M users, day 14
    .venv/bin/python benchmarks/bench_spark.py --users 20000 --day 9     # a quick look

The export is simulated once (child process) into ``benchmarks/cache/spark-<users>-<seed>.duckdb``
(git-ignored) and copied once to a day-partitioned Parquet folder beside it
(``<table>/day=YYYY-MM-DD/part-0.parquet``, :func:`whispers_lab.export.to_parquet_folder`), what
a data lake holds. Each engine then runs in its own child process, so that each peak is its own:

* DuckDB: :func:`open_export` of the Parquet folder (validation included) and
  :func:`evaluate_day`; peak = the process's max RSS.
* Spark: the same through :func:`whispers_lab.spark.open_spark_export` in a ``local[*]``
  session (started before the clock); peaks of the Python driver and of the JVM (its VmHWM)
  are printed separately; the rows of every frame that crossed from Spark to the driver are
  summed and the largest is named.

Both evaluations must agree (statuses and decision), or the script says so and exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CACHE = ROOT / "benchmarks" / "cache"


def ensure_export(users: int, seed: int, through_day: int) -> tuple[Path, Path]:
    path = CACHE / f"spark-{users}-{seed}-d{through_day}.duckdb"
    folder = CACHE / f"spark-{users}-{seed}-d{through_day}-by-day"
    CACHE.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        print(f"simulating {path} (once; child process) ...", flush=True)
        t = time.perf_counter()
        code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
                f"from whispers_lab.simulate import simulate_to; "
                f"simulate_to({str(path)!r}, users={users}, seed={seed}, "
                f"through_day={through_day})")
        subprocess.run([sys.executable, "-c", code], check=True)
        print(f"  simulated in {time.perf_counter() - t:.1f} s")
    if not folder.exists():
        from whispers_lab.export import to_parquet_folder

        t = time.perf_counter()
        to_parquet_folder(path, folder, partition_by_day=True)
        print(f"copied to day-partitioned Parquet in {time.perf_counter() - t:.1f} s: {folder}")
    return path, folder


def _jvm_peak_mb() -> float | None:
    """Peak RSS (VmHWM) of this process's child JVM, if any."""
    me = os.getpid()
    best = None
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        if fields.get("PPid", "").strip() != str(me) or "java" not in fields.get("Name", ""):
            continue
        hwm = fields.get("VmHWM", "").strip().split()
        if hwm:
            best = max(best or 0.0, int(hwm[0]) / 1024.0)
    return best


def run_engine(engine: str, folder: str, day: int) -> dict:
    """Child process: open the export on ``engine``, evaluate ``day``; a JSON line of figures."""
    from whispers_lab.evaluate import evaluate_day
    from whispers_lab.plan import load_plan

    plan = load_plan(None)
    session = None
    started_session = 0.0
    if engine == "spark":
        from whispers_lab.engine import spark_session

        t = time.perf_counter()
        session = spark_session()
        session.sql("SELECT 1").collect()
        started_session = time.perf_counter() - t
    t = time.perf_counter()
    if engine == "spark":
        from whispers_lab.spark import SparkExport, open_spark_export

        collect = SparkExport._collect

        def reported(self, frame, query, started):  # one line per query, as it finishes
            out = collect(self, frame, query, started)
            print(f"QUERY {time.perf_counter() - started:.2f} {len(out)} "
                  f"{' '.join(query.split())[:90]}", file=sys.stderr, flush=True)
            return out

        SparkExport._collect = reported
        export = open_spark_export(folder, spark=session)
    else:
        from whispers_lab.export import open_export

        export = open_export(folder, use_cache=False)
    opened = time.perf_counter() - t
    ev = evaluate_day(export, day, plan)
    total = time.perf_counter() - t
    out = {"engine": engine, "session_s": started_session, "open_validate_s": opened,
           "evaluate_s": total - opened, "total_s": total,
           "driver_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
           "decision": ev.decision.to_dict()["decision"],
           "statuses": {r.id: r.status for r in ev.results},
           "values": {r.id: r.value for r in ev.results}}
    if engine == "spark":
        results = export.results
        out.update({"master": session.sparkContext.master,
                    "jvm_peak_mb": _jvm_peak_mb(), "queries": len(results),
                    "rows_to_driver": sum(n for _, n, _ in results),
                    "largest": max(results, key=lambda r: r[1])[:2],
                    "largest_aggregate": max((r for r in results if not r[0].startswith(
                        "SELECT user_id, is_internal")), key=lambda r: r[1])[:2]})
    export.close()
    return out


def _run_child(engine: str, folder: Path, day: int, timeout: float | None) -> dict | None:
    """Run one engine's child; stream Spark's per-query lines; its figures (None: it failed;
    ``{"unfinished": ...}``: stopped at ``timeout`` with what it had done)."""
    import threading

    proc = subprocess.Popen([sys.executable, __file__, "--child", engine, "--folder",
                             str(folder), "--day", str(day)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    queries: list[tuple[float, int, str]] = []
    tail: list[str] = []
    started = time.perf_counter()

    def read_stderr() -> None:
        for line in proc.stderr:
            if line.startswith("QUERY "):
                sec, rows, text = line[6:].rstrip("\n").split(" ", 2)
                queries.append((float(sec), int(rows), text))
                if len(queries) % 10 == 0:
                    print(f"  spark: {len(queries)} queries done in "
                          f"{time.perf_counter() - started:.0f} s", flush=True)
            else:
                tail.append(line)
                del tail[:-60]

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        reader.join(5)
        slow = sorted(queries, reverse=True)[:5]
        return {"unfinished": f"{len(queries)} queries finished, {sum(q[0] for q in queries):.0f} s "
                              f"in them, {sum(q[1] for q in queries):,} rows to the driver; "
                              f"slowest: " + "; ".join(f"{q[0]:.0f} s {q[2][:60]}" for q in slow)}
    reader.join(5)
    line = next((ln for ln in out.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        print(out[-3000:], "".join(tail)[-3000:], sep="\n")
        return None
    result = json.loads(line[len("RESULT "):])
    if queries:
        result["slowest"] = sorted(queries, reverse=True)[:5]
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--day", type=int, default=14)
    ap.add_argument("--spark-timeout", type=float, default=None,
                    help="stop Spark after this many seconds and print what it had done")
    ap.add_argument("--child", choices=["duckdb", "spark"], help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(run_engine(args.child, args.folder, args.day), default=str))
        return 0
    _, folder = ensure_export(args.users, args.seed, args.day)
    rows = {}
    import pyarrow.parquet as pq

    for table in sorted(p.name.removesuffix(".parquet") for p in folder.iterdir()):
        files = list((folder / table).rglob("*.parquet")) or [folder / f"{table}.parquet"]
        rows[table] = sum(pq.read_metadata(f).num_rows for f in files)
    print(f"export: {args.users:,} users through day {args.day}, {sum(rows.values()):,} rows "
          f"({', '.join(f'{t} {n:,}' for t, n in rows.items())})")
    figures = {}
    for engine in ("duckdb", "spark"):
        print(f"{engine}: running ...", flush=True)
        result = _run_child(engine, folder, args.day,
                            args.spark_timeout if engine == "spark" else None)
        if result is None:
            return 1
        figures[engine] = result
        if engine == "duckdb":
            print(f"duckdb: open + validate {result['open_validate_s']:.1f} s, evaluate "
                  f"{result['evaluate_s']:.1f} s, total {result['total_s']:.1f} s, peak "
                  f"{result['driver_peak_mb']:.0f} MB, {result['decision']}", flush=True)
        elif "unfinished" in result:
            print(f"spark: stopped after {args.spark_timeout} s: {result['unfinished']}")
            return 2
    d, s = figures["duckdb"], figures["spark"]
    master = s.get("master") or "local"
    label = "Spark local" if master.startswith("local") else "Spark cluster"
    print(f"\n{'':<28}{'DuckDB':>12}{label:>14}" + ("" if label == "Spark local" else
                                                      f"   (master {master})"))
    print(f"{'open + validate (s)':<28}{d['open_validate_s']:>12.1f}{s['open_validate_s']:>14.1f}")
    print(f"{'evaluate day (s)':<28}{d['evaluate_s']:>12.1f}{s['evaluate_s']:>14.1f}")
    print(f"{'total (s)':<28}{d['total_s']:>12.1f}{s['total_s']:>14.1f}")
    print(f"{'session start (s)':<28}{'-':>12}{s['session_s']:>14.1f}")
    print(f"{'peak RSS, Python (MB)':<28}{d['driver_peak_mb']:>12.0f}{s['driver_peak_mb']:>14.0f}")
    jvm = s.get("jvm_peak_mb")
    print(f"{'peak RSS, JVM (MB)':<28}{'-':>12}{(f'{jvm:.0f}' if jvm else 'n/a'):>14}")
    print(f"Spark: {s['queries']} queries, {s['rows_to_driver']:,} rows reached the driver; "
          f"largest frame {s['largest'][1]:,} rows ({s['largest'][0]}); largest aggregate "
          f"{s['largest_aggregate'][1]:,} rows ({s['largest_aggregate'][0]})")
    for sec, _, text in s.get("slowest", []):
        print(f"  slow Spark query: {sec:.1f} s  {text[:80]}")
    print(f"decision: DuckDB {d['decision']}, Spark {s['decision']}")
    differ = [k for k in d["statuses"] if d["statuses"][k] != s["statuses"].get(k)]
    if differ or d["decision"] != s["decision"]:
        print(f"ENGINES DISAGREE on {differ}")
        return 1
    print("every criterion's status and the decision agree")
    return 0


if __name__ == "__main__":
    sys.exit(main())
