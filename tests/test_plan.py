"""The plan file: the seed plan's numbers, and a clear error naming the key for each bad kind."""

from __future__ import annotations

import copy
import datetime as dt
import tomllib

import pytest

from whispers_lab.errors import PlanError
from whispers_lab.paths import DEFAULT_PLAN
from whispers_lab.plan import load_plan, parse_plan


@pytest.fixture(scope="module")
def raw() -> dict:
    return tomllib.loads(DEFAULT_PLAN.read_text())


def test_default_plan_reproduces_the_seed_numbers():
    plan = load_plan()
    ids = [p.id for p in plan.phases]
    assert ids == ["internal", "beta", "rollout_10", "rollout_25", "rollout_50", "rollout_100"]
    days = [(p.first_day, p.last_day) for p in plan.phases]
    assert days == [(0, 2), (3, 7), (8, 9), (10, 11), (12, 13), (14, 14)]
    assert plan.percentage_stages() == ((8, 10.0), (10, 25.0), (12, 50.0), (14, 100.0))
    assert [p.audience for p in plan.phases[:2]] == ["internal", "beta"]
    assert (plan.beta.min_users, plan.beta.max_users, plan.beta.min_micro_memories) == (5, 10, 10)
    assert plan.flags == {
        "NEXT_PUBLIC_WHISPERS_ENABLED": True,
        "NEXT_PUBLIC_WHISPERS_CONTEXT_RANKING": True,
        "NEXT_PUBLIC_WHISPERS_MAX": 6,
        "NEXT_PUBLIC_WHISPERS_RANKING_TIMEOUT_MS": 200,
    }
    c = plan.criteria
    assert c.ranking_timeout_ms == 200 and c.max_ranking_timeouts == 0
    assert c.error_rate == 0.02 and c.avg_response_ms == 100
    assert c.uptime == 0.995 and c.p95_response_ms == 150 and c.weight_fallback_rate == 0.02
    assert c.ctr == 0.15 and c.feedback_score == 4.0 and c.relevance == 0.80
    assert c.critical_bugs == 0 and c.privacy_incidents == 0
    assert plan.threshold("weight_fallback_rate", 5) == 0.05  # beta: "no fallback rate > 5%"
    assert plan.threshold("weight_fallback_rate", 8) == 0.02  # success metric: < 2%
    t = plan.triggers
    assert (t.error_rate, t.error_rate_minutes) == (0.05, 10)
    assert (t.avg_response_ms, t.avg_response_minutes) == (300, 5)
    assert plan.rollback_monitor_minutes == 15
    assert plan.rollback_flags == {"NEXT_PUBLIC_WHISPERS_ENABLED": False}
    # the numbers the seed lacks and the plan adds
    assert 0 < plan.assignment.holdout_share < 0.5 and plan.assignment.salt
    assert plan.retention.margin > 0 and plan.retention.alpha == 0.05
    assert plan.cue_cooldown_minutes > 0


def test_calendar():
    plan = load_plan()
    assert plan.day_start(0) == dt.datetime.combine(plan.start_date, dt.time())
    assert plan.day_of(plan.day_start(9) + dt.timedelta(hours=23)) == 9
    assert plan.phase_for_day(9).percentage == 10
    assert plan.phase_for_day(20).id == "rollout_100"
    assert plan.next_phase(9).id == "rollout_25"
    assert plan.next_phase(14) is None
    with pytest.raises(PlanError, match="before the rollout start"):
        plan.phase_for_day(-1)


def _broken(raw: dict, edit) -> str:
    data = copy.deepcopy(raw)
    edit(data)
    with pytest.raises(PlanError) as info:
        parse_plan(data, source="plan.toml")
    return str(info.value)


