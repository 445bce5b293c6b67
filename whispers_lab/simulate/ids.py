"""Fast, vectorised string ids: ``prefix`` + zero-padded decimal number, built as Arrow arrays.

Formatting millions of ids with Python string operations is slow; here the digits are written
into one byte buffer with numpy and handed to Arrow as a string array without copies per row.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def format_ids(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    """``prefix`` followed by ``numbers`` zero-padded to ``width`` digits, as an Arrow string array.

    Raises ValueError when a number is negative or needs more than ``width`` digits (ids must
    stay unique, so truncation is never silent).
    """
    nums = np.asarray(numbers, dtype=np.int64)
    n = nums.size
    if n and (nums.min() < 0 or nums.max() >= 10**width):
        raise ValueError(f"ids with prefix {prefix!r} need more than {width} digits")
    pre = prefix.encode("ascii")
    row = len(pre) + width
    buf = np.empty((n, row), dtype=np.uint8)
    buf[:, : len(pre)] = np.frombuffer(pre, dtype=np.uint8)
    rest = nums.copy()
    for col in range(row - 1, len(pre) - 1, -1):
        buf[:, col] = (rest % 10 + 48).astype(np.uint8)
        rest //= 10
    offsets = np.arange(0, (n + 1) * row, row, dtype=np.int64)
    if offsets[-1] < 2**31:
        return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets.astype(np.int32)),
                                                     pa.py_buffer(buf.reshape(-1))])
    return pa.Array.from_buffers(pa.large_string(), n, [None, pa.py_buffer(offsets),
                                                       pa.py_buffer(buf.reshape(-1))])


def take_strings(values: pa.Array, index: np.ndarray) -> pa.Array:
    """Gather an Arrow string array by integer positions."""
    return values.take(pa.array(np.asarray(index, dtype=np.int64)))
