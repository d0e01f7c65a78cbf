"""Per-track camera geometry: the homography W_t of each frame, its exact flow, and rendering.

A track is a few consecutive crops of the same plate taken from a surveillance video. Each frame t
gets a homography ``H_t`` from scene pixels (the renderer's plate-in-context image) to the pixels
of LR crop t. It composes, right to left:

1. ``N``: scene pixels -> plate-centred units (plate width 1), which rectifies the scene plate;
2. the view of the plate: yaw/pitch perspective (pinhole at a sampled distance), in-plane rotation,
   scale growth as the vehicle approaches, optional rolling-shutter skew;
3. the plate's position in the full video frame: constant velocity plus a little vibration, in
   continuous LR pixels, so every frame has its own sub-pixel phase;
4. the detector's crop: an *integer* translation (a crop out of a video frame is never resampled)
   centred on the plate's box plus jitter, clamped so all four corners keep a margin.

Conventions (the same everywhere in this module):

* Pixel centres sit at integer coordinates (OpenCV's convention): pixel ``(x, y)`` covers
  ``[x - 0.5, x + 0.5] x [y - 0.5, y + 0.5]``; an image ``w`` wide spans ``[-0.5, w - 0.5]``.
* Sizes are ``(width, height)``, as in OpenCV's ``dsize``; arrays are ``(height, width, ...)``.
* Corners are ``(4, 2)`` arrays of ``(x, y)`` in the order TL, TR, BR, BL and mark the plate's
  outer boundary. So the corners of a canonical plate image ``w x h`` that the plate fills are
  ``(-0.5, -0.5), (w - 0.5, -0.5), (w - 0.5, h - 0.5), (-0.5, h - 0.5)``.
* Flow ``flow_between(traj, src, dst)`` lives on the pixel grid of frame ``src``:
  ``(x + flow[y, x, 0], y + flow[y, x, 1])`` is where the scene point seen at ``(x, y)`` in frame
  ``src`` lands in frame ``dst``. ``warp_with_flow(image_dst, flow)`` samples ``image_dst`` there
  (backward warping), so it rebuilds frame ``src`` from frame ``dst``:

  - ``warp_with_flow(frames[ref], flow_to_reference(traj, t)) ~ frames[t]`` and
  - ``warp_with_flow(frames[t], flow_between(traj, ref, t)) ~ frames[ref]`` (frame t aligned onto
    the reference grid, which is what a multi-frame model fusing at the reference needs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import cv2
import numpy as np

from ksrnet.synth import npfast
from ksrnet.synth.rand import uniform

Range = tuple[float, float]


@dataclass(frozen=True)
class CameraParams:
    """Ranges the per-track geometry is drawn from. Lengths are in LR pixels unless named otherwise.

    Defaults follow the LRLPR-26 LR crops: 36-56 px wide, 16-21 px tall, the plate filling
    80-95 % of the width and about 50-80 % of the height (a detector box has more slack vertically).
    """

    crop_width: Range = (36.0, 56.0)
    crop_height: Range = (16.0, 21.0)
    # Width of the plate's bounding box over the crop width, in the reference frame.
    plate_fill: Range = (0.80, 0.95)
    # Every corner stays at least this far inside the crop's outer edge, in every frame.
    min_margin_px: float = 1.0
    # Relative growth of the plate per frame; negative values model a receding vehicle.
    scale_growth: Range = (-0.01, 0.05)
    # Plate velocity in the full video frame (x range, y range), LR px per frame. The crop follows
    # the plate, so this only sets sub-pixel phases (crops are integer) and the skew sign.
    velocity_px: tuple[Range, Range] = ((-3.0, 3.0), (0.0, 4.0))
    # Irregular motion (suspension, road) on top of the constant velocity: std, LR px.
    position_jitter_px: float = 0.3
    rotation_deg: Range = (-4.0, 4.0)
    rotation_jitter_deg: float = 0.4
    yaw_deg: Range = (-25.0, 25.0)
    # Positive pitch: camera above the plate looking down (the usual pole-mounted camera), so the
    # plate is foreshortened vertically and its top edge is nearer; real LR plates look ~4:1.
    pitch_deg: Range = (0.0, 30.0)
    # The viewing angle changes as the vehicle approaches: max per-frame drift of yaw and pitch.
    tilt_drift_deg: float = 1.0
    # Pinhole distance in plate widths; nearer means stronger keystone for the same angles.
    camera_distance: Range = (3.0, 10.0)
    rolling_shutter_prob: float = 0.2
    # Horizontal shift per row (px/px) when rolling shutter is on; its sign follows the x velocity.
    rolling_shutter_skew: Range = (0.005, 0.03)
    # Std of the detector box centre per frame, as a fraction of the crop size (x, y).
    detector_jitter: tuple[float, float] = (0.04, 0.08)
    # False: one crop size per track. True: per-frame sizes follow the plate's box (like real data).
    variable_size: bool = False
    size_jitter_px: float = 1.0
    # Reference frame for flow/fusion: "middle" (index T // 2, i.e. 2 of 5), "first", "last", or
    # an explicit index (negative counts from the end).
    reference: str | int = "middle"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "velocity_px" or f.name == "detector_jitter":
                continue
            if isinstance(value, tuple) and not value[0] <= value[1]:
                raise ValueError(f"CameraParams.{f.name}: range {value} has low > high")
        if self.crop_width[0] < 8 or self.crop_height[0] < 6:
            raise ValueError("CameraParams: crops under 8x6 px leave no room for a plate")
        if not 0 < self.plate_fill[0] <= self.plate_fill[1] <= 1:
            raise ValueError(f"CameraParams.plate_fill must lie in (0, 1], got {self.plate_fill}")
        if self.min_margin_px < 0:
            raise ValueError("CameraParams.min_margin_px must be >= 0")
        if self.camera_distance[0] <= 1:
            raise ValueError("CameraParams.camera_distance must exceed 1 plate width")
        if not 0 <= self.rolling_shutter_prob <= 1:
            raise ValueError("CameraParams.rolling_shutter_prob must be a probability")
        if isinstance(self.reference, str) and self.reference not in ("middle", "first", "last"):
            raise ValueError(f"CameraParams.reference: unknown {self.reference!r}")


@dataclass(frozen=True, eq=False)  # array fields: == would be ambiguous
class Trajectory:
    """Geometry of one track. ``homographies[t]`` maps scene pixels to LR frame t pixels."""

    homographies: np.ndarray  # (T, 3, 3) float64
    sizes: tuple[tuple[int, int], ...]  # (width, height) of each LR frame
    corners: np.ndarray  # (T, 4, 2) plate corners in each LR frame, TL TR BR BL
    reference: int
    scene_size: tuple[int, int]  # (width, height)
    scene_corners: np.ndarray  # (4, 2)

    @property
    def num_frames(self) -> int:
        return len(self.sizes)


def resolve_reference(reference: str | int, num_frames: int) -> int:
    """Index of the reference frame: "middle" is ``num_frames // 2`` (2 for 5 frames)."""
    if num_frames < 1:
        raise ValueError("a track needs at least one frame")
    if reference == "middle":
        return num_frames // 2
    if reference == "first":
        return 0
    if reference == "last":
        return num_frames - 1
    if isinstance(reference, (int, np.integer)) and not isinstance(reference, bool):
        index = int(reference) + (num_frames if reference < 0 else 0)
        if 0 <= index < num_frames:
            return index
    raise ValueError(f"reference {reference!r} is not valid for {num_frames} frames")


