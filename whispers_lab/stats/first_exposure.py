"""The first build's retention design, kept only to compare it with the staggered one.

A unit was a randomised user stratified by the day of its *first* exposure, in the variant
first served, and a control unit counted only when its window closed before the plan enabled
it. In an app whose users were nearly all active (and served control) before the percentage
phase, almost every randomised user is first exposed in days 0-7 as control and later enabled:
they drop out of both arms, and the comparison rests on the few users who first arrive late.
Looks were O'Brien-Fleming spending over 7 calendar days from the first percentage day, with
the maximum information projected from past accrual only. ``notebooks/retention_analysis.ipynb``
and ``benchmarks/mc_decisions.py --legacy`` show it beside the new design; nothing decides on it.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..lazy import lazy_module
from . import sequential
from .noninferiority import stratified_difference
from .sufficient import sums_by

stats = lazy_module("scipy.stats")

LEGACY_LOOKS = 7
LEGACY_SPENDING = "obrien_fleming"


def _strata(cells: pd.DataFrame, k: int, day: int) -> pd.DataFrame:
    c = cells.loc[(cells["k"] == k) & (cells["e"] + k <= day)]
    treat = (c["variant"] == "treatment").to_numpy()
    n = c["n"].to_numpy(float)
    y = c["sum_y"].to_numpy(float)
    _, t = sums_by(c["e"].to_numpy(np.int64), n_t=n * treat, sum_t=y * treat, n_c=n * ~treat,
                   sum_c=y * ~treat)
    return pd.DataFrame({k: t[k] for k in ("n_t", "sum_t", "n_c", "sum_c")})


def first_exposure_history(cells: pd.DataFrame, k: int, day: int, first_look: int,
                           margin: float, alpha: float = 0.05,
                           min_group_users: int = 5) -> pd.DataFrame:
    """One row per look day ``first_look..day`` of the first build's analysis: units per arm,
    the stratified difference, its naive and O'Brien-Fleming sequential lower bound, and the
    verdict it gave (pass / fail / inconclusive / no_data)."""
    rows, info = [], []
    for d in range(first_look, day + 1):
        est = stratified_difference(_strata(cells, k, d))
        usable = est.ok and min(est.n_t, est.n_c) >= min_group_users
        info.append(est.weight if usable else 0.0)
        rows.append({"day": d, "n_treatment": est.n_t, "n_control": est.n_c,
                     "diff": est.diff, "se": est.se})
    hist = pd.DataFrame(rows)
    if hist.empty:
        return hist.assign(boundary=[], seq_low=[], naive_low=[], status=[])
    design = sequential.monitor(info[:LEGACY_LOOKS], LEGACY_LOOKS, alpha, LEGACY_SPENDING)
    b = np.full(len(hist), np.nan)
    b[:len(design)] = design["boundary"].to_numpy()
    b = pd.Series(b).ffill().to_numpy()
    z = float(stats.norm.isf(alpha))
    hist["boundary"] = b
    hist["seq_low"] = hist["diff"] - b * hist["se"]
    hist["seq_high"] = hist["diff"] + b * hist["se"]
    hist["naive_low"] = hist["diff"] - z * hist["se"]
    status = []
    for lo, hi, ok in zip(hist["seq_low"], hist["seq_high"], info, strict=False):
        if not ok or not (math.isfinite(lo) and math.isfinite(hi)):
            status.append("no_data" if not ok else "inconclusive")
        else:
            status.append("pass" if lo > -margin else "fail" if hi < -margin else "inconclusive")
    status += ["no_data"] * (len(hist) - len(status))
    hist["status"] = status
    return hist


def cells_from_activity(active: np.ndarray, f_day: np.ndarray, base_day: int,
                        k_values: tuple[int, ...] | list[int], last_day: int) -> pd.DataFrame:
    """The numpy twin of :func:`whispers_lab.queries.experiment.first_exposure_cells` when a
    user's first exposure is their first active day from day 0 (as the simulator serves it):
    per (k, e, variant) ``n, sum_y`` from ``active[user, day - base_day]``."""
    act = np.asarray(active, dtype=bool)
    f = np.asarray(f_day, dtype=float)
    window = act[:, -base_day:last_day - base_day + 1]
    has = window.any(axis=1)
    idx = np.flatnonzero(has)
    e = np.argmax(window[idx], axis=1)
    treat = f[idx] <= e
    parts = []
    for k in sorted(set(int(x) for x in k_values)):
        keep = (e + k <= last_day) & (treat | (e + k + 1 <= f[idx]))
        ek, tk = e[keep], treat[keep]
        cols = (ek - base_day + 1)[:, None] + np.arange(k)[None, :]
        y = act[idx[keep][:, None], cols].any(axis=1)
        uniq, t = sums_by(ek * 2 + tk, sum_y=y)
        parts.append(pd.DataFrame({
            "k": k, "e": uniq // 2, "variant": np.where(uniq % 2 == 1, "treatment", "control"),
            "n": t["n"].astype(np.int64), "sum_y": t["sum_y"]}))
    if not parts:
        return pd.DataFrame(columns=["k", "e", "variant", "n", "sum_y"])
    return pd.concat(parts, ignore_index=True)
