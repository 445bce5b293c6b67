"""The truth sidecar: what was planted, so tests and rule checks can compare data with intent.

Schema 1::

    {"schema": 1, "seed": int, "users": int, "start_date": "YYYY-MM-DD", "through_day": int,
     "pre_days": 14, "plan_salt": str, "plan_name": str,
     "scenarios": [{"name", "day", "start", "end" (ISO UTC, end exclusive), "params": {...},
                    "expected": {"trigger" | "criterion": id, "decision": "ROLLBACK" | "NO_GO",
                                 "first_decision_day": int | null},
                    "planted": {...scenario-specific facts, e.g. prefetch requests added,
                                affected user ids, ticket ids}}],
     "effects": {"retention_lift", "fallback_rate", "epsilon", ...},
     "click_model": {"examination", "coefficients", "features", ...},
     "weights": {"presets": [...], "stale": {...}, "fallback": {...}},
     "model_params": {...every ModelParams field...},
     "rows": {table: row count},
     "rollout": {"stages": [{"day", "at", "phase", "audience", "percentage", "projected"}...]
                 (what production served, rollback flips included), "flag_log": bool (the
                 export has flag_changes), "follows_calendar": bool,
                 "schedule": {"stages": [...], "final_day": int}}}
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..atomic import write_text_atomic
from ..plan import Plan
from .clicks import model_description
from .feedback import healthy_rating_mean
from .ops import FALLBACK_WEIGHTS
from .params import PRE_DAYS, ModelParams
from .population import STALE_WEIGHTS, WEIGHT_PRESETS
from .scenarios import Scenario

TRUTH_SCHEMA = 1


def build_truth(*, seed: int, users: int, plan: Plan, through_day: int, params: ModelParams,
                scenarios: Sequence[Scenario], planted: Sequence[Mapping[str, Any]],
                rows: Mapping[str, int], rollout: Mapping[str, Any] | None = None
                ) -> dict[str, Any]:
    entries = []
    for s, extra in zip(scenarios, planted, strict=True):
        entry = s.truth(plan)
        entry["planted"] = dict(extra)
        entries.append(entry)
    return {
        "schema": TRUTH_SCHEMA,
        "seed": int(seed),
        "users": int(users),
        "start_date": plan.start_date.isoformat(),
        "through_day": int(through_day),
        "pre_days": PRE_DAYS,
        "plan_salt": plan.assignment.salt,
        "plan_name": plan.name,
        "scenarios": entries,
        "effects": {
            "retention_lift": params.retention_lift,
            "retention_lift_meaning": "absolute increase of the daily visit probability on days "
                                      "after a user's first treated visit",
            "weekend_factor": params.weekend_factor,
            "fallback_rate": params.fallback_rate,
            "whispers_error_rate": params.whispers_error_rate,
            "epsilon": params.epsilon,
            "propensity": "(1 - epsilon) * 1[ranker rank == shown_position] + epsilon / n_candidates",
            "feedback_rating_mean": round(healthy_rating_mean(params), 4),
            "feedback_relevant_true": params.relevant_true,
            "ticket_rate_per_user_day": params.ticket_rate,
            "cue_prob": params.cue_prob,
            "cue_cooldown_minutes": plan.cue_cooldown_minutes,
        },
        "click_model": model_description(),
        "weights": {
            "presets": [w.to_dict() for w in WEIGHT_PRESETS],
            "stale": STALE_WEIGHTS.to_dict(),
            "fallback": FALLBACK_WEIGHTS.to_dict(),
        },
        "model_params": params.as_dict(),
        "rows": dict(rows),
        "rollout": dict(rollout or {}),
    }


def truth_path(export_path: str | os.PathLike[str]) -> Path:
    """``<export>.truth.json``; for a folder export ``<folder-without-slash>.truth.json``."""
    text = os.fspath(export_path).rstrip("/" + os.sep)
    return Path(text + ".truth.json")


def write_truth(truth: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write JSON atomically (temp file in the same folder, then ``os.replace``)."""
    return write_text_atomic(path, json.dumps(truth, indent=2, sort_keys=False) + "\n")


def read_truth(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a truth file (given the file itself or the export it belongs to)."""
    p = Path(path)
    if not p.name.endswith(".truth.json"):
        p = truth_path(path)
    return json.loads(p.read_text(encoding="utf-8"))
