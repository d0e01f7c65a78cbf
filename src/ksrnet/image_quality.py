"""PSNR and SSIM of restored plates on the luma (Y) channel, the way SR papers report them.

Images are ``(B, 3, H, W)`` RGB in [-1, 1] (the models' range). Y is ITU-R BT.601 luma on the
[16, 235] scale (MATLAB's ``rgb2ycbcr``), so figures compare with published ones. ``crop_border``
pixels are dropped on every side first (customarily the SR scale). An optional ``mask``
``(B, 1, H, W)`` restricts the score to pixels with a defined target: a synthetic plate's canonical
HR covers only the plate, not the car around it. SSIM uses the usual 11x11 Gaussian window
(sigma 1.5) and only windows that lie wholly inside the mask.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

_Y_WEIGHTS = (65.481, 128.553, 24.966)  # BT.601 on RGB in [0, 1], giving Y in [16, 235]
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


def luma(images: Tensor) -> Tensor:
    """``(B, 3, H, W)`` in [-1, 1] -> ``(B, 1, H, W)`` Y in [16, 235] (float64 for stable sums)."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    rgb = (images.double().clamp(-1.0, 1.0) + 1.0) / 2.0
    w = torch.tensor(_Y_WEIGHTS, dtype=torch.float64, device=images.device).view(1, 3, 1, 1)
    return 16.0 + (rgb * w).sum(1, keepdim=True)


def _prepare(pred: Tensor, target: Tensor, mask: Tensor | None, crop_border: int) -> tuple[Tensor, Tensor, Tensor]:
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    b, _, h, w = pred.shape
    if mask is None:
        mask = torch.ones(b, 1, h, w, dtype=torch.float64, device=pred.device)
    elif mask.shape != (b, 1, h, w):
        raise ValueError(f"mask must be (B, 1, H, W) = {(b, 1, h, w)}, got {tuple(mask.shape)}")
    if 2 * crop_border >= min(h, w):
        raise ValueError(f"crop_border {crop_border} leaves nothing of a {h}x{w} image")
    c = crop_border
    y_pred, y_true, m = luma(pred), luma(target), (mask > 0.5).double()
    if c:
        y_pred, y_true, m = y_pred[..., c:-c, c:-c], y_true[..., c:-c, c:-c], m[..., c:-c, c:-c]
    return y_pred, y_true, m


def psnr_y(pred: Tensor, target: Tensor, mask: Tensor | None = None, crop_border: int = 0) -> Tensor:
    """Per-image PSNR in dB on Y (peak 255); NaN for an image with no scored pixel, inf if exact."""
    y_pred, y_true, m = _prepare(pred, target, mask, crop_border)
    count = m.sum((1, 2, 3))
    mse = ((y_pred - y_true) ** 2 * m).sum((1, 2, 3)) / count.clamp_min(1.0)
    out = 10.0 * torch.log10(255.0 ** 2 / mse)
    return torch.where(count > 0, out, torch.full_like(out, math.nan))


def _gaussian_window(device) -> Tensor:
    x = torch.arange(SSIM_WINDOW, dtype=torch.float64, device=device) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * SSIM_SIGMA ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).view(1, 1, SSIM_WINDOW, SSIM_WINDOW)


def ssim_y(pred: Tensor, target: Tensor, mask: Tensor | None = None, crop_border: int = 0) -> Tensor:
    """Per-image mean SSIM on Y over the windows wholly inside the mask; NaN where there is none."""
    y_pred, y_true, m = _prepare(pred, target, mask, crop_border)
    if min(y_pred.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW} px after cropping, got {tuple(y_pred.shape[-2:])}")
    win = _gaussian_window(pred.device)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_p, mu_t = F.conv2d(y_pred, win), F.conv2d(y_true, win)
    var_p = F.conv2d(y_pred * y_pred, win) - mu_p ** 2
    var_t = F.conv2d(y_true * y_true, win) - mu_t ** 2
    cov = F.conv2d(y_pred * y_true, win) - mu_p * mu_t
    ssim_map = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p ** 2 + mu_t ** 2 + c1) * (var_p + var_t + c2))
    inside = -F.max_pool2d(-m, SSIM_WINDOW, stride=1)  # 1 where the whole window is in the mask
    count = inside.sum((1, 2, 3))
    out = (ssim_map * inside).sum((1, 2, 3)) / count.clamp_min(1.0)
    return torch.where(count > 0, out, torch.full_like(out, math.nan))
