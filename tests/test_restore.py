"""SR head: config, shapes, the untrained head returning exactly the upsampled reference frame, the
straight-through clamp, the recognizer resize, and the geometry helpers that build SR targets."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ksrnet.models.restore import (
    RestoreConfig,
    SRHead,
    clamp_straight_through,
    sr_homography_from_lr,
    to_recognizer_input,
    warp_to_reference_grid,
)


def micro(**overrides) -> RestoreConfig:
    return RestoreConfig(**{**dict(in_channels=8, features=8, num_res_blocks=1), **overrides})


def head(config: RestoreConfig | None = None, seed: int = 0) -> SRHead:
    torch.manual_seed(seed)
    return SRHead(config or micro()).eval()


def test_config_validation_and_round_trip():
    cfg = RestoreConfig()
    assert RestoreConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.num_stages == 2
    for bad in (dict(upscale=3), dict(upscale=1), dict(features=0), dict(num_res_blocks=-1),
                dict(res_scale=0), dict(in_channels=True)):
        with pytest.raises(ValueError):
            RestoreConfig(**bad)
    with pytest.raises(ValueError):
        RestoreConfig.from_dict({"feature": 3})


@pytest.mark.parametrize("upscale", [2, 4])
@pytest.mark.parametrize("hw", [(17, 48), (19, 45)])
def test_shapes(upscale, hw):
    h, w = hw
    cfg = micro(upscale=upscale)
    m = head(cfg)
    with torch.no_grad():
        sr = m(torch.randn(2, cfg.in_channels, h, w), torch.rand(2, 3, h, w) * 2 - 1)
    assert sr.shape == (2, 3, upscale * h, upscale * w)


def test_untrained_head_is_upsampled_reference():
    cfg = micro(num_res_blocks=2)
    m = head(cfg)
    ref = torch.rand(2, 3, 17, 48) * 2 - 1
    with torch.no_grad():
        sr = m(torch.randn(2, cfg.in_channels, 17, 48), ref)
    expected = F.interpolate(ref, scale_factor=4, mode="bilinear", align_corners=False)
    assert torch.equal(sr, expected)


def test_trained_head_stays_in_range_and_trains():
    cfg = micro()
    m = head(cfg).train()
    torch.nn.init.normal_(m.conv_out.weight, std=1.0)  # a head that overshoots
    feats = torch.randn(1, cfg.in_channels, 5, 7)
    ref = torch.rand(1, 3, 5, 7) * 2 - 1
    sr = m(feats, ref)
    assert sr.min() >= -1 and sr.max() <= 1
    assert (sr.abs() == 1).any()  # some pixels saturated
    sr.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_clamp_straight_through():
    x = torch.tensor([-3.0, -0.5, 0.25, 2.0], requires_grad=True)
    y = clamp_straight_through(x)
    assert torch.equal(y, torch.tensor([-1.0, -0.5, 0.25, 1.0]))
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones(4))  # a saturated pixel still gets pulled back


def test_rejects_mismatched_inputs():
    cfg = micro()
    m = head(cfg)
    with pytest.raises(ValueError):
        m(torch.randn(1, cfg.in_channels + 1, 5, 7), torch.zeros(1, 3, 5, 7))
    with pytest.raises(ValueError):
        m(torch.randn(1, cfg.in_channels, 5, 7), torch.zeros(1, 3, 5, 8))


def test_to_recognizer_input():
    sr = (torch.rand(2, 3, 68, 192) * 2 - 1).requires_grad_(True)
    out = to_recognizer_input(sr)
    assert out.shape == (2, 3, 32, 128)
    assert out.min() >= -1 and out.max() <= 1
    out.sum().backward()
    assert sr.grad.abs().sum() > 0
    same = torch.zeros(1, 3, 32, 128)
    assert to_recognizer_input(same) is same
    # A constant image stays constant through the (antialiased) resize.
    const = torch.full((1, 3, 68, 192), 0.3)
    assert torch.allclose(to_recognizer_input(const, (16, 32)), torch.full((1, 3, 16, 32), 0.3))


# -- geometry -------------------------------------------------------------------------------------


def test_sr_homography_from_lr_matches_bilinear_grid():
    s = 4
    h_sr = sr_homography_from_lr(torch.eye(3, dtype=torch.float64), s)
    # SR pixel u sits at LR coordinate (u - 1.5) / 4, as in F.interpolate(align_corners=False).
    for u in (0.0, 1.5, 7.0, 191.0):
        p = h_sr @ torch.tensor([u, u, 1.0], dtype=torch.float64)
        assert torch.allclose(p[:2] / p[2], torch.tensor([(u - 1.5) / 4] * 2, dtype=torch.float64))
    # Batched, and composed with an LR->canonical map.
    lr = torch.tensor([[2.0, 0, 3], [0, 2.0, -1], [0, 0, 1]], dtype=torch.float64)
    batched = sr_homography_from_lr(lr.expand(3, 3, 3), s)
    assert batched.shape == (3, 3, 3) and torch.allclose(batched[1], lr @ h_sr)


def test_warp_identity_and_translation():
    img = torch.rand(2, 3, 6, 9)
    out, valid = warp_to_reference_grid(img, torch.eye(3), (6, 9))
    assert torch.allclose(out, img, atol=1e-6) and valid.shape == (2, 1, 6, 9) and bool(valid.all())
    shift = torch.tensor([[1.0, 0, 2], [0, 1.0, 1], [0, 0, 1]])  # output (x, y) <- canonical (x+2, y+1)
    out, valid = warp_to_reference_grid(img, shift.expand(2, 3, 3), (6, 9))
    assert torch.allclose(out[..., :5, :7], img[..., 1:, 2:], atol=1e-6)
    assert bool(valid[..., :5, :7].all()) and not bool(valid[..., 5:, :].any()) and not bool(valid[..., 7:].any())


def test_warp_matches_opencv():
    """Same convention as ``ksrnet.synth.camera`` / OpenCV: ``warpPerspective(src, H, size,
    WARP_INVERSE_MAP)`` samples ``src`` at ``H (x, y)``."""
    rng = np.random.default_rng(0)
    small = rng.random((6, 12, 3)).astype(np.float32)
    canonical = cv2.resize(small, (192, 48), interpolation=cv2.INTER_CUBIC)  # smooth
    hmat = np.array([[0.95, 0.08, 4.0], [-0.03, 0.9, 3.0], [1e-4, 2e-4, 1.0]])
    out_w, out_h = 170, 40
    expected = cv2.warpPerspective(canonical, hmat, (out_w, out_h),
                                   flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
    src = torch.from_numpy(canonical).permute(2, 0, 1).unsqueeze(0)
    got, valid = warp_to_reference_grid(src, torch.from_numpy(hmat), (out_h, out_w))
    got = got[0].permute(1, 2, 0).numpy()
    inside = valid[0, 0].numpy().astype(bool)
    assert inside.mean() > 0.8
    # OpenCV quantises sampling positions to 1/32 px; the image is smooth, so that is tiny.
    assert np.abs(got - expected)[inside].max() < 0.03


def test_warp_is_differentiable():
    img = torch.rand(1, 3, 8, 8, requires_grad=True)
    hmat = torch.tensor([[1.1, 0.0, 0.3], [0.0, 0.9, 0.2], [0.0, 0.0, 1.0]], requires_grad=True)
    out, _ = warp_to_reference_grid(img, hmat, (8, 8))
    out.sum().backward()
    assert img.grad.abs().sum() > 0 and hmat.grad.abs().sum() > 0
