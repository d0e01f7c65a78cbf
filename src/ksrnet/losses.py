"""Restoration losses and image-quality metrics of KSR-Net.

Losses (weights are the caller's business; every loss returns a scalar mean):

* ``charbonnier``: robust pixel loss ``sqrt(d^2 + eps^2) - eps`` (shifted so identical images give
  exactly 0), with an optional mask (e.g. the validity map of ``warp_to_reference_grid``).
* ``gradient_profile_loss``: edge loss, L1 between the Sobel gradients (x and y components) of the
  two images. Components rather than magnitudes: they also penalise an edge of the right strength
  in the wrong direction, and have no sqrt whose gradient blows up on flat regions.
* ``PerceptualLoss``: distance between the features of a *frozen recognizer's encoder* at several
  blocks. ImageNet VGG weights (the usual perceptual network) cannot be downloaded here, and a
  plate recognizer's features are closer to what matters anyway: strokes that tell characters apart.
* ``semantic_loss``: cross-entropy of the frozen recognizer's NAR char logits on the SR image
  against the ground-truth text; gradients reach the SR image, never the recognizer.

"Frozen" is enforced by ``frozen(module)`` for the duration of the call (eval mode, parameters
not requiring grad, both restored afterwards), so the caller's recognizer can stay trainable
elsewhere. Not thread-safe: do not run another forward of the same module concurrently.

Metrics (``psnr_y``, ``ssim_y``): computed on the luma channel Y of ITU-R BT.601 as the SR literature
does (MATLAB ``rgb2ycbcr``: ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` for RGB in [0, 1], so Y is
in [16, 235]), on a 0..255 scale, without rounding, after cropping ``crop_border`` pixels on each
side. Inputs are ``(B, 3, H, W)`` (or ``(B, 1, H, W)``, taken as Y already), float in
``value_range`` (default [-1, 1], the model's range) or uint8 tensors (0..255). Both return one
value per image, ``(B,)``; PSNR of identical images is ``inf`` (average finite values, or clamp,
in the caller). SSIM is Wang et al. (2004): 11x11 Gaussian window (sigma 1.5), K1 = 0.01,
K2 = 0.03, L = 255, 'valid' filtering, mean of the SSIM map.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ksrnet.models.restore import to_recognizer_input

# BT.601 luma on the 0..255 scale from RGB in [0, 1] (MATLAB rgb2ycbcr, the SR-paper convention).
Y_OFFSET = 16.0
Y_WEIGHTS = (65.481, 128.553, 24.966)
PIXEL_MAX = 255.0
# SSIM (Wang, Bovik, Sheikh, Simoncelli 2004).
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


# --------------------------------------------------------------------------------------------------
# Pixel and edge losses


def _masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return values.mean()
    weights = mask.to(values.dtype).expand_as(values)
    total = weights.sum()
    # An all-zero mask has nothing to compare: 0, not NaN.
    return torch.where(total > 0, (values * weights).sum() / total.clamp_min(torch.finfo(values.dtype).tiny),
                       torch.zeros((), dtype=values.dtype, device=values.device))


def charbonnier(pred: Tensor, target: Tensor, eps: float = 1e-3, mask: Tensor | None = None) -> Tensor:
    """Mean of ``sqrt((pred - target)^2 + eps^2) - eps`` (0 for identical inputs, ~|d| for
    ``|d| >> eps``). ``mask``: weights broadcastable to ``pred`` (e.g. ``(B, 1, H, W)``), a
    weighted mean over the elements it covers."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
    # At least float32: in float16, eps^2 = 1e-6 is subnormal and sqrt(eps^2) - eps is not 0.
    diff = (pred - target).to(torch.promote_types(pred.dtype, torch.float32))
    return _masked_mean(torch.sqrt(diff * diff + eps * eps) - eps, mask)


def sobel_gradients(images: Tensor) -> tuple[Tensor, Tensor]:
    """Sobel x and y derivatives of every channel, ``(B, C, H - 2, W - 2)`` each ('valid' filtering,
    so borders invent nothing). Normalised (/8) so a ramp of slope 1 per pixel gives 1."""
    if images.dim() != 4 or images.shape[-1] < 3 or images.shape[-2] < 3:
        raise ValueError(f"images must be (B, C, H, W) with H, W >= 3, got {tuple(images.shape)}")
    c = images.shape[1]
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]],
                      dtype=images.dtype, device=images.device) / 8.0
    kernels = torch.stack([kx, kx.t()]).unsqueeze(1).repeat(c, 1, 1, 1)  # (2C, 1, 3, 3): x, y per channel
    grads = F.conv2d(images, kernels, groups=c)
    return grads[:, 0::2], grads[:, 1::2]


