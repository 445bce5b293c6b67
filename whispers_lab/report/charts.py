"""The report's charts: matplotlib figures built from the day's evaluation, nothing else.

Every function takes small aggregated frames or results (never an export) and returns a
:class:`matplotlib.figure.Figure` made with the object-oriented API (no pyplot state, so nothing
is displayed by accident, nothing leaks between charts, and the importer's backend is left
alone: ``Figure.savefig`` renders with Agg by itself). :func:`png` turns a figure into PNG
bytes for the notebook to display as an image. A chart with nothing to show says so in words
inside the figure instead of raising.

Small groups: a point computed from fewer than ``min_users`` users is not drawn (a grey tick
marks the gap and the caption says why); per-minute charts too (:func:`small_minutes`).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.dates as mdates
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, PercentFormatter

GREEN = "#15803d"
AMBER = "#b45309"
RED = "#b91c1c"
GREY = "#9ca3af"
BLUE = "#1d4ed8"
TEAL = "#0f766e"
FIGSIZE = (10.0, 3.6)
DPI = 96


def png(fig: Figure) -> bytes:
    """The figure as PNG bytes (tight layout)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)  # every chart already has a tight layout
    return buf.getvalue()


def _empty(message: str, title: str, height: float = 2.0) -> Figure:
    fig = Figure(figsize=(FIGSIZE[0], height))
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(title, loc="left", fontsize=11, fontweight="bold")
    ax.text(0.5, 0.45, message, ha="center", va="center", fontsize=11, color="#4b5563",
            wrap=True, transform=ax.transAxes)
    fig.tight_layout()
    return fig


def _style(ax: Any) -> None:
    ax.grid(True, axis="y", color="#e5e7eb", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _shade(ax: Any, windows: Sequence[Any], trigger: str) -> int:
    """Shade runs of bad minutes of ``trigger``: red when they fired, amber when too short."""
    n = 0
    for w in windows:
        if getattr(w, "trigger", None) != trigger:
            continue
        colour = RED if w.fired else AMBER
        ax.axvspan(pd.Timestamp(w.start), pd.Timestamp(w.end), color=colour,
                   alpha=0.22 if w.fired else 0.15, lw=0)
        n += 1
    return n


# ---------------------------------------------------------------------------------------
# per-minute health of the day


def small_minutes(minutes: pd.DataFrame, min_users: int) -> np.ndarray:
    """Which minutes rest on fewer than ``min_users`` users (their figures are withheld). The
    series' ``users`` column when it has one; otherwise its request counts, which bound the
    users from above (each user makes at least one request)."""
    users = minutes["users"] if "users" in minutes else minutes["requests"]
    return (users.astype(float) < min_users).to_numpy()


def minute_chart(minutes: pd.DataFrame, windows: Sequence[Any], *, metric: str, budget: float,
                 trigger_level: float, trigger_minutes: int, min_requests: int, title: str,
                 percent: bool, min_users: int) -> Figure:
    """Per-minute ``metric`` of the whispers endpoint over the day, the daily budget (amber
    dashed) and the rollback trigger level (red), runs above the trigger shaded (red: fired),
    and below it requests per minute with the minimum for a minute to count.

    A minute whose requests come from fewer than ``min_users`` users (the plan's
    ``criteria.min_group_users``) is not drawn in either panel, like every other figure of a
    small group; a grey tick on the time axis marks it and the caption says how many."""
    if minutes is None or minutes.empty or int(minutes["requests"].sum()) == 0:
        return _empty("No whispers requests on this day.", title)
    m = minutes.sort_values("minute")
    small = small_minutes(m, min_users)
    hidden = m.loc[small, "minute"]
    m = m.loc[~small]
    if m.empty:
        return _empty(f"Every minute of this day had fewer than {min_users} users: per-minute "
                      f"figures are withheld to protect their privacy.", title)
    t = pd.to_datetime(m["minute"])
    y = m[metric].astype(float)
    counted = m["counted"].astype(bool).to_numpy()
    fig = Figure(figsize=(FIGSIZE[0], 4.6))
    ax, ax2 = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.2]})
    trigger = "trigger_error_rate" if metric == "error_rate" else "trigger_latency"
    shaded = _shade(ax, windows, trigger)
    ax.scatter(t[~counted], y[~counted], s=6, color=GREY, alpha=0.6,
               label=f"minute with < {min_requests} requests (not counted)")
    if counted.any():
        ax.plot(t[counted], y[counted], ".", ms=3, color=BLUE,
                label=f"minute with >= {min_requests} requests")
    ax.axhline(budget, color=AMBER, ls="--", lw=1.3, label="daily budget")
    ax.axhline(trigger_level, color=RED, lw=1.3,
               label=f"rollback trigger ({trigger_minutes}+ minutes in a row)")
    top = max(float(np.nanmax(y.to_numpy())) if len(y) else 0.0, trigger_level) * 1.45
    ax.set_ylim(0, top if top > 0 else 1)
    if percent:
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    else:
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0f} ms"))
    ax.set_title(title, loc="left", fontsize=11, fontweight="bold")
    if shaded:
        ax.text(0.995, 1.01, f"{shaded} run(s) above the trigger level shaded", ha="right",
                va="bottom", transform=ax.transAxes, fontsize=8, color=RED)
    ax.legend(loc="upper left", fontsize=8, frameon=False, ncol=2)
    _style(ax)
    if len(hidden):
        ax.text(0.995, 0.97 if not shaded else 0.90,
                f"{len(hidden)} minute(s) with fewer than {min_users} users not drawn",
                ha="right", va="top", transform=ax.transAxes, fontsize=8, color="#6b7280")
    ax2.fill_between(t, 0, m["requests"].astype(float), step="post", color=TEAL, alpha=0.7,
                     lw=0)
    if len(hidden):
        ax2.plot(pd.to_datetime(hidden), np.zeros(len(hidden)), "|", color=GREY, ms=4)
    ax2.axhline(min_requests, color="#374151", ls=":", lw=1)
    ax2.set_ylabel("requests\n/ minute", fontsize=8)
    ax2.yaxis.set_major_locator(MaxNLocator(3, integer=True))
    _style(ax2)
    ax2.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
    ax2.set_xlabel("time of day (UTC)", fontsize=9)
    fig.tight_layout()
    return fig


