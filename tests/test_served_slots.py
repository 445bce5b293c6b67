"""``served_and_share`` (one grouping per user and day, each state interval's piece of the day a
*slot* of marks in a 64-bit word) against a pandas computation of the definition, event by
event: each event's interval, its planned variant, the groups per user, interval and day, the
as-of lookup of the last exposure row. Random users, events and intervals, among them a day cut
into more pieces than one word holds, a gap between intervals and events outside every one;
with the app opens read from the telemetry, and from the per-user table that groups them with
the activity masks (``wl_app_opens``, one reading of the telemetry for both)."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_rules import table

from whispers_lab.contract import WHISPERS_ENDPOINT
from whispers_lab.export import open_export, write_export
from whispers_lab.plan import load_plan
from whispers_lab.queries import experiment as qe
from whispers_lab.queries import state as qs

PLAN = load_plan()
START = PLAN.start_date
CATEGORY_NAMES = np.array(qs.CATEGORIES)


def _intervals(rng: np.random.Generator) -> pd.DataFrame:
    """Intervals from day 7 to day 13: whole days, a day (10) cut into 40 half-hour pieces
    (more than ``SLOTS_PER_WORD``), a gap of an hour on day 11, and random flags."""
    d = PLAN.day_start
    cuts = [d(7), d(8), d(9), d(9) + dt.timedelta(hours=13, minutes=7), d(10)]
    cuts += [d(10) + dt.timedelta(minutes=30 * i) for i in range(1, 40)]
    cuts += [d(11) + dt.timedelta(hours=3)]
    bounds = list(itertools.pairwise(cuts))
    bounds += [(d(11) + dt.timedelta(hours=4), d(12) + dt.timedelta(hours=6)),  # the gap: 3-4h
               (d(12) + dt.timedelta(hours=6), d(13))]
    n = len(bounds)
    lo = rng.integers(0, 10_000, n)
    width = np.where(rng.random(n) < 0.5, 0, rng.integers(0, 3_000, n))
    return pd.DataFrame({
        "interval_id": np.arange(n) + 100, "start_at": [b[0] for b in bounds],
        "end_at": [b[1] for b in bounds],
        "internal_on": rng.choice([-1, 0, 1], n), "beta_on": rng.choice([-1, 0, 1], n),
        "threshold": rng.integers(0, 10_001, n),
        "unsure_lo": lo, "unsure_hi": np.minimum(lo + width, 10_000)})


def _times(rng: np.random.Generator, n: int, first_day: int, last_day: int) -> np.ndarray:
    lo = np.datetime64(PLAN.day_start(first_day), "us")
    span = (last_day + 1 - first_day) * 86_400_000_000
    return lo + rng.integers(0, span, n).astype("timedelta64[us]")


def _export(tmp_path: Path, seed: int) -> tuple[Path, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    n_users = 400
    ids = np.array([f"u{i:04d}" for i in range(n_users)], dtype=object)
    users = {"user_id": ids, "signup_at": [PLAN.day_start(-30)] * n_users,
             "is_internal": [False] * n_users, "micro_memory_count": [3] * n_users,
             "engagement_score": [0.5] * n_users}
    n_open, n_req, n_exp = 6_000, 2_500, 1_500
    t_open = _times(rng, n_open, 6, 13)  # (days 6 and 13 lie outside the window)
    t_req = _times(rng, n_req, 7, 12)
    # distinct exposure times, so the last row before a time is one row
    t_exp = np.sort(_times(rng, n_exp, 4, 12))
    t_exp = t_exp + np.arange(n_exp).astype("timedelta64[us]")
    tables = {
        "users": table("users", users),
        "telemetry": table("telemetry", {
            "event_id": [f"e{i}" for i in range(n_open)], "created_at": t_open,
            "user_id": rng.choice(ids, n_open), "device_id": ["d"] * n_open,
            "event_type": ["app_open"] * n_open}),
        "api_logs": table("api_logs", {
            "request_id": [f"r{i}" for i in range(n_req)], "timestamp": t_req,
            "endpoint": np.where(rng.random(n_req) < 0.9, WHISPERS_ENDPOINT, "/api/other"),
            "user_id": rng.choice(ids, n_req), "status": [200] * n_req,
            "duration_ms": [40.0] * n_req}),
        "exposures": table("exposures", {
            "user_id": rng.choice(ids, n_exp), "exposed_at": t_exp,
            "variant": rng.choice(["treatment", "control"], n_exp)}),
        "ranking_candidates": table("ranking_candidates"),
    }
    # every category, random buckets; a few users have no assignment row
    assignment = pd.DataFrame({"user_id": ids, "category": rng.choice(CATEGORY_NAMES, n_users),
                               "bucket": rng.integers(0, 10_000, n_users)}).iloc[5:]
    return write_export(tables, tmp_path / f"slots-{seed}.duckdb"), assignment


def _reference(path: Path, assignment: pd.DataFrame, intervals: pd.DataFrame,
               lo: dt.datetime, hi: dt.datetime, share_from: dt.datetime
               ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The definition (:func:`whispers_lab.queries.state.served_vs_planned`), in pandas."""
    with open_export(path) as ex:
        req = ex.sql("SELECT user_id, \"timestamp\" AS t FROM api_logs WHERE endpoint = $ep "
                     "AND user_id IS NOT NULL", {"ep": WHISPERS_ENDPOINT})
        exp = ex.sql("SELECT user_id, exposed_at AS t, variant FROM exposures")
        opens = ex.sql("SELECT user_id, created_at AS t FROM telemetry "
                       "WHERE event_type = 'app_open'")
    ev = pd.concat([req.assign(kind=1, variant=None), exp.assign(kind=2),
                    opens.assign(kind=3, variant=None)], ignore_index=True)
    ev["t"] = pd.to_datetime(ev["t"]).astype("datetime64[us]")
    ev = ev.loc[(ev["t"] >= pd.Timestamp(lo)) & (ev["t"] < pd.Timestamp(hi))]
    iv = intervals.sort_values("start_at").reset_index(drop=True)
    starts = iv["start_at"].astype("datetime64[us]").to_numpy()
    ends = iv["end_at"].astype("datetime64[us]").to_numpy()
    i = np.searchsorted(starts, ev["t"].to_numpy(), side="right") - 1
    inside = (i >= 0) & (ev["t"].to_numpy() < ends[np.clip(i, 0, None)])
    ev = ev.loc[inside].assign(ix=i[inside])
    ev = ev.merge(assignment, on="user_id")  # users without an assignment are not counted
    s = iv.loc[ev["ix"].to_numpy()].reset_index(drop=True)
    ev = ev.reset_index(drop=True)
    cat, b = ev["category"], ev["bucket"]
    ev["planned"] = np.select(
        [cat == "holdout", cat == "internal", cat == "beta",
         (b >= s["unsure_lo"]) & (b < s["unsure_hi"]), b < s["threshold"]],
        [0, s["internal_on"], s["beta_on"], -1, 1], 0)
    ev["interval_id"] = s["interval_id"]
    ev["day"] = (ev["t"].dt.normalize() - pd.Timestamp(START)).dt.days
    ev["served"] = (ev["kind"] == 1) | ((ev["kind"] == 2) & (ev["variant"] == "treatment"))
    ev["control_row"] = (ev["kind"] == 2) & (ev["variant"] == "control")
    ev["open"] = ev["kind"] == 3
    g = ev.groupby(["user_id", "interval_id", "day"], as_index=False).agg(
        category=("category", "first"), planned=("planned", "first"),
        whispers=("served", "sum"), control_rows=("control_row", "sum"),
        opens=("open", "sum"), last_t=("t", "max"))
    for p, name in ((0, "c"), (1, "t")):
        on = g["planned"] == p
        g[f"in_{name}"] = on
        g[f"whispers_{name}"] = g["whispers"].where(on, 0)
    g["control_rows_t"] = g["control_rows"].where(g["planned"] == 1, 0)
    g["opens_t"] = g["opens"].where(g["planned"] == 1, 0)
    ud = g.groupby(["day", "user_id"], as_index=False).agg(
        category=("category", "first"), in_c=("in_c", "any"), in_t=("in_t", "any"),
        whispers_c=("whispers_c", "sum"), whispers_t=("whispers_t", "sum"),
        control_rows_t=("control_rows_t", "sum"), opens_t=("opens_t", "sum"),
        last_t=("last_t", "max"))
    look = ud.loc[ud["in_t"] & (ud["control_rows_t"] == 0) & (ud["opens_t"] > 0)
                  & (ud["whispers_t"] == 0)].sort_values("last_t")
    x = exp.assign(t=pd.to_datetime(exp["t"]).astype("datetime64[us]")).sort_values("t")
    last = pd.merge_asof(look, x.rename(columns={"t": "exposed_at"}), left_on="last_t",
                         right_on="exposed_at", by="user_id", direction="backward")
    without = last.loc[last["variant"].fillna("control") != "treatment"]
    ud["mismatch_t"] = ud["in_t"] & (ud["control_rows_t"] > 0)
    ud = ud.merge(without[["day", "user_id"]].assign(opened_without=True), how="left",
                  on=["day", "user_id"])
    ud["mismatch_t"] |= ud["opened_without"].fillna(False).astype(bool)
    served = ud.groupby(["day", "category"], as_index=False).agg(
        users=("user_id", "size"), planned_control=("in_c", "sum"),
        planned_treatment=("in_t", "sum"),
        unsure_only=("in_c", lambda c: int((~c & ~ud.loc[c.index, "in_t"]).sum())),
        control_served_whispers=("whispers_c",
                                 lambda w: int((ud.loc[w.index, "in_c"] & (w > 0)).sum())),
        treatment_served_control=("mismatch_t", "sum"))
    share_day = (pd.Timestamp(share_from).date() - START).days
    r = g.loc[g["category"].isin(["bucketed", "holdout"]) & (g["planned"] >= 0)
              & (g["day"] >= share_day)]
    share = r.groupby(["day", "interval_id"], as_index=False).agg(
        n_t=("whispers", lambda w: int((w > 0).sum())),
        n_c=("whispers", lambda w: int((w == 0).sum())))
    return (served.astype({c: "int64" for c in served.columns if c != "category"}),
            share.astype("int64"))


