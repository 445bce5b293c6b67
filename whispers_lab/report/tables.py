"""The report's HTML pieces: the decision banner and the criteria table.

Both are built from the ``decision.json`` document (after id redaction), not from live objects,
so the page shows exactly what the published decision says. Plain words for readers who never
saw the plan file: each criterion gets a label, each flag a sentence, each status a colour.

Small-group suppression: a value (and the reason sentence quoting it) computed from fewer than
``plan.criteria.min_group_users`` users is withheld; the status stays, because the decision
rests on it. Which details count the users behind a criterion is declared in
:data:`USER_COUNT_KEYS`.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..plan import Plan
from .index import DECISION_STYLE

#: Plain-words label of every criterion and trigger id.
LABELS: dict[str, str] = {
    "telemetry_flowing": "Telemetry flowing (events every hour)",
    "ranking_timeouts": "Ranking timeouts (ranking slower than the timeout)",
    "weight_persistence": "Ranking weights identical across a user's devices",
    "cue_cooldown": "Maya cue respects its cooldown",
    "error_rate": "Error rate of /api/whispers/context",
    "avg_response_ms": "Average response time",
    "p95_response_ms": "95th-percentile response time",
    "weight_fallback_rate": "Weight fallback rate",
    "uptime": "API uptime",
    "critical_bugs": "Critical bugs reported",
    "relevance": "Ranking relevance (user feedback)",
    "feedback_score": "Feedback score (in-app survey)",
    "sentiment": "Positive user sentiment (net score of the in-app survey)",
    "ctr": "Whispers click-through rate",
    "retention": "User retention vs control",
    "support_tickets": "Support tickets vs control",
    "qa_scenarios": "QA scenarios pass (scripts/qa-whispers.js)",
    "srm": "Sample ratio check (assignment works as planned)",
    "assignment_integrity": "Every active user served what the rollout's stage plans",
    "trigger_error_rate": "Rollback trigger: error rate spike",
    "trigger_latency": "Rollback trigger: slow responses",
    "trigger_privacy": "Rollback trigger: privacy concern reported",
    "trigger_db": "Rollback trigger: database degradation",
    "trigger_critical_bug": "Rollback trigger: critical bug",
}

#: Plain words for each flag and its value.
FLAG_WORDS: dict[str, Any] = {
    "NEXT_PUBLIC_WHISPERS_ENABLED": lambda v: "whispers are shown" if v else "whispers are OFF",
    "NEXT_PUBLIC_WHISPERS_CONTEXT_RANKING": lambda v: ("memories ranked by context" if v
                                                       else "context ranking off"),
    "NEXT_PUBLIC_WHISPERS_MAX": lambda v: f"at most {v} whispers per recap page",
    "NEXT_PUBLIC_WHISPERS_RANKING_TIMEOUT_MS": lambda v: f"ranking gives up after {v} ms",
}

#: Status colour (background) and word.
STATUS_STYLE: dict[str, tuple[str, str]] = {
    "pass": ("#15803d", "pass"),
    "fail": ("#b91c1c", "fail"),
    "inconclusive": ("#b45309", "inconclusive"),
    "no_data": ("#6b7280", "no data"),
}

ROLE_WORDS: dict[str, str] = {"required": "must pass", "watched": "watched",
                              "info": "for information"}

#: Plain words of each result's reason code (shown under its status).
CODE_WORDS: dict[str, str] = {
    "pass": "", "harm_detected": "harm detected", "threshold_missed": "shown to miss the target",
    "not_demonstrated": "not shown by the final look", "check_failed": "check failed",
    "trigger_fired": "", "assignment_broken": "assignment broken",
    "insufficient_evidence": "not enough evidence yet",
    "untrustworthy": "untrustworthy (sample-ratio mismatch)", "no_data": "",
}

#: Where each criterion's details give the number of users its value rests on. A pair means
#: two groups (treatment and control): the smaller one counts. ``stat.`` reads the statistics
#: package's own details.
USER_COUNT_KEYS: dict[str, tuple[str | tuple[str, str], ...]] = {
    "error_rate": ("users",),
    "avg_response_ms": ("users",),
    "weight_fallback_rate": ("users",),
    "ranking_timeouts": ("users",),
    "weight_persistence": ("multi_device_users",),
    "cue_cooldown": ("users",),
    "relevance": ("stat.users",),
    "feedback_score": ("stat.clusters", "stat.users"),
    "sentiment": ("users", "stat.clusters"),
    "ctr": ("stat.clusters", "stat.users"),
    "retention": (("stat.n_treatment", "stat.n_control"),),
    "support_tickets": (("stat.users_t", "stat.users_c"),),
    "srm": (("stat.n_treatment", "stat.n_control"), ("n_treatment", "n_control")),
    "assignment_integrity": (("planned_treatment", "planned_control"),),
}
#: Criteria over all of the day's whispers requests whose details give no user count of their
#: own: the users behind the day's requests (the ``error_rate`` entry's count) stand for them.
DAY_REQUEST_CRITERIA: tuple[str, ...] = ("uptime", "p95_response_ms")
#: Criteria computed from requests, for documents without a user count: a request count
#: below the minimum proves the users are too few (each user makes at least one request).
REQUEST_COUNT_KEYS: dict[str, str] = {
    "error_rate": "n", "avg_response_ms": "n", "p95_response_ms": "n",
    "weight_fallback_rate": "n", "ranking_timeouts": "ranked_requests",
}

_AUDIENCE = {"internal": "the internal team", "beta": "the beta users", "none": "nobody"}


def _e(x: Any) -> str:
    return html.escape(str(x))


def _lookup(details: Mapping[str, Any], key: str) -> float | None:
    source: Any = details
    if key.startswith("stat."):
        source, key = details.get("stat") or {}, key[5:]
    value = source.get(key) if isinstance(source, Mapping) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def user_count(entry: Mapping[str, Any]) -> int | None:
    """Users behind a criterion's value, when its details say so (None: unknown or not
    user-based). For a two-group comparison, the smaller group."""
    details = entry.get("details") or {}
    for key in USER_COUNT_KEYS.get(str(entry.get("id")), ()):
        if isinstance(key, tuple):
            values = [_lookup(details, k) for k in key]
            if all(v is not None for v in values):
                return int(min(v for v in values if v is not None))
        else:
            value = _lookup(details, key)
            if value is not None:
                return int(value)
    return None


def suppressed(entry: Mapping[str, Any], min_users: int, day_users: int | None = None) -> bool:
    """Whether the entry's value rests on fewer than ``min_users`` users (but more than none).
    ``day_users``: the users behind the day's whispers requests (see
    :data:`DAY_REQUEST_CRITERIA`)."""
    n = user_count(entry)
    if n is None and day_users is not None and str(entry.get("id")) in DAY_REQUEST_CRITERIA:
        n = day_users
    if n is None and str(entry.get("id")) in REQUEST_COUNT_KEYS:
        requests = _lookup(entry.get("details") or {}, REQUEST_COUNT_KEYS[str(entry.get("id"))])
        n = None if requests is None or requests >= min_users else int(requests)
    return n is not None and 0 < n < min_users


def format_value(value: Any, unit: str) -> str:
    """A value in its unit, for people: shares as percentages, times in ms, counts whole."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "&ndash;"
    v = float(value)
    if unit == "share":
        return f"{100 * v:.2f}%" if abs(v) < 0.1 else f"{100 * v:.1f}%"
    if unit == "ms":
        return f"{v:,.1f} ms"
    if unit == "rating":
        return f"{v:.2f} / 5"
    if unit == "net score":  # issue 15: share rated 4-5 minus share rated 1-2
        return f"{v:+.2f}"
    if unit == "p-value":
        return f"{v:.3g}"
    if unit == "difference":
        return f"{100 * v:+.2f} pp"
    if unit == "ratio":
        return f"{v:.2f}&times;"
    if unit == "minutes":
        return f"{v:,.0f} min"
    if unit == "events/hour":
        return f"{v:,.0f} / hour"
    if v.is_integer():
        return f"{v:,.0f}"
    return f"{v:,.3g}"


