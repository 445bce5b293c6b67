"""What production actually served: the rollout's stages in the simulated world.

By default the simulated rollout follows the plan's calendar (every day GO, each stage switched
on at 00:00 UTC). The state scenarios change that, and the truth file records what happened:

* ``held_rollout``: NO_GO on ``days`` days from ``day`` (default: days 9 and 10), GO otherwise;
  a hold at a stage boundary keeps the stage (the 10% stage stays on through day 11 and 25%
  starts on day 12); the stage rules are :func:`whispers_lab.state.after_decision`'s;
* ``late_flip``: the stage change of ``day`` (default 10) happens at ``start`` (09:00 UTC), after
  the morning report, not at midnight;
* explicit ``stages`` (:func:`whispers_lab.simulate.simulate`'s argument): the stages of a
  rollout that followed the workbench's own decisions (:mod:`.follow`).

:class:`Serving` answers "was this user served whispers at this time" from the stages (the
bucket rule of :mod:`whispers_lab.cohort`, evaluated at each app open's time) plus the planted
serving faults (``srm``: new control users served whispers; ``stale_flags``: returning users
whose cached flag is stale). :func:`flag_log` writes the ``flag_changes`` table production's flag
service would have logged.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ..cohort import CATEGORY_BETA, CATEGORY_BUCKETED, CATEGORY_INTERNAL
from ..plan import Plan
from ..state import ENABLED_FLAG, GO, Stage, after_decision, simulated_state, stage_of
from .scenarios import Scenario, active
from .timeline import Calendar, to_arrow_ts, to_us

NEVER_US = np.iinfo(np.int64).max


def timeline(plan: Plan, cal: Calendar, scenarios: Sequence[Scenario],
             stages: Sequence[Stage] | None = None) -> tuple[Stage, ...]:
    """The stages production went through, days ``0..through_day`` (times filled in)."""
    through = cal.through_day
    if stages is None:
        held: set[int] = set()
        for s in active(scenarios, "held_rollout"):
            held |= set(range(s.day, s.day + int(s.params["days"])))
        cur = stage_of(plan.phases[0], 0, plan.day_start(0))
        out = [cur]
        for d in range(0, through):
            nxt = after_decision(plan, cur, "NO_GO" if d in held else GO, d)
            if nxt is not cur:
                out.append(nxt)
                cur = nxt
    else:
        out = [s for s in stages if s.day <= through]
        if not out:
            out = [stage_of(plan.phases[0], 0, plan.day_start(0))]
    out = [s if s.at is not None else dataclasses.replace(s, at=plan.day_start(s.day))
           for s in out]
    for s in active(scenarios, "late_flip"):
        h, m = (int(x) for x in str(s.params["start"]).split(":")[:2])
        out = [dataclasses.replace(st, at=plan.day_start(st.day) + dt.timedelta(hours=h, minutes=m))
               if st.day == s.day and st.day > 0 else st for st in out]
    return tuple(dataclasses.replace(s, projected=False) for s in out if s.day <= through)


@dataclass(eq=False)
class Serving:
    """Who is served whispers when: the stages' intervals, each user's bucket and category, and
    the planted faults (``leak_us``: served from then on whatever the stage; ``stale`` users
    keep their previous experience at returning visits from ``stale_from_us``)."""

    bucket: np.ndarray
    category: np.ndarray
    start_us: np.ndarray
    internal_on: np.ndarray
    beta_on: np.ndarray
    threshold: np.ndarray
    leak_us: np.ndarray
    stale: np.ndarray
    stale_from_us: int = NEVER_US
    stale_to_control: bool = False

    @classmethod
    def build(cls, plan: Plan, stages: Sequence[Stage], through_day: int, bucket: np.ndarray,
              category: np.ndarray) -> Serving:
        iv = simulated_state(plan, stages, through_day).intervals(through_day)
        start = np.array([to_us(t.to_pydatetime()) for t in iv["start_at"]], dtype=np.int64)
        return cls(bucket=bucket, category=category, start_us=start,
                   internal_on=iv["internal_on"].to_numpy(np.int64),
                   beta_on=iv["beta_on"].to_numpy(np.int64),
                   threshold=iv["threshold"].to_numpy(np.int64),
                   leak_us=np.full(bucket.size, NEVER_US, dtype=np.int64),
                   stale=np.zeros(bucket.size, dtype=bool))

    def planned(self, user: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Whether the stage in force at ``ts`` enables ``user`` (arrays aligned)."""
        k = np.searchsorted(self.start_us, ts, side="right") - 1
        cat = self.category[user]
        on = np.zeros(user.size, dtype=bool)
        internal = cat == CATEGORY_INTERNAL
        on[internal] = self.internal_on[k[internal]] == 1
        beta = cat == CATEGORY_BETA
        on[beta] = self.beta_on[k[beta]] == 1
        bucketed = cat == CATEGORY_BUCKETED
        on[bucketed] = self.bucket[user[bucketed]] < self.threshold[k[bucketed]]
        return on

    def served(self, user: np.ndarray, ts: np.ndarray, returning: np.ndarray,
               was_treated: np.ndarray) -> np.ndarray:
        """What production served at each open: the stage, the srm leak, and for stale users
        at a returning visit (``returning``) their previous experience (``was_treated``)."""
        out = self.planned(user, ts) | (self.leak_us[user] <= ts)
        stale = self.stale[user] & returning & (ts >= self.stale_from_us)
        if self.stale_to_control:   # switched users still served control
            out = np.where(stale & ~was_treated, False, out)
        else:                       # control users served whispers
            out = out | stale
        return out

    def enabled_by_day(self, day: int, day_end_us: int) -> np.ndarray:
        """Users the stage enables at the end of ``day`` (day-level uses: prefetch, tickets)."""
        users = np.arange(self.bucket.size)
        return self.planned(users, np.full(users.size, day_end_us - 1, dtype=np.int64))


