"""Where the SQL runs: DuckDB in process (the default) or Spark SQL through pyspark.

Every query of the lab is written once, in DuckDB's dialect with ``$name`` parameters
(:mod:`whispers_lab.queries`, :mod:`whispers_lab.validation`). An opened export knows its engine
(``export.engine``: ``"duckdb"`` or ``"spark"``); DuckDB runs the text as it is, Spark runs
:func:`to_spark` of it: SQLGlot parses the DuckDB text, the parameters become typed literals, a
few rewrites make the Spark spelling mean exactly what DuckDB computes, and SQLGlot writes Spark
SQL. This module is the **one place** where the engines differ:

* :func:`to_spark`, the rewrites that hold for every query (``quantile_cont`` to Spark's exact
  ``percentile``, ``epoch_us`` to ``unix_micros``, ``isinf``, decimal literals as DOUBLE so that an
  average stays a double, ``row_number() OVER ()`` to ``monotonically_increasing_id()``, tables
  of the attached schema ``src`` to views ``src__<table>``);
* :data:`VARIANTS`, the constructs that have no faithful transpilation and get an
  engine-specific text (the activity masks' integer type, the as-of join, a 64-bit hash, the
  per-day histogram of validation), chosen by :func:`variant`;
* :func:`spark_session`: the session ``--engine spark`` uses (``local[*]``, a cluster through
  ``--spark-master URL``, or Spark Connect through ``SPARK_REMOTE``).

``tests/test_spark.py`` runs both variants of every construct and the whole daily evaluation on
both engines and checks that they agree (docs/scale.md).
"""

from __future__ import annotations

import datetime as dt
import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .errors import WhispersLabError

if TYPE_CHECKING:
    from sqlglot import exp

ENGINES: tuple[str, ...] = ("duckdb", "spark")
ENGINE_ENV = "WHISPERS_LAB_ENGINE"
SPARK_MASTER_ENV = "WHISPERS_LAB_SPARK_MASTER"
SPARK_REMOTE_ENV = "SPARK_REMOTE"
#: More Spark settings for the session, as a JSON object of strings (executor memory on a
#: cluster, say): ``{"spark.executor.memory": "8g"}``. Given settings win over it.
SPARK_CONF_ENV = "WHISPERS_LAB_SPARK_CONF"
#: Shuffle partitions of the Spark session: the evaluation's aggregates are small, so a few
#: partitions beat Spark's default of 200 (each an empty task on a small export).
SPARK_SHUFFLE_PARTITIONS = 4


class EngineError(WhispersLabError):
    """A query failed on the engine (the message names the query's first line and the cause)."""


def engine_of(obj: Any) -> str:
    """The engine of an opened export or connection (``duckdb`` unless it says otherwise), or
    ``obj`` itself when it is an engine's name."""
    return obj if isinstance(obj, str) else str(getattr(obj, "engine", "duckdb"))


def default_engine() -> str:
    """``$WHISPERS_LAB_ENGINE`` (set by ``--engine``, inherited by the report's kernel), else duckdb."""
    name = os.environ.get(ENGINE_ENV, "").strip().lower() or "duckdb"
    if name not in ENGINES:
        raise EngineError(f"{ENGINE_ENV}={name!r}: unknown engine (known: {', '.join(ENGINES)})")
    return name


# ---------------------------------------------------------------------------------------
# engine-specific variants: every construct without a faithful transpilation, in one table

