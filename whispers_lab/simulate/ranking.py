"""Candidates, the production ranker, the logging policy and clicks of whispers requests.

For every successful ``/api/whispers/context`` request of a treated user:

* **Candidates**: ``n = min(U{min_candidates..max_candidates}, micro_memory_count)`` distinct
  memories of the user (a contiguous run, modulo the user's memory count, from a random offset;
  memory ids are stable: ``m`` + user index * 2048 + memory index). Features: context_similarity
  ~ Beta, recency_hours ~ lognormal, last_shown_hours NULL (never shown) with probability
  ``never_shown_share`` else lognormal; use_count (geometric) and pinned (rare) are stable
  properties of the memory. Features other than use_count/pinned are drawn per request; the
  simulator does not track a memory's history across requests.
* **Scores**: :func:`whispers_lab.ranker.rank_batch` with the request's weights (the user's
  stored preset, stale weights on a mismatched device, or the fallback from
  :func:`whispers_lab.weights.resolve_weights`); ``logged_score`` is the ranker's score.
* **Logging policy** (epsilon-greedy over slates): with probability ``1 - epsilon`` the ranker's
  top ``m = min(max_items, n)`` are shown in ranker order; with probability ``epsilon`` the
  slate is the first ``m`` of a uniformly random permutation of all ``n`` candidates. Hence
  the probability that the logging policy puts memory ``i`` at position ``k`` is

      propensity = (1 - epsilon) * 1[ranker rank of i == k] + epsilon / n

  which is logged on shown rows (NULL on unshown rows). Every candidate has probability
  ``epsilon / n > 0`` at every shown position, so off-policy estimates of any slate are possible.
* **Clicks**: :mod:`whispers_lab.simulate.clicks` (position-based model).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from ..ranker import rank_batch
from ..weights import Weights
from .clicks import click_probability, relevance_arrays
from .ids import format_ids
from .params import ModelParams
from .population import Population
from .rng import hash_uniform

MEMORY_SLOTS = 2048
MEMORY_ID_WIDTH = 11


def memory_ids(memory_numbers: np.ndarray) -> pa.Array:
    return format_ids("m", memory_numbers, MEMORY_ID_WIDTH)


@dataclass(frozen=True, eq=False)
class RankedRequests:
    """Candidate rows (arrays aligned) and the requests they belong to (``row_req``)."""

    row_req: np.ndarray
    memory_number: np.ndarray
    context_similarity: np.ndarray
    recency_hours: np.ndarray
    use_count: np.ndarray
    last_shown_hours: np.ndarray   # NaN = never shown
    pinned: np.ndarray
    score: np.ndarray
    ranker_rank: np.ndarray
    position: np.ndarray           # shown position, 0 = not shown
    propensity: np.ndarray         # NaN when not shown
    clicked: np.ndarray
    relevance: np.ndarray


def rank_requests(pop: Population, req_user: np.ndarray, req_ids: pa.Array,
                  req_weights: np.ndarray, weights_table: tuple[Weights, ...],
                  relevance_scale: np.ndarray, params: ModelParams, max_items: int,
                  context_ranking: bool, rng: np.random.Generator) -> RankedRequests:
    """Generate, rank, show and click the candidates of the given requests.

    ``req_weights`` indexes ``weights_table`` per request; ``relevance_scale`` multiplies the
    true relevance per request (1 when healthy).
    """
    r = req_user.size
    mem_count = pop.memories[req_user]
    n = np.minimum(rng.integers(params.min_candidates, params.max_candidates + 1, r), mem_count)
    n = np.maximum(n, 1)
    row_req = np.repeat(np.arange(r), n)
    total = row_req.size
    starts = np.cumsum(n) - n
    j = np.arange(total) - np.repeat(starts, n)
    offset = (rng.random(r) * mem_count).astype(np.int64)
    local = (offset[row_req] + j) % mem_count[row_req]
    memory_number = req_user[row_req].astype(np.int64) * MEMORY_SLOTS + local

    a, b = params.similarity_beta
    ctx = rng.beta(a, b, total)
    rec = rng.lognormal(np.log(params.recency_median_h), params.recency_sigma, total)
    never = rng.random(total) < params.never_shown_share
    last = np.where(never, np.nan,
                    rng.lognormal(np.log(params.last_shown_median_h), params.last_shown_sigma, total))
    u_use = hash_uniform(memory_number, 1)
    p_geo = 1.0 / (1.0 + params.use_count_mean)
    use_count = np.floor(np.log1p(-u_use) / np.log1p(-p_geo)).astype(np.int64)
    pinned = hash_uniform(memory_number, 2) < params.pinned_share

    frame = pd.DataFrame({
        "request_id": pd.Series(pa.array(req_ids).take(pa.array(row_req)).to_pandas()),
        "memory_id": pd.Series(memory_ids(memory_number).to_pandas()),
        "context_similarity": ctx, "recency_hours": rec, "use_count": use_count,
        "last_shown_hours": last, "pinned": pinned,
    })
    score = np.empty(total)
    ranker_rank = np.empty(total, dtype=np.int64)
    row_weights = req_weights[row_req]
    for g in np.unique(row_weights):
        rows = np.flatnonzero(row_weights == g)
        ranked = rank_batch(frame.iloc[rows], weights_table[int(g)], max_items=max_items,
                            context_ranking=context_ranking)
        score[rows] = ranked["score"].to_numpy()
        ranker_rank[rows] = ranked["rank"].to_numpy()

    # logging policy: epsilon-greedy over whole slates
    eps = params.epsilon
    explore = rng.random(r) < eps
    key = rng.random(total)
    order = np.lexsort((key, row_req))
    random_rank = np.empty(total, dtype=np.int64)
    random_rank[order] = j + 1  # rows of a request are contiguous, so j is the rank in order
    pos = np.where(explore[row_req], random_rank, ranker_rank)
    m = np.minimum(max_items, n)[row_req]
    shown = pos <= m
    position = np.where(shown, pos, 0)
    propensity = np.where(shown, (1 - eps) * (ranker_rank == pos) + eps / n[row_req], np.nan)

    relevance = relevance_arrays(ctx, rec, use_count, last, pinned)
    p_click = click_probability(position, relevance, relevance_scale[row_req])
    clicked = shown & (rng.random(total) < p_click)
    return RankedRequests(row_req=row_req, memory_number=memory_number, context_similarity=ctx,
                          recency_hours=rec, use_count=use_count, last_shown_hours=last,
                          pinned=pinned, score=score, ranker_rank=ranker_rank, position=position,
                          propensity=propensity, clicked=clicked, relevance=relevance)


def candidates_table(rr: RankedRequests, req_ids: pa.Array) -> pa.Table:
    shown = rr.position > 0
    return pa.table({
        "request_id": pa.array(req_ids).take(pa.array(rr.row_req)),
        "memory_id": memory_ids(rr.memory_number),
        "context_similarity": pa.array(rr.context_similarity),
        "recency_hours": pa.array(rr.recency_hours),
        "use_count": pa.array(rr.use_count.astype(np.int32)),
        "last_shown_hours": pa.array(rr.last_shown_hours, mask=np.isnan(rr.last_shown_hours)),
        "pinned": pa.array(rr.pinned),
        "logged_score": pa.array(rr.score),
        "shown_position": pa.array(rr.position.astype(np.int32), mask=~shown),
        "propensity": pa.array(rr.propensity, mask=~shown),
    })
