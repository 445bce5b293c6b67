"""Experiment SQL: the sufficient statistics behind :mod:`whispers_lab.stats`.

Every function returns a small aggregated frame (per variant, per stratum, per day), never a row
per user, except :func:`canary_units`, which returns at most ``max_units`` users per arm drawn by
a seeded hash. Half-open windows ``[lo, hi)`` of naive UTC timestamps; rollout days are
``date_diff('day', start_date, CAST(ts AS DATE))``.

The cohort (reason and first enabled day of every user, from :mod:`whispers_lab.cohort`) is
registered by the caller as the relation :data:`COHORT_RELATION` with columns
``user_id, reason, first_enabled_day`` (DOUBLE, ``inf`` = never); see :func:`register_cohort`.

Population of every randomised comparison ("units"): users with an exposure in
``[rollout start, hi)`` who are in the users table, not internal and not beta (cohort reasons
``internal`` / ``beta`` are excluded: those users were selected, not randomised). A unit's
stratum ``e`` is the rollout day of its first exposure; its analysis variant is the one first
served; ``f`` is the rollout day on which the plan enables it (``inf`` = never).

:func:`materialize_units` computes the units once per analysis (one pass over the app opens)
into the temporary table :data:`UNITS_TABLE`; the retention, survival, SRM, ticket and canary
queries read it, so call it first (after :func:`register_cohort`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import pandas as pd

from ..contract import WHISPERS_ENDPOINT
from ..export import Export

COHORT_RELATION = "wl_cohort"
UNITS_TABLE = "wl_units"
#: Widest span of rollout days (pre-period included) the 64-bit day mask of a user can hold.
MAX_MASK_DAYS = 62
EXCLUDED_REASONS: tuple[str, ...] = ("internal", "beta")
ERROR_STATUS = 400  # an error is status >= 400, as the plan's dashboard counts it


def users_for_assignment(export: Export) -> pd.DataFrame:
    """The four users columns the cohort assignment reads (one row per user)."""
    return export.sql("SELECT user_id, is_internal, micro_memory_count, engagement_score "
                      "FROM users")


def register_cohort(export: Export, cohort: pd.DataFrame) -> None:
    """Register ``user_id, reason, first_enabled_day`` as :data:`COHORT_RELATION`."""
    frame = pd.DataFrame({
        "user_id": cohort["user_id"].astype(str),
        "reason": cohort["reason"].astype(str),
        "first_enabled_day": cohort["first_enabled_day"].astype(float),
    })
    export.register(COHORT_RELATION, frame)


def _units_cte(start: dt.date) -> str:
    """CTEs ``first_exp`` and ``units`` straight from the exposures (parameters $t0, $hi)."""
    excluded = ", ".join(f"'{r}'" for r in EXCLUDED_REASONS)
    return f"""
    first_exp AS (
        SELECT user_id, min(exposed_at) AS first_at, arg_min(variant, exposed_at) AS variant
        FROM exposures
        WHERE exposed_at >= $t0 AND exposed_at < $hi
        GROUP BY user_id
    ),
    units AS (
        SELECT f.user_id, f.variant,
               date_diff('day', DATE '{start.isoformat()}', CAST(f.first_at AS DATE)) AS e,
               c.first_enabled_day AS f_day
        FROM first_exp f
        JOIN {COHORT_RELATION} c ON c.user_id = f.user_id
        WHERE c.reason NOT IN ({excluded})
    )"""


def _day_expr(start: dt.date, col: str) -> str:
    return f"date_diff('day', DATE '{start.isoformat()}', CAST({col} AS DATE))"


def materialize_units(export: Export, start: dt.date, t0: dt.datetime, hi: dt.datetime,
                      preperiod_days: int) -> int:
    """Create the temporary table :data:`UNITS_TABLE`, one row per randomised unit:
    ``user_id, variant, e, f_day, x, gap``. ``x``: active days (days with an app_open) in the
    ``preperiod_days`` days before the rollout start; ``gap``: days from ``e`` to the first
    later day with an app_open before ``hi`` (NULL: none). Returns the number of units.

    App opens are read once: each user's active days become the bits of one 64-bit mask (bit
    ``d + preperiod_days`` for rollout day d), so the work is one grouping of the opens by user
    and a join of one row per user. Longer spans than :data:`MAX_MASK_DAYS` fall back to a join
    on distinct (user, day) pairs (same result, slower)."""
    last = (hi.date() - start).days - 1
    pre = dt.datetime.combine(start, dt.time()) - dt.timedelta(days=preperiod_days)
    opens = f"""
    opens AS (
        SELECT user_id, {_day_expr(start, 'created_at')} AS d
        FROM telemetry
        WHERE event_type = 'app_open' AND created_at >= $pre AND created_at < $hi
    )"""
    if preperiod_days + last + 1 <= MAX_MASK_DAYS:
        body = """
        masks AS (
            SELECT user_id, bit_or(CAST(1 AS UBIGINT) << CAST(d + $pdays AS UBIGINT)) AS m
            FROM opens GROUP BY user_id
        ),
        shifted AS (
            SELECT u.*, coalesce(k.m, CAST(0 AS UBIGINT)) AS m,
                   coalesce(k.m, CAST(0 AS UBIGINT)) >> CAST(u.e + $pdays + 1 AS UBIGINT) AS after
            FROM units u LEFT JOIN masks k ON k.user_id = u.user_id
        )
        SELECT user_id, variant, e, f_day,
               bit_count(m & ((CAST(1 AS UBIGINT) << CAST($pdays AS UBIGINT)) - 1)) AS x,
               CASE WHEN after = 0 THEN NULL
                    ELSE bit_count(~greatest(after, 1) & (greatest(after, 1) - 1)) + 1 END AS gap
        FROM shifted"""
    else:
        body = """
        od AS (SELECT DISTINCT user_id, d FROM opens)
        SELECT u.user_id, any_value(u.variant) AS variant, any_value(u.e) AS e,
               any_value(u.f_day) AS f_day,
               count(od.d) FILTER (WHERE od.d < 0) AS x,
               min(od.d) FILTER (WHERE od.d > u.e) - any_value(u.e) AS gap
        FROM units u LEFT JOIN od ON od.user_id = u.user_id
        GROUP BY u.user_id"""
    params = {"t0": t0, "hi": hi, "pre": pre}
    if "$pdays" in body:
        params["pdays"] = int(preperiod_days)
    export.sql(f"CREATE OR REPLACE TEMP TABLE {UNITS_TABLE} AS "
               f"WITH {_units_cte(start)}, {opens}, {body}", params)
    return int(export.scalar(f"SELECT count(*) FROM {UNITS_TABLE}"))


def exposure_quality(export: Export, start: dt.date, t0: dt.datetime, hi: dt.datetime
                     ) -> dict[str, int]:
    """Counts that qualify the randomised population: exposed users unknown to the cohort,
    excluded (internal / beta) users, and units first served against the plan."""
    excluded = ", ".join(f"'{r}'" for r in EXCLUDED_REASONS)
    q = f"""
    WITH first_exp AS (
        SELECT user_id, min(exposed_at) AS first_at, arg_min(variant, exposed_at) AS variant
        FROM exposures WHERE exposed_at >= $t0 AND exposed_at < $hi GROUP BY user_id
    ), j AS (
        SELECT f.*, c.reason, c.first_enabled_day AS f_day,
               {_day_expr(start, 'f.first_at')} AS e
        FROM first_exp f LEFT JOIN {COHORT_RELATION} c ON c.user_id = f.user_id
    )
    SELECT count(*) AS exposed,
           count(*) FILTER (WHERE reason IS NULL) AS unknown_users,
           count(*) FILTER (WHERE reason = 'internal') AS internal_users,
           count(*) FILTER (WHERE reason = 'beta') AS beta_users,
           count(*) FILTER (WHERE reason NOT IN ({excluded})) AS randomised_users,
           count(*) FILTER (WHERE reason NOT IN ({excluded}) AND variant = 'treatment'
                            AND f_day > e) AS treatment_before_enabled,
           count(*) FILTER (WHERE reason NOT IN ({excluded}) AND variant = 'control'
                            AND f_day <= e) AS control_after_enabled
    FROM j
    """
    row = export.sql(q, {"t0": t0, "hi": hi}).iloc[0]
    return {k: int(v) for k, v in row.items()}


def retention_cells(export: Export, k_values: Sequence[int], last_day: int) -> pd.DataFrame:
    """Per (k, stratum e, variant) of the materialised units: n, sum_y (retained), sum_x,
    sum_x2, sum_xy, where y = 1 if the unit has an app_open on a rollout day in
    ``[e + 1, e + k]`` and x = its pre-period active days.

    A unit is counted for k when its window has closed by the end of ``last_day``
    (``e + k <= last_day``) and, for a control unit, before the plan switches it to treatment
    (``e + k + 1 <= f``). The outcome does not depend on the analysis day once the window is
    closed, so one call gives every earlier day's cells too (keep strata ``e <= day - k``)."""
    ks = ", ".join(f"({int(k)})" for k in sorted(set(k_values)))
    q = f"""
    WITH ks(k) AS (VALUES {ks})
    SELECT ks.k, p.e AS stratum, p.variant,
           count(*) AS n,
           sum(CASE WHEN p.gap <= ks.k THEN 1 ELSE 0 END)::DOUBLE AS sum_y,
           sum(p.x)::DOUBLE AS sum_x,
           sum(p.x * p.x)::DOUBLE AS sum_x2,
           sum(CASE WHEN p.gap <= ks.k THEN p.x ELSE 0 END)::DOUBLE AS sum_xy
    FROM {UNITS_TABLE} p CROSS JOIN ks
    WHERE p.e + ks.k <= $last
      AND (p.variant = 'treatment' OR p.e + ks.k + 1 <= p.f_day)
    GROUP BY ks.k, p.e, p.variant
    ORDER BY ks.k, p.e, p.variant
    """
    return export.sql(q, {"last": int(last_day)})


