"""The report run's evaluation handed over to the notebook (issue 18: the queries run while the
kernel starts): the notebook gets exactly the run's result, waits for it, and never waits for
one that will not come."""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import time

import pytest

from whispers_lab.errors import ExportError, ReportError
from whispers_lab.evaluate import evaluate_day
from whispers_lab.export import open_export
from whispers_lab.plan import load_plan
from whispers_lab.report import precomputed


def test_an_evaluation_survives_the_hand_over(small_export, tmp_path):
    with open_export(small_export) as export:
        evaluation = evaluate_day(export, 10, load_plan(None))
    stamp = dt.datetime(2026, 1, 2, 3, 4, 5)  # one time for both documents, not two calls' clocks
    document = evaluation.decision.to_dict(stamp)
    precomputed.save_evaluation(tmp_path / "e.pickle", evaluation, document)
    got, doc = precomputed.load_evaluation(tmp_path / "e.pickle", timeout=1)
    assert doc == document
    assert json.dumps(got.decision.to_dict(stamp), default=str) == json.dumps(document, default=str)
    assert got.minute_series.equals(evaluation.minute_series)
    assert got.daily.equals(evaluation.daily)
    assert [p.name for p in tmp_path.iterdir()] == ["e.pickle"]  # no temporary left


def test_the_notebook_waits_for_the_run(tmp_path):
    target = tmp_path / "e.pickle"
    writer = threading.Timer(0.3, precomputed.save_evaluation, (target, {"a": 1}, {"b": 2}))
    writer.start()
    started = time.monotonic()
    assert precomputed.load_evaluation(target, timeout=30) == ({"a": 1}, {"b": 2})
    assert time.monotonic() - started >= 0.25


def test_a_failed_run_stops_the_wait_with_its_message(tmp_path):
    calls = []

    def bad_open():
        calls.append(1)
        raise ExportError("export 'x.duckdb' does not exist")

    pre = precomputed.Precompute(bad_open, lambda export: (None, None))
    with pytest.raises(ReportError, match="does not exist"):
        precomputed.load_evaluation(pre.path, timeout=30)
    with pytest.raises(ExportError):
        pre.result()
    pre.close()
    assert calls == [1] and not pre.path.parent.exists()


def test_a_bug_in_the_evaluation_names_its_type(small_export):
    def work(export):
        raise ZeroDivisionError("boom")

    pre = precomputed.Precompute(lambda: open_export(small_export, validate=False), work)
    with pytest.raises(ReportError, match="evaluation failed: ZeroDivisionError: boom"):
        precomputed.load_evaluation(pre.path, timeout=30)
    pre.close()


def test_no_result_is_waited_for_forever(tmp_path):
    with pytest.raises(ReportError, match="did not arrive"):
        precomputed.load_evaluation(tmp_path / "never.pickle", timeout=0.2)


def test_work_after_the_hand_over_runs_and_its_failure_is_not_the_days(small_export):
    """``then`` (the summary's evaluation) runs once the day is handed over; when it fails,
    the day's result stands and ``then_result`` is None (its caller computes it again)."""
    order = []

    def work(export):
        order.append("day")
        return {"day": 14}, {"decision": "GO"}

    def then(export):
        order.append("then")
        return export.scalar("SELECT count(*) FROM users")

    pre = precomputed.Precompute(lambda: open_export(small_export, validate=False), work, then)
    assert precomputed.load_evaluation(pre.path, timeout=30) == ({"day": 14}, {"decision": "GO"})
    _, evaluation = pre.result()
    assert evaluation == {"day": 14} and order == ["day", "then"] and pre.then_result > 0
    pre.close()

    def broken(export):
        raise ZeroDivisionError("boom")

    pre = precomputed.Precompute(lambda: open_export(small_export, validate=False), work, broken)
    _, evaluation = pre.result()
    assert evaluation == {"day": 14} and pre.error is None and pre.then_result is None
    pre.close()


def test_the_report_run_sets_up_html_as_it_evaluates_and_trends_after_the_hand_over(
        small_export, tmp_path, monkeypatch):
    """The first HTML conversion of a process sets nbconvert up (about 1 s of Python): the
    report run starts it in a thread of its own as the evaluation begins, and says when it is
    done (``html_ready``). The index's trend charts (about 1.5 s) need the day's decision:
    they are drawn in the evaluation thread once the notebook has its evaluation, on every
    day (beside the summary's evaluation on the last one: see the next test). A page
    converted after the warm-up is the same as before it."""
    import threading

    import nbformat

    from whispers_lab.report import runner

    order = []
    real_warm, real_save = runner.warm_html, precomputed.save_evaluation
    warm_started = threading.Event()

    def warm():
        warm_started.set()
        real_warm()

    def save(*args):
        # the set-up began before the evaluation was handed over (waits when it did not)
        order.append(("handed over", warm_started.wait(20)))
        real_save(*args)

    def trends_ahead(out, plan, day, document):
        order.append(("trends", out, day, document["decision"]))

    monkeypatch.setattr(runner, "warm_html", warm)
    monkeypatch.setattr(runner, "draw_trends_ahead", trends_ahead)
    monkeypatch.setattr(precomputed, "save_evaluation", save)
    pre = runner._precompute(small_export, 9, load_plan(None), tmp_path, None, summary_day=None)
    _, evaluation = pre.result()
    assert evaluation.day == 9 and pre.then_result is None
    assert order == [("handed over", True),
                     ("trends", tmp_path, 9, evaluation.decision.decision)]
    assert pre.html_ready.wait(30)
    pre.close()

    order.clear()  # a run that does not write the index (the demo's) draws no trends for it
    warm_started.clear()
    pre = runner._precompute(small_export, 9, load_plan(None), tmp_path, None, summary_day=None,
                             index_due=False)
    pre.result()
    assert order == [("handed over", True)]
    assert pre.html_ready.wait(30)
    pre.close()

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# day 9 *GO*")])
    page = runner.notebook_to_html(nb, "t")
    assert "day 9" in page and runner.notebook_to_html(nb, "t") == page


