"""An export opened on Spark: the same tables, views and queries as :class:`whispers_lab.export.Export`.

:func:`open_spark_export` reads a Parquet export folder (``<table>.parquet`` or
``<table>/**/*.parquet``, day-partitioned or not: the layout :func:`whispers_lab.export.attach`
reads) as one temporary view per contract table (``src__<table>``, what DuckDB calls
``src.<table>``), validates it with the contract checks of :mod:`whispers_lab.validation`
(through :class:`SparkExport.execute`, the DB-API subset those checks use), leaves repeated
telemetry events out as DuckDB does, and defines the canonical views (contract columns,
canonical types, naive UTC timestamps). A DuckDB export file is first copied to a Parquet
folder (:func:`whispers_lab.export.to_parquet_folder`), since Spark cannot read it: once per
version of the file, in the cache folder (``spark/``), or to a temporary folder when caching is
off.

Every query is the DuckDB text of :mod:`whispers_lab.queries`, rewritten by
:func:`whispers_lab.engine.to_spark`. ``CREATE ... TEMP TABLE x AS SELECT`` (the
``materialize_*`` functions) becomes a cached temporary view. Results reach the driver through
Arrow as pandas frames; :attr:`SparkExport.largest_result` records the most rows any query
brought back (the evaluation's aggregates are small; docs/scale.md states the bound).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sqlglot import exp

from .atomic import atomic_path
from .contract import CONTRACT, TABLES
from .engine import EngineError, parse_duckdb, spark_session, spark_source_view, to_spark
from .errors import ExportError
from .validation import DUPLICATE_EVENTS_TABLE, ValidationResult, validate_attached

#: Spark type name -> the DuckDB type name validation compares with the contract.
_DUCK_TYPES: dict[str, str] = {
    "string": "VARCHAR", "varchar": "VARCHAR", "char": "VARCHAR", "bigint": "BIGINT",
    "int": "INTEGER", "smallint": "SMALLINT", "tinyint": "TINYINT", "double": "DOUBLE",
    "float": "FLOAT", "boolean": "BOOLEAN", "timestamp": "TIMESTAMP WITH TIME ZONE",
    "timestamp_ntz": "TIMESTAMP", "date": "DATE", "binary": "BLOB", "decimal": "DECIMAL",
    "void": "NULL",
}
_CANONICAL: dict[str, str] = {"VARCHAR": "VARCHAR", "TIMESTAMP": "TIMESTAMP", "BOOLEAN": "BOOLEAN",
                              "INTEGER": "BIGINT", "DOUBLE": "DOUBLE"}


#: Canonical tables kept in Spark's cache once read: the small ones, which an evaluation reads
#: many times (``users`` above all: a lake partitions it by signup day, some 700 folders to
#: list and open per query). The event tables are read in day windows straight from Parquet.
CACHED_TABLES = frozenset({"users", "exposures", "flag_changes", "feedback", "support_tickets",
                           "db_metrics"})


def duck_type(spark_type: str) -> str:
    """The DuckDB name of a Spark SQL type (``decimal(10,2)`` -> ``DECIMAL(10,2)``)."""
    base = spark_type.split("(")[0].strip().lower()
    name = _DUCK_TYPES.get(base)
    if name is None:
        return spark_type.upper()
    return name + spark_type[len(base):].upper() if base == "decimal" else name


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


class SparkExport:
    """An export opened on Spark. Same query interface as :class:`whispers_lab.export.Export`.

    Its views are temporary views of the Spark session: open one SparkExport per session at a
    time (a second one replaces the views, and closing either drops them)."""

    engine = "spark"

    def __init__(self, path: Path, kind: str, spark: Any, present: Sequence[str],
                 parquet_dir: Path, scratch: Path | None = None) -> None:
        self.path = path
        self.kind = kind
        self.spark = spark
        self.present = tuple(present)
        self.parquet_dir = parquet_dir
        self.validation: ValidationResult | None = None
        #: most rows any one query returned to the driver, and that query's first line
        self.largest_result: tuple[int, str] = (0, "")
        #: every frame that reached the driver, in order: (query head, rows, seconds)
        self.results: list[tuple[str, int, float]] = []
        self._scratch = scratch
        #: per table, columns stored with Parquet's Null logical type (an all-NULL column
        #: DuckDB wrote without a type; Spark reads it as int, DuckDB as NULL)
        self._null_columns: dict[str, set[str]] = {}
        self._views: set[str] = set()
        self._file_views = 0
        self.description: list[tuple[str]] | None = None
        self._last: list[tuple[Any, ...]] = []

    # -- queries -----------------------------------------------------------------------
    def _run(self, query: str, params: Mapping[str, Any] | Sequence[Any] | None) -> Any | None:
        """Run one DuckDB statement on Spark; the Spark DataFrame of a SELECT, None otherwise."""
        if params is not None and not isinstance(params, Mapping):
            raise EngineError("Spark queries take named ($name) parameters only")
        tree = parse_duckdb(query)
        if isinstance(tree, exp.Create) and str(tree.args.get("kind", "")).upper() == "TABLE":
            name = tree.this.name if isinstance(tree.this, exp.Table) else str(tree.this)
            self._materialize(name, to_spark(tree.expression, params))
            return None
        if isinstance(tree, exp.Delete):
            # DELETE FROM t (all rows) of a temp table: an empty table of the same columns
            name = tree.this.name
            if tree.args.get("where") is not None:
                raise EngineError(f"DELETE with a WHERE clause is not supported on Spark ({name})")
            self._materialize(name, f"SELECT * FROM {name} WHERE false")
            return None
        try:
            return self.spark.sql(to_spark(tree, params))
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(f"Spark cannot run the query ({_head(query)}): {_first_line(exc)}") from None

    def _collect(self, frame: Any, query: str, started: float) -> pd.DataFrame:
        try:
            table = frame.toArrow()
        except Exception as exc:
            raise EngineError(f"Spark query failed ({_head(query)}): {_first_line(exc)}") from None
        out = table.to_pandas()
        head = _head(query)
        self.results.append((head, len(out), time.perf_counter() - started))
        if len(out) > self.largest_result[0]:
            self.largest_result = (len(out), head)
        return out

    def memoize(self, on: bool = True) -> None:
        """What :meth:`whispers_lab.export.Export.memoize` asks, kept as Spark keeps it: the
        small tables an evaluation reads again stay in Spark's cache (:data:`CACHED_TABLES`),
        and query results are not remembered (each query runs on the cluster again)."""

    def sql(self, query: str, params: Mapping[str, Any] | None = None, *,
            ordered: bool = True) -> pd.DataFrame:
        """Run a query and return its (small, aggregated) result as a DataFrame. ``ordered``
        is for DuckDB (:meth:`whispers_lab.export.Export.sql`): Spark keeps no row order in a
        table either way."""
        started = time.perf_counter()
        frame = self._run(query, params)
        return pd.DataFrame() if frame is None else self._collect(frame, query, started)

    def scalar(self, query: str, params: Mapping[str, Any] | None = None) -> Any:
        out = self.sql(query, params)
        if out.empty:
            return None
        value = out.iat[0, 0]
        return value.item() if hasattr(value, "item") else value

    # the DB-API subset validation uses (``con.execute(q).fetchall()``, ``con.description``)
    def execute(self, query: str, params: Mapping[str, Any] | None = None) -> SparkExport:
        out = self.sql(query, params)
        self.description = [(str(c),) for c in out.columns]
        self._last = [tuple(None if _isna(v) else v for v in row)
                      for row in out.astype(object).itertuples(index=False, name=None)]
        return self

    def fetchall(self) -> list[tuple[Any, ...]]:
        return list(self._last)

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._last[0] if self._last else None

    def describe(self, table: str) -> dict[str, str]:
        """Column name -> DuckDB type name of the export's raw ``table``."""
        try:
            schema = self.spark.table(spark_source_view(table)).schema
        except Exception as exc:
            raise ExportError(f"table {table!r} cannot be read: {_first_line(exc)}") from None
        untyped = self._null_columns.get(table, set())
        return {f.name: "NULL" if f.name in untyped else duck_type(f.dataType.simpleString())
                for f in schema.fields}

    def register(self, name: str, frame: Any) -> None:
        """Make a DataFrame / Arrow table queryable as ``name`` (cached on the cluster)."""
        table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
        table = table.cast(pa.schema([
            pa.field(f.name, pa.string() if pa.types.is_large_string(f.type)
                     or pa.types.is_string_view(f.type) else f.type) for f in table.schema]))
        self._replace(name, self.spark.createDataFrame(table))

    def unregister(self, name: str) -> None:
        self._drop(name)

    def files_view(self, table: str, files: Sequence[str], unit_column: str) -> str:
        """A temporary view of some Parquet files of ``table`` with the file each row came
        from (a ``file:`` URI) in ``unit_column``: what incremental validation scans."""
        self._file_views += 1
        name = f"{spark_source_view(table)}__files{self._file_views}"
        try:
            frame = self.spark.read.option("mergeSchema", "true").parquet(*files)
            # the column through the frame, not functions.col: in a process that also holds
            # a classic session, functions.col makes a classic Column, which Connect rejects
            frame = frame.select("*", frame["_metadata"]["file_path"].alias(unit_column))
        except Exception as exc:
            raise EngineError(f"table {table!r}: its files cannot be read: "
                              f"{_first_line(exc)}") from None
        self._replace(name, frame, cache=False)
        return name

    def has(self, table: str) -> bool:
        return table in self.present

    def row_count(self, table: str) -> int:
        return int(self.scalar(f'SELECT count(*) FROM "{table}"'))

    def time_range(self, table: str) -> tuple[Any, Any]:
        col = CONTRACT[table].time_column
        if col is None:
            return (None, None)
        out = self.sql(f'SELECT min("{col}") AS lo, max("{col}") AS hi FROM "{table}"')
        lo, hi = out.iat[0, 0], out.iat[0, 1]
        return (None if _isna(lo) else pd.Timestamp(lo).to_pydatetime(),
                None if _isna(hi) else pd.Timestamp(hi).to_pydatetime())

    @property
    def duplicate_events(self) -> int:
        return int(self.scalar(f"SELECT count(*) FROM {DUPLICATE_EVENTS_TABLE}"))

    # -- views -------------------------------------------------------------------------
    def _replace(self, name: str, frame: Any, cache: bool = True) -> None:
        """Make ``frame`` the temporary view ``name`` (cached: lazily, on first use).

        Caching and uncaching go by the view's name, never through a DataFrame kept for later:
        on Spark Connect a DataFrame is its unresolved plan, and unpersisting one whose plan
        reads a view dropped since fails to resolve. Replacing or dropping a temporary view
        uncaches it (Spark does so by itself)."""
        frame.createOrReplaceTempView(name)
        self._views.add(name)
        if cache:
            self.spark.catalog.cacheTable(name)

    def _materialize(self, name: str, spark_sql: str) -> None:
        try:  # (on Spark Connect the query is analysed when the view is made)
            self._replace(name, self.spark.sql(spark_sql))
        except Exception as exc:
            raise EngineError(f"Spark cannot create {name}: {_first_line(exc)}") from None

    def _drop(self, name: str) -> None:
        try:
            self.spark.catalog.dropTempView(name)  # uncaches it too
        except Exception:  # already gone
            pass
        self._views.discard(name)

    def close(self) -> None:
        for name in list(self._views):
            self._drop(name)
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def __enter__(self) -> SparkExport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SparkExport({str(self.path)!r}, kind={self.kind!r}, tables={self.present})"


