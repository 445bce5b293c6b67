"""The DuckDB search for repeated telemetry events (``duplicate_events_select``) against an
event-by-event pandas computation of the rule: within a key (``DUPLICATE_EVENT_KEY``), rows in
order of time and then event id (NULL last), a row whose previous row is at most
``DUPLICATE_EVENT_SECONDS`` older repeats it. The data are dense on purpose: few keys, times on
a quarter-second grid (so exact ties and gaps of exactly one second are common), NULL event ids,
NULL times and NULL key columns, and a few event ids given to two rows."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from whispers_lab import export as ex
from whispers_lab.contract import DUPLICATE_EVENT_KEY, DUPLICATE_EVENT_SECONDS

T0 = dt.datetime(2026, 12, 5, 10, 0, 0)
TS = "CAST(created_at AS TIMESTAMP)"


def _events(seed: int, n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    quarter = rng.integers(0, 40, n)  # 0..9.75 s on a 0.25 s grid
    jitter = np.where(rng.random(n) < 0.2, rng.integers(1, 5, n), 0)  # a few off the grid (us)
    created = [T0 + dt.timedelta(microseconds=int(q) * 250_000 + int(j))
               for q, j in zip(quarter, jitter, strict=True)]
    frame = pd.DataFrame({
        "event_id": [f"e{v:05d}" for v in rng.permutation(n)],
        "user_id": rng.choice(["u1", "u2", "u3"], n),
        "event_type": rng.choice(["app_open", "whispers_shown"], n),
        "request_id": pd.Series(rng.choice(["r1", "r2", ""], n)).replace("", None),
        "whisper_id": pd.Series(rng.choice(["m1", ""], n)).replace("", None),
        "created_at": pd.Series(created, dtype="datetime64[us]"),
    })
    frame.loc[rng.random(n) < 0.05, "event_id"] = None
    frame.loc[rng.random(n) < 0.03, "created_at"] = pd.NaT
    twice = rng.choice(n, 4, replace=False)  # two pairs of rows share an event id
    frame.loc[twice[1], "event_id"] = frame.loc[twice[0], "event_id"]
    frame.loc[twice[3], "event_id"] = frame.loc[twice[2], "event_id"]
    return frame


def _reference(frame: pd.DataFrame, lo: dt.datetime | None = None,
               hi: dt.datetime | None = None) -> list[tuple[str, dt.datetime]]:
    """Event by event: sort each key's rows by (time, event id), NULL last, and compare each
    row's time with the previous row's."""
    rows = frame
    if lo is not None:
        rows = rows[(rows["created_at"] >= lo) & (rows["created_at"] <= hi)]
    keys = [*DUPLICATE_EVENT_KEY]
    rows = rows.assign(**{f"_{k}": rows[k].fillna("\x00NULL") for k in keys})
    rows = rows.sort_values([f"_{k}" for k in keys] + ["created_at", "event_id"],
                            na_position="last", kind="stable")
    previous = rows.groupby([f"_{k}" for k in keys], sort=False)["created_at"].shift(1)
    gap = rows["created_at"] - previous
    hit = gap.notna() & (gap <= pd.Timedelta(seconds=DUPLICATE_EVENT_SECONDS))
    out = rows[hit & rows["event_id"].notna()]
    return sorted(zip(out["event_id"], (t.to_pydatetime() for t in out["created_at"]),
                      strict=True))


def _connection(frame: pd.DataFrame, as_view: bool, tmp_path: Path) -> duckdb.DuckDBPyConnection:
    """``src.telemetry`` as a stored table of a DuckDB file, or as a view over Parquet."""
    con = duckdb.connect()
    tmp_path.mkdir(parents=True, exist_ok=True)
    if as_view:
        file = tmp_path / "telemetry.parquet"
        con.register("frame", frame)
        con.execute(f"COPY frame TO '{file}' (FORMAT parquet, ROW_GROUP_SIZE 64)")
        con.execute("CREATE SCHEMA src")
        con.execute(f"CREATE VIEW src.telemetry AS SELECT * FROM read_parquet('{file}')")
    else:
        path = tmp_path / "export.duckdb"
        with duckdb.connect(str(path)) as out:
            out.register("frame", frame)
            out.execute("CREATE TABLE telemetry AS SELECT * FROM frame")
        con.execute(f"ATTACH '{path}' AS src (READ_ONLY)")
    return con


def _found(con: duckdb.DuckDBPyConnection, row_id: str | None, where: str = "",
           params: dict | None = None) -> list[tuple[str, dt.datetime]]:
    query = ex.duplicate_events_select("duckdb", TS, with_ts=True, where=where, row_id=row_id)
    return sorted(con.execute(query, params or {}).fetchall())


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("as_view", [False, True], ids=["table-rowid", "parquet-hash"])
def test_the_search_finds_what_the_rule_says(seed: int, as_view: bool, tmp_path: Path) -> None:
    frame = _events(seed)
    want = _reference(frame)
    assert len(want) > 20  # dense enough to hold ties, chains and exact one-second gaps
    con = _connection(frame, as_view, tmp_path)
    row_id = ex._row_id(con, "telemetry")
    assert row_id == (None if as_view else "rowid")
    assert _found(con, row_id) == want
    # the id's hash names the rows as well (the form a view over Parquet gets)
    assert _found(con, None) == want
    # a time span (the incremental search of changed partitions)
    lo, hi = T0 + dt.timedelta(seconds=2), T0 + dt.timedelta(seconds=6.5)
    got = _found(con, row_id, where=f"{TS} >= $lo AND {TS} <= $hi", params={"lo": lo, "hi": hi})
    assert got == _reference(frame, lo, hi)


def test_a_tie_keeps_its_smallest_event_id_whatever_the_row_order(tmp_path: Path) -> None:
    """Three rows of one key at the same instant, stored with the largest event id first:
    the two larger ids repeat; a fourth row 1.5 s earlier changes nothing, one 1 s earlier
    makes all three repeats."""
    base = {"user_id": "u1", "event_type": "whispers_shown", "request_id": "r1",
            "whisper_id": "m1"}
    at = T0 + dt.timedelta(seconds=5)
    rows = [{"event_id": e, **base, "created_at": at} for e in ("e9", "e5", "e7")]
    for earlier, want in ((1.5, ["e7", "e9"]), (1.0, ["e5", "e7", "e9"])):
        frame = pd.DataFrame([*rows, {"event_id": "e0", **base,
                                      "created_at": at - dt.timedelta(seconds=earlier)}])
        frame["created_at"] = frame["created_at"].astype("datetime64[us]")
        for as_view in (False, True):
            con = _connection(frame, as_view, tmp_path / f"{earlier}-{as_view}")
            assert [e for e, _ in _found(con, ex._row_id(con, "telemetry"))] == want
            assert [e for e, _ in _reference(frame)] == want


def test_opening_an_export_searches_by_row_id_in_a_duckdb_file(small_sim, tmp_path: Path,
                                                               monkeypatch) -> None:
    """A DuckDB file's telemetry is named by ``rowid``; a Parquet export's by the id's hash."""
    asked: list[str | None] = []
    real = ex.duplicate_events_select
    monkeypatch.setattr(ex, "duplicate_events_select", lambda *a, **k: (
        asked.append(k.get("row_id")), real(*a, **k))[1])
    monkeypatch.setenv("WHISPERS_LAB_CACHE", "")
    for name, parquet in (("f.duckdb", False), ("folder", True)):
        path = ex.write_export(small_sim.tables, tmp_path / name, parquet=parquet)
        with ex.open_export(path) as export:
            assert export.duplicate_events >= 0
    assert asked == ["rowid", None]


def test_two_stored_rows_with_one_event_id_are_two_repeats(tmp_path: Path) -> None:
    """A DuckDB file names each stored row by ``rowid``: two identical rows that both repeat
    an earlier event count twice, as in the full search (such an export fails validation for
    its shared id; the count is still the rule's)."""
    base = {"user_id": "u1", "event_type": "whispers_used", "request_id": "r1",
            "whisper_id": "m1"}
    frame = pd.DataFrame([{"event_id": "e1", **base, "created_at": T0},
                          *({"event_id": "e2", **base,
                             "created_at": T0 + dt.timedelta(seconds=0.5)} for _ in range(2))])
    frame["created_at"] = frame["created_at"].astype("datetime64[us]")
    con = _connection(frame, False, tmp_path)
    want = _reference(frame)
    assert [e for e, _ in want] == ["e2", "e2"]
    assert _found(con, "rowid") == want
