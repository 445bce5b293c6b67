"""Power and minimum detectable effects against statsmodels."""

from __future__ import annotations

import math

import numpy as np
import pytest
from statsmodels.stats.power import NormalIndPower

from whispers_lab.stats import power as pw


def test_mde_equals_statsmodels_normal_power():
    n1, n2, sigma = 4000, 1200, 0.45
    se = sigma * math.sqrt(1 / n1 + 1 / n2)
    es = NormalIndPower().solve_power(nobs1=n1, ratio=n2 / n1, alpha=0.05, power=0.8,
                                      alternative="larger")
    assert pw.mde(se, 0.05, 0.8) == pytest.approx(es * sigma,  # solver tolerance
                                                  rel=1e-4)


def test_days_needed():
    need = pw.information_needed(100.0, 0.04, 0.02)
    assert need == pytest.approx(400.0)
    assert pw.days_needed(100.0, 50.0, need) == 6
    assert pw.days_needed(500.0, 50.0, need) == 0.0
    assert pw.days_needed(100.0, 0.0, need) == math.inf
    assert pw.days_needed(100.0, None, need) is None
    assert pw.mde(math.nan, 0.05, 0.8) == math.inf


def test_power_table_columns():
    t = pw.power_table([pw.PowerRow("m", "difference", 10, 0.01, 0.025, 0.02, 100.0, 10.0, "x")])
    assert list(t.columns) == list(pw.POWER_COLUMNS)
    assert np.isfinite(t["days_needed"].iloc[0])
