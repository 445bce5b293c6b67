"""The report's two groupings of the telemetry: ``wl_request_events`` (the whispers events per
day, user and request, every event of the report's day per hour, the Maya cues of the
cooldown's lookback) and ``wl_app_opens`` (every user's app opens, with those of the day).
Every reader of the day (its events per hour, its active users, the canary's app opens, the
cue spacing, the daily series, the CTR sums) gives from them the figures it gives from the
telemetry and that pandas counts from the rows; a window they do not hold is read from the
telemetry; the four day reads scan no telemetry; and a day's evaluation is the same without
the table's day part."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from documents import assert_same_document
from test_whispers_requests import _assert_same

from whispers_lab import evaluate
from whispers_lab.export import open_export
from whispers_lab.plan import load_plan
from whispers_lab.queries import experiment as qe
from whispers_lab.queries import monitoring as qm
from whispers_lab.state import resolve_state

PLAN = load_plan()
STAMP = dt.datetime(2026, 12, 20, 12, 0, 0)
COOLDOWN = float(PLAN.cue_cooldown_minutes)


def _make(ex, day: int, cooldown: float = COOLDOWN, opens: bool = True) -> None:
    """The table as a report of ``day`` makes it and, with ``opens``, the app opens' table
    (whose ``day_opens`` say who opened the app that day)."""
    start = PLAN.day_start(day)
    qm.materialize_request_events(ex, PLAN.day_start(0), PLAN.day_start(day + 1), day_lo=start,
                                  cue_lo=start - dt.timedelta(minutes=cooldown))
    if opens:
        users = qe.users_for_assignment(ex)
        qe.register_cohort(ex, pd.DataFrame({"user_id": users["user_id"],
                                             "reason": "percentage", "first_enabled_day": 8.0}))
        qe.materialize_randomised(ex, PLAN.start_date, PLAN.day_start(day + 1), -14)


def _opens(ex, lo: dt.datetime, hi: dt.datetime) -> pd.DataFrame:
    source = qm.day_app_opens_source(ex, lo, hi)  # (the table's needs no window parameters)
    return ex.sql(f"SELECT user_id, CAST(opens AS BIGINT) AS opens FROM {source} AS o "
                  f"ORDER BY user_id", {"lo": lo, "hi": hi} if "$lo" in source else None)


def _ctr(ex, lo: dt.datetime, hi: dt.datetime) -> pd.DataFrame:
    return ex.sql(f"SELECT user_id, request_id, CAST(shown AS BIGINT) AS shown, "
                  f"CAST(used AS BIGINT) AS used FROM {qm.request_events_source(ex, lo, hi)} AS r "
                  f"ORDER BY user_id, request_id NULLS LAST", {"lo": lo, "hi": hi})


def _day_figures(ex, day: int, lo: dt.datetime | None = None) -> dict[str, object]:
    start, end = lo or PLAN.day_start(day), PLAN.day_start(day + 1)
    return {
        "hourly": qm.hourly_telemetry(ex, start, end),
        "active": qm.treated_active_users(ex, start, end),
        "cues": qm.cue_cooldown(ex, start, end, cooldown_minutes=COOLDOWN),
        "cues_4h": qm.cue_cooldown(ex, start, end, cooldown_minutes=240.0),
        "opens": _opens(ex, start, end),
        "daily": qm.daily_series(ex, PLAN.day_start(0), end),
        "ctr": _ctr(ex, PLAN.day_start(max(day - 3, 0)), end),
    }


@pytest.mark.parametrize("day", [9, 14])
def test_every_reader_gives_the_same_figures_from_the_table(scenario_export, day):
    """Day 9 holds the planted cue-cooldown violations and the telemetry gap."""
    start, end = PLAN.day_start(day), PLAN.day_start(day + 1)
    with open_export(scenario_export) as ex:
        direct = _day_figures(ex, day)  # nothing made yet: the telemetry
        assert "FROM telemetry" in qm.day_events_source(ex, start, end)
        _make(ex, day, opens=False)  # who opened the app: not known from the table alone
        assert qm.REQUEST_EVENTS_TABLE in qm.day_events_source(ex, start, end)
        assert "FROM telemetry" in qm._active_users(ex, start, end)
        assert "FROM telemetry" in qm.day_app_opens_source(ex, start, end)
        _assert_same(_day_figures(ex, day), direct)
        _make(ex, day)
        assert qm.APP_OPENS_TABLE in qm.day_app_opens_source(ex, start, end)
        assert "FROM telemetry" not in qm._active_users(ex, start, end)
        assert "FROM telemetry" in qm._active_users(ex, start, end + dt.timedelta(hours=1))
        _assert_same(_day_figures(ex, day), direct)
    # a real comparison
    assert direct["hourly"]["events"].sum() > 1000 and direct["hourly"]["shown"].sum() > 0
    assert direct["active"] > 50 and len(direct["opens"]) > 100 and len(direct["ctr"]) > 100
    assert direct["cues"]["cues"] > 0
    if day == 9:
        assert direct["cues"]["violations"] > 0  # the planted scenario
        assert (direct["hourly"]["events"] == 0).any() or direct["hourly"]["events"].min() < (
            direct["hourly"]["events"].median() / 2)  # the planted gap


def test_a_window_the_table_does_not_hold_is_read_from_the_telemetry(scenario_export):
    day = 9
    with open_export(scenario_export) as ex:
        start = PLAN.day_start(day)
        half = start + dt.timedelta(minutes=30)  # not on the hour
        want = {"day": _day_figures(ex, day), "half": _day_figures(ex, day, lo=half),
                "next": _day_figures(ex, day + 1)}
        _make(ex, day)
        for lo, hi, inside in ((start, PLAN.day_start(day + 1), True),
                               (start + dt.timedelta(hours=3), start + dt.timedelta(hours=5),
                                True),
                               (half, PLAN.day_start(day + 1), False),
                               (start - dt.timedelta(hours=1), PLAN.day_start(day + 1), False),
                               (start, PLAN.day_start(day + 2), False)):
            assert (qm.REQUEST_EVENTS_TABLE in qm.day_events_source(ex, lo, hi)) is inside
        # the 4-hour cooldown's lookback and the next day: read from the telemetry, the same
        _assert_same(_day_figures(ex, day), want["day"])
        _assert_same(_day_figures(ex, day, lo=half), want["half"])
        _assert_same(_day_figures(ex, day + 1), want["next"])


def _with_cue_ties(sim, day: int):
    """The small export's tables with cues added on ``day``: two more cues at the very time
    of an existing cue (distinct whispers, so not repeats of one event), one in the lookback
    10 minutes before the day for a user whose first cue of the day follows 15 minutes later
    (the contract has no event without a user)."""
    tables = dict(sim.tables)
    tel = tables["telemetry"].to_pandas()
    start = pd.Timestamp(PLAN.day_start(day))
    cues = tel.loc[(tel["event_type"] == "maya_cue_fired") & (tel["created_at"] >= start)
                   & (tel["created_at"] < start + pd.Timedelta(days=1))]
    assert len(cues) > 5
    tie = cues.iloc[[0, 0]].copy()
    tie["event_id"] = ["tie-1", "tie-2"]
    tie["whisper_id"] = ["w-tie-1", "w-tie-2"]
    user = cues["user_id"].iloc[1]
    late = cues.iloc[[1, 1]].copy()
    late["event_id"] = ["late-1", "late-2"]
    late["whisper_id"] = ["w-late-1", "w-late-2"]
    late["created_at"] = [start - pd.Timedelta(minutes=10), start + pd.Timedelta(minutes=5)]
    late["user_id"] = user
    tel = pd.concat([tel, tie, late], ignore_index=True)
    tables["telemetry"] = pa.Table.from_pandas(tel, schema=tables["telemetry"].schema,
                                               preserve_index=False)
    return tables


def _pandas_cues(tel: pd.DataFrame, lo: pd.Timestamp, hi: pd.Timestamp,
                 cooldown: float) -> dict[str, object]:
    """Event by event: each cue's gap to the user's previous cue (ties: 0)."""
    c = tel.loc[(tel["event_type"] == "maya_cue_fired")
                & (tel["created_at"] >= lo - pd.Timedelta(minutes=cooldown))
                & (tel["created_at"] < hi)].copy()
    c["key"] = c["user_id"].fillna("\0none")
    c = c.sort_values(["key", "created_at"], kind="stable")
    c["gap"] = c.groupby("key")["created_at"].diff().dt.total_seconds() / 60
    today = c.loc[c["created_at"] >= lo]
    return {"cues": len(today), "users": int(today["user_id"].nunique()),
            "violations": int((today["gap"] < cooldown).sum()),
            "min_gap_minutes": None if today["gap"].isna().all() else float(today["gap"].min())}


def test_the_figures_are_those_pandas_counts_from_the_rows(small_sim, tmp_path):
    """Cues at one time and a cue in the lookback, against an event-by-event
    pandas computation over the rows the telemetry view reads (repeats left out)."""
    from whispers_lab.export import write_export

    day = 10
    path = write_export(_with_cue_ties(small_sim, day), tmp_path / "ties.duckdb")
    lo, hi = pd.Timestamp(PLAN.day_start(day)), pd.Timestamp(PLAN.day_start(day + 1))
    with open_export(path) as ex:
        tel = ex.sql("SELECT * FROM telemetry")
        exposures = ex.sql("SELECT user_id, exposed_at, variant FROM exposures")
        direct = _day_figures(ex, day)
        _make(ex, day)
        from_table = _day_figures(ex, day)
    for got in (direct, from_table):
        for cooldown, name in ((COOLDOWN, "cues"), (240.0, "cues_4h")):
            want = _pandas_cues(tel, lo, hi, cooldown)
            assert want["violations"] >= 3  # the two ties and the late cue
            assert got[name]["cues"] == want["cues"] and got[name]["users"] == want["users"]
            assert got[name]["violations"] == want["violations"], name
            assert got[name]["min_gap_minutes"] == pytest.approx(want["min_gap_minutes"],
                                                                 abs=1e-9)
        day_rows = tel.loc[(tel["created_at"] >= lo) & (tel["created_at"] < hi)]
        hours = day_rows.groupby(day_rows["created_at"].dt.floor("h")).agg(
            events=("event_type", "size"),
            shown=("event_type", lambda s: int((s == "whispers_shown").sum())))
        hourly = got["hourly"].set_index("hour")
        assert hourly["events"].sum() == len(day_rows)
        np.testing.assert_array_equal(hourly.loc[hours.index, "events"], hours["events"])
        np.testing.assert_array_equal(hourly.loc[hours.index, "shown"], hours["shown"])
        before = exposures.loc[exposures["exposed_at"] < lo].sort_values("exposed_at")
        last = before.groupby("user_id")["variant"].last()
        treated = set(last.index[last == "treatment"]) | set(exposures.loc[
            (exposures["exposed_at"] >= lo) & (exposures["exposed_at"] < hi)
            & (exposures["variant"] == "treatment"), "user_id"])
        active = set(day_rows["user_id"].dropna())
        assert got["active"] == len(treated & active) > 0
        opens = (day_rows.loc[day_rows["event_type"] == "app_open"].groupby("user_id").size())
        got_opens = got["opens"].dropna(subset=["user_id"]).set_index("user_id")["opens"]
        pd.testing.assert_series_equal(got_opens.sort_index(), opens.sort_index(),
                                       check_names=False, check_dtype=False)


def test_the_four_day_reads_scan_no_telemetry(small_export):
    day = 12
    start, end = PLAN.day_start(day), PLAN.day_start(day + 1)

    def scans(node: dict) -> list[str]:
        own = ([str((node.get("extra_info") or {}).get("Table"))]
               if node.get("name") in ("TABLE_SCAN", "SEQ_SCAN") else [])
        return own + [t for kid in node.get("children", []) for t in scans(kid)]

    with open_export(small_export) as ex:
        qm.materialize_exposures(ex, end)
        _make(ex, day)
        ex.con.execute("PRAGMA enable_profiling = 'no_output'")
        read: dict[str, list[str]] = {}
        for name, run in (
                ("hourly", lambda: qm.hourly_telemetry(ex, start, end)),
                ("active", lambda: qm.treated_active_users(ex, start, end)),
                ("cues", lambda: qm.cue_cooldown(ex, start, end, cooldown_minutes=COOLDOWN)),
                ("opens", lambda: _opens(ex, start, end)),
                ("cues_4h", lambda: qm.cue_cooldown(ex, start, end, cooldown_minutes=240.0))):
            run()
            info = json.loads(ex.con.get_profiling_information(format="json"))
            read[name] = [t for op in info["operator"] for t in scans(op)]
    assert all(read[name] for name in read)  # the profile was read
    for name in ("hourly", "active", "cues", "opens"):
        assert not any("telemetry" in t for t in read[name]), (name, read[name])
    assert any("telemetry" in t for t in read["cues_4h"])  # beyond the table's lookback


@pytest.mark.parametrize("day", [0, 9, 14])
def test_a_days_evaluation_is_the_same_without_the_days_part(scenario_export, monkeypatch,
                                                              day):
    """Without the day's events and cues in the table every day read goes to the telemetry;
    the decision, its figures and the charts' series stay the same. Day 0's cue lookback
    starts before the table (read from the telemetry either way)."""
    with open_export(scenario_export) as ex:
        state = resolve_state(ex, PLAN, day, None)
        with_table = evaluate.evaluate_day(ex, day, PLAN, state=state)
        assert qm._holds_day(ex, PLAN.day_start(day), PLAN.day_start(day + 1))
    made = qm.materialize_request_events
    monkeypatch.setattr(qm, "materialize_request_events",
                        lambda export, lo, hi, **_: made(export, lo, hi))
    with open_export(scenario_export) as ex:
        without = evaluate.evaluate_day(ex, day, PLAN, state=state)
        assert not qm._holds_day(ex, PLAN.day_start(day), PLAN.day_start(day + 1))
    assert_same_document(json.loads(json.dumps(with_table.decision.to_dict(STAMP), default=str)),
                         json.loads(json.dumps(without.decision.to_dict(STAMP), default=str)),
                         rel=1e-9)
    for name in ("minute_series", "daily"):
        pd.testing.assert_frame_equal(getattr(with_table, name), getattr(without, name))
    if day == 9:
        fired = {r.id for r in with_table.criteria if r.status == "fail"}
        assert "cue_cooldown" in fired or "telemetry_flowing" in fired
