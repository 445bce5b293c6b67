"""Monte Carlo error rates of the daily decision: healthy rollouts held, planted harms caught.

    .venv/bin/python benchmarks/mc_decisions.py                      # the full study (long)
    .venv/bin/python benchmarks/mc_decisions.py --users 100000 --reps 200 --effects null drop3
    .venv/bin/python benchmarks/mc_decisions.py --populations steady churny late --users 100000

Each replicate draws a user base and its daily activity from the simulator's activity model
(:mod:`whispers_lab.simulate.activity`: a Beta daily-visit propensity, weekend factor, visits
independent across days given the propensity, a treatment effect acting on the days after a
user's first treated visit), assigns buckets uniformly (what the hash does), enables them on the
plan's stage days, and draws what the decision reads: app opens (retention), support tickets,
whispers impressions and clicks, survey answers, request errors and weight fallbacks, first
exposures (SRM). The sufficient statistics are built with the package's own numpy twin of the
SQL (:func:`whispers_lab.stats.staggered.cells_from_activity`, tested equal to the SQL), and the
package's statistics, rules and :func:`whispers_lab.decision.decide` turn them into each day's
decision for days 8-14. Latency, uptime and the operational checks are not drawn (they pass);
the end-to-end benchmark (``e2e_healthy.py``) covers them on real exports.

Effects (``--effects``): ``null`` (no effect on anything), ``lift`` (+1 pp daily return, the
simulator's healthy default), ``drop3`` (-3 pp daily return probability after a user's first
treated visit: a 3-point D1 drop), ``tickets2x`` (treated users file tickets at twice the rate).
Populations (``--populations``): ``realistic`` (the simulator's defaults: at least 85% of the
users active on days 8-14 were active on days 0-7), ``steady`` (busy users), ``churny`` (rare
visitors), ``late`` (30% of users sign up during the rollout), ``heavy_tail`` (a few very active
users among many dormant ones). ``--legacy`` also runs the first build's retention and ticket
rules on the same draws, for before/after figures.

Prints, per population, size and effect: replicates, the share held (NO_GO or ROLLBACK) on any
of days 8-14 with its Monte Carlo standard error, the share held by day 11, 12 and 14, the
share whose retention passed by day 12 next to the mean chance of that which the report's design
power (:func:`whispers_lab.stats.experiment.observed_design_power`) gave on day 9 from the traffic
seen so far, and what held it. Results go to ``benchmarks/results/mc_decisions.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from whispers_lab import cohort, rules  # noqa: E402
from whispers_lab.decision import decide  # noqa: E402
from whispers_lab.plan import CRITERION_IDS, TRIGGER_IDS, Plan, load_plan  # noqa: E402
from whispers_lab.results import CriterionResult  # noqa: E402
from whispers_lab.simulate.params import ModelParams  # noqa: E402
from whispers_lab.stats import design as dz  # noqa: E402
from whispers_lab.stats.experiment import (  # noqa: E402
    observed_design_power,
    plan_schedule,
    srm_coded,
)
from whispers_lab.stats.rates import proportion_vs_threshold, ratio_vs_threshold  # noqa: E402
from whispers_lab.stats.retention import (  # noqa: E402
    StagedData,
    baseline_rate,
    margin_in_force,
    retention_history,
)
from whispers_lab.stats.settings import StatSettings  # noqa: E402
from whispers_lab.stats.srm import srm_test  # noqa: E402
from whispers_lab.stats.staggered import (  # noqa: E402
    cells_from_activity,
    preperiod_lags_from_activity,
)
from whispers_lab.stats.sufficient import RatioStat, ratio_from_units  # noqa: E402
from whispers_lab.stats.tickets import (  # noqa: E402
    schedule_user_days,
    ticket_history,
    ticket_result,
)

RESULTS = ROOT / "benchmarks" / "results" / "mc_decisions.json"
PRE = 14
DAYS = range(8, 15)


@dataclass(frozen=True)
class Population:
    name: str
    beta: tuple[float, float]
    late_share: float = 0.0        # users signing up uniformly over days 0..14
    dormant_share: float = 0.0     # users with a tiny propensity (heavy tail)


POPULATIONS: dict[str, Population] = {
    "realistic": Population("realistic", ModelParams().activity_beta),
    "steady": Population("steady", (4.0, 3.0)),
    "churny": Population("churny", (0.6, 2.4)),
    "late": Population("late", ModelParams().activity_beta, late_share=0.30),
    "heavy_tail": Population("heavy_tail", (0.8, 0.8), dormant_share=0.5),
}
EFFECTS = ("null", "lift", "drop3", "tickets2x")


def _weekend(plan: Plan, day: int) -> bool:
    return (plan.start_date + pd.Timedelta(days=day)).weekday() >= 5


def simulate_rollout(n: int, pop: Population, effect: str, plan: Plan, rng: np.random.Generator,
                     params: ModelParams) -> dict[str, Any]:
    """One rollout's per-user draws (days -PRE..14), vectorised over users."""
    a, b = pop.beta
    prop = rng.beta(a, b, n)
    if pop.dormant_share:
        dormant = rng.random(n) < pop.dormant_share
        prop[dormant] = rng.beta(0.3, 12.0, int(dormant.sum()))
    signup = np.full(n, -10 * PRE)
    if pop.late_share:
        late = rng.random(n) < pop.late_share
        signup[late] = rng.integers(0, 15, int(late.sum()))
    bucket = rng.integers(0, plan.assignment.buckets, n)
    days_thr = [(d, cohort.stage_threshold(p, plan)) for d, p in plan.percentage_stages()]
    f = np.full(n, np.inf)
    for d, thr in reversed(days_thr):
        f[bucket < thr] = d
    f[bucket >= cohort.holdout_start(plan)] = np.inf
    lift = {"lift": params.retention_lift, "drop3": -0.03}.get(effect, 0.0)
    n_days = PRE + 15
    active = np.zeros((n, n_days), dtype=bool)
    treated_since = np.full(n, np.inf)
    for i, d in enumerate(range(-PRE, 15)):
        p = prop * (params.weekend_factor if _weekend(plan, d) else 1.0)
        if lift:
            p = p + lift * (treated_since < d)
        p = np.clip(p, 0.0, params.max_daily_prob)
        act = (rng.random(n) < p) & (signup <= d)
        active[:, i] = act
        newly = act & (f <= d) & ~np.isfinite(treated_since)
        treated_since[newly] = d
    return {"f": f, "active": active, "signup": signup, "rng": rng, "n": n}