#: name -> engine -> SQL text (DuckDB dialect; ``{...}`` filled by :func:`variant`).
VARIANTS: dict[str, dict[str, str]] = {
    # The activity masks of whispers_lab.queries.experiment: one integer per user whose bits are
    # the active days. DuckDB has 128-bit integers; Spark's widest integer is 64-bit signed,
    # so its masks hold 62 days (the sign bit and one spare stay clear: shifts stay positive).
    # The widest type: a span that fits in 62 bits gets BIGINT on DuckDB too (faster), see
    # whispers_lab.queries.experiment.mask_type_for.
    "mask_type": {"duckdb": "HUGEINT", "spark": "BIGINT"},
    # A 64-bit hash of some columns (duplicate-event partitions, distinct-key counts):
    # DuckDB's hash() is 64-bit, Spark's hash() is 32-bit murmur3, its xxhash64() 64-bit.
    "hash64": {"duckdb": "hash({cols})", "spark": "xxhash64({cols})"},
    # The variant a user was last served at or before ``ud.last_t``: DuckDB's as-of join;
    # Spark has none, so the latest exposure at or before it by max_by over a join on the
    # user (exposures are unique on (user_id, exposed_at), so neither has ties to break).
    # ``{exposures}``: the relation holding the exposure rows (the table or the report's copy).
    "last_served": {
        # (the exposures of ud's users only: the as-of join sorts its right side, and ud is
        # usually a few users, when not none)
        "duckdb": """lx AS (
        SELECT ud.*, x.variant AS last_variant
        FROM ud ASOF LEFT JOIN (SELECT user_id, exposed_at, variant FROM {exposures}
                                WHERE user_id IN (SELECT user_id FROM ud)) x
          ON ud.user_id = x.user_id AND ud.last_t >= x.exposed_at
    )""",
        "spark": """lv AS (
        SELECT ud.day, ud.user_id, max_by(x.variant, x.exposed_at) AS last_variant
        FROM ud JOIN {exposures} x ON ud.user_id = x.user_id AND x.exposed_at <= ud.last_t
        GROUP BY ud.day, ud.user_id
    ),
    lx AS (
        SELECT ud.*, lv.last_variant
        FROM ud LEFT JOIN lv ON lv.day = ud.day AND lv.user_id = ud.user_id
    )"""},
    # Rows per UTC day inside validation's one scan: DuckDB's histogram() aggregate (a MAP);
    # Spark has none, so the scan leaves it NULL and one GROUP BY per table counts the days.
    "day_histogram": {"duckdb": "histogram(CAST({t} AS DATE))", "spark": "NULL"},
}

#: Widest span of days one activity mask holds, per engine (see ``VARIANTS["mask_type"]``).
MASK_DAYS: dict[str, int] = {"duckdb": 126, "spark": 62}


def variant(obj: Any, name: str, **fields: str) -> str:
    """The engine-specific SQL text ``name`` for the engine of ``obj`` (an export or a
    connection, or an engine name), with ``fields`` filled in."""
    engine = engine_of(obj)
    try:
        text = VARIANTS[name][engine]
    except KeyError:
        raise EngineError(f"no SQL variant {name!r} for engine {engine!r}") from None
    return text.format(**fields) if fields else text


def mask_days(obj: Any) -> int:
    """Widest span of days an activity mask holds on the engine of ``obj``."""
    return MASK_DAYS[engine_of(obj)]


# ---------------------------------------------------------------------------------------
# DuckDB text -> Spark SQL


# SQLGlot is imported by the functions below, when a query is first translated for Spark: a
# DuckDB run never needs it, and every process of a report run (the command, its kernel)
# imported it at start-up for nothing (0.05-0.08 s each).


def _literal(value: Any, name: str) -> exp.Expression:
    """A parameter value as a typed SQL literal (never text pasted into SQL)."""
    from sqlglot import exp

    if value is None:
        return exp.null()
    if isinstance(value, bool):
        return exp.true() if value else exp.false()
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return exp.cast(exp.Literal.string(value.isoformat(sep=" ")), exp.DataType.build("TIMESTAMP"))
    if isinstance(value, dt.date):
        return exp.cast(exp.Literal.string(value.isoformat()), exp.DataType.build("DATE"))
    if isinstance(value, int) or (hasattr(value, "dtype") and getattr(value.dtype, "kind", "") in "iu"):
        return exp.Literal.number(int(value))
    if isinstance(value, float) or (hasattr(value, "dtype") and getattr(value.dtype, "kind", "") == "f"):
        f = float(value)
        text = "NaN" if math.isnan(f) else ("Infinity" if f > 0 else "-Infinity") if math.isinf(f) else repr(f)
        source = exp.Literal.string(text) if not math.isfinite(f) else exp.Literal.number(text)
        return exp.cast(source, exp.DataType.build("DOUBLE"))
    if isinstance(value, str):
        return exp.Literal.string(value)
    if isinstance(value, Sequence):
        return exp.Array(expressions=[_literal(v, name) for v in value])
    raise EngineError(f"query parameter ${name}: cannot pass a {type(value).__name__} to Spark")


