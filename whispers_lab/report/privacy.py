"""Privacy scan of report outputs: no identifier from the export may appear in a published file.

A report shows aggregates only. Before a report is moved into place, every output file (the HTML,
the executed notebook, ``decision.json``) is scanned for every user, device, request and memory id
held by the export; one hit and the report is refused. The scan is reusable on any file set.

How it scales: an export holds millions of request ids, far too many for a Python set. The files,
however, are small, so the scan turns each file into the candidate *tokens* it could hide an id
in (every substring that starts and ends at a word boundary and has the length of some id), and
DuckDB semi-joins those few thousand tokens against the id columns of the export.

Embedded images (long base64 runs: PNG charts in the HTML and the notebook) are skipped: they
hold pixels, not text, and their random base64 alphabet would only produce false alarms.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from ..export import Export, sql_ident, sql_string
from ..id_profiles import (
    ID_COLUMNS,
    day_profiles_path,
    file_profile_path,
    keep_day_profiles,
    read_day_profiles,
    read_file_profile,
    write_file_profile,
)

#: Base64 runs at least this long are embedded binary data (images), not text.
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/=]{256,}")


@dataclass(frozen=True)
class Leak:
    """Some values of one id column appear in one file. Never carries the values themselves."""

    file: str
    column: str
    count: int

    def sentence(self) -> str:
        return f"{self.file} contains {self.count} {self.column} value(s) from the export"


def strip_embedded_binary(text: str) -> str:
    """``text`` with long base64 runs (embedded images) replaced by a space."""
    return _BASE64_RUN.sub(" ", text)


def _is_word(codes: np.ndarray) -> np.ndarray:
    return (((codes >= 48) & (codes <= 57)) | ((codes >= 65) & (codes <= 90))
            | ((codes >= 97) & (codes <= 122)))


def candidate_tokens(text: str, lengths: Iterable[int]) -> set[str]:
    """Every substring of ``text`` of one of ``lengths`` that is not glued to a letter or digit
    on either side (an id inside a longer word, e.g. in base64 or a hash, is not a mention)."""
    n = len(text)
    if n == 0:
        return set()
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    word = _is_word(codes)
    # left_ok[i]: a token may start at i; right_ok[j]: a token may end just before j.
    left_ok = np.ones(n + 1, dtype=bool)
    left_ok[1:n] = ~word[: n - 1]
    right_ok = np.ones(n + 1, dtype=bool)
    right_ok[:n] = ~word
    right_ok[n] = True
    out: set[str] = set()
    for length in sorted({int(x) for x in lengths if 0 < int(x) <= n}):
        starts = np.flatnonzero(left_ok[: n - length + 1] & right_ok[length: n + 1])
        out.update(text[i: i + length] for i in starts.tolist())
    return out


@dataclass(frozen=True)
class IdColumn:
    """What the privacy scan needs to know of one id column: for each length its values
    have, the smallest and the largest value of that length."""

    table: str
    column: str
    ranges: tuple[tuple[int, str, str], ...]  # (length, smallest, largest)

    @property
    def lengths(self) -> tuple[int, ...]:
        return tuple(n for n, _, _ in self.ranges)

    def may_hold(self, token: str) -> bool:
        """Whether ``token`` could be a value of the column: some value has its length and
        it sorts between the smallest and the largest of them (DuckDB compares text by
        UTF-8 bytes, which is Python's code point order)."""
        return any(n == len(token) and lo <= token <= hi for n, lo, hi in self.ranges)

    def held(self, by_length: Mapping[int, list[str]]) -> list[str]:
        """The tokens :meth:`may_hold` accepts, sorted, from tokens grouped by length, each
        group sorted and without repeats (:func:`tokens_by_length`): two bisections per
        length the column's ids have, instead of a test per token (a report's files give
        some 40K tokens, tested against every id column of the export)."""
        out: set[str] = set()
        for n, lo, hi in self.ranges:
            group = by_length.get(n)
            if group:
                out.update(group[bisect_left(group, lo): bisect_right(group, hi)])
        return sorted(out)


def tokens_by_length(tokens: Iterable[str]) -> dict[int, list[str]]:
    """Distinct tokens grouped by length, each group sorted (for :meth:`IdColumn.held`)."""
    groups: dict[int, list[str]] = {}
    for token in set(tokens):
        groups.setdefault(len(token), []).append(token)
    for group in groups.values():
        group.sort()
    return groups


def id_profile(export: Export) -> list[IdColumn]:
    """:class:`IdColumn` of every id column the export holds.

    Read whole, it is one pass over every id column (seconds at 1M users). It is kept on the
    export object and, like the validation manifest, in the cache folder under the checksums
    of the export's files (:func:`whispers_lab.validation.list_units`), so a report, its
    privacy scan and the next run on the same data read it once. A new export is profiled in
    parts kept apart in the cache folder: a Parquet export per file (:func:`_profile_by_file`);
    a DuckDB file from the whole table's column statistics where they bound the ids
    (:func:`_profile_from_table_statistics`), then per table and day for the other columns of
    a table with days (:func:`_profile_by_day`), then from each segment's statistics
    (:func:`_profile_from_statistics`); the rest is read."""
    known = getattr(export, "_privacy_id_profile", None)
    if known is not None:
        return list(known)
    columns = [(t, c) for t, c in ID_COLUMNS if export.has(t)]
    units = _id_units(export)
    cache = _profile_cache_file(units)
    out = _read_profile(cache, columns)
    fresh = out is None
    if out is None:
        out = _profile_by_file(export, columns, units)
    if out is None:
        # a DuckDB file's own column statistics answer most id columns without reading them
        ranges = _profile_from_table_statistics(export, columns)
        # the others from one profile per table and day, the days seen before kept; then
        # from each stored segment's statistics (a table without days: the candidates)
        ranges.update(_profile_by_day(export, [k for k in columns if k not in ranges]))
        ranges.update(_profile_from_statistics(export, [k for k in columns if k not in ranges]))
        read = [k for k in columns if k not in ranges]  # the others are read whole
        ranges.update({k: [] for k in read})
        if read:
            # On DuckDB the stored rows (``src``): repeated telemetry events' ids are the
            # ids of the events they repeat, and not leaving them out spares the view's
            # anti-join with every branch (3.0 -> 2.4 s for the steady 1M export's 7 columns).
            raw = getattr(export, "engine", None) == "duckdb" and getattr(
                export, "kind", None) in ("duckdb", "parquet")
            frame = export.sql(" UNION ALL ".join(
                f"SELECT {sql_string(t)} AS t, {sql_string(c)} AS c, length(v) AS n, "
                f"min(v) AS lo, max(v) AS hi FROM (SELECT CAST({sql_ident(c)} AS VARCHAR) AS v "
                f"FROM {'src.' if raw else ''}{sql_ident(t)}) WHERE v IS NOT NULL "
                f"GROUP BY length(v)"
                for t, c in read))
            for t, c, n, lo, hi in frame.itertuples(index=False):
                ranges[(str(t), str(c))].append((int(n), str(lo), str(hi)))
        out = [IdColumn(t, c, tuple(sorted(ranges[(t, c)]))) for t, c in columns]
    if fresh:
        _write_profile(cache, out)
    try:
        export._privacy_id_profile = tuple(out)  # type: ignore[attr-defined]
    except AttributeError:  # an export type without instance attributes: no shortcut
        pass
    return out


def _segment_range(stats: Any) -> tuple[int, str, str] | bool | None:
    """``(length, lo, hi)`` bounding every value of one VARCHAR column segment from its
    statistics (``pragma_storage_info``'s ``stats``): None when the segment holds no value,
    False when its statistics cannot bound them by length (values of several lengths,
    non-ASCII text, escaped bytes, missing fields).

    DuckDB keeps only a prefix of the smallest and largest value. The prefix of the smallest
    sorts before every value; every value sorts at or below the largest's prefix followed by
    the highest code point up to the segment's one length. Text is compared by UTF-8 bytes in
    DuckDB and by code points in Python, the same order for the ASCII accepted here."""
    if not isinstance(stats, Mapping):
        return False
    if stats.get("has_no_null") is False:  # only NULLs
        return None
    lo, hi = stats.get("min"), stats.get("max")
    n, m = stats.get("min_string_length"), stats.get("max_string_length")
    if (stats.get("has_unicode") is not False or not isinstance(lo, str)
            or not isinstance(hi, str) or n is None or n != m or "\\" in lo + hi
            or not lo.isascii() or not hi.isascii() or len(lo) > int(n) or len(hi) > int(n)):
        return False
    n = int(n)
    return n, lo, hi + "\U0010ffff" * (n - len(hi))


def _text_columns(export: Export, columns: list[tuple[str, str]]) -> dict[str, list[str]]:
    """``columns`` of a DuckDB file (on DuckDB) stored as text, by table (tables it holds
    only); none for another export or engine."""
    if (getattr(export, "kind", None) != "duckdb" or getattr(export, "engine", None) != "duckdb"
            or not columns):
        return {}
    stored = {str(t) for (t,) in export.con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = 'src' "
        "AND schema_name = 'main'").fetchall()}
    text = {(str(t), str(c)) for t, c in export.con.execute(
        "SELECT table_name, column_name FROM duckdb_columns() WHERE database_name = 'src' "
        "AND schema_name = 'main' AND data_type = 'VARCHAR'").fetchall()}
    out: dict[str, list[str]] = {}
    for table in sorted({t for t, _ in columns} & stored):
        cols = [c for t, c in columns if t == table and (t, c) in text]
        if cols:
            out[table] = cols
    return out


