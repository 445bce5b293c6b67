"""The rollout's actual state: stages from a decision history (hold, rollback, re-enable), from a
flag log, from the calendar; what the rest of the lab reads off it (dated plan, schedule, the
flag service's cohort, the sample-ratio expectation, the next step); served against planned on a
hand-made export whose expected mismatches are known exactly."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pytest
from test_rules import table

from whispers_lab import cohort, rules
from whispers_lab import state as st
from whispers_lab.decision import decide
from whispers_lab.evaluate import evaluate_day
from whispers_lab.export import open_export, write_export
from whispers_lab.plan import CRITERION_IDS, TRIGGER_IDS, load_plan
from whispers_lab.queries import state as qs
from whispers_lab.results import CriterionResult
from whispers_lab.stats.experiment import plan_schedule

PLAN = load_plan()
GO, NO, RB = "GO", "NO_GO", "ROLLBACK"


def history(**special: str) -> dict[int, str]:
    """Every day GO before day 20 except ``d9="NO_GO"`` style overrides."""
    out = {d: GO for d in range(20)}
    out.update({int(k[1:]): v for k, v in special.items()})
    return out


# -- the calendar -----------------------------------------------------------------------------


def test_the_calendar_is_the_plan_and_is_assumed():
    cal = st.from_calendar(PLAN, 9)
    assert cal.dated_plan() == PLAN
    assert cal.schedule() == plan_schedule(PLAN)
    assert cal.assumed and "assumed" in cal.warnings[0]
    assert [cal.stage_on(d).phase for d in (0, 3, 8, 10, 12, 14, 20)] == [
        "internal", "beta", "rollout_10", "rollout_25", "rollout_50", "rollout_100", "rollout_100"]
    iv = cal.intervals()
    assert (iv["unsure_lo"] == iv["unsure_hi"]).all()  # midnight switches, assumed exact
    assert list(iv["threshold"]) == [0, 0, 0, 950]     # through day 9


def test_an_all_go_history_is_the_calendar_except_the_unknown_time_of_day():
    dec = st.from_decisions(PLAN, history(), 15)
    assert dec.dated_plan() == PLAN and dec.schedule() == plan_schedule(PLAN)
    iv = dec.intervals(12)
    day10 = iv.loc[iv["start_at"] == PLAN.day_start(10)].iloc[0]
    # the 25% stage began some time on day 10: buckets 950-2374 are not judged that day
    assert (day10["end_at"], day10["unsure_lo"], day10["unsure_hi"]) == (PLAN.day_start(11), 950, 2375)


# -- a decision history with a hold, a rollback and a re-enable --------------------------------


def test_a_hold_keeps_the_stage_and_moves_the_rest():
    s = st.from_decisions(PLAN, history(d9=NO, d10=NO), 11)
    assert [s.stage_on(d).percentage for d in range(8, 12)] == [10, 10, 10, 10]
    assert s.stage_on(12).phase == "rollout_25" and s.stage_on(12).projected
    assert s.schedule().stages == (8, 12, 14, 16) and s.schedule().final_day == 16
    assert s.phase_on(10).id == "rollout_10" and s.planned_phase(10).id == "rollout_25"
    dated = s.dated_plan()
    assert [(p.id, p.first_day, p.last_day) for p in dated.phases][2:] == [
        ("rollout_10", 8, 11), ("rollout_25", 12, 13), ("rollout_50", 14, 15),
        ("rollout_100", 16, 16)]
    assert dated.required_from("retention") == 14      # the 50% stage, two days late


def test_a_hold_mid_stage_does_not_delay():
    s = st.from_decisions(PLAN, history(d8=NO), 12)   # NO_GO on the 10% stage's first day
    assert s.stage_on(10).phase == "rollout_25" and s.schedule().final_day == 14


def test_hold_rollback_and_reenable():
    dec = history(d9=NO, d11=RB, d12=NO, d13=GO)
    s = st.from_decisions(PLAN, dec, 16)
    got = [(d, s.stage_on(d).phase, s.stage_on(d).audience) for d in range(8, 17)]
    assert got == [
        (8, "rollout_10", "percentage"), (9, "rollout_10", "percentage"),
        (10, "rollout_10", "percentage"),        # held after the NO_GO of day 9
        (11, "rollout_25", "percentage"),        # GO on day 10 at the boundary
        (12, "rollout_25", "none"),              # ROLLBACK on day 11: off
        (13, "rollout_25", "none"),              # NO_GO while off: still off
        (14, "rollout_10", "percentage"),        # GO while off: the plan's restart phase
        (15, "rollout_10", "percentage"),
        (16, "rollout_25", "percentage")]        # GO on day 15: a full 10% stage again
    assert [s.threshold_on(d) for d in (11, 12, 14)] == [2375, 0, 950]
    # the statistics' stage days are the days buckets were first enabled (a rollback does not
    # undo an enabling day), the final day is projected from the restart
    assert s.schedule().stages[:2] == (8, 11)
    assert s.schedule().final_day == 20
    # the flag service is told the stage actually reached, and nobody while off
    users = pd.DataFrame({"user_id": [f"u{i:04d}" for i in range(400)], "is_internal": False,
                          "micro_memory_count": 0, "engagement_score": 0.5})
    for day, share in ((10, 0.095), (12, 0.0), (14, 0.095)):
        a = cohort.assign(users, day, PLAN, state=s)
        assert ((a["variant"] == "treatment") == (a["bucket"] < round(share * 10000))).all()
        assert cohort.expected_split(day, PLAN, state=s).treatment_share == pytest.approx(share)
    a14 = cohort.assign(users, 14, PLAN, state=s)
    # intention to treat: the first enabling day stays, whatever came later
    assert (a14.loc[a14["bucket"] < 950, "first_enabled_day"] == 8).all()
    assert (a14.loc[(a14["bucket"] >= 950) & (a14["bucket"] < 2375), "first_enabled_day"] == 11).all()


def test_restart_never_goes_beyond_the_phase_rolled_back():
    s = st.from_decisions(PLAN, history(d4=RB, d5=GO), 7)
    assert s.stage_on(5).off and s.stage_on(6).phase == "beta"


def test_missing_and_failed_days_are_holds_and_earlier_days_follow_the_calendar():
    dec = {d: GO for d in range(5, 12)}
    dec[9] = "ERROR"
    del dec[10]
    s = st.from_decisions(PLAN, dec, 12)
    assert [s.stage_on(d).phase for d in (3, 8, 10, 11)] == ["beta", "rollout_10", "rollout_10",
                                                            "rollout_10"]
    text = " ".join(s.warnings)
    assert "day(s) 0-4: assumed GO" in text and "10: held" in text and "9 ended without" in text


def test_after_a_hold_the_next_step_says_the_stage_in_force():
    s = st.from_decisions(PLAN, history(d9=NO), 10)
    results = [CriterionResult(c, "criterion", 0.0, 0.0, "pass", "ok") for c in CRITERION_IDS]
    results += [CriterionResult(t, "trigger", 0.0, 0.0, "pass", "ok") for t in TRIGGER_IDS]
    held = list(results)
    held[CRITERION_IDS.index("uptime")] = CriterionResult("uptime", "criterion", None, 0.995,
                                                          "inconclusive", "thin")
    no_go = decide(held, 10, s.dated_plan(), state=s)
    assert no_go.phase.id == "rollout_10" and no_go.decision == "NO_GO"
    step = no_go.next_step
    assert (step.action, step.phase, step.percentage, step.day) == ("hold", "rollout_10", 10.0, 11)
    assert "since day 8" in step.instructions[0] and "25%" in step.instructions[0]
    go = decide(results, 10, s.dated_plan(), state=s)
    assert (go.next_step.action, go.next_step.percentage) == ("advance", 25.0)
    doc = go.to_dict()
    assert doc["phase"]["id"] == "rollout_10"
    assert doc["state"]["stage"]["percentage"] == 10.0 and doc["state"]["planned"]["percentage"] == 25.0
    assert doc["state"]["on_plan"] is False and doc["state"]["source"] == "decisions"
    # while off, a GO re-enables at the restart phase, anything else keeps whispers off
    off = st.from_decisions(PLAN, history(d9=RB, d10=NO), 11)
    assert decide(results, 11, off.dated_plan(), state=off).next_step.action == "reenable"
    kept = decide(held, 11, off.dated_plan(), state=off).next_step
    assert (kept.action, kept.audience, kept.flags["NEXT_PUBLIC_WHISPERS_ENABLED"]) == (
        "hold", "none", False)


def test_the_history_is_read_from_the_report_folder(tmp_path: Path):
    for d, verdict in history(d9=NO).items():
        if d < 11:
            folder = tmp_path / f"day-{d:02d}"
            folder.mkdir()
            (folder / "decision.json").write_text(json.dumps({"day": d, "decision": verdict}))
    (tmp_path / "day-05" / "decision.json").write_text("{not json")  # unreadable: a gap
    assert st.decision_history(tmp_path, 11) == {d: v for d, v in history(d9=NO).items()
                                                 if d < 11 and d != 5}
    s = st.resolve_state(None, PLAN, 11, tmp_path)
    assert s.source == "decisions" and s.stage_on(10).percentage == 10
    assert "5: held" in " ".join(s.warnings)
    assert st.resolve_state(None, PLAN, 11, tmp_path / "nothing").source == "calendar"


# -- the flag log --------------------------------------------------------------------------------


def flag_rows(*rows: tuple) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["changed_at", "flag", "value", "percentage", "audience"])


E = st.ENABLED_FLAG


def test_flag_log_late_flip_rollback_and_a_percentage_the_plan_does_not_name():
    log = flag_rows(
        (PLAN.day_start(0), E, "true", None, "internal"),
        (PLAN.day_start(0), "NEXT_PUBLIC_WHISPERS_MAX", "6", None, None),
        (PLAN.day_start(3) + dt.timedelta(hours=6), E, "true", None, "beta"),
        (PLAN.day_start(8) + dt.timedelta(hours=9), E, "true", 10.0, "percentage"),
        (PLAN.day_start(10) + dt.timedelta(hours=9), E, "true", 15.0, "percentage"),
        (PLAN.day_start(11) + dt.timedelta(hours=14), E, "false", None, None),
        (PLAN.day_start(13), E, "true", 50.0, "percentage"),  # after the analysed day: unread
    )
    s = st.from_flag_log(PLAN, log, 12)
    assert [(x.day, x.audience, x.percentage) for x in s.actual] == [
        (0, "internal", 0.0), (3, "beta", 0.0), (8, "percentage", 10.0),
        (10, "percentage", 15.0), (11, "none", 0.0)]
    assert s.stage_on(10).phase == "rollout_10" and s.threshold_on(10) == 1425
    assert "15% is not a stage of the plan" in " ".join(s.warnings)
    iv = s.intervals(12).set_index("start_at")
    flip = PLAN.day_start(10) + dt.timedelta(hours=9)
    grace = iv.loc[pd.Timestamp(flip)]
    assert (grace["unsure_lo"], grace["unsure_hi"], grace["end_at"]) == (
        950, 1425, pd.Timestamp(flip + dt.timedelta(minutes=PLAN.criteria.assignment_grace_minutes)))
    off = iv.loc[iv.index > pd.Timestamp(PLAN.day_start(11) + dt.timedelta(hours=14))].iloc[-1]
    assert (off["internal_on"], off["beta_on"], off["threshold"]) == (0, 0, 0)


def test_flag_changes_is_validated(tmp_path: Path):
    from whispers_lab.errors import ExportValidationError

    from factories import valid_tables

    tables = valid_tables()
    tables["flag_changes"] = pd.DataFrame({
        "changed_at": [PLAN.day_start(0), PLAN.day_start(1), PLAN.day_start(2), PLAN.day_start(3)],
        "flag": [E, E, "NEXT_PUBLIC_WHISPERS_MAX", E],
        "value": ["yes", "true", "six", "true"],
        "percentage": [None, None, None, None],
        "audience": [None, None, None, "percentage"]})
    path = write_export(tables, tmp_path / "bad.duckdb")
    with pytest.raises(ExportValidationError) as info:
        open_export(path)
    rules_hit = sorted(p.rule for p in info.value.problems if p.table == "flag_changes")
    assert rules_hit == ["enabled_audience", "flag_value", "percentage_stage"]


# -- served against planned, exactly ----------------------------------------------------------

# users whose buckets fall in each range (bucket_of with the plan's salt)
A1, A2 = "u0015", "u0022"            # buckets 591, 447: the 10% stage
B1, B2, B3 = "u0001", "u0002", "u0016"  # buckets 1972, 1539, 1905: enabled by the 25% stage
C1 = "u0000"                         # bucket 2866: control through 25%
H1 = "u0006"                         # bucket 9510: holdout


def _at(day: int, hh: int, mm: int = 0, ss: int = 0) -> dt.datetime:
    return PLAN.day_start(day) + dt.timedelta(hours=hh, minutes=mm, seconds=ss)


def _served_export(tmp_path: Path, with_log: bool) -> Path:
    ids = [A1, A2, B1, B2, B3, C1, H1]
    users = {"user_id": ids, "signup_at": [PLAN.day_start(-30)] * len(ids),
             "is_internal": [False] * len(ids), "micro_memory_count": [0] * len(ids),
             "engagement_score": [0.5] * len(ids)}
    opens = [(A1, _at(10, 8)), (B1, _at(10, 8)), (B1, _at(10, 10)), (B2, _at(10, 7)),
             (C1, _at(10, 12)), (A2, _at(10, 12)), (H1, _at(10, 12))]
    requests = [(A1, _at(10, 8, 0, 1)), (B1, _at(10, 10, 0, 1)), (B2, _at(10, 7, 0, 1)),
                (C1, _at(10, 12, 0, 1))]
    exposures = [(A1, _at(8, 9)), (A2, _at(5, 9)), (B1, _at(10, 10)), (B3, _at(10, 9, 2))]
    variants = ["treatment", "control", "treatment", "control"]
    tables = {
        "users": table("users", users),
        "telemetry": table("telemetry", {
            "event_id": [f"e{i}" for i in range(len(opens))], "created_at": [t for _, t in opens],
            "user_id": [u for u, _ in opens], "device_id": ["d"] * len(opens),
            "event_type": ["app_open"] * len(opens)}),
        "api_logs": table("api_logs", {
            "request_id": [f"r{i}" for i in range(len(requests))],
            "timestamp": [t for _, t in requests], "endpoint": ["/api/whispers/context"] * 4,
            "user_id": [u for u, _ in requests], "status": [200] * 4,
            "duration_ms": [50.0] * 4}),
        "exposures": table("exposures", {"user_id": [u for u, _ in exposures],
                                         "exposed_at": [t for _, t in exposures],
                                         "variant": variants}),
        "ranking_candidates": table("ranking_candidates"),
    }
    if with_log:  # 10% on day 8 at 00:00, 25% on day 10 at 09:00 (after the morning report)
        tables["flag_changes"] = table("flag_changes", {
            "changed_at": [PLAN.day_start(0), PLAN.day_start(3), PLAN.day_start(8), _at(10, 9)],
            "flag": [E] * 4, "value": ["true"] * 4, "percentage": [None, None, 10.0, 25.0],
            "audience": ["internal", "beta", "percentage", "percentage"]})
    return write_export(tables, tmp_path / f"served-{int(with_log)}.duckdb")


def _register_state(ex, state: st.RolloutState, day: int) -> None:
    """Every user's assignment category and the state's intervals of ``day``, as the
    evaluation registers them."""
    users = ex.sql("SELECT user_id, is_internal, micro_memory_count, engagement_score "
                   "FROM users")
    bucket, category, _ = cohort.categories(users, state.dated_plan())
    qs.register_assignment(ex, users["user_id"],
                           [cohort.CATEGORY_NAMES[int(c)] for c in category], bucket)
    qs.register_intervals(ex, state.intervals(day))


def _day10(export_path: Path, state: st.RolloutState) -> dict[str, int]:
    with open_export(export_path) as ex:
        _register_state(ex, state, 10)
        counts = qs.served_vs_planned(ex, PLAN.start_date, PLAN.day_start(10), PLAN.day_start(11))
    cols = ["users", "planned_control", "planned_treatment", "unsure_only",
            "control_served_whispers", "treatment_served_control"]
    return {c: int(counts[c].sum()) for c in cols}


def test_served_against_planned_with_the_flag_log(tmp_path: Path):
    path = _served_export(tmp_path, with_log=True)
    with open_export(path) as ex:
        s = st.resolve_state(ex, PLAN, 10)
    assert s.source == "flag_log"
    # B2 was served whispers at 07:00, before the 09:00 flip; C1 at noon with the 25% stage:
    # control users served whispers. A2 (10% stage, last served control) opened at noon and got
    # no whispers: an enabled user served control. B1 was control until 09:00, treated after;
    # B3's control exposure at 09:02 falls in the flip's grace minutes: not judged.
    assert _day10(path, s) == {"users": 7, "planned_control": 4, "planned_treatment": 3,
                               "unsure_only": 1, "control_served_whispers": 2,
                               "treatment_served_control": 1}


def test_served_against_planned_with_decisions_and_with_the_calendar(tmp_path: Path):
    path = _served_export(tmp_path, with_log=False)
    # the decisions say the 25% stage began on day 10 at a time not known: B1, B2 and B3 are
    # not judged on day 10
    dec = st.from_decisions(PLAN, history(), 10)
    assert _day10(path, dec) == {"users": 7, "planned_control": 2, "planned_treatment": 2,
                                 "unsure_only": 3, "control_served_whispers": 1,
                                 "treatment_served_control": 1}
    # the calendar assumes midnight: B3's control exposure is an enabled user served control
    cal = st.from_calendar(PLAN, 10)
    got = _day10(path, cal)
    assert (got["control_served_whispers"], got["treatment_served_control"]) == (1, 2)


def test_assignment_integrity_rule():
    def rows(n_c: int, a: int, n_t: int, b: int, unsure: int = 0) -> pd.DataFrame:
        return pd.DataFrame([{"day": 10, "category": "bucketed", "users": n_c + n_t + unsure,
                              "planned_control": n_c, "planned_treatment": n_t,
                              "unsure_only": unsure, "control_served_whispers": a,
                              "treatment_served_control": b}])

    ok = rules.assignment_integrity(rows(900, 0, 300, 0), None, PLAN, 10)
    assert ok.status == "pass" and ok.value == 0.0 and ok.threshold == 0.01
    stale = rules.assignment_integrity(rows(900, 45, 300, 0), None, PLAN, 10)
    assert (stale.status, stale.code) == ("fail", "assignment_broken") and stale.value == 0.05
    assert "control users served whispers" in stale.reason
    sticky = rules.assignment_integrity(rows(900, 0, 300, 12), None, PLAN, 10)
    assert sticky.status == "fail" and "enabled users served control" in sticky.reason
    # one mismatch in 900 is within the 1% tolerance; a rate above it not yet shown waits
    assert rules.assignment_integrity(rows(900, 1, 300, 0), None, PLAN, 10).status == "pass"
    assert rules.assignment_integrity(rows(900, 0, 300, 4), None, PLAN, 10).status == "inconclusive"
    # too few users of a kind to resolve a 1% rate: never a pass
    thin = rules.assignment_integrity(rows(900, 0, 40, 0), None, PLAN, 10)
    assert thin.status == "inconclusive" and "need 100" in thin.reason
    assert rules.assignment_integrity(rows(0, 0, 0, 0), None, PLAN, 10).status == "no_data"
    from whispers_lab.stats.settings import StatSettings
    from whispers_lab.stats.srm import srm_test

    share = srm_test(pd.DataFrame({"day": [10], "n_t": [200], "n_c": [1000], "share_t": [0.095]}),
                     StatSettings.from_plan(PLAN), 10)
    assert share.status == "fail"
    off = rules.assignment_integrity(rows(900, 0, 300, 0), share, PLAN, 10)
    assert off.status == "fail" and "share of the day's active users" in off.reason


def test_dilution_of_the_by_plan_comparisons():
    counts = pd.DataFrame([
        {"day": 10, "category": "bucketed", "planned_control": 900, "planned_treatment": 100,
         "control_served_whispers": 45, "treatment_served_control": 5},
        {"day": 10, "category": "internal", "planned_control": 0, "planned_treatment": 10,
         "control_served_whispers": 0, "treatment_served_control": 10}])  # not randomised
    d = rules.dilution(counts)
    assert d["control_served_whispers_rate"] == 0.05 and d["treatment_served_control_rate"] == 0.05
    assert d["factor"] == pytest.approx(0.9) and "about 90%" in d["sentence"]
    assert rules.dilution(counts.assign(control_served_whispers=0, treatment_served_control=0)
                          )["sentence"] == ""


def test_evaluate_day_follows_the_decisions_in_the_report_folder(tmp_path: Path):
    """A hand-made export without a flag log: evaluate_day takes the state from the report
    folder (day 10 still 10% after the hold of day 9), or assumes the calendar, and says so."""
    path = _served_export(tmp_path, with_log=False)
    reports = tmp_path / "reports"
    for d, verdict in history(d9=NO).items():
        if d < 10:
            (reports / f"day-{d:02d}").mkdir(parents=True)
            (reports / f"day-{d:02d}" / "decision.json").write_text(json.dumps({"decision": verdict}))
    with open_export(path) as ex:
        held = evaluate_day(ex, 10, PLAN, reports_dir=reports)
        assumed = evaluate_day(ex, 10, PLAN)
    assert held.state.source == "decisions" and held.phase.id == "rollout_10"
    doc = held.decision.to_dict()
    assert doc["state"]["stage"]["percentage"] == 10.0 and not doc["state"]["on_plan"]
    assert held.decision.next_step.phase in ("rollout_10", "rollout_25")
    assert assumed.state.source == "calendar" and assumed.phase.id == "rollout_25"
    assert any("assumed" in n for n in assumed.decision.notes)
    assert assumed.decision.to_dict()["state"]["assumed"] is True


# -- the flag service: `whispers-lab cohort` gets the stage actually reached ------------------


def test_cohort_command_uses_the_state(tmp_path: Path, monkeypatch, capsys):
    from whispers_lab import cli

    monkeypatch.setattr(cli, "COMMANDS", ("cohort",))
    users = pd.DataFrame({"user_id": [f"u{i:04d}" for i in range(3000)], "is_internal": False,
                          "micro_memory_count": 0, "engagement_score": 0.5})
    src = tmp_path / "users.csv"
    users.to_csv(src, index=False)
    reports = tmp_path / "reports"
    for d, verdict in history(d9=NO).items():
        if d < 10:
            (reports / f"day-{d:02d}").mkdir(parents=True)
            (reports / f"day-{d:02d}" / "decision.json").write_text(json.dumps({"decision": verdict}))
    held = tmp_path / "held.csv"
    assert cli.main(["cohort", "--users", str(src), "--day", "10", "--reports", str(reports),
                     "--out", str(held)]) == 0
    out = capsys.readouterr().out
    got = pd.read_csv(held)
    assert ((got["variant"] == "treatment") == (got["bucket"] < 950)).all()   # 10%, held
    assert "10% of active users" in out and "calendar has Phase 3: Gradual Rollout 25%" in out
    assumed = tmp_path / "assumed.csv"
    assert cli.main(["cohort", "--users", str(src), "--day", "10", "--out", str(assumed)]) == 0
    assert "warning: The rollout's actual state is assumed" in capsys.readouterr().out
    assert ((pd.read_csv(assumed)["variant"] == "treatment")
            == (pd.read_csv(assumed)["bucket"] < 2375)).all()                  # 25%, calendar
    # an export's flag log comes first: a rollback on day 9 means nobody on day 10
    from factories import valid_tables

    tables = valid_tables()
    # the export's activity reaches day 10 (a flag log says nothing past the export's end)
    opens = [_at(d, h) for d in range(1, 11) for h in range(12)]
    tables["telemetry"] = pd.concat([tables["telemetry"], pd.DataFrame({
        "event_id": [f"x{i}" for i in range(len(opens))], "created_at": opens,
        "user_id": "u2", "device_id": "d2", "event_type": "app_open", "request_id": None,
        "whisper_id": None, "position": pd.array([None] * len(opens), dtype="Int32")})],
        ignore_index=True)
    tables["flag_changes"] = pd.DataFrame({
        "changed_at": [PLAN.day_start(0), PLAN.day_start(8), _at(9, 14)],
        "flag": [E] * 3, "value": ["true", "true", "false"], "percentage": [None, 10.0, None],
        "audience": ["internal", "percentage", None]})
    export = write_export(tables, tmp_path / "log.duckdb")
    off = tmp_path / "off.parquet"
    assert cli.main(["cohort", "--users", str(src), "--day", "10", "--export", str(export),
                     "--reports", str(reports), "--out", str(off)]) == 0
    assert (pd.read_parquet(off)["variant"] == "control").all()
    assert "whispers off" in capsys.readouterr().out


# -- the statistics: the calendar as the state changes nothing ----------------------------------


def test_statistics_with_the_calendar_as_the_state_are_the_calendars(small_export):
    from whispers_lab.stats import experiment_results

    def dump(res) -> str:
        return json.dumps(res.to_dict(), sort_keys=True, default=str)

    with open_export(small_export) as ex:
        for day in (9, 13):
            plain = experiment_results(ex, day, PLAN)
            stated = experiment_results(ex, day, PLAN, state=st.from_calendar(PLAN, day))
            assert dump(stated) == dump(plain)
            # a held state moves the schedule and the enabling days, nothing else is needed
            held = st.from_decisions(PLAN, history(d9=NO), day)
            res = experiment_results(ex, day, PLAN, state=held)
            # the NO_GO of day 9 counts from day 10 on: the final look moves to day 15
            assert res.design["final_day"] == (14 if day == 9 else 15)
            assert res.phase_id == held.stage_on(day).phase


# -- the report shows where the rollout is ------------------------------------------------------


def test_banner_and_index_show_the_state():
    from whispers_lab.report.index import index_html
    from whispers_lab.report.tables import decision_banner_html

    results = [CriterionResult(c, "criterion", 0.0, 0.0, "pass", "ok") for c in CRITERION_IDS]
    results += [CriterionResult(t, "trigger", 0.0, 0.0, "pass", "ok") for t in TRIGGER_IDS]
    held = st.from_decisions(PLAN, history(d9=NO), 10)
    doc = decide(results, 10, held.dated_plan(), state=held).to_dict()
    banner = decision_banner_html(doc, PLAN)
    assert "Rollout state (not where the plan&#x27;s calendar is):" in banner
    assert "10% of active users (rollout_10)" in banner and "Rollout state assumed" not in banner
    cal = st.from_calendar(PLAN, 10)
    assumed = decide(results, 10, PLAN, state=cal).to_dict()
    assert "Rollout state assumed." in decision_banner_html(assumed, PLAN)
    page = index_html(PLAN, {10: doc, 11: assumed | {"day": 11}})
    assert "<td class='off-plan' data-label='Stage in force'>10%</td>" in page  # 25% planned
    assert "<td data-label='Stage in force'>25% (assumed)</td>" in page


def test_one_reading_gives_the_days_share_and_every_days_served_counts(small_export):
    """``served_and_share`` reads the events of days 8-12 once: its served counts cover every
    day, and its share, kept to day 12, is the share computed from day 12's events alone (and
    day 12's rows of the share over all five days)."""
    with open_export(small_export) as ex:
        _register_state(ex, st.resolve_state(ex, PLAN, 12), 12)
        lo, day12, hi = PLAN.day_start(8), PLAN.day_start(12), PLAN.day_start(13)
        served, share = qs.served_and_share(ex, PLAN.start_date, lo, hi, day12)
        alone = qs.bucket_share(ex, PLAN.start_date, day12, hi)
        wide = qs.bucket_share(ex, PLAN.start_date, lo, hi)
    assert sorted(served["day"].unique()) == [8, 9, 10, 11, 12]  # every day of the window
    assert (served["users"] > 0).all()
    pd.testing.assert_frame_equal(share, alone)
    assert set(share["day"]) == {12} and len(wide) > len(share)  # the other days left out
    pd.testing.assert_frame_equal(share, wide[wide["day"] == 12].reset_index(drop=True))
