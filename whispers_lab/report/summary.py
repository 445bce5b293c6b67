"""The day-14 stakeholder summary: "Success metrics shared with stakeholders" (issue 15).

One self-contained page for people who read none of the daily reports, ``DIR/summary.html``,
and the same figures as data, ``DIR/summary.json``:

* the outcome of the rollout (complete, held, rolled back) and how many days got each decision;
* every success metric of the seed plan (API uptime, p95 latency, weight fallback rate, data
  privacy incidents, click-through rate, retention vs control, feedback score, support tickets;
  and Phase 2's positive user sentiment) with its value, interval and verdict. With the export
  (``report`` on the plan's last day does this, ``whispers-lab summary --export`` too) they are
  computed afresh over the **whole general rollout**: :func:`full_evaluation` runs
  :func:`whispers_lab.evaluate.evaluate_day` on the last reported day with every threshold
  criterion's window widened to the audience (every percentage day from day 8), the comparisons
  being cumulative by design, and privacy incidents counted over every day. Without it they are
  the last day's report as it judged them, and the page says so;
* the decision of every day with its reason code ("held: not enough evidence yet" against
  "held: harm detected"), incidents and holds with their reasons
  (:mod:`.history`), and the trend charts across days (:mod:`.trends`).

Aggregates only: values from fewer than ``min_group_users`` users are withheld, ids of the
export are redacted and the page and the JSON pass the privacy scan (:mod:`.privacy`) before
they are written, each atomically. Readable on a phone: tables become labelled cards below
640 px, charts scale to the width.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import write_text_atomic
from ..errors import ReportError
from ..plan import THRESHOLD_CRITERIA, Plan
from . import history, privacy
from .folder import utc_stamp
from .index import DECISION_STYLE, collect_days
from .tables import STATUS_STYLE, format_value, suppress_small_groups
from .trends import Trend, has_points, trend_charts, trends_html

SUMMARY_HTML = "summary.html"
SUMMARY_JSON = "summary.json"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class SuccessMetric:
    """A success metric of the plan: its id in ``summary.json``, the criterion (or trigger)
    behind it, the plan's own words, and a short label."""

    id: str
    source: str
    target: str
    label: str


#: The seed plan's "Success Metrics", in its order, then Phase 2's "Positive user sentiment".
SUCCESS_METRICS: tuple[SuccessMetric, ...] = (
    SuccessMetric("uptime", "uptime", "API uptime > 99.5%", "API uptime"),
    SuccessMetric("p95_response_ms", "p95_response_ms", "P95 response time < 150ms",
                  "p95 response time"),
    SuccessMetric("weight_fallback_rate", "weight_fallback_rate", "Weight fallback rate < 2%",
                  "Weight fallback rate"),
    SuccessMetric("privacy_incidents", "trigger_privacy", "Zero data privacy incidents",
                  "Data privacy incidents"),
    SuccessMetric("ctr", "ctr", "Whispers click-through rate > 15%", "Click-through rate"),
    SuccessMetric("retention", "retention", "User retention same or better vs control",
                  "Retention vs control"),
    SuccessMetric("feedback_score", "feedback_score", "Positive feedback score > 4.0/5.0",
                  "Feedback score"),
    SuccessMetric("support_tickets", "support_tickets", "No increase in support tickets",
                  "Support tickets vs control"),
    SuccessMetric("sentiment", "sentiment", "Positive user sentiment (Phase 2)",
                  "User sentiment (net score)"),
)
#: The verdict in words, by reason code (then by status).
VERDICT_WORDS: dict[str, str] = {
    "pass": "met", "threshold_missed": "missed", "check_failed": "missed",
    "trigger_fired": "missed", "harm_detected": "harm shown",
    "not_demonstrated": "not shown by the final look", "assignment_broken": "assignment broken",
    "untrustworthy": "not trustworthy (sample-ratio mismatch)",
    "insufficient_evidence": "not yet shown", "no_data": "no data",
}


# ---------------------------------------------------------------------------------------
# the success metrics


def verdict(status: str, code: str) -> str:
    """The verdict of a metric in words: met, missed, harm shown, not yet shown, no data."""
    if code in VERDICT_WORDS:
        return VERDICT_WORDS[code]
    return {"pass": "met", "fail": "missed", "inconclusive": "not yet shown"}.get(status, "no data")


