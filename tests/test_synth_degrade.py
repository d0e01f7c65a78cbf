"""Degradations: each changes what it should and nothing else; presets, codecs, whole chain."""

from __future__ import annotations

import math
import warnings

import cv2
import numpy as np
import pytest

from ksrnet.synth import camera as C
from ksrnet.synth import degrade as D

H264 = pytest.mark.skipif(not D.H264_AVAILABLE, reason="PyAV with libx264 not installed")

SCENE_W, SCENE_H = 480, 240
PLATE = np.array([[139.5, 89.5], [339.5, 89.5], [339.5, 154.5], [139.5, 154.5]])


def smooth_scene(seed: int = 0) -> np.ndarray:
    """Low-frequency colour texture (periods of several LR px), so the flow check is not
    dominated by resampling error."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SCENE_H, 0:SCENE_W].astype(np.float64)
    img = np.zeros((SCENE_H, SCENE_W, 3))
    for c in range(3):
        for _ in range(5):
            period, theta = rng.uniform(40, 160), rng.uniform(0, np.pi)
            img[..., c] += np.sin(
                2 * np.pi / period * (np.cos(theta) * xx + np.sin(theta) * yy) + rng.uniform(0, 6.3)
            )
    return ((img - img.min()) / (img.max() - img.min()) * 200 + 25).astype(np.uint8)


def text_scene() -> np.ndarray:
    img = np.full((SCENE_H, SCENE_W, 3), (90, 60, 40), np.uint8)
    img[90:155, 140:340] = 235
    cv2.putText(img, "ABC1D23", (150, 145), cv2.FONT_HERSHEY_SIMPLEX, 1.6, (10, 10, 10), 6)
    return img


def stripes(axis: int, period: float, shape=(96, 96)) -> np.ndarray:
    """Sinusoidal stripes varying along x (axis=1) or y (axis=0), float32 in [0.2, 0.8], RGB."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    coord = xx if axis == 1 else yy
    g = 0.5 + 0.3 * np.sin(2 * np.pi * coord / period)
    return np.repeat(g[..., None], 3, axis=2).astype(np.float32)


