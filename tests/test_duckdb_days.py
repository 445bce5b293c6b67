"""A DuckDB file written anew each day (a new name, yesterday's days rewritten with today's):
validation and the search of repeated events reuse, by content, the days an earlier file held.

Each day of a table gets a content digest in the scan that reads every value
(``validation.day_digests``). Keys are tested again only for the days whose digest no clean
validation recorded, against each other and against the rest; repeated events are searched
again only over the span of the days that differ. Every test compares with a validation that
reuses nothing, and each uses a cache folder of its own (the session's is shared, and content
seen clean by another test would be reused: rightly, but not what these tests look at)."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from whispers_lab import export as ex
from whispers_lab import validation
from whispers_lab.contract import CONTRACT
from whispers_lab.errors import ExportValidationError
from whispers_lab.export import open_export, write_export

from factories import last_day as _last_day
from factories import row_days as _day
from factories import tables_before as _before


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(validation.CACHE_ENV, str(folder))
    return folder


def _write(tables: dict[str, pa.Table], path: Path) -> Path:
    return write_export(tables, path)


def _open(path: Path, **kwargs: object) -> ex.Export:
    return open_export(path, **kwargs)


def _replace(table: pa.Table, row: int, column: str, value: object) -> pa.Table:
    values = table[column].to_pylist()
    values[row] = value
    i = table.schema.get_field_index(column)
    return table.set_column(i, table.schema.field(i), pa.array(values, table.schema.field(i).type))


def _summary(result: validation.ValidationResult) -> tuple:
    return (result.tables, result.notices, result.contents)


def _seen(sim, tmp_path: Path) -> dict[str, pa.Table]:
    """The export's tables, after a file of them all was validated."""
    tables = dict(sim.tables)
    with _open(_write(tables, tmp_path / "a.duckdb")):
        pass
    return tables


def _day_before_seen(sim, tmp_path: Path) -> tuple[dict[str, pa.Table], np.datetime64]:
    """The export's tables and last day, after the file of the day before was validated."""
    tables = dict(sim.tables)
    last = _last_day(tables)
    with _open(_write(_before(tables, last), tmp_path / "day-13.duckdb")):
        pass
    return tables, last


def _problems(path: Path, **kwargs: object) -> list[tuple]:
    with pytest.raises(ExportValidationError) as info:
        open_export(path, **kwargs)
    return sorted((p.table, p.column, p.rule, p.rows) for p in info.value.problems)


@pytest.mark.parametrize("narrow", [None, 1.0])
def test_a_new_file_with_one_more_day_tests_only_that_days_keys(
        small_sim, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch,
        narrow: float | None) -> None:
    """``narrow``: every export counts as one whose ids grow with time (the new day's keys
    sorted, the others' probed within their range); else (the small export has too few
    segments for a range to pay) every key's hash is sorted once, the seen days' among them."""
    tables = dict(small_sim.tables)
    last = _last_day(tables)
    yesterday = _before(tables, last)
    with _open(_write(yesterday, tmp_path / "day-13.duckdb")) as first:
        assert set(first.validation.days_seen.values()) == {0}
    if narrow is not None:
        monkeypatch.setattr(validation, "NARROW_SEGMENTS", narrow)
    tested: list[str] = []
    real = validation.hashes_repeat
    monkeypatch.setattr(validation, "hashes_repeat", lambda con, query, rows: (
        tested.append(query.split(" FROM ", 1)[1]), real(con, query, rows))[1])
    path = _write(tables, tmp_path / "day-14.duckdb")
    with _open(path) as today:
        result = today.validation
    for name in ("telemetry", "api_logs", "exposures", "support_tickets", "db_metrics"):
        days = np.unique(_day(yesterday[name], name)).size
        assert result.days_seen[name] == days, name
    assert result.days_seen["ranking_candidates"] == 0  # no time column: its content changed
    for name in ("telemetry", "api_logs"):
        [query] = [q for q in tested if q.startswith(f'src."{name}"')]
        if narrow is None:  # every row's, once
            assert query == f'src."{name}"'
        else:  # only the new day's keys among themselves
            assert str(last) in query and "NOT" not in query
    # the candidates of the new day's requests: their rules and keys only
    new_requests = set(tables["api_logs"]["request_id"].to_pylist()) - set(
        yesterday["api_logs"]["request_id"].to_pylist())
    candidates = tables["ranking_candidates"]
    fresh = int(pc.sum(pc.is_in(candidates["request_id"], pa.array(sorted(new_requests)))).as_py())
    assert 0 < fresh < candidates.num_rows
    assert result.rows_seen == {"ranking_candidates": (fresh, candidates.num_rows - fresh)}
    [query] = [q for q in tested if q.startswith('src."ranking_candidates"')]
    assert 'src."api_logs"' in query and str(last) in query
    with _open(path, use_cache=False) as full:
        assert set(full.validation.days_seen.values()) == {0}
        assert _summary(full.validation) == _summary(result)


