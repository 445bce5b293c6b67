"""The experiment SQL on a hand-made export with known answers, and experiment_results on the
simulated exports (a day in each phase, the retention_drop and srm scenarios)."""

from __future__ import annotations

import datetime as dt
import json
import math

import numpy as np
import pandas as pd
import pytest

from whispers_lab.export import open_export, write_export
from whispers_lab.plan import load_plan
from whispers_lab.queries import experiment as q
from whispers_lab.results import STATUSES
from whispers_lab.simulate import simulate
from whispers_lab.stats import ExperimentResults, StatSettings, experiment_results
from whispers_lab.stats.retention import analyse_retention

from factories import valid_tables

PLAN = load_plan()
START = PLAN.start_date


def at(day: int, hour: float = 12.0) -> dt.datetime:
    return PLAN.day_start(0) + dt.timedelta(days=day, hours=hour)


# -------------------------------------------------------------------------------------------
# hand-made export: every rule of the retention window, censoring and switch


#: user -> (first exposure day, variant, plan's first enabled day, reason)
UNITS = {
    "u1": (9, "treatment", 9, "percentage"),
    "u2": (8, "control", math.inf, "holdout"),
    "u3": (8, "control", 9, "percentage"),    # switched before its D1 window closed
    "u4": (8, "control", 10, "percentage"),   # switched right after its D1 window closed
    "u5": (10, "treatment", 10, "percentage"),  # window not closed on day 10
    "u6": (5, "treatment", 3, "beta"),
    "u7": (0, "treatment", 0, "internal"),
    "u8": (9, "control", 10, "percentage"),
    "u9": (9, "control", math.inf, "holdout"),
    "u10": (3, "control", math.inf, "holdout"),
    "u11": (9, "control", 8, "percentage"),   # served control although enabled (against plan)
}
#: app opens: user -> rollout days (hours at noon unless given as (day, hour))
OPENS = {
    "u1": [10], "u2": [-3, -1, -1, 8, 11], "u3": [9], "u4": [-15, -14, 9], "u5": [11],
    "u6": [6], "u7": [1], "u9": [(10, 0.02)], "u10": [9],
}


@pytest.fixture(scope="module")
def hand_export(tmp_path_factory):
    t = valid_tables()
    ids = sorted(UNITS)
    t["users"] = pd.DataFrame({
        "user_id": ids, "signup_at": [at(-100)] * len(ids),
        "is_internal": [UNITS[u][3] == "internal" for u in ids],
        "micro_memory_count": pd.array([1] * len(ids), dtype="int32"),
        "engagement_score": [0.5] * len(ids),
    })
    exp = [(u, at(e, 23.98 if u == "u9" else 12.0), v) for u, (e, v, _, _) in UNITS.items()]
    exp.append(("u8", at(10), "treatment"))
    t["exposures"] = pd.DataFrame(exp, columns=["user_id", "exposed_at", "variant"])
    rows = []
    for u, days in OPENS.items():
        for d in days:
            day, hour = d if isinstance(d, tuple) else (d, 12.0)
            rows.append((f"e{len(rows)}", at(day, hour), u, "d", "app_open", None, None, None))
    t["telemetry"] = pd.DataFrame(rows, columns=["event_id", "created_at", "user_id", "device_id",
                                                 "event_type", "request_id", "whisper_id",
                                                 "position"]).astype({"position": "Int32"})
    t["api_logs"] = pd.DataFrame({
        "request_id": ["r1"], "timestamp": [at(10)], "endpoint": ["/api/recap"],
        "user_id": ["u2"], "device_id": ["d"], "status": pd.array([200], dtype="int32"),
        "duration_ms": [50.0], "ranking_ms": [None], "weight_source": [None],
        "weights_version": [None]})
    t["support_tickets"] = pd.DataFrame({
        "ticket_id": ["t1", "t2", "t3"], "created_at": [at(9), at(10), at(10)],
        "user_id": ["u2", "u1", None], "category": ["bug", "other", "bug"],
        "priority": ["low"] * 3, "about_whispers": [False] * 3})
    path = write_export(t, tmp_path_factory.mktemp("hand") / "hand.duckdb")
    ex = open_export(path, validate=False)
    ids = list(UNITS)
    q.register_cohort(ex, pd.DataFrame({"user_id": ids,
                                        "reason": [UNITS[u][3] for u in ids],
                                        "first_enabled_day": [float(UNITS[u][2]) for u in ids]}))
    q.materialize_units(ex, START, at(0, 0), PLAN.day_start(11), 14)
    yield ex
    ex.close()


