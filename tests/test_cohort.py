"""Tests of the cohort assignment: hash vectors, the plan's rules, the CLI, and properties."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from whispers_lab import cli
from whispers_lab.cohort import (
    EXCLUDED_REASONS,
    REASONS,
    TREATMENT_REASONS,
    BetaSelection,
    CohortError,
    assign,
    bucket_of,
    bucket_of_one,
    expected_split,
    first_enabled_day,
    fmix32,
    fnv1a32,
    hash_of,
    holdout_start,
    select_beta,
    served_mismatch,
    stage_threshold,
    threshold_on,
)
from whispers_lab.commands.cohort import read_users
from whispers_lab.errors import PlanError, WhispersLabError
from whispers_lab.plan import load_plan

ROOT = Path(__file__).resolve().parent.parent
VECTORS = json.loads((ROOT / "tests" / "data" / "cohort_hash_vectors.json").read_text("utf-8"))
PLAN = load_plan()
SALT = PLAN.assignment.salt
B = PLAN.assignment.buckets
DAYS = range(0, PLAN.last_day + 4)  # past the last day too: the last phase stays in force


# -- helpers ------------------------------------------------------------------------------------


def make_users(n: int, seed: int = 0, internal_share: float = 0.01) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "user_id": [f"user_{i:07d}" for i in rng.permutation(n)],
        "signup_at": pd.Timestamp("2026-01-01") + pd.to_timedelta(rng.integers(0, 300, n), "D"),
        "is_internal": rng.random(n) < internal_share,
        "micro_memory_count": rng.poisson(5, n).astype(np.int64),
        "engagement_score": rng.random(n),
    })


def ids_in_buckets(lo: int, hi: int, count: int, prefix: str = "h") -> list[str]:
    """``count`` ids whose bucket lies in ``[lo, hi)`` under the plan's salt."""
    cand = np.array([f"{prefix}{i}" for i in range(200_000)], dtype=object)
    b = bucket_of(cand, SALT, B)
    chosen = cand[(b >= lo) & (b < hi)][:count]
    assert len(chosen) == count
    return [str(x) for x in chosen]


def users_from(ids, internal=False, memories=20, engagement=0.5) -> pd.DataFrame:
    n = len(ids)
    return pd.DataFrame({
        "user_id": pd.array(list(ids), dtype="str"),
        "is_internal": np.broadcast_to(np.asarray(internal, dtype=bool), n).copy(),
        "micro_memory_count": np.broadcast_to(np.asarray(memories, dtype=np.int64), n).copy(),
        "engagement_score": np.broadcast_to(np.asarray(engagement, dtype=np.float64), n).copy(),
    })


def plan_with_stages(percentages: list[float], holdout_share: float = 0.05):
    """The packaged plan with other percentage-stage values (same days)."""
    stages = [p for p in PLAN.phases if p.audience == "percentage"]
    assert len(stages) == len(percentages)
    repl = {ph.id: dataclasses.replace(ph, percentage=pct) for ph, pct in zip(stages, percentages, strict=True)}
    phases = tuple(repl.get(ph.id, ph) for ph in PLAN.phases)
    return dataclasses.replace(PLAN, phases=phases, assignment=dataclasses.replace(
        PLAN.assignment, holdout_share=holdout_share))


# -- the hash -------------------------------------------------------------------------------------


def test_published_fnv1a32_and_fmix32_values():
    # FNV reference vectors and MurmurHash3_x86_32("", seed) == fmix32(seed).
    assert fnv1a32(b"") == 0x811C9DC5
    assert fnv1a32(b"a") == 0xE40C292C
    assert fnv1a32(b"foobar") == 0xBF9CF968
    assert fmix32(0) == 0
    assert fmix32(1) == 0x514E28B7
    assert fmix32(0xFFFFFFFF) == 0x81F16F39
    for item in VECTORS["published"]["fnv1a32"]:
        assert fnv1a32(item["input"].encode()) == item["value"]
    for item in VECTORS["published"]["fmix32"]:
        assert fmix32(item["input"]) == item["value"]


