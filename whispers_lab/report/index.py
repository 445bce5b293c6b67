"""``reports/index.html``: the rollout timeline, one row per rollout day.

Built from the ``day-NN/decision.json`` files in the report folder (the reports are the record;
the index holds nothing of its own), so it can be regenerated at any time. Each day shows its
date, phase, decision in colour (GO green, NO_GO amber, ROLLBACK red, ERROR grey, no report
yet: blank), the stage actually in force that day beside the plan's phase (from each
``decision.json``'s ``state``; amber when the rollout is not where the calendar is), the first
reason, the plan's next step and a link to the day's report. The page
is one self-contained HTML file with inline CSS and no scripts.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

from ..atomic import write_text_atomic
from ..plan import Plan
from .folder import day_dir_name, utc_stamp

_DAY_DIR = re.compile(r"^day-(\d{2,})$")

#: Background colour and label of each decision; shared with the report banner.
DECISION_STYLE: dict[str, tuple[str, str]] = {
    "GO": ("#15803d", "GO"),
    "NO_GO": ("#b45309", "NO-GO"),
    "ROLLBACK": ("#b91c1c", "ROLLBACK"),
    "ERROR": ("#6b7280", "ERROR"),
}
_NONE_STYLE = ("#e5e7eb", "no report")

#: Link text of a rollback confirmation next to the day's report.
_CONFIRM_WORDS = {"confirmed": "confirmed", "not_confirmed": "NOT confirmed",
                  "too_early": "check: too early"}

_ACTION_WORDS = {
    "continue": "continue the current phase",
    "advance": "advance to the next phase",
    "complete": "rollout complete: keep 100%",
    "hold": "hold the current audience",
    "rollback": "roll back now",
}


def collect_days(out_dir: str | Path) -> dict[int, dict[str, Any]]:
    """Rollout day -> its decision.json document, for every ``day-NN`` folder of ``out_dir``.
    A folder whose decision.json is missing or unreadable is shown as an ERROR."""
    out: dict[int, dict[str, Any]] = {}
    root = Path(out_dir)
    if not root.is_dir():
        return out
    for child in root.iterdir():
        m = _DAY_DIR.match(child.name)
        if not m or not child.is_dir():
            continue
        day = int(m.group(1))
        try:
            doc = json.loads((child / "decision.json").read_text(encoding="utf-8"))
            if not isinstance(doc, dict):
                raise ValueError("not an object")
        except (OSError, ValueError) as exc:
            doc = {"decision": "ERROR", "day": day,
                   "error": f"decision.json is missing or unreadable ({type(exc).__name__})"}
        out[day] = doc
    return out


def _summary(doc: dict[str, Any]) -> str:
    if doc.get("decision") == "ERROR":
        return "Run failed, no decision: " + str(doc.get("error") or "unknown error")
    reasons = doc.get("reasons") or []
    first = str(reasons[0]) if reasons else ""
    if doc.get("decision") in ("NO_GO", "ROLLBACK") and doc.get("reason_text"):
        return f"{str(doc['reason_text']).capitalize()}. {first}"
    return first


def _next_step(doc: dict[str, Any]) -> str:
    step = doc.get("next_step")
    if not isinstance(step, dict):
        return "fix the run, then re-run the report" if doc.get("decision") == "ERROR" else ""
    words = _ACTION_WORDS.get(str(step.get("action")), str(step.get("action")))
    audience = step.get("audience")
    if audience == "percentage":
        words += f" ({step.get('percentage', 0):g}% of active users)"
    elif audience == "beta":
        words += " (beta users)"
    elif audience == "internal":
        words += " (internal team)"
    return words


def _actual_stage(doc: dict[str, Any] | None) -> tuple[str, bool]:
    """The stage actually in force on the day (its ``decision.json`` ``state``), and whether
    it differs from the plan's calendar."""
    state = doc.get("state") if isinstance(doc, dict) else None
    if not isinstance(state, dict) or not isinstance(state.get("stage"), dict):
        return "", False
    stage = state["stage"]
    if stage.get("off"):
        words = "whispers off"
    elif stage.get("audience") == "percentage":
        words = f"{float(stage.get('percentage') or 0):g}%"
    else:
        words = {"internal": "internal team", "beta": "beta users"}.get(
            str(stage.get("audience")), str(stage.get("audience")))
    if state.get("assumed"):
        words += " (assumed)"
    return words, not bool(state.get("on_plan", True))


def _generated(doc: dict[str, Any]) -> str:
    rep = doc.get("report") if isinstance(doc.get("report"), dict) else {}
    return str(rep.get("generated_at") or doc.get("generated_at") or "")


