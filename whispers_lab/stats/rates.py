"""Plan metrics judged against a threshold: CTR, feedback, relevance, tickets, p95 latency.

Rule shared by all, a tolerance region (one burden of proof for every threshold): the interval
is the two-sided ``1 - 2 alpha`` interval and ``tolerance`` (delta, from the plan's
``[tolerance]``) widens the pass side. A metric that must stay above its threshold ("min")
passes when the interval's lower end is above ``threshold - delta`` and fails when its upper
end is below ``threshold`` (shown to miss it); a metric that must stay below ("max") passes when
the upper end is below ``threshold + delta`` and fails when the lower end is above
``threshold``; otherwise it is inconclusive. A rate is therefore judged by its upper bound,
never its point estimate. No data gives ``no_data``; too few units gives ``inconclusive`` with a
sentence that says so. A pass is never returned on missing data. Every result carries a reason
code in ``details["code"]`` (pass, threshold_missed, insufficient_evidence, no_data).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from ..lazy import lazy_function, lazy_module
from ..results import StatResult, Status
from .settings import StatSettings
from .sufficient import RatioStat

stats = lazy_module("scipy.stats")
proportion_confint = lazy_function("statsmodels.stats.proportion", "proportion_confint")
test_poisson_2indep = lazy_function("statsmodels.stats.rates", "test_poisson_2indep")

Direction = Literal["min", "max"]


CODE_OF_STATUS: dict[str, str] = {"pass": "pass", "fail": "threshold_missed",
                                  "inconclusive": "insufficient_evidence", "no_data": "no_data"}


def threshold_status(low: float, high: float, threshold: float, direction: Direction,
                     tolerance: float = 0.0) -> Status:
    """pass / fail / inconclusive of an interval against a threshold with a tolerance region
    (see module doc; ``tolerance = 0`` is the plain rule)."""
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return "inconclusive"
    if direction == "min":
        return ("pass" if low > threshold - tolerance else "fail" if high < threshold
                else "inconclusive")
    return ("pass" if high < threshold + tolerance else "fail" if low > threshold
            else "inconclusive")


def _verdict(status: Status, what: str, est: str, lo: str, hi: str, thr: str,
             direction: Direction, level: float, tol: str = "") -> str:
    side = "above" if direction == "min" else "below"
    other = "below" if direction == "min" else "above"
    region = f" (tolerance {tol})" if tol else ""
    if status == "pass":
        return (f"{what} is {est} ({level:.0%} CI {lo} to {hi}): the interval is {side} the "
                f"{thr} target{region}.")
    if status == "fail":
        return (f"{what} is {est} ({level:.0%} CI {lo} to {hi}): shown to be {other} the {thr} "
                f"target.")
    return (f"{what} is {est} ({level:.0%} CI {lo} to {hi}); the interval still reaches past the "
            f"{thr} target{region}, so it is not yet shown to be {side} it.")


def _coded(r: StatResult) -> StatResult:
    """The result with its reason code in the details."""
    if "code" in r.details:
        return r
    return StatResult(r.metric, r.estimate, r.ci_low, r.ci_high, r.p_value, r.n, r.method,
                      r.status, r.sentence, r.threshold,
                      r.details | {"code": CODE_OF_STATUS[r.status]})


def ratio_vs_threshold(metric: str, stat: RatioStat, threshold: float, direction: Direction,
                       settings: StatSettings, what: str, unit: str = "users",
                       fmt: str = "{:.1%}", tolerance: float = 0.0) -> StatResult:
    """A clustered ratio (delta method, t with n - 1 df) against a threshold."""
    return _coded(_ratio_vs_threshold(metric, stat, threshold, direction, settings, what, unit,
                                      fmt, tolerance))


def _ratio_vs_threshold(metric: str, stat: RatioStat, threshold: float, direction: Direction,
                        settings: StatSettings, what: str, unit: str, fmt: str,
                        tolerance: float) -> StatResult:
    method = f"ratio of sums over {unit}, delta-method (cluster-robust) t interval"
    details = {"clusters": stat.n, "numerator": stat.sum_num, "denominator": stat.sum_den,
               "tolerance": tolerance}
    if stat.n == 0 or stat.sum_den == 0:
        return StatResult(metric, None, None, None, None, 0, method, "no_data",
                          f"No data for {what.lower()} yet.", threshold, details)
    est = stat.ratio
    if not math.isfinite(est):
        if math.isnan(est):
            return StatResult(metric, None, None, None, None, stat.n, method, "no_data",
                              f"{what} is not a number: the data hold non-finite values.",
                              threshold, details)
        wrong = (est > threshold) if direction == "max" else (est < threshold)
        return StatResult(metric, est, None, None, None, stat.n, method,
                          "fail" if wrong else "inconclusive",
                          f"{what} is infinite: the data hold non-finite values.", threshold,
                          details)
    if stat.n < settings.min_group_users:
        return StatResult(metric, est, None, None, None, stat.n, method, "inconclusive",
                          f"{what} is {fmt.format(est)} but rests on only {stat.n} {unit} "
                          f"(fewer than {settings.min_group_users}); it cannot be judged.",
                          threshold, details)
    se = math.sqrt(stat.var_of_ratio)
    if not se > 0:
        return StatResult(metric, est, None, None, None, stat.n, method, "inconclusive",
                          f"{what} is {fmt.format(est)} with no variation between {unit}; "
                          f"no interval can be formed.", threshold, details)
    tq = float(stats.t.isf(settings.alpha, stat.n - 1))
    lo, hi = est - tq * se, est + tq * se
    tstat = (est - threshold) / se
    p = float(stats.t.sf(tstat, stat.n - 1) if direction == "min" else stats.t.cdf(tstat, stat.n - 1))
    status = threshold_status(lo, hi, threshold, direction, tolerance)
    sentence = _verdict(status, what, fmt.format(est), fmt.format(lo), fmt.format(hi),
                        fmt.format(threshold), direction, settings.ci_level,
                        fmt.format(tolerance) if tolerance else "")
    return StatResult(metric, est, lo, hi, p, stat.n, method, status, sentence, threshold,
                      details | {"se": se, "design_effect": stat.design_effect})


def proportion_vs_threshold(metric: str, stat: RatioStat, threshold: float,
                            settings: StatSettings, what: str, tolerance: float = 0.0,
                            direction: Direction = "min", unit: str = "user") -> StatResult:
    """A share of events (a 'relevant' answer, an error, a fallback) against a minimum or a
    maximum: Wilson interval and exact binomial test, on the effective sample size
    ``events / design effect`` when a cluster (a user, a minute) holds several events (Kish),
    so correlated events do not count as independent."""
    return _coded(_proportion_vs_threshold(metric, stat, threshold, settings, what, tolerance,
                                           direction, unit))


def _proportion_vs_threshold(metric: str, stat: RatioStat, threshold: float,
                             settings: StatSettings, what: str, tolerance: float,
                             direction: Direction, unit: str) -> StatResult:
    method = "Wilson interval, exact binomial test (effective n = answers / design effect)"
    details = {"clusters": stat.n, "users": stat.n, "answers": stat.sum_den,
               "positive": stat.sum_num, "tolerance": tolerance, "cluster_unit": unit}
    if stat.n == 0 or stat.sum_den == 0:
        return StatResult(metric, None, None, None, None, 0, method, "no_data",
                          f"No answers for {what.lower()} yet.", threshold, details)
    p_hat = stat.ratio
    deff = stat.design_effect if stat.n >= 2 else 1.0
    deff = max(deff, 1.0) if math.isfinite(deff) else 1.0
    n_eff = stat.sum_den / deff
    x_eff = p_hat * n_eff
    lo, hi = proportion_confint(x_eff, n_eff, alpha=1 - settings.ci_level, method="wilson")
    n_int = max(round(n_eff), 1)
    x_int = round(p_hat * n_int)
    alternative = "greater" if direction == "min" else "less"
    p = float(stats.binomtest(x_int, n_int, threshold, alternative=alternative).pvalue)
    details |= {"design_effect": deff, "effective_n": n_eff}
    if stat.n < settings.min_group_users:
        return StatResult(metric, p_hat, float(lo), float(hi), p, stat.n, method, "inconclusive",
                          f"{what} is {p_hat:.1%} from {int(stat.sum_den)} event(s) of only "
                          f"{stat.n} {unit}(s) (fewer than {settings.min_group_users}); it cannot "
                          f"be judged against {threshold:.1%}.", threshold, details)
    status = threshold_status(float(lo), float(hi), threshold, direction, tolerance)
    sentence = _verdict(status, what, f"{p_hat:.2%}", f"{lo:.2%}", f"{hi:.2%}",
                        f"{threshold:.1%}", direction, settings.ci_level,
                        f"{tolerance:.1%}" if tolerance else "")
    return StatResult(metric, p_hat, float(lo), float(hi), p, stat.n, method, status, sentence,
                      threshold, details)


def rate_ratio_mde(count_total: float, exposure_t: float, exposure_c: float, alpha: float,
                   power: float, threshold: float = 1.0) -> float:
    """Smallest rate ratio (above ``threshold``) the one-sided test detects with ``power``,
    from the events expected under the null split (normal approximation on the log scale)."""
    if count_total <= 0 or exposure_t <= 0 or exposure_c <= 0:
        return math.inf
    share_t = threshold * exposure_t / (threshold * exposure_t + exposure_c)
    e_t, e_c = count_total * share_t, count_total * (1 - share_t)
    z = stats.norm.isf(alpha) + stats.norm.ppf(power)
    return float(threshold * math.exp(z * math.sqrt(1 / e_t + 1 / e_c)))


def exact_rate_ratio_ci(count_t: int, exposure_t: float, count_c: int, exposure_c: float,
                        alpha: float) -> tuple[float, float]:
    """Exact conditional interval of a Poisson rate ratio, each end at one-sided ``alpha``.

    Given the total N, ``count_t ~ Binomial(N, pi)`` with ``pi = R e_t / (R e_t + e_c)``; the
    Clopper-Pearson interval of pi maps to ``R = pi / (1 - pi) * e_c / e_t`` (monotone)."""
    total = count_t + count_c
    if total == 0:
        return 0.0, math.inf
    p_lo, p_hi = proportion_confint(count_t, total, alpha=2 * alpha, method="beta")
    scale = exposure_c / exposure_t
    lo = float(p_lo / (1 - p_lo) * scale) if count_t > 0 else 0.0
    hi = float(p_hi / (1 - p_hi) * scale) if count_c > 0 else math.inf
    return lo, hi


def ticket_rate_ratio(count_t: int, exposure_t: float, count_c: int, exposure_c: float,
                      threshold: float, settings: StatSettings, users_t: int, users_c: int,
                      has_table: bool = True) -> StatResult:
    """Support tickets per user-day, treatment vs control: rate ratio with the exact conditional
    (binomial) interval and one-sided test of an increase (statsmodels ``exact-cond``).

    fail: an increase is shown (lower end > threshold). pass: no increase is shown and the
    test could have detected a rate ratio of ``settings.max_informative_rate_ratio`` with the
    configured power; otherwise inconclusive (too few tickets to say there is no increase)."""
    metric = "support_tickets"
    method = "Poisson rate ratio per user-day, exact conditional (Clopper-Pearson) CI and test"
    details = {"tickets_t": int(count_t), "tickets_c": int(count_c), "user_days_t": exposure_t,
               "user_days_c": exposure_c, "users_t": users_t, "users_c": users_c}
    n = int(users_t + users_c)
    if not has_table:
        return StatResult(metric, None, None, None, None, n, method, "no_data",
                          "The export has no support_tickets table.", threshold, details)
    if exposure_t <= 0 or exposure_c <= 0:
        return StatResult(metric, None, None, None, None, n, method, "no_data",
                          "One arm has no user-days yet, so ticket rates cannot be compared.",
                          threshold, details)
    if min(users_t, users_c) < settings.min_group_users:
        return StatResult(metric, None, None, None, None, n, method, "inconclusive",
                          f"Only {min(users_t, users_c)} randomised user(s) in the smaller arm "
                          f"(fewer than {settings.min_group_users}); ticket rates cannot be "
                          f"compared.", threshold, details)
    total = count_t + count_c
    mde = rate_ratio_mde(total, exposure_t, exposure_c, settings.alpha, settings.power, threshold)
    details["mde_rate_ratio"] = mde
    rate_t, rate_c = count_t / exposure_t, count_c / exposure_c
    if total == 0:
        return StatResult(metric, None, None, None, None, n, method, "inconclusive",
                          f"No support tickets in either arm over {exposure_t + exposure_c:,.0f} "
                          f"user-days: too few events to show there is no increase.", threshold,
                          details)
    est = rate_t / rate_c if rate_c > 0 else math.inf
    lo, hi = exact_rate_ratio_ci(count_t, exposure_t, count_c, exposure_c, settings.alpha)
    p = float(test_poisson_2indep(count_t, exposure_t, count_c, exposure_c, value=threshold,
                                  method="exact-cond", compare="ratio",
                                  alternative="larger").pvalue)
    text = (f"Support tickets per user-day: treatment/control = {est:.2f} "
            f"({settings.ci_level:.0%} CI {lo:.2f} to {hi:.2f}; {count_t} vs {count_c} tickets)")
    if lo > threshold:
        status: Status = "fail"
        sentence = f"{text}: an increase is shown."
    elif mde <= settings.max_informative_rate_ratio:
        status = "pass"
        sentence = (f"{text}: no increase is shown, and an increase of {mde:.2f}x would have "
                    f"been detected with {settings.power:.0%} power.")
    else:
        status = "inconclusive"
        sentence = (f"{text}: no increase is shown, but with {total} tickets only an increase "
                    f"of {mde:.1f}x or more could be detected, so that proves little.")
    return StatResult(metric, est, lo, hi, p, n, method, status, sentence, threshold, details)


def order_statistic_ranks(n: int, q: float, alpha: float) -> tuple[int, int]:
    """1-based ranks (l, u) such that ``[X_(l), X_(u)]`` covers the q-quantile with probability
    at least ``1 - 2 alpha``, each end failing with probability at most ``alpha``
    (distribution-free, from B = #{X <= xi_q} ~ Binomial(n, q)). l = 0 means no lower bound,
    u = n + 1 no upper bound."""
    lo = int(stats.binom.ppf(alpha, n, q))
    hi = int(stats.binom.ppf(1.0 - alpha, n, q)) + 1
    return max(lo, 0), min(hi, n + 1)


def quantile_vs_threshold(metric: str, n: int, estimate: float | None, low: float | None,
                          high: float | None, n_below: int, q: float, threshold: float,
                          settings: StatSettings, what: str, tolerance: float = 0.0,
                          method: str = "order-statistic (binomial) interval and exact "
                                        "binomial test",
                          extra: dict | None = None) -> StatResult:
    """A quantile (e.g. p95 latency) against a maximum. ``low``/``high`` are the order
    statistics at :func:`order_statistic_ranks` (None when the rank is 0 / n + 1).
    The p-value tests H0: quantile >= threshold with ``n_below = #{X < threshold}`` against
    Binomial(n, q)."""
    details = {"requests": n, "below_threshold": n_below, "q": q, "tolerance": tolerance,
               **(extra or {})}
    if n == 0 or estimate is None:
        return _coded(StatResult(metric, None, None, None, None, 0, method, "no_data",
                                 f"No {what.lower()} data in the window.", threshold, details))
    lo = -math.inf if low is None else float(low)
    hi = math.inf if high is None else float(high)
    p = float(stats.binom.sf(n_below - 1, n, q))
    status = threshold_status(lo, hi, threshold, "max", tolerance)
    fmt = "{:.0f} ms"
    sentence = _verdict(status, what, fmt.format(estimate), fmt.format(lo), fmt.format(hi),
                        fmt.format(threshold), "max", settings.ci_level,
                        fmt.format(tolerance) if tolerance else "")
    return _coded(StatResult(metric, float(estimate), lo, hi, p, n, method, status, sentence,
                             threshold, details))


def quantile_ci_from_sorted(values: np.ndarray, q: float, alpha: float) -> tuple[float, float]:
    """Order-statistic interval of a quantile from an in-memory sample (canary tails)."""
    x = np.sort(np.asarray(values, dtype=float))
    n = x.size
    lo_r, hi_r = order_statistic_ranks(n, q, alpha)
    lo = x[lo_r - 1] if lo_r >= 1 else -math.inf
    hi = x[hi_r - 1] if hi_r <= n else math.inf
    return float(lo), float(hi)


def woodruff_se(by_minute: RatioStat, by_user: RatioStat, q: float, n: int) -> tuple[float, float]:
    """Standard error of the empirical distribution function at the estimated q-quantile, for
    Woodruff's (1952) quantile interval ``[Q(q - z se), Q(q + z se)]``: the larger of the
    delta-method (cluster-robust) standard errors of ``#{X <= Q(q)} / n`` clustered by minute
    and by user, never below the independent binomial ``sqrt(q (1 - q) / n)``. Also returns the
    design effect (that variance over the binomial one). ``n = 0`` gives (nan, nan)."""
    if n <= 0:
        return math.nan, math.nan
    binom = q * (1.0 - q) / n
    var = binom
    for st in (by_minute, by_user):
        v = st.var_of_ratio if st.n >= 2 else math.nan
        if math.isfinite(v):
            var = max(var, v)
    return math.sqrt(var), var / binom
