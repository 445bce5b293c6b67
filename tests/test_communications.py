"""The communication plan: parsing the plan's [[communications]], which tasks each day's report
lists after each decision, the decision.json block and its HTML."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from whispers_lab import communications as comms
from whispers_lab.errors import PlanError
from whispers_lab.paths import DEFAULT_PLAN
from whispers_lab.plan import load_plan
from whispers_lab.report.plan_sections import communications_html

PLAN = load_plan()
PLANNED = comms.load_communications(PLAN)
ALL_GO = {d: "GO" for d in range(15)}


def _listed(day: int, decision: str, history: dict[int, str] | None = None) -> dict[str, str]:
    return {t.communication.id: t.status
            for t in comms.tasks_for_report(PLANNED, day, decision, history)}


def test_the_plan_holds_the_seed_communication_plan():
    by_id = {c.id: c for c in PLANNED}
    assert [(c.day, c.when) for c in PLANNED if c.day is not None] == [
        (-7, "always"), (0, "always"), (3, "go"), (8, "go"), (14, "always")]
    assert by_id["beta_announcement"].channel == "email"
    assert by_id["general_announcement"].channel == "in-product"
    assert by_id["success_metrics"].audience == "stakeholders"
    assert by_id["rollback_notice"].day is None and by_id["rollback_notice"].when == "rollback"
    # the plan itself still loads: the key is accepted
    assert load_plan(DEFAULT_PLAN).name == PLAN.name


def test_each_report_lists_the_next_days_tasks_after_a_go():
    listed = {day: _listed(day, "GO", ALL_GO) for day in range(15)}
    assert listed[2] == {"beta_survey": "due"}
    assert listed[7] == {"general_announcement": "due"}
    assert listed[13] == {"success_metrics": "due"}
    assert all(v == {} for d, v in listed.items() if d not in (2, 7, 13))


def test_no_general_announcement_on_a_hold_or_a_rollback():
    assert _listed(7, "NO_GO") == {"general_announcement": "held"}
    assert _listed(7, "ROLLBACK") == {"general_announcement": "cancelled", "rollback_notice": "due"}
    assert _listed(7, "ERROR") == {"general_announcement": "held"}
    # the stakeholders hear from us whatever day 13 decides
    assert _listed(13, "NO_GO") == {"success_metrics": "due"}
    assert _listed(13, "ROLLBACK") == {"success_metrics": "due", "rollback_notice": "due"}
    held = comms.tasks_for_report(PLANNED, 7, "NO_GO")[0]
    assert "tell stakeholders the general rollout is on hold" in held.note


def test_a_held_task_comes_back_with_the_first_go_and_only_once():
    history = {d: "GO" for d in range(7)} | {7: "NO_GO"}
    assert _listed(8, "NO_GO", history) == {"general_announcement": "held"}
    history[8] = "NO_GO"
    due = comms.tasks_for_report(PLANNED, 9, "GO", history)
    assert [(t.communication.id, t.status, t.due_day) for t in due] == [
        ("general_announcement", "due", 10)]
    assert "planned for day 8" in due[0].note
    history[9] = "GO"
    assert _listed(10, "GO", history) == {}
    # cancelled by a rollback: never comes back
    assert _listed(9, "GO", {d: "GO" for d in range(7)} | {7: "ROLLBACK", 8: "NO_GO"}) == {}
    # without the earlier decisions nothing is guessed
    assert _listed(9, "GO") == {}


def test_bad_communications_name_the_key(tmp_path: Path):
    def check(entries, words):
        with pytest.raises(PlanError, match=words):
            comms.parse_communications(entries, "plan.toml")

    good = {"id": "a", "day": 1, "what": "w", "audience": "x", "channel": "c"}
    check({"id": "a"}, r"'communications' must be a list")
    check([{**good, "day": "one"}], r"communications\[0\]\.day' must be an integer")
    check([{**good, "when": "sometimes"}], r"communications\[0\]\.when' must be one of")
    check([good, good], r"communications\[1\]\.id' repeats 'a'")
    check([{**good, "colour": "red"}], r"communications\[0\]\.colour' is not a known")
    check([{k: v for k, v in good.items() if k != "what"}], r"communications\[0\]\.what'.*missing")
    check([{**good, "when": "rollback"}], r"communications\[0\]\.day' must be absent")
    # a plan without the table has no tasks; the packaged plan's table parses
    text = DEFAULT_PLAN.read_text(encoding="utf-8")
    bare = tmp_path / "bare.toml"
    bare.write_text(text.split("[[communications]]")[0], encoding="utf-8")
    assert comms.load_communications(load_plan(bare)) == ()
    raw = tomllib.loads(text)["communications"]
    assert len(comms.parse_communications(raw)) == len(raw)
    # plan.py only accepts the key; the communication plan reports its own error when read
    # (the report runner reads it before it starts a kernel)
    broken = tmp_path / "broken.toml"
    broken.write_text(text.replace('id = "general_announcement"\nday = 8\n',
                                   'id = "general_announcement"\nday = "eight"\n'),
                      encoding="utf-8")
    with pytest.raises(PlanError, match=r"broken.toml: key 'communications\[3\]\.day'"):
        comms.load_communications(load_plan(broken))


def test_history_and_document_and_html(tmp_path: Path):
    for day, decision in ((0, "GO"), (1, "NO_GO")):
        (tmp_path / f"day-{day:02d}").mkdir()
        (tmp_path / f"day-{day:02d}" / "decision.json").write_text(
            f'{{"decision": "{decision}"}}', encoding="utf-8")
    (tmp_path / "day-02").mkdir()
    (tmp_path / "day-02" / "decision.json").write_text("{broken", encoding="utf-8")
    assert comms.history_from_reports(tmp_path, 3) == {0: "GO", 1: "NO_GO"}
    assert comms.history_from_reports(None, 3) == {}
    doc = comms.communications_document(PLAN, 2, "NO_GO", {0: "GO", 1: "NO_GO"})
    assert doc["for_day"] == 3 and doc["date"] == "2026-12-04" and doc["decision"] == "NO_GO"
    assert [t["id"] for t in doc["tasks"]] == ["beta_survey"]
    assert doc["tasks"][0]["status"] == "held"
    assert doc["next"][0]["id"] == "general_announcement"
    assert len(doc["plan"]) == len(PLANNED)
    page = communications_html(doc)
    assert "due tomorrow (day 3, 2026-12-04)" in page and "held" in page
    assert "Send the in-app survey to the beta users" in page
    assert "Next in the plan: day 8" in page
    quiet = communications_html(comms.communications_document(PLAN, 4, "GO"))
    assert "No communication task is due tomorrow." in quiet
    assert communications_html(None) == ""
