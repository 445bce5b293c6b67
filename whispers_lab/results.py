"""Small typed result objects shared by the statistics, the go/no-go rules and the notebooks.

A statistic never raises on degenerate input (an empty arm, zero variance, too few users): it
returns a result whose status is ``inconclusive`` or ``no_data`` and whose sentence says why,
so a report still renders and a missing number never reads as a pass.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["pass", "fail", "inconclusive", "no_data"]
STATUSES: tuple[str, ...] = ("pass", "fail", "inconclusive", "no_data")
Kind = Literal["criterion", "trigger"]


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become None, numpy scalars become Python numbers."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        try:
            value = value.item()
        except (AttributeError, ValueError):
            pass
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


@dataclass(frozen=True)
class StatResult:
    """One statistical comparison or estimate.

    ``estimate`` and the CI are on the metric's natural scale (a difference, a rate, a ratio);
    ``n`` is the number of units (users, requests, minutes) the result rests on.
    """

    metric: str
    estimate: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    n: int
    method: str
    status: Status
    sentence: str
    threshold: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _clean(asdict(self))


#: Reason codes of a result (docs/decision-schema.md): why it passed, blocked or is unsure.
REASON_CODES: tuple[str, ...] = (
    "pass", "harm_detected", "threshold_missed", "not_demonstrated", "check_failed",
    "trigger_fired", "assignment_broken", "insufficient_evidence", "untrustworthy", "no_data",
)


def default_code(status: str, kind: str = "criterion") -> str:
    """The reason code a status implies when the rule gave none."""
    if status == "fail":
        return "trigger_fired" if kind == "trigger" else "check_failed"
    return {"pass": "pass", "inconclusive": "insufficient_evidence"}.get(status, "no_data")


@dataclass(frozen=True)
class CriterionResult:
    """One go/no-go criterion or rollback trigger evaluated for one day.

    ``code``: the reason code (:data:`REASON_CODES`); empty means the one the status implies
    (:func:`default_code`), filled in on construction."""

    id: str
    kind: Kind
    value: float | None
    threshold: float | None
    status: Status
    reason: str
    unit: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    code: str = ""

    def __post_init__(self) -> None:
        if not self.code:
            object.__setattr__(self, "code", default_code(self.status, self.kind))
        elif self.code not in REASON_CODES:
            raise ValueError(f"unknown reason code {self.code!r} for {self.id}")

    @property
    def fired(self) -> bool:
        """For a trigger: it fired (its status is ``fail``)."""
        return self.kind == "trigger" and self.status == "fail"

    def to_dict(self) -> dict[str, Any]:
        return _clean(asdict(self))
