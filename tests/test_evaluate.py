"""evaluate_day end to end: hand-made exports for coverage rules, simulated exports for the
planted scenarios (each export built once per module)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from test_rules import OK, api_minutes, build

from whispers_lab.evaluate import DayEvaluation, evaluate_day
from whispers_lab.export import Export, open_export
from whispers_lab.paths import DATA_DIR
from whispers_lab.plan import CRITERION_IDS, TRIGGER_IDS, load_plan
from whispers_lab.qa import read_qa_results

PLAN = load_plan()
UNJUDGED = ("inconclusive", "no_data")


# ---------------------------------------------------------------------------------------
# hand-made exports: coverage and the day window


@pytest.fixture
def tiny(tmp_path: Path):
    """Whispers traffic on day 9 only, a privacy ticket on day 10."""
    d9 = PLAN.day_start(9) + dt.timedelta(hours=12)
    ex = build(tmp_path, api_logs=api_minutes(d9, [OK] * 30),
               support_tickets={"ticket_id": ["t1"], "created_at": [PLAN.day_start(10) + dt.timedelta(hours=1)],
                                "category": ["privacy"], "priority": ["high"],
                                "about_whispers": [True]})
    yield ex
    ex.close()


def test_export_ending_before_the_day_is_no_data_and_no_go(tiny: Export):
    ev = evaluate_day(tiny, 12, PLAN)
    assert ev.decision.decision == "NO_GO"
    assert {r.status for r in ev.results} == {"no_data"}
    assert [r.id for r in ev.criteria] == list(CRITERION_IDS)
    assert [r.id for r in ev.triggers] == list(TRIGGER_IDS)
    assert all("ends at" in r.reason and "before day 12" in r.reason for r in ev.results)
    assert ev.decision.next_step.action == "hold"
    assert ev.minute_series.empty and ev.windows == ()
    assert list(ev.daily["day"]) == list(range(13))


def test_empty_export_is_no_data(tmp_path: Path):
    with build(tmp_path) as ex:
        ev = evaluate_day(ex, 0, PLAN)
    assert ev.decision.decision == "NO_GO" and ev.data_end is None
    assert "holds no data" in ev.criteria[0].reason


def test_only_data_through_the_day_is_used(tiny: Export):
    ev9 = evaluate_day(tiny, 9, PLAN)
    assert ev9.result("trigger_privacy").status == "pass"
    assert ev9.decision.decision != "ROLLBACK"
    ev10 = evaluate_day(tiny, 10, PLAN)
    assert ev10.result("trigger_privacy").fired and ev10.decision.decision == "ROLLBACK"
    assert ev10.decision.next_step.flags["NEXT_PUBLIC_WHISPERS_ENABLED"] is False


def test_day_evaluation_carries_chart_series(tiny: Export):
    ev = evaluate_day(tiny, 9, PLAN)
    assert isinstance(ev, DayEvaluation) and ev.phase.id == "rollout_10"
    assert len(ev.minute_series) == 30 and ev.minute_series["counted"].all()
    assert {"minute", "requests", "avg_duration_ms", "errors", "error_rate"} <= set(ev.minute_series)
    assert {"day", "treatment_exposures", "control_exposures", "ctr", "fallback_rate"} <= set(ev.daily)
    assert ev.daily["requests"].tolist() == [0] * 9 + [3000]
    doc = json.loads(ev.decision.to_json())
    assert doc["day"] == 9 and len(doc["criteria"]) == len(CRITERION_IDS)


def test_a_spike_is_windowed_for_charts(tmp_path: Path):
    noon = PLAN.day_start(9) + dt.timedelta(hours=12)
    bad = (100, 30, 350.0)
    with build(tmp_path, api_logs=api_minutes(noon, [OK] * 5 + [bad] * 12 + [OK] * 5)) as ex:
        ev = evaluate_day(ex, 9, PLAN)
    assert ev.decision.decision == "ROLLBACK"
    assert set(ev.decision.fired) == {"trigger_error_rate", "trigger_latency"}
    (err,) = ev.windows_for("trigger_error_rate")
    assert err.fired and err.minutes == 12 and err.peak == pytest.approx(0.30)
    assert err.start == noon + dt.timedelta(minutes=5) and err.end == noon + dt.timedelta(minutes=17)
    assert ev.windows_for("trigger_latency")[0].peak == pytest.approx(350.0)


# ---------------------------------------------------------------------------------------
# simulated exports

simulate = pytest.importorskip("whispers_lab.simulate")

LARGE = 20_000      # internal and beta days can be judged at this size; see docs/rules.md
SMALL = 5_000       # enough for the planted problems whose rules count events
SEED = 11
#: Scenarios judged by the statistics package need the larger export to have power.
STAT_SCENARIOS = ("retention_drop", "srm")


def _simulate(tmp_path_factory: pytest.TempPathFactory, name: str, scenarios: list[str],
              through_day: int, users: int) -> tuple[Export, dict[str, Any]]:
    folder = tmp_path_factory.mktemp(name)
    path, truth_path = simulate.simulate_to(folder / "export.duckdb", users=users, seed=SEED,
                                            through_day=through_day, scenarios=scenarios)
    return open_export(path), json.loads(Path(truth_path).read_text())


@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory):
    ex, _ = _simulate(tmp_path_factory, "healthy", [], PLAN.last_day, LARGE)
    # Phase 1 requires passing QA scenarios: the healthy rollout's QA run passes
    qa = read_qa_results(DATA_DIR / "samples" / "qa-results.xml")
    evals = {d: evaluate_day(ex, d, PLAN, qa=qa) for d in range(PLAN.last_day + 1)}
    yield evals
    ex.close()


def _unjudged_only(ev: DayEvaluation) -> bool:
    """NO_GO only because something could not be judged (nothing failed, nothing fired)."""
    return all(r.status in UNJUDGED for r in ev.results if r.id in ev.decision.blocking)


def _describe(ev: DayEvaluation) -> str:
    return f"day {ev.day} {ev.decision.decision}: " + " | ".join(ev.decision.reasons)


def test_healthy_is_go_on_every_day_it_can_judge(healthy: dict[int, DayEvaluation]):
    for ev in healthy.values():
        assert ev.decision.decision != "ROLLBACK", _describe(ev)
        assert not any(r.status == "fail" for r in ev.results
                       if ev.decision.roles.get(r.id) != "info"), _describe(ev)
        if ev.decision.decision == "NO_GO":
            assert _unjudged_only(ev), _describe(ev)
            assert ev.decision.code == "not_enough_evidence", _describe(ev)
    # at this size the internal days and the end of the beta phase have enough data to be
    # judged (the first beta days have too few requests to show the error rate within budget:
    # held for lack of evidence, and the decision says so)
    go_days = [d for d, ev in healthy.items() if ev.decision.decision == "GO"]
    assert {0, 1, 2, 7} <= set(go_days), [_describe(healthy[d]) for d in range(8)]


def test_healthy_go_advances_through_the_plan(healthy: dict[int, DayEvaluation]):
    assert healthy[2].decision.next_step.action == "advance"
    assert healthy[2].decision.next_step.phase == "beta"
    assert healthy[7].decision.next_step.phase in ("rollout_10", "beta")


TRIGGER_SCENARIOS = ["error_spike", "latency_spike", "privacy_ticket", "db_degradation",
                     "critical_bug"]


@pytest.fixture(scope="module", params=TRIGGER_SCENARIOS)
def trigger_case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    name = request.param
    day = simulate.SCENARIOS[name].defaults["day"]
    ex, truth = _simulate(tmp_path_factory, name, [name], day, SMALL)
    (entry,) = truth["scenarios"]
    evals = {d: evaluate_day(ex, d, PLAN) for d in range(day + 1)}
    yield name, entry, evals
    ex.close()


def test_trigger_scenarios_roll_back_on_their_day(trigger_case):
    _, entry, evals = trigger_case
    day = entry["day"]
    expected = entry["expected"]["trigger"]
    ev = evals[day]
    assert ev.decision.decision == entry["expected"]["decision"] == "ROLLBACK", _describe(ev)
    assert ev.decision.fired == (expected,), _describe(ev)
    assert ev.decision.next_step.flags["NEXT_PUBLIC_WHISPERS_ENABLED"] is False
    windows = ev.windows_for(expected)
    if expected in ("trigger_error_rate", "trigger_latency", "trigger_db"):
        start = dt.datetime.fromisoformat(entry["start"])
        end = dt.datetime.fromisoformat(entry["end"])
        fired = [w for w in windows if w.fired]
        assert fired, _describe(ev)
        assert any(w.start < end and w.end > start for w in fired)
        assert all(start - dt.timedelta(minutes=1) <= w.start and w.end <= end + dt.timedelta(minutes=1)
                   for w in fired)
    for before in range(day):
        prior = evals[before]
        # GO on the days before wherever the (smaller) export can judge them
        assert prior.decision.decision != "ROLLBACK", _describe(prior)
        assert not any(r.status == "fail" for r in prior.results
                       if prior.decision.roles.get(r.id) != "info"), _describe(prior)
        if prior.decision.decision == "NO_GO":
            assert _unjudged_only(prior), _describe(prior)


NO_GO_SCENARIOS = ["telemetry_gap", "retention_drop", "srm"]


@pytest.fixture(scope="module", params=NO_GO_SCENARIOS)
def no_go_case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    name = request.param
    d = simulate.SCENARIOS[name]
    decision_day = simulate.scenarios.first_decision_day(PLAN, d, d.defaults["day"])
    users = LARGE if name in STAT_SCENARIOS else SMALL
    ex, truth = _simulate(tmp_path_factory, name, [name], decision_day or PLAN.last_day, users)
    (entry,) = truth["scenarios"]
    assert entry["expected"]["first_decision_day"] == decision_day
    ev = evaluate_day(ex, decision_day, PLAN) if decision_day is not None else None
    yield name, entry, ev
    ex.close()


def test_no_go_scenarios_block_their_decision_day(no_go_case):
    name, entry, ev = no_go_case
    expected = entry["expected"]
    assert ev is not None, f"{name}: the plan never requires {expected['criterion']}"
    result = ev.result(expected["criterion"])
    assert ev.decision.decision == expected["decision"] in ("NO_GO", "ROLLBACK"), _describe(ev)
    assert expected["criterion"] in ev.decision.blocking + ev.decision.harm
    if name == "retention_drop":   # harm shown on a required metric: rolled back, and says why
        assert ev.decision.code == "harm_detected" and result.code == "harm_detected"
    if name in STAT_SCENARIOS:
        # the statistics may not yet have the power to call it a failure at this size; a
        # required criterion that is not shown to hold blocks the day all the same
        assert result.status in ("fail", "inconclusive"), result.reason
    else:
        assert result.status == "fail", result.reason


def test_combined_scenarios_on_day_9(scenario_export):
    """conftest's export with every windowed / point scenario planted on day 9: each expected
    trigger fires and each expected criterion fails on day 9; days before are untouched."""
    from whispers_lab.simulate import read_truth

    truth = read_truth(scenario_export)
    with open_export(scenario_export) as ex:
        evals = {d: evaluate_day(ex, d, PLAN) for d in range(10)}
    day9 = evals[9]
    assert day9.decision.decision == "ROLLBACK"
    for entry in truth["scenarios"]:
        assert entry["day"] == 9
        expected = entry["expected"]
        rid = expected.get("trigger") or expected["criterion"]
        result = day9.result(rid)
        assert result.status == "fail", (entry["name"], result.reason)
        assert rid in (day9.decision.fired if "trigger" in expected else day9.decision.blocking)
    for day in range(9):
        ev = evals[day]
        assert ev.decision.decision != "ROLLBACK", _describe(ev)
        assert not any(r.status == "fail" for r in ev.results
                       if ev.decision.roles.get(r.id) != "info"), _describe(ev)
