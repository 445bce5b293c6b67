"""Per-request ranking metrics, vectorised over a flat array of candidate rows.

Layout
------
Rows are grouped by request: the rows of request ``g`` are ``offsets[g] : offsets[g] + sizes[g]``
(contiguous, any order inside the group). Each row carries its 1-based ``rank`` inside its
request (a permutation of ``1..size``: ties already broken, see :func:`ranks_from_scores`) and its
``gain`` (a click: 0/1; or a graded relevance >= 0). Every metric is computed with ``np.bincount``
/ ``np.maximum.reduceat`` over the flat arrays; there is no Python loop over requests.

Definitions (k = cutoff, default 6, the number of whispers shown)
----------------------------------------------------------------
* ``DCG@k = sum_{rank <= k} gain / log2(rank + 1)`` (linear gain, as trec_eval and ranx ``ndcg``).
* ``IDCG@k`` is the DCG of the request's own relevant items sorted by gain, **capped at k**:
  a request with 2 clicked items has ``IDCG = 1 + 1/log2(3)`` whatever k >= 2 is; one with fewer
  than k candidates is compared with the best ordering of the candidates it has (it is not
  penalised for the missing slots).
* ``NDCG@k = DCG@k / IDCG@k``; undefined (NaN) for a request with no relevant item.
* ``MRR@k``: reciprocal rank of the first relevant item if it is within the top k, else 0.
* ``hit@k``: 1 if any relevant item is within the top k.
* ``precision@k``: relevant items in the top k divided by k (``precision_denominator="k"``,
  trec_eval's P@k: a request with 3 candidates can reach at most 3/k) or by ``min(k, size)``
  (``"available"``: a request with fewer than k candidates can reach 1).
* Relevant means ``gain > 0``; hit, MRR and precision use that binary view, NDCG the graded gain.

Populations
-----------
A mean of per-request metrics is taken over a stated population: ``"all"`` (every request; a
request without any relevant item scores 0 on every metric, NDCG included) or ``"with_relevant"``
(only requests with at least one relevant item, e.g. a click: what ranx / trec_eval average
over, since queries without judgements are dropped). :func:`summarise` always returns the
population label and its ``n``; nothing mixes the two silently.

Ties
----
The metrics take ranks as given. :func:`ranks_from_scores` turns scores into ranks with an
explicit tie policy: ``"stable"`` (row order), ``"pessimistic"`` (relevant items last inside a
tie: a lower bound) or ``"optimistic"`` (relevant items first: an upper bound). The replay
engine uses the ranker's own ranks, i.e. the order the ranker would actually serve.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

METRICS: tuple[str, ...] = ("ndcg", "mrr", "hit", "precision")
Population = Literal["all", "with_relevant"]
POPULATIONS: tuple[str, ...] = ("all", "with_relevant")


@dataclass(frozen=True, eq=False)
class Groups:
    """Contiguous groups of rows: ``offsets`` (start of each group) and ``sizes`` (all > 0).

    The row -> group index is computed once and cached (it is reused by every metric).
    """

    offsets: np.ndarray
    sizes: np.ndarray

    @property
    def n_groups(self) -> int:
        return len(self.sizes)

    @property
    def n_rows(self) -> int:
        return int(self.sizes.sum())

    def row_group(self) -> np.ndarray:
        """Group index of every row (int64, length n_rows; cached)."""
        cached = self.__dict__.get("_row_group")
        if cached is None:
            cached = np.repeat(np.arange(self.n_groups, dtype=np.int64), self.sizes)
            object.__setattr__(self, "_row_group", cached)
        return cached

    def row_offset(self) -> np.ndarray:
        """Start offset of each row's group (int64, length n_rows)."""
        return self.offsets[self.row_group()]

    @classmethod
    def from_sizes(cls, sizes: np.ndarray) -> Groups:
        sizes = np.asarray(sizes, dtype=np.int64)
        if sizes.size and sizes.min() <= 0:
            raise ValueError("every group needs at least one row")
        offsets = np.zeros(len(sizes), dtype=np.int64)
        np.cumsum(sizes[:-1], out=offsets[1:])
        return cls(offsets, sizes)

    @classmethod
    def from_sorted_keys(cls, keys: np.ndarray) -> Groups:
        """Groups from a key array whose equal values are contiguous (e.g. sorted request ids)."""
        keys = np.asarray(keys)
        n = len(keys)
        if n == 0:
            return cls(np.zeros(0, np.int64), np.zeros(0, np.int64))
        change = np.empty(n, dtype=bool)
        change[0] = True
        np.not_equal(keys[1:], keys[:-1], out=change[1:])
        offsets = np.flatnonzero(change).astype(np.int64)
        sizes = np.diff(np.append(offsets, n))
        return cls(offsets, sizes)


