"""sums_by: the numpy grouping the Monte Carlo twins and small frames use."""

from __future__ import annotations

import numpy as np
import pandas as pd

from whispers_lab.stats.sufficient import sums_by


def test_sums_by_equals_a_pandas_groupby():
    rng = np.random.default_rng(0)
    key = rng.integers(0, 7, 500)
    y, x = rng.random(500), rng.poisson(3, 500).astype(float)
    uniq, t = sums_by(key, y=y, xy=x * y)
    ref = pd.DataFrame({"k": key, "y": y, "xy": x * y}).groupby("k").agg(
        n=("y", "size"), y=("y", "sum"), xy=("xy", "sum"))
    np.testing.assert_array_equal(uniq, ref.index.to_numpy())
    np.testing.assert_allclose(t["n"], ref["n"])
    np.testing.assert_allclose(t["y"], ref["y"])
    np.testing.assert_allclose(t["xy"], ref["xy"])
