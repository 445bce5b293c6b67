"""The day-14 stakeholder summary (issue 15, part 5) and the index's trend charts: the record
from decision.json documents (hand-made), the charts, the page, the full-rollout computation on
a simulated export (checked against pandas over the raw api_logs), the `summary` command, and
`report` writing it on the plan's last day."""

from __future__ import annotations

import dataclasses
import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from whispers_lab.cli import main
from whispers_lab.errors import ReportError
from whispers_lab.evaluate import evaluate_day
from whispers_lab.export import open_export
from whispers_lab.plan import load_plan
from whispers_lab.report import history, privacy, runner, stopping, summary, trends
from whispers_lab.report.index import index_html, write_index
from whispers_lab.report.runner import day_dir_name

from factories import error_lines

PLAN = load_plan()
MIN = PLAN.criteria.min_group_users


# -- hand-made documents ------------------------------------------------------------------------


def _entry(cid: str, value: Any, status: str = "pass", code: str = "pass", *,
           kind: str = "criterion", unit: str = "share", threshold: float | None = 0.02,
           reason: str = "fine", **details: Any) -> dict[str, Any]:
    return {"id": cid, "kind": kind, "role": "required", "value": value, "threshold": threshold,
            "status": status, "code": code, "reason": reason, "unit": unit,
            "details": details, "blocking": status != "pass"}


def _doc(day: int, decision: str = "GO", *, code: str = "all_pass", blocking=(), fired=(),
         users: int = 400, privacy_tickets: int = 0, retention=(0.01, -0.01, 0.03)) -> dict:
    phase = PLAN.phase_for_day(day)
    est, lo, hi = retention
    criteria = [
        _entry("error_rate", 0.004, ci_low=0.002, ci_high=0.006, users=users, n=900,
               window_from=phase.first_day, window_to=day),
        _entry("weight_fallback_rate", 0.006, ci_low=0.004, ci_high=0.009, users=users, n=900,
               window_from=phase.first_day, window_to=day),
        _entry("p95_response_ms", 120.0, unit="ms", threshold=150, ci_low=115.0, ci_high=126.0,
               window_from=phase.first_day, window_to=day),
        _entry("uptime", 0.999, threshold=0.995, ci_low=0.997, ci_high=0.9998,
               window_from=phase.first_day, window_to=day),
        _entry("ctr", 0.21, threshold=0.15, ci_low=0.19, ci_high=0.23,
               stat={"clusters": users}),
        _entry("retention", est, "inconclusive", "insufficient_evidence", unit="difference",
               threshold=-0.02, ci_low=lo, ci_high=hi,
               stat={"n_treatment": users, "n_control": users, "naive_low": est - 0.01,
                     "naive_high": est + 0.01}),
        _entry("feedback_score", 4.3, unit="rating", threshold=4.0, ci_low=4.2, ci_high=4.4,
               stat={"clusters": users}),
        _entry("support_tickets", 1.1, "inconclusive", "insufficient_evidence", unit="ratio",
               threshold=1.0, ci_low=0.7, ci_high=1.9,
               stat={"users_t": users, "users_c": users}),
        _entry("telemetry_flowing", 12, unit="events/hour", threshold=1,
               treated_active_users=users),
    ]
    triggers = [_entry("trigger_privacy", privacy_tickets,
                       "fail" if privacy_tickets else "pass",
                       "trigger_fired" if privacy_tickets else "pass", kind="trigger",
                       unit="tickets", threshold=0,
                       reason=f"Rollback trigger: {privacy_tickets} privacy ticket(s)."
                       if privacy_tickets else "No privacy ticket.")]
    text = {"all_pass": "all criteria pass", "not_enough_evidence": "held: not enough evidence yet",
            "harm_detected": "held: harm detected",
            "trigger_fired": "rolled back: rollback trigger fired"}[code]
    return {"schema_version": 2, "day": day, "date": PLAN.day_start(day).date().isoformat(),
            "phase": {"id": phase.id, "name": phase.name, "audience": phase.audience,
                      "percentage": phase.percentage},
            "decision": decision, "reason_code": code, "reason_text": text,
            "reasons": [f"day {day}: {text}"], "blocking": list(blocking), "fired": list(fired),
            "harm": [], "criteria": criteria, "triggers": triggers,
            "next_step": {"action": "continue"}}