def homography_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Exact 4-point homography in float64 (cv2.getPerspectiveTransform takes float32 points)."""
    src = np.asarray(src, dtype=np.float64).reshape(4, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(4, 2)
    # Rows 2i and 2i + 1 are (x, y, 1, 0, 0, 0, -u x, -u y) and (0, 0, 0, x, y, 1, -v x, -v y),
    # filled for all four points at once.
    a = np.zeros((4, 2, 8))
    a[:, 0, 0:2] = a[:, 1, 3:5] = src
    a[:, 0, 2] = a[:, 1, 5] = 1.0
    a[:, :, 6:8] = -dst[:, :, None] * src[:, None, :]
    h = np.empty(9)
    h[:8] = np.linalg.solve(a.reshape(8, 8), dst.reshape(8))
    h[8] = 1.0
    return h.reshape(3, 3)


def apply_homography(h: np.ndarray, points: np.ndarray) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    flat = pts.reshape(-1, 2)
    mapped = flat @ h[:, :2].T + h[:, 2]
    return (mapped[:, :2] / mapped[:, 2:3]).reshape(pts.shape)


def canonical_corners(size: tuple[int, int]) -> np.ndarray:
    """Outer corners (TL, TR, BR, BL) of a ``(width, height)`` image in pixel-centre coordinates."""
    w, h = size
    return np.array([[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]])


def plate_aspect(corners: np.ndarray) -> float:
    """Height over width of a plate quad, from the mean lengths of its opposite edges."""
    c = np.asarray(corners, dtype=np.float64)
    width = 0.5 * (_length(c[1] - c[0]) + _length(c[2] - c[3]))
    height = 0.5 * (_length(c[3] - c[0]) + _length(c[2] - c[1]))
    if width <= 0 or height <= 0:
        raise ValueError(f"degenerate plate corners {c.tolist()}")
    return float(height / width)


def _length(v: np.ndarray) -> np.float64:
    # np.linalg.norm's own arithmetic for a real vector (sqrt of v.dot(v)), without its wrapper.
    return np.sqrt(v.dot(v))


def _row_lengths(v: np.ndarray) -> np.ndarray:
    # np.linalg.norm(v, axis=-1)'s own arithmetic for real arrays, without its wrapper.
    return np.sqrt(np.add.reduce(v * v, axis=-1))


def _translation(tx: float, ty: float) -> np.ndarray:
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def _apply_batch(h: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``(T, 3, 3)`` homographies applied to ``(P, 2)`` points: ``(T, P, 2)``."""
    mapped = np.einsum("tij,pj->tpi", h[:, :, :2], points) + h[:, None, :, 2]
    return mapped[..., :2] / mapped[..., 2:3]