def survival_cells(export: Export, last_day: int) -> pd.DataFrame:
    """Days to return: per (variant, stratum, time, event), the number of units.

    Follow-up of a unit runs from its exposure day e to the last full day it is observed in its
    analysis variant, ``C = min(last_day, f - 1)`` for control (``f`` = switch day) and
    ``last_day`` for treatment. Event: first app_open on a day in ``(e, C]``, at time
    ``day - e``; otherwise censored at ``C - e``. Units with no follow-up (``C <= e``) are left
    out."""
    q = f"""
    WITH per_unit AS (
        SELECT variant, e, e + gap AS r,
               CASE WHEN variant = 'control' THEN least($last::DOUBLE, f_day - 1)
                    ELSE $last::DOUBLE END AS c
        FROM {UNITS_TABLE}
    )
    SELECT variant, e AS stratum,
           CAST(CASE WHEN r IS NOT NULL AND r <= c THEN r - e ELSE c - e END AS BIGINT) AS time,
           CASE WHEN r IS NOT NULL AND r <= c THEN 1 ELSE 0 END AS event,
           count(*) AS n
    FROM per_unit
    WHERE c > e
    GROUP BY ALL
    ORDER BY variant, stratum, time, event
    """
    return export.sql(q, {"last": int(last_day)})