def _discounts(max_rank: int) -> np.ndarray:
    """``disc[r] = 1 / log2(r + 1)`` for r = 1..max_rank (index 0 unused, = 0)."""
    r = np.arange(max_rank + 1, dtype=np.float64)
    out = np.zeros(max_rank + 1)
    out[1:] = 1.0 / np.log2(r[1:] + 1.0)
    return out


def ideal_dcg(gains: np.ndarray, groups: Groups, k: int) -> np.ndarray:
    """IDCG@k per group: the group's gains sorted descending, capped at k positions."""
    gains = np.asarray(gains, dtype=np.float64)
    g = groups.row_group()
    disc = _discounts(k)
    rel = gains > 0
    if np.all((gains == 0) | (gains == 1)):
        # binary gains: IDCG = sum of the first min(R, k) discounts
        n_rel = np.bincount(g, weights=rel, minlength=groups.n_groups).astype(np.int64)
        return np.cumsum(disc)[np.minimum(n_rel, k)]
    order = np.lexsort((-gains, g))  # by group, gain descending
    pos = np.arange(len(gains), dtype=np.int64) - groups.row_offset() + 1
    in_k = pos <= k
    contrib = np.where(in_k, gains[order] * disc[np.minimum(pos, k)], 0.0)
    return np.bincount(g, weights=contrib, minlength=groups.n_groups)


@dataclass(frozen=True)
class RequestMetrics:
    """Per-request metric arrays (length n_requests) plus what they rest on."""

    k: int
    ndcg: np.ndarray          # NaN where the request has no relevant item
    mrr: np.ndarray
    hit: np.ndarray
    precision: np.ndarray
    n_relevant: np.ndarray    # relevant items of the request (any rank)
    n_candidates: np.ndarray

    @property
    def has_relevant(self) -> np.ndarray:
        return self.n_relevant > 0

    def values(self, metric: str, population: Population = "all") -> np.ndarray:
        """The per-request values of ``metric`` over ``population`` (see module docstring)."""
        v = getattr(self, metric)
        if population == "all":
            return np.nan_to_num(v, nan=0.0) if metric == "ndcg" else v
        if population == "with_relevant":
            return v[self.has_relevant]
        raise ValueError(f"unknown population {population!r}; use one of {POPULATIONS}")

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame({
            "ndcg": self.ndcg, "mrr": self.mrr, "hit": self.hit, "precision": self.precision,
            "n_relevant": self.n_relevant, "n_candidates": self.n_candidates,
        })