def _against_the_definition(ex, path: Path, assignment: pd.DataFrame,
                            intervals: pd.DataFrame, lo: dt.datetime, hi: dt.datetime
                            ) -> list[tuple[dt.datetime, pd.DataFrame, pd.DataFrame]]:
    """``served_and_share`` for two share starts, each checked against :func:`_reference`;
    ``(share_from, served, share)`` of each."""
    out = []
    for share_from in (PLAN.day_start(10), PLAN.day_start(12)):
        served, share = qs.served_and_share(ex, START, lo, hi, share_from)
        want_served, want_share = _reference(path, assignment, intervals, lo, hi, share_from)
        pd.testing.assert_frame_equal(served, want_served, check_dtype=False)
        pd.testing.assert_frame_equal(share, want_share)
        assert served["treatment_served_control"].sum() > 0  # the as-of lookup decides
        out.append((share_from, served, share))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_served_and_share_is_the_event_by_event_definition(tmp_path: Path, seed: int):
    path, assignment = _export(tmp_path, seed)
    intervals = _intervals(np.random.default_rng(100 + seed))
    lo, hi = PLAN.day_start(8), PLAN.day_start(13)
    slots = qs.day_slots(intervals, START, lo, hi)
    assert slots.groupby("day")["slot"].max().max() + 1 > qs.SLOTS_PER_WORD  # two words
    with open_export(path) as ex:
        qs.register_assignment(ex, assignment["user_id"], assignment["category"],
                               assignment["bucket"])
        qs.register_intervals(ex, intervals)
        for share_from, served, share in _against_the_definition(ex, path, assignment,
                                                                 intervals, lo, hi):
            assert served["unsure_only"].sum() > 0
            # day 10's 40 pieces (two words of marks) are in the share from day 10 on
            assert share["interval_id"].nunique() > (30 if share_from == PLAN.day_start(10)
                                                     else 1)


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("gap", [False, True])
def test_the_app_opens_grouped_with_the_masks_give_the_same_counts(tmp_path: Path, seed: int,
                                                                   gap: bool):
    """The activity masks' reading of the app opens keeps each user's opens per state slot;
    served-vs-planned counts them from there when every day of its window is covered by the
    state's pieces from midnight to midnight (then the latest exposure row up to a user's last
    event of the day is the day's latest), and reads the telemetry when a day has a gap."""
    path, assignment = _export(tmp_path, seed)
    intervals = _intervals(np.random.default_rng(100 + seed))
    if not gap:  # the hour without a state on day 11 is in the interval after it
        after = intervals["start_at"] == PLAN.day_start(11) + dt.timedelta(hours=4)
        intervals.loc[after, "start_at"] = PLAN.day_start(11) + dt.timedelta(hours=3)
    lo, hi = PLAN.day_start(8), PLAN.day_start(13)
    slots = qs.day_slots(intervals, START, lo, hi)
    with open_export(path) as ex:
        qs.register_assignment(ex, assignment["user_id"], assignment["category"],
                               assignment["bucket"])
        qs.register_intervals(ex, intervals)
        qe.register_cohort(ex, pd.DataFrame({"user_id": assignment["user_id"],
                                             "reason": "percentage",
                                             "first_enabled_day": 8.0}))
        qe.materialize_randomised(ex, START, hi, -14,
                                  qs.day_slots(intervals, START, PLAN.day_start(-14), hi))
        positions = qe.open_slot_positions(ex, slots)
        assert (positions is None) is gap
        _against_the_definition(ex, path, assignment, intervals, lo, hi)
        # the masks are those of the telemetry's app opens, as before
        masks = ex.sql(f"SELECT user_id, CAST(m AS VARCHAR) AS m FROM {qe.RANDOMISED_TABLE} "
                       f"ORDER BY user_id")
        opens = ex.sql("SELECT user_id, created_at FROM telemetry "
                       "WHERE event_type = 'app_open' AND created_at < $hi", {"hi": hi})
    day = (pd.to_datetime(opens["created_at"]).dt.normalize() - pd.Timestamp(START)).dt.days
    want = (opens.assign(bit=[1 << (int(x) + 14) for x in day]).groupby("user_id")["bit"]
            .agg(lambda b: str(int(np.bitwise_or.reduce(np.array(b, dtype=object))))))
    got = masks.set_index("user_id")["m"]  # the randomised users (in the cohort)
    want = want.loc[want.index.isin(got.index)]
    assert len(want) > 300
    assert (got.loc[want.index] == want).all() and (got.drop(want.index) == "0").all()


