"""The scheduler's hint (``tests/durations.json``, see ``conftest.py``) names the suite's files."""

from __future__ import annotations

import json

from update_durations import DURATIONS, ROOT, file_of, merged


def test_the_hint_names_existing_files_with_positive_seconds() -> None:
    hint = json.loads(DURATIONS.read_text(encoding="utf-8"))
    assert hint and all((ROOT / name).is_file() for name in hint), \
        "tests/durations.json names a file that is gone: refresh it (tests/update_durations.py)"
    assert all(isinstance(s, (int, float)) and s >= 0 for s in hint.values())
    assert "tests/test_spark.py" in hint  # the longest file must be known to start first


def test_junit_classnames_map_to_the_files_pytest_runs() -> None:
    assert file_of("tests.test_interrupt") == "tests/test_interrupt.py"
    assert file_of("notebooks.daily_report.ipynb") == "notebooks/daily_report.ipynb"
    # a test class inside a module
    assert file_of("tests.test_interrupt.TestSomething") == "tests/test_interrupt.py"


def test_a_partial_run_keeps_the_other_files_seconds() -> None:
    previous = {"tests/test_spark.py": 300.0, "tests/test_interrupt.py": 60.0,
                "tests/test_gone.py": 5.0}
    measured = {"tests/test_interrupt.py": 40.0, "tests/test_evaluate.py": 50.0}
    assert merged(previous, measured) == {"tests/test_spark.py": 300.0,
                                          "tests/test_evaluate.py": 50.0,
                                          "tests/test_interrupt.py": 40.0}
    assert list(merged(previous, measured)) == ["tests/test_spark.py", "tests/test_evaluate.py",
                                                "tests/test_interrupt.py"]
