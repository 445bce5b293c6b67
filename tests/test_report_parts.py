"""The report's building blocks without papermill: privacy scan, tables, charts, index."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from matplotlib.figure import Figure

from whispers_lab.atomic import replace_dir
from whispers_lab.evaluate import evaluate_day
from whispers_lab.export import open_export, write_export
from whispers_lab.plan import load_plan
from whispers_lab.report import charts, privacy, tables
from whispers_lab.report.index import DECISION_STYLE, index_html
from whispers_lab.report.runner import write_error_report
from whispers_lab.simulate import simulate_to

from factories import valid_tables


@pytest.fixture(scope="module")
def small_export(tmp_path_factory: pytest.TempPathFactory):
    path = write_export(valid_tables(), tmp_path_factory.mktemp("x") / "tiny.duckdb")
    with open_export(path) as export:
        yield export


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory: pytest.TempPathFactory):
    path, _ = simulate_to(tmp_path_factory.mktemp("sim") / "sim.duckdb", users=1500, seed=5,
                          through_day=10)
    plan = load_plan()
    with open_export(path) as export:
        yield evaluate_day(export, 10, plan), plan


# -- privacy -------------------------------------------------------------------------------


def test_candidate_tokens_respect_word_boundaries() -> None:
    text = "user u1 and xu1y, (d1) and d12"
    found = privacy.candidate_tokens(text, [2])
    assert "u1" in found and "d1" in found
    assert "12" not in found  # inside d12
    assert privacy.candidate_tokens("", [3]) == set()


def test_find_ids_names_the_column_not_the_value(small_export) -> None:
    leaks = privacy.find_ids(small_export, {"a.html": "<td>u2</td> r1 m1", "b.html": "fine",
                                            "c.json": "xu2x"})
    cols = {(leak.file, leak.column) for leak in leaks}
    assert ("a.html", "user_id") in cols and ("a.html", "request_id") in cols
    assert ("a.html", "memory_id") in cols
    assert all(leak.file == "a.html" for leak in leaks)
    assert all("u2" not in leak.sentence() for leak in leaks)


def test_embedded_images_are_not_scanned(small_export) -> None:
    blob = "iVBORw0KGgo" + "A" * 300 + " u1 " + "B" * 300
    assert privacy.find_ids(small_export, {"x": "data:image/png;base64," + "Q" * 400 + "u1"}) == []
    assert privacy.find_ids(small_export, {"x": blob})  # a real mention between blobs counts


def test_redact_replaces_ids_everywhere(small_export) -> None:
    doc = {"reasons": ["2 users (u1, u2) conflict"], "details": {"examples": ["u1", "u3"]},
           "n": 3, "other": "u10 is not an id"}
    clean, n = privacy.redact(small_export, doc)
    assert n == 3
    assert clean["reasons"] == ["2 users ([redacted], [redacted]) conflict"]
    assert clean["details"]["examples"] == ["[redacted]", "[redacted]"]
    assert clean["other"] == "u10 is not an id" and clean["n"] == 3
    assert privacy.redact(small_export, {"a": "nothing"}) == ({"a": "nothing"}, 0)


def test_network_references() -> None:
    assert privacy.network_references('<script src="x.js"></script>')
    assert privacy.network_references('<link rel="stylesheet" href="https://cdn/x.css">')
    assert privacy.network_references("<style>@import url(x.css);</style>")
    assert privacy.network_references('<img src="//cdn/x.png">')
    assert privacy.network_references("a{background:url('https://x/y.png')}")
    assert privacy.network_references('<img src="data:image/png;base64,AAAA">') == []
    assert privacy.network_references('<a href="https://example.org">link</a>') == []


# -- tables ----------------------------------------------------------------------------------


def _doc(**entry_overrides) -> dict:
    entry = {"id": "feedback_score", "kind": "criterion", "role": "watched", "value": 4.6,
             "threshold": 4.0, "status": "pass", "blocking": False, "unit": "rating",
             "reason": "Mean rating 4.60 from 3 users.",
             "details": {"stat": {"clusters": 3}}}
    entry.update(entry_overrides)
    return {"decision": "NO_GO", "day": 4, "date": "2026-12-05", "phase": {"name": "Beta"},
            "reasons": ["1 item(s) block the day: x.", f"Watched feedback_score is pass: "
                        f"{entry['reason']}"],
            "notes": [], "criteria": [entry], "triggers": [],
            "next_step": {"action": "hold", "day": 5, "audience": "beta", "percentage": 0,
                          "environment": "production",
                          "flags": {"NEXT_PUBLIC_WHISPERS_ENABLED": True,
                                    "NEXT_PUBLIC_WHISPERS_MAX": 6},
                          "instructions": ["Hold."], "monitor_minutes": None}}


def test_small_groups_are_withheld() -> None:
    plan = load_plan()
    page = tables.criteria_table_html(_doc(), plan)
    assert "4.60" not in page and "withheld" in page
    banner = tables.decision_banner_html(_doc(), plan)
    assert "4.60" not in banner and "withheld" in banner
    big = tables.criteria_table_html(_doc(details={"stat": {"clusters": 50}}), plan)
    assert "4.60 / 5" in big


def test_request_counts_below_the_minimum_are_withheld() -> None:
    entry = {"id": "error_rate", "details": {"n": 3}}
    assert tables.suppressed(entry, 5)
    assert not tables.suppressed({"id": "error_rate", "details": {"n": 300}}, 5)
    assert tables.user_count({"id": "retention",
                              "details": {"stat": {"n_treatment": 4, "n_control": 900}}}) == 4


def test_banner_says_the_next_step_and_flags_in_words() -> None:
    banner = tables.decision_banner_html(_doc())
    assert DECISION_STYLE["NO_GO"][0] in banner and "NO-GO" in banner
    assert "Do not advance" in banner
    assert "NEXT_PUBLIC_WHISPERS_ENABLED=true" in banner and "whispers are shown" in banner
    assert "at most 6 whispers" in banner


@pytest.mark.parametrize(("value", "unit", "text"), [
    (0.0123, "share", "1.23%"), (0.995, "share", "99.5%"), (51.85, "ms", "51.9 ms"),
    (4.31, "rating", "4.31 / 5"), (-0.0215, "difference", "-2.15 pp"), (3, "tickets", "3"),
    (None, "ms", "&ndash;"),
])
def test_format_value(value, unit: str, text: str) -> None:
    assert tables.format_value(value, unit) == text


# -- charts ----------------------------------------------------------------------------------


def test_charts_render_from_a_real_evaluation(evaluation) -> None:
    ev, plan = evaluation
    t = plan.triggers
    figures = [
        charts.minute_chart(ev.minute_series, ev.windows, metric="error_rate", budget=0.02,
                            trigger_level=t.error_rate, trigger_minutes=10, min_requests=20,
                            title="e", percent=True, min_users=5),
        charts.minute_chart(ev.minute_series, ev.windows, metric="avg_duration_ms", budget=100,
                            trigger_level=300, trigger_minutes=5, min_requests=20, title="l",
                            percent=False, min_users=5),
        charts.db_chart(ev.db_series, ev.db_limit_ms, ev.windows),
        charts.exposures_chart(ev.daily, 5, ev.day),
        charts.rates_chart(ev.daily, plan, ev.day, 5),
        charts.retention_chart(ev.stats.retention_history, plan.retention.margin, 5),
        charts.srm_chart(ev.stats.srm, 5),
    ]
    for fig in figures:
        assert isinstance(fig, Figure)
        assert charts.png(fig)[:8] == b"\x89PNG\r\n\x1a\n"


def _drawn_values(fig: Figure) -> set[float]:
    """Every y value drawn as a line or a scatter point in the figure's axes."""
    values: set[float] = set()
    for ax in fig.axes:
        for line in ax.get_lines():
            values |= {round(float(v), 6) for v in line.get_ydata()}
        for coll in ax.collections:
            values |= {round(float(v), 6) for v in coll.get_offsets()[:, 1]}
    return values


