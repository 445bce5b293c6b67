"""The Open Bandit Dataset through the export path, against OBP's own estimates.

Both OBD logs of the shipped sample (campaign "all": uniform-random and Bernoulli-TS loggers,
10,000 slots each) are written as contract-valid exports by the adapter, opened and validated
like any export, queried with the replay SQL and replayed with the ranker; the slot view then
gives the off-policy estimates of the adapter's evaluation policy. The fixture
``tests/data/obd_reference.json`` holds OBP 0.5.7's numbers for the same policy on the same
files (``data/reference/obd_reference.py``, run in the reference environment).

* IPW and SNIPW: equal to OBP to 1e-6.
* DM and DR with OBP's fitted reward model plugged into our estimators: equal to 1e-6.
* DM and DR with each side's own cross-fitted fit of the same model specification (different
  folds, statsmodels vs scikit-learn): within 5% of OBP's value.
* Intervals (bootstrap percentile, ours 1000 resamples of requests, OBP's 10,000 of rounds):
  each end within 20% of OBP's interval width, for the estimators that share a model. With 4
  and 8 matched clicks the bootstrap distribution of IPW moves in steps of one click (on the
  random log 1/n * 1/p = 0.008, 14% of the width), so two honest bootstraps can land a step
  apart.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

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

pytestmark = pytest.mark.anchors

FIXTURE = Path(__file__).parent / "data" / "obd_reference.json"
REFERENCE = json.loads(FIXTURE.read_text(encoding="utf-8"))
LOGS = ("random", "bts")
N_BOOT = 1000
EXACT = 1e-6
MODEL_TOLERANCE = 0.05      # own fits of the same reward model: relative to OBP's value
INTERVAL_TOLERANCE = 0.20   # interval ends: share of OBP's interval width


@pytest.fixture(scope="module", params=LOGS)
def obd(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    policy = request.param
    log = read_obd(DATA_DIR / "obd", policy, "all")
    path = write_obd_export(log, tmp_path_factory.mktemp(f"obd-{policy}") / "obd.duckdb",
                            log.item_clicks())
    with open_export(path) as exp:  # validated against the contract
        frame = replay_candidates(exp)
    data = prepare_replay(frame, max_items=3)
    ranks = obd_ranks(data)
    view = slot_view(data, ranks)
    ref = REFERENCE["logs"][policy]
    own = {e.estimator: e for e in off_policy_slots(view, n_boot=N_BOOT)}
    fixed = fixed_reward_model([ref["reward_model_fixed"]["intercept"],
                                *ref["reward_model_fixed"]["coef"]], view)
    plugged = {e.estimator: e for e in off_policy_slots(view, ("dm", "dr"), reward_model=fixed,
                                                        n_boot=N_BOOT)}
    return {"policy": policy, "log": log, "data": data, "ranks": ranks, "view": view,
            "ref": ref, "own": own, "plugged": plugged}


def test_the_data_files_are_the_ones_obp_read():
    for rel, digest in REFERENCE["data"].items():
        assert hashlib.sha256((PROJECT_ROOT / rel).read_bytes()).hexdigest() == digest, rel


def test_the_export_holds_every_slot_and_click(obd: dict):
    log, data, ref = obd["log"], obd["data"], obd["ref"]
    assert data.n_requests == log.n_rounds == ref["n_rounds"]
    assert data.groups.sizes.min() == data.groups.sizes.max() == ref["n_items"]
    assert int(data.labels["click"].sum()) == ref["clicks"]
    assert obd["view"].log.complete.all()


def test_the_evaluation_policy_is_the_one_obp_evaluated(obd: dict):
    data, ranks = obd["data"], obd["ranks"]
    items = data.frame["memory_id"].str.slice(5).astype(int).to_numpy()
    top = np.full((data.n_requests, 3), -1, dtype=np.int64)
    shown = ranks <= 3
    top[data.row_request[shown], ranks[shown] - 1] = items[shown]
    # requests are ordered by request id, i.e. by the CSV's row number, as the fixture's list
    assert hashlib.sha256(top.tobytes()).hexdigest() == obd["ref"]["policy_top3_sha256"]
    assert int(obd["view"].target.match.sum()) == obd["ref"]["matched_slots"]


@pytest.mark.parametrize("estimator", ["iips", "sniips"])
def test_ipw_and_snipw_equal_obp(obd: dict, estimator: str):
    ours = obd["own"][estimator]
    theirs = obd["ref"]["estimates"][OBP_NAMES[estimator]]["fixed"]
    assert ours.status == "ok" and ours.value > 0
    assert ours.value == pytest.approx(theirs["value"], rel=EXACT, abs=1e-12)


@pytest.mark.parametrize("estimator", ["dm", "dr"])
def test_dm_and_dr_equal_obp_with_the_same_fitted_model(obd: dict, estimator: str):
    ours = obd["plugged"][estimator]
    theirs = obd["ref"]["estimates"][estimator]["fixed"]
    assert ours.value == pytest.approx(theirs["value"], rel=EXACT, abs=1e-12)


@pytest.mark.parametrize("estimator", ["dm", "dr"])
def test_dm_and_dr_with_own_fits_of_the_same_model_are_close(obd: dict, estimator: str):
    ours = obd["own"][estimator]
    theirs = obd["ref"]["estimates"][estimator]["crossfit"]
    assert ours.value == pytest.approx(theirs["value"], rel=MODEL_TOLERANCE)


@pytest.mark.parametrize("estimator", ["iips", "sniips", "dm", "dr"])
def test_intervals_agree_with_obps_bootstrap(obd: dict, estimator: str):
    ours = obd["plugged"].get(estimator) or obd["own"][estimator]
    theirs = obd["ref"]["estimates"][OBP_NAMES[estimator]]["fixed"]
    width = theirs["ci_high"] - theirs["ci_low"]
    assert width > 0
    assert ours.ci_low <= ours.value <= ours.ci_high
    assert abs(ours.ci_low - theirs["ci_low"]) <= INTERVAL_TOLERANCE * width
    assert abs(ours.ci_high - theirs["ci_high"]) <= INTERVAL_TOLERANCE * width


def _reference_python() -> Path | None:
    candidate = Path(os.environ.get("WHISPERS_REFERENCE_PYTHON")
                     or PROJECT_ROOT / ".venv-reference" / "bin" / "python")
    if not candidate.is_file():
        return None
    probe = subprocess.run([str(candidate), "-c", "import obp"], capture_output=True,
                           timeout=120, check=False)
    return candidate if probe.returncode == 0 else None


def test_the_reference_script_reproduces_the_fixture(tmp_path: Path):
    """Re-run OBP when its environment is there (``data/reference/README.md``): every point
    estimate, the policy checksum and the fitted model must come out as committed (the
    intervals too, up to the smaller bootstrap of the re-run)."""
    python = _reference_python()
    if python is None:
        pytest.skip("no reference environment with obp (.venv-reference, see "
                    "data/reference/README.md): compared with the committed fixture only")
    out = tmp_path / "obd.json"
    subprocess.run([str(python), str(PROJECT_ROOT / "data" / "reference" / "obd_reference.py"),
                    "--out", str(out), "--n-bootstrap", "200"], check=True, timeout=900)
    fresh = json.loads(out.read_text())
    assert fresh["data"] == REFERENCE["data"]
    for policy in LOGS:
        a, b = fresh["logs"][policy], REFERENCE["logs"][policy]
        assert a["policy_top3_sha256"] == b["policy_top3_sha256"]
        fa, fb = a["reward_model_fixed"], b["reward_model_fixed"]
        assert [fa["intercept"], *fa["coef"]] == pytest.approx([fb["intercept"], *fb["coef"]],
                                                              rel=1e-9, abs=1e-12)
        for name, entry in b["estimates"].items():
            for model, figures in entry.items():
                assert a["estimates"][name][model]["value"] == pytest.approx(figures["value"],
                                                                             rel=1e-9)
