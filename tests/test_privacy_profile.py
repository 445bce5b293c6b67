"""The privacy scan reads an id column only for tokens that could be one of its ids (issue 18),
and still finds every id: of any length, at either end of a column's range, in any column,
and after the export changed under the same path (the cached profile is keyed by its files)."""

from __future__ import annotations

import os
import re

import pytest

from tests.factories import valid_tables
from whispers_lab.export import open_export, write_export
from whispers_lab.report import privacy


def _export(tmp_path, users: list[str], name: str = "e.duckdb"):
    tables = valid_tables()
    frame = tables["users"]
    frame = frame.iloc[[i % len(frame) for i in range(len(users))]].reset_index(drop=True)
    frame["user_id"] = users
    tables["users"] = frame
    return write_export(tables, tmp_path / name)


def test_profile_holds_each_lengths_smallest_and_largest_id(tmp_path):
    path = _export(tmp_path, ["u1", "u7", "user-0042", "USER-9999"])
    with open_export(path) as export:
        users = next(c for c in privacy.id_profile(export)
                     if (c.table, c.column) == ("users", "user_id"))
    assert users.ranges == ((2, "u1", "u7"), (9, "USER-9999", "user-0042"))
    assert users.may_hold("u5") and users.may_hold("user-0042") and users.may_hold("USER-9999")
    assert not users.may_hold("u8")  # above the largest id of its length
    assert not users.may_hold("abc")  # no id has three characters


@pytest.mark.parametrize("leaked", ["u1", "u7", "user-0042", "USER-9999", "d2", "m1", "r1"])
def test_every_kind_of_id_is_still_found(tmp_path, leaked):
    path = _export(tmp_path, ["u1", "u7", "user-0042", "USER-9999"])
    text = f"a report that says GO and, wrongly, ({leaked}) once"
    with open_export(path) as export:
        leaks = privacy.find_ids(export, {"report.html": text})
        assert leaks, leaked
        clean, n = privacy.redact(export, {"why": text})
    assert leaked not in clean["why"].replace("[redacted]", "") and n >= 1


def test_words_outside_every_range_read_no_column(tmp_path, monkeypatch):
    path = _export(tmp_path, ["u1", "u2", "u3"])
    with open_export(path) as export:
        privacy.id_profile(export)
        ran: list[str] = []
        real = export.sql
        monkeypatch.setattr(export, "sql", lambda q, *a: ran.append(q) or real(q, *a))
        assert privacy.find_ids(export, {"x": "GO day 14 Rollout complete zz9"}) == []
    assert ran == []


def test_a_changed_export_under_the_same_path_is_profiled_again(tmp_path):
    path = _export(tmp_path, ["u1", "u2"])
    with open_export(path) as export:
        assert privacy.find_ids(export, {"x": "id u9 here"}) == []
    stat = os.stat(path)
    os.unlink(path)
    _export(tmp_path, ["u1", "u9"])  # u9 above the old largest id
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old mtime
    with open_export(path) as export:
        assert [leak.column for leak in privacy.find_ids(export, {"x": "id u9 here"})] == [
            "user_id"]


def profiled_files(monkeypatch) -> list[str]:
    """The files the privacy scan reads to profile them (its per-column queries), from now
    on."""
    read: list[str] = []
    real = privacy._profile_files
    monkeypatch.setattr(privacy, "_profile_files", lambda export, table, cols, todo: (
        read.extend(f for unit, _ in todo for f in unit.files),
        real(export, table, cols, todo))[1])
    return read


def _raw_profile(folder, columns) -> list[privacy.IdColumn]:
    """Each id column's ranges straight from all of its Parquet files (an independent count)."""
    import duckdb

    con = duckdb.connect()
    out = []
    for table, col in columns:
        v = f'CAST("{col}" AS VARCHAR)'
        files = sorted(folder.glob(f"{table}/**/*.parquet")) or [folder / f"{table}.parquet"]
        listed = ", ".join(f"'{f}'" for f in files)
        rows = con.execute(f"SELECT length({v}), min({v}), max({v}) FROM read_parquet("
                           f"[{listed}], hive_partitioning = true, union_by_name = true) "
                           f"WHERE \"{col}\" IS NOT NULL GROUP BY 1").fetchall()
        out.append(privacy.IdColumn(table, col, tuple(sorted((int(n), lo, hi) for n, lo, hi in rows))))
    return out


