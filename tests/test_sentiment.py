"""Positive user sentiment (issue 15, Phase 2): the plan's [sentiment], the net score's
user-clustered interval (checked against statsmodels), its SQL (checked against pandas), the
tolerance-region verdicts, the watched role in the beta, and end to end on simulated exports."""

from __future__ import annotations

import copy
import datetime as dt
import tomllib

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from whispers_lab import rules
from whispers_lab.decision import decide, role_of
from whispers_lab.errors import PlanError
from whispers_lab.evaluate import evaluate_day
from whispers_lab.export import open_export, write_export
from whispers_lab.paths import DEFAULT_PLAN
from whispers_lab.plan import load_plan, parse_plan
from whispers_lab.queries import experiment as qe
from whispers_lab.queries.sentiment import sentiment_units
from whispers_lab.results import CriterionResult
from whispers_lab.simulate import simulate_to
from whispers_lab.stats.sentiment import NetScoreUnits, net_score_vs_threshold
from whispers_lab.stats.settings import StatSettings
from whispers_lab.stats.sufficient import ratio_from_units

from factories import valid_tables

PLAN = load_plan()
SETTINGS = StatSettings.from_plan(PLAN)


def _units(ratings: np.ndarray, users: np.ndarray) -> NetScoreUnits:
    """Per-user sums of answer-level ratings, as the SQL returns them."""
    frame = pd.DataFrame({"u": users, "pos": ratings >= 4, "neg": ratings <= 2})
    per = frame.groupby("u").agg(n=("pos", "size"), pos=("pos", "sum"), neg=("neg", "sum"))
    stat = ratio_from_units((per["pos"] - per["neg"]).to_numpy(float), per["n"].to_numpy(float))
    return NetScoreUnits(stat, float(per["pos"].sum()), float(per["neg"].sum()))


