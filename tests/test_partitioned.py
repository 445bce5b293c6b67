"""Exports partitioned by date (Hive layout) read like single-file exports, with the same results."""

from __future__ import annotations

import re

import pytest

from whispers_lab import export as export_module
from whispers_lab.errors import ExportError
from whispers_lab.evaluate import evaluate_day
from whispers_lab.export import open_export, write_partitioned_export
from whispers_lab.simulate import simulate

from factories import assert_same_evaluation, record_queries


@pytest.fixture(scope="module")
def sim():
    return simulate(users=1500, seed=11, through_day=9)


def test_partitioned_export_matches_single_files(sim, tmp_path):
    plan = sim.plan
    folder = write_partitioned_export(sim.tables, tmp_path / "parts")
    telemetry_parts = list((folder / "telemetry").glob("date=*"))
    assert len(telemetry_parts) >= 20  # 14 pre-period days + rollout days 0..9
    flat, _ = sim.write(tmp_path / "flat.duckdb")
    with open_export(folder) as parted, open_export(flat) as single:
        for table in ("users", "telemetry", "api_logs", "ranking_candidates", "exposures"):
            assert parted.row_count(table) == single.row_count(table), table
        # the partition column is an extra column: the canonical view keeps contract columns only
        assert "date" not in parted.sql("SELECT * FROM telemetry LIMIT 0").columns
        a = evaluate_day(parted, 9, plan)
        b = evaluate_day(single, 9, plan)
    # the same values; a parallel sum over files may add in another order (last-bit changes)
    assert_same_evaluation(a, b)


def test_a_days_query_reads_only_that_days_data(sim, tmp_path):
    """The report's queries filter on time; with one file per date, Parquet min/max statistics let
    DuckDB skip the other days' row groups, so a day's cost does not grow with the export."""
    folder = write_partitioned_export(sim.tables, tmp_path / "parts")
    lo, hi = sim.plan.day_start(9), sim.plan.day_start(10)
    with open_export(folder) as export:
        rows = export.con.execute(
            "EXPLAIN ANALYZE SELECT count(*) FROM telemetry WHERE created_at >= ? AND created_at < ?",
            [lo, hi]).fetchall()
    text = "\n".join(str(r[1]) for r in rows)
    found = re.search(r"Row Groups Scanned:\s*(\d+)\s*/\s*(\d+)", text)
    assert found, text
    scanned, total = int(found.group(1)), int(found.group(2))
    assert total >= 20 and scanned <= 2


def _src_kinds(con) -> dict[str, str]:
    return dict(con.execute("SELECT table_name, table_type FROM information_schema.tables "
                                   "WHERE table_schema = 'src'").fetchall())


def test_a_table_in_many_small_files_is_read_once_into_memory(sim, tmp_path, monkeypatch):
    """The users partitioned by signup date are hundreds of files, each opened again by every
    query naming them; such a table is read into memory when the export is opened, and reads
    the same. A table above the size limit, or in fewer files, stays a view of its files."""
    folder = write_partitioned_export(sim.tables, tmp_path / "parts")
    files = {t: len(list((folder / t).rglob("*.parquet"))) for t in ("users", "telemetry")}
    assert files["users"] > files["telemetry"] >= 20
    monkeypatch.setattr(export_module, "MANY_FILES", files["users"])
    flat, _ = sim.write(tmp_path / "flat.duckdb")
    query = ("SELECT count(*), count(DISTINCT user_id), sum(micro_memory_count), "
             "min(signup_at), max(signup_at), sum(CAST(is_internal AS INTEGER)) FROM users")
    with open_export(folder) as parted, open_export(flat) as single:
        kinds = _src_kinds(parted.con)
        assert kinds["users"] == "BASE TABLE"
        assert kinds["telemetry"] == kinds["api_logs"] == "VIEW"
        assert parted.con.execute(query).fetchall() == single.con.execute(query).fetchall()
        assert "date" not in parted.sql("SELECT * FROM users LIMIT 0").columns
        assert evaluate_day(parted, 9, sim.plan).decision.decision == \
            evaluate_day(single, 9, sim.plan).decision.decision
    monkeypatch.setattr(export_module, "SMALL_TABLE_BYTES", 1)
    with open_export(folder) as parted:
        assert _src_kinds(parted.con)["users"] == "VIEW"


