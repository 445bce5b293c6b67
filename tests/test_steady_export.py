"""benchmarks/steady_export.py (issue 18): the independent steady-user-base export is
contract-valid and has the shape it promises."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from whispers_lab import cohort
from whispers_lab.export import open_export
from whispers_lab.plan import load_plan

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "steady_export.py"
USERS = 3000


def _load():
    spec = importlib.util.spec_from_file_location("steady_export", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("steady_export", module)
    spec.loader.exec_module(module)
    return module


def test_steady_export_is_valid_and_steady(tmp_path):
    steady = _load()
    path = tmp_path / "steady.duckdb"
    rows = steady.generate(path, users=USERS, seed=5)
    assert path.exists() and not list(tmp_path.glob(".steady.duckdb.tmp-*"))

    # about 0.3 x 1.5 opens per user-day over 29 days, 2.5 x 6 shown per treated open, ...
    expected = {
        "users": (USERS, USERS), "exposures": (3000, 5500), "telemetry": (70_000, 140_000),
        "api_logs": (75_000, 140_000), "ranking_candidates": (60_000, 120_000),
        "feedback": (60, 260), "support_tickets": (70, 200), "db_metrics": (41_760, 41_760),
        "flag_changes": (9, 9),
    }
    for name, (lo, hi) in expected.items():
        assert lo <= rows[name] <= hi, (name, rows[name])

    plan = load_plan()
    with open_export(path) as export:   # validates on open (raises on any contract problem)
        counts = {name: int(export.scalar(f"SELECT count(*) FROM {name}")) for name in rows}
        assert counts == rows

        shape = export.sql("""
            WITH s AS (
                SELECT request_id, count(*) AS shown, count(DISTINCT position) AS positions
                FROM telemetry WHERE event_type = 'whispers_shown' GROUP BY request_id
            ), c AS (
                SELECT request_id, count(*) AS n, count(shown_position) AS shown
                FROM ranking_candidates GROUP BY request_id
            )
            SELECT (SELECT avg(shown) FROM s) AS shown_per_request,
                   (SELECT min(positions) FROM s) AS min_positions,
                   (SELECT avg(n) FROM c) AS candidates_per_request,
                   (SELECT min(shown) FROM c) AS min_shown_candidates,
                   (SELECT count(*) FROM api_logs a WHERE endpoint = '/api/whispers/context'
                        AND status < 400 AND request_id NOT IN (SELECT request_id FROM c))
                       AS unranked_ok_requests,
                   (SELECT count(*) FILTER (WHERE event_type = 'whispers_used')::DOUBLE
                         / count(*) FILTER (WHERE event_type = 'whispers_shown')
                    FROM telemetry) AS ctr
        """).iloc[0]
        assert shape["shown_per_request"] == 6.0
        assert shape["min_positions"] == 6
        assert shape["candidates_per_request"] == 10.0
        assert shape["min_shown_candidates"] == 6
        assert shape["unranked_ok_requests"] == 0
        assert 0.17 < shape["ctr"] < 0.25

        # whispers requests only from users the calendar enables that day, 2.5 per treated open
        users = export.sql("SELECT user_id, is_internal, micro_memory_count, engagement_score "
                           "FROM users")
        users["f_day"] = cohort.first_enabled_day(users, plan)
        export.register("steady_cohort", users[["user_id", "f_day"]])
        start = plan.start_date.isoformat()
        per = export.sql(f"""
            WITH o AS (
                SELECT t.user_id, date_diff('day', DATE '{start}', CAST(created_at AS DATE)) AS d
                FROM telemetry t WHERE event_type = 'app_open'
            ), r AS (
                SELECT a.user_id, date_diff('day', DATE '{start}', CAST("timestamp" AS DATE)) AS d
                FROM api_logs a WHERE endpoint = '/api/whispers/context'
            )
            SELECT (SELECT count(*) FROM o JOIN steady_cohort c USING (user_id)
                    WHERE o.d >= c.f_day) AS treated_opens,
                   (SELECT count(*) FROM r JOIN steady_cohort c USING (user_id)
                    WHERE r.d >= c.f_day) AS treated_requests,
                   (SELECT count(*) FROM r JOIN steady_cohort c USING (user_id)
                    WHERE r.d < c.f_day) AS control_requests,
                   (SELECT count(*) FROM o) AS opens
        """).iloc[0]
        assert per["control_requests"] == 0
        assert per["treated_opens"] > 2000
        assert 2.35 < per["treated_requests"] / per["treated_opens"] < 2.65
        # steady activity: ~0.3 active days per user-day, 1.5 opens per active day
        assert 0.35 < per["opens"] / (USERS * 29) < 0.55

        # exposures: one per exposed user plus at most one switch, to treatment only
        ex = export.sql("""
            SELECT max(n) AS most, count(*) FILTER (WHERE n = 2 AND second <> 'treatment') AS bad
            FROM (SELECT user_id, count(*) AS n,
                         max_by(variant, exposed_at) AS second FROM exposures GROUP BY user_id)
        """).iloc[0]
        assert ex["most"] <= 2 and ex["bad"] == 0
