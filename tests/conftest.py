"""Shared test helpers: a micro PARSeq and tracks of random frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ksrnet.models.parseq import Parseq, ParseqConfig
from ksrnet.tracks import Track

# 16x32 images, 32-wide embedding: reads a track in milliseconds.
MICRO_PARSEQ = dict(img_h=16, img_w=32, embed_dim=32, enc_depth=1, enc_heads=2, dec_depth=1, dec_heads=2,
                    mlp_ratio=2.0, dropout=0.0)


@pytest.fixture
def micro_parseq():
    """make(seed=0, **config overrides) -> an untrained micro Parseq in eval mode."""

    def make(seed: int = 0, **overrides) -> Parseq:
        torch.manual_seed(seed)
        return Parseq(ParseqConfig(**{**MICRO_PARSEQ, **overrides})).eval()

    return make


@pytest.fixture
def noise_tracks():
    """make(n=2, frames=3, seed=0) -> tracks t0.. of random 48x17 RGB frames."""

    def make(n: int = 2, frames: int = 3, seed: int = 0) -> list[Track]:
        rng = np.random.default_rng(seed)
        return [Track(f"t{i}", [rng.integers(0, 256, (17, 48, 3), dtype=np.uint8) for _ in range(frames)])
                for i in range(n)]

    return make
