"""Group-sequential boundaries: Lan-DeMets alpha spending over daily looks.

The retention comparison is looked at every day of the percentage rollout. Testing each day at
``alpha`` would inflate the chance of a false "non-inferior" far above ``alpha``; Lan-DeMets
alpha spending fixes that. The cumulative type-I error allowed by information fraction ``t`` is
``alpha(t)``:

* O'Brien-Fleming type: ``alpha(t) = 2 - 2 * Phi(z_{1 - alpha/2} / sqrt(t))`` (spends almost
  nothing early, nearly the full ``alpha`` at the end);
* Pocock type: ``alpha(t) = alpha * ln(1 + (e - 1) * t)``;
* Hwang-Shih-DeCani (1990) family: ``alpha(t) = alpha (1 - exp(-gamma t)) / (1 - exp(-gamma))``
  (``gamma = 0``: linear; ``gamma = -4`` behaves like O'Brien-Fleming, ``gamma = 1`` like Pocock);
* Kim-DeMets power family: ``alpha(t) = alpha * t ** rho``.

At look k the upper boundary ``b_k`` solves
``P(Z_1 < b_1, ..., Z_{k-1} < b_{k-1}, Z_k >= b_k) = alpha(t_k) - alpha(t_{k-1})``
under the canonical joint distribution of the z-statistics
(``corr(Z_i, Z_j) = sqrt(I_i / I_j)``, independent increments of the score ``Z_k sqrt(I_k)``),
computed by the recursive numerical integration of Armitage, McPherson and Rowe (1969) as laid out
in Jennison & Turnbull (2000, ch. 19). The information ``I_k`` sets the correlation; the
fraction ``t_k`` only decides how much alpha is spent.

``est +- b_k * se`` is then a repeated confidence interval: each end holds at one-sided level
``alpha`` simultaneously over all looks, whenever one stops.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..lazy import lazy_module
from .settings import SpendingName

optimize = lazy_module("scipy.optimize")
special = lazy_module("scipy.special")
stats = lazy_module("scipy.stats")

_GRID = 401          # Simpson points per look (odd)
_TAIL = 10.0          # the grid spans +-10 standard deviations
_NO_INFO = 1e-9       # relative information increment below which a look adds nothing
_BAND = 10.0          # a transition kernel's reach, in its standard deviations
_SQRT_2PI = math.sqrt(2.0 * math.pi)


#: Default parameter of the parametric families (``hsd``: gamma, ``power``: rho).
DEFAULT_PARAM: dict[str, float] = {"hsd": -4.0, "power": 3.0}


def spending(t: float | np.ndarray, alpha: float, kind: SpendingName,
             param: float | None = None) -> np.ndarray:
    """Cumulative one-sided alpha spent by information fraction ``t`` (0 at t=0, alpha at t=1).

    ``param`` is gamma of the Hwang-Shih-DeCani family (``kind="hsd"``) or rho of the power family
    (``kind="power"``); the other kinds take none."""
    t = np.clip(np.asarray(t, dtype=float), 0.0, 1.0)
    out = np.zeros_like(t)
    pos = t > 0
    if kind == "obrien_fleming":
        z = stats.norm.isf(alpha / 2.0)
        out[pos] = 2.0 * stats.norm.sf(z / np.sqrt(t[pos]))
    elif kind == "pocock":
        out[pos] = alpha * np.log1p((math.e - 1.0) * t[pos])
    elif kind == "hsd":
        gamma = DEFAULT_PARAM["hsd"] if param is None else float(param)
        if abs(gamma) < 1e-12:
            out[pos] = alpha * t[pos]
        else:
            out[pos] = alpha * np.expm1(-gamma * t[pos]) / math.expm1(-gamma)
    elif kind == "power":
        rho = DEFAULT_PARAM["power"] if param is None else float(param)
        if rho <= 0:
            raise ValueError(f"the power family needs rho > 0, got {rho}")
        out[pos] = alpha * t[pos] ** rho
    else:  # pragma: no cover - the plan validates the name
        raise ValueError(f"unknown spending function {kind!r}")
    return np.minimum(out, alpha)


def _simpson(lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    z = np.linspace(lo, hi, _GRID)
    h = (hi - lo) / (_GRID - 1)
    w = np.ones(_GRID)
    w[1:-1:2] = 4.0
    w[2:-1:2] = 2.0
    return z, w * h / 3.0


@dataclass
class _State:
    """Sub-density of Z_k on the continuation region, on a Simpson grid."""

    z: np.ndarray
    w: np.ndarray
    f: np.ndarray
    info: float


def _exit_prob(state: _State | None, b: float, info: float, drift: float) -> float:
    """P(continue so far, Z_k >= b) with drift ``drift`` (mean of Z_k is drift * sqrt(I_k))."""
    if state is None:
        return float(stats.norm.sf(b - drift * math.sqrt(info)))
    delta = info - state.info
    if delta <= _NO_INFO * info:
        # no new information: Z_k equals Z_{k-1}; the exit mass is what lies above b
        mask = state.z >= b
        return float(np.sum((state.w * state.f)[mask]))
    mean = (state.z * math.sqrt(state.info) + drift * delta) / math.sqrt(info)
    sd = math.sqrt(delta / info)
    return float(np.sum(state.w * state.f * special.ndtr((mean - b) / sd)))


def _advance(state: _State | None, b: float, info: float, drift: float) -> _State:
    """Sub-density of Z_k on ``(-inf, b)`` given continuation through the previous looks."""
    centre = drift * math.sqrt(info)
    hi = min(b, centre + _TAIL) if math.isfinite(b) else centre + _TAIL
    z, w = _simpson(centre - _TAIL, hi)
    if state is None:
        f = np.exp(-0.5 * (z - centre) ** 2) / _SQRT_2PI
    else:
        delta = info - state.info
        if delta <= _NO_INFO * info:
            f = np.interp(z, state.z, state.f, left=0.0, right=0.0)
        else:
            mean = (state.z * math.sqrt(state.info) + drift * delta) / math.sqrt(info)
            f = _transition(z, mean, math.sqrt(delta / info), state.w * state.f)
    return _State(z, w, f, info)


def _transition(z: np.ndarray, mean: np.ndarray, sd: float, mass: np.ndarray) -> np.ndarray:
    """``f(z_i) = sum_j mass_j * phi((z_i - mean_j) / sd) / sd``: the density of the next look's
    statistic at ``z`` given the previous look's (``mean``: ascending, where each previous grid
    point leads; ``mass``: its Simpson-weighted sub-density).

    Only the pairs within :data:`_BAND` standard deviations are computed: a kernel value beyond
    is below ``exp(-_BAND**2 / 2)`` (1e-22) of its peak. With a day's information increment the
    band holds about a quarter of the grid, and the 401 x 401 kernel of exponentials was most
    of a boundary computation's time; with a wide kernel (an early look) every pair is
    computed, as before (a matrix product). ``tests/test_stats_sequential.py`` checks both
    against the published tables and against the full kernel."""
    reach = _BAND * sd
    lo = np.searchsorted(mean, z - reach, side="left")
    hi = np.searchsorted(mean, z + reach, side="right")
    width = int((hi - lo).max(initial=0))
    scale = 1.0 / (sd * _SQRT_2PI)
    # (a continuation region wholly beyond the grid's tail leaves a reversed grid of ~0 mass:
    # the full kernel, as before)
    if 2 * width >= mean.size or mean[0] > mean[-1]:
        u = (z[:, None] - mean[None, :]) / sd
        return (np.exp(-0.5 * u * u) @ mass) * scale
    if width == 0:
        return np.zeros(z.size)
    idx = lo[:, None] + np.arange(width)[None, :]
    inside = idx < hi[:, None]
    idx = np.minimum(idx, mean.size - 1)
    u = (z[:, None] - mean[idx]) / sd
    kernel = np.where(inside, np.exp(-0.5 * u * u), 0.0)
    return np.einsum("ij,ij->i", kernel, mass[idx]) * scale


def boundaries(information: Sequence[float], fractions: Sequence[float], alpha: float,
               kind: SpendingName, param: float | None = None) -> np.ndarray:
    """Upper z-boundaries of a one-sided Lan-DeMets design.

    ``information``: statistical information (or any quantity proportional to it, such as the
    effective sample size) at each look, increasing. ``fractions``: information fractions used
    for spending (non-decreasing, last <= 1). Looks with zero information get ``inf``. A look
    whose alpha increment is zero also gets ``inf`` (it cannot reject).
    """
    info = np.asarray(information, dtype=float)
    frac = np.maximum.accumulate(np.clip(np.asarray(fractions, dtype=float), 0.0, 1.0))
    cum = spending(frac, alpha, kind, param)
    out = np.full(info.size, np.inf)
    state: _State | None = None
    spent = 0.0
    for k in range(info.size):
        if not info[k] > 0 or (state is not None and info[k] < state.info):
            continue
        target = cum[k] - spent
        if target <= 1e-15:
            b = math.inf
        else:
            def excess(b: float, state: _State | None = state, i: float = info[k],
                       target: float = target) -> float:
                return _exit_prob(state, b, i, 0.0) - target

            lo, hi = -_TAIL, 40.0
            if excess(lo) < 0:  # cannot spend that much (only possible with no new information)
                b = lo
            else:
                b = optimize.brentq(excess, lo, hi, xtol=1e-10)
            spent += _exit_prob(state, b, info[k], 0.0)
        out[k] = b
        state = _advance(state, b, info[k], 0.0)
    return out


def exit_probabilities(bounds: Sequence[float], information: Sequence[float],
                       drift: float = 0.0) -> np.ndarray:
    """Per-look probability of first crossing the upper boundary, with drift ``drift``
    (the standardised effect: mean of Z_k is drift * sqrt(I_k)). Sum = overall crossing prob."""
    info = np.asarray(information, dtype=float)
    out = np.zeros(info.size)
    state: _State | None = None
    for k, b in enumerate(np.asarray(bounds, dtype=float)):
        if not info[k] > 0:
            continue
        out[k] = _exit_prob(state, b, info[k], drift) if math.isfinite(b) else 0.0
        state = _advance(state, b, info[k], drift)
    return out


def classical_boundaries(looks: int, alpha: float, kind: SpendingName) -> np.ndarray:
    """Classical (Pocock 1977 / O'Brien-Fleming 1979) one-sided boundaries for equally spaced
    looks: ``c`` at every look (Pocock) or ``c * sqrt(K / k)`` (O'Brien-Fleming), with ``c``
    chosen so the overall crossing probability is ``alpha``. Used to check the integration
    against published tables."""
    k = np.arange(1, looks + 1, dtype=float)
    shape = np.ones(looks) if kind == "pocock" else np.sqrt(looks / k)

    def excess(c: float) -> float:
        return float(exit_probabilities(c * shape, k).sum()) - alpha

    c = optimize.brentq(excess, 0.5, 10.0, xtol=1e-10)
    return c * shape


def projected_fractions(information: Sequence[float], planned_looks: int) -> np.ndarray:
    """Information fractions of looks 1..K (K <= planned_looks) from the information seen so far.

    The maximum information is not known in advance (accrual grows with the rollout), so at look
    k it is projected from data available at look k only:
    ``I_max = I_k + (L - k) * max(latest daily increment, mean daily increment)``, where the mean
    runs over the looks since the first one with information. Carrying the larger increment
    forward keeps a slow day from making the design believe it is nearly complete. The fraction
    is ``I_k / I_max``, forced non-decreasing, and 1 at the final planned look L, which spends all
    remaining alpha. The projection depends on accrual only, never on outcomes, so the spending
    stays valid (Lan & DeMets 1983; Jennison & Turnbull 2000, sec. 7.2).
    """
    info = np.maximum(np.asarray(information, dtype=float), 0.0)
    out = np.zeros(info.size)
    prev_info, prev_frac = 0.0, 0.0
    first: int | None = None
    for k in range(info.size):
        i = max(info[k], prev_info)
        if i > 0 and first is None:
            first = k
        if i <= 0:
            frac = 0.0
        elif k >= planned_looks - 1:
            frac = 1.0
        else:
            latest = i - prev_info
            mean = i / (k - first + 1) if first is not None else i
            projected = i + (planned_looks - 1 - k) * max(latest, mean)
            frac = i / projected
        frac = max(frac, prev_frac)
        out[k] = frac
        prev_info, prev_frac = i, frac
    return out


def monitor(information: Sequence[float], planned_looks: int, alpha: float,
            kind: SpendingName) -> pd.DataFrame:
    """The sequential design over the looks seen so far: one row per look with the
    information, fraction, cumulative alpha spent and the upper z-boundary."""
    info = np.asarray(information, dtype=float)[:planned_looks]
    frac = projected_fractions(info, planned_looks)
    b = boundaries(info, frac, alpha, kind)
    return pd.DataFrame({
        "look": np.arange(1, info.size + 1),
        "information": info,
        "fraction": frac,
        "alpha_spent": spending(frac, alpha, kind),
        "boundary": b,
    })
