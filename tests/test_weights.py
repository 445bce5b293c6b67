"""Tests of whispers_lab.weights: validation, the stored JSON form, files, the fallback rule."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from whispers_lab import weights as weights_mod
from whispers_lab.errors import WhispersLabError
from whispers_lab.ranker import SIGNALS as RANKER_SIGNALS
from whispers_lab.weights import (
    DEFAULT_WEIGHTS,
    SIGNALS,
    Weights,
    WeightsError,
    load_weights,
    resolve_weights,
    save_weights,
    weights_from_vector,
    weights_vector,
)

GOOD = {
    "schema": 1,
    "version": "user-42-v3",
    "context": 0.6,
    "recency": 0.1,
    "frequency": 0.05,
    "novelty": 0.15,
    "pinned": 0.25,
    "recency_half_life_hours": 48.0,
    "novelty_half_life_hours": 12.0,
    "frequency_cap": 20.0,
}


def test_defaults() -> None:
    w = DEFAULT_WEIGHTS
    assert (w.context, w.recency, w.frequency, w.novelty, w.pinned) == (0.50, 0.20, 0.10, 0.10, 0.30)
    assert (w.recency_half_life_hours, w.novelty_half_life_hours, w.frequency_cap) == (72.0, 24.0, 50.0)
    assert w.version == "default-2026-11"
    assert w.schema == 1
    assert issubclass(WeightsError, WhispersLabError)
    assert SIGNALS == RANKER_SIGNALS == ("context", "recency", "frequency", "novelty", "pinned")


def test_frozen() -> None:
    with pytest.raises(AttributeError):
        DEFAULT_WEIGHTS.context = 1.0  # type: ignore[misc]


def test_integers_are_stored_as_floats() -> None:
    w = Weights(context=1, recency=0, frequency=0, novelty=0, pinned=2, frequency_cap=10)
    assert isinstance(w.context, float) and w.context == 1.0
    assert w == Weights(context=1.0, recency=0.0, frequency=0.0, novelty=0.0, pinned=2.0,
                        frequency_cap=10.0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("context", -0.1),
        ("recency", math.nan),
        ("frequency", math.inf),
        ("novelty", -math.inf),
        ("pinned", -1),
        ("recency_half_life_hours", 0.0),
        ("novelty_half_life_hours", -24.0),
        ("frequency_cap", math.nan),
        ("frequency_cap", 0),
        ("context", True),
        ("recency", "0.2"),
        ("pinned", None),
        ("version", ""),
        ("version", "   "),
        ("version", 3),
        ("schema", 2),
        ("schema", True),
    ],
)
def test_validation_error_names_field_and_value(field: str, value: object) -> None:
    with pytest.raises(WeightsError) as err:
        Weights(**{field: value})
    message = str(err.value)
    assert repr(field) in message
    assert repr(value) in message or str(value) in message


def test_all_zero_weights_rejected() -> None:
    with pytest.raises(WeightsError, match="all zero"):
        Weights(context=0, recency=0, frequency=0, novelty=0, pinned=0)
    # A single non-zero weight is enough.
    assert Weights(context=0, recency=0, frequency=0, novelty=0, pinned=0.1).pinned == 0.1


def test_json_round_trip() -> None:
    w = Weights.from_dict(GOOD)
    assert Weights.from_json(w.to_json()) == w
    assert Weights.from_json(w.to_json(indent=2)) == w
    assert Weights.from_dict(w.to_dict()) == w
    assert json.loads(w.to_json()) == GOOD
    # Awkward floats survive exactly.
    odd = Weights(context=0.1 + 0.2, recency=1e-300, novelty=1 / 3)
    assert Weights.from_json(odd.to_json()) == odd
    assert DEFAULT_WEIGHTS.to_dict()["schema"] == 1


def test_schema_key_is_optional_in_stored_form() -> None:
    data = {k: v for k, v in GOOD.items() if k != "schema"}
    assert Weights.from_dict(data).schema == 1


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"contxt": 0.5}, "contxt"),                 # unknown key (typo)
        ({"context": "0.5"}, "context"),             # string, not a number
        ({"recency": True}, "recency"),              # boolean, not a number
        ({"pinned": None}, "pinned"),                # null
        ({"frequency_cap": [50]}, "frequency_cap"),  # list
        ({"version": 7}, "version"),                 # not a string
        ({"schema": "1"}, "schema"),                 # not an integer
        ({"schema": 2}, "schema"),                   # unknown format
        ({"novelty": -0.5}, "novelty"),              # out of range
    ],
)
def test_from_dict_errors_name_the_key(change: dict, key: str) -> None:
    data = {**GOOD, **change}
    with pytest.raises(WeightsError) as err:
        Weights.from_dict(data)
    assert repr(key) in str(err.value)


@pytest.mark.parametrize("missing", [k for k in GOOD if k != "schema"])
def test_from_dict_missing_key_is_named(missing: str) -> None:
    data = {k: v for k, v in GOOD.items() if k != missing}
    with pytest.raises(WeightsError, match=f"'{missing}' is missing"):
        Weights.from_dict(data)


@pytest.mark.parametrize("text", ["", "{", "[1, 2]", "null", '"weights"', "{'context': 1}"])
def test_from_json_rejects_bad_text(text: str) -> None:
    with pytest.raises(WeightsError):
        Weights.from_json(text)


def test_from_json_rejects_nan_literal() -> None:
    text = json.dumps({**GOOD, "context": "X"}).replace('"X"', "NaN")
    with pytest.raises(WeightsError, match="'context'"):
        Weights.from_json(text)


def test_save_and_load(tmp_path) -> None:
    w = Weights.from_dict(GOOD)
    path = tmp_path / "weights.json"
    assert save_weights(w, path) == path
    assert load_weights(path) == w
    # Overwrite in place; no temp files left behind.
    save_weights(DEFAULT_WEIGHTS, path)
    assert load_weights(str(path)) == DEFAULT_WEIGHTS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.json"]


def test_save_is_atomic_on_failure(tmp_path, monkeypatch) -> None:
    path = tmp_path / "weights.json"
    save_weights(DEFAULT_WEIGHTS, path)
    before = path.read_text()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(weights_mod.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        save_weights(Weights.from_dict(GOOD), path)
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.json"]


def test_load_errors_name_the_file(tmp_path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(WeightsError, match="does not exist"):
        load_weights(missing)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**GOOD, "pinned": -1}))
    with pytest.raises(WeightsError) as err:
        load_weights(bad)
    assert "bad.json" in str(err.value) and "'pinned'" in str(err.value)


def test_resolve_weights_user() -> None:
    w = Weights.from_dict(GOOD)
    assert resolve_weights(w) == (w, "user")
    assert resolve_weights(GOOD) == (w, "user")
    assert resolve_weights(json.dumps(GOOD)) == (w, "user")
    assert resolve_weights(json.dumps(GOOD).encode()) == (w, "user")
    # Stored weights equal to the defaults are still the user's.
    assert resolve_weights(DEFAULT_WEIGHTS.to_dict()) == (DEFAULT_WEIGHTS, "user")


@pytest.mark.parametrize(
    "stored",
    [
        None,
        "",
        "   ",
        "not json",
        "{}",
        "[]",
        {"context": 0.5},                      # incomplete
        {**GOOD, "context": -1},               # invalid value
        {**GOOD, "extra": 1},                  # unknown key
        {**GOOD, "recency_half_life_hours": 0},
        {**GOOD, "context": 0, "recency": 0, "frequency": 0, "novelty": 0, "pinned": 0},
        json.dumps({**GOOD, "version": ""}),
        42,
        [0.5, 0.2, 0.1, 0.1, 0.3],
    ],
)
def test_resolve_weights_fallback_never_raises(stored: object) -> None:
    assert resolve_weights(stored) == (DEFAULT_WEIGHTS, "fallback")  # type: ignore[arg-type]


def test_resolve_weights_custom_default() -> None:
    default = Weights(version="tenant-default")
    assert resolve_weights(None, default) == (default, "fallback")
    assert resolve_weights("garbage", default=default) == (default, "fallback")
    with pytest.raises(TypeError):
        resolve_weights(None, default=GOOD)  # type: ignore[arg-type]


def test_weights_vector_and_inverse() -> None:
    w = Weights.from_dict(GOOD)
    vec = weights_vector(w)
    assert vec.dtype == np.float64
    np.testing.assert_array_equal(vec, [0.6, 0.1, 0.05, 0.15, 0.25])
    assert weights_from_vector(vec, base=w) == w
    tuned = weights_from_vector([1, 0, 0, 0, 0.5], version="tuned-1")
    assert tuned.context == 1.0 and tuned.pinned == 0.5 and tuned.version == "tuned-1"
    assert tuned.recency_half_life_hours == DEFAULT_WEIGHTS.recency_half_life_hours
    assert weights_from_vector(weights_vector(DEFAULT_WEIGHTS)) == DEFAULT_WEIGHTS


def test_weights_from_vector_errors() -> None:
    with pytest.raises(WeightsError, match="shape"):
        weights_from_vector([0.5, 0.5])
    with pytest.raises(WeightsError, match="'novelty'"):
        weights_from_vector([0.5, 0.2, 0.1, -0.1, 0.3])
    with pytest.raises(WeightsError, match="all zero"):
        weights_from_vector(np.zeros(5))
