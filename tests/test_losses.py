"""Losses (zero on identical inputs, positive otherwise, masks, frozen recognizer: gradients reach the
image and never the recognizer) and the Y-channel metrics (known values)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ksrnet.losses import (
    PerceptualLoss,
    charbonnier,
    frozen,
    gradient_profile_loss,
    psnr_y,
    semantic_loss,
    sobel_gradients,
    ssim_y,
)
from ksrnet.models.flow import charbonnier as flow_charbonnier
from ksrnet.models.parseq import Parseq, ParseqConfig


def images(*shape, seed=0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def recognizer(seed: int = 0) -> Parseq:
    torch.manual_seed(seed)
    cfg = ParseqConfig(img_h=16, img_w=32, embed_dim=32, enc_depth=2, enc_heads=2, dec_depth=1, dec_heads=2,
                       mlp_ratio=2.0, dropout=0.1)
    return Parseq(cfg).train()  # training mode on purpose: the losses must evaluate it frozen anyway


# -- pixel and edge -------------------------------------------------------------------------------


def test_charbonnier():
    a, b = images(2, 3, 8, 8), images(2, 3, 8, 8, seed=1)
    assert charbonnier(a, a).item() == 0.0
    assert charbonnier(a, b) > 0
    eps = 1e-3
    ones = torch.ones(1, 1, 4, 4)
    assert math.isclose(charbonnier(ones, torch.zeros_like(ones), eps).item(), math.sqrt(1 + eps ** 2) - eps,
                        rel_tol=1e-6)
    # The mask restricts the mean to the pixels it covers.
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., :4, :] = 1
    c = a.clone()
    c[..., 4:, :] = b[..., 4:, :]
    assert charbonnier(c, a, mask=mask).item() == 0.0
    assert charbonnier(b, a, mask=mask) > 0
    assert charbonnier(b, a, mask=torch.zeros(2, 1, 8, 8)).item() == 0.0  # empty mask: 0, not NaN
    with pytest.raises(ValueError):
        charbonnier(a, b[..., :4])
    # Identical half-precision images give exactly 0 too (float16 eps^2 is subnormal).
    for dtype in (torch.float16, torch.bfloat16):
        assert charbonnier(a.to(dtype), a.to(dtype)).item() == 0.0
        assert flow_charbonnier(torch.zeros(3, dtype=dtype)).eq(0).all()


def test_sobel_on_ramp():
    ramp = torch.arange(10.0).view(1, 1, 1, 10).expand(1, 1, 6, 10)
    gx, gy = sobel_gradients(ramp)
    assert gx.shape == (1, 1, 4, 8)
    assert torch.allclose(gx, torch.ones_like(gx)) and torch.allclose(gy, torch.zeros_like(gy))


def test_gradient_profile_loss():
    a, b = images(2, 3, 12, 16), images(2, 3, 12, 16, seed=1)
    assert gradient_profile_loss(a, a).item() == 0.0
    assert torch.isclose(gradient_profile_loss(a, a + 0.3), torch.zeros(()), atol=1e-6)  # edges only
    assert gradient_profile_loss(a, b) > 0
    blurred = F.avg_pool2d(a, 3, stride=1, padding=1)
    assert gradient_profile_loss(blurred, a) > 0
    x = a.clone().requires_grad_(True)
    gradient_profile_loss(x, b).backward()
    assert x.grad.abs().sum() > 0


# -- recognizer-based ------------------------------------------------------------------------------


def _snapshot(module):
    return [(m.training) for m in module.modules()], [p.requires_grad for p in module.parameters()]


def test_frozen_restores_state():
    rec = recognizer()
    rec.blocks[0].eval()  # mixed modes are restored per module
    before = _snapshot(rec)
    with frozen(rec):
        assert not rec.training and not any(p.requires_grad for p in rec.parameters())
    assert _snapshot(rec) == before
    with pytest.raises(RuntimeError):
        with frozen(rec):
            raise RuntimeError("boom")
    assert _snapshot(rec) == before


def test_perceptual_loss_from_recognizer():
    rec = recognizer()
    before = _snapshot(rec)
    loss_fn = PerceptualLoss.from_recognizer(rec, blocks=(0, 1), layer_weights=(1.0, 0.5))
    assert list(loss_fn.parameters()) == [] and loss_fn.state_dict() == {}
    a, b = images(2, 3, 16, 32), images(2, 3, 16, 32, seed=1)
    assert loss_fn(a, a).item() == 0.0  # eval mode: no dropout noise
    x = b.clone().requires_grad_(True)
    loss = loss_fn(x, a)
    assert loss > 0
    loss.backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is None for p in rec.parameters())
    assert _snapshot(rec) == before
    # SR-sized images are resized to the recognizer's input first.
    assert loss_fn(images(1, 3, 64, 128), images(1, 3, 64, 128, seed=2)) > 0
    with pytest.raises(ValueError):
        PerceptualLoss.from_recognizer(rec, blocks=(2,))


def test_perceptual_loss_from_a_recognizer_without_encoder_blocks(micro_parseq):
    # The shipped recognizer: a CNN stem whose tokens go straight to the decoder (enc_depth 0).
    rec = micro_parseq(stem="cnn", enc_depth=0)
    loss_fn = PerceptualLoss.from_recognizer(rec)
    a, b = images(2, 3, 16, 32), images(2, 3, 16, 32, seed=1)
    assert loss_fn(a, a).item() == 0.0 and loss_fn(b, a).item() > 0
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        PerceptualLoss.from_recognizer(rec, blocks=(1,))


def test_perceptual_loss_generic_encoder():
    conv = torch.nn.Conv2d(3, 4, 3)
    for p in conv.parameters():
        p.requires_grad_(False)
    loss_fn = PerceptualLoss(lambda x: [conv(x), conv(x).relu()], normalize=False)
    a, b = images(1, 3, 8, 8), images(1, 3, 8, 8, seed=1)
    assert loss_fn(a, a).item() == 0.0
    expected = (conv(a) - conv(b)).abs().mean() + (conv(a).relu() - conv(b).relu()).abs().mean()
    assert torch.isclose(loss_fn(a, b), expected)
    with pytest.raises(ValueError):
        PerceptualLoss(lambda x: [conv(x)], layer_weights=(1.0, 2.0))(a, b)


def test_semantic_loss_gradients_reach_images_not_recognizer():
    rec = recognizer()
    before = _snapshot(rec)
    targets = torch.randint(0, rec.config.num_classes, (2, rec.config.num_slots),
                            generator=torch.Generator().manual_seed(0))
    sr = images(2, 3, 64, 128).requires_grad_(True)  # SR size: resized inside
    loss = semantic_loss(rec, sr, targets)
    loss.backward()
    assert sr.grad is not None and sr.grad.abs().sum() > 0
    assert all(p.grad is None for p in rec.parameters())
    assert _snapshot(rec) == before
    # It is the cross-entropy of the NAR logits of the recognizer in eval mode.
    rec.eval()
    with torch.no_grad():
        from ksrnet.models.restore import to_recognizer_input

        logits = rec(to_recognizer_input(sr.detach(), (16, 32)), mode="nar", refine_iters=0).char_logits
    expected = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    assert torch.isclose(loss.detach(), expected, atol=1e-6)
    with pytest.raises(ValueError):
        semantic_loss(rec, sr, targets[:, :5])


# -- metrics --------------------------------------------------------------------------------------


def test_psnr_identical_is_inf():
    a = images(2, 3, 20, 30)
    assert torch.isinf(psnr_y(a, a)).all()


def test_psnr_constant_offset_known_value():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(20, 200, (2, 3, 20, 30), generator=g).to(torch.uint8)
    pred = target + 10
    # Y moves by 10 * (65.481 + 128.553 + 24.966) / 255 = 10 * 219 / 255 everywhere.
    expected = 20 * math.log10(255 / (10 * 219 / 255))
    got = psnr_y(pred, target)
    assert got.shape == (2,) and torch.allclose(got, torch.full((2,), expected, dtype=torch.float64))
    # The same images in [-1, 1] give the same value.
    to_signed = lambda u: u.float() / 127.5 - 1  # noqa: E731
    assert torch.allclose(psnr_y(to_signed(pred), to_signed(target)), got, atol=1e-4)
    # Explicit 0..255 float range.
    assert torch.allclose(psnr_y(pred.float(), target.float(), value_range=(0.0, 255.0)), got)


def test_psnr_crop_border_and_grey():
    a = images(1, 3, 20, 30)
    b = a.clone()
    b[..., :2, :] = -a[..., :2, :]
    assert torch.isfinite(psnr_y(a, b)).all()
    assert torch.isinf(psnr_y(a, b, crop_border=2)).all()
    # Single-channel inputs are Y already: an offset of 0.1 in [-1, 1] is 12.75 on 0..255.
    y = images(1, 1, 10, 10)
    assert torch.allclose(psnr_y(y + 0.1, y), torch.tensor([20 * math.log10(255 / 12.75)], dtype=torch.float64))
    with pytest.raises(ValueError):
        psnr_y(a, b, crop_border=15)


def test_ssim_known_values():
    a = images(2, 3, 24, 32)
    assert torch.allclose(ssim_y(a, a), torch.ones(2, dtype=torch.float64))
    # Constant images: only the luminance term is left, (2 xy + C1) / (x^2 + y^2 + C1).
    ya, yb = 60.0, 100.0
    x = torch.full((1, 1, 16, 16), ya) / 127.5 - 1
    y = torch.full((1, 1, 16, 16), yb) / 127.5 - 1
    c1 = (0.01 * 255) ** 2
    expected = (2 * ya * yb + c1) / (ya ** 2 + yb ** 2 + c1)
    assert torch.allclose(ssim_y(x, y), torch.tensor([expected], dtype=torch.float64), atol=1e-4)
    b = images(2, 3, 24, 32, seed=1)
    s = ssim_y(a, b)
    assert (s < 0.5).all() and torch.allclose(s, ssim_y(b, a))
    blurred = F.avg_pool2d(a, 3, stride=1, padding=1)
    assert ((ssim_y(blurred, a) > s) & (ssim_y(blurred, a) < 1)).all()
    with pytest.raises(ValueError):
        ssim_y(a[..., :10, :10], b[..., :10, :10])


def test_masked_edge_loss_ignores_everything_outside_the_mask():
    from ksrnet.losses import gradient_profile_loss

    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 12, 16, generator=g)
    pred = target.clone()
    pred[..., :, 10:] = torch.rand(2, 3, 12, 6, generator=g)  # differs only in the right part
    mask = torch.zeros(2, 1, 12, 16)
    mask[..., :, :8] = 1
    assert gradient_profile_loss(pred, target, mask) == 0
    assert gradient_profile_loss(pred, target) > 0
    mask[..., :, :12] = 1
    assert gradient_profile_loss(pred, target, mask) > 0