def _profile_from_table_statistics(export: Export, columns: list[tuple[str, str]]
                                   ) -> dict[tuple[str, str], list[tuple[int, str, str]]]:
    """The ranges of the id columns of a DuckDB file that their statistics over the whole
    table bound (DuckDB's ``stats()``, the merge of every segment's, read without the data:
    milliseconds, against 0.1 s a table for each segment's): ids of one length and plain
    ASCII bounds, as for a segment (:func:`_segment_range`). The others are left out."""
    out: dict[tuple[str, str], list[tuple[int, str, str]]] = {}
    try:
        for table, cols in _text_columns(export, columns).items():
            row = export.con.execute(
                f"SELECT {', '.join(f'stats({sql_ident(c)})' for c in cols)} "
                f"FROM src.{sql_ident(table)} LIMIT 1").fetchone()
            for col, stats in zip(cols, row or (), strict=False):
                bounds = _segment_range(stats)
                if bounds is None:  # only NULLs
                    out[(table, col)] = []
                elif bounds is not False:
                    out[(table, col)] = [bounds]
    except duckdb.Error:  # no statistics to read: the per-segment ones, or the data
        return {}
    return out


def _profile_from_statistics(export: Export, columns: list[tuple[str, str]]
                             ) -> dict[tuple[str, str], list[tuple[int, str, str]]]:
    """The ranges of the id columns of a DuckDB file that its column segments' statistics
    bound, without reading the data (``pragma_storage_info``: tenths of a second at 1M users
    instead of seconds): each length's smallest prefix and largest value (widened when DuckDB
    kept only its prefix). A column is left out, to be read, unless it is stored as text and
    every segment holding a value has one length and plain ASCII bounds. The ranges may be
    wider than the values (a deleted row's id, a repeated telemetry event's), so more tokens
    are looked up, none is missed (:meth:`IdColumn.held` only picks what the scan reads)."""
    out: dict[tuple[str, str], list[tuple[int, str, str]]] = {}
    try:
        for table, cols in _text_columns(export, columns).items():
            segments = export.con.execute(
                f"SELECT column_name, stats FROM pragma_storage_info("
                f"{sql_string('src.main.' + sql_ident(table))}) WHERE segment_type = 'VARCHAR' "
                f"AND list_contains(?, column_name)", [cols]).fetchall()
            found: dict[str, list[list[Any]] | None] = {c: [] for c in cols}
            for col, stats in segments:
                rows, bounds = found.get(col), _segment_range(stats)
                if rows is None or bounds is None:
                    continue
                if bounds is False:
                    found[col] = None
                else:
                    rows.append(list(bounds))
            bounded = {c: rows for c, rows in found.items() if rows is not None}
            merged: dict[tuple[str, str], dict[int, tuple[str, str]]] = {
                (table, c): {} for c in bounded}
            _merge(merged, table, bounded)
            out.update({k: [(n, lo, hi) for n, (lo, hi) in sorted(v.items())]
                        for k, v in merged.items()})
    except duckdb.Error:  # no statistics to read (an older file, a view): read the columns
        return {}
    return out


