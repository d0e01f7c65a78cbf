"""Crop a frame again around its plate with a chosen margin.

The generator crops the way the LRLPR-26 crops look: the plate fills 80-95 % of the crop's width. A
detector with tight boxes, or an analyst cropping by hand, gives crops the recognizer never saw in
training. Stage V (shipped in sessions 17-18) read a hard track's frames cut to the plate's own box 7 points worse at
F=5, and with the plate's edge cut by 2 % of its width it read 44 % instead of 78 %, with four times
as many wrong readings at >= 0.9 (benchmarks/RESULTS.md, "Tight crops"). Training re-crops some
tracks this way (`DataConfig.recrop_prob`), `benchmarks/crop_margin.py` measures reading by margin,
and `pad_frame` (`ksrnet predict --pad-margin`) gives a tight crop back the margin the reader expects.

The margin is a fraction of the plate's width, added on every side (so the same number of pixels
above and below as left and right); a negative margin cuts into the plate.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

MIN_CROP_PX = 4  # a re-crop smaller than this on either side keeps the frame as it was


def plate_box_crop(frame: np.ndarray, quad: np.ndarray, margin: float) -> np.ndarray:
    """``frame`` cut to the bounding box of the plate ``quad`` (4 x 2, pixel x, y) grown by
    ``margin`` x the box's width on each side, clipped to the frame."""
    quad = np.asarray(quad, dtype=np.float64)
    if quad.shape != (4, 2) or not np.isfinite(quad).all():
        raise ValueError(f"quad must be 4 finite (x, y) corners, got shape {quad.shape}")
    (x0, y0), (x1, y1) = quad.min(axis=0), quad.max(axis=0)
    pad = margin * (x1 - x0)
    h, w = frame.shape[:2]
    xa, xb = max(0, int(np.floor(x0 - pad))), min(w, int(np.ceil(x1 + pad)))
    ya, yb = max(0, int(np.floor(y0 - pad))), min(h, int(np.ceil(y1 + pad)))
    if xb - xa < MIN_CROP_PX or yb - ya < MIN_CROP_PX:
        return frame
    return frame[ya:yb, xa:xb]


def frame_quads(track) -> list[np.ndarray] | None:
    """The plate corners of each LR frame of ``track``, in frame order, or None where any is unknown:
    a synthetic track's ``corners`` array (T, 4, 2), or an LRLPR-26 track's ``corners`` dict keyed by
    frame file name (Scenario B tracks have none)."""
    corners = getattr(track, "corners", None)
    if corners is None:
        return None
    if isinstance(corners, dict):
        names = getattr(track, "lr_names", None) or []
        if len(names) != len(track.lr) or any(n not in corners for n in names):
            return None
        return [np.asarray(corners[n]) for n in names]
    quads = list(np.asarray(corners))
    return quads if len(quads) == len(track.lr) else None


def recrop_frames(frames: Sequence[np.ndarray], quads: Sequence[np.ndarray], rng: np.random.Generator,
                  margin_range: Sequence[float]) -> list[np.ndarray]:
    """Each frame re-cropped around its plate with its own margin drawn uniformly from
    ``margin_range`` (a detector's box differs from frame to frame)."""
    lo, hi = margin_range
    return [plate_box_crop(f, q, float(rng.uniform(lo, hi))) for f, q in zip(frames, quads)]


def pad_frame(frame: np.ndarray, margin: float) -> np.ndarray:
    """``frame`` inside a border of its own edge pixels, ``margin`` x its width on every side (at
    least one pixel): what a reader that expects the plate inside a margin needs from a crop cut
    tight to the plate, or into it. ``margin`` 0 returns the frame itself."""
    if margin < 0:
        raise ValueError(f"pad margin must be >= 0, got {margin}")
    if margin == 0:
        return frame
    pad = max(1, int(round(margin * frame.shape[1])))
    return cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
