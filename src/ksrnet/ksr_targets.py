"""Training targets of a synthetic track for the restoration models, from its known geometry.

The synthetic camera knows every frame's homography, so the exact flow between frames and the
canonical HR plate on the reference frame's SR grid can be computed rather than estimated. Used by
KSR-Net training (``ksr_training``) and by the evaluation of restored images (``ablation``); plain
numpy / torch, no training imports.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ksrnet.models.flow import valid_mask
from ksrnet.models.ksrnet import batch_reference_index, lr_resize_matrix
from ksrnet.models.restore import sr_homography_from_lr, warp_to_reference_grid
from ksrnet.plates import LAYOUTS, Tokenizer
from ksrnet.preprocess import frame_to_unit_tensor, track_to_tensor
from ksrnet.synth.camera import canonical_homography


def resized_flow(traj, ref: int, t: int, lr_size: tuple[int, int]) -> np.ndarray:
    """Ground-truth flow ``(2, H, W)`` float32 on the *resized* reference frame's grid (``lr_size``)
    pointing into the resized frame t (the ``flow_between(traj, ref, t)`` convention, exact: the
    homography ``R_t^-1 H_t H_ref^-1 R_ref`` with ``R`` = ``lr_resize_matrix``, not an interpolated
    flow field). For frames of one native size this equals ``flow_between`` resized with its
    values rescaled per axis (``flow.resize_flow``)."""
    h, w = lr_size
    if t == ref:
        return np.zeros((2, h, w), np.float32)
    (wr, hr), (wt, ht) = traj.sizes[ref], traj.sizes[t]
    r_ref = lr_resize_matrix((hr, wr), lr_size).numpy()
    r_t = lr_resize_matrix((ht, wt), lr_size).numpy()
    m = np.linalg.inv(r_t) @ traj.homographies[t] @ np.linalg.inv(traj.homographies[ref]) @ r_ref
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    den = m[2, 0] * xs + m[2, 1] * ys + m[2, 2]
    u = (m[0, 0] * xs + m[0, 1] * ys + m[0, 2]) / den
    v = (m[1, 0] * xs + m[1, 1] * ys + m[1, 2]) / den
    return np.stack([u - xs, v - ys]).astype(np.float32)


# The SR targets' warp runs in float32: in float64 (before session 22) it took about half of a
# KSR-Net training sample's CPU time, for targets within 4.7e-5 of these and masks differing in 1
# pixel of 6.1 million (benchmarks/ksr_sample_cost.py, which sets this to torch.float64 to compare).
WARP_DTYPE = torch.float32


def sr_target(canonical_hr: np.ndarray, traj, ref: int, lr_size: tuple[int, int], upscale: int,
              supersample: int = 2) -> tuple[Tensor, Tensor]:
    """The canonical HR plate on the SR grid of the resized reference frame.

    ``H = canonical_homography(ref) @ lr_resize_matrix(native -> lr_size)`` maps resized-LR pixels to
    canonical pixels; ``sr_homography_from_lr`` moves it to the ``upscale`` x grid (and once more to
    a ``supersample`` x finer grid, box-averaged back). Returns ``(target (3, sH, sW) in [-1, 1],
    mask (1, sH, sW) float)``, the mask 1 where every sub-sample fell inside the plate."""
    hc, wc = canonical_hr.shape[:2]
    w_ref, h_ref = traj.sizes[ref]
    h_lr = torch.from_numpy(canonical_homography(traj, ref, (wc, hc))) @ lr_resize_matrix((h_ref, w_ref), lr_size)
    return _on_sr_grid(canonical_hr, h_lr, lr_size, upscale, supersample, 1e-6)


def _on_sr_grid(image: np.ndarray, lr_to_image: Tensor, lr_size: tuple[int, int], upscale: int, supersample: int,
                tolerance: float, region: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``image`` (uint8 RGB) resampled onto the ``upscale`` x grid of the resized reference frame,
    given the homography from resized-LR pixels to image pixels: point-sampled on a ``supersample``
    x finer grid and box-averaged back. Returns ``(target (3, sH, sW) in [-1, 1], mask (1, sH, sW))``,
    the mask 1 where (up to ``tolerance``) every sub-sample fell inside the image and, if given,
    inside ``region`` (``(1, 1, h, w)`` in [0, 1], in image pixels)."""
    h_sr = sr_homography_from_lr(lr_to_image, upscale)
    k = supersample
    h_fine = sr_homography_from_lr(h_sr, k) if k > 1 else h_sr
    out = (lr_size[0] * upscale * k, lr_size[1] * upscale * k)
    target, inside = warp_to_reference_grid(frame_to_unit_tensor(image)[None].to(WARP_DTYPE), h_fine, out)
    if region is not None:
        inside = inside * warp_to_reference_grid(region.to(WARP_DTYPE), h_fine, out, padding_mode="zeros")[0]
    if k > 1:
        target, inside = F.avg_pool2d(target, k), F.avg_pool2d(inside, k)
    mask = (inside > 1.0 - tolerance).to(torch.float32)
    return target[0].float().clamp(-1.0, 1.0), mask[0]


