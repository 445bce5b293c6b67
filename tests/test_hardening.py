"""Hardening: bad input, one failure mode per row, through the real entry points.

Commands run through ``whispers_lab.cli.main`` (exit code, the message on stderr, never a
traceback); where the right outcome is a decision, through ``evaluate_day`` (NO_GO with the
relevant criteria ``no_data`` / ``inconclusive``, never GO). ``tests/test_contract.py`` covers
the validator rule by rule and ``tests/test_plan.py`` the plan parser; here a representative
few go through the CLI. Papermill runs twice in this module (paths with shell and SQL
metacharacters on a beta day, and an export with a corrupt data block). The failure modes and
what the lab does are listed in ``docs/hardening.md``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from whispers_lab.cli import main
from whispers_lab.contract import CONTRACT, TABLES
from whispers_lab.errors import ExportValidationError
from whispers_lab.evaluate import DayEvaluation, evaluate_day
from whispers_lab.export import open_export, write_export
from whispers_lab.paths import DEFAULT_PLAN
from whispers_lab.plan import load_plan
from whispers_lab.report import privacy, tables
from whispers_lab.report.folder import LOCK_NAME
from whispers_lab.report.runner import REPORT_FILES, day_dir_name
from whispers_lab.simulate import simulate

from factories import T0, error_lines, valid_tables

PLAN = load_plan()
MIN_USERS = PLAN.criteria.min_group_users
ID_COLUMNS = ("user_id", "device_id", "request_id", "memory_id", "whisper_id")
#: A simulated population large enough that days 8-10 are GO (so "never GO" checks bite).
SIM_USERS, SIM_SEED, SIM_DAYS = 8000, 7, 10
GO_DAY = 9  # a 10% day: the phase window (days 8-9) has enough minutes to show uptime


def cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """Run ``whispers-lab ARGS`` in-process; no traceback may reach the terminal."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, out + err
    return code, out, err


def _same_value(x: Any) -> Any:
    """A value to 12 significant digits: sums over minutes may be added up in another order."""
    return float(f"{x:.12g}") if isinstance(x, float) and np.isfinite(x) else x


def signature(ev: DayEvaluation) -> tuple:
    """Everything a decision rests on: verdict, blocking ids, every result's status and value."""
    return (ev.decision.decision, ev.decision.blocking, ev.decision.fired,
            tuple((r.id, r.status, _same_value(r.value)) for r in ev.results))


def evaluate(tables_: dict, day: int, path: Path, *, validate: bool = True,
             parquet: bool = False) -> DayEvaluation:
    write_export(tables_, path, parquet=parquet)
    with open_export(path, validate=validate) as export:
        return evaluate_day(export, day, PLAN)


def assert_not_go(ev: DayEvaluation) -> None:
    assert ev.decision.decision != "GO"
    assert ev.decision.next_step.action in ("hold", "rollback")


def window(tables_: dict[str, pa.Table], lo: dt.datetime, hi: dt.datetime) -> dict[str, pa.Table]:
    """Rows with their table's time column in ``[lo, hi)`` (users and candidates kept whole)."""
    out = {}
    for name, table in tables_.items():
        col = CONTRACT[name].time_column
        if name == "users" or col is None:
            out[name] = table
            continue
        ts = table.column(col)
        keep = pc.and_(pc.greater_equal(ts, pa.scalar(lo, ts.type)),
                       pc.less(ts, pa.scalar(hi, ts.type)))
        out[name] = table.filter(keep)
    return out


def _with_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, values)


@pytest.fixture(scope="module")
def sim_tables() -> dict[str, pa.Table]:
    return dict(simulate(SIM_USERS, SIM_SEED, through_day=SIM_DAYS).tables)


@pytest.fixture(scope="module")
def sim_path(sim_tables, tmp_path_factory) -> Path:
    return write_export(sim_tables, tmp_path_factory.mktemp("sim") / "rollout.duckdb")


@pytest.fixture(scope="module")
def baseline(sim_path) -> DayEvaluation:
    with open_export(sim_path) as export:
        ev = evaluate_day(export, GO_DAY, PLAN)
    assert ev.decision.decision == "GO", ev.decision.reasons  # the checks below must be able to bite
    return ev


# ---------------------------------------------------------------------------------------------
# the contract through `whispers-lab validate` (one broken rule at a time)


def _set(table: str, column: str, values) -> Callable[[dict], None]:
    def edit(t: dict) -> None:
        t[table][column] = values
    return edit


def _duplicate_first_row(table: str) -> Callable[[dict], None]:
    def edit(t: dict) -> None:
        t[table] = pd.concat([t[table], t[table].iloc[[0]]], ignore_index=True)
    return edit


def _non_finite_duration(value: float) -> Callable[[dict], None]:
    def edit(t: dict) -> None:  # pandas would turn NaN into NULL; Arrow keeps a real NaN
        arrow = pa.Table.from_pandas(t["api_logs"], preserve_index=False)
        t["api_logs"] = _with_column(arrow, "duration_ms",
                                     pa.array([value, 3.0], from_pandas=False))
    return edit


