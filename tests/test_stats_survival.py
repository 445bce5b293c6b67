"""Survival from aggregated counts against statsmodels on the expanded rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from statsmodels.duration.survfunc import SurvfuncRight, survdiff

from whispers_lab.stats.settings import StatSettings
from whispers_lab.stats.survival import km_curves, logrank_from_counts, survival_comparison


def _units(seed, n=3000, slow=1.0):
    rng = np.random.default_rng(seed)
    variant = rng.choice(["treatment", "control"], size=n)
    stratum = rng.integers(8, 12, size=n)
    p = np.where(variant == "treatment", 0.35 / slow, 0.35)
    gap = rng.geometric(p)
    follow = 14 - stratum
    event = (gap <= follow).astype(int)
    time = np.where(event == 1, gap, follow)
    return pd.DataFrame({"variant": variant, "stratum": stratum, "time": time, "event": event})


def _cells(units):
    return units.groupby(["variant", "stratum", "time", "event"]).size().rename("n").reset_index()


@pytest.mark.parametrize("slow", [1.0, 1.3])
def test_stratified_logrank_equals_statsmodels_survdiff(slow):
    u = _units(1, slow=slow)
    lr = logrank_from_counts(_cells(u))
    chi2, p = survdiff(u["time"].to_numpy(float), u["event"].to_numpy(),
                       (u["variant"] == "treatment").astype(int).to_numpy(),
                       strata=u["stratum"].to_numpy())
    assert lr.chi2 == pytest.approx(chi2, rel=1e-9)
    assert lr.p_value == pytest.approx(p, rel=1e-9)


def test_km_from_counts_equals_unit_level_km():
    u = _units(2)
    curves = km_curves(_cells(u), 0.9)
    for variant in ("treatment", "control"):
        part = u[u["variant"] == variant]
        sf = SurvfuncRight(part["time"].to_numpy(float), part["event"].to_numpy())
        got = curves[curves["variant"] == variant]
        np.testing.assert_allclose(got["survival"].to_numpy(), sf.surv_prob, rtol=1e-12)
        assert (got["ci_low"] <= got["survival"]).all() and (got["survival"] <= got["ci_high"]).all()


def test_slower_return_in_treatment_fails_and_thin_data_is_coded():
    s = StatSettings()
    r = survival_comparison(_cells(_units(3, n=6000, slow=1.6)), s, 12).test
    assert r.status == "fail" and r.estimate < 1
    none = survival_comparison(_cells(_units(3).query("variant == 'control'")), s, 12).test
    assert none.status == "no_data"
