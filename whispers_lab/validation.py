"""Checking an attached export against the contract (``whispers_lab.contract``), in SQL.

Every problem is collected before anything is raised: missing tables and columns, incompatible
types, NULLs where forbidden, values out of domain (including NaN and infinity), broken row
rules and duplicate keys. Each problem names the table, the column, what was expected, how many
rows break it and one example. One scan per table checks all column rules together, plus one
GROUP BY per unique key, so a 10-million-row export takes seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import duckdb

from .contract import ACCEPTED_TYPES, CONTRACT, TABLES, Column, Table
from .errors import ExportError, ExportValidationError
from .sql import sql_ident, sql_string

EXAMPLE_CHARS = 60


@dataclass(frozen=True)
class Problem:
    table: str
    column: str | None
    rule: str
    expected: str
    rows: int | None = None
    example: str | None = None

    def __str__(self) -> str:
        where = f"table {self.table!r}" + (f", column {self.column!r}" if self.column else "")
        text = f"{where}: expected {self.expected}"
        if self.rows is not None:
            text += f"; {self.rows:,} row(s) break it"
        if self.example is not None:
            text += f" (e.g. {self.example})"
        return text


def describe_source(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    """Column name -> DuckDB type of ``src.<table>``."""
    try:
        rows = con.execute(f"DESCRIBE src.{sql_ident(table)}").fetchall()
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"table {table!r} cannot be read: {first}") from None
    return {r[0]: r[1] for r in rows}


def _base_type(physical: str) -> str:
    return physical.split("(")[0].strip().strip('"').upper()


def _compatible(column: Column, physical: str) -> bool:
    base = _base_type(physical)
    if base == "NULL":  # an all-NULL column carries no type; the NOT NULL rule judges it
        return True
    return base in ACCEPTED_TYPES[column.type] or physical.upper() in ACCEPTED_TYPES[column.type]


def _example(value: object) -> str:
    text = repr(value) if not isinstance(value, str) else repr(value[:EXAMPLE_CHARS] + ("..." if len(value) > EXAMPLE_CHARS else ""))
    return text


def _column_checks(column: Column) -> list[tuple[str, str, str]]:
    """(rule id, SQL predicate that is TRUE for a bad row, expectation text) of one column."""
    col = sql_ident(column.name)
    checks: list[tuple[str, str, str]] = []
    if not column.nullable:
        checks.append(("not_null", f"{col} IS NULL", f"{column.type} without NULLs"))
    bad_domain: list[str] = []
    if column.type == "DOUBLE":
        bad_domain.append(f"(isnan({col}::DOUBLE) OR isinf({col}::DOUBLE))")
    if column.minimum is not None:
        op = "<=" if column.minimum_exclusive else "<"
        bad_domain.append(f"{col} {op} {column.minimum!r}")
    if column.maximum is not None:
        bad_domain.append(f"{col} > {column.maximum!r}")
    if column.allowed is not None:
        values = ", ".join(sql_string(v) for v in column.allowed)
        bad_domain.append(f"{col} NOT IN ({values})")
    if bad_domain:
        checks.append(("domain", f"{col} IS NOT NULL AND ({' OR '.join(bad_domain)})",
                       f"values {column.domain_text()}"))
    return checks


def _check_values(con: duckdb.DuckDBPyConnection, table: Table, usable: set[str]) -> list[Problem]:
    """All column and row rules of one table in a single scan."""
    parts: list[tuple[str | None, str, str, str]] = []  # (column, rule, predicate, expected)
    for column in table.columns:
        if column.name in usable:
            for rule, predicate, expected in _column_checks(column):
                parts.append((column.name, rule, predicate, expected))
    for rule in table.rules:
        if set(rule.columns) <= usable:
            parts.append((None, rule.id, f"NOT ({rule.predicate})", rule.expected))
    if not parts:
        return []
    selects = []
    for i, (column, _, predicate, _) in enumerate(parts):
        shown = sql_ident(column) if column else "NULL"
        selects.append(f"count(*) FILTER (WHERE {predicate}) AS n{i}")
        selects.append(f"first({shown}) FILTER (WHERE {predicate}) AS e{i}")
    # Row-group statistics answer most predicates without reading the data, so a corrupt data
    # block would pass unseen; hashing every contract column reads (and checksums) all of it.
    everything = ", ".join(sql_ident(c.name) for c in table.columns if c.name in usable)
    selects.append(f"bit_xor(hash({everything})) AS read_all")
    row = con.execute(f"SELECT {', '.join(selects)} FROM src.{sql_ident(table.name)}").fetchone()
    problems = []
    for i, (column, rule, _, expected) in enumerate(parts):
        n = int(row[2 * i])
        if n:
            example = _example(row[2 * i + 1]) if column else None
            if rule == "not_null":
                example = "NULL"
            problems.append(Problem(table.name, column or ",".join(
                next(r for r in table.rules if r.id == rule).columns), rule, expected, n, example))
    return problems


def _check_unique(con: duckdb.DuckDBPyConnection, table: Table, usable: set[str]) -> list[Problem]:
    problems = []
    for key in table.unique:
        if not set(key) <= usable:
            continue
        cols = ", ".join(sql_ident(c) for c in key)
        # Grouping 64-bit hashes is cheaper than grouping strings; equal keys have equal hashes,
        # so when no hash repeats there is no duplicate and the exact pass below is skipped.
        colliding = con.execute(
            f"SELECT count(*) FROM (SELECT hash({cols}) AS h FROM src.{sql_ident(table.name)} "
            f"GROUP BY h HAVING count(*) > 1)").fetchone()[0]
        if not colliding:
            continue
        shown = " || ', ' || ".join(f"coalesce(CAST({sql_ident(c)} AS VARCHAR), 'NULL')" for c in key)
        row = con.execute(
            f"SELECT count(*), coalesce(sum(c), 0), first(k) FROM ("
            f"SELECT {shown} AS k, count(*) AS c FROM src.{sql_ident(table.name)} "
            f"GROUP BY {cols} HAVING count(*) > 1)").fetchone()
        if row[0]:
            label = "(" + ", ".join(key) + ")"
            problems.append(Problem(table.name, ", ".join(key), "unique",
                                    f"unique {label}: {int(row[0]):,} duplicated key(s)",
                                    int(row[1]), _example(row[2])))
    return problems


def check_attached(con: duckdb.DuckDBPyConnection, present: Sequence[str]) -> list[Problem]:
    """Every contract problem of the export attached as ``src`` (empty list when valid)."""
    problems: list[Problem] = []
    for table in TABLES:
        if table.name not in present:
            if table.required:
                problems.append(Problem(table.name, None, "table_missing",
                                        "the table to be present (required by the contract)"))
            continue
        types = describe_source(con, table.name)
        usable: set[str] = set()
        for column in table.columns:
            physical = types.get(column.name)
            if physical is None:
                problems.append(Problem(table.name, column.name, "column_missing",
                                        f"a column of type {column.type}"))
            elif not _compatible(column, physical):
                problems.append(Problem(table.name, column.name, "type",
                                        f"type {column.type} (or compatible), found {physical}"))
            else:
                usable.add(column.name)
        try:
            problems += _check_values(con, table, usable)
            problems += _check_unique(con, table, usable)
        except duckdb.Error as exc:
            problems.append(Problem(table.name, None, "unreadable",
                                    f"readable data, got: {str(exc).strip().splitlines()[0]}"))
    return problems


def validate_attached(con: duckdb.DuckDBPyConnection, present: Sequence[str], source: str) -> None:
    """Raise :class:`ExportValidationError` listing every problem, or return when valid."""
    problems = check_attached(con, present)
    if problems:
        raise ExportValidationError(source, problems)


def summary(export) -> list[dict]:
    """Per table: rows, time column range (for ``whispers-lab validate``)."""
    out = []
    for name in CONTRACT:
        if not export.has(name):
            out.append({"table": name, "present": False, "rows": None, "from": None, "to": None})
            continue
        lo, hi = export.time_range(name)
        out.append({"table": name, "present": True, "rows": export.row_count(name), "from": lo, "to": hi})
    return out
