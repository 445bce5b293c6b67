"""QA scenarios (Phase 1 "All QA scenarios pass"): JUnit XML reading, the qa_scenarios criterion,
the conventional place beside the exports, and its effect on the decision."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from whispers_lab import qa
from whispers_lab.decision import decide
from whispers_lab.paths import DATA_DIR
from whispers_lab.plan import CRITERION_IDS, load_plan
from whispers_lab.results import CriterionResult

PLAN = load_plan()
SAMPLE = DATA_DIR / "samples" / "qa-results.xml"
FAILING = DATA_DIR / "samples" / "qa-results-failing.xml"

# mocha-junit-reporter's layout: a root suite, nested suites, a failure with a stack trace
MOCHA = """<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="Mocha Tests" time="1.2" tests="3" failures="1">
  <testsuite name="Root Suite" timestamp="2026-12-02T06:01:02" tests="0" time="0" failures="0"/>
  <testsuite name="whispers QA" timestamp="2026-12-02T06:01:02" tests="3" file="qa-whispers.js"
             time="1.2" failures="1">
    <testcase name="whispers QA shows whispers" time="0.4" classname="shows whispers"/>
    <testcase name="whispers QA ranks by context" time="0.5" classname="ranks by context">
      <failure message="expected [ 2, 1 ] to deeply equal [ 1, 2 ]" type="AssertionError"><![CDATA[AssertionError: expected [ 2, 1 ] to deeply equal [ 1, 2 ]
    at Context.<anonymous> (scripts/qa-whispers.js:41:23)]]></failure>
    </testcase>
    <testcase name="whispers QA cue cooldown" time="0" classname="cue cooldown"><skipped/></testcase>
  </testsuite>
</testsuites>
"""
# Playwright's junit reporter: a single <testsuite> root is also JUnit XML
SINGLE_SUITE = """<testsuite name="qa" tests="2"><testcase name="a" classname="x"/>
<testcase name="b" classname="x"><error message="Timeout 30000ms exceeded."/></testcase></testsuite>
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_sample_results_pass_and_list_the_skipped_scenario():
    r = qa.qa_scenarios(qa.read_qa_results(SAMPLE), PLAN, 0)
    assert r.status == "pass" and r.value == 0 and r.threshold == 0
    assert r.details["ran"] == 9 and r.details["skipped"] == 1 and r.details["failed"] == 0
    assert "All 9 QA scenario(s) passed" in r.reason
    assert "Skipped: maya cue › fires once and respects its cooldown" in r.reason
    assert r.details["run_at"] == ["2026-12-01T07:40:00"]


def test_failing_sample_names_each_failing_scenario_with_its_message():
    r = qa.qa_scenarios(qa.read_qa_results(FAILING), PLAN, 1)
    assert r.status == "fail" and r.value == 3
    assert r.details["failed"] == 2 and r.details["errored"] == 1
    failing = {f["scenario"]: f for f in r.details["failing"]}
    assert failing["telemetry › sends whispers_shown and whispers_used with request and "
                   "position"]["outcome"] == "error"
    assert "TypeError" in failing["telemetry › sends whispers_shown and whispers_used with "
                                  "request and position"]["message"]
    assert "context ranking › orders whispers by context fit (expected the whisper" in r.reason
    assert r.reason.startswith("3 of 10 QA scenario(s) failed on day 1 (2026-12-02)")


def test_mocha_layout_first_line_of_message_and_skipped(tmp_path: Path):
    res = qa.read_qa_results(_write(tmp_path, "mocha.xml", MOCHA))
    assert [s.outcome for s in res.scenarios] == ["passed", "failed", "skipped"]
    assert res.failing[0].message == "expected [ 2, 1 ] to deeply equal [ 1, 2 ]"
    r = qa.qa_scenarios(res, PLAN, 0)
    assert r.status == "fail" and r.details["ran"] == 2


def test_a_single_testsuite_root_is_read_and_an_error_fails(tmp_path: Path):
    r = qa.qa_scenarios(qa.read_qa_results(_write(tmp_path, "pw.xml", SINGLE_SUITE)), PLAN, 0)
    assert r.status == "fail" and r.details["errored"] == 1
    assert "Timeout 30000ms exceeded." in r.reason


def test_no_results_is_no_data_never_a_pass(tmp_path: Path):
    assert qa.qa_scenarios(None, PLAN, 0).status == "no_data"
    missing = qa.qa_scenarios(qa.read_qa_results(tmp_path / "nope.xml"), PLAN, 0)
    assert missing.status == "no_data" and "nope.xml" in missing.reason
    assert str(tmp_path.parent) not in missing.reason  # the report shows no server path
    empty = qa.qa_scenarios(qa.read_qa_results(tmp_path), PLAN, 0)
    assert empty.status == "no_data" and "no *.xml" in empty.reason
    # a run where every scenario was skipped ran nothing
    only_skipped = qa.junit_xml([("s", "a"), ("s", "b")], skipped={"a": "x", "b": "y"})
    r = qa.qa_scenarios(qa.read_qa_results(_write(tmp_path, "skip.xml", only_skipped)), PLAN, 0)
    assert r.status == "no_data" and "No QA scenario ran" in r.reason
    r = qa.qa_scenarios(qa.read_qa_results(_write(tmp_path, "none.xml", "<testsuites/>")), PLAN, 0)
    assert r.status == "no_data"


