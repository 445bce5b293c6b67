"""User-facing outputs besides clicks: Maya cues, survey feedback and support tickets.

* **Maya cues** (``maya_cue_fired`` telemetry): each treated open is a cue candidate with
  probability ``cue_prob``, a few seconds to two minutes after the open. A candidate closer
  than ``plan.cue_cooldown_minutes`` to the user's previous *candidate* (across midnight too) is
  suppressed, which guarantees the cooldown between fired cues. ``cue_cooldown_violation`` adds
  a second cue 3-20 minutes after a fired one for some users.
* **Feedback**: from day ``feedback_first_day`` (3, the beta survey) each user served treatment
  who opens the app that day answers with probability ``feedback_rate``, 1-15 minutes after
  their first open; rating ~ categorical(``rating_probs``) (mean ~4.3), ``relevant`` True with
  probability ``relevant_true``, NULL with ``relevant_null``. ``low_feedback`` replaces a share
  ``q`` of answers by unhappy ones (mean 2.25, relevant 35%) with ``q`` set to reach ``rating``.
* **Support tickets**: ``Binomial(users, ticket_rate)`` tickets a day from uniformly drawn users
  (the same rate for every variant: no increase in support tickets), categories bug / other /
  privacy, priorities critical..low. A share of a treated user's bug/other tickets is about
  whispers, never critical; privacy tickets are never about whispers in the healthy world.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..contract import PRIORITIES
from .activity import Opens, State
from .params import ModelParams
from .scenarios import Scenario, active
from .timeline import US_PER_MINUTE, US_PER_SECOND, group_starts

CATEGORIES: tuple[str, ...] = ("bug", "other", "privacy")
UNHAPPY_RATING_PROBS: tuple[float, ...] = (0.30, 0.35, 0.20, 0.10, 0.05)
UNHAPPY_RELEVANT = 0.35


@dataclass(frozen=True, eq=False)
class Cues:
    user: np.ndarray
    ts: np.ndarray
    device_k: np.ndarray
    violation_users: np.ndarray


def maya_cues(opens: Opens, treated: np.ndarray, day: int, state: State, params: ModelParams,
              cooldown_minutes: float, scenarios: Sequence[Scenario], rng: np.random.Generator,
              end_us: int) -> Cues:
    idx = np.flatnonzero(treated & (rng.random(len(opens)) < params.cue_prob))
    user = opens.user[idx]
    ts = opens.ts[idx] + (rng.uniform(5.0, 120.0, idx.size) * US_PER_SECOND).astype(np.int64)
    ts = np.minimum(ts, end_us - 1)
    dev = opens.device_k[idx]
    order = np.lexsort((ts, user))
    user, ts, dev = user[order], ts[order], dev[order]
    first = group_starts(user)
    prev = np.empty_like(ts)
    prev[1:] = ts[:-1]
    prev[first] = state.last_cue_us[user[first]]
    keep = ts - prev >= round(cooldown_minutes * US_PER_MINUTE)
    if user.size:
        last = np.append(first[1:], True)
        state.last_cue_us[user[last]] = ts[last]
    user, ts, dev = user[keep], ts[keep], dev[keep]
    violators = np.zeros(0, dtype=np.int64)
    for s in active(scenarios, "cue_cooldown_violation"):
        if s.day != day or user.size == 0:
            continue
        firsts = np.flatnonzero(group_starts(user))
        k = min(firsts.size, max(int(s.params["min_users"]), round(float(s.params["share"]) * firsts.size)))
        pick = np.sort(rng.choice(firsts, k, replace=False))
        extra = ts[pick] + (rng.uniform(3.0, 20.0, k) * US_PER_MINUTE).astype(np.int64)
        extra = np.minimum(extra, end_us - 1)
        violators = np.union1d(violators, user[pick])
        state.last_cue_us[user[pick]] = np.maximum(state.last_cue_us[user[pick]], extra)
        user = np.concatenate([user, user[pick]])
        ts = np.concatenate([ts, extra])
        dev = np.concatenate([dev, dev[pick]])
    return Cues(user, ts, dev, violators)


def healthy_rating_mean(params: ModelParams) -> float:
    p = np.asarray(params.rating_probs)
    return float((np.arange(1, 6) * p).sum() / p.sum())


@dataclass(frozen=True, eq=False)
class Feedback:
    user: np.ndarray
    ts: np.ndarray
    rating: np.ndarray
    relevant: np.ndarray      # float: 1 / 0 / NaN (NULL)


def feedback(opens: Opens, treated: np.ndarray, day: int, params: ModelParams,
             scenarios: Sequence[Scenario], rng: np.random.Generator, end_us: int) -> Feedback:
    if day < params.feedback_first_day:
        z = np.zeros(0, dtype=np.int64)
        return Feedback(z, z, z, np.zeros(0))
    t_user, t_ts = opens.user[treated], opens.ts[treated]
    first = group_starts(t_user)
    user, first_ts = t_user[first], t_ts[first]
    answer = rng.random(user.size) < params.feedback_rate
    user, ts = user[answer], first_ts[answer]
    ts = np.minimum(ts + (rng.uniform(1.0, 15.0, user.size) * US_PER_MINUTE).astype(np.int64), end_us - 1)
    n = user.size
    happy_p = np.asarray(params.rating_probs) / sum(params.rating_probs)
    rating = 1 + rng.choice(5, n, p=happy_p)
    relevant_p = np.full(n, params.relevant_true)
    for s in active(scenarios, "low_feedback"):
        unhappy_mean = float((np.arange(1, 6) * np.asarray(UNHAPPY_RATING_PROBS)).sum())
        q = np.clip((healthy_rating_mean(params) - float(s.params["rating"]))
                    / (healthy_rating_mean(params) - unhappy_mean), 0.0, 1.0)
        sad = (ts >= s.start_us) & (rng.random(n) < q)
        rating[sad] = 1 + rng.choice(5, int(sad.sum()), p=np.asarray(UNHAPPY_RATING_PROBS))
        relevant_p[sad] = UNHAPPY_RELEVANT
    relevant = (rng.random(n) < relevant_p).astype(np.float64)
    relevant[rng.random(n) < params.relevant_null] = np.nan
    return Feedback(user, ts, rating.astype(np.int64), relevant)


@dataclass(frozen=True, eq=False)
class Tickets:
    user: np.ndarray          # -1 = anonymous (NULL user_id)
    ts: np.ndarray
    category: np.ndarray      # index into CATEGORIES
    priority: np.ndarray      # index into contract PRIORITIES
    about_whispers: np.ndarray
    planted: dict


def tickets(day: int, n_users: int, day_start_us: int, served_first: np.ndarray,
            params: ModelParams, scenarios: Sequence[Scenario], rng: np.random.Generator,
            hourly: Sequence[float]) -> Tickets:
    from .timeline import diurnal_times

    k = int(rng.binomial(n_users, params.ticket_rate))
    user = rng.integers(0, n_users, k)
    ts = diurnal_times(rng, k, day_start_us, tuple(hourly))
    category = rng.choice(3, k, p=np.asarray(params.ticket_category_probs) / sum(params.ticket_category_probs))
    priority = rng.choice(len(PRIORITIES), k, p=np.asarray(params.ticket_priority_probs)
                          / sum(params.ticket_priority_probs))
    treated = served_first[user] <= day
    about = treated & (category != CATEGORIES.index("privacy")) & (rng.random(k) < params.ticket_about_whispers)
    critical = PRIORITIES.index("critical")
    priority[about & (priority == critical)] = PRIORITIES.index("high")
    anonymous = rng.random(k) < params.ticket_anonymous
    user = np.where(anonymous, -1, user)
    about &= ~anonymous
    planted: dict = {}
    enabled = np.flatnonzero(served_first <= day)
    for i, s in enumerate(scenarios):
        if s.name not in ("critical_bug", "privacy_ticket") or s.day != day or enabled.size == 0:
            continue
        c = int(s.params["count"])
        u = enabled[rng.integers(0, enabled.size, c)]
        t = s.start_us + np.arange(c, dtype=np.int64) * 7 * US_PER_SECOND
        cat = CATEGORIES.index("bug" if s.name == "critical_bug" else "privacy")
        pri = critical if s.name == "critical_bug" else PRIORITIES.index("high")
        planted[i] = (u, user.size)
        user = np.concatenate([user, u])
        ts = np.concatenate([ts, t])
        category = np.concatenate([category, np.full(c, cat)])
        priority = np.concatenate([priority, np.full(c, pri)])
        about = np.concatenate([about, np.ones(c, dtype=bool)])
    return Tickets(user, ts, category, priority, about, planted)