def srm_counts(export: Export) -> pd.DataFrame:
    """Units by first-exposure day and first-served variant: day, n_t, n_c."""
    return export.sql(f"""
    SELECT e AS day,
           count(*) FILTER (WHERE variant = 'treatment') AS n_t,
           count(*) FILTER (WHERE variant = 'control') AS n_c
    FROM {UNITS_TABLE} GROUP BY e ORDER BY e
    """)


def ratio_units(export: Export, lo: dt.datetime, hi: dt.datetime) -> pd.DataFrame:
    """Clustered sums for CTR over one window, external users (beta included):
    metric 'ctr' (num = whispers_used, den = whispers_shown events per user) and
    'ctr_requests' (num = requests with a whispers_used event, den = requests with a
    whispers_shown event per user), each as n, sum_num, sum_den, sum_num2, sum_den2,
    sum_num_den."""
    q = f"""
    WITH ev AS (
        SELECT t.user_id, t.request_id, t.event_type
        FROM telemetry t JOIN {COHORT_RELATION} c ON c.user_id = t.user_id
        WHERE t.created_at >= $lo AND t.created_at < $hi AND c.reason <> 'internal'
          AND t.event_type IN ('whispers_shown', 'whispers_used')
    ),
    per_req AS (
        SELECT user_id, request_id,
               count(*) FILTER (WHERE event_type = 'whispers_shown') AS shown,
               count(*) FILTER (WHERE event_type = 'whispers_used') AS used
        FROM ev GROUP BY user_id, request_id
    ),
    per_user AS (
        SELECT user_id, sum(used)::DOUBLE AS clicks, sum(shown)::DOUBLE AS impressions,
               count(*) FILTER (WHERE used > 0 AND shown > 0 AND request_id IS NOT NULL)::DOUBLE
                   AS clicked_requests,
               count(*) FILTER (WHERE shown > 0 AND request_id IS NOT NULL)::DOUBLE AS requests
        FROM per_req GROUP BY user_id
        HAVING sum(shown) > 0
    )
    SELECT 'ctr' AS metric, count(*) AS n, sum(clicks) AS sum_num, sum(impressions) AS sum_den,
           sum(clicks * clicks) AS sum_num2, sum(impressions * impressions) AS sum_den2,
           sum(clicks * impressions) AS sum_num_den
    FROM per_user
    UNION ALL
    SELECT 'ctr_requests', count(*), sum(clicked_requests), sum(requests),
           sum(clicked_requests * clicked_requests), sum(requests * requests),
           sum(clicked_requests * requests)
    FROM per_user WHERE requests > 0
    """
    return export.sql(q, {"lo": lo, "hi": hi})