_TOKENIZER = Tokenizer()


def track_sample(track, lr_size: tuple[int, int], upscale: int, ref_policy: str = "middle",
                 supersample: int = 2) -> dict[str, Tensor]:
    """One ``SynthTrack`` (with its ``trajectory``) as training tensors:

    ``frames`` (T, 3, H, W) in [-1, 1] at ``lr_size``; ``frame_mask`` (T,) bool; ``reference`` ()
    long (the model's reference for ``ref_policy`` and T frames); ``flows`` (T, 2, H, W), ref -> t
    (0 at the reference); ``flow_valid`` (T, 1, H, W) float (target inside frame t);
    ``sr_target`` (3, sH, sW); ``sr_mask`` (1, sH, sW); ``text`` (num_slots,) long; ``layout`` ()
    long (index in ``plates.LAYOUTS``)."""
    if track.trajectory is None:
        raise ValueError("the track has no trajectory (SyntheticTrackDataset drops it): use generate_track")
    t_count = len(track.lr)
    ref = batch_reference_index(ref_policy, t_count)
    frames = track_to_tensor(track.lr, lr_size)
    flows = torch.from_numpy(np.stack([resized_flow(track.trajectory, ref, t, lr_size) for t in range(t_count)]))
    valid = valid_mask(flows, size=lr_size).float()
    target, mask = sr_target(track.canonical_hr, track.trajectory, ref, lr_size, upscale, supersample)
    return {
        "frames": frames.float(),
        "frame_mask": torch.ones(t_count, dtype=torch.bool),
        "reference": torch.tensor(ref, dtype=torch.long),
        "flows": flows,
        "flow_valid": valid,
        "sr_target": target,
        "sr_mask": mask,
        "text": torch.tensor(_TOKENIZER.encode(track.text), dtype=torch.long),
        "layout": torch.tensor(LAYOUTS.index(track.layout), dtype=torch.long),
    }


# --------------------------------------------------------------------------------------------------
# Real tracks (LRLPR-26 folders): no flow ground truth, HR from a separate capture


def proper_quad(corners) -> bool:
    """Whether ``corners`` (TL, TR, BR, BL) bound a plate: a strictly convex quadrilateral in that
    order, clockwise on the image (y down), at least 1 px^2. A repeated, collinear, twisted or
    mirrored annotation gives a singular or folding homography, i.e. a smeared or mirrored target."""
    c = np.asarray(corners, np.float64).reshape(4, 2)
    if not np.isfinite(c).all():
        return False
    edges = np.roll(c, -1, axis=0) - c
    following = np.roll(edges, -1, axis=0)
    turns = edges[:, 0] * following[:, 1] - edges[:, 1] * following[:, 0]  # > 0: turning clockwise
    area = 0.5 * float(np.sum(c[:, 0] * edges[:, 1] - c[:, 1] * edges[:, 0]))  # shoelace
    return bool((turns > 0).all()) and area >= 1.0


