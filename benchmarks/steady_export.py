"""A steady-user-base export for benchmarking ``whispers-lab report`` and ``validate`` (issue 18).

Why it exists: the report must be fast on an export it was not tuned on. Every benchmark so far
ran on exports from our own simulator (``whispers_lab.simulate``), whose row shapes, id formats,
row order and table proportions the queries were tuned against. This script writes an
independent, contract-valid export (``data/CONTRACT.md``) of a different shape. It does not
import or call ``whispers_lab.simulate``; it shares only the contract, the plan
(``whispers_lab/plans/whispers_canary.toml``) and the production assignment rule
(``whispers_lab.cohort``), so the rollout it describes is the plan's calendar, served exactly.

The shape ("a steady user base"):

* ``users``: N users (default 1,000,000); 98% signed up uniformly over the 180 days before the
  14-day pre-period, 2% sign up uniformly during the exported span (active from the day after);
  0.5% internal; 10 + geometric micro-memories; 1-3 devices; 30% tuned ranking weights.
* activity: each user has a steady daily-visit propensity ~ Beta(1.5, 3.5) (mean 0.3), the same
  every day (no weekends, no treatment effect: treatment and control behave identically, a
  healthy rollout). An active day has one or two app opens (P(2) = 0.5), at least 35 minutes
  apart, on a mild diurnal curve, opened before 23:40 UTC so that everything an open causes
  stays on its UTC day.
* every open calls ``/api/recap`` (the recap page), half refresh ``/api/auth/session`` and some
  list ``/api/memories`` (1.05 per open on average); an open of a user whom the calendar stage in
  force enables calls ``/api/whispers/context`` 1 + Poisson(1.5) times (mean 2.5). Latency is
  lognormal per endpoint (whispers: median 52 ms, sigma 0.5); 0.5% 5xx and 0.2% 4xx everywhere.
* every successful whispers request scores 10 of the user's memories (``ranking_candidates``)
  and shows 6 of them (6 ``whispers_shown`` events, positions 1..6): the top 6 of the logged
  score, or with probability 0.1 a random slate (an affine permutation of the 10 candidates,
  whose marginal is exactly uniform), so ``propensity = 0.9 * [rank == position] + 0.01``.
  Shown whispers are clicked (``whispers_used``) with a position-decaying probability whose mean
  is ``--click-rate`` (default 0.21: the plan requires a CTR above 15% from the 25% stage, so
  at e.g. 5% day 12 is a NO_GO on ``ctr``, a failed rollout). Treated opens fire a Maya cue with
  probability 0.35 (never within 30 minutes of the previous one).
* ``exposures``: a row at each user's first recap page on or after day 0, and one more the first
  time the served experience changes (control -> treatment; stages only grow);
  ``flag_changes``: the static flags at day 0 and one ``NEXT_PUBLIC_WHISPERS_ENABLED`` row per
  calendar stage; ``feedback`` (6% of treated active users a day from the beta on, mean rating
  4.3), ``support_tickets`` (0.15% of users a day, same rate in both arms, some about whispers,
  never critical or privacy ones about whispers), ``db_metrics`` one row a minute.

Different from the simulator on purpose: 2.5 whispers requests per treated open (the simulator
makes one), a fixed 10 candidates per request, structural ids (``st0000042``,
``w<open>-<n>``) instead of time-ordered numbers, rows grouped by day but not ordered by time
within a day, no weekly cycle. At 1M users it writes about 102M rows (telemetry 34.6M, api_logs
35.9M, ranking_candidates 29.3M) in about 100 s on 2 cores, peak RSS ~4.7 GB (``--memory-limit
2GB``: ~180 s, 2.2 GB); the file is ~2.4 GB.

Generation: per-user traits are drawn with numpy (seeded), the cohort from
``whispers_lab.cohort.categories`` over the user-id array; every other row is generated in DuckDB
SQL, day by day, from a 64-bit hash of (seed, stream, key) -- ``hash(hash(...))``, uniform and
independent per stream -- so the rows depend only on the arguments (and the DuckDB version,
whose ``hash()`` it uses; the order of rows within a day may differ between runs). The export is written to a temporary file next to ``--out`` and
renamed into place.

    .venv/bin/python benchmarks/steady_export.py --users 20000 --out /tmp/steady-20k.duckdb
    .venv/bin/python benchmarks/steady_export.py --users 1000000 --seed 1 \\
        --out benchmarks/cache/steady-1m.duckdb
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import resource
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from whispers_lab import cohort
from whispers_lab.contract import WHISPERS_ENDPOINT
from whispers_lab.plan import Plan, load_plan
from whispers_lab.state import ENABLED_FLAG

# -- the shape -------------------------------------------------------------------------------------

PRE_DAYS = 14                    # pre-period: rollout days -14..-1 (the workbench's convention)
SIGNUP_SPREAD_DAYS = 180         # regular signups: uniform over the 180 days before the pre-period
LATE_SIGNUP_SHARE = 0.02         # signups during the exported span
INTERNAL_SHARE = 0.005
MIN_INTERNAL = 3
PROPENSITY_BETA = (1.5, 3.5)     # daily visit probability ~ Beta: mean 0.3
P_TWO_OPENS = 0.5
OPEN_GAP_MIN_S = 35 * 60         # two opens of a day are at least this far apart
OPEN_SPAN_S = 86_400 - 20 * 60   # opens happen before 23:40 UTC: what they cause stays on the day
DIURNAL = 0.1                    # time of day = u + DIURNAL sin(2 pi u): busier at midday UTC
DEVICE_PROBS = (0.55, 0.33, 0.12)
MEMORY_MIN, MEMORY_MEAN_EXTRA = 10, 20
TUNED_SHARE = 0.30
WEIGHT_VERSIONS = ("steady-default-2026-11", "steady-tuned-a", "steady-tuned-b", "steady-tuned-c")
FALLBACK_RATE = 0.005            # whispers requests ranked with fallback weights (no version)

EXTRA_REQUESTS_MEAN = 1.5        # whispers requests per treated open = 1 + Poisson(1.5)
MAX_REQUESTS = 12
CANDIDATES = 10
SHOWN = 6
EPSILON = 0.10                   # share of requests shown a random slate
CLICK_RATE = 0.21                # mean P(click) per shown whisper. The plan requires a CTR above
                                 # 15% from the 25% stage on: a lower rate is a failing rollout.
CLICK_DECAY = (1.6, 1.28, 1.02, 0.84, 0.70, 0.56)   # relative P(click) by position (mean 1)
CUE_PROB = 0.35
CUE_QUIET_S = 30 * 60            # no cue from an open in the first 30 minutes of a UTC day

SERVER_ERROR_RATE = 0.005
CLIENT_ERROR_RATE = 0.002
#: endpoint, median ms, sigma of the lognormal latency
WHISPERS_LATENCY = (52.0, 0.5)
OTHER_ENDPOINTS = (("/api/recap", 75.0, 0.45), ("/api/auth/session", 14.0, 0.35),
                   ("/api/memories", 38.0, 0.5))
#: other-endpoint slots of an open: 0 recap (always), 1 session, 2..4 memories; P(slot)
OTHER_SLOT_P = (1.0, 0.5, 0.6, 0.3, 0.15)

FEEDBACK_RATE = 0.06
RATING_PROBS = (0.02, 0.03, 0.08, 0.36, 0.51)       # mean 4.31
RELEVANT_NULL, RELEVANT_TRUE = 0.05, 0.88
TICKET_RATE = 0.0015             # tickets per user-day
TICKET_CATEGORY = (("bug", 0.45), ("other", 0.53), ("privacy", 0.02))
TICKET_PRIORITY = (("critical", 0.02), ("high", 0.15), ("medium", 0.50), ("low", 0.33))
TICKET_ABOUT_WHISPERS = 0.15     # share of an enabled user's bug / other tickets
TICKET_ANONYMOUS = 0.02

NEVER = 1_000_000                # f_day of users never enabled
US = 1_000_000
DAY_US = 86_400 * US
EPOCH = dt.datetime(1970, 1, 1)

TABLE_DDL = {
    "users": "user_id VARCHAR, signup_at TIMESTAMP, is_internal BOOLEAN, "
             "micro_memory_count INTEGER, engagement_score DOUBLE",
    "exposures": "user_id VARCHAR, exposed_at TIMESTAMP, variant VARCHAR",
    "telemetry": "event_id VARCHAR, created_at TIMESTAMP, user_id VARCHAR, device_id VARCHAR, "
                 "event_type VARCHAR, request_id VARCHAR, whisper_id VARCHAR, position INTEGER",
    "api_logs": 'request_id VARCHAR, "timestamp" TIMESTAMP, endpoint VARCHAR, user_id VARCHAR, '
                "device_id VARCHAR, status INTEGER, duration_ms DOUBLE, ranking_ms DOUBLE, "
                "weight_source VARCHAR, weights_version VARCHAR",
    "ranking_candidates": "request_id VARCHAR, memory_id VARCHAR, context_similarity DOUBLE, "
                          "recency_hours DOUBLE, use_count INTEGER, last_shown_hours DOUBLE, "
                          "pinned BOOLEAN, logged_score DOUBLE, shown_position INTEGER, "
                          "propensity DOUBLE",
    "feedback": "user_id VARCHAR, submitted_at TIMESTAMP, rating INTEGER, relevant BOOLEAN",
    "support_tickets": "ticket_id VARCHAR, created_at TIMESTAMP, user_id VARCHAR, "
                       "category VARCHAR, priority VARCHAR, about_whispers BOOLEAN",
    "db_metrics": '"timestamp" TIMESTAMP, p95_query_ms DOUBLE',
    "flag_changes": "changed_at TIMESTAMP, flag VARCHAR, value VARCHAR, percentage DOUBLE, "
                    "audience VARCHAR",
}


def _us(when: dt.datetime) -> int:
    d = when - EPOCH
    return (d.days * 86_400 + d.seconds) * US + d.microseconds


def _cum_case(r: str, probs: tuple[float, ...], values: tuple[str, ...]) -> str:
    """SQL CASE giving ``values[i]`` with probability ``probs[i]`` for a uniform ``r``."""
    cum, parts = 0.0, []
    for p, v in zip(probs[:-1], values[:-1], strict=True):
        cum += p
        parts.append(f"WHEN {r} < {cum!r} THEN {v}")
    return f"CASE {' '.join(parts)} ELSE {values[-1]} END"


def _poisson_case(r: str, mean: float, cap: int) -> str:
    """SQL CASE: 1 + Poisson(mean), capped at ``cap``, by inverting the CDF at ``r``."""
    cum, parts = 0.0, []
    for k in range(cap - 1):
        cum += math.exp(-mean) * mean**k / math.factorial(k)
        parts.append(f"WHEN {r} < {cum!r} THEN {k + 1}")
    return f"CASE {' '.join(parts)} ELSE {cap} END"


def _quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


# -- per-user traits (numpy) and the cohort (whispers_lab.cohort) -----------------------------------


def _users(con: duckdb.DuckDBPyConnection, n: int, seed: int, plan: Plan, through: int
           ) -> dict[str, int]:
    """Draw the users, assign them with the production rule and register ``u`` (one row per
    user, the traits the day loop reads). Returns cohort counts."""
    rng = np.random.default_rng([seed, 0x57EAD7])
    prop = rng.beta(*PROPENSITY_BETA, n)
    engagement = np.clip(0.05 + 0.9 * prop + rng.normal(0.0, 0.08, n), 0.0, 1.0)
    mem = MEMORY_MIN + rng.geometric(1.0 / (1.0 + MEMORY_MEAN_EXTRA), n) - 1
    internal = np.zeros(n, dtype=bool)
    internal[rng.choice(n, min(n, max(MIN_INTERNAL, round(INTERNAL_SHARE * n))), replace=False)] = True
    ndev = 1 + np.searchsorted(np.cumsum(DEVICE_PROBS), rng.random(n) * (1 - 1e-12), side="right")
    ver = np.where(rng.random(n) < TUNED_SHARE,
                   rng.integers(1, len(WEIGHT_VERSIONS), n), 0).astype(np.int8)
    day0 = _us(dt.datetime.combine(plan.start_date, dt.time()))
    pre_start = day0 - PRE_DAYS * DAY_US
    signup = pre_start - (rng.random(n) * SIGNUP_SPREAD_DAYS * DAY_US).astype(np.int64)
    late = rng.random(n) < LATE_SIGNUP_SHARE
    span = (PRE_DAYS + through + 1) * DAY_US
    signup[late] = pre_start + (rng.random(int(late.sum())) * span).astype(np.int64)
    signup -= signup % US
    signup_day = np.floor_divide(signup - day0, DAY_US)

    ids = con.sql(f"SELECT uid(i) AS user_id FROM range({n}) t(i) ORDER BY i").to_arrow_table()
    frame = pd.DataFrame({
        "user_id": ids.column("user_id").to_pandas(),
        "is_internal": internal,
        "micro_memory_count": mem.astype(np.int64),
        "engagement_score": engagement,
    })
    bucket, category, first_day = cohort.categories(frame, plan)
    f_day = np.where(np.isfinite(first_day), first_day, NEVER).astype(np.int32)
    con.register("u_arrow", pa.table({
        "uidx": np.arange(n, dtype=np.int64), "prop": prop, "engagement": engagement,
        "mem": mem.astype(np.int32), "internal": internal, "ndev": ndev.astype(np.int32),
        "ver": ver, "signup_us": signup, "signup_day": signup_day.astype(np.int32),
        "f_day": f_day, "bucket": bucket.astype(np.int32), "category": category.astype(np.int8),
    }))
    con.execute("CREATE OR REPLACE TEMP TABLE u AS SELECT * FROM u_arrow ORDER BY uidx")
    con.unregister("u_arrow")
    counts = np.bincount(category, minlength=len(cohort.CATEGORY_NAMES))
    return {name: int(c) for name, c in zip(cohort.CATEGORY_NAMES, counts, strict=True)}


# -- the SQL ------------------------------------------------------------------------------------------


def _macros(con: duckdb.DuckDBPyConnection, seed: int, width: int) -> None:
    salt = (int(seed) * 0x9E3779B1 + 0x5EAD) % (2**62) + 1   # never 0: hash(0) is 0
    con.execute(f"""
    CREATE OR REPLACE TEMP MACRO u01(k, a, b) AS
        ((hash(hash({salt}::BIGINT, k, a, b)) >> 11)::DOUBLE + 0.5) / 9007199254740992.0;
    CREATE OR REPLACE TEMP MACRO nrm(k, a, b) AS
        sqrt(-2.0 * ln(u01(k, a, b))) * cos(2.0 * pi() * u01(k + 500, a, b));
    CREATE OR REPLACE TEMP MACRO lognorm(median, sigma, k, a, b) AS
        exp(ln(median) + sigma * nrm(k, a, b));
    CREATE OR REPLACE TEMP MACRO uid(i) AS 'st' || lpad(CAST(i AS VARCHAR), {width}, '0');
    CREATE OR REPLACE TEMP MACRO did(i, k) AS 'dv' || CAST(i AS VARCHAR) || '.' || CAST(k AS VARCHAR);
    CREATE OR REPLACE TEMP MACRO http_status(r, r2) AS
        CASE WHEN r < {SERVER_ERROR_RATE} THEN [500, 502, 503, 504][1 + floor(r2 * 4)::INTEGER]
             WHEN r < {SERVER_ERROR_RATE + CLIENT_ERROR_RATE}
                 THEN [400, 401, 404, 429][1 + floor(r2 * 4)::INTEGER]
             ELSE 200 END;
    """)


def _day_sql(d: int, n: int, day0_us: int, beta_day: int, click_rate: float) -> list[str]:
    """The statements of rollout day ``d``: opens, then every table's rows of the day."""
    day_us = day0_us + d * DAY_US
    end = day_us + DAY_US - 1                      # last microsecond of the day
    base = (d + PRE_DAYS) * n
    span = OPEN_SPAN_S * US
    gap = OPEN_GAP_MIN_S * US
    treated = f"f_day <= {d}" if d >= 0 else "FALSE"
    n_req = _poisson_case("u01(6, oid, 0)", EXTRA_REQUESTS_MEAN, MAX_REQUESTS)
    click_p = "CASE p " + " ".join(
        f"WHEN {i} THEN {min(1.0, click_rate * w)!r}" for i, w in enumerate(CLICK_DECAY)) + " END"
    slot_p = "CASE s " + " ".join(f"WHEN {i} THEN {p}" for i, p in enumerate(OTHER_SLOT_P)) + " END"
    endpoint = "CASE WHEN s = 0 THEN 0 WHEN s = 1 THEN 1 ELSE 2 END"
    med = "[" + ", ".join(str(m) for _, m, _ in OTHER_ENDPOINTS) + "]"
    sig = "[" + ", ".join(str(s) for _, _, s in OTHER_ENDPOINTS) + "]"
    names = "[" + ", ".join(_quote(e) for e, _, _ in OTHER_ENDPOINTS) + "]"
    rating = _cum_case("u01(72, uidx, d)", RATING_PROBS, ("1", "2", "3", "4", "5"))
    wm, ws = WHISPERS_LATENCY
    versions = "[" + ", ".join(_quote(v) for v in WEIGHT_VERSIONS) + "]"
    out = [
        # the day's app opens: one row per open, with what it is served and when its recap loads
        f"""
        CREATE OR REPLACE TEMP TABLE o AS
        WITH act AS (
            SELECT uidx, ndev, f_day, ver, mem FROM u
            WHERE signup_day < {d} AND u01(1, uidx, {d}) < prop
        ), op AS (
            SELECT act.*, v.k, ({base} + uidx) * 2 + v.k AS oid,
                   CAST(floor((u01(3, uidx, {d})
                               + {DIURNAL} * sin(2 * pi() * u01(3, uidx, {d}))) * {span})
                        AS BIGINT) AS t1,
                   {gap} + CAST(floor(u01(4, uidx, {d}) * {span - 2 * gap}) AS BIGINT) AS g
            FROM act CROSS JOIN (VALUES (0), (1)) v(k)
            WHERE v.k = 0 OR u01(2, uidx, {d}) < {P_TWO_OPENS}
        ), tm AS (
            SELECT uidx, k, oid, ndev, f_day, ver, mem,
                   {day_us} + CASE WHEN k = 0 THEN t1 ELSE (t1 + g) % {span} END AS ts,
                   CAST(floor(u01(5, oid, 0) * ndev) AS INTEGER) AS dev,
                   {treated} AS treated
            FROM op
        )
        SELECT *, ts + CAST(floor((0.05 + 0.75 * u01(11, oid, 0)) * {US}) AS BIGINT) AS rts,
               CASE WHEN treated THEN {n_req} ELSE 0 END AS n_req
        FROM tm
        """,
        # app opens and Maya cues
        f"""
        INSERT INTO telemetry
        SELECT 'o' || oid, make_timestamp(ts), uid(uidx), did(uidx, dev), 'app_open',
               NULL, NULL, NULL
        FROM o
        UNION ALL
        SELECT 'q' || oid,
               make_timestamp(ts + CAST(floor((5 + 115 * u01(61, oid, 0)) * {US}) AS BIGINT)),
               uid(uidx), did(uidx, dev), 'maya_cue_fired', NULL, NULL, NULL
        FROM o
        WHERE treated AND ts - {day_us} >= {CUE_QUIET_S * US} AND u01(60, oid, 0) < {CUE_PROB}
        """,
        # other endpoints: recap (the exposure point), session, memories
        f"""
        INSERT INTO api_logs
        WITH sl AS (
            SELECT o.uidx, o.oid, o.ts, o.rts, o.dev, s.s, {endpoint} AS e,
                   http_status(u01(12, o.oid, s.s), u01(13, o.oid, s.s)) AS status
            FROM o CROSS JOIN range({len(OTHER_SLOT_P)}) s(s)
            WHERE s.s = 0 OR u01(10, o.oid, s.s) < {slot_p}
        )
        SELECT 'a' || oid || '-' || s,
               make_timestamp(CASE WHEN s = 0 THEN rts
                    WHEN s = 1 THEN least(ts + CAST(floor(0.3 * u01(14, oid, s) * {US}) AS BIGINT), {end})
                    ELSE least(ts + CAST(floor((1 + 119 * u01(14, oid, s)) * {US}) AS BIGINT), {end})
               END),
               {names}[e + 1], uid(uidx), did(uidx, dev), status,
               round(lognorm({med}[e + 1], {sig}[e + 1], 15, oid, s)
                     * CASE WHEN status < 500 AND status >= 400 THEN 0.4 ELSE 1.0 END, 3),
               NULL, NULL, NULL
        FROM sl
        """,
        # whispers requests of the day's treated opens
        f"""
        CREATE OR REPLACE TEMP TABLE rq AS
        WITH r AS (
            SELECT uidx, oid, dev, mem, ver, ts AS open_ts, unnest(range(n_req)) AS j
            FROM o WHERE treated
        ), a AS (
            SELECT uidx, oid, dev, mem, ver, j,
                   least(open_ts + 800000 + j * 20000000
                         + CAST(floor(u01(20, oid, j) * 15000000) AS BIGINT), {end}) AS ts,
                   http_status(u01(21, oid, j), u01(22, oid, j)) AS status,
                   lognorm({wm}, {ws}, 23, oid, j) AS dur0,
                   u01(25, oid, j) < {FALLBACK_RATE} AS fb,
                   u01(26, oid, j) < {EPSILON} AS explore,
                   CAST(floor(u01(27, oid, j) * 4) AS INTEGER) AS ai,
                   CAST(floor(u01(28, oid, j) * 10) AS INTEGER) AS b,
                   CAST(floor(u01(29, oid, j) * mem) AS INTEGER) AS off
            FROM r
        )
        SELECT uidx, oid, dev, mem, ver, j, ts, status, fb, explore, b, off,
               [1, 3, 7, 9][ai + 1] AS am, [1, 7, 3, 9][ai + 1] AS ainv,
               round(dur0 * CASE WHEN status < 500 AND status >= 400 THEN 0.4 ELSE 1.0 END, 3)
                   AS dur
        FROM a
        """,
        f"""
        INSERT INTO api_logs
        SELECT 'w' || oid || '-' || j, make_timestamp(ts), {_quote(WHISPERS_ENDPOINT)},
               uid(uidx), did(uidx, dev), status, dur,
               round(least(dur * (0.3 + 0.4 * u01(24, oid, j)), 150 + 40 * u01(24, oid, j + 100)), 3),
               CASE WHEN fb THEN 'fallback' ELSE 'user' END,
               CASE WHEN fb THEN NULL ELSE {versions}[ver + 1] END
        FROM rq
        """,
        # candidates: 10 per successful request, ranked by construction (score falls with c)
        f"""
        INSERT INTO ranking_candidates
        WITH cand AS (
            SELECT rq.uidx, rq.oid, rq.j, c.c, j * 16 + c.c AS key, (off + c.c) % mem AS m,
                   CASE WHEN explore THEN (am * c.c + b) % {CANDIDATES} ELSE c.c END AS pos0
            FROM rq CROSS JOIN range({CANDIDATES}) c(c)
            WHERE rq.status < 400
        )
        SELECT 'w' || oid || '-' || j, 'm' || uidx || '-' || m,
               round(pow(u01(30, oid, key), 1.4), 6),
               round(lognorm(90.0, 1.4, 31, oid, key), 3),
               CAST(floor(-ln(u01(33, uidx, m)) * 3) AS INTEGER),
               CASE WHEN u01(35, oid, key) < 0.35 THEN NULL
                    ELSE round(lognorm(30.0, 1.2, 36, oid, key), 3) END,
               u01(34, uidx, m) < 0.03,
               round(1.0 - 0.08 * c + 0.07 * u01(38, oid, key), 6),
               CASE WHEN pos0 < {SHOWN} THEN pos0 + 1 END,
               CASE WHEN pos0 < {SHOWN} THEN
                   (CASE WHEN pos0 = c THEN {1 - EPSILON} ELSE 0.0 END) + {EPSILON / CANDIDATES}
               END
        FROM cand
        """,
        # shown whispers (6 per successful request) and clicks
        f"""
        INSERT INTO telemetry
        WITH sh AS (
            SELECT rq.uidx, rq.oid, rq.j, rq.dev, p.p,
                   CASE WHEN explore THEN (((ainv * (p.p - b)) % {CANDIDATES}) + {CANDIDATES})
                                          % {CANDIDATES}
                        ELSE p.p END AS c,
                   least(rq.ts + CAST(round(rq.dur * 1000) AS BIGINT), {end}) AS sts,
                   off, mem
            FROM rq CROSS JOIN range({SHOWN}) p(p)
            WHERE rq.status < 400
        ), ev AS (
            SELECT *, 'w' || oid || '-' || j AS rid, 'm' || uidx || '-' || ((off + c) % mem) AS wid
            FROM sh
        )
        SELECT 's' || oid || '-' || j || '-' || p, make_timestamp(sts), uid(uidx),
               did(uidx, dev), 'whispers_shown', rid, wid, p + 1
        FROM ev
        UNION ALL
        SELECT 'c' || oid || '-' || j || '-' || p,
               make_timestamp(least(sts + CAST(floor((2 + 38 * u01(41, oid, j * 16 + p)) * {US})
                                               AS BIGINT), {end})),
               uid(uidx), did(uidx, dev), 'whispers_used', rid, wid, p + 1
        FROM ev
        WHERE u01(40, oid, j * 16 + p) < {click_p}
        """,
    ]
    if d >= 0:
        out.append(f"INSERT INTO fo SELECT uidx, {d}, min(rts) FROM o GROUP BY uidx")
    if d >= beta_day:
        out.append(f"""
        INSERT INTO feedback
        WITH f AS (SELECT uidx, {d} AS d, min(rts) AS rts FROM o WHERE treated GROUP BY uidx)
        SELECT uid(uidx),
               make_timestamp(least(rts + CAST(floor((60 + 840 * u01(71, uidx, d)) * {US})
                                               AS BIGINT), {end})),
               {rating},
               CASE WHEN u01(73, uidx, d) < {RELEVANT_NULL} THEN NULL
                    ELSE u01(74, uidx, d) < {RELEVANT_TRUE} END
        FROM f WHERE u01(70, uidx, d) < {FEEDBACK_RATE}
        """)
    cat = _cum_case(f"u01(52, uidx, {d})", tuple(p for _, p in TICKET_CATEGORY),
                    tuple(_quote(c) for c, _ in TICKET_CATEGORY))
    pri = _cum_case(f"u01(53, uidx, {d})", tuple(p for _, p in TICKET_PRIORITY),
                    tuple(_quote(c) for c, _ in TICKET_PRIORITY))
    out.append(f"""
        INSERT INTO support_tickets
        WITH t AS (
            SELECT uidx, {d} AS d, f_day, {cat} AS category, {pri} AS priority,
                   u01(55, uidx, {d}) < {TICKET_ANONYMOUS} AS anon
            FROM u WHERE signup_day < {d} AND u01(50, uidx, {d}) < {TICKET_RATE}
        ), a AS (
            SELECT *, NOT anon AND {treated} AND category <> 'privacy'
                      AND u01(54, uidx, d) < {TICKET_ABOUT_WHISPERS} AS about
            FROM t
        )
        SELECT 't' || ({d + PRE_DAYS}) || '-' || uidx,
               make_timestamp({day_us} + CAST(floor(u01(51, uidx, d) * {DAY_US - 1}) AS BIGINT)),
               CASE WHEN anon THEN NULL ELSE uid(uidx) END, category,
               CASE WHEN about AND priority = 'critical' THEN 'high' ELSE priority END, about
        FROM a
    """)
    return out


