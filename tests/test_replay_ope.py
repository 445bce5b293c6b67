"""Off-policy estimators: hand-computed cases, reasons instead of numbers, and unbiasedness on
simulated logs where the true CTR of any weights is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from whispers_lab.replay import engine
from whispers_lab.replay.ope import (
    ESTIMATORS,
    build_slate_log,
    estimate,
    infer_logger,
    target_slates,
)
from whispers_lab.replay.synthetic import synthetic_log, true_ctr
from whispers_lab.weights import DEFAULT_WEIGHTS, Weights

ALT = Weights(context=0.5, recency=0.02, frequency=0.4, novelty=0.4, pinned=0.2, version="alt")


def _two_request_log(propensity=(0.5, 0.25, 0.5, 0.25)):
    """Two requests of 3 candidates, slates of 2 (L = 2). Rows: r0 = 0,1,2; r1 = 3,4,5."""
    request = np.array([0, 0, 0, 1, 1, 1])
    shown = np.array([1, 2, np.nan, 2, np.nan, 1])
    click = np.array([1, 1, 0, 0, 0, 1])
    prop = np.full(6, np.nan)
    prop[[0, 1, 3, 5]] = propensity
    return build_slate_log(request, shown, click, prop, np.array([3, 3]), L=2)


def test_iips_by_hand():
    log = _two_request_log()
    # target: r0 ranks rows 1, 0, 2 (row 0 at position 2: no match; row 1 at 1: no match)
    #         r1 ranks rows 5, 3, 4 (row 5 at position 1 matches, clicked, p = 0.25;
    #                                row 3 at position 2 matches, not clicked)
    ranks = np.array([2, 1, 3, 2, 3, 1])
    tgt = target_slates(log, ranks, np.array([0, 0, 0, 1, 1, 1]))
    np.testing.assert_array_equal(tgt.match, [[False, False], [True, True]])
    e = estimate("iips", log, tgt, scale="clicks", method="delta")
    assert e.value == pytest.approx((0 + 1 / 0.25) / 2)
    e_ctr = estimate("iips", log, tgt, scale="ctr", method="delta")
    assert e_ctr.value == pytest.approx(2.0 / 2)  # per shown: target slates have length 2
    sn = estimate("sniips", log, tgt, scale="clicks", method="delta")
    # position 1: sum w r / sum w = 4 / 4 = 1; position 2: 0 / 2 = 0; both reached by all
    assert sn.value == pytest.approx(1.0)
    assert e.support["matched_positions"] == 2


def test_logger_inference_and_joint_propensities():
    eps, n = 0.2, 3
    hi, lo = 1 - eps + eps / n, eps / n
    log = _two_request_log((hi, hi, lo, lo))
    assert log.logger.kind == "epsilon_uniform"
    assert log.logger.epsilon == pytest.approx(eps)
    # request 0 showed the greedy slate: P(prefix 1) = (1-eps) + eps/3, P(slate) = (1-eps) + eps/6
    np.testing.assert_allclose(log.prefix_pscore[0], [1 - eps + eps / 3, 1 - eps + eps / 6])
    np.testing.assert_allclose(log.prefix_pscore[1], [eps / 3, eps / 6])


def test_marginals_that_fit_no_logger_make_sips_rips_not_computable():
    log = _two_request_log((0.5, 0.3, 0.7, 0.1))
    assert log.logger.kind == "unknown" and log.prefix_pscore is None
    tgt = target_slates(log, np.array([1, 2, 3, 2, 3, 1]), np.array([0, 0, 0, 1, 1, 1]))
    for name in ("sips", "snsips", "rips", "snrips"):
        e = estimate(name, log, tgt)
        assert e.status == "not_computable" and e.value is None
        assert "propensities unavailable" in e.reason
    assert estimate("iips", log, tgt).ok


def test_infer_logger_without_randomisation():
    p = np.array([[1.0, 1.0]])
    model, _ = infer_logger(p, np.ones((1, 2), bool), np.array([5]), np.array([True]))
    assert model.kind == "epsilon_uniform" and model.epsilon == 0.0
    assert "never randomised" in model.note


def test_zero_support_returns_reason():
    # a logger that never randomised (propensity 1): a target that agrees nowhere has no support
    data = engine.prepare_replay(synthetic_log(300, seed=1, epsilon=0.0))
    assert data.log.logger.epsilon == 0.0
    nowhere = np.full(data.n_rows, 99, dtype=np.int64)  # every candidate ranked beyond the slate
    tgt = target_slates(data.log, nowhere, data.row_request)
    for name in ("iips", "sniips", "rips", "sips"):
        e = estimate(name, data.log, tgt)
        assert e.status == "no_support" and e.value is None
        assert "zero support" in e.reason and "randomised" in e.reason
    # every estimator still answers (a number or a reason) for real weights
    ests = engine.off_policy(data, ALT, n_boot=50)
    assert [e.estimator for e in ests] == list(ESTIMATORS)
    assert all((e.value is None) == (e.status in ("no_support", "not_computable")) for e in ests)


def test_missing_propensities_say_only_biased_replay_is_possible():
    frame = synthetic_log(200, seed=2, propensities=False)
    data = engine.prepare_replay(frame)
    assert data.log.propensity_status == "missing" and not data.has_propensities
    for e in engine.off_policy(data, ALT, n_boot=50):
        assert e.status == "no_propensities" and e.value is None
        assert "biased on-policy replay" in e.reason
    rep = engine.replay(data, ALT, n_boot=50)
    assert rep.summary["note"].str.contains("biased").all()


def test_partial_propensities_are_left_out_and_said():
    frame = synthetic_log(400, seed=3)
    first_req = frame["request_id"].iloc[0]
    frame.loc[frame["request_id"] == first_req, "propensity"] = np.nan
    data = engine.prepare_replay(frame)
    assert data.log.propensity_status == "partial"
    e = engine.off_policy(data, DEFAULT_WEIGHTS, estimators=["iips"], n_boot=50)[0]
    assert e.n_requests == 399
    assert "lack propensities and are left out" in e.population


def test_practically_unsupported_slates_are_flagged():
    frame = synthetic_log(3000, seed=4)
    data = engine.prepare_replay(frame)
    ests = {e.estimator: e for e in engine.off_policy(data, ALT, estimators=["iips", "sips"],
                                                      n_boot=100)}
    assert ests["iips"].ok
    assert ests["sips"].status == "weak_support"
    assert "never logged" in ests["sips"].reason


def test_logger_sanity_on_synthetic_log():
    data = engine.prepare_replay(synthetic_log(4000, seed=5))
    check = engine.logger_sanity(data, n_boot=300)
    assert check.consistent, check.sentence
    assert check.greedy_requests > 0.85 * data.n_requests


@pytest.mark.slow
def test_estimators_cover_the_truth_in_most_seeds():
    """The 95% CI of iips / sniips / dr covers the exact CTR of the target weights in the large
    majority of seeds, for the logger's own weights and for different ones."""
    hits: dict[tuple[str, str], list[bool]] = {}
    for seed in range(6):
        frame = synthetic_log(2000, seed=100 + seed)
        data = engine.prepare_replay(frame)
        for w in (DEFAULT_WEIGHTS, ALT):
            truth = true_ctr(frame, w)
            for e in engine.off_policy(data, w, estimators=["iips", "sniips", "dr"], n_boot=200,
                                       seed=seed):
                assert e.ok, e.reason
                hits.setdefault((w.version, e.estimator), []).append(e.ci_low <= truth <= e.ci_high)
    for key, h in hits.items():
        assert np.mean(h) >= 0.75, (key, h)


