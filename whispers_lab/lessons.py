"""The "Document lessons learned" skeleton, from the rollout's published decisions.

:func:`collect` reads every ``day-NN/decision.json`` (and ``rollback-*/confirmation.json``) of a
report folder; :func:`skeleton_markdown` writes a Markdown document with what the record
already knows, the timeline (decision per day), every hold (NO_GO: what blocked it),
every incident (ROLLBACK: the triggers that fired and their reasons, and whether the rollback
was confirmed), every failed run (ERROR), and empty headings for what only people know (root
causes, what went well, what to change). Aggregates only: decisions carry no user id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import write_text_atomic
from .report.confirmation import collect_confirmations
from .report.index import collect_days


@dataclass(frozen=True)
class RolloutRecord:
    """What the report folder says about the rollout."""

    days: dict[int, dict[str, Any]]
    confirmations: list[dict[str, Any]] = field(default_factory=list)

    def with_decision(self, decision: str) -> list[int]:
        return sorted(d for d, doc in self.days.items() if doc.get("decision") == decision)


def collect(reports_dir: str | Path) -> RolloutRecord:
    """The decisions and rollback confirmations published in ``reports_dir``."""
    return RolloutRecord(collect_days(reports_dir), collect_confirmations(reports_dir))


def _blocking_lines(doc: dict[str, Any]) -> list[str]:
    entries = {e.get("id"): e for e in (doc.get("criteria") or []) + (doc.get("triggers") or [])
               if isinstance(e, dict)}
    out = []
    for rid in doc.get("blocking") or []:
        e = entries.get(rid, {})
        out.append(f"  - `{rid}` ({e.get('status', '?')}): {e.get('reason', '')}")
    return out


def skeleton_markdown(record: RolloutRecord, plan_name: str = "whispers canary rollout") -> str:
    """The lessons-learned skeleton as Markdown."""
    days = record.days
    lines = [f"# Lessons learned: {plan_name}", "",
             "A skeleton written from the rollout's published decisions "
             "(`whispers_lab.lessons`); the sections marked *to write* need the team.", ""]
    if not days:
        lines += ["No decision has been published in this report folder yet.", ""]
        return "\n".join(lines)
    counts: dict[str, int] = {}
    for doc in days.values():
        counts[str(doc.get("decision"))] = counts.get(str(doc.get("decision")), 0) + 1
    lines += ["## Timeline", "",
              f"{len(days)} day(s) reported: " + ", ".join(f"{k} {v}" for k, v in
                                                           sorted(counts.items())) + ".", "",
              "| day | date | phase | decision | first reason |", "|---|---|---|---|---|"]
    for d in sorted(days):
        doc = days[d]
        phase = (doc.get("phase") or {}).get("name", "") if isinstance(doc.get("phase"), dict) else ""
        reason = (doc.get("reasons") or [doc.get("error") or ""])[0]
        reason = str(reason).replace("|", "/")
        lines.append(f"| {d} | {doc.get('date', '')} | {phase} | {doc.get('decision')} | "
                     f"{reason} |")
    lines.append("")
    holds = record.with_decision("NO_GO")
    lines += ["## Holds (NO-GO days)", ""]
    if holds:
        for d in holds:
            lines.append(f"- **Day {d}** ({days[d].get('date', '')}): held by "
                         f"{', '.join(days[d].get('blocking') or []) or 'unknown'}")
            lines += _blocking_lines(days[d])
            lines.append("  - Cause (to write): ")
    else:
        lines.append("None: no day was held.")
    lines.append("")
    incidents = record.with_decision("ROLLBACK")
    lines += ["## Incidents (ROLLBACK days)", ""]
    if incidents:
        for d in incidents:
            doc = days[d]
            lines.append(f"- **Day {d}** ({doc.get('date', '')}): rollback triggers fired: "
                         f"{', '.join(doc.get('fired') or [])}")
            for t in doc.get("triggers") or []:
                if isinstance(t, dict) and t.get("status") == "fail":
                    lines.append(f"  - `{t.get('id')}`: {t.get('reason', '')}")
            confirms = [c for c in record.confirmations if c["rollout_day"] in (d, d + 1)]
            for c in confirms:
                lines.append(f"  - Rollback at {c['disabled_at']} UTC: {c['verdict']} "
                             f"(`{c['folder']}/confirmation.html`)")
            if not confirms:
                lines.append("  - Rollback confirmation: none published "
                             "(`whispers-lab confirm-rollback`)")
            lines.append("  - Root cause (to write): ")
            lines.append("  - Re-enabled when, after what fix (to write): ")
    else:
        lines.append("None: no rollback trigger fired.")
    lines.append("")
    errors = record.with_decision("ERROR")
    if errors:
        lines += ["## Failed report runs", ""]
        lines += [f"- Day {d}: {days[d].get('error', '')}" for d in errors]
        lines.append("")
    lines += ["## What went well (to write)", "", "- ", "",
              "## What to change for the next rollout (to write)", "", "- ", "",
              "## Follow-ups", "",
              "- Remove the feature flags (make whispers always-on).",
              "- Optimise performance based on production metrics "
              "(`notebooks/post_rollout.ipynb`).",
              "- Decide on raising `maxItems` (the what-if in `notebooks/post_rollout.ipynb`).",
              "- Plan advanced features (pinning, snoozing).", ""]
    return "\n".join(lines)


def write_skeleton(reports_dir: str | Path, path: str | Path,
                   plan_name: str = "whispers canary rollout") -> Path:
    """Write the skeleton of ``reports_dir`` to ``path`` (atomically)."""
    return write_text_atomic(path, skeleton_markdown(collect(reports_dir), plan_name))