def _days() -> dict[int, dict[str, Any]]:
    """Days 0-2 held for lack of evidence, 3 GO, 4 held for harm, 8-9 GO, 10 a rollback on a
    privacy ticket, 11 a failed run; the others not reported."""
    days = {d: _doc(d, "NO_GO", code="not_enough_evidence",
                    blocking=["qa_scenarios"] + (["error_rate"] if d == 2 else []))
            for d in (0, 1, 2)}
    days[3] = _doc(3, users=3)  # the beta: 3 users, every user-based figure withheld
    days[4] = _doc(4, "NO_GO", code="harm_detected", blocking=["support_tickets"])
    days[8] = _doc(8, retention=(-0.004, -0.03, 0.02))
    days[9] = _doc(9, retention=(0.012, -0.008, 0.03))
    days[10] = _doc(10, "ROLLBACK", code="trigger_fired", fired=["trigger_privacy"],
                    privacy_tickets=2)
    days[11] = {"decision": "ERROR", "day": 11, "error": "export 'x' is corrupt",
                "reason_text": "the run failed: no decision"}
    return days


def test_every_day_gets_a_row_with_its_decision_and_reason_code():
    rows = history.decision_rows(PLAN, _days(), MIN)
    assert [r["day"] for r in rows] == list(range(PLAN.last_day + 1))
    by_day = {r["day"]: r for r in rows}
    assert by_day[0]["decision"] == "NO_GO" and by_day[0]["reason_code"] == "not_enough_evidence"
    assert by_day[4]["reason_text"] == "held: harm detected"
    assert by_day[10]["fired"] == ["Rollback trigger: privacy concern reported"]
    assert by_day[11]["decision"] == "ERROR" and "corrupt" in by_day[11]["error"]
    assert by_day[5]["decision"] is None and by_day[5]["phase"] == "Phase 2: Limited Beta"
    counts = history.decision_counts(rows)
    assert counts == {"GO": 3, "NO_GO": 4, "ROLLBACK": 1, "ERROR": 1, "none": 6}


def test_incidents_group_holds_by_reason_and_name_what_blocked_on_which_days():
    days = _days()
    rows = history.decision_rows(PLAN, days, MIN)
    confirmations = [{"folder": "rollback-x", "verdict": "confirmed",
                      "disabled_at": "2026-12-11T10:00:00", "rollout_day": 10}]
    items = history.incidents(rows, days, MIN, confirmations)
    assert [(i["kind"], i["days"]) for i in items] == [
        ("hold", [0, 1, 2]), ("hold", [4]), ("rollback", [10]), ("error", [11])]
    lack, harm, rollback, error = items
    assert lack["title"] == "Days 0-2: held: not enough evidence yet"
    assert lack["items"] == ["Blocking: QA scenarios pass (scripts/qa-whispers.js) (days 0-2); "
                             "Error rate of /api/whispers/context (day 2)."]
    assert harm["title"] == "Day 4: held: harm detected"  # harm is told apart from no evidence
    assert any("2 privacy ticket(s)" in x for x in rollback["items"])
    assert any("confirmed" in x for x in rollback["items"])
    assert error["items"] == ["export 'x' is corrupt"]
    assert history.day_ranges([0, 1, 2, 5, 7, 8]) == "days 0-2, 5, 7-8"


def test_trend_frame_reads_values_intervals_and_withholds_small_groups():
    frame = history.trend_frame(PLAN, _days(), MIN)
    assert set(frame["metric"]) == {*history.TREND_CRITERIA, "exposure"}
    assert sorted(frame["day"].unique()) == [0, 1, 2, 3, 4, 8, 9, 10]  # the ERROR day has none
    ret = frame.loc[(frame["metric"] == "retention") & (frame["day"] == 8)].iloc[0]
    assert (ret["value"], ret["ci_low"], ret["ci_high"]) == (-0.004, -0.03, 0.02)
    assert ret["naive_low"] == pytest.approx(-0.014) and ret["threshold"] == -0.02
    small = frame.loc[frame["day"] == 3]  # 3 users on day 3
    assert small.set_index("metric").loc[["error_rate", "ctr", "retention", "exposure"],
                                         "withheld"].all()
    assert small.set_index("metric").loc[["error_rate", "ctr", "exposure"], "value"].isna().all()
    exposure = frame.loc[(frame["metric"] == "exposure") & (frame["day"] == 9)].iloc[0]
    assert exposure["value"] == 400 and exposure["percentage"] == 10.0


def _drawn_y(fig: Figure) -> set[float]:
    values: set[float] = set()
    for ax in fig.axes:
        for coll in ax.collections:
            offsets = coll.get_offsets()
            if len(offsets):
                values |= {round(float(v), 6) for v in np.asarray(offsets)[:, 1]}
    return values