def test_vectors_scalar_and_vectorised_agree_with_file():
    vs = VECTORS["vectors"]
    assert any(not v["user_id"].isascii() for v in vs)
    assert any(v["user_id"] == "" for v in vs)
    assert any(len(v["user_id"].encode()) > 255 for v in vs)
    for v in vs:
        key = (v["salt"] + ":" + v["user_id"]).encode("utf-8")
        assert key.hex() == v["key_utf8_hex"]
        assert fnv1a32(key) == v["fnv1a32"]
        assert fmix32(v["fnv1a32"]) == v["fmix32"]
        assert v["fmix32"] % v["buckets"] == v["bucket"]
        assert bucket_of_one(v["user_id"], v["salt"], v["buckets"]) == v["bucket"]
    for salt in {v["salt"] for v in vs}:
        sub = [v for v in vs if v["salt"] == salt]
        ids = [v["user_id"] for v in sub]
        expected = np.array([v["bucket"] for v in sub])
        # Every input flavour: list, numpy object/unicode, pandas str Series, Arrow string/large/chunked.
        inputs = [ids, np.array(ids, dtype=object), pd.Series(ids, dtype="str"),
                  pa.array(ids, pa.string()), pa.array(ids, pa.large_string()),
                  pa.chunked_array([ids[:5], ids[5:]]), pa.array(ids).dictionary_encode()]
        for inp in inputs:
            got = bucket_of(inp, salt, 10000)
            assert got.dtype == np.int32
            np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(hash_of(ids, salt), [v["fmix32"] for v in sub])


def test_vectorised_handles_sliced_and_fixed_width_arrays():
    ids = [f"u{i:05d}" for i in range(1000)]  # fixed width path
    ref = np.array([bucket_of_one(i, SALT) for i in ids])
    np.testing.assert_array_equal(bucket_of(ids, SALT), ref)
    arr = pa.array(["zz"] * 3 + ids + ["é" * 40])
    np.testing.assert_array_equal(bucket_of(arr.slice(3, 1000), SALT), ref)
    assert len(bucket_of([], SALT)) == 0
    chunked = pa.chunked_array([pa.array([], pa.string()), pa.array(ids[:3]), pa.array([], pa.string())])
    np.testing.assert_array_equal(bucket_of(chunked, SALT), ref[:3])
    assert bucket_of([""] * 3, SALT).tolist() == [bucket_of_one("", SALT)] * 3


def test_typescript_in_docs_reproduces_the_vectors(tmp_path):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    text = (ROOT / "docs" / "cohort.md").read_text("utf-8")
    ts = re.search(r"```ts\n(.*?)```", text, re.S).group(1)
    js = ts.replace("export ", "")
    js = re.sub(r":\s*(number|string|Uint8Array)\b", "", js)  # strip the type annotations
    js += """
const fs = require("fs");
const doc = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const out = doc.vectors.map(v => {
  const bytes = new TextEncoder().encode(v.salt + ":" + v.user_id);
  return [fnv1a32(bytes), fmix32(fnv1a32(bytes)), bucketOf(v.user_id, v.salt, v.buckets)];
});
const pub = doc.published.fnv1a32.map(p => fnv1a32(new TextEncoder().encode(p.input)));
console.log(JSON.stringify({out, pub, dflt: bucketOf("user_000001", "whispers-canary-2026")}));
"""
    script = tmp_path / "bucket.js"
    script.write_text(js, "utf-8")
    vec_file = ROOT / "tests" / "data" / "cohort_hash_vectors.json"
    res = subprocess.run([node, str(script), str(vec_file)], capture_output=True, text=True,
                         timeout=60, check=True)
    got = json.loads(res.stdout)
    assert got["out"] == [[v["fnv1a32"], v["fmix32"], v["bucket"]] for v in VECTORS["vectors"]]
    assert got["pub"] == [p["value"] for p in VECTORS["published"]["fnv1a32"]]
    assert got["dflt"] == bucket_of_one("user_000001", SALT, 10000)


