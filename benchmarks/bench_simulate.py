"""Benchmark the rollout simulator: wall time, rows per table, rows/s and peak RSS.

    .venv/bin/python benchmarks/bench_simulate.py --users 100000
    .venv/bin/python benchmarks/bench_simulate.py --users 1000000 --format parquet

By default the export goes through :func:`whispers_lab.simulate.simulate_to` (per-day spill,
streamed into a DuckDB file) in a temporary folder that is removed afterwards; ``--in-memory``
times :func:`whispers_lab.simulate.simulate` alone (no writing; everything held in RAM).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from whispers_lab.simulate import read_truth, simulate, simulate_to


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--through-day", type=int, default=None)
    ap.add_argument("--format", choices=("duckdb", "parquet"), default="duckdb")
    ap.add_argument("--scenario", action="append", default=[])
    ap.add_argument("--in-memory", action="store_true", help="time simulate() only, no writing")
    args = ap.parse_args(argv)

    print(f"simulate: {args.users:,} users, seed {args.seed}, through day "
          f"{args.through_day if args.through_day is not None else 'plan.last_day'}, "
          f"scenarios {args.scenario or 'none'}, "
          f"{'in memory' if args.in_memory else 'simulate_to -> ' + args.format}")
    t0 = time.perf_counter()
    if args.in_memory:
        sim = simulate(args.users, args.seed, through_day=args.through_day, scenarios=args.scenario)
        rows = sim.row_counts()
        size = None
    else:
        folder = Path(tempfile.mkdtemp(prefix="bench_simulate-"))
        try:
            out = str(folder / ("export/" if args.format == "parquet" else "export.duckdb"))
            path, truth_file = simulate_to(out, args.users, args.seed, through_day=args.through_day,
                                           scenarios=args.scenario)
            rows = read_truth(truth_file)["rows"]
            size = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) \
                if Path(path).is_dir() else Path(path).stat().st_size
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    wall = time.perf_counter() - t0
    total = sum(rows.values())
    print(f"wall time      {wall:8.1f} s")
    for name, n in rows.items():
        print(f"  {name:<20} {n:>13,} rows")
    print(f"  {'total':<20} {total:>13,} rows  ({total / wall:,.0f} rows/s)")
    if size is not None:
        print(f"export size    {size / 2**20:8.1f} MiB")
    print(f"peak RSS       {peak_rss_mb():8.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
