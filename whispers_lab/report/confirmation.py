"""The rollback confirmation page: chart, HTML, JSON, atomic publication, and the index's view.

:func:`write_confirmation` publishes ``<out>/rollback-<YYYYMMDDTHHMMSSZ>/`` (the flip time)
holding ``confirmation.html`` (one self-contained page: inline CSS, the per-minute chart as an
embedded PNG, no script) and ``confirmation.json`` (the verdict document). The folder is built
beside its target and swapped in (:func:`whispers_lab.atomic.replace_dir`), so re-running the
confirmation with a later export replaces the earlier verdict of the same flip in one step.
:func:`collect_confirmations` is what the rollout index reads to link each confirmation next to
the day's ROLLBACK report.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import matplotlib.dates as mdates
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, PercentFormatter

from ..atomic import replace_dir, restore_interrupted
from ..plan import Plan
from ..rollback import Confirmation
from .charts import AMBER, BLUE, GREY, RED, TEAL, png

FOLDER_PREFIX = "rollback-"
FILES: tuple[str, ...] = ("confirmation.html", "confirmation.json")
_FOLDER = re.compile(r"^rollback-(\d{8}T\d{6}Z)$")

VERDICT_STYLE: dict[str, tuple[str, str, str]] = {
    "confirmed": ("#15803d", "ROLLBACK CONFIRMED", "Whispers are off and the recap page is back "
                                                   "to normal."),
    "not_confirmed": ("#b91c1c", "ROLLBACK NOT CONFIRMED", "Whispers are not fully off, or the "
                                                           "recap page has not recovered."),
    "too_early": ("#6b7280", "TOO EARLY", "The export does not cover the monitor window yet."),
}
_STATUS = {"pass": ("#15803d", "pass"), "fail": ("#b91c1c", "fail"),
           "inconclusive": ("#b45309", "inconclusive")}
LABELS = {
    "whispers_traffic": "Traffic to /api/whispers/context stopped",
    "whispers_shown": "No whispers shown in telemetry",
    "recap_errors": "Recap endpoint error rate back to its pre-incident level",
    "recap_latency": "Recap endpoint latency back to its pre-incident level",
}


def folder_name(disabled_at: dt.datetime) -> str:
    return f"{FOLDER_PREFIX}{disabled_at:%Y%m%dT%H%M%S}Z"


def chart(c: Confirmation) -> Figure:
    """Per minute around the flip: whispers requests and shown events, recap error rate and
    mean latency against the baseline; the flip (red line), the allowance (grey band) and the
    end of the monitor window (dashed)."""
    m = c.minutes.sort_values("minute")
    t = pd.to_datetime(m["minute"])
    fig = Figure(figsize=(10.0, 7.2))
    axes = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [1.3, 1, 1]})
    allowance_end = c.disabled_at + dt.timedelta(minutes=c.settings.allowance_minutes)
    for ax in axes:
        ax.axvspan(c.disabled_at, allowance_end, color=GREY, alpha=0.25, lw=0)
        ax.axvline(c.disabled_at, color=RED, lw=1.4)
        ax.axvline(c.monitor_end, color="#374151", lw=1, ls="--")
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        ax.grid(axis="y", color="#e5e7eb", lw=0.6)
    ax0, ax1, ax2 = axes
    ax0.bar(t, m["whispers_requests"], width=1 / 1440, align="edge", color=TEAL, alpha=0.8,
            label="requests to /api/whispers/context")
    ax0.step(t, m["shown_events"], where="post", color=AMBER, lw=1.4,
             label="whispers_shown events")
    ax0.set_title("Whispers per minute around the flag flip", loc="left", fontsize=11,
                  fontweight="bold")
    ax0.yaxis.set_major_locator(MaxNLocator(4, integer=True))
    top = float(max(m["whispers_requests"].max(), m["shown_events"].max(), 1))
    ax0.set_ylim(0, top * 1.3)
    ax0.text(c.disabled_at, 1.0, " flag off", color=RED, fontsize=8, va="top",
             transform=ax0.get_xaxis_transform())
    ax0.text(allowance_end, 1.0, f" +{c.settings.allowance_minutes} min allowance ends",
             color="#4b5563", fontsize=8, va="top", transform=ax0.get_xaxis_transform())
    ax0.legend(loc="upper left", fontsize=8, framealpha=0.9, edgecolor="none")
    base_err = c.check("recap_errors").details.get("baseline_rate")
    base_ms = c.check("recap_latency").details.get("baseline_mean_ms")
    ax1.plot(t, m["recap_error_rate"].astype(float), ".-", ms=3, lw=0.8, color=BLUE,
             label="recap error rate")
    if base_err is not None:
        ax1.axhline(base_err, color=GREY, ls="--", lw=1.2, label="pre-incident level")
    ax1.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=1))
    ax1.set_ylim(bottom=0)
    ax1.legend(loc="upper right", fontsize=8, frameon=False)
    ax2.plot(t, m["recap_avg_ms"].astype(float), ".-", ms=3, lw=0.8, color=BLUE,
             label="recap mean latency")
    if base_ms is not None:
        ax2.axhline(base_ms, color=GREY, ls="--", lw=1.2, label="pre-incident level")
    ax2.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0f} ms"))
    ax2.set_ylim(bottom=0)
    ax2.legend(loc="upper right", fontsize=8, frameon=False)
    ax2.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
    ax2.set_xlabel("time (UTC); dashed line: end of the monitor window", fontsize=9)
    fig.tight_layout()
    return fig


def _e(x: Any) -> str:
    return html.escape(str(x))


def confirmation_html(c: Confirmation, document: dict[str, Any], plan: Plan,
                      export_name: str) -> str:
    """The self-contained confirmation page."""
    colour, label, headline = VERDICT_STYLE[c.verdict]
    image = base64.b64encode(png(chart(c))).decode("ascii")
    rows = []
    for check in c.checks:
        sc, sw = _STATUS[check.status]
        rows.append(f"<tr><td>{_e(LABELS.get(check.id, check.id))}</td>"
                    f"<td><span class='pill' style='background:{sc}'>{_e(sw)}</span></td>"
                    f"<td>{_e(check.reason)}</td></tr>")
    actions = "".join(f"<li>{_e(a)}</li>" for a in c.actions)
    s = c.settings
    day = plan.day_of(c.disabled_at)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>Whispers rollback of {c.disabled_at:%Y-%m-%d %H:%M} UTC: {_e(label)}</title>
<style>
  body {{ font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
         max-width: 1000px; margin: 0 auto; padding: 20px; color: #1f2937; line-height: 1.45; }}
  .banner {{ color: #fff; padding: 16px 22px; border-radius: 6px; }}
  .banner .big {{ font-size: 28px; font-weight: 700; margin: 2px 0; }}
  table {{ border-collapse: collapse; width: 100%; font-size: 14px; }}
  th, td {{ border-bottom: 1px solid #e5e7eb; padding: 6px 8px; text-align: left;
           vertical-align: top; }}
  th {{ background: #f9fafb; }}
  .pill {{ display: inline-block; color: #fff; padding: 1px 8px; border-radius: 9px;
           font-weight: 600; font-size: 12px; white-space: nowrap; }}
  img {{ max-width: 100%; height: auto; }}
  .small {{ color: #4b5563; font-size: 13px; }}
</style>
</head>
<body>
<div class="banner" style="background:{colour}">
  <div class="small" style="color:#fff;opacity:.9">Whispers rollout &middot; rollback
  confirmation &middot; day {day} &middot; flag off at {c.disabled_at:%Y-%m-%d %H:%M:%S} UTC</div>
  <div class="big">{_e(label)}</div>
  <div>{_e(headline)}</div>
</div>
<h2>What to do</h2>
<ol>{actions}</ol>
<h2>Checks</h2>
<p class="small">Monitor window: {s.monitor_minutes} minutes after the flip (until
{c.monitor_end:%H:%M} UTC). The first {s.allowance_minutes} minutes are an allowance for requests
already in flight and clients that still hold the old page; after it, at most
{100 * s.residual_share:g}% of the normal whispers traffic may remain. The normal level of
whispers traffic and of the recap endpoint (<code>{_e(s.recap_endpoint)}</code>) is
{_e(c.baseline_source)}
({c.baseline[0]:%Y-%m-%d %H:%M}&ndash;{c.baseline[1]:%H:%M} UTC).</p>
<table>
<thead><tr><th>Check</th><th>Status</th><th>What the export shows</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody>
</table>
<h2>Minute by minute</h2>
<img alt="Whispers requests and shown events, recap error rate and latency per minute around
the flag flip" src="data:image/png;base64,{image}">
<h2>About</h2>
<ul class="small">
  <li>Export: {_e(export_name)}; it ends at
  {_e(c.data_end.strftime('%Y-%m-%d %H:%M:%S') + ' UTC' if c.data_end else '(no traffic)')}.</li>
  <li>Plan: {_e(plan.name)} (<code>rollback.monitor_minutes</code> = {s.monitor_minutes},
  <code>[rollback.confirmation]</code>).</li>
  <li>Generated {_e(document.get('generated_at', ''))}. The verdict is also in
  <a href="confirmation.json">confirmation.json</a>. Aggregates only.</li>
</ul>
<p><a href="../index.html">Back to the rollout timeline</a></p>
</body>
</html>
"""