def ranking_metrics(ranks: np.ndarray, gains: np.ndarray, groups: Groups, k: int = 6, *,
                    precision_denominator: Literal["k", "available"] = "k") -> RequestMetrics:
    """NDCG@k, MRR@k, hit@k and precision@k of every request (see module docstring).

    ``ranks`` are 1-based, unique inside each request; ``gains`` >= 0 (NaN is treated as 0:
    filter requests without labels before calling if NaN means "unknown").
    """
    if k < 1:
        raise ValueError("k must be >= 1")
    ranks = np.asarray(ranks, dtype=np.int64)
    gains = np.asarray(gains, dtype=np.float64)
    if np.isnan(gains).any():
        gains = np.where(np.isnan(gains), 0.0, gains)
    if len(ranks) != groups.n_rows or len(gains) != groups.n_rows:
        raise ValueError("ranks, gains and groups disagree on the number of rows")
    if groups.n_groups == 0:
        empty = np.zeros(0)
        return RequestMetrics(k, empty, empty, empty, empty, np.zeros(0, np.int64),
                              np.zeros(0, np.int64))
    G = groups.n_groups
    g = groups.row_group()
    # lookup tables indexed by min(rank, k + 1): entry k + 1 (beyond the cutoff) is 0
    disc = np.append(_discounts(k), 0.0)
    inv = np.append(np.concatenate([[0.0], 1.0 / np.arange(1, k + 1)]), 0.0)
    idx = np.minimum(ranks, k + 1)
    rel = gains > 0
    dcg = np.bincount(g, weights=gains * disc[idx], minlength=G)
    idcg = ideal_dcg(gains, groups, k)
    n_rel = np.bincount(g, weights=rel, minlength=G).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ndcg = np.where(n_rel > 0, dcg / np.where(idcg > 0, idcg, 1.0), np.nan)
    rr = rel * inv[idx]  # 1/rank for relevant rows within k, else 0
    hits_k = np.bincount(g, weights=rr > 0, minlength=G)
    mrr = np.maximum.reduceat(rr, groups.offsets)  # groups are non-empty and contiguous
    hit = (hits_k > 0).astype(np.float64)
    if precision_denominator == "k":
        precision = hits_k / k
    elif precision_denominator == "available":
        precision = hits_k / np.minimum(groups.sizes, k)
    else:
        raise ValueError("precision_denominator must be 'k' or 'available'")
    return RequestMetrics(k, ndcg, mrr, hit, precision, n_rel, groups.sizes.copy())


def ranks_from_scores(scores: np.ndarray, groups: Groups, *,
                      ties: Literal["stable", "pessimistic", "optimistic"] = "stable",
                      gains: np.ndarray | None = None) -> np.ndarray:
    """1-based ranks inside each group by descending score, with an explicit tie policy.

    ``stable``: tied rows keep their row order. ``pessimistic``: tied relevant rows go last
    (a lower bound on every metric); ``optimistic``: first (an upper bound). The last two need
    ``gains``. One ``np.lexsort`` over all rows.
    """
    scores = np.asarray(scores, dtype=np.float64)
    g = groups.row_group()
    if ties == "stable":
        keys: tuple[np.ndarray, ...] = (-scores, g)
    else:
        if gains is None:
            raise ValueError(f"ties={ties!r} needs gains")
        rel = (np.nan_to_num(np.asarray(gains, dtype=np.float64)) > 0).astype(np.int8)
        if ties == "pessimistic":
            keys = (rel, -scores, g)
        elif ties == "optimistic":
            keys = (-rel, -scores, g)
        else:
            raise ValueError(f"unknown tie policy {ties!r}")
    order = np.lexsort(keys)
    ranks = np.empty(len(scores), dtype=np.int64)
    ranks[order] = np.arange(len(scores), dtype=np.int64) - groups.row_offset() + 1
    return ranks


def summarise(metrics: RequestMetrics, populations: tuple[str, ...] = POPULATIONS,
              label: str = "click") -> pd.DataFrame:
    """Means of every metric over each population: columns metric, population, label, n, mean."""
    rows = []
    for pop in populations:
        for m in METRICS:
            v = metrics.values(m, pop)  # type: ignore[arg-type]
            rows.append({"metric": f"{m}@{metrics.k}", "population": pop, "label": label,
                         "n": len(v), "mean": float(v.mean()) if len(v) else float("nan")})
    return pd.DataFrame(rows)