def index_html(plan: Plan, days: dict[int, dict[str, Any]], generated_at: str | None = None,
               confirmations: dict[int, list[dict[str, Any]]] | None = None,
               summary: dict[str, Any] | None = None) -> str:
    """The index page for ``plan`` given each day's decision document (and the rollback
    confirmations to link next to each day's report, see :mod:`.confirmation`). Above the
    table: the link to the stakeholder summary (``summary``: its summary.json document, None
    when none was written) and the trend charts across days (issue 15, :mod:`.summary`)."""
    from .summary import index_section

    e = html.escape
    top = index_section(plan, days, summary)
    confirmations = confirmations or {}
    all_days = sorted(set(range(plan.last_day + 1)) | set(days))
    latest = max(days) if days else None

    strip = []
    for day in all_days:
        doc = days.get(day)
        colour, label = DECISION_STYLE.get(str(doc.get("decision")), _NONE_STYLE) if doc else _NONE_STYLE
        fg = "#fff" if doc else "#6b7280"
        cell = (f'<div class="tl" style="background:{colour};color:{fg}" '
                f'title="day {day}: {e(label)}">{day}</div>')
        if doc:
            cell = f'<a href="{day_dir_name(day)}/report.html">{cell}</a>'
        strip.append(cell)

    rows = []
    for day in all_days:
        doc = days.get(day)
        date = plan.day_start(day).date().isoformat() if day >= 0 else ""
        try:
            phase = plan.phase_for_day(day).name
        except Exception:
            phase = ""
        confirm_links = "".join(
            f"<br><a class='confirm {e(c['verdict'])}' href='{e(c['folder'])}/confirmation.html'>"
            f"rollback {e(_CONFIRM_WORDS.get(c['verdict'], c['verdict']))}</a>"
            for c in confirmations.get(day, []))
        if doc is None:
            rows.append(f"<tr class='empty'><td data-label='Day'>{day}</td>"
                        f"<td data-label='Date'>{date}</td><td data-label='Phase'>{e(phase)}</td>"
                        f"<td class='blank'></td>"
                        f"<td data-label='Decision'><span class='badge none'>no report yet</span>"
                        f"</td><td class='blank'></td><td class='blank'></td>"
                        f"<td class='blank'></td><td>{confirm_links}</td></tr>")
            continue
        actual, moved = _actual_stage(doc)
        actual_cell = (f"<td class='off-plan' data-label='Stage in force'>{e(actual)}</td>"
                       if moved else f"<td data-label='Stage in force'>{e(actual)}</td>")
        colour, label = DECISION_STYLE.get(str(doc.get("decision")), DECISION_STYLE["ERROR"])
        link = f"{day_dir_name(day)}/report.html"
        current = " current" if day == latest else ""
        rows.append(
            f"<tr class='{current.strip()}'><td data-label='Day'>{day}</td>"
            f"<td data-label='Date'>{date}</td><td data-label='Phase'>{e(phase)}</td>"
            f"{actual_cell}"
            f"<td data-label='Decision'><span class='badge' style='background:{colour}'>"
            f"{e(label)}</span></td>"
            f"<td class='why' data-label='Why'>{e(_summary(doc))}</td>"
            f"<td data-label='Next step'>{e(_next_step(doc))}</td>"
            f"<td class='when' data-label='Generated (UTC)'>{e(_generated(doc))}</td>"
            f"<td><a href='{link}'>report</a>{confirm_links}</td></tr>")

    if latest is not None:
        doc = days[latest]
        colour, label = DECISION_STYLE.get(str(doc.get("decision")), DECISION_STYLE["ERROR"])
        headline = (f"<p class='latest'>Latest report: day {latest} "
                    f"<span class='badge' style='background:{colour}'>{e(label)}</span> "
                    f"&mdash; next step: {e(_next_step(doc)) or 'see the report'}. "
                    f"<a href='{day_dir_name(latest)}/report.html'>Open the report</a></p>")
    else:
        headline = "<p class='latest'>No report has been produced yet.</p>"

    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>{e(plan.name)}: rollout timeline</title>
