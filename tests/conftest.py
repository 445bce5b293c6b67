"""Shared fixtures: small simulated exports, built once per test session.

* ``small_sim``: a healthy :class:`~whispers_lab.simulate.SimulatedExport` in memory
  (3000 users, seed 7, 14-day pre-period, rollout days 0..14).
* ``small_export``: the same data written as a DuckDB file (path), with its truth sidecar.
* ``small_export_parquet``: the same data as a Parquet folder (path ending in ``/``).
* ``scenario_sim`` / ``scenario_export``: 3000 users with every windowed/point scenario planted
  at its default (non-overlapping) time on day 9, plus the truth.

Building all of them takes a couple of seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from whispers_lab.simulate import simulate

SMALL_USERS = 3000
SMALL_SEED = 7
#: Scenarios that can share one export: their default windows do not overlap.
COMBINED_SCENARIOS: tuple[str, ...] = (
    "error_spike", "latency_spike", "ranking_timeouts", "fallback_surge",
    "device_weight_mismatch", "cue_cooldown_violation", "critical_bug", "privacy_ticket",
    "db_degradation", "telemetry_gap",
)


@pytest.fixture(scope="session")
def small_sim():
    return simulate(SMALL_USERS, SMALL_SEED)


@pytest.fixture(scope="session")
def small_export(small_sim, tmp_path_factory):
    path = tmp_path_factory.mktemp("sim") / "small.duckdb"
    small_sim.write(path)
    return path


@pytest.fixture(scope="session")
def small_export_parquet(small_sim, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("sim_pq") / "small") + "/"
    small_sim.write(path)
    return path


@pytest.fixture(scope="session")
def scenario_sim():
    return simulate(SMALL_USERS, SMALL_SEED, scenarios=COMBINED_SCENARIOS)


@pytest.fixture(scope="session")
def scenario_export(scenario_sim, tmp_path_factory):
    path = tmp_path_factory.mktemp("sim_scen") / "scenarios.duckdb"
    scenario_sim.write(path)
    return path


#: Seconds per test file in a recent run (``tests/update_durations.py`` refreshes it): the
#: scheduler's hint for which file to start first.
DURATIONS = Path(__file__).with_name("durations.json")
#: Seconds assumed per test of a file the hint does not know.
UNKNOWN_TEST_SECONDS = 0.5


def _expected_seconds(scopes: dict[str, dict[str, bool]]) -> dict[str, float]:
    try:
        known = json.loads(DURATIONS.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    return {scope: float(known.get(scope, UNKNOWN_TEST_SECONDS * len(nodes)))
            for scope, nodes in scopes.items()}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """With pytest-xdist: every cell of a notebook runs on one worker, and the slowest files
    start first.

    * ``--dist loadfile`` (the default, see ``pyproject.toml``): each test file runs on one
      worker, and a free worker takes the remaining file expected to run longest (the
      durations hint), so a long file (the killed report runs, the Spark group) does not start
      last and run alone while the other workers idle. xdist's own order is by the number of
      tests per file, which puts a few slow tests last.
    * ``--dist load``: nbval makes each cell a test item and the cells of a notebook share one
      kernel, so a cell sent to another worker than the notebook's setup cell fails with a
      NameError. Other tests are distributed one by one, as xdist's default ``load`` does."""
    from xdist.scheduler import LoadFileScheduling, LoadScopeScheduling

    class NotebooksTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return path if path.endswith(".ipynb") else nodeid

    class LongestFirst(LoadFileScheduling):
        def _assign_work_unit(self, node) -> None:
            if getattr(self, "_expected", None) is None:
                self._expected = _expected_seconds(self.workqueue)
            longest = max(self.workqueue, key=lambda scope: self._expected.get(scope, 0.0))
            self.workqueue.move_to_end(longest, last=False)
            super()._assign_work_unit(node)

    dist = config.getoption("dist")
    if dist == "load":
        return NotebooksTogether(config, log)
    if dist == "loadfile":
        return LongestFirst(config, log)
    return None
