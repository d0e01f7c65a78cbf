"""ksrnet.synth.rand must draw exactly what numpy's Generator draws, so tracks keep their pixels."""

import numpy as np

from ksrnet.synth.rand import choice, choice_cdf, uniform


def test_uniform_matches_numpy_bit_for_bit():
    a, b = np.random.default_rng(11), np.random.default_rng(11)
    for low, high in [(0.0, 1.0), (0.17, 0.23), (-0.4, 0.3), (3, 10), (0.5, 0.5)]:
        for _ in range(2000):
            assert uniform(b, low, high) == float(a.uniform(low, high))
    assert a.random() == b.random()  # both streams advanced alike


def test_choice_matches_numpy_bit_for_bit():
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    for weights in [(0.78, 0.14, 0.08), (0.30, 0.20, 0.15, 0.16, 0.07, 0.05, 0.03, 0.02, 0.02), (1.0,)]:
        p = np.asarray(weights) / sum(weights)
        cdf = choice_cdf(p)
        for _ in range(2000):
            assert choice(b, cdf) == int(a.choice(len(p), p=p))
    assert a.random() == b.random()