def _isna(value: Any) -> bool:
    try:
        return value is None or bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _head(query: str) -> str:
    return re.sub(r"\s+", " ", str(query)).strip()[:80]


# ---------------------------------------------------------------------------------------
# opening


def _cached_copy(path: Path) -> Path | None:
    """The Parquet copy of a DuckDB export file for Spark, kept in the cache folder
    (:func:`whispers_lab.validation.cache_dir`, ``spark/``) under a digest of the file's path,
    size, times and inode, so that the runs of one job (coverage check, state, the report's
    kernel) copy it once; the copy of an earlier version of the same path is replaced. None:
    caching is off (the caller copies to a temporary folder)."""
    import hashlib

    from .export import to_parquet_folder
    from .validation import cache_dir, path_key

    root = cache_dir()
    if root is None:
        return None
    st = path.stat()
    where = path_key(path)
    version = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"
                             .encode()).hexdigest()[:16]
    base = root / "spark" / where
    target = base / version
    if not target.is_dir():
        for old in base.glob("*") if base.is_dir() else ():
            shutil.rmtree(old, ignore_errors=True)
        to_parquet_folder(path, target)
    return target


def _table_path(folder: Path, table: str) -> Path | None:
    single = folder / f"{table}.parquet"
    if single.is_file():
        return single
    sub = folder / table
    if sub.is_dir() and any(sub.rglob("*.parquet")):
        return sub
    return None


