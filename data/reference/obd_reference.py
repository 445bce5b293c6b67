"""OBP's own off-policy estimates on the Open Bandit Dataset sample: the reference fixture.

Runs in the reference environment (Python 3.10, obp 0.5.7 and its pinned stack; see
``data/reference/README.md``), never in the project's: obp does not install on Python >= 3.11.
It reads the sample CSVs committed under ``data/obd/`` with OBP's own loader and writes
``tests/data/obd_reference.json``, which ``tests/test_replay_obd.py`` compares with what the
replay engine computes through the OBD adapter (``whispers_lab/replay/obd.py``).

The evaluation policy is the adapter's ``OBD_WEIGHTS`` ranking, restated here with numpy:
score = context + 0.5 * frequency, where context = a / (1 + a) for the user-item affinity a and
frequency = min(1, log1p(clicks of the item in this log) / log1p(50)); ties go to the lower
item id (the ranker's tie-break on memory_id). The item it ranks k-th is shown at position k
(OBP's ``action_dist[round, item, k]`` = 1). A checksum of that top-3 list goes into the fixture
so the test can tell a policy mismatch from an estimator mismatch.

Reward models (for DM and DR): the replay engine's specification, a logistic regression of the
click on the shown item's features (its five ranker signals and two position dummies) with the
engine's ridge penalty (``fit_reward_model``: 1e-4 per observation, i.e. scikit-learn's
C = 1 / (1e-4 * n)), fitted with scikit-learn:

* ``fixed``: fitted once on all logged rows; its coefficients are stored so the test can plug
  the very same model into our estimators (exact comparison of the estimators);
* ``crossfit``: 2-fold cross-fitted, each round scored by the model fitted on the other fold, as
  the engine does with its own folds and fitter (statsmodels): compared within a tolerance.

Usage: ``.venv-reference/bin/python data/reference/obd_reference.py [--out PATH]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import warnings
from importlib.metadata import version
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "obd"
OUT = ROOT / "tests" / "data" / "obd_reference.json"
POSITIONS = 3
W_CONTEXT, W_FREQUENCY, FREQUENCY_CAP = 1.0, 0.5, 50.0
RIDGE, SEED, N_BOOT = 1e-4, 12345, 10_000


def logistic(n_train: int):
    """The engine's reward model specification in scikit-learn terms."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=1.0 / (RIDGE * n_train), max_iter=10_000)


def policy_top(affinity: np.ndarray, item_clicks: np.ndarray) -> np.ndarray:
    """(n_rounds, 3) item ids the evaluation policy shows at positions 1..3."""
    context = affinity / (1.0 + affinity)
    frequency = np.minimum(1.0, np.log1p(item_clicks) / np.log1p(FREQUENCY_CAP))
    score = W_CONTEXT * context + W_FREQUENCY * frequency[None, :]
    items = np.broadcast_to(np.arange(affinity.shape[1]), affinity.shape)
    order = np.lexsort((items, -score), axis=1)  # score descending, then item id ascending
    return order[:, :POSITIONS]


def features(affinity_of_item: np.ndarray, clicks_of_item: np.ndarray,
             position: np.ndarray) -> np.ndarray:
    """The engine's reward-model features: signals (context, recency, frequency, novelty,
    pinned) of an item with no recency, never shown, not pinned; position dummies (2, 3)."""
    n = len(position)
    context = affinity_of_item / (1.0 + affinity_of_item)
    frequency = np.minimum(1.0, np.log1p(clicks_of_item) / np.log1p(FREQUENCY_CAP))
    return np.column_stack([context, np.ones(n), frequency, np.ones(n), np.zeros(n),
                            position == 1, position == 2]).astype(float)


def all_q(model, affinity: np.ndarray, item_clicks: np.ndarray) -> np.ndarray:
    """(n_rounds, n_items, 3) predicted click probability of every item at every position."""
    n, m = affinity.shape
    q = np.empty((n, m, POSITIONS))
    for k in range(POSITIONS):  # three positions
        x = features(affinity.reshape(-1), np.tile(item_clicks, n), np.full(n * m, k))
        q[:, :, k] = model.predict_proba(x)[:, 1].reshape(n, m)
    return q


