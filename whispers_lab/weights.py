"""Ranking weights: the user-tunable part of the whispers ranker.

A memory's score is ``sum_i w_i * signal_i`` over the five signals of
:data:`SIGNALS` (see :mod:`whispers_lab.ranker` for the signal formulas). A :class:`Weights`
holds the five weights plus the three shape parameters of the signals (two half-lives and
the frequency cap), a ``version`` label that production logs as ``api_logs.weights_version``,
and a ``schema`` number for the stored JSON format.

Production stores one set of weights per user. :func:`resolve_weights` is the rule for using
them: valid stored weights are used as-is (source ``"user"``); missing or invalid ones are
replaced by the default (source ``"fallback"``). The plan's *weight fallback rate* is the
share of requests with source ``"fallback"``.

The stored format is strict: every key must be present (``schema`` may be omitted and then
means 1), no unknown keys, numbers must be JSON numbers (not booleans or strings). A bad
value raises :class:`WeightsError` naming the key and the value.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .atomic import write_text_atomic
from .errors import WhispersLabError

#: The five ranking signals, in the order of :func:`weights_vector` and of the columns of
#: :func:`whispers_lab.ranker.signal_matrix`. Re-exported as ``whispers_lab.ranker.SIGNALS``.
SIGNALS: tuple[str, ...] = ("context", "recency", "frequency", "novelty", "pinned")
#: Shape parameters of the signals: finite and > 0.
PARAMETERS: tuple[str, ...] = (
    "recency_half_life_hours", "novelty_half_life_hours", "frequency_cap",
)
#: The only stored-weights format this code reads.
SCHEMA_VERSION = 1

WeightSource = Literal["user", "fallback"]


class WeightsError(WhispersLabError):
    """Weights are invalid or cannot be read. The message names the field and the bad value."""


def _is_number(value: Any) -> bool:
    """A real number that is not a boolean (``True`` is an int in Python, never a weight)."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