def _clustered_answers(seed: int, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Answers of users with a personal mood: one user's ratings are correlated."""
    rng = np.random.default_rng(seed)
    mood = rng.normal(0.0, 1.2, n_users)
    per_user = rng.integers(1, 7, n_users)
    users = np.repeat(np.arange(n_users), per_user)
    latent = 3.9 + mood[users] + rng.normal(0.0, 0.7, users.size)
    return np.clip(np.rint(latent), 1, 5).astype(int), users


# -- the statistic ----------------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "n_users"), [(1, 12), (2, 60), (3, 400)])
def test_net_score_interval_is_statsmodels_cluster_robust_interval(seed: int, n_users: int):
    ratings, users = _clustered_answers(seed, n_users)
    score = (ratings >= 4).astype(float) - (ratings <= 2).astype(float)
    r = net_score_vs_threshold(_units(ratings, users), 0.5, SETTINGS, tolerance=0.05,
                               min_answers=1, what="Net sentiment")
    # independent computation: intercept-only OLS of the per-answer score, CR1 covariance
    # clustered by user, t with users - 1 degrees of freedom
    fit = sm.OLS(score, np.ones((score.size, 1))).fit(
        cov_type="cluster", cov_kwds={"groups": users}, use_t=True)
    lo, hi = fit.conf_int(alpha=2 * SETTINGS.alpha)[0]
    assert r.estimate == pytest.approx(score.mean(), abs=1e-12)
    assert (r.ci_low, r.ci_high) == (pytest.approx(lo, abs=1e-10), pytest.approx(hi, abs=1e-10))
    assert r.n == n_users and r.details["answers"] == score.size


def test_clustering_widens_the_interval_when_users_answer_alike():
    ratings, users = _clustered_answers(4, 80)
    clustered = net_score_vs_threshold(_units(ratings, users), 0.5, SETTINGS, tolerance=0.05,
                                       min_answers=1, what="x")
    # the same answers as if every one came from its own user
    independent = net_score_vs_threshold(_units(ratings, np.arange(ratings.size)), 0.5,
                                         SETTINGS, tolerance=0.05, min_answers=1, what="x")
    assert clustered.estimate == pytest.approx(independent.estimate)
    width = clustered.ci_high - clustered.ci_low
    assert width > 1.2 * (independent.ci_high - independent.ci_low)


def _stat(positive: int, neutral: int, negative: int, users: int) -> NetScoreUnits:
    """Answers spread round-robin over ``users`` users."""
    ratings = np.array([5] * positive + [3] * neutral + [1] * negative)
    return _units(ratings, np.arange(ratings.size) % users)


@pytest.mark.parametrize(("counts", "status", "code"), [
    ((90, 5, 5, 60), "pass", "pass"),                           # net +0.85
    ((40, 30, 30, 60), "fail", "threshold_missed"),             # net +0.10, shown below +0.50
    ((30, 5, 10, 20), "inconclusive", "insufficient_evidence"),  # net +0.44: interval spans it
])
def test_tolerance_region_verdicts(counts, status, code):
    r = net_score_vs_threshold(_stat(*counts), 0.5, SETTINGS, tolerance=0.05, min_answers=30,
                               what="Net sentiment")
    assert (r.status, r.details["code"]) == (status, code), r.sentence
    answers = sum(counts[:3])
    assert f"{answers} answer(s) of {counts[3]} user(s)" in r.sentence
    if status == "pass":
        assert r.ci_low > 0.45
    if status == "fail":
        assert r.ci_high < 0.5


def test_too_few_answers_is_inconclusive_and_says_how_many():
    r = net_score_vs_threshold(_stat(12, 1, 0, 8), 0.5, SETTINGS, tolerance=0.05,
                               min_answers=30, what="Net sentiment")
    assert r.status == "inconclusive" and r.details["code"] == "insufficient_evidence"
    assert "only 13 answer(s) of 8 user(s)" in r.sentence and "at least 30" in r.sentence
    assert r.estimate == pytest.approx(12 / 13)


def test_no_answers_is_no_data_and_few_users_never_pass():
    empty = NetScoreUnits(ratio_from_units(np.zeros(0), np.zeros(0)), 0.0, 0.0)
    r = net_score_vs_threshold(empty, 0.5, SETTINGS, tolerance=0.05, min_answers=1, what="x")
    assert r.status == "no_data" and r.details["code"] == "no_data"
    few = net_score_vs_threshold(_stat(40, 0, 0, 3), 0.5, SETTINGS, tolerance=0.05,
                                 min_answers=30, what="x")  # 40 happy answers, 3 users
    assert few.status == "inconclusive"


# -- the SQL ----------------------------------------------------------------------------------


def test_sql_sums_equal_pandas_and_leave_out_internal_users_and_other_days(tmp_path):
    t = valid_tables()
    start = PLAN.day_start(8)
    ids = ["u1", "u2", "u3", "u4"]  # u1 is internal
    t["users"] = pd.DataFrame({
        "user_id": ids, "signup_at": [start - dt.timedelta(days=50)] * 4,
        "is_internal": [True, False, False, False],
        "micro_memory_count": pd.array([3] * 4, dtype="int32"), "engagement_score": [0.5] * 4})
    rows = [("u1", 0, 5), ("u2", 0, 5), ("u2", 1, 4), ("u2", 2, 1), ("u3", 0, 3),
            ("u3", 3, 2), ("u4", 1, 5), ("u4", 6, 5),  # day 6 after the window
            ("u2", -1, 1)]                              # before the window
    t["feedback"] = pd.DataFrame({
        "user_id": [u for u, _, _ in rows],
        "submitted_at": [start + dt.timedelta(days=d, hours=3) for _, d, _ in rows],
        "rating": pd.array([r for _, _, r in rows], dtype="int32"),
        "relevant": [True] * len(rows)})
    path = write_export(t, tmp_path / "fb.duckdb")
    with open_export(path, validate=False) as ex:
        qe.register_cohort(ex, pd.DataFrame({"user_id": ids,
                                             "reason": ["internal", "percentage", "holdout",
                                                        "percentage"],
                                             "first_enabled_day": [0.0, 8.0, np.inf, 8.0]}))
        got = sentiment_units(ex, start, start + dt.timedelta(days=5), (4, 5), (1, 2))
    keep = [(u, r) for u, d, r in rows if u != "u1" and 0 <= d < 5]
    frame = pd.DataFrame(keep, columns=["u", "r"])
    frame["net"] = (frame["r"] >= 4).astype(int) - (frame["r"] <= 2).astype(int)
    per = frame.groupby("u").agg(net=("net", "sum"), n=("r", "size"))
    expected = ratio_from_units(per["net"].to_numpy(float), per["n"].to_numpy(float))
    assert got["n"] == expected.n == 3
    for key, value in (("sum_num", expected.sum_num), ("sum_den", expected.sum_den),
                       ("sum_num2", expected.sum_num2), ("sum_den2", expected.sum_den2),
                       ("sum_num_den", expected.sum_num_den)):
        assert got[key] == pytest.approx(value), key
    assert (got["positive"], got["negative"]) == (3.0, 2.0)


# -- the plan, the rule and the decision --------------------------------------------------------


def test_the_plan_defines_sentiment_and_watches_it_from_the_beta():
    s = PLAN.sentiment
    assert s is not None and s.positive_ratings == (4, 5) and s.negative_ratings == (1, 2)
    assert s.net_score == 0.5 and s.min_answers >= 1 and s.window == "audience"
    assert PLAN.tolerance["sentiment"] == s.tolerance and PLAN.window_start("sentiment", 12) == 8
    assert rules.threshold(PLAN, "sentiment", 5) == 0.5
    for day in range(PLAN.last_day + 1):
        phase = PLAN.phase_for_day(day)
        want = "info" if phase.audience == "internal" else "watched"
        assert role_of("sentiment", phase) == want, day


@pytest.fixture(scope="module")
def raw() -> dict:
    return tomllib.loads(DEFAULT_PLAN.read_text())


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d.pop("sentiment"), "'sentiment' is missing: phase 'beta' lists"),
    (lambda d: d["sentiment"].__setitem__("negative_ratings", [2, 4]), "overlaps"),
    (lambda d: d["sentiment"].__setitem__("positive_ratings", [4, 6]), "distinct ratings"),
    (lambda d: d["sentiment"].__setitem__("window", "week"), "'sentiment.window' must be one of"),
    (lambda d: d["sentiment"].__setitem__("net_score", 2.0), "'sentiment.net_score' must be <= 1"),
    (lambda d: d["sentiment"].pop("min_answers"), "'sentiment.min_answers' is missing"),
])
def test_bad_sentiment_table_names_the_key(raw, edit, message):
    data = copy.deepcopy(raw)
    edit(data)
    with pytest.raises(PlanError, match=r"plan\.toml") as info:
        parse_plan(data, source="plan.toml")
    assert message in str(info.value)


