"""The id columns of the contract and the per-file id profiles kept in the cache folder.

A file's id profile is, per id column, the lengths its ids have and, per length, the smallest
and the largest id (``{column: [[length, smallest, largest], ...]}``). The privacy scan
(:mod:`whispers_lab.report.privacy`) looks a report's words up in those ranges before it reads
any column. A Parquet export's profile is kept per file under the file's checksum, so a new
day's partition is all that is read again; a DuckDB file's, for the columns its statistics do
not bound, per table and day under the day's content digest, so a file written anew each day
has its new day read. A report run's validation, which reads a changed
file anyway, writes the profile of each file it scanned when every id of a column has one
length (:func:`from_extremes`; ``open_export(..., profile_ids=True)``), and the privacy scan
reads the others itself.

This module sits below both, so the two write the same files under the same names.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .atomic import write_text_atomic
from .contract import TABLES

#: Column names whose values identify a person, a device, a request or a memory.
#: ``whisper_id`` in telemetry is a memory id.
ID_COLUMN_NAMES: tuple[str, ...] = ("user_id", "device_id", "request_id", "memory_id", "whisper_id")

#: Every (table, column) of the contract holding such an id.
ID_COLUMNS: tuple[tuple[str, str], ...] = tuple(
    (t.name, c.name) for t in TABLES for c in t.columns if c.name in ID_COLUMN_NAMES
)

#: A file's profile document: per id column, ``[length, smallest, largest]`` rows.
FileProfile = dict[str, list[list[Any]]]


def id_columns_of(table: str) -> list[str]:
    """The id columns of ``table``, in contract order."""
    return [c for t, c in ID_COLUMNS if t == table]


def file_profile_path(root: Path, checks: str, table: str, unit_name: str,
                      unit_checksum: str) -> Path:
    """Where the profile of one unit (a file, :class:`whispers_lab.validation.Unit`) of
    ``table`` is kept under the cache folder ``root``; ``checks``: the contract's digest
    (:func:`whispers_lab.validation.checks_digest`)."""
    name = hashlib.sha256(f"privacy-file-1:{checks}:{table}:{unit_name}:"
                          f"{unit_checksum}".encode()).hexdigest()[:40]
    return root / "privacy" / "files" / f"{name}.json"


def day_profiles_path(root: Path, checks: str, table: str, cols: Sequence[str]) -> Path:
    """Where the profiles of a DuckDB file's ``table`` (its id columns ``cols``) are kept
    under the cache folder ``root``, one per UTC day by the day's content key
    (:meth:`whispers_lab.export.Export.day_keys`, the digest of every value that validation
    found clean): a file written anew each day finds the days it shares with yesterday's
    profiled already. One file per table (a table of users has a day per signup date)."""
    name = hashlib.sha256(f"privacy-days-1:{checks}:{table}:{','.join(sorted(cols))}".encode()
                          ).hexdigest()[:40]
    return root / "privacy" / "days" / f"{name}.json"


#: Days' profiles a table's file keeps besides the current export's (:func:`keep_day_profiles`),
#: at least, for exports validated in turn.
KEPT_DAY_PROFILES = 256


def read_day_profiles(path: Path) -> dict[str, FileProfile]:
    """The days' profiles kept at ``path`` (day key -> profile; none usable: empty)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    days = doc.get("days") if isinstance(doc, dict) else None
    return {str(k): v for k, v in days.items() if isinstance(v, dict)} if isinstance(
        days, dict) else {}


def keep_day_profiles(path: Path, kept: Mapping[str, FileProfile],
                      current: Mapping[str, FileProfile]) -> None:
    """Write the days' profiles of the export just profiled (``current``) to ``path``, after
    as many of the others ``kept`` there as the current ones, and at least
    :data:`KEPT_DAY_PROFILES` (the newest last). A failure to write is ignored."""
    others = [(k, v) for k, v in kept.items() if k not in current]
    room = max(len(current), KEPT_DAY_PROFILES)
    days = dict(others[-room:] if room else []) | dict(current)
    try:
        write_text_atomic(path, json.dumps({"days": days}))
    except OSError:
        pass


def read_file_profile(path: Path, cols: Sequence[str]) -> FileProfile | None:
    """The profile kept at ``path`` when it covers exactly ``cols`` (None: none usable)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and sorted(doc) == sorted(cols) else None


def write_file_profile(path: Path, profile: FileProfile) -> None:
    """Keep ``profile`` at ``path`` (atomically; the cache is only a shortcut, so a failure
    to write is ignored)."""
    try:
        write_text_atomic(path, json.dumps(profile))
    except OSError:
        pass


def from_extremes(parts: Sequence[Mapping[str, Any]]) -> list[list[Any]] | None:
    """One column's profile rows from its extremes in each file of a unit (``parts``: per
    file, ``n`` ids, their shortest and longest length ``short`` / ``long``, their smallest
    and largest value ``lo`` / ``hi``), or None when the ids have several lengths: then only
    a grouping by length gives each length's range. No id at all: no rows."""
    lengths = {int(p[k]) for p in parts if p["n"] for k in ("short", "long")}
    if not lengths:
        return []
    if len(lengths) > 1:
        return None
    lo = min(str(p["lo"]) for p in parts if p["n"])
    hi = max(str(p["hi"]) for p in parts if p["n"])
    return [[lengths.pop(), lo, hi]]
