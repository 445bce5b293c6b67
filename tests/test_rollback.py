"""Rollback confirmation: the checks as pure functions, the simulator's rollback scenarios, and
``whispers-lab confirm-rollback`` end to end on a clean rollback, a stale CDN and a too-early
export."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from whispers_lab import rollback as rb
from whispers_lab.cli import main
from whispers_lab.errors import PlanError
from whispers_lab.paths import DEFAULT_PLAN
from whispers_lab.plan import load_plan
from whispers_lab.report.confirmation import attach_to_days, collect_confirmations
from whispers_lab.simulate import read_truth, simulate, simulate_to

PLAN = load_plan()
S = rb.settings_from_plan(PLAN)
FLIP = dt.datetime(2026, 12, 10, 18, 50)
#: Enough users for 100+ recap requests in the 10 judged minutes of a simulated evening.
USERS, SEED = 30_000, 3


# -- settings ---------------------------------------------------------------------------------


def test_settings_come_from_the_plan_and_bad_ones_name_the_key(tmp_path: Path):
    assert S.monitor_minutes == PLAN.rollback_monitor_minutes == 15
    assert S.allowance_minutes == 5 and S.post_minutes == 10
    text = DEFAULT_PLAN.read_text(encoding="utf-8")
    for old, new, words in (
        ("allowance_minutes = 5 ", "allowance_minutes = 20 ", "allowance_minutes' .20."),
        ("alpha = 0.05                # one-sided", "alpha = 'x'  # one-sided",
         "alpha' must be a number"),
        ("residual_share = 0.02 ", "residual_shares = 0.02 ", "residual_shares' is not a known"),
    ):
        bad = tmp_path / "bad.toml"
        bad.write_text(text.replace(old, new), encoding="utf-8")
        with pytest.raises(PlanError, match=words):
            rb.settings_from_plan(load_plan(bad))


# -- checks -----------------------------------------------------------------------------------


def test_traffic_stopped_allows_the_first_minutes_and_a_small_residual():
    # normal: 600 requests in the 120-minute baseline = 5 a minute; 2% of 5 x 10 min = 1 allowed
    ok = rb.stopped_check("whispers_traffic", "requests", 40, 1, 600, S)
    assert ok.status == "pass" and ok.limit == 1 and ok.details["within_allowance"] == 40
    bad = rb.stopped_check("whispers_traffic", "requests", 40, 2, 600, S,
                           dt.datetime(2026, 12, 10, 18, 56), dt.datetime(2026, 12, 10, 19, 4))
    assert bad.status == "fail" and "from 18:56:00 to 19:04:00 UTC" in bad.reason
    assert bad.details["share_of_pre_flip_rate"] == pytest.approx(2 / 50)
    none_before = rb.stopped_check("whispers_shown", "events", 0, 0, 0, S)
    assert none_before.status == "inconclusive"


def test_recap_error_check_pass_fail_inconclusive_and_minimum():
    assert rb.recap_error_check(1, 200, 10, 2000, S).status == "pass"
    fail = rb.recap_error_check(30, 200, 10, 2000, S)
    assert fail.status == "fail" and fail.details["p_value"] < 1e-6
    # above the tolerance but on too little evidence: not shown either way
    assert rb.recap_error_check(2, 110, 10, 2000, S).status == "inconclusive"
    few = rb.recap_error_check(0, 20, 10, 2000, S)
    assert few.status == "inconclusive" and "Only 20 recap request(s)" in few.reason
    assert rb.recap_error_check(0, 500, 0, 30, S).status == "inconclusive"
    # the p-value is scipy's one-sided Fisher exact test
    p = sps.fisher_exact([[30, 170], [10, 1990]], alternative="greater").pvalue
    assert fail.details["p_value"] == pytest.approx(p)


def test_recap_latency_check_matches_welch_on_the_raw_values():
    rng = np.random.default_rng(0)
    base = rng.lognormal(np.log(80), 0.4, 3000)
    post = rng.lognormal(np.log(120), 0.4, 300)
    c = rb.recap_latency_check(len(post), post.sum(), (post ** 2).sum(), len(base), base.sum(),
                               (base ** 2).sum(), S)
    ref = sps.ttest_ind(post, base, equal_var=False, alternative="greater")
    assert c.details["p_value"] == pytest.approx(ref.pvalue, rel=1e-6)
    assert c.details["post_sd_ms"] == pytest.approx(post.std(ddof=1))
    assert c.status == "fail"
    back = rng.lognormal(np.log(80), 0.4, 300)
    c = rb.recap_latency_check(len(back), back.sum(), (back ** 2).sum(), len(base), base.sum(),
                               (base ** 2).sum(), S)
    assert c.status == "pass"


def test_verdict_and_baseline_window():
    ok = rb.Check("x", "pass", 0, 0, "")
    assert rb.verdict_of((ok, ok), covered=True) == "confirmed"
    assert rb.verdict_of((ok, rb.Check("y", "inconclusive", 0, 0, "")), True) == "not_confirmed"
    assert rb.verdict_of((ok,), covered=False) == "too_early"
    (lo, hi), why = rb.baseline_window(FLIP, S)
    assert hi == FLIP - dt.timedelta(days=1) and hi - lo == dt.timedelta(minutes=120)
    assert "day before" in why
    (lo, hi), _ = rb.baseline_window(FLIP, S, FLIP - dt.timedelta(minutes=20))
    assert hi == dt.datetime(2026, 12, 10, 18, 30)
    with pytest.raises(ValueError, match="after the flip"):
        rb.baseline_window(FLIP, S, FLIP + dt.timedelta(minutes=1))


# -- the simulator's rollback scenarios -------------------------------------------------------


def test_scenarios_stop_whispers_at_the_flip_except_in_flight_and_stale():
    sims = {name: simulate(3000, 7, through_day=9, scenarios=[name])
            for name in ("rollback_clean", "rollback_stale_cdn")}
    for name, sim in sims.items():
        (entry,) = sim.truth["scenarios"]
        assert entry["expected"]["disabled_at"] == "2026-12-10T18:50:00"
        assert entry["expected"]["trigger"] == "trigger_error_rate"
        api = sim.frame("api_logs")
        w = api[api.endpoint == "/api/whispers/context"]
        late = w[w.timestamp >= FLIP + dt.timedelta(seconds=90)]
        shown = sim.frame("telemetry")
        shown = shown[(shown.event_type == "whispers_shown")
                      & (shown.created_at >= FLIP + dt.timedelta(minutes=2))]
        if name == "rollback_clean":
            assert entry["expected"]["confirmation"] == "confirmed"
            assert len(late) == 0 and len(shown) == 0
            assert entry["planted"]["stale"] == 0 and entry["planted"]["dropped"] > 0
        else:
            assert entry["expected"]["confirmation"] == "not_confirmed"
            assert len(late) == entry["planted"]["stale"] > 0 and len(shown) > 0
        # the recap endpoint is slower during the incident, normal after it
        recap = api[api.endpoint == "/api/recap"]
        during = recap[(recap.timestamp >= FLIP - dt.timedelta(minutes=20))
                       & (recap.timestamp < FLIP)].duration_ms.mean()
        after = recap[recap.timestamp >= FLIP].duration_ms.mean()
        assert during > 1.15 * after
    # the days before the scenario's day are those of a rollout without it
    healthy = simulate(3000, 7, through_day=9)
    a = healthy.frame("api_logs")
    b = sims["rollback_clean"].frame("api_logs")
    cut = PLAN.day_start(9)
    assert a[a.timestamp < cut].equals(b[b.timestamp < cut])


# -- end to end -------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["rollback_clean", "rollback_stale_cdn"])
def confirmed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    name = request.param
    folder = tmp_path_factory.mktemp(name)
    export, truth = simulate_to(folder / f"{name}.duckdb", users=USERS, seed=SEED,
                                through_day=9, scenarios=[name])
    (entry,) = read_truth(truth)["scenarios"]
    out = folder / "reports"
    # the day's ROLLBACK report, as the daily job left it (its fired window gives the incident)
    day_dir = out / "day-09"
    day_dir.mkdir(parents=True)
    (day_dir / "decision.json").write_text(json.dumps({
        "decision": "ROLLBACK", "day": 9, "reasons": ["trigger"],
        "triggers": [{"id": "trigger_error_rate", "details": {"windows": [
            {"start": entry["start"], "end": entry["end"], "fired": True}]}}]}), encoding="utf-8")
    code = main(["confirm-rollback", "--export", str(export), "--disabled-at",
                 entry["expected"]["disabled_at"] + "Z", "--out", str(out)])
    (page_dir,) = out.glob("rollback-*")
    doc = json.loads((page_dir / "confirmation.json").read_text(encoding="utf-8"))
    return {"code": code, "entry": entry, "doc": doc, "out": out, "dir": page_dir,
            "export": export}


@pytest.mark.slow
def test_confirmation_matches_the_truth(confirmed):
    doc, entry = confirmed["doc"], confirmed["entry"]
    assert doc["verdict"] == entry["expected"]["confirmation"]
    assert confirmed["code"] == {"confirmed": 0, "not_confirmed": 3}[doc["verdict"]]
    checks = {c["id"]: c for c in doc["checks"]}
    assert checks["recap_errors"]["status"] == "pass"
    assert checks["recap_latency"]["status"] == "pass"
    assert doc["baseline"]["end"] == entry["start"]  # found in the ROLLBACK report
    if doc["verdict"] == "confirmed":
        assert checks["whispers_traffic"]["status"] == "pass"
        assert checks["whispers_traffic"]["details"]["after_allowance"] == 0
    else:
        assert checks["whispers_traffic"]["status"] == "fail"
        assert checks["whispers_shown"]["status"] == "fail"
        assert any("CDN" in a for a in doc["actions"])
    assert len(doc["per_minute"]) == 30 + 15 + 5
    assert doc["rollout_day"] == 9 and doc["disabled_at"] == entry["expected"]["disabled_at"]


@pytest.mark.slow
def test_confirmation_page_is_self_contained_and_linked_from_the_index(confirmed):
    page = (confirmed["dir"] / "confirmation.html").read_text(encoding="utf-8")
    assert "data:image/png;base64," in page and "<script" not in page.lower()
    assert 'src="http' not in page and "href=\"http" not in page
    label = {"confirmed": "ROLLBACK CONFIRMED", "not_confirmed": "ROLLBACK NOT CONFIRMED"}
    assert label[confirmed["doc"]["verdict"]] in page
    index = (confirmed["out"] / "index.html").read_text(encoding="utf-8")
    assert f"{confirmed['dir'].name}/confirmation.html" in index
    row = index[index.index("<tr class='current'><td data-label='Day'>9</td>"):]
    assert row.index(confirmed["dir"].name) < row.index("</tr>")  # in day 9's row
    assert not [p for p in confirmed["out"].iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_too_early_when_the_export_ends_inside_the_monitor_window(confirmed, tmp_path: Path):
    if confirmed["entry"]["name"] != "rollback_clean":
        pytest.skip("one export is enough")
    code = main(["confirm-rollback", "--export", str(confirmed["export"]), "--disabled-at",
                 "2026-12-10T23:52:00", "--out", str(tmp_path)])
    assert code == 4
    doc = json.loads(next(tmp_path.glob("rollback-*/confirmation.json")).read_text())
    assert doc["verdict"] == "too_early" and "Too early" in doc["reasons"][0]
    # a re-run replaces the verdict of the same flip, one folder per flip
    main(["confirm-rollback", "--export", str(confirmed["export"]), "--disabled-at",
          "2026-12-10T23:52:00+00:00", "--out", str(tmp_path)])
    assert len(collect_confirmations(tmp_path)) == 1


def test_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit):
        main(["confirm-rollback", "--export", "x.duckdb", "--disabled-at", "yesterday"])
    code = main(["confirm-rollback", "--export", str(tmp_path / "missing.duckdb"),
                 "--disabled-at", "2026-12-10T18:50", "--out", str(tmp_path)])
    assert code == 1 and "missing.duckdb" in capsys.readouterr().err


def test_confirmations_attach_to_the_rollback_day():
    conf = [{"folder": "rollback-a", "verdict": "confirmed", "disabled_at": "x", "rollout_day": 10},
            {"folder": "rollback-b", "verdict": "too_early", "disabled_at": "y", "rollout_day": 3}]
    days = {8: {"decision": "GO"}, 9: {"decision": "ROLLBACK"}, 10: {"decision": "NO_GO"}}
    assert attach_to_days(conf, days) == {9: [conf[0]], 3: [conf[1]]}
