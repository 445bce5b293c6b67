"""benchmarks/bench_report.py's busy cores per stage (issue 18: say where the remaining time
goes): the machine's CPU counters turned into busy cores per step, and those steps into a mean
per stage of a run's timeline, each checked against sums worked out by hand."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_report.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_report_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_busy_cores_per_step_from_the_cpu_counters(bench, monkeypatch):
    monkeypatch.setattr(bench, "_cores", lambda: 2)
    # (seconds, busy CPU s, all CPU s) over the machine's 2 cores: 0.2 s of all CPU per
    # 0.1 s; 0.15 of it busy in the first step, then 0.1 of 0.2
    samples = [(0.0, 0.0, 0.0), (0.05, 0.1, 0.1), (0.1, 0.15, 0.2), (0.2, 0.25, 0.4)]
    assert bench._busy_series(samples) == [(0.1, 1.5), (0.2, 1.0)]
    # the last sample always closes a step, however short
    assert bench._busy_series([(0.0, 0.0, 0.0), (0.03, 0.06, 0.06)]) == [(0.03, 2.0)]
    # a step whose counters did not move (no CPU time passed) is left out
    assert bench._busy_series([(0.0, 1.0, 1.0), (0.2, 1.0, 1.0), (0.4, 1.2, 1.4)]) == [
        (0.4, 1.0)]


def test_busy_cores_per_stage_weigh_each_step_by_its_overlap(bench):
    # 2 cores busy through the first second, 1 after it, in steps of 0.1 s
    busy = [(x / 10, 2.0 if x <= 10 else 1.0) for x in range(1, 31)]
    spans = bench.busy_by_stage(busy, [(1.0, "validated"), (2.0, "handed over")], 3.0)
    assert [s for s, _, _ in spans] == ["start -> validated", "validated -> handed over",
                                        "handed over -> end"]
    assert [round(t, 6) for _, t, _ in spans] == [1.0, 1.0, 1.0]
    assert [round(c, 6) for _, _, c in spans] == [2.0, 1.0, 1.0]
    # a stage boundary inside a step: 0.5 s at 2 cores, then 0.5 s at 2 and 2 s at 1
    (first, second) = bench.busy_by_stage(busy, [(0.5, "a")], 3.0)
    assert first[1:] == (0.5, 2.0)
    assert second[0] == "a -> end"
    assert second[2] == pytest.approx((0.5 * 2 + 2.0 * 1) / 2.5)
    # stages outside the run, or two at the same moment, make no empty span
    spans = bench.busy_by_stage(busy, [(0.0, "zero"), (1.0, "x"), (1.0, "y"), (9.0, "late")],
                                3.0)
    assert [s for s, _, _ in spans] == ["start -> x", "y -> end"]
