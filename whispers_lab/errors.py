"""The exception types the lab raises on bad input. The CLI prints them without a traceback."""

from __future__ import annotations


class WhispersLabError(Exception):
    """Base class: an error whose message is meant for the user, printed as-is by the CLI."""


class PlanError(WhispersLabError):
    """The rollout plan file is missing, unreadable or invalid. The message names the key."""


class ExportError(WhispersLabError):
    """An export cannot be opened (missing path, not DuckDB, unreadable Parquet)."""


class ExportValidationError(ExportError):
    """An export breaks the contract. ``problems`` lists every problem found, not just the first."""

    def __init__(self, source: str, problems: list) -> None:
        self.source = source
        self.problems = list(problems)
        lines = [f"export {source!r} breaks the contract ({len(self.problems)} problem(s)):"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class ReportError(WhispersLabError):
    """A report could not be produced (bad day, locked output, failed notebook)."""


class ExportNotArrivedError(ReportError):
    """The newest export's data end before the day to report: the day's export has not
    arrived (the daily job's coverage check)."""
