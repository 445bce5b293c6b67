"""The true click model of the simulated world (known here, hidden from the analysis).

A shown memory at position ``k`` is clicked with probability

    P(click) = examination(k) * true_relevance(features) * scale

(a position-based model). ``examination`` decays with position; ``true_relevance`` is a
logistic function of the candidate features that weighs them differently from
``DEFAULT_WEIGHTS`` -- it values novelty and use frequency more, recency much less, and has a
context x novelty interaction -- so tuning the ranker's weights can find better ones, but no
linear weight set matches it exactly. ``scale`` is 1 in the healthy world (``ctr_drop`` lowers it).

:func:`expected_ctr` / :func:`expected_clicks` give the exact expected clicks if some weights
ranked a set of candidates (no sampling), for checking off-policy estimators.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..ranker import prepare_candidates, rank_batch
from ..weights import Weights

#: Examination probability of positions 1..6 (position-based model).
EXAMINATION: tuple[float, ...] = (1.0, 0.75, 0.55, 0.42, 0.33, 0.27)

#: Coefficients of the true relevance logit (features defined in :func:`relevance_features`).
RELEVANCE_COEF: dict[str, float] = {
    "intercept": -4.0,
    "context": 2.4,
    "recency": 0.3,
    "frequency": 1.6,
    "novelty": 1.5,
    "pinned": 0.7,
    "context_x_novelty": 1.3,
}
#: Shape constants of the true features (deliberately not the ranker's half-lives).
RECENCY_SCALE_HOURS = 240.0      # recency feature exp(-recency_hours / 240)
NOVELTY_SCALE_HOURS = 60.0       # novelty feature 1 - exp(-last_shown_hours / 60), never shown = 1
FREQUENCY_CAP = 20.0             # frequency feature min(1, log1p(use_count) / log1p(20))


def examination(positions: Any) -> np.ndarray:
    """Examination probability of 1-based positions (0 beyond the last listed position)."""
    pos = np.asarray(positions, dtype=np.int64)
    table = np.zeros(len(EXAMINATION) + 2)
    table[1: len(EXAMINATION) + 1] = EXAMINATION
    return table[np.clip(pos, 0, len(EXAMINATION) + 1)]


def relevance_features(context_similarity: Any, recency_hours: Any, use_count: Any,
                       last_shown_hours: Any, pinned: Any) -> dict[str, np.ndarray]:
    """The true model's features, each in [0, 1] (``last_shown_hours`` NaN = never shown)."""
    ctx = np.asarray(context_similarity, dtype=np.float64)
    rec = np.exp(-np.asarray(recency_hours, dtype=np.float64) / RECENCY_SCALE_HOURS)
    freq = np.minimum(1.0, np.log1p(np.asarray(use_count, dtype=np.float64)) / np.log1p(FREQUENCY_CAP))
    last = np.asarray(last_shown_hours, dtype=np.float64)
    nov = np.where(np.isnan(last), 1.0, 1.0 - np.exp(-np.nan_to_num(last) / NOVELTY_SCALE_HOURS))
    pin = np.asarray(pinned).astype(np.float64)
    return {"context": ctx, "recency": rec, "frequency": freq, "novelty": nov, "pinned": pin}


def relevance_arrays(context_similarity: Any, recency_hours: Any, use_count: Any,
                     last_shown_hours: Any, pinned: Any) -> np.ndarray:
    """True relevance (click probability when examined) from feature arrays."""
    f = relevance_features(context_similarity, recency_hours, use_count, last_shown_hours, pinned)
    c = RELEVANCE_COEF
    z = (c["intercept"] + c["context"] * f["context"] + c["recency"] * f["recency"]
         + c["frequency"] * f["frequency"] + c["novelty"] * f["novelty"] + c["pinned"] * f["pinned"]
         + c["context_x_novelty"] * f["context"] * f["novelty"])
    return 1.0 / (1.0 + np.exp(-z))


def true_relevance(features: pd.DataFrame) -> np.ndarray:
    """True relevance of every row of a frame with the ``ranking_candidates`` feature columns."""
    last = features["last_shown_hours"].to_numpy(dtype=np.float64, na_value=np.nan)
    return relevance_arrays(features["context_similarity"].to_numpy(dtype=np.float64),
                            features["recency_hours"].to_numpy(dtype=np.float64),
                            features["use_count"].to_numpy(dtype=np.float64),
                            last, features["pinned"].to_numpy(dtype=bool))


def click_probability(positions: Any, relevance: Any, scale: Any = 1.0) -> np.ndarray:
    return np.clip(examination(positions) * np.asarray(relevance) * scale, 0.0, 1.0)


def expected_clicks(candidates: pd.DataFrame, weights: Weights, max_items: int = 6, *,
                    context_ranking: bool = True, scale: float = 1.0) -> dict[str, float]:
    """Exact expected clicks if ``weights`` ranked these candidates (one request per
    ``request_id``) and the top ``max_items`` were shown.

    Returns ``clicks`` (expected total), ``impressions`` (shown memories), ``requests``,
    ``per_impression`` (expected CTR, clicks / impressions) and ``per_request``.
    Deterministic: no sampling (the ranker is deterministic, ties broken by its rule).
    """
    if len(candidates) == 0:
        return {"clicks": 0.0, "impressions": 0, "requests": 0, "per_impression": float("nan"),
                "per_request": float("nan")}
    ranked = rank_batch(prepare_candidates(candidates), weights, max_items=max_items,
                        context_ranking=context_ranking)
    selected = ranked["selected"].to_numpy(dtype=bool)
    rel = true_relevance(candidates)[selected]
    p = click_probability(ranked["rank"].to_numpy()[selected], rel, scale)
    clicks = float(p.sum())
    impressions = int(selected.sum())
    requests = int(candidates["request_id"].nunique())
    return {"clicks": clicks, "impressions": impressions, "requests": requests,
            "per_impression": clicks / impressions if impressions else float("nan"),
            "per_request": clicks / requests}


def expected_ctr(candidates: pd.DataFrame, weights: Weights, max_items: int = 6, *,
                 per: str = "impression", context_ranking: bool = True, scale: float = 1.0) -> float:
    """Expected clicks per impression (``per="impression"``, default) or per request
    (``per="request"``) if ``weights`` ranked ``candidates``; see :func:`expected_clicks`."""
    if per not in ("impression", "request"):
        raise ValueError(f"per must be 'impression' or 'request', got {per!r}")
    out = expected_clicks(candidates, weights, max_items, context_ranking=context_ranking,
                          scale=scale)
    return out["per_impression"] if per == "impression" else out["per_request"]


def model_description() -> dict[str, Any]:
    """The click model's parameters, as recorded in the truth file."""
    return {
        "kind": "position_based",
        "examination": list(EXAMINATION),
        "relevance": "logistic",
        "coefficients": dict(RELEVANCE_COEF),
        "features": {
            "context": "context_similarity",
            "recency": f"exp(-recency_hours / {RECENCY_SCALE_HOURS:g})",
            "frequency": f"min(1, log1p(use_count) / log1p({FREQUENCY_CAP:g}))",
            "novelty": f"1 - exp(-last_shown_hours / {NOVELTY_SCALE_HOURS:g}); never shown = 1",
            "pinned": "1 if pinned else 0",
            "context_x_novelty": "context * novelty",
        },
        "click_probability": "examination(shown_position) * relevance * scale",
    }