def test_minute_charts_withhold_minutes_of_few_users(evaluation) -> None:
    """A minute's error rate or latency resting on fewer users than the plan's minimum group
    size is not drawn, like every other figure; the caption says how many were left out."""
    ev, plan = evaluation
    assert {"users", "requests"} <= set(ev.minute_series)
    assert (ev.minute_series["users"] <= ev.minute_series["requests"]).all()
    minutes = pd.DataFrame({
        "minute": pd.to_datetime(["2026-12-10 10:00", "2026-12-10 10:01", "2026-12-10 10:02"]),
        "requests": [40, 40, 40], "users": [3, 12, 30],
        "avg_duration_ms": [777.0, 50.0, 60.0], "errors": [36, 0, 1], "server_errors": [0, 0, 0],
        "error_rate": [0.9, 0.0, 0.025], "counted": [True, True, True]})
    for metric, secret, shown in (("error_rate", 0.9, 0.025), ("avg_duration_ms", 777.0, 60.0)):
        fig = charts.minute_chart(minutes, (), metric=metric, budget=0.02, trigger_level=0.05,
                                  trigger_minutes=10, min_requests=20, title="t",
                                  percent=metric == "error_rate",
                                  min_users=plan.criteria.min_group_users)
        drawn = _drawn_values(fig)
        assert secret not in drawn and shown in drawn
        texts = " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
        assert f"1 minute(s) with fewer than {plan.criteria.min_group_users} users" in texts
    few = minutes.assign(users=[1, 2, 3])
    fig = charts.minute_chart(few, (), metric="error_rate", budget=0.02, trigger_level=0.05,
                              trigger_minutes=10, min_requests=20, title="t", percent=True,
                              min_users=5)
    assert 0.9 not in _drawn_values(fig) and 0.025 not in _drawn_values(fig)
    assert "withheld" in " ".join(t.get_text() for ax in fig.axes for t in ax.texts)


