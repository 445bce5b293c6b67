"""Validation beyond the contract rules: repeated telemetry events (counted once), rows stamped
beyond the export's end (never coverage), and incremental validation of partitioned exports."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from whispers_lab import validation
from whispers_lab.cli import main
from whispers_lab.coverage import extent_from_days
from whispers_lab.errors import ExportValidationError
from whispers_lab.export import open_export, write_export, write_partitioned_export
from whispers_lab.queries import monitoring as q

DAY0 = dt.date(2026, 12, 1)


# -- repeated events ---------------------------------------------------------------------------


def _with_repeats(telemetry: pa.Table, share: float, seed: int) -> tuple[pa.Table, int]:
    """``telemetry`` plus copies of a ``share`` of its shown/used events under new event ids,
    0-999 ms later (what a client retrying a send produces); returns (table, copies)."""
    rng = np.random.default_rng(seed)
    kinds = telemetry["event_type"].to_numpy(zero_copy_only=False)
    pick = np.flatnonzero(np.isin(kinds, ["whispers_shown", "whispers_used"])
                          & (rng.random(telemetry.num_rows) < share))
    copies = telemetry.take(pa.array(pick))
    later = pc.add(copies["created_at"], pa.array(rng.integers(0, 1_000_000, pick.size),
                                                  pa.duration("us")))
    copies = copies.set_column(copies.schema.get_field_index("created_at"), "created_at",
                               later.cast(copies.schema.field("created_at").type))
    copies = copies.set_column(0, "event_id", pa.array([f"dup{i}" for i in range(pick.size)]))
    return pa.concat_tables([telemetry, copies.cast(telemetry.schema)]), int(pick.size)


@pytest.mark.parametrize("fmt", ["duckdb", "parquet"])
def test_repeated_events_are_counted_once(small_sim, small_export, tmp_path: Path,
                                          fmt: str) -> None:
    tables = dict(small_sim.tables)
    tables["telemetry"], copies = _with_repeats(tables["telemetry"], 0.05, seed=1)
    # not repeats: the same event 1.5 s later, and another whisper of the same request
    t = tables["telemetry"]
    row = small_sim.tables["telemetry"].filter(
        pc.equal(small_sim.tables["telemetry"]["event_type"], "whispers_used")).slice(0, 1)
    late = row.set_column(1, "created_at", pc.add(row["created_at"], pa.array(
        [1_500_000], pa.duration("us"))).cast(row.schema.field("created_at").type))
    late = late.set_column(0, "event_id", pa.array(["late1"]))
    tables["telemetry"] = pa.concat_tables([t, late])
    assert copies > 50
    path = tmp_path / ("rep.duckdb" if fmt == "duckdb" else "rep")
    write_export(tables, path, parquet=fmt == "parquet")
    start = small_sim.plan.day_start(0)
    end = small_sim.plan.day_start(small_sim.plan.last_day + 1)
    with open_export(small_export) as clean, open_export(path) as repeated:
        # (the simulator's own data may hold a repeat or two: two opens in one second)
        assert repeated.duplicate_events == clean.duplicate_events + copies
        notices = [n for n in repeated.validation.notices if n.rule == "duplicate_events"]
        assert [(n.table, n.rows) for n in notices] == [
            ("telemetry", clean.duplicate_events + copies)]
        assert repeated.row_count("telemetry") == clean.row_count("telemetry") + 1  # + late
        got = q.daily_series(repeated, start, end)
        want = q.daily_series(clean, start, end)
        day_of_late = (row["created_at"][0].as_py().date() - start.date()).days
        want.loc[want["day"] == day_of_late, "clicks"] += 1  # the late one is a second click
        for col in ("impressions", "shown_users", "treatment_users", "control_users"):
            assert got[col].tolist() == want[col].tolist(), col
        assert got["clicks"].tolist() == want["clicks"].tolist()
        assert (q.hourly_telemetry(repeated, start, end)["shown"].tolist()
                == q.hourly_telemetry(clean, start, end)["shown"].tolist())


def test_validate_reports_repeated_events(small_sim, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    tables = dict(small_sim.tables)
    tables["telemetry"], copies = _with_repeats(tables["telemetry"], 0.01, seed=2)
    path = write_export(tables, tmp_path / "rep.duckdb")
    with open_export(path) as export:
        repeats = export.duplicate_events
    assert repeats >= copies > 10
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"note: table 'telemetry': {repeats:,} event(s) repeat an earlier event" in out
    assert "counted once" in out


# -- rows beyond the export's end -------------------------------------------------------------


def test_extent_ignores_a_stray_future_day() -> None:
    days = {DAY0 + dt.timedelta(days=i): 10_000 for i in range(10)}
    days[DAY0 + dt.timedelta(days=10)] = 40  # the export was cut just after midnight
    days[DAY0 + dt.timedelta(days=40)] = 3  # a device with a wrong clock
    stamps = {d: dt.datetime.combine(d, dt.time(23, 59)) for d in days}
    extent = extent_from_days(days, stamps)
    assert extent.last_day == DAY0 + dt.timedelta(days=9)
    assert extent.end == dt.datetime.combine(DAY0 + dt.timedelta(days=9), dt.time(23, 59))
    assert extent.beyond == {DAY0 + dt.timedelta(days=40): 3}  # the tail day is not flagged
    assert extent.covers(DAY0 + dt.timedelta(days=9))
    assert not extent.covers(DAY0 + dt.timedelta(days=10))
    assert not extent.covers(DAY0 + dt.timedelta(days=40))
    assert extent_from_days({}).end is None and not extent_from_days({}).covers(DAY0)


def test_a_future_row_is_flagged_and_does_not_extend_the_export(
        small_sim, small_export, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "future.duckdb"
    shutil.copy(small_export, path)
    with open_export(small_export) as clean:
        end = q.data_end(clean)
    future = end + dt.timedelta(days=30)
    con = duckdb.connect(str(path))
    con.execute("INSERT INTO telemetry SELECT 'future1', ?, user_id, device_id, 'app_open', "
                "NULL, NULL, NULL FROM telemetry LIMIT 1", [future])
    con.close()
    with open_export(path) as export:
        assert q.data_end(export) == end
        assert export.scalar("SELECT max(created_at) FROM telemetry") == future
        notices = [n for n in export.validation.notices if n.rule == "beyond_end"]
        assert [(n.table, n.rows) for n in notices] == [("telemetry", 1)]
    assert main(["validate", str(path)]) == 0
    assert ("note: table 'telemetry': 1 row(s) stamped after the export's end"
            in capsys.readouterr().out)


def _extent_case(case: str, small_sim, small_export: Path, tmp_path: Path) -> Path:
    """An export for :func:`test_the_extent_from_validation_is_the_extent_read_from_the_tables`."""
    if case == "simulated":
        return small_export
    if case == "partitioned":
        return write_partitioned_export(dict(small_sim.tables), tmp_path / "parts")
    tables = dict(small_sim.tables)
    tel = tables["telemetry"]
    if case in ("repeats", "latest is a repeat"):
        tables["telemetry"], _ = _with_repeats(tel, 0.05, seed=3)
    if case in ("repeats", "latest is a repeat"):
        # the latest event again, 0.5 s later: a repeat the view leaves out; or, for "repeats",
        # an event of its own a minute later, so that the latest row is not a repeat
        rows = tables["telemetry"]
        last = rows.take(pa.array([int(np.argmax(rows["created_at"].to_numpy()))]))
        us = 500_000 if case == "latest is a repeat" else 60_000_000
        later = pc.add(last["created_at"], pa.array([us], pa.duration("us")))
        last = last.set_column(1, "created_at", later.cast(last.schema.field("created_at").type))
        last = last.set_column(0, "event_id", pa.array(["last-event"]))
        if case == "repeats":
            last = last.set_column(last.schema.get_field_index("request_id"), "request_id",
                                   pa.array(["another-request"]))
        tables["telemetry"] = pa.concat_tables([rows, last.cast(tel.schema)])
    path = write_export(tables, tmp_path / f"{case.replace(' ', '-')}.duckdb")
    if case == "future and tail":  # a wrong clock (telemetry, api_logs) and a cut after midnight
        con = duckdb.connect(str(path))
        end = con.execute("SELECT max(created_at) FROM telemetry").fetchone()[0]
        tail = dt.datetime.combine(end.date() + dt.timedelta(days=1), dt.time(0, 5))
        con.execute("INSERT INTO telemetry SELECT 'future1', ?, user_id, device_id, "
                    "'app_open', NULL, NULL, NULL FROM telemetry LIMIT 1",
                    [end + dt.timedelta(days=30)])
        con.execute("INSERT INTO api_logs SELECT 'future2', ? , endpoint, user_id, device_id, "
                    "status, duration_ms, ranking_ms, weight_source, weights_version "
                    "FROM api_logs LIMIT 1", [end + dt.timedelta(days=9)])
        con.execute("INSERT INTO exposures SELECT user_id, ?, variant FROM exposures LIMIT 3",
                    [tail])
        con.close()
    return path


@pytest.mark.parametrize("case", ["simulated", "partitioned", "repeats", "future and tail",
                                  "latest is a repeat"])
def test_the_extent_from_validation_is_the_extent_read_from_the_tables(
        case: str, small_sim, small_export: Path, tmp_path: Path, monkeypatch) -> None:
    """A validated export's extent and latest rows come from the counts validation already
    made (no table read again): the same as one scan of every table, on a fresh validation
    and on one read back from the manifest (repeated events read back from the cache), with
    repeated events left out, a tail after midnight and rows stamped in the future. When the
    latest telemetry row is itself a repeat, the tables are read."""
    monkeypatch.setenv(validation.CACHE_ENV, str(tmp_path / "cache"))
    path = _extent_case(case, small_sim, small_export, tmp_path)
    for opening in ("fresh", "from the manifest"):
        with open_export(path) as export:
            assert (export.validation.units_reused > 0) == (opening == "from the manifest")
            known = q._validated(export)
            got = q.export_extent(export), {t: q.latest_row(export, t) for t in q.TIME_COLUMNS}
            read = q.activity_days(export)
            export.validation = None  # what reading every table gives
            want = q.export_extent(export), {t: q.latest_row(export, t) for t in q.TIME_COLUMNS}
        assert got == want, opening
        if case == "latest is a repeat":
            assert known is None
            continue
        assert known is not None
        for table, (days, last) in known.items():
            rows = read.loc[read["source"] == table]
            assert days == {pd.Timestamp(d).date(): int(n)
                            for d, n in zip(rows["date"], rows["rows"], strict=True)}
            assert last == (rows["last"].max() if len(rows) else None), table
    if case == "future and tail":
        assert got[0].beyond and got[0].end < got[1]["telemetry"]  # the end was read


# -- incremental validation ------------------------------------------------------------------


def _partitioned(small_sim, folder: Path) -> Path:
    return write_partitioned_export(dict(small_sim.tables), folder)


def _day_file(folder: Path, table: str, day: dt.date) -> Path:
    files = sorted((folder / table / f"date={day.isoformat()}").glob("*.parquet"))
    assert len(files) == 1
    return files[0]


def _validate(path: Path, **kwargs: object) -> validation.ValidationResult:
    with open_export(path, **kwargs) as export:
        assert export.validation is not None
        return export.validation


def test_second_validation_rechecks_only_changed_partitions(small_sim, tmp_path: Path) -> None:
    folder = _partitioned(small_sim, tmp_path / "export")
    units = sum(len(validation.list_units(folder, "parquet", t.name)) for t in validation.TABLES)
    first = _validate(folder)
    assert (first.units_checked, first.units_reused) == (units, 0)
    manifest = validation.manifest_path(folder)
    written = manifest.stat().st_mtime_ns
    again = _validate(folder)
    assert (again.units_checked, again.units_reused) == (0, units)
    assert manifest.stat().st_mtime_ns == written  # nothing changed: not written again
    assert again.tables == first.tables and again.notices == first.notices
    # a day's telemetry is re-delivered (same rows, rewritten): only that file is re-checked
    day = small_sim.plan.start_date + dt.timedelta(days=3)
    file = _day_file(folder, "telemetry", day)
    pq.write_table(pq.read_table(file, partitioning=None), file)
    third = _validate(folder)
    assert (third.units_checked, third.units_reused) == (1, units - 1)
    assert third.tables == first.tables
    full = _validate(folder, use_cache=False)
    assert (full.units_checked, full.units_reused) == (units, 0)


def test_a_changed_partition_with_a_problem_is_caught(small_sim, tmp_path: Path) -> None:
    folder = _partitioned(small_sim, tmp_path / "export")
    _validate(folder)
    file = _day_file(folder, "api_logs", small_sim.plan.start_date + dt.timedelta(days=5))
    table = pq.read_table(file, partitioning=None)
    broken = table.set_column(table.schema.get_field_index("status"), "status",
                              pa.array(np.full(table.num_rows, 999, np.int32)))
    pq.write_table(broken, file)
    with pytest.raises(ExportValidationError) as info:
        open_export(folder)
    assert [(p.table, p.column, p.rule, p.rows) for p in info.value.problems] == [
        ("api_logs", "status", "domain", table.num_rows)]
    pq.write_table(table, file)  # repaired: valid again, and only that file checked again
    units = sum(len(validation.list_units(folder, "parquet", t.name)) for t in validation.TABLES)
    again = _validate(folder)
    assert (again.units_checked, again.units_reused) == (1, units - 1)


def test_a_key_repeated_across_partitions_is_caught(small_sim, tmp_path: Path) -> None:
    folder = _partitioned(small_sim, tmp_path / "export")
    _validate(folder)
    days = [small_sim.plan.start_date + dt.timedelta(days=d) for d in (2, 6)]
    early = pq.read_table(_day_file(folder, "telemetry", days[0]), partitioning=None)
    late_file = _day_file(folder, "telemetry", days[1])
    late = pq.read_table(late_file, partitioning=None)
    # a late-day event reusing an early day's event_id (an id generator bug)
    reuse = late.slice(0, 1).set_column(0, "event_id", early["event_id"].slice(0, 1))
    pq.write_table(pa.concat_tables([late, reuse.cast(late.schema)]), late_file)
    with pytest.raises(ExportValidationError) as info:
        open_export(folder)
    assert [(p.table, p.rule, p.rows) for p in info.value.problems] == [("telemetry", "unique", 2)]


def test_a_key_repeated_within_one_of_many_new_partitions_is_caught(small_sim,
                                                                   tmp_path: Path) -> None:
    """A first validation reads every partition at once; a key repeated inside one of them is
    found by the count over all of them (the scan counts distinct keys only for one unit)."""
    folder = _partitioned(small_sim, tmp_path / "export")
    file = _day_file(folder, "api_logs", small_sim.plan.start_date + dt.timedelta(days=4))
    table = pq.read_table(file, partitioning=None)
    pq.write_table(pa.concat_tables([table, table.slice(3, 1)]), file)
    with pytest.raises(ExportValidationError) as info:
        open_export(folder)
    assert [(p.table, p.column, p.rule, p.rows) for p in info.value.problems] == [
        ("api_logs", "request_id", "unique", 2)]
    pq.write_table(table, file)  # repaired: api_logs is read again in full, nothing else
    units = {t.name: len(validation.list_units(folder, "parquet", t.name))
             for t in validation.TABLES}
    again = _validate(folder)
    assert (again.units_checked, again.units_reused) == (units["api_logs"],
                                                         sum(units.values()) - units["api_logs"])


def test_manifest_is_invalidated_by_new_checks(small_sim, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _partitioned(small_sim, tmp_path / "export")
    _validate(folder)
    manifest = validation.manifest_path(folder)
    assert manifest is not None and manifest.is_file()
    assert str(manifest).startswith(os.environ[validation.CACHE_ENV])  # never ~/.cache in tests
    monkeypatch.setattr(validation, "CHECKS_VERSION", validation.CHECKS_VERSION + 1)
    assert _validate(folder).units_reused == 0
    monkeypatch.setenv(validation.CACHE_ENV, "")  # caching off: nothing reused, nothing kept
    assert validation.manifest_path(folder) is None
    assert _validate(folder).units_reused == 0


def _repeats(folder: Path, **kwargs: object) -> set[str]:
    with open_export(folder, **kwargs) as export:
        return {r[0] for r in export.con.execute(
            "SELECT event_id FROM telemetry_duplicates").fetchall()}


def _with_rows(file: Path, rows: list[dict]) -> pa.Table:
    """``file``'s table with ``rows`` (overrides of its first row) appended; the old table."""
    table = pq.read_table(file, partitioning=None)
    extra = [table.slice(0, 1).to_pylist()[0] | row for row in rows]
    pq.write_table(pa.concat_tables([table, pa.Table.from_pylist(extra, table.schema)]), file)
    return table


