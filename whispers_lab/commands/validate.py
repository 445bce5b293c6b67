"""``whispers-lab validate PATH``: check an export against the contract."""

from __future__ import annotations

import argparse

from ..export import open_export
from ..validation import summary
from . import options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check an export against the contract",
                       description="Open an export (DuckDB file or Parquet folder) read-only and check "
                                   "it against the export contract. Prints the tables, row counts and "
                                   "date ranges, or every problem found. Exit 0 when valid.")
    p.add_argument("path", help="DuckDB file or folder of <table>.parquet files")
    p.add_argument("--full", action="store_true",
                   help="check every part of the export, even those unchanged since the last "
                        "validation (the manifest in the cache folder is then rewritten)")
    options.add_engine(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # (validation reads the files itself: no in-memory copy of a many-file table)
    with open_export(args.path, use_cache=not args.full, engine=args.engine,
                     spark_master=args.spark_master, copy_small_tables=False) as export:
        rows = summary(export)
    result = export.validation
    on = "" if args.engine == "duckdb" else f", checked on {args.engine}"
    print(f"export {args.path!r} ({export.kind}{on}) is valid")
    if result is not None and result.units_reused:
        print(f"  {result.units_checked} part(s) checked, {result.units_reused} unchanged since "
              f"the last validation (use --full to check them too)")
    seen = sum(result.days_seen.values()) if result is not None else 0
    if seen:
        days = sum(len(result.contents.get(t, {})) for t in result.days_seen)
        print(f"  every row read and hashed; rules and unique keys checked on the "
              f"{days - seen:,} table-day(s) that no earlier clean file held, not again on the "
              f"{seen:,} found unchanged (use --full to check them too)")
    for table, (checked, kept) in (result.rows_seen.items() if result is not None else ()):
        print(f"  {table}: unique keys (and, in a DuckDB file, rules) checked on the {checked:,} "
              f"row(s) of the new days' requests, not again on the {kept:,} that an earlier "
              f"clean file held as they are")
    print(f"  {'table':<20} {'rows':>12}  {'from (UTC)':<19}  {'to (UTC)':<19}")
    for r in rows:
        if not r["present"]:
            print(f"  {r['table']:<20} {'absent':>12}  (optional)")
            continue
        lo = r["from"].strftime("%Y-%m-%d %H:%M:%S") if r["from"] is not None else "-"
        hi = r["to"].strftime("%Y-%m-%d %H:%M:%S") if r["to"] is not None else "-"
        print(f"  {r['table']:<20} {r['rows']:>12,}  {lo:<19}  {hi:<19}")
    for notice in result.notices if result is not None else ():
        print(f"  note: {notice}")
    return 0
