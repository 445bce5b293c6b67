"""The weight tuner: user split, better-than-default weights where that is true, saved weights."""

from __future__ import annotations

import numpy as np
import pytest

from whispers_lab.ranker import rank_batch
from whispers_lab.replay import engine, tuning
from whispers_lab.replay.synthetic import synthetic_log, true_ctr
from whispers_lab.weights import DEFAULT_WEIGHTS, load_weights


@pytest.fixture(scope="module")
def logged():
    frame = synthetic_log(8000, seed=21)
    return frame, engine.prepare_replay(frame)


def test_split_by_user_is_disjoint(logged):
    _, data = logged
    train, hold = tuning.split_by_user(data, 0.3, seed=1)
    assert not (train & hold).any() and (train | hold).all()
    assert not set(data.users[train]) & set(data.users[hold])
    assert 0.2 < hold.mean() < 0.4


def test_tuner_beats_defaults_where_the_truth_says_so(logged, tmp_path):
    """The synthetic clicks follow the simulator's true relevance, which weighs novelty and
    frequency more and recency less than DEFAULT_WEIGHTS: better weights exist."""
    frame, data = logged
    res = tuning.tune(data, n_random=60, n_starts=2, max_refine_evals=60, n_boot=200, seed=3)
    assert true_ctr(frame, res.best) > true_ctr(frame, DEFAULT_WEIGHTS) + 0.01
    assert res.train_value > res.baseline_train_value
    assert res.split["train_users"] + res.split["holdout_users"] == len(np.unique(data.users))
    assert res.holdout.ok and res.holdout_baseline.ok
    assert res.holdout_diff.ci_low <= res.holdout_diff.value <= res.holdout_diff.ci_high
    assert "holdout" in res.sentence
    table = res.summary()
    assert list(table["setting"]) == ["baseline", "tuned", "tuned - baseline"]
    assert res.best.version.startswith("replay-tuned-sniips-s3-")
    assert np.isclose(sum(getattr(res.best, s) for s in ("context", "recency", "frequency",
                                                          "novelty", "pinned")), 1.0)
    path = tuning.save_tuned(res, tmp_path)
    assert path.name == f"{res.best.version}.json"
    loaded = load_weights(path)
    assert loaded == res.best
    ranked = rank_batch(data.batch, loaded)  # the ranker accepts them
    assert ranked["selected"].any()


def test_tuner_refuses_without_propensities():
    data = engine.prepare_replay(synthetic_log(100, seed=22, propensities=False))
    with pytest.raises(ValueError, match="propensities"):
        tuning.tune(data, n_random=2)


def test_tune_shapes_smoke(logged):
    _, data = logged
    res = tuning.tune(data, tune_shapes=True, n_random=10, n_starts=1, max_refine_evals=15,
                      n_boot=50, seed=4)
    base = DEFAULT_WEIGHTS
    for name in ("recency_half_life_hours", "novelty_half_life_hours", "frequency_cap"):
        ratio = getattr(res.best, name) / getattr(base, name)
        assert 1 / 8 - 1e-9 <= ratio <= 8 + 1e-9
    assert {"recency_half_life_hours", "frequency_cap"} <= set(res.trace.columns)
