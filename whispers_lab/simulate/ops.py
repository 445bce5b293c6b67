"""Operational data: ``api_logs`` (whispers and other endpoints) and ``db_metrics``.

Latency: a lognormal body plus, for a small share of requests, a Pareto tail
(``duration = LogN(log median, sigma) + [tail] * Pareto(alpha, scale)``). With the defaults the
whispers endpoint averages ~60 ms with p95 ~115 ms (budgets: 100 ms average, 150 ms p95).
``ranking_ms`` is a Beta share of the duration, capped so that healthy ranking stays below
the 200 ms timeout. Errors (4xx/5xx) are rare and independent in the healthy world.

Scenario traffic: at small population sizes the whispers endpoint sees only a few requests a
minute, too few for per-minute rules (``plan.criteria.min_minute_requests``). Scenarios judged per
minute (``error_spike``, ``latency_spike``) therefore top up every minute of their window to at
least ``min_requests`` requests, and ``ranking_timeouts`` to at least ``count`` requests in its
window, with *prefetch* requests: api_logs rows of the whispers endpoint from users enabled
that day, on one of their devices, whose rankings are not logged (no ranking_candidates rows, no
telemetry). ``device_weight_mismatch`` adds, on its day, one prefetch request from the first
and one from the second device of each affected user, so the conflict shows that day. Whispers requests per minute are about
``users x 3.5e-4 x treated share`` (x0.2 at night, x1.6 in the evening): from ~500k users a 10%
day meets the floor in most minutes and few or no prefetch rows are added. The truth file
records how many were added.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ..weights import Weights, resolve_weights
from .activity import Opens
from .params import ModelParams
from .population import STALE_WEIGHTS, WEIGHT_PRESETS, Population
from .rng import stream
from .scenarios import Scenario, active
from .timeline import US_PER_HOUR, US_PER_MINUTE, US_PER_SECOND, Calendar, rank_within, to_arrow_ts

#: Weights a request can be ranked with, indexed by ``Requests.weights_idx``.
FALLBACK_WEIGHTS, _ = resolve_weights(None)
WEIGHTS_TABLE: tuple[Weights, ...] = (*WEIGHT_PRESETS, STALE_WEIGHTS, FALLBACK_WEIGHTS)
STALE_IDX = len(WEIGHT_PRESETS)
FALLBACK_IDX = STALE_IDX + 1

#: Scenarios whose window is a whispers error spike (the rollback ones plant one before the flip).
ERROR_SPIKES: tuple[str, ...] = ("error_spike", "rollback_clean", "rollback_stale_cdn")
OTHER_ENDPOINTS: tuple[str, ...] = ("/api/recap", "/api/auth/session", "/api/memories")
#: (median ms, sigma) of each other endpoint's lognormal body.
OTHER_LATENCY: tuple[tuple[float, float], ...] = ((75.0, 0.45), (14.0, 0.35), (38.0, 0.5))
SERVER_ERRORS = np.array([500, 502, 503, 504])
SERVER_ERROR_P = np.array([0.4, 0.2, 0.3, 0.1])
CLIENT_ERRORS = np.array([400, 401, 404, 429])
CLIENT_ERROR_P = np.array([0.3, 0.3, 0.2, 0.2])


@dataclass(eq=False)
class Requests:
    """Whispers requests of one day (arrays aligned)."""

    user: np.ndarray
    device_k: np.ndarray
    ts: np.ndarray
    prefetch: np.ndarray
    weights_idx: np.ndarray | None = None
    status: np.ndarray | None = None
    duration: np.ndarray | None = None
    ranking_ms: np.ndarray | None = None

    def __len__(self) -> int:
        return self.user.size


def _latency(rng: np.random.Generator, n: int, median: float, sigma: float,
             params: ModelParams) -> np.ndarray:
    body = rng.lognormal(np.log(median), sigma, n)
    tail = rng.random(n) < params.tail_share
    body[tail] += (rng.pareto(params.tail_alpha, int(tail.sum())) + 1.0) * params.tail_scale_ms
    return body


def _statuses(rng: np.random.Generator, n: int, rate: float, params: ModelParams) -> np.ndarray:
    status = np.full(n, 200, dtype=np.int64)
    err = np.flatnonzero(rng.random(n) < rate)
    server = rng.random(err.size) < params.server_error_share
    status[err] = np.where(server, rng.choice(SERVER_ERRORS, err.size, p=SERVER_ERROR_P),
                           rng.choice(CLIENT_ERRORS, err.size, p=CLIENT_ERROR_P))
    return status


def prefetch_requests(day: int, scenarios: Sequence[Scenario], natural_ts: np.ndarray,
                      enabled_users: np.ndarray, pop: Population, mismatched: np.ndarray,
                      rng: np.random.Generator) -> tuple[Requests, dict[str, int]]:
    """Top-up traffic so scenario windows carry enough requests (see module doc).

    ``device_weight_mismatch`` also gets, on its day, one prefetch request from a user's first
    device and one from another device for every mismatched user, so the conflict is visible
    within that day whatever the user's natural activity.
    """
    ts_parts, user_parts, dev_parts, added = [], [], [], {}
    current = natural_ts
    for i, s in enumerate(scenarios):
        if s.day != day or enabled_users.size == 0:
            continue
        dev = None
        if s.name in ("latency_spike", *ERROR_SPIKES):
            floor = int(s.params["min_requests"])
            minutes = int((s.end_us - s.start_us) // US_PER_MINUTE)
            inside = current[s.covers(current)]
            have = np.bincount((inside - s.start_us) // US_PER_MINUTE, minlength=minutes)[:minutes]
            need = np.maximum(0, floor - have)
            minute = np.repeat(np.arange(minutes), need)
            ts = (s.start_us + minute * US_PER_MINUTE
                  + (rng.random(minute.size) * US_PER_MINUTE).astype(np.int64))
            user = enabled_users[rng.integers(0, enabled_users.size, ts.size)]
        elif s.name == "ranking_timeouts":
            inside = int(s.covers(current).sum())
            need = max(0, int(s.params["count"]) - inside)
            ts = s.start_us + (rng.random(need) * (s.end_us - s.start_us)).astype(np.int64)
            user = enabled_users[rng.integers(0, enabled_users.size, ts.size)]
        elif s.name == "device_weight_mismatch":
            users = np.flatnonzero(mismatched)
            user = np.repeat(users, 2)
            dev = np.tile(np.array([0, 1]), users.size)
            ts = s.start_us + (rng.random(user.size) * (US_PER_HOUR * 24)).astype(np.int64)
        else:
            continue
        if dev is None:
            dev = (rng.random(ts.size) * pop.n_devices[user]).astype(np.int64)
        ts_parts.append(ts)
        user_parts.append(user)
        dev_parts.append(dev)
        current = np.concatenate([current, ts])
        added[f"{i}:{s.name}"] = int(ts.size)
    if not ts_parts:
        z = np.zeros(0, dtype=np.int64)
        return Requests(z, z.copy(), z.copy(), np.zeros(0, dtype=bool)), added
    ts = np.concatenate(ts_parts)
    return Requests(np.concatenate(user_parts), np.concatenate(dev_parts), ts,
                    np.ones(ts.size, dtype=bool)), added


def whispers_attributes(req: Requests, day: int, pop: Population, scenarios: Sequence[Scenario],
                        mismatched: np.ndarray, params: ModelParams, rng: np.random.Generator
                        ) -> None:
    """Fill weights, status, duration and ranking_ms of the day's whispers requests."""
    n = len(req)
    # weights: stored preset; stale on a mismatched user's other devices; fallback
    widx = pop.preset[req.user].astype(np.int64)
    for s in active(scenarios, "device_weight_mismatch"):
        stale = mismatched[req.user] & (req.device_k >= 1) & (req.ts >= s.start_us)
        widx[stale] = STALE_IDX
    fb_rate = np.full(n, params.fallback_rate)
    for s in active(scenarios, "fallback_surge"):
        fb_rate[s.covers(req.ts)] = float(s.params["level"])
    widx[rng.random(n) < fb_rate] = FALLBACK_IDX
    req.weights_idx = widx

    status = _statuses(rng, n, params.whispers_error_rate, params)
    duration = _latency(rng, n, params.whispers_median_ms, params.whispers_sigma, params)
    for s in scenarios:
        if s.day != day:
            continue
        idx = np.flatnonzero(s.covers(req.ts))
        if s.name in ERROR_SPIKES and idx.size:
            minute = (req.ts[idx] - s.start_us) // US_PER_MINUTE
            order = np.lexsort((rng.random(idx.size), minute))
            idx, minute = idx[order], minute[order]
            counts = np.bincount(minute)
            n_err = np.floor(float(s.params["level"]) * counts + 0.5).astype(np.int64)
            fail = rank_within(minute) < n_err[minute]
            status[idx[fail]] = rng.choice(SERVER_ERRORS, int(fail.sum()), p=SERVER_ERROR_P)
        elif s.name == "latency_spike" and idx.size:
            sigma = 0.25
            mu = np.log(float(s.params["ms"])) - sigma**2 / 2
            duration[idx] = rng.lognormal(mu, sigma, idx.size)
    client = (status >= 400) & (status < 500)
    duration[client] *= 0.4
    share = rng.beta(*params.ranking_share, n)
    ranking = np.minimum(duration * share, params.ranking_cap_ms + 40.0 * rng.random(n))
    for s in active(scenarios, "ranking_timeouts"):
        if s.day != day:
            continue
        idx = np.flatnonzero(s.covers(req.ts))
        pick = np.sort(rng.choice(idx, min(idx.size, int(s.params["count"])), replace=False))
        ranking[pick] = 201.0 + rng.exponential(80.0, pick.size)
        duration[pick] = np.maximum(duration[pick], ranking[pick] + rng.lognormal(np.log(15), 0.4, pick.size))
    req.status, req.duration, req.ranking_ms = status, duration, ranking