def _profile_by_day(export: Export, columns: list[tuple[str, str]]
                    ) -> dict[tuple[str, str], list[tuple[int, str, str]]]:
    """The ranges of ``columns`` of a DuckDB file from one profile per table and UTC day of
    its rows, each kept in the cache folder (a file per table, :func:`~whispers_lab.id_profiles.
    day_profiles_path`) under the day's content digest as validation found it clean
    (:meth:`~whispers_lab.export.Export.day_keys`): a file written anew each day has
    only the days no earlier file held read (its new day: 0.1-0.3 s a column at 1M users,
    against 0.25-0.5 s for the whole column), grouped by day and length in one query per
    table. A table without such keys (caching off, not validated, another engine or layout)
    is left out, to be read whole. The stored rows are read, as the digests were."""
    from ..contract import CONTRACT
    from ..validation import cache_dir, checks_digest, in_days

    root = cache_dir()
    if (root is None or getattr(export, "kind", None) != "duckdb"
            or getattr(export, "engine", None) != "duckdb" or not columns):
        return {}
    checks = checks_digest()
    out: dict[tuple[str, str], list[tuple[int, str, str]]] = {}
    try:
        for table in sorted({t for t, _ in columns}):
            cols = [c for t, c in columns if t == table]
            keys = export.day_keys(table)
            if not keys:
                continue
            # (the days validation hashed are those of the table's time column; only "none":
            # it had none it could use, and the table is one day)
            time_col = (CONTRACT[table].time_column if any(d != "none" for d in keys)
                        else None)
            ranges: dict[tuple[str, str], dict[int, tuple[str, str]]] = {
                (table, c): {} for c in cols}
            target = day_profiles_path(root, checks, table, cols)
            kept = read_day_profiles(target)
            current: dict[str, dict[str, list[list[Any]]]] = {}
            todo: list[str] = []
            for day, key in keys.items():
                known = kept.get(key)
                if known is not None and sorted(known) == sorted(cols):
                    current[key] = known
                    _merge(ranges, table, known)
                else:
                    todo.append(day)
            if todo:
                days = [None if d == "none" else dt.date.fromisoformat(d) for d in todo]
                where = in_days(time_col, days)
                day = (f"CAST(CAST({sql_ident(time_col)} AS TIMESTAMP) AS DATE)" if time_col
                       else "CAST(NULL AS DATE)")
                found: dict[str, dict[str, list[list[Any]]]] = {
                    d: {c: [] for c in cols} for d in todo}
                for d, c, n, lo, hi in export.con.execute(" UNION ALL ".join(
                        f"SELECT d, {sql_string(c)} AS c, length(v) AS n, min(v) AS lo, "
                        f"max(v) AS hi FROM (SELECT {day} AS d, CAST({sql_ident(c)} AS VARCHAR) "
                        f"AS v FROM src.{sql_ident(table)} WHERE {where}) WHERE v IS NOT NULL "
                        f"GROUP BY d, length(v)" for c in cols)).fetchall():
                    found["none" if d is None else d.isoformat()][c].append(
                        [int(n), str(lo), str(hi)])
                for d in todo:
                    _merge(ranges, table, found[d])
                    current[keys[d]] = found[d]
                keep_day_profiles(target, kept, current)
            out.update({k: [(n, lo, hi) for n, (lo, hi) in sorted(v.items())]
                        for k, v in ranges.items()})
    except (duckdb.Error, KeyError):  # (a day the keys do not name: read the columns whole)
        return {}
    return out