def format_threshold(entry: Mapping[str, Any]) -> str:
    value, unit, rid = entry.get("threshold"), str(entry.get("unit") or ""), str(entry.get("id"))
    if value is None:
        return "&ndash;"
    shown = format_value(value, unit)
    if entry.get("kind") == "trigger":
        if unit == "minutes":
            return f"fires at {shown} in a row"
        if unit == "tickets":
            return f"fires on more than {shown} ticket(s)"
        return f"fires above {shown}"
    if rid == "srm":
        return f"p-value at least {shown}"
    if rid in ("uptime", "ctr", "relevance", "feedback_score", "telemetry_flowing",
               "sentiment"):
        return f"at least {shown}"
    if rid == "retention":
        return f"no worse than {shown}"
    return f"at most {shown}"


def _pill(colour: str, word: str) -> str:
    return (f"<span style='display:inline-block;background:{colour};color:#fff;padding:1px 8px;"
            f"border-radius:9px;font-weight:600;font-size:12px;white-space:nowrap'>{_e(word)}</span>")


def flag_lines(flags: Mapping[str, Any]) -> list[str]:
    """``NAME=value`` with what it means, one line per flag."""
    out = []
    for name, value in flags.items():
        text = "true" if value is True else "false" if value is False else str(value)
        words = FLAG_WORDS.get(name, lambda v: "")(value)
        out.append(f"<code>{_e(name)}={_e(text)}</code>" + (f" &mdash; {_e(words)}" if words else ""))
    return out


