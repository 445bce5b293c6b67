"""The healthy model's parameters, in one frozen dataclass recorded in the truth file.

Every number the simulator draws from lives here (scenarios add their own, see
:mod:`whispers_lab.simulate.scenarios`). Change a default here and the docs
(``docs/simulator.md``) should follow.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

#: Pre-rollout period: rollout days -PRE_DAYS .. -1 are simulated before day 0.
PRE_DAYS = 14

#: Relative activity per UTC hour of day (weekdays): night trough, morning and evening peaks.
DIURNAL_WEEKDAY: tuple[float, ...] = (
    1.2, 0.9, 0.8, 0.8, 0.9, 1.3, 2.4, 4.0, 5.6, 5.8, 5.2, 4.9,
    5.3, 5.2, 4.8, 4.7, 4.9, 5.4, 6.2, 6.9, 7.0, 6.1, 4.1, 2.3,
)
#: Weekends: later mornings, flatter day.
DIURNAL_WEEKEND: tuple[float, ...] = (
    1.8, 1.3, 1.0, 0.9, 0.9, 1.0, 1.4, 2.2, 3.4, 4.6, 5.4, 5.8,
    5.9, 5.8, 5.6, 5.5, 5.6, 5.8, 6.1, 6.4, 6.3, 5.6, 4.3, 2.9,
)


@dataclass(frozen=True)
class ModelParams:
    """Parameters of the healthy world (no scenario)."""

    # -- population -----------------------------------------------------------------------
    internal_share: float = 0.005          # share of internal users (at least min_internal)
    min_internal: int = 3
    activity_beta: tuple[float, float] = (1.3, 2.2)   # latent daily-visit propensity ~ Beta
    engagement_noise: float = 0.08         # engagement_score = f(propensity) + N(0, noise)
    memories_nb_r: float = 0.9             # micro_memory_count - 1 ~ NegBin(r, mean)
    memories_mean_base: float = 2.0        # mean = base + slope * engagement
    memories_mean_slope: float = 16.0
    memories_max: int = 2000
    device_probs: tuple[float, float, float] = (0.55, 0.33, 0.12)   # 1, 2, 3 devices
    primary_device_share: float = 0.7      # share of opens on a user's first device
    signup_median_days: float = 180.0      # days before the pre-period (lognormal)
    signup_sigma: float = 0.8
    late_signup_share: float = 0.0         # share of users who sign up during the rollout
                                           #   (uniform over days 0..through_day); they are
                                           #   active only from the day after signing up. With
                                           #   0, over 85% of the users active on days 8-14 were
                                           #   active on days 0-7 (a user base, not a launch)

    # -- activity ---------------------------------------------------------------------------
    weekend_factor: float = 1.12           # daily visit probability x this on Sat/Sun
    max_daily_prob: float = 0.97
    extra_opens_per_engagement: float = 0.8   # opens on an active day = 1 + Poisson(this * e)
    retention_lift: float = 0.01           # + absolute daily return probability after first
                                           #   treated visit (healthy treatment effect)

    # -- ranking ----------------------------------------------------------------------------
    min_candidates: int = 5
    max_candidates: int = 25
    max_items: int = 6
    epsilon: float = 0.10                  # share of requests shown a uniformly random slate
    never_shown_share: float = 0.35        # last_shown_hours NULL
    pinned_share: float = 0.03
    use_count_mean: float = 3.0
    use_count_r: float = 1.1
    recency_median_h: float = 90.0
    recency_sigma: float = 1.4
    last_shown_median_h: float = 30.0
    last_shown_sigma: float = 1.2
    similarity_beta: tuple[float, float] = (2.0, 3.5)
    tuned_weight_share: float = 0.3        # users whose stored weights differ from the default
    fallback_rate: float = 0.005           # requests whose stored weights cannot be used

    # -- api --------------------------------------------------------------------------------
    whispers_median_ms: float = 55.0       # lognormal body of /api/whispers/context
    whispers_sigma: float = 0.45
    tail_share: float = 0.03               # share of requests with a Pareto tail added
    tail_scale_ms: float = 60.0
    tail_alpha: float = 2.6
    ranking_share: tuple[float, float] = (2.0, 3.0)   # ranking_ms / duration ~ Beta
    ranking_cap_ms: float = 150.0          # healthy ranking_ms stays below cap + 40 ms
    whispers_error_rate: float = 0.004     # 4xx/5xx share of whispers requests
    other_error_rate: float = 0.003
    server_error_share: float = 0.15       # of errors, share that are 5xx (healthy 5xx ~0.06%: uptime ~99.9%)

    # -- engagement outputs -----------------------------------------------------------------
    cue_prob: float = 0.35                 # chance a treated open fires a Maya cue candidate
    feedback_first_day: int = 3
    feedback_rate: float = 0.06            # chance an active treated user answers that day
    rating_probs: tuple[float, ...] = (0.02, 0.03, 0.08, 0.36, 0.51)   # mean ~4.31
    relevant_true: float = 0.88
    relevant_null: float = 0.05
    ticket_rate: float = 0.0015            # tickets per user-day, equal for every variant
    ticket_category_probs: tuple[float, float, float] = (0.45, 0.53, 0.02)  # bug, other, privacy
    ticket_priority_probs: tuple[float, ...] = (0.02, 0.15, 0.50, 0.33)  # critical..low
    ticket_about_whispers: float = 0.15    # share of a treated user's bug/other tickets
    ticket_anonymous: float = 0.02

    # -- database ---------------------------------------------------------------------------
    db_p95_base_ms: float = 19.0
    db_p95_diurnal_ms: float = 3.0
    db_p95_noise_ms: float = 1.2

    diurnal_weekday: tuple[float, ...] = field(default=DIURNAL_WEEKDAY)
    diurnal_weekend: tuple[float, ...] = field(default=DIURNAL_WEEKEND)

    def as_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}
