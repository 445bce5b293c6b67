"""Print our off-policy estimates on the Open Bandit Dataset next to OBP's (the fixture).

Runs in the project's environment: ``.venv/bin/python data/reference/obd_compare.py``. The same
computation as ``tests/test_replay_obd.py`` (export, validation, replay SQL, ranker, slot view),
as a table for docs/replay.md.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from whispers_lab.export import open_export
from whispers_lab.paths import DATA_DIR, PROJECT_ROOT
from whispers_lab.queries.replay import replay_candidates
from whispers_lab.replay.engine import prepare_replay
from whispers_lab.replay.obd import (
    OBP_NAMES,
    fixed_reward_model,
    obd_ranks,
    off_policy_slots,
    read_obd,
    slot_view,
    write_obd_export,
)

FIXTURE = PROJECT_ROOT / "tests" / "data" / "obd_reference.json"


def main() -> int:
    ref = json.loads(FIXTURE.read_text(encoding="utf-8"))
    print("| log | estimator | ours | ours 95% CI | OBP | OBP 95% CI | reward model |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for policy in ("random", "bts"):
            log = read_obd(DATA_DIR / "obd", policy, "all")
            path = write_obd_export(log, Path(tmp) / f"{policy}.duckdb", log.item_clicks())
            with open_export(path) as exp:
                data = prepare_replay(replay_candidates(exp), max_items=3)
            view = slot_view(data, obd_ranks(data))
            r = ref["logs"][policy]
            fixed = fixed_reward_model([r["reward_model_fixed"]["intercept"],
                                        *r["reward_model_fixed"]["coef"]], view)
            rows = [(e, "-" if e.estimator in ("iips", "sniips") else "OBP's fit, plugged in",
                     "fixed") for e in off_policy_slots(view, ("iips", "sniips"), n_boot=1000)]
            rows += [(e, "OBP's fit, plugged in", "fixed")
                     for e in off_policy_slots(view, ("dm", "dr"), reward_model=fixed,
                                               n_boot=1000)]
            rows += [(e, "each side's own cross-fit", "crossfit")
                     for e in off_policy_slots(view, ("dm", "dr"), n_boot=1000)]
            for e, model, key in rows:
                o = r["estimates"][OBP_NAMES[e.estimator]][key]
                print(f"| {policy} | {e.estimator} / {OBP_NAMES[e.estimator].upper()} | "
                      f"{e.value:.6f} | [{e.ci_low:.6f}, {e.ci_high:.6f}] | {o['value']:.6f} | "
                      f"[{o['ci_low']:.6f}, {o['ci_high']:.6f}] | {model} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
