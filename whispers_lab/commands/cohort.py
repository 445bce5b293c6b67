"""``whispers-lab cohort``: the intended variant of every user on one rollout day.

Reads user rows (CSV or Parquet with the assignment columns of the ``users`` table), assigns them
with :func:`whispers_lab.cohort.assign`, and writes ``user_id, bucket, variant, reason`` to CSV or
Parquet (by the ``--out`` extension), atomically. The summary printed names no user.

The stage is the one the rollout actually reached (:mod:`whispers_lab.state`): from the flag log
of ``--export``, else the decisions in ``--reports``, else the plan's calendar (assumed, and the
summary says so). After a hold on day 9 the flag service gets 10% on day 10, not the calendar's
25%; after a rollback, nobody.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ..atomic import atomic_path
from ..cohort import (
    ASSIGNMENT_COLUMNS,
    ENGAGEMENT_SCORE,
    IS_INTERNAL,
    MICRO_MEMORY_COUNT,
    USER_ID,
    CohortError,
    assign,
    check_users,
    expected_split,
    reason_counts,
)
from ..plan import Plan, load_plan
from ..state import RolloutState, resolve_state
from . import options

CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.zst")
PARQUET_SUFFIXES = (".parquet", ".pq")
OUTPUT_COLUMNS = (USER_ID, "bucket", "variant", "reason")

#: Arrow type each assignment column is read as, with the words used in error messages.
_TYPES: dict[str, tuple[pa.DataType, str]] = {
    USER_ID: (pa.large_string(), "a string"),
    IS_INTERNAL: (pa.bool_(), "a boolean (true/false)"),
    MICRO_MEMORY_COUNT: (pa.int64(), "an integer"),
    ENGAGEMENT_SCORE: (pa.float64(), "a number"),
}


def _kind(path: Path, what: str) -> str:
    name = path.name.lower()
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    raise CohortError(f"{what} file {str(path)!r}: unknown extension; use one of "
                      f"{', '.join(CSV_SUFFIXES + PARQUET_SUFFIXES)}")


def _convert(table: pa.Table, path: Path) -> pa.Table:
    """Cast each assignment column to its type; a failure names the file and the column."""
    columns = []
    for name in ASSIGNMENT_COLUMNS:
        target, words = _TYPES[name]
        col = table.column(name)
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        source = col.type
        allowed = {
            USER_ID: pa.types.is_string(source) or pa.types.is_large_string(source)
            or pa.types.is_string_view(source),
            IS_INTERNAL: pa.types.is_boolean(source),
            MICRO_MEMORY_COUNT: pa.types.is_integer(source),
            ENGAGEMENT_SCORE: pa.types.is_integer(source) or pa.types.is_floating(source)
            or pa.types.is_decimal(source),
        }[name]
        if not (allowed or pa.types.is_string(source) or pa.types.is_large_string(source)):
            raise CohortError(f"users file {str(path)!r}: column {name!r} must be {words}, "
                              f"got {source}")
        try:
            col = pc.cast(col, target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise CohortError(f"users file {str(path)!r}: column {name!r} must be {words}: "
                              f"{first}") from None
        if col.null_count:
            raise CohortError(f"users file {str(path)!r}: column {name!r} has {col.null_count} "
                              f"missing value(s)")
        columns.append(col)
    return pa.table(columns, names=list(ASSIGNMENT_COLUMNS))


def read_users(path: str | Path) -> pd.DataFrame:
    """Read the assignment columns of a users file (CSV or Parquet) into a checked DataFrame.

    Other columns (``signup_at``, extras) are ignored. Raises :class:`CohortError` naming the file
    and, where it applies, the column: missing file, unknown extension, unreadable data, missing
    column, wrong type, missing values, repeated user ids.
    """
    p = Path(path)
    kind = _kind(p, "users")
    if not p.is_file():
        raise CohortError(f"users file {str(p)!r} does not exist")
    try:
        if kind == "parquet":
            names = pq.read_schema(p).names
        else:
            with pacsv.open_csv(p) as reader:
                names = reader.schema.names
    except (pa.ArrowInvalid, OSError) as exc:
        raise CohortError(f"users file {str(p)!r} cannot be read as {kind}: "
                          f"{str(exc).strip().splitlines()[0]}") from None
    missing = [c for c in ASSIGNMENT_COLUMNS if c not in names]
    if missing:
        raise CohortError(f"users file {str(p)!r}: missing column {missing[0]!r} "
                          f"(needs {', '.join(ASSIGNMENT_COLUMNS)})")
    try:
        if kind == "parquet":
            table = pq.read_table(p, columns=list(ASSIGNMENT_COLUMNS))
        else:
            # Everything as text first, so that a bad value is reported against its column.
            options = pacsv.ConvertOptions(
                column_types={c: pa.large_string() for c in ASSIGNMENT_COLUMNS},
                include_columns=list(ASSIGNMENT_COLUMNS),
                strings_can_be_null=True,
            )
            table = pacsv.read_csv(p, convert_options=options)
    except (pa.ArrowInvalid, OSError) as exc:
        raise CohortError(f"users file {str(p)!r} cannot be read as {kind}: "
                          f"{str(exc).strip().splitlines()[0]}") from None
    table = _convert(table, p)
    frame = table.to_pandas()
    check_users(frame, source=f"users file {str(p)!r}")
    if not frame[USER_ID].is_unique:
        dup = int(frame[USER_ID].duplicated().sum())
        raise CohortError(f"users file {str(p)!r}: column {USER_ID!r} repeats {dup} user id(s); "
                          f"the contract wants one row per user")
    return frame


def write_assignments(assigned: pd.DataFrame, path: str | Path) -> Path:
    """Write ``user_id, bucket, variant, reason`` to CSV or Parquet (by extension), atomically."""
    p = Path(path)
    kind = _kind(p, "output")
    table = pa.table({
        USER_ID: pa.array(assigned[USER_ID], type=pa.large_string()),
        "bucket": pa.array(assigned["bucket"].to_numpy(), type=pa.int32()),
        "variant": pa.array(assigned["variant"]).cast(pa.string()),
        "reason": pa.array(assigned["reason"]).cast(pa.string()),
    })
    with atomic_path(p) as tmp:
        if kind == "parquet":
            pq.write_table(table, tmp)
        else:
            pacsv.write_csv(table, tmp)
    return p


def run(args: argparse.Namespace) -> int:
    plan = load_plan(args.plan)
    plan.phase_for_day(args.day)  # PlanError for a day before the start
    state = _state(args, plan)
    phase = state.phase_on(args.day)
    users = read_users(args.users)
    assigned = assign(users, args.day, plan, state=state)
    write_assignments(assigned, args.out)

    counts = reason_counts(assigned)
    treatment = int((assigned["variant"] == "treatment").sum())
    split = expected_split(args.day, plan, state=state)
    beta = assigned.attrs["beta"]
    print(f"cohort: day {args.day} ({phase.name}): {len(assigned):,} users -> {args.out}")
    print(f"  state:   {state.sentence(args.day)}")
    for warning in state.warnings:
        print(f"  warning: {warning}")
    print(f"  variant: treatment {treatment:,}, control {len(assigned) - treatment:,}")
    print("  reason:  " + ", ".join(f"{r} {n:,}" for r, n in counts.items()))
    print(f"  beta:    {beta.sentence}")
    print(f"  expected treatment share by bucket: {split.treatment_share:.2%} "
          f"(external non-beta users, holdout included)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cohort",
        help="assign users to treatment/control for one rollout day",
        description="Assign every user of a users file (CSV or Parquet) to treatment or control "
                    "for one rollout day, as production does, and write user_id, bucket, "
                    "variant, reason (CSV or Parquet by the --out extension).",
    )
    parser.add_argument("--users", required=True, type=Path, metavar="FILE",
                        help="users file (.csv or .parquet) with columns "
                             + ", ".join(ASSIGNMENT_COLUMNS))
    parser.add_argument("--day", required=True, type=int, metavar="N", help="rollout day (0 = start)")
    options.add_plan(parser)
    parser.add_argument("--export", type=Path, default=None, metavar="PATH",
                        help="an export whose flag_changes log says which stage the rollout "
                             "reached (first source of the rollout's state)")
    parser.add_argument("--reports", type=Path, default=None, metavar="DIR",
                        help="the report folder: the decisions of the days before say which "
                             "stage the rollout reached (when no flag log is given)")
    parser.add_argument("--out", required=True, type=Path, metavar="FILE",
                        help="output file (.csv or .parquet), written atomically")
    parser.set_defaults(func=run)


def _state(args: argparse.Namespace, plan: Plan) -> RolloutState:
    if args.export is None:
        return resolve_state(None, plan, args.day, args.reports)
    from ..export import open_export

    with open_export(args.export, validate=False, copy_small_tables=False) as export:
        return resolve_state(export, plan, args.day, args.reports)
