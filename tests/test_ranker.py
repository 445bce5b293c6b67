"""Tests of whispers_lab.ranker: hand-computed scores, the tie rule, fallback, batch == single."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from whispers_lab.contract import RANKING_CANDIDATES
from whispers_lab.errors import WhispersLabError
from whispers_lab.ranker import (
    CANDIDATE_COLUMNS,
    CONTRIB_COLUMNS,
    SIGNALS,
    CandidateBatch,
    RankerError,
    RankResult,
    prepare_candidates,
    rank_batch,
    rank_request,
    rank_within_groups,
    signal_matrix,
)
from whispers_lab.weights import DEFAULT_WEIGHTS, Weights


def cand(memory_id: str, ctx: float = 0.5, rec: float = 10.0, use: int = 3,
         last: float | None = None, pinned: bool = False, **extra: object) -> dict:
    return {"memory_id": memory_id, "context_similarity": ctx, "recency_hours": rec,
            "use_count": use, "last_shown_hours": last, "pinned": pinned, **extra}


# Three candidates whose default-weight scores are worked out by hand below.
A = cand("A", ctx=0.8, rec=36.0, use=9, last=12.0, pinned=False)
B = cand("B", ctx=0.3, rec=144.0, use=80, last=None, pinned=True)
C = cand("C", ctx=0.1, rec=0.0, use=0, last=48.0, pinned=False)


def hand_scores() -> dict[str, dict[str, float]]:
    """Default weights 0.5/0.2/0.1/0.1/0.3, half-lives 72 h and 24 h, frequency cap 50."""
    a = {
        "context": 0.5 * 0.8,
        "recency": 0.2 * 0.5 ** (36 / 72),                 # half a half-life: 1/sqrt(2)
        "frequency": 0.1 * math.log1p(9) / math.log1p(50),  # ln 10 / ln 51
        "novelty": 0.1 * (1 - 0.5 ** (12 / 24)),
        "pinned": 0.0,
    }
    b = {
        "context": 0.5 * 0.3,
        "recency": 0.2 * 0.25,                             # two half-lives
        "frequency": 0.1 * 1.0,                            # 80 uses > cap 50: capped at 1
        "novelty": 0.1 * 1.0,                              # never shown
        "pinned": 0.3,
    }
    c = {
        "context": 0.5 * 0.1,
        "recency": 0.2 * 1.0,                              # just now
        "frequency": 0.0,                                  # never used
        "novelty": 0.1 * 0.75,                             # shown two half-lives ago
        "pinned": 0.0,
    }
    return {"A": a, "B": b, "C": c}


def test_signal_order_and_contract_columns() -> None:
    assert SIGNALS == ("context", "recency", "frequency", "novelty", "pinned")
    assert CONTRIB_COLUMNS == tuple(f"contrib_{s}" for s in SIGNALS)
    for column in CANDIDATE_COLUMNS:
        RANKING_CANDIDATES.column(column)  # raises if the contract lacks it
    assert issubclass(RankerError, WhispersLabError)


def test_hand_computed_scores() -> None:
    expected = hand_scores()
    totals = {k: sum(v.values()) for k, v in expected.items()}
    # The hand computation itself, checked against rounded numbers worked out on paper.
    assert totals["A"] == pytest.approx(0.4 + 0.1414214 + 0.0585627 + 0.0292893, abs=1e-6)
    assert totals["B"] == pytest.approx(0.70, abs=1e-12)
    assert totals["C"] == pytest.approx(0.325, abs=1e-12)

    result = rank_request([C, A, B])
    assert isinstance(result, RankResult)
    items = result.items
    assert list(items.columns) == ["memory_id", "rank", "score", *CONTRIB_COLUMNS]
    assert list(items["memory_id"]) == ["B", "A", "C"]
    assert list(items["rank"]) == [1, 2, 3]
    for _, row in items.iterrows():
        exp = expected[row["memory_id"]]
        assert row["score"] == pytest.approx(totals[row["memory_id"]], rel=1e-12)
        for s in SIGNALS:
            assert row[f"contrib_{s}"] == pytest.approx(exp[s], rel=1e-12, abs=1e-15)
        # The score is exactly the sum of its contributions, added in SIGNALS order.
        acc = 0.0
        for s in SIGNALS:
            acc += row[f"contrib_{s}"]
        assert row["score"] == acc
    assert result.weight_source == "fallback"  # no stored weights
    assert result.weights_version == "default-2026-11"


def test_signal_matrix_hand_values() -> None:
    m = signal_matrix([0.8, 0.3, 0.1], [36.0, 144.0, 0.0], [9, 80, 0], [12.0, np.nan, 48.0],
                      [False, True, False], DEFAULT_WEIGHTS)
    assert m.shape == (3, 5)
    expected = np.array([
        [0.8, 2 ** -0.5, math.log(10) / math.log(51), 1 - 2 ** -0.5, 0.0],
        [0.3, 0.25, 1.0, 1.0, 1.0],
        [0.1, 1.0, 0.0, 0.75, 0.0],
    ])
    np.testing.assert_allclose(m, expected, rtol=1e-12, atol=1e-15)
    assert signal_matrix([], [], [], [], [], DEFAULT_WEIGHTS).shape == (0, 5)
    with pytest.raises(RankerError, match="equal lengths"):
        signal_matrix([0.1], [1.0, 2.0], [1], [1.0], [True], DEFAULT_WEIGHTS)


def test_signal_parameters_come_from_weights() -> None:
    w = Weights(recency_half_life_hours=36.0, novelty_half_life_hours=12.0, frequency_cap=9.0)
    m = signal_matrix([0.5], [36.0], [9], [12.0], [False], w)
    np.testing.assert_allclose(m[0], [0.5, 0.5, 1.0, 0.5, 0.0], rtol=1e-12)


def test_ties_broken_by_recency_then_memory_id() -> None:
    # Recency weight 0: recency_hours only breaks ties. All scores are equal.
    w = Weights(context=0.5, recency=0.0, frequency=0.1, novelty=0.1, pinned=0.3)
    cands = [cand("x", rec=5.0), cand("z", rec=2.0), cand("a", rec=2.0), cand("m", rec=2.0),
             cand("b", rec=9.0)]
    items = rank_request(cands, w).items
    assert items["score"].nunique() == 1
    assert list(items["memory_id"]) == ["a", "m", "z", "x", "b"]


def test_equal_features_ordered_by_memory_id_string_order() -> None:
    ids = ["m10", "m9", "M2", "m1", "é", "z", "\U0001f600", "\uffff"]
    items = rank_request([cand(i) for i in ids], max_items=len(ids)).items
    assert list(items["memory_id"]) == sorted(ids)  # Python str (code point) order
    # Same via an object-dtype column.
    frame = pd.DataFrame([cand(i) for i in ids]).astype({"memory_id": object})
    assert list(rank_request(frame, max_items=len(ids)).items["memory_id"]) == sorted(ids)


def test_weight_fallback_and_user_weights() -> None:
    good = Weights(context=0.0, recency=1.0, frequency=0.0, novelty=0.0, pinned=0.0, version="u-1")
    cands = [A, B, C]
    r = rank_request(cands, good.to_dict())
    assert r.weight_source == "user" and r.weights_version == "u-1"
    assert list(r.items["memory_id"]) == ["C", "A", "B"]  # most recent first
    assert r.items["score"].tolist() == pytest.approx([1.0, 2 ** -0.5, 0.25], rel=1e-12)
    assert rank_request(cands, good.to_json()).weight_source == "user"
    assert rank_request(cands, good).weight_source == "user"

    for bad in (None, "", "{not json", {"context": 1.0}, {**good.to_dict(), "recency": -1}):
        rb = rank_request(cands, bad)
        assert rb.weight_source == "fallback"
        assert rb.weights_version == DEFAULT_WEIGHTS.version
        assert rb.weights == DEFAULT_WEIGHTS
        assert list(rb.items["memory_id"]) == ["B", "A", "C"]


def test_max_items() -> None:
    cands = [cand(f"m{i:02d}", ctx=i / 20) for i in range(10)]
    items = rank_request(cands).items
    assert len(items) == 6
    assert list(items["memory_id"]) == [f"m{i:02d}" for i in range(9, 3, -1)]
    assert list(items["rank"]) == [1, 2, 3, 4, 5, 6]
    assert len(rank_request(cands, max_items=3).items) == 3
    assert len(rank_request(cands, max_items=1).items) == 1
    assert len(rank_request(cands, max_items=100).items) == 10
    for bad in (0, -1, 1.5, True, "6", None):
        with pytest.raises(RankerError, match="max_items"):
            rank_request(cands, max_items=bad)  # type: ignore[arg-type]
        with pytest.raises(RankerError, match="max_items"):
            rank_batch(pd.DataFrame([{**c, "request_id": "r"} for c in cands]), DEFAULT_WEIGHTS,
                       max_items=bad)  # type: ignore[arg-type]


def test_fewer_candidates_than_max_items_and_empty() -> None:
    items = rank_request([A, C]).items
    assert list(items["memory_id"]) == ["A", "C"]
    empty = rank_request([]).items
    assert len(empty) == 0
    assert list(empty.columns) == ["memory_id", "rank", "score", *CONTRIB_COLUMNS]
    empty2 = rank_request(pd.DataFrame(columns=list(CANDIDATE_COLUMNS))).items
    assert len(empty2) == 0
    out = rank_batch(pd.DataFrame(columns=["request_id", *CANDIDATE_COLUMNS]), DEFAULT_WEIGHTS,
                     contributions=True)
    assert len(out) == 0
    assert list(out.columns) == ["score", "rank", "selected", *CONTRIB_COLUMNS]


def test_context_ranking_off() -> None:
    cands = [cand("b", ctx=0.9, rec=5.0), cand("a", ctx=0.1, rec=5.0), cand("c", ctx=0.5, rec=1.0),
             cand("d", ctx=1.0, rec=50.0, pinned=True)]
    on = rank_request(cands, max_items=4).items
    off = rank_request(cands, max_items=4, context_ranking=False).items
    assert list(off["memory_id"]) == ["c", "a", "b", "d"]  # recency asc, then memory_id
    assert list(on["memory_id"]) != list(off["memory_id"])
    # Scores are still reported, identical to the context-ranked ones.
    s_on = dict(zip(on["memory_id"], on["score"], strict=True))
    s_off = dict(zip(off["memory_id"], off["score"], strict=True))
    assert s_on == s_off
    assert list(rank_request(cands, max_items=2, context_ranking=False).items["memory_id"]) == ["c", "a"]


def random_candidates(seed: int, n_requests: int = 300, max_size: int = 14,
                      big: tuple[int, ...] = ()) -> pd.DataFrame:
    """Random candidates with many ties (coarse values) and some large requests."""
    rng = np.random.default_rng(seed)
    sizes = np.concatenate([rng.integers(1, max_size + 1, n_requests), np.array(big, dtype=int)])
    rows = []
    for r, size in enumerate(sizes):
        mems = rng.choice(5 * int(size) + 10, size=int(size), replace=False)
        for m in mems:
            rows.append({
                "request_id": f"req-{r:04d}",
                "memory_id": f"mem-{m}",
                "context_similarity": float(rng.choice([0.0, 0.25, 0.5, 0.75, 1.0])),
                "recency_hours": float(rng.choice([0.0, 1.0, 24.0, 72.0, 500.0])),
                "use_count": int(rng.choice([0, 1, 5, 50, 200])),
                "last_shown_hours": float(rng.choice([np.nan, 0.0, 6.0, 24.0])),
                "pinned": bool(rng.random() < 0.2),
            })
    return pd.DataFrame(rows)


def test_batch_matches_python_reference_order() -> None:
    frame = random_candidates(1, big=(65, 100, 300, 1000))
    out = rank_batch(frame, DEFAULT_WEIGHTS, max_items=6)
    df = frame.assign(score=out["score"], rank=out["rank"], selected=out["selected"])
    for _, g in df.groupby("request_id"):
        ref = sorted(g.itertuples(), key=lambda t: (-t.score, t.recency_hours, t.memory_id))
        assert [t.Index for t in ref] == list(g.sort_values("rank").index)
        assert sorted(g["rank"]) == list(range(1, len(g) + 1))
    assert (df["selected"] == (df["rank"] <= 6)).all()
    assert df.groupby("request_id")["selected"].sum().max() == 6


@pytest.mark.parametrize("context_ranking", [True, False])
def test_single_and_batch_agree_exactly(context_ranking: bool) -> None:
    frame = random_candidates(2, big=(70, 130))
    w = Weights(context=0.45, recency=0.25, frequency=0.05, novelty=0.2, pinned=0.15, version="t")
    batch = prepare_candidates(frame)
    out = rank_batch(batch, w, max_items=6, context_ranking=context_ranking, contributions=True)
    both = pd.concat([frame, out], axis=1)
    for rid, g in both.groupby("request_id"):
        single = rank_request(g[list(CANDIDATE_COLUMNS)], w, max_items=6,
                              context_ranking=context_ranking)
        assert single.weight_source == "user"
        sel = g[g["selected"]].sort_values("rank")
        assert list(single.items["memory_id"]) == list(sel["memory_id"]), rid
        assert list(single.items["rank"]) == list(sel["rank"])
        np.testing.assert_array_equal(single.items["score"].to_numpy(), sel["score"].to_numpy())
        for c in CONTRIB_COLUMNS:
            np.testing.assert_array_equal(single.items[c].to_numpy(), sel[c].to_numpy())


def test_permutation_of_rows_changes_nothing() -> None:
    frame = random_candidates(3, big=(90,))
    base = rank_batch(frame, DEFAULT_WEIGHTS, contributions=True)
    rng = np.random.default_rng(0)
    for _ in range(3):
        shuffled = frame.iloc[rng.permutation(len(frame))]
        out = rank_batch(shuffled, DEFAULT_WEIGHTS, contributions=True)
        assert out.index.equals(shuffled.index)  # aligned with the input rows
        pd.testing.assert_frame_equal(out.loc[base.index], base, check_exact=True)
    off = rank_batch(frame, DEFAULT_WEIGHTS, context_ranking=False)
    off2 = rank_batch(frame.iloc[::-1], DEFAULT_WEIGHTS, context_ranking=False)
    pd.testing.assert_frame_equal(off2.loc[off.index], off, check_exact=True)
    one = frame[frame["request_id"] == "req-0000"]
    r1 = rank_request(one).items
    r2 = rank_request(one.iloc[::-1]).items
    pd.testing.assert_frame_equal(r1, r2, check_exact=True)


def test_prepared_batch_is_reusable_across_weights() -> None:
    frame = random_candidates(4, n_requests=50)
    batch = prepare_candidates(frame)
    assert isinstance(batch, CandidateBatch)
    assert batch.n_rows == len(frame) and batch.n_requests == 50
    w2 = Weights(context=0.0, recency=1.0, frequency=0.0, novelty=0.0, pinned=0.0)
    for w in (DEFAULT_WEIGHTS, w2, DEFAULT_WEIGHTS):
        pd.testing.assert_frame_equal(rank_batch(batch, w), rank_batch(frame, w), check_exact=True)


def test_candidate_validation_errors() -> None:
    good = pd.DataFrame([{**A, "request_id": "r1"}, {**B, "request_id": "r1"}])
    with pytest.raises(RankerError, match="'use_count'"):
        rank_batch(good.drop(columns="use_count"), DEFAULT_WEIGHTS)
    with pytest.raises(RankerError, match="'request_id'"):
        rank_batch(good.drop(columns="request_id"), DEFAULT_WEIGHTS)
    bad_values = [
        ("context_similarity", 1.5), ("context_similarity", np.nan), ("recency_hours", -1.0),
        ("recency_hours", np.inf), ("use_count", -2), ("last_shown_hours", -3.0),
        ("pinned", None), ("memory_id", None), ("request_id", None),
    ]
    for column, value in bad_values:
        frame = good.copy()
        frame[column] = frame[column].astype(object)
        frame.loc[1, column] = value
        with pytest.raises(RankerError, match=repr(column)):
            rank_batch(frame, DEFAULT_WEIGHTS)
    dup = pd.concat([good, good.iloc[[0]]], ignore_index=True)
    with pytest.raises(RankerError, match="duplicate"):
        prepare_candidates(dup)
    with pytest.raises(RankerError, match="duplicate"):
        rank_request([A, A])
    two = pd.DataFrame([{**A, "request_id": "r1"}, {**B, "request_id": "r2"}])
    with pytest.raises(RankerError, match="one request"):
        rank_request(two)
    with pytest.raises(RankerError, match="Weights"):
        rank_batch(good, DEFAULT_WEIGHTS.to_dict())  # type: ignore[arg-type]
    with pytest.raises(RankerError):
        rank_request("not candidates")  # type: ignore[arg-type]


def test_pinned_as_zero_one_integers() -> None:
    frame = pd.DataFrame([A, B, C]).assign(pinned=[0, 1, 0])
    assert list(rank_request(frame).items["memory_id"]) == ["B", "A", "C"]


def test_rank_within_groups() -> None:
    groups = ["g2", "g1", "g2", "g1", "g2", "g2"]
    primary = [0.5, 1.0, 0.5, 2.0, 0.9, 0.5]
    tie1 = [3, 0, 1, 0, 0, 1]
    tie2 = ["z", "a", "b", "c", "d", "a"]
    tie2_codes = pd.factorize(pd.Series(tie2), sort=True)[0]
    ranks = rank_within_groups(groups, primary, tie1, tie2_codes)
    assert ranks.tolist() == [4, 2, 3, 1, 1, 2]
    # Integer and boolean primary keys, descending.
    assert rank_within_groups([0, 0, 0], np.array([1, 3, 2]), [0, 0, 0]).tolist() == [3, 1, 2]
    assert rank_within_groups([0, 0, 1], [False, True, True]).tolist() == [2, 1, 1]
    assert rank_within_groups([], []).tolist() == []
    with pytest.raises(RankerError, match="NaN"):
        rank_within_groups([0, 0], [np.nan, 1.0])


def test_rank_within_groups_random_against_reference() -> None:
    rng = np.random.default_rng(5)
    n = 3000
    groups = rng.integers(0, 40, n)
    primary = rng.integers(0, 4, n).astype(float)
    tie = rng.integers(0, 3, n)
    uid = rng.permutation(n)
    ranks = rank_within_groups(groups, primary, tie, uid)
    expected = np.empty(n, dtype=np.int64)
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        order = sorted(idx, key=lambda i: (-primary[i], tie[i], uid[i]))
        expected[order] = np.arange(1, len(idx) + 1)
    np.testing.assert_array_equal(ranks, expected)


# -- property: the score is monotone in the right direction ------------------------------------

weights_strategy = st.builds(
    lambda ws, rh, nh, cap: Weights(*ws, recency_half_life_hours=rh, novelty_half_life_hours=nh,
                                    frequency_cap=cap),
    st.tuples(*[st.floats(0, 1)] * 5).filter(lambda ws: sum(ws) > 0),
    st.floats(0.01, 1e4), st.floats(0.01, 1e4), st.floats(0.01, 1e4),
)

base_candidate = st.fixed_dictionaries({
    "context_similarity": st.floats(0, 1),
    "recency_hours": st.floats(0, 1e5),
    "use_count": st.integers(0, 10**6),
    "last_shown_hours": st.none() | st.floats(0, 1e5),
    "pinned": st.booleans(),
})


def pair_scores(base: dict, column: str, lo: float, hi: float, w: Weights) -> tuple[float, float]:
    rows = [{**base, column: lo, "memory_id": "lo", "request_id": "r1"},
            {**base, column: hi, "memory_id": "hi", "request_id": "r2"}]
    out = rank_batch(pd.DataFrame(rows), w)
    return float(out["score"].iloc[0]), float(out["score"].iloc[1])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(w=weights_strategy, base=base_candidate, a=st.floats(0, 1), b=st.floats(0, 1))
def test_score_non_decreasing_in_context(w: Weights, base: dict, a: float, b: float) -> None:
    lo, hi = pair_scores(base, "context_similarity", min(a, b), max(a, b), w)
    assert lo <= hi


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(w=weights_strategy, base=base_candidate, a=st.integers(0, 10**6), b=st.integers(0, 10**6))
def test_score_non_decreasing_in_use_count(w: Weights, base: dict, a: int, b: int) -> None:
    lo, hi = pair_scores(base, "use_count", min(a, b), max(a, b), w)
    assert lo <= hi


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(w=weights_strategy, base=base_candidate, a=st.floats(0, 1e5), b=st.floats(0, 1e5))
def test_score_non_increasing_in_recency_hours(w: Weights, base: dict, a: float, b: float) -> None:
    older, newer = pair_scores(base, "recency_hours", max(a, b), min(a, b), w)
    assert older <= newer