def test_on_the_last_day_the_trends_are_drawn_while_the_summary_is_evaluated(
        small_export, tmp_path, monkeypatch):
    """The summary's evaluation (DuckDB's threads) and the index's trend charts (Python) run
    side by side after the hand-over: one after the other they outlasted the kernel's drawing
    at 1M users. Each waits here for a sign that the other has started; run one after the
    other, the first would wait in vain. The summary's evaluation is still the thread's
    result."""
    import threading

    from whispers_lab.report import runner, summary

    pages_started, summary_started = threading.Event(), threading.Event()
    seen = {}
    real_ahead = summary.evaluate_ahead

    def trends_ahead(out, plan, day, document):
        pages_started.set()
        seen["summary while trends"] = summary_started.wait(20)
        seen["trends"] = day

    def ahead(*args):
        summary_started.set()
        seen["trends while summary"] = pages_started.wait(20)
        return real_ahead(*args)

    monkeypatch.setattr(runner, "warm_html", lambda: None)
    monkeypatch.setattr(runner, "draw_trends_ahead", trends_ahead)
    monkeypatch.setattr(summary, "evaluate_ahead", ahead)
    plan = load_plan(None)
    pre = runner._precompute(small_export, plan.last_day, plan, tmp_path, None,
                             summary_day=plan.last_day)
    pre.result()
    assert seen == {"summary while trends": True, "trends while summary": True,
                    "trends": plan.last_day}
    assert pre.then_result.through == plan.last_day and pre.error is None
    pre.close()


def test_trend_charts_drawn_ahead_are_the_ones_the_index_shows(small_export, tmp_path,
                                                                 monkeypatch):
    """The report run draws the index's trend charts with the day's decision before it is
    published (:func:`whispers_lab.report.index.draw_trends_ahead`); the index written after
    publication uses them (no second drawing) and is the page a fresh drawing gives."""
    from whispers_lab.report import index, privacy, trends

    plan = load_plan(None)
    docs = {}
    with open_export(small_export) as export:
        for day in (9, 10):
            evaluation = evaluate_day(export, day, plan)
            docs[day], _ = privacy.redact(export, evaluation.decision.to_dict())
    out = tmp_path / "reports"
    (out / "day-09").mkdir(parents=True)
    (out / "day-09" / "decision.json").write_text(json.dumps(docs[9]))
    monkeypatch.setattr(trends, "_DRAWN", {})
    drawn = []
    real_draw = trends._draw
    monkeypatch.setattr(trends, "_draw", lambda frame: drawn.append(1) or real_draw(frame))

    index.draw_trends_ahead(out, plan, 10, docs[10])
    assert drawn == [1]
    (out / "day-10").mkdir()  # published as the run does: with its stamps and the day's tasks
    (out / "day-10" / "decision.json").write_text(json.dumps(
        docs[10] | {"report": {"generated_at": "2026-12-12T05:30:00Z"}, "communications": []}))
    page = index.write_index(out, plan).read_text()
    assert drawn == [1]  # the index found them drawn

    monkeypatch.setattr(trends, "_DRAWN", {})
    fresh = index.write_index(out, plan).read_text()
    assert drawn == [1, 1]
    stamp = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")  # when the index was written
    assert stamp.sub("T", fresh) == stamp.sub("T", page)
    assert "Trends across days" in page


def test_the_run_attaches_the_export_once(small_export, tmp_path, monkeypatch):
    """The run attaches the export before its kernel starts, to fail fast on one that cannot
    be opened; its evaluation then uses that attachment instead of attaching it again (for a
    day-partitioned export, attaching lists every file and reads the many-file tables into
    memory: 0.9 s at 1M users). Run without a kernel: the notebook's stand-in waits for the
    evaluation, notes the attachments made so far, and fails the run. An attachment never
    taken is closed at the run's end."""
    from pathlib import Path

    from whispers_lab import export as export_module
    from whispers_lab.report import runner

    calls = []
    real_attach = export_module.attach

    def counted(*args, **kwargs):
        calls.append(args[0])
        return real_attach(*args, **kwargs)

    seen = {}

    def notebook(parameters, output, **kwargs):
        evaluation, _ = precomputed.load_evaluation(Path(parameters["evaluation_path"]),
                                                    timeout=120)
        seen.update(day=evaluation.day, attached=list(calls))
        raise ReportError("stop here")

    monkeypatch.setattr(export_module, "attach", counted)
    monkeypatch.setattr(runner, "warm_html", lambda: None)
    monkeypatch.setattr(runner, "execute_notebook", notebook)
    with pytest.raises(ReportError, match="stop here"):
        runner.write_report(small_export, 9, out_dir=tmp_path / "out", refresh_index=False)
    assert seen == {"day": 9, "attached": [small_export]}

    calls.clear()
    unused = runner._check_openable(small_export)
    con = unused._attached[0]
    unused.close()
    with pytest.raises(Exception, match=r"(?i)closed"):
        con.execute("SELECT 1")
    assert unused.take() is None and calls == [small_export]
