"""``whispers-lab confirm-rollback``: did switching whispers off work? ("Monitor for 15 minutes
to confirm rollback").

Reads the export around the flag flip (``--disabled-at``), judges it with
:func:`whispers_lab.rollback.confirm` and publishes ``OUT/rollback-<time>/confirmation.html`` and
``confirmation.json`` atomically, then refreshes ``OUT/index.html``, which links the page next to
the day's ROLLBACK report. Exit 0 when confirmed, 3 when not confirmed, 4 when too early (the
export does not cover the monitor window yet), 1 on bad input. See
``docs/rollback-confirmation.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

from ..errors import WhispersLabError
from ..export import open_export
from ..plan import load_plan
from ..queries import rollback as q
from ..rollback import baseline_window, confirm, settings_from_plan
from . import options

EXIT_CODES = {"confirmed": 0, "not_confirmed": 3, "too_early": 4}
#: Minutes before the flip drawn on the chart (the monitor window and 5 minutes follow it).
CHART_BEFORE_MINUTES = 30


def utc_timestamp(text: str) -> dt.datetime:
    """An ISO 8601 time; naive means UTC, an offset is converted to UTC (naive result)."""
    try:
        value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO 8601 time such as "
                                         f"2026-12-10T18:50:00Z, got {text!r}") from None
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


def run(args: argparse.Namespace) -> int:
    from ..report.confirmation import incident_start_from_reports, write_confirmation
    from ..report.index import write_index
    from ..report.runner import utc_stamp

    plan = load_plan(args.plan)
    settings = settings_from_plan(plan)
    flip: dt.datetime = args.disabled_at
    out = Path(args.out)
    incident, source = args.incident_start, None
    if incident is None:
        incident = incident_start_from_reports(out, plan, flip)
        if incident is not None:
            source = (f"the {settings.baseline_minutes} minutes before the incident found in "
                      f"the ROLLBACK report ({incident:%Y-%m-%d %H:%M} UTC)")
    try:
        window, why = baseline_window(flip, settings, incident, source)
    except ValueError as exc:
        raise WhispersLabError(str(exc)) from None
    minute = dt.timedelta(minutes=1)
    allowance_end = flip + settings.allowance_minutes * minute
    monitor_end = flip + settings.monitor_minutes * minute
    with open_export(args.export) as export:
        end = q.coverage_end(export)
        kw = {"recap_endpoint": settings.recap_endpoint}
        allowance = q.window_stats(export, flip, allowance_end, **kw)
        after = q.window_stats(export, allowance_end, monitor_end, **kw)
        base = q.window_stats(export, window[0], window[1], **kw)
        minutes = q.minute_series(export, flip - CHART_BEFORE_MINUTES * minute,
                                  monitor_end + 5 * minute, **kw)
    result = confirm(flip, end, allowance=allowance, after=after, baseline=base,
                     baseline_window=window, baseline_source=why, minutes=minutes,
                     settings=settings)
    folder = write_confirmation(result, plan, out, export_name=Path(args.export).name,
                                generated_at=utc_stamp())
    write_index(out, plan)
    print(f"confirm-rollback: {result.verdict.upper().replace('_', ' ')} -> "
          f"{folder / 'confirmation.html'}")
    for line in result.reasons:
        print(f"  {line}")
    return EXIT_CODES[result.verdict]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "confirm-rollback",
        help="check that switching whispers off worked (the plan's 15-minute monitor)",
        description="After NEXT_PUBLIC_WHISPERS_ENABLED was set to false, check from an export "
                    "covering at least rollback.monitor_minutes after the flip that traffic to "
                    "/api/whispers/context stopped, no whispers are shown any more and the "
                    "recap endpoint's error rate and latency are back to their pre-incident "
                    "level. Writes OUT/rollback-<time>/confirmation.html and .json and links "
                    "them from OUT/index.html. Exit 0 confirmed, 3 not confirmed, 4 too early.",
    )
    parser.add_argument("--export", required=True, type=Path, metavar="PATH",
                        help="export: DuckDB file or folder of Parquet files")
    parser.add_argument("--disabled-at", required=True, type=utc_timestamp, metavar="TIMESTAMP",
                        help="when the flag was set to false (ISO 8601; no offset = UTC)")
    parser.add_argument("--incident-start", type=utc_timestamp, default=None,
                        metavar="TIMESTAMP",
                        help="when the incident began: the baseline is the time before it "
                             "(default: from the day's ROLLBACK report in --out, else the same "
                             "time the day before)")
    options.add_plan(parser)
    options.add_report_dir(parser)
    parser.set_defaults(func=run)
