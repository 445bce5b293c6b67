"""The validation's screen (``validation._screen``): from a column's minimum, maximum and
count, it must flag a rule exactly when the per-row count of broken rows is positive, for
every rule of every contract column it screens, on values at and around each bound, NaN,
the infinities and NULL, in each physical type the contract accepts."""

from __future__ import annotations

import itertools
import math

import duckdb
import numpy as np
import pytest

from whispers_lab.contract import CONTRACT
from whispers_lab.validation import _column_checks, _screen

from factories import record_queries

SCREENED = [(table.name, column, rule, predicate)
            for table in CONTRACT.values() for column in table.columns
            for rule, predicate, _ in _column_checks(column)
            if _screen(column, rule, "v") is not None]


def _edges(column) -> list[float | None]:
    values: list[float | None] = [None, 0.0, 1.0, 7.0, -1.0, 1e9, -1e9]
    for bound in (column.minimum, column.maximum):
        if bound is not None:
            values += [bound, bound - 1, bound + 1, bound - 1e-9, bound + 1e-9]
    if column.type == "DOUBLE":
        values += [math.nan, math.inf, -math.inf]
    return values


def test_every_numeric_rule_and_every_null_rule_is_screened() -> None:
    screened = {(t, c.name, r) for t, c, r, _ in SCREENED}
    for table in CONTRACT.values():
        for column in table.columns:
            for rule, _, _ in _column_checks(column):
                wanted = rule == "not_null" or (column.allowed is None
                                                and column.type in ("DOUBLE", "INTEGER"))
                assert ((table.name, column.name, rule) in screened) == wanted, (
                    table.name, column.name, rule)
    assert any(r == "domain" for *_, r, _ in SCREENED)


@pytest.mark.parametrize(("table", "column", "rule", "predicate"), SCREENED,
                         ids=[f"{t}.{c.name}.{r}" for t, c, r, _ in SCREENED])
def test_the_screen_flags_exactly_the_columns_with_a_broken_row(table, column, rule,
                                                                predicate) -> None:
    con = duckdb.connect()
    physical = {"DOUBLE": ["DOUBLE", "FLOAT", "BIGINT", "DECIMAL(18,3)"],
                "INTEGER": ["INTEGER", "BIGINT", "SMALLINT"]}.get(column.type, [None])
    edges = _edges(column)
    rng = np.random.default_rng(len(edges))
    # every single edge value, every pair, and random draws of five among them
    samples = [[e] for e in edges] + [list(p) for p in itertools.combinations(edges, 2)]
    samples += [list(rng.choice(np.array(edges, dtype=object), 5)) for _ in range(60)]
    col = f'"{column.name}"'
    outcomes: set[bool] = set()
    for kind in physical:
        if kind in (None, "DOUBLE", "FLOAT"):
            kept = samples
        else:  # (only the values of that type)
            kept = [v for v in samples if all(x is None or (math.isfinite(x) and x == round(x)
                                                             and abs(x) < 1e8) for x in v)]
        ids = [i for i, values in enumerate(kept) for _ in values]
        flat = [x for values in kept for x in values]
        if kind is None:  # (a not-null rule of a text, time or boolean column)
            con.execute(f"CREATE OR REPLACE TABLE t AS SELECT unnest(?::INTEGER[]) AS sample, "
                        f"unnest(?::VARCHAR[]) AS {col}",
                        [ids, [None if x is None else "x" for x in flat]])
        else:
            con.execute(f"CREATE OR REPLACE TABLE t AS SELECT unnest(?::INTEGER[]) AS sample, "
                        f"CAST(unnest(?::DOUBLE[]) AS {kind}) AS {col}", [ids, flat])
        rows = con.execute(
            f"SELECT sample, count(*) FILTER (WHERE {predicate}), {_screen(column, rule, 'v')} "
            f"FROM (SELECT *, {col} AS v FROM t) GROUP BY sample ORDER BY sample").fetchall()
        assert len(rows) == len(kept)
        for sample, broken, flag in rows:
            assert (flag > 0) == (broken > 0), (table, column.name, rule, kind, kept[sample])
            outcomes.add(broken > 0)
    assert outcomes == {True, False}  # clean samples and broken ones, for every rule


@pytest.mark.parametrize("broken", [False, True], ids=["clean", "one NaN"])
def test_a_clean_table_is_scanned_once_and_a_broken_one_again_for_its_counts(
        small_sim, tmp_path, monkeypatch, broken: bool) -> None:
    """The screen replaces the counts' scan of a clean table; a broken rule gets the exact
    count and an example from a second scan, as without the screen."""
    from whispers_lab import validation
    from whispers_lab.errors import ExportValidationError
    from whispers_lab.export import open_export, write_export

    tables = dict(small_sim.tables)
    if broken:
        import pyarrow as pa

        candidates = tables["ranking_candidates"]
        at = candidates.schema.get_field_index("recency_hours")
        hours = candidates.column(at).to_numpy().copy()
        hours[[3, 5]] = math.nan  # (a float NaN, not a NULL)
        tables["ranking_candidates"] = candidates.set_column(at, "recency_hours", pa.array(hours))
    path = write_export(tables, tmp_path / "export.duckdb")
    monkeypatch.setenv(validation.CACHE_ENV, "")  # (every table checked)
    scans: list[str] = []
    real = validation._scan_rows

    def spy(con, source, where, grouped, inner, selects):
        scans.append(source)
        return real(con, source, where, grouped, inner, selects)

    monkeypatch.setattr(validation, "_scan_rows", spy)
    if broken:
        with pytest.raises(ExportValidationError) as err:
            open_export(path).close()
        (problem,) = err.value.problems
        assert (problem.table, problem.column, problem.rule, problem.rows) == (
            "ranking_candidates", "recency_hours", "domain", 2)
        assert problem.example == "nan"
    else:
        open_export(path).close()
    again = [s for s in set(scans) if scans.count(s) > 1]
    assert again == (['src."ranking_candidates"'] if broken else [])
    assert len(set(scans)) >= 8  # (every table of the export had its scan)


def test_each_table_is_described_once_per_opening(small_sim, tmp_path, monkeypatch) -> None:
    """A table's columns are read from DuckDB once per connection (``describe_source``
    remembers them): describing a view over many Parquet files reads every file's schema. The
    validation and the canonical views ask for each table's; a new opening asks again."""
    from whispers_lab.export import open_export, write_partitioned_export
    from whispers_lab.validation import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, "")
    folder = write_partitioned_export(small_sim.tables, tmp_path / "parts")
    described = record_queries(monkeypatch, lambda query: query.startswith("DESCRIBE src."))
    for opening in (1, 2):
        with open_export(folder) as export:
            assert export.row_count("users") == small_sim.tables["users"].num_rows
        assert len(described) == opening * len(set(described)), described
    assert 'DESCRIBE src."users"' in described
