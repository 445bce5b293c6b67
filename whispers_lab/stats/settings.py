"""Typed settings of the statistics engine (one frozen dataclass, defaults from the plan).

Every number the plan gives comes from the plan (:meth:`StatSettings.from_plan`); the few
numbers the plan does not give (canary bands, sampling bounds) are defaults here, documented in
``docs/statistics.md`` and overridable per call, never hard-coded inside a test.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from ..plan import Plan

SpendingName = Literal["obrien_fleming", "pocock", "hsd", "power"]
SPENDING_NAMES: tuple[str, ...] = ("obrien_fleming", "pocock", "hsd", "power")
MarginRule = Literal["absolute", "relative", "smaller", "both"]
MARGIN_RULES: tuple[str, ...] = ("absolute", "relative", "smaller", "both")


@dataclass(frozen=True)
class StatSettings:
    """Settings shared by every comparison.

    ``alpha`` is the one-sided level of the guardrails (non-inferiority and threshold
    criteria): every such interval is the two-sided ``1 - 2 * alpha`` interval, so each end is a
    one-sided ``alpha`` bound. Guardrails are not corrected for their number (a rollout must
    pass all of them: an intersection-union test keeps the error of a wrong GO at ``alpha``);
    their *power* is (``beta / guardrails``, see :attr:`guardrail_power`). Deterioration tests
    ("is it worse?") share one ``deterioration_alpha`` over all tests and all looks: each of
    the ``deterioration_tests`` gets ``deterioration_alpha / deterioration_tests``, spent over
    the daily looks (Schultzberg, Ankargren & Franberg 2024).
    """

    alpha: float = 0.05
    power: float = 0.80
    # retention
    k_days: tuple[int, ...] = (1, 7)
    primary_k: int = 1
    margin: float = 0.02
    relative_margin: float = 0.05
    margin_rule: MarginRule = "smaller"
    sequential: SpendingName = "hsd"
    sequential_param: float | None = 1.0
    covariate_days: int = 14
    cuped: bool = True
    preperiod_days: int = 14
    # deterioration (harm) tests
    deterioration_alpha: float = 0.025
    deterioration_tests: int = 2
    harm_sequential: SpendingName = "pocock"
    harm_sequential_param: float | None = None
    guardrails: int = 1
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
        r, c, d = plan.retention, plan.criteria, plan.deterioration
        from ..plan import THRESHOLD_CRITERIA  # the plan module imports nothing from stats

        required = {cid for ph in plan.phases for cid in ph.required}
        guardrails = len(required & ({"retention"} | set(THRESHOLD_CRITERIA)))
        base = cls(
            alpha=r.alpha, power=r.power, k_days=tuple(r.k_days), primary_k=r.primary_k,
            margin=r.margin, relative_margin=r.relative_margin, margin_rule=r.margin_rule,
            sequential=r.spending, sequential_param=r.spending_param,
            covariate_days=r.covariate_days, cuped=r.cuped,
            deterioration_alpha=d.alpha, deterioration_tests=len(d.tests),
            harm_sequential=d.spending, harm_sequential_param=d.spending_param,
            guardrails=max(guardrails, 1), min_group_users=c.min_group_users,
            srm_p_value=c.srm_p_value,
        )
        return replace(base, **overrides) if overrides else base

    @property
    def ci_level(self) -> float:
        """Two-sided level of every guardrail interval (0.90 for a one-sided alpha of 0.05)."""
        return 1.0 - 2.0 * self.alpha

    @property
    def harm_alpha(self) -> float:
        """One-sided alpha of each deterioration test over all its looks."""
        return self.deterioration_alpha / max(self.deterioration_tests, 1)

    @property
    def guardrail_power(self) -> float:
        """Power each guardrail needs so that all of them pass together with ``power``
        (``1 - beta / guardrails``)."""
        return 1.0 - (1.0 - self.power) / max(self.guardrails, 1)
