"""The simulated calendar: rollout days, microsecond timestamps and the diurnal shape.

Internally every timestamp is an ``int64`` count of microseconds since the Unix epoch (naive
UTC); :func:`to_arrow_ts` turns such arrays into Arrow ``timestamp[us]`` columns.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

US_PER_SECOND = 1_000_000
US_PER_MINUTE = 60 * US_PER_SECOND
US_PER_HOUR = 60 * US_PER_MINUTE
US_PER_DAY = 24 * US_PER_HOUR
EPOCH = dt.datetime(1970, 1, 1)


def to_us(when: dt.datetime | dt.date) -> int:
    """Microseconds since the epoch of a naive UTC datetime (a date means its midnight)."""
    if not isinstance(when, dt.datetime):
        when = dt.datetime.combine(when, dt.time())
    delta = when - EPOCH
    return (delta.days * 86_400 + delta.seconds) * US_PER_SECOND + delta.microseconds


def from_us(us: int) -> dt.datetime:
    return EPOCH + dt.timedelta(microseconds=int(us))


def to_arrow_ts(us: np.ndarray) -> pa.Array:
    return pa.array(np.asarray(us, dtype=np.int64).view("datetime64[us]"), type=pa.timestamp("us"))


class Calendar:
    """Rollout day ``d`` starts at ``start_date + d`` days, 00:00 UTC."""

    def __init__(self, start_date: dt.date, pre_days: int, through_day: int) -> None:
        self.start_date = start_date
        self.pre_days = pre_days
        self.through_day = through_day
        self.day0_us = to_us(start_date)

    @property
    def first_day(self) -> int:
        return -self.pre_days

    @property
    def days(self) -> range:
        return range(-self.pre_days, self.through_day + 1)

    @property
    def period_start_us(self) -> int:
        return self.day_start_us(self.first_day)

    @property
    def period_end_us(self) -> int:
        """End (exclusive) of the simulated period."""
        return self.day_start_us(self.through_day + 1)

    def day_start_us(self, day: int) -> int:
        return self.day0_us + day * US_PER_DAY

    def weekday(self, day: int) -> int:
        """0 = Monday .. 6 = Sunday."""
        return (self.start_date + dt.timedelta(days=day)).weekday()

    def is_weekend(self, day: int) -> bool:
        return self.weekday(day) >= 5


def diurnal_times(rng: np.random.Generator, n: int, day_start_us: int,
                  hourly_weights: tuple[float, ...]) -> np.ndarray:
    """``n`` timestamps within one day following a piecewise-linear diurnal density.

    The hour is drawn from the hourly weights; within the hour the density moves linearly
    towards the next hour's weight (sampled by inverting the linear CDF), so the shape has no
    steps at hour boundaries.
    """
    w = np.asarray(hourly_weights, dtype=float)
    p = w / w.sum()
    hour = np.searchsorted(np.cumsum(p), rng.random(n) * (1 - 1e-12), side="right")
    a = w[hour]
    b = w[(hour + 1) % 24]
    u = rng.random(n)
    # density on [0,1) proportional to a + (b-a) x; invert its CDF a x + (b-a) x^2 / 2
    slope = b - a
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.where(np.abs(slope) < 1e-9, u,
                     (-a + np.sqrt(a * a + 2 * slope * u * (a + slope / 2))) / slope)
    x = np.clip(x, 0.0, 1.0 - 1e-9)
    return day_start_us + ((hour + x) * US_PER_HOUR).astype(np.int64)


def group_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """Boolean mask: True where a run of equal keys starts (keys must be grouped)."""
    if sorted_keys.size == 0:
        return np.zeros(0, dtype=bool)
    out = np.empty(sorted_keys.size, dtype=bool)
    out[0] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=out[1:])
    return out


def rank_within(groups: np.ndarray) -> np.ndarray:
    """0-based position of each row within its run of equal (grouped) keys."""
    n = groups.size
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(group_starts(groups))
    lengths = np.diff(np.append(starts, n))
    return np.arange(n, dtype=np.int64) - np.repeat(starts, lengths)