def db_chart(db_series: pd.DataFrame, limit_ms: float | None, windows: Sequence[Any],
             title: str = "Database p95 query time per minute") -> Figure:
    """Database p95 per minute against the degradation limit (2x the pre-rollout median)."""
    if db_series is None or db_series.empty:
        return _empty("No database metrics for this day.", title)
    fig = Figure(figsize=FIGSIZE)
    ax = fig.add_subplot()
    _shade(ax, windows, "trigger_db")
    t = pd.to_datetime(db_series["minute"])
    ax.plot(t, db_series["p95_query_ms"], lw=0.8, color=BLUE, label="p95 query time")
    if limit_ms is not None:
        ax.axhline(limit_ms, color=RED, lw=1.3, label="degradation limit (rollback trigger)")
    ax.set_ylim(0, max(float(db_series["p95_query_ms"].max()), limit_ms or 0) * 1.15)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0f} ms"))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
    ax.set_title(title, loc="left", fontsize=11, fontweight="bold")
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    _style(ax)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------
# the rollout so far, day by day


def _mask_small(values: pd.Series, users: pd.Series | None, min_users: int) -> tuple[pd.Series, int]:
    if users is None:
        return values.astype(float), 0
    small = (users.astype(float) > 0) & (users.astype(float) < min_users)
    return values.astype(float).where(~small), int(small.sum())


def exposures_chart(daily: pd.DataFrame, min_users: int, day: int,
                    title: str = "Users exposed for the first time, by variant") -> Figure:
    """Users whose exposure (treatment or control) started on each rollout day."""
    if daily is None or daily.empty:
        return _empty("No exposures yet.", title)
    d = daily[daily["day"] <= day]
    fig = Figure(figsize=FIGSIZE)
    ax = fig.add_subplot()
    x = d["day"].to_numpy()
    tr, n_tr = _mask_small(d["treatment_users"], d["treatment_users"], min_users)
    co, n_co = _mask_small(d["control_users"], d["control_users"], min_users)
    ax.bar(x - 0.2, tr.fillna(0), width=0.4, color=GREEN, label="treatment (whispers on)")
    ax.bar(x + 0.2, co.fillna(0), width=0.4, color=GREY, label="control (whispers off)")
    hidden = d["day"][tr.isna() & (d["treatment_users"] > 0)]
    for xv in hidden:
        ax.text(xv - 0.2, 0, f"<{min_users}", ha="center", va="bottom", fontsize=7,
                color="#6b7280", rotation=90)
    hidden = d["day"][co.isna() & (d["control_users"] > 0)]
    for xv in hidden:
        ax.text(xv + 0.2, 0, f"<{min_users}", ha="center", va="bottom", fontsize=7,
                color="#6b7280", rotation=90)
    ax.set_xticks(x)
    ax.set_xlabel("rollout day")
    ax.set_ylabel("users")
    ax.set_title(title, loc="left", fontsize=11, fontweight="bold")
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    if n_tr + n_co:
        ax.text(0.995, 0.97, f"bars of fewer than {min_users} users are not drawn", ha="right",
                va="top", transform=ax.transAxes, fontsize=8, color="#6b7280")
    _style(ax)
    fig.tight_layout()
    return fig


