"""Tiny hand-made exports for contract tests: one valid row set per table, easy to break."""

from __future__ import annotations

import datetime as dt
import re

import pandas as pd

from whispers_lab.stats.sufficient import regression_from_units

T0 = dt.datetime(2026, 12, 1, 10, 0, 0)


def valid_tables() -> dict[str, pd.DataFrame]:
    """A small export that satisfies every contract rule."""
    users = pd.DataFrame({
        "user_id": ["u1", "u2", "u3"],
        "signup_at": [T0 - dt.timedelta(days=100)] * 3,
        "is_internal": [True, False, False],
        "micro_memory_count": pd.array([12, 3, 0], dtype="int32"),
        "engagement_score": [0.9, 0.5, 0.1],
        "country": ["NL", "DE", "FR"],  # extra columns are allowed and ignored
    })
    exposures = pd.DataFrame({
        "user_id": ["u1", "u2", "u2"],
        "exposed_at": [T0, T0, T0 + dt.timedelta(days=8)],
        "variant": ["treatment", "control", "treatment"],
    })
    telemetry = pd.DataFrame({
        "event_id": ["e1", "e2", "e3", "e4"],
        "created_at": [T0, T0 + dt.timedelta(seconds=5), T0 + dt.timedelta(seconds=9), T0],
        "user_id": ["u1", "u1", "u1", "u2"],
        "device_id": ["d1", "d1", "d1", "d2"],
        "event_type": ["app_open", "whispers_shown", "whispers_used", "app_open"],
        "request_id": [None, "r1", "r1", None],
        "whisper_id": [None, "m1", "m1", None],
        "position": pd.array([None, 1, 1, None], dtype="Int32"),
    })
    api_logs = pd.DataFrame({
        "request_id": ["r1", "r2"],
        "timestamp": [T0, T0 + dt.timedelta(minutes=1)],
        "endpoint": ["/api/whispers/context", "/api/recap"],
        "user_id": ["u1", None],
        "device_id": ["d1", None],
        "status": pd.array([200, 500], dtype="int32"),
        "duration_ms": [42.0, 120.5],
        "ranking_ms": [12.0, None],
        "weight_source": ["user", None],
        "weights_version": ["default-2026-11", None],
    })
    candidates = pd.DataFrame({
        "request_id": ["r1", "r1"],
        "memory_id": ["m1", "m2"],
        "context_similarity": [0.8, 0.2],
        "recency_hours": [5.0, 100.0],
        "use_count": pd.array([3, 0], dtype="int32"),
        "last_shown_hours": [None, 48.0],
        "pinned": [False, True],
        "logged_score": [0.7, 0.4],
        "shown_position": pd.array([1, None], dtype="Int32"),
        "propensity": [0.9, None],
    })
    feedback = pd.DataFrame({
        "user_id": ["u1"], "submitted_at": [T0], "rating": pd.array([5], dtype="int32"),
        "relevant": [True],
    })
    tickets = pd.DataFrame({
        "ticket_id": ["t1"], "created_at": [T0], "user_id": [None], "category": ["bug"],
        "priority": ["low"], "about_whispers": [False],
    })
    db_metrics = pd.DataFrame({
        "timestamp": [T0, T0 + dt.timedelta(minutes=1)], "p95_query_ms": [20.0, 21.5],
    })
    flag_changes = pd.DataFrame({  # whispers on for the internal team at day 0, 10% on day 8
        "changed_at": [T0, T0 + dt.timedelta(days=8, hours=9)],
        "flag": ["NEXT_PUBLIC_WHISPERS_ENABLED"] * 2, "value": ["true", "true"],
        "percentage": [None, 10.0], "audience": ["internal", "percentage"],
    })
    return {
        "users": users, "exposures": exposures, "telemetry": telemetry, "api_logs": api_logs,
        "ranking_candidates": candidates, "feedback": feedback, "support_tickets": tickets,
        "db_metrics": db_metrics, "flag_changes": flag_changes,
    }


def cuped_cells(groups) -> pd.DataFrame:
    """{stratum: (y_t, x_t, y_c, x_c)} -> the per-stratum suffixed aggregates the CUPED code reads
    (n, sums, sums of squares and the cross-product, per arm), as the SQL would produce them."""
    rows = []
    for s, (yt, xt, yc, xc) in groups.items():
        row = {"stratum": s}
        for suffix, y, x in (("t", yt, xt), ("c", yc, xc)):
            r = regression_from_units(y, x)
            row |= {f"n_{suffix}": r.n, f"sum_y_{suffix}": r.sum_y, f"sum_y2_{suffix}": r.sum_y2,
                    f"sum_x_{suffix}": r.sum_x, f"sum_x2_{suffix}": r.sum_x2,
                    f"sum_xy_{suffix}": r.sum_xy}
        rows.append(row)
    return pd.DataFrame(rows)


#: A progress line of a long command in a log (``whispers_lab.progress``), not an error line.
PROGRESS_LINE = re.compile(r"^(simulate|report|daily|demo): .* in \d+(\.\d+)? s( \(.*\))?$")


def error_lines(err: str) -> list[str]:
    """The lines of a command's stderr that are not progress lines."""
    return [line for line in err.strip().splitlines() if not PROGRESS_LINE.match(line)]


def assert_same_evaluation(a, b) -> None:
    """Two evaluations of one day decide alike: the decision, every criterion's status, and its
    value (floats up to the last bits: a parallel sum may add in another order)."""
    import pytest

    assert a.decision.decision == b.decision.decision
    assert [(r.id, r.status) for r in a.criteria] == [(r.id, r.status) for r in b.criteria]
    for ra, rb in zip(a.criteria, b.criteria, strict=True):
        if isinstance(ra.value, float) and isinstance(rb.value, float):
            assert ra.value == pytest.approx(rb.value, rel=1e-12, nan_ok=True), ra.id
        else:
            assert ra.value == rb.value, ra.id


def row_days(table, name: str):
    """Each row's UTC day (``datetime64[D]``) of the Arrow ``table``'s time column (the
    contract table ``name``'s)."""
    import pyarrow as pa

    from whispers_lab.contract import CONTRACT

    column = table[CONTRACT[name].time_column].cast(pa.timestamp("us"))
    return column.to_numpy(zero_copy_only=False).astype("datetime64[D]")


def last_day(tables):
    """The last UTC day of an export's API requests (its tables as Arrow tables)."""
    return row_days(tables["api_logs"], "api_logs").max()


def tables_before(tables, last):
    """The export as it stood before the day ``last``: yesterday's file (the candidates of
    the requests kept)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from whispers_lab.contract import CONTRACT

    out = {}
    for name, table in tables.items():
        if CONTRACT[name].time_column:
            out[name] = table.filter(pa.array(row_days(table, name) < last))
        else:
            out[name] = table.filter(pc.is_in(table["request_id"], out["api_logs"]["request_id"]))
    return out


def record_queries(monkeypatch, wanted) -> list[str]:
    """The SQL for which ``wanted(query)`` holds, as run by every connection that
    ``whispers_lab.export.connect`` opens from now on (each connection wrapped, its other
    attributes its own)."""
    from whispers_lab import export as export_module

    seen: list[str] = []
    real = export_module.connect

    class Recorded:
        def __init__(self, con):
            self._con = con

        def __getattr__(self, name):
            return getattr(self._con, name)

        def execute(self, query, *args):
            if wanted(str(query)):
                seen.append(str(query))
            return self._con.execute(query, *args)

    monkeypatch.setattr(export_module, "connect", lambda *a, **k: Recorded(real(*a, **k)))
    return seen