def _id_units(export: Export) -> dict[str, list[Any]] | None:
    """The units (:func:`whispers_lab.validation.list_units`) of every table with an id
    column, listed once for both caches (None: caching off, or an export without a path)."""
    from ..validation import cache_dir, list_units

    kind = getattr(export, "kind", None)
    path = getattr(export, "path", None)
    if cache_dir() is None or path is None or kind not in ("duckdb", "parquet"):
        return None
    listed = getattr(getattr(export, "validation", None), "units", None) or {}
    try:
        return {table: listed[table] if table in listed else list_units(Path(path), str(kind), table)
                for table in sorted({t for t, _ in ID_COLUMNS})}
    except OSError:
        return None


def _profile_cache_file(units: Mapping[str, list[Any]] | None) -> Path | None:
    from ..validation import cache_dir, checks_digest

    root = cache_dir()
    if units is None or root is None:
        return None
    digest = hashlib.sha256(f"privacy-2:{checks_digest()}".encode())
    for table in sorted(units):
        for unit in units[table]:
            digest.update(f"{unit.name}:{unit.checksum};".encode())
    return root / "privacy" / f"{digest.hexdigest()[:40]}.json"


def _profile_by_file(export: Export, columns: list[tuple[str, str]],
                     units: Mapping[str, list[Any]] | None) -> list[IdColumn] | None:
    """The profile of a Parquet export on DuckDB from one profile per file, each kept in the
    cache folder under the file's checksum: when a day's partition is added or rewritten, only
    its files are read. None when that does not apply (another engine or layout, no cache).

    A file's profile reads its raw rows, repeated telemetry events included, so its ranges may
    be wider than the deduplicated view's: more tokens are then looked up, none is missed."""
    from ..validation import cache_dir, checks_digest

    root = cache_dir()
    if (root is None or units is None or getattr(export, "kind", None) != "parquet"
            or getattr(export, "engine", None) != "duckdb" or not columns):
        return None
    checks = checks_digest()
    ranges: dict[tuple[str, str], dict[int, tuple[str, str]]] = {k: {} for k in columns}
    try:
        for table in sorted({t for t, _ in columns}):
            cols = [c for t, c in columns if t == table]
            todo = []
            for unit in units[table]:
                target = file_profile_path(root, checks, table, unit.name, unit.checksum)
                known = read_file_profile(target, cols)
                if known is None:
                    todo.append((unit, target))
                else:
                    _merge(ranges, table, known)
            for found, target in _profile_files(export, table, cols, todo):
                _merge(ranges, table, found)
                write_file_profile(target, found)
    except (OSError, duckdb.Error):  # unreadable files: the view's query says what is wrong
        return None
    return [IdColumn(t, c, tuple(sorted((n, lo, hi) for n, (lo, hi) in ranges[(t, c)].items())))
            for t, c in columns]