def _audience(step: Mapping[str, Any]) -> str:
    aud = str(step.get("audience"))
    if aud == "percentage":
        return f"{float(step.get('percentage') or 0):g}% of active users"
    return _AUDIENCE.get(aud, aud)


def decision_banner_html(doc: Mapping[str, Any], plan: Plan | None = None) -> str:
    """The coloured decision banner: verdict, the plan's next step, flags in plain words.
    With ``plan``, reasons quoting a small group's figures are withheld."""
    if plan is not None:
        doc = suppress_small_groups(doc, plan.criteria.min_group_users)
    verdict = str(doc.get("decision"))
    colour, label = DECISION_STYLE.get(verdict, DECISION_STYLE["ERROR"])
    phase = doc.get("phase") or {}
    headline = {
        "GO": "GO: the day passed; proceed with the plan.",
        "NO_GO": "NO-GO: hold the rollout where it is.",
        "ROLLBACK": "ROLLBACK: disable whispers now.",
        "ERROR": "ERROR: no decision could be made.",
    }.get(verdict, verdict)
    step = doc.get("next_step") or {}
    parts = [f"<div style='background:{colour};color:#fff;padding:18px 22px;border-radius:6px;"
             f"margin:4px 0 12px'>",
             f"<div style='font-size:14px;opacity:.9'>Whispers rollout &middot; day "
             f"{_e(doc.get('day'))} ({_e(doc.get('date'))}) &middot; {_e(phase.get('name', ''))}"
             f"</div>",
             f"<div style='font-size:30px;font-weight:700;margin:4px 0'>{_e(label)}</div>",
             f"<div style='font-size:17px'>{_e(headline)}</div>"]
    if verdict in ("NO_GO", "ROLLBACK") and doc.get("reason_text"):
        parts.append(f"<div style='font-size:15px;margin-top:4px;font-weight:600'>"
                     f"{_e(str(doc['reason_text']).capitalize())}</div>")
    parts.append("</div>")
    parts.append(state_html(doc))
    if step:
        action = str(step.get("action"))
        when = f"day {_e(step.get('day'))}"
        what = {
            "continue": f"Keep whispers on for {_e(_audience(step))} on {when}.",
            "advance": f"Advance on {when}: turn whispers on for {_e(_audience(step))}.",
            "complete": "The plan is complete: keep whispers on for everyone.",
            "hold": (f"Do not advance. Keep whispers on for {_e(_audience(step))} only, "
                     f"until the blocking items below are resolved."
                     if step.get("audience") != "none" else
                     "Keep whispers off for everyone until the root cause is found."),
            "rollback": "Turn whispers off for everyone now, following the rollback steps.",
            "reenable": f"Re-enable on {when}: turn whispers on for {_e(_audience(step))}.",
        }.get(action, _e(action))
        parts.append("<h2 style='margin-bottom:4px'>Next step</h2>")
        parts.append(f"<p style='font-size:16px;margin-top:4px'><strong>{what}</strong> "
                     f"Environment: {_e(step.get('environment', ''))}.</p>")
        instructions = [str(s) for s in step.get("instructions") or []]
        if instructions:
            parts.append("<ol>" + "".join(f"<li>{_e(s)}</li>" for s in instructions) + "</ol>")
        flags = step.get("flags") or {}
        if flags:
            parts.append("<p style='margin-bottom:2px'>Feature flags to have in place:</p><ul>"
                         + "".join(f"<li>{line}</li>" for line in flag_lines(flags)) + "</ul>")
    reasons = [str(r) for r in doc.get("reasons") or []]
    if reasons:
        parts.append("<h2 style='margin-bottom:4px'>Why</h2><ul>"
                     + "".join(f"<li>{_e(r)}</li>" for r in reasons[:8]) + "</ul>")
        if len(reasons) > 8:
            parts.append(f"<p>&hellip; and {len(reasons) - 8} more (see the table).</p>")
    return "\n".join(parts)


