"""Ranking metrics against hand-computed cases and a plain per-request reference."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from whispers_lab.replay.metrics import (
    Groups,
    ideal_dcg,
    ranking_metrics,
    ranks_from_scores,
    summarise,
)

L2 = math.log2


def _one(ranks, gains, k=6, **kw):
    g = Groups.from_sizes(np.array([len(ranks)]))
    return ranking_metrics(np.array(ranks), np.array(gains, dtype=float), g, k, **kw)


def test_single_click_at_rank_two():
    m = _one([1, 2, 3], [0, 1, 0], k=6)
    assert m.ndcg[0] == pytest.approx((1 / L2(3)) / 1.0)
    assert m.mrr[0] == pytest.approx(0.5)
    assert m.hit[0] == 1.0
    assert m.precision[0] == pytest.approx(1 / 6)


def test_fewer_than_k_candidates_ideal_is_capped_by_relevant_items():
    # 3 candidates, 2 clicked at ranks 1 and 3; k = 6
    m = _one([1, 2, 3], [1, 0, 1], k=6)
    dcg = 1 + 1 / L2(4)
    idcg = 1 + 1 / L2(3)
    assert m.ndcg[0] == pytest.approx(dcg / idcg)
    assert m.precision[0] == pytest.approx(2 / 6)
    m2 = _one([1, 2, 3], [1, 0, 1], k=6, precision_denominator="available")
    assert m2.precision[0] == pytest.approx(2 / 3)
    # all candidates relevant: perfect whatever the order
    assert _one([2, 1], [1, 1], k=6).ndcg[0] == pytest.approx(1.0)


def test_relevant_beyond_cutoff():
    m = _one([1, 2, 3, 4], [0, 0, 0, 1], k=3)
    assert m.ndcg[0] == 0.0 and m.mrr[0] == 0.0 and m.hit[0] == 0.0 and m.precision[0] == 0.0
    # ideal still counts it (capped at k): the request is in the with_relevant population
    assert m.n_relevant[0] == 1


def test_more_relevant_than_k():
    m = _one([1, 2, 3, 4], [1, 1, 1, 1], k=2)
    assert m.ndcg[0] == pytest.approx(1.0)
    assert m.precision[0] == pytest.approx(1.0)


def test_graded_gains():
    # gains 3 at rank 2, 1 at rank 1: DCG = 1 + 3/log2(3); IDCG = 3 + 1/log2(3)
    m = _one([1, 2, 3], [1, 3, 0], k=6)
    assert m.ndcg[0] == pytest.approx((1 + 3 / L2(3)) / (3 + 1 / L2(3)))
    g = Groups.from_sizes(np.array([3, 2]))
    idcg = ideal_dcg(np.array([1.0, 3, 0, 2, 2]), g, k=1)
    np.testing.assert_allclose(idcg, [3.0, 2.0])


def test_no_click_request_and_populations():
    groups = Groups.from_sizes(np.array([3, 2, 4]))
    ranks = np.array([1, 2, 3, 2, 1, 4, 3, 2, 1])
    gains = np.array([1, 0, 0, 0, 0, 0, 1, 0, 0], dtype=float)
    m = ranking_metrics(ranks, gains, groups, k=6)
    assert np.isnan(m.ndcg[1]) and m.mrr[1] == 0 and m.hit[1] == 0
    np.testing.assert_allclose(m.ndcg[[0, 2]], [1.0, (1 / L2(4))])
    np.testing.assert_allclose(m.mrr, [1.0, 0.0, 1 / 3])
    s = summarise(m).set_index(["metric", "population"])
    assert s.loc[("ndcg@6", "all"), "n"] == 3
    assert s.loc[("ndcg@6", "with_relevant"), "n"] == 2
    assert s.loc[("ndcg@6", "all"), "mean"] == pytest.approx((1 + 0.5) / 3)
    assert s.loc[("ndcg@6", "with_relevant"), "mean"] == pytest.approx((1 + 0.5) / 2)
    assert s.loc[("mrr@6", "all"), "mean"] == pytest.approx((1 + 1 / 3) / 3)
    assert set(s["label"]) == {"click"}
    with pytest.raises(ValueError):
        m.values("ndcg", "clicked")  # type: ignore[arg-type]


def test_ties_policies():
    groups = Groups.from_sizes(np.array([3]))
    scores = np.array([0.5, 0.5, 0.1])
    gains = np.array([0.0, 1.0, 0.0])
    assert list(ranks_from_scores(scores, groups)) == [1, 2, 3]
    assert list(ranks_from_scores(scores, groups, ties="pessimistic", gains=gains)) == [1, 2, 3]
    assert list(ranks_from_scores(scores, groups, ties="optimistic", gains=gains)) == [2, 1, 3]
    lo = ranking_metrics(ranks_from_scores(scores, groups, ties="pessimistic", gains=gains), gains, groups)
    hi = ranking_metrics(ranks_from_scores(scores, groups, ties="optimistic", gains=gains), gains, groups)
    assert lo.mrr[0] == 0.5 and hi.mrr[0] == 1.0
    with pytest.raises(ValueError):
        ranks_from_scores(scores, groups, ties="optimistic")


def test_groups_from_keys():
    g = Groups.from_sorted_keys(np.array(["a", "a", "b", "c", "c", "c"]))
    np.testing.assert_array_equal(g.offsets, [0, 2, 3])
    np.testing.assert_array_equal(g.sizes, [2, 1, 3])
    np.testing.assert_array_equal(g.row_group(), [0, 0, 1, 2, 2, 2])


def _reference(frame: pd.DataFrame, k: int) -> pd.DataFrame:
    """Plain per-request implementation, written independently of the vectorised one."""
    out = []
    for _, grp in frame.groupby("q", sort=True):
        grp = grp.sort_values("rank")
        gains = grp["gain"].to_numpy()
        top = gains[:k]
        dcg = sum(g / math.log2(i + 2) for i, g in enumerate(top))
        ideal = sorted(gains, reverse=True)[:k]
        idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
        first = next((i for i, g in enumerate(top) if g > 0), None)
        out.append({
            "ndcg": dcg / idcg if idcg > 0 else float("nan"),
            "mrr": 0.0 if first is None else 1 / (first + 1),
            "hit": float(any(g > 0 for g in top)),
            "precision": sum(g > 0 for g in top) / k,
        })
    return pd.DataFrame(out)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_matches_reference_on_random_data(k):
    rng = np.random.default_rng(7)
    sizes = rng.integers(1, 12, size=300)
    groups = Groups.from_sizes(sizes)
    n = int(sizes.sum())
    scores = rng.integers(0, 5, size=n).astype(float)  # many ties
    gains = rng.choice([0, 0, 0, 1, 2], size=n).astype(float)
    ranks = ranks_from_scores(scores, groups)
    m = ranking_metrics(ranks, gains, groups, k=k)
    ref = _reference(pd.DataFrame({"q": groups.row_group(), "rank": ranks, "gain": gains}), k)
    for col in ("ndcg", "mrr", "hit", "precision"):
        np.testing.assert_allclose(getattr(m, col), ref[col].to_numpy(), equal_nan=True)