def test_trend_charts_draw_each_day_and_never_a_withheld_value():
    days = _days()
    days[9]["criteria"][0]["value"] = 0.0123  # error rate of day 9
    days[3]["criteria"][0]["value"] = 0.0777  # day 3: 3 users, withheld
    frame = history.trend_frame(PLAN, days, MIN)
    fig = trends.interval_chart(frame, "error_rate", "Error rate", lambda v, _: f"{v}", "none")
    drawn = _drawn_y(fig)
    assert 0.0123 in drawn and 0.0777 not in drawn
    texts = " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
    assert "1 day(s) from fewer users than the minimum" in texts
    charts = trends.trend_charts(frame)
    assert [c.id for c in charts] == ["retention", "ctr", "p95_response_ms", "error_rate",
                                      "weight_fallback_rate", "exposure"]
    assert all(c.png.startswith(b"\x89PNG") for c in charts)
    empty = history.trend_frame(PLAN, {}, MIN)
    for fig in (trends.retention_chart(empty), trends.exposure_chart(empty),
                trends.interval_chart(empty, "ctr", "CTR", lambda v, _: "", "No CTR yet.")):
        assert [t.get_text() for ax in fig.axes for t in ax.texts]  # says there is nothing
    assert not trends.has_points(empty)


def test_metrics_from_reports_sum_privacy_tickets_and_say_which_days_are_unknown():
    days = _days()
    metrics = {m["id"]: m for m in summary.metrics_from_documents(PLAN, days, 10, MIN)}
    assert [m.id for m in summary.SUCCESS_METRICS][:8] == [
        "uptime", "p95_response_ms", "weight_fallback_rate", "privacy_incidents", "ctr",
        "retention", "feedback_score", "support_tickets"]
    privacy_row = metrics["privacy_incidents"]
    assert privacy_row["value"] == 2 and privacy_row["status"] == "fail"
    assert privacy_row["verdict"] == "missed"
    assert metrics["uptime"]["window"] == "day 10"  # as the day-10 report judged it
    assert metrics["retention"]["verdict"] == "not yet shown"
    assert metrics["retention"]["window"] == "days 8-10"
    assert metrics["ctr"]["window"] == "days 8-10"  # the audience window of the statistics
    days.pop(10)
    days[9]["triggers"] = []  # day 9's privacy trigger unknown
    quiet = {m["id"]: m for m in summary.metrics_from_documents(PLAN, days, 9, MIN)}
    assert quiet["privacy_incidents"]["status"] == "inconclusive"
    assert "5, 6, 7, 9" in quiet["privacy_incidents"]["reason"]


def test_verdict_words_tell_a_miss_from_missing_evidence_and_harm():
    assert summary.verdict("pass", "pass") == "met"
    assert summary.verdict("fail", "threshold_missed") == "missed"
    assert summary.verdict("fail", "harm_detected") == "harm shown"
    assert summary.verdict("fail", "not_demonstrated") == "not shown by the final look"
    assert summary.verdict("inconclusive", "insufficient_evidence") == "not yet shown"
    assert summary.verdict("no_data", "") == "no data"


def _write_days(out: Path, days: dict[int, dict[str, Any]]) -> None:
    for day, doc in days.items():
        folder = out / day_dir_name(day)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "decision.json").write_text(json.dumps(doc), encoding="utf-8")


def test_summary_page_is_self_contained_and_holds_every_part(tmp_path: Path):
    _write_days(tmp_path, _days())
    result = summary.write_summary(tmp_path, PLAN, generated_at="2026-12-16T06:00:00Z")
    page = result.html.read_text(encoding="utf-8")
    doc = json.loads(result.json.read_text(encoding="utf-8"))
    assert doc == json.loads(json.dumps(result.document))
    assert doc["through_day"] == 11 and doc["metrics_day"] == 10
    assert doc["outcome"]["headline"] == "Day 11: the report run failed, no decision (rolled " \
                                         "back on day 10)"
    assert "<script" not in page.lower() and privacy.network_references(page) == []
    assert page.count("data:image/png;base64,") == 6
    for m in summary.SUCCESS_METRICS:
        assert html.escape(m.target) in page and m.label in page
    assert "held: harm detected" in page and "held: not enough evidence yet" in page
    assert "as the report of day 10 judged them" in page
    assert "@media (max-width: 640px)" in page and "data-label='Decision'" in page
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [
        "summary.html", "summary.json"]  # no temporary file left


