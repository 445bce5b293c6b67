"""Independent, reproducible random streams: one per (seed, purpose, day).

Each generating step draws from its own stream, so adding a scenario or changing one table's
model leaves the other streams (and hence most of the data) unchanged for the same seed.
"""

from __future__ import annotations

import zlib

import numpy as np


def stream(seed: int, purpose: str, day: int = 0) -> np.random.Generator:
    """``numpy.random.default_rng`` seeded by the seed, a stable hash of ``purpose`` and the day."""
    key = zlib.crc32(purpose.encode("utf-8"))
    return np.random.default_rng([int(seed) & 0xFFFFFFFFFFFF, key, day + 1_000])


def hash_uniform(keys: np.ndarray, salt: int) -> np.ndarray:
    """Uniform [0, 1) value per integer key (splitmix64 finaliser): stable attributes of
    objects (e.g. a memory's pin state) that must not depend on when they are drawn."""
    with np.errstate(over="ignore"):
        z = np.asarray(keys, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15) * np.uint64(salt + 1)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)
