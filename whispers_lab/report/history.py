"""The rollout as its reports recorded it: every day's decision, the trends, the incidents.

Pure functions over the day folders' ``decision.json`` documents (as
:func:`whispers_lab.report.index.collect_days` reads them), used by the day-14 stakeholder
summary (:mod:`.summary`) and the index's trend charts (:mod:`.trends`). The documents are the
record: nothing here opens an export.

Each day's point on a trend is what that day's report judged: the criterion's value and
interval over its window (``[windows]``: the phase so far for the system metrics, the audience
so far for users' behaviour), its threshold and status. Values computed from fewer than
``min_group_users`` users are withheld (:func:`whispers_lab.report.tables.suppress_small_groups`),
as everywhere else. A document that is missing keys (an ERROR page, an older schema) simply
contributes no point.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from ..plan import Plan
from .tables import LABELS, suppress_small_groups

#: Criteria whose value and interval are charted day by day, in display order.
TREND_CRITERIA: tuple[str, ...] = ("retention", "ctr", "p95_response_ms", "error_rate",
                                   "weight_fallback_rate")
#: The columns of :func:`trend_frame`.
TREND_COLUMNS: tuple[str, ...] = (
    "metric", "day", "value", "ci_low", "ci_high", "naive_low", "naive_high", "threshold",
    "status", "code", "window_from", "percentage", "withheld",
)
#: Decisions a report can carry (ERROR: the run failed, no decision).
DECISIONS: tuple[str, ...] = ("GO", "NO_GO", "ROLLBACK", "ERROR")


def _num(value: Any) -> float:
    """A finite float, else NaN (JSON null, strings, booleans, infinities stay out of charts)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    v = float(value)
    return v if math.isfinite(v) else math.nan


def _entries(doc: Mapping[str, Any], key: str = "criteria") -> dict[str, Mapping[str, Any]]:
    out: dict[str, Mapping[str, Any]] = {}
    for entry in doc.get(key) or []:
        if isinstance(entry, Mapping) and isinstance(entry.get("id"), str):
            out[entry["id"]] = entry
    return out


def label(rid: str) -> str:
    """Plain words of a criterion or trigger id."""
    return LABELS.get(rid, rid.replace("_", " "))


def phase_name(plan: Plan, day: int, doc: Mapping[str, Any] | None = None) -> str:
    phase = (doc or {}).get("phase")
    if isinstance(phase, Mapping) and phase.get("name"):
        return str(phase["name"])
    try:
        return plan.phase_for_day(day).name
    except Exception:  # a day before the plan: no phase
        return ""


def reported_days(days: Mapping[int, Mapping[str, Any]]) -> list[int]:
    """Days whose report made a decision (GO, NO_GO or ROLLBACK), in order."""
    return sorted(d for d, doc in days.items() if doc.get("decision") in DECISIONS[:3])


# ---------------------------------------------------------------------------------------
# the decision of every day


def decision_rows(plan: Plan, days: Mapping[int, Mapping[str, Any]],
                  min_users: int) -> list[dict[str, Any]]:
    """One row per plan day (and any later day with a report), in order: day, date, phase,
    decision (None: no report), reason_code, reason_text, blocking / fired / harm as labels,
    the first reason, and the error of an ERROR page. Reasons quoting a small group's figures
    are withheld."""
    rows = []
    for day in sorted(set(range(plan.last_day + 1)) | set(days)):
        raw = days.get(day)
        date = plan.day_start(day).date().isoformat() if day >= 0 else ""
        row: dict[str, Any] = {"day": day, "date": date, "phase": phase_name(plan, day, raw),
                               "decision": None, "reason_code": None, "reason_text": "",
                               "blocking": [], "fired": [], "harm": [], "first_reason": "",
                               "error": None}
        if raw is not None:
            doc = suppress_small_groups(raw, min_users)
            decision = str(doc.get("decision"))
            row["decision"] = decision if decision in DECISIONS else "ERROR"
            row["reason_code"] = doc.get("reason_code")
            row["reason_text"] = str(doc.get("reason_text") or "")
            for key in ("blocking", "fired", "harm"):
                row[key] = [label(str(i)) for i in doc.get(key) or []]
            reasons = [str(r) for r in doc.get("reasons") or []]
            row["first_reason"] = reasons[0] if reasons else ""
            if row["decision"] == "ERROR":
                row["error"] = str(doc.get("error") or "the run failed; no decision was made")
                row["reason_text"] = row["reason_text"] or "the run failed: no decision"
        rows.append(row)
    return rows


def decision_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    """How many days got each decision ("none": no report)."""
    out = {k: 0 for k in (*DECISIONS, "none")}
    for row in rows:
        out[row["decision"] or "none"] += 1
    return out


# ---------------------------------------------------------------------------------------
# trends