def _finite(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(float(x)):
        return None
    return float(x)


def _window(plan: Plan, entry: Mapping[str, Any], through: int) -> str:
    """The days a metric rests on, in words."""
    details = entry.get("details") if isinstance(entry.get("details"), Mapping) else {}
    first = details.get("window_from")
    last = details.get("window_to", through)
    if entry.get("id") in ("retention", "support_tickets"):
        stages = plan.percentage_stages()
        first = stages[0][0] if stages else None
    elif not isinstance(first, int) and entry.get("id") in plan.windows:
        first = plan.window_start(str(entry["id"]), through)  # the statistics' windows
    if not isinstance(first, int) or not isinstance(last, int):
        return f"through day {through}"
    return f"day {first}" if first == last else f"days {first}-{last}"


def _metric_row(m: SuccessMetric, entry: Mapping[str, Any] | None, plan: Plan,
                through: int) -> dict[str, Any]:
    if entry is None:
        return {"id": m.id, "label": m.label, "target": m.target, "criterion": m.source,
                "value": None, "ci_low": None, "ci_high": None, "unit": "", "status": "no_data",
                "code": "no_data", "verdict": "no data", "window": f"through day {through}",
                "withheld": False, "reason": "No result for this metric."}
    details = entry.get("details") if isinstance(entry.get("details"), Mapping) else {}
    status = str(entry.get("status") or "no_data")
    code = str(entry.get("code") or "")
    withheld = bool(entry.get("suppressed"))
    return {"id": m.id, "label": m.label, "target": m.target, "criterion": m.source,
            "value": None if withheld else _finite(entry.get("value")),
            "ci_low": None if withheld else _finite(details.get("ci_low")),
            "ci_high": None if withheld else _finite(details.get("ci_high")),
            "unit": str(entry.get("unit") or ""), "threshold": _finite(entry.get("threshold")),
            "status": status, "code": code, "verdict": verdict(status, code),
            "window": _window(plan, entry, through), "withheld": withheld,
            "reason": str(entry.get("reason") or "")}


def _privacy_row(m: SuccessMetric, total: int | None, unknown_days: list[int],
                 through: int, source: str) -> dict[str, Any]:
    """Zero data privacy incidents: privacy tickets about whispers over every day."""
    window = f"days 0-{through}"
    if total is None:
        status, reason = "no_data", "The export has no support_tickets table: incidents cannot be counted."
    elif total > 0:
        status, reason = "fail", (f"{total} privacy ticket(s) about whispers over {window} "
                                  f"({source}).")
    elif unknown_days:
        status = "inconclusive"
        reason = (f"No privacy ticket about whispers in the reported days, but day(s) "
                  f"{', '.join(map(str, unknown_days))} could not be checked.")
    else:
        status, reason = "pass", f"No privacy ticket about whispers over {window} ({source})."
    code = {"pass": "pass", "fail": "threshold_missed", "inconclusive": "insufficient_evidence",
            "no_data": "no_data"}[status]
    return {"id": m.id, "label": m.label, "target": m.target, "criterion": m.source,
            "value": None if total is None else float(total), "ci_low": None, "ci_high": None,
            "unit": "tickets", "threshold": 0.0, "status": status, "code": code,
            "verdict": verdict(status, code), "window": window, "withheld": False,
            "reason": reason}


def metrics_from_documents(plan: Plan, days: Mapping[int, Mapping[str, Any]], through: int,
                           min_users: int) -> list[dict[str, Any]]:
    """The success metrics as the report of day ``through`` judged them (no export), privacy
    incidents summed over every reported day."""
    doc = suppress_small_groups(days[through], min_users)
    entries = {e.get("id"): e for e in doc.get("criteria") or [] if isinstance(e, Mapping)}
    total, unknown = 0, []
    for day in range(0, through + 1):
        trig = next((t for t in (days.get(day) or {}).get("triggers") or []
                     if isinstance(t, Mapping) and t.get("id") == "trigger_privacy"), None)
        value = _finite((trig or {}).get("value"))
        if value is None:
            unknown.append(day)
        else:
            total += int(value)
    out = []
    for m in SUCCESS_METRICS:
        if m.id == "privacy_incidents":
            out.append(_privacy_row(m, total, unknown, through, "the daily reports"))
        else:
            out.append(_metric_row(m, entries.get(m.source), plan, through))
    return out


def full_rollout_plan(plan: Plan) -> Plan:
    """The plan with every threshold criterion judged over its audience (from the first day
    of the current audience: every percentage day from day 8) instead of the phase."""
    windows = dict(plan.windows)
    windows.update({cid: "audience" for cid in THRESHOLD_CRITERIA})
    return dataclasses.replace(plan, windows=windows)


def full_evaluation(export_path: str | Path, plan: Plan, through: int,
                    min_users: int, *, export: Any = None
                    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The success metrics computed afresh from the export over the whole general rollout
    (see the module doc), ids redacted, small groups withheld; and the export's facts
    (``name``, ``data_end``, ticket totals). ``export``: the export at ``export_path``, opened
    and validated already (the report run's, which remembers its query results); None: it is
    opened here."""
    from contextlib import nullcontext

    from ..evaluate import evaluate_day
    from ..export import open_export
    from ..queries.monitoring import ticket_counts
    from .coverage_check import check_export_covers

    path = Path(export_path)
    check_export_covers(path, plan, through, export)
    with (nullcontext(export) if export is not None else open_export(path)) as export:
        ev = evaluate_day(export, through, full_rollout_plan(plan))
        doc, _ = privacy.redact(export, ev.decision.to_dict())
        tickets = (ticket_counts(export, plan.day_start(0), plan.day_start(through + 1))
                   if export.has("support_tickets") else None)
    doc = suppress_small_groups(doc, min_users)
    entries = {e.get("id"): e for e in doc.get("criteria") or [] if isinstance(e, Mapping)}
    out = []
    for m in SUCCESS_METRICS:
        if m.id == "privacy_incidents":
            total = None if tickets is None else int(tickets.get("privacy") or 0)
            out.append(_privacy_row(m, total, [], through, "the export"))
        else:
            out.append(_metric_row(m, entries.get(m.source), plan, through))
    facts = {"name": path.name,
             "data_end": ev.data_end.isoformat() if ev.data_end is not None else None,
             "critical_bugs": None if tickets is None else int(tickets.get("critical_bugs") or 0),
             "privacy": None if tickets is None else int(tickets.get("privacy") or 0)}
    return out, facts


# ---------------------------------------------------------------------------------------
# the document


def _outcome(plan: Plan, rows: list[dict[str, Any]]) -> dict[str, Any]:
    last = [r for r in rows if r["decision"] is not None][-1]
    day, decision = last["day"], last["decision"]
    rolled = [r["day"] for r in rows if r["decision"] == "ROLLBACK"]
    if decision == "GO" and day >= plan.last_day:
        headline = "Rollout complete: whispers are on for all users"
    elif decision == "GO":
        headline = f"In progress: day {day} was GO ({last['phase']})"
    elif decision == "NO_GO":
        headline = f"Held on day {day} ({last['phase']}): {last['reason_text'] or 'no GO'}"
    elif decision == "ROLLBACK":
        headline = f"Rolled back on day {day}: whispers are switched off"
    else:
        headline = f"Day {day}: the report run failed, no decision"
    if rolled and decision != "ROLLBACK":
        headline += f" (rolled back on day {', '.join(map(str, rolled))})"
    return {"day": day, "decision": decision, "headline": headline,
            "complete": decision == "GO" and day >= plan.last_day}


@dataclass(frozen=True)
class Ahead:
    """:func:`full_evaluation`'s result through ``through``, computed before it was asked
    for (:func:`evaluate_ahead`)."""

    export_path: str
    through: int
    metrics: list[dict[str, Any]]
    facts: dict[str, Any]


def evaluate_ahead(export_path: str | Path, plan: Plan, through: int, export: Any) -> Ahead:
    """:func:`full_evaluation` through ``through``, for a summary written later by the same run
    (the report run computes it while its kernel draws the day: the summary then only reads
    the day folders and writes its page)."""
    metrics, facts = full_evaluation(export_path, plan, through, plan.criteria.min_group_users,
                                     export=export)
    return Ahead(str(export_path), through, metrics, facts)


def build_summary(out_dir: str | Path, plan: Plan, export_path: str | Path | None = None,
                  *, generated_at: str | None = None, export: Any = None,
                  ahead: Ahead | None = None) -> dict[str, Any]:
    """The summary document (what ``summary.json`` holds) from the report folder's day
    folders, plus the full-rollout computation when ``export_path`` is given (taken from
    ``ahead`` when that was computed for the same export, plan and last decided day). Raises
    :class:`ReportError` when the folder holds no day report."""
    from .confirmation import collect_confirmations

    out = Path(out_dir)
    days = collect_days(out)
    if not days:
        raise ReportError(f"no day report in {str(out)!r}: run `whispers-lab report` (or "
                          f"`daily`) first; the summary is built from the day folders")
    min_users = plan.criteria.min_group_users
    rows = history.decision_rows(plan, days, min_users)
    decided = history.reported_days(days)
    through = max(days)
    if export_path is not None:
        last = max(decided or [through])
        if (ahead is not None and ahead.through == last
                and ahead.export_path == str(export_path)):
            metrics, facts = ahead.metrics, ahead.facts
        else:
            metrics, facts = full_evaluation(export_path, plan, last, min_users, export=export)
        basis = ("computed afresh from the export over the whole rollout: the system metrics "
                 "and the survey over every percentage day (the audience), the comparisons "
                 "over every stage, privacy incidents over every day")
    elif decided:
        metrics, facts = metrics_from_documents(plan, days, decided[-1], min_users), None
        basis = (f"as the report of day {decided[-1]} judged them, each over its own window "
                 f"(run `whispers-lab summary --export PATH` for the whole rollout)")
    else:
        metrics, facts = [], None
        basis = "no day's report made a decision, so there are no figures to summarise"
    confirmations = collect_confirmations(out)
    counts = history.decision_counts(rows)
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "rollout_summary",
        "generated_at": generated_at or utc_stamp(),
        "plan": {"name": plan.name, "start_date": plan.start_date.isoformat(),
                 "last_day": plan.last_day},
        "through_day": through,
        "metrics_day": max(decided) if decided else None,
        "complete": bool(decided) and _outcome(plan, rows)["complete"],
        "outcome": _outcome(plan, rows),
        "counts": counts,
        "metrics_basis": basis,
        "export": facts,
        "metrics": metrics,
        "days": rows,
        "incidents": history.incidents(rows, days, min_users, confirmations),
        "confirmations": confirmations,
    }


# ---------------------------------------------------------------------------------------
# the page


def _e(x: Any) -> str:
    return html.escape(str(x))


def _pill(colour: str, word: str) -> str:
    return (f"<span class='pill' style='background:{colour}'>{_e(word)}</span>")


_VERDICT_COLOUR = {"pass": STATUS_STYLE["pass"][0], "fail": STATUS_STYLE["fail"][0],
                   "inconclusive": STATUS_STYLE["inconclusive"][0],
                   "no_data": STATUS_STYLE["no_data"][0]}


def _value_text(m: Mapping[str, Any], key: str = "value") -> str:
    """A metric's value in its unit (HTML-escaped), or a dash."""
    if m.get("withheld") and key == "value":
        return "withheld (fewer than the minimum users)"
    unit = str(m.get("unit") or "")
    if unit == "tickets" and m.get(key) is not None:
        return f"{m[key]:,.0f}"
    return format_value(m.get(key), unit)


def _interval_text(m: Mapping[str, Any]) -> str:
    if m.get("ci_low") is None and m.get("ci_high") is None:
        return "&ndash;"
    lo = _value_text(m, "ci_low") if m.get("ci_low") is not None else "&minus;&infin;"
    hi = _value_text(m, "ci_high") if m.get("ci_high") is not None else "&infin;"
    if m.get("id") == "retention":  # the pass and harm boundaries of the daily looks
        return (f"{lo} to {hi}<br><span class='small'>sequential bounds: the low end must "
                f"clear the margin</span>")
    return f"{lo} to {hi}"


def _metrics_table(doc: Mapping[str, Any]) -> str:
    rows = []
    for m in doc["metrics"]:
        colour = _VERDICT_COLOUR.get(str(m["status"]), STATUS_STYLE["no_data"][0])
        rows.append(
            f"<tr><td data-label='Success metric'><strong>{_e(m['label'])}</strong><br>"
            f"<span class='small'>plan: {_e(m['target'])}</span></td>"
            f"<td data-label='Result'>{_value_text(m)}</td>"
            f"<td data-label='90% interval'>{_interval_text(m)}</td>"
            f"<td data-label='Verdict'>{_pill(colour, m['verdict'])}</td>"
            f"<td data-label='Over'>{_e(m['window'])}</td>"
            f"<td class='why'><details><summary>why</summary>"
            f"{_e(m['reason'])}</details></td></tr>")
    if not rows:
        return "<p>No figures yet.</p>"
    return ("<table><thead><tr><th>Success metric</th><th>Result</th><th>90% interval</th>"
            "<th>Verdict</th><th>Over</th><th>Why</th></tr></thead><tbody>"
            + "\n".join(rows) + "</tbody></table>")


def _days_table(doc: Mapping[str, Any]) -> str:
    rows = []
    for r in doc["days"]:
        if r["decision"] is None:
            rows.append(f"<tr class='empty'><td data-label='Day'>{r['day']}</td>"
                        f"<td data-label='Date'>{_e(r['date'])}</td>"
                        f"<td data-label='Phase'>{_e(r['phase'])}</td>"
                        f"<td data-label='Decision'><span class='pill none'>not reported</span>"
                        f"</td><td class='blank'></td></tr>")
            continue
        colour, word = DECISION_STYLE.get(r["decision"], DECISION_STYLE["ERROR"])
        why = r["reason_text"] or ""
        extra = []
        if r["fired"]:
            extra.append("fired: " + ", ".join(r["fired"]))
        if r["harm"]:
            extra.append("harm shown: " + ", ".join(r["harm"]))
        if r["blocking"] and r["decision"] != "GO":
            extra.append("blocking: " + ", ".join(r["blocking"]))
        if r["error"]:
            extra.append(str(r["error"]))
        detail = (f"<br><span class='small'>{_e('; '.join(extra))}</span>" if extra else "")
        rows.append(f"<tr><td data-label='Day'>{r['day']}</td>"
                    f"<td data-label='Date'>{_e(r['date'])}</td>"
                    f"<td data-label='Phase'>{_e(r['phase'])}</td>"
                    f"<td data-label='Decision'>{_pill(colour, word)}</td>"
                    f"<td data-label='Why' class='why'>{_e(why)}{detail}</td></tr>")
    return ("<table><thead><tr><th>Day</th><th>Date</th><th>Phase</th><th>Decision</th>"
            "<th>Why</th></tr></thead><tbody>" + "\n".join(rows) + "</tbody></table>")


def _incidents_html(doc: Mapping[str, Any]) -> str:
    items = doc["incidents"]
    if not items:
        return "<p>No rollback, hold or failed run: every reported day was GO.</p>"
    colour = {"rollback": DECISION_STYLE["ROLLBACK"][0], "hold": DECISION_STYLE["NO_GO"][0],
              "error": DECISION_STYLE["ERROR"][0]}
    word = {"rollback": "rollback", "hold": "hold", "error": "failed run"}
    parts = ["<ul class='incidents'>"]
    for i in items:
        sub = "".join(f"<li>{_e(x)}</li>" for x in i["items"])
        parts.append(f"<li>{_pill(colour[i['kind']], word[i['kind']])} {_e(i['title'])}"
                     + (f"<ul>{sub}</ul>" if sub else "") + "</li>")
    parts.append("</ul>")
    return "".join(parts)


def summary_html(doc: Mapping[str, Any], plan: Plan, trends: list[Trend]) -> str:
    """The self-contained summary page (inline CSS, charts embedded, no script)."""
    outcome = doc["outcome"]
    colour = {"GO": DECISION_STYLE["GO"][0], "NO_GO": DECISION_STYLE["NO_GO"][0],
              "ROLLBACK": DECISION_STYLE["ROLLBACK"][0]}.get(outcome["decision"],
                                                               DECISION_STYLE["ERROR"][0])
    counts = doc["counts"]
    count_text = ", ".join(f"{counts[k]} {DECISION_STYLE[k][1]}" for k in
                           ("GO", "NO_GO", "ROLLBACK", "ERROR") if counts.get(k))
    if counts.get("none"):
        count_text += f", {counts['none']} not reported"
    metrics = [m for m in doc["metrics"] if m["id"] != "sentiment"]
    met = sum(1 for m in metrics if m["status"] == "pass")
    first, last = plan.day_start(0).date(), plan.day_start(doc["through_day"]).date()
    facts = doc.get("export") or {}
    end = str(facts.get("data_end") or "unknown")[:16].replace("T", " ")
    about_export = (f"Export: {_e(facts.get('name'))} (data through {_e(end)} UTC); the page "
                    f"passed the "
                    f"privacy scan against it." if facts else
                    "Built from the published daily reports only (each already scanned for "
                    "ids of its export); no export was given.")
    e_plan = _e(plan.name)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>{e_plan}: rollout summary for stakeholders</title>
<style>
  body {{ font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
         max-width: 1000px; margin: 0 auto; padding: 20px; color: #1f2937; line-height: 1.45; }}
  .banner {{ color: #fff; padding: 16px 22px; border-radius: 6px; }}
  .banner .big {{ font-size: 26px; font-weight: 700; margin: 4px 0; }}
  h2 {{ margin: 22px 0 6px; }}
  table {{ border-collapse: collapse; width: 100%; font-size: 14px; }}
  th, td {{ border-bottom: 1px solid #e5e7eb; padding: 6px 8px; text-align: left;
           vertical-align: top; }}
  th {{ background: #f9fafb; }}
  tr.empty td {{ color: #9ca3af; }}
  .pill {{ display: inline-block; color: #fff; padding: 1px 8px; border-radius: 9px;
           font-weight: 600; font-size: 12px; white-space: nowrap; }}
  .pill.none {{ background: #e5e7eb; color: #6b7280; }}
  .small {{ color: #4b5563; font-size: 12px; }}
  details summary {{ cursor: pointer; color: #1d4ed8; font-size: 13px; }}
  .why {{ max-width: 420px; overflow-wrap: anywhere; }}
  ul.incidents li {{ margin-bottom: 6px; }}
  ul.incidents ul li {{ font-size: 13px; color: #374151; overflow-wrap: anywhere; }}
  img {{ max-width: 100%; height: auto; }}
  code {{ overflow-wrap: anywhere; }}
  @media (max-width: 640px) {{
    body {{ padding: 10px; }}
    .banner {{ padding: 12px 14px; }}
    .banner .big {{ font-size: 21px; }}
    table, tbody, tr, td {{ display: block; width: auto; }}
    thead {{ display: none; }}
    tr {{ border-bottom: 1px solid #e5e7eb; padding: 6px 0; }}
    td {{ border: none; padding: 1px 0; }}
    td.blank {{ display: none; }}
    td[data-label]::before {{ content: attr(data-label) ": "; font-weight: 600;
                              color: #4b5563; }}
    .why {{ max-width: none; }}
    ul.incidents {{ padding-left: 18px; }}
  }}
</style>
</head>
<body>
<div class="banner" style="background:{colour}">
  <div class="small" style="color:#fff;opacity:.92">{e_plan} &middot; summary for
  stakeholders &middot; day 0 ({first}) to day {doc['through_day']} ({last}), UTC</div>
  <div class="big">{_e(outcome['headline'])}</div>
  <div>{_e(count_text)}. {met} of {len(metrics)} success metrics met.</div>
</div>

<h2>Success metrics</h2>
<p class="small">The plan's success metrics, {_e(doc['metrics_basis'])}. A metric is
<em>met</em> when its 90% interval clears the target (within the plan's tolerance),
<em>missed</em> when the interval is entirely on the wrong side, otherwise <em>not yet
shown</em>: too little data never reads as met.</p>
{_metrics_table(doc)}

<h2>Trends across days</h2>
<p class="small">Each point is what that day's report judged, over its window; colour: green
met, amber not yet shown, red missed.</p>
{trends_html(trends)}

<h2>Incidents and holds</h2>
{_incidents_html(doc)}

<h2>Every day's decision</h2>
{_days_table(doc)}

<h2>About</h2>
<ul class="small">
  <li>{about_export}</li>
  <li>Aggregates only: figures from fewer than {plan.criteria.min_group_users} users are
  withheld. The same figures are in <a href="summary.json">summary.json</a>.</li>
  <li>Generated {_e(doc['generated_at'])} from the day folders' decision.json files
  (plan: {e_plan}).</li>
</ul>
<p><a href="index.html">Back to the rollout timeline</a></p>
</body>
</html>
"""


# ---------------------------------------------------------------------------------------
# writing


@dataclass(frozen=True)
class SummaryResult:
    html: Path
    json: Path
    document: dict[str, Any]


def write_summary(out_dir: str | Path, plan: Plan, export_path: str | Path | None = None,
                  *, generated_at: str | None = None, export: Any = None,
                  ahead: Ahead | None = None) -> SummaryResult:
    """Build the summary and write ``summary.json`` and ``summary.html`` into ``out_dir``,
    each atomically, after the privacy scan (against the export when given) and the check
    that nothing would load from the network. The caller holds the folder's lock.
    ``export``: the export at ``export_path`` already opened and validated (the report run's);
    None: opened here. ``ahead``: see :func:`build_summary`."""
    out = Path(out_dir)
    doc = build_summary(out, plan, export_path, generated_at=generated_at, export=export,
                        ahead=ahead)
    frame = history.trend_frame(plan, collect_days(out), plan.criteria.min_group_users)
    page = summary_html(doc, plan, trend_charts(frame))
    text = json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    network = privacy.network_references(page)
    if network:
        raise ReportError(f"summary withheld: the page would load {len(network)} resource(s) "
                          f"from the network")
    if export_path is not None:
        from contextlib import nullcontext

        from ..export import open_export

        with (nullcontext(export) if export is not None
              else open_export(export_path, validate=False)) as opened:
            leaks = privacy.find_ids(opened, {SUMMARY_HTML: page, SUMMARY_JSON: text})
        if leaks:
            raise ReportError("summary withheld: " + "; ".join(x.sentence() for x in leaks))
    json_path = write_text_atomic(out / SUMMARY_JSON, text)
    html_path = write_text_atomic(out / SUMMARY_HTML, page)
    return SummaryResult(html_path, json_path, doc)


# ---------------------------------------------------------------------------------------
# the index's view


def read_summary(out_dir: str | Path) -> dict[str, Any] | None:
    """``summary.json`` of the folder when ``summary.html`` is there too (None otherwise)."""
    out = Path(out_dir)
    if not (out / SUMMARY_HTML).is_file():
        return None
    try:
        doc = json.loads((out / SUMMARY_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def index_section(plan: Plan, days: Mapping[int, Mapping[str, Any]],
                  summary: Mapping[str, Any] | None = None) -> str:
    """What the index shows above its table: the link to the stakeholder summary (when one
    was written) and the small trend charts (when a report carries figures)."""
    parts = []
    if summary is not None:
        through = summary.get("through_day")
        when = f" (through day {through})" if isinstance(through, int) else ""
        outcome = (summary.get("outcome") or {}).get("headline")
        parts.append(f"<p class='summary-link' style='font-size:16px'><strong><a href="
                     f"'{SUMMARY_HTML}'>Stakeholder summary of the rollout{_e(when)}</a>"
                     f"</strong>" + (f" &mdash; {_e(outcome)}" if outcome else "") + "</p>")
    frame = history.trend_frame(plan, days, plan.criteria.min_group_users)
    if has_points(frame):
        parts.append("<h2 style='margin:14px 0 2px;font-size:18px'>Trends across days</h2>"
                     "<p style='margin:0;color:#4b5563;font-size:13px'>Each point is what that "
                     "day's report judged over its window (green met, amber not yet shown, red "
                     "missed); dashed: the target.</p>"
                     + trends_html(trend_charts(frame), captions=False))
    return "\n".join(parts)