def flag_log(plan: Plan, stages: Sequence[Stage]) -> pa.Table:
    """The ``flag_changes`` rows production logged: the static flags at the start of day 0,
    then one ``NEXT_PUBLIC_WHISPERS_ENABLED`` row per stage change (rollback flips included)."""
    t0 = plan.day_start(0)
    rows: list[tuple] = []
    for name, value in plan.flags.items():
        if name == ENABLED_FLAG:
            continue
        rows.append((t0, name, str(value).lower(), None, None))
    for s in stages:
        if s.off:
            rows.append((s.at, ENABLED_FLAG, "false", None, None))
        else:
            rows.append((s.at, ENABLED_FLAG, "true",
                         float(s.percentage) if s.audience == "percentage" else None, s.audience))
    rows.sort(key=lambda r: (r[0], r[1]))
    us = np.array([to_us(r[0]) for r in rows], dtype=np.int64)
    return pa.table({
        "changed_at": to_arrow_ts(us),
        "flag": pa.array([r[1] for r in rows], pa.string()),
        "value": pa.array([r[2] for r in rows], pa.string()),
        "percentage": pa.array([r[3] for r in rows], pa.float64()),
        "audience": pa.array([r[4] for r in rows], pa.string()),
    })


def with_rollback_flips(plan: Plan, stages: Sequence[Stage], flips: Sequence[tuple[int, int]]
                        ) -> tuple[Stage, ...]:
    """``stages`` with whispers switched off at each rollback scenario's flip ``(day, us)``
    (the simulator keeps generating after a flip; the flag log says what production did)."""
    out = list(stages)
    for day, us in flips:
        at = dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=int(us))
        before = [s for s in out if s.at is not None and s.at <= at]
        phase = before[-1].phase if before else plan.phases[0].id
        out = [s for s in out if s.at is None or s.at <= at]
        out.append(Stage(day, phase, "none", 0.0, at))
    return tuple(sorted(out, key=lambda s: (s.day, s.at)))


def stages_truth(stages: Sequence[Stage]) -> list[dict]:
    return [s.to_dict() for s in stages]


__all__ = ["NEVER_US", "Serving", "flag_log", "stages_truth", "timeline", "with_rollback_flips"]