def test_openings_for_a_few_queries_read_no_table_into_memory(sim, tmp_path, monkeypatch):
    """The copy pays off over an evaluation's many queries only: the validate command (whose
    checks read the files themselves), the rollout state's reading of the flag log, the
    cohort command's and the coverage check's openings leave every table a view."""
    import argparse

    from whispers_lab.commands import cohort as cohort_command
    from whispers_lab.commands import validate as validate_command
    from whispers_lab.report import coverage_check
    from whispers_lab.state import rollout_last_day

    folder = write_partitioned_export(sim.tables, tmp_path / "parts")
    monkeypatch.setattr(export_module, "MANY_FILES", 2)
    seen: list[dict[str, str]] = []
    real_attach = export_module.attach

    def recorded(*args, **kwargs):
        con, kind, found = real_attach(*args, **kwargs)
        seen.append(_src_kinds(con))
        return con, kind, found

    monkeypatch.setattr(export_module, "attach", recorded)
    with open_export(folder):  # (an evaluation's opening: the users copied)
        assert seen.pop()["users"] == "BASE TABLE"
    assert rollout_last_day(folder, sim.plan, sim.plan.last_day + 1) >= sim.plan.last_day
    assert seen.pop()["users"] == "VIEW"
    assert validate_command.run(argparse.Namespace(path=str(folder), full=False,
                                                   engine="duckdb", spark_master=None)) == 0
    assert seen.pop()["users"] == "VIEW"
    coverage_check.check_export_covers(folder, sim.plan, 1)
    assert seen.pop()["users"] == "VIEW"
    cohort_command._state(argparse.Namespace(export=folder, day=9, reports=None), sim.plan)
    assert seen.pop()["users"] == "VIEW" and not seen


def test_an_unreadable_file_of_a_table_read_into_memory_is_still_named(sim, tmp_path,
                                                                        monkeypatch):
    folder = write_partitioned_export(sim.tables, tmp_path / "parts")
    monkeypatch.setattr(export_module, "MANY_FILES", 2)
    broken = sorted((folder / "users").rglob("*.parquet"))[3]
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(ExportError, match="table 'users' cannot be read as Parquet"):
        open_export(folder)


def test_an_opening_lists_each_tables_files_once(sim, tmp_path, monkeypatch):
    """Validation lists and checksums every Parquet file of each table; the search of repeated
    events and the id profile take that listing instead of making their own."""
    from whispers_lab import validation
    from whispers_lab.report import privacy

    monkeypatch.setenv(validation.CACHE_ENV, str(tmp_path / "cache"))
    folder = write_partitioned_export(sim.tables, tmp_path / "parts")
    listed: list[str] = []
    real = validation.list_units

    def counted(path, kind, table, *files):
        listed.append(table)
        return real(path, kind, table, *files)

    monkeypatch.setattr(validation, "list_units", counted)
    monkeypatch.setattr(export_module, "list_units", counted)
    with open_export(folder) as export:
        privacy.id_profile(export)
    assert sorted(listed) == sorted(set(listed))
    assert {"telemetry", "users"} <= set(listed)


