"""One command for every speed and memory figure: ``python benchmarks/run.py`` (or ``whispers-lab bench``).

Builds (or, with ``--reuse``, reuses) simulated exports at three sizes — S: 10k users, M: 100k,
L: 1M, each through day 14 — and measures, for each size, every stage of the daily work:

  simulate   write the export (DuckDB file)                      rows = rows written
  validate   open + every contract check + canonical views       rows = rows in the export
  cohort     bucket hash + assignment for day 14 + switch days   rows = users
  retention  experiment_results(): SQL aggregation + all tests   rows = rows in the export
  agg_sql    the day's per-minute API aggregates in DuckDB       rows = api_logs rows of the day
  agg_pandas the same aggregates in pandas (load, then groupby)  rows = api_logs rows of the day
  report     one full daily report: papermill + HTML + decision  rows = rows in the export

plus, once, ``replay`` of 10M synthetic candidate rows (all metrics, one weight setting) against a
plain pandas groupby of the same metrics, and optionally the ``demo``. Every stage runs in its own
subprocess so that its peak memory (max RSS) is its own. The table goes to stdout, the figures to
``benchmarks/results/<UTC stamp>.json`` and ``benchmarks/results/latest.json`` with the machine's
core count and memory. Growth from S to M to L is the log-log slope of time against rows
(1.0 = linear).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / "cache"
RESULTS = HERE / "results"
SIZES = {"S": 10_000, "M": 100_000, "L": 1_000_000}
SEED = 20261201
DAY = 14
GOALS = {  # stage -> (seconds, peak MB) goals on this 2-core machine at size L (issue 8)
    "report": (60, 6144), "validate": (10, None), "replay": (5, 3072), "simulate": (300, 8192),
}


# ---------------------------------------------------------------------------------------
# stages (each runs inside its own subprocess)


def _peak_mb() -> float:
    """Peak RSS of this stage: the process itself or its largest child (the papermill kernel)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024


def _export_rows(path: Path) -> int:
    from whispers_lab.export import open_export

    with open_export(path, validate=False) as e:
        return sum(e.row_count(t) for t in e.present)


def stage_simulate(path: Path, users: int) -> dict:
    from whispers_lab.simulate import simulate_to

    t = time.perf_counter()
    simulate_to(path, users=users, seed=SEED, through_day=DAY)
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "rows": _export_rows(path)}


def stage_validate(path: Path, users: int) -> dict:
    from whispers_lab.export import open_export

    t = time.perf_counter()
    with open_export(path) as e:
        rows = sum(e.row_count(n) for n in e.present)
    return {"seconds": time.perf_counter() - t, "rows": rows}


def stage_cohort(path: Path, users: int) -> dict:
    from whispers_lab.cohort import assign
    from whispers_lab.export import open_export
    from whispers_lab.plan import load_plan

    plan = load_plan()
    with open_export(path, validate=False) as e:
        frame = e.sql("SELECT * FROM users")
    t = time.perf_counter()
    out = assign(frame, DAY, plan)
    return {"seconds": time.perf_counter() - t, "rows": len(out)}


def stage_retention(path: Path, users: int) -> dict:
    from whispers_lab.export import open_export
    from whispers_lab.plan import load_plan
    from whispers_lab.stats import experiment_results

    plan = load_plan()
    with open_export(path, validate=False) as e:
        rows = sum(e.row_count(n) for n in e.present)
        t = time.perf_counter()
        res = experiment_results(e, DAY, plan)
        seconds = time.perf_counter() - t
    return {"seconds": seconds, "rows": rows, "note": f"retention status {res.retention.status}"}


def _day_window():
    from whispers_lab.plan import load_plan

    plan = load_plan()
    return plan.day_start(DAY), plan.day_start(DAY + 1)


def stage_agg_sql(path: Path, users: int) -> dict:
    from whispers_lab.export import open_export

    lo, hi = _day_window()
    with open_export(path, validate=False) as e:
        t = time.perf_counter()
        out = e.sql("""
            SELECT date_trunc('minute', timestamp) AS minute, count(*) AS requests,
                   avg(duration_ms) AS avg_ms, quantile_cont(duration_ms, 0.95) AS p95_ms,
                   count(*) FILTER (WHERE status >= 400) / count(*) AS error_rate
            FROM api_logs WHERE timestamp >= $lo AND timestamp < $hi GROUP BY 1 ORDER BY 1""",
                    {"lo": lo, "hi": hi})
        seconds = time.perf_counter() - t
        rows = int(e.scalar("SELECT count(*) FROM api_logs WHERE timestamp >= $1 AND timestamp < $2",
                            [lo, hi]))
    return {"seconds": seconds, "rows": rows, "note": f"{len(out)} minutes"}


