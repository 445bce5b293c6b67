"""The per-file id profiles (``whispers_lab.id_profiles``): the validation, which decodes a
changed file's ids anyway, keeps the file's profile for the privacy scan, so a new day's
report does not read the ids again; the profile it keeps is the one the privacy scan would
have computed, and a file whose ids have several lengths is left to the privacy scan."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from test_privacy_profile import _raw_profile, profiled_files

from whispers_lab import validation
from whispers_lab.export import open_export, write_partitioned_export
from whispers_lab.id_profiles import ID_COLUMNS, from_extremes
from whispers_lab.report import privacy


def _part(n, short, long, lo, hi):
    return {"n": n, "short": short, "long": long, "lo": lo, "hi": hi}


def test_one_length_gives_its_range_and_several_lengths_none():
    assert from_extremes([_part(3, 4, 4, "u-01", "u-77")]) == [[4, "u-01", "u-77"]]
    # a unit of two files: the smallest and largest over both
    assert from_extremes([_part(2, 4, 4, "u-05", "u-09"), _part(5, 4, 4, "u-01", "u-07")]) \
        == [[4, "u-01", "u-09"]]
    assert from_extremes([_part(3, 2, 4, "u1", "u-77")]) is None
    assert from_extremes([_part(2, 2, 2, "u1", "u2"), _part(2, 4, 4, "u-01", "u-02")]) is None
    assert from_extremes([_part(0, None, None, None, None)]) == []  # no id at all
    assert from_extremes([_part(0, None, None, None, None), _part(1, 3, 3, "abc", "abc")]) \
        == [[3, "abc", "abc"]]


@pytest.mark.parametrize(("profile_ids", "profiled_units", "longer"),
                         [(True, 64, False), (True, 0, False), (True, 64, True), (False, 64, False)],
                         ids=["kept by a report's validation", "too many files", "two lengths",
                              "validation alone"])
def test_a_changed_file_is_profiled_by_its_validation(small_sim, tmp_path, monkeypatch,
                                                      profile_ids, profiled_units, longer):
    monkeypatch.setenv(validation.CACHE_ENV, str(tmp_path / "cache"))
    folder = write_partitioned_export(dict(small_sim.tables), tmp_path / "lake")
    read = profiled_files(monkeypatch)
    columns = [(t, c) for t, c in ID_COLUMNS]
    with open_export(folder) as export:
        assert privacy.id_profile(export) == _raw_profile(folder, columns)

    # a day's telemetry rewritten: a row fewer, and maybe an id of another length
    file = sorted((folder / "telemetry").rglob("*.parquet"))[-3]
    rows = pq.read_table(file, partitioning=None).slice(1)
    if longer:
        at = rows.schema.get_field_index("user_id")
        rows = rows.set_column(at, "user_id", pc.if_else(
            pc.equal(pa.array(range(rows.num_rows)), 0), "u-of-another-length",
            rows["user_id"]).cast(rows.schema.field(at).type))
    pq.write_table(rows, file)
    monkeypatch.setattr(validation, "PROFILED_UNITS", profiled_units)
    read.clear()
    with open_export(folder, profile_ids=profile_ids) as export:
        again = privacy.id_profile(export)
    assert again == _raw_profile(folder, columns)
    assert read == ([] if profile_ids and profiled_units and not longer else [str(file)])


def test_a_report_run_opens_its_export_with_the_id_profiles(small_sim, tmp_path, monkeypatch):
    """The report run's opening asks its validation for the id profiles (its privacy scan
    follows); ``validate`` and the other openings do not."""
    from whispers_lab.report import runner

    asked: list[dict] = []

    def opened(path, **kwargs):
        asked.append(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(runner, "open_export", opened)
    pre = runner._precompute(tmp_path / "export.duckdb", 9, small_sim.plan, tmp_path / "out",
                             None, summary_day=None, index_due=False)
    try:
        with pytest.raises(RuntimeError, match="stop here"):
            pre.result()
    finally:
        pre.close()
    assert [a.get("profile_ids") for a in asked] == [True]
