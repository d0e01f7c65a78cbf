"""Optical flow for tiny plate crops: backward warping, a SpyNet-like pyramid estimator,
forward-backward consistency, and the loss helpers that train it.

Conventions (the same as :mod:`ksrnet.synth.camera`, and everywhere in this module):

* Pixel centres sit at integer coordinates: pixel ``(x, y)`` covers ``[x - 0.5, x + 0.5] x
  [y - 0.5, y + 0.5]``; an image ``W`` wide spans ``[-0.5, W - 0.5]``.
* A flow is ``(B, 2, H, W)``, channel 0 = x (columns), channel 1 = y (rows), in pixels of the grid
  it lives on. A flow *on frame a's grid pointing into frame b* says that the point seen at
  ``(x, y)`` in frame a is at ``(x + flow[0, y, x], y + flow[1, y, x])`` in frame b. It is what
  ``camera.flow_between(traj, a, b)`` returns (as ``(H, W, 2)`` numpy).
* :func:`warp` samples backwards: ``warp(img_b, flow)[y, x] = img_b[y + fy, x + fx]`` (bilinear,
  border padding), so it rebuilds frame a from frame b. To put frame t on the reference grid, warp
  frame t with the flow on the reference grid pointing into frame t:
  ``warp(frame_t, flow_between(traj, ref, t)) ~ frame_ref``. :class:`PyramidFlow` estimates exactly
  that flow: ``PyramidFlow(ref, other)`` is on ``ref``'s grid pointing into ``other``, so
  ``warp(other, flow) ~ ref``.
* Implementation of the sampling: ``grid_sample(..., align_corners=True)`` with the absolute
  sample position ``p`` normalised as ``2 p / (size - 1) - 1``; with ``align_corners=True``,
  normalised -1 and +1 are the centres of the first and last pixels, so this is exact for the
  integer-centre convention above: on float images it matches ``camera.warp_with_flow``
  (``cv2.remap``, replicated border) to ~1e-3 grey levels (tested). Sampling runs in at least
  float32 even for bf16/fp16 inputs (a bf16 grid would be off by ~0.1 px).
* Resampling between grids uses the half-pixel convention: an upsampled grid ``s`` times finer has
  its pixel ``i`` at coarse coordinate ``(i + 0.5) / s - 0.5`` (``F.interpolate(...,
  align_corners=False)``), and an ``s x s`` average pool maps it back exactly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# --------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class FlowConfig:
    """Architecture of :class:`PyramidFlow`; saved beside every checkpoint (see ``to_dict``).

    The estimator works on the LR frames upsampled by ``upsample`` (a 17 px tall crop is 34 px at
    the default), over at most ``levels`` pyramid levels, each half the size of the next; levels
    that would be shorter or narrower than ``min_level_size`` px are dropped for that input (the
    finest levels are always kept, so a tiny input uses the finest subnets only).
    """

    in_chans: int = 3
    upsample: int = 2
    levels: int = 3
    min_level_size: int = 4
    # Widths of each level's residual net are SpyNet's (2b, 4b, 2b, b) for b = base_channels
    # (SpyNet itself: b = 16 with 7x7 kernels).
    base_channels: int = 8
    kernel_size: int = 5
    # Largest |flow component| the estimator may output, in LR px (also bounds every level, scaled
    # to that level's pixels). Crops come from a detector that follows the plate: motion is small.
    max_displacement: float = 8.0
    negative_slope: float = 0.1
    # One residual net per level (SpyNet) or one shared by all levels.
    share_weights: bool = False

    def __post_init__(self) -> None:
        for name in ("in_chans", "upsample", "levels", "min_level_size", "base_channels",
                     "kernel_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"FlowConfig.{name} must be a positive int, got {value!r}")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"FlowConfig.kernel_size must be odd, got {self.kernel_size}")
        for name in ("max_displacement", "negative_slope"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"FlowConfig.{name} must be a finite number, got {value!r}")
        if self.max_displacement <= 0:
            raise ValueError(f"FlowConfig.max_displacement must be > 0, got {self.max_displacement}")
        if not 0 <= self.negative_slope < 1:
            raise ValueError(f"FlowConfig.negative_slope must be in [0, 1), got {self.negative_slope}")
        if not isinstance(self.share_weights, bool):
            raise ValueError(f"FlowConfig.share_weights must be a bool, got {self.share_weights!r}")

    @property
    def widths(self) -> tuple[int, ...]:
        b = self.base_channels
        return (2 * b, 4 * b, 2 * b, b)

    def num_levels_for(self, height: int, width: int) -> int:
        """Pyramid levels used for an LR input ``height x width``: at most ``levels``, and the
        coarsest level is at least ``min_level_size`` px on its shorter side (at least 1 level)."""
        side = min(height, width) * self.upsample
        n = 1
        while n < self.levels and side / 2 ** n >= self.min_level_size:
            n += 1
        return n

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "FlowConfig":
        """``tiny`` (the defaults, ~97k parameters), ``small`` (SpyNet widths), ``base`` (SpyNet
        widths on 4x upsampled frames with one more level)."""
        if name not in _FLOW_PRESETS:
            raise ValueError(f"unknown flow preset {name!r} (expected one of {', '.join(_FLOW_PRESETS)})")
        return cls(**{**_FLOW_PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FlowConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown FlowConfig keys: {', '.join(unknown)}")
        return cls(**data)


_FLOW_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(),
    "small": dict(base_channels=16),
    "base": dict(base_channels=16, upsample=4, levels=4),
}


# --------------------------------------------------------------------------------------------------
# Warping


def _check_flow(flow: Tensor) -> None:
    if flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(f"flow must be (B, 2, H, W), got shape {tuple(flow.shape)}")


def _position_dtype(dtype: torch.dtype) -> torch.dtype:
    """Sample positions and sampling run in at least float32: in bfloat16 a position near x = 48
    would be rounded to 0.25 px, and a [-1, 1] grid coordinate to ~0.1 px."""
    return torch.promote_types(dtype, torch.float32)


def sample_positions(flow: Tensor) -> tuple[Tensor, Tensor]:
    """Absolute sample positions ``(x + fx, y + fy)``, each ``(B, H, W)``, in pixels (at least
    float32)."""
    _check_flow(flow)
    h, w = flow.shape[-2:]
    f = flow.to(_position_dtype(flow.dtype))
    ys = torch.arange(h, dtype=f.dtype, device=f.device).view(1, h, 1)
    xs = torch.arange(w, dtype=f.dtype, device=f.device).view(1, 1, w)
    return xs + f[:, 0], ys + f[:, 1]


def pixels_to_grid(px: Tensor, py: Tensor, height: int, width: int) -> Tensor:
    """Pixel positions (integer centres) to a ``grid_sample`` grid ``(..., 2)`` for an image
    ``height x width`` sampled with ``align_corners=True``. A size-1 axis maps everything to its
    only pixel."""
    gx = px * (2.0 / max(width - 1, 1)) - 1.0
    gy = py * (2.0 / max(height - 1, 1)) - 1.0
    return torch.stack((gx, gy), dim=-1)


def sample_at(image: Tensor, grid: Tensor, *, mode: str = "bilinear", padding_mode: str = "border") -> Tensor:
    """``grid_sample(image, grid, align_corners=True)`` computed in at least float32 (autocast
    off), returned in ``image``'s dtype."""
    work = _position_dtype(torch.promote_types(image.dtype, grid.dtype))
    with torch.autocast(image.device.type, enabled=False):
        out = F.grid_sample(image.to(work), grid.to(work), mode=mode, padding_mode=padding_mode,
                            align_corners=True)
    return out.to(image.dtype)