<style>
  body {{ font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
         max-width: 1200px; margin: 0 auto; padding: 24px; color: #1f2937; line-height: 1.45; }}
  h1 {{ margin-bottom: 4px; }}
  .sub {{ color: #4b5563; margin-top: 0; }}
  .strip {{ display: flex; gap: 4px; margin: 16px 0; flex-wrap: wrap; }}
  .strip a {{ text-decoration: none; }}
  .tl {{ width: 44px; height: 36px; border-radius: 4px; display: flex; align-items: center;
         justify-content: center; font-weight: 600; }}
  table {{ border-collapse: collapse; width: 100%; font-size: 14px; }}
  th, td {{ border-bottom: 1px solid #e5e7eb; padding: 6px 8px; text-align: left;
           vertical-align: top; }}
  th {{ background: #f9fafb; }}
  tr.current td {{ background: #f0f9ff; }}
  tr.empty td {{ color: #9ca3af; }}
  .badge {{ display: inline-block; color: #fff; padding: 2px 8px; border-radius: 10px;
            font-weight: 600; font-size: 13px; white-space: nowrap; }}
  .badge.none {{ background: #e5e7eb; color: #6b7280; }}
  .why {{ max-width: 460px; }}
  .when {{ white-space: nowrap; color: #6b7280; font-size: 12px; }}
  .legend span {{ margin-right: 12px; }}
  .latest {{ font-size: 16px; }}
  a.confirm {{ white-space: nowrap; font-size: 13px; }}
  a.confirm.confirmed {{ color: #15803d; }}
  a.confirm.not_confirmed {{ color: #b91c1c; font-weight: 600; }}
  a.confirm.too_early {{ color: #6b7280; }}
  td.off-plan {{ color: #b45309; font-weight: 600; }}
  /* a phone (~400 px): each day becomes a card, labelled cell by cell, instead of a table
     wider than the screen */
  @media (max-width: 640px) {{
    body {{ padding: 12px; }}
    table, tbody, tr, td {{ display: block; width: auto; }}
    thead {{ display: none; }}
    tr {{ border-bottom: 1px solid #e5e7eb; padding: 6px 0; }}
    td {{ border: none; padding: 1px 0; }}
    td.blank {{ display: none; }}
    td[data-label]::before {{ content: attr(data-label) ": "; font-weight: 600; color: #4b5563; }}
    .why {{ max-width: none; overflow-wrap: anywhere; }}
    .when {{ white-space: normal; }}
  }}
</style>
</head>
<body>
<h1>{e(plan.name)}: rollout timeline</h1>
<p class="sub">Day 0 is {plan.start_date.isoformat()} (UTC). One go/no-go report per rollout day;
click a day to open its report. Index generated {e(generated_at or utc_stamp())}.</p>
{headline}
<div class="strip">{''.join(strip)}</div>
<p class="legend">
  <span><span class="badge" style="background:{DECISION_STYLE['GO'][0]}">GO</span> proceed as planned</span>
  <span><span class="badge" style="background:{DECISION_STYLE['NO_GO'][0]}">NO-GO</span> hold the current audience</span>
  <span><span class="badge" style="background:{DECISION_STYLE['ROLLBACK'][0]}">ROLLBACK</span> disable whispers now</span>
  <span><span class="badge" style="background:{DECISION_STYLE['ERROR'][0]}">ERROR</span> the run failed; no decision</span>
</p>
{top}
<table>
<thead><tr><th>Day</th><th>Date</th><th>Planned phase</th><th>Stage in force</th>
<th>Decision</th><th>Why</th>
<th>Next step</th><th>Generated (UTC)</th><th></th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody>
</table>
</body>
</html>
"""


def write_index(out_dir: str | Path, plan: Plan) -> Path:
    """Regenerate ``<out_dir>/index.html`` from the day folders (atomically)."""
    out = Path(out_dir)
    path = out / "index.html"
    from .confirmation import attach_to_days, collect_confirmations
    from .summary import read_summary

    days = collect_days(out)
    links = attach_to_days(collect_confirmations(out), days)
    write_text_atomic(path, index_html(plan, days, confirmations=links,
                                       summary=read_summary(out)))
    return path


def draw_trends_ahead(out_dir: str | Path, plan: Plan, day: int,
                      document: dict[str, Any]) -> None:
    """Draw the index's trend charts for the folder as it will be once ``document`` (the day's
    decision, not yet published) is: the report run does this in its evaluation thread while
    the kernel draws the day. Charts are kept by the content of their data
    (:func:`~whispers_lab.report.trends.trend_charts`), so :func:`write_index` (and the
    stakeholder summary) after publication finds them drawn, about 1.5 s at the first drawing
    of a process; if the published folder differs, they draw their own. The charts come from
    the index's own section (:func:`~whispers_lab.report.summary.index_section`), so they are
    the ones the index asks for; its HTML is dropped."""
    from .summary import index_section

    days = collect_days(out_dir)
    days[day] = document
    index_section(plan, days)