def stage_agg_pandas(path: Path, users: int) -> dict:
    import pandas as pd

    from whispers_lab.export import open_export

    lo, hi = _day_window()
    with open_export(path, validate=False) as e:
        t = time.perf_counter()
        # what a notebook usually does: pull the rows, then filter and group in pandas
        logs = e.sql("SELECT timestamp, status, duration_ms FROM api_logs")
        day = logs[(logs["timestamp"] >= pd.Timestamp(lo)) & (logs["timestamp"] < pd.Timestamp(hi))]
        g = day.assign(minute=day["timestamp"].dt.floor("min"),
                       err=(day["status"] >= 400).astype(float)).groupby("minute")
        out = pd.DataFrame({"requests": g.size(), "avg_ms": g["duration_ms"].mean(),
                            "p95_ms": g["duration_ms"].quantile(0.95), "error_rate": g["err"].mean()})
        seconds = time.perf_counter() - t
    return {"seconds": seconds, "rows": len(day), "note": f"{len(out)} minutes"}


def stage_report(path: Path, users: int) -> dict:
    from whispers_lab.report.runner import write_report

    with tempfile.TemporaryDirectory(prefix="bench-report-") as out:
        t = time.perf_counter()
        res = write_report(path, DAY, out_dir=out)
        seconds = time.perf_counter() - t
    return {"seconds": seconds, "rows": _export_rows(path), "note": f"decision {res.decision}"}


def stage_replay(path: Path | None, rows: int) -> dict:
    sys.path.insert(0, str(HERE))
    import bench_replay as br

    from whispers_lab.replay import engine

    frame = br.build(rows, SEED)
    t = time.perf_counter()
    data = engine.prepare_replay(frame)
    br.replay_once(data)
    seconds = time.perf_counter() - t
    peak = _peak_mb()
    ranks = engine.target_ranks(data, None)
    flat = frame.assign(q=frame["request_id"], rank=ranks, rel=frame["click"].astype(float))
    t = time.perf_counter()
    br.pandas_metrics(flat)
    pandas_seconds = time.perf_counter() - t
    return {"seconds": seconds, "rows": len(frame), "peak_mb_at_replay": peak,
            "pandas_seconds": pandas_seconds,
            "note": f"pandas groupby {pandas_seconds:.1f} s ({pandas_seconds / seconds:.1f}x slower)"}


def stage_demo(path: Path | None, users: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as out:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "whispers_lab.cli", "demo", "--out", out],
                       check=True, stdout=subprocess.DEVNULL)
        return {"seconds": time.perf_counter() - t, "rows": 15, "note": "15 daily reports"}


STAGES = {
    "simulate": stage_simulate, "validate": stage_validate, "cohort": stage_cohort,
    "retention": stage_retention, "agg_sql": stage_agg_sql, "agg_pandas": stage_agg_pandas,
    "report": stage_report, "replay": stage_replay, "demo": stage_demo,
}
PER_SIZE = ("simulate", "validate", "cohort", "retention", "agg_sql", "agg_pandas", "report")


def _child(stage: str, path: str, n: int) -> None:
    result = STAGES[stage](Path(path) if path else None, n)
    result["peak_mb"] = _peak_mb()
    print("BENCH-RESULT " + json.dumps(result))


def run_stage(stage: str, path: Path | None, n: int) -> dict:
    cmd = [sys.executable, __file__, "--child", stage, "--child-path", str(path or ""),
           "--child-n", str(n)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH-RESULT "):
            return json.loads(line[len("BENCH-RESULT "):])
    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    return {"error": tail}


# ---------------------------------------------------------------------------------------
# driver


def _machine() -> dict:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cores": os.cpu_count(), "memory_gib": round(mem, 1), "python": platform.python_version(),
            "platform": platform.platform()}


