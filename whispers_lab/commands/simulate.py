"""``whispers-lab simulate``: write a realistic simulated rollout export with planted problems.

Writes one export (a DuckDB file, or a Parquet folder when ``--out`` ends in ``/``) covering a
14-day pre-rollout period and rollout days 0..``--through-day``, plus the truth sidecar
``<export>.truth.json`` naming every planted scenario, its window and the verdict the rules
should reach. Both are written atomically. See ``docs/simulator.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from ..progress import Progress
from ..simulate import SCENARIOS, read_truth, simulate_to
from ..simulate.params import ModelParams
from ..simulate.scenarios import SimulationError
from . import options


def register(sub: argparse._SubParsersAction) -> None:
    names = ", ".join(SCENARIOS)
    p = sub.add_parser(
        "simulate", help="write a simulated rollout export (with planted problems)",
        description="Simulate users through a 14-day pre-period and rollout days 0..D following "
                    "the plan's cohort assignment, and write a contract-valid export plus "
                    "<export>.truth.json. Same arguments, same data.",
        epilog=f"scenarios: {names}. Each takes day=N plus its own keys, e.g. "
               "error_spike:day=9,start=14:00,minutes=15,level=0.08 (see docs/simulator.md).")
    p.add_argument("--users", type=options.int_at_least(1), required=True, help="number of users")
    p.add_argument("--seed", type=int, required=True, help="random seed")
    p.add_argument("--start-date", default=None, metavar="YYYY-MM-DD",
                   help="rollout day 0 (default: the plan's start_date)")
    p.add_argument("--out", required=True, metavar="PATH",
                   help="DuckDB file, or a folder for Parquet when it ends in '/'")
    p.add_argument("--through-day", type=options.int_at_least(0), default=None, metavar="D",
                   help="last simulated rollout day (default: the plan's last_day)")
    p.add_argument("--scenario", action="append", default=[], metavar="NAME[:key=value,...]",
                   help="plant a problem; repeat to combine")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="override a parameter of the healthy model (whispers_lab.simulate."
                        "params.ModelParams), e.g. late_signup_share=0.3; repeatable")
    options.add_plan(p)
    p.set_defaults(func=run)


def model_params(overrides: list[str]) -> ModelParams:
    """``NAME=VALUE`` strings over the default model parameters (numbers only)."""
    known = {f.name: f for f in dataclasses.fields(ModelParams)}
    values: dict[str, float | int] = {}
    for text in overrides:
        name, sep, raw = text.partition("=")
        name = name.strip()
        if not sep or name not in known:
            raise SimulationError(f"--param {text!r}: expected NAME=VALUE with NAME one of the "
                                  f"model parameters (e.g. late_signup_share)")
        default = getattr(ModelParams(), name)
        if not isinstance(default, int | float) or isinstance(default, bool):
            raise SimulationError(f"--param {name}: only numeric parameters can be set here")
        try:
            values[name] = type(default)(raw.strip())
        except ValueError:
            raise SimulationError(f"--param {name}: {raw!r} is not a {type(default).__name__}"
                                  ) from None
    share = values.get("late_signup_share")
    if share is not None and not 0.0 <= float(share) < 1.0:
        raise SimulationError(f"--param late_signup_share must be in [0, 1), got {share}")
    return dataclasses.replace(ModelParams(), **values)


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    params = model_params(args.param)
    try:
        export_path, truth_file = simulate_to(
            args.out, args.users, args.seed, start_date=args.start_date,
            through_day=args.through_day, scenarios=args.scenario, plan=args.plan,
            params=params, progress=Progress("simulate"))
    except OSError as exc:
        raise SimulationError(f"cannot write {args.out!r}: {exc}") from None
    elapsed = time.perf_counter() - t0
    kind = "Parquet folder" if args.out.endswith("/") else "DuckDB file"
    print(f"wrote {kind} {str(export_path)!r} and {str(truth_file)!r} in {elapsed:.1f} s")
    t = read_truth(truth_file)
    print(f"  {t['users']:,} users, seed {t['seed']}, day 0 = {t['start_date']}, "
          f"pre-period {t['pre_days']} days, rollout days 0..{t['through_day']}")
    for name, rows in t["rows"].items():
        print(f"  {name:<20} {rows:>12,} rows")
    for s in t["scenarios"]:
        exp = s["expected"]
        what = exp.get("trigger") or exp.get("criterion")
        print(f"  scenario {s['name']} day {s['day']} {s['start']} .. {s['end']}: "
              f"expect {what} -> {exp['decision']}")
    return 0