def state_html(doc: Mapping[str, Any]) -> str:
    """Where the rollout actually is (issue 14): the stage in force against the plan's
    calendar, and a visible warning when the state is assumed or was pieced together."""
    state = doc.get("state")
    if not isinstance(state, Mapping):
        return ""
    sentence = _e(state.get("sentence", ""))
    warnings = [str(w) for w in state.get("warnings") or []]
    if state.get("assumed"):
        return ("<div style='background:#fef3c7;border-left:6px solid #b45309;padding:10px 14px;"
                "margin:0 0 12px'><strong>Rollout state assumed.</strong> "
                + sentence + " " + " ".join(_e(w) for w in warnings) + "</div>")
    off = "" if state.get("on_plan") else " (not where the plan's calendar is)"
    extra = ("<ul style='margin:4px 0'>" + "".join(f"<li>{_e(w)}</li>" for w in warnings)
             + "</ul>") if warnings else ""
    return (f"<p style='margin:0 0 12px'><strong>Rollout state{_e(off)}:</strong> {sentence}"
            f"</p>{extra}")


def suppress_small_groups(doc: Mapping[str, Any], min_users: int) -> dict[str, Any]:
    """A copy of the decision document for display in which every value computed from fewer
    than ``min_users`` users is withheld: the entry's value, its reason, and the decision
    reasons and notes quoting that reason."""
    out = dict(doc)
    replacements: dict[str, str] = {}
    day_users = next((user_count(e) for e in doc.get("criteria") or []
                      if e.get("id") == "error_rate"), None)
    for key in ("criteria", "triggers"):
        entries = []
        for entry in doc.get(key) or []:
            if suppressed(entry, min_users, day_users):
                hidden = dict(entry)
                hidden["value"] = None
                hidden["suppressed"] = True
                reason = str(entry.get("reason") or "")
                withheld = (f"Computed from fewer than {min_users} users: the figures are "
                            f"withheld to protect their privacy.")
                if reason:
                    replacements[reason] = withheld
                hidden["reason"] = withheld
                entries.append(hidden)
            else:
                entries.append(entry)
        out[key] = entries
    for key in ("reasons", "notes"):
        texts = []
        for text in doc.get(key) or []:
            text = str(text)
            for old, new in replacements.items():
                text = text.replace(old, new)
            texts.append(text)
        out[key] = texts
    return out


def _order(entry: Mapping[str, Any]) -> tuple[int, int]:
    role_rank = {"required": 1, "watched": 2, "info": 3}
    first = 0 if entry.get("blocking") else 1
    kind = 0 if entry.get("kind") == "trigger" else 1
    return (first, kind * 10 + role_rank.get(str(entry.get("role")), 4))


