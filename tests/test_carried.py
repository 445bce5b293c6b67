"""What one day's report carries to the next (``whispers_lab.queries.carried``): the users' app
opens over the days before the new one, read back instead of the telemetry of those days.

Every test compares the table the evaluation made, and the evaluation itself, with the same
evaluation under caching off (nothing carried), and says which way the table was made. Each
test has a cache folder of its own."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from whispers_lab import export as ex
from whispers_lab import validation
from whispers_lab.evaluate import evaluate_day
from whispers_lab.export import open_export, write_export, write_partitioned_export
from whispers_lab.queries import carried, monitoring
from whispers_lab.queries.monitoring import APP_OPENS_TABLE, REQUEST_EVENTS_TABLE

from factories import assert_same_evaluation, last_day, row_days, tables_before


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(validation.CACHE_ENV, str(folder))
    return folder


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """How each evaluation from now on made the app opens' table (``opens``), the grouped
    telemetry (``events``) and the daily series (``daily``): ``telemetry`` (every day read),
    ``joined`` (carried days and the days after them from the telemetry) or ``carried`` (read
    as it was)."""
    how: dict[str, list[str]] = {"opens": [], "events": [], "daily": []}
    real = ex.Export.sql

    def recorded(self, query, *args, **kwargs):
        for name, table in (("opens", APP_OPENS_TABLE), ("events", REQUEST_EVENTS_TABLE)):
            if f"TEMP TABLE {table} AS" in query:
                how[name].append("telemetry" if "carried" not in query else
                                 "joined" if "JOIN" in query or "UNION" in query else "carried")
        return real(self, query, *args, **kwargs)

    rows, read = monitoring._daily_rows, carried.read_frame

    def rows_made(export, start, lo, end):  # the days from lo on, from the telemetry
        if lo == start:
            how["daily"].append("telemetry")
        else:  # (after the carried days just read)
            how["daily"][-1] = "joined"
        return rows(export, start, lo, end)

    def frame_read(export, key):
        frame = read(export, key)
        if frame is not None and key.startswith("daily_series-"):
            how["daily"].append("carried")
        return frame

    monkeypatch.setattr(ex.Export, "sql", recorded)
    monkeypatch.setattr(monitoring, "_daily_rows", rows_made)
    monkeypatch.setattr(carried, "read_frame", frame_read)
    return how


def _clear(made: dict[str, list[str]]) -> None:
    for how in made.values():
        how.clear()


def _evaluated(path: Path, day: int, plan) -> tuple[object, list[tuple]]:
    """The day's evaluation and the app opens' table it made (sorted rows)."""
    with open_export(path) as export:
        evaluation = evaluate_day(export, day, plan)
        rows = [export.con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall()
                for t in (APP_OPENS_TABLE, REQUEST_EVENTS_TABLE)]
    return evaluation, [*rows, evaluation.daily]


def _as_if_uncached(path: Path, day: int, plan, monkeypatch: pytest.MonkeyPatch
                    ) -> tuple[object, list[tuple]]:
    kept = os.environ[validation.CACHE_ENV]
    monkeypatch.setenv(validation.CACHE_ENV, "")
    try:
        return _evaluated(path, day, plan)
    finally:
        monkeypatch.setenv(validation.CACHE_ENV, kept)


def _same(path: Path, day: int, plan, monkeypatch: pytest.MonkeyPatch) -> None:
    """The evaluation of ``path`` now, and again, as with nothing carried."""
    expected = _as_if_uncached(path, day, plan, monkeypatch)
    found = _evaluated(path, day, plan)
    assert found[1][:2] == expected[1][:2] and min(map(len, found[1][:2])) > 100
    # the daily series (every day, zero-filled), column for column and type for type
    pd.testing.assert_frame_equal(found[1][2], expected[1][2])
    assert len(found[1][2]) == day + 1
    assert_same_evaluation(found[0], expected[0])


def _days(small_sim, tmp_path: Path, before: dict | None = None,
          whole: dict | None = None) -> tuple[Path, Path, int]:
    """The day before's file and the whole one (DuckDB files under new names), and the last
    rollout day."""
    tables = dict(small_sim.tables) if whole is None else whole
    last = last_day(dict(small_sim.tables))
    first = write_export(tables_before(dict(small_sim.tables), last) if before is None
                         else before, tmp_path / "day-before.duckdb")
    day = (last.astype(object) - small_sim.plan.start_date).days
    return first, write_export(tables, tmp_path / "today.duckdb"), day


def test_a_new_file_reads_the_days_before_from_the_day_befores_report(
        small_sim, tmp_path: Path, cache: Path, made: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A DuckDB file written anew (another name) holding yesterday's days as they were: its
    report joins the carried table to the new day's app opens; made again, it reads its own
    carried table. Both as with nothing carried. Without a cache folder nothing is kept."""
    before, today, day = _days(small_sim, tmp_path)
    plan = small_sim.plan
    _evaluated(before, day - 1, plan)
    assert made == {"opens": ["telemetry"], "events": ["telemetry"], "daily": ["telemetry"]}
    assert len(list((cache / "carried").glob("*"))) == 3
    _clear(made)
    _same(today, day, plan, monkeypatch)
    assert made == {"opens": ["telemetry", "joined"], "events": ["telemetry", "joined"],
                    "daily": ["telemetry", "joined"]}
    _clear(made)
    _same(today, day, plan, monkeypatch)
    assert made == {"opens": ["telemetry", "carried"], "events": ["telemetry", "joined"],
                    "daily": ["telemetry", "carried"]}
    for kind in ("app_opens", "request_events", "daily_series"):
        assert len(list((cache / "carried").glob(f"{kind}-*"))) == 2


