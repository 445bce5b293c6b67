"""The export contract: one declaration of every table and column, used by validation
(`whispers_lab.validation`), the simulator (`whispers_lab.simulate`) and the docs
(`data/CONTRACT.md` is generated from it by ``python -m whispers_lab.contract``).

This module declares; it checks nothing. Column names used elsewhere come from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

LogicalType = Literal["VARCHAR", "TIMESTAMP", "BOOLEAN", "INTEGER", "DOUBLE"]

#: DuckDB physical types accepted for each logical type. Anything else is "incompatible".
ACCEPTED_TYPES: dict[str, tuple[str, ...]] = {
    "VARCHAR": ("VARCHAR",),
    "TIMESTAMP": ("TIMESTAMP", "TIMESTAMP WITH TIME ZONE", "TIMESTAMP_NS", "TIMESTAMP_MS",
                  "TIMESTAMP_S", "TIMESTAMP_US"),
    "BOOLEAN": ("BOOLEAN",),
    "INTEGER": ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT",
                "UINTEGER", "UBIGINT", "HUGEINT"),
    "DOUBLE": ("FLOAT", "DOUBLE", "REAL", "DECIMAL", "TINYINT", "SMALLINT", "INTEGER", "BIGINT",
               "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "HUGEINT"),
}


@dataclass(frozen=True)
class Column:
    name: str
    type: LogicalType
    nullable: bool = False
    minimum: float | None = None
    maximum: float | None = None
    minimum_exclusive: bool = False
    allowed: tuple[str, ...] | None = None
    description: str = ""

    def domain_text(self) -> str:
        parts = []
        if self.allowed is not None:
            parts.append("one of " + ", ".join(repr(a) for a in self.allowed))
        if self.minimum is not None and self.maximum is not None:
            lo = "(" if self.minimum_exclusive else "["
            parts.append(f"in {lo}{_num(self.minimum)}, {_num(self.maximum)}]")
        elif self.minimum is not None:
            parts.append(f"{'>' if self.minimum_exclusive else '>='} {_num(self.minimum)}")
        elif self.maximum is not None:
            parts.append(f"<= {_num(self.maximum)}")
        if self.type == "DOUBLE":
            parts.append("finite")
        return ", ".join(parts)


@dataclass(frozen=True)
class RowRule:
    """A rule over several columns of a row, as a SQL predicate that is TRUE for a good row."""

    id: str
    columns: tuple[str, ...]
    predicate: str
    expected: str


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    required: bool = True
    unique: tuple[tuple[str, ...], ...] = ()
    rules: tuple[RowRule, ...] = ()
    time_column: str | None = None
    description: str = ""
    #: (column, table): a table without a time column whose rows belong to the day of the row
    #: of ``table`` that their ``column`` names (that table's unique key of the same name)
    day_from: tuple[str, str] | None = None

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"table {self.name!r} has no contract column {name!r}")

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


EVENT_TYPES = ("app_open", "whispers_shown", "whispers_used", "maya_cue_fired")
VARIANTS = ("treatment", "control")
WEIGHT_SOURCES = ("user", "fallback")
PRIORITIES = ("critical", "high", "medium", "low")
TICKET_CATEGORIES = ("privacy", "bug", "other")
WHISPERS_ENDPOINT = "/api/whispers/context"
MAX_SHOWN_POSITION = 6

USERS = Table(
    "users",
    (
        Column("user_id", "VARCHAR", description="stable user id"),
        Column("signup_at", "TIMESTAMP"),
        Column("is_internal", "BOOLEAN", description="member of the development team"),
        Column("micro_memory_count", "INTEGER", minimum=0),
        Column("engagement_score", "DOUBLE", minimum=0, maximum=1,
               description="pre-rollout engagement"),
    ),
    unique=(("user_id",),),
    time_column="signup_at",
    description="One row per user.",
)

EXPOSURES = Table(
    "exposures",
    (
        Column("user_id", "VARCHAR"),
        Column("exposed_at", "TIMESTAMP"),
        Column("variant", "VARCHAR", allowed=VARIANTS),
    ),
    unique=(("user_id", "exposed_at"),),
    time_column="exposed_at",
    description=(
        "What production served: one row when an eligible user first reaches the recap page after "
        "rollout start, and one more each time the served experience changes."
    ),
)

TELEMETRY = Table(
    "telemetry",
    (
        Column("event_id", "VARCHAR"),
        Column("created_at", "TIMESTAMP"),
        Column("user_id", "VARCHAR"),
        Column("device_id", "VARCHAR"),
        Column("event_type", "VARCHAR", allowed=EVENT_TYPES),
        Column("request_id", "VARCHAR", nullable=True),
        Column("whisper_id", "VARCHAR", nullable=True),
        Column("position", "INTEGER", nullable=True, minimum=1,
               description="1-based; set on whispers_shown / whispers_used"),
    ),
    unique=(("event_id",),),
    rules=(
        RowRule("position_on_shown_used", ("event_type", "position"),
                "event_type NOT IN ('whispers_shown', 'whispers_used') OR position IS NOT NULL",
                "position set on whispers_shown and whispers_used events"),
    ),
    time_column="created_at",
    description="App events. Clicks are whispers_used events joined to candidates on "
                "(request_id, whisper_id = memory_id).",
)

API_LOGS = Table(
    "api_logs",
    (
        Column("request_id", "VARCHAR"),
        Column("timestamp", "TIMESTAMP"),
        Column("endpoint", "VARCHAR"),
        Column("user_id", "VARCHAR", nullable=True),
        Column("device_id", "VARCHAR", nullable=True),
        Column("status", "INTEGER", minimum=100, maximum=599),
        Column("duration_ms", "DOUBLE", minimum=0),
        Column("ranking_ms", "DOUBLE", nullable=True, minimum=0),
        Column("weight_source", "VARCHAR", nullable=True, allowed=WEIGHT_SOURCES),
        Column("weights_version", "VARCHAR", nullable=True),
    ),
    unique=(("request_id",),),
    time_column="timestamp",
    description="One row per API request.",
)

RANKING_CANDIDATES = Table(
    "ranking_candidates",
    (
        Column("request_id", "VARCHAR"),
        Column("memory_id", "VARCHAR"),
        Column("context_similarity", "DOUBLE", minimum=0, maximum=1),
        Column("recency_hours", "DOUBLE", minimum=0),
        Column("use_count", "INTEGER", minimum=0),
        Column("last_shown_hours", "DOUBLE", nullable=True, minimum=0,
               description="NULL = never shown"),
        Column("pinned", "BOOLEAN"),
        Column("logged_score", "DOUBLE"),
        Column("shown_position", "INTEGER", nullable=True, minimum=1, maximum=MAX_SHOWN_POSITION,
               description="1..6 when shown"),
        Column("propensity", "DOUBLE", nullable=True, minimum=0, maximum=1, minimum_exclusive=True,
               description="probability the logging policy showed this memory at that position"),
    ),
    unique=(("request_id", "memory_id"),),
    description="Every candidate memory scored for a /api/whispers/context request.",
    day_from=("request_id", "api_logs"),
)

FEEDBACK = Table(
    "feedback",
    (
        Column("user_id", "VARCHAR"),
        Column("submitted_at", "TIMESTAMP"),
        Column("rating", "INTEGER", minimum=1, maximum=5),
        Column("relevant", "BOOLEAN", nullable=True),
    ),
    required=False,
    time_column="submitted_at",
    description="In-app survey answers.",
)

SUPPORT_TICKETS = Table(
    "support_tickets",
    (
        Column("ticket_id", "VARCHAR"),
        Column("created_at", "TIMESTAMP"),
        Column("user_id", "VARCHAR", nullable=True),
        Column("category", "VARCHAR", description="at least 'privacy', 'bug', 'other'"),
        Column("priority", "VARCHAR", allowed=PRIORITIES),
        Column("about_whispers", "BOOLEAN"),
    ),
    required=False,
    unique=(("ticket_id",),),
    time_column="created_at",
    description="Support tickets; categories beyond privacy/bug/other are allowed.",
)

DB_METRICS = Table(
    "db_metrics",
    (
        Column("timestamp", "TIMESTAMP", description="one row a minute"),
        Column("p95_query_ms", "DOUBLE", minimum=0),
    ),
    required=False,
    unique=(("timestamp",),),
    time_column="timestamp",
    description="Database health, one row per minute.",
)

#: Feature flags of the whispers rollout (the plan's ``[flags]``; ``whispers_lab.plan.FLAG_NAMES``).
FLAG_NAMES = ("NEXT_PUBLIC_WHISPERS_ENABLED", "NEXT_PUBLIC_WHISPERS_CONTEXT_RANKING",
              "NEXT_PUBLIC_WHISPERS_MAX", "NEXT_PUBLIC_WHISPERS_RANKING_TIMEOUT_MS")
FLAG_AUDIENCES = ("internal", "beta", "percentage")

FLAG_CHANGES = Table(
    "flag_changes",
    (
        Column("changed_at", "TIMESTAMP", description="when production applied the change (UTC)"),
        Column("flag", "VARCHAR", allowed=FLAG_NAMES),
        Column("value", "VARCHAR", description="the value set, as text: 'true' / 'false' for the "
                                               "two booleans, a whole number for the others"),
        Column("percentage", "DOUBLE", nullable=True, minimum=0, maximum=100,
               description="share of external, non-holdout users enabled by bucket; set when "
                           "NEXT_PUBLIC_WHISPERS_ENABLED is set 'true' for audience 'percentage'"),
        Column("audience", "VARCHAR", nullable=True, allowed=FLAG_AUDIENCES,
               description="who NEXT_PUBLIC_WHISPERS_ENABLED = 'true' enables: the internal "
                           "team, the beta users (and the internal team), or a percentage "
                           "(and both)"),
    ),
    required=False,
    unique=(("changed_at", "flag"),),
    rules=(
        RowRule("flag_value", ("flag", "value"),
                "CASE WHEN flag IN ('NEXT_PUBLIC_WHISPERS_ENABLED', "
                "'NEXT_PUBLIC_WHISPERS_CONTEXT_RANKING') THEN value IN ('true', 'false') "
                "ELSE coalesce(TRY_CAST(value AS BIGINT) > 0, false) END",
                "value 'true' or 'false' for the boolean flags, a whole number > 0 for "
                "NEXT_PUBLIC_WHISPERS_MAX and NEXT_PUBLIC_WHISPERS_RANKING_TIMEOUT_MS"),
        RowRule("enabled_audience", ("flag", "value", "audience"),
                "NOT (flag = 'NEXT_PUBLIC_WHISPERS_ENABLED' AND value = 'true') "
                "OR audience IS NOT NULL",
                "audience set on every NEXT_PUBLIC_WHISPERS_ENABLED = 'true' row"),
        RowRule("percentage_stage", ("flag", "value", "audience", "percentage"),
                "NOT (flag = 'NEXT_PUBLIC_WHISPERS_ENABLED' AND value = 'true' "
                "AND audience = 'percentage') OR coalesce(percentage > 0, false)",
                "percentage above 0 on every NEXT_PUBLIC_WHISPERS_ENABLED = 'true' row for "
                "audience 'percentage'"),
    ),
    time_column="changed_at",
    description=(
        "The rollout's flag-change log: one row each time production changed a whispers flag. "
        "When present it is the rollout's actual state (`whispers_lab/state.py`): which stage "
        "was in force from when. It must hold every change of NEXT_PUBLIC_WHISPERS_ENABLED since "
        "the rollout began (before its first such row whispers are off); rows after the "
        "analysed day are not read. Without it the state comes from the workbench's own "
        "decisions, else from the plan's calendar (assumed)."
    ),
)

#: Telemetry rows that repeat an event under a new ``event_id``: same values in these columns
#: and a ``created_at`` at most this many seconds after the previous such row. Counted once
#: (the export's ``telemetry`` view leaves the repeats out); validation says how many.
DUPLICATE_EVENT_KEY: tuple[str, ...] = ("user_id", "event_type", "request_id", "whisper_id")
DUPLICATE_EVENT_SECONDS = 1.0

TABLES: tuple[Table, ...] = (
    USERS, EXPOSURES, TELEMETRY, API_LOGS, RANKING_CANDIDATES, FEEDBACK, SUPPORT_TICKETS, DB_METRICS,
    FLAG_CHANGES,
)
CONTRACT: dict[str, Table] = {t.name: t for t in TABLES}
REQUIRED_TABLES: tuple[str, ...] = tuple(t.name for t in TABLES if t.required)
OPTIONAL_TABLES: tuple[str, ...] = tuple(t.name for t in TABLES if not t.required)


def contract_markdown() -> str:
    """The contract as a Markdown page (the source of ``data/CONTRACT.md``)."""
    out = [
        "# The export contract",
        "",
        "Generated from `whispers_lab/contract.py` by `python -m whispers_lab.contract`; do not edit by hand.",
        "",
        "An export is either one DuckDB database file holding these tables, or a folder holding one "
        "Parquet file per table (`<table>.parquet`) or one folder of Parquet files per table "
        "(`<table>/**/*.parquet`, e.g. partitioned by date). All timestamps are UTC: naive "
        "timestamps are read as UTC, timezone-aware ones are converted to UTC. Extra columns and "
        "tables are allowed and ignored. Validation reports every problem at once.",
        "",
    ]
    for t in TABLES:
        out.append(f"## `{t.name}` ({'required' if t.required else 'optional'})")
        out.append("")
        out.append(t.description)
        out.append("")
        out.append("| column | type | NULL | domain | notes |")
        out.append("|---|---|---|---|---|")
        for c in t.columns:
            out.append(f"| `{c.name}` | {c.type} | {'yes' if c.nullable else 'no'} | "
                       f"{c.domain_text()} | {c.description} |")
        if t.unique:
            out.append("")
            out.append("Unique on " + "; ".join("(" + ", ".join(k) + ")" for k in t.unique) + ".")
        for r in t.rules:
            out.append("")
            out.append(f"Rule `{r.id}`: {r.expected}.")
        if t.day_from:
            column, parent = t.day_from
            out.append("")
            out.append(f"No time column: a row belongs to the day of the `{parent}` row its "
                       f"`{column}` names (validation of a new day's export checks the rows of "
                       f"the new days' `{parent}` rows when the others are as an earlier clean "
                       f"export held them).")
        if t.name == "telemetry":
            out.append("")
            out.append("Repeated events: a row with the same "
                       + ", ".join(f"`{c}`" for c in DUPLICATE_EVENT_KEY)
                       + f" as an earlier row and a `created_at` at most "
                       f"{DUPLICATE_EVENT_SECONDS:g} s later (under a new `event_id`) repeats "
                       "that event: it is valid, counted once, and validation reports how many "
                       "there are.")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":  # pragma: no cover
    print(contract_markdown())
