"""Benchmark the retention analysis: SQL aggregation plus every test, on a simulated export.

    .venv/bin/python benchmarks/bench_retention.py --users 1000000
    .venv/bin/python benchmarks/bench_retention.py --users 100000 --day 12

The export is built once with :func:`whispers_lab.simulate.simulate_to` into
``benchmarks/cache/retention-<users>-<seed>.duckdb`` (git-ignored) by a child process, so the
peak memory printed here is the analysis's own (DuckDB included: it is the process peak RSS).
Timed: the retention part alone (cohort assignment, SRM, retention cells for every k, the
stratified sequential analysis, CUPED, survival) and the full :func:`experiment_results`.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from whispers_lab import cohort  # noqa: E402
from whispers_lab.export import open_export  # noqa: E402
from whispers_lab.plan import load_plan  # noqa: E402
from whispers_lab.queries import experiment as q  # noqa: E402
from whispers_lab.stats import StatSettings, experiment_results  # noqa: E402
from whispers_lab.stats.retention import analyse_retention  # noqa: E402
from whispers_lab.stats.srm import srm_test  # noqa: E402
from whispers_lab.stats.survival import survival_comparison  # noqa: E402

CACHE = ROOT / "benchmarks" / "cache"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def ensure_export(users: int, seed: int) -> Path:
    path = CACHE / f"retention-{users}-{seed}.duckdb"
    if path.exists():
        print(f"reusing {path}")
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    print(f"building {path} (once; child process) ...", flush=True)
    t = time.perf_counter()
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
            f"from whispers_lab.simulate import simulate_to; "
            f"simulate_to({str(path)!r}, users={users}, seed={seed})")
    subprocess.run([sys.executable, "-c", code], check=True)
    print(f"built in {time.perf_counter() - t:.1f} s")
    return path


def retention_only(ex, day: int, plan) -> dict[str, float]:
    s = StatSettings.from_plan(plan)
    times: dict[str, float] = {}
    t = time.perf_counter()
    assigned = cohort.assign(q.users_for_assignment(ex), day, plan)
    q.register_cohort(ex, assigned)
    times["cohort"] = time.perf_counter() - t
    start, t0, hi = plan.start_date, plan.day_start(0), plan.day_start(day + 1)
    t = time.perf_counter()
    q.materialize_units(ex, start, t0, hi, s.preperiod_days)
    times["units_sql"] = time.perf_counter() - t
    t = time.perf_counter()
    counts = q.srm_counts(ex)
    counts = counts[(counts["day"] >= 0) & (counts["day"] <= day)].copy()
    counts["share_t"] = [cohort.expected_split(int(d), plan).treatment_share for d in counts["day"]]
    srm = srm_test(counts, s, day)
    times["srm"] = time.perf_counter() - t
    t = time.perf_counter()
    cells = q.retention_cells(ex, s.k_days, day)
    times["retention_sql"] = time.perf_counter() - t
    t = time.perf_counter()
    first_look = plan.percentage_stages()[0][0]
    for k in s.k_days:
        a = analyse_retention(cells[cells["k"] == k].drop(columns="k"), k, day, first_look, s,
                              srm_flag=srm.status == "fail")
        if k == s.primary_k:
            primary = a
    times["retention_tests"] = time.perf_counter() - t
    t = time.perf_counter()
    surv = survival_comparison(q.survival_cells(ex, day), s, day)
    times["survival"] = time.perf_counter() - t
    print(f"  D{s.primary_k}: {primary.absolute.status}: {primary.absolute.sentence}")
    print(f"  CUPED: {primary.cuped.sentence}")
    print(f"  SRM: {srm.sentence}")
    print(f"  survival: {surv.test.sentence}")
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--day", type=int, default=14)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    plan = load_plan()
    path = ensure_export(args.users, args.seed)
    rss0 = peak_rss_mb()
    with open_export(path, validate=False, threads=args.threads) as ex:
        rows = {t: ex.row_count(t) for t in ("users", "exposures", "telemetry", "api_logs")}
        print("rows: " + ", ".join(f"{k} {v:,}" for k, v in rows.items()))
        t = time.perf_counter()
        parts = retention_only(ex, args.day, plan)
        retention_s = time.perf_counter() - t
        t = time.perf_counter()
        res = experiment_results(ex, args.day, plan)
        full_s = time.perf_counter() - t
    print(f"retention analysis, day {args.day}: {retention_s:.2f} s  ("
          + ", ".join(f"{k} {v:.2f} s" for k, v in parts.items()) + ")")
    print(f"full experiment_results, day {args.day}: {full_s:.2f} s "
          f"({len(res.all_results())} results)")
    print(f"peak RSS: {peak_rss_mb():.0f} MB (before opening the export: {rss0:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