def test_retention_cells_follow_the_window_and_switch_rules(hand_export):
    cells = q.retention_cells(hand_export, [1, 7], 10)
    got = {(int(r.k), int(r.stratum), r.variant): (int(r.n), r.sum_y, r.sum_x, r.sum_x2, r.sum_xy)
           for r in cells.itertuples()}
    assert got == {
        # u2 (not retained, 2 pre-period days: -3 and -1) and u4 (retained on day 9, pre day -14)
        (1, 8, "control"): (2, 1.0, 3.0, 5.0, 1.0),
        (1, 9, "treatment"): (1, 1.0, 0.0, 0.0, 0.0),   # u1
        (1, 9, "control"): (1, 1.0, 0.0, 0.0, 0.0),     # u9: exposed 23:59, opens 00:01 next day
        (1, 3, "control"): (1, 0.0, 0.0, 0.0, 0.0),     # u10: no open on day 4
        (7, 3, "control"): (1, 1.0, 0.0, 0.0, 0.0),     # u10: open on day 9 within [4, 10]
    }


def test_day_mask_and_fallback_give_the_same_units(hand_export, monkeypatch):
    masked = hand_export.sql(f"SELECT * FROM {q.UNITS_TABLE} ORDER BY user_id")
    monkeypatch.setattr(q, "MAX_MASK_DAYS", 0)
    try:
        q.materialize_units(hand_export, START, at(0, 0), PLAN.day_start(11), 14)
        joined = hand_export.sql(f"SELECT * FROM {q.UNITS_TABLE} ORDER BY user_id")
    finally:
        monkeypatch.undo()
        q.materialize_units(hand_export, START, at(0, 0), PLAN.day_start(11), 14)
    pd.testing.assert_frame_equal(masked.astype({"x": float, "gap": float}),
                                  joined.astype({"x": float, "gap": float}))
    assert masked.set_index("user_id").loc["u2", "x"] == 2
    assert pd.isna(masked.set_index("user_id").loc["u2", "gap"])
    assert masked.set_index("user_id").loc["u10", "gap"] == 6


def test_survival_cells_censor_at_the_switch_and_the_analysis_day(hand_export):
    cells = q.survival_cells(hand_export, 10)
    got = sorted((r.variant, int(r.stratum), int(r.time), int(r.event), int(r.n))
                 for r in cells.itertuples())
    assert got == sorted([
        ("treatment", 9, 1, 1, 1),  # u1
        ("control", 8, 2, 0, 1),    # u2: no return by day 10
        ("control", 8, 1, 1, 1),    # u4: returned day 9, before its switch on day 10
        ("control", 9, 1, 1, 1),    # u9
        ("control", 3, 6, 1, 1),    # u10
    ])


def test_srm_counts_and_quality(hand_export):
    c = q.srm_counts(hand_export)
    got = {int(r.day): (int(r.n_t), int(r.n_c)) for r in c.itertuples()}
    assert got == {3: (0, 1), 8: (0, 3), 9: (1, 3), 10: (1, 0)}
    qual = q.exposure_quality(hand_export, START, at(0, 0), PLAN.day_start(11))
    assert qual["internal_users"] == 1 and qual["beta_users"] == 1
    assert qual["control_after_enabled"] == 1  # u11
    assert qual["treatment_before_enabled"] == 0


def test_ticket_user_days_by_planned_variant(hand_export):
    tc = q.ticket_counts(hand_export, START, at(0, 0), PLAN.day_start(11), 8)
    agg = tc.groupby("variant")[["user_days", "tickets"]].sum()
    assert agg.loc["treatment"].tolist() == [9.0, 1]
    assert agg.loc["control"].tolist() == [12.0, 1]


def test_canary_units_use_the_planned_variant_of_the_day(hand_export):
    u = q.canary_units(hand_export, PLAN.day_start(10), PLAN.day_start(11), 10, 100, 1)
    assert sorted(u["variant"]) == ["control", "control", "treatment"]  # u2, u9 | u1
    assert u.loc[u["duration_ms"].notna(), "variant"].tolist() == ["control"]
    assert "user_id" not in u.columns


# -------------------------------------------------------------------------------------------
# simulated exports


@pytest.fixture(scope="module")
def small(small_export):
    with open_export(small_export) as ex:
        yield {d: experiment_results(ex, d, PLAN) for d in (1, 5, 9, 12, 14)}


def _check_invariants(r: ExperimentResults) -> None:
    for res in r.all_results():
        assert res.status in STATUSES
        assert res.sentence
        if res.status == "pass":
            assert res.estimate is not None and math.isfinite(res.estimate), res.metric
            assert res.ci_low is not None and res.ci_high is not None, res.metric
    json.dumps(r.to_dict())  # JSON-safe, no NaN
    for frame in (r.summary(), r.retention_history, r.power, r.survival_curves):
        assert "user_id" not in frame.columns
        text = frame.to_csv()
        assert "u0000" not in text  # aggregates only, no user ids


def test_every_phase_runs_and_keeps_the_invariants(small):
    for r in small.values():
        _check_invariants(r)
    assert [small[d].phase_id for d in (1, 5, 9, 12, 14)] == [
        "internal", "beta", "rollout_10", "rollout_50", "rollout_100"]
    assert small[1].retention.status == "no_data"