CONTRACT_CASES = [
    ("missing table", lambda t: t.pop("api_logs"),
     "table 'api_logs': expected the table to be present (required by the contract)"),
    ("missing column", lambda t: t.__setitem__("users", t["users"].drop(columns=["engagement_score"])),
     "table 'users', column 'engagement_score': expected a column of type DOUBLE"),
    ("wrong type", _set("api_logs", "status", ["200", "500"]),
     "table 'api_logs', column 'status': expected type INTEGER (or compatible), found VARCHAR"),
    ("NULL", _set("users", "signup_at", [None, T0, T0]),
     "table 'users', column 'signup_at': expected TIMESTAMP without NULLs; 1 row(s) break it"),
    ("not in domain", _set("exposures", "variant", ["treatment", "contrl", "treatment"]),
     "column 'variant': expected values one of 'treatment', 'control'; 1 row(s) break it "
     "(e.g. 'contrl')"),
    ("out of range", _set("api_logs", "status", pd.array([200, 700], dtype="int32")),
     "column 'status': expected values in [100, 599]; 1 row(s) break it (e.g. 700)"),
    ("row rule", _set("telemetry", "position", pd.array([None, None, 1, None], dtype="Int32")),
     "expected position set on whispers_shown and whispers_used events; 1 row(s) break it"),
    ("NaN duration", _non_finite_duration(np.nan),
     "column 'duration_ms': expected values >= 0, finite; 1 row(s) break it (e.g. nan)"),
    ("infinite duration", _non_finite_duration(np.inf),
     "column 'duration_ms': expected values >= 0, finite; 1 row(s) break it (e.g. inf)"),
    ("duplicate request", _duplicate_first_row("api_logs"),
     "column 'request_id': expected unique (request_id): 1 duplicated key(s); 2 row(s) break it"),
    ("duplicate event", _duplicate_first_row("telemetry"),
     "column 'event_id': expected unique (event_id): 1 duplicated key(s)"),
    ("duplicate ticket", _duplicate_first_row("support_tickets"),
     "column 'ticket_id': expected unique (ticket_id): 1 duplicated key(s)"),
    ("duplicate db minute", _duplicate_first_row("db_metrics"),
     "column 'timestamp': expected unique (timestamp): 1 duplicated key(s)"),
]


@pytest.mark.parametrize(("edit", "message"), [c[1:] for c in CONTRACT_CASES],
                         ids=[c[0] for c in CONTRACT_CASES])
def test_validate_names_each_broken_rule(edit, message, tmp_path, capsys) -> None:
    t = valid_tables()
    edit(t)
    path = write_export(t, tmp_path / "export.duckdb")
    code, out, err = cli(capsys, "validate", path)
    assert code == 1 and out == ""
    assert err.startswith(f"whispers-lab validate: error: export {str(path)!r} breaks the contract "
                          f"(1 problem(s)):")
    assert message in err


PARQUET_TYPE_CASES = [
    ("timestamp as text", "exposures", "exposed_at",
     lambda s: s.dt.strftime("%Y-%m-%d %H:%M:%S"), "found VARCHAR"),
    ("boolean as integer", "users", "is_internal", lambda s: s.astype("int64"), "found BIGINT"),
    ("integer as float", "ranking_candidates", "use_count", lambda s: s.astype("float64"),
     "found DOUBLE"),
    ("number as text", "api_logs", "duration_ms", lambda s: s.astype(str), "found VARCHAR"),
]


@pytest.mark.parametrize(("table", "column", "convert", "found"),
                         [c[1:] for c in PARQUET_TYPE_CASES], ids=[c[0] for c in PARQUET_TYPE_CASES])
def test_parquet_with_wrong_types(table, column, convert, found, tmp_path, capsys) -> None:
    t = valid_tables()
    t[table][column] = convert(t[table][column])
    folder = write_export(t, tmp_path / "export", parquet=True)
    code, _, err = cli(capsys, "validate", folder)
    assert code == 1
    assert f"table {table!r}, column {column!r}: expected type" in err and found in err


def test_parquet_other_timestamp_units_are_accepted(tmp_path, capsys) -> None:
    t = valid_tables()
    t["api_logs"]["timestamp"] = t["api_logs"]["timestamp"].astype("datetime64[ms]")
    t["exposures"]["exposed_at"] = t["exposures"]["exposed_at"].astype("datetime64[s]")
    folder = write_export(t, tmp_path / "export", parquet=True)
    code, out, _ = cli(capsys, "validate", folder)
    assert code == 0 and "is valid" in out


# ---------------------------------------------------------------------------------------------
# files that are not (whole) exports


