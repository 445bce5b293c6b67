"""The net sentiment score ("Positive user sentiment", Phase 2; issue 15) against its threshold.

From the in-app survey (the ``feedback`` table) the plan's ``[sentiment]`` defines a **net score**
over a window's answers: the share of answers with a positive rating (4-5) minus the share with
a negative one (1-2); 3 is neutral. Per answer that is a score ``s = +1 / 0 / -1``, and the net
score is their mean, ``sum(positive - negative) / sum(answers)``.

Answers of one user are correlated (a happy user stays happy), so the answers are not
independent draws: the net score is a **ratio of sums over users**, ``sum_u net_u / sum_u
answers_u``, with the delta-method (cluster-robust) variance of
:class:`~whispers_lab.stats.sufficient.RatioStat` and a t interval with users - 1 degrees of
freedom (:func:`~whispers_lab.stats.rates.ratio_vs_threshold`). That is exactly the
cluster-robust (CR1) interval of an intercept-only regression of ``s`` clustered by user
(``tests/test_sentiment.py`` checks it against statsmodels). It is judged by the tolerance
region of every threshold criterion (pass: lower end above ``net_score - tolerance``; fail:
upper end below ``net_score``), and only on at least ``min_answers`` answers: fewer is
inconclusive, and the sentence always says how many answers and users it rests on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..lazy import lazy_module
from ..results import StatResult
from .power import PowerRow
from .rates import CODE_OF_STATUS, ratio_vs_threshold
from .settings import StatSettings
from .sufficient import RatioStat

stats = lazy_module("scipy.stats")

if TYPE_CHECKING:
    from ..export import Export
    from ..plan import Plan

METRIC = "sentiment"


@dataclass(frozen=True)
class NetScoreUnits:
    """Per-user sums of one window's answers: ``stat`` is the ratio ``net / answers`` clustered
    by user (num = positive - negative answers of a user, den = the user's answers);
    ``positive`` and ``negative`` are the answer counts in each set."""

    stat: RatioStat
    positive: float
    negative: float

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> NetScoreUnits:
        return cls(RatioStat(int(row["n"]), float(row["sum_num"]), float(row["sum_den"]),
                             float(row["sum_num2"]), float(row["sum_den2"]),
                             float(row["sum_num_den"])),
                   float(row["positive"]), float(row["negative"]))

    @property
    def users(self) -> int:
        return self.stat.n

    @property
    def answers(self) -> int:
        return int(self.stat.sum_den)

    def share(self, count: float) -> float:
        return count / self.stat.sum_den if self.stat.sum_den else math.nan


def _ratings(values: tuple[int, ...]) -> str:
    if len(values) > 1 and values == tuple(range(values[0], values[-1] + 1)):
        return f"{values[0]}-{values[-1]}"
    return "/".join(str(v) for v in values)


def net_score_vs_threshold(units: NetScoreUnits, threshold: float, settings: StatSettings, *,
                           tolerance: float, min_answers: int, what: str,
                           positive_ratings: tuple[int, ...] = (4, 5),
                           negative_ratings: tuple[int, ...] = (1, 2)) -> StatResult:
    """The net score against a minimum (see module doc). ``details`` carry the answers,
    users, positive / negative counts and shares, ``min_answers`` and the reason code."""
    pos_txt, neg_txt = _ratings(positive_ratings), _ratings(negative_ratings)
    base = ratio_vs_threshold(METRIC, units.stat, threshold, "min", settings, what,
                              unit="users", fmt="{:+.2f}", tolerance=tolerance)
    answers, users = units.answers, units.users
    counts = (f"{answers:,} answer(s) of {users:,} user(s)" if answers else "no answers")
    shares = (f": {units.share(units.positive):.0%} rated {pos_txt}, "
              f"{units.share(units.negative):.0%} rated {neg_txt}" if answers else "")
    details = base.details | {
        "answers": answers, "users": users, "positive": units.positive,
        "negative": units.negative, "share_positive": units.share(units.positive),
        "share_negative": units.share(units.negative), "min_answers": min_answers,
        "positive_ratings": list(positive_ratings), "negative_ratings": list(negative_ratings)}
    method = (f"net score (share rated {pos_txt} minus share rated {neg_txt}), " + base.method)
    if base.status == "no_data":
        return StatResult(METRIC, None, None, None, None, users, method, "no_data",
                          f"{what}: no survey answers yet, so it cannot be judged.", threshold,
                          details | {"code": "no_data"})
    status, sentence = base.status, f"{base.sentence} From {counts}{shares}."
    if answers < min_answers and status != "no_data":
        est = base.estimate
        status = "inconclusive"
        sentence = (f"{what} is {est:+.2f} from only {counts}{shares}; at least {min_answers} "
                    f"answers are needed to judge it against the {threshold:+.2f} target.")
    return StatResult(METRIC, base.estimate, base.ci_low, base.ci_high, base.p_value, users,
                      method, status, sentence, threshold,
                      details | {"code": CODE_OF_STATUS[status]})


def sentiment_result(export: Export, plan: Plan, settings: StatSettings,
                     day: int) -> StatResult | None:
    """The day's net sentiment over the plan's window (None: the plan has no ``[sentiment]``).
    The cohort relation must be registered (``experiment_results`` does it first)."""
    from ..queries.sentiment import sentiment_units

    cfg = plan.sentiment
    if cfg is None:
        return None
    first = plan.window_start(METRIC, day)
    what = (f"Net sentiment (days {first}-{day})" if first != day
            else f"Net sentiment (day {day})")
    if not export.has("feedback"):
        return StatResult(METRIC, None, None, None, None, 0, "net score", "no_data",
                          "The export has no feedback table, so sentiment cannot be measured.",
                          cfg.net_score, {"code": "no_data", "answers": 0, "users": 0})
    row = sentiment_units(export, plan.day_start(first), plan.day_start(day + 1),
                          cfg.positive_ratings, cfg.negative_ratings)
    return net_score_vs_threshold(NetScoreUnits.from_row(row), cfg.net_score, settings,
                                  tolerance=cfg.tolerance, min_answers=cfg.min_answers, what=what,
                                  positive_ratings=cfg.positive_ratings,
                                  negative_ratings=cfg.negative_ratings)


def sentiment_power_row(res: StatResult, settings: StatSettings) -> PowerRow:
    """The power note of the net score: the distance from the target it can resolve today
    with the guardrail power, and how many answers it rests on."""
    se = res.details.get("se") if res.details else None
    z = float(stats.norm.isf(settings.alpha) + stats.norm.ppf(settings.guardrail_power))
    m = z * float(se) if se and math.isfinite(float(se)) else math.inf
    answers = int(res.details.get("answers") or 0) if res.details else 0
    gap = (abs(res.estimate - res.threshold) if res.estimate is not None
           and res.threshold is not None else None)
    note = (f"{answers} answer(s) of {res.n} user(s): distances from the {res.threshold:+.2f} "
            f"target smaller than {m:.3g} cannot be resolved with "
            f"{settings.guardrail_power:.0%} power" if math.isfinite(m) else
            f"{answers} answer(s) of {res.n} user(s): cannot be judged yet")
    return PowerRow(METRIC, "net score", res.n, float(se) if se else None, m, gap or None,
                    float(res.n), None, note)
