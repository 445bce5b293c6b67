"""End to end: healthy rollouts reported day by day must not be held for lack of evidence.

    .venv/bin/python benchmarks/e2e_healthy.py                     # seeds 1-5, 100,000 users
    .venv/bin/python benchmarks/e2e_healthy.py --mode evaluate     # in process (faster)
    .venv/bin/python benchmarks/e2e_healthy.py --old dffcd9b       # also the first build

Simulates five healthy rollouts (seeds 1 to 5, the simulator's realistic defaults, every day of
the plan) into ``benchmarks/cache/`` once, then decides every day 0-14 of each: by default with
``whispers-lab report`` (the notebook, the HTML, decision.json: what the scheduler runs), or
in-process with :func:`whispers_lab.evaluate.evaluate_day` (the same decision, no notebook).
With ``--old REV`` the first build is checked out into a temporary git worktree and its own
``whispers-lab report`` runs on the same exports, so before and after are measured on the same
data in one run. Prints each day's decision per seed and the totals: days held, days held for
lack of evidence, seeds that complete. Results go to ``benchmarks/results/e2e_healthy.json``.

The internal-phase days get a passing QA run each (``<export>.qa/``, as the demo writes them and
the QA job would leave them for the scheduled job): without one, ``qa_scenarios`` has no data
and those days are rightly held. The first build has no QA criterion and gets none.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CACHE = ROOT / "benchmarks" / "cache"
RESULTS = ROOT / "benchmarks" / "results" / "e2e_healthy.json"
SEEDS = (1, 2, 3, 4, 5)


def ensure_export(users: int, seed: int) -> Path:
    path = CACHE / f"healthy-{users}-{seed}.duckdb"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        print(f"simulating {path.name} ...", flush=True)
        subprocess.run([sys.executable, "-m", "whispers_lab.cli", "simulate", "--users",
                        str(users), "--seed", str(seed), "--out", str(path)], check=True,
                       cwd=ROOT, stdout=subprocess.DEVNULL)
    return path


def qa_folder(export: Path) -> Path:
    """A passing QA run for every internal-phase day (what the QA job leaves for the scheduled
    job, as in the demo), in a folder of its own beside the export; returns the folder."""
    from whispers_lab.commands.demo import write_demo_qa_results
    from whispers_lab.plan import load_plan

    folder = export.with_suffix(".qa")
    write_demo_qa_results(folder, load_plan())
    return folder


def qa_for_day(folder: Path | None, day: int) -> Path | None:
    """The day's QA results file in ``folder`` (None: the day has none)."""
    if folder is None:
        return None
    from whispers_lab.plan import load_plan
    from whispers_lab.qa import qa_results_path

    path = qa_results_path(folder, load_plan().day_start(day).date())
    return path if path.exists() else None


def decide_in_process(export: Path, days: range, qa_dir: Path | None = None
                      ) -> dict[int, dict[str, Any]]:
    from whispers_lab.evaluate import evaluate_day
    from whispers_lab.export import open_export
    from whispers_lab.plan import load_plan
    from whispers_lab.qa import read_qa_results

    plan = load_plan()
    out = {}
    with open_export(export) as ex:
        for d in days:
            path = qa_for_day(qa_dir, d)
            qa = read_qa_results(path) if path else None
            dec = evaluate_day(ex, d, plan, qa).decision
            out[d] = {"decision": dec.decision, "code": dec.code, "blocking": list(dec.blocking)}
    return out


def decide_with_command(cli: list[str], export: Path, days: range, out_dir: Path,
                        qa_dir: Path | None = None) -> dict[int, dict[str, Any]]:
    out = {}
    for d in days:
        qa = qa_for_day(qa_dir, d)
        subprocess.run([*cli, "report", "--export", str(export), "--day", str(d), "--out",
                        str(out_dir), *(["--qa-results", str(qa)] if qa else [])], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        path = out_dir / f"day-{d:02d}" / "decision.json"
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            out[d] = {"decision": "ERROR", "code": None, "blocking": []}
            continue
        out[d] = {"decision": doc.get("decision"), "code": doc.get("reason_code"),
                  "blocking": doc.get("blocking", [])}
    return out


def old_checkout(rev: str) -> tuple[Path, list[str]]:
    """A worktree of ``rev`` with its own venv; returns (folder, its whispers-lab command)."""
    folder = Path(tempfile.mkdtemp(prefix="whispers-old-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder / "src"),
                    rev], check=True, stdout=subprocess.DEVNULL)
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-e", str(folder / "src")],
                   check=True, stdout=subprocess.DEVNULL)
    return folder, [str(venv / "bin" / "whispers-lab")]


