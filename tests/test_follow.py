"""A whole simulated rollout in which production follows the workbench's own decisions: every
morning the day is reported, and the next day's data are simulated with the stage the decision
implies, so a hold in the decisions holds the data too. Days 0-13 are decided in-process
(``decision_only``: evaluate_day and decision.json, as the notebook does); day 14 runs the
scheduled job itself (``daily``: papermill, HTML, index), which reads the earlier decisions from
the report folder. No flag log: the state comes from the decisions, and the stage changes are
applied at 09:00, after the morning report."""

from __future__ import annotations

import json

import duckdb
import pandas as pd
import pytest

from whispers_lab.cohort import bucket_of
from whispers_lab.plan import load_plan
from whispers_lab.simulate import ModelParams, read_truth
from whispers_lab.simulate.follow import daily_job, decision_only, follow_decisions
from whispers_lab.state import decision_history, from_decisions

PLAN = load_plan()
USERS = 4000
SEED = 11
#: enough internal users that Phase 1 can be judged at this size (the default 0.5% is 20)
PARAMS = ModelParams(internal_share=0.03)


@pytest.fixture(scope="module")
def rollout(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("follow")
    exports, reports = root / "exports", root / "reports"
    result = follow_decisions(exports, reports, USERS, SEED, params=PARAMS,
                              scenarios=["ranking_timeouts:day=9"],
                              report=decision_only(PLAN, reports, exports),
                              reporters={PLAN.last_day: daily_job(PLAN, reports, exports)})
    docs = {d: json.loads((reports / f"day-{d:02d}" / "decision.json").read_text())
            for d in range(PLAN.last_day + 1)}
    return result, docs, reports, read_truth(result.export)


def _served(truth: dict, day: int) -> tuple[str, float]:
    stage = [s for s in truth["rollout"]["stages"] if s["day"] <= day][-1]
    return stage["audience"], float(stage["percentage"])


@pytest.mark.slow
def test_the_rollout_reaches_day_14_with_the_stages_its_decisions_imply(rollout):
    result, docs, reports, truth = rollout
    assert sorted(result.decisions) == list(range(PLAN.last_day + 1))
    assert not truth["rollout"]["flag_log"]
    # the planted ranking timeouts fail day 9: a hold at the 10% stage's boundary
    assert docs[9]["decision"] == "NO_GO" and "ranking_timeouts" in docs[9]["blocking"]
    assert (docs[9]["next_step"]["action"], docs[9]["next_step"]["percentage"]) == ("hold", 10.0)
    # day 10 is still 10% (the calendar has 25%), and its next step starts from there
    assert docs[10]["phase"]["id"] == "rollout_10"
    assert docs[10]["state"]["stage"]["percentage"] == 10.0
    assert docs[10]["state"]["planned"]["percentage"] == 25.0
    assert docs[10]["state"]["source"] == "decisions" and not docs[10]["state"]["on_plan"]
    assert docs[10]["next_step"]["percentage"] in (10.0, 25.0)
    # every day's decision names the stage production served that day
    history = decision_history(reports, PLAN.last_day + 1)
    expected = from_decisions(PLAN, history, PLAN.last_day)
    for day, doc in docs.items():
        stage = doc["state"]["stage"]
        assert (stage["audience"], stage["percentage"]) == _served(truth, day), day
        assert stage["phase"] == expected.stage_on(day).phase, day
    # the hold moved everything after it: the 25% stage starts no earlier than day 11
    first_25 = min(d for d, doc in docs.items() if doc["state"]["stage"]["percentage"] >= 25)
    assert first_25 >= 11
    assert docs[PLAN.last_day]["state"]["schedule"]["final_day"] > PLAN.last_day


@pytest.mark.slow
def test_no_false_failure_after_the_hold(rollout):
    _, docs, _, _ = rollout
    for day, doc in docs.items():
        crit = {c["id"]: c for c in doc["criteria"]}
        assert crit["srm"]["status"] != "fail", (day, crit["srm"]["reason"])
        assert crit["assignment_integrity"]["status"] != "fail", (
            day, crit["assignment_integrity"]["reason"])
        if day != 9:
            assert doc["reason_code"] in ("all_pass", "not_enough_evidence"), (day, doc["reasons"])


@pytest.mark.slow
def test_the_data_are_held_too(rollout):
    result, docs, _, _ = rollout
    first_25 = min(d for d, doc in docs.items() if doc["state"]["stage"]["percentage"] >= 25)
    con = duckdb.connect(str(result.export), read_only=True)
    try:
        exp = con.execute("SELECT user_id, exposed_at, variant FROM exposures").df()
    finally:
        con.close()
    exp["day"] = (exp["exposed_at"] - pd.Timestamp(PLAN.start_date)).dt.days
    exp["bucket"] = bucket_of(exp["user_id"], PLAN.assignment.salt, PLAN.assignment.buckets)
    second = exp.loc[(exp["bucket"] >= 950) & (exp["bucket"] < 2375)
                     & (exp["variant"] == "treatment")]
    # buckets the 25% stage adds (beta users aside, who are never bucketed) are served whispers
    # from the day it was actually switched on, never on the held days before it
    assert (second["day"] >= first_25).sum() > 0
    held = second.loc[(second["day"] >= 8) & (second["day"] < first_25)]
    assert len(held) <= PLAN.beta.max_users, held


@pytest.mark.slow
def test_the_last_day_ran_the_scheduled_job(rollout):
    _, docs, reports, _ = rollout
    day = PLAN.last_day
    assert (reports / f"day-{day:02d}" / "report.html").is_file()
    assert docs[day]["report"]["notebook"] == "daily_report.ipynb"
    index = (reports / "index.html").read_text()
    assert "Stage in force" in index and "off-plan" in index
