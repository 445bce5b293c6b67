"""Seeded synthetic replay logs (no full simulator): for tests with known truth and benchmarks.

Each request gets ``U{min_candidates..max_candidates}`` candidates with features drawn like the
simulator's; the logger ranks them with ``logger_weights`` through the production ranker and
shows its top ``max_items``, except on a random ``epsilon`` share of requests where it shows the
first ``max_items`` of a uniformly random permutation; the logged propensity is
``(1 - epsilon) * 1[ranker rank == position] + epsilon / n``. Clicks follow the simulator's
position-based true click model (:mod:`whispers_lab.simulate.clicks`), so
:func:`true_ctr` gives the exact CTR any weights would get on the same candidates.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..ranker import prepare_candidates, rank_batch
from ..simulate.clicks import click_probability, examination, relevance_arrays
from ..weights import DEFAULT_WEIGHTS, Weights


def synthetic_log(n_requests: int, *, seed: int = 0, epsilon: float = 0.1,
                  logger_weights: Weights = DEFAULT_WEIGHTS, max_items: int = 6,
                  min_candidates: int = 5, max_candidates: int = 25, n_users: int | None = None,
                  propensities: bool = True) -> pd.DataFrame:
    """Candidate rows (contiguous by request) with ``click``, ``user_id``, ``true_relevance``.

    ``propensities=False`` drops them (NULL), as an export from a logger that did not record them.
    """
    rng = np.random.default_rng(seed)
    r = int(n_requests)
    n = rng.integers(min_candidates, max_candidates + 1, size=r)
    total = int(n.sum())
    row_req = np.repeat(np.arange(r, dtype=np.int64), n)
    starts = np.cumsum(n) - n
    j = np.arange(total, dtype=np.int64) - np.repeat(starts, n)
    n_users = n_users if n_users is not None else max(1, r // 8)
    req_user = rng.integers(0, n_users, size=r)
    ctx = rng.beta(2.0, 3.5, total)
    rec = rng.lognormal(np.log(90.0), 1.4, total)
    last = np.where(rng.random(total) < 0.35, np.nan, rng.lognormal(np.log(30.0), 1.2, total))
    use = rng.geometric(1 / 4.0, total) - 1
    pinned = rng.random(total) < 0.03
    frame = pd.DataFrame({
        "request_id": pd.Series(row_req).map("r{:08d}".format) if r <= 200_000 else
        _fast_ids("r", row_req),
        "memory_id": _fast_ids("m", j),
        "context_similarity": ctx, "recency_hours": rec, "use_count": use,
        "last_shown_hours": last, "pinned": pinned,
    })
    ranked = rank_batch(prepare_candidates(frame), logger_weights, max_items=max_items)
    ranker_rank = ranked["rank"].to_numpy()
    explore = rng.random(r) < epsilon
    key = rng.random(total)
    order = np.lexsort((key, row_req))
    random_rank = np.empty(total, dtype=np.int64)
    random_rank[order] = j + 1
    pos = np.where(explore[row_req], random_rank, ranker_rank)
    m = np.minimum(max_items, n)[row_req]
    shown = pos <= m
    rel = relevance_arrays(ctx, rec, use, last, pinned)
    clicked = shown & (rng.random(total) < click_probability(np.where(shown, pos, 0), rel))
    prop = np.where(shown, (1 - epsilon) * (ranker_rank == pos) + epsilon / n[row_req], np.nan)
    frame["logged_score"] = ranked["score"].to_numpy()
    frame["shown_position"] = pd.array(np.where(shown, pos, 0), dtype="Int64")
    frame.loc[~shown, "shown_position"] = pd.NA
    frame["propensity"] = prop if propensities else np.nan
    frame["click"] = clicked.astype(np.int64)
    frame["user_id"] = _fast_ids("u", req_user[row_req])
    frame["true_relevance"] = rel
    return frame


def _fast_ids(prefix: str, numbers: np.ndarray) -> pd.Series:
    """String ids ``prefix + zero-padded number`` for millions of rows (via categorical codes)."""
    uniq, inv = np.unique(numbers, return_inverse=True)
    labels = np.array([f"{prefix}{x:08d}" for x in uniq], dtype=object)
    return pd.Series(pd.Categorical.from_codes(inv, labels)).astype(str)


def true_ctr(frame: pd.DataFrame, weights: Weights, max_items: int = 6,
             per: str = "impression") -> float:
    """Exact expected clicks per shown whisper (or per request) if ``weights`` ranked ``frame``,
    from its ``true_relevance`` column and the true examination curve."""
    ranked = rank_batch(prepare_candidates(frame), weights, max_items=max_items)
    sel = ranked["selected"].to_numpy()
    rel = frame["true_relevance"].to_numpy()[sel]
    clicks = float((examination(ranked["rank"].to_numpy()[sel]) * rel).sum())
    if per == "request":
        return clicks / frame["request_id"].nunique()
    return clicks / int(sel.sum())
