"""``whispers-lab validate`` of a day-partitioned 1M-user export's new day, old code against
new, alternating (issue 18's 5 s goal).

    .venv/bin/python benchmarks/bench_validate_newday.py --old 0c9bd22
    .venv/bin/python benchmarks/bench_validate_newday.py --old none --rounds 1

The export is ``bench_report.py``'s ``daily`` one (the simulator's L export day-partitioned,
built into ``benchmarks/cache/`` when missing). Each round gives every version its own
hard-linked copy without the last day's partitions and an empty cache folder
(``WHISPERS_LAB_CACHE``), all made before any run (a hard link made or removed changes the
file's change time, which the validation manifest's checksum holds); validates it (untimed,
the cache then holds every earlier partition); adds the last day's partitions and rewrites
the one-file ``ranking_candidates``; then times, per version, ``validate`` of the **new day**
and once more (**warm**). The order of the versions is swapped every round. Each run is
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", default="none", help="commit to compare with ('none': new only)")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    source = b._ensure_exports(["daily"])["daily"]
    last = b._last_date(source)
    old_tree = b._old_tree(args.old) if args.old != "none" else None
    trees = {"new": b.ROOT} if old_tree is None else {f"old {args.old}": old_tree, "new": b.ROOT}
    runs: dict[str, list[tuple[float, float]]] = {}
    try:
        for round_ in range(args.rounds):
            order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
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
                        seconds, mb = validate(trees[v], [str(export)], cache)
                        runs.setdefault(f"{v} | {state}", []).append((seconds, mb))
                        print(f"round {round_ + 1} {v:<14} {state:<8} {seconds:6.2f} s "
                              f"{mb:6.0f} MB", flush=True)
            finally:
                for cache, export in setups.values():
                    shutil.rmtree(export, ignore_errors=True)
                    shutil.rmtree(cache, ignore_errors=True)
    finally:
        if old_tree is not None:
            b._remove_old_tree(old_tree)
    print()
    print(f"whispers-lab validate of a partitioned 1M-user export's new day (goal: under 5 s); "
          f"{args.rounds} round(s), versions alternating")
    for key, values in runs.items():
        secs = [s for s, _ in values]
        mbs = [m for _, m in values]
        print(f"  {key:<24} {min(secs):6.2f}-{max(secs):.2f} s  {min(mbs):5.0f}-{max(mbs):.0f} MB")
    out = b.HERE / "results" / f"bench_validate_newday_{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps({"old": args.old, "rounds": args.rounds, "runs": runs}, indent=1))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
