"""Tables one report makes once and several queries read: the whispers events per request
(``wl_request_events``: the daily series and the CTR statistic) and every user's first exposure
(``wl_first_exposure``: the sample-ratio counts and the exposure checks). Each reader gives the
same figures from the shared table as from the raw tables, and the same as pandas computes
from the raw rows; a window the shared table does not hold is read from the telemetry."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from whispers_lab import cohort
from whispers_lab.export import open_export
from whispers_lab.plan import load_plan
from whispers_lab.queries import experiment as qe
from whispers_lab.queries import monitoring as qm
from whispers_lab.queries import state as qs

PLAN = load_plan()


def _pandas_ratio(ex, lo: dt.datetime, hi: dt.datetime, cohort_frame: pd.DataFrame
                  ) -> pd.DataFrame:
    """:func:`whispers_lab.queries.experiment.ratio_units` from the raw telemetry rows."""
    ev = ex.sql("SELECT user_id, request_id, event_type FROM telemetry "
                "WHERE created_at >= $lo AND created_at < $hi "
                "AND event_type IN ('whispers_shown', 'whispers_used')", {"lo": lo, "hi": hi})
    ev["shown"] = ev["event_type"] == "whispers_shown"
    ev["used"] = ev["event_type"] == "whispers_used"
    per_req = ev.groupby(["user_id", "request_id"], dropna=False, as_index=False)[
        ["shown", "used"]].sum()
    per_req["has_req"] = per_req["request_id"].notna()
    per_req["clicked"] = (per_req["used"] > 0) & (per_req["shown"] > 0) & per_req["has_req"]
    per_req["req"] = (per_req["shown"] > 0) & per_req["has_req"]
    g = per_req.groupby("user_id", as_index=False).agg(
        clicks=("used", "sum"), impressions=("shown", "sum"),
        clicked_requests=("clicked", "sum"), requests=("req", "sum"))
    g = g.loc[g["impressions"] > 0]
    external = cohort_frame.loc[cohort_frame["reason"] != "internal", "user_id"]
    g = g.loc[g["user_id"].isin(external)].astype({c: float for c in g.columns[1:]})

    def sums(num: pd.Series, den: pd.Series) -> list[float]:
        return [len(num), num.sum(), den.sum(), (num * num).sum(), (den * den).sum(),
                (num * den).sum()]

    with_req = g.loc[g["requests"] > 0]
    return pd.DataFrame(
        [["ctr", *sums(g["clicks"], g["impressions"])],
         ["ctr_requests", *sums(with_req["clicked_requests"], with_req["requests"])]],
        columns=["metric", "n", "sum_num", "sum_den", "sum_num2", "sum_den2", "sum_num_den"])


def test_ctr_sums_from_the_shared_table_are_those_of_the_telemetry(small_export):
    with open_export(small_export) as ex:
        frame = cohort.assign(qe.users_for_assignment(ex), 12, PLAN)
        qe.register_cohort(ex, frame)
        windows = [(PLAN.day_start(8), PLAN.day_start(13)), (PLAN.day_start(12),
                                                             PLAN.day_start(13))]
        direct = [qe.ratio_units(ex, lo, hi) for lo, hi in windows]  # nothing shared yet
        assert "wl_request_events" not in qm.request_events_source(ex, *windows[0])
        daily = qm.daily_series(ex, PLAN.day_start(0), PLAN.day_start(13))
        for (lo, hi), want in zip(windows, direct, strict=True):
            assert "wl_request_events" in qm.request_events_source(ex, lo, hi)
            shared = qe.ratio_units(ex, lo, hi)
            pd.testing.assert_frame_equal(shared, want)
            ref = _pandas_ratio(ex, lo, hi, frame)
            pd.testing.assert_frame_equal(shared.astype({"n": "int64"}),
                                          ref.astype({"n": "int64"}), check_dtype=False)
        assert direct[0].loc[0, "n"] > 100  # a real comparison
        # a window the table does not hold, or not whole days: the telemetry is read
        late = (PLAN.day_start(12), PLAN.day_start(14))
        half = (PLAN.day_start(12) + dt.timedelta(hours=6), PLAN.day_start(13))
        for lo, hi in (late, half):
            assert "wl_request_events" not in qm.request_events_source(ex, lo, hi)
        pd.testing.assert_frame_equal(qe.ratio_units(ex, *half),
                                      _pandas_ratio(ex, *half, frame), check_dtype=False)
        # the daily series' impressions, clicks and shown users, from the raw rows
        ev = ex.sql("SELECT CAST(created_at AS DATE) AS date, user_id, event_type "
                    "FROM telemetry WHERE event_type IN ('whispers_shown', 'whispers_used') "
                    "AND created_at < $hi", {"hi": PLAN.day_start(13)})
        shown = ev.loc[ev["event_type"] == "whispers_shown"]
        want = pd.DataFrame({
            "impressions": shown.groupby("date").size(),
            "clicks": ev.loc[ev["event_type"] == "whispers_used"].groupby("date").size(),
            "shown_users": shown.groupby("date")["user_id"].nunique()}).fillna(0)
        got = daily.set_index("date")[["impressions", "clicks", "shown_users"]]
        got = got.loc[got["impressions"] + got["clicks"] > 0]
        want.index = pd.to_datetime(want.index)
        got.index = pd.to_datetime(got.index)
        pd.testing.assert_frame_equal(got, want.astype("int64"), check_dtype=False,
                                      check_names=False)


def test_first_exposures_are_shared_and_the_same_as_computed_alone(small_export):
    """srm_counts, exposure_quality and srm_counts_by_state read one first-exposure table;
    with a memoizing export it is made once, and every figure is the same as without."""
    from whispers_lab import state as st

    t0, hi = PLAN.day_start(0), PLAN.day_start(13)
    results = []
    for memo in (False, True):
        with open_export(small_export) as ex:
            ex.memoize(memo)
            users = qe.users_for_assignment(ex)
            bucket, category, _ = cohort.categories(users, PLAN)
            qe.register_cohort(ex, cohort.assign(users, 12, PLAN))
            qs.register_assignment(ex, users["user_id"],
                                   [cohort.CATEGORY_NAMES[int(c)] for c in category], bucket)
            qs.register_intervals(ex, st.resolve_state(ex, PLAN, 12).intervals(12))
            results.append((qe.srm_counts(ex, PLAN.start_date, t0, hi),
                            qe.exposure_quality(ex, PLAN.start_date, t0, hi),
                            qs.srm_counts_by_state(ex, PLAN.start_date, t0, hi)))
            first = ex.sql("SELECT user_id, min(exposed_at) AS first_at FROM exposures "
                           "WHERE exposed_at >= $t0 AND exposed_at < $hi GROUP BY 1",
                           {"t0": t0, "hi": hi})
            assert results[-1][1]["exposed"] == len(first) > 100
    (a, b, c), (a2, b2, c2) = results
    pd.testing.assert_frame_equal(a, a2)
    assert b == b2
    pd.testing.assert_frame_equal(c, c2)
    assert c["n_t"].sum() + c["n_c"].sum() > 0


def test_labels_cast_in_arrow_are_the_labels_pandas_gives():
    """The cohort's reasons and assignment categories are cast from a categorical's codes in
    Arrow (no Python string per row): the same labels as pandas' own cast, missing kept
    missing (reasons) or bucketed (categories, as before)."""
    from whispers_lab.stats.experiment import _categories

    rng = np.random.default_rng(3)
    reasons = ["internal", "beta", "percentage", "holdout", "not_eligible"]
    codes = rng.integers(-1, len(reasons), 5_000)  # -1: missing
    cat = pd.Series(pd.Categorical.from_codes(codes, categories=reasons))
    want = cat.astype(str)
    got = qe.label_strings(cat)
    assert got.isna().sum() == (codes < 0).sum() > 0
    pd.testing.assert_series_equal(got, want, check_dtype=False)
    text = want.where(want.isin(("internal", "beta", "holdout")), "bucketed")
    for values in (cat, cat.astype(object)):  # categorical, and plain objects
        pd.testing.assert_series_equal(_categories(values), text, check_dtype=False)
    assert qe.label_strings(cat, {"beta": "b"}).eq("b").sum() == (codes == 1).sum()
