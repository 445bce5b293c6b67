"""Benchmark of the cohort assignment: ``bucket_of``, ``assign`` and ``first_enabled_day``.

    .venv/bin/python benchmarks/bench_cohort.py [--users N] [--repeat R] [--seed S]

Builds N synthetic users (ids ``user_<n>`` of mixed length, 0.01% internal, Poisson micro-memory
counts, uniform engagement) with Arrow, then times each call (best of R) and prints users per
second. Memory: the process peak RSS after each step (it includes the input frame), and the peak
of numpy + pandas allocations (tracemalloc) during one extra untimed call of each step.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from whispers_lab.cohort import assign, bucket_of, first_enabled_day, reason_counts
from whispers_lab.plan import load_plan


def make_users(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ids = pc.binary_join_element_wise("user_", pc.cast(pa.array(rng.permutation(n)), pa.string()), "")
    return pd.DataFrame({
        "user_id": pd.Series(ids.to_pandas()),
        "is_internal": rng.random(n) < 1e-4,
        "micro_memory_count": rng.poisson(4, n).astype(np.int64),
        "engagement_score": rng.random(n),
    })


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(name: str, fn: Callable[[], Any], n: int, repeat: int) -> Any:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    best = min(times)
    del result
    tracemalloc.start()
    result = fn()
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"{name:<22} {best:8.2f} s  {n / best / 1e6:7.2f} M users/s   "
          f"numpy/pandas peak {traced_peak / 2**20:8.0f} MiB   "
          f"process peak RSS {peak_rss_mb():8.0f} MiB")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=10_000_000, help="number of users (default 10M)")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per step (best kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--day", type=int, default=10, help="rollout day passed to assign")
    args = parser.parse_args(argv)

    plan = load_plan()
    t0 = time.perf_counter()
    users = make_users(args.users, args.seed)
    print(f"whispers_lab cohort benchmark: {args.users:,} users (built in "
          f"{time.perf_counter() - t0:.1f} s), day {args.day}, numpy {np.__version__}, "
          f"pandas {pd.__version__}, pyarrow {pa.__version__}")
    print(f"{'baseline':<22} {'':>8}    {'':>7}               {'':>8}       "
          f"process peak RSS {peak_rss_mb():8.0f} MiB")
    a = plan.assignment
    measure("bucket_of", lambda: bucket_of(users["user_id"], a.salt, a.buckets), args.users, args.repeat)
    out = measure("assign", lambda: assign(users, args.day, plan), args.users, args.repeat)
    measure("first_enabled_day", lambda: first_enabled_day(users, plan), args.users, args.repeat)
    counts = reason_counts(out)
    print(f"reasons on day {args.day}: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    print(f"arrow memory pool peak (whole run): {(pa.default_memory_pool().max_memory() or 0) / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
