"""The daily evaluation on Spark (local mode) agrees with DuckDB's, from the same query text.

One SparkSession serves every test of this file (``spark`` fixture, session scope; xdist's
``--dist loadfile`` keeps the file on one worker). Skipped when pyspark or Java is missing,
except on CI (``CI=true``), where the test command installs the ``spark`` extra.

On 3,000 users every Spark query costs about the same whatever it reads (planning, code
generation, a job), so the file keeps the number of queries down: the simulated export ends on
the evaluated day (days after it are never read by that day's evaluation, but every query and
every validation scan would read them), the flat copy is opened and validated once for the file
(``spark_flat``), and the session is set for many small queries (``spark``). Issue 16's budget
for this file is about 3 minutes (docs/scale.md).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from whispers_lab.engine import MASK_DAYS, VARIANTS, to_spark, variant
from whispers_lab.errors import ExportValidationError
from whispers_lab.evaluate import evaluate_day
from whispers_lab.export import open_export, to_parquet_folder, write_export
from whispers_lab.plan import load_plan
from whispers_lab.queries import experiment as qe
from whispers_lab.queries import monitoring as qm
from whispers_lab.queries import state as qs
from whispers_lab.report import privacy

from factories import valid_tables

_CI = os.environ.get("CI", "").lower() == "true"
try:
    import pyspark  # noqa: F401
except ImportError:
    if _CI:
        raise
    pytest.skip("pyspark is not installed (pip install -e '.[spark]')", allow_module_level=True)
if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
    if _CI:
        raise RuntimeError("the Spark tests need Java 17 on CI")
    pytest.skip("no Java for Spark", allow_module_level=True)

from whispers_lab.spark import SparkExport, open_spark_export  # noqa: E402

pytestmark = pytest.mark.spark

DAY = 9
#: The export of this file: as conftest's ``small_sim`` (3,000 users, seed 7), through DAY only.
USERS, SEED = 3000, 7
#: Most rows a query of one daily evaluation may bring to the driver, besides the users
#: frame of the cohort assignment (docs/scale.md): the per-minute series of a day plus the
#: run lookback, or the canary's sampled units of both arms, whichever is larger.
MAX_AGGREGATE_ROWS = 24 * 60 + 60


@pytest.fixture(scope="session")
def spark():
    from whispers_lab.engine import spark_session

    # Tiny data: per-query overhead is all there is. The JIT's first tier only (C1 compiles
    # fast; C2's faster code never pays off within a few seconds' work), one shuffle
    # partition and no adaptive re-planning halve the time of this file; the serial
    # collector spends less CPU than G1's threads on a small heap. The generated-code
    # cache (100 classes by default) holds every class of the file, so that the second
    # layout's evaluation and the validation of each broken export reuse the classes the
    # first compiled instead of compiling them again.
    session = spark_session("local[2]", app_name="whispers-lab-tests", config={
        "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
        "spark.sql.adaptive.enabled": "false", "spark.sql.shuffle.partitions": "1",
        "spark.sql.codegen.cache.maxEntries": "5000",
        # the Spark Connect server of ``connect_url`` (started only when a test needs it)
        "spark.connect.grpc.binding.address": "127.0.0.1",
        "spark.connect.grpc.binding.port": str(_free_port())})
    yield session
    session.stop()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def connect_url(spark):
    """A Spark Connect server in the tests' own JVM (local mode, the same SparkContext): what
    ``SPARK_REMOTE=sc://host:port`` reaches on a cluster, without a second JVM to start."""
    service = spark._jvm.org.apache.spark.sql.connect.service.SparkConnectService
    service.start(spark._jsc.sc())
    port = spark.conf.get("spark.connect.grpc.binding.port")
    yield f"sc://127.0.0.1:{port}"
    from pyspark.sql.connect.session import SparkSession as RemoteSparkSession

    client = RemoteSparkSession.getActiveSession() or RemoteSparkSession._default_session
    if client is not None:  # (else it retries the server at exit)
        client.stop()
    empty = spark._jvm.scala.Option.empty()
    service.stop(empty, empty)


@pytest.fixture(scope="session")
def spark_sim():
    """conftest's ``small_sim`` through DAY only: a third fewer rows to read and validate, and
    the same evaluation of DAY (which reads nothing after it): when this was changed, every
    result and the decision were equal to the 14-day export's, but for one p-value in the
    14th digit."""
    from whispers_lab.simulate import simulate

    return simulate(USERS, SEED, through_day=DAY)