@dataclass(eq=False)
class OtherRequests:
    endpoint: np.ndarray   # index into OTHER_ENDPOINTS
    user: np.ndarray
    device_k: np.ndarray
    ts: np.ndarray
    status: np.ndarray
    duration: np.ndarray


def other_requests(opens: Opens, params: ModelParams, rng: np.random.Generator) -> OtherRequests:
    """Every open loads the recap page; half refresh the session; some list memories."""
    n = len(opens)
    session = rng.random(n) < 0.5
    memories = rng.poisson(0.4, n)
    counts = np.stack([np.ones(n, dtype=np.int64), session.astype(np.int64), memories], axis=1)
    per_open = counts.sum(axis=1)
    open_idx = np.repeat(np.arange(n), per_open)
    endpoint = np.repeat(np.tile(np.arange(3), n), counts.ravel())
    offset_s = np.select([endpoint == 0, endpoint == 1],
                         [rng.uniform(0.05, 0.8, open_idx.size), rng.uniform(0.0, 0.3, open_idx.size)],
                         rng.uniform(1.0, 120.0, open_idx.size))
    ts = opens.ts[open_idx] + (offset_s * US_PER_SECOND).astype(np.int64)
    duration = np.empty(open_idx.size)
    for e, (median, sigma) in enumerate(OTHER_LATENCY):
        rows = np.flatnonzero(endpoint == e)
        duration[rows] = _latency(rng, rows.size, median, sigma, params)
    status = _statuses(rng, open_idx.size, params.other_error_rate, params)
    duration[(status >= 400) & (status < 500)] *= 0.4
    return OtherRequests(endpoint, opens.user[open_idx], opens.device_k[open_idx], ts, status,
                         duration)


def db_metrics(cal: Calendar, params: ModelParams, scenarios: Sequence[Scenario], seed: int
               ) -> pa.Table:
    """One row a minute over the whole period: p95 query time with a mild diurnal shape and
    AR(1) noise; ``db_degradation`` multiplies its window by ``factor``."""
    rng = stream(seed, "db_metrics")
    ts = np.arange(cal.period_start_us, cal.period_end_us, US_PER_MINUTE, dtype=np.int64)
    hour = (ts % (24 * US_PER_HOUR)) / US_PER_HOUR
    from scipy.signal import lfilter  # here: scipy.signal takes ~0.5 s to import

    noise = lfilter([1.0], [1.0, -0.6], rng.normal(0.0, params.db_p95_noise_ms * 0.8, ts.size))
    p95 = params.db_p95_base_ms + params.db_p95_diurnal_ms * np.cos(2 * np.pi * (hour - 19) / 24) + noise
    p95 = np.maximum(p95, 2.0)
    for s in active(scenarios, "db_degradation"):
        p95[s.covers(ts)] *= float(s.params["factor"])
    return pa.table({"timestamp": to_arrow_ts(ts), "p95_query_ms": pa.array(np.round(p95, 3))})
