"""Off-policy estimates of the clicks a new ranking would get, from logged slates.

The log
-------
Each logged request showed a slate of up to ``L`` (= 6) memories; for each shown memory we have
its position, whether it was clicked (a ``whispers_used`` event) and its **marginal propensity**
``p = P_logger(this memory at this position | request)``. The logger shows its deterministic
ranking, except on a random share ``epsilon`` of requests where it shows a uniformly random
slate, so every (memory, position) pair has ``p >= epsilon / n_candidates > 0``.

The target
----------
A weight setting ranks each request deterministically (:func:`whispers_lab.ranker.rank_batch`):
its propensity is 1 for its own slate and 0 for everything else. The importance weight of a
logged position is therefore ``1[target put the logged memory at that position] / p``; only
requests where the log agrees with the target (mostly the logger's randomised requests, plus
positions where both rankings agree) carry information. Support is reported with every
estimate (matched positions / slates, effective sample size), and an estimate that rests on no
matched data returns ``status="no_support"`` with a reason instead of a number.

The value
---------
``V(pi) = E[sum over the slate's positions of clicks]``: expected clicks per request. The
click-through rate per shown whisper is ``V / E[slate length]``; the target's slate length is
known exactly (``min(L, candidates)``), so the rate is a ratio of two sums (``scale="ctr"``,
the default) and ``scale="clicks"`` gives clicks per request.

Estimators (Open Bandit Pipeline's slate family; each also self-normalised)
----------------------------------------------------------------------------
``sips``  standard IPS, whole-slate weight ``1[slate = target slate] / P_logger(slate)``.
          No assumption on user behaviour; needs the joint slate propensity; with a
          deterministic target and 6 of ~15 random positions its support is ~0 except where the
          target reproduces the logger's own slate.
``iips``  independent IPS, per-position weight ``1[item_l = target item_l] / p_l``. Assumes the
          click at a position depends only on the memory and that position (the
          position-based / item-position click model). Needs only the logged marginals.
``rips``  reward-interaction IPS, prefix weight ``1[items_1..l = target_1..l] / P(prefix)``.
          Assumes the cascade model (a click at l depends on positions 1..l). Needs prefix
          propensities.
``dr``    doubly robust form of ``iips`` with a reward model ``q(memory, position)``:
          ``sum_l q(target_l, l) + w_l * (click_l - q(item_l, l))``. Unbiased if the
          propensities are right (under the position-based assumption) *or* the reward model
          is; fitted by 2-fold cross-fitting by user so no request is scored by a model that
          saw it. The model is a logistic regression of click on the ranker's five signals plus
          one intercept per position (:func:`fit_reward_model`).
``dm``    the reward model alone (direct method): biased when the model is wrong; reported only
          as a reference.
``sn*``   self-normalised variants divide each position's weighted clicks by the mean weight
          (whose expectation is the share of target slates that reach that position). Biased
          but consistent; lower variance.

The log only holds marginals. Joint (slate / prefix) propensities for ``sips`` / ``rips`` are
derived under the epsilon-uniform logger model, after checking that every logged marginal fits
it (``p = (1 - eps) * 1[greedy position] + eps / n``); if the marginals do not fit, these two
estimators return ``status="not_computable"`` with the reason. Without propensities at all no
estimator here can be computed (``status="no_propensities"``): only the biased on-policy replay
of :mod:`whispers_lab.replay.engine` remains.

Recommended default: ``sniips`` (self-normalised independent IPS), with ``dr`` as the check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import statsmodels.api as sm

from ..results import _clean
from .uncertainty import Method, interval, paired

ESTIMATORS: tuple[str, ...] = ("iips", "sniips", "rips", "snrips", "sips", "snsips", "dr", "dm")
RECOMMENDED = "sniips"
Scale = Literal["ctr", "clicks"]
Status = Literal["ok", "weak_support", "no_support", "no_propensities", "not_computable",
                 "no_data"]
#: A position whose mean importance weight is both more than ``WEIGHT_Z`` standard errors and
#: more than ``WEIGHT_TOLERANCE`` away from its expectation 1 marks the estimate
#: ``weak_support`` (see :func:`_support`). Two conditions, because the weights are heavy-tailed
#: (rare ``n / epsilon`` weights) and their sample standard error alone is unreliable.
WEIGHT_Z = 5.0
WEIGHT_TOLERANCE = 0.2

ESTIMATOR_INFO: dict[str, tuple[str, str]] = {
    "sips": ("standard (whole-slate) IPS", "none on user behaviour; joint slate propensities"),
    "snsips": ("self-normalised standard IPS", "as sips; biased, consistent"),
    "iips": ("independent (per-position) IPS",
             "position-based click model: a click depends only on the memory and its position"),
    "sniips": ("self-normalised independent IPS", "as iips; biased, consistent"),
    "rips": ("reward-interaction (cascade) IPS",
             "cascade: a click at position l depends only on positions 1..l; prefix propensities"),
    "snrips": ("self-normalised reward-interaction IPS", "as rips; biased, consistent"),
    "dr": ("doubly robust independent IPS",
           "position-based model, and correct propensities or a correct reward model"),
    "dm": ("direct method (reward model only)", "the reward model is correct"),
}


# ---------------------------------------------------------------------------------------------
# the logged slates


@dataclass(frozen=True, eq=False)
class LoggerModel:
    """What the logged marginals say about the logger (see :func:`infer_logger`)."""

    kind: Literal["epsilon_uniform", "unknown", "none"]
    epsilon: float | None
    max_error: float | None
    note: str


@dataclass(frozen=True, eq=False)
class SlateLog:
    """Logged slates as ``(n_requests, L)`` matrices, built once per data set.

    ``row_at[i, l]`` is the candidate row shown at position ``l + 1`` of request ``i`` (-1 if the
    slate was shorter); ``reward`` its click; ``pscore`` its marginal propensity (NaN where
    missing or empty); ``prefix_pscore`` the joint propensity of positions ``1..l+1`` under the
    inferred logger model (None when unavailable, see ``logger.note``).
    """

    L: int
    row_at: np.ndarray
    reward: np.ndarray
    pscore: np.ndarray
    filled: np.ndarray
    n_candidates: np.ndarray
    complete: np.ndarray          # request has a propensity for every shown position
    prefix_pscore: np.ndarray | None
    logger: LoggerModel
    users: np.ndarray | None = None

    @property
    def n_requests(self) -> int:
        return len(self.n_candidates)

    @property
    def propensity_status(self) -> Literal["complete", "partial", "missing"]:
        shown = self.filled.any(axis=1)
        ok = self.complete & shown
        if ok.sum() == 0:
            return "missing"
        return "complete" if ok.sum() == shown.sum() else "partial"


def build_slate_log(request_index: np.ndarray, shown_position: np.ndarray, click: np.ndarray,
                    propensity: np.ndarray, n_candidates: np.ndarray, *, L: int = 6,
                    users: np.ndarray | None = None, tol: float = 1e-6) -> SlateLog:
    """Scatter candidate rows into per-request slate matrices (O(rows), no loop over requests).

    ``request_index``: request of each candidate row (0..n_requests-1); ``shown_position``:
    1..L or 0/NaN when not shown; ``propensity`` NaN where missing.
    """
    n_req = len(n_candidates)
    pos = np.nan_to_num(np.asarray(shown_position, dtype=np.float64), nan=0.0).astype(np.int64)
    rows = np.flatnonzero((pos >= 1) & (pos <= L))
    flat = request_index[rows] * L + (pos[rows] - 1)
    row_at = np.full(n_req * L, -1, dtype=np.int64)
    row_at[flat] = rows
    row_at = row_at.reshape(n_req, L)
    filled = row_at >= 0
    safe = np.where(filled, row_at, 0)
    reward = np.where(filled, np.asarray(click, dtype=np.float64)[safe], 0.0)
    prop = np.asarray(propensity, dtype=np.float64)
    pscore = np.where(filled, prop[safe], np.nan)
    complete = ~np.any(filled & ~(pscore > 0), axis=1)
    n_candidates = np.asarray(n_candidates, dtype=np.int64)
    logger, greedy = infer_logger(pscore, filled, n_candidates, complete, tol=tol)
    prefix = None
    if logger.kind == "epsilon_uniform" and greedy is not None:
        eps = float(logger.epsilon)  # type: ignore[arg-type]
        j = np.arange(L)
        # probability that a uniformly random slate reproduces the first l+1 logged positions
        denom = np.maximum(n_candidates[:, None] - j[None, :], 1).astype(np.float64)
        rand_prefix = np.cumprod(1.0 / denom, axis=1)
        greedy_prefix = np.cumprod(greedy, axis=1)
        prefix = np.where(filled, (1 - eps) * greedy_prefix + eps * rand_prefix, np.nan)
    return SlateLog(L, row_at, reward, pscore, filled, n_candidates, complete, prefix, logger,
                    users)


def infer_logger(pscore: np.ndarray, filled: np.ndarray, n_candidates: np.ndarray,
                 complete: np.ndarray, tol: float = 1e-6) -> tuple[LoggerModel, np.ndarray | None]:
    """Check the logged marginals against the epsilon-uniform logger; return it and greedy flags.

    Under that logger a shown memory has ``p = 1 - eps + eps / n`` at its greedy position and
    ``p = eps / n`` elsewhere. ``eps`` is read off the rows (each row gives two candidate values)
    and every row must fit one of the two within ``tol``; else the kind is ``"unknown"``.
    """
    use = filled & complete[:, None]
    if not use.any():
        return LoggerModel("none", None, None, "no logged propensities"), None
    n = np.broadcast_to(n_candidates[:, None], pscore.shape)[use].astype(np.float64)
    p = pscore[use]
    low_eps = p * n                                   # if the row is off the greedy position
    with np.errstate(divide="ignore", invalid="ignore"):
        high_eps = np.where(n > 1, (1 - p) * n / (n - 1), 0.0)  # if it is on it
    cands = []
    for c in (low_eps[low_eps <= 1 + tol], high_eps[(high_eps >= -tol) & (high_eps <= 1 + tol)]):
        if len(c):
            cands.append(float(np.clip(np.median(c), 0.0, 1.0)))
    best: tuple[float, float, np.ndarray] | None = None
    for eps in cands:
        p_low = eps / n
        p_high = 1 - eps + eps / n
        err = np.minimum(np.abs(p - p_low), np.abs(p - p_high))
        if best is None or err.max() < best[1]:
            on = np.abs(p - p_high) <= np.abs(p - p_low)
            best = (eps, float(err.max()), on)
    if best is None or best[1] > tol:
        err = None if best is None else best[1]
        return LoggerModel("unknown", None, err,
                           "the logged marginals do not fit an epsilon-uniform logger "
                           f"(max deviation {err}); joint slate/prefix propensities are unknown"), None
    eps, err, on = best
    greedy = np.zeros(pscore.shape)
    greedy[use] = on
    note = (f"marginals fit an epsilon-uniform logger with epsilon = {eps:.4g} "
            f"(max deviation {err:.2g}); joint propensities derived from it")
    if eps <= tol:
        note += "; epsilon = 0: the logger never randomised, so only the logger's own slates have support"
    return LoggerModel("epsilon_uniform", eps, err, note), greedy


# ---------------------------------------------------------------------------------------------
# the reward model for dr / dm


@dataclass(frozen=True, eq=False)
class RewardModel:
    """Cross-fitted logistic click model ``logit P(click) = a + a_position + beta . features``.

    One coefficient vector per fold (``[a, beta..., a_2..a_L]``, position 1 is the reference);
    a request of fold ``f`` is scored by the model fitted without fold ``f``.
    """

    coefs: tuple[np.ndarray, ...]
    fold_of_request: np.ndarray
    n_features: int
    L: int
    note: str

    @property
    def folds(self) -> int:
        return len(self.coefs)

    def _scorer(self, request: np.ndarray) -> np.ndarray:
        f = self.fold_of_request[request]
        return (f + 1) % self.folds if self.folds > 1 else np.zeros_like(f)

    def row_logits(self, features: np.ndarray, row_request: np.ndarray) -> np.ndarray:
        """``a + beta . x`` of every candidate row, from the model that scores its request."""
        out = np.empty(len(features))
        scorer = self._scorer(row_request)
        for f, c in enumerate(self.coefs):  # loop over folds (2)
            sel = scorer == f
            out[sel] = c[0] + features[sel] @ c[1:1 + self.n_features]
        return out

    def position_effects(self, request: np.ndarray) -> np.ndarray:
        """``(len(request), L)`` position offsets of the model that scores each request."""
        eff = np.zeros((self.folds, self.L))
        for f, c in enumerate(self.coefs):
            eff[f, 1:] = c[1 + self.n_features:]
        return eff[self._scorer(request)]


def fit_reward_model(features: np.ndarray, log: SlateLog, *, folds: int = 2, seed: int = 0,
                     ridge: float = 1e-4) -> RewardModel:
    """Fit the DR reward model on the shown rows, cross-fitted over ``folds`` user folds.

    ``features`` is the ``(n_rows, d)`` matrix of every candidate row (the engine uses the
    ranker's five signals). Fitted with statsmodels' binomial GLM (logit link) and a tiny ridge
    penalty so separated or tiny folds still converge; a fold that cannot be fitted falls back
    to its click rate (intercept only) and the note says so.
    """
    L = log.L
    X = np.asarray(features, dtype=np.float64)
    shown = log.filled
    req_of_shown, pos0 = np.nonzero(shown)
    rows = log.row_at[shown]
    y = log.reward[shown]
    units = log.users if log.users is not None else np.arange(log.n_requests)
    _, codes = np.unique(units, return_inverse=True)
    fold_of_unit = np.random.default_rng(seed).integers(0, folds, size=int(codes.max()) + 1)
    fold_of_request = fold_of_unit[codes]
    design = np.column_stack([np.ones(len(rows)), X[rows],
                              (pos0[:, None] == np.arange(1, L)[None, :]).astype(np.float64)])
    coefs = []
    notes = []
    for f in range(folds):  # a loop over folds, never over rows
        train = fold_of_request[req_of_shown] != f if folds > 1 else np.ones(len(rows), bool)
        try:
            res = sm.GLM(y[train], design[train], family=sm.families.Binomial()).fit_regularized(
                alpha=ridge, L1_wt=0.0)
            c = np.asarray(res.params, dtype=np.float64)
            if not np.all(np.isfinite(c)):
                raise ValueError("non-finite coefficients")
        except Exception as exc:  # degenerate fold: intercept-only fallback
            c = np.zeros(design.shape[1])
            m = float(np.clip(y[train].mean() if train.any() else 0.5, 1e-6, 1 - 1e-6))
            c[0] = np.log(m / (1 - m))
            notes.append(f"fold {f}: {exc}; intercept only")
        coefs.append(c)
    note = (f"logistic GLM of click on {X.shape[1]} features + position intercepts, "
            f"{folds}-fold cross-fitted by user" + ("; " + "; ".join(notes) if notes else ""))
    return RewardModel(tuple(coefs), fold_of_request, X.shape[1], L, note)


# ---------------------------------------------------------------------------------------------
# estimates


@dataclass(frozen=True)
class Estimate:
    """One off-policy estimate, or the reason there is none.

    ``value`` and the interval are on ``scale`` (``ctr``: clicks per shown whisper; ``clicks``:
    clicks per request); ``n_requests`` is the population the mean is over (logged requests with
    complete propensities); ``support`` says how much matched data it rests on.
    """

    estimator: str
    label: str
    assumption: str
    scale: str
    value: float | None
    ci_low: float | None
    ci_high: float | None
    se: float | None
    n_requests: int
    population: str
    status: Status
    reason: str
    method: str
    support: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return _clean(asdict(self))


@dataclass(frozen=True, eq=False)
class TargetSlates:
    """The target's slates over the log: matches with the logged slates and its slate length."""

    match: np.ndarray          # (N, L) target put the logged memory at that logged position
    target_len: np.ndarray     # (N,) length of the target's slate
    target_rows: np.ndarray    # candidate rows the target shows
    target_pos: np.ndarray     # their 1-based positions
    target_request: np.ndarray


def target_slates(log: SlateLog, target_rank: np.ndarray, row_request: np.ndarray,
                  max_items: int | None = None) -> TargetSlates:
    """Compare a deterministic target ranking (1-based ranks of every candidate row) with the log."""
    L = log.L if max_items is None else min(max_items, log.L)
    rank = np.asarray(target_rank, dtype=np.int64)
    safe = np.where(log.filled, log.row_at, 0)
    positions = np.arange(1, log.L + 1)[None, :]
    match = log.filled & (rank[safe] == positions) & (positions <= L)
    target_len = np.minimum(log.n_candidates, L)
    rows = np.flatnonzero(rank <= L)
    return TargetSlates(match, target_len, rows, rank[rows], row_request[rows])


def _ratio_combine(scale: Scale) -> Callable[[np.ndarray], np.ndarray]:
    """parts ``[contribution, 1, target_len]`` -> mean contribution (per request or per shown)."""
    def combine(s: np.ndarray) -> np.ndarray:
        v = s[..., 0] / s[..., 1]
        return v / (s[..., 2] / s[..., 1]) if scale == "ctr" else v
    return combine


def _ips_parts(w: np.ndarray, reward: np.ndarray, target_len: np.ndarray, scale: Scale,
               self_normalised: bool, per_slate: bool
               ) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """Per-request parts and combine of an IPS estimator with position weights ``w`` (N, L).

    Plain: ``mean_i sum_l w_il r_il``. Self-normalised per position (iips / rips):
    ``sum_l [sum_i w_il r_il / sum_i w_il] * share of target slates reaching l``; per slate
    (sips): ``sum_i w_i R_i / sum_i w_i``.
    """
    n, L = w.shape
    num = w * reward
    ones = np.ones((n, 1))
    length = target_len[:, None].astype(np.float64)
    if not self_normalised:
        return np.hstack([num.sum(axis=1, keepdims=True), ones, length]), _ratio_combine(scale)
    if per_slate:
        parts = np.hstack([num.sum(axis=1, keepdims=True), w.max(axis=1, keepdims=True), ones,
                           length])

        def combine_s(s: np.ndarray) -> np.ndarray:
            v = s[..., 0] / s[..., 1]
            return v / (s[..., 3] / s[..., 2]) if scale == "ctr" else v
        return parts, combine_s
    reach = (np.arange(1, L + 1)[None, :] <= target_len[:, None]).astype(np.float64)
    parts = np.hstack([num, w, reach, ones, length])

    def combine_p(s: np.ndarray) -> np.ndarray:
        nu, de, re = s[..., :L], s[..., L:2 * L], s[..., 2 * L:3 * L]
        with np.errstate(invalid="ignore", divide="ignore"):
            per_pos = np.where(re > 0, nu / de * re, 0.0)
        v = per_pos.sum(axis=-1) / s[..., 3 * L]
        return v / (s[..., 3 * L + 1] / s[..., 3 * L]) if scale == "ctr" else v
    return parts, combine_p


def _support(w: np.ndarray, matched: np.ndarray, unit: str, target_len: np.ndarray) -> dict[str, Any]:
    """Support figures of importance weights ``w`` (N, L).

    The mean weight over the requests whose target slate reaches position l has expectation
    exactly 1 when the logger covers the target. ``weight_z`` is the largest
    ``|mean_l - 1| / se_l`` over positions: a large value means the target's slates (prefixes,
    positions) were practically never logged in this sample and the plain IPS estimate is biased
    low here whatever its expectation (:func:`_weight_check` turns it into ``weak_support``).
    """
    L = w.shape[1]
    per_req = w.sum(axis=1)
    s1, s2 = per_req.sum(), (per_req ** 2).sum()
    reach = np.arange(1, L + 1)[None, :] <= target_len[:, None]
    cnt = reach.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_l = np.where(cnt > 0, (w * reach).sum(axis=0) / cnt, np.nan)
        var_l = np.where(cnt > 1, ((w - mean_l) ** 2 * reach).sum(axis=0) / (cnt - 1), np.nan)
        se_l = np.sqrt(var_l / cnt)
        z_l = np.abs(mean_l - 1) / np.maximum(se_l, 1e-12)
    valid = cnt > 1
    return {
        "matched_positions": int(matched.sum()),
        "requests_with_match": int(matched.any(axis=1).sum()),
        "effective_sample_size": float(s1 * s1 / s2) if s2 > 0 else 0.0,
        "max_weight": float(w.max()) if w.size else 0.0,
        "mean_weight_by_position": [float(x) for x in mean_l],
        "weight_z": float(np.nanmax(z_l[valid])) if valid.any() else float("nan"),
        "weight_unit": unit,
    }


def _model_terms(model: RewardModel, features: np.ndarray, row_request: np.ndarray,
                 log: SlateLog, tgt: TargetSlates) -> tuple[np.ndarray, np.ndarray]:
    """q at the logged (memory, position) pairs (N, L) and summed over the target slate (N,)."""
    logits = model.row_logits(features, row_request)
    req_all = np.arange(log.n_requests)
    eff = model.position_effects(req_all)
    safe = np.where(log.filled, log.row_at, 0)
    z = logits[safe] + eff[:, :log.L]
    q_logged = np.where(log.filled, 1 / (1 + np.exp(-z)), 0.0)
    rows, pos, req = tgt.target_rows, tgt.target_pos, tgt.target_request
    zt = logits[rows] + eff[req, pos - 1]
    q_target = np.bincount(req, weights=1 / (1 + np.exp(-zt)), minlength=log.n_requests)
    return q_logged, q_target


def estimator_parts(name: str, log: SlateLog, tgt: TargetSlates, *, scale: Scale = "ctr",
                    reward_model: RewardModel | None = None, features: np.ndarray | None = None,
                    row_request: np.ndarray | None = None
                    ) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray], dict[str, Any]] | str:
    """Per-request parts, combine and support figures of one estimator, or the reason it has none.

    Only requests with a shown slate and complete propensities enter (``usable_requests``).
    """
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; use one of {ESTIMATORS}")
    keep = usable_requests(log)
    if not log.filled.any():
        return "no data: no logged request with a shown slate in this selection"
    if not keep.any():
        return ("no logged propensities: off-policy estimates are impossible; only a biased "
                "on-policy replay of clicks can be computed")
    base = name[2:] if name.startswith("sn") else name
    sn = name.startswith("sn")
    filled = log.filled[keep]
    match = tgt.match[keep]
    reward = log.reward[keep]
    target_len = tgt.target_len[keep]
    p = np.where(filled, log.pscore[keep], np.inf)
    if base in ("iips", "dr", "dm"):
        matched = match
        w = np.where(matched, 1.0 / p, 0.0)
        unit = "position"
    elif base == "rips":
        if log.prefix_pscore is None:
            return f"prefix propensities unavailable: {log.logger.note}"
        matched = np.cumprod(match | ~filled, axis=1).astype(bool) & match
        pp = np.where(filled, log.prefix_pscore[keep], np.inf)
        w = np.where(matched, 1.0 / pp, 0.0)
        unit = "prefix"
    else:  # sips
        if log.prefix_pscore is None:
            return f"slate propensities unavailable: {log.logger.note}"
        logged_len = filled.sum(axis=1)
        slate_match = np.all(match | ~filled, axis=1) & (logged_len == target_len)
        last = np.clip(logged_len - 1, 0, log.L - 1)
        slate_p = log.prefix_pscore[keep][np.arange(len(last)), last]
        ws = np.where(slate_match, 1.0 / slate_p, 0.0)
        w = ws[:, None] * filled
        matched = slate_match[:, None] & filled
        unit = "slate"
    support = _support(w, matched, unit, target_len)
    if base == "dm" or base == "dr":
        if reward_model is None or features is None or row_request is None:
            return "not computable: the doubly robust / direct estimators need a fitted reward model"
        q_logged, q_target = _model_terms(reward_model, features, row_request, log, tgt)
        contrib = q_target[keep]
        if base == "dr":
            if support["matched_positions"] == 0:
                return ("zero support: no logged position shows the target's memory at the "
                        "target's position, so the correction term is empty (dr would be dm)")
            contrib = contrib + (w * (reward - q_logged[keep])).sum(axis=1)
        parts = np.column_stack([contrib, np.ones(len(contrib)), target_len])
        return parts, _ratio_combine(scale), support
    if support["matched_positions"] == 0:
        return (f"zero support: no logged {unit} matches the target's; with a deterministic "
                "target the estimate rests on the logger's randomised requests (and positions "
                "where both rankings agree), and none of them agree with it")
    parts, combine = _ips_parts(w, reward, target_len, scale, sn, per_slate=(base == "sips"))
    return parts, combine, support


