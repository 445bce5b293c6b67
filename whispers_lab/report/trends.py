"""Small trend charts across rollout days, for the index and the day-14 stakeholder summary.

Six charts from :func:`whispers_lab.report.history.trend_frame` (the day folders'
``decision.json`` files, nothing else): the retention difference with its intervals, the
click-through rate, the p95 latency, the error rate, the weight fallback rate, and exposure
(active users with whispers on, and the share of users the phase enables). Each day's point is
what that day's report judged over its window, coloured by its status, with the threshold in
force as a dashed line. Figures use matplotlib's object-oriented API (no pyplot state), are
small (about 460 x 250 px) and are embedded as PNG: pages stay self-contained.

A chart with no point to draw says so in words inside the figure; withheld small-group values
are not drawn and the chart says how many days were withheld.
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, PercentFormatter

from .charts import AMBER, BLUE, GREEN, GREY, RED, TEAL, png

#: Size of one small chart in inches (96 dpi: about 460 x 250 px).
SMALL = (4.8, 2.6)
STATUS_COLOURS: dict[str, str] = {"pass": GREEN, "fail": RED, "inconclusive": AMBER,
                                  "no_data": GREY}


@dataclass(frozen=True)
class Trend:
    """One chart: an id, its title (alt text too), a one-line caption and the PNG bytes."""

    id: str
    title: str
    caption: str
    png: bytes

    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


def _empty(title: str, message: str) -> Figure:
    fig = Figure(figsize=SMALL)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(title, loc="left", fontsize=9, fontweight="bold")
    ax.text(0.5, 0.45, message, ha="center", va="center", fontsize=8, color="#4b5563",
            wrap=True, transform=ax.transAxes)
    _layout(fig)
    return fig


def _layout(fig: Figure, right: float = 0.97) -> None:
    """Fixed margins (a tight layout would render every chart twice; the index redraws them
    after every report)."""
    fig.subplots_adjust(left=0.15, right=right, top=0.88, bottom=0.19)


def _style(ax, days: np.ndarray) -> None:
    ax.grid(True, axis="y", color="#e5e7eb", linewidth=0.7)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(labelsize=7)
    # whole days only, also when one day is drawn (one integer in view: min_n_ticks=1)
    ax.xaxis.set_major_locator(MaxNLocator(8, integer=True, min_n_ticks=1))
    if len(days):
        ax.set_xlim(float(days.min()) - 0.6, float(days.max()) + 0.6)
    ax.set_xlabel("rollout day", fontsize=7)


def _withheld_note(ax, frame: pd.DataFrame) -> None:
    n = int(frame["withheld"].sum()) if len(frame) else 0
    if n:
        ax.text(0.995, 0.98, f"{n} day(s) from fewer users than the minimum: not drawn",
                ha="right", va="top", transform=ax.transAxes, fontsize=6, color="#6b7280")


def _finish(fig: Figure, ax, d: pd.DataFrame, title: str,
            formatter: Callable[[float, int], str]) -> None:
    """The common end of a day-by-day value chart: y-axis format and ticks, title, axes
    style, the note on withheld days, margins."""
    ax.yaxis.set_major_formatter(FuncFormatter(formatter))
    ax.yaxis.set_major_locator(MaxNLocator(4))
    ax.set_title(title, loc="left", fontsize=9, fontweight="bold")
    _style(ax, d["day"].to_numpy(float))
    _withheld_note(ax, d)
    _layout(fig)


def _metric(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    return frame.loc[frame["metric"] == metric].sort_values("day")


def interval_chart(frame: pd.DataFrame, metric: str, title: str,
                   formatter: Callable[[float, int], str], empty: str) -> Figure:
    """A threshold metric day by day: each day's value with its interval (the report's
    ``1 - 2 alpha`` interval over the day's window), coloured by that day's status, and the
    threshold in force (dashed)."""
    d = _metric(frame, metric)
    shown = d.loc[d["value"].notna()]
    if shown.empty:
        return _empty(title, empty)
    fig = Figure(figsize=SMALL)
    ax = fig.add_subplot()
    x = shown["day"].to_numpy(float)
    lo, hi = shown["ci_low"].to_numpy(float), shown["ci_high"].to_numpy(float)
    ok = np.isfinite(lo) & np.isfinite(hi)
    ax.vlines(x[ok], lo[ok], hi[ok], color="#94a3b8", lw=3, alpha=0.8)
    colours = [STATUS_COLOURS.get(s, GREY) for s in shown["status"]]
    ax.scatter(x, shown["value"].to_numpy(float), c=colours, s=16, zorder=3)
    thr = d.loc[d["threshold"].notna()]
    if len(thr):
        ax.step(thr["day"].to_numpy(float), thr["threshold"].to_numpy(float), where="mid",
                color=AMBER, ls="--", lw=1.1)
    values = np.concatenate([shown["value"].to_numpy(float), lo[ok], hi[ok],
                             thr["threshold"].to_numpy(float)])
    values = values[np.isfinite(values)]
    top = float(values.max()) if len(values) else 1.0
    bottom = min(float(values.min()), 0.0) if len(values) else 0.0
    ax.set_ylim(bottom, top * 1.15 if top > 0 else 1.0)
    _finish(fig, ax, d, title, formatter)
    return fig


def retention_chart(frame: pd.DataFrame) -> Figure:
    """The retention difference (treatment minus control) at each day's look: the estimate,
    the sequential interval (thick: its low end must clear the margin for a pass, its high end
    below zero shows harm), the one-look interval (thin), the margin (red dashed) and zero."""
    title = "Retention: treatment minus control (D1)"
    d = _metric(frame, "retention")
    shown = d.loc[d["value"].notna()]
    if shown.empty:
        return _empty(title, "No retention comparison yet (it starts on the first\n"
                             "percentage day, once users have had time to return).")
    fig = Figure(figsize=SMALL)
    ax = fig.add_subplot()
    x = shown["day"].to_numpy(float)
    est = shown["value"].to_numpy(float)
    nlo, nhi = shown["naive_low"].to_numpy(float), shown["naive_high"].to_numpy(float)
    slo, shi = shown["ci_low"].to_numpy(float), shown["ci_high"].to_numpy(float)
    finite = np.concatenate([est, nlo, nhi, slo, shi, [0.0]])
    finite = finite[np.isfinite(finite)]
    margin = d["threshold"].dropna()
    if len(margin):
        finite = np.append(finite, margin.to_numpy(float))
    pad = max(0.1 * float(np.ptp(finite)), 0.004)
    low_edge, high_edge = float(finite.min()) - pad, float(finite.max()) + pad
    ax.vlines(x, np.where(np.isfinite(slo), slo, low_edge),
              np.where(np.isfinite(shi), shi, high_edge), color=BLUE, lw=5, alpha=0.3)
    ok = np.isfinite(nlo) & np.isfinite(nhi)
    ax.vlines(x[ok], nlo[ok], nhi[ok], color="#374151", lw=1)
    colours = [STATUS_COLOURS.get(s, GREY) for s in shown["status"]]
    ax.scatter(x, est, c=colours, s=16, zorder=3)
    ax.axhline(0, color="#374151", lw=0.7)
    if len(margin):
        ax.step(d.loc[d["threshold"].notna(), "day"].to_numpy(float), margin.to_numpy(float),
                where="mid", color=RED, ls="--", lw=1.1)
    ax.set_ylim(low_edge, high_edge)
    _finish(fig, ax, d, title, lambda v, _: f"{100 * v:+.1f} pp")
    return fig


def exposure_chart(frame: pd.DataFrame) -> Figure:
    """Active users with whispers on, by day (bars), and the share of external users the
    day's phase enables (step line, right axis; 0% in the internal and beta phases)."""
    title = "Exposure: active users with whispers on"
    d = _metric(frame, "exposure")
    if d.empty or not (d["value"].notna().any() or d["percentage"].notna().any()):
        return _empty(title, "No report with exposure figures yet.")
    fig = Figure(figsize=SMALL)
    ax = fig.add_subplot()
    x = d["day"].to_numpy(float)
    ax.bar(x, d["value"].fillna(0).to_numpy(float), width=0.7, color=TEAL, alpha=0.85)
    ax.yaxis.set_major_locator(MaxNLocator(4, integer=True))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax2 = ax.twinx()
    ax2.step(x, d["percentage"].fillna(0).to_numpy(float), where="mid", color=AMBER, lw=1.3)
    ax2.set_ylim(0, 105)
    ax2.yaxis.set_major_formatter(PercentFormatter(100, decimals=0))
    ax2.tick_params(labelsize=7, colors=AMBER)
    ax2.spines["top"].set_visible(False)
    ax.set_title(title, loc="left", fontsize=9, fontweight="bold")
    _style(ax, x)
    _withheld_note(ax, d)
    _layout(fig, right=0.86)
    return fig


