"""An export that remembers its query results (``Export.memoize``, issue 18) gives exactly what
a fresh export gives, and a changed input is never answered from memory."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from documents import assert_same_document

from whispers_lab import export as export_module
from whispers_lab.evaluate import evaluate_day
from whispers_lab.export import open_export
from whispers_lab.plan import load_plan
from whispers_lab.report.summary import full_rollout_plan


def _doc(evaluation) -> dict:
    doc = json.loads(json.dumps(evaluation.decision.to_dict(), default=str))
    doc.pop("generated_at", None)
    return doc


@pytest.fixture(scope="module")
def plan():
    return load_plan(None)


def test_the_summarys_second_evaluation_equals_a_fresh_one(small_export, plan):
    """The report run evaluates the day, then the summary evaluates it again under the
    full-rollout plan on the same memoizing export: every result equals a fresh evaluation's,
    and the window-independent queries are not run again."""
    with open_export(small_export) as fresh:
        day_fresh = evaluate_day(fresh, 14, plan)
    with open_export(small_export) as fresh:
        full_fresh = evaluate_day(fresh, 14, full_rollout_plan(plan))
    with open_export(small_export) as export:
        export.memoize()
        day_memo = evaluate_day(export, 14, plan)
        remembered = len(export._memo)
        full_memo = evaluate_day(export, 14, full_rollout_plan(plan))
        rerun = len(export._memo) - remembered
    assert_same_document(_doc(day_memo), _doc(day_fresh))
    assert_same_document(_doc(full_memo), _doc(full_fresh))
    with pytest.raises(AssertionError):  # the two plans do judge differently
        assert_same_document(_doc(full_fresh), _doc(day_fresh))
    pd.testing.assert_frame_equal(full_memo.daily, full_fresh.daily, rtol=1e-12)
    assert 0 < rerun < remembered / 2  # only the window-dependent queries ran again


def test_a_changed_registered_frame_is_not_answered_from_memory(small_export):
    with open_export(small_export, validate=False) as export:
        export.memoize()
        query = "SELECT count(*) AS n, sum(x) AS s FROM wl_probe"
        export.register("wl_probe", pd.DataFrame({"x": [1, 2, 3]}))
        first = export.sql(query)
        export.register("wl_probe", pd.DataFrame({"x": [1, 2, 3]}))  # same content
        assert export.sql(query).equals(first)
        export.register("wl_probe", pd.DataFrame({"x": [1, 2, 4]}))
        assert int(export.sql(query)["s"].iloc[0]) == 7
        # a query that does not read the frame keeps its key
        assert export.scalar("SELECT count(*) FROM users") == export.scalar(
            "SELECT count(*) FROM users")


def test_a_temporary_table_is_remade_only_when_its_inputs_change(small_export):
    with open_export(small_export, validate=False) as export:
        export.memoize()
        make = "CREATE OR REPLACE TEMP TABLE wl_made AS SELECT sum(x) AS s FROM wl_in"
        export.register("wl_in", pd.DataFrame({"x": [1, 2]}))
        export.sql(make)
        assert export.scalar("SELECT s FROM wl_made") == 3
        export.register("wl_in", pd.DataFrame({"x": [5, 5]}))
        export.sql(make)  # its input changed: made again
        assert export.scalar("SELECT s FROM wl_made") == 10
        export.register("wl_in", pd.DataFrame({"x": [1, 2]}))  # back to the first inputs
        export.sql(make)  # the table holds the second make's rows: made again
        assert export.scalar("SELECT s FROM wl_made") == 3
        export.con.execute("DELETE FROM wl_made")  # behind the memo's back (never done)
        export.sql(make)  # same statement, same inputs: skipped
        assert export.con.execute("SELECT count(*) FROM wl_made").fetchall()[0][0] == 0


def test_results_are_copies_and_memory_is_off_by_default(small_export):
    with open_export(small_export, validate=False) as export:
        query = "SELECT user_id FROM users ORDER BY user_id LIMIT 3"
        export.sql(query)
        assert export._memo is None
        export.memoize()
        first = export.sql(query)
        first.loc[0, "user_id"] = "changed"
        assert export.sql(query).loc[0, "user_id"] != "changed"
        export.memoize(False)
        assert export._memo is None


def test_frames_with_equal_strings_share_a_fingerprint_and_one_changed_value_does_not():
    """The memo's fingerprint of a registered frame reads its Arrow buffers: equal content
    (whatever the string storage) is one key, one changed character or row is another."""
    serial = iter(range(100))
    ids = [f"u{i:05d}" for i in range(1000)]
    base = pd.DataFrame({"user_id": pd.Series(ids, dtype=str), "bucket": range(1000)})
    same = pd.DataFrame({"user_id": pd.Series(list(ids), dtype=str), "bucket": range(1000)})
    changed = base.copy()
    changed.loc[517, "user_id"] = "u00518"
    shorter = base.iloc[:999]
    fp = [export_module._fingerprint(f, serial) for f in (base, same, changed, shorter)]
    assert fp[0] == fp[1]
    assert len(set(fp[1:])) == 3
    # a column of mixed Python objects (not Arrow-convertible) still gets a content digest
    mixed = pd.DataFrame({"x": pd.Series([1, "a", 2.5], dtype=object)})
    assert (export_module._fingerprint(mixed, serial)
            == export_module._fingerprint(mixed.copy(), serial))


def test_an_unordered_table_holds_the_same_rows_and_the_setting_comes_back(small_export):
    """``Export.sql(..., ordered=False)`` (the report's two large temporary tables) makes a
    table of the same rows, in any order, and leaves the connection keeping insertion order
    again, also when the statement fails; the statement is still remembered like any other."""
    query = ("CREATE OR REPLACE TEMP TABLE wl_probe_rows AS SELECT user_id, created_at, "
             "event_type FROM telemetry WHERE created_at >= $lo")
    lo = pd.Timestamp("2026-12-05").to_pydatetime()
    keep = "SELECT current_setting('preserve_insertion_order') AS v"
    rows = "SELECT * FROM wl_probe_rows ORDER BY ALL"
    with open_export(small_export) as export:
        export.sql(query, {"lo": lo})
        ordered_rows = export.sql(rows)
        export.memoize()
        export.sql(query, {"lo": lo}, ordered=False)
        assert bool(export.sql(keep)["v"].iloc[0]) is True
        pd.testing.assert_frame_equal(export.sql(rows), ordered_rows)
        assert len(ordered_rows) > 1000
        remembered = len(export._memo)
        export.sql(query, {"lo": lo}, ordered=False)  # made already: not made again
        assert len(export._memo) == remembered
        with pytest.raises(Exception, match="no_such_table"):
            export.sql("CREATE OR REPLACE TEMP TABLE wl_probe_bad AS SELECT * FROM no_such_table",
                       ordered=False)
        assert bool(export.sql(keep)["v"].iloc[0]) is True