def test_repeated_events_of_changed_partitions_are_searched_again_in_their_span_only(
        small_sim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After one day's telemetry is rewritten, the repeated events are searched again only
    over the span of its rows (old and new) widened by the repeat window, and the result is
    what a full search finds: also for a row of an unchanged day that now repeats a row added
    to the changed one, and for a row added to the changed day that repeats an unchanged one."""
    from whispers_lab import export as ex

    folder = _partitioned(small_sim, tmp_path / "export")
    start = small_sim.plan.start_date
    searched: list[str] = []
    real = ex.duplicate_events_select
    monkeypatch.setattr(ex, "duplicate_events_select", lambda *a, **k: (
        searched.append(str(k.get("where", ""))), real(*a, **k))[1])
    first = _repeats(folder)
    assert searched == [""]  # the first search reads everything

    before, day, after = (_day_file(folder, "telemetry", start + dt.timedelta(days=d))
                          for d in (4, 5, 6))
    x = pq.read_table(before, partitioning=None).sort_by([("created_at", "descending")])
    y = pq.read_table(after, partitioning=None).sort_by("created_at")
    x, y = x.slice(0, 1).to_pylist()[0], y.slice(0, 1).to_pylist()[0]
    key = [*ex.DUPLICATE_EVENT_KEY]
    old = _with_rows(day, [
        # repeats x (the previous day's last event) half a second later
        {"event_id": "zz-repeat-x", **{k: x[k] for k in key},
         "created_at": x["created_at"] + dt.timedelta(seconds=0.5)},
        # comes half a second before y (the next day's first event): y now repeats it
        {"event_id": "aa-before-y", **{k: y[k] for k in key},
         "created_at": y["created_at"] - dt.timedelta(seconds=0.5)}])
    searched.clear()
    changed = _repeats(folder)
    assert len(searched) == 1 and searched[0]  # a search of a span, not of everything
    assert changed == _repeats(folder, use_cache=False)
    assert changed - first == {"zz-repeat-x", str(y["event_id"])}

    pq.write_table(old, day)  # the day re-delivered as it was: the repeats are gone again
    searched.clear()
    assert _repeats(folder) == first == _repeats(folder, use_cache=False)
    assert len(searched) == 2 and searched[0]


@pytest.mark.parametrize("limit", [None, 0])
def test_hashes_repeat_finds_exactly_the_repeated_hashes(monkeypatch: pytest.MonkeyPatch,
                                                         limit: int | None) -> None:
    """Sorted in numpy, or (``limit`` 0: past :data:`validation.MAX_SORTED_HASHES`) by
    DuckDB's window, against Python's own count of distinct values; hashes above 2**63 too."""
    if limit is not None:
        monkeypatch.setattr(validation, "MAX_SORTED_HASHES", limit)
    con = duckdb.connect()
    rng = np.random.default_rng(11)
    values = rng.integers(0, 2**63, size=50_000, dtype=np.int64).astype(np.uint64) * np.uint64(2)
    values[::7] += np.uint64(2**63)  # (the high half of the range)
    cases = {"unique": np.unique(values), "one repeat": np.append(np.unique(values), values[3]),
             "one row": values[:1], "none": values[:0],
             "the largest twice": np.array([2**64 - 1, 5, 2**64 - 1], dtype=np.uint64)}
    for name, hashes in cases.items():
        con.register("t", pa.table({"v": pa.array(hashes, type=pa.uint64())}))
        expected = len(set(hashes.tolist())) < len(hashes)
        # (``rows`` is an upper bound: fewer or more than the query gives change nothing)
        for rows in (len(hashes), 0, 1, len(hashes) + 100):
            assert validation.hashes_repeat(con, "SELECT v AS h FROM t", rows) == expected, \
                (name, rows)
