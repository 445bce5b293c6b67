"""Charts of the post-rollout notebook (``notebooks/post_rollout.ipynb``): where the time of
``/api/whispers/context`` goes, how it grows with the candidates, and the maxItems what-if.

Like :mod:`.charts`: small aggregated frames in, a :class:`matplotlib.figure.Figure` out (object
API, no pyplot state); :func:`whispers_lab.report.charts.png` turns one into PNG bytes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..performance import LatencyModel
from .charts import AMBER, BLUE, GREY, RED, TEAL, _empty


def _style(ax) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.grid(axis="y", color="#e5e7eb", lw=0.6)


def time_split_chart(frame: pd.DataFrame, by: str, title: str) -> Figure:
    """Mean ranking time and the rest, stacked, by ``by`` (``n_candidates`` or ``hour``), with
    the p95 of the whole request as dots and the requests per group below."""
    if frame is None or frame.empty:
        return _empty("No served whispers request in the window.", title)
    f = frame.sort_values(by)
    x = f[by].to_numpy()
    fig = Figure(figsize=(10.0, 4.4))
    ax, ax2 = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(x, f["mean_ranking_ms"], color=BLUE, label="ranking (ranking_ms)")
    ax.bar(x, f["mean_rest_ms"], bottom=f["mean_ranking_ms"], color=GREY,
           label="the rest (duration - ranking)")
    ax.plot(x, f["p95_duration_ms"], "o", ms=3, color=RED, label="p95 of the request")
    ax.set_ylabel("ms")
    ax.set_title(title, loc="left", fontsize=11, fontweight="bold")
    ax.legend(loc="upper left", fontsize=8, frameon=False, ncol=3)
    _style(ax)
    ax2.bar(x, f["requests"], color=TEAL, alpha=0.8)
    ax2.set_ylabel("requests", fontsize=8)
    ax2.set_xlabel("candidates scored" if by == "n_candidates" else "hour of day (UTC)")
    _style(ax2)
    fig.tight_layout()
    return fig


def growth_chart(by_candidates: pd.DataFrame, model: LatencyModel,
                 title: str = "Latency against the number of candidates") -> Figure:
    """Mean duration per candidate count (dot size: requests) and the fitted line at each
    count's typical shown whispers (min(n, 6))."""
    if by_candidates is None or by_candidates.empty or not np.isfinite(model.coef["intercept"]):
        return _empty("Not enough served requests to fit how latency grows.", title)
    f = by_candidates.sort_values("n_candidates")
    n = f["n_candidates"].to_numpy(dtype=float)
    fig = Figure(figsize=(10.0, 3.6))
    ax = fig.add_subplot()
    size = 8 + 60 * f["requests"] / max(float(f["requests"].max()), 1.0)
    ax.scatter(n, f["mean_duration_ms"], s=size, color=BLUE, alpha=0.7,
               label="mean duration (size: requests)")
    fit = (model.coef["intercept"] + model.coef["per_candidate"] * n
           + model.coef["per_shown"] * np.minimum(n, 6))
    ax.plot(n, fit, color=AMBER, lw=1.5,
            label=f"fit: {model.coef['per_candidate']:+.2f} ms per candidate, "
                  f"{model.coef['per_shown']:+.2f} ms per shown whisper")
    ax.set_xlabel("candidates scored")
    ax.set_ylabel("ms")
    ax.set_ylim(bottom=0)
    ax.set_title(title, loc="left", fontsize=11, fontweight="bold")
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    _style(ax)
    fig.tight_layout()
    return fig


def what_if_chart(clicks: pd.DataFrame, cost: pd.DataFrame,
                  title: str = "maxItems what-if: clicks gained against latency added") -> Figure:
    """Left: clicks gained per request by level (extrapolated decay with its interval, the
    no-decay upper bound hollow). Right: added mean latency with its interval."""
    fig = Figure(figsize=(10.0, 3.6))
    ax, ax2 = fig.subplots(1, 2)
    for reading, style in (("extrapolated", dict(color=TEAL, fmt="o")),
                           ("upper", dict(color=GREY, fmt="s", mfc="white"))):
        sub = clicks[clicks["reading"].isin([reading, "today"])].sort_values("max_items")
        err = np.vstack([sub["clicks_gained"] - sub["ci_low"], sub["ci_high"] - sub["clicks_gained"]])
        ax.errorbar(sub["max_items"] + (0.08 if reading == "upper" else 0), sub["clicks_gained"],
                    yerr=np.maximum(err, 0), capsize=3, label=reading if reading != "upper"
                    else "upper bound (no decay past 6)", **style)
    ax.axhline(0, color="#374151", lw=0.8)
    ax.set_xlabel("max_items")
    ax.set_ylabel("clicks gained per request")
    ax.set_title(title, loc="left", fontsize=10, fontweight="bold")
    ax.legend(fontsize=8, frameon=False)
    _style(ax)
    c = cost.sort_values("max_items")
    err = np.vstack([c["added_ms"] - c["added_ci_low"], c["added_ci_high"] - c["added_ms"]])
    ax2.errorbar(c["max_items"], c["added_ms"], yerr=np.maximum(err, 0), fmt="o", capsize=3,
                 color=RED)
    ax2.axhline(0, color="#374151", lw=0.8)
    ax2.set_xlabel("max_items")
    ax2.set_ylabel("mean latency added (ms)")
    _style(ax2)
    fig.tight_layout()
    return fig
