"""Opening and writing exports: the one place that creates DuckDB connections.

An export is a DuckDB database file or a folder of Parquet files (``<table>.parquet`` or
``<table>/**/*.parquet``). :func:`open_export` attaches it read-only under the schema ``src``,
validates it against the contract, and exposes each contract table as a view in ``main`` with
canonical types: timestamps as naive UTC ``TIMESTAMP``, contract columns only. Optional tables
that are absent become empty views, and :meth:`Export.has` tells whether the export had them.

Other modules hold SQL text (``whispers_lab.queries``) and run it through :meth:`Export.sql`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import itertools
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa

from .atomic import replace_dir, write_text_atomic
from .contract import CONTRACT, DUPLICATE_EVENT_KEY, DUPLICATE_EVENT_SECONDS, TABLES, Table
from .engine import default_engine, engine_of, variant
from .errors import ExportError
from .sql import sql_ident, sql_string
from .validation import (
    DUPLICATE_EVENTS_TABLE,
    FILE_COLUMN,
    ValidationResult,
    cache_dir,
    checks_digest,
    describe_source,
    duplicate_events_notice,
    files_source,
    keep_units,
    list_units,
    local_path,
    parquet_files,
    path_key,
    prune_cache,
    validate_attached,
)

__all__ = ["Export", "attach", "connect", "create_canonical_views", "describe_source",
           "duplicate_events_cache_file", "duplicate_events_select", "empty_select",
           "is_duckdb_file", "open_export", "sql_ident", "sql_string", "to_parquet_folder",
           "write_export", "write_partitioned_export"]

DUCKDB_MAGIC = b"DUCK"


#: Memory DuckDB may use while reading an export (``$WHISPERS_LAB_DUCKDB_MEMORY``, a DuckDB
#: size such as ``4GB``; empty: DuckDB's own default, 80% of the machine). Past it, DuckDB spills
#: to a private temporary folder. 1 GB keeps a 1M-user report, kernel included, under 2 GB, and
#: was faster than the default there (less memory to allocate and page in).
MEMORY_ENV = "WHISPERS_LAB_DUCKDB_MEMORY"
DEFAULT_READ_MEMORY = "1GB"


def read_memory_limit() -> str | None:
    """The memory limit for connections that read an export (see :data:`MEMORY_ENV`)."""
    value = os.environ.get(MEMORY_ENV)
    if value is None:
        return DEFAULT_READ_MEMORY
    return value.strip() or None


def connect(threads: int | None = None, memory_limit: str | None = None) -> duckdb.DuckDBPyConnection:
    """A fresh in-memory DuckDB connection, in UTC. With ``memory_limit``, what DuckDB spills
    goes to a temporary folder of this process (never the working folder, which may be a
    report folder that stakeholders read)."""
    config: dict[str, Any] = {}
    if threads:
        config["threads"] = threads
    if memory_limit:
        config["memory_limit"] = memory_limit
        # DuckDB's block allocator for the same size: the buffers of the blocks it reads and
        # of its intermediate results come from one pool of memory the connection keeps (and
        # frees when it closes) instead of being allocated and returned to the system query by
        # query. One day's evaluation at 1M users took 645-651K page faults instead of
        # 831-837K, and 3.1-3.5 s of system CPU instead of 5.7-5.9 s (docs/scale.md).
        config["block_allocator_memory"] = memory_limit
        config["temp_directory"] = os.path.join(tempfile.gettempdir(),
                                                f"whispers-lab-spill-{os.getpid()}")
    con = duckdb.connect(":memory:", config=config)
    con.execute("SET TimeZone = 'UTC'")
    # no progress bar on a terminal: scheduled runs log plain lines only. Inside a Jupyter
    # kernel without ipywidgets (the report notebook) DuckDB refuses any change to the
    # setting, and shows no bar there anyway.
    try:
        con.execute("SET enable_progress_bar = false")
    except duckdb.InvalidInputException:
        pass
    return con


_CREATE_TEMP = re.compile(r"\s*CREATE\s+(?:OR\s+REPLACE\s+)?TEMP(?:ORARY)?\s+TABLE\s+(\w+)",
                          re.IGNORECASE)


def _fingerprint(frame: Any, serial: Iterator[int]) -> str:
    """A digest of a registered frame's content (a DataFrame's columns and values); any other
    object gets a name of its own, so that nothing read through it is ever reused."""
    if isinstance(frame, pd.DataFrame):
        h = hashlib.sha256(repr([(str(c), str(t)) for c, t in frame.dtypes.items()]).encode())
        # the Arrow buffers of each column (zero-copy for Arrow-backed strings), with each
        # chunk's offset and length: equal digests mean equal values; a sliced column hashes
        # bytes outside its slice too, which can only make equal frames look different
        # (a remembered result not reused), never the reverse
        try:
            table = pa.Table.from_pandas(frame, preserve_index=False)
        except (pa.ArrowException, TypeError, ValueError):  # mixed objects: pandas' hash
            h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
            return h.hexdigest()
        for column in table.columns:
            h.update(str(column.type).encode())
            for chunk in column.chunks:
                h.update(f"{chunk.offset}:{len(chunk)}".encode())
                for buffer in chunk.buffers():
                    h.update(b"-" if buffer is None else memoryview(buffer))
        return h.hexdigest()
    return f"object-{next(serial)}"


class Export:
    """An opened export. Use as a context manager, or call :meth:`close`."""

    #: the engine that runs its queries (:mod:`whispers_lab.engine`); Spark's is
    #: :class:`whispers_lab.spark.SparkExport`
    engine = "duckdb"

    def __init__(self, path: Path, kind: str, con: duckdb.DuckDBPyConnection,
                 present: Sequence[str], validation: ValidationResult | None = None) -> None:
        self.path = path
        self.kind = kind
        self.con = con
        self.present = tuple(present)
        #: what validation found (notices included); None when opened without validation
        self.validation = validation
        self._memo: dict[Any, Any] | None = None  # see memoize()
        #: name -> fingerprint of what a relation made through this object holds
        self._relations: dict[str, str] = {}
        self._serial = itertools.count()

    def day_keys(self, table: str) -> dict[str, str] | None:
        """``table``'s content key per ISO day as validation found it clean
        (:attr:`~whispers_lab.validation.ValidationResult.day_keys`), None when this opening
        did not validate it so: what is keyed by them is then never reused."""
        v = self.validation
        if v is None or v.problems or table not in v.day_keys:
            return None
        return v.day_keys[table]

    def keep_in_cache(self, relation: str, target: Path) -> None:
        """Write ``relation`` to the Parquet file ``target`` in the cache folder, atomically (a
        temporary file, then renamed); never raises: what the cache keeps is a shortcut only."""
        _save_to_cache(self.con, relation, target)

    @property
    def duplicate_events(self) -> int:
        """Telemetry rows left out of the ``telemetry`` view as repeats of an earlier event."""
        return int(self.scalar(f"SELECT count(*) FROM {DUPLICATE_EVENTS_TABLE}"))

    # -- queries -----------------------------------------------------------------------
    def memoize(self, on: bool = True) -> None:
        """Remember every query's result for the rest of this object's life (``on``), so that
        a second evaluation of the same export (the stakeholder summary's, after the day's)
        reruns only the queries that differ. The export is read-only, so a query's result
        depends only on its text, its parameters and the relations made through this object:
        each registered frame is fingerprinted by its content, each temporary table by the
        key of the statement that made it, and those a query names are part of its key. A ``CREATE ...
        TEMP TABLE`` whose table already holds what the statement would make is skipped.
        Results are copied out, so a caller may change what it gets."""
        self._memo = {} if on else None

    def _memo_key(self, kind: str, query: str, params: Any, made: str | None) -> tuple[Any, ...]:
        frozen = repr(sorted(params.items()) if isinstance(params, Mapping) else params)
        return (kind, query, frozen, self._read_by(query, made))

    def _read_by(self, query: str, made: str | None = None) -> tuple[tuple[str, str], ...]:
        words = set(re.findall(r"\w+", query.lower()))  # the relations this query reads
        words.discard(made)  # not the table it makes (whatever that held before)
        return tuple(sorted((n, f) for n, f in self._relations.items() if n in words))

    def relations_read(self, query: str) -> tuple[tuple[str, str], ...] | None:
        """What the relations made through this object that ``query`` names hold now (their
        fingerprints), comparable with a later call; None when this object does not track
        them (not memoizing, :meth:`memoize`)."""
        return None if self._memo is None else self._read_by(query)

    def _cached(self, kind: str, query: str, params: Any, run: Any) -> Any:
        if self._memo is None:
            return run()
        created = _CREATE_TEMP.match(query)
        made = created.group(1).lower() if created else None
        key = self._memo_key(kind, query, params, made)
        fingerprint = hashlib.sha256(repr(key).encode()).hexdigest() if made else None
        # a CREATE is skipped only while its table still holds what it made (not after the
        # table was made again from other inputs)
        if key in self._memo and (made is None or self._relations.get(made) == fingerprint):
            value = self._memo[key]
        else:
            value = run()
            self._memo[key] = value
            if made:  # the table holds what this statement makes, until it is made again
                self._relations[made] = fingerprint
        return value.copy() if isinstance(value, pd.DataFrame) else value

    def sql(self, query: str, params: Sequence[Any] | Mapping[str, Any] | None = None, *,
            ordered: bool = True) -> pd.DataFrame:
        """Run a query and return a (small, aggregated) DataFrame.

        ``ordered=False`` (for a ``CREATE ... TEMP TABLE ... AS`` whose readers only aggregate
        its rows): DuckDB may store the rows in any order (``preserve_insertion_order`` off
        for this statement), so that each of its threads writes the rows it read instead of
        handing them over in the order of the source. The report's two large temporary tables
        took 0.22 s and 0.13 s less to make at 1M users (docs/scale.md)."""
        def run() -> pd.DataFrame:
            cur = (self.con.execute(query, params) if params is not None
                   else self.con.execute(query))
            return cur.df()

        if ordered:
            return self._cached("df", query, params, run)

        def unordered() -> pd.DataFrame:
            self.con.execute("SET preserve_insertion_order = false")
            try:
                value = run()
            except BaseException:
                # the statement's own error is the one to see, not a failed reset's
                with contextlib.suppress(duckdb.Error):
                    self.con.execute("RESET preserve_insertion_order")
                raise
            self.con.execute("RESET preserve_insertion_order")
            return value

        return self._cached("df", query, params, unordered)

    def scalar(self, query: str, params: Sequence[Any] | None = None) -> Any:
        def run() -> Any:
            cur = self.con.execute(query, params) if params is not None else self.con.execute(query)
            rows = cur.fetchall()  # to the end: no result is left open on the connection
            return rows[0][0] if rows else None

        return self._cached("scalar", query, params, run)

    def arrow(self, query: str, params: Sequence[Any] | None = None):
        """Run a query and return a pyarrow Table (DuckDB 2 has no ``arrow()`` on a result)."""
        return self._cached("arrow", query, params,
                            lambda: self.con.sql(query, params=params).to_arrow_table())

    def register(self, name: str, frame: Any) -> None:
        """Make a DataFrame / Arrow table queryable as ``name`` (e.g. cohort assignments)."""
        self.con.register(name, frame)
        if self._memo is not None:
            self._relations[name.lower()] = _fingerprint(frame, self._serial)

    def unregister(self, name: str) -> None:
        """Drop a relation made by :meth:`register`."""
        self.con.unregister(name)
        self._relations.pop(name.lower(), None)

    def has(self, table: str) -> bool:
        """Whether the export itself holds ``table`` (absent optional tables are empty views)."""
        return table in self.present

    def row_count(self, table: str) -> int:
        return int(self.scalar(f"SELECT count(*) FROM {sql_ident(table)}"))

    def time_range(self, table: str) -> tuple[Any, Any]:
        col = CONTRACT[table].time_column
        if col is None:
            return (None, None)
        query = f"SELECT min({sql_ident(col)}), max({sql_ident(col)}) FROM {sql_ident(table)}"
        row = self._cached("row", query, None, lambda: self.con.execute(query).fetchall()[0])
        return (row[0], row[1])

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Export:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Export({str(self.path)!r}, kind={self.kind!r}, tables={self.present})"


# ---------------------------------------------------------------------------------------
# opening


def is_duckdb_file(path: Path) -> bool:
    """Whether ``path`` is a file with DuckDB's magic bytes."""
    return _is_duckdb_file(path)