def _ticket_days(sim: dict[str, Any], effect: str, rate: float, plan: Plan,
                 rng: np.random.Generator) -> tuple[pd.DataFrame, float]:
    f, signup = sim["f"], sim["signup"]
    rows = []
    for d in DAYS:
        known = signup <= d
        for arm, mask in (("treatment", known & (f <= d)), ("control", known & (f > d))):
            users = float(mask.sum())
            mult = 2.0 if (effect == "tickets2x" and arm == "treatment") else 1.0
            rows.append({"day": d, "arm": arm, "users": users,
                         "tickets": int(rng.poisson(rate * mult * users))})
    pre_users = float(sum((signup <= d).sum() for d in range(-PRE, 0)))
    pre_tickets = float(rng.poisson(rate * pre_users))
    return pd.DataFrame(rows), (pre_tickets / pre_users if pre_users else 0.0)


def _engagement(sim: dict[str, Any], plan: Plan, rng: np.random.Generator,
                params: ModelParams) -> dict[int, dict[str, Any]]:
    """Per day: cumulative CTR / feedback / relevance stats and the day's request counts."""
    f, active, n = sim["f"], sim["active"], sim["n"]
    user_ctr = rng.beta(2.0, 8.0, n)   # mean 0.20 against the 15% target
    imp = np.zeros(n)
    clk = np.zeros(n)
    rating_sum = np.zeros(n)
    answers = np.zeros(n)
    relevant = np.zeros(n)
    probs = np.asarray(params.rating_probs) / sum(params.rating_probs)
    out = {}
    for d in DAYS:
        i = d + PRE
        treated = active[:, i] & (f <= d)
        idx = np.flatnonzero(treated)
        req = 1 + rng.poisson(1.0, idx.size)
        shown = 6 * req
        imp[idx] += shown
        day_clicks = rng.binomial(shown, user_ctr[idx])
        clk[idx] += day_clicks
        ans = idx[rng.random(idx.size) < params.feedback_rate]
        rating_sum[ans] += rng.choice(np.arange(1, 6), ans.size, p=probs)
        answers[ans] += 1
        relevant[ans] += rng.random(ans.size) < params.relevant_true
        has_imp = imp > 0
        has_ans = answers > 0
        requests = float(req.sum())
        errors = float(rng.binomial(int(requests), params.whispers_error_rate))
        fallbacks = float(rng.binomial(int(requests), params.fallback_rate))
        out[d] = {"ctr": ratio_from_units(clk[has_imp], imp[has_imp]),
                  "ctr_day": ratio_from_units(day_clicks, shown),
                  "feedback": ratio_from_units(rating_sum[has_ans], answers[has_ans]),
                  "relevance": ratio_from_units(relevant[has_ans], answers[has_ans]),
                  "requests": requests, "errors": errors, "fallbacks": fallbacks}
    return out