CASES = [
    # missing keys
    ("missing top key", lambda d: d.pop("start_date"), "'start_date' is missing"),
    ("missing nested key", lambda d: d["assignment"].pop("salt"), "'assignment.salt' is missing"),
    ("missing phase key", lambda d: d["phases"][2].pop("percentage"), "'phases[2].percentage' is missing"),
    ("missing criterion", lambda d: d["criteria"].pop("ctr"), "'criteria.ctr' is missing"),
    ("missing flag", lambda d: d["flags"].pop("NEXT_PUBLIC_WHISPERS_MAX"), "'flags.NEXT_PUBLIC_WHISPERS_MAX' is missing"),
    # wrong types
    ("string for number", lambda d: d["criteria"].__setitem__("error_rate", "2%"), "'criteria.error_rate' must be a number"),
    ("bool for number", lambda d: d["triggers"].__setitem__("error_rate_minutes", True), "'triggers.error_rate_minutes' must be an integer"),
    ("float for int", lambda d: d["beta"].__setitem__("max_users", 10.5), "'beta.max_users' must be an integer"),
    ("number for flag bool", lambda d: d["flags"].__setitem__("NEXT_PUBLIC_WHISPERS_ENABLED", 1), "'flags.NEXT_PUBLIC_WHISPERS_ENABLED' must be a boolean"),
    ("string date", lambda d: d.__setitem__("start_date", "soon"), "'start_date' must be a date"),
    ("table expected", lambda d: d.__setitem__("retention", 3), "'retention' must be a table"),
    # out of range
    ("holdout too big", lambda d: d["assignment"].__setitem__("holdout_share", 0.9), "'assignment.holdout_share' must be <= 0.5"),
    ("probability > 1", lambda d: d["criteria"].__setitem__("ctr", 15), "'criteria.ctr' must be <= 1.0"),
    ("alpha zero", lambda d: d["retention"].__setitem__("alpha", 0), "'retention.alpha' must be > 0"),
    ("feedback off scale", lambda d: d["criteria"].__setitem__("feedback_score", 7.0), "'criteria.feedback_score' must be within"),
    # unknown names
    ("typo key", lambda d: d["triggers"].__setitem__("eror_rate", 0.05), "'triggers.eror_rate' is not a known plan key"),
    ("unknown flag", lambda d: d["flags"].__setitem__("NEXT_PUBLIC_WHISPERS_FOO", True), "'flags.NEXT_PUBLIC_WHISPERS_FOO' is not a known flag"),
    ("unknown criterion", lambda d: d["phases"][0]["required"].append("vibes"), "'phases[0].required' lists unknown criterion 'vibes'"),
    ("bad audience", lambda d: d["phases"][1].__setitem__("audience", "friends"), "'phases[1].audience' must be one of"),
    # contradictions
    ("beta min > max", lambda d: d["beta"].__setitem__("min_users", 12), "'beta.min_users' (12) contradicts max_users (10)"),
    ("phase gap", lambda d: d["phases"][3].__setitem__("first_day", 11), "'phases[3].first_day' (11) must follow"),
    ("phase reversed", lambda d: d["phases"][2].__setitem__("last_day", 7), "'phases[2].first_day' (8) is after last_day (7)"),
    ("non-monotone", lambda d: d["phases"][4].__setitem__("percentage", 20), "'phases[4].percentage' (20.0) is below"),
    ("last day", lambda d: d.__setitem__("last_day", 21), "'last_day' (21) contradicts"),
    ("trigger under budget", lambda d: d["triggers"].__setitem__("error_rate", 0.01), "'triggers.error_rate' (0.01) is below"),
    ("primary k", lambda d: d["retention"].__setitem__("primary_k", 3), "'retention.primary_k' (3) is not one of k_days"),
    ("rollback enables", lambda d: d["rollback"]["flags"].__setitem__("NEXT_PUBLIC_WHISPERS_ENABLED", True), "'rollback.flags' must set"),
    ("required and watched", lambda d: d["phases"][0]["watched"].append("cue_cooldown"), "'phases[0].watched' repeats required criterion 'cue_cooldown'"),
    ("override unknown", lambda d: d["phases"][1]["thresholds"].__setitem__("vibes", 1), "'phases[1].thresholds.vibes' is not a criterion threshold"),
]


@pytest.mark.parametrize(("edit", "message"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_bad_plan_names_the_key(raw, edit, message):
    text = _broken(raw, edit)
    assert text.startswith("plan.toml: key ") or "plan.toml" in text
    assert message in text


def test_missing_and_unparsable_files(tmp_path):
    with pytest.raises(PlanError, match="does not exist"):
        load_plan(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("version = [\n")
    with pytest.raises(PlanError, match="not valid TOML"):
        load_plan(bad)
