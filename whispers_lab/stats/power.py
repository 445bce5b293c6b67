"""Power: what the current sample can detect, and how long until it can detect the target.

For a comparison with standard error ``se`` the minimum detectable effect of a one-sided test at
``alpha`` with power ``1 - beta`` is ``(z_{1-alpha} + z_{1-beta}) * se`` (normal theory). The
standard error shrinks as ``1 / sqrt(information)``, so reaching a target effect needs
``information * (mde / target)^2``; dividing the shortfall by the recent daily accrual of
information gives the days needed. Daily metrics (judged on one day's data) have no accrual:
for them the table gives the units needed instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from ..lazy import lazy_module

stats = lazy_module("scipy.stats")

POWER_COLUMNS: tuple[str, ...] = (
    "metric", "scale", "n", "se", "mde", "target", "information", "information_per_day",
    "information_needed", "days_needed", "note",
)


def z_sum(alpha: float, power: float) -> float:
    return float(stats.norm.isf(alpha) + stats.norm.ppf(power))


def mde(se: float, alpha: float, power: float) -> float:
    """Minimum detectable effect of a one-sided level-alpha test with the given power."""
    if se is None or not math.isfinite(se) or se <= 0:
        return math.inf
    return z_sum(alpha, power) * se


def information_needed(information: float, mde_now: float, target: float) -> float:
    """Information at which the MDE shrinks to ``target`` (MDE ~ 1 / sqrt(information))."""
    if not (target > 0) or not math.isfinite(mde_now) or information <= 0:
        return math.inf
    return information * (mde_now / target) ** 2


def days_needed(information: float, per_day: float | None, needed: float) -> float | None:
    """Days of accrual at ``per_day`` to reach ``needed``; 0 when reached; inf without
    accrual; None for metrics that do not accrue (judged on one day)."""
    if per_day is None:
        return None
    if needed <= information:
        return 0.0
    if not math.isfinite(needed) or per_day <= 0:
        return math.inf
    return math.ceil((needed - information) / per_day)


@dataclass(frozen=True)
class PowerRow:
    metric: str
    scale: str
    n: int
    se: float | None
    mde: float
    target: float | None
    information: float
    information_per_day: float | None
    note: str = ""

    def as_dict(self) -> dict:
        need = (information_needed(self.information, self.mde, self.target)
                if self.target is not None else math.inf)
        return {"metric": self.metric, "scale": self.scale, "n": self.n, "se": self.se,
                "mde": self.mde, "target": self.target, "information": self.information,
                "information_per_day": self.information_per_day, "information_needed": need,
                "days_needed": days_needed(self.information, self.information_per_day, need),
                "note": self.note}


def power_table(rows: list[PowerRow]) -> pd.DataFrame:
    return pd.DataFrame([r.as_dict() for r in rows], columns=list(POWER_COLUMNS))