def test_a_partitioned_export_is_profiled_file_by_file(small_sim, tmp_path, monkeypatch):
    """A day-partitioned export's profile is merged from one profile per file, kept under the
    file's checksum: after a day is rewritten only its files are read again, and the merged
    profile is what all the files hold."""
    import datetime as dt

    import pyarrow as pa
    import pyarrow.parquet as pq

    from whispers_lab.export import write_partitioned_export

    folder = write_partitioned_export(dict(small_sim.tables), tmp_path / "lake")
    read = profiled_files(monkeypatch)
    with open_export(folder) as export:
        first = privacy.id_profile(export)
        columns = [(c.table, c.column) for c in first]
        with_view = {(c.table, c.column): c for c in privacy.id_profile(export)}
        ids = export.sql("SELECT DISTINCT user_id FROM users")["user_id"].tolist()
    assert first == _raw_profile(folder, columns)
    assert all(with_view[("users", "user_id")].may_hold(u) for u in ids)
    every = len(read)
    assert every > 20

    day = small_sim.plan.start_date + dt.timedelta(days=6)
    file = next((folder / "api_logs" / f"date={day.isoformat()}").glob("*.parquet"))
    table = pq.read_table(file, partitioning=None)
    longer = table.slice(0, 1).set_column(table.schema.get_field_index("request_id"),
                                          "request_id", pa.array(["~" * 40]))
    pq.write_table(pa.concat_tables([table, longer.cast(table.schema)]), file)
    read.clear()
    with open_export(folder) as export:
        again = privacy.id_profile(export)
    assert read == [str(file)]  # that file only
    assert again == _raw_profile(folder, columns) != first
    requests = next(c for c in again if (c.table, c.column) == ("api_logs", "request_id"))
    assert requests.may_hold("~" * 40)


@pytest.mark.parametrize("seed", range(4))
def test_held_picks_the_tokens_may_hold_accepts(seed):
    """The bisections over sorted tokens select exactly what the per-token test accepts:
    random tokens (non-ASCII letters included, where code point order matters), each column
    range's own bounds among them, lengths with no token, and a length listed twice."""
    import numpy as np

    rng = np.random.default_rng(seed)
    alphabet = list("0123456789-_ABCXYZabcxyzéßЖ")

    def word(n: int) -> str:
        return "".join(rng.choice(alphabet, size=n))

    ranges = []
    for n in (1, 2, 3, 5, 8, 36):
        lo, hi = sorted((word(n), word(n)))
        ranges.append((n, lo, hi))
    ranges.append((3, *sorted((word(3), word(3)))))  # a second range for one length
    column = privacy.IdColumn("t", "user_id", tuple(ranges))
    tokens = [word(int(rng.integers(1, 10))) for _ in range(3000)]
    tokens += [b for _, lo, hi in ranges for b in (lo, hi)] + tokens[:50]  # bounds, repeats
    expected = sorted(t for t in set(tokens) if column.may_hold(t))
    assert expected  # the draw gives tokens inside some range
    assert column.held(privacy.tokens_by_length(tokens)) == expected
    assert privacy.IdColumn("t", "user_id", ((4, "a", "z"),)).held(
        privacy.tokens_by_length(tokens)) == sorted({t for t in tokens if len(t) == 4
                                                     and "a" <= t <= "z"})


def _exact(export, table: str, column: str) -> list[tuple[int, str, str]]:
    """Each length's smallest and largest value, read from the data (an independent count)."""
    frame = export.sql(f'SELECT length("{column}") AS n, min("{column}") AS lo, '
                       f'max("{column}") AS hi FROM src."{table}" WHERE "{column}" IS NOT NULL '
                       f"GROUP BY 1 ORDER BY 1")
    return [(int(n), str(lo), str(hi)) for n, lo, hi in frame.itertuples(index=False)]


def _bounds(outer: list[tuple[int, str, str]], inner: list[tuple[int, str, str]]) -> bool:
    """Whether every length of ``inner`` has a range in ``outer`` that holds its range."""
    return all(any(n == m and lo <= ilo and ihi <= hi for m, lo, hi in outer)
               for n, ilo, ihi in inner)


