"""The simulator's healthy world: contract-valid, deterministic, following the lab's cohort
assignment, ranker and plan budgets."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from whispers_lab import cohort
from whispers_lab.contract import TABLES, WHISPERS_ENDPOINT
from whispers_lab.export import open_export
from whispers_lab.plan import load_plan
from whispers_lab.ranker import rank_batch
from whispers_lab.simulate import PRE_DAYS, ModelParams, read_truth, simulate, simulate_to
from whispers_lab.simulate.activity import State, visit_probability
from whispers_lab.simulate.ids import format_ids
from whispers_lab.simulate.ops import WEIGHTS_TABLE
from whispers_lab.simulate.population import make_population
from whispers_lab.simulate.scenarios import resolve
from whispers_lab.simulate.timeline import Calendar, diurnal_times, rank_within

PLAN = load_plan()
EPS = ModelParams().epsilon


@pytest.fixture(scope="module")
def frames(small_sim):
    return small_sim.to_pandas()


def _day(ts: pd.Series) -> np.ndarray:
    return ((ts - pd.Timestamp(PLAN.start_date)) // pd.Timedelta(days=1)).to_numpy()


# -- contract and determinism -------------------------------------------------------------------


def test_duckdb_export_validates(small_export):
    with open_export(small_export) as ex:
        assert set(ex.present) == {t.name for t in TABLES}
        assert ex.row_count("ranking_candidates") > 0
    assert Path(str(small_export) + ".truth.json").is_file()


def test_parquet_export_validates(small_export_parquet, small_sim):
    with open_export(small_export_parquet) as ex:
        assert ex.kind == "parquet"
        for name, table in small_sim.tables.items():
            assert ex.row_count(name) == table.num_rows
    assert Path(small_export_parquet.rstrip("/") + ".truth.json").is_file()


def test_same_arguments_same_data_and_other_seed_differs():
    a = simulate(600, 3, through_day=9, scenarios=["error_spike"])
    b = simulate(600, 3, through_day=9, scenarios=["error_spike"])
    c = simulate(600, 4, through_day=9, scenarios=["error_spike"])
    for name in a.tables:
        assert a.tables[name].equals(b.tables[name]), name
    assert a.truth == b.truth
    assert not a.tables["telemetry"].equals(c.tables["telemetry"])
    assert not a.tables["users"].equals(c.tables["users"])


def test_simulate_to_streams_the_same_data_and_parquet_bytes_repeat(tmp_path):
    kwargs = dict(through_day=8, scenarios=["low_feedback:day=5"])
    p1, t1 = simulate_to(str(tmp_path / "one") + "/", 500, 9, **kwargs)
    p2, _ = simulate_to(str(tmp_path / "two") + "/", 500, 9, **kwargs)
    mem = simulate(500, 9, **kwargs)
    for t in TABLES:
        h1 = hashlib.sha256((p1 / f"{t.name}.parquet").read_bytes()).hexdigest()
        h2 = hashlib.sha256((p2 / f"{t.name}.parquet").read_bytes()).hexdigest()
        assert h1 == h2, t.name
    with open_export(p1) as ex:
        for name, table in mem.tables.items():
            got = ex.sql(f"SELECT * FROM src.{name}")
            want = table.to_pandas()
            pd.testing.assert_frame_equal(got.reset_index(drop=True), want, check_dtype=False)
    assert read_truth(t1) == mem.truth
    assert t1 == tmp_path / "one.truth.json"


def test_format_ids_is_fixed_width_and_refuses_overflow():
    ids = format_ids("r", np.array([0, 7, 12345]), 5)
    assert ids.to_pylist() == ["r00000", "r00007", "r12345"]
    with pytest.raises(ValueError):
        format_ids("r", np.array([100000]), 5)


# -- population ---------------------------------------------------------------------------------


def test_users_are_skewed_and_engagement_tracks_activity(frames):
    users, tel = frames["users"], frames["telemetry"]
    assert users.is_internal.sum() >= 3
    assert users.engagement_score.between(0, 1).all()
    mm = users.micro_memory_count
    assert mm.min() >= 1 and mm.median() <= 8 and (mm > 10).mean() > 0.1 and mm.max() > 40
    assert (users.signup_at < pd.Timestamp(PLAN.start_date) - pd.Timedelta(days=PRE_DAYS)).all()
    opens = tel[tel.event_type == "app_open"]
    active_days = opens.assign(d=_day(opens.created_at)).groupby("user_id").d.nunique()
    joined = users.set_index("user_id").engagement_score.to_frame().join(active_days).fillna(0)
    assert joined.corr().iloc[0, 1] > 0.6


def test_devices_per_user(frames):
    tel = frames["telemetry"]
    devices = tel.groupby("user_id").device_id.nunique()
    assert devices.between(1, 3).all() and (devices >= 2).mean() > 0.2


# -- calendar and activity ----------------------------------------------------------------------


def test_pre_period_and_rollout_days_present(frames):
    tel, db = frames["telemetry"], frames["db_metrics"]
    days = _day(tel.created_at)
    assert set(np.unique(days)) == set(range(-PRE_DAYS, 15))
    whispers = tel.event_type.isin(["whispers_shown", "whispers_used", "maya_cue_fired"]).to_numpy()
    assert days[whispers].min() >= 0
    api = frames["api_logs"]
    assert _day(api.timestamp[api.endpoint == WHISPERS_ENDPOINT]).min() >= 0
    assert len(db) == (PRE_DAYS + 15) * 1440 and db.timestamp.is_unique
    assert db.timestamp.min() == pd.Timestamp(PLAN.start_date) - pd.Timedelta(days=PRE_DAYS)
    assert db.timestamp.diff().dropna().eq(pd.Timedelta(minutes=1)).all()
    base = db.p95_query_ms
    assert 15 <= base.median() <= 25 and base.max() < 2 * base.median()


def test_diurnal_shape_and_weekends(frames):
    opens = frames["telemetry"].query("event_type == 'app_open'")
    hourly = opens.created_at.dt.hour.value_counts().reindex(range(24), fill_value=0)
    assert hourly.min() > 0 and hourly.max() > 4 * hourly.min()
    assert hourly.idxmin() in range(0, 6) and hourly.idxmax() in range(17, 22)
    per_day = opens.groupby(opens.created_at.dt.date).user_id.nunique()
    weekend = per_day[[d.weekday() >= 5 for d in per_day.index]]
    weekday = per_day[[d.weekday() < 5 for d in per_day.index]]
    assert weekend.mean() > weekday.mean()


def test_diurnal_times_stay_in_the_day():
    rng = np.random.default_rng(0)
    ts = diurnal_times(rng, 20000, 0, ModelParams().diurnal_weekday)
    assert ts.min() >= 0 and ts.max() < 86_400_000_000


def test_rank_within_groups():
    assert rank_within(np.array([3, 3, 5, 5, 5, 9])).tolist() == [0, 1, 0, 1, 2, 0]


def test_treatment_lifts_return_probability_after_first_treated_day_only():
    params = ModelParams()
    cal = Calendar(PLAN.start_date, PRE_DAYS, 14)
    pop = make_population(2000, 1, cal, params)
    state = State.initial(pop.n)
    base = visit_probability(pop, 9, cal, state, params, ())
    state.treated_since[:1000] = 9  # first treated visit today: no lift yet
    assert np.array_equal(visit_probability(pop, 9, cal, state, params, ()), base)
    state.treated_since[:1000] = 8
    lifted = visit_probability(pop, 9, cal, state, params, ())
    unclipped = base[:1000] < params.max_daily_prob - params.retention_lift
    assert np.allclose((lifted - base)[:1000][unclipped], params.retention_lift)
    assert np.array_equal(lifted[1000:], base[1000:])
    drop = resolve(["retention_drop:day=9,size=0.05"], PLAN, cal)
    dropped = visit_probability(pop, 9, cal, state, params, drop)
    ok = unclipped & (base[:1000] > 0.05)
    assert np.allclose((dropped - base)[:1000][ok], params.retention_lift - 0.05)
    assert np.array_equal(visit_probability(pop, 8, cal, state, params, drop),
                          visit_probability(pop, 8, cal, state, params, ()))


# -- exposures follow the lab's cohort assignment -------------------------------------------------


def test_exposures_follow_cohort_assignment_every_day(frames):
    users, exp, tel = frames["users"], frames["exposures"], frames["telemetry"]
    assert exp.groupby("user_id").size().max() <= 2
    opens = tel[tel.event_type == "app_open"]
    open_day = _day(opens.created_at)
    for day in range(0, 15):
        # users who reached the recap page that day were served that day's variant
        visitors = set(opens.user_id[open_day == day])
        end = pd.Timestamp(PLAN.day_start(day + 1))
        intended = cohort.assign(users, day, PLAN)
        intended = intended[intended.user_id.isin(visitors)]
        seen = exp[(exp.exposed_at < end) & exp.user_id.isin(visitors)]
        report = cohort.served_mismatch(seen, intended)
        assert report.compared == len(visitors) and report.mismatched == 0, (day, report.sentence)
    # the first exposure is the user's first app_open on or after day 0
    rollout_opens = opens[opens.created_at >= pd.Timestamp(PLAN.start_date)]
    first_open = rollout_opens.groupby("user_id").created_at.min()
    first_exp = exp.groupby("user_id").exposed_at.min()
    assert first_exp.index.sort_values().equals(first_open.index.sort_values())
    assert (first_exp.sort_index() == first_open.sort_index()).all()
    # a second row is a switch from control to treatment on the first visit once enabled
    fed = pd.Series(cohort.first_enabled_day(users, PLAN), index=users.user_id)
    two = exp[exp.user_id.duplicated(keep=False)].sort_values(["user_id", "exposed_at"])
    assert (two.groupby("user_id").variant.agg(list) == pd.Series(
        [["control", "treatment"]] * two.user_id.nunique(),
        index=sorted(two.user_id.unique()))).all()
    switch = two[two.variant == "treatment"].set_index("user_id").exposed_at
    opened = opens.assign(fed=fed[opens.user_id].to_numpy())
    first_treated_open = opened[_day(opened.created_at) >= opened.fed].groupby("user_id").created_at.min()
    assert (switch.sort_index() == first_treated_open[switch.index].sort_index()).all()


# -- ranking, logging policy and clicks ---------------------------------------------------------


@pytest.fixture(scope="module")
def candidates(frames):
    cand = frames["ranking_candidates"]
    api = frames["api_logs"][["request_id", "weights_version", "weight_source", "user_id"]]
    return cand.merge(api, on="request_id", how="left", validate="many_to_one")


def test_candidate_counts_and_shown_positions(candidates, frames):
    n = candidates.groupby("request_id").size()
    assert n.min() >= 1 and n.max() <= 25
    mem = frames["users"].set_index("user_id").micro_memory_count
    per_req = candidates.groupby("request_id").user_id.first()
    assert (n <= mem[per_req[n.index]].to_numpy()).all()
    shown = candidates.dropna(subset=["shown_position"])
    pos = shown.groupby("request_id").shown_position.agg(["min", "max", "count", "nunique"])
    m = np.minimum(6, n[pos.index])
    assert (pos["min"] == 1).all() and (pos["max"] == m).all() and (pos["count"] == m).all()
    assert (pos["nunique"] == m).all()
    assert candidates.propensity.isna().eq(candidates.shown_position.isna()).all()
    assert 0.2 < candidates.last_shown_hours.isna().mean() < 0.5
    assert 0 < candidates.pinned.mean() < 0.08


def test_logged_scores_and_propensities_come_from_the_lab_ranker(candidates):
    version_to_weights = {w.version: w for w in WEIGHTS_TABLE}
    fallback = WEIGHTS_TABLE[-1]
    assert (candidates.weight_source == "fallback").eq(candidates.weights_version.isna()).all()
    checked = 0
    for version, group in candidates.groupby(candidates.weights_version.fillna("<fallback>")):
        w = fallback if version == "<fallback>" else version_to_weights[version]
        ranked = rank_batch(group, w, max_items=6)
        assert np.allclose(ranked["score"], group.logged_score)
        n = group.groupby("request_id").memory_id.transform("size").to_numpy()
        shown = group.shown_position.notna().to_numpy()
        pos = group.shown_position.to_numpy(dtype=float, na_value=np.nan)
        expected = (1 - EPS) * (ranked["rank"].to_numpy() == pos) + EPS / n
        assert np.allclose(group.propensity.to_numpy(dtype=float, na_value=np.nan)[shown], expected[shown])
        checked += len(group)
    assert checked == len(candidates)
    # about epsilon of requests show a slate that is not the ranker's top positions
    greedy = candidates.dropna(subset=["shown_position"]).propensity >= 1 - EPS
    per_request = greedy.groupby(candidates.request_id).all()
    assert 0.04 < 1 - per_request.mean() < 0.16


def test_telemetry_shown_and_used_match_candidates(frames):
    tel, cand = frames["telemetry"], frames["ranking_candidates"]
    shown_ev = tel[tel.event_type == "whispers_shown"]
    shown_c = cand.dropna(subset=["shown_position"])
    a = set(zip(shown_ev.request_id, shown_ev.whisper_id, shown_ev.position.astype(int), strict=True))
    b = set(zip(shown_c.request_id, shown_c.memory_id, shown_c.shown_position.astype(int), strict=True))
    assert a == b and len(a) == len(shown_ev)
    used = tel[tel.event_type == "whispers_used"]
    assert set(zip(used.request_id, used.whisper_id, strict=True)) <= {(r, m) for r, m, _ in a}
    assert used.position.notna().all()
    app = tel[tel.event_type == "app_open"]
    assert app.request_id.isna().all() and app.whisper_id.isna().all() and app.position.isna().all()


def test_healthy_ctr_well_above_plan(frames):
    tel = frames["telemetry"]
    counts = tel.event_type.value_counts()
    ctr = counts["whispers_used"] / counts["whispers_shown"]
    assert PLAN.criteria.ctr + 0.03 < ctr < 0.30


def test_logged_clicks_agree_with_the_true_click_model(frames):
    from whispers_lab.simulate.clicks import examination, true_relevance

    cand, tel = frames["ranking_candidates"], frames["telemetry"]
    shown = cand.dropna(subset=["shown_position"])
    p = examination(shown.shown_position.astype(int)) * true_relevance(shown)
    clicks = (tel.event_type == "whispers_used").sum()
    assert abs(clicks - p.sum()) < 4 * np.sqrt((p * (1 - p)).sum())


# -- api logs and budgets -----------------------------------------------------------------------


def test_api_latency_errors_and_weights_within_budgets(frames):
    api = frames["api_logs"]
    w = api[api.endpoint == WHISPERS_ENDPOINT]
    assert 50 <= w.duration_ms.mean() <= 75
    assert 100 <= w.duration_ms.quantile(0.95) <= 140
    err = (w.status >= 400).mean()
    assert 0.001 < err < 0.01
    assert w.ranking_ms.notna().all() and w.ranking_ms.max() <= PLAN.criteria.ranking_timeout_ms
    assert (w.ranking_ms <= w.duration_ms).all()
    assert (w.weight_source == "fallback").mean() < PLAN.criteria.weight_fallback_rate
    assert w.user_id.notna().all() and w.device_id.notna().all()
    other = api[api.endpoint != WHISPERS_ENDPOINT]
    assert {"/api/recap", "/api/auth/session", "/api/memories"} <= set(other.endpoint)
    assert other.ranking_ms.isna().all() and other.weight_source.isna().all()
    assert other.weights_version.isna().all()
    assert api.request_id.is_unique
    # control users use the app too, but never call the whispers endpoint
    fed = pd.Series(cohort.first_enabled_day(frames["users"], PLAN), index=frames["users"].user_id)
    assert (_day(w.timestamp) >= fed[w.user_id].to_numpy()).all()


def test_one_weights_version_per_user_and_day_across_devices(frames):
    api = frames["api_logs"]
    w = api[(api.endpoint == WHISPERS_ENDPOINT) & api.weights_version.notna()]
    per = w.assign(d=_day(w.timestamp)).groupby(["user_id", "d"]).weights_version.nunique()
    assert per.max() == 1


# -- cues, feedback, tickets ----------------------------------------------------------------------


def test_cue_cooldown_respected(frames):
    tel = frames["telemetry"]
    cues = tel[tel.event_type == "maya_cue_fired"].sort_values(["user_id", "created_at"])
    assert len(cues) > 50
    gaps = cues.groupby("user_id").created_at.diff().dropna()
    assert gaps.min() >= pd.Timedelta(minutes=PLAN.cue_cooldown_minutes)
    fed = pd.Series(cohort.first_enabled_day(frames["users"], PLAN), index=frames["users"].user_id)
    assert (_day(cues.created_at) >= fed[cues.user_id].to_numpy()).all()


def test_feedback_from_treated_users_from_day_3(frames):
    fb, users = frames["feedback"], frames["users"]
    assert len(fb) > 100
    fed = pd.Series(cohort.first_enabled_day(users, PLAN), index=users.user_id)
    days = _day(fb.submitted_at)
    assert days.min() >= 3 and (days >= fed[fb.user_id].to_numpy()).all()
    assert 4.1 < fb.rating.mean() < 4.5
    assert fb.relevant.isna().mean() < 0.12
    assert 0.82 < fb.relevant.dropna().astype(bool).mean() < 0.94


def test_tickets_healthy(frames):
    t, users = frames["support_tickets"], frames["users"]
    about = t[t.about_whispers]
    assert not ((about.category == "bug") & (about.priority == "critical")).any()
    assert not (about.category == "privacy").any()
    assert set(t.category) <= {"bug", "other", "privacy"} and len(t) > 50
    fed = pd.Series(cohort.first_enabled_day(users, PLAN), index=users.user_id)
    assert (_day(about.created_at) >= fed[about.user_id].to_numpy()).all()


def test_start_date_and_through_day_options():
    sim = simulate(300, 1, start_date="2027-03-01", through_day=3)
    tel = sim.frame("telemetry")
    assert tel.created_at.min() >= pd.Timestamp("2027-03-01") - pd.Timedelta(days=PRE_DAYS)
    assert tel.created_at.max() < pd.Timestamp("2027-03-05")
    assert sim.truth["start_date"] == "2027-03-01" and sim.truth["through_day"] == 3
    assert sim.plan.start_date == dt.date(2027, 3, 1)


def _active_days(sim) -> pd.DataFrame:
    t = sim.frame("telemetry")
    t = t[t["event_type"] == "app_open"]
    day = (pd.to_datetime(t["created_at"]).dt.normalize()
           - pd.Timestamp(sim.plan.start_date)).dt.days
    return pd.DataFrame({"user_id": t["user_id"], "day": day})


def _share_active_before(sim) -> float:
    """Share of the users active on days 8-14 who were active on days 0-7."""
    a = _active_days(sim)
    late = set(a.loc[a["day"].between(8, 14), "user_id"])
    early = set(a.loc[a["day"].between(0, 7), "user_id"])
    return len(late & early) / len(late)


def test_the_default_user_base_was_active_before_the_percentage_phase(small_sim):
    # a real app: nearly everyone active in the rollout was already active, and served
    # control, before day 8 (statistics must not lean on late arrivals)
    assert _share_active_before(small_sim) >= 0.85


def test_late_signups_are_a_parameter_and_are_active_only_after_signing_up():
    from whispers_lab.simulate.params import ModelParams

    sim = simulate(2000, 3, params=ModelParams(late_signup_share=0.4))
    assert _share_active_before(sim) < 0.85
    users = sim.frame("users").set_index("user_id")["signup_at"]
    a = _active_days(sim)
    first = a.groupby("user_id")["day"].min()
    signup_day = (users.loc[first.index].dt.normalize() - pd.Timestamp(sim.plan.start_date)).dt.days
    assert (first > signup_day).all()
    assert (signup_day >= 0).sum() > 500   # of ~800 late signups, most come back by day 14