def test_charts_say_when_there_is_nothing_to_show() -> None:
    empty = pd.DataFrame()
    for fig in (charts.retention_chart(None, 0.02, 5), charts.srm_chart(None, 5),
                charts.exposures_chart(empty, 5, 3), charts.db_chart(empty, None, ())):
        texts = [t.get_text() for ax in fig.axes for t in ax.texts]
        assert texts and all(texts)


# -- index and error page --------------------------------------------------------------------


def test_index_colours_and_links_each_day() -> None:
    plan = load_plan()
    days = {0: {"decision": "GO", "reasons": ["all pass"], "next_step": {"action": "continue"}},
            1: {"decision": "ROLLBACK", "reasons": ["trigger"], "next_step": {"action": "rollback"}},
            2: {"decision": "ERROR", "error": "export missing"}}
    page = index_html(plan, days, generated_at="2026-12-03T01:00:00Z")
    for day, style in ((0, "GO"), (1, "ROLLBACK"), (2, "ERROR")):
        assert f"day-{day:02d}/report.html" in page
        assert DECISION_STYLE[style][0] in page
    assert "Run failed, no decision: export missing" in page
    assert "<script" not in page.lower()


def test_error_page_keeps_the_previous_report_as_superseded(tmp_path: Path) -> None:
    plan = load_plan()
    prev = tmp_path / "day-05"
    prev.mkdir()
    (prev / "report.html").write_text("old report", encoding="utf-8")
    (prev / "decision.json").write_text('{"decision": "GO", "generated_at": "x"}',
                                        encoding="utf-8")
    write_error_report(tmp_path, 5, plan, "export 'x' is corrupt", export_name="x.duckdb")
    assert (prev / "previous-report.html").read_text(encoding="utf-8") == "old report"
    page = (prev / "report.html").read_text(encoding="utf-8")
    assert "no decision" in page.lower() and "superseded" in page and "corrupt" in page
    doc = __import__("json").loads((prev / "decision.json").read_text(encoding="utf-8"))
    assert doc["decision"] == "ERROR" and doc["error"] == "export 'x' is corrupt"
    # a second failure keeps the same earlier report, not the first error page
    write_error_report(tmp_path, 5, plan, "still corrupt")
    assert (prev / "previous-report.html").read_text(encoding="utf-8") == "old report"
    assert "ERROR" in (tmp_path / "index.html").read_text(encoding="utf-8")


def test_replace_dir_swaps_whole_folders(tmp_path: Path) -> None:
    target, new = tmp_path / "day-01", tmp_path / ".day-01.tmp-x"
    target.mkdir()
    (target / "a").write_text("old")
    new.mkdir()
    (new / "a").write_text("new")
    replace_dir(new, target)
    assert (target / "a").read_text() == "new" and not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["day-01"]