def gradient_profile_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Edge loss: mean L1 distance between the Sobel gradient components of ``pred`` and
    ``target`` (``(B, C, H, W)``). With ``mask`` ``(B, 1, H, W)``, only where the whole 3x3 support
    of the filter lies inside the mask."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    pgx, pgy = sobel_gradients(pred)
    tgx, tgy = sobel_gradients(target)
    inner = None
    if mask is not None:
        inner = -F.max_pool2d(-mask.to(pred.dtype), 3, stride=1)  # 'valid' erosion, Sobel's output grid
    return 0.5 * (_masked_mean((pgx - tgx).abs(), inner) + _masked_mean((pgy - tgy).abs(), inner))


# --------------------------------------------------------------------------------------------------
# Recognizer-based losses


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Run ``module`` as a fixed function: eval mode and no parameter gradients inside the block,
    previous modes and ``requires_grad`` flags restored on exit. Inputs keep their gradients."""
    modes = [(m, m.training) for m in module.modules()]
    flags = [(p, p.requires_grad) for p in module.parameters()]
    try:
        module.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield module
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode


FeatureFn = Callable[[Tensor], Sequence[Tensor]]


class PerceptualLoss(nn.Module):
    """``sum_i w_i * mean|phi_i(pred) - phi_i(target)|`` over the feature maps ``phi_i`` that
    ``encoder_fn(images)`` returns (a sequence of tensors, e.g. a ViT's block outputs).

    ``encoder_fn`` must be frozen (``from_recognizer`` builds one that is); it is stored as a plain
    callable, not a submodule, so the encoder's weights are neither part of this module's
    parameters nor of its state dict. ``layer_weights`` default to 1 per feature map.
    ``normalize=True`` layer-normalises each feature vector (last axis, no affine) before comparing,
    so deep blocks (whose activations grow along the residual stream) do not dominate. Target
    features are computed without gradient.
    """

    def __init__(self, encoder_fn: FeatureFn, layer_weights: Sequence[float] | None = None,
                 *, normalize: bool = True) -> None:
        super().__init__()
        self.encoder_fn = encoder_fn
        self.layer_weights = None if layer_weights is None else tuple(float(w) for w in layer_weights)
        self.normalize = normalize

    @classmethod
    def from_recognizer(cls, recognizer: nn.Module, blocks: Sequence[int] | None = None,
                        layer_weights: Sequence[float] | None = None, *, normalize: bool = True) -> "PerceptualLoss":
        """Features of ``recognizer.encode(images, return_intermediates=True)`` (a ``Parseq``) at
        encoder ``blocks`` (default: all; block 0 is the stem when there are no blocks), run frozen. Images are resized to the recognizer's input
        size first if they differ (``to_recognizer_input``)."""
        size = (recognizer.config.img_h, recognizer.config.img_w)
        # An encoder without transformer blocks (enc_depth 0, the shipped CNN encoder) returns its
        # stem's tokens as the one feature map.
        depth = max(recognizer.config.enc_depth, 1)
        chosen = tuple(range(depth)) if blocks is None else tuple(blocks)
        if not chosen or any(not 0 <= i < depth for i in chosen):
            raise ValueError(f"blocks must be indices in [0, {depth}), got {blocks!r}")

        def encoder_fn(images: Tensor) -> list[Tensor]:
            with frozen(recognizer):
                _, feats = recognizer.encode(to_recognizer_input(images, size), return_intermediates=True)
            return [feats[i] for i in chosen]

        return cls(encoder_fn, layer_weights, normalize=normalize)

    def _prepare(self, f: Tensor) -> Tensor:
        return F.layer_norm(f, f.shape[-1:]) if self.normalize else f

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        pred_feats = list(self.encoder_fn(pred))
        with torch.no_grad():
            target_feats = list(self.encoder_fn(target))
        if len(pred_feats) != len(target_feats) or not pred_feats:
            raise ValueError("encoder_fn returned no features or different numbers for pred and target")
        weights = self.layer_weights or (1.0,) * len(pred_feats)
        if len(weights) != len(pred_feats):
            raise ValueError(f"{len(weights)} layer weights for {len(pred_feats)} feature maps")
        total = pred.new_zeros(())
        for w, fp, ft in zip(weights, pred_feats, target_feats):
            total = total + w * (self._prepare(fp) - self._prepare(ft)).abs().mean()
        return total


def semantic_loss(recognizer: nn.Module, sr_images: Tensor, targets: Tensor, *, refine_iters: int = 0,
                  label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy of the frozen ``recognizer``'s NAR char logits on ``sr_images`` against
    ``targets`` ``(B, num_slots)`` (class indices), mean over slots and batch.

    ``sr_images`` (in [-1, 1]) are resized to the recognizer's input size if needed. Gradients flow
    into ``sr_images`` only. ``refine_iters=0`` (default) reads the pure NAR logits: the cloze
    refinement feeds back an argmax, which adds nothing differentiable."""
    c = recognizer.config
    if targets.dim() != 2 or targets.shape != (sr_images.shape[0], c.num_slots):
        raise ValueError(f"targets must be (B, {c.num_slots}) = {(sr_images.shape[0], c.num_slots)}, "
                         f"got {tuple(targets.shape)}")
    images = to_recognizer_input(sr_images, (c.img_h, c.img_w))
    with frozen(recognizer):
        logits = recognizer(images, mode="nar", refine_iters=refine_iters).char_logits
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten().long(), label_smoothing=label_smoothing)