def trend_frame(plan: Plan, days: Mapping[int, Mapping[str, Any]], min_users: int) -> pd.DataFrame:
    """One row per (metric, reported day) for :data:`TREND_CRITERIA` and ``exposure``.

    ``value``, ``ci_low``/``ci_high`` (retention: the sequential bounds; ``naive_low``/``high``
    its one-look interval), ``threshold``, ``status``, ``code``, ``window_from`` as the day's
    report judged them; ``withheld`` when the figures rest on fewer than ``min_users`` users
    (the value is then NaN). ``exposure``: users with whispers on who were active that day
    (``telemetry_flowing``'s ``treated_active_users``) and the share of external users the
    day's phase enables (``percentage``; 0 in the internal and beta phases)."""
    rows: list[dict[str, Any]] = []
    for day in reported_days(days):
        doc = suppress_small_groups(days[day], min_users)
        entries = _entries(doc)
        for cid in TREND_CRITERIA:
            e = entries.get(cid)
            if e is None:
                continue
            details = e.get("details") if isinstance(e.get("details"), Mapping) else {}
            stat = details.get("stat") if isinstance(details.get("stat"), Mapping) else {}
            withheld = bool(e.get("suppressed"))
            rows.append({
                "metric": cid, "day": day, "value": _num(e.get("value")),
                "ci_low": math.nan if withheld else _num(details.get("ci_low")),
                "ci_high": math.nan if withheld else _num(details.get("ci_high")),
                "naive_low": math.nan if withheld else _num(stat.get("naive_low")),
                "naive_high": math.nan if withheld else _num(stat.get("naive_high")),
                "threshold": _num(e.get("threshold")), "status": str(e.get("status") or ""),
                "code": str(e.get("code") or ""),
                "window_from": _num(details.get("window_from", stat.get("window_from"))),
                "percentage": math.nan, "withheld": withheld})
        tel = entries.get("telemetry_flowing")
        tel_details = (tel or {}).get("details")
        users = (_num(tel_details.get("treated_active_users"))
                 if isinstance(tel_details, Mapping) else math.nan)
        phase = doc.get("phase") if isinstance(doc.get("phase"), Mapping) else {}
        small = math.isfinite(users) and 0 < users < min_users
        rows.append({"metric": "exposure", "day": day, "value": math.nan if small else users,
                     "ci_low": math.nan, "ci_high": math.nan, "naive_low": math.nan,
                     "naive_high": math.nan, "threshold": math.nan, "status": "", "code": "",
                     "window_from": math.nan, "percentage": _num(phase.get("percentage")),
                     "withheld": small})
    return pd.DataFrame(rows, columns=list(TREND_COLUMNS))


# ---------------------------------------------------------------------------------------
# incidents and holds


def _runs(rows: list[dict[str, Any]], decision: str) -> list[list[dict[str, Any]]]:
    """Consecutive days with ``decision`` and the same reason code."""
    out: list[list[dict[str, Any]]] = []
    for row in rows:
        if row["decision"] != decision:
            continue
        last = out[-1][-1] if out else None
        if (last is not None and last["day"] == row["day"] - 1
                and last["reason_code"] == row["reason_code"]):
            out[-1].append(row)
        else:
            out.append([row])
    return out


def day_ranges(days: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"days 0-2, 5"``; one day -> ``"day 3"``."""
    ranges: list[list[int]] = []
    for d in sorted(set(days)):
        if ranges and d == ranges[-1][1] + 1:
            ranges[-1][1] = d
        else:
            ranges.append([d, d])
    text = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in ranges)
    return f"day {text}" if len(set(days)) == 1 else f"days {text}"


def incidents(rows: list[dict[str, Any]], days: Mapping[int, Mapping[str, Any]],
              min_users: int, confirmations: list[dict[str, Any]] | None = None
              ) -> list[dict[str, Any]]:
    """Rollbacks (fired triggers and harm, with the trigger's own sentence), holds (runs of
    NO_GO days with the same reason code and blocking items) and failed runs, in day order:
    ``{kind, days, first_day, title, reason_code, items}``; ``confirmations``: the rollback
    confirmations (:func:`whispers_lab.report.confirmation.collect_confirmations`) shown with
    the rollback they followed."""
    confirmations = confirmations or []
    out: list[dict[str, Any]] = []
    for run in _runs(rows, "ROLLBACK"):
        for row in run:
            doc = suppress_small_groups(days[row["day"]], min_users)
            items = [f"{label(t['id'])}: {t.get('reason', '')}"
                     for t in doc.get("triggers") or []
                     if isinstance(t, Mapping) and t.get("status") == "fail"]
            items += [f"{label(c['id'])}: {c.get('reason', '')}"
                      for c in doc.get("criteria") or []
                      if isinstance(c, Mapping) and c.get("id") in (doc.get("harm") or [])]
            later = [c for c in confirmations if c.get("rollout_day", -1) >= row["day"]]
            items += [f"Rollback confirmation of {c['disabled_at']}: {c['verdict']}"
                      for c in later[:1]]
            out.append({"kind": "rollback", "days": [row["day"]], "first_day": row["day"],
                        "title": f"Day {row['day']}: rolled back ({row['reason_text'] or 'rollback'})",
                        "reason_code": row["reason_code"], "items": items})
    for run in _runs(rows, "NO_GO"):
        row = run[0]
        why = row["reason_text"] or "held"
        blocked: dict[str, list[int]] = {}
        for r in run:
            for item in r["blocking"]:
                blocked.setdefault(item, []).append(r["day"])
        items = [f"{item} ({day_ranges(ds)})" if len(run) > 1 else item
                 for item, ds in blocked.items()]
        items = [f"Blocking: {'; '.join(items)}."] if items else []
        out.append({"kind": "hold", "days": [r["day"] for r in run], "first_day": row["day"],
                    "title": f"{day_ranges([r['day'] for r in run]).capitalize()}: {why}",
                    "reason_code": row["reason_code"], "items": items})
    for row in rows:
        if row["decision"] == "ERROR":
            out.append({"kind": "error", "days": [row["day"]], "first_day": row["day"],
                        "title": f"Day {row['day']}: the report run failed, no decision",
                        "reason_code": None, "items": [str(row["error"])]})
    return sorted(out, key=lambda i: (i["first_day"], i["kind"]))