def test_a_piece_the_table_does_not_hold_reads_the_telemetry(tmp_path: Path):
    path, assignment = _export(tmp_path, 4)
    intervals = _intervals(np.random.default_rng(104))
    hi = PLAN.day_start(13)
    with open_export(path) as ex:
        qe.register_cohort(ex, pd.DataFrame({"user_id": assignment["user_id"],
                                             "reason": "percentage",
                                             "first_enabled_day": 8.0}))
        whole_days = intervals.assign(start_at=intervals["start_at"].dt.normalize())
        for made, asked, held in (
                (intervals, intervals, True), (None, intervals, False),
                (whole_days, intervals, False)):  # other bounds: another piece
            qe.materialize_randomised(
                ex, START, hi, -14,
                None if made is None else qs.day_slots(made, START, PLAN.day_start(-14), hi))
            asked_slots = qs.day_slots(asked, START, PLAN.day_start(8), PLAN.day_start(11))
            assert (qe.open_slot_positions(ex, asked_slots) is not None) is held


def test_day_slots_cut_intervals_at_midnight_and_skip_gaps():
    d = PLAN.day_start
    intervals = pd.DataFrame({
        "interval_id": [1, 2, 3], "start_at": [d(0), d(9) + dt.timedelta(hours=5), d(10)],
        "end_at": [d(9) + dt.timedelta(hours=5), d(9) + dt.timedelta(hours=20), d(12)]})
    slots = qs.day_slots(intervals, START, d(8), d(11))
    assert slots[["day", "slot", "interval_id"]].values.tolist() == [
        [8, 0, 1], [9, 0, 1], [9, 1, 2], [10, 0, 3]]
    assert slots["begin"].iloc[0] == pd.Timestamp(d(8))
    assert slots["end"].iloc[-1] == pd.Timestamp(d(11))
    # the hours 20-24 of day 9 are in no interval: the slot's CASE says NULL there, as it
    # does before the first piece, from the last piece's end on, and for a NULL time
    at = [d(8) - dt.timedelta(microseconds=1), d(8), d(9) - dt.timedelta(microseconds=1), d(9),
          d(9) + dt.timedelta(hours=5), d(9) + dt.timedelta(hours=20) - dt.timedelta(seconds=1),
          d(9) + dt.timedelta(hours=20), d(9) + dt.timedelta(hours=23), d(10), d(11), None]
    assert _slots_at(slots, at) == [None, 0, 0, 0, 1, 1, None, None, 0, None, None]