def test_an_earlier_day_rewritten_is_read_from_the_telemetry(
        small_sim, tmp_path: Path, cache: Path, made: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Today's file holds an earlier day changed (one app open of day 3 gone): that day's
    content key differs, nothing is carried, the table is the telemetry's."""
    tables = dict(small_sim.tables)
    telemetry = tables["telemetry"]
    day3 = row_days(telemetry, "telemetry") == np.datetime64(small_sim.plan.start_date) + 3
    opens = pa.compute.equal(telemetry["event_type"], "app_open").to_numpy(zero_copy_only=False)
    gone = int((day3 & opens).nonzero()[0][0])
    keep = pa.array([i != gone for i in range(telemetry.num_rows)])
    before, today, day = _days(small_sim, tmp_path,
                               whole=tables | {"telemetry": telemetry.filter(keep)})
    _evaluated(before, day - 1, small_sim.plan)
    _clear(made)
    _same(today, day, small_sim.plan, monkeypatch)
    assert made == {"opens": ["telemetry"] * 2, "events": ["telemetry"] * 2,
                    "daily": ["telemetry"] * 2}


def test_another_state_before_the_new_day_is_read_from_the_telemetry(
        small_sim, tmp_path: Path, cache: Path, made: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The flag log of today's file moves an earlier change by an hour: the state's slots
    before the new day differ (the bits of each user's opens per slot), nothing is carried."""
    tables = dict(small_sim.tables)
    flags = tables["flag_changes"]
    later = pa.compute.add(flags["changed_at"].cast(pa.timestamp("us")),
                           pa.scalar(3600 * 10**6, pa.duration("us")))
    moved = flags.set_column(flags.schema.get_field_index("changed_at"), "changed_at",
                             pa.array([later[i].as_py() if i == flags.num_rows // 2
                                       else flags["changed_at"][i].as_py()
                                       for i in range(flags.num_rows)],
                                      flags.schema.field("changed_at").type))
    before, today, day = _days(small_sim, tmp_path, whole=tables | {"flag_changes": moved})
    _evaluated(before, day - 1, small_sim.plan)
    _clear(made)
    _same(today, day, small_sim.plan, monkeypatch)
    # (the grouped telemetry and the daily series do not depend on the state)
    assert made == {"opens": ["telemetry"] * 2, "events": ["telemetry", "joined"],
                    "daily": ["telemetry", "joined"]}


def test_a_carried_file_that_cannot_be_read_is_made_again(
        small_sim, tmp_path: Path, cache: Path, made: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    before, today, day = _days(small_sim, tmp_path)
    _evaluated(before, day - 1, small_sim.plan)
    for file in (cache / "carried").glob("*"):
        file.write_bytes(b"not parquet")
    _clear(made)
    _same(today, day, small_sim.plan, monkeypatch)
    # (the failed join, then every day)
    assert made == {"opens": ["telemetry", "joined", "telemetry"],
                    "events": ["telemetry", "joined", "telemetry"],
                    "daily": ["telemetry"] * 2}


def test_a_partitioned_exports_new_day_reads_the_days_before_from_the_day_befores_report(
        small_sim, tmp_path: Path, cache: Path, made: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A Parquet export partitioned by day: the new day's files added, every earlier file as
    it was. A file of an earlier day rewritten (the same rows, a new checksum) carries
    nothing."""
    tables = dict(small_sim.tables)
    last = last_day(tables)
    whole = write_partitioned_export(tables, tmp_path / "whole")
    folder = write_partitioned_export(tables_before(tables, last), tmp_path / "parts")
    day = (last.astype(object) - small_sim.plan.start_date).days
    _evaluated(folder, day - 1, small_sim.plan)
    for part in sorted(whole.glob(f"*/date={last}")):
        shutil.copytree(part, folder / part.relative_to(whole))
    (folder / "ranking_candidates.parquet").unlink()
    shutil.copy2(whole / "ranking_candidates.parquet", folder / "ranking_candidates.parquet")
    _clear(made)
    _same(folder, day, small_sim.plan, monkeypatch)
    assert made == {"opens": ["telemetry", "joined"], "events": ["telemetry", "joined"],
                    "daily": ["telemetry", "joined"]}

    earlier = sorted((folder / "telemetry").glob("date=*"))[-5] / "data_0.parquet"
    earlier.write_bytes(earlier.read_bytes())  # (a new modification time)
    os.utime(earlier, (1, 1))
    _clear(made)
    _same(folder, day, small_sim.plan, monkeypatch)
    assert made == {"opens": ["telemetry"] * 2, "events": ["telemetry"] * 2,
                    "daily": ["telemetry"] * 2}


def test_the_newest_carried_tables_are_kept(small_sim, tmp_path: Path, cache: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(carried, "KEPT", 2)
    before, _, day = _days(small_sim, tmp_path)
    for d in (day - 3, day - 2, day - 1):
        _evaluated(before, d, small_sim.plan)
    for kind in ("app_opens", "request_events", "daily_series"):
        assert len(list((cache / "carried").glob(f"{kind}-*"))) == 2


def test_the_summarys_evaluation_makes_the_tables_as_the_days_did(
        small_sim, tmp_path: Path, cache: Path, made: dict[str, list[str]]) -> None:
    """The report evaluates the day, then the summary (the whole rollout's plan) on the same
    memoizing export: each table is made by the same statement again, which the export skips
    with everything computed from it, not read back from what the day's evaluation just
    carried (another statement: everything after it computed again)."""
    from whispers_lab.report.summary import full_rollout_plan

    before, today, day = _days(small_sim, tmp_path)
    _evaluated(before, day - 1, small_sim.plan)
    _clear(made)
    with open_export(today) as export:
        export.memoize()
        evaluate_day(export, day, small_sim.plan)
        evaluate_day(export, day, full_rollout_plan(small_sim.plan))
    # (the daily series is a frame, not a table: the summary's reads the day's as it was kept)
    assert made == {"opens": ["joined"] * 2, "events": ["joined"] * 2,
                    "daily": ["joined", "carried"]}


@pytest.mark.parametrize("table", ["api_logs", "exposures"])
def test_the_daily_series_of_an_earlier_day_changed_is_computed_again(
        small_sim, tmp_path: Path, cache: Path, made: dict[str, list[str]],
        monkeypatch: pytest.MonkeyPatch, table: str) -> None:
    """Today's file drops one row of day 9 of ``table`` (a whispers request, an exposure row):
    the daily series read the day before's carried rows only while every table it counts is
    as it was on those days. The telemetry's tables are carried as before."""
    tables = dict(small_sim.tables)
    rows = tables[table]
    day9 = row_days(rows, table) == np.datetime64(small_sim.plan.start_date) + 9
    if table == "api_logs":
        day9 &= pa.compute.equal(rows["endpoint"], "/api/whispers/context").to_numpy(
            zero_copy_only=False)
    gone = int(day9.nonzero()[0][0])
    keep = pa.array([i != gone for i in range(rows.num_rows)])
    before, today, day = _days(small_sim, tmp_path, whole=tables | {table: rows.filter(keep)})
    _evaluated(before, day - 1, small_sim.plan)
    _clear(made)
    _same(today, day, small_sim.plan, monkeypatch)
    assert made["daily"] == ["telemetry"] * 2
    assert made["events"] == ["telemetry", "joined"]


def _carried_files(cache: Path) -> dict[str, list[tuple]]:
    """Each carried file of ``cache`` (by name) with its rows sorted."""
    import duckdb

    con = duckdb.connect()
    return {f.name: con.execute(f"SELECT * FROM read_parquet('{f}') ORDER BY ALL").fetchall()
            for f in sorted((cache / "carried").glob("*.parquet"))}


def test_deferred_tables_are_written_at_the_flush_as_they_would_have_been(
        small_sim, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While an export defers (the report run, until the day is handed to the notebook),
    nothing is written; the flush writes the same files, byte for byte in content, as an
    evaluation that does not defer. A table made again from other inputs in between is not
    written (its name says what it was made from); a flush that drops writes nothing, nor
    does anything carried from that export later; an export that does not track its
    relations (not memoizing) is not deferred."""
    before, _, day = _days(small_sim, tmp_path)
    plan = small_sim.plan
    with open_export(before) as export:
        assert not carried.defer(export)  # (not memoizing: kept at once, as before)
        evaluate_day(export, day - 1, plan)
    expected = _carried_files(cache)
    assert len(expected) == 3
    shutil.rmtree(cache / "carried")

    with open_export(before) as export:
        export.memoize()
        assert carried.defer(export)
        evaluate_day(export, day - 1, plan)
        assert _carried_files(cache) == {}
        assert carried.flush(export) == 3
        assert _carried_files(cache) == expected
        assert carried.flush(export) == 0  # (nothing held any more)
        carried.keep(export, APP_OPENS_TABLE, "app_opens-test")  # no longer deferring
        assert "app_opens-test.parquet" in _carried_files(cache)
    shutil.rmtree(cache / "carried")

    with open_export(before) as export:
        export.memoize()
        carried.defer(export)
        evaluate_day(export, day - 1, plan)
        export.sql(f"CREATE OR REPLACE TEMP TABLE {APP_OPENS_TABLE} AS "
                   f"SELECT * FROM {APP_OPENS_TABLE} LIMIT 3")
        assert carried.flush(export) == 2
        assert sorted(_carried_files(cache)) == sorted(
            n for n in expected if not n.startswith("app_opens-"))
    shutil.rmtree(cache / "carried")

    with open_export(before) as export:
        export.memoize()
        carried.defer(export)
        evaluate_day(export, day - 1, plan)
        assert carried.flush(export, write=False) == 0
        assert _carried_files(cache) == {}
        # nothing is carried from it any more (the summary's evaluation on the last day)
        carried.keep(export, APP_OPENS_TABLE, "app_opens-test")
        carried.keep_frame(export, pd.DataFrame({"x": [1]}), "daily_series-test")
        assert _carried_files(cache) == {}


def test_the_report_run_carries_after_the_hand_over_and_not_on_the_last_day(
        small_sim, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The report run's evaluation thread hands the day over with nothing carried yet, then
    writes what the next day's report reads; on the rollout's last day (no report follows)
    it writes nothing, nor does the stakeholder summary's evaluation after it."""
    from types import SimpleNamespace

    from whispers_lab.report import precomputed, runner

    before, _, day = _days(small_sim, tmp_path)
    plan = small_sim.plan
    assert day - 1 < plan.last_day
    at_hand_over: list[int] = []
    save = precomputed.save_evaluation

    def saved(*args: object) -> None:
        at_hand_over.append(len(_carried_files(cache)))
        save(*args)

    monkeypatch.setattr(precomputed, "save_evaluation", saved)
    for report_day, carries in ((day - 1, 3), (plan.last_day, 0)):
        shutil.rmtree(cache / "carried", ignore_errors=True)
        with runner._check_openable(before) as attached:
            # (on the last day the summary's evaluation follows, in the same thread)
            pre = runner._precompute(before, report_day, plan, tmp_path / "reports", None,
                                     attached, index_due=False,
                                     summary_day=None if carries else report_day)
            try:
                _, evaluation = pre.result()
            finally:
                pre.close()
        assert at_hand_over[-1] == 0
        assert len(_carried_files(cache)) == carries, report_day
        # the last day as the state projects it: a held rollout goes on past the plan's
        assert runner.carries_on(plan, report_day, evaluation.state) == (carries > 0)
    held = SimpleNamespace(final_day=lambda: plan.last_day + 1)
    assert runner.carries_on(plan, plan.last_day, held)
    assert not runner.carries_on(plan, plan.last_day + 1, held)
    assert not runner.carries_on(plan, plan.last_day, None)
    assert runner.carries_on(plan, plan.last_day - 1, None)


def test_the_next_days_report_reads_only_its_own_day_and_the_cues_lookback(
        small_sim, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the day before's report carried of the grouped telemetry ends where the new
    report's day begins (its own day's rows summed over the hours), so the new report reads
    from the telemetry only its day and the cues of its cooldown's lookback: no whispers event
    of an earlier day. As with nothing carried (``_same``)."""
    import datetime as dt

    before, today, day = _days(small_sim, tmp_path)
    plan = small_sim.plan
    _evaluated(before, day - 1, plan)
    reads: list[dict] = []
    real = ex.Export.sql

    def recorded(self, query, params=None, **kwargs):
        if f"TEMP TABLE {REQUEST_EVENTS_TABLE} AS" in query and "carried" in query:
            reads.append(dict(params))
        return real(self, query, params, **kwargs)

    monkeypatch.setattr(ex.Export, "sql", recorded)
    _same(today, day, plan, monkeypatch)
    start = plan.day_start(day)
    assert reads and all(r["since"] == start and r["start"] == start - dt.timedelta(
        minutes=float(plan.cue_cooldown_minutes)) for r in reads)