@pytest.fixture(scope="module")
def day_before_and_whole(sim, tmp_path_factory):
    """The partitioned export as it stood before its last day (its candidates those of the
    earlier requests), the whole export, the day before's tables and the last day."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from whispers_lab.contract import CONTRACT

    day = {n: t[CONTRACT[n].time_column].cast(pa.timestamp("us")).to_numpy(
        zero_copy_only=False).astype("datetime64[D]") for n, t in sim.tables.items()
        if CONTRACT[n].time_column}
    last = day["api_logs"].max()
    before = {n: t.filter(pa.array(day[n] < last)) if n in day else t
              for n, t in sim.tables.items()}
    before["ranking_candidates"] = sim.tables["ranking_candidates"].filter(pc.is_in(
        sim.tables["ranking_candidates"]["request_id"], before["api_logs"]["request_id"]))
    root = tmp_path_factory.mktemp("new-day")
    return (write_partitioned_export(before, root / "before"),
            write_partitioned_export(dict(sim.tables), root / "whole"), before, last)


def _new_day_arrives(made, tmp_path, candidates=None):
    """A copy (hard links) of the day before's export, validated, then the last day's
    partitions added and ``ranking_candidates.parquet`` rewritten (``candidates``: its new
    table; None: the whole export's, the day before's plus the new requests')."""
    import os
    import shutil

    import pyarrow.parquet as pq

    source, whole, before, last = made
    folder = tmp_path / "parts"
    shutil.copytree(source, folder, copy_function=os.link)
    with open_export(folder):
        pass
    for part in sorted(whole.glob(f"*/date={last}")):
        shutil.copytree(part, folder / part.relative_to(whole), copy_function=os.link)
    target = folder / "ranking_candidates.parquet"
    target.unlink()
    if candidates is None:
        shutil.copy2(whole / "ranking_candidates.parquet", target)
    else:
        pq.write_table(candidates, target)
    return folder, before


def test_a_rewritten_candidates_file_tests_the_keys_of_the_new_requests_only(
        sim, day_before_and_whole, tmp_path, monkeypatch):
    """``ranking_candidates`` (one file, no date) rewritten with the new day's requests'
    candidates added: its content beside them is the last clean file's, so only their keys are
    tested; the same rows again test none; a repeated key among the new ones, or an old
    candidate changed, are found as a full check finds them."""
    import pyarrow as pa

    from whispers_lab import validation
    from whispers_lab.errors import ExportValidationError

    monkeypatch.setenv(validation.CACHE_ENV, str(tmp_path / "cache"))
    folder, before = _new_day_arrives(day_before_and_whole, tmp_path)
    candidates = sim.tables["ranking_candidates"]
    old = before["ranking_candidates"].num_rows
    with open_export(folder) as export:
        assert export.validation.rows_seen == {
            "ranking_candidates": (candidates.num_rows - old, old)}
    with open_export(folder, use_cache=False) as full:
        assert full.validation.rows_seen == {}
    (folder / "ranking_candidates.parquet").touch()  # a new checksum, the same rows
    with open_export(folder) as again:
        assert again.validation.rows_seen == {"ranking_candidates": (0, candidates.num_rows)}

    def problems(rows: pa.Table, name: str) -> list[tuple]:
        monkeypatch.setenv(validation.CACHE_ENV, str(tmp_path / name / "cache"))
        folder, _ = _new_day_arrives(day_before_and_whole, tmp_path / name, rows)
        found = []
        for use_cache in (True, False):
            with pytest.raises(ExportValidationError) as info:
                open_export(folder, use_cache=use_cache)
            found.append(sorted((p.table, p.rule, p.rows) for p in info.value.problems))
        assert found[0] == found[1]
        return found[0]

    new = candidates.slice(candidates.num_rows - 1, 1)  # the new day's requests come last
    assert new["request_id"][0].as_py() not in set(before["api_logs"]["request_id"].to_pylist())
    assert problems(pa.concat_tables([candidates, new]), "repeat") == [
        ("ranking_candidates", "unique", 2)]
    first = before["ranking_candidates"].slice(0, 1)
    assert problems(pa.concat_tables([candidates, first]), "old") == [
        ("ranking_candidates", "unique", 2)]


def _users_reads(monkeypatch) -> list[str]:
    """The SQL that creates ``src.users`` in each connection opened from now on."""
    return record_queries(monkeypatch, lambda query: query.split(" AS ")[0].replace('"', "")
                          == "CREATE TABLE src.users")


def _users(export) -> tuple[list, list]:
    """``src.users`` as the opening made it: its columns and types, its rows sorted."""
    con = export.con
    return (con.execute("DESCRIBE src.users").fetchall(),
            con.execute("SELECT * FROM src.users ORDER BY ALL").fetchall())


def test_a_many_file_table_is_read_from_its_copy_in_the_cache_while_its_files_stay_as_they_are(
        sim, tmp_path, monkeypatch):
    """The first opening reads the users' many files and keeps a one-file copy in the cache
    folder; the next reads the copy. A file added since (a new day's signups) is read beside
    the copy, which is then written again with it; a file rewritten, or a copy that cannot be
    read, reads every file again. Each time ``src.users`` is what reading every file gives
    (caching off)."""
    import shutil

    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from whispers_lab import validation

    cache = tmp_path / "cache"
    monkeypatch.setattr(export_module, "MANY_FILES", 2)
    folder = write_partitioned_export(sim.tables, tmp_path / "parts")
    newest = sorted((folder / "users").glob("date=*"))[-1]  # the latest signups, held back
    shutil.move(newest, tmp_path / "held")
    made = _users_reads(monkeypatch)

    def opened(cached: bool = True) -> tuple[list, list]:
        monkeypatch.setenv(validation.CACHE_ENV, str(cache) if cached else "")
        # (with caching off, no need to validate again: what is compared is the copy)
        with open_export(folder, validate=cached) as export:
            return _users(export)

    def read_all() -> tuple[list, list]:
        found = opened(cached=False)
        assert "**" in made[-1]
        return found

    monkeypatch.setenv(validation.CACHE_ENV, str(cache))
    copy = export_module.table_copy_file(folder, "users")
    assert opened() == read_all() and copy.is_file()
    assert "**" in made[-2]  # the first opening read the files, then kept the copy
    assert opened() == read_all()
    assert str(copy) in made[-2] and "**" not in made[-2]  # the next one read the copy

    shutil.move(tmp_path / "held", newest)  # a new day's signups
    added = next(newest.glob("*.parquet"))
    assert opened() == read_all()
    assert str(copy) in made[-2] and str(added) in made[-2] and "**" not in made[-2]
    assert opened() == read_all()
    assert "**" not in made[-2] and str(added) not in made[-2]  # the copy now holds them

    changed = sorted((folder / "users").rglob("*.parquet"))[5]
    rows = pq.read_table(changed)
    pq.write_table(rows.set_column(rows.schema.get_field_index("micro_memory_count"),
                                   "micro_memory_count",
                                   pc.add(rows["micro_memory_count"], 1000)), changed)
    assert opened() == read_all()
    assert "**" in made[-2]  # a file rewritten: every file read again

    copy.write_bytes(b"not parquet")
    assert opened() == read_all()
    assert "**" in made[-2] and pq.read_table(copy).num_rows == len(read_all()[1])

    swapped = folder / "users" / "date=2099-12-30" / "data_0.parquet"  # columns in another order
    swapped.parent.mkdir()
    pq.write_table(rows.slice(0, 1).select(
        ["user_id", "signup_at", "is_internal", "engagement_score", "micro_memory_count"]
    ).set_column(0, "user_id", pa.array(["u-in-another-order"])), swapped)
    assert opened() == read_all()
    assert "**" in made[-2]
    extra = folder / "users" / "date=2099-12-31" / "data_0.parquet"  # a column more
    extra.parent.mkdir()
    pq.write_table(rows.slice(0, 1).append_column("country", pa.array(["NL"])).set_column(
        0, "user_id", pa.array(["u-with-a-country"])), extra)
    assert opened() == read_all()
    assert "**" in made[-2] and "country" in str(read_all()[0])

    before = copy.stat().st_mtime_ns
    opened(cached=False)
    assert copy.stat().st_mtime_ns == before  # caching off: no copy read or written
