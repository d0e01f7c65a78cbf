"""Camera model: trajectories, exact flow, canonical rectification and anti-aliased rendering."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ksrnet.synth import camera as C

SCENE_W, SCENE_H = 480, 240
# A 200x65 px plate (Brazilian 400x130 mm aspect) in the middle of the scene, outer-edge corners.
PLATE = np.array([[139.5, 89.5], [339.5, 89.5], [339.5, 154.5], [139.5, 154.5]])


def smooth_scene(seed: int = 0) -> np.ndarray:
    """Colour texture of low-frequency sinusoids: periods of 40-160 scene px, i.e. several LR px,
    so box-averaging and bilinear resampling are both close to point sampling."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SCENE_H, 0:SCENE_W].astype(np.float64)
    img = np.zeros((SCENE_H, SCENE_W, 3))
    for c in range(3):
        for _ in range(5):
            period = rng.uniform(40, 160)
            theta = rng.uniform(0, np.pi)
            img[..., c] += np.sin(
                2 * np.pi / period * (np.cos(theta) * xx + np.sin(theta) * yy) + rng.uniform(0, 6.3)
            )
    img = (img - img.min()) / (img.max() - img.min()) * 200 + 25
    return img.astype(np.uint8)


def text_scene() -> np.ndarray:
    img = np.full((SCENE_H, SCENE_W, 3), (90, 60, 40), np.uint8)
    img[90:155, 140:340] = 235
    cv2.putText(img, "ABC1D23", (150, 145), cv2.FONT_HERSHEY_SIMPLEX, 1.6, (10, 10, 10), 6)
    return img


def traj(seed: int, **kw) -> C.Trajectory:
    params = C.CameraParams(**kw) if kw else C.CameraParams()
    return C.sample_trajectory(np.random.default_rng(seed), (SCENE_W, SCENE_H), PLATE, 5, params)


def interior(shape: tuple[int, int], border: int = 2) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[border:-border, border:-border] = True
    return m


# ------------------------------------------------------------------------------------------------


def test_reference_index_options():
    assert C.resolve_reference("middle", 5) == 2
    assert C.resolve_reference("first", 5) == 0
    assert C.resolve_reference("last", 5) == 4
    assert C.resolve_reference(-1, 5) == 4
    assert C.resolve_reference(3, 5) == 3
    assert C.resolve_reference("middle", 1) == 0
    for bad in (5, -6, "centre"):
        with pytest.raises(ValueError):
            C.resolve_reference(bad, 5)
    assert traj(0).reference == 2
    assert traj(0, reference="last").reference == 4


def test_params_validation():
    with pytest.raises(ValueError):
        C.CameraParams(crop_width=(56.0, 40.0))
    with pytest.raises(ValueError):
        C.CameraParams(plate_fill=(0.5, 1.5))
    with pytest.raises(ValueError):
        C.CameraParams(reference="centre")


def test_same_seed_same_trajectory_and_frames():
    a, b = traj(7), traj(7)
    np.testing.assert_array_equal(a.homographies, b.homographies)
    np.testing.assert_array_equal(a.corners, b.corners)
    assert a.sizes == b.sizes
    scene = text_scene()
    for fa, fb in zip(C.render_frames(scene, a), C.render_frames(scene, b)):
        np.testing.assert_array_equal(fa, fb)
    assert not np.array_equal(traj(8).homographies, a.homographies)


def test_corners_are_the_homography_images_of_the_scene_corners():
    t = traj(3)
    for k in range(t.num_frames):
        np.testing.assert_allclose(
            C.apply_homography(t.homographies[k], PLATE), t.corners[k], atol=1e-9
        )


@pytest.mark.parametrize("variable_size", [False, True])
def test_corners_inside_every_frame_with_margin(variable_size):
    margin = C.CameraParams().min_margin_px
    sizes_seen = set()
    for seed in range(150):
        t = traj(seed, variable_size=variable_size)
        assert t.num_frames == 5 and t.corners.shape == (5, 4, 2)
        for (w, h), quad in zip(t.sizes, t.corners):
            sizes_seen.add((w, h))
            assert quad[:, 0].min() >= margin - 0.5 - 1e-6
            assert quad[:, 0].max() <= w - 0.5 - margin + 1e-6
            assert quad[:, 1].min() >= margin - 0.5 - 1e-6
            assert quad[:, 1].max() <= h - 0.5 - margin + 1e-6
            # Corner order survives the view: TL is left of TR and above BL, etc.
            assert quad[0, 0] < quad[1, 0] and quad[3, 0] < quad[2, 0]
            assert quad[0, 1] < quad[3, 1] and quad[1, 1] < quad[2, 1]
        if not variable_size:
            assert len(set(t.sizes)) == 1
    assert len(sizes_seen) > 20