def _null_typed(source: Path) -> set[str]:
    """Columns whose Parquet type is the Null logical type, in the first file of ``source``."""
    import pyarrow.parquet as pq

    first = source if source.is_file() else next(iter(sorted(source.rglob("*.parquet"))), None)
    if first is None:
        return set()
    try:
        schema = pq.read_schema(first)
    except (OSError, pa.ArrowException):  # unreadable: Spark's read says so
        return set()
    return {f.name for f in schema if pa.types.is_null(f.type)}


def _canonical(name: str, logical: str) -> str:
    return f'CAST("{name}" AS {_CANONICAL[logical]}) AS "{name}"'


def open_spark_export(path: str | Path, *, validate: bool = True, master: str | None = None,
                      spark: Any = None, use_cache: bool = True) -> SparkExport:
    """Open an export on Spark (a Parquet folder; a DuckDB file is copied to Parquet first).

    Validation is incremental as on DuckDB (:mod:`whispers_lab.validation`): each Parquet file
    of the folder read is a unit, and the files unchanged since the last clean validation are
    not read again; the repeated telemetry events found once are read back from the cache
    folder. ``use_cache=False`` checks and searches everything.

    ``spark``: a session to use (tests share one); else :func:`whispers_lab.engine.spark_session`
    with ``master``. Raises :class:`ExportError` for an unreadable export and
    :class:`~whispers_lab.errors.ExportValidationError` listing every contract problem."""
    from .export import is_duckdb_file, to_parquet_folder

    p = Path(path)
    if not p.exists():
        raise ExportError(f"export {str(p)!r} does not exist")
    scratch: Path | None = None
    if p.is_dir():
        kind, folder = "parquet", p
    else:
        if not is_duckdb_file(p):
            raise ExportError(f"export {str(p)!r} is not a DuckDB database file (nor a folder "
                              f"of Parquet files): its header lacks the DuckDB magic bytes")
        kind = "duckdb"
        folder = _cached_copy(p)
        if folder is None:
            scratch = Path(tempfile.mkdtemp(prefix="whispers-spark-"))
            folder = to_parquet_folder(p, scratch / "export")
    session = spark if spark is not None else spark_session(master)
    export = SparkExport(p, kind, session, [], folder, scratch)
    try:
        present = []
        for t in TABLES:
            source = _table_path(folder, t.name)
            if source is None:
                continue
            try:
                frame = (session.read.option("mergeSchema", "true")
                         .option("recursiveFileLookup", "false").parquet(str(source)))
            except Exception as exc:
                raise ExportError(f"export {str(p)!r}: table {t.name!r} cannot be read as "
                                  f"Parquet: {_first_line(exc)}") from None
            export._replace(spark_source_view(t.name), frame, cache=False)
            export._null_columns[t.name] = _null_typed(source)
            present.append(t.name)
        export.present = tuple(present)
        dups = _create_duplicate_events(export, use_cache=use_cache)
        if validate:
            export.validation = validate_attached(export, present, source=str(p), path=folder,
                                                  kind="parquet", use_cache=use_cache)
        _create_canonical_views(export, dups)
    except BaseException:
        export.close()
        raise
    return export