def criteria_rows(doc: Mapping[str, Any], min_users: int) -> list[dict[str, str]]:
    """The table's rows as display strings (HTML-escaped), blocking items first."""
    entries = list(doc.get("triggers") or []) + list(doc.get("criteria") or [])
    entries.sort(key=_order)
    rows = []
    for entry in entries:
        rid = str(entry.get("id"))
        status = str(entry.get("status"))
        colour, word = STATUS_STYLE.get(status, STATUS_STYLE["no_data"])
        if entry.get("kind") == "trigger":
            word = {"fail": "FIRED", "pass": "quiet"}.get(status, word)
        code_words = CODE_WORDS.get(str(entry.get("code") or ""), "")
        hidden = bool(entry.get("suppressed")) or suppressed(entry, min_users)
        value = (f"withheld (fewer than {min_users} users)" if hidden
                 else format_value(entry.get("value"), str(entry.get("unit") or "")))
        reason = (f"Computed from fewer than {min_users} users: the figures are withheld to "
                  f"protect their privacy." if hidden else _e(entry.get("reason", "")))
        power = (entry.get("details") or {}).get("power") if not hidden else None
        if isinstance(power, Mapping) and power.get("note"):
            reason += (f"<br><span style='color:#374151;font-size:12px'><em>Power:</em> "
                       f"{_e(power['note'])}</span>")
        rows.append({
            "id": rid,
            "label": _e(LABELS.get(rid, rid)),
            "role": _e(ROLE_WORDS.get(str(entry.get("role")), str(entry.get("role")))),
            "value": value,
            "threshold": format_threshold(entry),
            "status": _pill(colour, word) + (
                f"<br><span style='font-size:11px;color:#374151'>{_e(code_words)}</span>"
                if code_words else ""),
            "reason": reason,
            "blocking": "yes" if entry.get("blocking") else "",
        })
    return rows


def criteria_table_html(doc: Mapping[str, Any], plan: Plan) -> str:
    """Every criterion and trigger of the day: role, observed value, threshold, coloured
    status and the reason, blocking items first and highlighted."""
    rows = criteria_rows(suppress_small_groups(doc, plan.criteria.min_group_users),
                         plan.criteria.min_group_users)
    head = ("<tr><th>What is checked</th><th>Role today</th><th>Observed</th><th>Threshold</th>"
            "<th>Status</th><th>Why</th></tr>")
    body = []
    for r in rows:
        style = " style='background:#fef3c7'" if r["blocking"] else ""
        body.append(f"<tr{style}><td><strong>{r['label']}</strong><br>"
                    f"<span style='color:#6b7280;font-size:11px'>{_e(r['id'])}</span></td>"
                    f"<td>{r['role']}</td><td style='white-space:nowrap'>{r['value']}</td>"
                    f"<td>{r['threshold']}</td><td>{r['status']}</td><td>{r['reason']}</td></tr>")
    return ("<style>.wl-crit td, .wl-crit th {border-bottom:1px solid #e5e7eb;padding:5px 7px;"
            "text-align:left;vertical-align:top}</style>"
            "<table style='border-collapse:collapse;width:100%;font-size:13px'>"
            f"<thead class='wl-crit'>{head}</thead><tbody class='wl-crit'>{''.join(body)}</tbody>"
            "</table><p style='font-size:12px;color:#6b7280'>Rows shaded yellow block the day "
            "(or fired a rollback trigger). &ldquo;Must pass&rdquo; items decide the day; "
            "&ldquo;watched&rdquo; items block only when they fail; items &ldquo;for "
            "information&rdquo; never block.</p>")


def notes_html(doc: Mapping[str, Any]) -> str:
    """Notes that did not block (watched items that could not be judged)."""
    notes = [str(n) for n in doc.get("notes") or []]
    if not notes:
        return "<p>No further notes.</p>"
    return "<ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>"