# --------------------------------------------------------------------------------------------------
# Metrics (Y channel, 0..255 scale)


def _to_y(images: Tensor, value_range: tuple[float, float], crop_border: int) -> Tensor:
    """``(B, C, H, W)`` or ``(C, H, W)`` -> Y ``(B, 1, H', W')`` in float64 on the 0..255 scale."""
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (B, 3 or 1, H, W), got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        unit = images.double() / PIXEL_MAX
    else:
        low, high = value_range
        if not high > low:
            raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
        unit = (images.double() - low) / (high - low)
    if unit.shape[1] == 3:
        w = torch.tensor(Y_WEIGHTS, dtype=unit.dtype, device=unit.device).view(1, 3, 1, 1)
        y = Y_OFFSET + (unit * w).sum(dim=1, keepdim=True)
    else:
        y = unit * PIXEL_MAX
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    if crop_border:
        if min(y.shape[-2:]) <= 2 * crop_border:
            raise ValueError(f"crop_border={crop_border} leaves nothing of a {tuple(y.shape[-2:])} image")
        y = y[..., crop_border:-crop_border, crop_border:-crop_border]
    return y


def _pair_to_y(pred: Tensor, target: Tensor, value_range: tuple[float, float], crop_border: int) -> tuple[Tensor, Tensor]:
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    return _to_y(pred.detach(), value_range, crop_border), _to_y(target.detach(), value_range, crop_border)


def psnr_y(pred: Tensor, target: Tensor, crop_border: int = 0, *,
           value_range: tuple[float, float] = (-1.0, 1.0)) -> Tensor:
    """PSNR (dB) on BT.601 Y, peak 255, per image ``(B,)`` (float64); ``inf`` for identical images."""
    yp, yt = _pair_to_y(pred, target, value_range, crop_border)
    mse = ((yp - yt) ** 2).mean(dim=(1, 2, 3))
    return 10.0 * torch.log10(PIXEL_MAX ** 2 / mse)


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2.0
    g = torch.exp(-(coords ** 2) / (2.0 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).view(1, 1, size, size)


def ssim_y(pred: Tensor, target: Tensor, crop_border: int = 0, *,
           value_range: tuple[float, float] = (-1.0, 1.0)) -> Tensor:
    """SSIM on BT.601 Y (0..255 scale), per image ``(B,)`` (float64); 1 for identical images.
    The image, after cropping, must be at least ``SSIM_WINDOW`` pixels on each side."""
    yp, yt = _pair_to_y(pred, target, value_range, crop_border)
    if min(yp.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} after cropping, "
                         f"got {tuple(yp.shape[-2:])}")
    win = _gaussian_window(SSIM_WINDOW, SSIM_SIGMA, yp.dtype, yp.device)
    c1 = (SSIM_K1 * PIXEL_MAX) ** 2
    c2 = (SSIM_K2 * PIXEL_MAX) ** 2
    mu_p = F.conv2d(yp, win)
    mu_t = F.conv2d(yt, win)
    var_p = F.conv2d(yp * yp, win) - mu_p ** 2
    var_t = F.conv2d(yt * yt, win) - mu_t ** 2
    cov = F.conv2d(yp * yt, win) - mu_p * mu_t
    ssim_map = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p ** 2 + mu_t ** 2 + c1) * (var_p + var_t + c2))
    return ssim_map.mean(dim=(1, 2, 3))


__all__ = [
    "PerceptualLoss",
    "charbonnier",
    "frozen",
    "gradient_profile_loss",
    "psnr_y",
    "semantic_loss",
    "sobel_gradients",
    "ssim_y",
]
