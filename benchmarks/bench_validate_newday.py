"""``whispers-lab validate`` of a 1M-user export's new day, old code against new, alternating
(issue 18's 5 s goal).

    .venv/bin/python benchmarks/bench_validate_newday.py --old 0c9bd22
    .venv/bin/python benchmarks/bench_validate_newday.py --old none --rounds 1
    .venv/bin/python benchmarks/bench_validate_newday.py --exports sim-new,steady-new --old d1ed007

``--exports`` (default ``daily``) names ``bench_report.py``'s exports, built into
``benchmarks/cache/`` when missing:

* ``daily``: the simulator's L export day-partitioned. Each round gives every version its own
  hard-linked copy without the last day's partitions and an empty cache folder
  (``WHISPERS_LAB_CACHE``), all made before any run (a hard link made or removed changes the
  file's change time, which the validation manifest's checksum holds); validates it (untimed,
  the cache then holds every earlier partition); adds the last day's partitions and rewrites
  the one-file ``ranking_candidates``; then times, per version, ``validate`` of the **new day**
  and once more (**warm**).
* ``sim-new``, ``steady-new``: a DuckDB file written anew each day under a new name (the
  simulator's L export; the independently made steady one). Each round gives every version an
  empty cache folder and times ``validate`` of the file as it stood the day before
  (``bench_report.duckdb_day_before``; **first file**: a cache that has seen nothing), then
  of the whole file (**new day**: a file never seen, whose days but the last the day before's
  held), then once more (**warm**).

The order of the versions is swapped every round. Each run is
``bench_validate_incremental.py``'s: its own process, timed from before the command's import
to its end, with the process's peak resident set. The old version runs from a temporary
``git worktree`` with the same virtualenv (``PYTHONPATH``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_report as b  # (the daily export and its copies)
from bench_validate_incremental import _run as validate  # (seconds, peak MB) of one run


def _timed(name: str, trees: dict[str, Path], v: str, state: str, export: Path, cache: Path,
           round_: int, runs: dict[str, list[tuple[float, float]]]) -> None:
    seconds, mb = validate(trees[v], [str(export)], cache)
    runs.setdefault(f"{name} | {v} | {state}", []).append((seconds, mb))
    print(f"{name} round {round_ + 1} {v:<14} {state:<10} {seconds:6.2f} s {mb:6.0f} MB",
          flush=True)


def _daily_round(name: str, source: Path, trees: dict[str, Path], order: list[str],
                 round_: int, runs: dict[str, list[tuple[float, float]]]) -> None:
    last = b._last_date(source)
    setups = {v: (Path(tempfile.mkdtemp(prefix="bench-validate-cache-")),
                  b._day_before(source, last)) for v in order}
    try:
        for v in order:
            cache, export = setups[v]
            validate(trees[v], [str(export)], cache)  # the day before, untimed
        for v in order:
            b._new_day(source, setups[v][1], last)
        for state in ("new day", "warm"):
            for v in order:
                cache, export = setups[v]
                _timed(name, trees, v, state, export, cache, round_, runs)
    finally:
        for cache, export in setups.values():
            shutil.rmtree(export, ignore_errors=True)
            shutil.rmtree(cache, ignore_errors=True)


def _file_round(name: str, source: Path, trees: dict[str, Path], order: list[str],
                round_: int, runs: dict[str, list[tuple[float, float]]]) -> None:
    before = b.duckdb_day_before(source)
    caches = {v: Path(tempfile.mkdtemp(prefix="bench-validate-cache-")) for v in order}
    try:
        for state, export in (("first file", before), ("new day", source), ("warm", source)):
            for v in order:
                _timed(name, trees, v, state, export, caches[v], round_, runs)
    finally:
        for cache in caches.values():
            shutil.rmtree(cache, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", default="none", help="commit to compare with ('none': new only)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--exports", default="daily", help="comma list of daily, sim-new, steady-new")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.exports.split(",") if n.strip()]
    sources = b._ensure_exports(names)
    old_tree = b._old_tree(args.old) if args.old != "none" else None
    trees = {"new": b.ROOT} if old_tree is None else {f"old {args.old}": old_tree, "new": b.ROOT}
    runs: dict[str, list[tuple[float, float]]] = {}
    try:
        for name in names:
            source = sources[name]
            for round_ in range(args.rounds):
                order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
                if name == "daily":
                    _daily_round(name, source, trees, order, round_, runs)
                else:
                    _file_round(name, source, trees, order, round_, runs)
    finally:
        if old_tree is not None:
            b._remove_old_tree(old_tree)
    print()
    print(f"whispers-lab validate of a 1M-user export's new day (goal: under 5 s); "
          f"{args.rounds} round(s), versions alternating")
    for key, values in runs.items():
        secs = [s for s, _ in values]
        mbs = [m for _, m in values]
        print(f"  {key:<40} {min(secs):6.2f}-{max(secs):.2f} s  {min(mbs):5.0f}-{max(mbs):.0f} MB")
    out = b.HERE / "results" / f"bench_validate_newday_{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps({"old": args.old, "rounds": args.rounds, "exports": names,
                               "runs": runs}, indent=1))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
