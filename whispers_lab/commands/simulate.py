"""``whispers-lab simulate``: write a realistic simulated rollout export with planted problems.

Writes one export (a DuckDB file, or a Parquet folder when ``--out`` ends in ``/``) covering a
14-day pre-rollout period and rollout days 0..``--through-day``, plus the truth sidecar
``<export>.truth.json`` naming every planted scenario, its window and the verdict the rules
should reach. Both are written atomically. See ``docs/simulator.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import time
from pathlib import Path

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
    p.add_argument("--follow-reports", type=Path, default=None, metavar="DIR",
                   help="production follows the decisions in this report folder (day-NN/"
                        "decision.json of the days before the last one): a hold in them holds "
                        "the data too (default: the plan's calendar)")
    p.add_argument("--flip-time", default="09:00", metavar="HH:MM",
                   help="UTC time production applies a decision's stage change (with "
                        "--follow-reports; default: %(default)s, after the morning report)")
    p.add_argument("--no-flag-log", action="store_true",
                   help="leave the flag_changes table out (the workbench then takes the "
                        "rollout's state from its own decisions, else assumes the calendar)")
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
    stages = None
    if args.follow_reports is not None:
        from ..plan import load_plan
        from ..simulate.follow import stages_from_reports

        plan = load_plan(args.plan)
        try:
            flip = dt.time.fromisoformat(args.flip_time)
        except ValueError:
            raise SimulationError(f"--flip-time {args.flip_time!r} is not HH:MM") from None
        through = plan.last_day if args.through_day is None else args.through_day
        stages = stages_from_reports(plan, args.follow_reports, through, flip)
    try:
        export_path, truth_file = simulate_to(
            args.out, args.users, args.seed, start_date=args.start_date,
            through_day=args.through_day, scenarios=args.scenario, plan=args.plan,
            params=params, progress=Progress("simulate"), stages=stages,
            with_flag_log=not args.no_flag_log)
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
    stages = ", ".join(f"day {s['day']} {_stage(s)}" for s in t["rollout"].get("stages", []))
    if stages:
        print(f"  stages served: {stages}")
    for s in t["scenarios"]:
        exp = s["expected"]
        what = exp.get("trigger") or exp.get("criterion")
        print(f"  scenario {s['name']} day {s['day']} {s['start']} .. {s['end']}: "
              f"expect {what} -> {exp['decision']}")
    return 0


def _stage(s: dict) -> str:
    if s["audience"] == "percentage":
        return f"{s['percentage']:g}%"
    return "off" if s["audience"] == "none" else s["audience"]