@dataclass(frozen=True)
class Weights:
    """Validated ranking weights and signal parameters (immutable).

    Weights are finite, >= 0 and not all zero; half-lives and the frequency cap are finite and
    > 0; ``version`` is a non-empty string; ``schema`` is 1. Integer values are stored as
    floats. Construction raises :class:`WeightsError` on any violation.
    """

    context: float = 0.50
    recency: float = 0.20
    frequency: float = 0.10
    novelty: float = 0.10
    pinned: float = 0.30
    recency_half_life_hours: float = 72.0
    novelty_half_life_hours: float = 24.0
    frequency_cap: float = 50.0
    version: str = "default-2026-11"
    schema: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        # Normalise numbers to float so that Weights(context=1) == Weights(context=1.0) and the
        # JSON form is stable; then validate.
        for name in (*SIGNALS, *PARAMETERS):
            value = getattr(self, name)
            if not _is_number(value):
                raise WeightsError(
                    f"weights field {name!r} must be a number, got {type(value).__name__} ({value!r})"
                )
            object.__setattr__(self, name, float(value))
        self.validate()

    def validate(self) -> None:
        """Raise :class:`WeightsError` naming the first invalid field and its value."""
        for name in SIGNALS:
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value) or value < 0:
                raise WeightsError(f"weights field {name!r} must be a finite number >= 0, got {value!r}")
        if all(getattr(self, name) == 0 for name in SIGNALS):
            raise WeightsError(
                f"weights fields {', '.join(repr(s) for s in SIGNALS)} are all zero; "
                "at least one weight must be > 0"
            )
        for name in PARAMETERS:
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value) or value <= 0:
                raise WeightsError(f"weights field {name!r} must be a finite number > 0, got {value!r}")
        if not isinstance(self.version, str) or not self.version.strip():
            raise WeightsError(f"weights field 'version' must be a non-empty string, got {self.version!r}")
        if (not isinstance(self.schema, numbers.Integral) or isinstance(self.schema, (bool, np.bool_))
                or self.schema != SCHEMA_VERSION):
            raise WeightsError(
                f"weights field 'schema' must be {SCHEMA_VERSION} (the only weights format this "
                f"code reads), got {self.schema!r}"
            )

    # -- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The stored form: ``schema``, ``version``, the five weights, the three parameters."""
        out: dict[str, Any] = {"schema": int(self.schema), "version": self.version}
        out.update({name: float(getattr(self, name)) for name in (*SIGNALS, *PARAMETERS)})
        return out

    def to_json(self, indent: int | None = None) -> str:
        """The stored form as JSON (floats round-trip exactly)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Weights:
        """Read the stored form. Unknown, missing or wrongly typed keys raise :class:`WeightsError`."""
        if not isinstance(data, Mapping):
            raise WeightsError(f"weights must be a JSON object / mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise WeightsError(
                    f"weights key {key!r} is not a known key (known: {', '.join(sorted(known))})"
                )
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                if f.name == "schema":
                    continue
                raise WeightsError(f"weights key {f.name!r} is missing")
            value = data[f.name]
            if f.name == "version":
                if not isinstance(value, str):
                    raise WeightsError(
                        f"weights key 'version' must be a string, got {type(value).__name__} ({value!r})"
                    )
            elif f.name == "schema":
                if not isinstance(value, numbers.Integral) or isinstance(value, (bool, np.bool_)):
                    raise WeightsError(
                        f"weights key 'schema' must be an integer, got {type(value).__name__} ({value!r})"
                    )
            elif not _is_number(value):
                raise WeightsError(
                    f"weights key {f.name!r} must be a number, got {type(value).__name__} ({value!r})"
                )
            values[f.name] = value
        return cls(**values)

    @classmethod
    def from_json(cls, text: str | bytes | bytearray) -> Weights:
        """Parse the stored JSON form; invalid JSON or content raises :class:`WeightsError`."""
        try:
            data = json.loads(text)
        except (ValueError, TypeError) as exc:
            raise WeightsError(f"weights are not valid JSON: {exc}") from None
        return cls.from_dict(data)


DEFAULT_WEIGHTS = Weights()


# -- files ------------------------------------------------------------------------------------


def load_weights(path: str | os.PathLike[str]) -> Weights:
    """Read weights from a JSON file; a missing, unreadable or invalid file raises :class:`WeightsError`."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WeightsError(f"weights file {str(p)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise WeightsError(f"weights file {str(p)!r} cannot be read: {exc}") from None
    try:
        return Weights.from_json(text)
    except WeightsError as exc:
        raise WeightsError(f"weights file {str(p)!r}: {exc}") from None


def save_weights(weights: Weights, path: str | os.PathLike[str]) -> Path:
    """Write weights as JSON atomically (temp file in the same folder, fsync, ``os.replace``).

    A reader never sees a half-written file: it sees the old content or the new one.
    """
    if not isinstance(weights, Weights):
        raise TypeError(f"save_weights needs a Weights, got {type(weights).__name__}")
    return write_text_atomic(path, weights.to_json(indent=2) + "\n")


# -- the production fallback rule -------------------------------------------------------------


def resolve_weights(
    stored: Weights | Mapping[str, Any] | str | bytes | None,
    default: Weights = DEFAULT_WEIGHTS,
) -> tuple[Weights, WeightSource]:
    """The weights a request is ranked with, and where they came from.

    ``stored`` is what production has for the user: a :class:`Weights`, the stored mapping, its
    JSON text, or None. Present and valid -> ``(weights, "user")``; None, empty, unparsable,
    incomplete or invalid -> ``(default, "fallback")``. Never raises on bad stored weights
    (only on a ``default`` that is not a :class:`Weights`, a programming error).
    """
    if not isinstance(default, Weights):
        raise TypeError(f"resolve_weights: default must be a Weights, got {type(default).__name__}")
    if stored is None:
        return default, "fallback"
    try:
        if isinstance(stored, Weights):
            stored.validate()
            return stored, "user"
        if isinstance(stored, Mapping):
            return Weights.from_dict(stored), "user"
        if isinstance(stored, (str, bytes, bytearray)):
            if not stored.strip():
                return default, "fallback"
            return Weights.from_json(stored), "user"
    except Exception:  # the contract: bad stored weights never break a request
        return default, "fallback"
    return default, "fallback"


# -- the tuner's view: a vector of the five weights -----------------------------------------


def weights_vector(weights: Weights) -> np.ndarray:
    """The five weights as a float64 vector in :data:`SIGNALS` order."""
    return np.array([getattr(weights, name) for name in SIGNALS], dtype=np.float64)


def weights_from_vector(
    vector: Any, base: Weights = DEFAULT_WEIGHTS, *, version: str | None = None
) -> Weights:
    """Inverse of :func:`weights_vector`: ``base`` with its five weights replaced by ``vector``.

    Half-lives, cap and schema come from ``base``; ``version`` defaults to ``base.version``
    (give tuned weights their own label). Invalid values raise :class:`WeightsError`.
    """
    arr = np.asarray(vector, dtype=np.float64)
    if arr.shape != (len(SIGNALS),):
        raise WeightsError(
            f"weights vector must have shape ({len(SIGNALS)},) in order {', '.join(SIGNALS)}, "
            f"got shape {arr.shape}"
        )
    changes: dict[str, Any] = {name: float(v) for name, v in zip(SIGNALS, arr, strict=True)}
    if version is not None:
        changes["version"] = version
    return replace(base, **changes)


__all__ = [
    "DEFAULT_WEIGHTS",
    "PARAMETERS",
    "SCHEMA_VERSION",
    "SIGNALS",
    "WeightSource",
    "Weights",
    "WeightsError",
    "load_weights",
    "resolve_weights",
    "save_weights",
    "weights_from_vector",
    "weights_vector",
]
