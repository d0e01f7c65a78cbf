"""Lower-overhead stand-ins for numpy functions that synthesis calls thousands of times per track
on small arrays, with bit-identical results.

`np.clip` and `ndarray.mean` are Python-level wrappers (argument checks, dispatch) that cost
3-8 us per call around the ufunc or reduction doing the work, as much as the work itself on a
plate-sized array; these call that ufunc or reduction directly.
"""

from __future__ import annotations

import numpy as np

try:  # numpy >= 2: the ufunc np.clip dispatches to
    from numpy._core.umath import clip as _clip_ufunc
except ImportError:  # pragma: no cover - older numpy keeps the wrapper
    _clip_ufunc = np.clip


def clip(x, lo, hi):
    """``np.clip(x, lo, hi)`` for an array ``x`` and scalar bounds (the same ufunc, same dtypes)."""
    return _clip_ufunc(x, lo, hi)


def mean(x: np.ndarray, axis: int | None = None, *, dtype=None, keepdims: bool = False):
    """``x.mean(axis, dtype, keepdims=...)`` for a float array, computed as numpy does: the same
    sum reduction, divided by the number of elements reduced."""
    total = np.add.reduce(x, axis=axis, dtype=dtype, keepdims=keepdims)
    count = x.size if axis is None else x.shape[axis]
    if isinstance(total, np.ndarray):
        return np.true_divide(total, count, out=total, casting="unsafe")
    return total.dtype.type(total / count)
