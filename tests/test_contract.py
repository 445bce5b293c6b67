"""The export contract: a valid export opens; each broken rule gets its own specific message."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from whispers_lab.contract import CONTRACT, REQUIRED_TABLES, contract_markdown
from whispers_lab.errors import ExportError, ExportValidationError
from whispers_lab.export import open_export, write_export

from factories import valid_tables

FORMATS = ["duckdb", "parquet"]


def _write(tables: dict, tmp_path: Path, fmt: str) -> Path:
    target = tmp_path / ("export.duckdb" if fmt == "duckdb" else "export")
    write_export(tables, target, parquet=(fmt == "parquet"))
    return target


def _problems(tables: dict, tmp_path: Path, fmt: str) -> list:
    with pytest.raises(ExportValidationError) as info:
        open_export(_write(tables, tmp_path, fmt))
    return info.value.problems


@pytest.mark.parametrize("fmt", FORMATS)
def test_valid_export_opens_with_canonical_views(tmp_path, fmt):
    with open_export(_write(valid_tables(), tmp_path, fmt)) as export:
        assert set(export.present) == set(CONTRACT)
        assert export.row_count("users") == 3
        # extra columns are dropped from the canonical view
        cols = export.sql("SELECT * FROM users LIMIT 0").columns.tolist()
        assert cols == list(CONTRACT["users"].column_names)


@pytest.mark.parametrize("fmt", FORMATS)
def test_optional_tables_may_be_absent(tmp_path, fmt):
    tables = valid_tables()
    for name in ("feedback", "support_tickets", "db_metrics"):
        del tables[name]
    with open_export(_write(tables, tmp_path, fmt)) as export:
        assert not export.has("feedback")
        assert export.row_count("feedback") == 0  # an empty view, never an error


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("table", REQUIRED_TABLES)
def test_missing_required_table(tmp_path, fmt, table):
    tables = valid_tables()
    del tables[table]
    problems = _problems(tables, tmp_path, fmt)
    assert [(p.table, p.rule) for p in problems] == [(table, "table_missing")]
    assert f"table {table!r}" in str(problems[0])


@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_column_and_wrong_type_reported_together(tmp_path, fmt):
    tables = valid_tables()
    tables["users"] = tables["users"].drop(columns=["engagement_score"])
    tables["api_logs"]["status"] = tables["api_logs"]["status"].astype(str)
    problems = _problems(tables, tmp_path, fmt)
    found = {(p.table, p.column, p.rule) for p in problems}
    assert ("users", "engagement_score", "column_missing") in found
    assert ("api_logs", "status", "type") in found
    text = str(next(p for p in problems if p.rule == "type"))
    assert "INTEGER" in text and "VARCHAR" in text


# (table, column, new values, rule, expected words in the message)
BREAKS = [
    ("users", "engagement_score", [0.9, 1.5, 0.1], "domain", "in [0, 1]"),
    ("users", "micro_memory_count", pd.array([12, -1, 0], dtype="int32"), "domain", ">= 0"),
    ("users", "signup_at", [None, dt.datetime(2026, 1, 1), dt.datetime(2026, 1, 2)], "not_null", "without NULLs"),
    ("exposures", "variant", ["treatment", "contrl", "treatment"], "domain", "'control'"),
    ("telemetry", "event_type", ["app_open", "whispers_shown", "clicked", "app_open"], "domain", "'whispers_used'"),
    ("api_logs", "status", pd.array([200, 700], dtype="int32"), "domain", "in [100, 599]"),
    ("api_logs", "duration_ms", [42.0, -1.0], "domain", ">= 0"),
    ("api_logs", "duration_ms", [np.inf, 120.5], "domain", "finite"),
    ("api_logs", "weight_source", ["user", "default"], "domain", "'fallback'"),
    ("ranking_candidates", "context_similarity", [0.8, 1.2], "domain", "in [0, 1]"),
    ("ranking_candidates", "propensity", [0.0, None], "domain", "in (0, 1]"),
    ("ranking_candidates", "shown_position", pd.array([7, None], dtype="Int32"), "domain", "in [1, 6]"),
    ("ranking_candidates", "pinned", [None, True], "not_null", "without NULLs"),
    ("feedback", "rating", pd.array([6], dtype="int32"), "domain", "in [1, 5]"),
    ("support_tickets", "priority", ["urgent"], "domain", "'critical'"),
    ("db_metrics", "p95_query_ms", [20.0, -3.0], "domain", ">= 0"),
]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("table", "column", "values", "rule", "words"), BREAKS,
                         ids=[f"{b[0]}.{b[1]}-{i}" for i, b in enumerate(BREAKS)])
def test_each_value_rule_has_its_message(tmp_path, fmt, table, column, values, rule, words):
    tables = valid_tables()
    tables[table][column] = values
    problems = _problems(tables, tmp_path, fmt)
    assert len(problems) == 1, problems
    p = problems[0]
    assert (p.table, p.column, p.rule, p.rows) == (table, column, rule, 1)
    assert words in str(p)
    assert p.example is not None
    if rule == "domain":  # the example is the broken row's value, not any row's
        good = [v for v in valid_tables()[table][column].tolist() if not pd.isna(v)]
        bad = [v for v in pd.Series(values).tolist() if not pd.isna(v) and v not in good]
        assert len(bad) == 1, bad
        assert p.example == repr(bad[0]), (p.example, bad)


@pytest.mark.parametrize("fmt", FORMATS)
def test_nan_is_out_of_domain_not_null(tmp_path, fmt):
    import pyarrow as pa

    tables = valid_tables()
    # pandas turns NaN into NULL on the way into DuckDB; Arrow keeps a real NaN, as other writers do
    arrow = pa.Table.from_pandas(tables["api_logs"], preserve_index=False)
    index = arrow.schema.get_field_index("duration_ms")
    tables["api_logs"] = arrow.set_column(index, "duration_ms",
                                          pa.array([np.nan, 3.0], from_pandas=False))
    problems = _problems(tables, tmp_path, fmt)
    assert [(p.table, p.column, p.rule, p.rows) for p in problems] == [
        ("api_logs", "duration_ms", "domain", 1)]
    assert "finite" in str(problems[0])


@pytest.mark.parametrize("fmt", FORMATS)
def test_row_rule_position_on_shown(tmp_path, fmt):
    tables = valid_tables()
    tables["telemetry"]["position"] = pd.array([None, None, 1, None], dtype="Int32")
    problems = _problems(tables, tmp_path, fmt)
    assert [(p.table, p.rule, p.rows) for p in problems] == [("telemetry", "position_on_shown_used", 1)]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("table", "key"), [
    ("users", ("user_id",)), ("exposures", ("user_id", "exposed_at")), ("telemetry", ("event_id",)),
    ("api_logs", ("request_id",)), ("ranking_candidates", ("request_id", "memory_id")),
])
def test_duplicate_keys(tmp_path, fmt, table, key):
    tables = valid_tables()
    frame = tables[table]
    tables[table] = pd.concat([frame, frame.iloc[[0]]], ignore_index=True)
    problems = [p for p in _problems(tables, tmp_path, fmt) if p.rule == "unique"]
    assert len(problems) == 1
    assert problems[0].table == table and problems[0].column == ", ".join(key)
    assert problems[0].rows == 2
    assert "duplicated" in str(problems[0])


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_problem_reported_at_once(tmp_path, fmt):
    tables = valid_tables()
    tables["users"]["engagement_score"] = [2.0, 2.0, 2.0]
    tables["api_logs"]["duration_ms"] = [-1.0, -2.0]
    del tables["exposures"]
    problems = _problems(tables, tmp_path, fmt)
    assert {(p.table, p.rule) for p in problems} == {
        ("users", "domain"), ("api_logs", "domain"), ("exposures", "table_missing")}
    assert next(p for p in problems if p.table == "users").rows == 3


def test_timezone_aware_timestamps_are_converted_to_utc(tmp_path):
    tables = valid_tables()
    tables["exposures"]["exposed_at"] = pd.to_datetime(tables["exposures"]["exposed_at"]).dt.tz_localize("Europe/Amsterdam")
    with open_export(_write(tables, tmp_path, "parquet")) as export:
        first = export.scalar("SELECT min(exposed_at) FROM exposures")
    assert first == dt.datetime(2026, 12, 1, 9, 0, 0)  # 10:00 CET is 09:00 UTC


def test_missing_path(tmp_path):
    with pytest.raises(ExportError, match="does not exist"):
        open_export(tmp_path / "nope.duckdb")


def test_not_a_duckdb_file(tmp_path):
    bogus = tmp_path / "export.duckdb"
    bogus.write_text("user_id,signup_at\nu1,2026-01-01\n")
    with pytest.raises(ExportError, match="not a DuckDB database file"):
        open_export(bogus)


def test_truncated_duckdb_file(tmp_path):
    good = _write(valid_tables(), tmp_path, "duckdb")
    data = good.read_bytes()
    cut = tmp_path / "cut.duckdb"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(ExportError):
        open_export(cut)


def test_corrupt_parquet_file(tmp_path):
    folder = _write(valid_tables(), tmp_path, "parquet")
    (folder / "users.parquet").write_bytes(b"PAR1 not really parquet")
    with pytest.raises(ExportError, match="users"):
        open_export(folder)


def test_export_is_never_modified(tmp_path):
    path = _write(valid_tables(), tmp_path, "duckdb")
    before = (path.stat().st_mtime_ns, path.read_bytes())
    with open_export(path) as export:
        with pytest.raises(duckdb.Error, match="read-only"):
            export.con.execute("DELETE FROM src.users")
    assert (path.stat().st_mtime_ns, path.read_bytes()) == before


def test_paths_with_spaces_and_quotes(tmp_path):
    odd = tmp_path / "it's a \"folder\"; DROP TABLE users"
    odd.mkdir()
    path = _write(valid_tables(), odd, "duckdb")
    with open_export(path) as export:
        assert export.row_count("users") == 3
    folder = _write(valid_tables(), odd, "parquet")
    with open_export(folder) as export:
        assert export.row_count("users") == 3


def test_contract_page_is_generated_from_code():
    page = Path(__file__).resolve().parents[1] / "data" / "CONTRACT.md"
    assert page.read_text() == contract_markdown() + "\n", (
        "data/CONTRACT.md is stale: run `python -m whispers_lab.contract > data/CONTRACT.md`")
