"""Replay engine and replay SQL on small hand-made frames and exports."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from whispers_lab.export import open_export, write_export
from whispers_lab.queries.replay import REPLAY_COLUMNS, replay_candidates, replay_quality
from whispers_lab.replay import engine
from whispers_lab.replay.synthetic import synthetic_log
from whispers_lab.weights import DEFAULT_WEIGHTS, Weights

from factories import T0, valid_tables


def _frame() -> pd.DataFrame:
    """Three requests, rows deliberately not contiguous; r2 has no click; r1 has feedback."""
    rows = [
        # request, memory, ctx, rec, use, last, pinned, score, shown, prop, click, user, fb
        ("r1", "a", 0.9, 5.0, 1, np.nan, False, 0.9, 1, 0.9, 1, "u1", True),
        ("r2", "c", 0.5, 5.0, 1, np.nan, False, 0.5, 1, 0.9, 0, "u2", None),
        ("r1", "b", 0.1, 5.0, 1, np.nan, False, 0.2, 2, 0.9, 0, "u1", True),
        ("r3", "e", 0.2, 5.0, 1, np.nan, False, 0.2, 1, 0.05, 0, "u1", False),
        ("r3", "f", 0.8, 5.0, 1, np.nan, False, 0.8, 2, 0.05, 1, "u1", False),
        ("r2", "d", 0.4, 5.0, 1, np.nan, False, 0.4, 2, 0.9, 0, "u2", None),
    ]
    cols = ["request_id", "memory_id", "context_similarity", "recency_hours", "use_count",
            "last_shown_hours", "pinned", "logged_score", "shown_position", "propensity", "click",
            "user_id", "feedback_relevant"]
    f = pd.DataFrame(rows, columns=cols)
    f["feedback_relevant"] = f["feedback_relevant"].astype("boolean")
    return f


CTX_ONLY = Weights(context=1.0, recency=0.0, frequency=0.0, novelty=0.0, pinned=0.0, version="ctx")


def test_prepare_sorts_requests_contiguously_and_labels():
    data = engine.prepare_replay(_frame(), max_items=2)
    assert data.n_requests == 3 and data.n_rows == 6
    assert list(data.frame["request_id"]) == ["r1", "r1", "r2", "r2", "r3", "r3"]
    np.testing.assert_array_equal(data.groups.sizes, [2, 2, 2])
    np.testing.assert_array_equal(data.labels["click"], [1, 0, 0, 0, 0, 1])
    # feedback: r1 answered relevant (click kept), r2 no answer (unknown), r3 "not relevant" (0)
    fb = data.labels["feedback"]
    np.testing.assert_array_equal(fb[:2], [1, 0])
    assert np.isnan(fb[2:4]).all()
    np.testing.assert_array_equal(fb[4:], [0, 0])
    assert data.users[0] == data.users[2]  # r1 and r3 are u1's


def test_replay_metrics_and_population_labels():
    data = engine.prepare_replay(_frame(), max_items=2)
    res = engine.replay(data, CTX_ONLY, k=2, n_boot=50)
    # context ranking puts a (clicked) first in r1 and f (clicked) first in r3: perfect
    m = res.per_request["click"]
    np.testing.assert_allclose(m.mrr, [1.0, 0.0, 1.0])
    assert np.isnan(m.ndcg[1])
    s = res.summary.set_index(["label", "metric", "population"])
    assert s.loc[("click", "ndcg@2", "all"), "n"] == 3
    assert s.loc[("click", "ndcg@2", "all"), "mean"] == pytest.approx(2 / 3)
    assert s.loc[("click", "ndcg@2", "with_relevant"), "n"] == 2
    assert s.loc[("click", "ndcg@2", "with_relevant"), "mean"] == pytest.approx(1.0)
    # feedback label: only r1 and r3 carry it, and only r1 has a relevant item
    assert s.loc[("feedback", "ndcg@2", "all"), "n"] == 2
    assert s.loc[("feedback", "ndcg@2", "with_relevant"), "n"] == 1
    assert set(res.summary["population"]) == {"all", "with_relevant"}
    assert res.summary["note"].str.contains("biased").all()


def test_replay_of_logger_order_reproduces_logged_positions():
    frame = synthetic_log(300, seed=11)
    data = engine.prepare_replay(frame)
    ranks = engine.logged_ranks(data)
    shown = data.frame["shown_position"].to_numpy(dtype=float, na_value=np.nan)
    greedy_req = engine.targets(data, None).match.all(axis=1)
    rows = greedy_req[data.row_request] & ~np.isnan(shown)
    np.testing.assert_array_equal(ranks[rows], shown[rows])
    # the logger used DEFAULT_WEIGHTS: ranking with them gives the same order
    np.testing.assert_array_equal(engine.target_ranks(data, DEFAULT_WEIGHTS), ranks)


def test_compare_replay_paired_and_identical_is_zero():
    data = engine.prepare_replay(synthetic_log(400, seed=12))
    same = engine.compare_replay(data, DEFAULT_WEIGHTS, DEFAULT_WEIGHTS)
    assert (same["diff"] == 0).all()
    diff = engine.compare_replay(data, CTX_ONLY, DEFAULT_WEIGHTS)
    assert set(diff["population"]) == {"all", "with_relevant"}
    assert diff["p_value"].between(0, 1).all()
    assert (diff["ci_low"] <= diff["diff"]).all() and (diff["diff"] <= diff["ci_high"]).all()


def test_position_curve_and_logged_ctr():
    data = engine.prepare_replay(synthetic_log(1000, seed=13))
    curve = engine.position_curve(data, CTX_ONLY)
    assert list(curve["position"]) == [1, 2, 3, 4, 5, 6]
    assert (curve["logged_ctr"].diff().dropna() < 0).all()  # examination decays
    assert (curve["logged_ci_low"] <= curve["logged_ctr"]).all()
    assert "target_ctr" in curve
    ctr = engine.logged_ctr(data)
    assert ctr["ci_low"] < ctr["ctr"] < ctr["ci_high"]
    assert ctr["clicks"] == int(data.labels["click"].sum())


def test_subset_keeps_whole_requests():
    data = engine.prepare_replay(synthetic_log(200, seed=14))
    mask = np.arange(data.n_requests) % 2 == 0
    sub = data.subset(mask)
    assert sub.n_requests == mask.sum()
    assert sub.n_rows == int(data.groups.sizes[mask].sum())


# -- SQL --------------------------------------------------------------------------------------


def _export(tmp_path):
    t = valid_tables()
    cand = t["ranking_candidates"]
    cand = pd.concat([cand, cand.assign(request_id="r3", memory_id=["m5", "m6"])],
                     ignore_index=True)
    t["ranking_candidates"] = cand
    api = t["api_logs"]
    extra = api.iloc[[0]].assign(request_id="r3", timestamp=T0 + dt.timedelta(days=2))
    t["api_logs"] = pd.concat([api, extra], ignore_index=True)
    tel = t["telemetry"]
    more = pd.DataFrame({
        "event_id": ["e5", "e6", "e7"],
        "created_at": [T0 + dt.timedelta(seconds=20)] * 2 + [T0 + dt.timedelta(days=2)],
        "user_id": ["u1"] * 3, "device_id": ["d1"] * 3,
        "event_type": ["whispers_used", "whispers_used", "whispers_used"],
        "request_id": ["r1", "r1", "r9"], "whisper_id": ["m1", "m2", "m1"],
        "position": pd.array([1, 2, 1], dtype="Int32"),
    })
    t["telemetry"] = pd.concat([tel, more], ignore_index=True)
    t["feedback"] = pd.DataFrame({
        "user_id": ["u1"], "submitted_at": [T0 + dt.timedelta(hours=2)],
        "rating": pd.array([2], dtype="int32"), "relevant": [False]})
    return write_export(t, tmp_path / "replay.duckdb")


def test_replay_candidates_sql(tmp_path):
    with open_export(_export(tmp_path)) as exp:
        frame = replay_candidates(exp)
        assert tuple(frame.columns) == REPLAY_COLUMNS
        assert list(frame["request_id"]) == ["r1", "r1", "r3", "r3"]
        r1 = frame[frame["request_id"] == "r1"].set_index("memory_id")
        assert r1.loc["m1", "click"] == 1 and r1.loc["m1", "n_used"] == 2  # two used events
        assert r1.loc["m2", "click"] == 1
        assert r1["user_id"].eq("u1").all()
        # the survey answered 2 h after r1 is within 24 h: r1 gets it; r3 (2 days later) does not
        assert (r1["feedback_relevant"] == False).all()  # noqa: E712
        assert frame.loc[frame["request_id"] == "r3", "feedback_relevant"].isna().all()
        only_first = replay_candidates(exp, date_from=T0.date(), date_to=T0.date())
        assert set(only_first["request_id"]) == {"r1"}
        later = replay_candidates(exp, date_from="2026-12-02")
        assert set(later["request_id"]) == {"r3"}
        q = replay_quality(exp)
        assert q["requests"] == 2
        assert q["clicks_on_unshown"] == 1          # m2 was clicked but has no shown_position
        assert q["clicks_position_mismatch"] == 0
        assert q["shown_rows"] == 2 and q["shown_without_propensity"] == 0
        assert q["clicks_without_candidate"] == 0   # r9 is not a candidate request


def test_sql_frame_replays(tmp_path):
    with open_export(_export(tmp_path)) as exp:
        frame = replay_candidates(exp)
    data = engine.prepare_replay(frame)
    res = engine.replay(data, DEFAULT_WEIGHTS, n_boot=20)
    assert res.summary.loc[res.summary["label"] == "click", "n"].max() == 2


def test_small_export_end_to_end(small_export):
    """The simulator's small export: SQL -> replay -> OPE, against the simulator's truth."""
    from whispers_lab.simulate.clicks import expected_ctr

    with open_export(small_export) as exp:
        frame = replay_candidates(exp)
        quality = replay_quality(exp)
    assert quality["clicks_on_unshown"] == 0 and quality["clicks_without_candidate"] == 0
    assert quality["shown_without_propensity"] == 0
    data = engine.prepare_replay(frame)
    assert data.log.logger.kind == "epsilon_uniform"
    assert data.log.logger.epsilon == pytest.approx(0.1)
    check = engine.logger_sanity(data, n_boot=200)
    assert check.consistent, check.sentence
    est = engine.off_policy(data, DEFAULT_WEIGHTS, estimators=["sniips"], n_boot=200)[0]
    assert est.ci_low <= expected_ctr(frame, DEFAULT_WEIGHTS) <= est.ci_high
