"""The true click model and its exact expectations, checked against the logged data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from whispers_lab.ranker import rank_batch
from whispers_lab.simulate import ModelParams
from whispers_lab.simulate.clicks import (
    EXAMINATION,
    examination,
    expected_clicks,
    expected_ctr,
    relevance_arrays,
    true_relevance,
)
from whispers_lab.weights import DEFAULT_WEIGHTS, weights_from_vector

TUNED = weights_from_vector([0.4, 0.05, 0.3, 0.3, 0.15], version="test-tuned")


def test_examination_decays_and_is_zero_beyond_six():
    assert examination([1, 2, 3, 4, 5, 6]).tolist() == list(EXAMINATION)
    assert np.all(np.diff(EXAMINATION) < 0)
    assert examination([0, 7, 99]).tolist() == [0.0, 0.0, 0.0]


def test_true_relevance_prefers_novelty_and_frequency_over_recency():
    base = dict(context_similarity=0.5, recency_hours=24.0, use_count=2, last_shown_hours=np.nan,
                pinned=False)
    r0 = relevance_arrays(**base)
    assert 0 < r0 < 1
    assert relevance_arrays(**{**base, "last_shown_hours": 1.0}) < r0       # seen an hour ago
    assert relevance_arrays(**{**base, "use_count": 20}) > r0
    fresh = relevance_arrays(**{**base, "recency_hours": 1.0})
    assert 0 < fresh - r0 < 0.02                                            # recency matters little
    frame = pd.DataFrame({k: [v] for k, v in base.items()})
    assert true_relevance(frame)[0] == pytest.approx(float(r0))


def test_expected_ctr_by_hand_for_one_request():
    cand = pd.DataFrame({
        "request_id": ["r1"] * 3, "memory_id": ["a", "b", "c"],
        "context_similarity": [0.9, 0.1, 0.5], "recency_hours": [1.0, 2.0, 3.0],
        "use_count": [0, 5, 1], "last_shown_hours": [np.nan, 3.0, 50.0], "pinned": [False, False, True],
    })
    ranked = rank_batch(cand, DEFAULT_WEIGHTS, max_items=2)
    rel = true_relevance(cand)
    sel = ranked["selected"].to_numpy()
    want = (examination(ranked["rank"].to_numpy()[sel]) * rel[sel]).sum()
    out = expected_clicks(cand, DEFAULT_WEIGHTS, max_items=2)
    assert out["impressions"] == 2 and out["requests"] == 1
    assert out["clicks"] == pytest.approx(want)
    assert expected_ctr(cand, DEFAULT_WEIGHTS, 2) == pytest.approx(want / 2)
    assert expected_ctr(cand, DEFAULT_WEIGHTS, 2, per="request") == pytest.approx(want)


def test_expected_ctr_is_deterministic_and_tuning_can_beat_default(small_sim):
    cand = small_sim.frame("ranking_candidates")
    a = expected_ctr(cand, DEFAULT_WEIGHTS)
    assert a == expected_ctr(cand, DEFAULT_WEIGHTS)
    assert 0.18 < a < 0.28
    assert expected_ctr(cand, TUNED) > a + 0.01


@pytest.mark.parametrize("weights", [DEFAULT_WEIGHTS, TUNED], ids=["default", "tuned"])
def test_item_position_ips_on_logged_data_recovers_expected_clicks(small_sim, weights):
    """Clicks depend on (memory, position) only, so inverse-propensity weighting of logged
    clicks by the logged propensity is unbiased for any target ranking: a check that the
    logged propensities are the logging policy's true probabilities."""
    cand = small_sim.frame("ranking_candidates")
    tel = small_sim.frame("telemetry")
    used = tel[tel.event_type == "whispers_used"][["request_id", "whisper_id"]]
    used = used.assign(click=1.0).rename(columns={"whisper_id": "memory_id"})
    cand = cand.merge(used, on=["request_id", "memory_id"], how="left")
    cand["click"] = cand.click.fillna(0.0)
    target = rank_batch(cand, weights, max_items=ModelParams().max_items)
    match = cand.shown_position.notna().to_numpy() & (
        target["rank"].to_numpy() == cand.shown_position.to_numpy(dtype=float, na_value=-1))
    contrib = np.where(match, cand.click / cand.propensity.fillna(1.0), 0.0)
    per_request = pd.Series(contrib).groupby(cand.request_id.to_numpy()).sum()
    estimate, se = per_request.mean(), per_request.std(ddof=1) / np.sqrt(len(per_request))
    truth = expected_clicks(cand, weights)["per_request"]
    assert abs(estimate - truth) < 4 * se, (estimate, truth, se)