def _slots_at(slots: pd.DataFrame, times: list) -> list:
    """The slot :func:`whispers_lab.queries.slots.slot_case` gives each of ``times``."""
    import duckdb

    con = duckdb.connect()
    con.register("ts", pd.DataFrame({"t": pd.Series(times, dtype="datetime64[us]"),
                                     "i": range(len(times))}))
    got = con.execute(f"SELECT {qs._slot_case(slots, 't')} AS k FROM ts ORDER BY i").fetchall()
    con.close()
    return [None if k is None else int(k) for (k,) in got]


def _slot_by_definition(slots: pd.DataFrame, t) -> int | None:
    """The slot of the piece ``[begin, end)`` that holds ``t``, None outside every piece."""
    if t is None:
        return None
    hit = slots[(slots["begin"] <= t) & (t < slots["end"])]
    return None if hit.empty else int(hit["slot"].iloc[0])


@pytest.mark.parametrize("seed", range(4))
def test_slot_case_finds_the_piece_of_every_time(seed):
    """The CASE's binary search over the pieces' bounds gives the piece that holds each time
    (a gap's time, and times before and after every piece: NULL) for layouts of 1 to 80
    pieces, some adjacent, some apart, times on and beside every bound."""
    rng = np.random.default_rng(seed)
    origin = pd.Timestamp(PLAN.day_start(0))
    for n in rng.integers(1, 81, size=12):
        cuts = np.sort(rng.choice(np.arange(1, 20_000), size=2 * n, replace=False))
        begins, ends = cuts[0::2].copy(), cuts[1::2]
        joined = rng.random(n) < 0.6  # a piece that starts where the previous one ends
        begins[1:][joined[1:]] = ends[:-1][joined[1:]]
        slots = pd.DataFrame({"begin": origin + pd.to_timedelta(begins, "min"),
                              "end": origin + pd.to_timedelta(ends, "min"),
                              "slot": rng.integers(0, 9, n)})
        bounds = pd.concat([slots["begin"], slots["end"]])
        times = (list(origin + pd.to_timedelta(rng.integers(-50, 20_050, 300), "min"))
                 + list(bounds) + list(bounds - pd.Timedelta(microseconds=1)) + [None])
        assert _slots_at(slots, times) == [_slot_by_definition(slots, t) for t in times]