def _bind(node: exp.Expression, params: Mapping[str, Any]) -> exp.Expression:
    from sqlglot import exp

    if isinstance(node, exp.Placeholder):
        key = str(node.this)
        if key not in params:
            raise EngineError(f"query parameter ${key} has no value")
        return _literal(params[key], key)
    return node


def _rewrite(node: exp.Expression) -> exp.Expression:
    from sqlglot import exp

    if isinstance(node, exp.PercentileCont) and not isinstance(node.parent, exp.WithinGroup):
        # DuckDB's quantile_cont interpolates linearly between order statistics, as Spark's
        # exact percentile() does (a list of probabilities gives an array in both)
        return exp.Anonymous(this="PERCENTILE", expressions=[node.this, node.expression])
    if isinstance(node, exp.Anonymous) and str(node.this).upper() == "EPOCH_US":
        return exp.Anonymous(this="UNIX_MICROS", expressions=[
            exp.cast(node.expressions[0], exp.DataType.build("TIMESTAMPLTZ"))])
    if isinstance(node, exp.IsInf):
        x = node.this
        return exp.paren(exp.or_(
            exp.EQ(this=x.copy(), expression=_literal(math.inf, "inf")),
            exp.EQ(this=x.copy(), expression=_literal(-math.inf, "-inf"))))
    if (isinstance(node, exp.Literal) and node.is_number and not node.is_int
            and not (isinstance(node.parent, exp.Cast) and node.parent.is_type("double"))):
        # DuckDB reads 1.0 as DECIMAL but averages and divides it as DOUBLE; Spark would keep
        # a DECIMAL result: make it a DOUBLE literal so that both compute in binary floats
        return exp.cast(node.copy(), exp.DataType.build("DOUBLE"))
    if (isinstance(node, exp.Window) and isinstance(node.this, exp.RowNumber)
            and not node.args.get("partition_by") and not node.args.get("order")):
        # a unique id per row, in no particular order (Spark requires an ORDER BY otherwise)
        return exp.Anonymous(this="MONOTONICALLY_INCREASING_ID", expressions=[])
    if isinstance(node, exp.Table) and node.args.get("db") is not None and str(node.db) == "src":
        return exp.Table(this=exp.to_identifier(spark_source_view(node.name)),
                         alias=node.args.get("alias"))
    return node


def spark_source_view(table: str) -> str:
    """Name of the Spark temp view of the export's raw table (DuckDB's ``src.<table>``)."""
    return f"src__{table}"


def parse_duckdb(query: str) -> exp.Expression:
    """Parse one DuckDB statement (raising :class:`EngineError` naming its first line)."""
    import sqlglot

    try:
        statements = [s for s in sqlglot.parse(query, read="duckdb") if s is not None]
    except sqlglot.errors.ParseError as exc:
        raise EngineError(f"query cannot be parsed ({_head(query)}): {exc}") from None
    if len(statements) != 1:
        raise EngineError(f"expected one SQL statement, got {len(statements)} ({_head(query)})")
    return statements[0]


def to_spark(query: str | exp.Expression, params: Mapping[str, Any] | None = None) -> str:
    """Spark SQL for a DuckDB query with ``$name`` parameters bound to ``params``."""
    tree = parse_duckdb(query) if isinstance(query, str) else query.copy()
    bound = dict(params or {})
    tree = tree.transform(lambda n: _bind(n, bound))
    tree = tree.transform(_rewrite)
    return tree.sql(dialect="spark")


def _head(query: str) -> str:
    line = next((ln.strip() for ln in str(query).splitlines() if ln.strip()), "")
    return line[:80]


# ---------------------------------------------------------------------------------------
# the Spark session