def warp(image: Tensor, flow: Tensor, *, mode: str = "bilinear", padding_mode: str = "border") -> Tensor:
    """Backward warp: ``out[b, :, y, x] = image[b, :, y + flow[b, 1, y, x], x + flow[b, 0, y, x]]``.

    ``image`` is ``(B, C, Hi, Wi)`` (pixels or features), ``flow`` ``(B, 2, H, W)`` in pixels, on
    the output grid; the output is ``(B, C, H, W)`` in ``image``'s dtype (sampling itself runs in
    at least float32). Usually ``Hi, Wi == H, W``; different sizes are allowed (the flow then points
    from its own grid into ``image``'s, as with frames of different crop sizes). Samples outside the
    image take the nearest border value (see :func:`valid_mask`).
    """
    _check_flow(flow)
    if image.dim() != 4 or image.shape[0] != flow.shape[0]:
        raise ValueError(f"image must be (B, C, H, W) with B = {flow.shape[0]}, got {tuple(image.shape)}")
    px, py = sample_positions(flow)
    grid = pixels_to_grid(px, py, image.shape[-2], image.shape[-1])
    return sample_at(image, grid, mode=mode, padding_mode=padding_mode)


def valid_mask(flow: Tensor, size: tuple[int, int] | None = None, border: float = 0.0) -> Tensor:
    """Bool ``(B, 1, H, W)``: True where the flow's target lies inside the image it points into.

    ``size`` is that image's ``(height, width)`` (default: the flow's own size). Inside means
    within ``[-0.5 + border, size - 0.5 - border]`` (the outer pixel edges, shrunk by ``border``
    px), as ``camera.flow_valid_mask``. False samples of :func:`warp` are border-clamped guesses.
    """
    px, py = sample_positions(flow)
    h, w = size if size is not None else tuple(flow.shape[-2:])
    inside = (
        (px >= -0.5 + border) & (px <= w - 0.5 - border)
        & (py >= -0.5 + border) & (py <= h - 0.5 - border)
    )
    return inside.unsqueeze(1)


