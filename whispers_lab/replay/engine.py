"""Replay orchestration: logged requests in, metrics and off-policy estimates for any weights out.

Pure: everything here works on a DataFrame of candidate rows (the shape of
:func:`whispers_lab.queries.replay.replay_candidates`) prepared once into a :class:`ReplayData`
(arrays, the ranker's :class:`~whispers_lab.ranker.CandidateBatch`, the logged slates). Ranking
goes through :func:`whispers_lab.ranker.rank_batch`, the production scorer, so a replayed order
is exactly what the ranker would serve (ties broken by its rule: recency, then memory id).

Two kinds of numbers, never mixed:

* **On-policy replay** (:func:`replay`): ranking metrics of the new order against the logged
  clicks. *Biased*: a memory the logger did not show could not be clicked, so a ranking that
  promotes unshown memories is penalised and one that copies the logger is favoured. Useful as
  a sanity view and the only thing available when propensities are missing.
* **Off-policy estimates** (:func:`off_policy`): the click-through rate the new weights would
  get, from the logger's randomised slates (:mod:`whispers_lab.replay.ope`).

Labels: ``click`` (a ``whispers_used`` event on the memory) and ``feedback`` (the click label
restricted to requests whose user answered the survey within the window after the request,
zeroed where the answer was "not relevant"; the survey has no memory id, so it cannot label
memories directly). An optional item-level ``relevance`` column (graded, NaN = unknown) is
used as a third label when present.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from statsmodels.stats.proportion import proportion_confint

from ..ranker import (
    DEFAULT_MAX_ITEMS,
    CandidateBatch,
    prepare_candidates,
    rank_batch,
    rank_within_groups,
    signal_matrix,
)
from ..weights import DEFAULT_WEIGHTS, Weights
from .metrics import METRICS, Groups, RequestMetrics, ranking_metrics
from .ope import (
    ESTIMATORS,
    RECOMMENDED,
    Estimate,
    RewardModel,
    Scale,
    SlateLog,
    TargetSlates,
    build_slate_log,
    compare,
    estimate,
    fit_reward_model,
    target_slates,
)
from .uncertainty import Method, cluster_parts, interval, paired, poisson_sums

Cluster = Literal["request", "user"]
ON_POLICY_NOTE = ("on-policy replay of logged clicks: biased (only memories the logger showed "
                  "could be clicked)")


@dataclass(frozen=True, eq=False)
class ReplayData:
    """Logged candidates prepared once for replay: rows contiguous by request.

    ``row_request`` maps each row to its request (0..n_requests-1, in row order); ``users`` the
    user code of each request (-1 unknown -> the request is its own cluster); ``labels`` the
    item-level gains per label (NaN for requests without that label).
    """

    frame: pd.DataFrame
    batch: CandidateBatch
    groups: Groups
    row_request: np.ndarray
    labels: dict[str, np.ndarray]
    users: np.ndarray
    log: SlateLog
    max_items: int
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def signals(self) -> np.ndarray:
        """The ranker's five signals of every row (default shapes): the DR model's features.
        Computed on first use (``n_rows x 5`` floats), then cached."""
        if "signals" not in self._cache:
            self._cache["signals"] = signal_matrix(*self.batch.features, DEFAULT_WEIGHTS)
        return self._cache["signals"]

    @property
    def n_requests(self) -> int:
        return self.groups.n_groups

    @property
    def n_rows(self) -> int:
        return self.groups.n_rows

    @property
    def has_propensities(self) -> bool:
        return self.log.propensity_status != "missing"

    def reward_model(self, seed: int = 0) -> RewardModel:
        """The cross-fitted DR reward model (fitted on first use, then cached)."""
        key = f"reward_model_{seed}"
        if key not in self._cache:
            self._cache[key] = fit_reward_model(self.signals, self.log, seed=seed)
        return self._cache[key]

    def subset(self, request_mask: np.ndarray) -> ReplayData:
        """The requests where ``request_mask`` is true (e.g. a train or holdout split)."""
        rows = request_mask[self.row_request]
        return prepare_replay(self.frame.loc[rows].reset_index(drop=True),
                              max_items=self.max_items, sort=False)


def prepare_replay(frame: pd.DataFrame, *, max_items: int = DEFAULT_MAX_ITEMS,
                   sort: bool = True) -> ReplayData:
    """Validate and lay out logged candidates for repeated replay (done once per data set).

    ``frame`` needs the ranker's candidate columns plus ``request_id``, ``shown_position``
    (NULL = not shown), ``propensity`` (NULL allowed), ``click`` (0/1); optional ``user_id``,
    ``feedback_relevant`` (request-level bool, NULL = no answer) and ``relevance`` (item-level
    graded). Rows are sorted by ``request_id`` (stable) unless already contiguous.
    """
    frame = frame.reset_index(drop=True)
    batch = prepare_candidates(frame)  # factorises request ids once (first-appearance codes)
    codes = batch.request_codes
    if len(codes) > 1 and np.any(codes[1:] < codes[:-1]):
        if not sort:
            raise ValueError("rows of a request must be contiguous (pass sort=True)")
        frame = frame.iloc[np.argsort(codes, kind="stable")].reset_index(drop=True)
        batch = prepare_candidates(frame)
        codes = batch.request_codes
    groups = Groups.from_sorted_keys(codes)
    row_request = groups.row_group()
    n_req = groups.n_groups

    click = frame["click"].to_numpy(dtype=np.float64, na_value=0.0) if "click" in frame else \
        np.zeros(len(frame))
    click = (click > 0).astype(np.float64)
    labels: dict[str, np.ndarray] = {"click": click}
    if "feedback_relevant" in frame:
        fb = frame["feedback_relevant"].astype("boolean")
        known = fb.notna().to_numpy()
        yes = fb.fillna(False).to_numpy(dtype=bool)
        labels["feedback"] = np.where(known, click * yes, np.nan)
    if "relevance" in frame:
        labels["relevance"] = frame["relevance"].to_numpy(dtype=np.float64, na_value=np.nan)

    if "user_id" in frame:
        first = groups.offsets
        u = frame["user_id"].iloc[first]
        ucodes, _ = pd.factorize(u, sort=False)
        ucodes = np.asarray(ucodes, dtype=np.int64)
        missing = ucodes < 0
        ucodes[missing] = ucodes.max(initial=-1) + 1 + np.arange(missing.sum())
        users = ucodes
    else:
        users = np.arange(n_req, dtype=np.int64)

    shown = frame["shown_position"].to_numpy(dtype=np.float64, na_value=np.nan) \
        if "shown_position" in frame else np.full(len(frame), np.nan)
    prop = frame["propensity"].to_numpy(dtype=np.float64, na_value=np.nan) \
        if "propensity" in frame else np.full(len(frame), np.nan)
    log = build_slate_log(row_request, shown, click, prop, groups.sizes, L=max_items,
                          users=users)
    return ReplayData(frame, batch, groups, row_request, labels, users, log, max_items)


# ---------------------------------------------------------------------------------------------
# on-policy replay metrics


@dataclass(frozen=True, eq=False)
class ReplayResult:
    """Replay of one weight setting: per-request metrics per label and their summary.

    ``summary`` columns: label, metric, population, n, mean, ci_low, ci_high, method, note.
    Every mean states its population (``all`` requests carrying the label, or only those
    ``with_relevant`` items) and its n.
    """

    weights: Weights
    k: int
    ranks: np.ndarray
    per_request: dict[str, RequestMetrics]
    label_requests: dict[str, np.ndarray]
    summary: pd.DataFrame


def target_ranks(data: ReplayData, weights: Weights | None, *,
                 context_ranking: bool = True) -> np.ndarray:
    """1-based ranks of every candidate row under ``weights`` (None = the logger's own order,
    i.e. ``logged_score`` descending with the ranker's tie-break)."""
    if weights is None:
        return logged_ranks(data)
    out = rank_batch(data.batch, weights, max_items=data.max_items,
                     context_ranking=context_ranking)
    return out["rank"].to_numpy()


def logged_ranks(data: ReplayData) -> np.ndarray:
    """The logger's deterministic order: ``logged_score`` descending, then recency ascending,
    then memory id (the ranker's tie-break), so it reproduces the greedy slates it served."""
    if "_logged_ranks" not in data._cache:
        score = data.frame["logged_score"].to_numpy(dtype=np.float64)
        data._cache["_logged_ranks"] = rank_within_groups(
            data.row_request, score, data.batch.recency_hours, data.batch.memory_key)
    return data._cache["_logged_ranks"]


def _label_mask(data: ReplayData, label: str) -> np.ndarray:
    """Requests where the label is known for every row."""
    nan = np.isnan(data.labels[label])
    if not nan.any():
        return np.ones(data.n_requests, dtype=bool)
    unknown = np.bincount(data.row_request, weights=nan, minlength=data.n_requests)
    return unknown == 0


def request_metrics(data: ReplayData, ranks: np.ndarray, k: int = 6,
                    label: str = "click") -> tuple[RequestMetrics, np.ndarray]:
    """Per-request metrics for one label, over the requests that carry it (and that mask)."""
    mask = _label_mask(data, label)
    gains = data.labels[label]
    if mask.all():
        return ranking_metrics(ranks, gains, data.groups, k), mask
    rows = mask[data.row_request]
    sub = Groups.from_sizes(data.groups.sizes[mask])
    return ranking_metrics(ranks[rows], gains[rows], sub, k), mask


def _metric_parts(m: RequestMetrics) -> tuple[np.ndarray, list[tuple[str, str, int, int]]]:
    """Columns for one shared bootstrap: per metric and population, a numerator and a count."""
    cols, spec = [], []
    has = m.has_relevant.astype(np.float64)
    ones = np.ones(len(has))
    for pop, weight in (("all", ones), ("with_relevant", has)):
        for name in METRICS:
            v = getattr(m, name)
            if name == "ndcg":
                v = np.where(np.isnan(v), 0.0, v)
            spec.append((name, pop, len(cols), len(cols) + 1))
            cols.extend([v * weight, weight])
    return np.column_stack(cols), spec


def replay(data: ReplayData, weights: Weights | None, *, k: int = 6,
           labels: Sequence[str] | None = None, n_boot: int = 500, seed: int = 0,
           ci: bool = True, cluster: Cluster = "user", context_ranking: bool = True) -> ReplayResult:
    """On-policy replay of ``weights`` (None: the logger's own order) with bootstrap CIs.

    One Poisson-bootstrap matrix per label serves every metric and population at once.
    """
    ranks = target_ranks(data, weights, context_ranking=context_ranking)
    labels = list(data.labels) if labels is None else list(labels)
    per_request, masks, rows = {}, {}, []
    for label in labels:
        m, mask = request_metrics(data, ranks, k, label)
        per_request[label], masks[label] = m, mask
        if m.ndcg.size == 0:
            continue
        parts, spec = _metric_parts(m)
        clusters = data.users[mask] if (cluster == "user" and ci) else None
        units = cluster_parts(parts, clusters)
        sums = units.sum(axis=0)
        reps = poisson_sums(units, n_boot, seed) if ci else None
        for name, pop, num, den in spec:
            n = int(parts[:, den].sum() + 0.5)
            mean = sums[num] / sums[den] if sums[den] > 0 else float("nan")
            lo = hi = float("nan")
            if reps is not None and n > 1:
                with np.errstate(invalid="ignore", divide="ignore"):
                    r = reps[:, num] / reps[:, den]
                r = r[np.isfinite(r)]
                if len(r) > 1:
                    lo, hi = np.quantile(r, [0.025, 0.975])
            rows.append({"label": label, "metric": f"{name}@{k}", "population": pop, "n": n,
                         "mean": float(mean), "ci_low": float(lo), "ci_high": float(hi),
                         "method": (f"poisson bootstrap B={n_boot} over "
                                    f"{'users' if clusters is not None else 'requests'}")
                         if ci else "none",
                         "note": ON_POLICY_NOTE})
    used = DEFAULT_WEIGHTS if weights is None else weights
    summary = pd.DataFrame(rows, columns=["label", "metric", "population", "n", "mean", "ci_low",
                                          "ci_high", "method", "note"])
    return ReplayResult(used, k, ranks, per_request, masks, summary)


def compare_replay(data: ReplayData, weights_a: Weights | None, weights_b: Weights | None, *,
                   k: int = 6, label: str = "click", n_boot: int = 1000, seed: int = 0,
                   method: Method = "delta", cluster: Cluster = "user") -> pd.DataFrame:
    """Paired on-policy comparison (a - b) of every metric over the same requests, both
    populations, with CI and p-value. The ``with_relevant`` population is the same requests for
    both settings (relevance does not depend on the ranking).

    Default ``method="delta"``: for a mean of per-request (per-user-cluster) differences the
    normal approximation is valid and its p-value is not floored at ``2 / (B + 1)`` like a
    bootstrap one."""
    ra, rb = target_ranks(data, weights_a), target_ranks(data, weights_b)
    ma, mask = request_metrics(data, ra, k, label)
    mb, _ = request_metrics(data, rb, k, label)
    clusters = data.users[mask] if cluster == "user" else None
    rows = []
    for pop in ("all", "with_relevant"):
        for name in METRICS:
            va, vb = ma.values(name, pop), mb.values(name, pop)  # type: ignore[arg-type]
            cl = None if clusters is None else (clusters if pop == "all" else clusters[ma.has_relevant])
            if len(va) == 0:
                continue
            pa = np.column_stack([va, np.ones(len(va))])
            pb = np.column_stack([vb, np.ones(len(vb))])
            iv = paired(pa, _mean, pb, _mean, method=method, n_boot=n_boot, seed=seed, clusters=cl)
            rows.append({"label": label, "metric": f"{name}@{k}", "population": pop, "n": len(va),
                         "a": float(va.mean()), "b": float(vb.mean()), "diff": iv.estimate,
                         "ci_low": iv.ci_low, "ci_high": iv.ci_high, "p_value": iv.p_value,
                         "method": iv.method, "note": ON_POLICY_NOTE})
    return pd.DataFrame(rows, columns=["label", "metric", "population", "n", "a", "b", "diff",
                                       "ci_low", "ci_high", "p_value", "method", "note"])


def _mean(s: np.ndarray) -> np.ndarray:
    return s[..., 0] / s[..., 1]


# ---------------------------------------------------------------------------------------------
# off-policy


def targets(data: ReplayData, weights: Weights | None, *, context_ranking: bool = True) -> TargetSlates:
    """The target slates of ``weights`` (None: the logger's deterministic order) over the log."""
    return target_slates(data.log, target_ranks(data, weights, context_ranking=context_ranking),
                         data.row_request, data.max_items)


def off_policy(data: ReplayData, weights: Weights | None, *,
               estimators: Sequence[str] = ESTIMATORS, scale: Scale = "ctr", n_boot: int = 500,
               seed: int = 0, method: Method = "bootstrap", cluster: Cluster = "user",
               context_ranking: bool = True) -> list[Estimate]:
    """Off-policy estimates of the CTR ``weights`` would get (each with CI, or a reason)."""
    tgt = targets(data, weights, context_ranking=context_ranking)
    model = data.reward_model(seed) if any(e in ("dr", "dm") for e in estimators) and \
        data.has_propensities else None
    return [estimate(e, data.log, tgt, scale=scale, method=method, n_boot=n_boot, seed=seed,
                     cluster=cluster, reward_model=model,
                     features=None if model is None else data.signals,
                     row_request=data.row_request) for e in estimators]


def compare_off_policy(data: ReplayData, weights_a: Weights | None, weights_b: Weights | None, *,
                       estimator: str = RECOMMENDED, scale: Scale = "ctr", n_boot: int = 1000,
                       seed: int = 0, method: Method = "bootstrap",
                       cluster: Cluster = "user") -> Estimate:
    """Paired off-policy difference ``V(a) - V(b)`` over the same logged requests."""
    model = data.reward_model(seed) if estimator in ("dr", "dm") and data.has_propensities else None
    return compare(estimator, data.log, targets(data, weights_a), targets(data, weights_b),
                   scale=scale, method=method, n_boot=n_boot, seed=seed, cluster=cluster,
                   reward_model=model, features=None if model is None else data.signals,
                   row_request=data.row_request)


def point_estimate(data: ReplayData, tgt: TargetSlates, estimator: str = RECOMMENDED,
                   scale: Scale = "ctr") -> float:
    """The estimate alone (no interval): what the tuner maximises. NaN without support."""
    from .ope import estimator_parts

    model = data.reward_model() if estimator in ("dr", "dm") else None
    out = estimator_parts(estimator, data.log, tgt, scale=scale, reward_model=model,
                          features=None if model is None else data.signals,
                          row_request=data.row_request)
    if isinstance(out, str):
        return float("nan")
    parts, combine, _ = out
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(combine(parts.sum(axis=0)))


# ---------------------------------------------------------------------------------------------
# logged figures


def logged_ctr(data: ReplayData, requests: np.ndarray | None = None, *, n_boot: int = 500,
               seed: int = 0, cluster: Cluster = "user") -> dict[str, Any]:
    """Clicks per shown whisper as logged (over ``requests``, default all), with bootstrap CI."""
    log = data.log
    mask = np.ones(log.n_requests, dtype=bool) if requests is None else requests
    parts = np.column_stack([log.reward.sum(axis=1), log.filled.sum(axis=1)])[mask]
    clusters = data.users[mask] if cluster == "user" else None
    iv = interval(parts, _mean, n_boot=n_boot, seed=seed, clusters=clusters)
    return {"ctr": iv.estimate, "ci_low": iv.ci_low, "ci_high": iv.ci_high,
            "requests": int(mask.sum()), "impressions": int(parts[:, 1].sum()),
            "clicks": int(parts[:, 0].sum()), "method": iv.method}


def position_curve(data: ReplayData, weights: Weights | None = None, *, level: float = 0.95,
                   estimator: str = "sniips") -> pd.DataFrame:
    """CTR by position: as logged (Wilson CI) and, with ``weights``, the per-position
    self-normalised IPS estimate for that ranking (what each of its positions would get)."""
    log = data.log
    shown = log.filled.sum(axis=0)
    clicks = log.reward.sum(axis=0)
    lo, hi = proportion_confint(clicks, np.maximum(shown, 1), alpha=1 - level, method="wilson")
    out = pd.DataFrame({"position": np.arange(1, log.L + 1), "shown": shown.astype(int),
                        "clicks": clicks.astype(int),
                        "logged_ctr": np.where(shown > 0, clicks / np.maximum(shown, 1), np.nan),
                        "logged_ci_low": np.where(shown > 0, lo, np.nan),
                        "logged_ci_high": np.where(shown > 0, hi, np.nan)})
    if weights is not None or estimator == "logger":
        tgt = targets(data, weights)
        keep = log.complete & log.filled.any(axis=1)
        p = np.where(log.filled, log.pscore, np.inf)
        w = np.where(tgt.match, 1.0 / p, 0.0)[keep]
        num = (w * log.reward[keep]).sum(axis=0)
        den = w.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["target_ctr"] = np.where(den > 0, num / den, np.nan)
        out["target_matched"] = tgt.match[keep].sum(axis=0)
    return out


@dataclass(frozen=True)
class SanityCheck:
    """Replaying the logger's own ranking must reproduce what it logged on the slates it served."""

    estimator: str
    estimate: float | None
    ci_low: float | None
    ci_high: float | None
    logged_ctr: float
    logged_ci_low: float
    logged_ci_high: float
    greedy_requests: int
    consistent: bool
    sentence: str


def logger_sanity(data: ReplayData, *, estimator: str = "iips", n_boot: int = 500,
                  seed: int = 0) -> SanityCheck:
    """Off-policy estimate of the logger's deterministic ranking vs the CTR it logged on the
    requests it served greedily (slate = its own top slate: a random (1 - epsilon) share).

    Consistent when the logged CTR lies inside the estimate's CI.
    """
    tgt = targets(data, None)
    est = estimate(estimator, data.log, tgt, n_boot=n_boot, seed=seed)
    greedy = np.all(tgt.match | ~data.log.filled, axis=1) & data.log.filled.any(axis=1)
    logged = logged_ctr(data, greedy, n_boot=n_boot, seed=seed)
    ok = bool(est.ok and est.ci_low is not None and est.ci_low <= logged["ctr"] <= est.ci_high)
    if est.ok:
        sentence = (f"{estimator} estimate of the logger's own ranking {est.value:.4f} "
                    f"[{est.ci_low:.4f}, {est.ci_high:.4f}] vs CTR logged on its "
                    f"{logged['requests']} greedy slates {logged['ctr']:.4f}: "
                    + ("consistent" if ok else "INCONSISTENT"))
    else:
        sentence = f"no estimate for the logger's own ranking: {est.reason}"
    return SanityCheck(estimator, est.value, est.ci_low, est.ci_high, logged["ctr"],
                       logged["ci_low"], logged["ci_high"], logged["requests"], ok, sentence)
