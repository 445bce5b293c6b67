"""The three state scenarios end to end (simulated exports, evaluate_day): a held rollout and a
late flip give no false sample-ratio failure and no false hold, whichever source the state comes
from; stale flags for returning users block GO while the sample-ratio check stays blind to them.
Against them, a workbench that assumed the calendar would hold a healthy rollout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from whispers_lab.evaluate import DayEvaluation, evaluate_day
from whispers_lab.export import open_export
from whispers_lab.plan import load_plan
from whispers_lab.simulate import simulate_to

PLAN = load_plan()
USERS = 5000
SEED = 11
UNJUDGED = ("inconclusive", "no_data")


def _sim(tmp_path_factory: pytest.TempPathFactory, name: str, scenarios: list[str],
         through: int, flag_log: bool = True) -> tuple[Path, dict[str, Any]]:
    folder = tmp_path_factory.mktemp(name)
    path, truth = simulate_to(folder / "export.duckdb", USERS, SEED, through_day=through,
                              scenarios=scenarios, with_flag_log=flag_log)
    return path, json.loads(Path(truth).read_text())


def _reports(folder: Path, decisions: dict[int, str]) -> Path:
    for d, verdict in decisions.items():
        (folder / f"day-{d:02d}").mkdir(parents=True, exist_ok=True)
        (folder / f"day-{d:02d}" / "decision.json").write_text(json.dumps({"decision": verdict}))
    return folder


def _no_false_hold(ev: DayEvaluation) -> None:
    why = f"day {ev.day} ({ev.state.source}) {ev.decision.decision}: {ev.decision.reasons}"
    assert ev.result("srm").status != "fail", why
    assert ev.result("assignment_integrity").status == "pass", why
    assert ev.decision.decision != "ROLLBACK", why
    assert all(ev.result(b).status in UNJUDGED for b in ev.decision.blocking), why
    assert ev.decision.code in ("all_pass", "not_enough_evidence"), why


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory):
    with_log, truth = _sim(tmp_path_factory, "held", ["held_rollout"], 11)
    without, _ = _sim(tmp_path_factory, "held_nolog", ["held_rollout"], 11, flag_log=False)
    decisions = {d: "GO" for d in range(9)} | {9: "NO_GO", 10: "NO_GO"}
    reports = _reports(tmp_path_factory.mktemp("held_reports"), decisions)
    out = {"truth": truth}
    with open_export(with_log) as ex:
        out["log"] = {d: evaluate_day(ex, d, PLAN) for d in (10, 11)}
    with open_export(without) as ex:
        out["decisions"] = {d: evaluate_day(ex, d, PLAN, reports_dir=reports) for d in (10, 11)}
        out["calendar"] = evaluate_day(ex, 10, PLAN)
    return out


def test_held_rollout_truth(held):
    truth = held["truth"]
    stages = [(s["day"], s["percentage"]) for s in truth["rollout"]["stages"]]
    assert stages[2:] == [(8, 10.0)]                       # 10% on days 8-11 (through day 11)
    assert truth["rollout"]["schedule"] == {"stages": [8, 12, 14, 16], "final_day": 16}
    (entry,) = truth["scenarios"]
    assert entry["expected"]["decision"] == "unaffected"
    assert entry["expected"]["unaffected"] == ["srm", "assignment_integrity"]


@pytest.mark.parametrize("source", ["log", "decisions"])
def test_held_rollout_no_false_failure(held, source):
    for day, ev in held[source].items():
        assert ev.state.source == {"log": "flag_log", "decisions": "decisions"}[source]
        assert ev.phase.id == "rollout_10" and ev.state.stage_on(day).percentage == 10
        # projected as every later day GO from the day's own decision on
        assert ev.state.schedule().final_day == day + 5
        _no_false_hold(ev)
        if ev.decision.decision == "GO":  # the 10% stage ran its course: advance, not continue
            assert ev.decision.next_step.action == "advance"
            assert ev.decision.next_step.percentage == 25


def test_held_rollout_against_an_assumed_calendar(held):
    """What the issue describes: a workbench that assumes the calendar sees the held 10% as a
    broken 25% stage and holds the healthy rollout."""
    ev = held["calendar"]
    assert ev.state.source == "calendar" and ev.phase.id == "rollout_25"
    integrity = ev.result("assignment_integrity")
    assert integrity.status == "fail" and integrity.code == "assignment_broken"
    assert integrity.details["treatment_served_control"] > 0
    assert ev.decision.decision == "NO_GO"


@pytest.fixture(scope="module")
def late(tmp_path_factory: pytest.TempPathFactory):
    with_log, truth = _sim(tmp_path_factory, "late", ["late_flip"], 10)
    without, _ = _sim(tmp_path_factory, "late_nolog", ["late_flip"], 10, flag_log=False)
    reports = _reports(tmp_path_factory.mktemp("late_reports"), {d: "GO" for d in range(10)})
    with open_export(with_log) as ex:
        log = evaluate_day(ex, 10, PLAN)
    with open_export(without) as ex:
        dec = evaluate_day(ex, 10, PLAN, reports_dir=reports)
    return truth, log, dec


def test_late_flip_no_false_failure(late):
    truth, log, dec = late
    flip = [s for s in truth["rollout"]["stages"] if s["day"] == 10]
    assert flip[0]["at"] == "2026-12-11T09:00:00" and flip[0]["percentage"] == 25.0
    for ev in (log, dec):
        assert ev.phase.id == "rollout_25"
        _no_false_hold(ev)
    # the flag log knows the time: only the grace minutes are unjudged; the decisions do not:
    # the users the 25% stage moved are not judged on day 10
    assert log.state.stage_on(10).at is not None
    assert (log.result("assignment_integrity").details["unsure_only"]
            < dec.result("assignment_integrity").details["unsure_only"])


@pytest.fixture(scope="module", params=["whispers", "control"])
def stale(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    path, truth = _sim(tmp_path_factory, f"stale_{request.param}",
                       [f"stale_flags:direction={request.param}"], 10)
    with open_export(path) as ex:
        yield request.param, truth, evaluate_day(ex, 10, PLAN)


def test_stale_flags_block_go(stale):
    direction, truth, ev = stale
    (entry,) = truth["scenarios"]
    assert entry["expected"]["criterion"] == "assignment_integrity"
    assert entry["expected"]["first_decision_day"] == 10
    result = ev.result("assignment_integrity")
    assert (result.status, result.code) == ("fail", "assignment_broken"), result.reason
    assert "assignment_integrity" in ev.decision.blocking
    assert ev.decision.decision == "NO_GO" and ev.decision.code == "criterion_failed"
    kind = {"whispers": "control_served_whispers", "control": "treatment_served_control"}
    assert result.details[kind[direction]] > 0
    # the returning users are not first exposures: the sample-ratio check does not see them
    assert ev.result("srm").status != "fail"
    # the by-plan comparisons say how much they are diluted
    dil = ev.result("retention").details.get("dilution")
    assert dil is not None and dil["factor"] < 1.0
