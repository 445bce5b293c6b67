"""Benchmark the batch ranker: prepare_candidates and rank_batch on synthetic candidates.

Usage::

    .venv/bin/python benchmarks/bench_ranker.py [--rows N] [--per-request K] [--shuffle] [--seed S]

Builds N synthetic ``ranking_candidates`` rows (request sizes uniform in [K/2, 3K/2], default
K = 20, so about N/K requests) with a seeded generator, then times ``prepare_candidates`` and
``rank_batch`` separately (best of 3 each; ``rank_batch`` with and without context ranking and
with contributions) and prints candidate rows per second. Memory: the process peak RSS
(``resource.getrusage``) after each stage, and the tracemalloc peak of one extra, untimed call
of each stage (numpy allocations are traced; pyarrow's string buffers are not).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from whispers_lab.ranker import prepare_candidates, rank_batch
from whispers_lab.weights import DEFAULT_WEIGHTS, weights_from_vector


def synthetic_candidates(rows: int, per_request: int, seed: int, shuffle: bool) -> pd.DataFrame:
    """Candidates grouped by request (as exports are), ids as pyarrow-backed strings."""
    rng = np.random.default_rng(seed)
    lo, hi = max(1, per_request // 2), max(1, per_request + per_request // 2)
    sizes = rng.integers(lo, hi + 1, size=rows // lo + 1)
    sizes = sizes[: np.searchsorted(np.cumsum(sizes), rows) + 1]
    sizes[-1] -= sizes.sum() - rows
    n_req = len(sizes)
    req = np.repeat(np.arange(n_req, dtype=np.int64), sizes)
    j = np.arange(rows, dtype=np.int64) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    # Distinct within a request for j < 47 (47 * 104729 < 5e6); shared across requests.
    mem = (req * 7919 + j * 104729) % 5_000_000

    def ids(prefix: str, values: np.ndarray) -> pd.Series:
        text = pc.binary_join_element_wise(prefix, pa.array(values).cast(pa.string()), "")
        return pd.Series(text.to_pandas(types_mapper=pd.ArrowDtype).astype("str"))

    frame = pd.DataFrame({
        "request_id": ids("req-", req),
        "memory_id": ids("mem-", mem),
        # Rounded values so that ties occur and the tie rule is exercised.
        "context_similarity": np.round(rng.random(rows), 3),
        "recency_hours": np.round(rng.exponential(96.0, rows), 1),
        "use_count": rng.poisson(4.0, rows).astype(np.int64),
        "last_shown_hours": np.where(rng.random(rows) < 0.3, np.nan,
                                     np.round(rng.exponential(48.0, rows), 1)),
        "pinned": rng.random(rows) < 0.05,
    })
    if shuffle:
        frame = frame.iloc[rng.permutation(rows)].reset_index(drop=True)
    return frame


def best_of(k: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(k):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def traced_peak(fn: Callable[[], Any]) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--per-request", type=int, default=20)
    ap.add_argument("--seed", type=int, default=20261201)
    ap.add_argument("--shuffle", action="store_true", help="shuffle rows (requests not contiguous)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    frame = synthetic_candidates(args.rows, args.per_request, args.seed, args.shuffle)
    n_req = frame["request_id"].nunique()
    print(f"synthetic: {len(frame):,} candidate rows, {n_req:,} requests "
          f"({len(frame) / n_req:.1f} per request), shuffle={args.shuffle}, "
          f"built in {time.perf_counter() - t0:.1f} s; peak RSS {rss_mib():,.0f} MiB")

    t_prep, batch = best_of(args.repeat, lambda: prepare_candidates(frame))
    print(f"prepare_candidates: best of {args.repeat} {t_prep:.3f} s "
          f"= {len(frame) / t_prep / 1e6:.2f} M rows/s; peak RSS {rss_mib():,.0f} MiB")

    tuned = weights_from_vector([0.4, 0.3, 0.05, 0.15, 0.2], version="bench")
    cases: list[tuple[str, dict[str, Any]]] = [
        ("rank_batch (default weights)", {"weights": DEFAULT_WEIGHTS}),
        ("rank_batch (other weights)", {"weights": tuned}),
        ("rank_batch (context ranking off)", {"weights": DEFAULT_WEIGHTS, "context_ranking": False}),
        ("rank_batch (with contributions)", {"weights": DEFAULT_WEIGHTS, "contributions": True}),
    ]
    for label, kwargs in cases:
        t_rank, out = best_of(args.repeat, lambda kw=kwargs: rank_batch(batch, **kw))
        print(f"{label}: best of {args.repeat} {t_rank:.3f} s "
              f"= {len(frame) / t_rank / 1e6:.2f} M rows/s; selected {int(out['selected'].sum()):,}; "
              f"peak RSS {rss_mib():,.0f} MiB")

    print(f"tracemalloc peak (untimed extra call): prepare_candidates "
          f"{traced_peak(lambda: prepare_candidates(frame)):,.0f} MiB, rank_batch "
          f"{traced_peak(lambda: rank_batch(batch, DEFAULT_WEIGHTS)):,.0f} MiB")


if __name__ == "__main__":
    main()