def _merge(ranges: dict[tuple[str, str], dict[int, tuple[str, str]]], table: str,
           found: dict[str, list[list[Any]]]) -> None:
    for col, rows in found.items():
        into = ranges[(table, col)]
        for n, lo, hi in rows:
            old = into.get(int(n))
            into[int(n)] = ((str(lo), str(hi)) if old is None
                            else (min(old[0], str(lo)), max(old[1], str(hi))))


def _profile_files(export: Export, table: str, cols: list[str], todo: list[tuple[Any, Path]]
                   ) -> list[tuple[dict[str, list[list[Any]]], Path]]:
    """The profile of each of ``todo``'s files, read in one query per column."""
    if not todo:
        return []
    from ..validation import FILE_COLUMN, files_source, local_path

    source = files_source([f for unit, _ in todo for f in unit.files])
    by_file = {local_path(f): i for i, (unit, _) in enumerate(todo) for f in unit.files}
    found: list[dict[str, list[list[Any]]]] = [{c: [] for c in cols} for _ in todo]
    for col in cols:
        v = f"CAST({sql_ident(col)} AS VARCHAR)"
        rows = export.con.execute(
            f"SELECT {FILE_COLUMN}, length({v}), min({v}), max({v}) FROM {source} "
            f"WHERE {sql_ident(col)} IS NOT NULL GROUP BY 1, 2").fetchall()
        for file, n, lo, hi in rows:
            found[by_file[local_path(file)]][col].append([int(n), str(lo), str(hi)])
    return [(doc, target) for doc, (_, target) in zip(found, todo, strict=True)]


