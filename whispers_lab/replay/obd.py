"""The Open Bandit Dataset (ZOZOTOWN) as an export, and OBP's view of it in the replay engine.

OBD is a real log of fashion-item recommendations: each row is one item shown at one of three
positions of a page, with the logging policy's propensity for that (item, position) and whether
it was clicked (data card: ``data/obd/README.md``). It is the closest public analogue of
``ranking_candidates``: a request, its candidates, what was shown where, with what probability,
and the click.

The adapter writes an OBD log as a contract-valid export (:func:`write_obd_export`), so it goes
through exactly the code path of a production export: :func:`~whispers_lab.export.open_export`
(validated), :func:`~whispers_lab.queries.replay.replay_candidates` (clicks joined from
telemetry), :func:`~whispers_lab.replay.engine.prepare_replay` and the ranker.

Mapping (one OBD row = one request)

* ``request_id`` ``obd-<policy>-<campaign>-<row>``; the row's user is the request's own
  (OBD has no user id, so a request is its own cluster); time = the impression's timestamp.
* candidates: every item of the campaign (``memory_id`` ``item-NN``), with
  ``context_similarity = a / (1 + a)`` for the row's user-item affinity ``a`` (a count of past
  clicks, 0..2 in the sample), ``use_count`` = the item's clicks in another log (a popularity
  signal learned elsewhere), ``recency_hours`` 0, never shown before, not pinned,
  ``logged_score`` 0 (the loggers, uniform random and Bernoulli Thompson sampling, have no
  deterministic score).
* the shown item: ``shown_position`` = OBD's position (1, 2, 3), ``propensity`` = OBD's
  ``propensity_score``; a click becomes a ``whispers_used`` telemetry event.

OBP's view: each OBD row records a single slot of a page whose other two slots are in other,
unlinked rows. The slate estimators of :mod:`whispers_lab.replay.ope` assume every position of a
logged slate is in the log, so :func:`slot_view` re-expresses each request as a one-position
slate, the position becoming context: the target's item for a request is the item it ranks at
that request's logged position. This is OBP's own formulation (an action is an item, the
position is given, ``action_dist[i, item, position]``), under which our ``iips`` and ``sniips``
are OBP's IPW and SNIPW exactly, and ``dm`` / ``dr`` are OBP's DM and DR with the same reward
model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from ..contract import WHISPERS_ENDPOINT
from ..errors import ExportError
from ..export import write_export
from ..weights import DEFAULT_WEIGHTS, Weights
from .engine import ReplayData, target_ranks
from .ope import (
    Estimate,
    RewardModel,
    Scale,
    SlateLog,
    TargetSlates,
    build_slate_log,
    estimate,
    fit_reward_model,
    target_slates,
)

BehaviorPolicy = Literal["random", "bts"]
Campaign = Literal["all", "men", "women"]
#: Positions of the ZOZOTOWN recommendation widget (left, centre, right).
POSITIONS = 3
#: Estimators reproduced against OBP (ours -> OBP's name).
OBP_NAMES: dict[str, str] = {"iips": "ipw", "sniips": "snipw", "dm": "dm", "dr": "dr"}
#: The evaluation policy of the OBD check: rank items by the user's affinity, then by
#: popularity (``use_count``). The other weights are 0, so the score is exactly
#: ``context + 0.5 * frequency`` (what the OBP reference script recomputes).
OBD_WEIGHTS = Weights(context=1.0, recency=0.0, frequency=0.5, novelty=0.0, pinned=0.0,
                      version="obd-affinity-popularity")
_REQUIRED = ("timestamp", "item_id", "position", "click", "propensity_score")


@dataclass(frozen=True)
class ObdLog:
    """One OBD log (a behaviour policy on a campaign), rows as in the CSV file."""

    behavior_policy: str
    campaign: str
    rows: pd.DataFrame          # row, timestamp (naive UTC), item_id, position, click, propensity
    affinity: np.ndarray        # (n_rows, n_items) user-item affinity
    n_items: int
    source: Path

    @property
    def n_rounds(self) -> int:
        return len(self.rows)

    def item_clicks(self) -> np.ndarray:
        """Clicks per item (the popularity signal of the OBD check's evaluation policy)."""
        return np.bincount(self.rows["item_id"].to_numpy(), weights=self.rows["click"].to_numpy(),
                           minlength=self.n_items)


def read_obd(folder: str | Path, behavior_policy: BehaviorPolicy = "random",
             campaign: Campaign = "all") -> ObdLog:
    """Read ``<folder>/<behavior_policy>/<campaign>/<campaign>.csv`` (OBD's layout, as shipped
    with obp) and its ``item_context.csv``. Raises :class:`ExportError` naming the file and
    column when the file does not look like OBD."""
    base = Path(folder) / behavior_policy / campaign
    path = base / f"{campaign}.csv"
    items_path = base / "item_context.csv"
    for p in (path, items_path):
        if not p.is_file():
            raise ExportError(f"OBD file {str(p)!r} does not exist (expected OBD's layout "
                              f"<folder>/<behavior_policy>/<campaign>/<campaign>.csv)")
    raw = pd.read_csv(path, index_col=0)
    missing = [c for c in _REQUIRED if c not in raw.columns]
    if missing:
        raise ExportError(f"OBD file {str(path)!r} lacks column(s) {missing}")
    n_items = len(pd.read_csv(items_path, index_col=0))
    aff_cols = [f"user-item_affinity_{i}" for i in range(n_items)]
    missing = [c for c in aff_cols if c not in raw.columns]
    if missing:
        raise ExportError(f"OBD file {str(path)!r} lacks {len(missing)} user-item affinity "
                          f"column(s), e.g. {missing[0]!r} ({n_items} items in {items_path.name})")
    item = raw["item_id"].to_numpy()
    if item.min() < 0 or item.max() >= n_items:
        raise ExportError(f"OBD file {str(path)!r}: column 'item_id' outside 0..{n_items - 1}")
    pos = raw["position"].to_numpy()
    if not np.isin(pos, np.arange(1, POSITIONS + 1)).all():
        raise ExportError(f"OBD file {str(path)!r}: column 'position' outside 1..{POSITIONS}")
    p = raw["propensity_score"].to_numpy(dtype=float)
    if not ((p > 0) & (p <= 1)).all():
        raise ExportError(f"OBD file {str(path)!r}: column 'propensity_score' outside (0, 1]")
    ts = pd.to_datetime(raw["timestamp"], utc=True).dt.tz_localize(None)
    rows = pd.DataFrame({"row": raw.index.to_numpy(), "timestamp": ts.to_numpy(),
                         "item_id": item.astype(np.int64), "position": pos.astype(np.int64),
                         "click": raw["click"].to_numpy(dtype=np.int64),
                         "propensity": p})
    return ObdLog(behavior_policy, campaign, rows, raw[aff_cols].to_numpy(dtype=float), n_items,
                  path)


def _ids(prefix: str, values: np.ndarray, width: int) -> np.ndarray:
    return np.char.add(prefix, np.char.zfill(values.astype(str), width)).astype(object)


def obd_tables(log: ObdLog, use_count: np.ndarray) -> dict[str, pd.DataFrame]:
    """The contract tables of ``log`` (see the module docstring for the mapping).

    ``use_count``: per-item popularity (e.g. another log's :meth:`ObdLog.item_clicks`)."""
    rows = log.rows
    n, m = log.n_rounds, log.n_items
    if len(use_count) != m:
        raise ValueError(f"use_count has {len(use_count)} items, the log {m}")
    tag = f"obd-{log.behavior_policy}-{log.campaign}-"
    request = _ids(tag, rows["row"].to_numpy(), 5)
    user = _ids(f"{tag}user-", rows["row"].to_numpy(), 5)
    ts = rows["timestamp"].to_numpy()
    item_ids = _ids("item-", np.arange(m), 2)
    # candidates: every item for every request, the shown one with its position and propensity
    cand_item = np.tile(np.arange(m), n)
    cand_req = np.repeat(np.arange(n), m)
    shown = cand_item == rows["item_id"].to_numpy()[cand_req]
    aff = log.affinity.reshape(-1)
    candidates = pd.DataFrame({
        "request_id": request[cand_req],
        "memory_id": item_ids[cand_item],
        "context_similarity": aff / (1.0 + aff),
        "recency_hours": np.zeros(n * m),
        "use_count": np.asarray(use_count, dtype=np.int64)[cand_item],
        "last_shown_hours": np.full(n * m, np.nan),
        "pinned": np.zeros(n * m, dtype=bool),
        "logged_score": np.zeros(n * m),
        "shown_position": pd.array(np.where(shown, rows["position"].to_numpy()[cand_req], 0),
                                   dtype="Int64"),
        "propensity": np.where(shown, rows["propensity"].to_numpy()[cand_req], np.nan),
    })
    candidates.loc[~shown, "shown_position"] = pd.NA
    api_logs = pd.DataFrame({
        "request_id": request, "timestamp": ts, "endpoint": WHISPERS_ENDPOINT, "user_id": user,
        "device_id": user, "status": np.full(n, 200, dtype=np.int64),
        "duration_ms": np.zeros(n), "ranking_ms": np.full(n, np.nan),
        "weight_source": pd.array([None] * n, dtype="object"),
        "weights_version": f"obd-{log.behavior_policy}",
    })
    clicked = rows["click"].to_numpy() > 0
    item_of_row = item_ids[rows["item_id"].to_numpy()]
    shown_ev = pd.DataFrame({
        "event_id": np.char.add(request.astype(str), "-shown").astype(object),
        "created_at": ts, "user_id": user, "device_id": user, "event_type": "whispers_shown",
        "request_id": request, "whisper_id": item_of_row,
        "position": rows["position"].to_numpy(dtype=np.int64)})
    used_ev = shown_ev.loc[clicked].assign(
        event_id=lambda d: d["event_id"].str.replace("-shown", "-used", regex=False),
        event_type="whispers_used",
        created_at=lambda d: d["created_at"] + pd.Timedelta(seconds=1))
    telemetry = pd.concat([shown_ev, used_ev], ignore_index=True)
    first = pd.Timestamp(ts.min())
    users = pd.DataFrame({"user_id": user, "signup_at": first, "is_internal": False,
                          "micro_memory_count": np.full(n, m, dtype=np.int64),
                          "engagement_score": np.zeros(n)})
    exposures = pd.DataFrame({"user_id": pd.Series([], dtype=object),
                              "exposed_at": pd.Series([], dtype="datetime64[us]"),
                              "variant": pd.Series([], dtype=object)})
    return {"users": users, "exposures": exposures, "telemetry": telemetry,
            "api_logs": api_logs, "ranking_candidates": candidates}


def write_obd_export(log: ObdLog, path: str | Path, use_count: np.ndarray) -> Path:
    """Write ``log`` as an export (DuckDB file, or a Parquet folder for a path ending in /)."""
    return write_export(obd_tables(log, use_count), path)


# ---------------------------------------------------------------------------------------------
# OBP's view: one logged slot per request


@dataclass(frozen=True, eq=False)
class SlotView:
    """Each request as a one-position slate at its logged slot (see the module docstring)."""

    log: SlateLog
    target: TargetSlates
    slot: np.ndarray          # (n_requests,) the logged position, 1..3
    features: np.ndarray      # (n_rows, d) reward-model features: ranker signals + slot dummies
    row_request: np.ndarray


def slot_view(data: ReplayData, ranks: np.ndarray) -> SlotView:
    """The slot view of ``data`` for a target ranking (1-based ``ranks`` of every row).

    Raises ``ValueError`` when a request has more than one shown row (not an OBD-like log)."""
    rq = data.row_request
    frame = data.frame
    shown = frame["shown_position"].to_numpy(dtype=np.float64, na_value=np.nan)
    has = ~np.isnan(shown)
    per_request = np.bincount(rq, weights=has, minlength=data.n_requests)
    if np.any(per_request > 1):
        raise ValueError("slot_view needs one shown row per request (OBD's layout); "
                         f"{int((per_request > 1).sum())} requests show more")
    slot = np.zeros(data.n_requests, dtype=np.int64)
    slot[rq[has]] = shown[has].astype(np.int64)
    k = slot[rq]
    sizes = data.groups.sizes[rq]
    # rotate each request's ranking so that its k-th item comes first: still a permutation
    slot_rank = np.where(ranks >= k, ranks - k + 1, ranks + sizes - k + 1)
    click = data.labels["click"]
    prop = frame["propensity"].to_numpy(dtype=np.float64, na_value=np.nan)
    log = build_slate_log(rq, np.where(has, 1.0, np.nan), click, prop, data.groups.sizes, L=1,
                          users=data.users)
    target = target_slates(log, slot_rank, rq, max_items=1)
    dummies = (k[:, None] == np.arange(2, POSITIONS + 1)[None, :]).astype(np.float64)
    return SlotView(log, target, slot, np.column_stack([data.signals, dummies]), rq)


def obd_ranks(data: ReplayData, weights: Weights | None = OBD_WEIGHTS) -> np.ndarray:
    """The target's ranks (the ranker with ``weights``, full candidate list) of every row."""
    return target_ranks(data, weights if weights is not None else DEFAULT_WEIGHTS)


def off_policy_slots(view: SlotView, estimators: tuple[str, ...] = tuple(OBP_NAMES), *,
                     reward_model: RewardModel | None = None, n_boot: int = 1000, seed: int = 0,
                     scale: Scale = "ctr") -> list[Estimate]:
    """Off-policy estimates on the slot view: click-through rate per logged slot (with one
    slot per request, ``ctr`` and ``clicks`` are the same number), each with its bootstrap CI
    over requests. ``reward_model`` defaults to the engine's cross-fitted logistic model on
    the view's features."""
    model = reward_model
    if model is None and any(e in ("dm", "dr") for e in estimators):
        model = fit_reward_model(view.features, view.log, seed=seed)
    return [estimate(e, view.log, view.target, scale=scale, n_boot=n_boot, seed=seed,
                     cluster="request", reward_model=model, features=view.features,
                     row_request=view.row_request) for e in estimators]


def fixed_reward_model(coefficients: np.ndarray, view: SlotView) -> RewardModel:
    """A reward model with given coefficients ``[intercept, beta...]`` (no cross-fitting): how
    the test plugs OBP's fitted logistic model into our estimators."""
    c = np.asarray(coefficients, dtype=np.float64)
    if c.size != 1 + view.features.shape[1]:
        raise ValueError(f"{c.size} coefficients for {view.features.shape[1]} features + intercept")
    return RewardModel((c,), np.zeros(view.log.n_requests, dtype=np.int64),
                       view.features.shape[1], 1, "fixed coefficients")
