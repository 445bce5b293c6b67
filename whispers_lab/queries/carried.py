"""Tables one report carries to the next: what an evaluation made from days of telemetry that
the next day's evaluation finds unchanged.

The report of day d reads the telemetry from the pre-period on; the next day's, the same days
and one more. A table made from the days ``[lo, hi)`` is kept in the cache folder
(``carried/``), named by a digest of everything it depends on: those days' content as
validation found it clean (:meth:`whispers_lab.export.Export.day_keys`: a DuckDB file's day
digests, or a Parquet export's files holding each day with their checksums), the repeated
events left out of them, the code's version and the caller's ``parts`` (the plan's start, the
mask's layout...). Equal names mean equal inputs, so a later run that finds the name reads the
table instead of the telemetry of those days, whichever file or path the days come from (a
DuckDB file written anew each day under a new name finds the day before's). A name not found,
or a file that cannot be read, is computed from the telemetry as before: the cache is a
shortcut only. Nothing is carried from an export that was not validated, nor on Spark.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import weakref
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from ..export import Export
from ..sql import sql_string
from ..validation import DUPLICATE_EVENTS_TABLE, cache_dir, checks_digest

#: Part of every name: raised whenever what a carried table holds, or how it is made, changes.
CARRY_VERSION = 1
#: Carried tables kept per kind (the newest by time of writing; the others are deleted).
KEPT = 8
#: Per export, the statement (and its parameters) that made each table for a given purpose
#: (:func:`made_before`).
_STATEMENTS: weakref.WeakKeyDictionary[Any, dict[Hashable, tuple[str, Any]]] = (
    weakref.WeakKeyDictionary())
#: Per export that defers (:func:`defer`), the tables held back: the relation written (None:
#: a frame of its own), what the relations it reads held then, and the writer.
_DEFERRED: weakref.WeakKeyDictionary[Any, list[tuple[str | None, Any, Callable[[], None]]]] = (
    weakref.WeakKeyDictionary())
#: The exports nothing is carried from any more (:func:`flush` with ``write=False``).
_DROPPED: weakref.WeakSet[Any] = weakref.WeakSet()


def made_before(export: Export, purpose: Hashable) -> tuple[str, Any] | None:
    """The statement and parameters that made a table for ``purpose`` (the table and its
    bounds) from ``export`` before, if any: to be run again as it is, so that a memoizing
    export (:meth:`~whispers_lab.export.Export.memoize`) skips it and everything computed from
    the table, rather than making the same table another way once a carried file exists (the
    summary's evaluation after the day's: 2.4 s more of a 1M-user report otherwise)."""
    return _STATEMENTS.get(export, {}).get(purpose)


def remember(export: Export, purpose: Hashable, statement: str, params: Any) -> None:
    """Record what made the table for ``purpose`` (:func:`made_before`)."""
    _STATEMENTS.setdefault(export, {})[purpose] = (statement, params)


def content_key(export: Export, kind: str, parts: Hashable, lo: dt.datetime,
                hi: dt.datetime, tables: Sequence[str] = ("telemetry",)) -> str | None:
    """The name of ``kind``'s table made from ``tables`` (default the telemetry) over the
    whole days ``[lo, hi)`` with ``parts``, or None when nothing can be carried: caching off,
    another engine, an export not validated, or bounds that are not midnights. The
    telemetry's repeated events left out of those days are part of it when it is read."""
    root = cache_dir()
    keyed = {t: export.day_keys(t) if export.engine == "duckdb" else None for t in tables}
    if root is None or any(days is None for days in keyed.values()):
        return None
    if pd.Timestamp(lo) != pd.Timestamp(lo).normalize() or \
            pd.Timestamp(hi) != pd.Timestamp(hi).normalize():
        return None
    h = hashlib.sha256(f"{CARRY_VERSION}:{checks_digest()}:{kind}:{export.kind}:"
                       f"{parts!r}".encode())
    if tuple(tables) != ("telemetry",):  # (the telemetry's names stay what they were)
        h.update(f"tables={','.join(tables)};".encode())
    for days in keyed.values():  # (in the order of ``tables``, named above)
        day = lo.date()
        while day < hi.date():
            h.update(f"{day.isoformat()}={days.get(day.isoformat(), '-')};".encode())
            day += dt.timedelta(days=1)
    if "telemetry" in tables:
        try:  # the repeated events left out of the telemetry view on those days
            repeats = export.con.execute(
                f"SELECT count(*), coalesce(bit_xor(hash(event_id, ts)), 0) "
                f"FROM {DUPLICATE_EVENTS_TABLE} WHERE ts >= ? AND ts < ?", [lo, hi]).fetchall()[0]
        except duckdb.Error:
            return None
        h.update(f"repeats={repeats[0]}:{repeats[1]}".encode())
    return f"{kind}-{h.hexdigest()[:40]}"


def own_and_day_befores(export: Export, kind: str, parts: Hashable, lo: dt.datetime,
                        until: dt.datetime, tables: Sequence[str] = ("telemetry",)
                        ) -> dict[pd.Timestamp, str | None]:
    """The names (:func:`content_key`) of ``kind``'s table over ``[lo, until)`` (what a
    report keeps and finds again when made again) and over ``[lo, until - 1 day)`` (what the
    day before's report kept), by their end, of those that hold a day; none when ``lo`` is
    not a midnight."""
    start = pd.Timestamp(lo)
    if start != start.normalize():
        return {}
    ends = (pd.Timestamp(until), pd.Timestamp(until) - pd.Timedelta(days=1))
    return {end: content_key(export, kind, parts, start.to_pydatetime(), end.to_pydatetime(),
                             tables) for end in ends if end > start}


