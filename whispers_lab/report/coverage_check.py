"""Whether an export reaches a rollout day: the daily job's and the summary's check that the
day's export has arrived (below :mod:`.daily` and :mod:`.summary`, so neither imports the
other's runner)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ExportNotArrivedError
from ..plan import Plan


def check_export_covers(export_path: Path, plan: Plan, day: int, export: Any = None) -> None:
    """Raise :class:`~whispers_lab.errors.ExportNotArrivedError` (a ``ReportError``) unless
    the export's data reach ``day`` (a stale export: yesterday's export has not arrived).
    Judged on the rows' day distribution (:func:`whispers_lab.queries.monitoring.export_extent`),
    not on the latest timestamp, so that a row stamped in the future does not make a stale
    export look current. ``export``: the export at ``export_path`` already opened (None:
    opened here, without validation)."""
    from ..export import open_export
    from ..queries.monitoring import export_extent

    if export is not None:
        extent = export_extent(export)
    else:
        with open_export(export_path, validate=False, copy_small_tables=False) as opened:
            extent = export_extent(opened)
    start = plan.day_start(day)
    if not extent.covers(start.date()):
        if extent.end is None:
            seen = "holds no events"
        else:
            seen = f"ends at {extent.end:%Y-%m-%d %H:%M} UTC"
            if extent.beyond_rows:
                seen += (f" (ignoring {extent.beyond_rows:,} row(s) stamped after that, up to "
                         f"{max(extent.beyond):%Y-%m-%d})")
        raise ExportNotArrivedError(
            f"the newest export {export_path.name!r} {seen}, before day {day} "
            f"({start:%Y-%m-%d}) begins: the day's export has not arrived")
