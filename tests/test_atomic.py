"""Atomic output: a failed write leaves the previous file or folder untouched and no temp behind."""

from __future__ import annotations

import pytest

from whispers_lab.atomic import atomic_path, replace_dir, restore_interrupted, write_text_atomic


def test_write_replaces_whole_file(tmp_path):
    target = tmp_path / "sub" / "decision.json"
    write_text_atomic(target, "old")
    write_text_atomic(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["decision.json"]


def test_failed_write_keeps_previous_and_cleans_up(tmp_path):
    target = tmp_path / "report.html"
    target.write_text("previous")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_replace_dir_swaps_complete_folders(tmp_path):
    target = tmp_path / "day-09"
    target.mkdir()
    (target / "a").write_text("1")
    new = tmp_path / ".day-09.tmp"
    new.mkdir()
    (new / "b").write_text("2")
    replace_dir(new, target)
    assert [p.name for p in target.iterdir()] == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["day-09"]


def test_restore_after_a_kill_between_the_two_renames(tmp_path):
    target = tmp_path / "day-09"
    # the state a kill leaves after the first rename: the old report aside, no new one in place
    old = tmp_path / ".day-09.old-123-456"
    old.mkdir()
    (old / "report.html").write_text("previous")
    assert restore_interrupted(target)
    assert (target / "report.html").read_text() == "previous"
    assert not old.exists()
    assert not restore_interrupted(target)  # nothing to do when the target exists