def feedback_units(export: Export, lo: dt.datetime, hi: dt.datetime) -> pd.DataFrame:
    """Clustered sums of survey answers of external users: metric 'feedback_score'
    (num = sum of ratings, den = answers per user) and 'relevance' (num = 'relevant' answers,
    den = answers with a relevance judgement)."""
    q = f"""
    WITH per_user AS (
        SELECT f.user_id, sum(f.rating)::DOUBLE AS rating_sum, count(*)::DOUBLE AS answers,
               count(*) FILTER (WHERE f.relevant)::DOUBLE AS relevant,
               count(f.relevant)::DOUBLE AS judged
        FROM feedback f JOIN {COHORT_RELATION} c ON c.user_id = f.user_id
        WHERE f.submitted_at >= $lo AND f.submitted_at < $hi AND c.reason <> 'internal'
        GROUP BY f.user_id
    )
    SELECT 'feedback_score' AS metric, count(*) AS n, sum(rating_sum) AS sum_num,
           sum(answers) AS sum_den, sum(rating_sum * rating_sum) AS sum_num2,
           sum(answers * answers) AS sum_den2, sum(rating_sum * answers) AS sum_num_den
    FROM per_user
    UNION ALL
    SELECT 'relevance', count(*), sum(relevant), sum(judged), sum(relevant * relevant),
           sum(judged * judged), sum(relevant * judged)
    FROM per_user WHERE judged > 0
    """
    return export.sql(q, {"lo": lo, "hi": hi})