def _corrupt_cases(source: bytes) -> dict[str, bytes]:
    rng = np.random.default_rng(9)
    noise = rng.integers(0, 256, size=len(source), dtype=np.uint8).tobytes()
    return {
        "empty file": b"",
        "garbage": noise[:100_000],
        "text": b"user_id,signup_at\nu1,2026-01-01\n",
        "header only": source[:12],
        "first block": source[:4096],
        "half": source[: len(source) // 2],
        "magic then noise": source[:16] + noise[16:],
    }


CORRUPT_MESSAGES = {
    "empty file": "its header lacks the DuckDB magic bytes",
    "garbage": "its header lacks the DuckDB magic bytes",
    "text": "its header lacks the DuckDB magic bytes",
    "header only": "cannot be opened as DuckDB (truncated or corrupt?)",
    "first block": "cannot be opened as DuckDB (truncated or corrupt?)",
    "half": "expected readable data",  # catalog intact, data blocks missing: per table
    "magic then noise": "cannot be opened as DuckDB (truncated or corrupt?)",
}


@pytest.mark.parametrize("case", list(CORRUPT_MESSAGES))
def test_corrupt_files_on_validate_and_report(case, sim_path, tmp_path, capsys) -> None:
    bad = tmp_path / "bad.duckdb"
    bad.write_bytes(_corrupt_cases(sim_path.read_bytes())[case])
    code, _, err = cli(capsys, "validate", bad)
    assert code == 1 and CORRUPT_MESSAGES[case] in err
    if case != "half":  # a readable catalog gets as far as the notebook: papermill below
        out = tmp_path / "reports"
        code, _, err = cli(capsys, "report", "--export", bad, "--day", 4, "--out", out)
        assert code == 1 and CORRUPT_MESSAGES[case] in err
        assert len(error_lines(err)) == 1
        assert not any(out.glob("day-*"))


def _corrupt_id_block(source: Path, target: Path) -> Path:
    """A copy of ``source`` whose catalog opens but one data block holding ids does not."""
    data = source.read_bytes()
    for fraction in np.linspace(0.1, 0.9, 17):
        broken = bytearray(data)
        at = int(len(data) * fraction) // 4096 * 4096 + 100
        broken[at: at + 64] = bytes(64)
        target.write_bytes(bytes(broken))
        try:
            with open_export(target, validate=False) as export:
                for table, column in privacy.ID_COLUMNS:  # every id, read from the data
                    export.sql(f'SELECT count(DISTINCT "{column}") FROM src."{table}"')
        except duckdb.Error:
            return target
    raise AssertionError("no block of ids found to corrupt")


@pytest.mark.parametrize("statistics", [False, True])
def test_corrupt_data_block_fails_report_in_one_line(sim_path, tmp_path, capsys, monkeypatch,
                                                     statistics) -> None:
    """The catalog opens, a block of ids does not: the notebook fails, and the error is one
    line with no id. When the ids must be read to redact the message (``statistics`` False:
    a file whose column statistics do not bound them), that reading fails too (a traceback
    before the fix): the details are withheld and no notebook is kept (papermill run 1).
    When the file's column statistics bound every id, nothing needs reading: the message is
    given, and the failed notebook is kept with no id of the export in it."""
    if not statistics:
        monkeypatch.setattr(privacy, "_profile_from_statistics", lambda export, columns: {})
    bad = _corrupt_id_block(sim_path, tmp_path / "block.duckdb")
    code, _, err = cli(capsys, "validate", bad)
    assert code == 1 and "expected readable data" in err and "Corrupt database file" in err
    out = tmp_path / "reports"
    code, _, err = cli(capsys, "report", "--export", bad, "--day", 4, "--out", out)
    assert code == 1 and len(error_lines(err)) == 1
    assert not any(out.glob("day-*")) and not list(out.glob(".day-*"))
    kept = list(out.glob(".failed/*"))
    if not statistics:
        assert "cannot be read back" in err and "details are withheld" in err
        assert not kept
    else:
        assert "Corrupt database file" in err and len(kept) == 1
        with open_export(sim_path) as export:  # the same ids, all readable
            assert privacy.find_ids(export, {"err": err, "kept": kept[0].read_text()}) == []


def test_a_corrupt_block_of_any_column_fails_validation(tmp_path, monkeypatch) -> None:
    """Validation reads every value: a damaged data block holding only one column's values
    (found with ``pragma_storage_info``) is reported, whichever column it is, including the
    ones no rule and no key reads (DuckDB checks a block's checksum as it loads it)."""
    monkeypatch.setenv("WHISPERS_LAB_CACHE", "")
    tables_ = valid_tables()
    n = 300_000  # enough rows for each column's values to fill blocks of their own
    telemetry = tables_["telemetry"]
    telemetry = telemetry.iloc[[i % len(telemetry) for i in range(n)]].reset_index(drop=True)
    for column, prefix, step in (("event_id", "e", 1), ("user_id", "u", 31),
                                 ("device_id", "d", 7919), ("request_id", "r", 13),
                                 ("whisper_id", "m", 17)):
        telemetry[column] = [f"{prefix}{i * step % n:09d}" for i in range(n)]
    tables_["telemetry"] = telemetry
    path = write_export(tables_, tmp_path / "export.duckdb")
    con = duckdb.connect(str(path), read_only=True)
    try:
        owners: dict[int, set[str]] = {}
        for column, block in con.execute(
                "SELECT column_name, block_id FROM pragma_storage_info('telemetry') "
                "WHERE persistent").fetchall():
            owners.setdefault(int(block), set()).add(column)
        # (a DuckDB file opens with three 4 KB headers, then its blocks, each led by its
        # 8-byte checksum)
        header, block_size = 3 * 4096, int(con.execute(
            "SELECT block_size FROM pragma_database_size()").fetchone()[0])
    finally:
        con.close()
    own = {c: sorted(b for b, cs in owners.items() if cs == {c}) for c in telemetry.columns}
    tested = [c for c in telemetry.columns if own[c]]
    assert {"event_id", "created_at", "user_id", "device_id", "request_id",
            "whisper_id"} <= set(tested)
    data = path.read_bytes()
    for column in tested:
        broken = bytearray(data)
        # one 8-byte word inside the block, past its checksum (DuckDB's checksum XORs a hash
        # of each word: the same change to two equal words, as in a repeating validity
        # mask, would cancel out)
        at = header + own[column][0] * block_size + 4096
        broken[at: at + 8] = bytes(b ^ 0xFF for b in broken[at: at + 8])
        bad = tmp_path / f"bad-{column}.duckdb"
        bad.write_bytes(bytes(broken))
        with pytest.raises(ExportValidationError) as caught:
            open_export(bad).close()
        assert [(p.table, p.rule) for p in caught.value.problems
                if "Corrupt database file" in str(p)] == [("telemetry", "unreadable")], column


def test_folders_that_are_not_exports(tmp_path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = cli(capsys, "validate", empty)
    assert code == 1 and "breaks the contract (5 problem(s))" in err
    folder = write_export(valid_tables(), tmp_path / "pq", parquet=True)
    (folder / "telemetry.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    code, _, err = cli(capsys, "validate", folder)
    assert code == 1 and "table 'telemetry' cannot be read as Parquet" in err


# ---------------------------------------------------------------------------------------------
# empty exports, exports that end early, clock skew


def test_empty_export_is_no_go_with_no_data(sim_tables, tmp_path, capsys) -> None:
    empty = {name: table.slice(0, 0) for name, table in sim_tables.items()}
    path = write_export(empty, tmp_path / "empty.duckdb")
    code, out, _ = cli(capsys, "validate", path)  # zero rows break no rule
    assert code == 0 and "is valid" in out
    for day in (0, 4, GO_DAY, PLAN.last_day):
        with open_export(path) as export:
            ev = evaluate_day(export, day, PLAN)
        assert ev.decision.decision == "NO_GO"
        assert {r.status for r in ev.results} == {"no_data"}
        assert "holds no data" in ev.results[0].reason
    # the scheduled job refuses it rather than judge an empty day
    exports = tmp_path / "exports"
    exports.mkdir()
    os.symlink(path, exports / "empty.duckdb")
    today = PLAN.start_date + dt.timedelta(days=5)
    code, _, err = cli(capsys, "daily", "--exports", exports, "--out", tmp_path / "out",
                       "--today", today)
    assert code == 1 and "holds no events" in err and "has not arrived" in err


def test_export_ending_before_the_day_is_no_go_with_no_data(sim_tables, tmp_path) -> None:
    early = window(sim_tables, dt.datetime(2000, 1, 1), PLAN.day_start(6))
    ev = evaluate(early, 9, tmp_path / "early.duckdb")
    assert ev.decision.decision == "NO_GO"
    assert {r.status for r in ev.results} == {"no_data"}
    assert ev.results[0].reason.startswith("The export ends at 2026-12-06 23:59 UTC, before day 9")
    # a single far-future row (a skewed clock) makes the export look current, yet the day is
    # judged on what it holds for that day: nothing, so never GO
    api = early["api_logs"]
    row = api.slice(0, 1)
    row = _with_column(row, "timestamp", pa.array([dt.datetime(2099, 1, 1)], api.schema.field("timestamp").type))
    row = _with_column(row, "request_id", pa.array(["skewed-clock"], api.schema.field("request_id").type))
    early["api_logs"] = pa.concat_tables([api, row])
    ev = evaluate(early, 9, tmp_path / "skewed.duckdb")
    assert ev.decision.decision == "NO_GO"
    for rid in ("telemetry_flowing", "ranking_timeouts", "error_rate", "avg_response_ms",
                "weight_fallback_rate", "uptime", "p95_response_ms"):
        assert ev.result(rid).status in ("no_data", "inconclusive"), rid
        assert rid in ev.decision.blocking


def test_rows_dated_after_the_day_do_not_change_its_decision(sim_tables, baseline, tmp_path) -> None:
    """Clock skew: the export ends with day N + 1, plus copies of day N's activity dated N + 3,
    made as bad as possible (errors, slow, critical bugs, privacy tickets, a database spike).
    Day N reads data through its own end only, so its decision is identical; day N + 3 sees the
    skewed rows (they are not dropped, just not early)."""
    n = GO_DAY
    base = window(sim_tables, dt.datetime(2000, 1, 1), PLAN.day_start(n + 2))
    day = window(sim_tables, PLAN.day_start(n), PLAN.day_start(n + 1))
    shift = pa.scalar(dt.timedelta(days=3), pa.duration("us"))
    keys = {"api_logs": "request_id", "telemetry": "event_id", "support_tickets": "ticket_id"}
    skewed = dict(base)
    for name, table in day.items():
        if name in ("users", "ranking_candidates"):
            continue
        col = CONTRACT[name].time_column
        table = _with_column(table, col, pc.add(table.column(col), shift).cast(table.schema.field(col).type))
        if name in keys:
            table = _with_column(table, keys[name], pc.binary_join_element_wise(
                table.column(keys[name]), pa.scalar("-skew"), ""))
        if name == "api_logs":
            table = _with_column(table, "status", pa.array(np.full(len(table), 503), table.schema.field("status").type))
            table = _with_column(table, "duration_ms", pa.array(np.full(len(table), 900.0)))
        if name == "support_tickets":
            for col_name, value in (("category", "bug"), ("priority", "critical"),
                                    ("about_whispers", True)):
                field = table.schema.field(col_name)
                table = _with_column(table, col_name, pa.array([value] * len(table), field.type))
        if name == "db_metrics":
            table = _with_column(table, "p95_query_ms", pa.array(np.full(len(table), 5000.0)))
        skewed[name] = pa.concat_tables([base[name], table])
    without = evaluate(base, n, tmp_path / "without.duckdb")
    with_future = evaluate(skewed, n, tmp_path / "with.duckdb")
    assert signature(without) == signature(baseline)
    assert signature(with_future) == signature(baseline)
    with open_export(tmp_path / "with.duckdb") as export:
        later = evaluate_day(export, n + 3, PLAN)
    assert later.decision.decision == "ROLLBACK"


# ---------------------------------------------------------------------------------------------
# time zones, non-finite values


@pytest.mark.parametrize("fmt", ["duckdb", "parquet"])
def test_aware_timestamps_give_the_same_decision_as_naive_utc(fmt, sim_tables, baseline,
                                                             tmp_path) -> None:
    """The same instants stored timezone-aware (New York, Kolkata) decide exactly as naive UTC;
    a naive column holding local wall-clock time is a different export (the check can bite)."""
    aware, local = {}, {}
    for i, (name, table) in enumerate(sim_tables.items()):
        tz = ("America/New_York", "Asia/Kolkata")[i % 2]
        a = lo = table
        for j, f in enumerate(table.schema):
            if pa.types.is_timestamp(f.type):
                col = table.column(j).cast(pa.timestamp("us", tz=tz))  # same instants
                a = a.set_column(j, f.name, col)
                lo = lo.set_column(j, f.name, pc.local_timestamp(col))  # wall clock, naive
        aware[name], local[name] = a, lo
    parquet = fmt == "parquet"
    ev = evaluate(aware, GO_DAY, tmp_path / "aware", parquet=parquet)
    assert signature(ev) == signature(baseline)
    with open_export(tmp_path / "aware") as export:
        source = export.con.execute("DESCRIBE src.api_logs").fetchall()
        assert dict((r[0], r[1]) for r in source)["timestamp"].startswith("TIMESTAMP WITH TIME ZONE")
        assert export.sql("DESCRIBE api_logs")["column_type"].tolist()[1] == "TIMESTAMP"
    shifted = evaluate(local, GO_DAY, tmp_path / "local", parquet=parquet)
    assert signature(shifted) != signature(baseline)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_durations_never_pass_even_unvalidated(value, sim_tables, baseline,
                                                          tmp_path) -> None:
    """Validation refuses them (above); opened without validation, a NaN mean is no_data and an
    infinite one fails: never a pass, never GO."""
    assert baseline.result("avg_response_ms").status == "pass"
    api = sim_tables["api_logs"]
    ts = api.column("timestamp").to_numpy()
    on_day = ((ts >= np.datetime64(PLAN.day_start(GO_DAY))) & (ts < np.datetime64(PLAN.day_start(GO_DAY + 1)))
              & (np.asarray(api.column("endpoint").to_pylist()) == "/api/whispers/context"))
    duration = api.column("duration_ms").to_numpy().copy()
    duration[np.flatnonzero(on_day)[:3]] = value
    broken = dict(sim_tables)
    broken["api_logs"] = _with_column(api, "duration_ms", pa.array(duration, from_pandas=False))
    path = tmp_path / "nonfinite.duckdb"
    with pytest.raises(ExportValidationError, match="finite"):
        evaluate(broken, GO_DAY, path)
    with open_export(path, validate=False) as export:
        ev = evaluate_day(export, GO_DAY, PLAN)
    assert ev.result("avg_response_ms").status == ("no_data" if np.isnan(value) else "fail")
    assert_not_go(ev)


# ---------------------------------------------------------------------------------------------
# huge strings


HUGE = 1_000_000


def test_megabyte_ids_do_not_crash_or_flood(tmp_path, capsys) -> None:
    """A 1 MB user id and memory id: validate, evaluate, redact and the privacy scan cope, and
    nothing prints or writes the megabyte back."""
    big_user, big_memory = "U" + "x" * (HUGE - 1), "M" + "y" * (HUGE - 1)
    t = valid_tables()
    t["users"].loc[0, "user_id"] = big_user
    t["exposures"].loc[0, "user_id"] = big_user
    t["telemetry"].loc[[0, 1, 2], "user_id"] = big_user
    t["api_logs"].loc[0, "user_id"] = big_user
    t["ranking_candidates"].loc[0, "memory_id"] = big_memory
    t["telemetry"].loc[[1, 2], "whisper_id"] = big_memory
    path = write_export(t, tmp_path / "huge.duckdb")
    code, out, err = cli(capsys, "validate", path)
    assert code == 0 and len(out + err) < 5_000
    # broken with the huge value as the example: the example is cut short
    t["users"] = pd.concat([t["users"], t["users"].iloc[[0]]], ignore_index=True)
    dup = write_export(t, tmp_path / "dup.duckdb")
    code, _, err = cli(capsys, "validate", dup)
    assert code == 1 and "duplicated key(s)" in err and len(err) < 2_000
    with open_export(path) as export:
        ev = evaluate_day(export, 0, PLAN)
        document, _ = privacy.redact(export, ev.decision.to_dict())
        assert len(json.dumps(document)) < 100_000
        message, n = privacy.redact(export, {"m": f"users ({big_user}, u2) and memory {big_memory}"})
        assert n == 3 and message == {"m": "users ([redacted], [redacted]) and memory [redacted]"}
        leaks = privacy.find_ids(export, {"page.html": f"<td>{big_user}</td>"})
        assert [(leak.column, leak.count) for leak in leaks] == [("user_id", 1)]


@pytest.mark.parametrize("length", [300, 50_000])
def test_long_ids_are_found_by_the_scan_within_bounded_memory(length, tmp_path) -> None:
    """Regression: a 300-character id looked like embedded base64 and escaped the scan and the
    redaction; a 50 KB id made the token scan of a 200 KB page take 1.3 GB."""
    long_id = "u" + "k" * (length - 1)
    t = valid_tables()
    t["users"].loc[1, "user_id"] = long_id
    t["exposures"].loc[1, "user_id"] = long_id
    page = ("<td>filler text, words and 42 numbers</td>\n" * 5_000)[:200_000]
    with open_export(write_export(t, tmp_path / "long.duckdb")) as export:
        tracemalloc.start()
        leaks = privacy.find_ids(export, {"page.html": page + f"<td>{long_id}</td>" + page})
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert [(leak.column, leak.count) for leak in leaks] == [("user_id", 1)]
        assert peak < 100 * 2**20
        clean, n = privacy.redact(export, {"why": f"user {long_id} conflicts"})
        assert n == 1 and clean == {"why": "user [redacted] conflicts"}


def test_cohort_with_a_megabyte_user_id(tmp_path, capsys) -> None:
    users = pd.DataFrame({"user_id": ["a", "U" * HUGE], "is_internal": [False, False],
                          "micro_memory_count": [3, 20], "engagement_score": [0.1, 0.9]})
    users.to_csv(tmp_path / "users.csv", index=False)
    code, out, _ = cli(capsys, "cohort", "--users", tmp_path / "users.csv", "--day", 9,
                       "--out", tmp_path / "out.csv")
    assert code == 0 and len(out) < 2_000
    assert len(pd.read_csv(tmp_path / "out.csv")) == 2


# ---------------------------------------------------------------------------------------------
# days and plan files through --plan


@pytest.mark.parametrize("day", [10**20, -(10**20), PLAN.last_day + 1])
def test_report_day_outside_the_plan(day, sim_path, tmp_path, capsys) -> None:
    code, _, err = cli(capsys, "report", "--export", sim_path, "--day", day, "--out", tmp_path)
    assert code == 1 and f"day {day} is outside the rollout" in err
    assert "runs from day 0 (2026-12-01) to day 14 (2026-12-15)" in err
    assert list(tmp_path.iterdir()) == []


def test_cohort_day_before_the_start(tmp_path, capsys) -> None:
    pd.DataFrame({"user_id": ["a"], "is_internal": [False], "micro_memory_count": [3],
                  "engagement_score": [0.1]}).to_csv(tmp_path / "users.csv", index=False)
    code, _, err = cli(capsys, "cohort", "--users", tmp_path / "users.csv", "--day", -1,
                       "--out", tmp_path / "out.csv")
    assert code == 1 and "day -1 is before the rollout start (2026-12-01, day 0)" in err
    assert not (tmp_path / "out.csv").exists()


PLAN_TEXT = DEFAULT_PLAN.read_text(encoding="utf-8")
PLAN_CASES = [
    ("missing key", PLAN_TEXT.replace("min_group_users = 5", "# removed"),
     "key 'criteria.min_group_users' is missing"),
    ("wrong type", PLAN_TEXT.replace("min_group_users = 5", 'min_group_users = "five"'),
     "key 'criteria.min_group_users' must be an integer, got str ('five')"),
    ("bool for number", PLAN_TEXT.replace("error_rate_minutes = 10", "error_rate_minutes = true"),
     "key 'triggers.error_rate_minutes' must be an integer, got a boolean (True)"),
    ("contradiction", PLAN_TEXT.replace("min_users = 5 ", "min_users = 50 "),
     "key 'beta.min_users' (50) contradicts max_users (10)"),
    ("trigger below budget", PLAN_TEXT.replace("error_rate = 0.05 ", "error_rate = 0.01 "),
     "key 'triggers.error_rate' (0.01) is below the monitoring budget"),
    ("not TOML", "version = [\n", "is not valid TOML"),
    ("binary", b"\xff\xfe\x00 not text", "cannot be read"),
]


@pytest.mark.parametrize("command", ["report", "cohort", "daily"])
@pytest.mark.parametrize(("content", "message"), [c[1:] for c in PLAN_CASES],
                         ids=[c[0] for c in PLAN_CASES])
def test_bad_plan_file_names_the_key(command, content, message, sim_path, tmp_path, capsys) -> None:
    plan = tmp_path / "plan.toml"
    if isinstance(content, bytes):
        plan.write_bytes(content)
    else:
        plan.write_text(content, encoding="utf-8")
    out = tmp_path / "out"
    args = {
        "report": ["--export", sim_path, "--day", 4, "--out", out],
        "cohort": ["--users", tmp_path / "users.csv", "--day", 4, "--out", out / "c.csv"],
        "daily": ["--exports", tmp_path, "--today", "2026-12-05", "--out", out],
    }[command]
    code, out_text, err = cli(capsys, command, *args, "--plan", plan)
    assert code == 1 and out_text == ""
    assert err.startswith(f"whispers-lab {command}: error: ") and message in err
    assert str(plan) in err
    assert not out.exists()


@pytest.mark.parametrize("command", ["report", "cohort", "daily"])
def test_plan_path_that_is_a_folder_or_missing(command, sim_path, tmp_path, capsys) -> None:
    args = {
        "report": ["--export", sim_path, "--day", 4, "--out", tmp_path / "out"],
        "cohort": ["--users", tmp_path / "users.csv", "--day", 4, "--out", tmp_path / "c.csv"],
        "daily": ["--exports", tmp_path, "--today", "2026-12-05", "--out", tmp_path / "out"],
    }[command]
    code, _, err = cli(capsys, command, *args, "--plan", tmp_path)
    assert code == 1 and "cannot be read" in err and "Is a directory" in err
    code, _, err = cli(capsys, command, *args, "--plan", tmp_path / "nope.toml")
    assert code == 1 and "does not exist" in err


# ---------------------------------------------------------------------------------------------
# paths with spaces, quotes, semicolons and $(...): no injection, clean success or failure

MARK = "PWNED"
NASTY = f"a b 'q' \"dq\"; touch {MARK}1; $(touch {MARK}2) `touch {MARK}3` & | > <b>x é"


def _no_injection(*roots: Path) -> None:
    for root in roots:
        hits = [p for p in root.rglob(f"{MARK}*")] if root.is_dir() else []
        assert hits == [], hits
    assert not any(Path(p).name.startswith(MARK) for p in os.listdir("."))


@pytest.fixture
def nasty_dir(tmp_path, monkeypatch) -> Path:
    """A folder whose name is a small injection payload; the process runs in a clean cwd."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    folder = tmp_path / NASTY
    folder.mkdir()
    return folder


def test_validate_and_cohort_with_nasty_paths(nasty_dir, tmp_path, capsys) -> None:
    duck = write_export(valid_tables(), nasty_dir / f"ex {NASTY}.duckdb")
    pq_folder = write_export(valid_tables(), nasty_dir / f"pq {NASTY}", parquet=True)
    for path in (duck, pq_folder):
        code, out, _ = cli(capsys, "validate", path)
        assert code == 0 and "is valid" in out
    users = nasty_dir / f"users {NASTY}.csv"
    pd.DataFrame({"user_id": ["a", "b"], "is_internal": [False, True],
                  "micro_memory_count": [3, 20], "engagement_score": [0.1, 0.9]}).to_csv(users, index=False)
    plan = nasty_dir / f"plan {NASTY}.toml"
    plan.write_text(PLAN_TEXT, encoding="utf-8")
    out = nasty_dir / f"out {NASTY}" / f"assign {NASTY}.parquet"
    code, _, _ = cli(capsys, "cohort", "--users", users, "--day", 9, "--plan", plan, "--out", out)
    assert code == 0 and len(pd.read_parquet(out)) == 2
    # a missing file whose name is SQL: a clean error, nothing dropped
    code, _, err = cli(capsys, "validate", nasty_dir / "x'; DROP TABLE users; --.duckdb")
    assert code == 1 and "does not exist" in err
    with open_export(duck) as export:
        assert export.row_count("users") == 3
    _no_injection(tmp_path, Path.cwd())


def _user_counts(export_path: Path, day: int) -> dict[str, int]:
    """Independent count of the users behind each user-based row of the day's table."""
    lo, hi = PLAN.day_start(day), PLAN.day_start(day + 1)
    con = duckdb.connect(str(export_path), read_only=True)
    try:
        def q(sql: str) -> int:
            return int(con.execute(sql, [lo, hi]).fetchone()[0])
        api = ("FROM api_logs WHERE endpoint = '/api/whispers/context' "
               "AND timestamp >= ? AND timestamp < ?")
        users = q(f"SELECT count(DISTINCT user_id) {api}")
        return {
            "error_rate": users, "avg_response_ms": users, "p95_response_ms": users,
            "uptime": users,
            "weight_fallback_rate": q(f"SELECT count(DISTINCT user_id) {api} AND weight_source IS NOT NULL"),
            "ranking_timeouts": q(f"SELECT count(DISTINCT user_id) {api} AND ranking_ms IS NOT NULL"),
            "weight_persistence": q(f"SELECT count(*) FROM (SELECT user_id {api} AND device_id IS NOT NULL "
                                    f"AND weights_version IS NOT NULL GROUP BY user_id "
                                    f"HAVING count(DISTINCT device_id) >= 2)"),
            "cue_cooldown": q("SELECT count(DISTINCT user_id) FROM telemetry WHERE event_type = "
                              "'maya_cue_fired' AND created_at >= ? AND created_at < ?"),
        }
    finally:
        con.close()


def _table_values(page: str) -> dict[str, str]:
    """criterion id -> the 'Observed' cell of the report's criteria table."""
    rows = re.findall(r"font-size:11px['\"]>([a-z_0-9]+)</span></td><td>[^<]*</td>"
                      r"<td style=['\"]white-space:nowrap['\"]>(.*?)</td>", page)
    return dict(rows)


def test_report_with_nasty_paths_on_a_beta_day(nasty_dir, tmp_path, capsys) -> None:
    """Papermill run 2: export, plan and out paths full of shell and SQL metacharacters; a beta
    day with 5-10 users. The report is written; nothing is injected anywhere; the file name is
    shown escaped; no id of the export is in any output (index too); and no value in the table
    rests on fewer than min_group_users users (counted independently from the export)."""
    day = 4
    export = nasty_dir / f"ex {NASTY} `<img src=x onerror=alert(1)>`.duckdb"
    simulate(2000, 11, through_day=5).write(export)
    plan = nasty_dir / f"plan {NASTY}.toml"
    plan.write_text(PLAN_TEXT, encoding="utf-8")
    out = nasty_dir / f"reports {NASTY}"
    code, text, _ = cli(capsys, "report", "--export", export, "--day", day, "--plan", plan,
                        "--out", out)
    assert code == 0, text
    # the report folder's lock file (emptied when the run ends) is the only other entry
    assert sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME) == [day_dir_name(day),
                                                                            "index.html"]
    folder = out / day_dir_name(day)
    assert sorted(p.name for p in folder.iterdir()) == sorted(REPORT_FILES)
    page = (folder / "report.html").read_text(encoding="utf-8")
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    doc = json.loads((folder / "decision.json").read_text(encoding="utf-8"))
    assert doc["report"]["export"] == export.name and doc["day"] == day
    _no_injection(tmp_path, Path.cwd())

    # privacy: every file the run wrote, against every id of the export
    con = duckdb.connect(str(export), read_only=True)
    ids: set[str] = set()
    for table in TABLES:
        for col in table.columns:
            if col.name in ID_COLUMNS:
                ids.update(r[0] for r in con.execute(
                    f'SELECT DISTINCT "{col.name}" FROM "{table.name}" WHERE "{col.name}" IS NOT NULL').fetchall())
    con.close()
    written = [p for p in out.rglob("*") if p.is_file() and p.name != LOCK_NAME]
    assert len(written) == 4
    for path in written:
        words = set(re.findall(r"[A-Za-z0-9]+", privacy.strip_embedded_binary(path.read_text("utf-8"))))
        assert not words & ids, f"{path.name} holds ids of the export"

    # small groups: a shown value rests on at least min_group_users users
    values = _table_values(page)
    assert len(values) == len(doc["criteria"]) + len(doc["triggers"])
    counts = _user_counts(export, day)
    declared = {e["id"]: tables.user_count(e) for e in doc["criteria"]}
    withheld = {rid for rid, v in values.items() if v.startswith("withheld")}
    assert withheld  # this beta day has small groups (e.g. feedback from one user)
    for rid, shown in values.items():
        if rid in withheld or shown in ("&ndash;", "\u2013"):  # withheld, or no value at all
            continue
        n = counts.get(rid, declared.get(rid))
        assert n is None or n >= MIN_USERS, (rid, shown, n)


def test_internal_days_withhold_request_figures_of_few_users(tmp_path) -> None:
    """Regression: 5 requests of 3 internal users showed the error rate, response times and
    uptime (only a request count was checked)."""
    path = write_export(simulate(300, 1, through_day=1).tables, tmp_path / "tiny.duckdb")
    with open_export(path) as export:
        ev = evaluate_day(export, 0, PLAN)
        document, _ = privacy.redact(export, ev.decision.to_dict())
    counts = _user_counts(path, 0)
    assert 0 < counts["error_rate"] < MIN_USERS
    values = _table_values(tables.criteria_table_html(document, PLAN))
    for rid in ("error_rate", "avg_response_ms", "p95_response_ms", "weight_fallback_rate",
                "ranking_timeouts", "uptime"):
        assert values[rid].startswith("withheld") or values[rid] in ("&ndash;", "\u2013"), rid


# ---------------------------------------------------------------------------------------------
# small API regressions


def test_export_arrow_works_on_duckdb_2(tmp_path) -> None:
    with open_export(write_export(valid_tables(), tmp_path / "x.duckdb")) as export:
        assert export.arrow("SELECT count(*) AS n FROM users").to_pydict() == {"n": [3]}
        assert export.arrow("SELECT ?::INTEGER AS a", [2]).to_pydict() == {"a": [2]}


def test_relative_out_folder(sim_path, tmp_path, monkeypatch, capsys) -> None:
    """Regression: a relative --out made every report fail (the kernel runs inside the
    temporary folder). Checked without a kernel: the failure came from the parameters."""
    from whispers_lab.report import runner

    seen = {}

    def fake_execute(parameters, output, **kwargs):
        seen.update(parameters)
        raise runner.ReportError("stop here")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(runner, "execute_notebook", fake_execute)
    code, _, err = cli(capsys, "report", "--export", sim_path, "--day", 4, "--out", "rel/out")
    assert code == 1 and "stop here" in err
    assert Path(seen["out_dir"]).is_absolute()
    assert Path(seen["out_dir"]).parent == tmp_path / "rel" / "out"


@pytest.mark.parametrize("command", ["report", "daily"])
def test_unwritable_out_is_a_one_line_error(command, sim_path, tmp_path, capsys) -> None:
    """Tests run as root, where chmod 0o555 does not stop writes: a folder under a regular
    file cannot be created by anyone, which is the same refusal (read-only folders in
    tests/test_interrupt.py where the user is not root)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    exports = tmp_path / "exports"
    exports.mkdir()
    os.symlink(sim_path, exports / "rollout.duckdb")
    for out in (blocker / "reports", blocker):
        args = (["--export", sim_path, "--day", 4] if command == "report"
                else ["--exports", exports, "--today", "2026-12-06"])
        code, _, err = cli(capsys, command, *args, "--out", out)
        assert code == 1 and len(error_lines(err)) == 1
        assert ("Not a directory" in err) or ("File exists" in err)
    assert blocker.read_text() == "x"