def _centres_inside(quad: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``(h, w)`` float64, 1 where the pixel centre lies inside the proper ``quad`` (edges included)."""
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    inside = np.ones(shape, bool)
    for a, b in zip(quad, np.roll(quad, -1, axis=0)):
        inside &= (b[0] - a[0]) * (ys - a[1]) - (b[1] - a[1]) * (xs - a[0]) >= 0
    return inside.astype(np.float64)


def hr_target_from_corners(hr: np.ndarray, hr_corners: np.ndarray, lr_corners: np.ndarray,
                           lr_native: tuple[int, int], lr_size: tuple[int, int], upscale: int,
                           supersample: int = 2) -> tuple[Tensor, Tensor]:
    """The HR capture rectified onto the SR grid of the (resized) reference LR frame.

    LR and HR are separate captures, so no pixel of one lies on the other; the four annotated plate
    corners of each give the plate-plane homography LR -> HR, which is composed with the resize to
    ``lr_size`` and moved to the ``upscale`` x grid like the synthetic target. Returns ``(target
    (3, sH, sW) in [-1, 1], mask (1, sH, sW))``, the mask 1 where every HR pixel the bilinear samples
    read has its centre inside the plate quadrilateral (the HR crop's surroundings are another
    moment's background, not a target). Raises ``ValueError`` unless both quads are proper
    (:func:`proper_quad`)."""
    import cv2

    for kind, quad in (("HR", hr_corners), ("LR", lr_corners)):
        if not proper_quad(quad):
            raise ValueError(f"{kind} corners {np.asarray(quad).tolist()} are not a TL TR BR BL plate quadrilateral")
    lr_to_hr = cv2.getPerspectiveTransform(np.asarray(lr_corners, np.float32), np.asarray(hr_corners, np.float32))
    h_lr = torch.from_numpy(lr_to_hr.astype(np.float64)) @ lr_resize_matrix(lr_native, lr_size)
    # An exact test, not cv2.fillConvexPoly: its anti-aliased fill paints the row and column just past
    # the bottom and right edges in full, which let background into the mask.
    plate = _centres_inside(np.asarray(hr_corners, np.float64), hr.shape[:2])
    region = torch.from_numpy(plate)[None, None]
    return _on_sr_grid(hr, h_lr, lr_size, upscale, supersample, 1e-3, region)


def folder_track_sample(track, lr_size: tuple[int, int], upscale: int, ref_policy: str = "middle",
                        num_frames: int = 5, supersample: int = 2) -> dict[str, Tensor]:
    """One labelled real track (``tracks.Track``) as the tensors of :func:`track_sample`.

    The last ``num_frames`` LR frames are used (the last one repeated when a track has fewer, so
    every track of a batch shares the reference slot). No flow ground truth exists: ``flows`` are 0
    and ``flow_valid`` is 0 everywhere, so stage 1 learns nothing from these tracks while the
    photometric stage 1b does. The SR target is the first HR frame with proper annotated corners
    (:func:`proper_quad`) rectified by :func:`hr_target_from_corners` when the reference LR frame
    has proper corners too; otherwise the target mask is empty and only the semantic loss (the
    plate text) trains on the track."""
    if track.text is None or track.layout is None:
        raise ValueError(f"{track.track_id}: a training track needs its plate text and layout")
    pairs = list(zip(track.lr, track.lr_names or [None] * len(track.lr)))[-num_frames:]
    if not pairs:
        raise ValueError(f"{track.track_id}: no LR frames")
    pairs += [pairs[-1]] * (num_frames - len(pairs))
    ref = batch_reference_index(ref_policy, num_frames)
    frames = track_to_tensor([f for f, _ in pairs], lr_size)
    sr_h, sr_w = lr_size[0] * upscale, lr_size[1] * upscale
    target, mask = torch.zeros(3, sr_h, sr_w), torch.zeros(1, sr_h, sr_w)
    ref_frame, ref_name = pairs[ref]
    lr_corners = track.corners.get(ref_name) if ref_name else None
    if lr_corners is not None and proper_quad(lr_corners):
        for hr, name in zip(track.hr, track.hr_names):
            if name in track.corners and proper_quad(track.corners[name]):
                target, mask = hr_target_from_corners(hr, track.corners[name], lr_corners, ref_frame.shape[:2],
                                                      lr_size, upscale, supersample)
                break
    h, w = lr_size
    return {
        "frames": frames,
        "frame_mask": torch.ones(num_frames, dtype=torch.bool),
        "reference": torch.tensor(ref, dtype=torch.long),
        "flows": torch.zeros(num_frames, 2, h, w),
        "flow_valid": torch.zeros(num_frames, 1, h, w),
        "sr_target": target,
        "sr_mask": mask,
        "text": torch.tensor(_TOKENIZER.encode(track.text), dtype=torch.long),
        "layout": torch.tensor(LAYOUTS.index(track.layout), dtype=torch.long),
    }