def _independent(events: float, n: float) -> RatioStat:
    """Counts of independent requests as a ratio statistic (one request per cluster)."""
    return RatioStat(int(n), events, n, events, n, events)


def _first_exposure(sim: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Each user's first active day from day 0 (the simulator serves the first exposure at the
    first visit) and whether they were served treatment then; users never active: day -1."""
    rows = sim["active"][:, PRE:]
    has = rows.any(axis=1)
    e = np.where(has, np.argmax(rows, axis=1), -1)
    return e, sim["f"] <= e


def _srm(sim: dict[str, Any], plan: Plan, s: StatSettings, day: int) -> Any:
    e_all, treat_all = sim["first_exposure"]
    keep = (e_all >= 0) & (e_all <= day)
    e, treat = e_all[keep], treat_all[keep]
    days = np.arange(day + 1)
    n_t = np.bincount(e, weights=treat, minlength=day + 1)
    n_all = np.bincount(e, minlength=day + 1)
    frame = pd.DataFrame({"day": days, "n_t": n_t.astype(int), "n_c": (n_all - n_t).astype(int),
                          "share_t": [cohort.expected_split(int(d), plan).treatment_share
                                      for d in days]})
    return srm_coded(srm_test(frame, s, day))


def replicate(args: tuple[int, int, str, str, int, bool]) -> dict[str, Any]:
    """One rollout: each day's decision and what held it."""
    users, seed, pop_name, effect, rep, legacy = args
    warnings.simplefilter("ignore")
    plan = load_plan()
    s = StatSettings.from_plan(plan)
    params = ModelParams()
    rng = np.random.default_rng([seed, rep, users, EFFECTS.index(effect),
                                 list(POPULATIONS).index(pop_name)])
    sim = simulate_rollout(users, POPULATIONS[pop_name], effect, plan, rng, params)
    sim["first_exposure"] = _first_exposure(sim)
    sched = plan_schedule(plan)
    base = -PRE
    cells, pairs = cells_from_activity(sim["active"], sim["f"], sched.stages, base,
                                       s.covariate_days, [s.primary_k], 14)
    lags = preperiod_lags_from_activity(sim["active"], base, [s.primary_k])
    profile = dz.arrival_profile(lags, users, sched.final_day - min(sched.stages) + 1)
    counts = pd.DataFrame({"f_day": sim["f"]}).value_counts().rename("n").reset_index()
    shares = dz.ArmShares.from_counts(counts)
    data = StagedData(cells, pairs, sched, profile, shares, users,
                      {s.primary_k: baseline_rate(lags, s.primary_k)})
    tickets, pre_rate = _ticket_days(sim, effect, params.ticket_rate, plan, rng)
    future = schedule_user_days(counts, min(sched.stages), sched.final_day)
    eng = _engagement(sim, plan, rng, params)
    margin, _ = margin_in_force(s, data.baseline.get(s.primary_k))
    hist = retention_history(data, s.primary_k, max(DAYS), margin, s).set_index("day")
    # what the report shows on day 9: the chance to pass retention by day 12 on this traffic
    design = observed_design_power(data, retention_history(data, s.primary_k, 9, margin, s),
                                   margin, s, 12)
    t_hist = ticket_history(tickets, min(sched.stages), max(DAYS), sched.final_day, future,
                            pre_rate, plan.threshold("support_ticket_rate_ratio", max(DAYS)), s)
    out_days = {}
    for d in DAYS:
        if d in hist.index:
            row = hist.loc[d]
            ret = CriterionResult("retention", "criterion", float(row["diff"]), -margin,
                                  row["status"], "drawn", code=row["code"])
        else:
            ret = CriterionResult("retention", "criterion", None, -margin, "no_data", "drawn")
        tk, _ = ticket_result(tickets.loc[tickets["day"] <= d], min(sched.stages), d,
                              sched.final_day, future, pre_rate,
                              plan.threshold("support_ticket_rate_ratio", d), s,
                              history=t_hist)
        e = eng[d]
        first = plan.window_start("ctr", d)
        agg = [eng[x] for x in range(plan.window_start("error_rate", d), d + 1) if x in eng]
        req = sum(x["requests"] for x in agg)
        results = {
            "retention": ret,
            "support_tickets": rules.from_stat("support_tickets", tk, plan, d),
            "srm": rules.from_stat("srm", _srm(sim, plan, s, d), plan, d),
            "ctr": rules.from_stat("ctr", ratio_vs_threshold(
                "ctr", e["ctr"], plan.threshold("ctr", d), "min", s, f"CTR days {first}-{d}",
                tolerance=plan.tolerance["ctr"]), plan, d),
            "feedback_score": rules.from_stat("feedback_score", ratio_vs_threshold(
                "feedback_score", e["feedback"], plan.threshold("feedback_score", d), "min", s,
                "Feedback", fmt="{:.2f}", tolerance=plan.tolerance["feedback_score"]), plan, d),
            "relevance": rules.from_stat("relevance", proportion_vs_threshold(
                "relevance", e["relevance"], plan.threshold("relevance", d), s, "Relevance",
                tolerance=plan.tolerance["relevance"]), plan, d),
            "error_rate": rules.error_rate(_win("errors", sum(x["errors"] for x in agg), req),
                                           plan, d),
            "weight_fallback_rate": rules.weight_fallback_rate(
                _win("fallbacks", sum(x["fallbacks"] for x in agg), req), plan, d),
        }
        crit = tuple(results.get(cid) or CriterionResult(cid, "criterion", 0.0, 0.0, "pass",
                                                          "not drawn")
                     for cid in CRITERION_IDS)
        trig = tuple(CriterionResult(t, "trigger", 0.0, 0.0, "pass", "not drawn")
                     for t in TRIGGER_IDS)
        dec = decide(crit + trig, d, plan)
        out_days[d] = {"decision": dec.decision, "code": dec.code,
                       "blocking": list(dec.blocking) + list(dec.fired) + list(dec.harm)}
    if legacy:
        for d, v in _legacy_days(sim, tickets, eng, plan).items():
            out_days[d]["legacy"] = v
    return {"rep": rep, "days": out_days,
            "design_power_by_12": design["power_by_day"] if design else None,
            "retention_passed_by_12": bool(12 in hist.index and hist.loc[12, "status"] == "pass")}