def test_validate_says_how_many_days_it_took_as_seen(small_sim, tmp_path: Path, cache: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    from whispers_lab.cli import main

    tables = dict(small_sim.tables)
    last = _last_day(tables)
    assert main(["validate", str(_write(_before(tables, last), tmp_path / "day-13.duckdb"))]) == 0
    assert "table-day" not in capsys.readouterr().out
    path = _write(tables, tmp_path / "day-14.duckdb")
    yesterday = _before(tables, last)
    seen = sum(np.unique(_day(yesterday[t], t)).size for t in tables if CONTRACT[t].time_column)
    days = sum(np.unique(_day(tables[t], t)).size if CONTRACT[t].time_column else 1
               for t in tables)
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert (f"every row read and hashed; rules and unique keys checked on the {days - seen:,} "
            f"table-day(s) that no earlier clean file held, not again on the {seen:,} found "
            f"unchanged") in out
    kept = yesterday["ranking_candidates"].num_rows
    checked = tables["ranking_candidates"].num_rows - kept
    assert (f"ranking_candidates: unique keys (and, in a DuckDB file, rules) checked on the "
            f"{checked:,} row(s) of the new days' requests, not again on the {kept:,}") in out
    assert main(["validate", "--full", str(path)]) == 0
    assert "table-day" not in capsys.readouterr().out


def test_the_same_rows_in_another_order_test_no_key_again(
        small_sim, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tables = dict(small_sim.tables)
    with _open(_write(tables, tmp_path / "a.duckdb")) as first:
        reference = first.validation
    rng = np.random.default_rng(3)
    shuffled = {name: t.take(pa.array(rng.permutation(t.num_rows))) for name, t in tables.items()}
    tested: list[str] = []
    monkeypatch.setattr(validation, "hashes_repeat", lambda *a, **k: tested.append("x") or False)
    with _open(_write(shuffled, tmp_path / "b.duckdb")) as again:
        result = again.validation
    assert tested == []
    assert result.days_seen == {name: len(reference.contents[name]) for name in result.days_seen}
    assert _summary(result) == _summary(reference)


@pytest.mark.parametrize("narrow", [None, 1.0])
def test_a_new_days_key_repeating_a_seen_days_key_is_caught(
        small_sim, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch,
        narrow: float | None) -> None:
    """Also with the probe bounded by the new day's key range (``narrow``: every export
    counts as one whose ids grow with time; the small one has too few segments to be)."""
    ranges: list[tuple[str, object]] = []
    real = validation._key_range
    monkeypatch.setattr(validation, "_key_range", lambda con, table, *a: ranges.append(
        (table, real(con, table, *a))) or ranges[-1][1])
    if narrow is not None:
        monkeypatch.setattr(validation, "NARROW_SEGMENTS", narrow)
    tables, last = _day_before_seen(small_sim, tmp_path)
    telemetry = tables["telemetry"]
    days = _day(telemetry, "telemetry")
    early, late = int(np.flatnonzero(days < last)[5]), int(np.flatnonzero(days == last)[0])
    tables["telemetry"] = _replace(telemetry, late, "event_id", telemetry["event_id"][early].as_py())
    path = _write(tables, tmp_path / "day-14.duckdb")
    assert _problems(path) == [("telemetry", "event_id", "unique", 2)]
    [bound] = [b for table, b in ranges if table == "telemetry"]
    assert (bound is not None) == (narrow is not None)
    assert _problems(path, use_cache=False) == [("telemetry", "event_id", "unique", 2)]


@pytest.mark.parametrize("ordered", [True, False])
def test_the_probe_is_bounded_only_for_ids_that_grow_with_time(tmp_path: Path,
                                                               ordered: bool) -> None:
    """``_key_range`` reads the stored segments' statistics: 1.2M rows over 12 days whose
    ids grow with time put the last day's in a few segments; shuffled ids do not."""
    path = tmp_path / "ids.duckdb"
    order = "i" if ordered else "hash(i)"
    with duckdb.connect(str(path)) as con:
        con.execute(f"CREATE TABLE t AS SELECT printf('e%012d', i) AS id, TIMESTAMP '2026-12-01' "
                    f"+ to_seconds(CAST(i * 0.864 AS BIGINT)) AS at FROM range(1200000) r(i) "
                    f"ORDER BY {order}")
    with duckdb.connect() as con:
        con.execute(f"ATTACH '{path}' AS src (READ_ONLY)")
        new = validation.in_days("at", [dt.date(2026, 12, 12)])
        bound = validation._key_range(con, "t", "id", new)
        assert (bound == ("e000001100000", "e000001199999")) if ordered else bound is None


def test_a_key_repeated_within_the_new_day_is_caught(small_sim, tmp_path: Path,
                                                    cache: Path) -> None:
    tables, last = _day_before_seen(small_sim, tmp_path)
    api = tables["api_logs"]
    new = np.flatnonzero(_day(api, "api_logs") == last)
    tables["api_logs"] = _replace(api, int(new[3]), "request_id", api["request_id"][int(new[1])].as_py())
    assert _problems(_write(tables, tmp_path / "day-14.duckdb")) == [
        ("api_logs", "request_id", "unique", 2)]


def test_a_seen_day_rewritten_with_a_repeated_key_is_tested_again(small_sim, tmp_path: Path,
                                                                 cache: Path) -> None:
    """A day the earlier file held, rewritten: its digest differs, so its keys are tested
    again, against the other days too."""
    tables = _seen(small_sim, tmp_path)
    telemetry = tables["telemetry"]
    days = _day(telemetry, "telemetry")
    first, third = (int(np.flatnonzero(days == days.min() + d)[0]) for d in (0, 2))
    tables["telemetry"] = _replace(telemetry, third, "event_id", telemetry["event_id"][first].as_py())
    path = _write(tables, tmp_path / "b.duckdb")
    with pytest.raises(ExportValidationError) as info:
        open_export(path)
    assert [(p.table, p.rule, p.rows) for p in info.value.problems] == [("telemetry", "unique", 2)]


def test_a_row_without_a_time_repeating_a_seen_key_is_caught(small_sim, tmp_path: Path,
                                                            cache: Path) -> None:
    """Rows without a time make a day of their own (and break the time column's rule)."""
    tables = _seen(small_sim, tmp_path)
    telemetry = tables["telemetry"]
    extra = telemetry.slice(10, 1)
    extra = _replace(extra, 0, "created_at", None)
    tables["telemetry"] = pa.concat_tables([telemetry, extra])
    assert _problems(_write(tables, tmp_path / "b.duckdb")) == [
        ("telemetry", "created_at", "not_null", 1), ("telemetry", "event_id", "unique", 2)]


def test_days_of_two_files_found_clean_apart_are_tested_together(small_sim, tmp_path: Path,
                                                                 cache: Path) -> None:
    """Two files, each clean, whose union repeats a key across them: the days of the one are
    reused, the other's are tested against them (never both sets reused at once)."""
    tables = dict(small_sim.tables)
    telemetry = tables["telemetry"]
    days = _day(telemetry, "telemetry")
    cut = days.min() + 8
    early, late = telemetry.filter(pa.array(days < cut)), telemetry.filter(pa.array(days >= cut))
    late = _replace(late, 7, "event_id", early["event_id"][3].as_py())
    for name, part in (("early", early), ("late", late)):
        with _open(_write({**tables, "telemetry": part}, tmp_path / f"{name}.duckdb")) as opened:
            assert opened.validation.valid
    tables["telemetry"] = pa.concat_tables([early, late])
    assert _problems(_write(tables, tmp_path / "both.duckdb")) == [
        ("telemetry", "event_id", "unique", 2)]


def test_a_rule_broken_on_the_new_day_is_counted_as_a_full_check_counts_it(
        small_sim, tmp_path: Path, cache: Path) -> None:
    tables, last = _day_before_seen(small_sim, tmp_path)
    api = tables["api_logs"]
    new = np.flatnonzero(_day(api, "api_logs") == last)
    for row in new[[2, 5, 9]]:
        api = _replace(api, int(row), "duration_ms", -1.0)
    tables["api_logs"] = api
    path = _write(tables, tmp_path / "day-14.duckdb")
    expected = [("api_logs", "duration_ms", "domain", 3)]
    assert _problems(path) == expected == _problems(path, use_cache=False)


def test_a_seen_day_rewritten_to_break_a_rule_is_checked_again(small_sim, tmp_path: Path,
                                                               cache: Path) -> None:
    tables = _seen(small_sim, tmp_path)
    telemetry = tables["telemetry"]
    shown = np.flatnonzero(pc.is_valid(telemetry["position"]).to_numpy(zero_copy_only=False))
    tables["telemetry"] = _replace(telemetry, int(shown[0]), "position", None)
    assert _problems(_write(tables, tmp_path / "b.duckdb")) == [
        ("telemetry", "event_type,position", "position_on_shown_used", 1)]


def test_the_rules_are_checked_only_on_the_days_not_seen(
        small_sim, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rule made stricter under the same checks' version (which a real change of the rules
    never is: it changes ``checks_digest``) shows which rows the rules' scan reads: the new
    day's, not the seen days', which the full check reads too."""
    tables, last = _day_before_seen(small_sim, tmp_path)
    telemetry = tables["telemetry"]
    days = _day(telemetry, "telemetry")
    ids = telemetry["event_id"]
    old, new = (ids[int(np.flatnonzero(days == d)[0])].as_py() for d in (last - 2, last))
    real = validation._column_checks

    def stricter(column: object) -> list[tuple[str, str, str]]:
        checks = real(column)
        if column.name == "event_id":
            checks.append(("domain", f"event_id IN ('{old}', '{new}')", "not those two"))
        return checks

    monkeypatch.setattr(validation, "_column_checks", stricter)
    path = _write(tables, tmp_path / "day-14.duckdb")
    assert _problems(path) == [("telemetry", "event_id", "domain", 1)]
    assert _problems(path, use_cache=False) == [("telemetry", "event_id", "domain", 2)]


def test_a_day_read_under_another_type_is_not_seen(small_sim, tmp_path: Path,
                                                   cache: Path) -> None:
    """The same values stored as BIGINT instead of INTEGER may hash alike; the day's digest
    holds the stored types, so none of the table's days counts as seen."""
    tables = dict(small_sim.tables)
    with _open(_write(tables, tmp_path / "a.duckdb")) as first:
        n = len(first.validation.contents["telemetry"])
        assert first.validation.days_seen["telemetry"] == 0
    telemetry = tables["telemetry"]
    i = telemetry.schema.get_field_index("position")
    tables["telemetry"] = telemetry.set_column(i, pa.field("position", pa.int64()),
                                               telemetry["position"].cast(pa.int64()))
    with _open(_write(tables, tmp_path / "b.duckdb")) as second:
        assert second.validation.days_seen["telemetry"] == 0
        assert len(second.validation.contents["telemetry"]) == n
        assert second.validation.days_seen["api_logs"] > 0


def _new_day_candidates(tables: dict[str, pa.Table], last: np.datetime64) -> np.ndarray:
    """The rows of ``ranking_candidates`` whose request is of the day ``last``."""
    api = tables["api_logs"]
    fresh = api["request_id"].filter(pa.array(_day(api, "api_logs") == last))
    return np.flatnonzero(pc.is_in(tables["ranking_candidates"]["request_id"], fresh)
                          .to_numpy(zero_copy_only=False))


def test_the_new_days_candidates_are_checked_as_a_full_check_checks_them(
        small_sim, tmp_path: Path, cache: Path) -> None:
    """A candidate of a new request breaking a rule, and another repeating a new candidate's
    key: the same problems as a full check finds, with only the new requests' rows read."""
    tables, last = _day_before_seen(small_sim, tmp_path)
    candidates = tables["ranking_candidates"]
    rows = _new_day_candidates(tables, last)
    candidates = _replace(candidates, int(rows[4]), "context_similarity", 1.5)
    tables["ranking_candidates"] = pa.concat_tables([candidates, candidates.slice(int(rows[7]), 1)])
    path = _write(tables, tmp_path / "day-14.duckdb")
    expected = [("ranking_candidates", "context_similarity", "domain", 1),
                ("ranking_candidates", "request_id, memory_id", "unique", 2)]
    assert _problems(path) == expected == _problems(path, use_cache=False)


@pytest.mark.parametrize("change", ["broken", "added"])
def test_candidates_of_seen_requests_changed_are_all_checked_again(
        small_sim, tmp_path: Path, cache: Path, change: str) -> None:
    """A candidate of an earlier request rewritten to break a rule, or one more candidate of
    an earlier request repeating a key: the rest no longer matches the clean file's
    candidates, so every candidate is checked."""
    tables, last = _day_before_seen(small_sim, tmp_path)
    candidates = tables["ranking_candidates"]
    old = int(np.setdiff1d(np.arange(candidates.num_rows), _new_day_candidates(tables, last))[3])
    if change == "broken":
        tables["ranking_candidates"] = _replace(candidates, old, "use_count", -2)
        expected = [("ranking_candidates", "use_count", "domain", 1)]
    else:
        tables["ranking_candidates"] = pa.concat_tables([candidates, candidates.slice(old, 1)])
        expected = [("ranking_candidates", "request_id, memory_id", "unique", 2)]
    path = _write(tables, tmp_path / "day-14.duckdb")
    assert _problems(path) == expected == _problems(path, use_cache=False)
    tables["ranking_candidates"] = candidates  # repaired
    with _open(_write(tables, tmp_path / "day-14b.duckdb")) as repaired:
        assert repaired.validation.valid


def test_the_seen_days_come_from_one_recorded_set() -> None:
    digests = {"d1": "a", "d2": "b", "d3": "c", "d4": "x"}
    assert sorted(validation._seen_days([["a", "b"], ["c"], ["a", "b", "c", "z"]], digests)) == [
        "d1", "d2", "d3"]
    assert sorted(validation._seen_days([["a"], ["b", "c"]], digests)) == ["d2", "d3"]
    assert validation._seen_days([], digests) == []


def test_the_record_keeps_the_newest_sets_and_full_runs_read_none(
        small_sim, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validation, "KEPT_CONTENTS", 2)
    tables = dict(small_sim.tables)
    last = _last_day(tables)
    paths = [_write(_before(tables, last - k), tmp_path / f"{k}.duckdb") for k in (2, 1, 0)]
    for path in paths:
        with _open(path):
            pass
    sets = validation._load_contents(validation.contents_path())["telemetry"]
    assert len(sets) == 2
    with _open(paths[-1]) as newest:
        assert sorted(sets[0]) == sorted(newest.validation.contents["telemetry"].values())
    with _open(_write(tables, tmp_path / "full.duckdb"), use_cache=False) as full:
        assert set(full.validation.days_seen.values()) == {0}
    monkeypatch.setenv(validation.CACHE_ENV, "")  # caching off: nothing read, nothing kept
    assert validation.contents_path() is None
    with _open(_write(tables, tmp_path / "off.duckdb")) as off:
        assert set(off.validation.days_seen.values()) == {0}


# -- repeated events -------------------------------------------------------------------------


def _with_repeat(telemetry: pa.Table, of: int, seconds: float, event_id: str) -> pa.Table:
    """``telemetry`` plus a repeat of row ``of`` (same key) ``seconds`` later."""
    row = telemetry.slice(of, 1)
    row = _replace(row, 0, "event_id", event_id)
    row = _replace(row, 0, "created_at",
                   row["created_at"][0].as_py() + dt.timedelta(seconds=seconds))
    return pa.concat_tables([telemetry, row])


def _repeats(path: Path, **kwargs: object) -> set[tuple]:
    with open_export(path, **kwargs) as export:
        return set(export.con.execute("SELECT event_id, ts FROM telemetry_duplicates").fetchall())


def test_repeated_events_are_searched_again_only_over_the_changed_days(
        small_sim, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The day before's last event is repeated across midnight, on the new day; a repeat in an
    early day goes away when that day is rewritten. Each time the search by day finds what a full search finds."""
    tables = dict(small_sim.tables)
    last = _last_day(tables)
    telemetry = tables["telemetry"]
    days = _day(telemetry, "telemetry")
    shown = np.flatnonzero(pc.is_valid(telemetry["request_id"]).to_numpy(zero_copy_only=False))
    eve = shown[days[shown] == last - 1]
    eve = int(eve[np.argmax(telemetry["created_at"].take(pa.array(eve)).cast(pa.int64())
                            .to_numpy())])
    early = int(shown[days[shown] == days[shown].min() + 2][0])
    telemetry = _with_repeat(telemetry, early, 0.3, "zz-early")
    # across midnight: the day before's last event again at 23:59:59.7 (yesterday's file has
    # it), and once more 0.5 s later, on the new day (only today's file has that)
    to_eve = (np.datetime64(str(last)) - np.timedelta64(300, "ms") - np.datetime64(
        telemetry["created_at"][eve].as_py().replace(tzinfo=None), "us")) / np.timedelta64(1, "s")
    telemetry = _with_repeat(telemetry, eve, float(to_eve), "aa-eve")
    telemetry = _with_repeat(telemetry, telemetry.num_rows - 1, 0.5, "zz-midnight")
    yesterday = _before({**tables, "telemetry": telemetry}, last)
    assert "zz-midnight" not in yesterday["telemetry"]["event_id"].to_pylist()
    searched: list[str] = []
    real = ex.duplicate_events_select
    monkeypatch.setattr(ex, "duplicate_events_select", lambda *a, **k: (
        searched.append(str(k.get("where", ""))), real(*a, **k))[1])
    old = _repeats(_write(yesterday, tmp_path / "day-13.duckdb"))
    assert "zz-early" in {e for e, _ in old}
    assert searched == [""]
    path = _write({**tables, "telemetry": telemetry}, tmp_path / "day-14.duckdb")
    searched.clear()
    new = _repeats(path)
    assert len(searched) == 1 and searched[0]  # a span, not everything
    found = {e for e, _ in new}
    assert {"zz-early", "zz-midnight"} <= found
    assert new == _repeats(path, use_cache=False)
    # the early day re-delivered without its repeat: a day changed in the middle
    keep = pc.not_equal(telemetry["event_id"], "zz-early")
    path = _write({**tables, "telemetry": telemetry.filter(keep)}, tmp_path / "day-14b.duckdb")
    searched.clear()
    again = _repeats(path)
    assert searched and searched[0]
    assert "zz-early" not in {e for e, _ in again} and "zz-midnight" in {e for e, _ in again}
    assert again == _repeats(path, use_cache=False)


def test_the_rollout_state_after_its_last_day_searches_only_the_new_day(
        small_sim, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the plan's last day a report first reads the rollout's state from the flag log:
    that opening validates, so a new file's repeated events are searched over its new day
    only, and the report's own opening reads everything back."""
    from whispers_lab.state import rollout_last_day

    tables, _ = _day_before_seen(small_sim, tmp_path)
    searched: list[str] = []
    real = ex.duplicate_events_select
    monkeypatch.setattr(ex, "duplicate_events_select", lambda *a, **k: (
        searched.append(str(k.get("where", ""))), real(*a, **k))[1])
    path = _write(tables, tmp_path / "day-14.duckdb")
    plan = small_sim.plan
    assert rollout_last_day(path, plan, plan.last_day + 1) >= plan.last_day
    assert len(searched) == 1 and searched[0]  # a span, not everything
    with _open(path) as export:
        assert export.validation.units_reused == len(export.present)
    assert len(searched) == 1
    broken = _replace(tables["api_logs"], 0, "status", 42)  # invalid: still read for its flags
    bad = _write({**tables, "api_logs": broken}, tmp_path / "bad.duckdb")
    assert rollout_last_day(bad, plan, plan.last_day + 1) >= plan.last_day


def test_the_same_telemetry_in_a_new_file_reads_its_repeats_back(
        small_sim, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tables = dict(small_sim.tables)
    telemetry = tables["telemetry"]
    shown = np.flatnonzero(pc.is_valid(telemetry["request_id"]).to_numpy(zero_copy_only=False))
    tables["telemetry"] = _with_repeat(telemetry, int(shown[40]), 0.5, "zz-repeat")
    first = _repeats(_write(tables, tmp_path / "a.duckdb"))
    assert "zz-repeat" in {e for e, _ in first}
    searched: list[str] = []
    monkeypatch.setattr(ex, "duplicate_events_select",
                        lambda *a, **k: searched.append("x") or "SELECT 1 WHERE false")
    with _open(_write(tables, tmp_path / "b.duckdb")) as export:
        got = set(export.con.execute("SELECT event_id, ts FROM telemetry_duplicates").fetchall())
        assert [n.rule for n in export.validation.notices][:1] == ["duplicate_events"]
    assert searched == [] and got == first


def test_a_day_digest_changes_with_any_value_and_only_that_day(small_sim, tmp_path: Path,
                                                              cache: Path) -> None:
    """Two rows of one day trading their user ids keep every column's values: the day's digest
    changes all the same (it hashes whole rows), and no other day's does."""
    tables = dict(small_sim.tables)
    with _open(_write(tables, tmp_path / "a.duckdb")) as first:
        before = first.validation.contents["telemetry"]
    telemetry = tables["telemetry"]
    days = _day(telemetry, "telemetry")
    rows = np.flatnonzero(days == days.min() + 4)
    users = telemetry["user_id"].to_pylist()
    a, b = next((int(rows[0]), int(r)) for r in rows if users[r] != users[rows[0]])
    swapped = _replace(_replace(telemetry, a, "user_id", users[b]), b, "user_id", users[a])
    with _open(_write({**tables, "telemetry": swapped}, tmp_path / "b.duckdb")) as second:
        after = second.validation.contents["telemetry"]
        assert second.validation.days_seen["telemetry"] == len(before) - 1
    changed = {d for d in before if before[d] != after.get(d)}
    assert changed == {str(days.min() + 4)}


def test_searches_past_the_kept_ones_are_deleted(small_sim, tmp_path: Path, cache: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ex, "KEPT_SEARCHES", 2)
    tables = dict(small_sim.tables)
    last = _last_day(tables)
    for k in (3, 2, 1, 0):
        with _open(_write(_before(tables, last - k), tmp_path / f"{k}.duckdb")):
            pass
    files = sorted(p.name for p in (cache / "duplicates").glob("content-*.parquet"))
    listed = [e["file"] for e in ex._load_content_index(cache / "duplicates" / "contents.json")]
    assert len(listed) == 2 and sorted(listed) == files


def test_the_cache_folder_forgets_what_was_not_written_for_a_month(
        small_export: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file of validation/, duplicates/ or privacy/ not written for WHISPERS_LAB_CACHE_DAYS
    days (default 30) goes at the next opening, once a day at most; spark/ stays."""
    day = 86400.0
    now = dt.datetime.now(dt.UTC).timestamp()
    old = [cache / part / "old.json" for part in validation.PRUNED_PARTS] + [
        cache / "privacy" / "files" / "old.json"]
    young = cache / "duplicates" / "young.parquet"
    spark = cache / "spark" / "k" / "v" / "part.parquet"
    for f in [*old, young, spark]:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("x")
        age = 31 * day if f in old or f == spark else 29 * day
        os.utime(f, (now - age, now - age))
    monkeypatch.setenv(validation.CACHE_DAYS_ENV, "0")  # kept for ever
    assert validation.prune_cache(now) == 0
    monkeypatch.delenv(validation.CACHE_DAYS_ENV)
    with open_export(small_export):  # an opening prunes
        pass
    assert not any(f.exists() for f in old) and young.exists() and spark.exists()
    assert validation.manifest_path(small_export).is_file()  # (what it wrote stays)
    os.utime(young, (now - 31 * day, now - 31 * day))
    assert validation.prune_cache(now + day / 2) == 0  # pruned less than a day ago
    assert validation.prune_cache(now + day + 60) == 1 and not young.exists()