def status_counts(entries: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    out = {s: 0 for s in STATUS_STYLE}
    for e in entries:
        out[str(e.get("status"))] = out.get(str(e.get("status")), 0) + 1
    return out


#: ASCII punctuation Markdown may act on (except ``&<>"'``, which HTML escaping handles).
_MD_PUNCT = re.compile(r"""([!#-%(-/:;=?@\[-`{-~])""")


def _md_literal(text: Any) -> str:
    """``text`` shown literally inside Markdown: no emphasis, link, code span or raw HTML can
    come out of it (a file name is data, e.g. ``a`<img onerror=...>`.duckdb``)."""
    return html.escape(_MD_PUNCT.sub(r"\\\1", str(text)))


def about_markdown(doc: Mapping[str, Any], plan: Plan, *, export_name: str,
                   data_end: Any = None) -> str:
    """The closing paragraph: where the figures come from (file name only, no paths)."""
    from pathlib import Path

    end = f"{data_end:%Y-%m-%d %H:%M} UTC" if data_end is not None else "unknown"
    return "\n".join([
        f"- **Data**: export <code>{_md_literal(export_name)}</code>, holding data up to {end}. "
        f"Only data up to the end of day {doc.get('day')} is used, as it was known that evening.",
        f"- **Plan**: {_md_literal(plan.name)} (<code>{_md_literal(Path(plan.source).name)}"
        f"</code>); day 0 is {plan.start_date.isoformat()}; all times are UTC.",
        f"- **Decision** computed {doc.get('generated_at')}; the machine-readable version is "
        f"`decision.json` next to this page, and the timeline of all days is in `index.html` "
        f"one folder up.",
        "- Produced by `whispers-lab report` from the notebook `daily_report.ipynb`.",
    ])


def _pct0(x: Any) -> str:
    return "n/a" if x is None else f"{100 * float(x):.0f}%"


def design_html(doc: Mapping[str, Any], plan: Plan) -> str:
    """How the day's statistical decisions are made and what they can promise: the error
    rates in words, the design power for the plan's expected size and for the traffic seen
    so far (from the retention entry's ``details.design``)."""
    entry = next((e for e in doc.get("criteria") or [] if e.get("id") == "retention"), None)
    design = ((entry or {}).get("details") or {}).get("design") or {}
    d, r = plan.deterioration, plan.retention
    tests = ", ".join(d.tests)
    lines = [
        "<ul>",
        f"<li><strong>Harm</strong> (&ldquo;is it worse?&rdquo;: {_e(tests)}): all these tests "
        f"together, over every day of the rollout, raise a false alarm in at most "
        f"{100 * d.alpha:.1f}% of rollouts that do no harm. Harm shown on a metric the plan "
        f"requires {'rolls the rollout back' if d.rollback_on_harm else 'holds the rollout'}."
        "</li>",
        f"<li><strong>Retention passes</strong> when it is shown to be at most the margin worse "
        f"than control; a rollout that is in fact worse by the margin passes by mistake at most "
        f"{100 * r.alpha:.0f}% of the time, however many days are looked at.</li>",
        f"<li><strong>Targets</strong> (click-through, feedback, error rate, latency, uptime) "
        f"pass when the {100 * (1 - 2 * r.alpha):.0f}% interval is on the right side of the "
        f"target widened by a small tolerance, and fail only when it is entirely on the wrong "
        f"side of the target itself; a rate is never judged on its point estimate.</li>",
    ]
    exp, obs = design.get("expected") or {}, design.get("observed") or {}
    req = design.get("required_from")
    if exp.get("power_by_day") is not None and req is not None:
        lines.append(f"<li><strong>Design power</strong>: for the plan's expected size "
                     f"({int(exp.get('users') or 0):,} users) a rollout with no effect passes "
                     f"retention by day {req} (when the plan first requires it) with probability "
                     f"{_pct0(exp['power_by_day'])}")
        if obs.get("power_by_day") is not None:
            lines[-1] += (f"; at the traffic seen so far ({int(obs.get('users') or 0):,} "
                          f"randomised users) {_pct0(obs['power_by_day'])}")
        lines[-1] += ".</li>"
    lines.append("</ul>")
    return "\n".join(lines)