def _growth(results: dict, stage: str, sizes: list[str]) -> str:
    pts = [(results[s][stage].get("rows"), results[s][stage].get("seconds")) for s in sizes
           if "seconds" in results[s].get(stage, {})]
    slopes = []
    for (r1, t1), (r2, t2) in itertools.pairwise(pts):
        if r1 and r2 and t1 and t2 and r2 != r1 and t1 > 0.05:
            slopes.append(math.log(t2 / t1) / math.log(r2 / r1))
    return " / ".join(f"{s:.2f}" for s in slopes) if slopes else "-"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="S,M,L", help="comma list of S, M, L (default all)")
    ap.add_argument("--reuse", action="store_true", help="reuse cached exports (skip simulate)")
    ap.add_argument("--replay-rows", type=int, default=10_000_000)
    ap.add_argument("--no-replay", action="store_true")
    ap.add_argument("--demo", action="store_true", help="also time `whispers-lab demo`")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-path", help=argparse.SUPPRESS)
    ap.add_argument("--child-n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child, args.child_path, args.child_n)
        return 0

    sizes = [s.strip().upper() for s in args.sizes.split(",") if s.strip()]
    CACHE.mkdir(exist_ok=True)
    RESULTS.mkdir(exist_ok=True)
    results: dict = {}
    for size in sizes:
        users = SIZES[size]
        path = CACHE / f"bench-{size}-{users}u-seed{SEED}.duckdb"
        results[size] = {}
        for stage in PER_SIZE:
            if stage == "simulate" and args.reuse and path.exists():
                results[size][stage] = {"reused": True}
                continue
            print(f"[{size}] {stage} ...", flush=True)
            results[size][stage] = run_stage(stage, path, users)
            if "error" in results[size][stage]:
                print(f"    error: {results[size][stage]['error']}", flush=True)
    extra = {}
    if not args.no_replay:
        print(f"replay of {args.replay_rows:,} candidate rows ...", flush=True)
        extra["replay"] = run_stage("replay", None, args.replay_rows)
    if args.demo:
        print("demo ...", flush=True)
        extra["demo"] = run_stage("demo", None, 0)

    lines = [f"machine: {_machine()['cores']} cores, {_machine()['memory_gib']} GiB",
             f"{'stage':<11} " + " ".join(f"{s + ' s':>9} {s + ' MB':>8} {s + ' Mrow/s':>10}" for s in sizes)
             + f"  {'growth':>11}"]
    for stage in PER_SIZE:
        cells = []
        for s in sizes:
            r = results[s].get(stage, {})
            if "seconds" in r:
                rate = r["rows"] / r["seconds"] / 1e6 if r.get("rows") and r["seconds"] > 0 else float("nan")
                cells.append(f"{r['seconds']:>9.2f} {r['peak_mb']:>8.0f} {rate:>10.2f}")
            else:
                cells.append(f"{('reused' if r.get('reused') else 'error'):>9} {'':>8} {'':>10}")
        lines.append(f"{stage:<11} " + " ".join(cells) + f"  {_growth(results, stage, sizes):>11}")
    for name, r in extra.items():
        if "seconds" in r:
            lines.append(f"{name:<11} {r['seconds']:.2f} s, peak {r['peak_mb']:.0f} MB, "
                         f"{r['rows'] / r['seconds'] / 1e6:.2f} M rows/s; {r.get('note', '')}")
        else:
            lines.append(f"{name:<11} error: {r.get('error')}")
    for s in sizes:
        a, b = results[s].get("agg_sql", {}), results[s].get("agg_pandas", {})
        if "seconds" in a and "seconds" in b:
            lines.append(f"[{s}] pandas / DuckDB aggregation time ratio: {b['seconds'] / a['seconds']:.1f}x, "
                         f"memory {b['peak_mb']:.0f} vs {a['peak_mb']:.0f} MB")
    table = "\n".join(lines)
    print(table)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    payload = {"generated_at": stamp, "machine": _machine(), "seed": SEED, "day": DAY,
               "sizes": {s: SIZES[s] for s in sizes}, "results": results, "extra": extra,
               "goals": GOALS, "table": table}
    for target in (RESULTS / f"{stamp}.json", RESULTS / "latest.json"):
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, indent=2, default=str))
        os.replace(tmp, target)
    print(f"results: {RESULTS / (stamp + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