def _read_profile(cache: Path | None, columns: list[tuple[str, str]]) -> list[IdColumn] | None:
    if cache is None:
        return None
    try:
        doc = json.loads(cache.read_text(encoding="utf-8"))
        out = [IdColumn(str(d["table"]), str(d["column"]),
                        tuple((int(n), str(lo), str(hi)) for n, lo, hi in d["ranges"]))
               for d in doc]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return out if [(c.table, c.column) for c in out] == columns else None


def _write_profile(cache: Path | None, profile: list[IdColumn]) -> None:
    if cache is None:
        return
    from ..atomic import write_text_atomic

    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(cache, json.dumps([dataclasses.asdict(c) for c in profile]))
    except OSError:  # the cache is only a shortcut
        pass


def id_lengths(export: Export) -> list[int]:
    """Distinct lengths of every id in the export (a handful: ids have fixed formats)."""
    return sorted({n for col in id_profile(export) for n in col.lengths})


#: Ids longer than this are not looked for as tokens (a text of n characters has about n
#: candidate tokens of each length, so long lengths cost n * length memory) and could be taken
#: for embedded base64; the few such ids are fetched and searched for in the raw text instead.
LONG_ID_CHARS = 128


def _glued(char: str) -> bool:
    return char.isascii() and char.isalnum()


def _mentions(text: str, value: str) -> bool:
    """Whether ``value`` occurs in ``text`` not glued to a letter or digit on either side
    (plain substring search: a regex of a 1 MB id takes most of a second to compile)."""
    start = text.find(value)
    while start >= 0:
        end = start + len(value)
        if not ((start and _glued(text[start - 1])) or (end < len(text) and _glued(text[end]))):
            return True
        start = text.find(value, start + 1)
    return False


def _long_matches(export: Export, texts: Mapping[str, str]) -> dict[tuple[str, str], set[str]]:
    """(text name, id column) -> ids longer than :data:`LONG_ID_CHARS` found in that text,
    searched for in the unstripped text with the same word-boundary rule as tokens."""
    out: dict[tuple[str, str], set[str]] = {}
    for t, c in ID_COLUMNS:
        if not export.has(t):
            continue
        frame = export.sql(f"SELECT DISTINCT {sql_ident(c)} AS v FROM {sql_ident(t)} "
                           f"WHERE length({sql_ident(c)}) > {LONG_ID_CHARS}")
        for value in frame["v"].tolist():
            for name, text in texts.items():
                if _mentions(text, str(value)):
                    key = (str(name), "memory_id" if c == "whisper_id" else c)
                    out.setdefault(key, set()).add(str(value))
    return out


def _matches(export: Export, texts: Mapping[str, str]) -> dict[tuple[str, str], set[str]]:
    """(text name, id column) -> the ids of that column found in that text."""
    lengths = id_lengths(export)
    out = _long_matches(export, texts) if lengths and lengths[-1] > LONG_ID_CHARS else {}
    lengths = [n for n in lengths if n <= LONG_ID_CHARS]
    files: dict[str, set[str]] = {}  # token -> the texts it appears in
    for name, text in texts.items():
        for token in candidate_tokens(strip_embedded_binary(text), lengths):
            files.setdefault(token, set()).add(name)
    if not files:
        return out
    # A column is read only for the tokens that could be one of its values (their length is
    # one of its ids' and they sort between its smallest and largest id): with ids of a
    # fixed format (a prefix and digits) the words of a report rarely are, and most columns
    # are not read at all.
    by_length = tokens_by_length(files)
    held = {col: col.held(by_length) for col in id_profile(export)}
    held = {col: values for col, values in held.items() if values}
    if not held:
        return out
    # The tokens go to the scan as a constant list (a query parameter): DuckDB then skips the
    # row groups whose smallest and largest value exclude them all and tests the rest against
    # a small set, about 10x faster than joining the tokens with the whole column (0.05 vs
    # 0.5 s over 30M request ids of a 1M-user export).
    params: dict[str, Any] = {}
    parts = []
    for i, (col, values) in enumerate(held.items()):
        params[f"t{i}"] = values
        parts.append(f"SELECT {sql_string(col.column)} AS col, {sql_ident(col.column)} AS token "
                     f"FROM {sql_ident(col.table)} "
                     f"WHERE list_contains(CAST($t{i} AS VARCHAR[]), {sql_ident(col.column)})")
    frame = export.sql("SELECT DISTINCT col, token FROM (" + " UNION ALL ".join(parts) + ")",
                       params)
    for col, token in frame.itertuples(index=False):
        # whisper_id values are memory ids: report them under one name
        key_col = "memory_id" if col == "whisper_id" else str(col)
        for file in files.get(str(token), ()):
            out.setdefault((str(file), key_col), set()).add(str(token))
    return out