def one_log(behavior_policy: str, n_boot: int = N_BOOT) -> dict:
    from obp.dataset import OpenBanditDataset
    from obp.ope import (
        DirectMethod,
        DoublyRobust,
        InverseProbabilityWeighting,
        SelfNormalizedInverseProbabilityWeighting,
    )
    from sklearn.model_selection import KFold

    ds = OpenBanditDataset(behavior_policy=behavior_policy, campaign="all", data_path=DATA)
    fb = ds.obtain_batch_bandit_feedback()
    n, m = fb["n_rounds"], fb["n_actions"]
    affinity = ds.data[[f"user-item_affinity_{i}" for i in range(m)]].to_numpy(dtype=float)
    rows = ds.data.index.to_numpy()  # the CSV's row numbers, in OBP's (timestamp) order
    action, position, reward, pscore = fb["action"], fb["position"], fb["reward"], fb["pscore"]
    item_clicks = np.bincount(action, weights=reward, minlength=m)

    top = policy_top(affinity, item_clicks)
    action_dist = np.zeros((n, m, POSITIONS))
    for k in range(POSITIONS):
        action_dist[np.arange(n), top[:, k], k] = 1.0
    by_row = top[np.argsort(rows)]
    checksum = hashlib.sha256(np.ascontiguousarray(by_row, dtype=np.int64).tobytes()).hexdigest()

    x_logged = features(affinity[np.arange(n), action], item_clicks[action], position)
    fixed = logistic(n).fit(x_logged, reward)
    q_fixed = all_q(fixed, affinity, item_clicks)
    q_cross = np.empty_like(q_fixed)
    for train, test in KFold(n_splits=2, shuffle=True, random_state=SEED).split(x_logged):
        model = logistic(len(train)).fit(x_logged[train], reward[train])
        q_cross[test] = all_q(model, affinity[test], item_clicks)

    common = dict(reward=reward, action=action, position=position, pscore=pscore,
                  action_dist=action_dist)
    out: dict = {"n_rounds": int(n), "n_items": int(m), "clicks": int(reward.sum()),
                 "policy_top3_sha256": checksum,
                 "matched_slots": int(action_dist[np.arange(n), action, position].sum()),
                 "reward_model_fixed": {"intercept": float(fixed.intercept_[0]),
                                        "coef": [float(c) for c in fixed.coef_[0]]},
                 "estimates": {}}
    estimators = {
        "ipw": (InverseProbabilityWeighting(), {}),
        "snipw": (SelfNormalizedInverseProbabilityWeighting(), {}),
        "dm": (DirectMethod(), {}),
        "dr": (DoublyRobust(), {}),
    }
    for name, (est, _) in estimators.items():
        entry = {}
        for model_name, q in (("fixed", q_fixed), ("crossfit", q_cross)):
            kw = dict(common)
            if name == "dm":
                kw = {"position": position, "action_dist": action_dist}
            if name in ("dm", "dr"):
                kw["estimated_rewards_by_reg_model"] = q
            value = float(est.estimate_policy_value(**kw))
            interval = est.estimate_interval(**kw, alpha=0.05, n_bootstrap_samples=n_boot,
                                             random_state=SEED)
            entry[model_name] = {"value": value,
                                 "ci_low": float(interval["95.0% CI (lower)"]),
                                 "ci_high": float(interval["95.0% CI (upper)"])}
            if name in ("ipw", "snipw"):
                break  # no reward model: one entry
        out["estimates"][name] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--n-bootstrap", type=int, default=N_BOOT,
                        help="bootstrap samples of the intervals (the committed fixture: "
                             f"{N_BOOT}; the test's re-run uses fewer and compares the rest)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    doc = {
        "what": "OBP's off-policy estimates on the Open Bandit Dataset small sample (campaign "
                "'all'); made by data/reference/obd_reference.py",
        "versions": {"python": platform.python_version(), "obp": version("obp"),
                     "scikit-learn": version("scikit-learn"), "numpy": version("numpy"),
                     "pandas": version("pandas")},
        "data": {str(p.relative_to(ROOT)): hashlib.sha256(p.read_bytes()).hexdigest()
                 for p in sorted(DATA.glob("*/all/*.csv"))},
        "settings": {"policy": "score = context + 0.5 * frequency, ties by item id",
                     "ridge_per_observation": RIDGE, "folds": 2, "seed": SEED, "n_bootstrap": args.n_bootstrap,
                     "alpha": 0.05},
        "logs": {policy: one_log(policy, args.n_bootstrap) for policy in ("random", "bts")},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