def test_sizes_and_plate_extent_like_lrlpr26():
    plate_w, plate_h, fills = [], [], []
    for seed in range(200):
        t = traj(seed)
        w, h = t.sizes[0]
        assert 36 <= w <= 56 and 16 <= h <= 21
        q = t.corners[t.reference]
        plate_w.append(0.5 * (q[1, 0] - q[0, 0] + q[2, 0] - q[3, 0]))
        plate_h.append(0.5 * (q[3, 1] - q[0, 1] + q[2, 1] - q[1, 1]))
        fills.append(np.ptp(q[:, 0]) / w)
    plate_w, plate_h = np.array(plate_w), np.array(plate_h)
    # Real LR plates are ~30-48 px wide and ~9-14 px tall inside 36-56 x 15-21 crops.
    assert 25 <= plate_w.min() and plate_w.max() <= 54
    assert 6 <= plate_h.min() and plate_h.max() <= 19
    assert 34 <= np.median(plate_w) <= 46
    assert 0.8 <= np.median(fills) <= 0.95
    # The plate fills its drawn 80-95 % of the crop width in every track: a plate too tall for the
    # drawn crop height makes the crop taller or narrower, never the plate smaller (up to rounding).
    assert np.all((np.array(fills) >= 0.79) & (np.array(fills) <= 0.96))


def test_plate_grows_when_approaching():
    t = traj(0, scale_growth=(0.04, 0.04), yaw_deg=(0.0, 0.0), pitch_deg=(0.0, 0.0), tilt_drift_deg=0.0)
    widths = [np.ptp(q[:, 0]) for q in t.corners]
    assert all(b > a for a, b in zip(widths, widths[1:]))