def find_ids(export: Export, texts: Mapping[str, str]) -> list[Leak]:
    """Which id columns of ``export`` have values appearing in which of ``texts`` (name -> text)."""
    return [Leak(f, c, len(v)) for (f, c), v in sorted(_matches(export, texts).items())]


def redact(export: Export, document: Any, placeholder: str = "[redacted]") -> tuple[Any, int]:
    """A copy of a JSON-like ``document`` (dicts, lists, strings, numbers) in which every id of
    the export inside a string is replaced by ``placeholder``; also the number of ids removed.

    Used on ``decision.json`` and on the rows of the report's tables: a criterion's details may
    list example users, which an aggregate report must not show."""
    seen: set[str] = set()

    def collect(node: Any) -> None:
        if isinstance(node, str):
            seen.add(node)
        elif isinstance(node, Mapping):
            for k, v in node.items():
                collect(k)
                collect(v)
        elif isinstance(node, (list, tuple)):
            for v in node:
                collect(v)

    collect(document)
    strings = {str(i): text for i, text in enumerate(sorted(seen))}
    found: set[str] = set()
    for ids in _matches(export, strings).values():
        found |= ids
    if not found:
        return document, 0
    pattern = re.compile(r"(?<![A-Za-z0-9])(?:" + "|".join(
        re.escape(t) for t in sorted(found, key=len, reverse=True)) + r")(?![A-Za-z0-9])")

    def clean(node: Any) -> Any:
        if isinstance(node, str):
            return pattern.sub(placeholder, node)
        if isinstance(node, Mapping):
            return {clean(k): clean(v) for k, v in node.items()}
        if isinstance(node, tuple):
            return tuple(clean(v) for v in node)
        if isinstance(node, list):
            return [clean(v) for v in node]
        return node

    return clean(document), len(found)


def scan_files(export: Export, paths: Iterable[str | Path]) -> list[Leak]:
    """:func:`find_ids` over files (read as UTF-8, undecodable bytes replaced)."""
    texts = {}
    for p in paths:
        path = Path(p)
        texts[path.name] = path.read_text(encoding="utf-8", errors="replace")
    return find_ids(export, texts)


def find_strings(texts: Mapping[str, str], forbidden: Iterable[str]) -> list[tuple[str, int]]:
    """(file name, number of distinct forbidden strings found) for plain substring matches,
    e.g. an absolute path that must not be published."""
    words = [w for w in set(forbidden) if w]
    out = []
    for name, text in texts.items():
        hits = sum(1 for w in words if w in text)
        if hits:
            out.append((name, hits))
    return out


#: Patterns that would make a browser fetch something from the network.
_NETWORK = (
    re.compile(r"""<script[^>]*\bsrc\s*=""", re.I),
    re.compile(r"""<link[^>]*\bhref\s*=\s*["']?\s*(?:https?:)?//""", re.I),
    re.compile(r"""\b(?:src|srcset|poster|data)\s*=\s*["']?\s*(?:https?:)?//""", re.I),
    re.compile(r"""url\(\s*["']?\s*(?:https?:)?//""", re.I),
    re.compile(r"""@import\b""", re.I),
    re.compile(r"""\bimport\s*\(\s*["'`](?:https?:)?//""", re.I),
)


def network_references(html: str) -> list[str]:
    """Snippets of ``html`` that would load a script, style, font or image from elsewhere."""
    out = []
    for pattern in _NETWORK:
        for m in pattern.finditer(html):
            out.append(html[max(0, m.start() - 20): m.end() + 40].replace("\n", " "))
    return out
