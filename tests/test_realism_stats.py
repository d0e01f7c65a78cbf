"""benchmarks/realism.py frame statistics: known values on constant, stepped and blurred frames."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

# benchmarks/ is not a package: load the script from its path.
_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "realism.py"
_spec = importlib.util.spec_from_file_location("realism", _PATH)
realism = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(realism)


def bars(h: int = 20, w: int = 48) -> np.ndarray:
    """Black vertical bars, 2 px wide every 4 px, on white: crisp edges, full contrast."""
    img = np.full((h, w, 3), 255, np.uint8)
    img[:, ::4] = 0
    img[:, 1::4] = 0
    return img


def test_constant_grey_frame_has_no_contrast_edges_or_colour():
    st = realism.frame_stats(np.full((19, 45, 3), 128, np.uint8))
    assert st["width"] == 45 and st["height"] == 19 and st["aspect"] == pytest.approx(45 / 19)
    assert st["mean_luma"] == pytest.approx(128)
    for key in ("luma_contrast", "rms_contrast", "sharpness", "edge_sharpness", "hf_ratio", "saturation",
                "clipped"):
        assert st[key] == 0.0, key


def plate_like(h: int = 20, w: int = 48) -> np.ndarray:
    """Black surround on the left, white plate with 1 px dark strokes every 4 px."""
    img = np.full((h, w, 3), 255, np.uint8)
    img[:, :12] = 0
    img[4:16, 16::4] = 0
    return img


def test_blur_lowers_sharpness_and_high_frequency_share():
    sharp = plate_like()
    blurred = cv2.GaussianBlur(sharp, (0, 0), 1.0)
    s, b = realism.frame_stats(sharp), realism.frame_stats(blurred)
    assert b["luma_contrast"] == s["luma_contrast"]  # the surround edge keeps the contrast
    for key in ("sharpness", "edge_sharpness", "hf_ratio"):
        assert b[key] < 0.7 * s[key], key


def test_blur_of_an_isolated_wide_edge_leaves_sharpness_but_not_edge_sharpness():
    # The documented limit of `sharpness`: it is total variation over contrast, which blur keeps
    # for an edge with nothing near it; `edge_sharpness` sees the edge widen.
    img = np.full((20, 48, 3), 255, np.uint8)
    img[:, :24] = 0
    s, b = realism.frame_stats(img), realism.frame_stats(cv2.GaussianBlur(img, (0, 0), 1.0))
    assert b["sharpness"] == pytest.approx(s["sharpness"], rel=0.02)
    assert b["edge_sharpness"] < 0.6 * s["edge_sharpness"]


def test_sharpness_does_not_follow_contrast():
    full = bars().astype(np.float64)
    faint = (128 + (full - 128) * 0.3).round().astype(np.uint8)
    s, f = realism.frame_stats(full.astype(np.uint8)), realism.frame_stats(faint)
    assert f["luma_contrast"] < 0.35 * s["luma_contrast"]
    assert f["sharpness"] == pytest.approx(s["sharpness"], rel=0.05)
    assert f["edge_sharpness"] == pytest.approx(s["edge_sharpness"], rel=0.05)


def test_step_edge_values():
    img = np.zeros((10, 20, 3), np.uint8)
    img[:, 10:] = 200
    st = realism.frame_stats(img)
    assert st["luma_contrast"] == pytest.approx(200)
    # The central difference puts half the step on each of the two columns beside it, so the total
    # variation per row is the contrast, over 18 interior columns.
    assert st["sharpness"] == pytest.approx(1 / 18)
    assert st["edge_sharpness"] == pytest.approx(0.5)


def test_edge_sharpness_is_one_over_ramp_width():
    ramp = np.clip((np.arange(40) - 18) * 40, 0, 160)  # a 4 px ramp from 0 to 160
    img = np.repeat(np.repeat(ramp[None, :, None], 12, axis=0), 3, axis=2).astype(np.uint8)
    assert realism.frame_stats(img)["edge_sharpness"] == pytest.approx(0.25, rel=0.15)


def test_clipping_and_saturation_on_known_pixels():
    img = np.full((4, 4, 3), 128, np.uint8)
    img[0] = 0          # a row of black: clipped, saturation 0 by definition
    img[1] = (255, 0, 0)  # a row of pure red: saturation 1, Y = 76, not clipped
    st = realism.frame_stats(img)
    assert st["clipped"] == pytest.approx(0.25)
    assert st["saturation"] == pytest.approx(0.25)


def test_rejects_non_rgb_input():
    with pytest.raises(ValueError):
        realism.frame_stats(np.zeros((20, 40), np.uint8))


def test_load_real_keeps_lr_frames_only(tmp_path):
    names = ["ScenA_Brazilian_track_00001_lr-005_AVL5215_36x20.png",
             "ScenA_Brazilian_track_00001_hr-005_AVL5215_55x27.png",
             "ScenA_Brazilian_track_00002_hr-001_AZU7127_81x43_greenPolygonOverlay.png",
             "ScenUnknown_Mercosur_trackUnknown_lr_MLT3F56_45x19.png"]
    for n in names:
        Image.fromarray(np.zeros((5, 9, 3), np.uint8)).save(tmp_path / n)
    labels = [label for label, _ in realism.load_real(tmp_path)]
    assert labels == ["real A/Brazilian/00001/lr-005 AVL5215", "real Unknown/Mercosur/Unknown MLT3F56"]