def _flag_rows(plan: Plan, through: int) -> pa.Table:
    """The static flags at the start of day 0, then one enabling row per calendar stage."""
    t0 = plan.day_start(0)
    rows = [(t0, name, str(value).lower(), None, None)
            for name, value in plan.flags.items() if name != ENABLED_FLAG]
    for phase in plan.phases:
        if phase.first_day <= through:
            pct = float(phase.percentage) if phase.audience == "percentage" else None
            rows.append((plan.day_start(phase.first_day), ENABLED_FLAG, "true", pct, phase.audience))
    rows.sort(key=lambda r: (r[0], r[1]))
    return pa.table({
        "changed_at": pa.array([r[0] for r in rows], pa.timestamp("us")),
        "flag": pa.array([r[1] for r in rows], pa.string()),
        "value": pa.array([r[2] for r in rows], pa.string()),
        "percentage": pa.array([r[3] for r in rows], pa.float64()),
        "audience": pa.array([r[4] for r in rows], pa.string()),
    })


# -- driver ----------------------------------------------------------------------------------------------


def generate(out: str | os.PathLike[str], users: int = 1_000_000, seed: int = 1,
             through_day: int | None = None, *, plan: Plan | None = None,
             click_rate: float = CLICK_RATE, threads: int | None = None,
             memory_limit: str | None = None, verbose: bool = False) -> dict[str, int]:
    """Write the steady export to ``out`` (a DuckDB file, atomically). Returns rows per table.

    The rows are inserted in one transaction (one commit: twice as fast as a commit a day), so
    DuckDB holds them uncompressed until the end: ~4.7 GB at 1M users. ``memory_limit`` (e.g.
    ``"2GB"``) makes it spill to disk instead, at about twice the time."""
    if users < 1:
        raise ValueError(f"users must be >= 1, got {users}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    plan = plan or load_plan()
    through = plan.last_day if through_day is None else int(through_day)
    if through < 0:
        raise ValueError(f"through_day must be >= 0, got {through}")
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    for p in (tmp, Path(str(tmp) + ".wal")):
        p.unlink(missing_ok=True)
    width = max(7, len(str(users - 1)))
    day0_us = _us(dt.datetime.combine(plan.start_date, dt.time()))
    beta_day = plan.beta_first_day()
    beta_day = through + 1 if beta_day is None else beta_day
    config = {"preserve_insertion_order": False}
    if threads:
        config["threads"] = int(threads)
    if memory_limit:
        config["memory_limit"] = memory_limit
    con = duckdb.connect(str(tmp), config=config)
    try:
        _macros(con, seed, width)
        con.execute("BEGIN TRANSACTION")   # one commit at the end, not one per statement
        for name, ddl in TABLE_DDL.items():
            con.execute(f"CREATE TABLE {name} ({ddl})")
        con.execute("CREATE TEMP TABLE fo (uidx BIGINT, d INTEGER, rts BIGINT)")
        cohort_counts = _users(con, users, seed, plan, through)
        if verbose:
            print(f"  users and cohort: {cohort_counts}", file=sys.stderr, flush=True)
        con.execute("""
            INSERT INTO users
            SELECT uid(uidx), make_timestamp(signup_us), internal, mem, engagement
            FROM u ORDER BY uidx""")
        for d in range(-PRE_DAYS, through + 1):
            t = time.perf_counter()
            for sql in _day_sql(d, users, day0_us, beta_day, click_rate):
                con.execute(sql)
            if verbose:
                print(f"  day {d:3d}: {time.perf_counter() - t:5.1f} s", file=sys.stderr,
                      flush=True)
        # exposures: first recap page on or after day 0, then the switch to treatment
        con.execute("""
            INSERT INTO exposures
            WITH f AS (SELECT uidx, min(rts) AS t0, arg_min(d, rts) AS d0 FROM fo GROUP BY uidx),
            j AS (SELECT f.*, u.f_day FROM f JOIN u USING (uidx)),
            sw AS (
                SELECT fo.uidx, min(fo.rts) AS t1 FROM fo JOIN j USING (uidx)
                WHERE j.f_day > j.d0 AND fo.d >= j.f_day GROUP BY fo.uidx
            ),
            x AS (
                SELECT uidx, t0 AS t, CASE WHEN f_day <= d0 THEN 'treatment' ELSE 'control' END
                    AS variant FROM j
                UNION ALL
                SELECT uidx, t1, 'treatment' FROM sw
            )
            SELECT uid(uidx), make_timestamp(t), variant FROM x ORDER BY t, uidx""")
        start_us = day0_us - PRE_DAYS * DAY_US
        minutes = (PRE_DAYS + through + 1) * 24 * 60
        con.execute(f"""
            INSERT INTO db_metrics
            SELECT make_timestamp({start_us} + i * {60 * US}),
                   round(greatest(2.0, 19.0 + 3.0 * cos(2 * pi() * ((i % 1440) / 60.0 - 19) / 24)
                                  + 0.8 * nrm(90, i, 0)), 3)
            FROM range({minutes}) t(i)""")
        con.register("flags_arrow", _flag_rows(plan, through))
        con.execute("INSERT INTO flag_changes SELECT * FROM flags_arrow")
        con.unregister("flags_arrow")
        rows = {name: int(con.execute(f"SELECT count(*) FROM {name}").fetchall()[0][0])
                for name in TABLE_DDL}
        con.execute("DROP TABLE u; DROP TABLE fo; DROP TABLE IF EXISTS o; DROP TABLE IF EXISTS rq")
        con.execute("COMMIT")
        con.execute("CHECKPOINT")
        con.close()
        os.replace(tmp, target)
    except BaseException:
        con.close()
        for p in (tmp, Path(str(tmp) + ".wal")):
            p.unlink(missing_ok=True)
        raise
    return rows


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # Linux: KiB


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", required=True, help="the DuckDB file to write")
    ap.add_argument("--through-day", type=int, default=None,
                    help="last rollout day exported (default: the plan's last day, 14)")
    ap.add_argument("--click-rate", type=float, default=CLICK_RATE,
                    help=f"mean click probability per shown whisper (default {CLICK_RATE})")
    ap.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: cores)")
    ap.add_argument("--memory-limit", default=None,
                    help="DuckDB memory limit, e.g. 2GB (default: DuckDB's, 80%% of RAM)")
    ap.add_argument("--quiet", action="store_true", help="no per-day progress on stderr")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows = generate(args.out, args.users, args.seed, args.through_day,
                    click_rate=args.click_rate, threads=args.threads,
                    memory_limit=args.memory_limit, verbose=not args.quiet)
    seconds = time.perf_counter() - t0
    print(f"steady export: {args.users:,} users, seed {args.seed} -> {args.out}")
    for name, n in rows.items():
        print(f"  {name:<20} {n:>13,}")
    print(f"  {'total':<20} {sum(rows.values()):>13,}")
    size = Path(args.out).stat().st_size / 2**20
    print(f"  {seconds:.1f} s, peak RSS {peak_rss_mb():,.0f} MB, file {size:,.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
