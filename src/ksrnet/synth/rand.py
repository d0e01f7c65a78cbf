"""Scalar draws from a numpy Generator without numpy's per-call argument handling.

`Generator.uniform(low, high)` and `Generator.choice(n, p=p)` spend most of their time (3 us and
20 us) parsing and checking arguments; a track makes ~80 such draws. These helpers consume the
generator's stream exactly as numpy does and return bit-identical values, so tracks stay the same
for a seed:

* numpy's uniform is ``low + (high - low) * next_double``, and ``rng.random()`` is next_double;
* numpy's choice with ``p`` normalises ``p.cumsum()`` by its last entry, draws one
  ``rng.random()`` and returns ``cdf.searchsorted(u, side="right")``.
"""

from __future__ import annotations

import bisect
from typing import Sequence

import numpy as np


def uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """``float(rng.uniform(low, high))`` for scalar bounds, bit for bit."""
    return low + (high - low) * rng.random()


def choice_cdf(p) -> tuple[float, ...]:
    """The cumulative table `choice` searches, built as numpy's choice builds it from the
    probabilities ``p`` (normalised exactly as the caller used to pass them to numpy)."""
    cdf = np.asarray(p, dtype=np.float64).cumsum()
    cdf /= cdf[-1]
    return tuple(cdf.tolist())


def choice(rng: np.random.Generator, cdf: Sequence[float]) -> int:
    """``int(rng.choice(len(cdf), p=p))`` given ``cdf = choice_cdf(p)``, bit for bit."""
    return bisect.bisect_right(cdf, rng.random())
