"""Replay ranking metrics against ranx 0.3.21 on the same runs and relevance judgements.

Two sources of runs: seeded random requests (sizes 1..40, binary clicks or graded relevance,
cutoffs 1..10) fed to :func:`ranking_metrics` directly, and the replay engine itself on the
shared simulated export (the ranks it replays for the default weights, the clicks it labels).
ranx sees a run with score ``-rank`` per candidate (no ties) and qrels holding the items with a
positive gain; it averages over the requests that have one, which is our ``with_relevant``
population. NDCG is the linear-gain (Jarvelin-Kekalainen / trec_eval) form on both sides.

ranx's kernels are numba functions. Compiling them takes one to two minutes on a fresh machine
(CI installs a fresh venv every run), far over this group's budget, so they run interpreted
(numba's ``DISABLE_JIT``): the same ranx source, executed by Python instead of LLVM, in about a
second here. Nothing else in the suite uses numba.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from whispers_lab.export import open_export
from whispers_lab.queries.replay import replay_candidates
from whispers_lab.replay.engine import prepare_replay, replay
from whispers_lab.replay.metrics import Groups, RequestMetrics, ranking_metrics

from anchor_cases import SEED, require_anchor

pytestmark = pytest.mark.anchors

os.environ["NUMBA_DISABLE_JIT"] = "1"  # read when numba is first imported ...
require_anchor("numba").config.DISABLE_JIT = True  # ... and here if it already was
ranx = require_anchor("ranx")

N_CASES = 24
#: ranx metric name -> ours
METRICS = {"ndcg": "ndcg", "mrr": "mrr", "hit_rate": "hit", "precision": "precision"}


def ranx_per_request(ranks: np.ndarray, gains: np.ndarray, groups: Groups, k: int
                     ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """ranx's per-query scores for the requests with a positive gain (and which those are)."""
    g = groups.row_group()
    rel = gains > 0
    keep = np.bincount(g, weights=rel, minlength=groups.n_groups) > 0
    # ranx wants object-dtype ids (pandas 3 would infer its string dtype)
    q = np.char.add("q", g.astype(str)).astype(object)
    d = np.char.add("d", np.arange(len(g)).astype(str)).astype(object)
    run = ranx.Run.from_df(pd.DataFrame({"q_id": q[keep[g]], "doc_id": d[keep[g]],
                                         "score": -ranks[keep[g]].astype(float)}, dtype=object)
                           .astype({"score": float}))
    qrels = ranx.Qrels.from_df(pd.DataFrame({"q_id": q[rel], "doc_id": d[rel],
                                             "score": gains[rel].astype(float)}, dtype=object)
                               .astype({"score": np.int64}))
    names = [f"{m}@{k}" for m in METRICS]
    scores = ranx.evaluate(qrels, run, names, return_mean=False, make_comparable=False)
    order = np.argsort(np.array(list(qrels.keys())))  # ranx keys -> request order
    ids = np.array([int(x[1:]) for x in np.array(list(qrels.keys()))[order]])
    return ids, {m: np.asarray(scores[f"{m}@{k}"])[order] for m in METRICS}


def _case(i: int) -> tuple[np.ndarray, np.ndarray, Groups, int, str]:
    rng = np.random.default_rng([SEED, 10, i])
    sizes = rng.integers(1, 41, size=int(rng.integers(50, 400)))
    groups = Groups.from_sizes(sizes)
    ranks = np.concatenate([rng.permutation(s) + 1 for s in sizes])
    graded = i % 2 == 1
    if graded:
        gains = rng.choice([0.0, 1.0, 2.0, 3.0], p=[0.8, 0.1, 0.06, 0.04], size=len(ranks))
    else:
        gains = (rng.random(len(ranks)) < rng.uniform(0.02, 0.3)).astype(float)
    k = int((1, 3, 6, 10)[i % 4])
    return ranks, gains, groups, k, "graded" if graded else "binary"


@pytest.mark.parametrize("i", range(N_CASES))
def test_metrics_equal_ranx_on_random_requests(i: int):
    ranks, gains, groups, k, kind = _case(i)
    ours = ranking_metrics(ranks, gains, groups, k)
    ids, theirs = ranx_per_request(ranks, gains, groups, k)
    assert len(ids) == int(ours.has_relevant.sum()) > 0
    for rx, name in METRICS.items():
        mine = getattr(ours, name)[ids]
        np.testing.assert_allclose(mine, theirs[rx], rtol=1e-9, atol=1e-12,
                                   err_msg=f"{name}@{k} ({kind} gains)")
        assert ours.values(name, "with_relevant").mean() == pytest.approx(theirs[rx].mean(),
                                                                          rel=1e-9)


@pytest.fixture(scope="module")
def replayed(small_export) -> tuple[RequestMetrics, np.ndarray, np.ndarray, Groups, pd.DataFrame]:
    with open_export(small_export) as exp:
        frame = replay_candidates(exp)
    data = prepare_replay(frame)
    result = replay(data, None, k=6, labels=["click"], ci=False)
    return (result.per_request["click"], result.ranks, data.labels["click"], data.groups,
            result.summary)


def test_replay_metrics_equal_ranx_on_the_replayed_run(replayed):
    metrics, ranks, gains, groups, summary = replayed
    ids, theirs = ranx_per_request(ranks, gains, groups, 6)
    assert len(ids) > 100
    mean = summary.query("population == 'with_relevant'").set_index("metric")["mean"]
    for rx, name in METRICS.items():
        np.testing.assert_allclose(getattr(metrics, name)[ids], theirs[rx], rtol=1e-9, atol=1e-12)
        assert mean[f"{name}@6"] == pytest.approx(theirs[rx].mean(), rel=1e-9)