def ticket_counts(export: Export, start: dt.date, t0: dt.datetime, hi: dt.datetime,
                  lo_day: int) -> pd.DataFrame:
    """Support tickets and user-days per planned variant and rollout day, randomised units,
    days ``[lo_day, last day]``: day, variant, users, user_days, tickets.

    A unit contributes the days from its first exposure day on; a day counts as treatment when
    the plan has enabled the unit (``f <= day``), else control (intention to treat by plan).
    Tickets without a user id cannot be attributed and are not counted. User-days come from the
    units grouped by (e, f), never from a row per user-day."""
    q = f"""
    WITH days AS (SELECT unnest(range($lo_day, $last + 1)) AS d),
    groups AS (SELECT e, f_day, count(*) AS n FROM {UNITS_TABLE} GROUP BY e, f_day),
    ud AS (
        SELECT d.d AS day, CASE WHEN g.f_day <= d.d THEN 'treatment' ELSE 'control' END AS variant,
               sum(g.n) AS users
        FROM groups g JOIN days d ON d.d >= g.e
        GROUP BY ALL
    ),
    tk AS (
        SELECT {_day_expr(start, 't.created_at')} AS day,
               CASE WHEN u.f_day <= {_day_expr(start, 't.created_at')} THEN 'treatment'
                    ELSE 'control' END AS variant,
               count(*) AS tickets
        FROM support_tickets t JOIN {UNITS_TABLE} u ON u.user_id = t.user_id
        WHERE t.created_at >= $t0 AND t.created_at < $hi
          AND {_day_expr(start, 't.created_at')} >= greatest(u.e, $lo_day)
        GROUP BY ALL
    )
    SELECT ud.day, ud.variant, ud.users, ud.users::DOUBLE AS user_days,
           coalesce(tk.tickets, 0)::BIGINT AS tickets
    FROM ud LEFT JOIN tk USING (day, variant)
    ORDER BY ud.day, ud.variant
    """
    last = (hi.date() - start).days - 1
    return export.sql(q, {"t0": t0, "hi": hi, "lo_day": int(lo_day), "last": int(last)})


def ticket_users(export: Export, lo_day: int, last_day: int) -> dict[str, int]:
    """Distinct randomised units that contributed user-days to each planned variant."""
    q = f"""
    SELECT count(*) FILTER (WHERE f_day <= $last) AS users_t,
           count(*) FILTER (WHERE f_day > greatest(e, $lo_day)) AS users_c
    FROM {UNITS_TABLE} WHERE e <= $last
    """
    row = export.sql(q, {"lo_day": int(lo_day), "last": int(last_day)}).iloc[0]
    return {"users_t": int(row["users_t"]), "users_c": int(row["users_c"])}


def latency_summary(export: Export, lo: dt.datetime, hi: dt.datetime, q: float,
                    threshold_ms: float, endpoint: str = WHISPERS_ENDPOINT) -> dict[str, float]:
    """n, the q-quantile (continuous) and #{duration < threshold} of the endpoint's requests."""
    sql = """
    SELECT count(*) AS n, quantile_cont(duration_ms, $q) AS estimate,
           count(*) FILTER (WHERE duration_ms < $thr) AS n_below
    FROM api_logs WHERE endpoint = $ep AND "timestamp" >= $lo AND "timestamp" < $hi
    """
    row = export.sql(sql, {"lo": lo, "hi": hi, "q": q, "thr": threshold_ms,
                           "ep": endpoint}).iloc[0]
    return {"n": int(row["n"]), "estimate": None if pd.isna(row["estimate"]) else
            float(row["estimate"]), "n_below": int(row["n_below"])}


def latency_order_statistics(export: Export, lo: dt.datetime, hi: dt.datetime,
                             ranks: Sequence[int], endpoint: str = WHISPERS_ENDPOINT
                             ) -> dict[int, float]:
    """Values of the endpoint's durations at the given 1-based ranks (ascending order)."""
    wanted = [int(r) for r in ranks if r >= 1]
    if not wanted:
        return {}
    sql = """
    SELECT rn, duration_ms FROM (
        SELECT duration_ms, row_number() OVER (ORDER BY duration_ms) AS rn
        FROM api_logs WHERE endpoint = $ep AND "timestamp" >= $lo AND "timestamp" < $hi
    ) WHERE list_contains($ranks, rn)
    """
    df = export.sql(sql, {"lo": lo, "hi": hi, "ep": endpoint, "ranks": wanted})
    return {int(r): float(v) for r, v in zip(df["rn"], df["duration_ms"], strict=True)}