def _view_matrices(
    yaw_deg: np.ndarray, pitch_deg: np.ndarray, distance: float, rot_deg: np.ndarray,
    scale: np.ndarray, skew: float,
) -> np.ndarray:
    """Per-frame ``shear @ scale @ rotation @ tilt`` on plate-centred units, batched over frames.

    The tilt is the plane at depth ``distance`` rotated by yaw (about y) then pitch (about x) and
    seen by a pinhole of focal length ``distance``, normalised so zero angles give the identity.
    """
    n = len(yaw_deg)
    cy, sy = np.cos(np.radians(yaw_deg)), np.sin(np.radians(yaw_deg))
    cp, sp = np.cos(np.radians(pitch_deg)), np.sin(np.radians(pitch_deg))
    # Columns 1 and 2 of R_yaw @ R_pitch (the plane's x and y axes in camera space).
    tilt = np.zeros((n, 3, 3))
    tilt[:, 0, 0], tilt[:, 0, 1] = cy, sy * sp
    tilt[:, 1, 0], tilt[:, 1, 1] = 0.0, cp
    tilt[:, 2, 0], tilt[:, 2, 1] = -sy / distance, cy * sp / distance
    tilt[:, 2, 2] = 1.0
    c, s = np.cos(np.radians(rot_deg)), np.sin(np.radians(rot_deg))
    rs = np.zeros((n, 3, 3))
    rs[:, 0, 0], rs[:, 0, 1] = scale * (c + skew * s), scale * (-s + skew * c)
    rs[:, 1, 0], rs[:, 1, 1] = scale * s, scale * c
    rs[:, 2, 2] = 1.0
    return rs @ tilt


def _uniform(rng: np.random.Generator, r: Range) -> float:
    return float(uniform(rng, r[0], r[1])) if r[1] > r[0] else float(r[0])


