"""The user population: the ``users`` table and each user's hidden traits.

Traits drawn per user (``Population``): a latent daily-visit propensity (Beta), an
engagement score that tracks it (the ``users.engagement_score`` column), a skewed number of
micro-memories (1 + negative binomial whose mean grows with engagement: many users with a few,
some with dozens), 1-3 devices, a signup time before the pre-period, an internal flag (~0.5%,
at least 3) and the stored ranking weights (a preset; ~30% of users have tuned weights).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from ..weights import DEFAULT_WEIGHTS, Weights, weights_from_vector
from .ids import format_ids
from .params import ModelParams
from .rng import stream
from .timeline import US_PER_DAY, Calendar, to_arrow_ts

#: Stored-weight presets: index 0 is the production default; the others are "tuned" by users.
WEIGHT_PRESETS: tuple[Weights, ...] = (
    DEFAULT_WEIGHTS,
    weights_from_vector([0.60, 0.10, 0.20, 0.20, 0.30], version="tuned-a-2026-11"),
    weights_from_vector([0.40, 0.30, 0.10, 0.20, 0.50], version="tuned-b-2026-11"),
    weights_from_vector([0.50, 0.05, 0.25, 0.30, 0.20], version="tuned-c-2026-11"),
)
#: Weights an out-of-date device still holds (scenario ``device_weight_mismatch``).
STALE_WEIGHTS: Weights = weights_from_vector([0.60, 0.30, 0.05, 0.05, 0.30], version="stale-2026-10")

USER_ID_WIDTH = 8
DEVICES_PER_USER = 3   # device number = user index * 3 + k, k < n_devices


@dataclass(frozen=True, eq=False)
class Population:
    n: int
    user_id: pa.Array            # "u" + 8 digits
    propensity: np.ndarray       # latent daily visit probability (weekday)
    engagement: np.ndarray       # users.engagement_score
    memories: np.ndarray         # users.micro_memory_count (>= 1)
    is_internal: np.ndarray
    n_devices: np.ndarray        # 1..3
    signup_us: np.ndarray
    preset: np.ndarray           # index into WEIGHT_PRESETS

    def users_table(self) -> pa.Table:
        return pa.table({
            "user_id": self.user_id,
            "signup_at": to_arrow_ts(self.signup_us),
            "is_internal": pa.array(self.is_internal),
            "micro_memory_count": pa.array(self.memories.astype(np.int32)),
            "engagement_score": pa.array(self.engagement),
        })

    def users_frame(self) -> pd.DataFrame:
        """The columns cohort assignment reads, as pandas."""
        return self.users_table().to_pandas()

    def device_ids(self, user_idx: np.ndarray, device_k: np.ndarray) -> pa.Array:
        return format_ids("d", user_idx.astype(np.int64) * DEVICES_PER_USER + device_k, 9)


def make_population(n: int, seed: int, cal: Calendar, params: ModelParams) -> Population:
    """Draw ``n`` users (vectorised)."""
    if n < 1:
        raise ValueError("users must be >= 1")
    rng = stream(seed, "population")
    a, b = params.activity_beta
    propensity = rng.beta(a, b, n)
    engagement = np.clip(0.06 + 0.95 * propensity + rng.normal(0, params.engagement_noise, n), 0, 1)
    mean = params.memories_mean_base + params.memories_mean_slope * engagement
    r = params.memories_nb_r
    memories = 1 + rng.negative_binomial(r, r / (r + mean))
    memories = np.minimum(memories, params.memories_max).astype(np.int64)
    n_internal = min(n, max(params.min_internal, round(params.internal_share * n)))
    is_internal = np.zeros(n, dtype=bool)
    is_internal[rng.choice(n, n_internal, replace=False)] = True
    p = np.asarray(params.device_probs) / sum(params.device_probs)
    n_devices = 1 + np.searchsorted(np.cumsum(p), rng.random(n) * (1 - 1e-12), side="right")
    days_before = rng.lognormal(np.log(params.signup_median_days), params.signup_sigma, n)
    signup_us = (cal.period_start_us - ((1.0 + days_before) * US_PER_DAY)).astype(np.int64)
    if params.late_signup_share > 0:
        late_rng = stream(seed, "late-signup")
        late = late_rng.random(n) < params.late_signup_share
        span = (cal.through_day + 1) * US_PER_DAY
        signup_us[late] = cal.day0_us + (late_rng.random(int(late.sum())) * span).astype(np.int64)
    signup_us -= signup_us % 1_000_000  # whole seconds
    tuned = rng.random(n) < params.tuned_weight_share
    preset = np.where(tuned, 1 + rng.integers(0, len(WEIGHT_PRESETS) - 1, n), 0).astype(np.int8)
    return Population(
        n=n, user_id=format_ids("u", np.arange(n), USER_ID_WIDTH), propensity=propensity,
        engagement=engagement, memories=memories, is_internal=is_internal,
        n_devices=n_devices.astype(np.int64), signup_us=signup_us, preset=preset,
    )