def usable_requests(log: SlateLog) -> np.ndarray:
    """Requests that enter the off-policy estimates: a shown slate, every propensity present."""
    return log.complete & log.filled.any(axis=1)


def _status_of(reason: str) -> Status:
    if reason.startswith("no logged propensities"):
        return "no_propensities"
    if reason.startswith("zero support"):
        return "no_support"
    if reason.startswith("no data"):
        return "no_data"
    return "not_computable"


def _population(log: SlateLog, n_keep: int) -> str:
    text = (f"{n_keep} of {log.n_requests} logged requests (a shown slate and a propensity for "
            "every shown position)")
    missing = int((log.filled.any(axis=1) & ~log.complete).sum())
    if missing:
        text += f"; {missing} shown requests lack propensities and are left out"
    return text


def estimate(name: str, log: SlateLog, tgt: TargetSlates, *, scale: Scale = "ctr",
             method: Method = "bootstrap", n_boot: int = 500, seed: int = 0, level: float = 0.95,
             cluster: Literal["request", "user"] = "user",
             reward_model: RewardModel | None = None, features: np.ndarray | None = None,
             row_request: np.ndarray | None = None) -> Estimate:
    """One estimator's value with its interval (or the reason it has none).

    ``cluster="user"`` resamples users (all of a user's requests together), the honest choice
    when a user's requests share their relevance; ``"request"`` treats requests as independent.
    """
    label, assumption = ESTIMATOR_INFO[name]
    keep = usable_requests(log)
    n_keep = int(keep.sum())
    population = _population(log, n_keep)
    out = estimator_parts(name, log, tgt, scale=scale, reward_model=reward_model,
                          features=features, row_request=row_request)
    if isinstance(out, str):
        return Estimate(name, label, assumption, scale, None, None, None, None, n_keep,
                        population, _status_of(out), out, "none")
    parts, combine, support = out
    clusters = log.users[keep] if (cluster == "user" and log.users is not None) else None
    iv = interval(parts, combine, method=method, n_boot=n_boot, seed=seed, level=level,
                  clusters=clusters)
    unit = "users" if clusters is not None else "requests"
    status, reason = _weight_check(name, support)
    return Estimate(name, label, assumption, scale, iv.estimate, iv.ci_low, iv.ci_high, iv.se,
                    n_keep, population, status, reason, f"{iv.method} over {iv.n_units} {unit}",
                    support)