def sample_trajectory(
    rng: np.random.Generator,
    scene_size: tuple[int, int],
    plate_corners: np.ndarray,
    num_frames: int = 5,
    params: CameraParams = CameraParams(),
) -> Trajectory:
    """Draw the geometry of one track: a homography, LR size and plate corners per frame.

    ``scene_size`` is ``(width, height)`` of the scene image, ``plate_corners`` the plate's outer
    corners in scene pixels (TL, TR, BR, BL). The scene plate is rectified first, so any
    perspective the renderer put in the scene is replaced by the one drawn here.
    """
    p = params
    n = num_frames
    scene_corners = np.asarray(plate_corners, dtype=np.float64).reshape(4, 2)
    ref = resolve_reference(p.reference, n)
    aspect = plate_aspect(scene_corners)
    unit = np.array(
        [[-0.5, -aspect / 2], [0.5, -aspect / 2], [0.5, aspect / 2], [-0.5, aspect / 2]]
    )
    to_unit = homography_from_points(scene_corners, unit)
    dt = np.arange(n, dtype=np.float64) - ref

    yaw0, pitch0 = _uniform(rng, p.yaw_deg), _uniform(rng, p.pitch_deg)
    yaw_rate, pitch_rate = rng.uniform(-p.tilt_drift_deg, p.tilt_drift_deg, size=2)
    distance = _uniform(rng, p.camera_distance)
    rotation = _uniform(rng, p.rotation_deg) + rng.normal(0.0, p.rotation_jitter_deg, size=n)
    growth = _uniform(rng, p.scale_growth)
    velocity = np.array([_uniform(rng, p.velocity_px[0]), _uniform(rng, p.velocity_px[1])])
    skew = 0.0
    if rng.random() < p.rolling_shutter_prob:
        # Rows read out later see the plate further along its horizontal motion.
        skew = _uniform(rng, p.rolling_shutter_skew) * (1.0 if velocity[0] >= 0 else -1.0)

    # Plate in each frame at unit scale (plate width 1, centred), before placement in the video.
    shapes = _view_matrices(
        yaw0 + yaw_rate * dt, pitch0 + pitch_rate * dt, distance, rotation,
        (1.0 + growth) ** dt, skew,
    ) @ to_unit
    unit_quads = _apply_batch(shapes, scene_corners)
    # max - min is what np.ptp computes, without its Python-level wrapper (a few us a call).
    box_w = np.maximum.reduce(unit_quads[..., 0], axis=1) - np.minimum.reduce(unit_quads[..., 0], axis=1)
    box_h = np.maximum.reduce(unit_quads[..., 1], axis=1) - np.minimum.reduce(unit_quads[..., 1], axis=1)

    base_w = int(round(_uniform(rng, p.crop_width)))
    base_h = int(round(_uniform(rng, p.crop_height)))
    if p.variable_size:
        # A detector box tracks the plate's apparent size, with its own noise.
        widths = np.rint(base_w * box_w / box_w[ref] + rng.normal(0, p.size_jitter_px, n))
        heights = np.rint(base_h * box_h / box_h[ref] + rng.normal(0, p.size_jitter_px, n))
        widths = np.maximum(widths, 8).astype(int)
        heights = np.maximum(heights, 6).astype(int)
    else:
        widths = np.full(n, base_w)
        heights = np.full(n, base_h)

    # Largest scale that honours the fill target and leaves every corner its margin in every frame;
    # the extra pixel covers the rounding of the crop origin to integers.
    margin = p.min_margin_px
    scale = _uniform(rng, p.plate_fill) * widths[ref] / box_w[ref]
    # A detector's box fits the plate: where the drawn height is too short for the plate at its
    # drawn share of the width, the box grows taller (up to the tallest crops), and past that it
    # narrows (down to the narrowest), so the plate keeps its share. Shrinking the plate inside a
    # wide box instead drew 22 % of plates below the fill range, looser than real LRLPR-26 crops.
    needed = np.ceil(scale * box_h + 2 * margin + 1.0).astype(int)
    tallest = int(p.crop_height[1])
    if p.variable_size:
        heights = np.maximum(heights, np.minimum(needed, tallest))
    else:
        heights = np.full(n, max(base_h, min(int(needed.max()), tallest)))
    fits = float(np.minimum.reduce((heights - 2 * margin - 1.0) / box_h))
    if fits < scale:
        narrowed = np.maximum(np.rint(widths * fits / scale), max(8, math.ceil(p.crop_width[0])))
        widths = np.minimum(widths, narrowed).astype(int)  # never widens a crop
    scale = min(
        scale,
        float(np.minimum.reduce((widths - 2 * margin - 1.0) / box_w)),
        float(np.minimum.reduce((heights - 2 * margin - 1.0) / box_h)),
    )
    if scale <= 0:
        raise ValueError("crop too small for the requested margin")
    scale *= 1.0 - 1e-9

    # Absolute position in the video frame only matters modulo 1 (the crop origin is an integer).
    centres = (
        rng.uniform(100.0, 101.0, size=2) + velocity * dt[:, None]
        + rng.normal(0.0, p.position_jitter_px, size=(n, 2))
    )
    quads = scale * unit_quads + centres[:, None, :]
    lo, hi = quads.min(axis=1), quads.max(axis=1)
    size = np.stack([widths, heights], axis=1).astype(np.float64)
    jitter = rng.normal(0.0, 1.0, size=(n, 2)) * np.array(p.detector_jitter) * size
    crop = np.rint(0.5 * (lo + hi) + jitter - 0.5 * (size - 1))
    # Corners must stay in [margin - 0.5, size - 0.5 - margin] in crop coordinates.
    crop_min = np.ceil(hi - size + 0.5 + margin - 1e-9)
    crop_max = np.floor(lo - margin + 0.5 + 1e-9)
    crop = npfast.clip(crop, crop_min, crop_max)
    shift = centres - crop
    place = np.zeros((n, 3, 3))
    place[:, 0, 0] = place[:, 1, 1] = scale
    place[:, :2, 2] = shift
    place[:, 2, 2] = 1.0
    homographies = place @ shapes

    return Trajectory(
        homographies=homographies,
        sizes=tuple((int(w), int(h)) for w, h in zip(widths, heights)),
        corners=quads - crop[:, None, :],
        reference=ref,
        scene_size=(int(scene_size[0]), int(scene_size[1])),
        scene_corners=scene_corners,
    )


