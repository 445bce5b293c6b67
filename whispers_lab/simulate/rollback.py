"""Rollback scenarios: an incident, then whispers switched off at a given time.

``rollback_clean`` and ``rollback_stale_cdn`` plant an incident of ``minutes`` minutes from
``start`` (the whispers endpoint fails at rate ``level``, as ``error_spike`` does, which fires the
error-rate rollback trigger; the recap endpoint, which waits for whispers, is ``recap_factor``
times slower), then the flag flip at the end of that window (``disabled_at``). From the flip to
the end of the simulated period the simulator stops serving whispers: a treated open makes no
whispers request, so no ranking, no ``whispers_shown``, no click, except

* requests within ``inflight_seconds`` of the flip (pages loaded before it, requests in flight);
* in ``rollback_stale_cdn``, a share ``share`` of the requests that would have been made: a stale
  CDN cache keeps serving the old bundle, whose clients keep calling the endpoint and showing
  whispers.

Exposures are left as they were (the simulator does not log the variant change after the flip);
the days after a flip are there to be confirmed, not judged. The truth file records the flip
(``expected.disabled_at``) and the confirmation verdict the data should get
(``expected.confirmation``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .scenarios import Scenario
from .timeline import US_PER_SECOND

ROLLBACK_SCENARIOS: tuple[str, ...] = ("rollback_clean", "rollback_stale_cdn")


def flips(scenarios: Sequence[Scenario]) -> list[tuple[int, Scenario]]:
    """(index, scenario) of every rollback scenario."""
    return [(i, s) for i, s in enumerate(scenarios) if s.name in ROLLBACK_SCENARIOS]


def served_after_flip(ts: np.ndarray, scenarios: Sequence[Scenario], rng: np.random.Generator
                      ) -> tuple[np.ndarray, dict[int, dict[str, int]]]:
    """Which whispers requests (timestamps ``ts``, epoch us) are still made: a boolean mask,
    and per scenario index the counts kept in flight, kept by a stale cache, and dropped."""
    keep = np.ones(ts.size, dtype=bool)
    counts: dict[int, dict[str, int]] = {}
    for i, s in flips(scenarios):
        flip = s.end_us
        inflight = flip + int(float(s.params["inflight_seconds"]) * US_PER_SECOND)
        after = ts >= flip
        late = ts >= inflight
        stale = np.zeros(ts.size, dtype=bool)
        if s.name == "rollback_stale_cdn":
            stale = late & (rng.random(ts.size) < float(s.params["share"]))
        drop = late & ~stale
        keep &= ~drop
        counts[i] = {"in_flight": int((after & ~late).sum()), "stale": int(stale.sum()),
                     "dropped": int(drop.sum())}
    return keep, counts


def recap_factor(ts: np.ndarray, scenarios: Sequence[Scenario]) -> np.ndarray:
    """Multiplier of the recap endpoint's latency at ``ts`` (>1 inside an incident window)."""
    factor = np.ones(ts.size)
    for _, s in flips(scenarios):
        factor[s.covers(ts)] *= float(s.params["recap_factor"])
    return factor
