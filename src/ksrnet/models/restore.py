"""Restoration head of KSR-Net: fused LR features -> super-resolved RGB plate (PixelShuffle).

Geometry, the assumption everything here rests on: the SR image lives on the **reference frame's
pixel grid, ``upscale`` times finer** (the geometry of ``F.interpolate(reference, scale_factor=
upscale, mode="bilinear", align_corners=False)``). The head knows nothing of plate corners: aligned
features are on the reference grid, so is its output. The training target is therefore the
canonical (rectified, undegraded) HR plate *warped onto that grid*, which ``warp_to_reference_grid``
does with the homography the synthetic camera model knows (``sr_homography_from_lr`` turns the
``to_canonical`` LR-pixel homography of ``synth_gt.npz`` into the SR-pixel one). The recogniser then
reads the SR image after a plain resize (``to_recognizer_input``), like the LR crops it is trained on
(``ksrnet.preprocess``: whole detector crops, not rectified plates). The alternative, regressing the
canonical plate itself and learning the rectification implicitly, would ask the head's local
convolutions for a global geometric transform they cannot express for large keystones; a warped
target does not.

Pixel coordinates follow ``ksrnet.synth.camera``: pixel centres at integer coordinates, an image
``w`` wide spans ``[-0.5, w - 0.5]``. LR pixel ``x`` corresponds to SR pixel ``s * x + (s - 1) / 2``.

Images are float in [-1, 1] throughout.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _check_positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"RestoreConfig.{name} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class RestoreConfig:
    """Architecture of the SR head; saved beside every checkpoint.

    ``in_channels``: channels of the fused features (the fusion ``dim``); ``features``: width of the
    head; ``num_res_blocks`` residual blocks (conv-ReLU-conv, output scaled by ``res_scale``) before
    the upsampler; ``upscale``: a power of two, reached by that many PixelShuffle x2 stages;
    ``image_channels``: channels of the reference LR frame and of the output image.
    """

    in_channels: int = 64
    features: int = 64
    num_res_blocks: int = 4
    upscale: int = 4
    image_channels: int = 3
    res_scale: float = 1.0

    def __post_init__(self) -> None:
        for name in ("in_channels", "features", "upscale", "image_channels"):
            _check_positive_int(name, getattr(self, name))
        n = self.num_res_blocks
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"RestoreConfig.num_res_blocks must be an int >= 0, got {n!r}")
        if self.upscale < 2 or self.upscale & (self.upscale - 1):
            raise ValueError(f"RestoreConfig.upscale must be a power of two >= 2, got {self.upscale}")
        r = self.res_scale
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not r > 0:
            raise ValueError(f"RestoreConfig.res_scale must be a positive number, got {r!r}")

    @property
    def num_stages(self) -> int:
        return int(math.log2(self.upscale))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RestoreConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown RestoreConfig keys: {', '.join(unknown)}")
        return cls(**data)


class ResBlock(nn.Module):
    def __init__(self, channels: int, res_scale: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.res_scale = res_scale

    def forward(self, x: Tensor) -> Tensor:
        return x + self.res_scale * self.conv2(F.relu(self.conv1(x)))


class SRHead(nn.Module):
    """``forward(features (B, C, H, W), reference (B, 3, H, W)) -> sr (B, 3, s*H, s*W)`` in [-1, 1].

    ``sr = clamp(bilinear_up(reference) + residual(features), -1, 1)``: a global residual over the
    bilinearly upsampled reference LR frame (``align_corners=False``, which is the SR-grid geometry
    described in the module docstring). The last convolution is zero-initialised, so an untrained
    head returns exactly the upsampled reference frame (clamped; a bilinear upsample of an image in
    [-1, 1] stays in range), and training starts from a sensible image rather than noise. The
    clamp is straight-through (the gradient passes as if unclamped): a plain clamp would leave a
    pixel pushed past +-1 with no gradient, stuck even when its target is the opposite colour; a
    tanh would distort the identity path.
    """

    def __init__(self, config: RestoreConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        f = c.features
        self.conv_in = nn.Conv2d(c.in_channels, f, 3, padding=1)
        self.body = nn.Sequential(*(ResBlock(f, c.res_scale) for _ in range(c.num_res_blocks)))
        self.conv_body = nn.Conv2d(f, f, 3, padding=1)
        stages: list[nn.Module] = []
        for _ in range(c.num_stages):
            stages += [nn.Conv2d(f, 4 * f, 3, padding=1), nn.PixelShuffle(2), nn.LeakyReLU(0.2)]
        self.upsample = nn.Sequential(*stages)
        self.conv_out = nn.Conv2d(f, c.image_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, features: Tensor, reference: Tensor) -> Tensor:
        c = self.config
        if features.dim() != 4 or features.shape[1] != c.in_channels:
            raise ValueError(f"features must be (B, {c.in_channels}, H, W), got {tuple(features.shape)}")
        if (reference.dim() != 4 or reference.shape[1] != c.image_channels
                or reference.shape[0] != features.shape[0] or reference.shape[-2:] != features.shape[-2:]):
            raise ValueError(f"reference must be (B, {c.image_channels}, H, W) matching features "
                             f"{tuple(features.shape)}, got {tuple(reference.shape)}")
        x = self.conv_in(features)
        x = x + self.conv_body(self.body(x))
        residual = self.conv_out(self.upsample(x))
        base = F.interpolate(reference, scale_factor=c.upscale, mode="bilinear", align_corners=False)
        return clamp_straight_through(base + residual)


def clamp_straight_through(x: Tensor, low: float = -1.0, high: float = 1.0) -> Tensor:
    """``x.clamp(low, high)`` in the forward pass, identity gradient in the backward pass."""
    # x - x.detach() is exactly 0 in the forward pass, so the output is exactly the clamp.
    return x.clamp(low, high).detach() + (x - x.detach())


def to_recognizer_input(sr: Tensor, size: tuple[int, int] = (32, 128)) -> Tensor:
    """Resize SR images ``(B, C, h, w)`` to the recogniser's ``size = (height, width)`` (bilinear,
    antialiased when shrinking so the 4x image does not alias; differentiable), clamped to [-1, 1]."""
    if tuple(sr.shape[-2:]) == tuple(size):
        return sr
    shrink = sr.shape[-2] > size[0] or sr.shape[-1] > size[1]
    out = F.interpolate(sr, size=size, mode="bilinear", align_corners=False, antialias=shrink)
    return out.clamp(-1.0, 1.0)


# --------------------------------------------------------------------------------------------------
# Geometry helpers for building SR targets


def sr_homography_from_lr(lr_to_canonical: Tensor, upscale: int) -> Tensor:
    """Turn a homography from LR-frame pixels to canonical pixels (``to_canonical_NNN`` of the
    synthetic ground truth) into one from SR-grid pixels (``upscale`` x) to canonical pixels.

    SR pixel ``u`` sits at LR coordinate ``(u - (s - 1) / 2) / s``, so ``H_sr = H_lr @ S^-1`` with
    ``S = [[s, 0, (s-1)/2], [0, s, (s-1)/2], [0, 0, 1]]``. Works on ``(3, 3)`` or ``(B, 3, 3)``."""
    s = float(upscale)
    off = (s - 1.0) / 2.0
    inv = torch.tensor([[1.0 / s, 0.0, -off / s], [0.0, 1.0 / s, -off / s], [0.0, 0.0, 1.0]],
                       dtype=lr_to_canonical.dtype, device=lr_to_canonical.device)
    return lr_to_canonical @ inv


def warp_to_reference_grid(hr_canonical: Tensor, frame_to_canonical: Tensor, out_size: tuple[int, int],
                           *, mode: str = "bilinear", padding_mode: str = "border") -> tuple[Tensor, Tensor]:
    """Resample the canonical HR plate onto the SR grid of the reference frame (backward warping).

    ``hr_canonical``: ``(B, C, Hc, Wc)``; ``frame_to_canonical``: ``(B, 3, 3)`` or ``(3, 3)``
    homography from output pixels ``(x, y, 1)`` (the 4x reference-frame grid, pixel centres at
    integer coordinates) to canonical pixels; ``out_size = (height, width)`` of the SR image.
    Returns ``(target (B, C, H, W), valid (B, 1, H, W) float)``, ``valid`` = 1 where the point maps
    inside the canonical image (use it as the mask of the pixel losses: the plate's surroundings are
    not in the canonical image). Point-sampled per output pixel: fine for shrinking by <= ~2x;
    blur the canonical plate first for stronger minification. Differentiable in both inputs.
    """
    if hr_canonical.dim() != 4:
        raise ValueError(f"hr_canonical must be (B, C, H, W), got {tuple(hr_canonical.shape)}")
    b, _, hc, wc = hr_canonical.shape
    h_mat = frame_to_canonical.to(dtype=hr_canonical.dtype, device=hr_canonical.device)
    if h_mat.dim() == 2:
        h_mat = h_mat.unsqueeze(0).expand(b, 3, 3)
    if tuple(h_mat.shape) != (b, 3, 3):
        raise ValueError(f"frame_to_canonical must be (3, 3) or ({b}, 3, 3), got {tuple(frame_to_canonical.shape)}")
    height, width = out_size
    xs = torch.arange(width, dtype=h_mat.dtype, device=h_mat.device).view(1, 1, 1, width)
    ys = torch.arange(height, dtype=h_mat.dtype, device=h_mat.device).view(1, 1, height, 1)
    # H (x, y, 1) for every output pixel as broadcast sums over the grid's rows and columns: the same
    # values as a (pixels x 3) @ (3 x 3) product, and the whole warp takes half the time on a CPU.
    mapped = h_mat[:, :, 0, None, None] * xs + h_mat[:, :, 1, None, None] * ys + h_mat[:, :, 2, None, None]
    src_x, src_y = mapped[:, 0] / mapped[:, 2], mapped[:, 1] / mapped[:, 2]  # (B, H, W)
    # align_corners=False: pixel centre x maps to (2x + 1) / W - 1.
    grid = torch.stack([(2.0 * src_x + 1.0) / wc - 1.0, (2.0 * src_y + 1.0) / hc - 1.0], dim=-1)
    target = F.grid_sample(hr_canonical, grid, mode=mode, padding_mode=padding_mode, align_corners=False)
    inside = (src_x >= -0.5) & (src_x <= wc - 0.5) & (src_y >= -0.5) & (src_y <= hc - 0.5)
    inside = inside & (mapped[:, 2] > 0)  # points behind the camera's horizon are not the plate
    return target, inside.to(hr_canonical.dtype).unsqueeze(1)