def _weight_check(name: str, support: dict[str, Any]) -> tuple[Status, str]:
    """``weak_support`` when some position's mean weight is more than :data:`WEIGHT_Z`
    standard errors from its expectation 1 (not for dm, which uses no weights)."""
    z = support.get("weight_z")
    means = np.asarray(support.get("mean_weight_by_position", []), dtype=np.float64)
    far = bool(np.any(np.abs(means[np.isfinite(means)] - 1) > WEIGHT_TOLERANCE))
    if name == "dm" or z is None or not np.isfinite(z) or z <= WEIGHT_Z or not far:
        return "ok", ""
    text = ", ".join(f"{m:.2f}" for m in means)
    return "weak_support", (
        f"mean importance weight by position [{text}] is {z:.1f} standard errors from its "
        f"expectation 1: the target's {support['weight_unit']}s were (almost) never logged, so "
        f"this number is unreliable (effective sample size "
        f"{support['effective_sample_size']:.0f})")


def compare(name: str, log: SlateLog, tgt_a: TargetSlates, tgt_b: TargetSlates, *,
            scale: Scale = "ctr", method: Method = "bootstrap", n_boot: int = 500, seed: int = 0,
            level: float = 0.95, cluster: Literal["request", "user"] = "user",
            reward_model: RewardModel | None = None, features: np.ndarray | None = None,
            row_request: np.ndarray | None = None) -> Estimate:
    """Paired difference ``V(a) - V(b)`` of one estimator over the same logged requests.

    Both sides share the resampling weights; ``support["p_value"]`` is the two-sided p-value.
    """
    label, assumption = ESTIMATOR_INFO[name]
    keep = usable_requests(log)
    n_keep = int(keep.sum())
    population = _population(log, n_keep) + "; the same requests for both settings"
    kw: dict[str, Any] = dict(scale=scale, reward_model=reward_model, features=features,
                              row_request=row_request)
    a = estimator_parts(name, log, tgt_a, **kw)
    b = estimator_parts(name, log, tgt_b, **kw)
    for side, out in (("a", a), ("b", b)):
        if isinstance(out, str):
            return Estimate(f"{name}_diff", f"difference of {label}", assumption, scale, None,
                            None, None, None, n_keep, population, _status_of(out),
                            f"setting {side}: {out}", "none")
    assert not isinstance(a, str) and not isinstance(b, str)
    clusters = log.users[keep] if (cluster == "user" and log.users is not None) else None
    iv = paired(a[0], a[1], b[0], b[1], method=method, n_boot=n_boot, seed=seed, level=level,
                clusters=clusters)
    unit = "users" if clusters is not None else "requests"
    return Estimate(f"{name}_diff", f"difference of {label}", assumption, scale, iv.estimate,
                    iv.ci_low, iv.ci_high, iv.se, n_keep, population, "ok", "",
                    f"{iv.method} over {iv.n_units} {unit}",
                    {"p_value": iv.p_value, "a": a[2], "b": b[2]})


def estimates_frame(estimates: list[Estimate]) -> pd.DataFrame:
    """A tidy table of estimates (one row each) for notebooks and reports."""
    return pd.DataFrame([{
        "estimator": e.estimator, "label": e.label, "scale": e.scale, "value": e.value,
        "ci_low": e.ci_low, "ci_high": e.ci_high, "status": e.status, "n_requests": e.n_requests,
        "matched": e.support.get("matched_positions"), "p_value": e.support.get("p_value"),
        "ess": e.support.get("effective_sample_size"), "reason": e.reason,
    } for e in estimates])
