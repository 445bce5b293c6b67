"""spotify-confidence and gbstats in their own supported environment: the anchors' fixture.

Runs in the reference environment (``data/reference/README.md``: Python 3.10, numpy 1.23,
pandas 1.5, spotify-confidence 4.1.0, gbstats 0.8.0), where both libraries' full APIs work.
The project's environment (numpy 2, pandas 3) can install them only with ``--no-deps``, and
there spotify-confidence's ``Experiment`` API and its group-sequential bound solver fail
(pandas 3 changed ``groupby().apply`` and integer ``Series[...]`` lookups). This script records

* ``sequential``: spotify-confidence's Lan-DeMets bounds (``sequential_bounds``, its power-family
  spending ``alpha * t^2``) for seeded sets of looks;
* ``ztest``: the full ``ZTest(...).difference(...)`` API with an absolute margin (given as
  ``margin / control mean``, spotify's relative NIM) and with a relative margin, one-sided;
* ``gbstats``: TwoSidedTTest results, to show the ``--no-deps`` install computes the same;

with the inputs, so ``tests/test_anchors_reference.py`` needs nothing but the fixture.

Usage: ``.venv-reference/bin/python data/reference/anchors_reference.py [--out PATH]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import warnings
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "data" / "anchors_reference.json"
sys.path.insert(0, str(ROOT / "tests"))

from anchor_cases import SEED, two_arm_cases  # noqa: E402  (the same case generator)

ALPHA = 0.05       # one-sided, as the project's settings
MARGIN, REL_MARGIN = 0.02, 0.05
N_SEQUENTIAL = 24


def sequential_cases() -> list[dict]:
    rng = np.random.default_rng([SEED, 20])
    cases = []
    for i in range(N_SEQUENTIAL):
        looks = int(rng.integers(2, 9))
        t = np.sort(rng.uniform(0.05, 1.0, size=looks))
        t[-1] = 1.0
        t = np.maximum.accumulate(np.round(t, 4))
        alpha = float((0.05, 0.025, 0.10)[i % 3])
        cases.append({"t": [float(x) for x in t], "alpha": alpha})
    return cases


def run_sequential(cases: list[dict]) -> list[dict]:
    from spotify_confidence.analysis.frequentist.confidence_computers.z_test_computer import (
        sequential_bounds,
    )

    out = []
    for case in cases:
        res = sequential_bounds(np.array(case["t"]), alpha=case["alpha"], sides=1)
        out.append(case | {"bounds": [float(b) for b in res.bounds]})
    return out


def run_ztest(kind: str) -> list[dict]:
    import spotify_confidence as sc

    out = []
    for case in two_arm_cases(kind):
        c, t = case.control, case.treatment
        df = pd.DataFrame({"arm": ["control", "treatment"], "sum": [c.sum, t.sum],
                           "sum_sq": [c.sum_sq, t.sum_sq], "n": [c.n, t.n]})
        entry = {"label": case.label, "kind": kind,
                 "control": [c.n, c.sum, c.sum_sq], "treatment": [t.n, t.sum, t.sum_sq]}
        if min(c.sum, t.sum) <= 0 or case.degenerate:
            entry["skipped"] = "an arm without variation or a zero control mean"
            out.append(entry)
            continue
        z = sc.ZTest(df, numerator_column="sum", numerator_sum_squares_column="sum_sq",
                     denominator_column="n", categorical_group_columns="arm",
                     interval_size=1 - ALPHA)
        for name, nim in (("absolute", MARGIN / c.mean), ("relative", REL_MARGIN)):
            res = z.difference(level_1="control", level_2="treatment", absolute=True,
                               non_inferiority_margins=(nim, "increase"), verbose=True)
            row = res.iloc[0]
            entry[name] = {"p_value": float(row["p-value"]), "difference": float(row["difference"]),
                           "ci_lower": float(row["ci_lower"]),
                           "null_hypothesis": float(row["null_hypothesis"])}
        out.append(entry)
    return out


def run_gbstats(kind: str) -> list[dict]:
    from gbstats.frequentist.tests import FrequentistConfig, TwoSidedTTest
    from gbstats.models.statistics import ProportionStatistic, SampleMeanStatistic

    def stat(a):
        if kind == "proportion":
            return ProportionStatistic(n=a.n, sum=a.sum)
        return SampleMeanStatistic(n=a.n, sum=a.sum, sum_squares=a.sum_sq)

    out = []
    for case in two_arm_cases(kind):
        test = TwoSidedTTest(stat(case.control), stat(case.treatment),
                             FrequentistConfig(alpha=2 * ALPHA, difference_type="absolute"))
        r = test.compute_result()
        out.append({"label": case.label, "kind": kind,
                    "control": [case.control.n, case.control.sum, case.control.sum_sq],
                    "treatment": [case.treatment.n, case.treatment.sum, case.treatment.sum_sq],
                    "expected": float(r.expected), "ci": [float(x) for x in r.ci],
                    "p_value": float(r.p_value), "error": r.error_message})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    doc = {
        "what": "spotify-confidence and gbstats in their supported environment; made by "
                "data/reference/anchors_reference.py",
        "versions": {"python": platform.python_version(), "numpy": version("numpy"),
                     "pandas": version("pandas"), "scipy": version("scipy"),
                     "statsmodels": version("statsmodels"),
                     "spotify-confidence": version("spotify-confidence"),
                     "gbstats": version("gbstats")},
        "settings": {"alpha_one_sided": ALPHA, "margin": MARGIN, "relative_margin": REL_MARGIN,
                     "seed": SEED},
        "sequential": run_sequential(sequential_cases()),
        "ztest": run_ztest("proportion") + run_ztest("mean"),
        "gbstats": run_gbstats("proportion") + run_gbstats("mean"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
