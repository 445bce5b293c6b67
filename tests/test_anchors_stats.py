"""Our two-arm statistics against spotify-confidence 4.1.0 and gbstats 0.8.0, case by case.

Each test draws the seeded cases of :mod:`anchor_cases` (24 per quantity, sizes 50..10^6 per
arm, rates near 0, near 1 and in between) and compares the building blocks of
``whispers_lab.stats`` with the anchors' own functions on the same aggregates. Where the
definitions coincide the numbers must agree to 1e-6 (relative; 1e-12 absolute). Where our
definition differs on purpose the test asserts the documented difference: the anchor's number
is reproduced from ours by the anchor's definition, so the gap is the definition and nothing
else. The table of what agrees and what differs is docs/anchors.md.

spotify-confidence's ``Experiment`` classes fail on pandas 3 (their ``groupby().apply`` needs
the grouping columns pandas 3 no longer passes), so the tests call the computational
functions those classes call (``z_test_computer``, ``z_test_linreg_computer``,
``sample_ratio_test``), assembled the way ``ConfidenceComputer`` assembles a comparison
(control columns suffixed ``_1``, treatment ``_2``). The full API, in its own supported
environment, is exercised by ``data/reference/anchors_reference.py``; its fixture is checked in
tests/test_anchors_reference.py.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from whispers_lab.stats.cuped import cuped_difference
from whispers_lab.stats.noninferiority import (
    TwoArmEstimate,
    ni_p_value,
    stratified_difference,
    z_interval,
)
from whispers_lab.stats.settings import StatSettings
from whispers_lab.stats.srm import srm_test

from anchor_cases import (
    N_CASES,
    CupedCase,
    TwoArmCase,
    cuped_cases,
    require_anchor,
    srm_cases,
    two_arm_cases,
)

pytestmark = pytest.mark.anchors

gb_statistics = require_anchor("gbstats.models.statistics")
gb_tests = require_anchor("gbstats.frequentist.tests")
gb_utils = require_anchor("gbstats.utils")
sc = require_anchor("spotify_confidence.analysis.constants")
sc_z = require_anchor("spotify_confidence.analysis.frequentist.confidence_computers.z_test_computer")
sc_linreg = require_anchor(
    "spotify_confidence.analysis.frequentist.confidence_computers.z_test_linreg_computer")
sc_srm = require_anchor("spotify_confidence.analysis.frequentist.sample_ratio_test")

SETTINGS = StatSettings()
ALPHA = SETTINGS.alpha            # one-sided; every interval is the two-sided 1 - 2 alpha one
MARGIN = SETTINGS.margin          # absolute non-inferiority margin
REL_MARGIN = SETTINGS.relative_margin
Z = float(stats.norm.isf(ALPHA))
REL, ABS = 1e-6, 1e-12

PROPORTIONS = two_arm_cases("proportion")
MEANS = two_arm_cases("mean")
TWO_ARM = PROPORTIONS + MEANS
CUPED = cuped_cases()
SRM = srm_cases()


def close(a: float, b: float, rel: float = REL, abs_: float = ABS) -> bool:
    return math.isclose(float(a), float(b), rel_tol=rel, abs_tol=abs_)


def ours(case: TwoArmCase) -> TwoArmEstimate:
    return stratified_difference(case.strata(), binary=case.kind == "proportion")


# ---------------------------------------------------------------------------------------------
# the anchors, called on a case's aggregates

_SC_KW = {sc.NUMERATOR: "sum", sc.DENOMINATOR: "n", sc.NUMERATOR_SUM_OF_SQUARES: "sum_sq"}


def spotify_comparison(case: TwoArmCase, null: float = 0.0,
                       preference: str = "larger") -> pd.DataFrame:
    """The one-row comparison frame spotify-confidence's ZTest builds for control (level 1) vs
    treatment (level 2), with its standard error, difference, null and preference."""
    c, t = case.control, case.treatment
    arms = pd.DataFrame({"sum": [c.sum, t.sum], "sum_sq": [c.sum_sq, t.sum_sq],
                         "n": [c.n, t.n]}, index=["control", "treatment"])
    arms[sc.POINT_ESTIMATE] = sc_z.point_estimate(arms, **_SC_KW)
    arms[sc.ORIGINAL_POINT_ESTIMATE] = arms[sc.POINT_ESTIMATE]
    arms[sc.VARIANCE] = sc_z.variance(arms, **_SC_KW)
    row = {f"{col}{sc.SFX1}": [arms.loc["control", col]] for col in arms.columns}
    row |= {f"{col}{sc.SFX2}": [arms.loc["treatment", col]] for col in arms.columns}
    frame = pd.DataFrame(row)
    frame[sc.STD_ERR] = sc_z.std_err(frame, **_SC_KW)
    frame[sc.DIFFERENCE] = frame[sc.POINT_ESTIMATE + sc.SFX2] - frame[sc.POINT_ESTIMATE + sc.SFX1]
    frame[sc.NULL_HYPOTHESIS] = null
    frame[sc.PREFERENCE_TEST] = preference
    frame[sc.ALPHA] = 2 * ALPHA
    return frame


def spotify_reads_as_binary(case: TwoArmCase) -> bool:
    """A mean metric whose values happen to be all 0/1 in both arms (z_test_computer.variance)."""
    return case.kind == "mean" and all(a.sum_sq == a.sum for a in (case.treatment, case.control))


def spotify_p(case: TwoArmCase, null: float) -> float:
    return float(np.asarray(sc_z.p_value(spotify_comparison(case, null, "larger"), **_SC_KW))[0])


def spotify_ci(case: TwoArmCase) -> tuple[float, float]:
    frame = spotify_comparison(case, 0.0, sc.TWO_SIDED)
    lo, hi = sc_z.ci(frame, sc.ALPHA, **_SC_KW)
    return float(lo.iloc[0]), float(hi.iloc[0])


def gb_stat(case: TwoArmCase, arm: str):
    a = getattr(case, arm)
    if case.kind == "proportion":
        return gb_statistics.ProportionStatistic(n=a.n, sum=a.sum)
    return gb_statistics.SampleMeanStatistic(n=a.n, sum=a.sum, sum_squares=a.sum_sq)


def gb_refuses(case: TwoArmCase) -> bool:
    """gbstats returns its coded default (no interval, p = 1, an error message) when the control
    mean is 0 (it is built for relative effects) or either arm has no variance; we still
    compare when the other arm carries variance."""
    return case.control.sum == 0 or any(a.sum_sq - a.sum * a.sum / a.n <= 0
                                        for a in (case.treatment, case.control))


def gb_test(case: TwoArmCase, cls, **config):
    cfg = gb_tests.FrequentistConfig(alpha=2 * ALPHA, **config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(gb_stat(case, "control"), gb_stat(case, "treatment"), cfg)


# ---------------------------------------------------------------------------------------------
# the cases themselves


def test_cases_cover_the_ranges_the_issue_asks_for():
    for cases in (PROPORTIONS, MEANS, CUPED):
        assert len(cases) == N_CASES >= 20
        sizes = [a.n for c in cases for a in (c.treatment, c.control)]
        assert min(sizes) == 50 and max(sizes) == 1_000_000
        assert {c.regime for c in cases} == {"near_0", "near_1", "middle"}
    rates = [c.control.mean for c in PROPORTIONS]
    assert min(rates) < 0.02 and max(rates) > 0.98
    assert sum(not c.degenerate for c in PROPORTIONS) >= 20
    assert len(SRM) >= 20


# ---------------------------------------------------------------------------------------------
# two-proportion and two-mean: difference, standard error, interval


@pytest.mark.parametrize("case", TWO_ARM, ids=lambda c: c.label)
def test_difference_and_standard_error_equal_both_anchors(case: TwoArmCase):
    est = ours(case)
    frame = spotify_comparison(case)
    assert close(est.diff, frame[sc.DIFFERENCE].iloc[0])
    if spotify_reads_as_binary(case):
        # documented difference: spotify-confidence decides "binary" from the data (sum of
        # squares == sum in every arm) and then uses p(1 - p), divisor n; we decide by the
        # metric, and a mean metric keeps the unbiased (n - 1) variance
        t, c = case.treatment, case.control
        ml = est.se_t ** 2 * (t.n - 1) / t.n + est.se_c ** 2 * (c.n - 1) / c.n
        assert close(frame[sc.STD_ERR].iloc[0] ** 2, ml)
    else:
        assert close(est.se, frame[sc.STD_ERR].iloc[0])
    test = gb_test(case, gb_tests.TwoSidedTTest, difference_type="absolute")
    assert close(est.diff, test.point_estimate)
    assert close(est.se ** 2, test.variance)


@pytest.mark.parametrize("case", TWO_ARM, ids=lambda c: c.label)
def test_interval_equals_spotify_and_differs_from_gbstats_by_the_t_quantile(case: TwoArmCase):
    est = ours(case)
    iv = z_interval(est.diff, est.se, Z)
    if case.degenerate and not est.se > 0:
        # both arms constant: our estimate is not ok, gbstats returns its coded default
        assert not est.ok
        result = gb_test(case, gb_tests.TwoSidedTTest,
                         difference_type="absolute").compute_result()
        assert result.error_message is not None
        return
    if not spotify_reads_as_binary(case):  # else see the standard-error test
        lo, hi = spotify_ci(case)
        assert close(iv.low, lo) and close(iv.high, hi)
    # gbstats: the same estimate and standard error with a Welch t quantile (documented
    # difference: we use the normal quantile, as spotify-confidence does)
    test = gb_test(case, gb_tests.TwoSidedTTest, difference_type="absolute")
    result = test.compute_result()
    assert (result.error_message is not None) == gb_refuses(case)
    if gb_refuses(case):
        return
    t_q = float(stats.t.ppf(1 - ALPHA, test.dof))
    assert close(result.ci[0], est.diff - t_q * est.se)
    assert close(result.ci[1], est.diff + t_q * est.se)
    assert t_q > Z and (result.ci[1] - result.ci[0]) / (iv.high - iv.low) == pytest.approx(t_q / Z)


# ---------------------------------------------------------------------------------------------
# p-values: superiority and non-inferiority with an absolute margin


@pytest.mark.parametrize("case", TWO_ARM, ids=lambda c: c.label)
@pytest.mark.parametrize("bound", [0.0, -MARGIN], ids=["superiority", "ni-absolute"])
def test_one_sided_p_value_equals_spotify_and_gbstats_up_to_the_reference_distribution(
        case: TwoArmCase, bound: float):
    est = ours(case)
    if not est.se > 0:
        assert math.isnan(ni_p_value(est.diff, est.se, bound))
        return
    p = ni_p_value(est.diff, est.se, bound)
    if not spotify_reads_as_binary(case):  # else see the standard-error test
        assert close(p, spotify_p(case, bound))
    test = gb_test(case, gb_tests.OneSidedTreatmentGreaterTTest, difference_type="absolute",
                   test_value=bound)
    assert (test.compute_result().error_message is not None) == gb_refuses(case)
    if gb_refuses(case):
        return
    z = (est.diff - bound) / est.se
    assert close(test.critical_value, z)  # the same test statistic ...
    assert close(test.p_value, stats.t.sf(z, test.dof))  # ... referred to Welch's t
    assert close(p, stats.norm.sf(z))


# ---------------------------------------------------------------------------------------------
# non-inferiority with a relative margin: three definitions, related exactly


@pytest.mark.parametrize("case", TWO_ARM, ids=lambda c: c.label)
def test_relative_margin_definitions(case: TwoArmCase):
    """Ours: log(m_t / m_c) against log(1 - r), delta-method standard error with both arms'
    uncertainty. spotify-confidence: the margin becomes the absolute null ``-r * m_c`` at the
    observed control mean (nims_and_mdes.py, preference "increase"), then the z-test of the
    difference. gbstats: ``m_t / m_c - 1`` against ``-r``, delta-method standard error, Welch
    t. The delta-method standard errors are the same quantity on two scales."""
    est = ours(case)
    if not (est.se > 0 and est.mean_t > 0 and est.mean_c > 0):
        return
    ratio = est.mean_t / est.mean_c
    p_ours = ni_p_value(est.log_ratio, est.se_log_ratio, math.log(1 - REL_MARGIN))
    p_spotify = spotify_p(case, -REL_MARGIN * case.control.mean)
    if not spotify_reads_as_binary(case):
        assert close(p_spotify, ni_p_value(est.diff, est.se, -REL_MARGIN * est.mean_c))
    test = gb_test(case, gb_tests.OneSidedTreatmentGreaterTTest, difference_type="relative",
                   test_value=-REL_MARGIN)
    assert close(test.point_estimate, ratio - 1)
    assert close(math.sqrt(test.variance), ratio * est.se_log_ratio)
    z_gb = (ratio - 1 + REL_MARGIN) / (ratio * est.se_log_ratio)
    assert close(test.p_value, stats.t.sf(z_gb, test.dof))
    # the three answer the same question: far from the boundary they agree on the verdict
    z_ours = (est.log_ratio - math.log(1 - REL_MARGIN)) / est.se_log_ratio
    if abs(z_ours) > 3:
        assert (p_ours < ALPHA) == (p_spotify < ALPHA) == (test.p_value < ALPHA)


# ---------------------------------------------------------------------------------------------
# CUPED


def gb_cuped(case: CupedCase, theta: float | None):
    def stat(a):
        if case.binary:
            post = gb_statistics.ProportionStatistic(n=a.n, sum=a.sum_y)
        else:
            post = gb_statistics.SampleMeanStatistic(n=a.n, sum=a.sum_y, sum_squares=a.sum_y2)
        pre = gb_statistics.SampleMeanStatistic(n=a.n, sum=a.sum_x, sum_squares=a.sum_x2)
        return gb_statistics.RegressionAdjustedStatistic(
            n=a.n, post_statistic=post, pre_statistic=pre, post_pre_sum_of_products=a.sum_xy,
            theta=0.0)

    cfg = gb_tests.FrequentistConfig(alpha=2 * ALPHA, difference_type="absolute")
    test = gb_tests.TwoSidedTTest(stat(case.control), stat(case.treatment), cfg)
    own_theta = test.stat_b.theta
    if theta is not None:
        test.stat_a.theta = test.stat_b.theta = theta
    return test, own_theta


_LR_KW = {sc.NUMERATOR: "sum_y", sc.DENOMINATOR: "n", sc.NUMERATOR_SUM_OF_SQUARES: "sum_y2",
          sc.FEATURE: "sum_x", sc.FEATURE_SUMSQ: "sum_x2", sc.FEATURE_CROSS: "sum_xy"}


def spotify_cuped(case: CupedCase, theta: float | None = None) -> dict[str, float]:
    """spotify-confidence's ZTestLinreg computations on the two arms: its slope (fitted on both
    arms pooled), the adjusted point estimates and variances. With ``theta`` the variance is
    evaluated at that slope instead of its own."""
    arms = pd.DataFrame([vars(case.control), vars(case.treatment)], index=["control", "treatment"])
    arms = arms.astype(float)
    pe = sc_linreg.point_estimate(arms, **_LR_KW)
    slope = float(arms[sc.REGRESSION_PARAM].iloc[0])
    if theta is not None:
        arms[sc.REGRESSION_PARAM] = theta
        x_bar = arms["sum_x"].sum() / arms["sum_n"].sum() if "sum_n" in arms else \
            arms["sum_x"].sum() / arms["n"].sum()
        pe = arms["sum_y"] / arms["n"] - theta * (arms["sum_x"] / arms["n"] - x_bar)
    arms[sc.POINT_ESTIMATE] = pe
    arms[sc.ORIGINAL_POINT_ESTIMATE] = arms["sum_y"] / arms["n"]
    var = sc_linreg.variance(arms, **_LR_KW)
    return {"theta": slope, "diff": float(pe["treatment"] - pe["control"]),
            "var_t": float(var["treatment"]), "var_c": float(var["control"])}


@pytest.mark.parametrize("case", CUPED, ids=lambda c: c.label)
def test_cuped_equals_gbstats_given_the_same_slope(case: CupedCase):
    c = cuped_difference(case.strata())
    assert c.ok
    # our slope is the within-arm (ANCOVA) slope; both anchors fit y on x over both arms pooled
    assert close(c.theta, case.ancova_slope, rel=1e-8)
    test, gb_theta = gb_cuped(case, c.theta)
    assert close(gb_theta, case.total_slope, rel=1e-8)
    assert close(test.point_estimate, c.adjusted.diff)
    if case.binary:
        # documented difference: for a 0/1 outcome gbstats' ProportionStatistic variance is
        # p(1 - p) (divisor n) while its covariance terms use n - 1; ours uses n - 1 throughout.
        # Per arm the gap is exactly ss_yy / (n^2 (n - 1)).
        gap = sum((a.sum_y2 - a.sum_y ** 2 / a.n) / (a.n ** 2 * (a.n - 1))
                  for a in (case.treatment, case.control))
        assert close(test.variance, c.adjusted.se ** 2 - gap)
    else:
        assert close(test.variance, c.adjusted.se ** 2)
    # with its own slope gbstats moves the estimate by (theta_ours - theta_gb) * (x_t - x_c)
    own, _ = gb_cuped(case, None)
    dx = case.treatment.sum_x / case.treatment.n - case.control.sum_x / case.control.n
    assert close(own.point_estimate - c.adjusted.diff, (c.theta - gb_theta) * dx, rel=1e-5,
                 abs_=1e-12)


@pytest.mark.parametrize("case", CUPED, ids=lambda c: c.label)
def test_cuped_against_spotify_linreg(case: CupedCase):
    """spotify-confidence fits the same pooled slope as gbstats; its variances use divisor n
    where ours (and gbstats') use n - 1 (for a binary outcome all of its moments are the
    maximum-likelihood ones)."""
    c = cuped_difference(case.strata())
    sp = spotify_cuped(case)
    _, gb_theta = gb_cuped(case, None)
    assert close(sp["theta"], gb_theta, rel=1e-8)
    at_ours = spotify_cuped(case, c.theta)
    assert close(at_ours["diff"], c.adjusted.diff)
    nt, nc = case.treatment.n, case.control.n
    if case.binary:
        # every moment with divisor n: our per-arm variance times (n - 1) / n
        assert close(at_ours["var_t"] / nt, c.adjusted.se_t ** 2 * (nt - 1) / nt)
        assert close(at_ours["var_c"] / nc, c.adjusted.se_c ** 2 * (nc - 1) / nc)
    else:
        # outcome variance with n - 1, covariate terms with n: within 1/n of ours
        assert at_ours["var_t"] / nt == pytest.approx(c.adjusted.se_t ** 2, rel=5.0 / nt)


# ---------------------------------------------------------------------------------------------
# sample-ratio mismatch


def _chi2(p: float) -> float:
    return float(stats.chi2.isf(p, 1))


@pytest.mark.parametrize("case", SRM, ids=lambda c: c.label)
def test_srm_equals_pearson_of_both_anchors_where_the_share_is_constant(case):
    res = srm_test(case.by_day, SETTINGS)
    d = case.by_day
    # per day: our Pearson p-value equals both anchors' on that day's two cells
    for entry, (_, row) in zip(res.details["per_day"], d.iterrows(), strict=True):
        s = float(row["share_t"])
        p_gb = gb_utils.check_srm([int(row["n_c"]), int(row["n_t"])], [1 - s, s])
        p_sc, _ = sc_srm.sample_ratio_test(
            pd.DataFrame({"arm": ["control", "treatment"],
                          "n": [int(row["n_c"]), int(row["n_t"])]}),
            "arm", "n", {"control": 1 - s, "treatment": s})
        assert close(entry["p_value"], p_gb, abs_=1e-12)
        assert close(entry["p_value"], p_sc, abs_=1e-12)
    # pooled: Pearson on the summed counts with the expected pooled share
    n = d["n_t"] + d["n_c"]
    expected = float((n * d["share_t"]).sum() / n.sum())
    p_pooled = gb_utils.check_srm([int(d["n_c"].sum()), int(d["n_t"].sum())],
                                  [1 - expected, expected])
    if case.constant_share:
        assert close(res.p_value, p_pooled, abs_=1e-12)
    else:
        # documented difference: the exact binomial variance sum_d n_d s_d (1 - s_d) is smaller
        # than Pearson's N s(1 - s) when shares change, by exactly that factor
        v_exact = float((n * d["share_t"] * (1 - d["share_t"])).sum())
        v_pearson = float(n.sum() * expected * (1 - expected))
        assert v_exact < v_pearson
        if res.p_value > 1e-300 and p_pooled > 1e-300:
            assert close(_chi2(res.p_value) * v_exact, _chi2(p_pooled) * v_pearson, rel=1e-6)
        # the omnibus in the details is the sum of the per-day Pearson statistics
        per_day = [_chi2(e["p_value"]) for e in res.details["per_day"] if e["p_value"] > 1e-300]
        if len(per_day) == len(d):
            assert close(res.details["omnibus_chi2"], sum(per_day), rel=1e-6)