def test_beta_days_say_they_cannot_judge(small):
    r = small[5]
    assert r.retention.status == "no_data"
    assert "selected" in r.retention.sentence and "not randomised" in r.retention.sentence
    assert r.support_tickets.status == "no_data"
    assert all(c.status == "no_data" for c in r.canary)
    assert r.retention_history.empty
    beta_rows = r.power[r.power["metric"].str.startswith("retention")]
    assert beta_rows["note"].str.contains("cannot be judged").all()
    assert r.feedback_score.status != "pass" or r.feedback_score.n >= 5


def test_rollout_days_have_history_and_sequential_intervals(small):
    r = small[12]
    h = r.retention_history
    assert list(h["day"]) == list(range(8, 13))
    assert h.loc[h["day"] == 8, "status"].item() == "no_data"  # no treated D1 window closed yet
    ok = h[h["information"] > 0]
    assert (ok["seq_high"] - ok["seq_low"] >= ok["naive_high"] - ok["naive_low"] - 1e-12).all()
    assert r.retention.details["naive_low"] is not None
    assert set(r.retention_by_k) == {1, 7}
    assert r.retention_by_k[7].status == "no_data"  # no D7 window of a treated user has closed
    assert r.srm.status in ("pass", "fail")


def test_retention_drop_is_never_a_pass(tmp_path):
    sim = simulate(3000, 11, scenarios=["retention_drop"])
    path = tmp_path / "drop.duckdb"
    sim.write(path)
    with open_export(path) as ex:
        for d in (9, 11, 13, 14):
            r = experiment_results(ex, d, PLAN)
            for res in (r.retention, r.retention_relative, r.cuped):
                assert res.status in ("fail", "inconclusive", "no_data"), (d, res.sentence)


@pytest.mark.slow
def test_retention_drop_fails_with_enough_users(tmp_path):
    sim = simulate(15000, 3, scenarios=["retention_drop"])
    path = tmp_path / "drop.duckdb"
    sim.write(path)
    with open_export(path) as ex:
        r = experiment_results(ex, 14, PLAN)
    assert r.retention.status == "fail", r.retention.sentence
    assert r.retention.estimate < -PLAN.retention.margin


def test_srm_scenario_flags_and_makes_retention_untrustworthy(tmp_path):
    sim = simulate(3000, 7, scenarios=["srm:share=0.5"])
    path = tmp_path / "srm.duckdb"
    sim.write(path)
    with open_export(path) as ex:
        r = experiment_results(ex, 13, PLAN)
    assert r.srm.status == "fail"
    assert r.retention.details["untrustworthy"] is True
    assert r.retention.status in ("inconclusive", "no_data")
    if r.retention.status == "inconclusive":
        assert "sample-ratio mismatch" in r.retention.sentence


def test_settings_override_and_a_day_past_the_data(small_export):
    with open_export(small_export) as ex:
        r = experiment_results(ex, 16, PLAN, StatSettings.from_plan(PLAN, seed=3))
    _check_invariants(r)
    assert r.settings.seed == 3
    # the export ends on day 14: windows are judged as of day 14, and the sentence says so
    assert r.population["observed_through_day"] == 14
    assert r.retention.details["decision_day"] == 14
    assert r.retention.status == "no_data" or "judged as of day 14" in r.retention.sentence


def test_after_the_final_look_the_verdict_is_frozen():
    rng = np.random.default_rng(0)
    rows = []
    for e in range(8, 16):
        nt, nc = 400 + 300 * (e - 8), 3000
        rows += [{"stratum": e, "variant": "treatment", "n": nt,
                  "sum_y": rng.binomial(nt, 0.4)},
                 {"stratum": e, "variant": "control", "n": nc, "sum_y": rng.binomial(nc, 0.4)}]
    cells = pd.DataFrame(rows).assign(sum_x=0.0, sum_x2=0.0, sum_xy=0.0)
    s = StatSettings.from_plan(PLAN)
    a = analyse_retention(cells, 1, 16, 8, s)
    h = a.history.set_index("day")
    assert list(h.index) == list(range(8, 17))
    assert a.absolute.details["decision_day"] == 14
    assert a.absolute.estimate == pytest.approx(h.loc[14, "diff"])
    assert a.absolute.ci_low == pytest.approx(h.loc[14, "seq_low"])
    assert a.absolute.details["diff_today"] == pytest.approx(h.loc[16, "diff"])
    assert h.loc[[15, 16], "boundary"].isna().all()
    assert (h.loc[[15, 16], "status"] == h.loc[14, "status"]).all()
    assert h.loc[14, "alpha_spent"] == pytest.approx(s.alpha)


@pytest.mark.parametrize("drop", [(), ("telemetry", "exposures")])
def test_a_nearly_empty_export_never_passes(tmp_path, drop):
    t = valid_tables()
    for name in drop:
        t[name] = t[name].iloc[0:0]
    t.pop("feedback")
    path = write_export(t, tmp_path / "tiny.duckdb")
    with open_export(path, validate=False) as ex:
        for d in (0, 5, 9, 20):
            r = experiment_results(ex, d, PLAN)
            json.dumps(r.to_dict())
            assert [x.metric for x in r.all_results() if x.status == "pass"] == []
            assert r.feedback_score.status == "no_data"