def _pixel_grid(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    w, h = size
    return np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))


def flow_between(traj: Trajectory, src: int, dst: int) -> np.ndarray:
    """Dense flow ``(h_src, w_src, 2)`` float32 on frame ``src``'s grid pointing into frame ``dst``.

    Exact (from the homographies), including the parts of frame ``src`` that fall outside frame
    ``dst``; use :func:`flow_valid_mask` to know which pixels have a counterpart.
    """
    xs, ys = _pixel_grid(traj.sizes[src])
    if src == dst:
        return np.zeros(xs.shape + (2,), np.float32)
    m = traj.homographies[dst] @ np.linalg.inv(traj.homographies[src])
    den = m[2, 0] * xs + m[2, 1] * ys + m[2, 2]
    u = (m[0, 0] * xs + m[0, 1] * ys + m[0, 2]) / den
    v = (m[1, 0] * xs + m[1, 1] * ys + m[1, 2]) / den
    return np.stack([u - xs, v - ys], axis=-1).astype(np.float32)


def flow_to_reference(traj: Trajectory, t: int) -> np.ndarray:
    """Flow on frame t's grid into the reference frame: ``warp_with_flow(frames[ref], flow)``
    rebuilds frame t. For the reverse (frame t resampled on the reference grid) use
    ``warp_with_flow(frames[t], flow_between(traj, traj.reference, t))``."""
    return flow_between(traj, t, traj.reference)


def flow_valid_mask(flow: np.ndarray, dst_size: tuple[int, int], border: float = 0.0) -> np.ndarray:
    """Pixels whose flow target lies inside the destination frame (shrunk by ``border`` px)."""
    h, w = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(w), np.arange(h))
    u = xs + flow[..., 0]
    v = ys + flow[..., 1]
    dw, dh = dst_size
    return (
        (u >= -0.5 + border) & (u <= dw - 0.5 - border)
        & (v >= -0.5 + border) & (v <= dh - 0.5 - border)
    )


def warp_with_flow(
    image: np.ndarray,
    flow: np.ndarray,
    *,
    interpolation: int = cv2.INTER_LINEAR,
    border_mode: int = cv2.BORDER_REPLICATE,
) -> np.ndarray:
    """Backward warp: ``out[y, x] = image[y + flow[y, x, 1], x + flow[y, x, 0]]``.

    The output has the flow's spatial size; ``image`` is the frame the flow points into.
    """
    h, w = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    map_x = xs + flow[..., 0].astype(np.float32)
    map_y = ys + flow[..., 1].astype(np.float32)
    return cv2.remap(image, map_x, map_y, interpolation, borderMode=border_mode)


def canonical_homography(
    traj: Trajectory, t: int, canonical_size: tuple[int, int]
) -> np.ndarray:
    """Homography from LR frame t pixels to a canonical rectified plate image of
    ``canonical_size = (width, height)`` that the plate fills edge to edge, e.g. ``(192, 64)``.

    ``cv2.warpPerspective(frame_t, H, canonical_size)`` rectifies frame t;
    ``cv2.warpPerspective(canonical, H, frame_size, flags=cv2.WARP_INVERSE_MAP)`` puts a canonical
    plate image onto frame t's grid (point-sampled: blur or supersample a sharp plate first).
    """
    return homography_from_points(traj.corners[t], canonical_corners(canonical_size))


def _supersample_matrix(s: int) -> np.ndarray:
    # LR pixel x covers fine pixels s*x .. s*x + s - 1, whose centre is s*x + (s - 1) / 2; this
    # makes area-downsampling by exactly s land on the LR grid with no half-pixel shift.
    return np.array([[s, 0.0, (s - 1) / 2], [0.0, s, (s - 1) / 2], [0.0, 0.0, 1.0]])