def _pct(decimals: int) -> Callable[[float, int], str]:
    return lambda v, _: f"{100 * v:.{decimals}f}%"


#: Charts already drawn in this process, by the digest of their frame (the last few): a
#: report on the plan's last day draws the same six for the index, the stakeholder summary
#: and the index again (about 0.2 s each).
_DRAWN: dict[str, list[Trend]] = {}
_DRAWN_KEPT = 4


def _digest(frame: pd.DataFrame) -> str:
    h = hashlib.sha256(repr((list(frame.columns), [str(t) for t in frame.dtypes])).encode())
    h.update(pd.util.hash_pandas_object(frame, index=True).to_numpy().tobytes())
    return h.hexdigest()


def trend_charts(frame: pd.DataFrame) -> list[Trend]:
    """The six trend charts, in display order (drawn once per distinct frame)."""
    key = _digest(frame)
    if key in _DRAWN:
        return list(_DRAWN[key])
    out = _draw(frame)
    while len(_DRAWN) >= _DRAWN_KEPT:
        _DRAWN.pop(next(iter(_DRAWN)))
    _DRAWN[key] = out
    return list(out)


def _draw(frame: pd.DataFrame) -> list[Trend]:
    specs: list[tuple[str, str, str, Callable[[], Figure]]] = [
        ("retention", "Retention vs control",
         "Treatment minus control, D1 return: dot = estimate (green pass, amber not yet shown, "
         "red fail), thick bar = sequential bounds, thin = one-look interval, red dashes = margin.",
         lambda: retention_chart(frame)),
        ("ctr", "Click-through rate",
         "Clicks / impressions of the current audience so far (from day 8: every percentage "
         "day), 90% interval; dashes: the 15% target.",
         lambda: interval_chart(frame, "ctr", "Whispers click-through rate", _pct(0),
                                "No click-through rate yet.")),
        ("p95_response_ms", "p95 response time",
         "95th-percentile latency of /api/whispers/context over the phase so far, 90% "
         "interval; dashes: the 150 ms target.",
         lambda: interval_chart(frame, "p95_response_ms", "p95 response time (ms)",
                                lambda v, _: f"{v:.0f} ms", "No latency figures yet.")),
        ("error_rate", "Error rate",
         "Share of whispers requests with status >= 400 over the phase so far, 90% interval; "
         "dashes: the 2% budget.",
         lambda: interval_chart(frame, "error_rate", "Error rate", _pct(1),
                                "No error rate yet.")),
        ("weight_fallback_rate", "Weight fallback rate",
         "Share of requests ranked with fallback weights over the phase so far, 90% interval; "
         "dashes: the budget of the phase (5% in the beta, 2% after).",
         lambda: interval_chart(frame, "weight_fallback_rate", "Weight fallback rate", _pct(1),
                                "No fallback rate yet.")),
        ("exposure", "Exposure",
         "Bars: active users with whispers on each day; amber line (right axis): the share of "
         "users the phase enables.",
         lambda: exposure_chart(frame)),
    ]
    return [Trend(tid, title, caption, png(build())) for tid, title, caption, build in specs]


def trends_html(trends: list[Trend], *, captions: bool = True) -> str:
    """A responsive grid of the charts (one column on a phone), images embedded."""
    e = html.escape
    cells = []
    for t in trends:
        caption = (f"<figcaption style='font-size:12px;color:#4b5563;margin-top:2px'>"
                   f"{e(t.caption)}</figcaption>" if captions else "")
        cells.append(f"<figure style='margin:0;min-width:0'><img src='{t.data_uri()}' "
                     f"alt='{e(t.title)} by rollout day' "
                     f"style='width:100%;height:auto;display:block'>{caption}</figure>")
    return ("<div class='trends' style='display:grid;grid-template-columns:"
            "repeat(auto-fill,minmax(min(100%,300px),1fr));gap:10px 16px;margin:12px 0'>"
            + "".join(cells) + "</div>")


def has_points(frame: pd.DataFrame) -> bool:
    """Whether any trend has something to draw (an index without reports shows no charts)."""
    return bool(len(frame)) and bool(frame["value"].notna().any()
                                     or frame["percentage"].notna().any())
