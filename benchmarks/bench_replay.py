"""Replay speed: 10M candidate rows (~500k requests) through one weight setting, all metrics.

    .venv/bin/python benchmarks/bench_replay.py [--rows 10000000] [--seed 0] [--boot 200]

Builds seeded synthetic logged candidates directly with numpy (no simulator): 5..35 candidates
per request, clicks on a logged epsilon-greedy slate of 6, propensities. Then times

1. ``prepare_replay`` (once per data set: the ranker's id factorisation, slate matrices);
2. **the replay**: ``rank_batch`` with DEFAULT_WEIGHTS + NDCG@6 / MRR@6 / hit@6 / precision@6 per
   request + their means over both populations (bar: < 5 s, goal < 2 s; peak memory < 3 GB),
   best of 5 runs after a warm-up (the machine may be shared);
3. the metrics alone, and the same metrics through a plain pandas groupby implementation on
   the same ranks (checked equal), with the speed ratio;
4. extras: the self-normalised IIPS point estimate, and a Poisson bootstrap of all metric means.

Peak memory: ``tracemalloc`` peak of a second, traced run of step 2 (numpy reports its buffers
to tracemalloc), and the process peak RSS (which includes building the data).
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from whispers_lab.replay import engine
from whispers_lab.replay.metrics import ranking_metrics
from whispers_lab.weights import DEFAULT_WEIGHTS

K = 6


def build(rows: int, seed: int, epsilon: float = 0.1) -> pd.DataFrame:
    """Seeded synthetic candidates, contiguous by request, ~``rows`` rows."""
    rng = np.random.default_rng(seed)
    n_req = max(1, rows // 20)
    n = rng.integers(5, 36, size=n_req)
    total = int(n.sum())
    req = np.repeat(np.arange(n_req, dtype=np.int64), n)
    starts = np.cumsum(n) - n
    j = np.arange(total, dtype=np.int64) - np.repeat(starts, n)
    ctx = rng.beta(2.0, 3.5, total)
    rec = rng.lognormal(np.log(90.0), 1.4, total)
    last = np.where(rng.random(total) < 0.35, np.nan, rng.lognormal(np.log(30.0), 1.2, total))
    use = rng.geometric(0.25, total) - 1
    pinned = rng.random(total) < 0.03
    score = 0.5 * ctx + 0.2 * np.exp(-rec / 100) + 0.3 * pinned + 0.05 * rng.random(total)
    order = np.lexsort((-score, req))
    greedy = np.empty(total, dtype=np.int64)
    greedy[order] = j + 1
    explore = rng.random(n_req) < epsilon
    order = np.lexsort((rng.random(total), req))
    rand = np.empty(total, dtype=np.int64)
    rand[order] = j + 1
    pos = np.where(explore[req], rand, greedy)
    shown = pos <= np.minimum(6, n)[req]
    prop = np.where(shown, (1 - epsilon) * (greedy == pos) + epsilon / n[req], np.nan)
    p_click = np.where(shown, 0.6 * ctx / np.sqrt(np.maximum(pos, 1)), 0.0)
    click = (rng.random(total) < p_click).astype(np.int8)
    users = rng.integers(0, max(1, n_req // 10), size=n_req)
    req_labels = np.array([f"r{i:08d}" for i in range(n_req)], dtype=object)
    mem_labels = np.array([f"m{i:03d}" for i in range(int(n.max()))], dtype=object)
    user_labels = np.array([f"u{i:07d}" for i in range(int(users.max()) + 1)], dtype=object)
    return pd.DataFrame({
        "request_id": pd.array(req_labels[req], dtype="str"),
        "memory_id": pd.array(mem_labels[j], dtype="str"),
        "context_similarity": ctx, "recency_hours": rec, "use_count": use,
        "last_shown_hours": last, "pinned": pinned, "logged_score": score,
        "shown_position": np.where(shown, pos, np.nan), "propensity": prop, "click": click,
        "user_id": pd.array(user_labels[users[req]], dtype="str"),
    })


def replay_once(data: engine.ReplayData) -> pd.DataFrame:
    """Step 2: rank with one weight setting, all metrics per request, means per population."""
    res = engine.replay(data, DEFAULT_WEIGHTS, k=K, labels=["click"], ci=False)
    return res.summary


def pandas_metrics(frame: pd.DataFrame, k: int = K) -> pd.DataFrame:
    """The same per-request metrics with plain pandas groupby (the usual idiom), for comparison."""
    df = pd.DataFrame({"q": frame["q"], "rank": frame["rank"], "rel": frame["rel"]})
    df["in_k"] = df["rank"] <= k
    df["relevant"] = df["rel"] > 0
    df["dcg"] = np.where(df["in_k"], df["rel"] / np.log2(df["rank"] + 1), 0.0)
    df["hit"] = df["in_k"] & (df["rel"] > 0)
    df["rr"] = np.where(df["hit"], 1.0 / df["rank"], 0.0)
    ideal = df.sort_values(["q", "rel"], ascending=[True, False])
    ideal_pos = ideal.groupby("q").cumcount() + 1
    ideal = ideal.assign(idcg=np.where(ideal_pos <= k, ideal["rel"] / np.log2(ideal_pos + 1), 0.0))
    g = df.groupby("q")
    out = pd.DataFrame({
        "dcg": g["dcg"].sum(), "mrr": g["rr"].max(), "hits": g["hit"].sum(),
        "n_rel": g["relevant"].sum(),
        "idcg": ideal.groupby("q")["idcg"].sum(),
    })
    out["ndcg"] = np.where(out["n_rel"] > 0, out["dcg"] / out["idcg"].where(out["idcg"] > 0, 1), np.nan)
    out["hit"] = (out["hits"] > 0).astype(float)
    out["precision"] = out["hits"] / k
    return out


def _rss_gib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--boot", type=int, default=200, help="bootstrap replicates for the extra")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    frame = build(args.rows, args.seed)
    t_build = time.perf_counter() - t0
    print(f"built {len(frame):,} candidate rows in {t_build:.1f} s")

    t0 = time.perf_counter()
    data = engine.prepare_replay(frame)
    t_prep = time.perf_counter() - t0
    print(f"prepare_replay (once per data set): {t_prep:.2f} s  "
          f"({data.n_requests:,} requests, logger: {data.log.logger.kind}, "
          f"epsilon={data.log.logger.epsilon})")
    del data
    gc.collect()
    tracemalloc.start()
    data = engine.prepare_replay(frame)
    _, prep_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"prepare_replay peak traced memory (on top of the input frame): "
          f"{prep_peak / 2**30:.2f} GiB")
    del frame
    gc.collect()

    replay_once(data)  # warm-up (first-touch page faults, lazy imports)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        summary = replay_once(data)
        times.append(time.perf_counter() - t0)
    t_replay = min(times)
    tracemalloc.start()
    replay_once(data)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rows = data.n_rows
    print(f"\nreplay (rank_batch + NDCG/MRR/hit/precision@{K} per request + means), best of 5: "
          f"{t_replay:.2f} s = {rows / t_replay / 1e6:.1f} M rows/s "
          f"[bar < 5 s, goal < 2 s: {'met' if t_replay < 2 else ('bar met' if t_replay < 5 else 'MISSED')}]")
    print(f"replay peak traced memory: {peak / 2**30:.2f} GiB [bar < 3 GB: "
          f"{'met' if peak < 3e9 else 'MISSED'}]")
    print(f"process peak RSS so far (input frame + prepared data + replay): {_rss_gib():.2f} GiB")
    print(summary[["metric", "population", "n", "mean"]].to_string(index=False))

    ranks = engine.target_ranks(data, DEFAULT_WEIGHTS)
    gains = data.labels["click"]
    t0 = time.perf_counter()
    m = ranking_metrics(ranks, gains, data.groups, K)
    t_metrics = time.perf_counter() - t0
    flat = pd.DataFrame({"q": data.row_request, "rank": ranks, "rel": gains})
    t0 = time.perf_counter()
    ref = pandas_metrics(flat)
    t_pandas = time.perf_counter() - t0
    for col in ("ndcg", "mrr", "hit", "precision"):
        np.testing.assert_allclose(getattr(m, col), ref[col].to_numpy(), equal_nan=True)
    print(f"\nmetrics only (vectorised bincount/reduceat): {t_metrics:.2f} s; "
          f"plain pandas groupby: {t_pandas:.2f} s; ratio {t_pandas / t_metrics:.1f}x "
          "(same values checked; ranx is not installed)")

    t0 = time.perf_counter()
    value = engine.point_estimate(data, engine.targets(data, DEFAULT_WEIGHTS), "sniips")
    print(f"\nextra: sniips point estimate {value:.4f} in {time.perf_counter() - t0:.2f} s")
    t0 = time.perf_counter()
    res = engine.replay(data, DEFAULT_WEIGHTS, k=K, labels=["click"], n_boot=args.boot,
                        cluster="request")
    print(f"extra: replay with Poisson-bootstrap CIs (B={args.boot}, {data.n_requests:,} "
          f"requests, all metrics at once): {time.perf_counter() - t0:.2f} s; e.g. ndcg@6 "
          f"{res.summary['mean'].iloc[0]:.4f} [{res.summary['ci_low'].iloc[0]:.4f}, "
          f"{res.summary['ci_high'].iloc[0]:.4f}]")
    print(f"\nprocess peak RSS at the end (including the pandas comparison): {_rss_gib():.2f} GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
