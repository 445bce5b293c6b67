"""A simulator of realistic whispers rollout exports with planted effects.

Public API::

    from whispers_lab.simulate import simulate, simulate_to, SCENARIOS

    sim = simulate(users=3000, seed=7, scenarios=["error_spike:level=0.1"])
    sim.tables["api_logs"]          # pyarrow tables, contract columns
    sim.truth                       # what was planted (also written as <export>.truth.json)
    simulate_to("out/rollout.duckdb", users=3000, seed=7)   # or "out/rollout/" for Parquet

See ``docs/simulator.md`` for the models, parameters, scenarios and the truth file schema.
"""

from .core import SimulatedExport, simulate, simulate_to
from .params import PRE_DAYS, ModelParams
from .scenarios import SCENARIOS, Scenario, ScenarioRequest, SimulationError, parse_scenario
from .truth import read_truth, truth_path

__all__ = [
    "PRE_DAYS",
    "SCENARIOS",
    "ModelParams",
    "Scenario",
    "ScenarioRequest",
    "SimulatedExport",
    "SimulationError",
    "parse_scenario",
    "read_truth",
    "simulate",
    "simulate_to",
    "truth_path",
]