@pytest.mark.parametrize("text, words", [
    ("<testsuites><testsuite><testcase name='x'></testsuite>", "not well-formed XML"),
    ("", "not well-formed XML"),
    ("<html><body>502 Bad Gateway</body></html>", "not JUnit XML"),
    ('<!DOCTYPE t [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]><testsuites>&b;</testsuites>',
     "entity declarations are not allowed"),
])
def test_a_malformed_file_is_a_clear_error_naming_it(tmp_path: Path, text: str, words: str):
    res = qa.read_qa_results(_write(tmp_path, "broken-run.xml", text))
    assert len(res.errors) == 1 and "'broken-run.xml'" in res.errors[0] and words in res.errors[0]
    r = qa.qa_scenarios(res, PLAN, 0)
    assert r.status == "no_data" and "broken-run.xml" in r.reason and words in r.reason


def test_a_folder_combines_files_and_a_bad_file_makes_a_pass_inconclusive(tmp_path: Path):
    _write(tmp_path, "a/chrome.xml", qa.junit_xml([("recap", "one"), ("recap", "two")]))
    _write(tmp_path, "b/firefox.xml", "<oops")
    _write(tmp_path, ".hidden/ignored.xml", "<oops")
    res = qa.read_qa_results(tmp_path)
    assert res.files == ("a/chrome.xml", "b/firefox.xml")
    r = qa.qa_scenarios(res, PLAN, 0)
    assert r.status == "inconclusive" and "b/firefox.xml" in r.reason
    # a failure seen in a readable file fails the day whatever the unreadable one holds
    _write(tmp_path, "c/webkit.xml", qa.junit_xml([("recap", "three")],
                                                   failures={"three": "boom"}))
    r = qa.qa_scenarios(qa.read_qa_results(tmp_path), PLAN, 0)
    assert r.status == "fail" and "could not be read" in r.reason


def test_conventional_place_beside_the_exports(tmp_path: Path):
    day = dt.date(2026, 12, 2)
    assert qa.qa_results_path(tmp_path, day) == tmp_path / "qa" / "2026-12-02.xml"
    (tmp_path / "qa" / "2026-12-02").mkdir(parents=True)
    assert qa.qa_results_path(tmp_path, day) == tmp_path / "qa" / "2026-12-02"


def test_junit_xml_round_trips_through_the_reader(tmp_path: Path):
    text = qa.junit_xml(failures={"orders whispers by context fit": "bad order"},
                        skipped={"fires once and respects its cooldown": "todo"},
                        timestamp=dt.datetime(2026, 12, 1, 8, 0, 0, 123))
    res = qa.read_qa_results(_write(tmp_path, "r.xml", text))
    assert len(res.scenarios) == len(qa.DEFAULT_SCENARIOS)
    assert [s.title for s in res.failing] == ["context ranking › orders whispers by context fit"]
    assert res.run_at == ("2026-12-01T08:00:00",)


def _passing(cid: str) -> CriterionResult:
    return CriterionResult(cid, "criterion", 1.0, 1.0, "pass", "ok")


def test_qa_scenarios_is_required_in_phase_1_only():
    assert "qa_scenarios" in CRITERION_IDS
    internal = PLAN.phase_for_day(0)
    assert "qa_scenarios" in internal.required
    assert all("qa_scenarios" not in p.required for p in PLAN.phases[1:])
    others = [_passing(c) for c in CRITERION_IDS if c != "qa_scenarios"]
    triggers = [CriterionResult(t, "trigger", 0, 1, "pass", "ok")
                for t in ("trigger_error_rate", "trigger_latency", "trigger_privacy",
                          "trigger_db", "trigger_critical_bug")]
    ok = qa.qa_scenarios(qa.read_qa_results(SAMPLE), PLAN, 0)
    bad = qa.qa_scenarios(qa.read_qa_results(FAILING), PLAN, 0)
    none = qa.qa_scenarios(None, PLAN, 0)
    assert decide([*others, ok, *triggers], 0, PLAN).decision == "GO"
    for result in (bad, none):
        d = decide([*others, result, *triggers], 0, PLAN)
        assert d.decision == "NO_GO" and "qa_scenarios" in d.blocking
    # on a beta day it is information only: missing QA results do not hold the rollout
    assert decide([*others, none, *triggers], 4, PLAN).decision == "GO"