def rates_chart(daily: pd.DataFrame, plan: Any, day: int, min_users: int) -> Figure:
    """Click-through rate (threshold 15%) and weight fallback rate (its budget of the day's
    phase) by rollout day."""
    title = "Click-through rate and weight fallback rate by day"
    if daily is None or daily.empty:
        return _empty("No days to show yet.", title)
    d = daily[daily["day"] <= day]
    x = d["day"].to_numpy()
    fig = Figure(figsize=(FIGSIZE[0], 3.4))
    ax1, ax2 = fig.subplots(1, 2)
    # users behind each day's rate: the series' user counts when it has them; otherwise the
    # event counts, which bound the users from above (each user makes at least one event)
    ctr_users = d["shown_users"] if "shown_users" in d else d["impressions"]
    ctr, _ = _mask_small(d["ctr"], ctr_users, min_users)
    ax1.plot(x, ctr, "o-", color=BLUE, ms=4, label="click-through rate")
    ax1.axhline(plan.criteria.ctr, color=AMBER, ls="--", lw=1.2,
                label=f"target: at least {plan.criteria.ctr:.0%}")
    ax1.set_ylim(0, max(float(np.nanmax(ctr.to_numpy())) if ctr.notna().any() else 0,
                        plan.criteria.ctr) * 1.3)
    ax1.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax1.set_title("Click-through rate (clicks / impressions)", loc="left", fontsize=10,
                  fontweight="bold")
    fb_users = d["request_users"] if "request_users" in d else d["weight_requests"]
    fb, _ = _mask_small(d["fallback_rate"], fb_users, min_users)
    ax2.plot(x, fb, "o-", color=TEAL, ms=4, label="weight fallback rate")
    budgets = [plan.threshold("weight_fallback_rate", int(v)) for v in x]
    ax2.step(x, budgets, where="mid", color=AMBER, ls="--", lw=1.2, label="budget (by phase)")
    ax2.set_ylim(0, max(float(np.nanmax(fb.to_numpy())) if fb.notna().any() else 0,
                        max(budgets)) * 1.3)
    ax2.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=1))
    ax2.set_title("Weight fallback rate (share of requests)", loc="left", fontsize=10,
                  fontweight="bold")
    for ax in (ax1, ax2):
        ax.set_xticks(x)
        ax.set_xlabel("rollout day")
        ax.legend(loc="lower left", fontsize=8, frameon=False)
        _style(ax)
    fig.tight_layout()
    return fig


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def retention_frame(history: Any) -> pd.DataFrame:
    """Normalise a retention history (DataFrame, or a sequence of mappings / objects with
    day, diff/estimate, naive and sequential interval bounds) to one frame."""
    if history is None:
        return pd.DataFrame()
    if isinstance(history, pd.DataFrame):
        frame = history.copy()
    else:
        rows = []
        for item in history:
            rows.append({k: _get(item, k) for k in (
                "day", "diff", "estimate", "naive_low", "naive_high", "seq_low", "seq_high",
                "ci_low", "ci_high", "sequential_low", "sequential_high", "n", "users")})
            naive = _get(item, "naive_ci")
            seq = _get(item, "sequential_ci")
            if naive is not None:
                rows[-1]["naive_low"], rows[-1]["naive_high"] = naive[0], naive[1]
            if seq is not None:
                rows[-1]["seq_low"], rows[-1]["seq_high"] = seq[0], seq[1]
        frame = pd.DataFrame(rows)
    aliases = {"estimate": "diff", "ci_low": "naive_low", "ci_high": "naive_high",
               "sequential_low": "seq_low", "sequential_high": "seq_high"}
    for old, new in aliases.items():
        if old in frame and (new not in frame or frame[new].isna().all()):
            frame[new] = frame[old]
    return frame