def carried_file(key: str) -> Path | None:
    """The file of the carried table named ``key`` (None: caching off)."""
    root = cache_dir()
    return None if root is None else root / "carried" / f"{key}.parquet"


def source(key: str | None) -> str | None:
    """SQL reading the carried table named ``key``, None when there is none."""
    path = carried_file(key) if key is not None else None
    return f"read_parquet({sql_string(str(path))})" if path is not None and path.is_file() \
        else None


def defer(export: Export) -> bool:
    """Hold ``export``'s carried tables back from now on, until :func:`flush`: the report run
    writes them once the day's evaluation is handed to the notebook, while the kernel draws it,
    rather than in the evaluation (0.3-0.5 s of a 1M-user report's critical path), and not at
    all on the rollout's last day. Only for an export that tracks what its relations hold
    (memoizing), so that a table made again meanwhile is not written; returns whether the
    tables are held back."""
    read = getattr(export, "relations_read", None)  # (none on Spark: nothing is carried)
    if read is None or read("") is None:
        return False
    _DEFERRED[export] = []
    return True


def flush(export: Export, *, write: bool = True) -> int:
    """Stop holding ``export``'s carried tables back (:func:`defer`) and write those held
    (``write``; False: drop them, and every table carried from ``export`` later: nothing is
    carried from it). A table whose relations were made again since it was held back is
    dropped too: what the cache keeps is a shortcut only. Returns how many were written."""
    held = _DEFERRED.pop(export, [])
    if not write:
        _DROPPED.add(export)
    written = 0
    for relation, read, writer in held if write else ():
        if relation is None or export.relations_read(relation) == read:
            writer()
            written += 1
    return written


def keep(export: Export, relation: str, key: str | None) -> None:
    """Carry ``relation`` under ``key`` (None: nothing), keeping the :data:`KEPT` newest of its
    kind; held back while the export defers (:func:`defer`)."""
    if not _held(export, relation, lambda: _keep_now(export, relation, key)):
        _keep_now(export, relation, key)


def _held(export: Export, relation: str | None, writer: Callable[[], None]) -> bool:
    """Whether a table is not to be written now: nothing is carried from ``export`` any more,
    or it defers and ``writer`` is held back (with what ``relation``, if any, reads now)."""
    if export in _DROPPED:
        return True
    held = _DEFERRED.get(export)
    if held is None:
        return False
    held.append((relation, None if relation is None else export.relations_read(relation),
                 writer))
    return True


def _keep_now(export: Export, relation: str, key: str | None) -> None:
    path = carried_file(key) if key is not None else None
    if path is None:
        return
    export.keep_in_cache(relation, path)
    kind = key.rsplit("-", 1)[0]
    try:
        older = sorted(path.parent.glob(f"{kind}-*.parquet"), key=lambda f: f.stat().st_mtime,
                       reverse=True)[KEPT:]
    except OSError:
        return
    for file in older:
        file.unlink(missing_ok=True)


def read_frame(export: Export, key: str | None) -> pd.DataFrame | None:
    """The small table carried under ``key`` as a DataFrame (None: none, or unreadable)."""
    found = source(key)
    if found is None:
        return None
    try:
        return export.con.execute(f"SELECT * FROM {found}").df()
    except duckdb.Error:
        return None


def keep_frame(export: Export, frame: pd.DataFrame, key: str | None) -> None:
    """Carry the small DataFrame ``frame`` under ``key`` (see :func:`keep`)."""
    held = frame.copy()  # (the caller's may change before a held-back write)
    if not _held(export, None, lambda: _keep_frame_now(export, held, key)):
        _keep_frame_now(export, frame, key)


def _keep_frame_now(export: Export, frame: pd.DataFrame, key: str | None) -> None:
    if key is None or carried_file(key) is None:
        return
    name = f"wl_carried_{key.rsplit('-', 1)[1][:12]}"
    export.con.register(name, frame)
    try:
        _keep_now(export, f"(SELECT * FROM {name})", key)
    finally:
        export.con.unregister(name)


def bound(statement: str, params: Mapping[str, Any]) -> dict[str, Any] | None:
    """The parameters of ``params`` that ``statement`` names (DuckDB refuses others)."""
    return {k: v for k, v in params.items() if f"${k}" in statement} or None


def create(export: Export, table: str, purpose: Hashable | None,
           ways: Sequence[tuple[str, Mapping[str, Any] | None]], *, ordered: bool = True) -> int:
    """Create the temporary ``table`` the first way that runs: the statement that made it for
    ``purpose`` before (:func:`made_before`; None: none is looked up or recorded), else each of
    ``ways`` (a query and its parameters) in turn: those reading carried files first, the
    telemetry's last, so that a carried file that cannot be read (deleted or damaged since)
    falls through to the next. Returns the index in ``ways`` of the way taken, -1 for the
    statement made before. Raises what the last way raises."""
    again = made_before(export, purpose) if purpose is not None else None
    tries = ([again] if again is not None else []) + list(ways)
    for i, (statement, params) in enumerate(tries):
        try:
            export.sql(f"CREATE OR REPLACE TEMP TABLE {table} AS {statement}", params,
                       ordered=ordered)
        except duckdb.Error:
            if i == len(tries) - 1:
                raise
            continue
        if purpose is not None:
            remember(export, purpose, statement, params)
        return i - (again is not None)
    raise AssertionError("unreachable: the last way raises")  # pragma: no cover
