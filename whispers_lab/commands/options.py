"""Options several sub-commands share, declared once so their names, defaults and help agree."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..paths import REPORTS_DIR


def add_plan(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plan", type=Path, default=None, metavar="FILE",
                        help="plan TOML (default: the packaged whispers canary plan)")


def add_report_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=REPORTS_DIR, metavar="DIR",
                        help=f"report folder (default: {REPORTS_DIR})")


def add_timeout(parser: argparse.ArgumentParser) -> None:
    from ..report.runner import DEFAULT_CELL_TIMEOUT_S

    parser.add_argument("--timeout", type=int, default=DEFAULT_CELL_TIMEOUT_S, metavar="SECONDS",
                        help="seconds one notebook cell may run (default: %(default)s)")


def int_at_least(minimum: int):
    """An argparse ``type`` for whole numbers >= ``minimum``, with a one-line message otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def add_qa_results(parser: argparse.ArgumentParser, default_help: str) -> None:
    parser.add_argument("--qa-results", type=Path, default=None, metavar="FILE_OR_DIR",
                        help="the day's QA results: a JUnit XML file (jest-junit, "
                             "mocha-junit-reporter, Playwright) or a folder of them; "
                             + default_help)


def add_engine(parser: argparse.ArgumentParser) -> None:
    """``--engine duckdb|spark`` and ``--spark-master URL`` (:mod:`whispers_lab.engine`)."""
    from ..engine import ENGINES

    parser.add_argument("--engine", choices=ENGINES, default="duckdb",
                        help="where the queries run: DuckDB in process (default) or Spark SQL "
                             "(pip install -e \".[spark]\", Java 17; a DuckDB file is copied to "
                             "Parquet first)")
    parser.add_argument("--spark-master", default=None, metavar="URL",
                        help="with --engine spark: the cluster (e.g. spark://host:7077; default "
                             "local[*]; Spark Connect: set SPARK_REMOTE=sc://host instead)")


@contextmanager
def engine_environment(args: argparse.Namespace) -> Iterator[None]:
    """Run with ``args.engine`` / ``args.spark_master`` in the environment, where every
    :func:`whispers_lab.export.open_export` of the run, the report notebook's kernel included
    (it inherits the environment), finds them; restored afterwards."""
    from ..engine import ENGINE_ENV, SPARK_MASTER_ENV

    wanted = {ENGINE_ENV: getattr(args, "engine", None) or "duckdb"}
    if getattr(args, "spark_master", None):  # else $WHISPERS_LAB_SPARK_MASTER, if set, stands
        wanted[SPARK_MASTER_ENV] = args.spark_master
    saved = {k: os.environ.get(k) for k in wanted}
    try:
        for key, value in wanted.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
