"""Two report sections from issue 15: the QA scenarios of the day and the communication tasks.

Both render from the published ``decision.json`` document (ids already redacted), like
:mod:`whispers_lab.report.tables`: :func:`qa_html` lists the failing QA scenarios by name with
their message (and the skipped ones); :func:`communications_html` lists the communication tasks
due the next day, as the decision allows them (:mod:`whispers_lab.communications`). The daily
report notebook shows both in its last cell.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from .tables import STATUS_STYLE

_TASK_STYLE: dict[str, tuple[str, str]] = {
    "due": ("#15803d", "due"),
    "held": ("#b45309", "held"),
    "cancelled": ("#6b7280", "cancelled"),
}


def _e(x: Any) -> str:
    return html.escape(str(x))


def _pill(colour: str, word: str) -> str:
    return (f"<span style='display:inline-block;background:{colour};color:#fff;padding:1px 8px;"
            f"border-radius:9px;font-weight:600;font-size:12px;white-space:nowrap'>{_e(word)}"
            f"</span>")


def _entry(document: Mapping[str, Any], rid: str) -> Mapping[str, Any] | None:
    for entry in document.get("criteria") or []:
        if isinstance(entry, Mapping) and entry.get("id") == rid:
            return entry
    return None


def qa_html(document: Mapping[str, Any]) -> str:
    """The QA scenarios section: status, counts, failing scenarios with their messages,
    skipped scenarios, unreadable files. Empty when the document has no ``qa_scenarios``."""
    entry = _entry(document, "qa_scenarios")
    if entry is None:
        return ""
    d = entry.get("details") or {}
    colour, word = STATUS_STYLE.get(str(entry.get("status")), STATUS_STYLE["no_data"])
    role = {"required": "must pass today", "watched": "watched today"}.get(
        str(entry.get("role")), "for information today (required in Phase 1)")
    parts = ["<h2 style='margin-bottom:4px'>QA scenarios</h2>",
             f"<p>{_pill(colour, word)} <em>{_e(role)}</em> &mdash; {_e(entry.get('reason'))}</p>"]
    if d.get("scenarios"):
        parts.append(f"<p>{int(d.get('ran') or 0)} ran: {int(d.get('passed') or 0)} passed, "
                     f"{int(d.get('failed') or 0)} failed, {int(d.get('errored') or 0)} errored; "
                     f"{int(d.get('skipped') or 0)} skipped. Files: "
                     f"{_e(', '.join(map(str, d.get('files') or [])))}.</p>")
    failing = d.get("failing") or []
    if failing:
        rows = "".join(
            f"<tr><td>{_e(f.get('scenario'))}</td><td>{_e(f.get('outcome'))}</td>"
            f"<td>{_e(f.get('message') or '')}</td><td>{_e(f.get('file') or '')}</td></tr>"
            for f in failing)
        parts.append("<table style='border-collapse:collapse;font-size:14px'><thead><tr>"
                     "<th align='left'>Failing scenario</th><th align='left'>Outcome</th>"
                     "<th align='left'>Message</th><th align='left'>File</th></tr></thead>"
                     f"<tbody>{rows}</tbody></table>")
    skipped = d.get("skipped_scenarios") or []
    if skipped:
        parts.append("<p>Skipped (did not run): "
                     + "; ".join(_e(s.get("scenario")) for s in skipped) + ".</p>")
    for error in d.get("file_errors") or []:
        parts.append(f"<p style='color:#b91c1c'>{_e(error)}</p>")
    return "\n".join(parts)


def communications_html(comms: Mapping[str, Any] | None) -> str:
    """The communication tasks due the next day (``communications`` of decision.json)."""
    if not comms:
        return ""
    day, date = comms.get("for_day"), comms.get("date")
    parts = [f"<h2 style='margin-bottom:4px'>Communication plan: due tomorrow (day {_e(day)}, "
             f"{_e(date)})</h2>"]
    tasks = comms.get("tasks") or []
    if tasks:
        items = []
        for t in tasks:
            colour, word = _TASK_STYLE.get(str(t.get("status")), _TASK_STYLE["held"])
            items.append(f"<li>{_pill(colour, word)} <strong>{_e(t.get('what'))}</strong> "
                         f"&mdash; {_e(t.get('audience'))}, {_e(t.get('channel'))}. "
                         f"<span style='color:#4b5563'>{_e(t.get('note'))}.</span></li>")
        parts.append("<ul>" + "".join(items) + "</ul>")
    else:
        parts.append("<p>No communication task is due tomorrow.</p>")
    nxt = comms.get("next") or []
    if nxt:
        n = nxt[0]
        cond = " (only once the rollout may proceed)" if n.get("when") == "go" else ""
        parts.append(f"<p style='color:#4b5563'>Next in the plan: day {_e(n.get('day'))}, "
                     f"{_e(n.get('what'))}{_e(cond)}.</p>")
    return "\n".join(parts)
