"""Support tickets: a rate ratio stratified by calendar day, watched by a sequential harm test.

"No increase in support tickets". Each rollout day is its own randomised comparison: the users
enabled by that day (treatment) against the others, every randomised user counting one
user-day (intention to treat). The treated share moves from under 10% to 95% during the
rollout, so pooling days would let day-of-week and time-since-exposure effects leak into the
ratio; every statistic here is stratified by day instead.

* **Test of an increase** (the deterioration test): conditional on each day's ticket total
  ``M_d``, the treated count is Binomial(``M_d``, ``pi_d``) under "no increase", with
  ``pi_d = r N_td / (r N_td + N_cd)`` (``r`` the plan's tolerated ratio, 1). The exact
  conditional p-value of ``T = sum T_d`` (the stratified person-time test; its large-sample
  form is the Mantel-Haenszel score statistic ``sum(T_d - M_d pi_d) / sqrt(V)``) is put on the
  normal scale (:func:`exact_z`) and monitored over the daily looks with a share of the
  deterioration alpha (:mod:`.design`); the information is ``V = sum M_d pi_d (1 - pi_d)``.
* **Estimate and interval**: Poisson regression with a fixed effect per day and the log
  user-days as offset (statsmodels GLM): the common rate ratio and its Wald interval, naive and
  at the harm boundary.
* **Status**: fail when today's look crosses the harm boundary (an increase is shown); pass
  when it does not and the test could see an increase of ``max_informative_rate_ratio`` with
  the configured power (``exp((b + z_power) / sqrt(V))``); otherwise inconclusive: "no increase
  shown" from a handful of tickets proves nothing. A crossing is a hold (NO_GO), not a
  rollback, and a hold is reconsidered every day on all the data then in: a later look that no
  longer crosses is judged on its own, with the earlier crossing named in its reason. The
  chance that a rollout without an increase is ever held is the chance of ever crossing, which
  the design keeps at the test's alpha; not carrying a crossing forward only shortens a false
  alarm (a real increase keeps crossing as its evidence grows).

The projected maximum information uses the pre-rollout ticket rate and the schedule's user-days,
never a ticket of the rollout itself.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

from ..lazy import lazy_function, lazy_module
from ..results import StatResult
from . import design as dz
from .settings import StatSettings
from .sufficient import sums_by

signal = lazy_module("scipy.signal")
stats = lazy_module("scipy.stats")
Poisson = lazy_function("statsmodels.genmod.families", "Poisson")
GLM = lazy_function("statsmodels.genmod.generalized_linear_model", "GLM")

METHOD = ("Poisson rate ratio per user-day stratified by day (GLM with day effects); stratified "
          "conditional score test of an increase, sequential over the daily looks")


def wide_days(days: pd.DataFrame) -> pd.DataFrame:
    """``day, arm, users, tickets`` -> one row per day: ``day, n_t, n_c, t, c``."""
    if days is None or days.empty:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in ("day", "n_t", "n_c", "t", "c")})
    treat = (days["arm"] == "treatment").to_numpy()
    users = days["users"].to_numpy(float)
    tickets = days["tickets"].to_numpy(float)
    uniq, t = sums_by(days["day"].to_numpy(np.int64), n_t=users * treat, n_c=users * ~treat,
                      t=tickets * treat, c=tickets * ~treat)
    return pd.DataFrame({"day": uniq, **{c: t[c] for c in ("n_t", "n_c", "t", "c")}})


def score_statistic(wide: pd.DataFrame, ratio: float = 1.0) -> tuple[float, float]:
    """Stratified conditional score statistic of an increase and its information V."""
    if wide.empty:
        return math.nan, 0.0
    nt, nc = wide["n_t"].to_numpy(float), wide["n_c"].to_numpy(float)
    t, c = wide["t"].to_numpy(float), wide["c"].to_numpy(float)
    ok = (nt > 0) & (nc > 0)
    m = t + c
    with np.errstate(divide="ignore", invalid="ignore"):
        pi = np.where(ok, ratio * nt / (ratio * nt + nc), 0.0)
    u = float(((t - m * pi) * ok).sum())
    v = float((m * pi * (1 - pi) * ok).sum())
    return (u / math.sqrt(v) if v > 0 else math.nan), v


def exact_z(wide: pd.DataFrame, ratio: float = 1.0) -> float:
    """The stratified test of an increase on the normal scale, from its exact conditional
    distribution: given each day's total ``M_d`` the treated counts are independent
    Binomial(``M_d``, ``pi_d``), so ``T = sum T_d`` has the convolution of their pmfs; the
    exact p-value ``P(T >= t_obs)`` becomes ``z = Phi^-1(1 - p)``. With few tickets and a small
    treated share the binomial tail is heavier than the normal one, and the plain score
    statistic would cross a boundary near 2.8 about twice as often as it should; this z has
    the exact tail at every look (it equals the score statistic as counts grow)."""
    if wide.empty:
        return math.nan
    nt, nc = wide["n_t"].to_numpy(float), wide["n_c"].to_numpy(float)
    t, c = wide["t"].to_numpy(float), wide["c"].to_numpy(float)
    ok = (nt > 0) & (nc > 0) & ((t + c) > 0)
    if not ok.any():
        return math.nan
    pmf = np.ones(1)
    for m, pi in zip((t + c)[ok].astype(int), (ratio * nt / (ratio * nt + nc))[ok], strict=True):
        pmf = signal.fftconvolve(pmf, stats.binom.pmf(np.arange(m + 1), m, pi))
    pmf = np.clip(pmf, 0.0, None)
    pmf /= pmf.sum()
    t_obs = int(t[ok].sum())
    p = float(pmf[t_obs:].sum())
    return float(stats.norm.isf(min(max(p, 1e-300), 1.0)))


def poisson_ratio(wide: pd.DataFrame) -> tuple[float, float]:
    """log rate ratio and its standard error from a Poisson GLM with a fixed effect per day
    (offset log user-days). Days lacking an arm or without any ticket carry no information and
    are left out; (nan, nan) when nothing is left or the treated arm has no ticket."""
    w = wide.loc[(wide["n_t"] > 0) & (wide["n_c"] > 0) & ((wide["t"] + wide["c"]) > 0)]
    if w.empty or float(w["t"].sum()) == 0 or float(w["c"].sum()) == 0:
        return math.nan, math.nan
    k = len(w)
    y = np.concatenate([w["t"].to_numpy(float), w["c"].to_numpy(float)])
    expo = np.concatenate([w["n_t"].to_numpy(float), w["n_c"].to_numpy(float)])
    treat = np.concatenate([np.ones(k), np.zeros(k)])
    day_fx = np.vstack([np.eye(k), np.eye(k)])
    x = np.column_stack([treat, day_fx])
    with warnings.catch_warnings():   # a day without tickets in one arm: its effect is +-inf,
        warnings.simplefilter("ignore")  # which does not touch the common ratio
        fit = GLM(y, x, family=Poisson(), offset=np.log(expo)).fit()
    return float(fit.params[0]), float(fit.bse[0])


def projected_information(wide: pd.DataFrame, day: int, final_day: int,
                          future_users: pd.DataFrame, baseline_rate: float, ratio: float = 1.0
                          ) -> float:
    """Information V the test will have by ``final_day``: observed V plus, for each later day,
    ``rate x (N_t + N_c) x pi (1 - pi)`` with the pre-rollout ticket rate and the schedule's
    user-days (``future_users``: ``day, n_t, n_c``)."""
    _, v = score_statistic(wide.loc[wide["day"] <= day], ratio)
    fut = future_users.loc[(future_users["day"] > day) & (future_users["day"] <= final_day)]
    if fut.empty or not baseline_rate > 0:
        return v
    nt, nc = fut["n_t"].to_numpy(float), fut["n_c"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        pi = np.where((nt > 0) & (nc > 0), ratio * nt / (ratio * nt + nc), 0.0)
    return v + float((baseline_rate * (nt + nc) * pi * (1 - pi)).sum())


def ticket_history(days: pd.DataFrame, first_look: int, day: int, final_day: int,
                   future_users: pd.DataFrame, baseline_rate: float, threshold: float,
                   settings: StatSettings) -> pd.DataFrame:
    """One row per look day in ``[first_look, min(day, final_day)]``: cumulative tickets and
    user-days, z, information, fraction, harm boundary, crossed."""
    wide = wide_days(days)
    rows = []
    for d in range(first_look, min(day, final_day) + 1):
        cum = wide.loc[wide["day"] <= d]
        _, v = score_statistic(cum, threshold)
        z = exact_z(cum, threshold)
        vmax = projected_information(wide, d, final_day, future_users, baseline_rate, threshold)
        rows.append({"day": d, "tickets_t": float(cum["t"].sum()), "tickets_c": float(cum["c"].sum()),
                     "user_days_t": float(cum["n_t"].sum()), "user_days_c": float(cum["n_c"].sum()),
                     "z": z, "information": v, "information_max": vmax, "final": d >= final_day})
    hist = pd.DataFrame(rows, columns=["day", "tickets_t", "tickets_c", "user_days_t",
                                       "user_days_c", "z", "information", "information_max",
                                       "final"])
    hist["fraction"] = math.nan
    hist["boundary"] = math.nan
    hist["crossed"] = False
    looks = hist.index[(hist["information"] > 0) & np.isfinite(hist["z"])]
    if len(looks) == 0:
        return hist
    lk = hist.loc[looks]
    frac = dz.information_fractions(lk["information"], lk["information_max"], lk["final"])
    mon = dz.monitor_one_sided(lk["z"], lk["information"], frac, settings.harm_alpha,
                               settings.harm_sequential, settings.harm_sequential_param)
    hist.loc[looks, "fraction"] = frac
    hist.loc[looks, "boundary"] = mon.boundary
    hist.loc[looks, "crossed"] = mon.crossed
    return hist


def ticket_result(days: pd.DataFrame, first_look: int, day: int, final_day: int,
                  future_users: pd.DataFrame, baseline_rate: float, threshold: float,
                  settings: StatSettings, has_table: bool = True,
                  history: pd.DataFrame | None = None) -> tuple[StatResult, pd.DataFrame]:
    """The support-ticket criterion on ``day`` and its look history (see module doc).

    ``history``: the :func:`ticket_history` of a later day of the same data, when the caller
    has it (its rows up to ``day`` are this day's history: a look depends on earlier data
    only)."""
    metric = "support_tickets"
    wide = wide_days(days)
    cum = wide.loc[wide["day"] <= day]
    count_t, count_c = int(cum["t"].sum()), int(cum["c"].sum())
    ud_t, ud_c = float(cum["n_t"].sum()), float(cum["n_c"].sum())
    last = cum.iloc[-1] if len(cum) else None
    details = {"users_t": int(last["n_t"]) if last is not None else 0,
               "users_c": int(last["n_c"]) if last is not None else 0,
               "tickets_t": count_t, "tickets_c": count_c, "user_days_t": ud_t,
               "user_days_c": ud_c, "days": len(cum), "harm_alpha": settings.harm_alpha,
               "spending": settings.harm_sequential, "baseline_rate": baseline_rate}
    n = round(cum["n_t"].max() + cum["n_c"].max()) if len(cum) else 0
    if not has_table:
        return StatResult(metric, None, None, None, None, n, METHOD, "no_data",
                          "The export has no support_tickets table.", threshold,
                          details | {"code": "no_data"}), pd.DataFrame()
    if ud_t <= 0 or ud_c <= 0:
        return StatResult(metric, None, None, None, None, n, METHOD, "no_data",
                          "One arm has no user-days yet, so ticket rates cannot be compared.",
                          threshold, details | {"code": "no_data"}), pd.DataFrame()
    if history is not None:
        hist = history.loc[history["day"] <= day]
    else:
        hist = ticket_history(days, first_look, day, final_day, future_users, baseline_rate,
                              threshold, settings)
    crossed_days = [int(d) for d in hist.loc[hist["crossed"].astype(bool), "day"]]
    crossed = bool(len(hist)) and bool(hist["crossed"].iloc[-1])   # today's look
    b_now = hist["boundary"].dropna()
    b = float(b_now.iloc[-1]) if len(b_now) else float(stats.norm.isf(settings.harm_alpha))
    _, v = score_statistic(cum, threshold)
    z = exact_z(cum, threshold)
    z_pow = float(stats.norm.ppf(settings.power))
    mde = math.exp((b + z_pow) / math.sqrt(v)) * threshold if v > 0 else math.inf
    log_rr, se = poisson_ratio(cum)
    z_naive = float(stats.norm.isf(settings.alpha))
    if math.isfinite(log_rr):
        est = math.exp(log_rr)
        lo, hi = math.exp(log_rr - z_naive * se), math.exp(log_rr + z_naive * se)
        seq_lo = math.exp(log_rr - b * se)
    else:
        est = (count_t / ud_t) / (count_c / ud_c) if count_c > 0 else (math.inf if count_t else None)
        lo = hi = seq_lo = None
    p = float(stats.norm.sf(z)) if math.isfinite(z) else None
    details |= {"z": z, "information": v, "boundary": b, "mde_rate_ratio": mde,
                "sequential_low": seq_lo, "crude_ratio": ((count_t / ud_t) / (count_c / ud_c)
                                                          if count_c > 0 else None)}
    est_txt = f"{est:.2f}" if est is not None and math.isfinite(est) else "n/a"
    ci_txt = (f" ({settings.ci_level:.0%} CI {lo:.2f} to {hi:.2f})" if lo is not None else "")
    text = (f"Support tickets per user-day, treatment/control stratified by day = {est_txt}"
            f"{ci_txt}; {count_t} vs {count_c} tickets over {ud_t:,.0f} vs {ud_c:,.0f} user-days")
    details["crossed_days"] = crossed_days
    if crossed:
        today = int(hist["day"].iloc[-1])
        since = (f"; first crossed on day {crossed_days[0]}" if crossed_days[0] != today else "")
        return StatResult(metric, est, lo, hi, p, n, METHOD, "fail",
                          f"{text}: an increase is shown (harm boundary crossed on day "
                          f"{today}{since}).", threshold,
                          details | {"code": "harm_detected", "first_crossing": crossed_days[0]}
                          ), hist
    earlier = ""
    if crossed_days:
        listed = ", ".join(str(d) for d in crossed_days)
        earlier = (f" The harm boundary was crossed on day(s) {listed}; with the data since, an "
                   f"increase is no longer shown.")
    if count_t + count_c == 0:
        return StatResult(metric, None, None, None, None, n, METHOD, "inconclusive",
                          f"No support tickets in either arm over {ud_t + ud_c:,.0f} user-days: "
                          f"too few events to show there is no increase.", threshold,
                          details | {"code": "insufficient_evidence"}), hist
    if mde <= settings.max_informative_rate_ratio:
        return StatResult(metric, est, lo, hi, p, n, METHOD, "pass",
                          f"{text}: no increase is shown, and an increase of {mde:.2f}x would "
                          f"have been detected with {settings.power:.0%} power.{earlier}",
                          threshold, details | {"code": "pass"}), hist
    return StatResult(metric, est, lo, hi, p, n, METHOD, "inconclusive",
                      f"{text}: no increase is shown, but only an increase of {mde:.1f}x or more "
                      f"could be detected yet, so that proves little.{earlier}", threshold,
                      details | {"code": "insufficient_evidence"}), hist


def schedule_user_days(counts: pd.DataFrame, first_day: int, final_day: int) -> pd.DataFrame:
    """User-days per arm the schedule implies for days ``first_day..final_day``: ``day, n_t,
    n_c`` from the randomised users per enabling day (``f_day, n``)."""
    days = np.arange(first_day, final_day + 1)
    if counts is None or counts.empty:
        return pd.DataFrame({"day": days, "n_t": 0.0, "n_c": 0.0})
    f = counts["f_day"].to_numpy(float)
    n = counts["n"].to_numpy(float)
    n_t = np.array([n[f <= d].sum() for d in days])
    return pd.DataFrame({"day": days, "n_t": n_t, "n_c": n.sum() - n_t})