@pytest.mark.slow
def test_estimates_cover_expected_ctr_on_simulated_exports(tmp_path):
    """On the simulator's exports (per-user logging weights, epsilon-randomised slates), the
    recommended estimator's CI covers the simulator's expected_ctr in most seeds, and the logger
    sanity check holds."""
    from whispers_lab.export import open_export
    from whispers_lab.queries.replay import replay_candidates
    from whispers_lab.simulate import simulate_to
    from whispers_lab.simulate.clicks import expected_ctr

    third = Weights(context=0.3, recency=0.05, frequency=0.3, novelty=0.3, pinned=0.05,
                    version="third")
    covered, sane = [], []
    for seed in range(2):
        path, _ = simulate_to(tmp_path / f"sim{seed}.duckdb", users=2000, seed=seed)
        with open_export(path) as exp:
            frame = replay_candidates(exp)
        data = engine.prepare_replay(frame)
        for w in (DEFAULT_WEIGHTS, ALT, third):
            e = engine.off_policy(data, w, estimators=["sniips"], n_boot=200, seed=seed)[0]
            covered.append(e.ci_low <= expected_ctr(frame, w) <= e.ci_high)
        sane.append(engine.logger_sanity(data, n_boot=200, seed=seed).consistent)
    assert np.mean(covered) >= 5 / 6, covered
    assert all(sane), sane


def test_estimates_frame_has_one_row_per_estimator():
    from whispers_lab.replay.ope import estimates_frame

    data = engine.prepare_replay(synthetic_log(500, seed=6))
    table = estimates_frame(engine.off_policy(data, ALT, n_boot=50))
    assert list(table["estimator"]) == list(ESTIMATORS)
    assert isinstance(table, pd.DataFrame)