def canary_units(export: Export, lo: dt.datetime, hi: dt.datetime, day: int, max_units: int,
                 seed: int, endpoint: str = WHISPERS_ENDPOINT) -> pd.DataFrame:
    """Per-user values on one day for the canary comparison, at most ``max_units`` users per
    planned variant, chosen by a seeded hash of the user id (deterministic, thread-safe).

    Population: randomised units first exposed on or before ``day``; variant by plan on the day
    (treatment iff ``f <= day``: intention to treat, so that being served does not select the
    more active users). Columns: variant, duration_ms (mean of the user's requests to other
    endpoints), error_rate (share with status >= 400), opens (app_open events), each NULL when
    the user had no such activity that day."""
    q = f"""
    WITH pop AS (
        SELECT user_id, CASE WHEN f_day <= $day THEN 'treatment' ELSE 'control' END AS variant
        FROM {UNITS_TABLE} WHERE e <= $day
    ),
    api AS (
        SELECT user_id, avg(duration_ms) AS duration_ms,
               avg(CASE WHEN status >= {ERROR_STATUS} THEN 1.0 ELSE 0.0 END) AS error_rate
        FROM api_logs
        WHERE "timestamp" >= $lo AND "timestamp" < $hi AND endpoint <> $ep AND user_id IS NOT NULL
        GROUP BY user_id
    ),
    op AS (
        SELECT user_id, count(*)::DOUBLE AS opens FROM telemetry
        WHERE created_at >= $lo AND created_at < $hi AND event_type = 'app_open'
        GROUP BY user_id
    ),
    joined AS (
        SELECT p.variant, a.duration_ms, a.error_rate, o.opens,
               row_number() OVER (PARTITION BY p.variant ORDER BY hash(p.user_id, $seed),
                                  p.user_id) AS rk
        FROM pop p LEFT JOIN api a ON a.user_id = p.user_id
                   LEFT JOIN op o ON o.user_id = p.user_id
        WHERE a.user_id IS NOT NULL OR o.user_id IS NOT NULL
    )
    SELECT variant, duration_ms, error_rate, opens FROM joined WHERE rk <= $max_units
    """
    return export.sql(q, {"lo": lo, "hi": hi, "day": int(day), "ep": endpoint,
                          "seed": int(seed), "max_units": int(max_units)})


def canary_population(export: Export, lo: dt.datetime, hi: dt.datetime, day: int,
                      endpoint: str = WHISPERS_ENDPOINT) -> dict[str, int]:
    """How many active users each arm had before sampling (for the record)."""
    q = f"""
    WITH pop AS (
        SELECT user_id, CASE WHEN f_day <= $day THEN 'treatment' ELSE 'control' END AS variant
        FROM {UNITS_TABLE} WHERE e <= $day
    ),
    active AS (
        SELECT DISTINCT user_id FROM api_logs
        WHERE "timestamp" >= $lo AND "timestamp" < $hi AND endpoint <> $ep AND user_id IS NOT NULL
        UNION
        SELECT DISTINCT user_id FROM telemetry
        WHERE created_at >= $lo AND created_at < $hi AND event_type = 'app_open'
    )
    SELECT count(*) FILTER (WHERE p.variant = 'treatment') AS active_treated,
           count(*) FILTER (WHERE p.variant = 'control') AS active_control
    FROM pop p JOIN active a ON a.user_id = p.user_id
    """
    row = export.sql(q, {"lo": lo, "hi": hi, "day": int(day), "ep": endpoint}).iloc[0]
    return {k: int(v) for k, v in row.items()}
