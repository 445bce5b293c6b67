"""Daily app opens and exposures.

Model (per user ``u`` and day ``d``): the user visits on ``d`` with probability

    p = clip(propensity_u * (weekend_factor if d is Sat/Sun else 1)
             + retention_lift * [u was served treatment on an earlier day]
             - size * [retention_drop active on d and u was served treatment earlier], 0, max)

and then opens the app ``1 + Poisson(extra_opens_per_engagement * engagement_u)`` times, at
times following the diurnal shape. The lift only acts on days *after* the first treated visit,
so it changes return visits, not who gets exposed (no sample-ratio artefact). The state carried
from day to day (first treated day, served variant at exposure) makes this a loop over days,
vectorised over users.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .params import ModelParams
from .population import Population
from .rng import stream
from .scenarios import Scenario, active
from .timeline import Calendar, diurnal_times, group_starts

NOT_EXPOSED, SERVED_CONTROL, SERVED_TREATMENT = 0, 1, 2


@dataclass(eq=False)
class State:
    """What the simulation remembers from one day to the next, per user."""

    treated_since: np.ndarray   # float: first day with a treated visit (inf = none yet)
    exposure: np.ndarray        # int8: NOT_EXPOSED / SERVED_CONTROL / SERVED_TREATMENT
    last_cue_us: np.ndarray     # int64: last Maya cue candidate (cooldown across midnight)
    next_request: int = 0
    next_event: int = 0
    next_ticket: int = 0

    @classmethod
    def initial(cls, n: int) -> State:
        return cls(treated_since=np.full(n, np.inf), exposure=np.zeros(n, dtype=np.int8),
                   last_cue_us=np.full(n, np.iinfo(np.int64).min // 2, dtype=np.int64))


@dataclass(frozen=True, eq=False)
class Opens:
    """App opens of one day, sorted by (user, time)."""

    user: np.ndarray
    ts: np.ndarray
    device_k: np.ndarray

    def __len__(self) -> int:
        return len(self.user)


def visit_probability(pop: Population, day: int, cal: Calendar, state: State,
                      params: ModelParams, scenarios: Sequence[Scenario]) -> np.ndarray:
    p = pop.propensity * (params.weekend_factor if cal.is_weekend(day) else 1.0)
    if params.late_signup_share > 0:   # not signed up by the start of the day: not active yet
        p = np.where(pop.signup_us >= cal.day_start_us(day), 0.0, p)
    after = state.treated_since < day
    p = p + params.retention_lift * after
    for s in active(scenarios, "retention_drop"):
        if day >= s.day:
            p = p - float(s.params["size"]) * after
    return np.clip(p, 0.0, params.max_daily_prob)


def day_opens(pop: Population, day: int, cal: Calendar, state: State, params: ModelParams,
              scenarios: Sequence[Scenario], seed: int) -> Opens:
    rng = stream(seed, "activity", day)
    p = visit_probability(pop, day, cal, state, params, scenarios)
    users = np.flatnonzero(rng.random(pop.n) < p)
    k = 1 + rng.poisson(params.extra_opens_per_engagement * pop.engagement[users])
    user = np.repeat(users, k)
    shape = params.diurnal_weekend if cal.is_weekend(day) else params.diurnal_weekday
    ts = diurnal_times(rng, user.size, cal.day_start_us(day), shape)
    ndev = pop.n_devices[user]
    other = rng.random(user.size) >= params.primary_device_share
    device_k = np.where(other & (ndev > 1),
                        1 + (rng.random(user.size) * (ndev - 1)).astype(np.int64), 0)
    order = np.lexsort((ts, user))
    return Opens(user[order], ts[order], device_k[order])


def day_exposures_served(opens: Opens, day: int, treated: np.ndarray, state: State
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exposure rows of the day from what each open was served (``treated``, aligned with the
    opens): a row at a user's first open on or after day 0, and one more at every open whose
    served experience differs from the previous one (control -> treatment when a stage admits
    the user, either way when a flag changes mid-day); then the state update. With a served
    experience that changes only at midnight this is :func:`day_exposures`."""
    if day < 0 or len(opens) == 0:
        return (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool))
    cur = np.where(treated, SERVED_TREATMENT, SERVED_CONTROL).astype(np.int8)
    prev = np.empty_like(cur)
    prev[1:] = cur[:-1]
    first = np.flatnonzero(group_starts(opens.user))
    prev[first] = state.exposure[opens.user[first]]
    log = cur != prev
    last = np.append(first[1:], len(opens)) - 1
    state.exposure[opens.user[last]] = cur[last]
    return opens.user[log], opens.ts[log], treated[log]


def day_exposures(opens: Opens, day: int, served_first: np.ndarray, state: State
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exposure rows of the day: (user, ts, treated) and the state update.

    A user's first open on or after day 0 logs the variant served then; a later open after the
    served experience changed (control -> treatment) logs one more row.
    """
    if day < 0 or len(opens) == 0:
        return (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool))
    first = group_starts(opens.user)
    user = opens.user[first]
    ts = opens.ts[first]
    treated_now = served_first[user] <= day
    status = state.exposure[user]
    new = status == NOT_EXPOSED
    switch = (status == SERVED_CONTROL) & treated_now
    log = new | switch
    state.exposure[user[log]] = np.where(treated_now[log], SERVED_TREATMENT, SERVED_CONTROL)
    return user[log], ts[log], treated_now[log]
