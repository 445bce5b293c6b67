"""Seeded random cases for the differential tests against the anchors' libraries.

Every case is drawn from one seed: per-arm sizes log-uniform between 50 and 10^6, rates near 0,
near 1 or in between (cycled, so each regime has a third of the cases). Cases are built from
unit-level draws and reduced to the aggregates the SQL would return (n, sum, sum of squares,
cross-products), which is what both our code and the anchors consume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

SEED = 20261217
N_CASES = 24
MIN_N, MAX_N = 50, 1_000_000
REGIMES: tuple[str, ...] = ("near_0", "near_1", "middle")


def _sizes(rng: np.random.Generator, i: int) -> tuple[int, int]:
    """Per-arm sizes; the first two cases pin the ends of the range."""
    if i == 0:
        return MIN_N, MIN_N
    if i == 1:
        return MAX_N, MAX_N
    lo, hi = np.log(MIN_N), np.log(MAX_N)
    return int(np.exp(rng.uniform(lo, hi))), int(np.exp(rng.uniform(lo, hi)))


def _rate(rng: np.random.Generator, regime: str) -> float:
    if regime == "near_0":
        return float(rng.uniform(0.001, 0.02))
    if regime == "near_1":
        return float(rng.uniform(0.98, 0.999))
    return float(rng.uniform(0.1, 0.9))


@dataclass(frozen=True)
class Arm:
    """Aggregates of one arm: n, sum and sum of squares of the outcome."""

    n: int
    sum: float
    sum_sq: float

    @property
    def mean(self) -> float:
        return self.sum / self.n


@dataclass(frozen=True)
class TwoArmCase:
    index: int
    kind: str  # "proportion" | "mean"
    regime: str
    treatment: Arm
    control: Arm

    @property
    def label(self) -> str:
        return (f"{self.index:02d}-{self.kind}-{self.regime}-"
                f"n{self.treatment.n}v{self.control.n}")

    def strata(self) -> pd.DataFrame:
        """One-stratum frame in the layout of :func:`stratified_difference`."""
        t, c = self.treatment, self.control
        return pd.DataFrame({"n_t": [t.n], "sum_t": [t.sum], "n_c": [c.n], "sum_c": [c.sum],
                             "sum_sq_t": [t.sum_sq], "sum_sq_c": [c.sum_sq]})

    @property
    def degenerate(self) -> bool:
        """An arm without variation (0 or n successes, or constant values)."""
        return any(a.sum_sq - a.sum * a.sum / a.n <= 0 for a in (self.treatment, self.control))


def _mean_values(rng: np.random.Generator, n: int, regime: str, shift: float) -> np.ndarray:
    """Unit values: mostly zeros (near 0), close to a ceiling (near 1), or skewed (middle)."""
    if regime == "near_0":
        return rng.poisson(0.02 * (1 + shift), size=n).astype(float)
    if regime == "near_1":
        return 1.0 - rng.beta(1.0, 60.0 * (1 + shift), size=n)
    return rng.lognormal(1.0 + shift, 0.8, size=n)


def two_arm_cases(kind: str, seed: int = SEED, n_cases: int = N_CASES) -> list[TwoArmCase]:
    rng = np.random.default_rng([seed, 0 if kind == "proportion" else 1])
    cases = []
    for i in range(n_cases):
        regime = REGIMES[i % len(REGIMES)]
        n_t, n_c = _sizes(rng, i)
        if kind == "proportion":
            p_c = _rate(rng, regime)
            p_t = float(np.clip(p_c * rng.uniform(0.9, 1.1), 1e-4, 1 - 1e-4))
            x_t, x_c = float(rng.binomial(n_t, p_t)), float(rng.binomial(n_c, p_c))
            t, c = Arm(n_t, x_t, x_t), Arm(n_c, x_c, x_c)
        else:
            shift = float(rng.uniform(-0.05, 0.05))
            vt = _mean_values(rng, n_t, regime, shift)
            vc = _mean_values(rng, n_c, regime, 0.0)
            t = Arm(n_t, float(vt.sum()), float((vt * vt).sum()))
            c = Arm(n_c, float(vc.sum()), float((vc * vc).sum()))
        cases.append(TwoArmCase(i, kind, regime, t, c))
    return cases


@dataclass(frozen=True)
class CupedArm:
    n: int
    sum_y: float
    sum_y2: float
    sum_x: float
    sum_x2: float
    sum_xy: float


@dataclass(frozen=True)
class CupedCase:
    index: int
    binary: bool
    regime: str
    treatment: CupedArm
    control: CupedArm
    #: slope of y on x ignoring the arm, and the within-arm (ANCOVA) slope, both by least squares
    #: on the unit-level draws (an independent computation of what each side should use)
    total_slope: float
    ancova_slope: float

    @property
    def label(self) -> str:
        kind = "binary" if self.binary else "continuous"
        return f"{self.index:02d}-{kind}-{self.regime}-n{self.treatment.n}v{self.control.n}"

    def strata(self) -> pd.DataFrame:
        row: dict[str, float] = {"stratum": 0}
        for suffix, arm in (("t", self.treatment), ("c", self.control)):
            row |= {f"n_{suffix}": arm.n, f"sum_y_{suffix}": arm.sum_y,
                    f"sum_y2_{suffix}": arm.sum_y2, f"sum_x_{suffix}": arm.sum_x,
                    f"sum_x2_{suffix}": arm.sum_x2, f"sum_xy_{suffix}": arm.sum_xy}
        return pd.DataFrame([row])


def _cuped_arm(y: np.ndarray, x: np.ndarray) -> CupedArm:
    return CupedArm(int(y.size), float(y.sum()), float((y * y).sum()), float(x.sum()),
                    float((x * x).sum()), float((x * y).sum()))


def cuped_cases(seed: int = SEED, n_cases: int = N_CASES) -> list[CupedCase]:
    """Pre-period activity x (0..14 active days) and a retained-like outcome y that depends on
    it; binary y for even cases, continuous for odd ones; a small treatment effect."""
    rng = np.random.default_rng([seed, 2])
    base = {"near_0": -5.0, "near_1": 4.0, "middle": -1.0}
    cases = []
    for i in range(n_cases):
        regime = REGIMES[i % len(REGIMES)]
        n_t, n_c = _sizes(rng, i)
        binary = i % 2 == 0
        effect = float(rng.uniform(-0.1, 0.1))
        arrays = []
        for n, eff in ((n_t, effect), (n_c, 0.0)):
            x = rng.binomial(14, rng.uniform(0.2, 0.6), size=n).astype(float)
            lin = base[regime] + 0.25 * x + eff
            if binary:
                y = (rng.random(n) < 1 / (1 + np.exp(-lin))).astype(float)
            else:
                y = lin + rng.normal(0.0, 1.5, size=n)
            arrays.append((y, x))
        (yt, xt), (yc, xc) = arrays
        y, x = np.r_[yt, yc], np.r_[xt, xc]
        arm = np.r_[np.ones(n_t), np.zeros(n_c)]
        total = np.linalg.lstsq(np.column_stack([np.ones(y.size), x]), y, rcond=None)[0][1]
        ancova = np.linalg.lstsq(np.column_stack([np.ones(y.size), arm, x]), y, rcond=None)[0][2]
        cases.append(CupedCase(i, binary, regime, _cuped_arm(yt, xt), _cuped_arm(yc, xc),
                               float(total), float(ancova)))
    return cases


@dataclass(frozen=True)
class SrmCase:
    index: int
    #: one row per first-exposure day: day, n_t, n_c, share_t (expected treatment share)
    by_day: pd.DataFrame

    @property
    def constant_share(self) -> bool:
        return self.by_day["share_t"].nunique() == 1

    @property
    def label(self) -> str:
        days = len(self.by_day)
        n = int(self.by_day["n_t"].sum() + self.by_day["n_c"].sum())
        return f"{self.index:02d}-{days}day{'s' if days > 1 else ''}-n{n}"


#: Treatment shares of the plan's randomised phases (10% .. 95%), as on the rollout's days.
PLAN_SHARES: tuple[float, ...] = (0.10, 0.25, 0.50, 0.95)


def srm_cases(seed: int = SEED, n_cases: int = N_CASES) -> list[SrmCase]:
    """Single-day splits (a third), several days at one share (a third) and several days at the
    plan's changing shares (a third); some with a planted mismatch (the treatment share off by
    up to 2 points)."""
    rng = np.random.default_rng([seed, 3])
    cases = []
    for i in range(n_cases):
        shape = i % 3
        days = 1 if shape == 0 else int(rng.integers(2, 6))
        if shape == 2:
            shares = rng.choice(PLAN_SHARES, size=days)
            shares[0], shares[-1] = PLAN_SHARES[0], PLAN_SHARES[-1]  # shares really change
        else:
            shares = np.full(days, rng.choice(PLAN_SHARES))
        skew = rng.uniform(-0.02, 0.02) if i % 4 == 1 else 0.0
        n = np.exp(rng.uniform(np.log(2 * MIN_N), np.log(2 * MAX_N), size=days)).astype(int)
        n_t = rng.binomial(n, np.clip(shares + skew, 0.001, 0.999))
        cases.append(SrmCase(i, pd.DataFrame({"day": np.arange(days), "n_t": n_t, "n_c": n - n_t,
                                              "share_t": shares.astype(float)})))
    return cases


def require_anchor(module: str):
    """Import an anchor library for a differential test module.

    The README's test command installs every anchor, so on CI (``CI`` set) a missing one is an
    error, never a skip; a developer who installed only ``.[dev]`` gets a skip that says what
    to install."""
    import importlib
    import os
    import warnings

    import pytest

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(module)
    except ImportError as exc:
        how = ("pip install -e '.[dev,anchors,browser]' && pip install --no-deps -r "
               "tests/anchors-no-deps.txt")
        if os.environ.get("CI"):
            pytest.fail(f"anchor library {module!r} is not installed on CI ({exc}); {how}",
                        pytrace=False)
        pytest.skip(f"anchor library {module!r} is not installed ({exc}): {how}",
                    allow_module_level=True)