def write_confirmation(c: Confirmation, plan: Plan, out_dir: str | Path, *,
                       export_name: str, generated_at: str) -> Path:
    """Publish ``<out_dir>/rollback-<time>/`` atomically; returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / folder_name(c.disabled_at)
    restore_interrupted(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=out))
    try:
        os.chmod(tmp, 0o755)
        document = c.to_dict(plan)
        document["generated_at"] = generated_at
        document["export"] = export_name
        (tmp / "confirmation.json").write_text(
            json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n",
            encoding="utf-8")
        (tmp / "confirmation.html").write_text(
            confirmation_html(c, document, plan, export_name), encoding="utf-8")
        for name in FILES:
            os.chmod(tmp / name, 0o644)
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def collect_confirmations(out_dir: str | Path) -> list[dict[str, Any]]:
    """Every published confirmation in ``out_dir``: its folder name, verdict, flip time and
    rollout day (unreadable ones are left out), oldest flip first."""
    out: list[dict[str, Any]] = []
    root = Path(out_dir)
    if not root.is_dir():
        return out
    for child in root.iterdir():
        if not (_FOLDER.match(child.name) and child.is_dir()):
            continue
        try:
            doc = json.loads((child / "confirmation.json").read_text(encoding="utf-8"))
            out.append({"folder": child.name, "verdict": str(doc["verdict"]),
                        "disabled_at": str(doc["disabled_at"]),
                        "rollout_day": int(doc["rollout_day"])})
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(out, key=lambda d: d["disabled_at"])


def attach_to_days(confirmations: list[dict[str, Any]],
                   days: dict[int, dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """Day -> confirmations shown next to its report: the latest ROLLBACK day on or before
    the flip's rollout day (the report that called for it), else the flip's own day."""
    rollback_days = sorted(d for d, doc in days.items() if doc.get("decision") == "ROLLBACK")
    out: dict[int, list[dict[str, Any]]] = {}
    for c in confirmations:
        earlier = [d for d in rollback_days if d <= c["rollout_day"]]
        out.setdefault(earlier[-1] if earlier else c["rollout_day"], []).append(c)
    return out


def incident_start_from_reports(reports_dir: str | Path, plan: Plan,
                                disabled_at: dt.datetime) -> dt.datetime | None:
    """The start of the earliest fired trigger window in the ROLLBACK report of the flip's
    rollout day or the day before (None when there is none, e.g. a ticket trigger)."""
    day = plan.day_of(disabled_at)
    starts = []
    for d in (day - 1, day):
        try:
            doc = json.loads((Path(reports_dir) / f"day-{d:02d}" / "decision.json")
                             .read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(doc, dict) or doc.get("decision") != "ROLLBACK":
            continue
        for trig in doc.get("triggers") or []:
            for w in (trig.get("details") or {}).get("windows") or []:
                try:
                    start = dt.datetime.fromisoformat(str(w["start"]))
                except (KeyError, ValueError):
                    continue
                if w.get("fired") and start < disabled_at:
                    starts.append(start)
    return min(starts) if starts else None