def test_bad_ids_raise_cohort_error():
    with pytest.raises(CohortError, match="missing"):
        bucket_of(pa.array(["a", None]), SALT)
    with pytest.raises(CohortError, match="strings"):
        bucket_of(pa.array([1, 2]), SALT)
    with pytest.raises(CohortError):
        bucket_of(["\ud800"], SALT)  # lone surrogate: not valid Unicode
    with pytest.raises(ValueError, match="buckets"):
        bucket_of(["a"], SALT, 0)


@pytest.mark.parametrize("kind", ["random", "sequential"])
def test_split_within_binomial_tolerance_at_every_stage(kind):
    n = 1_000_000
    if kind == "random":
        rng = np.random.default_rng(7)
        raw = rng.integers(0, 2**63 - 1, n, dtype=np.int64)
        ids = pa.compute.cast(pa.array(raw), pa.string())
    else:
        ids = pa.compute.binary_join_element_wise(
            "user_", pa.compute.utf8_lpad(pa.compute.cast(pa.array(np.arange(n)), pa.string()), 7, "0"), "")
    b = bucket_of(ids, SALT, B)
    # Family-wise 1e-6 two-sided tolerance per check: a false alarm is practically impossible,
    # a biased hash (e.g. FNV-1a without the finaliser on sequential ids) is caught.
    alpha = 1e-6
    for _, pct in PLAN.percentage_stages():
        thr = stage_threshold(pct, PLAN)
        p = thr / B
        lo, hi = stats.binom.interval(1 - alpha, n, p)
        assert lo <= int((b < thr).sum()) <= hi, (kind, pct)
    p = PLAN.assignment.holdout_buckets / B
    lo, hi = stats.binom.interval(1 - alpha, n, p)
    assert lo <= int((b >= holdout_start(PLAN)).sum()) <= hi
    # Buckets uniform overall (chi-square on 100 groups of 100 buckets).
    counts = np.bincount(b // 100, minlength=100)
    assert stats.chisquare(counts).pvalue > alpha


def test_finaliser_breaks_fnv_low_bit_structure():
    """In plain FNV-1a the low k hash bits depend only on the low k bits of each byte (xor and
    multiply carry upwards only), so ids differing in bit 4 of one byte would share
    ``bucket mod 16``. With the finaliser they share it about 1 time in 16."""
    n = 20_000
    a = [f"user_{i}a" for i in range(n)]
    q = [f"user_{i}q" for i in range(n)]  # 'a' = 0x61, 'q' = 0x71: same low nibble
    raw_a = np.array([fnv1a32(f"{SALT}:{u}".encode()) for u in a[:200]], dtype=np.uint64)
    raw_q = np.array([fnv1a32(f"{SALT}:{u}".encode()) for u in q[:200]], dtype=np.uint64)
    assert ((raw_a % 16) == (raw_q % 16)).all()  # the weakness being fixed
    same = (bucket_of(a, SALT, B) % 16 == bucket_of(q, SALT, B) % 16).mean()
    lo, hi = stats.binom.interval(1 - 1e-6, n, 1 / 16)
    assert lo / n <= same <= hi / n


# -- thresholds -----------------------------------------------------------------------------------------


def test_thresholds_follow_the_plan():
    assert holdout_start(PLAN) == 9500
    assert [threshold_on(d, PLAN) for d in (0, 2, 3, 7, 8, 9, 10, 12, 14, 30)] == \
        [0, 0, 0, 0, 950, 950, 2375, 4750, 9500, 9500]
    with pytest.raises(PlanError):
        threshold_on(-1, PLAN)


# -- assignment rules -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def population() -> pd.DataFrame:
    return make_users(50_000, seed=3)


def test_assign_frame_shape_and_consistency(population):
    out = assign(population, 10, PLAN)
    assert list(out.columns) == ["user_id", "bucket", "variant", "reason", "first_enabled_day"]
    assert len(out) == len(population)
    assert out["user_id"].tolist() == population["user_id"].tolist()
    assert out["bucket"].dtype == np.int32
    np.testing.assert_array_equal(out["bucket"], bucket_of(population["user_id"], SALT, B))
    assert set(out["reason"].astype(str)) <= set(REASONS)
    treated = out["variant"].astype(str) == "treatment"
    assert (treated == out["reason"].astype(str).isin(TREATMENT_REASONS)).all()
    assert (treated == (out["first_enabled_day"] <= 10)).all()
    np.testing.assert_array_equal(out["first_enabled_day"], first_enabled_day(population, PLAN))


def test_rule_matches_independent_formula_every_day(population):
    """Variant from the plan's words, computed independently of the implementation."""
    b = bucket_of(population["user_id"], SALT, B)
    internal = population["is_internal"].to_numpy()
    beta_ids = set(select_beta(population, PLAN).user_ids)
    is_beta = population["user_id"].isin(beta_ids).to_numpy()
    for day in DAYS:
        pct = PLAN.percentage_on(day)
        thr = round(pct / 100 * (B - PLAN.assignment.holdout_buckets))
        expected = internal | (is_beta & (day >= 3)) | (~internal & (b < 9500) & (b < thr))
        got = assign(population, day, PLAN)["variant"].astype(str).to_numpy() == "treatment"
        np.testing.assert_array_equal(got, expected, err_msg=f"day {day}")


def test_monotone_over_all_days(population):
    prev = np.zeros(len(population), dtype=bool)
    for day in DAYS:
        now = assign(population, day, PLAN)["variant"].astype(str).to_numpy() == "treatment"
        assert not (prev & ~now).any(), f"a user lost treatment on day {day}"
        prev = now


def test_holdout_never_enabled(population):
    ext_holdout = ids_in_buckets(9500, B, 50)
    # Holdout users with every beta qualification, and the highest engagement of all.
    frame = pd.concat([population, users_from(ext_holdout, memories=1000, engagement=1.0)],
                      ignore_index=True)
    for day in DAYS:
        out = assign(frame, day, PLAN)
        hold = out[(out["bucket"] >= 9500) & ~frame["is_internal"].to_numpy()]
        assert len(hold) > 0
        assert (hold["variant"].astype(str) == "control").all()
        assert (hold["reason"].astype(str) == "holdout").all()
    assert not set(ext_holdout) & set(select_beta(frame, PLAN).user_ids)
    fed = first_enabled_day(frame, PLAN)
    assert np.isinf(fed[frame["user_id"].isin(ext_holdout).to_numpy()]).all()


def test_internal_users_treated_from_day_zero_even_in_holdout_buckets():
    ids = ids_in_buckets(9500, B, 5, "i") + ids_in_buckets(0, 100, 5, "j")
    frame = users_from(ids, internal=True)
    for day in DAYS:
        out = assign(frame, day, PLAN)
        assert (out["variant"].astype(str) == "treatment").all()
        assert (out["reason"].astype(str) == "internal").all()
    assert (first_enabled_day(frame, PLAN) == 0).all()
    assert "internal" in EXCLUDED_REASONS


def test_first_enabled_day_by_stage():
    groups = {8.0: (0, 950), 10.0: (950, 2375), 12.0: (2375, 4750), 14.0: (4750, 9500)}
    ids, expected = [], []
    for day, (lo, hi) in groups.items():
        got = ids_in_buckets(lo, hi, 20, f"s{int(day)}_")
        ids += got
        expected += [day] * len(got)
    edge = ids_in_buckets(949, 950, 1, "e") + ids_in_buckets(950, 951, 1, "f")
    frame = users_from(ids + edge, memories=0)
    fed = first_enabled_day(frame, PLAN)
    np.testing.assert_array_equal(fed, [*expected, 8.0, 10.0])


# -- beta ----------------------------------------------------------------------------------------------------


def test_beta_rule_most_engaged_strictly_more_than_ten_memories():
    # 15 qualifying users with distinct engagement, plus decoys that must never be picked.
    good = ids_in_buckets(0, 9500, 15, "g")
    exactly_ten = ids_in_buckets(0, 9500, 3, "t")
    internal = ids_in_buckets(0, 9500, 3, "n")
    holdout = ids_in_buckets(9500, B, 3, "o")
    frame = pd.concat([
        users_from(good, memories=11, engagement=np.linspace(0.1, 0.8, 15)),
        users_from(exactly_ten, memories=10, engagement=0.99),
        users_from(internal, internal=True, memories=50, engagement=0.99),
        users_from(holdout, memories=50, engagement=0.99),
    ], ignore_index=True)
    sel = select_beta(frame, PLAN)
    assert isinstance(sel, BetaSelection)
    assert 5 <= sel.count <= 10 and sel.count == PLAN.beta.max_users
    assert not sel.shortfall
    assert sel.qualified == 15
    assert list(sel.user_ids) == good[::-1][:10]  # most engaged first
    # Beta users enabled from day 3 on, and stay enabled.
    for day in DAYS:
        out = assign(frame, day, PLAN).set_index("user_id")
        beta_rows = out.loc[list(sel.user_ids)]
        if day < PLAN.beta_first_day():
            assert (beta_rows["variant"].astype(str) == "control").all()
            assert (beta_rows["reason"].astype(str) == "not_eligible").all()
        else:
            assert (beta_rows["variant"].astype(str) == "treatment").all()
            assert (beta_rows["reason"].astype(str) == "beta").all()
    fed = pd.Series(first_enabled_day(frame, PLAN), index=frame["user_id"])
    assert (fed[list(sel.user_ids)] == 3).all()


def test_beta_ties_broken_by_bucket_then_user_id():
    ids = ids_in_buckets(0, 9500, 30, "tie")
    frame = users_from(ids, memories=20, engagement=0.7)
    sel = select_beta(frame, PLAN)
    b = dict(zip(ids, bucket_of(ids, SALT, B).tolist(), strict=True))
    expected = sorted(ids, key=lambda u: (b[u], u))[:10]
    assert list(sel.user_ids) == expected
    # Same bucket: user_id decides.
    same = ids_in_buckets(1234, 1235, 2, "same")
    frame2 = users_from(same, memories=20, engagement=0.7)
    assert list(select_beta(frame2, PLAN).user_ids) == sorted(same)


def test_beta_shortfall_is_reported_not_raised():
    few = ids_in_buckets(0, 9500, 3, "few")
    others = ids_in_buckets(0, 9500, 20, "oth")
    frame = pd.concat([users_from(few, memories=12), users_from(others, memories=3)],
                      ignore_index=True)
    sel = select_beta(frame, PLAN)
    assert sel.shortfall and sel.count == 3 and set(sel.user_ids) == set(few)
    assert "shortfall" in sel.sentence.lower()
    out = assign(frame, 5, PLAN)
    assert out.attrs["beta"].shortfall
    assert (out.set_index("user_id").loc[few, "reason"].astype(str) == "beta").all()
    empty = select_beta(users_from(others, memories=3), PLAN)
    assert empty.shortfall and empty.count == 0


def test_beta_selection_passed_for_a_subset(population):
    sel = select_beta(population, PLAN)
    subset = population.iloc[::7].reset_index(drop=True)
    full = assign(population, 5, PLAN).set_index("user_id")
    part = assign(subset, 5, PLAN, beta=sel).set_index("user_id")
    pd.testing.assert_series_equal(part["reason"].astype(str),
                                   full.loc[part.index, "reason"].astype(str))
    bogus = dataclasses.replace(sel, user_ids=(*sel.user_ids, *ids_in_buckets(9500, B, 1, "x")))
    frame = pd.concat([population, users_from(bogus.user_ids[-1:])], ignore_index=True)
    with pytest.raises(CohortError, match="holdout"):
        assign(frame, 5, PLAN, beta=bogus)


# -- expected split ----------------------------------------------------------------------------------------------


def test_expected_split():
    s = expected_split(8, PLAN)
    assert s.threshold == 950 and s.treatment_share == pytest.approx(0.095)
    assert s.control_share == pytest.approx(0.905) and s.holdout_share == pytest.approx(0.05)
    assert "beta" in s.sentence and "internal" in s.sentence
    assert expected_split(14, PLAN).treatment_share == pytest.approx(0.95)
    assert expected_split(3, PLAN).treatment_share == 0.0
    with pytest.raises(PlanError):
        expected_split(-1, PLAN)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.threshold = 1  # type: ignore[misc]


def test_expected_split_matches_observed_population(population):
    for day in (8, 10, 12, 14):
        out = assign(population, day, PLAN)
        pop = out[~out["reason"].astype(str).isin(EXCLUDED_REASONS)]
        share = (pop["variant"].astype(str) == "treatment").mean()
        p = expected_split(day, PLAN).treatment_share
        lo, hi = stats.binom.interval(1 - 1e-6, len(pop), p)
        assert lo / len(pop) <= share <= hi / len(pop)


# -- served vs intended --------------------------------------------------------------------------------------------


def test_served_mismatch_counts_exactly(population):
    day = 10
    intended = assign(population, day, PLAN)
    rng = np.random.default_rng(11)
    exposed = intended.sample(n=5000, random_state=1).reset_index(drop=True)
    t0 = pd.Timestamp("2026-12-11 08:00")
    # Earlier rows per user with the *opposite* variant: only the latest row may count.
    early = pd.DataFrame({
        "user_id": exposed["user_id"],
        "exposed_at": t0 - pd.Timedelta(hours=5),
        "variant": np.where(exposed["variant"].astype(str) == "treatment", "control", "treatment"),
    })
    late = pd.DataFrame({"user_id": exposed["user_id"],
                         "exposed_at": t0 + pd.to_timedelta(rng.integers(0, 3600, len(exposed)), "s"),
                         "variant": exposed["variant"].astype(str)})
    flip = rng.choice(len(late), 60, replace=False)
    was_t = late.loc[flip, "variant"] == "treatment"
    late.loc[flip, "variant"] = np.where(was_t, "control", "treatment")
    unknown = pd.DataFrame({"user_id": ["ghost1", "ghost2", "ghost3"], "exposed_at": t0,
                            "variant": "treatment"})
    exposures = pd.concat([late, early, unknown], ignore_index=True).sample(frac=1, random_state=2)
    rep = served_mismatch(exposures, intended)
    assert rep.compared == 5000
    assert rep.unknown_users == 3
    assert rep.served_control_intended_treatment == int(was_t.sum())
    assert rep.served_treatment_intended_control == int((~was_t).sum())
    assert rep.mismatched == 60 and rep.mismatch_rate == pytest.approx(60 / 5000)
    assert sum(rep.by_intended_reason.values()) == 60
    assert "60" in rep.sentence and "unknown" in rep.sentence

    clean = served_mismatch(pd.concat([early, late.assign(variant=exposed["variant"].astype(str))]),
                            intended)
    assert clean.mismatched == 0 and clean.mismatch_rate == 0.0
    none = served_mismatch(unknown, intended)
    assert none.compared == 0 and none.mismatch_rate is None and none.unknown_users == 3


def test_served_mismatch_bad_input(population):
    intended = assign(population.head(10), 8, PLAN)
    with pytest.raises(CohortError, match="variant"):
        served_mismatch(pd.DataFrame({"user_id": ["a"], "exposed_at": [pd.Timestamp(0)],
                                      "variant": ["blue"]}), intended)
    with pytest.raises(CohortError, match="exposed_at"):
        served_mismatch(pd.DataFrame({"user_id": ["a"], "variant": ["control"]}), intended)


# -- input checks ----------------------------------------------------------------------------------------------------


def test_assign_rejects_bad_frames_and_days(population):
    with pytest.raises(PlanError):
        assign(population, -1, PLAN)
    with pytest.raises(CohortError, match="engagement_score"):
        assign(population.drop(columns="engagement_score"), 8, PLAN)
    with pytest.raises(CohortError, match="is_internal"):
        assign(population.assign(is_internal="yes"), 8, PLAN)
    with pytest.raises(CohortError, match="micro_memory_count"):
        assign(population.assign(micro_memory_count=1.5), 8, PLAN)
    bad = population.copy()
    bad.loc[3, "engagement_score"] = np.nan
    with pytest.raises(CohortError, match="engagement_score"):
        assign(bad, 8, PLAN)
    with pytest.raises(CohortError, match="user_id"):
        assign(population.assign(user_id=np.arange(len(population))), 8, PLAN)
    assert issubclass(CohortError, WhispersLabError)


# -- the command ----------------------------------------------------------------------------------------------------


def run_cli(argv: list[str], monkeypatch) -> int:
    # Only this command: other sub-commands belong to other modules and may not exist yet.
    monkeypatch.setattr(cli, "COMMANDS", ("cohort",))
    return cli.main(argv)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
@pytest.mark.parametrize("out_suffix", [".csv", ".parquet"])
def test_cli_end_to_end(tmp_path, monkeypatch, capsys, suffix, out_suffix):
    users = make_users(2000, seed=5)
    users.loc[0, "user_id"] = "josé_ünïcode"
    src = tmp_path / f"users{suffix}"
    if suffix == ".csv":
        users.to_csv(src, index=False)
    else:
        users.to_parquet(src, index=False)
    out = tmp_path / "sub" / f"cohort{out_suffix}"
    assert run_cli(["cohort", "--users", str(src), "--day", "10", "--out", str(out)], monkeypatch) == 0
    got = pd.read_csv(out, dtype={"user_id": str}) if out_suffix == ".csv" else pd.read_parquet(out)
    assert list(got.columns) == ["user_id", "bucket", "variant", "reason"]
    exp = assign(users, 10, PLAN)
    assert got["user_id"].tolist() == exp["user_id"].tolist()
    np.testing.assert_array_equal(got["bucket"].to_numpy(), exp["bucket"].to_numpy())
    assert got["variant"].astype(str).tolist() == exp["variant"].astype(str).tolist()
    assert got["reason"].astype(str).tolist() == exp["reason"].astype(str).tolist()
    printed = capsys.readouterr().out
    assert "percentage" in printed and "holdout" in printed
    assert "user_0" not in printed and "josé" not in printed  # no user ids in the summary
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_cli_errors_name_file_and_column(tmp_path, monkeypatch, capsys):
    users = make_users(50, seed=6)
    out = str(tmp_path / "o.csv")

    def err(frame_or_text, name: str) -> str:
        path = tmp_path / name
        if isinstance(frame_or_text, str):
            path.write_text(frame_or_text)
        elif name.endswith(".csv"):
            frame_or_text.to_csv(path, index=False)
        else:
            pq.write_table(pa.Table.from_pandas(frame_or_text, preserve_index=False), path)
        assert run_cli(["cohort", "--users", str(path), "--day", "8", "--out", out], monkeypatch) == 1
        msg = capsys.readouterr().err
        assert str(path) in msg
        return msg

    assert "'engagement_score'" in err(users.drop(columns="engagement_score"), "a.csv")
    assert "'engagement_score'" in err(users.drop(columns="engagement_score"), "a.parquet")
    assert "'is_internal'" in err(users.assign(is_internal="maybe"), "b.csv")
    assert "'is_internal'" in err(users.assign(is_internal=1.5), "b.parquet")
    assert "'micro_memory_count'" in err(users.assign(micro_memory_count="lots"), "c.csv")
    assert "'user_id'" in err(users.assign(user_id=np.arange(50)), "d.parquet")
    blank = users.copy()
    blank["user_id"] = blank["user_id"].astype(object)
    blank.loc[2, "user_id"] = None
    assert "'user_id'" in err(blank, "e.csv")
    dup = users.copy()
    dup.loc[1, "user_id"] = dup.loc[0, "user_id"]
    assert "repeats" in err(dup, "f.csv")
    assert "cannot be read" in err("not parquet at all", "g.parquet")
    assert "unknown extension" in err("x", "h.txt")

    missing = tmp_path / "nope.csv"
    assert run_cli(["cohort", "--users", str(missing), "--day", "8", "--out", out], monkeypatch) == 1
    assert "does not exist" in capsys.readouterr().err
    good = tmp_path / "good.csv"
    users.to_csv(good, index=False)
    assert run_cli(["cohort", "--users", str(good), "--day", "-1", "--out", out], monkeypatch) == 1
    assert "before the rollout start" in capsys.readouterr().err
    assert not Path(out).exists()


def test_read_users_ignores_extra_columns(tmp_path):
    users = make_users(20).assign(extra="x")
    p = tmp_path / "u.csv"
    users.drop(columns="signup_at").to_csv(p, index=False)
    got = read_users(p)
    assert list(got.columns) == ["user_id", "is_internal", "micro_memory_count", "engagement_score"]
    assert got["is_internal"].dtype == bool


# -- properties (hypothesis) -------------------------------------------------------------------------------------------

ids_strategy = st.lists(st.text(st.characters(exclude_categories=("Cs",)), max_size=40),
                        min_size=1, max_size=60)


@settings(max_examples=60, deadline=None)
@given(ids=ids_strategy, salt=st.text(min_size=1, max_size=20))
def test_property_buckets_stable_across_calls_and_equal_to_reference(ids, salt):
    first = bucket_of(ids, salt)
    np.testing.assert_array_equal(first, bucket_of(list(ids), salt))
    np.testing.assert_array_equal(first, [bucket_of_one(i, salt) for i in ids])
    assert ((first >= 0) & (first < 10000)).all()


_WORKER = """
import json, sys
from whispers_lab.cohort import bucket_of
for line in sys.stdin:
    req = json.loads(line)
    print(json.dumps(bucket_of(req["ids"], req["salt"]).tolist()), flush=True)
"""


@pytest.fixture(scope="module")
def worker():
    """A separate Python process (another hash seed) answering bucket requests line by line."""
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", _WORKER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, encoding="utf-8", env=env, cwd=ROOT)
    yield proc
    proc.stdin.close()
    proc.wait(timeout=30)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=ids_strategy)