def _is_duckdb_file(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            head = fh.read(16)
    except OSError:
        return False
    return len(head) >= 12 and head[8:12] == DUCKDB_MAGIC


#: A Parquet table stored in at least this many files, and in at most
#: :data:`SMALL_TABLE_BYTES` in all, is read into memory once when the export is opened
#: (:func:`attach`). Every read of a Parquet table opens each of its files and, as the table
#: is read by name (``union_by_name``), their footers at every query's binding: the simulator's
#: 1M users partitioned by signup date are 2,810 files of 35 MB, and each query naming them took
#: 0.17-0.39 s where one file takes 0.003 s (docs/scale.md); a report names them about ten times.
#: (The size limit keeps a report's memory in bounds: the users' 35 MB take 47 MB in DuckDB.)
MANY_FILES = 64
SMALL_TABLE_BYTES = 64 * 2**20


def _parquet_source(folder: Path, table: str) -> tuple[str, list[Path]] | None:
    """SQL naming ``table``'s Parquet file(s) in ``folder`` (:func:`parquet_files`), and the
    files."""
    files = parquet_files(folder, table)
    if not files:
        return None
    single = folder / f"{table}.parquet"
    return sql_string(str(single if files == [single] else folder / table / "**" / "*.parquet")), files


def _many_small_files(files: Sequence[Path]) -> bool:
    """Whether a table in ``files`` is cheaper read once into memory than named by every query."""
    if len(files) < MANY_FILES:
        return False
    try:
        return sum(f.stat().st_size for f in files) <= SMALL_TABLE_BYTES
    except OSError:
        return False


def attach(path: str | Path, threads: int | None = None, *, copy_small_tables: bool = True
           ) -> tuple[duckdb.DuckDBPyConnection, str, list[str]]:
    """Attach an export read-only as schema ``src``; return (connection, kind, tables found).

    ``copy_small_tables``: read a Parquet table in many small files into memory
    (:data:`MANY_FILES`, :data:`SMALL_TABLE_BYTES`), which pays off over the many queries of an
    evaluation; False for an opening that runs a few queries (a validation reads the files
    itself, the rollout state reads the flag log only), which would spend 0.7 s reading the
    users of a 1M-user export partitioned by signup date.

    Raises :class:`ExportError` for a missing path, a file that is not DuckDB, or unreadable data.
    """
    p = Path(path)
    if not p.exists():
        raise ExportError(f"export {str(p)!r} does not exist")
    con = connect(threads=threads, memory_limit=read_memory_limit())
    try:
        if p.is_dir():
            kind = "parquet"
            con.execute("CREATE SCHEMA src")
            found = []
            for t in TABLES:
                located = _parquet_source(p, t.name)
                if located is None:
                    continue
                source, files = located
                select = (f"SELECT * FROM read_parquet({source}, hive_partitioning = true, "
                          f"union_by_name = true)")
                if copy_small_tables and _many_small_files(files):
                    # (a file that cannot be read leaves the view, for validation to name it)
                    with contextlib.suppress(duckdb.Error):
                        _read_into_memory(con, p, t.name, select, files)
                        found.append(t.name)
                        continue
                try:
                    con.execute(f"CREATE VIEW src.{sql_ident(t.name)} AS {select}")
                except duckdb.Error as exc:
                    raise ExportError(f"export {str(p)!r}: table {t.name!r} cannot be read as "
                                      f"Parquet: {_first_line(exc)}") from None
                found.append(t.name)
        else:
            kind = "duckdb"
            if not _is_duckdb_file(p):
                raise ExportError(f"export {str(p)!r} is not a DuckDB database file (nor a folder "
                                  f"of Parquet files): its header lacks the DuckDB magic bytes")
            try:
                con.execute(f"ATTACH {sql_string(str(p))} AS src (READ_ONLY)")
            except duckdb.Error as exc:
                raise ExportError(f"export {str(p)!r} cannot be opened as DuckDB "
                                  f"(truncated or corrupt?): {_first_line(exc)}") from None
            rows = con.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_catalog = 'src' AND table_schema = 'main'").fetchall()
            names = {r[0] for r in rows}
            found = [t.name for t in TABLES if t.name in names]
    except BaseException:
        con.close()
        raise
    return con, kind, found


#: Version of the one-file copies the cache folder keeps of many-file tables (``tables/``),
#: written into each copy's Parquet metadata with the files it holds: a copy of another
#: version is never read.
TABLE_COPY_VERSION = 1
_COPY_KEY = "whispers_lab_copy"


def table_copy_file(folder: Path, table: str) -> Path | None:
    """Where the cache folder keeps the one-file copy of ``table`` of the Parquet export at
    ``folder`` (None: caching is off). Its Parquet metadata names the files it holds, each
    with its checksum (size, times, inode and footer: :func:`~whispers_lab.validation.list_units`)."""
    root = cache_dir()
    return None if root is None else root / "tables" / path_key(folder) / f"{table}.parquet"


def _copy_holds(con: duckdb.DuckDBPyConnection, copy: Path) -> dict[str, str] | None:
    """The files (name -> checksum) the copy holds, None when there is no readable copy of
    this version."""
    try:
        rows = con.execute("SELECT value FROM parquet_kv_metadata(?) WHERE key = ?",
                           [str(copy), _COPY_KEY.encode()]).fetchall()
        doc = json.loads(rows[0][0]) if rows else None
    except (duckdb.Error, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("version") != TABLE_COPY_VERSION:
        return None
    return {str(n): str(c) for n, c in doc.get("units", [])}


def _read_into_memory(con: duckdb.DuckDBPyConnection, folder: Path, table: str, select: str,
                      files: Sequence[Path]) -> None:
    """Create ``src.<table>`` in memory from its many files (``select`` reads them), or from
    the one-file copy the cache folder keeps of them (:func:`table_copy_file`) while every file
    it holds is still there as it was: 0.05 s instead of 0.75-0.87 s for a 1M-user export's
    users in 2,810 files (docs/scale.md). Files added since (a new day's signups) are read
    beside the copy when their columns are the copy's, and the copy is written again with
    them; any other change reads every file and writes the copy anew. The listing goes to
    the connection's validation (:func:`~whispers_lab.validation.keep_units`). Raises
    :class:`duckdb.Error` when the files cannot be read."""
    name = f"src.{sql_ident(table)}"
    units: list[Any] = []
    copy = None
    with contextlib.suppress(OSError):  # (no listing: no copy, the files are read)
        units = list_units(folder, "parquet", table, files)
        keep_units(con, table, units)
        copy = table_copy_file(folder, table)
    held = _copy_holds(con, copy) if copy is not None and copy.is_file() else None
    now = {u.name: u.checksum for u in units}
    if held is not None and all(now.get(n) == c for n, c in held.items()):
        added = [u for u in units if u.name not in held]
        from_copy = f"SELECT * FROM read_parquet({sql_string(str(copy))})"
        try:
            if added:
                listed = ", ".join(sql_string(f) for u in added for f in u.files)
                more = (f"SELECT * FROM read_parquet([{listed}], hive_partitioning = true, "
                        f"union_by_name = true)")
                if (con.execute(f"DESCRIBE {from_copy}").fetchall()
                        != con.execute(f"DESCRIBE {more}").fetchall()):
                    raise LookupError  # (other columns: every file is read)
                from_copy = f"{from_copy} UNION ALL {more}"
            con.execute(f"CREATE TABLE {name} AS {from_copy}")
            if added:
                _save_copy(con, name, copy, units)
            return
        except (duckdb.Error, LookupError):  # a copy that cannot be used is made again below
            con.execute(f"DROP TABLE IF EXISTS {name}")
    con.execute(f"CREATE TABLE {name} AS {select}")
    if copy is not None:
        _save_copy(con, name, copy, units)


def _save_copy(con: duckdb.DuckDBPyConnection, name: str, copy: Path, units: Sequence[Any]
               ) -> None:
    doc = json.dumps({"version": TABLE_COPY_VERSION,
                      "units": [[u.name, u.checksum] for u in units]})
    _save_to_cache(con, name, copy, f", KV_METADATA {{{_COPY_KEY}: {sql_string(doc)}}}")


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _canonical_expr(name: str, logical: str, physical: str) -> str:
    col = sql_ident(name)
    if logical == "TIMESTAMP":
        if physical.startswith("TIMESTAMP WITH TIME ZONE"):
            return f"({col} AT TIME ZONE 'UTC') AS {col}"
        return f"CAST({col} AS TIMESTAMP) AS {col}"
    if logical == "INTEGER":
        return f"CAST({col} AS BIGINT) AS {col}"
    if logical == "DOUBLE":
        return f"CAST({col} AS DOUBLE) AS {col}"
    return f"CAST({col} AS {logical}) AS {col}"


def create_duplicate_events(con: duckdb.DuckDBPyConnection, present: Sequence[str], *,
                            path: str | Path | None = None, kind: str | None = None,
                            use_cache: bool = True,
                            contents: Mapping[str, str] | None = None,
                            units: Sequence[Any] | None = None) -> None:
    """Fill the temporary table ``telemetry_duplicates`` with the ``event_id`` of every
    telemetry row that repeats an earlier event under a new id: same
    :data:`~whispers_lab.contract.DUPLICATE_EVENT_KEY` values and a ``created_at`` at most
    :data:`~whispers_lab.contract.DUPLICATE_EVENT_SECONDS` after the previous such row (ties
    in time broken by ``event_id``, so the first stays). The ``telemetry`` view then leaves
    these rows out, so every query counts each event once.

    Finding them takes a window over all of the telemetry (seconds at 25M rows), so with
    ``path``/``kind`` the list is kept in the cache folder
    (:func:`whispers_lab.validation.cache_dir`, ``duplicates/``) under the checksums of the
    export's telemetry (:func:`whispers_lab.validation.list_units`): every later opening of the
    same data reads it back. Rows whose key columns are missing or unreadable get no
    deduplication (validation reports those columns).

    For a Parquet export whose telemetry changed in a few files since the last search (a new
    day's partition, a re-delivered one), only the time span those files cover, before and
    after the change, is searched again (:func:`_update_duplicates`): a row's status depends
    only on the latest earlier row of its key, at most ``DUPLICATE_EVENT_SECONDS`` before it.

    A DuckDB file's telemetry does the same by day, with ``contents``: its days' content digests
    (:func:`whispers_lab.validation.day_digests`, from its validation). The result is kept under
    those digests too (:func:`_content_duplicates`), so a file written anew each day under a
    new name searches again only the days whose rows differ from a file searched before."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE {DUPLICATE_EVENTS_TABLE} "
                f"(event_id VARCHAR, ts TIMESTAMP)")
    if "telemetry" not in present:
        return
    types = describe_source(con, "telemetry")
    if not {"event_id", "created_at", *DUPLICATE_EVENT_KEY} <= set(types):
        return
    # (the telemetry's units, listed once, by validation when it ran: each listing checksums
    # every file's footer)
    units = ((list(units) if units is not None else list_units(Path(path), "parquet", "telemetry"))
             if use_cache and kind == "parquet" and path is not None and cache_dir() is not None
             else [])
    cached = duplicate_events_cache_file(path, kind, units or None) if use_cache else None
    if cached is not None and cached.is_file():
        try:
            # (their times too: the export's extent takes them off validation's day counts)
            con.execute(f"INSERT INTO {DUPLICATE_EVENTS_TABLE} (event_id, ts) "
                        f"SELECT event_id, ts FROM read_parquet({sql_string(str(cached))})")
            return
        except duckdb.Error:  # a damaged cache file: compute again
            con.execute(f"DELETE FROM {DUPLICATE_EVENTS_TABLE}")
    by_day = (_content_duplicates(contents) if cached is not None and kind == "duckdb"
              and contents else None)
    if by_day is not None and by_day[0].is_file():  # the same rows, searched in another file
        try:
            con.execute(f"INSERT INTO {DUPLICATE_EVENTS_TABLE} (event_id, ts) "
                        f"SELECT event_id, ts FROM read_parquet({sql_string(str(by_day[0]))})")
        except duckdb.Error:
            con.execute(f"DELETE FROM {DUPLICATE_EVENTS_TABLE}")
        else:
            _save_duplicates(con, cached)
            return
    ts = _canonical_expr("created_at", "TIMESTAMP", types["created_at"]).rsplit(" AS ", 1)[0]
    index = _duplicates_index_file(path) if cached is not None and kind == "parquet" else None
    row_id = _row_id(con, "telemetry")
    try:
        spans = _update_duplicates(con, index, units, ts) if index is not None else None
        done = spans is not None or (by_day is not None and contents is not None and
                                     _update_duplicates_by_day(con, by_day[1], contents, ts, row_id))
        if not done:
            con.execute(f"DELETE FROM {DUPLICATE_EVENTS_TABLE}")
            search = duplicate_events_select("duckdb", ts, with_ts=True, row_id=row_id)
            con.execute(f"INSERT INTO {DUPLICATE_EVENTS_TABLE} {search}")
            spans = _unit_spans(con, units, ts) if index is not None else None
    except duckdb.Error:  # unreadable telemetry: validation says so; count every row
        con.execute(f"DELETE FROM {DUPLICATE_EVENTS_TABLE}")
        return
    if cached is not None:
        _save_duplicates(con, cached)
        if index is not None and spans is not None:
            _save_duplicates_index(index, cached, units, spans)
        if by_day is not None and contents is not None:
            _save_duplicates(con, by_day[0])
            _save_content_index(by_day[1], by_day[0], contents)


def _row_id(con: duckdb.DuckDBPyConnection, table: str) -> str | None:
    """``rowid`` when ``src.<table>`` is a stored table (a DuckDB file's), else None (a view
    over Parquet files has no row ids)."""
    row = con.execute("SELECT table_type FROM information_schema.tables WHERE table_catalog = "
                      "'src' AND table_schema = 'main' AND table_name = ?", [table]).fetchone()
    return "rowid" if row is not None and row[0] == "BASE TABLE" else None


def _duplicates_index_file(path: str | Path | None) -> Path | None:
    """The record of the last search of repeated events in the export at ``path``: the cached
    result's file and, per telemetry file, its checksum and time span."""
    root = cache_dir()
    if root is None or path is None:
        return None
    return root / "duplicates" / f"latest-{path_key(path)}.json"


def _unit_spans(con: duckdb.DuckDBPyConnection, units: Sequence[Any], ts: str
                ) -> dict[str, tuple[str | None, str | None]]:
    """The first and last ``ts`` of each unit (ISO text; None for a unit with no timed row)."""
    files = [f for u in units for f in u.files]
    if not files:
        return {}
    rows = con.execute(f"SELECT {FILE_COLUMN}, min({ts}), max({ts}) FROM {files_source(files)} "
                       f"GROUP BY 1").fetchall()
    by_file = {local_path(f): u.name for u in units for f in u.files}
    spans: dict[str, tuple[str | None, str | None]] = {u.name: (None, None) for u in units}
    for file, first, last in rows:
        spans[by_file.get(local_path(file), str(file))] = (
            None if first is None else first.isoformat(), None if last is None else last.isoformat())
    return spans


def _update_duplicates(con: duckdb.DuckDBPyConnection, index: Path, units: Sequence[Any],
                       ts: str) -> dict[str, tuple[str | None, str | None]] | None:
    """Fill ``telemetry_duplicates`` from the last search's result and a search of only the
    span the changed telemetry files cover (their old and new rows), or return None when the
    last search cannot be used (none recorded, another contract, most files changed).

    A row repeats an event when the latest earlier row of its key is at most ``s`` =
    ``DUPLICATE_EVENT_SECONDS`` older. With ``[lo, hi]`` the span of every changed row, old or
    new, only rows in ``[lo, hi + s]`` can change status; their predecessors that matter lie
    in ``[lo - s, hi + s]``, so that is all that is read again. Returns every unit's span."""
    try:
        doc = json.loads(index.read_text(encoding="utf-8"))
        previous = index.parent / str(doc["file"])
        old: dict[str, list[Any]] = dict(doc["units"])
        if doc.get("checks") != checks_digest() or not previous.is_file():
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    changed = [u for u in units if (old.get(u.name) or [None])[0] != u.checksum]
    present = {u.name for u in units}
    removed = [n for n in old if n not in present]
    if (not changed and not removed) or 2 * len(changed) > len(units):
        return None
    new_spans = _unit_spans(con, changed, ts)
    bounds = [tuple(old[n][1:3]) for n in [*removed, *(u.name for u in changed if u.name in old)]]
    bounds += list(new_spans.values())
    firsts = [pd.Timestamp(f) for f, _ in bounds if f is not None]
    lasts = [pd.Timestamp(t) for _, t in bounds if t is not None]
    try:
        _search_span(con, previous, min(firsts) if firsts else None,
                     max(lasts) if lasts else None, ts)
    except duckdb.Error:  # a cache file without times (an older one): search anew
        con.execute(f"DELETE FROM {DUPLICATE_EVENTS_TABLE}")
        return None
    again = {u.name for u in changed}
    spans = {u.name: (old[u.name][1], old[u.name][2]) for u in units if u.name not in again}
    spans.update(new_spans)
    return spans


def _search_span(con: duckdb.DuckDBPyConnection, previous: Path, lo: pd.Timestamp | None,
                 hi: pd.Timestamp | None, ts: str, row_id: str | None = None) -> None:
    """Fill ``telemetry_duplicates`` from ``previous`` (an earlier search's result) outside the
    span ``[lo, hi + s]`` and from a search of ``[lo - s, hi + s]`` inside it, ``s`` =
    ``DUPLICATE_EVENT_SECONDS``: every row, old or new, that changed lies in ``[lo, hi]``
    (None: none with a time, so no status changes). Raises ``duckdb.Error``."""
    kept = f"SELECT event_id, ts FROM read_parquet({sql_string(str(previous))})"
    if lo is None or hi is None:
        con.execute(f"INSERT INTO {DUPLICATE_EVENTS_TABLE} {kept}")
        return
    s = pd.Timedelta(seconds=DUPLICATE_EVENT_SECONDS)
    span = {"lo": lo.to_pydatetime(), "hi": (hi + s).to_pydatetime()}
    con.execute(f"INSERT INTO {DUPLICATE_EVENTS_TABLE} {kept} WHERE ts < $lo OR ts > $hi", span)
    search = duplicate_events_select("duckdb", ts, with_ts=True, row_id=row_id,
                                     where=f"{ts} >= $lo - $s AND {ts} <= $hi")
    con.execute(f"INSERT INTO {DUPLICATE_EVENTS_TABLE} SELECT event_id, ts FROM "
                f"({search}) WHERE ts >= $lo AND ts <= $hi", {**span, "s": s.to_pytimedelta()})


#: How many searches of DuckDB files' telemetry :func:`_content_duplicates`' index keeps.
KEPT_SEARCHES = 8


def _content_duplicates(contents: Mapping[str, str]) -> tuple[Path, Path] | None:
    """Where the repeated events of telemetry with the day digests ``contents`` are kept (a
    Parquet file named by the digests), and the index of the last searches by day (None:
    caching off)."""
    root = cache_dir()
    if root is None:
        return None
    digest = hashlib.sha256(checks_digest().encode())
    for day, value in sorted(contents.items()):
        digest.update(f"{day}:{value};".encode())
    folder = root / "duplicates"
    return folder / f"content-{digest.hexdigest()[:40]}.parquet", folder / "contents.json"


def _load_content_index(index: Path) -> list[dict[str, Any]]:
    try:
        doc = json.loads(index.read_text(encoding="utf-8"))
        if doc.get("checks") != checks_digest():
            return []
        return [{"file": str(e["file"]), "days": {str(d): str(v) for d, v in e["days"].items()}}
                for e in doc["searches"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []


def _update_duplicates_by_day(con: duckdb.DuckDBPyConnection, index: Path,
                              contents: Mapping[str, str], ts: str, row_id: str | None) -> bool:
    """Fill ``telemetry_duplicates`` from the recorded search (:func:`_content_duplicates`)
    sharing most days with ``contents`` (day -> digest), searching again only the span of the
    days that differ, were added or were removed. False (nothing filled) when no recorded
    search shares a day, or more than half of the days differ."""
    best, shared = None, 0
    for entry in _load_content_index(index):
        n = sum(1 for d, v in contents.items() if entry["days"].get(d) == v)
        if n > shared and (index.parent / entry["file"]).is_file():
            best, shared = entry, n
    if best is None:
        return False
    changed = [d for d, v in contents.items() if best["days"].get(d) != v]
    changed += [d for d in best["days"] if d not in contents]
    if 2 * len([d for d in contents if d in changed]) > len(contents):
        return False
    dated = sorted(dt.date.fromisoformat(d) for d in changed if d != "none")
    lo = pd.Timestamp(dated[0]) if dated else None  # (rows without a time never repeat)
    hi = pd.Timestamp(dated[-1] + dt.timedelta(days=1)) if dated else None
    try:
        _search_span(con, index.parent / best["file"], lo, hi, ts, row_id)
    except duckdb.Error:  # a damaged cache file: search anew
        con.execute(f"DELETE FROM {DUPLICATE_EVENTS_TABLE}")
        return False
    return True


def _save_content_index(index: Path, result: Path, contents: Mapping[str, str]) -> None:
    """Record ``result`` as the newest search by day; the results of searches past the last
    :data:`KEPT_SEARCHES` are deleted (a file written anew each day leaves one a day)."""
    searches = [{"file": result.name, "days": dict(sorted(contents.items()))},
                *(e for e in _load_content_index(index) if e["file"] != result.name)]
    kept = searches[:KEPT_SEARCHES]
    try:
        write_text_atomic(index, json.dumps({"checks": checks_digest(), "searches": kept}))
        for entry in searches[KEPT_SEARCHES:]:
            (index.parent / entry["file"]).unlink(missing_ok=True)
    except OSError:  # the cache is a shortcut only
        pass


def _save_duplicates_index(index: Path, result: Path, units: Sequence[Any],
                           spans: Mapping[str, tuple[str | None, str | None]]) -> None:
    doc = {"checks": checks_digest(), "file": result.name,
           "units": {u.name: [u.checksum, *spans.get(u.name, (None, None))] for u in units}}
    try:
        write_text_atomic(index, json.dumps(doc))
    except OSError:  # the cache is a shortcut only
        pass


def duplicate_events_select(engine: Any, ts: str, *, with_ts: bool = False,
                            where: str = "", row_id: str | None = None) -> str:
    """The SELECT of the repeated telemetry events' ids (see :func:`create_duplicate_events`)
    over ``src.telemetry`` with ``ts`` the SQL of its canonical ``created_at``, for the engine
    of ``engine`` (an export or an engine name); ``with_ts``: their times too; ``where``: a
    condition on the rows searched (a time span); ``row_id`` (DuckDB): SQL naming each row
    (``rowid`` for a table; default a hash of its ``event_id``)."""
    key = variant(engine, "hash64", cols=", ".join(sql_ident(c) for c in DUPLICATE_EVENT_KEY))
    within_us = round(DUPLICATE_EVENT_SECONDS * 1_000_000)
    if engine_of(engine) == "duckdb":
        return _repeats_by_candidates(ts, with_ts, where, row_id or "hash(event_id)", key,
                                      within_us)
    # Partitioning on one 64-bit hash of the key is much cheaper than on four strings; two
    # different keys share a hash with odds of about 1e-5 in 25M rows, and even then merge
    # only if their events fall within the same second.
    return f"""
        SELECT event_id{", ts" if with_ts else ""} FROM (
            SELECT CAST(event_id AS VARCHAR) AS event_id, ts,
                   lag(ts) OVER (PARTITION BY k ORDER BY ts, event_id) AS prev_ts
            FROM (SELECT event_id, {ts} AS ts, {key} AS k FROM src.telemetry
                  {f"WHERE {where}" if where else ""})
        )
        WHERE event_id IS NOT NULL AND prev_ts IS NOT NULL
          AND epoch_us(ts) - epoch_us(prev_ts) <= {within_us}"""


def _repeats_by_candidates(ts: str, with_ts: bool, where: str, row_id: str, key: str,
                           within_us: int) -> str:
    """The DuckDB form of :func:`duplicate_events_select`: the same rows, found without
    sorting every event id.

    The window orders each key's rows by time and ``row_id`` (a number), not by the event id
    (a string carried through the sort of every row cost 40% of the search: 4.6 -> 2.8 s over
    25M events). It keeps the *candidates*: every row whose previous row of its key is at most
    ``DUPLICATE_EVENT_SECONDS`` older (``rep``), and every row whose next one has the same
    time. Only inside such a tie does the order differ from the event ids', and the tie's rows
    are all candidates: the first is ``rep`` or has a tie next, the others are ``rep``. The few
    candidates are then read back by ``row_id`` with their event ids, and each tie is ordered
    by event id (NULL last) as the full search does: its first row repeats only when its own
    predecessor is near (then every row of the tie is ``rep``); every later row repeats.
    ``key``: SQL of the key's hash; ``within_us``: the repeat window in microseconds."""
    return f"""
        WITH near AS MATERIALIZED (
            SELECT r, k, us, coalesce(us - p <= {within_us}, false) AS rep FROM (
                SELECT r, k, us, lag(us) OVER w AS p, lead(us) OVER w AS n
                FROM (SELECT {row_id} AS r, epoch_us({ts}) AS us, {key} AS k
                      FROM src.telemetry {f"WHERE {where}" if where else ""})
                WINDOW w AS (PARTITION BY k ORDER BY us, r))
            WHERE us - p <= {within_us} OR n = us
        ),
        found AS (
            -- (one row per stored row: rowid names each; a hash of ids shared by two rows
            -- names both, which only an export that fails validation has)
            SELECT DISTINCT x.r, x.event_id, x.ts, near.k, near.us, near.rep
            FROM (SELECT CAST(event_id AS VARCHAR) AS event_id, {ts} AS ts, {row_id} AS r,
                         {key} AS k
                  FROM src.telemetry
                  WHERE {row_id} IN (SELECT r FROM near) {f"AND {where}" if where else ""}) x
            JOIN near ON x.r = near.r AND x.k = near.k AND epoch_us(x.ts) = near.us
        ),
        ranked AS (
            SELECT event_id, ts, bool_and(rep) OVER tie AS first_repeats,
                   row_number() OVER (PARTITION BY k, us ORDER BY event_id ASC NULLS LAST) AS i
            FROM found WINDOW tie AS (PARTITION BY k, us)
        )
        SELECT event_id{", ts" if with_ts else ""} FROM ranked
        WHERE event_id IS NOT NULL AND (first_repeats OR i > 1)"""


def duplicate_events_cache_file(path: str | Path | None, kind: str | None,
                                units: Sequence[Any] | None = None) -> Path | None:
    """Where the repeated events' ids of the export at ``path`` (``kind``: ``duckdb`` or
    ``parquet``) are kept: a Parquet file in the cache folder named by the checksums of the
    telemetry's units (``units``: those of :func:`~whispers_lab.validation.list_units`, when
    the caller has them already; None: caching off, or no such export)."""
    root = cache_dir()
    if path is None or kind not in ("duckdb", "parquet") or root is None:
        return None
    if units is None:
        units = list_units(Path(path), str(kind), "telemetry")
    digest = hashlib.sha256(checks_digest().encode())
    for unit in units:
        digest.update(f"{unit.name}:{unit.checksum};".encode())
    return root / "duplicates" / f"{digest.hexdigest()[:40]}.parquet"


def _save_duplicates(con: duckdb.DuckDBPyConnection, target: Path) -> None:
    _save_to_cache(con, DUPLICATE_EVENTS_TABLE, target)


def _save_to_cache(con: duckdb.DuckDBPyConnection, relation: str, target: Path,
                   options: str = "") -> None:
    """Write ``relation`` to the Parquet file ``target`` of the cache folder (a temporary file,
    then renamed; ``options``: more of COPY's); never raises: the cache is a shortcut only."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        try:
            # (zstd: half the size of the default's for the same time, docs/scale.md)
            con.execute(f"COPY {relation} TO {sql_string(tmp)} "
                        f"(FORMAT parquet, COMPRESSION zstd{options})")
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except (OSError, duckdb.Error):
        pass


def without_repeated_events(source: str) -> str:
    """``source`` (the raw telemetry table) without the events of
    :data:`DUPLICATE_EVENTS_TABLE`: a FROM clause for either engine.

    An anti join on the event id (``NOT EXISTS``), not ``NOT IN``: the two mean the same here
    (the table holds no NULL id, and a row without an id is kept), but Spark plans ``NOT IN``
    as a nested loop over every pair of rows (its NULL semantics), which took 157 s instead of
    3.6 s for one scan of 25M events against 194 repeats (1M users, docs/scale.md)."""
    return (f"{source} AS _ev WHERE NOT EXISTS (SELECT 1 FROM {DUPLICATE_EVENTS_TABLE} AS _rep "
            f"WHERE _rep.event_id = CAST(_ev.event_id AS VARCHAR))")


def create_canonical_views(con: duckdb.DuckDBPyConnection, present: Sequence[str]) -> None:
    """One view per contract table in ``main``: contract columns only, canonical types, UTC.
    The ``telemetry`` view leaves out repeated events (:func:`create_duplicate_events`)."""
    for t in TABLES:
        if t.name in present:
            types = describe_source(con, t.name)
            cols = ", ".join(_canonical_expr(c.name, c.type, types.get(c.name, "")) for c in t.columns)
            source = f"src.{sql_ident(t.name)}"
            if t.name == "telemetry" and _has_rows(con, DUPLICATE_EVENTS_TABLE):
                source = without_repeated_events(source)
            con.execute(f"CREATE OR REPLACE VIEW main.{sql_ident(t.name)} AS "
                        f"SELECT {cols} FROM {source}")
        else:
            con.execute(f"CREATE OR REPLACE VIEW main.{sql_ident(t.name)} AS {empty_select(t)}")


def _has_rows(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    try:
        return con.execute(f"SELECT count(*) > 0 FROM {table}").fetchone()[0]
    except duckdb.Error:
        return False


def empty_select(table: Table) -> str:
    duck = {"VARCHAR": "VARCHAR", "TIMESTAMP": "TIMESTAMP", "BOOLEAN": "BOOLEAN",
            "INTEGER": "BIGINT", "DOUBLE": "DOUBLE"}
    cols = ", ".join(f"CAST(NULL AS {duck[c.type]}) AS {sql_ident(c.name)}" for c in table.columns)
    return f"SELECT {cols} WHERE false"


def open_export(path: str | Path, *, validate: bool = True, threads: int | None = None,
                use_cache: bool = True, engine: str | None = None,
                spark_master: str | None = None,
                attached: tuple[duckdb.DuckDBPyConnection, str, list[str]] | None = None,
                copy_small_tables: bool = True, profile_ids: bool = False) -> Any:
    """Open an export read-only; validate it (raising ``ExportValidationError``) unless told
    not to. Validation re-checks only what changed since the last validation of this export
    (see :mod:`whispers_lab.validation`); ``use_cache=False`` checks everything.

    ``engine``: ``duckdb`` (an :class:`Export`) or ``spark`` (a
    :class:`whispers_lab.spark.SparkExport`, with ``spark_master``); None:
    :func:`whispers_lab.engine.default_engine` (``$WHISPERS_LAB_ENGINE``, set by ``--engine``).

    ``attached``: what :func:`attach` returned for ``path`` (the report run attaches the export
    before its kernel starts, to fail fast), used instead of attaching it again; the export
    owns it from here (closed with it, or at once if opening fails). ``copy_small_tables``:
    see :func:`attach` (False for an opening that runs only a few queries). ``profile_ids``
    (a report run, whose privacy scan follows): the validation keeps the id profile of each
    Parquet file it reads (:mod:`whispers_lab.id_profiles`)."""
    name = engine or default_engine()
    prune_cache()  # (at most once a day: a file's age against the limit)
    if attached is not None and name != "duckdb":
        attached[0].close()
        attached = None
    if name == "spark":
        from .spark import open_spark_export

        return open_spark_export(path, validate=validate, master=spark_master,
                                 use_cache=use_cache)
    if name != "duckdb":
        raise ExportError(f"unknown engine {name!r} (known: duckdb, spark)")
    con, kind, found = (attached if attached is not None else
                        attach(path, threads=threads, copy_small_tables=copy_small_tables))
    try:
        result = None
        if validate:
            # validation first: a DuckDB file's day digests let the search of repeated events
            # reuse an earlier search of the same days, and its notice is added after
            result = validate_attached(con, found, source=str(path), path=path, kind=kind,
                                       use_cache=use_cache, profile_ids=profile_ids)
        create_duplicate_events(con, found, path=path, kind=kind, use_cache=use_cache,
                                contents=None if result is None
                                else result.contents.get("telemetry"),
                                units=None if result is None else result.units.get("telemetry"))
        if result is not None:
            notice = duplicate_events_notice(con)
            if notice is not None:
                result.notices.insert(0, notice)
        create_canonical_views(con, found)
    except BaseException:
        con.close()
        raise
    return Export(Path(path), kind, con, found, result)


# ---------------------------------------------------------------------------------------
# writing (simulator, tests): always to a temporary path first, then renamed into place


def write_export(tables: Mapping[str, Any], path: str | Path, *, parquet: bool | None = None) -> Path:
    """Write tables (DataFrames or Arrow tables) as one export, atomically.

    A path ending in ``/`` (or ``parquet=True``) gives a folder of ``<table>.parquet`` files;
    anything else one DuckDB file. The export appears complete or not at all.
    """
    p = Path(path)
    as_parquet = parquet if parquet is not None else str(path).endswith(("/", os.sep))
    p.parent.mkdir(parents=True, exist_ok=True)
    con = connect()
    try:
        if as_parquet:
            _write_parquet_folder(con, tables, p, partition_by_date=False)
        else:
            fd, tmp_name = tempfile.mkstemp(prefix=f".{p.name}.tmp-", dir=p.parent)
            os.close(fd)
            os.unlink(tmp_name)  # DuckDB creates the file itself
            try:
                con.execute(f"ATTACH {sql_string(tmp_name)} AS out")
                for name, frame in tables.items():
                    con.register("__frame", frame)
                    con.execute(f"CREATE TABLE out.{sql_ident(name)} AS SELECT * FROM __frame")
                    con.unregister("__frame")
                con.execute("DETACH out")
                os.replace(tmp_name, p)
            except BaseException:
                for leftover in (tmp_name, tmp_name + ".wal"):
                    if os.path.exists(leftover):
                        os.unlink(leftover)
                raise
    finally:
        con.close()
    return p


def write_partitioned_export(tables: Mapping[str, Any], folder: str | Path) -> Path:
    """Write a Parquet export with every timed table partitioned by UTC date
    (``<table>/date=YYYY-MM-DD/*.parquet``, Hive style), atomically.

    This is the layout for exports too large for one file: :func:`open_export` reads it with
    DuckDB's Hive partitioning, and queries that filter on time read only what they need.
    Tables without a time column (``ranking_candidates``) are written as one file.
    """
    target = Path(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    con = connect()
    try:
        _write_parquet_folder(con, tables, target, partition_by_date=True)
    finally:
        con.close()
    return target


def _write_parquet_folder(con: duckdb.DuckDBPyConnection, tables: Mapping[str, Any], target: Path,
                          *, partition_by_date: bool) -> None:
    """Build the folder beside ``target`` and swap it in; remove it on any error."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        for name, frame in tables.items():
            con.register("__frame", frame)
            time_col = CONTRACT[name].time_column if name in CONTRACT else None
            if partition_by_date and time_col:
                out = sql_string(str(tmp / name))
                con.execute(f"COPY (SELECT *, CAST({sql_ident(time_col)} AS DATE) AS date FROM __frame) "
                            f"TO {out} (FORMAT parquet, PARTITION_BY (date))")
            else:
                out = sql_string(str(tmp / f"{name}.parquet"))
                con.execute(f"COPY (SELECT * FROM __frame) TO {out} (FORMAT parquet)")
            con.unregister("__frame")
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def to_parquet_folder(source: str | Path, folder: str | Path, *, partition_by_day: bool = False,
                      partition_column: str = "day") -> Path:
    """Copy a DuckDB export file to a Parquet export folder (what Spark reads), atomically.

    One ``<table>.parquet`` per table; with ``partition_by_day`` every timed table is written
    Hive-style by the UTC date of its time column
    (``<table>/<partition_column>=YYYY-MM-DD/part-0.parquet``), as a data lake holds it. The
    tables are copied as stored (a broken export stays broken: validation judges the copy).
    """
    src = Path(source)
    target = Path(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    con, _, found = attach(src)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        for name in found:
            time_col = CONTRACT[name].time_column
            types = describe_source(con, name)
            source_sql = f"src.{sql_ident(name)}"
            if partition_by_day and time_col in types and _base(types[time_col]).startswith("TIMESTAMP"):
                part = sql_ident(partition_column)
                out = sql_string(str(tmp / name))
                con.execute(f"COPY (SELECT *, CAST({sql_ident(time_col)} AS DATE) AS {part} "
                            f"FROM {source_sql}) TO {out} (FORMAT parquet, PARTITION_BY "
                            f"({part}), FILENAME_PATTERN 'part-{{i}}')")
            else:
                out = sql_string(str(tmp / f"{name}.parquet"))
                con.execute(f"COPY (SELECT * FROM {source_sql}) TO {out} (FORMAT parquet)")
        replace_dir(tmp, target)
    except duckdb.Error as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ExportError(f"export {str(src)!r} cannot be copied to Parquet: {_first_line(exc)}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        con.close()
    return target


def _base(physical: str) -> str:
    return physical.split("(")[0].strip().upper()