def supersampled_homographies(traj: Trajectory, supersample: int) -> np.ndarray:
    """Scene -> fine-grid homographies, the fine grid being ``supersample`` x each LR frame."""
    return _supersample_matrix(supersample) @ traj.homographies


def render_frames(
    scene_image: np.ndarray,
    traj: Trajectory,
    *,
    supersample: int = 2,
    downsample: bool = True,
    border_mode: int = cv2.BORDER_REFLECT101,
) -> list[np.ndarray]:
    """Warp the scene into each frame without aliasing.

    Only the scene region the track sees is used. If it is much finer than the fine grid (the
    plate spans more scene pixels than fine pixels), it is first box-reduced by an integer factor
    so that bilinear warping never skips scene pixels; then it is warped onto a grid
    ``supersample`` x the LR size. With ``downsample=True`` the fine frames are box-averaged to the
    LR sizes (pure camera, no blur); with ``False`` they are returned as is
    (``supersample * w`` x ``supersample * h``) for :func:`ksrnet.synth.degrade.degrade_track`,
    which blurs there before downsampling. 2 is enough when a PSF follows (the PSF, not the
    grid, then limits the bandwidth); use 4 for clean, unblurred renders.
    """
    if supersample < 1:
        raise ValueError("supersample must be >= 1")
    fine = supersampled_homographies(traj, supersample)
    scene_h, scene_w = scene_image.shape[:2]
    n = traj.num_frames

    # Scene region any frame sees, plus a margin so reflections and later blurs see real content.
    inv = np.linalg.inv(fine)
    frame_corners = np.array(
        [canonical_corners((w * supersample, h * supersample)) for w, h in traj.sizes]
    )
    seen = np.einsum("tij,tpj->tpi", inv[:, :, :2], frame_corners) + inv[:, None, :, 2]
    seen = (seen[..., :2] / seen[..., 2:3]).reshape(-1, 2)
    # Densest sampling: fine px per scene px along the plate's edges, over all frames.
    c = traj.scene_corners
    q = _apply_batch(fine, c)
    a_idx, b_idx = np.array([0, 3, 0, 1]), np.array([1, 2, 3, 2])
    fine_len = _row_lengths(q[:, b_idx] - q[:, a_idx])
    scene_len = np.maximum(_row_lengths(c[b_idx] - c[a_idx]), 1e-9)
    ratio = float(np.maximum.reduce(fine_len / scene_len, axis=None))
    k = int(round(1.0 / ratio)) if ratio < 0.67 else 1

    pad = 4.0 * k
    # Plain ints (np.clip on scalars costs more than the rest of this arithmetic).
    (sx0, sy0), (sx1, sy1) = seen.min(axis=0).tolist(), seen.max(axis=0).tolist()
    x0 = min(max(math.floor(sx0 - pad), 0), scene_w - 1)
    y0 = min(max(math.floor(sy0 - pad), 0), scene_h - 1)
    x1 = min(max(math.ceil(sx1 + pad) + 1, x0 + 1), scene_w)
    y1 = min(max(math.ceil(sy1 + pad) + 1, y0 + 1), scene_h)
    if k > 1 and min(x1 - x0, y1 - y0) >= 2 * k:
        # Whole k x k blocks only: integer box reduction is exact and fast in OpenCV.
        x1 = x0 + (x1 - x0) // k * k
        y1 = y0 + (y1 - y0) // k * k
    else:
        k = 1
    region = scene_image[y0:y1, x0:x1]
    to_region = _translation(x0, y0)  # region pixels -> scene pixels
    if k > 1:
        region = cv2.resize(
            region, (region.shape[1] // k, region.shape[0] // k), interpolation=cv2.INTER_AREA
        )
        # Reduced pixel x covers scene pixels k*x .. k*x + k - 1, centred at k*x + (k - 1) / 2.
        to_region = to_region @ np.array(
            [[k, 0.0, (k - 1) / 2], [0.0, k, (k - 1) / 2], [0.0, 0.0, 1.0]]
        )

    warps = fine @ to_region  # region pixels -> fine pixels, per frame
    frames = []
    for t in range(n):
        w, h = traj.sizes[t]
        img = cv2.warpPerspective(
            region, warps[t], (w * supersample, h * supersample),
            flags=cv2.INTER_LINEAR, borderMode=border_mode,
        )
        if downsample and supersample > 1:
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        frames.append(img)
    return frames
