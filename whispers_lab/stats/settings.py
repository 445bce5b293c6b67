"""Typed settings of the statistics engine (one frozen dataclass, defaults from the plan).

Every number the plan gives comes from the plan (:meth:`StatSettings.from_plan`); the few
numbers the plan does not give (canary bands, sampling bounds) are defaults here, documented in
``docs/statistics.md`` and overridable per call, never hard-coded inside a test.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from ..plan import Plan

SpendingName = Literal["obrien_fleming", "pocock"]


@dataclass(frozen=True)
class StatSettings:
    """Settings shared by every comparison.

    ``alpha`` is one-sided: every test in the engine is one-sided at ``alpha`` and every reported
    interval is the two-sided ``1 - 2 * alpha`` interval, so each end is a one-sided ``alpha``
    bound and "the interval clears the threshold" is exactly "the one-sided test rejects".
    """

    alpha: float = 0.05
    power: float = 0.80
    # retention
    k_days: tuple[int, ...] = (1, 7)
    primary_k: int = 1
    margin: float = 0.02
    relative_margin: float = 0.05
    sequential: SpendingName = "obrien_fleming"
    planned_looks: int = 7
    preperiod_days: int = 14
    # sample-size guards and SRM
    min_group_users: int = 5
    srm_p_value: float = 0.001
    # canary (Kayenta-style effect-size band on the ratio treated/control)
    canary_band: tuple[float, float] = (0.90, 1.10)
    tail_band: float = 1.25
    canary_min_units: int = 30
    canary_max_units: int = 20_000
    # support tickets: "no increase shown" only counts when an increase of this size was detectable
    max_informative_rate_ratio: float = 2.0
    seed: int = 20261201

    @classmethod
    def from_plan(cls, plan: Plan, **overrides: Any) -> StatSettings:
        r, c = plan.retention, plan.criteria
        base = cls(
            alpha=r.alpha, k_days=tuple(r.k_days), primary_k=r.primary_k, margin=r.margin,
            relative_margin=r.relative_margin, sequential=r.sequential,
            planned_looks=r.planned_looks, min_group_users=c.min_group_users,
            srm_p_value=c.srm_p_value,
        )
        return replace(base, **overrides) if overrides else base

    @property
    def ci_level(self) -> float:
        """Two-sided level of every reported interval (0.90 for a one-sided alpha of 0.05)."""
        return 1.0 - 2.0 * self.alpha