def _win(prefix: str, events: float, n: float) -> dict[str, Any]:
    st = _independent(events, n)
    return {f"{prefix}_n": st.n, f"{prefix}_num": st.sum_num, f"{prefix}_den": st.sum_den,
            f"{prefix}_num2": st.sum_num2, f"{prefix}_den2": st.sum_den2,
            f"{prefix}_numden": st.sum_num_den, "requests": n}


# ---------------------------------------------------------------------------------------
# the first build's rules (for before/after), on the same draws


def _legacy_days(sim: dict[str, Any], tickets: pd.DataFrame, eng: dict[int, dict[str, Any]],
                 plan: Plan) -> dict[int, dict[str, Any]]:
    """The first build's verdicts on days 8-14: retention on first-exposure strata
    (:mod:`whispers_lab.stats.first_exposure`: a unit counts only when first served after its
    enabling day; control switched before its window closed is dropped; O'Brien-Fleming
    spending over 7 calendar looks); tickets pooled over days with the exact conditional test
    at alpha each day; CTR on the day alone, passing only when its lower bound clears the
    target."""
    from scipy import stats as sst

    from whispers_lab.stats.first_exposure import cells_from_activity as legacy_cells
    from whispers_lab.stats.first_exposure import first_exposure_history
    from whispers_lab.stats.rates import exact_rate_ratio_ci

    cells = legacy_cells(sim["active"], sim["f"], -PRE, [1], max(DAYS))
    hist = first_exposure_history(cells, 1, max(DAYS), min(DAYS), 0.02).set_index("day")
    out = {}
    for d in DAYS:
        status = {"retention": str(hist.loc[d, "status"]) if d in hist.index else "no_data"}
        cum = tickets.loc[tickets["day"] <= d].groupby("arm")[["users", "tickets"]].sum()
        lo, _ = exact_rate_ratio_ci(int(cum.loc["treatment", "tickets"]),
                                    float(cum.loc["treatment", "users"]),
                                    int(cum.loc["control", "tickets"]),
                                    float(cum.loc["control", "users"]), 0.05)
        status["support_tickets"] = "fail" if lo > 1.0 else "pass"
        ctr = eng[d]["ctr_day"]
        se = math.sqrt(ctr.var_of_ratio) if ctr.n > 1 else math.inf
        t = float(sst.t.isf(0.05, max(ctr.n - 1, 1)))
        status["ctr"] = "pass" if ctr.ratio - t * se > 0.15 else "inconclusive"
        phase = plan.phase_for_day(d)
        held = any((cid in phase.required and st != "pass")
                   or (cid in phase.watched and st == "fail") for cid, st in status.items())
        out[d] = {"held": held, **status}
    return out


