"""Validation speed on a large synthetic export (default: 10 million telemetry rows).

    .venv/bin/python benchmarks/bench_validate.py [--rows 10000000] [--parquet]

Generates a contract-valid export with DuckDB's range() (cached in benchmarks/cache/), then times
``open_export`` (attach + every contract check + canonical views) and prints rows per second and
peak memory of this process.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

from whispers_lab.export import connect, open_export, sql_string

CACHE = Path(__file__).resolve().parent / "cache"


def build(path: Path, rows: int, parquet: bool) -> None:
    users = max(rows // 100, 10)
    requests = rows // 10
    con = connect()
    q = {
        "users": f"""SELECT 'u' || i AS user_id, TIMESTAMP '2026-01-01' + to_seconds(i % 1000000) AS signup_at,
                  i % 200 = 0 AS is_internal, CAST(i % 40 AS INTEGER) AS micro_memory_count,
                  (i % 1000) / 1000.0 AS engagement_score FROM range({users}) t(i)""",
        "exposures": f"""SELECT 'u' || i AS user_id, TIMESTAMP '2026-12-01' + to_seconds(i % 86400) AS exposed_at,
                  CASE WHEN i % 10 = 0 THEN 'treatment' ELSE 'control' END AS variant FROM range({users}) t(i)""",
        "telemetry": f"""SELECT 'e' || i AS event_id, TIMESTAMP '2026-11-17' + to_seconds(i % 2500000) AS created_at,
                  'u' || (i % {users}) AS user_id, 'd' || (i % {users}) AS device_id,
                  CASE WHEN i % 4 = 0 THEN 'app_open' WHEN i % 4 = 1 THEN 'whispers_shown'
                       WHEN i % 4 = 2 THEN 'whispers_used' ELSE 'maya_cue_fired' END AS event_type,
                  CASE WHEN i % 4 IN (1, 2) THEN 'r' || (i // 4) END AS request_id,
                  CASE WHEN i % 4 IN (1, 2) THEN 'm' || (i % 20) END AS whisper_id,
                  CASE WHEN i % 4 IN (1, 2) THEN CAST(1 + i % 6 AS INTEGER) END AS position
                  FROM range({rows}) t(i)""",
        "api_logs": f"""SELECT 'r' || i AS request_id, TIMESTAMP '2026-11-17' + to_seconds(i % 2500000) AS timestamp,
                  '/api/whispers/context' AS endpoint, 'u' || (i % {users}) AS user_id, 'd1' AS device_id,
                  CAST(CASE WHEN i % 200 = 0 THEN 500 ELSE 200 END AS INTEGER) AS status,
                  20.0 + (i % 100) AS duration_ms, 5.0 + (i % 50) AS ranking_ms,
                  CASE WHEN i % 100 = 0 THEN 'fallback' ELSE 'user' END AS weight_source,
                  'v1' AS weights_version FROM range({requests}) t(i)""",
        "ranking_candidates": f"""SELECT 'r' || (i // 20) AS request_id, 'm' || (i % 20) AS memory_id,
                  (i % 997) / 997.0 AS context_similarity, (i % 500) * 1.0 AS recency_hours,
                  CAST(i % 30 AS INTEGER) AS use_count, CASE WHEN i % 3 = 0 THEN NULL ELSE (i % 90) * 1.0 END AS last_shown_hours,
                  i % 50 = 0 AS pinned, (i % 1000) / 1000.0 AS logged_score,
                  CASE WHEN i % 20 < 6 THEN CAST(1 + i % 20 AS INTEGER) END AS shown_position,
                  CASE WHEN i % 20 < 6 THEN 0.9 END AS propensity FROM range({rows}) t(i)""",
    }
    if parquet:
        path.mkdir(parents=True, exist_ok=True)
        for name, sql in q.items():
            con.execute(f"COPY ({sql}) TO {sql_string(str(path / (name + '.parquet')))} (FORMAT parquet)")
    else:
        con.execute(f"ATTACH {sql_string(str(path))} AS out")
        for name, sql in q.items():
            con.execute(f"CREATE TABLE out.{name} AS {sql}")
        con.execute("DETACH out")
    con.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000, help="telemetry and candidate rows")
    ap.add_argument("--parquet", action="store_true", help="a Parquet folder instead of a DuckDB file")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"validate-{args.rows}{'' if args.parquet else '.duckdb'}"
    if not path.exists():
        t = time.perf_counter()
        build(path, args.rows, args.parquet)
        print(f"built {path.name} in {time.perf_counter() - t:.1f} s")
    times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        with open_export(path) as export:
            total = sum(export.row_count(n) for n in export.present)
        times.append(time.perf_counter() - t)
    best = min(times)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"validation of {total:,} rows ({'parquet' if args.parquet else 'duckdb'}): best {best:.2f} s "
          f"of {args.repeat} ({total / best / 1e6:.1f} M rows/s), peak RSS {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