def test_flow_at_reference_is_zero_and_matches_homographies():
    t = traj(11)
    np.testing.assert_array_equal(C.flow_to_reference(t, t.reference), 0.0)
    f = C.flow_to_reference(t, 0)
    w, h = t.sizes[0]
    assert f.shape == (h, w, 2) and f.dtype == np.float32
    m = t.homographies[t.reference] @ np.linalg.inv(t.homographies[0])
    for x, y in [(0, 0), (w - 1, 0), (w // 2, h // 2), (3, h - 1)]:
        np.testing.assert_allclose(
            np.array([x, y]) + f[y, x], C.apply_homography(m, np.array([x, y], float)), atol=1e-4
        )


def test_forward_backward_flows_cancel():
    t = traj(5)
    fwd = C.flow_between(t, 0, t.reference)
    bwd = C.flow_between(t, t.reference, 0)
    # Backward flow sampled where the forward flow lands must undo it.
    back_at_target = C.warp_with_flow(bwd, fwd)
    valid = C.flow_valid_mask(fwd, t.sizes[t.reference], border=1.0)
    assert valid.mean() > 0.5
    err = np.abs(fwd + back_at_target)[valid]
    assert err.max() < 0.05


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reported_flow_maps_each_frame_onto_the_reference(seed):
    t = traj(seed)
    frames = C.render_frames(smooth_scene(seed), t, supersample=4)
    ref = t.reference
    for k in range(t.num_frames):
        if k == ref:
            continue
        # Convention 1: sampling the reference at x + flow_to_reference rebuilds frame k.
        flow = C.flow_to_reference(t, k)
        rebuilt = C.warp_with_flow(frames[ref], flow).astype(np.float64)
        valid = C.flow_valid_mask(flow, t.sizes[ref], border=1.0) & interior(flow.shape[:2])
        assert valid.mean() > 0.3
        target = frames[k].astype(np.float64)
        err = np.abs(rebuilt - target)[valid].mean()
        unwarped = np.abs(frames[ref].astype(np.float64) - target)[valid].mean()
        assert err < 2.5, (k, err)
        assert err < 0.25 * unwarped, (k, err, unwarped)
        # Convention 2: frame k resampled onto the reference grid with flow_between(ref, k).
        flow_rk = C.flow_between(t, ref, k)
        aligned = C.warp_with_flow(frames[k], flow_rk).astype(np.float64)
        valid_r = C.flow_valid_mask(flow_rk, t.sizes[k], border=1.0) & interior(flow_rk.shape[:2])
        err_r = np.abs(aligned - frames[ref].astype(np.float64))[valid_r].mean()
        assert err_r < 2.5, (k, err_r)


def test_flow_holds_with_variable_frame_sizes():
    t = None
    for seed in range(50):
        t = traj(seed, variable_size=True, scale_growth=(0.04, 0.06))
        if len(set(t.sizes)) > 1:
            break
    assert len(set(t.sizes)) > 1
    frames = C.render_frames(smooth_scene(4), t, supersample=4)
    k, ref = 0, t.reference
    flow = C.flow_to_reference(t, k)
    assert flow.shape[:2] == frames[k].shape[:2]
    rebuilt = C.warp_with_flow(frames[ref], flow).astype(np.float64)
    valid = C.flow_valid_mask(flow, t.sizes[ref], border=1.0) & interior(flow.shape[:2])
    assert np.abs(rebuilt - frames[k])[valid].mean() < 2.5


def test_render_matches_point_sampling_of_a_smooth_scene():
    # On a smooth scene the area-averaged render equals the scene at H_t^-1(pixel centre): this
    # pins the pixel-centre convention of render_frames to the homographies.
    scene = smooth_scene(9).astype(np.float32)
    t = traj(9)
    frames = C.render_frames(smooth_scene(9), t, supersample=4)
    for k in (0, t.reference):
        w, h = t.sizes[k]
        xs, ys = np.meshgrid(np.arange(w, dtype=float), np.arange(h, dtype=float))
        src = C.apply_homography(np.linalg.inv(t.homographies[k]), np.stack([xs, ys], -1))
        expected = cv2.remap(
            scene, src[..., 0].astype(np.float32), src[..., 1].astype(np.float32), cv2.INTER_LINEAR
        )
        assert np.abs(frames[k].astype(np.float32) - expected).mean() < 1.5


def test_supersample_factors_agree_and_fine_grid_sizes():
    scene = smooth_scene(2)
    t = traj(2)
    a = C.render_frames(scene, t, supersample=2)
    b = C.render_frames(scene, t, supersample=4)
    for fa, fb, (w, h) in zip(a, b, t.sizes):
        assert fa.shape == fb.shape == (h, w, 3)
        assert np.abs(fa.astype(float) - fb).mean() < 1.0
    fine = C.render_frames(scene, t, supersample=3, downsample=False)
    assert [f.shape[:2] for f in fine] == [(3 * h, 3 * w) for w, h in t.sizes]


def test_render_does_not_alias_fine_detail():
    # 1-px stripes, shrunk ~5x onto the LR grid: a point-sampled warp shows strong moire, a
    # properly filtered one a flat grey.
    stripes = np.zeros((SCENE_H, SCENE_W, 3), np.uint8)
    stripes[:, ::2] = 255
    t = traj(1)
    for frame in C.render_frames(stripes, t, supersample=2):
        inner = frame[2:-2, 2:-2].astype(float)
        assert abs(inner.mean() - 127.5) < 8
        assert inner.std() < 8
    naive = cv2.warpPerspective(stripes, t.homographies[0], t.sizes[0], flags=cv2.INTER_NEAREST)
    assert naive[2:-2, 2:-2].std() > 50  # the failure mode the test would catch


def test_canonical_homography_maps_plate_corners_to_canonical_rectangle():
    t = traj(6)
    size = (192, 64)
    expected = C.canonical_corners(size)
    np.testing.assert_allclose(expected, [[-0.5, -0.5], [191.5, -0.5], [191.5, 63.5], [-0.5, 63.5]])
    for k in range(t.num_frames):
        hc = C.canonical_homography(t, k, size)
        np.testing.assert_allclose(C.apply_homography(hc, t.corners[k]), expected, atol=1e-6)


def test_canonical_rectification_of_a_frame_matches_the_scene_plate():
    scene = smooth_scene(3)
    t = traj(3)
    size = (96, 32)
    frames = C.render_frames(scene, t, supersample=4)
    plate = cv2.warpPerspective(
        scene, C.homography_from_points(PLATE, C.canonical_corners(size)), size,
        flags=cv2.INTER_AREA,
    ).astype(float)
    for k in (0, t.reference, 4):
        rect = cv2.warpPerspective(frames[k], C.canonical_homography(t, k, size), size).astype(float)
        assert np.abs(rect - plate)[2:-2, 2:-2].mean() < 3.0
