"""Reading an export is bounded in memory (issue 18): DuckDB gets a limit (1 GB unless
``$WHISPERS_LAB_DUCKDB_MEMORY`` says otherwise) and spills to a private temporary folder, never
to the working folder (a report's staging folder, served to stakeholders)."""

from __future__ import annotations

import os

from whispers_lab.export import MEMORY_ENV, open_export


def _settings(path) -> tuple[str, str]:
    with open_export(path, validate=False) as export:
        return tuple(export.con.execute(
            "SELECT current_setting('memory_limit'), current_setting('temp_directory')"
        ).fetchall()[0])


def test_an_opened_export_has_a_memory_limit_and_a_private_spill_folder(small_export,
                                                                       monkeypatch, tmp_path):
    monkeypatch.delenv(MEMORY_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    limit, spill = _settings(small_export)
    assert limit.startswith("953.6") and "MiB" in limit  # 1 GB
    assert not spill.startswith(str(tmp_path)) and f"spill-{os.getpid()}" in spill


def test_the_limit_can_be_changed_or_left_to_duckdb(small_export, monkeypatch):
    monkeypatch.setenv(MEMORY_ENV, "3GB")
    assert _settings(small_export)[0].startswith("2.7")  # GiB
    monkeypatch.setenv(MEMORY_ENV, "")
    default, _ = _settings(small_export)
    assert not default.startswith(("953.6", "2.7"))


def test_the_block_allocator_keeps_a_pool_of_the_limit_s_size(small_export, monkeypatch):
    """The blocks' buffers come from DuckDB's block allocator, a pool of the memory limit's
    size the connection keeps (fewer page faults and less system CPU per report, docs/scale.md);
    without a limit of ours, DuckDB's default (no pool) stays."""

    def pool() -> str:
        with open_export(small_export, validate=False) as export:
            return export.con.execute(
                "SELECT current_setting('block_allocator_memory')").fetchone()[0]

    monkeypatch.delenv(MEMORY_ENV, raising=False)
    assert pool().startswith("953.6")  # 1 GB
    monkeypatch.setenv(MEMORY_ENV, "3GB")
    assert pool().startswith("2.7")
    monkeypatch.setenv(MEMORY_ENV, "")
    assert pool() == "0 bytes"
