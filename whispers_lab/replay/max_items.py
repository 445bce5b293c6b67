"""The maxItems what-if: clicks gained by showing more than six whispers, from the logged slates.

Raising ``NEXT_PUBLIC_WHISPERS_MAX`` from 6 to K keeps the ranking (the ranker orders every
candidate; only the cut moves), so the first six positions stay as they are and the gain is what
the memories ranked 7..K would get at positions 7..K. The log never showed a 7th whisper, so two
things are estimated separately, under the position-based click model the replay's off-policy
estimators assume (a click depends on the memory and its position: ``examination(position) x
relevance``):

1. **How clickable the memories ranked 7..K are**, had they been shown at position 6: the
   logger's randomised requests show memories of every rank at positions 1..6, so a
   self-normalised independent-IPS estimate (the replay's ``sniips`` weights,
   ``1[memory of rank k at position j] / propensity``) of clicks on the rank-k memory at position
   j is ``examination(j) x relevance_k``; dividing by ``e_j = examination(j) / examination(6)``
   puts every position on position 6's scale and pools them.
2. **How much less a 7th..Kth position is looked at**: ``e_j`` is measured from the randomised
   requests, where memories are in random order so the CTR at position j is proportional to
   ``examination(j)``; the decay is fitted as ``log e_j = a + b (j - 6)`` and extrapolated
   (``examination(k) = examination(6) x exp(b (k - 6))``). Whether that holds past position 6
   cannot be checked from the log, so two other readings are reported: the upper bound (no
   further decay: every extra position is looked at as much as position 6) and the lower bound
   0 (nobody scrolls past six).

Clicks gained per request at K = ``sum over k = 7..K of share of requests with >= k candidates x
examination(6) relevance_k x decay^(k - 6)``. Every figure is a ratio of per-request sums, so one
Poisson bootstrap over users (:func:`whispers_lab.replay.uncertainty.interval`) gives its
interval, the decay's uncertainty included. See ``docs/post-rollout.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .engine import ReplayData, logged_ranks
from .ope import usable_requests
from .uncertainty import Combine, Interval, interval

#: The settings the what-if compares (NEXT_PUBLIC_WHISPERS_MAX today: 6).
DEFAULT_LEVELS: tuple[int, ...] = (6, 8, 10)


@dataclass(frozen=True, eq=False)
class MaxItemsParts:
    """Per-request (per-user after clustering) additive parts and how to read them.

    Columns: ``[1, logged clicks, randomised impressions x L, randomised clicks x L,
    then for each extra rank k = L+1..K_max: reach_k, sum_j S_kj / (unscaled), W_kj x L ...]``;
    use :meth:`combine` to turn column sums into figures."""

    parts: np.ndarray
    L: int
    k_max: int
    users: np.ndarray

    def _split(self, s: np.ndarray) -> tuple[np.ndarray, ...]:
        L, ks = self.L, self.k_max - self.L
        n, clicks = s[..., 0], s[..., 1]
        imp = s[..., 2:2 + L]
        clk = s[..., 2 + L:2 + 2 * L]
        base = 2 + 2 * L
        reach = s[..., base:base + ks]
        S = s[..., base + ks:base + ks + ks * L].reshape(*s.shape[:-1], ks, L)
        W = s[..., base + ks + ks * L:base + ks + 2 * ks * L].reshape(*s.shape[:-1], ks, L)
        return n, clicks, imp, clk, reach, S, W

    def exam_ratios(self, s: np.ndarray) -> np.ndarray:
        """``e_j = examination(j) / examination(L)`` (..., L) from the randomised requests."""
        _, _, imp, clk, *_ = self._split(s)
        with np.errstate(invalid="ignore", divide="ignore"):
            ctr = clk / imp
            return ctr / ctr[..., -1:]

    def decay(self, s: np.ndarray) -> np.ndarray:
        """Per-position examination decay ``exp(b)`` of the log-linear fit of ``e_j``."""
        e = self.exam_ratios(s)
        x = np.arange(1, self.L + 1) - self.L
        with np.errstate(invalid="ignore", divide="ignore"):
            y = np.log(e)
        ok = np.isfinite(y)
        # least-squares slope per replicate, ignoring positions without clicks
        xm = np.where(ok, x, 0.0)
        cnt = ok.sum(axis=-1)
        mx = xm.sum(axis=-1) / np.maximum(cnt, 1)
        ym = np.where(ok, y, 0.0).sum(axis=-1) / np.maximum(cnt, 1)
        dx = np.where(ok, x - mx[..., None], 0.0)
        dy = np.where(ok, y - ym[..., None], 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            b = (dx * dy).sum(axis=-1) / (dx * dx).sum(axis=-1)
        return np.where(cnt >= 2, np.minimum(np.exp(b), 1.0), np.nan)

    def rank_values(self, s: np.ndarray) -> np.ndarray:
        """``share with >= k candidates x examination(L) relevance_k`` per extra rank (..., ks)."""
        n, _, _, _, reach, S, W = self._split(s)
        e = self.exam_ratios(s)
        with np.errstate(invalid="ignore", divide="ignore"):
            pooled = np.where(e[..., None, :] > 0, S / e[..., None, :], 0.0).sum(axis=-1) \
                / W.sum(axis=-1)
            return np.where(reach > 0, pooled * reach / n[..., None], 0.0)

    def gain(self, k: int, reading: str = "extrapolated") -> Combine:
        """Combine: clicks gained per request at ``max_items = k`` (``reading``:
        ``extrapolated`` decay, ``upper`` no decay past L); ``relative`` variants divide by the
        logged clicks per request."""
        def combine(s: np.ndarray) -> np.ndarray:
            v = self.rank_values(s)[..., : max(0, k - self.L)]
            if reading == "upper":
                return v.sum(axis=-1)
            d = self.decay(s)[..., None]
            factor = d ** np.arange(1, v.shape[-1] + 1)
            return (v * factor).sum(axis=-1)
        return combine

    def relative(self, k: int, reading: str = "extrapolated") -> Combine:
        absolute = self.gain(k, reading)

        def combine(s: np.ndarray) -> np.ndarray:
            _, clicks, *_ = self._split(s)
            return absolute(s) / (clicks / s[..., 0])
        return combine


def max_items_parts(data: ReplayData, k_max: int = 10) -> MaxItemsParts:
    """The parts of :class:`MaxItemsParts` from a prepared replay (usable requests only:
    a shown slate and every propensity)."""
    log = data.log
    L = log.L
    if k_max <= L:
        raise ValueError(f"k_max must exceed the logged slate length {L}, got {k_max}")
    keep = usable_requests(log)
    ranks = logged_ranks(data)
    filled = log.filled[keep]
    rows = np.where(filled, log.row_at[keep], 0)
    rank_at = np.where(filled, ranks[rows], 0)
    reward = log.reward[keep]
    p = np.where(filled, log.pscore[keep], np.inf)
    positions = np.arange(1, L + 1)[None, :]
    randomised = np.any(filled & (rank_at != positions), axis=1)
    imp = (filled & randomised[:, None]).astype(np.float64)
    clk = reward * randomised[:, None]
    ks = np.arange(L + 1, k_max + 1)
    match = (rank_at[:, None, :] == ks[None, :, None]) & filled[:, None, :]
    S = np.where(match, reward[:, None, :] / p[:, None, :], 0.0)
    W = np.where(match, 1.0 / p[:, None, :], 0.0)
    n_cand = log.n_candidates[keep]
    reach = (n_cand[:, None] >= ks[None, :]).astype(np.float64)
    n = int(keep.sum())
    parts = np.hstack([np.ones((n, 1)), reward.sum(axis=1, keepdims=True), imp, clk, reach,
                       S.reshape(n, -1), W.reshape(n, -1)])
    return MaxItemsParts(parts, L, k_max, data.users[keep])


@dataclass(frozen=True)
class WhatIf:
    """The clicks side of the what-if, one row per ``max_items`` level."""

    table: pd.DataFrame
    exam_ratios: np.ndarray
    decay: Interval
    logged_clicks_per_request: float
    requests: int
    randomised_requests: int


def clicks_what_if(data: ReplayData, levels: Sequence[int] = DEFAULT_LEVELS, *,
                   n_boot: int = 500, seed: int = 0) -> WhatIf:
    """Clicks gained per request (and relative to today's clicks) at each ``max_items`` level,
    with bootstrap intervals over users, for the extrapolated decay and the no-decay upper
    bound."""
    L = data.log.L
    k_max = max(max(levels), L + 1)
    mp = max_items_parts(data, k_max)
    rows = []
    for k in levels:
        if k <= L:
            rows.append({"max_items": k, "reading": "today", "clicks_gained": 0.0,
                         "ci_low": 0.0, "ci_high": 0.0, "relative_gain": 0.0,
                         "relative_ci_low": 0.0, "relative_ci_high": 0.0})
            continue
        for reading in ("extrapolated", "upper"):
            a = interval(mp.parts, mp.gain(k, reading), n_boot=n_boot, seed=seed,
                         clusters=mp.users)
            r = interval(mp.parts, mp.relative(k, reading), n_boot=n_boot, seed=seed,
                         clusters=mp.users)
            rows.append({"max_items": k, "reading": reading, "clicks_gained": a.estimate,
                         "ci_low": a.ci_low, "ci_high": a.ci_high, "relative_gain": r.estimate,
                         "relative_ci_low": r.ci_low, "relative_ci_high": r.ci_high})
    total = mp.parts.sum(axis=0)
    decay = interval(mp.parts, mp.decay, n_boot=n_boot, seed=seed, clusters=mp.users)
    randomised = int((mp.parts[:, 2:2 + L].sum(axis=1) > 0).sum())
    return WhatIf(pd.DataFrame(rows), mp.exam_ratios(total), decay,
                  float(total[1] / total[0]), int(total[0]), randomised)
