"""The generator's faster code paths give bit for bit what the plain ones they replace give."""

from __future__ import annotations

import numpy as np
import pytest

from ksrnet.synth import degrade as D
from ksrnet.synth import npfast


def test_npfast_clip_and_mean_match_numpy_bit_for_bit():
    rng = np.random.default_rng(0)
    x32 = (rng.standard_normal((3, 17, 29)) * 2).astype(np.float32)
    assert np.array_equal(npfast.clip(x32, np.float32(0), np.float32(1)), np.clip(x32, np.float32(0), np.float32(1)))
    assert npfast.clip(x32, 0.0, 1.0).dtype == np.float32
    assert np.array_equal(npfast.clip(x32 * 255.0 + 0.5, 0, 255), np.clip(x32 * 255.0 + 0.5, 0, 255))
    x64 = rng.standard_normal((4, 2)) * 100
    assert np.array_equal(npfast.mean(x64, axis=0), x64.mean(axis=0))
    pts = rng.standard_normal((5, 48, 2))
    assert np.array_equal(npfast.mean(pts, axis=1, keepdims=True), pts.mean(axis=1, keepdims=True))
    m = npfast.mean(x32, dtype=np.float64)
    assert m == x32.mean(dtype=np.float64) and type(m) is type(x32.mean(dtype=np.float64))


def test_stacked_sharpen_equals_per_frame_sharpen():
    x = np.random.default_rng(1).random((5, 19, 46, 3), dtype=np.float32)
    per_frame = np.stack([D.sharpen(f, 1.2, 0.9) for f in x])
    assert np.array_equal(D.sharpen(x, 1.2, 0.9), per_frame)


def test_cached_kernels_equal_fresh_ones():
    still = D._still_defocus_kernel(1.3)
    assert np.array_equal(still, D.blur_kernel(np.zeros((1, 2)), "defocus", 1.3))
    assert not still.flags.writeable
    disc = D.disc_kernel(0.8)
    disc[0, 0] = 5.0  # the public function hands out a copy: the cache stays intact
    assert D.disc_kernel(0.8)[0, 0] != 5.0


def test_compress_offsets_draw_the_same_stream_as_per_frame_draws():
    # One (n, 2) draw replaced n size-2 draws; the generator state after must match too.
    for seed in range(200):
        a, b = np.random.default_rng(seed), np.random.default_rng(seed)
        per_frame = [a.integers(-2, 3, size=2).tolist() for _ in range(5)]
        assert b.integers(-2, 3, size=(5, 2)).tolist() == per_frame
        assert a.random() == b.random()


@pytest.mark.skipif(not D.H264_AVAILABLE, reason="PyAV with libx264 not installed")
def test_h264_plane_copy_equals_to_ndarray():
    import cv2

    s = D._session(64, 32, 28, True)
    frame = np.random.default_rng(2).integers(0, 256, (32, 64, 3), dtype=np.uint8)
    vf = s._to_frame(cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420))
    vf.pts = s.pts
    s.pts += 1
    decoded = [d for p in s.enc.encode(vf) for d in s.dec.decode(p)]
    decoded += [d for p in s.enc.encode(None) for d in s.dec.decode(p)] if not decoded else []
    assert decoded
    for d in decoded:
        assert np.array_equal(s._i420(d), d.to_ndarray())
    D._SESSIONS.clear()  # the flush above ended this session's stream


def test_camera_lengths_equal_numpy_norm():
    from ksrnet.synth import camera as C

    rng = np.random.default_rng(3)
    for _ in range(200):
        v = rng.standard_normal(2) * rng.uniform(0.1, 300)
        assert C._length(v) == np.linalg.norm(v)
        m = rng.standard_normal((5, 4, 2)) * 100
        assert np.array_equal(C._row_lengths(m), np.linalg.norm(m, axis=-1))