def spark_conf_from_env() -> dict[str, str]:
    """The settings of ``$WHISPERS_LAB_SPARK_CONF`` (a JSON object; none when unset)."""
    import json

    text = os.environ.get(SPARK_CONF_ENV, "").strip()
    if not text:
        return {}
    try:
        conf = json.loads(text)
    except ValueError as exc:
        raise EngineError(f"${SPARK_CONF_ENV} is not JSON ({exc}): expected an object of "
                          f"Spark settings, such as {{\"spark.executor.memory\": \"8g\"}}") from None
    if not isinstance(conf, dict) or not all(isinstance(k, str) for k in conf):
        raise EngineError(f"${SPARK_CONF_ENV} must be a JSON object of Spark settings, such as "
                          f"{{\"spark.executor.memory\": \"8g\"}}; got {type(conf).__name__}")
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in conf.items()}


def spark_session(master: str | None = None, *, app_name: str = "whispers-lab",
                  config: Mapping[str, str] | None = None) -> Any:
    """The Spark session for ``--engine spark``: Spark Connect when ``$SPARK_REMOTE`` is set,
    else ``master`` (``--spark-master``, ``$WHISPERS_LAB_SPARK_MASTER``), else ``local[*]``.
    UTC session time zone, :data:`SPARK_SHUFFLE_PARTITIONS` shuffle partitions, non-ANSI
    arithmetic (a division by zero is NULL, as in DuckDB), Arrow for results. ``config``:
    more Spark settings (they win over these and over ``$WHISPERS_LAB_SPARK_CONF``)."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise EngineError("--engine spark needs pyspark: pip install -e \".[spark]\" "
                          "(and Java 17)") from None
    builder = SparkSession.builder.appName(app_name)
    remote = os.environ.get(SPARK_REMOTE_ENV)
    if remote and not remote.startswith("local"):
        # a Spark Connect server (sc://host:port): Connect's own builder, which (unlike the
        # classic one) also connects from a process that runs a classic session
        try:
            from pyspark.sql.connect.session import SparkSession as RemoteSparkSession
        except ImportError as exc:
            raise EngineError(f"Spark Connect ({SPARK_REMOTE_ENV}={remote}) needs pyspark's "
                              f"connect extra: pip install -e \".[spark]\" ({exc})") from None
        builder = RemoteSparkSession.builder.appName(app_name).remote(remote)
    elif remote:  # local[*]: pyspark starts a Connect server in this process
        builder = builder.remote(remote).config("spark.ui.showConsoleProgress", "false")
    else:
        builder = builder.master(master or os.environ.get(SPARK_MASTER_ENV) or "local[*]")
        builder = (builder.config("spark.ui.enabled", "false")
                   .config("spark.ui.showConsoleProgress", "false")
                   .config("spark.driver.memory", os.environ.get("WHISPERS_LAB_SPARK_DRIVER_MEMORY", "2g")))
    builder = (builder.config("spark.sql.session.timeZone", "UTC")
               .config("spark.sql.shuffle.partitions", str(SPARK_SHUFFLE_PARTITIONS))
               .config("spark.sql.ansi.enabled", "false")
               .config("spark.sql.execution.arrow.pyspark.enabled", "true")
               .config("spark.sql.parquet.inferTimestampNTZ.enabled", "true"))
    for key, value in {**spark_conf_from_env(), **(config or {})}.items():
        builder = builder.config(key, value)
    try:
        session = builder.getOrCreate()
    except Exception as exc:  # no Java, a master that cannot be reached, ...
        raise EngineError(f"cannot start Spark ({remote or master or 'local[*]'}): "
                          f"{_head(str(exc))}") from None
    if not remote:
        session.sparkContext.setLogLevel("ERROR")
    return session


__all__ = [
    "ENGINES",
    "MASK_DAYS",
    "VARIANTS",
    "EngineError",
    "default_engine",
    "engine_of",
    "mask_days",
    "parse_duckdb",
    "spark_conf_from_env",
    "spark_session",
    "spark_source_view",
    "to_spark",
    "variant",
]