@pytest.fixture(scope="session")
def spark_export(spark_sim, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("spark_sim") / "small.duckdb"
    spark_sim.write(path)
    return path


@pytest.fixture(scope="session")
def flat_parquet(spark_export, tmp_path_factory) -> Path:
    return to_parquet_folder(spark_export, tmp_path_factory.mktemp("spark") / "flat")


@pytest.fixture(scope="session")
def day_parquet(spark_export, tmp_path_factory) -> Path:
    return to_parquet_folder(spark_export, tmp_path_factory.mktemp("spark") / "by_day",
                             partition_by_day=True)


@pytest.fixture(scope="session")
def spark_flat(flat_parquet, spark):
    """The flat Parquet copy opened on Spark (validated), once for the file. In a session of
    its own (``newSession()``: its own temporary views, the same SparkContext), since the views
    of a SparkExport are its session's: the exports other tests open (in ``spark``) beside it
    would replace them. Tests register their own cohorts and temporary tables on it, as
    :func:`evaluate_day` does: each registers what it reads before reading it."""
    export = open_spark_export(flat_parquet, spark=spark.newSession())
    yield export
    export.close()


@pytest.fixture(scope="session")
def duck_eval(spark_export):
    with open_export(spark_export) as export:
        return evaluate_day(export, DAY, load_plan(None))


def _close(a: Any, b: Any, path: str = "") -> list[str]:
    """Differences between two JSON-like values: floats to 1e-9 relative, the rest exact."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}: keys {sorted(set(a) ^ set(b))}"] if set(a) != set(b) else []
        for k in set(a) & set(b):
            out += _close(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{path}: {len(a)} vs {len(b)} items"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _close(x, y, f"{path}[{i}]")]
    if isinstance(a, bool) or isinstance(b, bool) or (isinstance(a, int) and isinstance(b, int)):
        return [] if a == b else [f"{path}: {a!r} vs {b!r}"]
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if math.isnan(a) and math.isnan(b):
            return []
        return [] if math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) else [f"{path}: {a!r} vs {b!r}"]
    return [] if a == b else [f"{path}: {a!r} vs {b!r}"]


def _frames_agree(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a.columns) == list(b.columns)
    assert len(a) == len(b)
    diffs = _close(a.astype(object).where(a.notna(), None).to_dict(orient="records"),
                   b.astype(object).where(b.notna(), None).to_dict(orient="records"))
    assert not diffs, diffs[:10]


# ---------------------------------------------------------------------------------------
# the daily evaluation


def _assert_only_aggregates(results: list[tuple[str, int, float]]) -> None:
    """Of the frames that reached the driver (:attr:`SparkExport.results`), only the cohort
    assignment's users frame (one row per user) is larger than an aggregate may be."""
    users = "SELECT user_id, is_internal"
    largest = max((r for r in results if not r[0].startswith(users)), key=lambda r: r[1])
    assert largest[1] <= MAX_AGGREGATE_ROWS, largest
    counts = [n for head, n, _ in results if head.startswith(users)]
    assert counts and all(n == USERS for n in counts), counts


STAMP = dt.datetime(2026, 1, 2, 3, 4, 5)  # one generation time: two clocks may straddle a second


def _agree_with_duckdb(duck_eval, results: dict[str, dict], decision: dict) -> None:
    """Every criterion's and trigger's result (value, interval, status, details) and the
    decision document equal DuckDB's: floats to 1e-9 relative, the rest exactly."""
    duck = {r.id: r.to_dict() for r in duck_eval.results}
    # an agreement on no_data would prove nothing: every criterion and trigger has a value on
    # this export, but qa_scenarios (no QA results given; it reads no table)
    assert [rid for rid in duck if duck[rid]["value"] is None] == ["qa_scenarios"]
    assert set(duck) == set(results)
    for rid in duck:
        assert results[rid]["status"] == duck[rid]["status"], rid
        diffs = _close(duck[rid], results[rid], rid)
        assert not diffs, diffs
    # the decision document too (sums over day partitions may round in the 15th digit)
    diffs = _close(duck_eval.decision.to_dict(STAMP), decision, "decision")
    assert not diffs, diffs


def test_evaluation_agrees_with_duckdb(spark_flat, duck_eval):
    """The flat Parquet copy on a classic local session (the day-partitioned copy: below,
    through ``daily`` on Spark Connect)."""
    spark_flat.results.clear()
    ev = evaluate_day(spark_flat, DAY, load_plan(None))
    _agree_with_duckdb(duck_eval, {r.id: r.to_dict() for r in ev.results}, ev.decision.to_dict(STAMP))
    _assert_only_aggregates(spark_flat.results)


def test_daily_on_spark_connect_agrees_with_duckdb(connect_url, day_parquet, duck_eval,
                                                   tmp_path, monkeypatch, capsys):
    """``whispers-lab daily --engine spark`` with ``SPARK_REMOTE`` set, end to end (coverage
    check, the report's evaluation, notebook, HTML, decision file) on the lake layout
    (``telemetry/day=2026-12-08/part-0.parquet``): every session it opens is a Spark Connect
    session, the day's decision file equals DuckDB's evaluation, only aggregates reach the
    driver, and nothing it made stays in the server's session afterwards."""
    import json

    from whispers_lab.cli import main
    from whispers_lab.engine import SPARK_CONF_ENV, SPARK_REMOTE_ENV, spark_session

    assert any((day_parquet / "telemetry").glob("day=*/part-0.parquet"))
    exports, out = tmp_path / "exports", tmp_path / "out"
    exports.mkdir()
    (exports / "lake").symlink_to(day_parquet, target_is_directory=True)
    monkeypatch.setenv(SPARK_REMOTE_ENV, connect_url)
    # the settings of this file's session, for the Connect session the run makes (tiny data)
    monkeypatch.setenv(SPARK_CONF_ENV, json.dumps({"spark.sql.adaptive.enabled": "false",
                                                   "spark.sql.shuffle.partitions": "1"}))
    opened: list[SparkExport] = []
    close = SparkExport.close

    def recorded(self: SparkExport) -> None:
        if self not in opened:
            opened.append(self)
        close(self)

    monkeypatch.setattr(SparkExport, "close", recorded)
    today = (load_plan(None).start_date + dt.timedelta(days=DAY + 1)).isoformat()
    code = main(["daily", "--exports", str(exports), "--out", str(out), "--today", today,
                 "--engine", "spark"])
    assert code == 0, capsys.readouterr().err
    doc = json.loads((out / f"day-{DAY:02d}" / "decision.json").read_text(encoding="utf-8"))
    assert (out / f"day-{DAY:02d}" / "report.html").is_file()
    assert opened and {type(e.spark).__module__ for e in opened} == {"pyspark.sql.connect.session"}
    # what only the daily run adds: where its QA results would be, the report's own record
    qa = next(c for c in doc["criteria"] if c["id"] == "qa_scenarios")
    assert qa["status"] == "no_data" and qa["details"]["files"] == []
    for key in ("generated_at", "report", "communications"):
        doc.pop(key)
    ref = json.loads(json.dumps(duck_eval.decision.to_dict(), default=str))
    ref.pop("generated_at")
    for part in (doc, ref):
        part["criteria"] = [c for c in part["criteria"] if c["id"] != "qa_scenarios"]
    diffs = _close(ref, doc, "decision")
    assert not diffs, diffs
    _assert_only_aggregates([r for e in opened for r in e.results])
    # closed: its temporary views (and with them their cached data) are gone
    session = spark_session()
    assert session.catalog.listTables() == []
    assert session.conf.get("spark.sql.shuffle.partitions") == "1"  # $WHISPERS_LAB_SPARK_CONF


def test_spark_settings_from_the_environment(monkeypatch):
    from whispers_lab.engine import SPARK_CONF_ENV, EngineError, spark_conf_from_env

    monkeypatch.delenv(SPARK_CONF_ENV, raising=False)
    assert spark_conf_from_env() == {}
    monkeypatch.setenv(SPARK_CONF_ENV, '{"spark.executor.memory": "8g", "spark.executor.cores": 4}')
    assert spark_conf_from_env() == {"spark.executor.memory": "8g", "spark.executor.cores": "4"}
    for bad in ("spark.executor.memory=8g", '["spark.executor.memory"]'):
        monkeypatch.setenv(SPARK_CONF_ENV, bad)
        with pytest.raises(EngineError, match=r"WHISPERS_LAB_SPARK_CONF.*spark\.executor\.memory"):
            spark_conf_from_env()


# ---------------------------------------------------------------------------------------
# every engine-specific variant against DuckDB's


@pytest.fixture
def both(spark_export, spark_flat):
    duck = open_export(spark_export)
    yield duck, spark_flat
    duck.close()


def test_every_variant_names_both_engines():
    assert all(set(v) == {"duckdb", "spark"} for v in VARIANTS.values())
    assert MASK_DAYS["spark"] < 63 < MASK_DAYS["duckdb"]
    assert variant("spark", "hash64", cols="a") == "xxhash64(a)"


def test_activity_masks_agree(both):
    """HUGEINT (DuckDB) and BIGINT (Spark) masks: the same randomised users, stage units,
    cells, pre-period lags and first-exposure cells."""
    plan = load_plan(None)
    out = []
    for export in both:
        users = qe.users_for_assignment(export)
        from whispers_lab import cohort

        qe.register_cohort(export, cohort.assign(users, DAY, plan))
        hi = plan.day_start(DAY + 1)
        n = qe.materialize_randomised(export, plan.start_date, hi, -14)
        rows = qe.materialize_stage_units(export, [3, 5, 7], -14, 7, [1, 7], DAY)
        out.append((n, rows, qe.stage_cells(export, [1, 7], DAY),
                    qe.preperiod_lags(export, -14, [1, 7]),
                    qe.first_exposure_cells(export, plan.start_date, plan.day_start(0), hi, -14,
                                            [1, 7], DAY),
                    qe.ticket_days(export, plan.start_date, 3, DAY)))
    (n1, r1, *f1), (n2, r2, *f2) = out
    assert (n1, r1) == (n2, r2) and n1 > 1000 and r1 > 0
    for a, b in zip(f1, f2, strict=True):
        _frames_agree(a, b)


def test_mask_span_is_checked_per_engine(both):
    plan = load_plan(None)
    duck, sp = both
    hi = plan.day_start(DAY + 1)
    base = DAY + 1 - MASK_DAYS["spark"] - 1  # one day more than Spark's mask holds
    with pytest.raises(Exception, match="at most 62 days on spark"):
        qe.materialize_randomised(sp, plan.start_date, hi, base)
    from whispers_lab import cohort

    qe.register_cohort(duck, cohort.assign(qe.users_for_assignment(duck), DAY, plan))
    assert qe.materialize_randomised(duck, plan.start_date, hi, base) > 0


def test_as_of_join_arg_min_quantiles_and_series_agree(both):
    """The as-of join (served vs planned), arg_min (SRM counts), quantile_cont (a list of
    probabilities), unnest(generate_series(...)) (hourly series) and QUALIFY (ticket ids)."""
    plan = load_plan(None)
    start, end = plan.day_start(DAY), plan.day_start(DAY + 1)
    results = []
    for export in both:
        users = qe.users_for_assignment(export)
        from whispers_lab import cohort

        bucket, category, _ = cohort.categories(users, plan)
        qs.register_assignment(export, users["user_id"],
                               [cohort.CATEGORY_NAMES[int(c)] for c in category], bucket)
        from whispers_lab.state import resolve_state

        state = resolve_state(export, plan, DAY, None)
        qs.register_intervals(export, state.intervals(DAY))
        qe.register_cohort(export, cohort.assign(users, DAY, plan))
        results.append([
            qs.served_vs_planned(export, plan.start_date, plan.day_start(0), end),
            qe.srm_counts(export, plan.start_date, plan.day_start(0), end),
            pd.DataFrame({"q": qm.api_quantiles(export, start, end, [0.05, 0.5, 0.95])}),
            qm.hourly_telemetry(export, start, end),
            pd.DataFrame([qm.cue_cooldown(export, start, end, cooldown_minutes=30)]),
            pd.DataFrame([qm.ticket_counts(export, plan.day_start(0), end)]),
        ])
    for a, b in zip(*results, strict=True):
        _frames_agree(a, b)
    assert results[0][0]["users"].sum() > 0


def test_repeated_events_are_found_alike(spark_sim, spark, tmp_path):
    """The 64-bit hash partitions of the duplicate-event search (DuckDB hash, Spark xxhash64)."""
    tables = {name: spark_sim.tables[name] for name in spark_sim.tables}
    tel = tables["telemetry"]
    tel = tel if isinstance(tel, pa.Table) else pa.Table.from_pandas(tel, preserve_index=False)
    take = tel.slice(0, 200)
    copies = take.set_column(take.schema.get_field_index("event_id"), "event_id",
                             pa.array([f"dup-{i}" for i in range(take.num_rows)]))
    tables["telemetry"] = pa.concat_tables([tel, copies.cast(tel.schema)])
    folder = write_export(tables, tmp_path / "repeats", parquet=True)
    with open_export(folder, use_cache=False) as duck:
        expected = duck.duplicate_events
        duck_rows = duck.row_count("telemetry")
    with open_spark_export(folder, spark=spark) as sp:
        assert sp.duplicate_events == expected
        assert sp.row_count("telemetry") == duck_rows
        notes = [n.rule for n in sp.validation.notices]
    assert expected >= 200 and "duplicate_events" in notes


def test_validation_summary_agrees(both):
    duck, sp = both
    a, b = duck.validation, sp.validation
    assert a.tables.keys() == b.tables.keys()
    for name in a.tables:
        assert (a.tables[name].rows, a.tables[name].first, a.tables[name].last) == (
            b.tables[name].rows, b.tables[name].first, b.tables[name].last), name
    assert [str(n) for n in a.notices] == [str(n) for n in b.notices]


# ---------------------------------------------------------------------------------------
# the broken-export corpus: the same problems on both engines

BROKEN: dict[str, Any] = {
    "missing_table": lambda t: t.pop("exposures"),
    "missing_column_and_type": lambda t: (t.__setitem__("users", t["users"].drop(
        columns=["engagement_score"])), t["api_logs"].__setitem__(
        "status", t["api_logs"]["status"].astype(str))),
    "domain": lambda t: t["users"].__setitem__("engagement_score", [0.9, 1.5, 0.1]),
    "not_null": lambda t: t["users"].__setitem__(
        "signup_at", [None, dt.datetime(2026, 1, 1), dt.datetime(2026, 1, 2)]),
    "allowed": lambda t: t["exposures"].__setitem__("variant", ["treatment", "contrl", "treatment"]),
    "infinite": lambda t: t["api_logs"].__setitem__("duration_ms", [float("inf"), 3.0]),
    "row_rule": lambda t: t["telemetry"].__setitem__(
        "position", pd.array([None, None, 1, None], dtype="Int32")),
    "duplicate_key": lambda t: t.__setitem__(
        "telemetry", pd.concat([t["telemetry"], t["telemetry"].iloc[[0]]], ignore_index=True)),
}


def _problems(open_fn) -> list[tuple[str, str | None, str, int | None]]:
    try:
        export = open_fn()
    except ExportValidationError as exc:
        return sorted((p.table, p.column, p.rule, p.rows) for p in exc.problems)
    export.close()
    return []


def test_valid_tiny_export_has_no_problems(tmp_path, spark):
    folder = write_export(valid_tables(), tmp_path / "valid", parquet=True)
    assert _problems(lambda: open_spark_export(folder, spark=spark)) == []


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_export_same_problems(case, tmp_path, spark):
    tables = valid_tables()
    BROKEN[case](tables)
    duck_file = write_export(tables, tmp_path / "broken.duckdb")
    expected = _problems(lambda: open_export(duck_file, use_cache=False))
    assert expected, case
    if case in ("missing_column_and_type", "not_null"):
        # the DuckDB file itself (copied to Parquet on the way; its types stay as stored)
        assert _problems(lambda: open_spark_export(duck_file, spark=spark)) == expected
    folder = write_export(tables, tmp_path / "broken", parquet=True)
    assert _problems(lambda: open_spark_export(folder, spark=spark)) == expected


# ---------------------------------------------------------------------------------------
# the pieces


def test_parameters_become_typed_literals():
    text = to_spark("SELECT * FROM t WHERE ts >= $lo AND d = $x AND p IN $ps AND s = $s",
                    {"lo": dt.datetime(2026, 12, 8, 1, 2, 3), "x": 0.5, "ps": [1, 2],
                     "s": "it's"})
    assert "CAST('2026-12-08 01:02:03' AS TIMESTAMP)" in text
    assert "CAST(0.5 AS DOUBLE)" in text and "ARRAY(1, 2)" in text and "'it\\'s'" in text
    with pytest.raises(Exception, match=r"\$hi has no value"):
        to_spark("SELECT * FROM t WHERE ts < $hi", {})


def test_day_partitioned_copy_is_read_by_duckdb_too(day_parquet, spark_export):
    """The lake layout (``<table>/day=YYYY-MM-DD/part-0.parquet``) is an export for both engines."""
    files = sorted((day_parquet / "telemetry").glob("day=*/part-0.parquet"))
    assert len(files) > 14
    assert pq.read_metadata(files[0]).num_rows > 0
    with open_export(day_parquet, use_cache=False) as a, open_export(spark_export) as b:
        for table in ("telemetry", "api_logs", "users"):
            assert a.row_count(table) == b.row_count(table)


def test_spark_export_is_an_export(spark_flat):
    export = spark_flat
    assert isinstance(export, SparkExport) and export.engine == "spark"
    assert export.has("telemetry") and export.time_range("users")[0] is not None
    cols = export.sql("SELECT * FROM users LIMIT 0").columns.tolist()
    assert cols == ["user_id", "signup_at", "is_internal", "micro_memory_count",
                    "engagement_score"]


def test_a_duckdb_file_is_copied_to_parquet_once(spark_export, spark, tmp_path, monkeypatch):
    """``--engine spark`` on a DuckDB file: one Parquet copy per version of the file, kept in
    the cache folder, so that the several openings of one daily run copy it once."""
    monkeypatch.setenv("WHISPERS_LAB_CACHE", str(tmp_path / "cache"))
    export_file = tmp_path / "export.duckdb"
    shutil.copy(spark_export, export_file)
    with open_spark_export(export_file, spark=spark, validate=False) as export:
        first = export.parquet_dir
        assert export.kind == "duckdb" and export.row_count("users") == USERS
    with open_spark_export(export_file, spark=spark, validate=False) as export:
        assert export.parquet_dir == first and first.is_dir()
    export_file.touch()  # a new version of the file: a new copy, the old one removed
    with open_spark_export(export_file, spark=spark, validate=False) as export:
        assert export.parquet_dir != first and not first.exists()


# ---------------------------------------------------------------------------------------
# the command line


def test_validate_command_on_spark(spark, day_parquet, capsys):
    from whispers_lab.cli import main

    assert main(["validate", "--engine", "spark", str(day_parquet)]) == 0
    out = capsys.readouterr().out
    assert "checked on spark) is valid" in out and "telemetry" in out


def test_validate_command_reports_problems_on_spark(spark, tmp_path, capsys):
    from whispers_lab.cli import main

    tables = valid_tables()
    tables["users"]["engagement_score"] = [2.0, 2.0, 2.0]
    folder = write_export(tables, tmp_path / "bad", parquet=True)
    assert main(["validate", "--engine", "spark", str(folder)]) == 1
    err = capsys.readouterr().err
    assert "table 'users', column 'engagement_score'" in err and "3 row(s)" in err


def test_engine_option_reaches_the_report_kernel_and_is_restored(monkeypatch):
    """``--engine`` travels in the environment (the papermill kernel inherits it), only for
    the run."""
    import argparse

    from whispers_lab.commands.options import engine_environment
    from whispers_lab.engine import ENGINE_ENV, SPARK_MASTER_ENV, default_engine

    monkeypatch.delenv(ENGINE_ENV, raising=False)
    monkeypatch.delenv(SPARK_MASTER_ENV, raising=False)
    args = argparse.Namespace(engine="spark", spark_master="spark://example:7077")
    with engine_environment(args):
        assert default_engine() == "spark"
        assert os.environ[SPARK_MASTER_ENV] == "spark://example:7077"
    assert default_engine() == "duckdb" and SPARK_MASTER_ENV not in os.environ
    # no --spark-master: a master set in the job's environment (cron) stands
    monkeypatch.setenv(SPARK_MASTER_ENV, "spark://cluster:7077")
    with engine_environment(argparse.Namespace(engine="spark", spark_master=None)):
        assert os.environ[SPARK_MASTER_ENV] == "spark://cluster:7077"
    assert os.environ[SPARK_MASTER_ENV] == "spark://cluster:7077"
    monkeypatch.setenv(ENGINE_ENV, "flink")
    with pytest.raises(Exception, match="unknown engine"):
        default_engine()


def test_the_privacy_scan_finds_the_same_ids(both):
    """The ids a page would leak, found on both engines (the tokens reach the scan as a list
    parameter: DuckDB list_contains, Spark array_contains), quotes and backslashes included."""
    duck, sp = both
    user = str(duck.sql("SELECT min(user_id) AS u FROM users")["u"].iloc[0])
    request = str(duck.sql("SELECT max(request_id) AS r FROM api_logs")["r"].iloc[0])
    texts = {"page.html": f"<td>{user}</td> it's a \\ {request}; day-14 {user}x",
             "clean.json": '{"n": 1066645, "note": "nothing to see"}'}
    found = privacy.find_ids(duck, texts)
    assert found == privacy.find_ids(sp, texts)
    assert {(leak.file, leak.column) for leak in found} >= {("page.html", "user_id"),
                                                            ("page.html", "request_id")}
    assert not any(leak.file == "clean.json" for leak in found)


# ---------------------------------------------------------------------------------------
# incremental validation


def test_validation_on_spark_rechecks_only_changed_files(spark, day_parquet, tmp_path):
    """Spark keeps the same manifest as DuckDB: an unchanged file is not read again, a changed
    one is, a problem in it is caught, and so is a key it repeats from an unchanged file."""
    from whispers_lab import validation
    from whispers_lab.export import duplicate_events_cache_file

    folder = tmp_path / "lake"
    shutil.copytree(day_parquet, folder)
    units = sum(len(validation.list_units(folder, "parquet", t.name)) for t in validation.TABLES)
    with open_spark_export(folder, spark=spark) as sp:
        first = sp.validation
        dups = sp.duplicate_events
    assert (first.units_checked, first.units_reused) == (units, 0)
    assert duplicate_events_cache_file(folder, "parquet").is_file()
    with open_spark_export(folder, spark=spark) as sp:
        again = sp.validation
        assert sp.duplicate_events == dups  # read back from the cache folder
    assert (again.units_checked, again.units_reused) == (0, units)
    assert again.tables == first.tables and again.notices == first.notices
    # the repeated events' times too, as DuckDB keeps them (its extent needs them)
    assert pq.read_schema(duplicate_events_cache_file(folder, "parquet")).names == [
        "event_id", "ts"]
    with open_export(folder) as duck:  # DuckDB reads the manifest Spark wrote, and agrees
        assert (duck.validation.units_checked, duck.validation.tables) == (0, first.tables)
        assert duck.duplicate_events == dups

    days = sorted(p.name for p in (folder / "api_logs").iterdir())
    api_file = next((folder / "api_logs" / days[5]).glob("*.parquet"))
    table = pq.read_table(api_file, partitioning=None)
    broken = table.set_column(table.schema.get_field_index("status"), "status",
                              pa.array([999] * table.num_rows, pa.int32()))
    pq.write_table(broken, api_file)
    tel_days = sorted(p.name for p in (folder / "telemetry").iterdir())
    early = pq.read_table(next((folder / "telemetry" / tel_days[2]).glob("*.parquet")),
                          partitioning=None)
    late_file = next((folder / "telemetry" / tel_days[6]).glob("*.parquet"))
    late = pq.read_table(late_file, partitioning=None)
    reuse = late.slice(0, 1).set_column(late.schema.get_field_index("event_id"), "event_id",
                                        early["event_id"].slice(0, 1))
    pq.write_table(pa.concat_tables([late, reuse.cast(late.schema)]), late_file)
    with pytest.raises(ExportValidationError) as info:
        open_spark_export(folder, spark=spark)
    assert sorted((p.table, p.column, p.rule, p.rows) for p in info.value.problems) == [
        ("api_logs", "status", "domain", table.num_rows), ("telemetry", "event_id", "unique", 2)]

    pq.write_table(table, api_file)  # repaired: only the two rewritten files are read again
    pq.write_table(late, late_file)
    with open_spark_export(folder, spark=spark) as sp:
        assert (sp.validation.units_checked, sp.validation.units_reused) == (2, units - 2)
        assert sp.validation.tables == first.tables