def textured(seed: int = 0, shape=(24, 64)) -> np.ndarray:
    """uint8 RGB with structure at all scales (text-like blocks plus mild noise)."""
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.random((shape[0] // 4, shape[1] // 4, 3)).astype(np.float32),
                      (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    img = 0.7 * base + 0.3 * rng.random(shape + (3,)).astype(np.float32)
    return (img * 255).astype(np.uint8)


def luma_textured(seed: int = 0, shape=(24, 64)) -> np.ndarray:
    """Detail in brightness, colour only at low frequency: what 4:2:0 codecs can keep."""
    rng = np.random.default_rng(seed)
    grey = cv2.resize(rng.random((shape[0] // 3, shape[1] // 3)).astype(np.float32),
                      (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    tint = cv2.resize(rng.uniform(0.7, 1.0, (2, 2, 3)).astype(np.float32), (shape[1], shape[0]))
    return (255 * (0.2 + 0.75 * grey[..., None]) * tint).astype(np.uint8)


def amplitude(img: np.ndarray, axis: int, period: float) -> float:
    """Amplitude of the sinusoid along ``axis`` (interior only), by projection."""
    g = img[8:-8, 8:-8, 0].astype(np.float64)
    coord = np.arange(g.shape[axis]) + 8
    s, c = np.sin(2 * np.pi * coord / period), np.cos(2 * np.pi * coord / period)
    prof = g.mean(axis=1 - axis)
    prof = prof - prof.mean()
    return 2 * math.hypot((prof * s).mean(), (prof * c).mean())


def centroid(k: np.ndarray) -> tuple[float, float]:
    r = k.shape[0] // 2
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return float((k * xx).sum()), float((k * yy).sum())


# ------------------------------------------------------------------------------------------------
# kernels and blurs


@pytest.mark.parametrize(
    "path",
    [
        D.linear_motion_path(0.0, 0.0),
        D.linear_motion_path(5.0, 0.0),
        D.linear_motion_path(4.3, 37.0),
        D.curved_motion_path(np.random.default_rng(0), 6.0, 20.0, 0.8),
        D.curved_motion_path(np.random.default_rng(1), 3.0, -45.0, 0.5),
    ],
)
@pytest.mark.parametrize("psf,size", [("gaussian", 0.0), ("gaussian", 1.3), ("defocus", 1.6)])
def test_kernels_sum_to_one_and_stay_centred(path, psf, size):
    k = D.blur_kernel(path, psf, size)
    assert k.dtype == np.float32 and k.ndim == 2 and k.shape[0] == k.shape[1] and k.shape[0] % 2
    assert abs(k.sum() - 1) < 1e-5 and k.min() >= 0
    cx, cy = centroid(k)
    assert abs(cx) < 0.02 and abs(cy) < 0.02


def test_track_motion_kernels_are_centred_and_follow_lengths():
    p = D.DegradationParams(
        motion_kind="curved", motion_length=(0.5, 1.0, 2.0, 3.0, 0.0),
        motion_angle=(0, 10, 20, 30, 40), motion_curvature=0.8,
    )
    ks = D.track_motion_kernels(p, 5, 2, np.random.default_rng(0))
    assert len(ks) == 5
    for k in ks:
        assert abs(k.sum() - 1) < 1e-5
        cx, cy = centroid(k)
        assert abs(cx) < 0.02 and abs(cy) < 0.02
    sizes = [k.shape[0] for k in ks]
    assert sizes[3] > sizes[0] and sizes[4] <= sizes[0]
    assert D.track_motion_kernels(D.DegradationParams(), 5, 2, np.random.default_rng(0)) is None


def test_linear_motion_blur_acts_along_its_direction_only():
    period = 8.0
    along, across = stripes(axis=1, period=period), stripes(axis=0, period=period)
    blurred_along = D.motion_blur(along, 8.0, 0.0)  # horizontal path, one full period
    blurred_across = D.motion_blur(across, 8.0, 0.0)
    ratio_along = amplitude(blurred_along, 1, period) / amplitude(along, 1, period)
    ratio_across = amplitude(blurred_across, 0, period) / amplitude(across, 0, period)
    assert ratio_along < 0.1
    assert ratio_across > 0.85  # only the minimal drawing Gaussian touches it
    for src, out in ((along, blurred_along), (across, blurred_across)):
        assert abs(out.mean() - src.mean()) < 2e-3
    # Vertical path: the roles swap.
    assert amplitude(D.motion_blur(across, 8.0, 90.0), 0, period) / amplitude(across, 0, period) < 0.1


def test_diagonal_motion_blur_reduces_gradients_along_the_diagonal():
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.random((80, 80, 3)).astype(np.float32), (0, 0), 1.0)
    out = D.motion_blur(img, 6.0, 45.0)  # up-right in image coordinates
    inner = (slice(10, -10), slice(10, -10))

    def energy(x, dx, dy):
        return float(((np.roll(x, (-dy, -dx), axis=(0, 1)) - x)[inner] ** 2).mean())

    along = energy(out, 1, -1) / energy(img, 1, -1)
    across = energy(out, 1, 1) / energy(img, 1, 1)
    assert along < 0.5 * across
    assert abs(out.mean() - img.mean()) < 2e-3


def test_optics_blur_preserves_mean_and_removes_fine_detail_isotropically():
    for axis in (0, 1):
        fine, coarse = stripes(axis, 4.0), stripes(axis, 32.0)
        for psf, size in (("gaussian", 1.5), ("defocus", 2.0)):
            a_fine = amplitude(D.optics_blur(fine, psf, size), axis, 4.0) / amplitude(fine, axis, 4.0)
            a_coarse = amplitude(D.optics_blur(coarse, psf, size), axis, 32.0) / amplitude(coarse, axis, 32.0)
            assert a_fine < 0.35 and a_coarse > 0.9
            inner = (slice(8, -8), slice(8, -8))
            assert abs(D.optics_blur(fine, psf, size)[inner].mean() - fine[inner].mean()) < 1e-3
    img = stripes(1, 6.0)
    assert D.optics_blur(img, "gaussian", 0.0) is img


def test_blur_frame_split_equals_the_combined_kernel():
    img = D.to_float(textured(3, (40, 96)))
    p = D.DegradationParams(
        psf="gaussian", psf_size=0.7, motion_kind="linear",
        motion_length=(1.5,) * 5, motion_angle=(20.0,) * 5,
    )
    fast = D.blur_frame(img, p, 0, 2, np.random.default_rng(0))
    full = D.apply_kernel(img, D.frame_kernel(p, 0, 2, np.random.default_rng(0)))
    assert np.abs(fast - full)[6:-6, 6:-6].max() < 0.01


# ------------------------------------------------------------------------------------------------
# geometry and sampling


def test_turbulence_amplitude_zero_is_identity():
    img = D.to_float(textured(1))
    rng = np.random.default_rng(0)
    assert D.turbulence_warp(img, 0.0, 5.0, rng) is img
    np.testing.assert_array_equal(D.turbulence_field((10, 20), 0.0, 5.0, rng), 0.0)


def test_turbulence_displaces_by_the_requested_rms():
    h, w = 120, 200
    ramp_x = np.repeat(np.tile(np.arange(w, dtype=np.float32), (h, 1))[..., None], 3, axis=2)
    out = D.turbulence_warp(ramp_x, 0.8, 12.0, np.random.default_rng(3))
    # Bilinear sampling of a linear ramp is exact, so out - in is the x displacement itself.
    dx = (out - ramp_x)[10:-10, 10:-10, 0]
    assert 0.6 < np.sqrt((dx**2).mean()) < 1.0
    assert abs(dx.mean()) < 0.25
    # Smooth: neighbouring displacements are nearly equal.
    assert np.abs(np.diff(dx, axis=1)).mean() < 0.15


@pytest.mark.parametrize("size", [(48, 17), (41, 19), (56, 21), (13, 5)])
def test_area_downsample_gives_exact_size(size):
    img = D.to_float(textured(0, (84, 224)))
    out = D.area_downsample(img, size)
    assert out.shape == (size[1], size[0], 3)


def test_area_downsample_integer_factor_is_block_mean():
    img = D.to_float(textured(2, (34, 96)))
    out = D.area_downsample(img, (48, 17))
    expected = img.reshape(17, 2, 48, 2, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(out, expected, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# exposure and noise


def test_brightness_gamma_contrast_and_cast_do_what_they_say():
    x = np.random.default_rng(0).uniform(0.1, 0.9, (20, 30, 3)).astype(np.float32)
    np.testing.assert_allclose(D.adjust_brightness(x, 0.5), x * 0.5, rtol=1e-6)
    np.testing.assert_allclose(D.adjust_gamma(x, 2.2), x**2.2, rtol=1e-4, atol=1e-6)
    assert D.adjust_gamma(x, 0.7).mean() > x.mean() > D.adjust_gamma(x, 1.4).mean()
    c = D.adjust_contrast(x, 0.5)
    assert abs(c.mean() - x.mean()) < 1e-5
    assert abs(c.std() - 0.5 * x.std()) < 1e-4
    cast = D.apply_color_cast(x, (1.1, 1.0, 0.8))
    np.testing.assert_allclose(cast / x, np.broadcast_to([1.1, 1.0, 0.8], x.shape), rtol=1e-5)
    full = D.apply_exposure(x, gain=1.3, gamma=0.8, contrast=1.0, color_cast=(1.0, 1.0, 1.0))
    np.testing.assert_allclose(full, np.clip(x * 1.3, 0, 1) ** 0.8, rtol=1e-4, atol=1e-6)
    assert full.max() <= 1.0 and full.min() >= 0.0
    # Works on a whole stacked track too.
    stack = np.stack([x, x])
    np.testing.assert_allclose(D.apply_exposure(stack, gain=0.7)[1], D.apply_exposure(x, gain=0.7), rtol=1e-6)


@pytest.mark.parametrize("corr", [0.0, 0.6])
def test_sensor_noise_variance_follows_a_y_plus_b(corr):
    a, b = 0.01, 0.0004
    levels = np.linspace(0.15, 0.85, 8)
    rng = np.random.default_rng(1)
    variances = []
    for y in levels:
        x = np.full((150, 150, 3), y, np.float32)
        n = D.sensor_noise(x, a, b, rng, channel_corr=corr) - x
        assert abs(n.mean()) < 0.003
        variances.append(n.var())
        if corr:
            r = np.corrcoef(n[..., 0].ravel(), n[..., 1].ravel())[0, 1]
            assert abs(r - corr**2) < 0.05
    slope, intercept = np.polyfit(levels, variances, 1)
    assert abs(slope - a) < 0.06 * a
    assert abs(intercept - b) < 0.3 * b + 2e-5
    assert D.sensor_noise(np.zeros((4, 4, 3), np.float32), 0.0, 0.0, rng) is not None


def test_noise_is_deterministic_per_rng():
    x = np.full((20, 40, 3), 0.5, np.float32)
    a = D.sensor_noise(x, 0.01, 0.001, np.random.default_rng(5), 0.5)
    b = D.sensor_noise(x, 0.01, 0.001, np.random.default_rng(5), 0.5)
    c = D.sensor_noise(x, 0.01, 0.001, np.random.default_rng(6), 0.5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


# ------------------------------------------------------------------------------------------------
# codecs


def test_jpeg_lower_quality_means_more_error():
    img = textured(4)
    errs = {}
    for q in (10, 30, 50, 90):
        out = D.jpeg_roundtrip(img, q)
        assert out.shape == img.shape and out.dtype == np.uint8
        errs[q] = np.abs(out.astype(float) - img).mean()
    assert errs[10] > errs[30] > errs[50] > errs[90]
    shifted = D.jpeg_roundtrip(img, 30, offset=(5, 11))
    assert shifted.shape == img.shape
    assert not np.array_equal(shifted, D.jpeg_roundtrip(img, 30))  # block grid moved


def test_jpeg_keeps_rgb_order():
    img = np.zeros((16, 32, 3), np.uint8)
    img[..., 0] = 200  # pure red
    out = D.jpeg_roundtrip(img, 90)
    assert out[..., 0].mean() > 150 and out[..., 2].mean() < 50


@H264
def test_h264_shapes_dtype_and_fidelity():
    frames = [luma_textured(s, (17, 47)) for s in range(5)]
    out = D.h264_roundtrip(frames, qp=10, offsets=[(3, 5)] * 5)
    assert len(out) == 5
    for o, f in zip(out, frames):
        assert o.shape == f.shape and o.dtype == np.uint8 and o.flags["C_CONTIGUOUS"]
        assert np.abs(o.astype(float) - f).mean() < 4.0
    err = {
        qp: np.mean([np.abs(o.astype(float) - f).mean() for o, f in zip(D.h264_roundtrip(frames, qp), frames)])
        for qp in (20, 40)
    }
    assert err[40] > err[20] + 3


@H264
def test_h264_variable_sizes_and_large_frames():
    frames = [textured(s, (17 + s, 47 - s)) for s in range(5)] + [textured(9, (40, 90))]
    out = D.h264_roundtrip(frames, qp=24, offsets=[(15, 15)] * 6)
    assert [o.shape for o in out] == [f.shape for f in frames]


@H264
def test_h264_is_deterministic_whatever_came_before():
    frames = [textured(s, (18, 50)) for s in range(5)]
    first = D.h264_roundtrip(frames, 33, [(2, 7)] * 5)
    D.h264_roundtrip([textured(20 + s, (18, 50)) for s in range(5)], 33, [(9, 1)] * 5)
    again = D.h264_roundtrip(frames, 33, [(2, 7)] * 5)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)


def test_h264_falls_back_to_jpeg_with_a_warning(monkeypatch):
    monkeypatch.setattr(D, "H264_AVAILABLE", False)
    monkeypatch.setattr(D, "_warned_no_h264", False)
    frames = [textured(s) for s in range(5)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = D.h264_roundtrip(frames, 30)
    assert any("libx264" in str(w.message) for w in caught)
    assert [o.shape for o in out] == [f.shape for f in frames]


# ------------------------------------------------------------------------------------------------
# parameters and the whole chain


def test_params_validation():
    with pytest.raises(ValueError):
        D.DegradationParams(codec="mpeg2")
    with pytest.raises(ValueError):
        D.DegradationParams(motion_kind="linear")
    with pytest.raises(ValueError):
        D.DegradationParams(motion_length=(1.0,), motion_angle=())
    with pytest.raises(ValueError):
        D.DegradationParams(jpeg_quality=0)
    with pytest.raises(ValueError):
        D.sample_degradation(np.random.default_rng(0), "brutal")


def test_sampling_is_deterministic_and_presets_order_by_difficulty():
    a = D.sample_degradation(np.random.default_rng(3), "mix")
    b = D.sample_degradation(np.random.default_rng(3), "mix")
    assert a == b
    stats = {}
    for preset in D.PRESET_NAMES:
        ps = [D.sample_degradation(np.random.default_rng(s), preset) for s in range(300)]
        assert all(p.preset == preset for p in ps)
        assert all(len(p.motion_length) in (0, 5) for p in ps)
        stats[preset] = (
            np.mean([p.psf_size for p in ps]),
            np.mean([np.mean(p.motion_length) if p.motion_length else 0.0 for p in ps]),
            np.mean([p.jpeg_quality for p in ps if p.codec == "jpeg"]),
            np.mean([p.h264_qp for p in ps]),
            np.mean([p.noise_a for p in ps]),
        )
    e, m, h = stats["easy"], stats["medium"], stats["hard"]
    assert e[0] < m[0] < h[0] and e[1] < m[1] < h[1] and e[3] < m[3] < h[3] and e[4] < m[4] < h[4]
    assert e[2] > m[2] > h[2]
    mixed = {D.sample_degradation(np.random.default_rng(s), "mix").preset for s in range(60)}
    assert mixed == set(D.PRESET_NAMES)
    forced = D.sample_degradation(np.random.default_rng(0), "hard", codec="jpeg")
    assert forced.codec == "jpeg" and 10 <= forced.jpeg_quality <= 50


def test_jpeg_quality_covers_the_range_of_the_data_from_10_to_50():
    qualities = [p.jpeg_quality for preset in ("medium", "hard") for s in range(400)
                 for p in [D.sample_degradation(np.random.default_rng(s), preset, codec="jpeg")]]
    assert min(qualities) <= 11 and max(qualities) >= 50
    hard = [D.sample_degradation(np.random.default_rng(s), "hard", codec="jpeg").jpeg_quality for s in range(400)]
    assert 10 <= min(hard) and max(hard) <= 40


def test_motion_is_correlated_over_the_track():
    for s in range(50):
        p = D.sample_degradation(np.random.default_rng(s), "hard")
        if p.motion_kind != "none":
            lengths, angles = np.array(p.motion_length), np.array(p.motion_angle)
            assert lengths.max() / lengths.min() < 3.0
            assert np.ptp(angles) < 60.0


def _fine_track(seed: int = 0, factor: int = 2):
    t = C.sample_trajectory(np.random.default_rng(seed), (SCENE_W, SCENE_H), PLATE)
    scene = smooth_scene(seed)
    return t, scene, C.render_frames(scene, t, supersample=factor, downsample=False)


def test_clean_params_reduce_to_plain_area_downsampling():
    t, scene, fine = _fine_track(1)
    p = D.DegradationParams()  # no blur, no noise, no codec, neutral exposure
    out = D.degrade_track(fine, p, np.random.default_rng(0), factor=2)
    for o, f, (w, h) in zip(out, fine, t.sizes):
        ref = cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA)
        assert o.shape == (h, w, 3) and o.dtype == np.uint8
        assert np.abs(o.astype(int) - ref).max() <= 1


@pytest.mark.parametrize("codec", ["none", "jpeg", pytest.param("h264", marks=H264), pytest.param("h264+jpeg", marks=H264)])
def test_degrade_track_shapes_and_determinism(codec):
    t, scene, fine = _fine_track(2)
    p = D.sample_degradation(np.random.default_rng(7), "hard", codec=codec)
    a = D.degrade_track(fine, p, np.random.default_rng(11), factor=2)
    b = D.degrade_track(fine, p, np.random.default_rng(11), factor=2)
    c = D.degrade_track(fine, p, np.random.default_rng(12), factor=2)
    assert len(a) == 5
    for x, y, (w, h) in zip(a, b, t.sizes):
        assert x.shape == (h, w, 3) and x.dtype == np.uint8
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, z) for x, z in zip(a, c))


def test_degrade_track_respects_lr_sizes_and_checks_factor():
    _, _, fine = _fine_track(3)
    p = D.sample_degradation(np.random.default_rng(1), "medium", codec="none")
    sizes = [(40, 15)] * 5
    out = D.degrade_track(fine, p, np.random.default_rng(0), factor=2, lr_sizes=sizes)
    assert [o.shape[:2] for o in out] == [(15, 40)] * 5
    with pytest.raises(ValueError):
        D.degrade_track([f[:-1] for f in fine], p, np.random.default_rng(0), factor=2)


def test_frames_of_different_sizes_share_the_tracks_tone_curve():
    # The contrast pivot is the track's mean whatever the frame sizes (CameraParams.variable_size):
    # a frame's tone curve must not depend on whether its neighbours have its size.
    a = np.full((40, 96, 3), 60, np.uint8)
    a[10:30, 20:70] = 200
    same_size = np.full((40, 96, 3), 160, np.uint8)
    other_size = np.full((48, 80, 3), 160, np.uint8)  # as many pixels, the same mean: the same track mean
    p = D.DegradationParams(contrast=1.3)
    stacked = D.degrade_track([a, same_size], p, np.random.default_rng(0))
    mixed = D.degrade_track([a, other_size], p, np.random.default_rng(0))
    np.testing.assert_array_equal(mixed[0], stacked[0])
    noisy = D.DegradationParams(contrast=1.3, noise_a=1e-3, noise_b=1e-4, sharpen_amount=1.0)
    out = D.degrade_track([a, other_size, a], noisy, np.random.default_rng(0))
    assert [f.shape for f in out] == [(20, 48, 3), (24, 40, 3), (20, 48, 3)]


def test_blur_keeps_the_camera_flow_valid():
    # Blur kernels are centred, so degraded frames still align through the camera's flow.
    t, scene, fine = _fine_track(4, factor=4)
    p = D.DegradationParams(
        psf="gaussian", psf_size=0.6, motion_kind="curved", motion_length=(1.5,) * 5,
        motion_angle=(10.0, 20.0, 30.0, 40.0, 50.0), motion_curvature=0.8,
    )
    out = D.degrade_track(fine, p, np.random.default_rng(0), factor=4)
    ref = t.reference
    for k in (0, 4):
        flow = C.flow_to_reference(t, k)
        rebuilt = C.warp_with_flow(out[ref], flow).astype(float)
        valid = C.flow_valid_mask(flow, t.sizes[ref], border=2.0)
        valid[:3], valid[-3:], valid[:, :3], valid[:, -3:] = False, False, False, False
        assert np.abs(rebuilt - out[k])[valid].mean() < 2.5


def test_make_lr_track_end_to_end():
    rng = np.random.default_rng(0)
    t = C.sample_trajectory(rng, (SCENE_W, SCENE_H), PLATE)
    p = D.sample_degradation(rng, "mix")
    frames = D.make_lr_track(text_scene(), t, p, rng)
    assert [f.shape for f in frames] == [(h, w, 3) for w, h in t.sizes]
    assert all(f.dtype == np.uint8 for f in frames)


# ---------------------------------------------------------------------------------------------
# flash/IR look


def _plate_scene(h: int = 40, w: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Float RGB frame: a light grey plate with dark bars on a mid-coloured surround, and its
    corners (pixel-centre coordinates)."""
    img = np.empty((h, w, 3), np.float32)
    img[:] = (0.45, 0.35, 0.25)
    img[10:30, 10:90] = (0.75, 0.75, 0.76)
    img[14:26, 20:80:8] = (0.1, 0.1, 0.1)
    corners = np.array([[9.5, 9.5], [89.5, 9.5], [89.5, 29.5], [9.5, 29.5]])
    return img, corners


def _luma(x: np.ndarray) -> np.ndarray:
    return x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114


def test_plate_mask_covers_the_plate_only():
    _, corners = _plate_scene()
    m = D.plate_mask((100, 40), corners)
    assert m.dtype == np.float32 and m.shape == (40, 100)
    assert m[12:28, 12:88].min() > 0.99 and m[:8].max() < 0.01 and m[:, :8].max() < 0.01
    assert abs(m.sum() - 80 * 20) < 80  # area of the quad, anti-aliased rim


def test_flash_look_raises_contrast_and_lowers_saturation():
    img, corners = _plate_scene()
    mask = D.plate_mask((img.shape[1], img.shape[0]), corners)
    day = D.apply_exposure(img.copy())
    lit = D.apply_surround_gain(img, mask, 0.25)
    flash = D.apply_exposure(lit, gain=1.25, contrast=1.2, saturation=0.3, black_level=0.08, gamma=1.0)
    y_day, y_flash = _luma(day), _luma(flash)
    # Plate brighter, surround darker, overall contrast up.
    assert y_flash[12:28, 12:18].mean() > y_day[12:28, 12:18].mean() + 0.1
    assert y_flash[:6].mean() < 0.5 * y_day[:6].mean()
    spread = lambda y: np.percentile(y, 95) - np.percentile(y, 5)
    assert spread(y_flash) > spread(y_day) + 0.2
    sat = lambda x: (x.max(-1) - x.min(-1)).mean()
    assert sat(flash) < 0.5 * sat(day)
    assert flash.min() >= 0 and flash.max() <= 1


def test_saturation_and_black_level_helpers():
    x = np.random.default_rng(0).random((2, 8, 9, 3)).astype(np.float32)
    grey = D.adjust_saturation(x, 0.0)
    assert grey.shape == x.shape and np.abs(grey - grey[..., :1]).max() < 1e-5
    np.testing.assert_allclose(D.adjust_saturation(x, 1.0), x)
    bl = D.apply_black_level(x, 0.1)
    np.testing.assert_allclose(bl, (x - 0.1) / 0.9, atol=1e-6)


def test_sharpen_steepens_edges_and_keeps_mean_chroma_and_flat_areas():
    # A soft vertical edge in a coloured image.
    ramp = np.clip((np.arange(24, dtype=np.float32) - 10) / 4, 0, 1)
    grey = np.tile(ramp, (12, 1))
    x = np.stack([0.2 + 0.6 * grey, 0.1 + 0.5 * grey, 0.3 + 0.3 * grey], -1).astype(np.float32)
    y = D.sharpen(x, 1.0, 1.0)
    assert y.shape == x.shape and y.dtype == np.float32
    # Steeper edge, with the overshoot (halo) a sharpening ISP leaves on both sides.
    assert np.abs(np.diff(_luma(y), axis=1)).max() > 1.3 * np.abs(np.diff(_luma(x), axis=1)).max()
    assert _luma(y)[:, 8:10].min() < _luma(x)[:, 8:10].min() - 0.005
    assert _luma(y)[:, 14:16].max() > _luma(x)[:, 14:16].max() + 0.005
    # Luma only: every channel moves by the same amount, so R-G and B-G stay put.
    np.testing.assert_allclose(y[..., 0] - y[..., 1], x[..., 0] - x[..., 1], atol=1e-5)
    np.testing.assert_allclose(y[..., 2] - y[..., 1], x[..., 2] - x[..., 1], atol=1e-5)
    # Far from the edge nothing changes, and the mean stays (the detail has zero mean).
    np.testing.assert_allclose(y[:, :4], x[:, :4], atol=1e-4)
    np.testing.assert_allclose(y[:, -4:], x[:, -4:], atol=1e-4)
    assert abs(float(y.mean() - x.mean())) < 2e-3
    # Amount 0 is the identity; a stack of frames is sharpened frame by frame.
    assert D.sharpen(x, 0.0, 1.0) is x
    stack = np.stack([x, x[:, ::-1].copy()])
    out = D.sharpen(stack, 1.0, 1.0)
    np.testing.assert_allclose(out[0], y, atol=1e-6)
    np.testing.assert_allclose(out[1], D.sharpen(x[:, ::-1].copy(), 1.0, 1.0), atol=1e-6)


def test_sharpen_amplifies_noise():
    rng = np.random.default_rng(0)
    noisy = D.sensor_noise(np.full((40, 40, 3), 0.5, np.float32), 0.0, 1e-3, rng)
    before, after = noisy.std(), D.sharpen(noisy, 1.2, 0.8).std()
    assert after > 1.3 * before


def test_sharpening_is_drawn_per_track_and_applied_in_the_chain():
    params = [D.sample_degradation(np.random.default_rng(s), "medium") for s in range(300)]
    r = D.PRESETS["medium"]
    on = [p for p in params if p.sharpen_amount > 0]
    assert abs(len(on) / len(params) - r.sharpen_prob) < 0.08
    assert all(r.sharpen_amount[0] <= p.sharpen_amount <= r.sharpen_amount[1] for p in on)
    assert all(r.sharpen_sigma[0] <= p.sharpen_sigma <= r.sharpen_sigma[1] for p in on)
    with pytest.raises(ValueError):
        D.DegradationParams(sharpen_amount=-0.1)
    with pytest.raises(ValueError):
        D.DegradationParams(sharpen_amount=1.0, sharpen_sigma=0.0)
    # In degrade_track: the same draws with sharpening on give steeper edges than with it off.
    t, scene, fine = _fine_track(4)
    plain = D.DegradationParams(psf_size=0.5)
    sharp = D.DegradationParams(psf_size=0.5, sharpen_amount=1.5, sharpen_sigma=1.0)
    a = D.degrade_track(fine, plain, np.random.default_rng(0), factor=2)
    b = D.degrade_track(fine, sharp, np.random.default_rng(0), factor=2)
    grad = lambda f: np.abs(np.diff(_luma(f.astype(np.float32) / 255), axis=1)).mean()
    assert sum(grad(y) for y in b) > 1.1 * sum(grad(x) for x in a)


@pytest.mark.parametrize("preset", D.PRESET_NAMES)
def test_preset_exposure_stays_in_documented_ranges(preset):
    r = D.PRESETS[preset]
    rng = np.random.default_rng(7)
    params = [D.sample_degradation(rng, preset) for _ in range(400)]
    flash = [p for p in params if p.flash]
    day = [p for p in params if not p.flash]
    share = len(flash) / len(params)
    assert abs(share - r.flash_prob) < 0.08
    for p in flash:
        assert r.flash_gain[0] <= p.gain <= r.flash_gain[1]
        assert r.flash_contrast[0] <= p.contrast <= r.flash_contrast[1]
        assert r.flash_surround_gain[0] <= p.surround_gain <= r.flash_surround_gain[1] < 1
        assert r.flash_saturation[0] <= p.saturation <= r.flash_saturation[1]
        assert r.flash_black_level[0] <= p.black_level <= r.flash_black_level[1]
        assert p.color_cast[2] >= p.color_cast[0] - 2 * r.color_cast  # cool tint
        assert not p.low_light
    for p in day:
        assert p.surround_gain == 1.0 and p.black_level == 0.0
        assert r.saturation[0] <= p.saturation <= r.saturation[1]
        # Mild casts only: no channel more than the preset's deviation (after renormalising).
        assert max(p.color_cast) - min(p.color_cast) <= 2 * r.color_cast / (1 - r.color_cast) + 1e-9
    # Dark tracks: none in easy, rare in medium, a minority in hard.
    dark = np.mean([p.low_light for p in params])
    assert dark <= {"easy": 0.0, "medium": 0.06, "hard": 0.12}[preset] + 0.03


def test_flash_track_has_bright_plate_and_dark_surround():
    from ksrnet.synth.dataset import generate_track

    spreads = {True: [], False: []}
    for i in range(24):
        t = generate_track(3, i, preset="medium", codec="jpeg")
        y = _luma(np.stack(t.lr).astype(np.float32) / 255)
        spreads[bool(np.percentile(y, 95) > 0.8 and np.percentile(y, 5) < 0.1)].append(i)
    # About half the tracks get the flash look: bright plates (near clip) with black surrounds.
    assert 4 <= len(spreads[True]) <= 22