def test_property_buckets_stable_across_processes(worker, ids):
    worker.stdin.write(json.dumps({"ids": ids, "salt": SALT}, ensure_ascii=True) + "\n")
    worker.stdin.flush()
    other = json.loads(worker.stdout.readline())
    assert other == bucket_of(ids, SALT).tolist()


users_strategy = st.lists(
    st.tuples(st.text(min_size=1, max_size=12, alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",))),
              st.booleans(), st.integers(0, 30), st.floats(0, 1)),
    min_size=1, max_size=80, unique_by=lambda t: t[0])


@settings(max_examples=60, deadline=None)
@given(rows=users_strategy,
       stages=st.lists(st.floats(0.5, 100), min_size=4, max_size=4).map(sorted),
       holdout=st.sampled_from([0.0, 0.05, 0.2, 0.5]))
def test_property_monotone_across_stages_and_days(rows, stages, holdout):
    plan = plan_with_stages(stages, holdout)
    frame = pd.DataFrame(rows, columns=["user_id", "is_internal", "micro_memory_count",
                                        "engagement_score"]).astype({"user_id": "str"})
    fed = first_enabled_day(frame, plan)
    prev = np.zeros(len(frame), dtype=bool)
    for day in range(0, plan.last_day + 3):
        out = assign(frame, day, plan)
        now = out["variant"].astype(str).to_numpy() == "treatment"
        assert not (prev & ~now).any()
        np.testing.assert_array_equal(now, fed <= day)
        hold = (~frame["is_internal"].to_numpy()) & (out["bucket"].to_numpy() >= holdout_start(plan))
        assert not now[hold].any()
        prev = now
    # Thresholds grow with the stages, never past the holdout.
    thr = [stage_threshold(p, plan) for p in stages]
    assert thr == sorted(thr) and thr[-1] <= holdout_start(plan)