def run_seeds(exports: dict[int, Path], label: str,
              decide: Callable[[int, Path], dict[int, dict[str, Any]]], workers: int
              ) -> dict[int, dict[int, dict[str, Any]]]:
    """``decide(seed, export)`` for every seed, ``workers`` seeds at a time; prints each seed's
    days as it finishes (G = GO, H = NO_GO, R = ROLLBACK, E = ERROR)."""
    def one(item: tuple[int, Path]) -> tuple[int, dict[int, dict[str, Any]]]:
        t = time.time()
        seed, path = item
        result = decide(seed, path)
        line = " ".join(f"{d}:{v['decision'][0] if v['decision'] != 'NO_GO' else 'H'}"
                        for d, v in result.items())
        print(f"{label:4} seed {seed}: {line}   ({time.time() - t:.0f} s)", flush=True)
        return seed, result

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return dict(sorted(pool.map(one, exports.items())))


def totals(per_seed: dict[int, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    days = [v for seed in per_seed.values() for v in seed.values()]
    held = [v for v in days if v["decision"] != "GO"]
    evidence = [v for v in held if v["code"] in (None, "not_enough_evidence")
                and v["decision"] == "NO_GO"]
    complete = sum(all(v["decision"] == "GO" for d, v in seed.items() if d >= 12)
                   for seed in per_seed.values())
    causes: dict[str, int] = {}
    for v in held:
        for b in v["blocking"]:
            causes[b] = causes.get(b, 0) + 1
    return {"days": len(days), "held": len(held), "held_for_evidence": len(evidence),
            "seeds_passing_days_12_to_14": complete, "causes": causes}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--mode", choices=("report", "evaluate"), default="report")
    ap.add_argument("--old", default=None, metavar="REV",
                    help="also run this revision's `whispers-lab report` on the same exports")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--workers", type=int, default=2,
                    help="seeds reported at the same time (each day's report runs alone)")
    args = ap.parse_args(argv)
    days = range(0, 15)
    started = time.time()
    exports = {s: ensure_export(args.users, s) for s in args.seeds}
    runs: dict[str, dict[int, dict[int, dict[str, Any]]]] = {"new": {}}
    scratch = Path(tempfile.mkdtemp(prefix="whispers-e2e-"))
    try:
        cli_new = [sys.executable, "-m", "whispers_lab.cli"]
        # the QA runs of the internal days, given to the new build (the first build has no QA
        # criterion and no --qa-results)
        qa = {s: qa_folder(p) for s, p in exports.items()}
        if args.mode == "evaluate":
            runs["new"] = run_seeds(exports, "new", lambda s, p: decide_in_process(
                p, days, qa[s]), 1)
        else:
            runs["new"] = run_seeds(exports, "new", lambda s, p: decide_with_command(
                cli_new, p, days, scratch / f"new-{s}", qa[s]), args.workers)
        if args.old:
            folder, cli_old = old_checkout(args.old)
            try:
                runs["old"] = run_seeds(exports, "old", lambda s, p: decide_with_command(
                    cli_old, p, days, scratch / f"old-{s}"), args.workers)
            finally:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                                str(folder / "src")], check=False)
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    summary = {k: totals(v) for k, v in runs.items()}
    for k, v in summary.items():
        print(f"{k}: {v['held']} of {v['days']} days held ({v['held_for_evidence']} for lack of "
              f"evidence); {v['seeds_passing_days_12_to_14']} of {len(args.seeds)} seeds GO on "
              f"days 12-14; causes {v['causes']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"users": args.users, "seeds": args.seeds, "mode": args.mode,
                                    "old": args.old, "summary": summary,
                                    "days": {k: {str(s): v for s, v in r.items()}
                                             for k, r in runs.items()},
                                    "seconds": time.time() - started,
                                    "cpu_count": os.cpu_count()}, indent=2) + "\n")
    print(f"wrote {args.out} ({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