def test_a_plan_without_sentiment_has_no_sentiment_criterion(raw):
    data = copy.deepcopy(raw)
    data.pop("sentiment")
    for phase in data["phases"]:
        phase["watched"] = [c for c in phase.get("watched", []) if c != "sentiment"]
    plan = parse_plan(data)
    assert plan.sentiment is None and "sentiment" not in plan.tolerance
    r = rules.sentiment(None, plan, 9)
    assert r.status == "no_data" and "[sentiment]" in r.reason


def _results(day: int, status: str, code: str) -> list[CriterionResult]:
    """Every criterion and trigger passing, sentiment with ``status``."""
    from whispers_lab.plan import CRITERION_IDS, TRIGGER_IDS

    out = [CriterionResult(cid, "criterion", 1.0, 1.0,
                           status if cid == "sentiment" else "pass", "r",
                           code=code if cid == "sentiment" else "pass")
           for cid in CRITERION_IDS]
    out += [CriterionResult(tid, "trigger", 0, 1, "pass", "quiet") for tid in TRIGGER_IDS]
    return out


def test_watched_in_the_beta_a_thin_net_score_informs_and_a_shown_shortfall_blocks():
    thin = decide(_results(5, "inconclusive", "insufficient_evidence"), 5, PLAN)
    assert thin.decision == "GO" and any("sentiment" in n for n in thin.notes)
    low = decide(_results(5, "fail", "threshold_missed"), 5, PLAN)
    assert low.decision == "NO_GO" and low.blocking == ("sentiment",)
    assert low.code == "criterion_failed"


# -- end to end -------------------------------------------------------------------------------


def test_healthy_export_passes_sentiment_by_the_last_day(small_export):
    with open_export(small_export) as ex:
        ev = evaluate_day(ex, 14, PLAN)
        beta = evaluate_day(ex, 5, PLAN)
    r = ev.result("sentiment")
    assert r.status == "pass" and r.code == "pass", r.reason
    assert r.details["answers"] >= PLAN.sentiment.min_answers
    assert r.value == pytest.approx(r.details["share_positive"] - r.details["share_negative"])
    assert ev.decision.roles["sentiment"] == "watched"
    b = beta.result("sentiment")  # 5-10 beta users: thin, watched, says how many answers
    assert b.status in ("inconclusive", "no_data") and "answer" in b.reason
    assert "sentiment" not in beta.decision.blocking


@pytest.fixture(scope="module")
def unhappy_export(tmp_path_factory: pytest.TempPathFactory):
    path, _ = simulate_to(tmp_path_factory.mktemp("unhappy") / "unhappy.duckdb", users=3000,
                          seed=7, through_day=13, scenarios=["low_feedback:day=8"])
    return path


def test_unhappy_survey_fails_sentiment_and_holds_the_rollout(unhappy_export):
    with open_export(unhappy_export) as ex:
        ev = evaluate_day(ex, 13, PLAN)
    r = ev.result("sentiment")
    assert r.status == "fail" and r.code == "threshold_missed", r.reason
    assert r.details["ci_high"] < PLAN.sentiment.net_score
    assert "sentiment" in ev.decision.blocking and ev.decision.decision != "GO"