# ---------------------------------------------------------------------------------------
# driver


def summarise(runs: list[dict[str, Any]], legacy: bool) -> dict[str, Any]:
    reps = len(runs)
    held_any = np.array([any(r["days"][d]["decision"] != "GO" for d in DAYS) for r in runs])

    def held_by(day: int) -> float:
        return float(np.mean([any(r["days"][d]["decision"] != "GO" for d in DAYS if d <= day)
                              for r in runs]))

    causes: dict[str, int] = {}
    for r in runs:
        for d in DAYS:
            for c in r["days"][d]["blocking"]:
                causes[c] = causes.get(c, 0) + 1
    out = {"reps": reps, "held_any": float(held_any.mean()),
           "held_any_se": float(math.sqrt(held_any.mean() * (1 - held_any.mean()) / reps)),
           "held_by_11": held_by(11), "held_by_12": held_by(12), "held_by_14": held_by(14),
           "rolled_back_by_14": float(np.mean([any(r["days"][d]["decision"] == "ROLLBACK"
                                                   for d in DAYS) for r in runs])),
           "held_days_mean": float(np.mean([sum(r["days"][d]["decision"] != "GO" for d in DAYS)
                                            for r in runs])),
           "causes": dict(sorted(causes.items(), key=lambda kv: -kv[1]))}
    predicted = [r["design_power_by_12"] for r in runs if r.get("design_power_by_12") is not None]
    out["retention_pass_by_12_predicted_day_9"] = float(np.mean(predicted)) if predicted else None
    out["retention_pass_by_12"] = float(np.mean([r["retention_passed_by_12"] for r in runs]))
    if legacy:
        out["legacy_held_any"] = float(np.mean([any(r["days"][d]["legacy"]["held"] for d in DAYS)
                                                for r in runs]))
        out["legacy_held_by_11"] = float(np.mean([any(r["days"][d]["legacy"]["held"]
                                                      for d in DAYS if d <= 11) for r in runs]))
        out["legacy_held_by_12"] = float(np.mean([any(r["days"][d]["legacy"]["held"]
                                                      for d in DAYS if d <= 12) for r in runs]))
        out["legacy_held_by_14"] = float(np.mean([any(r["days"][d]["legacy"]["held"]
                                                      for d in DAYS) for r in runs]))
    return out