def test_summary_without_any_report_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ReportError, match="no day report in"):
        summary.write_summary(tmp_path, PLAN)
    assert list(tmp_path.iterdir()) == []


def test_index_links_the_summary_and_shows_the_trends_above_its_table(tmp_path: Path):
    days = _days()
    bare = index_html(PLAN, days)
    assert "summary.html" not in bare and bare.count("data:image/png;base64,") == 6
    assert bare.index("Trends across days") < bare.index("<table>")
    stubs = {0: {"decision": "GO", "reasons": ["ok"]}}  # no figures: no charts
    assert "data:image/png" not in index_html(PLAN, stubs)
    _write_days(tmp_path, days)
    summary.write_summary(tmp_path, PLAN)
    page = write_index(tmp_path, PLAN).read_text(encoding="utf-8")
    assert "<a href='summary.html'>Stakeholder summary of the rollout (through day 11)</a>" \
        in page


# -- the full rollout from a simulated export ---------------------------------------------------


@pytest.fixture(scope="module")
def site(small_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The decision.json of days 12-14 of the shared small export (as the notebook writes
    them: ids redacted), without running the notebook."""
    out = tmp_path_factory.mktemp("summary-site")
    with open_export(small_export) as ex:
        for day in (12, 13, 14):
            doc, _ = privacy.redact(ex, evaluate_day(ex, day, PLAN).decision.to_dict())
            _write_days(out, {day: doc})
    return out


def _uptime_from_raw_logs(export_path: Path, first: int, last: int) -> float:
    """Uptime over days first..last computed from the raw rows in pandas: a minute with any
    whispers request is down when at least half of its requests got a 5xx."""
    with open_export(export_path) as ex:
        logs = ex.sql("SELECT \"timestamp\" AS t, status FROM api_logs WHERE endpoint = "
                      "'/api/whispers/context'")
    logs = logs.loc[(logs["t"] >= PLAN.day_start(first)) & (logs["t"] < PLAN.day_start(last + 1))]
    per = logs.assign(m=logs["t"].dt.floor("min"), bad=logs["status"] >= 500).groupby("m")
    minutes = per.agg(n=("bad", "size"), bad=("bad", "sum"))
    down = int((minutes["bad"] >= minutes["n"] / 2).sum())
    return 1 - down / len(minutes)


def test_summary_command_computes_the_whole_rollout_from_the_export(site: Path,
                                                                    small_export: Path,
                                                                    capsys):
    assert main(["summary", "--reports", str(site), "--export", str(small_export)]) == 0
    assert "rollout summary" not in capsys.readouterr().err
    doc = json.loads((site / "summary.json").read_text(encoding="utf-8"))
    metrics = {m["id"]: m for m in doc["metrics"]}
    assert doc["through_day"] == 14 and doc["outcome"]["day"] == 14
    assert doc["complete"] == (doc["outcome"]["decision"] == "GO")
    assert "computed afresh from the export" in doc["metrics_basis"]
    # the system metrics over every percentage day, not the day-14 report's one-day phase
    first_pct = PLAN.percentage_stages()[0][0]
    assert metrics["uptime"]["window"] == f"days {first_pct}-14"
    assert metrics["uptime"]["value"] == pytest.approx(
        _uptime_from_raw_logs(small_export, first_pct, 14), abs=1e-12)
    day14 = {e["id"]: e for e in json.loads(
        (site / "day-14" / "decision.json").read_text(encoding="utf-8"))["criteria"]}
    assert day14["uptime"]["details"]["window_from"] == 14
    # the comparisons are cumulative by design: the same as the day-14 report's
    assert metrics["retention"]["value"] == pytest.approx(day14["retention"]["value"])
    assert metrics["privacy_incidents"]["status"] == "pass"
    for m in doc["metrics"]:
        assert m["status"] in ("pass", "fail", "inconclusive", "no_data") and m["verdict"]
        if m["value"] is not None and m["ci_low"] is not None:
            assert m["ci_low"] <= m["value"] <= (m["ci_high"] if m["ci_high"] is not None
                                                 else math.inf)
    with open_export(small_export) as ex:  # aggregates only
        assert privacy.scan_files(ex, [site / "summary.html", site / "summary.json"]) == []
    index = (site / "index.html").read_text(encoding="utf-8")
    assert "summary.html" in index and "Trends across days" in index


def test_summary_command_errors_are_one_line(site: Path, tmp_path: Path, capsys):
    assert main(["summary", "--reports", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and "no day report" in err
    assert main(["summary", "--reports", str(site), "--export", str(tmp_path / "no.duckdb")]) == 1
    assert len(error_lines(capsys.readouterr().err)) == 1


def test_a_failed_summary_never_undoes_the_day_and_a_stop_leaves_it_standing(
        site: Path, small_export: Path, monkeypatch):
    def broken(*_: Any, **__: Any) -> None:
        raise ReportError("disk full")

    monkeypatch.setattr(summary, "write_summary", broken)
    path, note = runner._write_summary(site, PLAN, small_export)
    assert path is None and "disk full" in note and "whispers-lab summary" in note

    def stopped(*_: Any, **__: Any) -> None:
        raise stopping.RunStopped(15)

    monkeypatch.setattr(summary, "write_summary", stopped)
    with pytest.raises(stopping.RunStopped) as info:
        runner._write_summary(site, PLAN, small_export)
    assert info.value.finished  # the day's report was published: it stands


def test_report_on_the_last_day_writes_the_summary(small_export: Path, tmp_path: Path, capsys):
    out = tmp_path / "reports"
    _write_days(out, {8: _doc(8)})  # an earlier day's report already in the folder
    assert main(["report", "--export", str(small_export), "--day", str(PLAN.last_day),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "rollout summary ->" in printed.out and "warning" not in printed.err
    doc = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert [r["day"] for r in doc["days"] if r["decision"]] == [8, PLAN.last_day]
    assert doc["export"]["name"] == small_export.name
    assert "summary.html" in (out / "index.html").read_text(encoding="utf-8")
    frame = pd.DataFrame(doc["metrics"])
    assert len(frame) == len(summary.SUCCESS_METRICS)


def test_the_summarys_evaluation_computed_ahead_is_the_one_it_would_compute(small_export: Path,
                                                                          tmp_path: Path):
    """The report run computes the summary's evaluation while its kernel draws the day: it is
    what build_summary computes itself, and it is used only for the same export and day."""
    out = tmp_path / "reports"
    _write_days(out, {8: _doc(8), PLAN.last_day: _doc(PLAN.last_day)})
    with open_export(small_export) as export:
        ahead = summary.evaluate_ahead(small_export, PLAN, PLAN.last_day, export)
    fresh = summary.build_summary(out, PLAN, small_export, generated_at="t")
    assert summary.build_summary(out, PLAN, small_export, generated_at="t", ahead=ahead) == fresh
    marked = dataclasses.replace(ahead, facts={**ahead.facts, "name": "from-ahead"})
    used = summary.build_summary(out, PLAN, small_export, generated_at="t", ahead=marked)
    assert used["export"]["name"] == "from-ahead"
    for other in (dataclasses.replace(marked, through=PLAN.last_day - 1),
                  dataclasses.replace(marked, export_path=str(tmp_path / "other.duckdb"))):
        assert summary.build_summary(out, PLAN, small_export, generated_at="t",
                                     ahead=other) == fresh


def test_trend_charts_of_one_day_tick_whole_days_only():
    """A summary written after only the last day's report draws one point per chart: its day
    axis shows that day, not fractional days (13.50, 13.65, ... as it did)."""
    days = {9: _days()[9]}  # a GO day with every figure
    frame = history.trend_frame(PLAN, days, MIN)
    figures = [trends.retention_chart(frame), trends.exposure_chart(frame),
               trends.interval_chart(frame, "error_rate", "Error rate", lambda v, _: f"{v}",
                                     "none")]
    for fig in figures:
        fig.canvas.draw()
        for ax in [a for a in fig.axes if a.get_xlabel() == "rollout day"]:
            lo, hi = ax.get_xlim()
            ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
            assert ticks == [9.0], ticks


def test_trend_charts_of_an_equal_frame_are_drawn_once(monkeypatch):
    """A report on the last day shows the same six charts on the index, the summary and the
    index again: drawn once; a frame that differs in one value is drawn anew."""
    frame = history.trend_frame(PLAN, _days(), MIN)
    drawn = []
    real = trends.png
    monkeypatch.setattr(trends, "png", lambda fig: drawn.append(fig) or real(fig))
    monkeypatch.setattr(trends, "_DRAWN", {})
    first = trends.trend_charts(frame)
    again = trends.trend_charts(frame.copy())
    assert len(drawn) == 6 and again == first
    changed = frame.copy()
    changed.loc[changed["value"].notna().idxmax(), "value"] += 0.001
    assert [c.png for c in trends.trend_charts(changed)] != [c.png for c in first]
    assert len(drawn) == 12