def retention_chart(history: Any, margin: float, min_users: int,
                    title: str = "Retention: treatment minus control, with confidence intervals"
                    ) -> Figure:
    """Daily looks at the retention difference (treatment - control): the estimate, the naive
    interval (thin) and the sequential bounds that account for looking every day (thick: its
    lower end must clear the non-inferiority margin for a pass; its upper end below zero shows
    harm), against the margin (treatment may be at most ``margin`` worse)."""
    frame = retention_frame(history)
    if frame.empty or "diff" not in frame or frame["diff"].isna().all():
        return _empty("No retention comparison yet: retention is compared from the first "
                      "percentage-rollout day on, once users have had time to come back.", title)
    if {"n_treatment", "n_control"} <= set(frame):
        users = np.minimum(frame["n_treatment"].astype(float), frame["n_control"].astype(float))
    elif "users" in frame or "n" in frame:
        users = (frame["users"] if "users" in frame else frame["n"]).astype(float)
    else:
        users = None
    if users is not None:
        frame = frame.loc[(users >= min_users).to_numpy()]
        if frame.empty or frame["diff"].isna().all():
            return _empty(f"No retention comparison yet: each group needs at least {min_users} "
                          f"users whose return window has closed.", title)
    fig = Figure(figsize=FIGSIZE)
    ax = fig.add_subplot()
    x = frame["day"].astype(float).to_numpy()
    est = frame["diff"].astype(float).to_numpy()
    if {"seq_low", "seq_high"} <= set(frame):
        lo, hi = frame["seq_low"].astype(float), frame["seq_high"].astype(float)
        ax.vlines(x, lo, hi.fillna(np.nanmax(est) + 1), color=BLUE, lw=6, alpha=0.35,
                  label="sequential bounds: pass bound (low), harm bound (high)")
    if {"naive_low", "naive_high"} <= set(frame):
        ax.vlines(x, frame["naive_low"].astype(float), frame["naive_high"].astype(float),
                  color="#374151", lw=1.2, label="naive interval (one look)")
    ax.plot(x, est, "o", color=BLUE, ms=5, label="estimate")
    ax.axhline(0, color="#374151", lw=0.8)
    ax.axhline(-margin, color=RED, ls="--", lw=1.2,
               label=f"non-inferiority margin (-{100 * margin:.0f} pp)")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:+.1f} pp"))
    ax.set_xticks(x)
    ax.set_xlabel("rollout day (look)")
    ax.set_title(title, loc="left", fontsize=11, fontweight="bold")
    ax.legend(loc="lower left", fontsize=8, frameon=False)
    bounds = [est]
    if {"naive_low", "naive_high"} <= set(frame):
        bounds += [frame["naive_low"].astype(float).to_numpy(),
                   frame["naive_high"].astype(float).to_numpy()]
    finite = np.concatenate([b[np.isfinite(b)] for b in bounds] + [np.array([-margin, 0.0])])
    pad = max(0.1 * float(np.ptp(finite)), 0.005)
    ax.set_ylim(float(finite.min()) - pad, float(finite.max()) + pad)
    _style(ax)
    fig.tight_layout()
    return fig


def srm_chart(srm: Any, min_users: int,
              title: str = "Sample ratio: treatment share among newly exposed users") -> Figure:
    """Observed treatment share of each day's newly exposed external users against the share
    the plan implies, with the pooled chi-square p-value."""
    details = _get(srm, "details") or {}
    per_day = details.get("per_day") if isinstance(details, Mapping) else None
    if not per_day:
        sentence = _get(srm, "sentence") or "No external user has been exposed yet."
        return _empty(str(sentence), title)
    d = pd.DataFrame(per_day)
    d["n"] = d["n_t"] + d["n_c"]
    d = d[d["n"] > 0]
    if d.empty:
        return _empty("No external user has been exposed yet.", title)
    d["observed"] = d["n_t"] / d["n"]
    small = d["n"] < min_users
    fig = Figure(figsize=FIGSIZE)
    ax = fig.add_subplot()
    big = d.loc[~small]
    z = 1.96
    se = np.sqrt(np.clip(big["expected_share_t"] * (1 - big["expected_share_t"]), 0, None)
                 / big["n"])
    ax.fill_between(big["day"], (big["expected_share_t"] - z * se).clip(0, 1),
                    (big["expected_share_t"] + z * se).clip(0, 1), step="mid", color=GREY,
                    alpha=0.25, label="expected share ± 95% sampling range")
    ax.step(d["day"], d["expected_share_t"], where="mid", color="#374151", lw=1.2,
            label="expected share (plan)")
    ax.plot(big["day"], big["observed"], "o", color=BLUE, ms=5, label="observed share")
    ax.set_ylim(0, 1)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_xticks(d["day"])
    ax.set_xlabel("rollout day of first exposure")
    p = _get(srm, "p_value")
    status = _get(srm, "status")
    note = f"pooled p-value {p:.3g}" if isinstance(p, (int, float)) and math.isfinite(p) else ""
    ax.set_title(f"{title} ({status}{', ' + note if note else ''})", loc="left", fontsize=11,
                 fontweight="bold")
    if small.any():
        ax.text(0.995, 0.03, f"days with fewer than {min_users} users are not drawn",
                ha="right", va="bottom", transform=ax.transAxes, fontsize=8, color="#6b7280")
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    _style(ax)
    fig.tight_layout()
    return fig