def _predicted(summ: dict[str, Any]) -> str:
    """Retention passed by day 12: realised / predicted on day 9 by the report's design power."""
    pred = summ.get("retention_pass_by_12_predicted_day_9")
    return (f"{summ['retention_pass_by_12']:.3f} / " + (f"{pred:.3f}" if pred is not None
                                                         else "-"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, nargs="+", default=[20_000, 100_000, 1_000_000])
    ap.add_argument("--reps", type=int, default=1000, help="healthy replicates per cell")
    ap.add_argument("--harm-reps", type=int, default=None,
                    help="replicates for drop3 / tickets2x (default: --reps)")
    ap.add_argument("--effects", nargs="+", default=["null", "drop3", "tickets2x"],
                    choices=EFFECTS)
    ap.add_argument("--populations", nargs="+", default=["realistic"], choices=list(POPULATIONS))
    ap.add_argument("--seed", type=int, default=20261202)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--legacy", action="store_true", help="also the first build's rules")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    table = []
    started = time.time()
    print(f"{'population':<11} {'users':>9} {'effect':<10} {'reps':>5} {'held any 8-14':>16} "
          f"{'by 11':>6} {'by 12':>6} {'by 14':>6} {'rollback':>8} {'ret. pass by 12':>16}  "
          f"causes (blocking days)"
          + ("   legacy: any / by 11 / by 12 / by 14" if args.legacy else ""))
    with ProcessPoolExecutor(max_workers=max(args.workers, 1)) as pool:
        for pop in args.populations:
            for users in args.users:
                for effect in args.effects:
                    reps = args.reps if effect in ("null", "lift") else (args.harm_reps or args.reps)
                    t = time.time()
                    jobs = [(users, args.seed, pop, effect, r, args.legacy) for r in range(reps)]
                    runs = []
                    step = max(reps // 10, 1)
                    for r in pool.map(replicate, jobs, chunksize=max(1, reps // (20 * args.workers))):
                        runs.append(r)
                        if len(runs) % step == 0 and len(runs) < reps:
                            print(f"  ... {pop} {users:,} {effect}: {len(runs)}/{reps} "
                                  f"({time.time() - t:.0f} s)", file=sys.stderr, flush=True)
                    summ = summarise(runs, args.legacy)
                    summ.update({"population": pop, "users": users, "effect": effect,
                                 "seconds": time.time() - t})
                    table.append(summ)
                    causes = ", ".join(f"{k} {v}" for k, v in list(summ["causes"].items())[:4])
                    line = (f"{pop:<11} {users:>9,} {effect:<10} {reps:>5} "
                            f"{summ['held_any']:>8.3f} ±{summ['held_any_se']:.3f} "
                            f"{summ['held_by_11']:>6.3f} {summ['held_by_12']:>6.3f} "
                            f"{summ['held_by_14']:>6.3f} {summ['rolled_back_by_14']:>8.3f} "
                            f"{_predicted(summ):>16}  {causes}")
                    if args.legacy:
                        line += (f"   {summ['legacy_held_any']:.3f} / {summ['legacy_held_by_11']:.3f}"
                                 f" / {summ['legacy_held_by_12']:.3f} / {summ['legacy_held_by_14']:.3f}")
                    print(line, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"generated_in_s": time.time() - started, "seed": args.seed,
                                    "rows": table}, indent=2) + "\n")
    print(f"wrote {args.out} ({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
