"""Our statistics against spotify-confidence's and gbstats' full APIs, run in their own
supported environment (numpy 1.23, pandas 1.5) by ``data/reference/anchors_reference.py``.

The fixture ``tests/data/anchors_reference.json`` carries each case's inputs, so nothing here
depends on how numpy draws random numbers in either environment.

* Group-sequential bounds: spotify-confidence implements the same method as
  :func:`whispers_lab.stats.sequential.boundaries` (Lan-DeMets alpha spending, recursive
  numerical integration: a port of R's ``ldbounds``) with the power-family spending function
  ``alpha * t^2``. We spend through the O'Brien-Fleming-type function; mapping each information
  fraction ``t`` to the fraction ``f`` at which ours has spent the same ``alpha * t^2`` gives
  both sides the same alpha to spend at the same correlations, so the bounds must agree up to
  the two integrations' numerical error: spotify-confidence integrates with the trapezoid rule
  on a 0.05-wide grid (at most 1000 intervals) and stops its search at 1e-7 in probability,
  ours uses Simpson's rule on 401 points and brentq to 1e-10.
* ``ZTest.difference`` with non-inferiority margins (absolute, and relative to the control
  mean): the p-value and the one-sided bound are ours.
* gbstats' results in its supported environment equal the ``--no-deps`` install's here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from whispers_lab.stats.noninferiority import ni_p_value, stratified_difference
from whispers_lab.stats.sequential import boundaries, spending

from anchor_cases import Arm, TwoArmCase, require_anchor

pytestmark = pytest.mark.anchors

FIXTURE = json.loads((Path(__file__).parent / "data" / "anchors_reference.json")
                     .read_text(encoding="utf-8"))
SETTINGS = FIXTURE["settings"]
ALPHA = SETTINGS["alpha_one_sided"]
#: z-bounds: the two numerical integrations (see the module docstring)
SEQUENTIAL_TOLERANCE = 2e-3


def _case(entry: dict) -> TwoArmCase:
    return TwoArmCase(0, entry["kind"], "", Arm(*entry["treatment"]), Arm(*entry["control"]))


def fractions_for_power_spending(t: np.ndarray, alpha: float) -> np.ndarray:
    """Fractions at which the O'Brien-Fleming-type function has spent ``alpha * t^2``."""
    target = alpha * t ** 2
    return (stats.norm.isf(alpha / 2) / stats.norm.isf(target / 2)) ** 2


@pytest.mark.parametrize("case", FIXTURE["sequential"], ids=lambda c: f"K{len(c['t'])}-a{c['alpha']}")
def test_sequential_bounds_equal_spotify_confidence(case: dict):
    t = np.asarray(case["t"])
    alpha = case["alpha"]
    f = fractions_for_power_spending(t, alpha)
    np.testing.assert_allclose(spending(f, alpha, "obrien_fleming"), alpha * t ** 2, rtol=1e-9)
    ours = boundaries(t, f, alpha, "obrien_fleming")
    np.testing.assert_allclose(ours, case["bounds"], atol=SEQUENTIAL_TOLERANCE, rtol=0)


ZTEST = [e for e in FIXTURE["ztest"] if "skipped" not in e]


def test_enough_ztest_cases():
    assert len(ZTEST) >= 40 and len(FIXTURE["sequential"]) >= 20


def _reads_as_binary(case: TwoArmCase) -> bool:
    return case.kind == "mean" and all(a.sum_sq == a.sum for a in (case.treatment, case.control))


@pytest.mark.parametrize("entry", ZTEST, ids=lambda e: e["label"])
def test_ztest_api_non_inferiority_equals_ours(entry: dict):
    case = _case(entry)
    # a 0/1-valued mean metric is read as binary by spotify-confidence (divisor n): its
    # standard error differs on purpose (tests/test_anchors_stats.py asserts by how much)
    binary = case.kind == "proportion" or _reads_as_binary(case)
    est = stratified_difference(case.strata(), binary=binary)
    z = stats.norm.isf(ALPHA)
    for name, bound in (("absolute", -SETTINGS["margin"]),
                        ("relative", -SETTINGS["relative_margin"] * est.mean_c)):
        got = entry[name]
        assert got["difference"] == pytest.approx(est.diff, rel=1e-9, abs=1e-15)
        assert got["null_hypothesis"] == pytest.approx(bound, rel=1e-9)
        assert got["p_value"] == pytest.approx(ni_p_value(est.diff, est.se, bound), rel=1e-6,
                                               abs=1e-12)
        assert got["ci_lower"] == pytest.approx(est.diff - z * est.se, rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("entry", FIXTURE["gbstats"], ids=lambda e: e["label"])
def test_gbstats_without_its_pins_computes_what_it_does_with_them(entry: dict):
    tests = require_anchor("gbstats.frequentist.tests")
    statistics = require_anchor("gbstats.models.statistics")
    case = _case(entry)

    def stat(a: Arm):
        if case.kind == "proportion":
            return statistics.ProportionStatistic(n=a.n, sum=a.sum)
        return statistics.SampleMeanStatistic(n=a.n, sum=a.sum, sum_squares=a.sum_sq)

    r = tests.TwoSidedTTest(stat(case.control), stat(case.treatment),
                            tests.FrequentistConfig(alpha=2 * ALPHA, difference_type="absolute")
                            ).compute_result()
    assert r.error_message == entry["error"]
    assert r.expected == pytest.approx(entry["expected"], rel=1e-12, abs=1e-15)
    assert r.p_value == pytest.approx(entry["p_value"], rel=1e-9, abs=1e-15)
    for a, b in zip(r.ci, entry["ci"], strict=True):
        assert (math.isinf(a) and a == b) or a == pytest.approx(b, rel=1e-9, abs=1e-15)