def resize_flow(flow: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of a flow to ``size = (H, W)`` with its values rescaled to the new pixels
    (half-pixel convention, so the grids' outer edges coincide)."""
    _check_flow(flow)
    h, w = flow.shape[-2:]
    if (h, w) == tuple(size):
        return flow
    out = F.interpolate(flow, size=size, mode="bilinear", align_corners=False)
    scale = torch.tensor([size[1] / w, size[0] / h], dtype=flow.dtype, device=flow.device)
    return out * scale.view(1, 2, 1, 1)


# --------------------------------------------------------------------------------------------------
# Forward-backward consistency


def forward_backward_consistency(
    flow_fw: Tensor,
    flow_bw: Tensor,
    alpha: float = 0.01,
    beta: float = 0.5,
    *,
    soft: bool = False,
    check_bounds: bool = True,
) -> Tensor:
    """Per-pixel reliability ``(B, 1, H, W)`` in [0, 1] of ``flow_fw`` (Sundaram et al. 2010).

    ``flow_fw`` is on frame a's grid pointing into frame b, ``flow_bw`` on frame b's grid pointing
    into frame a (e.g. ``PyramidFlow(a, b)`` and ``PyramidFlow(b, a)``). Following a pixel to b and
    back should return it home: with ``bw = warp(flow_bw, flow_fw)`` (the backward flow read where
    the pixel lands), the pixel is consistent when

        ``|fw + bw|^2 < alpha * (|fw|^2 + |bw|^2) + beta``     (beta in px^2 of this grid).

    ``soft=False``: 1 where consistent, 0 where not (occluded or mismatched). ``soft=True``:
    ``exp(-max(0, d - t) / t)`` with ``d = |fw + bw|^2`` and ``t`` the threshold: 1 on consistent
    pixels, decaying smoothly past the threshold (e^-1 at twice it), for use as a weight.
    ``check_bounds``: pixels whose forward target leaves frame b (size of ``flow_bw``) get 0.
    :func:`occlusion_mask` is the boolean complement of the hard version.
    """
    _check_flow(flow_fw)
    _check_flow(flow_bw)
    if alpha < 0 or beta <= 0:
        raise ValueError(f"need alpha >= 0 and beta > 0, got alpha={alpha}, beta={beta}")
    bw = warp(flow_bw, flow_fw)
    diff = (flow_fw + bw).square().sum(1, keepdim=True)
    thresh = alpha * (flow_fw.square().sum(1, keepdim=True) + bw.square().sum(1, keepdim=True)) + beta
    if soft:
        rel = torch.exp(-torch.relu(diff - thresh) / thresh)
    else:
        rel = (diff < thresh).to(flow_fw.dtype)
    if check_bounds:
        rel = rel * valid_mask(flow_fw, tuple(flow_bw.shape[-2:])).to(rel.dtype)
    return rel


def occlusion_mask(flow_fw: Tensor, flow_bw: Tensor, alpha: float = 0.01, beta: float = 0.5,
                   *, check_bounds: bool = True) -> Tensor:
    """Bool ``(B, 1, H, W)``: True where ``flow_fw`` fails the forward-backward check."""
    rel = forward_backward_consistency(flow_fw, flow_bw, alpha, beta, check_bounds=check_bounds)
    return rel < 0.5


# --------------------------------------------------------------------------------------------------
# The estimator


class _LevelNet(nn.Sequential):
    """SpyNet's per-level residual net: concat(ref, warped other, flow) -> residual flow. The last
    conv starts at zero so an untrained estimator outputs zero flow (identity alignment)."""

    def __init__(self, config: FlowConfig) -> None:
        c = config
        chans = (2 * c.in_chans + 2,) + c.widths
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, c.kernel_size, padding=c.kernel_size // 2),
                       nn.LeakyReLU(c.negative_slope)]
        last = nn.Conv2d(chans[-1], 2, c.kernel_size, padding=c.kernel_size // 2)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        super().__init__(*layers, last)


class PyramidFlow(nn.Module):
    """Coarse-to-fine flow estimator (SpyNet, Ranjan & Black 2017) sized for ~48x17 px crops.

    ``forward(ref, other)``: two ``(B, in_chans, H, W)`` images in [-1, 1] at LR size, any ``H, W``.
    Returns ``(B, 2, H, W)``, in LR pixels, on ``ref``'s grid pointing into ``other``
    (``warp(other, flow) ~ ref``). Internally: upsample both by ``config.upsample`` (bilinear),
    pad bottom/right by replication to a multiple of the pyramid's stride (pixel coordinates are
    unchanged), build an average-pooled pyramid, and at each level from the coarsest: upsample the
    flow x2 (values x2), warp ``other``, add the level net's residual, clamp. The finest flow is
    cropped, average-pooled back onto the LR grid and divided by the factor.
    """

    def __init__(self, config: FlowConfig = FlowConfig()) -> None:
        super().__init__()
        self.config = config
        count = 1 if config.share_weights else config.levels
        # nets[0] is the finest level's, nets[i] the one 2**i times coarser.
        self.nets = nn.ModuleList(_LevelNet(config) for _ in range(count))

    def _net(self, level: int) -> nn.Module:
        return self.nets[0 if self.config.share_weights else level]

    def forward(self, ref: Tensor, other: Tensor) -> Tensor:
        c = self.config
        if ref.dim() != 4 or ref.shape != other.shape or ref.shape[1] != c.in_chans:
            raise ValueError(
                f"ref and other must both be (B, {c.in_chans}, H, W), got {tuple(ref.shape)} and "
                f"{tuple(other.shape)}")
        b, _, h, w = ref.shape
        s = c.upsample
        n = c.num_levels_for(h, w)
        hs, ws = h * s, w * s
        x = torch.cat((ref, other), dim=0)
        if s > 1:
            x = F.interpolate(x, size=(hs, ws), mode="bilinear", align_corners=False)
        stride = 2 ** (n - 1)
        ph, pw = -hs % stride, -ws % stride
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        pyramid = [x]
        for _ in range(n - 1):
            pyramid.append(F.avg_pool2d(pyramid[-1], 2))

        # The flow accumulates in at least float32 even under autocast (bf16 would round 8-16 px
        # displacements to 1/16 px).
        flow = x.new_zeros(b, 2, *pyramid[-1].shape[-2:], dtype=_position_dtype(x.dtype))
        for level in range(n - 1, -1, -1):
            ref_l, other_l = pyramid[level][:b], pyramid[level][b:]
            if level < n - 1:
                flow = 2.0 * F.interpolate(flow, size=ref_l.shape[-2:], mode="bilinear",
                                           align_corners=False)
            warped = warp(other_l, flow)
            residual = self._net(level)(torch.cat((ref_l, warped, flow.to(ref_l.dtype)), dim=1))
            flow = flow + residual.to(flow.dtype)
            bound = c.max_displacement * s / 2 ** level
            flow = flow.clamp(-bound, bound)

        flow = flow[:, :, :hs, :ws]
        if s > 1:
            flow = F.avg_pool2d(flow, s) / s
        return flow

    def track_flows(self, frames: Tensor, ref_index: int, *, with_reliability: bool = False,
                    alpha: float = 0.01, beta: float = 0.5) -> tuple[Tensor, Tensor | None]:
        """Flows of a whole track in one batched call.

        ``frames`` ``(B, T, in_chans, H, W)``; returns ``flows`` ``(B, T, 2, H, W)`` where
        ``flows[:, t]`` is on the reference grid pointing into frame t (``flows[:, ref]`` is zero),
        ready for :func:`warp` / ``align.HAM``; and, with ``with_reliability``, the soft
        forward-backward reliability ``(B, T, 1, H, W)`` of each (1 at the reference), else None.
        """
        if frames.dim() != 5:
            raise ValueError(f"frames must be (B, T, C, H, W), got {tuple(frames.shape)}")
        b, t = frames.shape[:2]
        ref_index = resolve_frame_index(ref_index, t)
        others = [i for i in range(t) if i != ref_index]
        dtype = _position_dtype(frames.dtype)  # flows stay >= float32, as forward() returns them
        flows = frames.new_zeros(b, t, 2, *frames.shape[-2:], dtype=dtype)
        rel = frames.new_ones(b, t, 1, *frames.shape[-2:], dtype=dtype) if with_reliability else None
        if not others:
            return flows, rel
        sup = frames[:, others].flatten(0, 1)
        ref = frames[:, ref_index].unsqueeze(1).expand(-1, len(others), -1, -1, -1).flatten(0, 1)
        if with_reliability:
            both = self(torch.cat((ref, sup)), torch.cat((sup, ref)))
            fw, bw = both.chunk(2)
            r = forward_backward_consistency(fw, bw, alpha, beta, soft=True)
            rel = rel.index_copy(1, torch.tensor(others, device=frames.device),
                                 r.view(b, len(others), *r.shape[1:]).to(dtype))
        else:
            fw = self(ref, sup)
        flows = flows.index_copy(1, torch.tensor(others, device=frames.device),
                                 fw.view(b, len(others), *fw.shape[1:]).to(dtype))
        return flows, rel


def resolve_frame_index(index: int, length: int) -> int:
    """``index`` in ``[-length, length)`` as a non-negative frame index (negative counts from the end)."""
    if isinstance(index, bool) or not isinstance(index, int) or not -length <= index < length:
        raise ValueError(f"reference index {index!r} is not valid for {length} frames")
    return index % length


# --------------------------------------------------------------------------------------------------
# Losses (pure functions, for training)


def _masked_mean(value: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``value`` ``(B, 1, H, W)`` over pixels where ``mask`` (bool or weights, broadcast to
    ``(B, 1, H, W)``) is set; 0 when the mask is empty."""
    if mask is None:
        return value.mean()
    m = mask.to(value.dtype).expand_as(value)
    return (value * m).sum() / m.sum().clamp_min(torch.finfo(value.dtype).eps)


def charbonnier(x: Tensor, eps: float = 1e-3) -> Tensor:
    """``sqrt(x^2 + eps^2) - eps``: a smooth L1 that is exactly 0 at 0 (computed in at least
    float32: in float16 eps^2 is subnormal and the value at 0 would not be 0)."""
    x = x.to(_position_dtype(x.dtype))
    return torch.sqrt(x * x + eps * eps) - eps


def endpoint_error(pred: Tensor, gt: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean Euclidean distance between two flows ``(B, 2, H, W)`` over pixels (where ``mask``)."""
    _check_flow(pred)
    # vector_norm's gradient is 0 (not NaN) where pred == gt.
    epe = torch.linalg.vector_norm(pred - gt, dim=1, keepdim=True)
    return _masked_mean(epe, mask)


def photometric_loss(ref: Tensor, other: Tensor, flow: Tensor, mask: Tensor | None = None,
                     eps: float = 1e-3) -> Tensor:
    """Charbonnier of ``warp(other, flow) - ref``, averaged over channels then over pixels (where
    ``mask``, e.g. ``valid_mask(flow) * forward_backward_consistency(...)``)."""
    err = charbonnier(warp(other, flow) - ref, eps).mean(1, keepdim=True)
    return _masked_mean(err, mask)


def smoothness_loss(flow: Tensor, image: Tensor | None = None, edge_weight: float = 10.0) -> Tensor:
    """First-order smoothness: the average of mean ``|d flow / dx|`` and mean ``|d flow / dy|``
    (each L1 over both flow components; a 1-pixel-wide or -tall grid has only the other term).

    With ``image`` ``(B, C, H, W)`` (the grid's frame, in [-1, 1]) it is edge-aware: each
    difference is weighted by ``exp(-edge_weight * mean_c |d image|)`` so the flow may jump where
    the image does.
    """
    _check_flow(flow)
    dx = (flow[..., :, 1:] - flow[..., :, :-1]).abs().sum(1, keepdim=True)
    dy = (flow[..., 1:, :] - flow[..., :-1, :]).abs().sum(1, keepdim=True)
    if image is not None:
        dx = dx * torch.exp(-edge_weight * (image[..., :, 1:] - image[..., :, :-1]).abs().mean(1, keepdim=True))
        dy = dy * torch.exp(-edge_weight * (image[..., 1:, :] - image[..., :-1, :]).abs().mean(1, keepdim=True))
    terms = [d.mean() for d in (dx, dy) if d.numel()]
    return sum(terms, flow.new_zeros(())) / max(len(terms), 1)
