"""decide(): every branch, the next step of every phase, flags, decision.json, monotonicity."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from whispers_lab.decision import (
    SCHEMA_VERSION,
    VERDICT_RANK,
    decide,
    next_step,
    role_of,
)
from whispers_lab.plan import CRITERION_IDS, TRIGGER_IDS, load_plan
from whispers_lab.results import STATUSES, CriterionResult

PLAN = load_plan()


def crit(cid: str, status: str = "pass") -> CriterionResult:
    return CriterionResult(id=cid, kind="criterion", value=1.0, threshold=1.0, status=status,
                           reason=f"{cid} is {status}.", unit="x")


def trig(tid: str, status: str = "pass") -> CriterionResult:
    return CriterionResult(id=tid, kind="trigger", value=0.0, threshold=10.0, status=status,
                           reason=f"{tid} is {status}.", unit="minutes")


def healthy(day: int, **overrides: str) -> list[CriterionResult]:
    """Every criterion and trigger passing, except ``overrides`` (id -> status)."""
    out = [crit(c, overrides.get(c, "pass")) for c in CRITERION_IDS]
    out += [trig(t, overrides.get(t, "pass")) for t in TRIGGER_IDS]
    return out


# ---------------------------------------------------------------------------------------
# branches


def test_all_pass_is_go():
    d = decide(healthy(9), 9, PLAN)
    assert d.decision == "GO" and d.blocking == () and d.fired == ()
    assert d.phase.id == "rollout_10"


@pytest.mark.parametrize("tid", TRIGGER_IDS)
def test_any_fired_trigger_is_rollback(tid):
    for day in (0, 4, 9, 14):
        d = decide(healthy(day, **{tid: "fail"}), day, PLAN)
        assert d.decision == "ROLLBACK" and d.fired == (tid,)
        assert d.next_step.action == "rollback"


def test_rollback_beats_everything_else():
    d = decide(healthy(9, trigger_db="fail", srm="fail", error_rate="no_data"), 9, PLAN)
    assert d.decision == "ROLLBACK"
    assert "srm" in d.blocking   # still reported


@pytest.mark.parametrize("status", ["fail", "inconclusive", "no_data"])
def test_required_not_passing_is_no_go(status):
    day = 9
    for cid in PLAN.phase_for_day(day).required:
        d = decide(healthy(day, **{cid: status}), day, PLAN)
        assert d.decision == "NO_GO" and cid in d.blocking, cid
        assert any(cid in r for r in d.reasons)


def test_required_missing_from_results_is_no_go():
    results = [r for r in healthy(9) if r.id != "srm"]
    d = decide(results, 9, PLAN)
    assert d.decision == "NO_GO" and d.blocking == ("srm",)
    assert d.roles["srm"] == "required"
    assert any("not evaluated" in r for r in d.reasons)


def test_watched_failing_is_no_go_but_watched_inconclusive_is_not():
    day = 9
    watched = PLAN.phase_for_day(day).watched
    assert "ctr" in watched
    assert decide(healthy(day, ctr="fail"), day, PLAN).decision == "NO_GO"
    for status in ("inconclusive", "no_data"):
        d = decide(healthy(day, ctr=status), day, PLAN)
        assert d.decision == "GO" and any("ctr" in n for n in d.notes)


def test_info_criteria_never_block():
    day = 0
    phase = PLAN.phase_for_day(day)
    info = [c for c in CRITERION_IDS if c not in phase.required and c not in phase.watched]
    assert "srm" in info and "retention" in info
    overrides = dict.fromkeys(info, "fail")
    d = decide(healthy(day, **overrides), day, PLAN)
    assert d.decision == "GO" and all(d.roles[c] == "info" for c in info)


@pytest.mark.parametrize("day", [0, 4, 9, 14])
@pytest.mark.parametrize("tid", TRIGGER_IDS)
def test_trigger_without_data_blocks_go_everywhere(day, tid):
    d = decide(healthy(day, **{tid: "no_data"}), day, PLAN)
    assert d.decision == "NO_GO" and tid in d.blocking


def test_inconclusive_minute_trigger_blocks_only_percentage_phases():
    for tid in ("trigger_error_rate", "trigger_latency"):
        assert decide(healthy(9, **{tid: "inconclusive"}), 9, PLAN).decision == "NO_GO"
        for day in (0, 4):
            d = decide(healthy(day, **{tid: "inconclusive"}), day, PLAN)
            assert d.decision == "GO" and d.roles[tid] == "watched"
            assert any(tid in n for n in d.notes)
    d = decide(healthy(4, trigger_db="inconclusive"), 4, PLAN)
    assert d.decision == "NO_GO"


def test_roles():
    beta = PLAN.phase_for_day(4)
    assert role_of("error_rate", beta) == "required"
    assert role_of("relevance", beta) == "watched"
    assert role_of("retention", beta) == "info"
    assert role_of("trigger_error_rate", beta) == "watched"
    assert role_of("trigger_privacy", beta) == "required"
    assert role_of("trigger_error_rate", PLAN.phase_for_day(8)) == "required"


# ---------------------------------------------------------------------------------------
# next step per phase


@pytest.mark.parametrize(("day", "action", "phase", "audience", "pct"), [
    (0, "continue", "internal", "internal", 0.0),
    (2, "advance", "beta", "beta", 0.0),
    (3, "continue", "beta", "beta", 0.0),
    (7, "advance", "rollout_10", "percentage", 10.0),
    (8, "continue", "rollout_10", "percentage", 10.0),
    (9, "advance", "rollout_25", "percentage", 25.0),
    (11, "advance", "rollout_50", "percentage", 50.0),
    (13, "advance", "rollout_100", "percentage", 100.0),
    (14, "complete", "rollout_100", "percentage", 100.0),
])
def test_go_next_step_follows_the_plan(day, action, phase, audience, pct):
    step = decide(healthy(day), day, PLAN).next_step
    assert (step.action, step.day, step.phase, step.audience, step.percentage) == \
        (action, day + 1, phase, audience, pct)
    assert step.flags == dict(next(p for p in PLAN.phases if p.id == phase).flags)
    assert step.flags["NEXT_PUBLIC_WHISPERS_ENABLED"] is True


def test_first_phase_environment_is_staging():
    step = decide(healthy(0), 0, PLAN).next_step
    assert step.environment == "staging"
    assert decide(healthy(2), 2, PLAN).next_step.environment == "production"


@pytest.mark.parametrize("day", [2, 7, 9, 13])
def test_no_go_holds_the_current_audience_at_a_phase_boundary(day):
    current = PLAN.phase_for_day(day)
    d = decide(healthy(day, telemetry_flowing="fail"), day, PLAN)
    step = d.next_step
    assert d.decision == "NO_GO" and step.action == "hold"
    assert (step.day, step.phase, step.audience, step.percentage) == \
        (day + 1, current.id, current.audience, current.percentage)
    assert step.flags == dict(current.flags)
    assert any("telemetry_flowing" in s for s in step.instructions)


def test_rollback_step_sets_the_rollback_flags():
    d = decide(healthy(10, trigger_error_rate="fail"), 10, PLAN)
    step = d.next_step
    assert step.flags["NEXT_PUBLIC_WHISPERS_ENABLED"] is False
    assert step.flags["NEXT_PUBLIC_WHISPERS_MAX"] == 6          # untouched flags kept
    assert step.monitor_minutes == PLAN.rollback_monitor_minutes == 15
    assert step.audience == "none" and step.percentage == 0.0
    text = " ".join(step.instructions)
    assert "CDN" in text and "15 minutes" in text and "root cause" in text


def test_next_step_function_matches_decide():
    assert next_step("GO", 9, PLAN).phase == "rollout_25"
    assert next_step("NO_GO", 9, PLAN).phase == "rollout_10"


# ---------------------------------------------------------------------------------------
# decision.json


def test_decision_json_schema(tmp_path):
    results = healthy(9, ctr="inconclusive")
    d = decide(results, 9, PLAN)
    when = dt.datetime(2026, 12, 10, 18, 30, 5, 123)
    path = tmp_path / "out" / "decision.json"
    text = d.to_json(path, generated_at=when)
    doc = json.loads(path.read_text())
    assert doc == json.loads(text)
    assert doc["schema_version"] == SCHEMA_VERSION
    assert doc["generated_at"] == "2026-12-10T18:30:05Z"
    assert doc["plan"]["name"] == PLAN.name and doc["plan"]["source"] == PLAN.source
    assert doc["day"] == 9 and doc["date"] == "2026-12-10"
    assert doc["phase"]["id"] == "rollout_10" and doc["decision"] == "GO"
    assert set(doc["next_step"]) >= {"action", "day", "phase", "audience", "percentage", "flags"}
    assert [c["id"] for c in doc["criteria"]] == list(CRITERION_IDS)
    assert [t["id"] for t in doc["triggers"]] == list(TRIGGER_IDS)
    for entry in doc["criteria"] + doc["triggers"]:
        assert set(entry) >= {"id", "kind", "role", "value", "threshold", "status", "reason", "unit"}
        assert entry["role"] in ("required", "watched", "info")
        assert entry["status"] in STATUSES
    ctr = next(c for c in doc["criteria"] if c["id"] == "ctr")
    assert ctr["role"] == "watched" and ctr["status"] == "inconclusive"


def test_decision_json_has_no_nan():
    r = CriterionResult(id="error_rate", kind="criterion", value=float("nan"), threshold=0.02,
                        status="no_data", reason="none", details={"x": float("inf")})
    doc = json.loads(decide([r], 9, PLAN).to_json())
    entry = doc["criteria"][0]
    assert entry["value"] is None and entry["details"]["x"] is None


# ---------------------------------------------------------------------------------------
# monotonicity (hypothesis)

statuses = st.sampled_from(STATUSES)
results_strategy = st.lists(
    st.one_of(
        st.builds(crit, st.sampled_from(CRITERION_IDS), statuses),
        st.builds(trig, st.sampled_from(TRIGGER_IDS), statuses),
    ),
    max_size=25,
)
days = st.integers(min_value=0, max_value=16)


@settings(max_examples=300, deadline=None)
@given(results=results_strategy, day=days, tid=st.sampled_from(TRIGGER_IDS))
def test_a_fired_trigger_never_improves_the_decision(results, day, tid):
    before = decide(results, day, PLAN).decision
    after = decide([*results, trig(tid, "fail")], day, PLAN).decision
    assert after == "ROLLBACK"
    assert VERDICT_RANK[after] <= VERDICT_RANK[before]


@settings(max_examples=300, deadline=None)
@given(results=results_strategy, day=days, data=st.data())
def test_a_failing_required_criterion_never_improves_the_decision(results, day, data):
    cid = data.draw(st.sampled_from(PLAN.phase_for_day(day).required))
    before = decide(results, day, PLAN).decision
    after = decide([*results, crit(cid, "fail")], day, PLAN).decision
    assert after != "GO"
    assert VERDICT_RANK[after] <= VERDICT_RANK[before]


@settings(max_examples=200, deadline=None)
@given(results=results_strategy, day=days)
def test_go_only_when_every_required_criterion_passes(results, day):
    d = decide(results, day, PLAN)
    if d.decision == "GO":
        passing = {r.id for r in results if r.kind == "criterion" and r.status == "pass"}
        assert set(PLAN.phase_for_day(day).required) <= passing
        assert not any(r.kind == "trigger" and r.status in ("fail", "no_data") for r in results)
