"""The whispers ranker: production scoring and ordering, for one request or millions.

Five signals, each in [0, 1], are computed from ``ranking_candidates`` columns
(:data:`whispers_lab.contract.RANKING_CANDIDATES`):

=============  =================================================================================
``context``    ``context_similarity``
``recency``    ``0.5 ** (recency_hours / recency_half_life_hours)``
``frequency``  ``min(1, log1p(use_count) / log1p(frequency_cap))`` (diminishing returns)
``novelty``    ``1 - 0.5 ** (last_shown_hours / novelty_half_life_hours)``; never shown (NULL) = 1
``pinned``     ``1.0`` if pinned else ``0.0``
=============  =================================================================================

``score = sum_i w_i * signal_i`` (accumulated left to right in :data:`SIGNALS` order) and
``contribution_i = w_i * signal_i``. Inside a request, candidates are ordered by score
descending, ties by ``recency_hours`` ascending, then ``memory_id`` ascending (Unicode code
point order, i.e. Python ``str`` order). With context ranking off
(``NEXT_PUBLIC_WHISPERS_CONTEXT_RANKING = false``) the order is ``recency_hours`` ascending,
then ``memory_id``; scores are still computed and reported. The first ``max_items`` are shown.

There is one scoring code path (:func:`_signal_columns` -> :func:`_score`) and one ordering
code path (:func:`_rank_blocks`); :func:`rank_request` (one request) and :func:`rank_batch`
(replay and tuning) both go through :func:`prepare_candidates`, so they agree exactly.

How the batch ranking stays vectorised: :func:`prepare_candidates` factorises the string ids
once, groups rows by request, and lays each request out as one row of a padded 2-D block of
row indices (requests of equal size share a block; larger requests are padded to a coarse
size grid, at most 25% padding). Within each block row the indices are put in tie-break order
(``recency_hours``, then ``memory_id``) by stable row-wise sorts. Ranking then is one gather
of ``-score`` into each block and one stable row-wise ``argsort``: stability keeps the
tie-break order among equal scores. The only Python loop is over block widths (a few dozen at
most), never over rows or requests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .errors import WhispersLabError
from .weights import (
    DEFAULT_WEIGHTS,
    SIGNALS,
    Weights,
    WeightSource,
    resolve_weights,
)

#: Candidate feature columns the ranker reads (names from the ``ranking_candidates`` contract).
FEATURE_COLUMNS: tuple[str, ...] = (
    "context_similarity", "recency_hours", "use_count", "last_shown_hours", "pinned",
)
CANDIDATE_COLUMNS: tuple[str, ...] = ("memory_id", *FEATURE_COLUMNS)
CONTRIB_COLUMNS: tuple[str, ...] = tuple(f"contrib_{s}" for s in SIGNALS)
#: The production default of ``NEXT_PUBLIC_WHISPERS_MAX``.
DEFAULT_MAX_ITEMS = 6

# Requests up to this size get a block of exactly their width; larger ones are padded.
_EXACT_WIDTH_LIMIT = 64


class RankerError(WhispersLabError):
    """Candidates or ranking options are invalid. The message names the column or option."""


# ---------------------------------------------------------------------------------------------
# scoring: the one code path


def _signal_columns(
    context_similarity: np.ndarray,
    recency_hours: np.ndarray,
    use_count: np.ndarray,
    last_shown_hours: np.ndarray,
    pinned: np.ndarray,
    weights: Weights,
) -> tuple[np.ndarray, ...]:
    """The five signal columns (float64, in :data:`SIGNALS` order). The formulas live here only."""
    context = np.asarray(context_similarity, dtype=np.float64)
    recency = np.power(0.5, np.asarray(recency_hours, dtype=np.float64) / weights.recency_half_life_hours)
    frequency = np.minimum(
        1.0, np.log1p(np.asarray(use_count, dtype=np.float64)) / np.log1p(weights.frequency_cap)
    )
    last = np.asarray(last_shown_hours, dtype=np.float64)
    never = np.isnan(last)
    novelty = 1.0 - np.power(0.5, np.where(never, 0.0, last) / weights.novelty_half_life_hours)
    novelty[never] = 1.0
    pin = np.asarray(pinned).astype(np.float64)
    return context, recency, frequency, novelty, pin


def signal_matrix(
    context_similarity: Any,
    recency_hours: Any,
    use_count: Any,
    last_shown_hours: Any,
    pinned: Any,
    weights: Weights = DEFAULT_WEIGHTS,
) -> np.ndarray:
    """The ``(n, 5)`` float64 matrix of signals, columns in :data:`SIGNALS` order.

    Inputs are equal-length 1-D arrays (``last_shown_hours`` NaN = never shown). Only the
    signal parameters of ``weights`` (half-lives, frequency cap) matter here.
    """
    cols = [np.ravel(np.asarray(c)) for c in
            (context_similarity, recency_hours, use_count, last_shown_hours, pinned)]
    n = len(cols[0])
    if any(len(c) != n for c in cols):
        raise RankerError(f"signal_matrix: inputs must have equal lengths, got {[len(c) for c in cols]}")
    return np.column_stack(_signal_columns(*cols, weights)) if n else np.empty((0, len(SIGNALS)))


def _score(
    features: tuple[np.ndarray, ...], weights: Weights, contributions: bool
) -> tuple[np.ndarray, dict[str, np.ndarray] | None]:
    """Score (and optionally the per-signal contributions) of every candidate."""
    signals = _signal_columns(*features, weights)
    score: np.ndarray | None = None
    contribs: dict[str, np.ndarray] | None = {} if contributions else None
    for name, sig in zip(SIGNALS, signals, strict=True):
        part = getattr(weights, name) * sig
        if contribs is not None:
            contribs[f"contrib_{name}"] = part
        if score is None:
            score = part.copy() if contribs is not None else part
        else:
            score += part
    assert score is not None
    # -0.0 cannot occur (all terms >= 0), but make the sort key canonical anyway.
    score += 0.0
    return score, contribs


# ---------------------------------------------------------------------------------------------
# ordering: segmented sorts over padded blocks


def _block_width(sizes: np.ndarray) -> np.ndarray:
    """Block width for each group size: exact up to 64, else rounded up to 2^k * {1, 1.25, 1.5, 1.75}."""
    sizes = np.asarray(sizes, dtype=np.int64)
    widths = sizes.copy()
    big = sizes > _EXACT_WIDTH_LIMIT
    if big.any():
        s = sizes[big]
        k = np.floor(np.log2(s)).astype(np.int64)
        step = np.left_shift(np.int64(1), k - 2)
        widths[big] = -(-s // step) * step
    return widths


def _group_blocks(codes: np.ndarray, n_groups: int) -> tuple[np.ndarray, ...]:
    """Padded blocks of row indices, one block row per group, rows in input order.

    ``codes`` are dense group codes in ``[0, n_groups)``. Padding entries hold ``len(codes)``.
    """
    n = len(codes)
    if n == 0:
        return ()
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes, minlength=n_groups)
    starts = np.cumsum(sizes) - sizes
    widths = _block_width(sizes)
    blocks = []
    for width in np.unique(widths[sizes > 0]):
        gids = np.flatnonzero((widths == width) & (sizes > 0))
        cols = np.arange(width, dtype=np.int64)
        pos = starts[gids, None] + cols
        valid = cols < sizes[gids, None]
        block = np.where(valid, order[np.minimum(pos, n - 1)], n)
        blocks.append(block.astype(np.intp, copy=False))
    return tuple(blocks)


def _stable_sort_blocks(blocks: Sequence[np.ndarray], key_ext: np.ndarray) -> tuple[np.ndarray, ...]:
    """Reorder every block row by ``key_ext`` ascending, stably.

    ``key_ext`` has one entry per row plus a last entry for padding that is >= every real key,
    so padding stays at the end of each block row (it starts there and stability keeps it).
    """
    out = []
    for block in blocks:
        perm = np.argsort(key_ext[block], axis=1, kind="stable")
        out.append(np.take_along_axis(block, perm, axis=1))
    return tuple(out)


def _positions(blocks: Sequence[np.ndarray], n: int) -> np.ndarray:
    """1-based position of every row inside its block row (its rank for that block order)."""
    ranks = np.zeros(n + 1, dtype=np.int64)
    for block in blocks:
        ranks[block] = np.arange(1, block.shape[1] + 1, dtype=np.int64)
    return ranks[:n]


def _padded(values: np.ndarray, pad: Any) -> np.ndarray:
    out = np.empty(len(values) + 1, dtype=values.dtype)
    out[:-1] = values
    out[-1] = pad
    return out


def _sort_key(values: Any, descending: bool, name: str) -> np.ndarray:
    """An ascending sort key with a padding value appended that is >= every real key."""
    arr = np.asarray(values)
    if arr.dtype == bool:
        arr = arr.astype(np.int8)
    if arr.dtype.kind == "f":
        if np.isnan(arr).any():
            raise RankerError(f"rank_within_groups: {name} contains NaN")
        arr = arr.astype(np.float64, copy=False)
        return _padded(-arr if descending else arr, np.inf)
    if arr.dtype.kind in "iu":
        key = np.invert(arr) if descending else arr  # ~x is strictly decreasing, never overflows
        return _padded(key, np.iinfo(key.dtype).max)
    raise RankerError(f"rank_within_groups: {name} must be numeric or boolean, got dtype {arr.dtype}")


def _rank_blocks(blocks: Sequence[np.ndarray], score: np.ndarray) -> np.ndarray:
    """Ranks (1-based) by score descending; blocks are already in tie-break order."""
    return _positions(_stable_sort_blocks(blocks, _padded(-score, np.inf)), len(score))


def rank_within_groups(group_codes: Any, primary_desc: Any, *tiebreak_asc: Any) -> np.ndarray:
    """1-based rank of every element within its group: ``primary_desc`` descending, then each
    ``tiebreak_asc`` ascending in turn; remaining ties keep input order.

    Array-level building block (numeric/boolean keys, NaN rejected); vectorised like
    :func:`rank_batch`. Give a final unique tie-break for an order independent of input order.
    """
    _, codes = np.unique(np.asarray(group_codes), return_inverse=True)
    codes = codes.ravel()
    n = len(codes)
    keys = [np.ravel(np.asarray(primary_desc)), *(np.ravel(np.asarray(t)) for t in tiebreak_asc)]
    for i, k in enumerate(keys):
        if len(k) != n:
            raise RankerError(f"rank_within_groups: key {i} has length {len(k)}, groups have {n}")
    if n == 0:
        return np.empty(0, dtype=np.int64)
    blocks = _group_blocks(codes, int(codes.max()) + 1)
    for i, t in reversed(list(enumerate(keys[1:], start=1))):
        blocks = _stable_sort_blocks(blocks, _sort_key(t, False, f"tiebreak {i}"))
    blocks = _stable_sort_blocks(blocks, _sort_key(keys[0], True, "primary_desc"))
    return _positions(blocks, n)


# ---------------------------------------------------------------------------------------------
# candidates


@dataclass(frozen=True, eq=False)
class CandidateBatch:
    """Candidates prepared for (repeated) ranking: numeric arrays only, string work done once.

    Arrays are aligned with the input rows (``index`` is the input frame's index).
    ``request_codes`` index ``request_ids``; ``memory_key`` orders ``memory_id`` within a
    request like Python ``str`` order; ``tiebreak_rank`` is each candidate's 1-based position
    in its request by (``recency_hours``, ``memory_id``), i.e. its rank with context ranking
    off; ``blocks`` are padded index blocks (one row per request) already in that order.
    """

    index: pd.Index
    request_codes: np.ndarray
    request_ids: np.ndarray
    memory_key: np.ndarray
    context_similarity: np.ndarray
    recency_hours: np.ndarray
    use_count: np.ndarray
    last_shown_hours: np.ndarray
    pinned: np.ndarray
    tiebreak_rank: np.ndarray
    blocks: tuple[np.ndarray, ...]

    @property
    def n_rows(self) -> int:
        return len(self.request_codes)

    @property
    def n_requests(self) -> int:
        return len(self.request_ids)

    @property
    def features(self) -> tuple[np.ndarray, ...]:
        """The feature arrays in :data:`FEATURE_COLUMNS` order (the scorer's input)."""
        return (self.context_similarity, self.recency_hours, self.use_count,
                self.last_shown_hours, self.pinned)


def _bad(frame: pd.DataFrame, mask: np.ndarray, column: str, expected: str) -> RankerError:
    where = np.flatnonzero(mask)
    first = where[0]
    value = frame[column].iloc[first]
    return RankerError(
        f"column {column!r} must be {expected}: {len(where)} bad row(s), "
        f"first at row {first} (index {frame.index[first]!r}) = {value!r}"
    )


def _float_column(frame: pd.DataFrame, column: str) -> np.ndarray:
    series = frame[column]
    if pd.api.types.is_bool_dtype(series.dtype) or not (
        pd.api.types.is_numeric_dtype(series.dtype) or series.isna().all()
    ):
        raise RankerError(f"column {column!r} must be numeric, got dtype {series.dtype}")
    return np.ascontiguousarray(series.to_numpy(dtype=np.float64, na_value=np.nan))


def _check_columns(frame: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise RankerError(
            f"candidates lack column(s) {', '.join(repr(c) for c in missing)} "
            f"(need {', '.join(columns)})"
        )


def _string_codes(series: pd.Series, column: str, sort: bool) -> tuple[np.ndarray, pd.Index]:
    """Integer codes of a string id column (``sort=True``: codes follow Python ``str`` order)."""
    if series.isna().any():
        raise _bad(series.to_frame(), series.isna().to_numpy(), column, "non-NULL")
    if not (pd.api.types.is_string_dtype(series.dtype) or series.dtype == object):
        series = series.astype(str)
    elif series.dtype == object and not series.map(type).eq(str).all():
        series = series.astype(str)
    codes, uniques = pd.factorize(series, sort=sort)
    return np.asarray(codes, dtype=np.int64), pd.Index(uniques)


def prepare_candidates(frame: pd.DataFrame, request_col: str | None = "request_id") -> CandidateBatch:
    """Validate candidates and precompute everything rankings share (once per data set).

    ``frame`` has the ``ranking_candidates`` columns ``memory_id``, ``context_similarity``,
    ``recency_hours``, ``use_count``, ``last_shown_hours`` (NULL = never shown), ``pinned``, and
    ``request_col`` (None: all rows are one request). Values outside the contract domains,
    NULL ids and duplicate (request, memory_id) pairs raise :class:`RankerError`.
    """
    if not isinstance(frame, pd.DataFrame):
        raise RankerError(f"candidates must be a pandas DataFrame, got {type(frame).__name__}")
    needed = (*CANDIDATE_COLUMNS, request_col) if request_col is not None else CANDIDATE_COLUMNS
    _check_columns(frame, needed)
    n = len(frame)

    ctx = _float_column(frame, "context_similarity")
    bad = ~((ctx >= 0.0) & (ctx <= 1.0))  # also catches NaN
    if bad.any():
        raise _bad(frame, bad, "context_similarity", "in [0, 1] and not NULL")
    rec = _float_column(frame, "recency_hours")
    bad = ~((rec >= 0.0) & np.isfinite(rec))
    if bad.any():
        raise _bad(frame, bad, "recency_hours", "finite, >= 0 and not NULL")
    use = _float_column(frame, "use_count")
    bad = ~((use >= 0.0) & np.isfinite(use))
    if bad.any():
        raise _bad(frame, bad, "use_count", ">= 0 and not NULL")
    last = _float_column(frame, "last_shown_hours")
    bad = ~(np.isnan(last) | ((last >= 0.0) & np.isfinite(last)))
    if bad.any():
        raise _bad(frame, bad, "last_shown_hours", "finite and >= 0, or NULL (never shown)")
    pin_s = frame["pinned"]
    if pin_s.isna().any():
        raise _bad(frame, pin_s.isna().to_numpy(), "pinned", "a boolean, not NULL")
    if pd.api.types.is_bool_dtype(pin_s.dtype):
        pin = np.ascontiguousarray(pin_s.to_numpy(dtype=bool))
    elif pd.api.types.is_numeric_dtype(pin_s.dtype):
        raw = pin_s.to_numpy(dtype=np.float64)
        bad = ~((raw == 0.0) | (raw == 1.0))
        if bad.any():
            raise _bad(frame, bad, "pinned", "a boolean (or 0/1)")
        pin = raw == 1.0
    elif n == 0:
        pin = np.zeros(0, dtype=bool)
    else:
        raise RankerError(f"column 'pinned' must be boolean, got dtype {pin_s.dtype}")

    if request_col is None:
        req_codes = np.zeros(n, dtype=np.int64)
        req_ids = np.array([None], dtype=object) if n else np.array([], dtype=object)
    else:
        req_codes, uniques = _string_codes(frame[request_col], request_col, sort=False)
        req_ids = np.asarray(uniques, dtype=object)
    mem_key, _ = _string_codes(frame["memory_id"], "memory_id", sort=True)

    # Tie-break order inside each request: memory_id, then (stably) recency_hours.
    blocks = _group_blocks(req_codes, len(req_ids))
    blocks = _stable_sort_blocks(blocks, _padded(mem_key, np.iinfo(np.int64).max))
    for block in blocks:
        if block.shape[1] > 1:
            keys = mem_key[np.minimum(block, max(n - 1, 0))]
            real = block[:, 1:] < n
            dup = real & (keys[:, 1:] == keys[:, :-1])
            if dup.any():
                r, c = np.argwhere(dup)[0]
                row = int(block[r, c + 1])
                rid = req_ids[req_codes[row]] if request_col is not None else "<single request>"
                raise RankerError(
                    f"duplicate candidate (request {rid!r}, memory_id "
                    f"{frame['memory_id'].iloc[row]!r}): (request_id, memory_id) must be unique"
                )
    blocks = _stable_sort_blocks(blocks, _padded(rec, np.inf))

    return CandidateBatch(
        index=frame.index,
        request_codes=req_codes,
        request_ids=req_ids,
        memory_key=mem_key,
        context_similarity=ctx,
        recency_hours=rec,
        use_count=use,
        last_shown_hours=last,
        pinned=pin,
        tiebreak_rank=_positions(blocks, n),
        blocks=blocks,
    )


def _check_max_items(max_items: Any) -> int:
    if isinstance(max_items, (bool, np.bool_)) or not isinstance(max_items, (int, np.integer)) \
            or max_items < 1:
        raise RankerError(f"max_items must be an integer >= 1, got {max_items!r}")
    return int(max_items)


def _rank_core(
    batch: CandidateBatch, weights: Weights, context_ranking: bool, contributions: bool
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray] | None]:
    """Scores, ranks and contributions of a prepared batch: shared by both entry points."""
    score, contribs = _score(batch.features, weights, contributions)
    ranks = _rank_blocks(batch.blocks, score) if context_ranking else batch.tiebreak_rank
    return score, ranks, contribs


# ---------------------------------------------------------------------------------------------
# entry points


@dataclass(frozen=True, eq=False)
class RankResult:
    """The ranking of one request.

    ``items``: the shown memories in order, columns ``memory_id``, ``rank`` (1..k), ``score``
    and one ``contrib_<signal>`` column per signal. ``weight_source`` is ``"user"`` or
    ``"fallback"`` (see :func:`whispers_lab.weights.resolve_weights`); ``weights_version`` is
    the version label of the weights used, ``weights`` the weights themselves.
    """

    items: pd.DataFrame
    weight_source: WeightSource
    weights_version: str
    weights: Weights


def _candidate_frame(candidates: pd.DataFrame | Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    if isinstance(candidates, pd.DataFrame):
        return candidates
    if isinstance(candidates, (str, bytes)) or not isinstance(candidates, Sequence):
        raise RankerError(
            f"candidates must be a DataFrame or a list of dicts, got {type(candidates).__name__}"
        )
    if not all(isinstance(c, Mapping) for c in candidates):
        raise RankerError("candidates must be a DataFrame or a list of dicts (found a non-dict item)")
    return pd.DataFrame(list(candidates))


def rank_request(
    candidates: pd.DataFrame | Sequence[Mapping[str, Any]],
    weights: Weights | Mapping[str, Any] | str | None = None,
    *,
    max_items: int = DEFAULT_MAX_ITEMS,
    context_ranking: bool = True,
) -> RankResult:
    """Rank the candidates of one request as production does and keep the first ``max_items``.

    ``weights`` is the user's stored weights in any form :func:`resolve_weights` takes (None,
    invalid or incomplete -> the defaults, reported as ``weight_source="fallback"``).
    A ``request_id`` column, if present, must hold a single value.
    """
    max_items = _check_max_items(max_items)
    used, source = resolve_weights(weights)
    frame = _candidate_frame(candidates)
    empty_items = pd.DataFrame({
        "memory_id": pd.Series([], dtype="str"),
        "rank": pd.Series([], dtype=np.int64),
        "score": pd.Series([], dtype=np.float64),
        **{c: pd.Series([], dtype=np.float64) for c in CONTRIB_COLUMNS},
    })
    if len(frame) == 0:
        return RankResult(empty_items, source, used.version, used)
    if "request_id" in frame.columns and frame["request_id"].nunique(dropna=False) > 1:
        raise RankerError(
            "rank_request ranks one request, but the candidates hold "
            f"{frame['request_id'].nunique(dropna=False)} request_id values; use rank_batch"
        )
    batch = prepare_candidates(frame, request_col=None)
    score, ranks, contribs = _rank_core(batch, used, bool(context_ranking), contributions=True)
    assert contribs is not None
    keep = np.flatnonzero(ranks <= max_items)
    keep = keep[np.argsort(ranks[keep])]
    items = pd.DataFrame({
        "memory_id": frame["memory_id"].iloc[keep].to_numpy(),
        "rank": ranks[keep],
        "score": score[keep],
        **{c: contribs[c][keep] for c in CONTRIB_COLUMNS},
    })
    return RankResult(items, source, used.version, used)


def rank_batch(
    batch_or_frame: CandidateBatch | pd.DataFrame,
    weights: Weights,
    *,
    max_items: int = DEFAULT_MAX_ITEMS,
    context_ranking: bool = True,
    contributions: bool = False,
) -> pd.DataFrame:
    """Rank every request of a batch with one set of weights (replay, tuning).

    Returns a frame aligned with the input rows (same order, the input's index): ``score``,
    ``rank`` (1-based within the request, over all its candidates), ``selected``
    (``rank <= max_items``) and, with ``contributions=True``, the ``contrib_<signal>`` columns.
    Pass a :class:`CandidateBatch` from :func:`prepare_candidates` to rank the same candidates
    repeatedly; a DataFrame is prepared on the fly (``request_id`` column).
    """
    max_items = _check_max_items(max_items)
    if not isinstance(weights, Weights):
        raise RankerError(
            f"rank_batch needs a Weights, got {type(weights).__name__}; "
            "resolve stored weights first with whispers_lab.weights.resolve_weights"
        )
    if isinstance(batch_or_frame, pd.DataFrame):
        batch = prepare_candidates(batch_or_frame)
    elif isinstance(batch_or_frame, CandidateBatch):
        batch = batch_or_frame
    else:
        raise RankerError(
            f"rank_batch needs a CandidateBatch or a DataFrame, got {type(batch_or_frame).__name__}"
        )
    score, ranks, contribs = _rank_core(batch, weights, bool(context_ranking), contributions)
    out: dict[str, np.ndarray] = {"score": score, "rank": ranks, "selected": ranks <= max_items}
    if contribs is not None:
        out.update(contribs)
    return pd.DataFrame(out, index=batch.index, copy=False)


__all__ = [
    "CANDIDATE_COLUMNS",
    "CONTRIB_COLUMNS",
    "DEFAULT_MAX_ITEMS",
    "FEATURE_COLUMNS",
    "SIGNALS",
    "CandidateBatch",
    "RankResult",
    "RankerError",
    "prepare_candidates",
    "rank_batch",
    "rank_request",
    "rank_within_groups",
    "signal_matrix",
]