@pytest.mark.parametrize("whole", [True, False])
@pytest.mark.parametrize("width", [9, 12, 13, 40])
def test_a_duckdb_files_statistics_bound_fixed_format_ids_without_reading_them(
        tmp_path, monkeypatch, width, whole):
    """Ids of one length (short, at DuckDB's 12-byte statistics prefix, past it) over several
    row groups, some deleted and one updated after the write: the profile comes from the
    column statistics (no query groups the column), and every id, the smallest and the
    largest included, is inside it. At 13 and 40 characters DuckDB keeps only a prefix of
    the largest id, so the range is widened past it. ``whole``: from the statistics of the
    whole table (``stats()``), no segment's asked for; else (those not used) from each
    segment's."""
    import random

    import duckdb

    rng = random.Random(width)
    alphabet = "0123456789abcdefXYZ-_."
    users = sorted({"".join(rng.choice(alphabet) for _ in range(width)) for _ in range(130_000)})
    rng.shuffle(users)
    path = _export(tmp_path, users)
    con = duckdb.connect(str(path))
    con.execute("DELETE FROM users WHERE rowid % 7 = 3")
    con.execute("UPDATE users SET user_id = ? WHERE rowid = 5", ["~" * width])  # a new largest
    con.execute("CHECKPOINT")
    con.close()
    if not whole:
        monkeypatch.setattr(privacy, "_profile_from_table_statistics", lambda export, cols: {})
    with open_export(path, validate=False) as export:
        ran: list[str] = []
        real = export.sql
        monkeypatch.setattr(export, "sql", lambda q, *a: ran.append(q) or real(q, *a))
        con = export.con
        asked: list[str] = []

        class Watched:
            def __getattr__(self, name):
                return getattr(con, name)

            def execute(self, query, *args):
                asked.append(str(query))
                return con.execute(query, *args)

        export.con = Watched()
        try:
            profile = {(c.table, c.column): c for c in privacy.id_profile(export)}
        finally:
            export.con = con
        monkeypatch.setattr(export, "sql", real)
        segments = [q for q in asked if "pragma_storage_info" in q]
        assert (not segments) if whole else segments
        # no id column stored as text was read (the factory's ticket user ids are all NULL,
        # stored as another type)
        text = set(export.sql("SELECT table_name || '.' || column_name AS c FROM duckdb_columns() "
                              "WHERE database_name = 'src' AND data_type = 'VARCHAR'")["c"])
        read = {f"{t}.{c}" for q in ran if "length(" in q
                for t, c in re.findall(r"SELECT '(\w+)' AS t, '(\w+)' AS c", q)}
        assert "users.user_id" in text and not read & text, read
        users_col = profile[("users", "user_id")]
        ids = export.sql("SELECT user_id FROM src.users")["user_id"].tolist()
        assert all(users_col.may_hold(u) for u in ids)
        assert users_col.may_hold("~" * width) and users_col.lengths == (width,)
        for (t, c), col in profile.items():
            assert _bounds(list(col.ranges), _exact(export, t, c)), (t, c)
        if width <= 12:  # DuckDB kept whole values: the very ranges the data has
            assert list(users_col.ranges) == _exact(export, "users", "user_id")
        leaked = ids[len(ids) // 2]
        assert [leak.column for leak in privacy.find_ids(export, {"x": f"id {leaked} here"})
                if leak.column == "user_id"] == ["user_id"]


@pytest.mark.parametrize("users", [
    ["u1", "u7", "user-0042", "USER-9999"],  # several lengths in one segment
    ["ü0001", "ü0002", "u0003"],  # non-ASCII: DuckDB escapes it in its statistics
    ["u'001", 'u"002', "u\\003", "u\x01004"],  # characters the statistics escape
])
def test_ids_the_statistics_cannot_bound_are_read(tmp_path, users):
    """A column whose statistics cannot bound each length's ids (several lengths in one
    segment, escaped characters) is read from the data: its ranges are exactly the data's,
    and each id is still found."""
    path = _export(tmp_path, users)
    with open_export(path, validate=False) as export:
        stats = privacy._profile_from_statistics(export, [("users", "user_id")])
        assert ("users", "user_id") not in stats
        profile = {(c.table, c.column): c for c in privacy.id_profile(export)}
        assert list(profile[("users", "user_id")].ranges) == _exact(export, "users", "user_id")
        for user in users:
            assert any(leak.column == "user_id" for leak in
                       privacy.find_ids(export, {"x": f"a ({user}) b"})), user


def test_segment_range_from_duckdb_statistics():
    """The bounds one segment's statistics give (the fields ``pragma_storage_info`` reports)."""
    whole = {"has_no_null": True, "has_unicode": False, "min": "u01", "max": "u99",
             "min_string_length": 3, "max_string_length": 3}
    assert privacy._segment_range(whole) == (3, "u01", "u99")
    cut = dict(whole, min="e00000000000", max="e00002482273", min_string_length=13,
               max_string_length=13)
    n, lo, hi = privacy._segment_range(cut)
    assert (n, lo) == (13, "e00000000000") and "e000024822739" <= hi and "e00002482274" > hi
    assert privacy._segment_range(dict(whole, has_no_null=False)) is None  # NULLs only
    for broken in (dict(whole, max_string_length=4), dict(whole, has_unicode=True),
                   dict(whole, min="u\\x2701"), dict(whole, min=None), {}, None):
        assert privacy._segment_range(broken) is False, broken


def test_a_duckdb_file_written_anew_reads_only_the_ids_of_its_new_days(
        small_sim, tmp_path, monkeypatch):
    """A DuckDB file written anew each day (yesterday's days rewritten with today's): the id
    columns its statistics cannot bound are profiled per table and day, kept under each day's
    content digest as validation found it clean, so the next file has only the days no earlier
    file held read. The profile is what every stored row holds, computed from the raw rows;
    a day whose content changed is read again, and its new id is found."""
    import pyarrow as pa

    from tests.factories import last_day, row_days, tables_before
    from whispers_lab import validation

    monkeypatch.setenv(validation.CACHE_ENV, str(tmp_path / "cache"))
    # every id column read, as the steady export's ids of several lengths are
    monkeypatch.setattr(privacy, "_profile_from_statistics", lambda export, columns: {})
    monkeypatch.setattr(privacy, "_profile_from_table_statistics", lambda export, columns: {})
    grouped: list[str] = []

    def profiled(path):
        with open_export(path) as export:
            real = export.con.execute

            class Watched:
                def __getattr__(self, name):
                    return getattr(export.con, name)

                def execute(self, query, *args):
                    if "GROUP BY d, length(v)" in str(query):
                        grouped.append(str(query))
                    return real(query, *args)

            con, export.con = export.con, Watched()
            try:
                profile = privacy.id_profile(export)
            finally:
                export.con = con
            exact = [privacy.IdColumn(c.table, c.column, tuple(_exact(export, c.table, c.column)))
                     for c in profile]
        return profile, exact

    tables = dict(small_sim.tables)
    last = last_day(tables)
    before, exact = profiled(write_export(tables_before(tables, last), tmp_path / "d13.duckdb"))
    assert before == exact and grouped
    profiled_tables = {re.search(r'FROM src\."(\w+)"', q).group(1) for q in grouped}
    grouped.clear()
    today, exact = profiled(write_export(tables, tmp_path / "d14.duckdb"))
    assert today == exact != before
    new = str(last.astype("datetime64[D]"))
    older = str((last - 1).astype("datetime64[D]"))
    by_table = {re.search(r'FROM src\."(\w+)"', q).group(1): q for q in grouped}
    # the tables with a time column: the new day's rows only; the candidates (none) whole
    for table in ("api_logs", "telemetry", "exposures"):
        assert f"TIMESTAMP '{new}'" in by_table[table] and older not in by_table[table], table
    assert "WHERE true" in by_table["ranking_candidates"]

    # an id of an old day changed: that day alone is read again (the new day's rows are
    # those the file before held), and the id is held
    api = tables["api_logs"]
    i = api.schema.get_field_index("request_id")
    ids = api["request_id"].to_pylist()
    ids[3] = "~" * 40
    changed = dict(tables, api_logs=api.set_column(i, api.schema.field(i),
                                                    pa.array(ids, api.schema.field(i).type)))
    grouped.clear()
    again, exact = profiled(write_export(changed, tmp_path / "d14b.duckdb"))
    assert again == exact
    assert next(c for c in again if (c.table, c.column) == ("api_logs", "request_id")
                ).may_hold("~" * 40)
    day3 = str(row_days(api, "api_logs")[3])
    assert day3 != new
    [api_query] = [q for q in grouped if 'FROM src."api_logs"' in q]
    assert set(re.findall(r"TIMESTAMP '([0-9-]+)'", api_query)) == {
        day3, str(row_days(api, "api_logs")[3] + 1)}, api_query
    assert [re.search(r'FROM src\."(\w+)"', q).group(1) for q in grouped] == ["api_logs"]

    # one file per table, holding the days of every file profiled (two exports' worth here)
    from whispers_lab.id_profiles import read_day_profiles

    files = sorted((tmp_path / "cache" / "privacy" / "days").glob("*.json"))
    assert len(files) == len(profiled_tables) >= 4
    with open_export(tmp_path / "d14b.duckdb") as export:
        for table in profiled_tables:
            held = set().union(*(read_day_profiles(f) for f in files))
            assert set(export.day_keys(table).values()) <= held, table


def test_a_tables_day_profiles_keep_the_current_days_and_the_newest_others(tmp_path, monkeypatch):
    """The file of a table's days keeps every day of the export just profiled and, of the
    others, the newest (at least ``KEPT_DAY_PROFILES``, at least as many as the current)."""
    from whispers_lab import id_profiles

    monkeypatch.setattr(id_profiles, "KEPT_DAY_PROFILES", 3)
    path = tmp_path / "t.json"
    day = {"c": [[2, "a1", "a9"]]}
    id_profiles.keep_day_profiles(path, {}, {"k1": day, "k2": day})
    assert list(id_profiles.read_day_profiles(path)) == ["k1", "k2"]
    kept = id_profiles.read_day_profiles(path) | {f"old{i}": day for i in range(5)}
    id_profiles.keep_day_profiles(path, kept, {"k2": day, "k9": day})
    # others oldest first: k1, old0..old4; the newest 3 of them stay, then the current two
    assert list(id_profiles.read_day_profiles(path)) == ["old2", "old3", "old4", "k2", "k9"]
    path.write_text("not json")
    assert id_profiles.read_day_profiles(path) == {}