def _create_duplicate_events(export: SparkExport, *, use_cache: bool = True) -> int:
    """``telemetry_duplicates``: the ids of repeated telemetry events, as DuckDB finds them
    (:func:`whispers_lab.export.duplicate_events_select`). Returns how many there are (the
    count that builds the cached table, so the canonical views need not count again).

    The search is a window over all of the telemetry; its result is kept in the cache folder
    under the checksums of the telemetry's files, the same file DuckDB keeps for the same
    folder (:func:`whispers_lab.export.create_duplicate_events`), ids and times as DuckDB
    writes it, and read back when present."""
    from .contract import DUPLICATE_EVENT_KEY
    from .export import duplicate_events_cache_file, duplicate_events_select

    empty = (f"CREATE TEMP TABLE {DUPLICATE_EVENTS_TABLE} AS SELECT CAST(NULL AS VARCHAR) "
             f"AS event_id, CAST(NULL AS TIMESTAMP) AS ts WHERE false")
    if "telemetry" not in export.present:
        export.sql(empty)
        return 0
    types = export.describe("telemetry")
    if not {"event_id", "created_at", *DUPLICATE_EVENT_KEY} <= set(types):
        export.sql(empty)
        return 0
    cached = duplicate_events_cache_file(export.parquet_dir, "parquet") if use_cache else None
    if cached is not None and cached.is_file():
        try:
            ids = pq.read_table(cached, columns=["event_id"]).cast(
                pa.schema([pa.field("event_id", pa.string())]))
        except (OSError, pa.ArrowException):  # a damaged cache file: search again
            pass
        else:
            export._replace(DUPLICATE_EVENTS_TABLE, export.spark.createDataFrame(ids.to_pandas())
                            if ids.num_rows else export.spark.sql(to_spark(
                                "SELECT CAST(NULL AS VARCHAR) AS event_id WHERE false")))
            return ids.num_rows
    try:
        export.sql(f"CREATE TEMP TABLE {DUPLICATE_EVENTS_TABLE} AS "
                   + duplicate_events_select(export, 'CAST(created_at AS TIMESTAMP)',
                                             with_ts=True))
        found = export.duplicate_events
    except EngineError:  # unreadable telemetry: validation says so; count every row
        export.sql(empty)
        return 0
    if cached is not None:
        # the times too: DuckDB's extent takes these rows off validation's day counts
        rows = export.sql(f"SELECT event_id, ts FROM {DUPLICATE_EVENTS_TABLE}")
        table = pa.Table.from_pandas(rows.astype({"event_id": object}), preserve_index=False,
                                     schema=pa.schema([pa.field("event_id", pa.string()),
                                                       pa.field("ts", pa.timestamp("us"))]))
        try:
            with atomic_path(cached) as tmp:
                pq.write_table(table, tmp)
        except (OSError, pa.ArrowException):  # the cache is a shortcut only
            pass
    return found


def _create_canonical_views(export: SparkExport, dups: int) -> None:
    """The contract views (``dups``: how many repeated telemetry events to leave out)."""
    from .export import empty_select, without_repeated_events

    for t in TABLES:
        if t.name in export.present:
            cols = ", ".join(_canonical(c.name, c.type) for c in t.columns)
            source = f"src.{t.name}"
            if t.name == "telemetry" and dups:
                source = without_repeated_events(source)
            query = to_spark(f"SELECT {cols} FROM {source}")
        else:
            query = to_spark(empty_select(t))
        try:
            export._replace(t.name, export.spark.sql(query), cache=t.name in CACHED_TABLES)
        except Exception as exc:
            raise ExportError(f"table {t.name!r} cannot be read on Spark: {_first_line(exc)}") from None


__all__ = ["CACHED_TABLES", "SparkExport", "duck_type", "open_spark_export"]
