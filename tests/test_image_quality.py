"""PSNR / SSIM on the Y channel: known values, border cropping, masks, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch

from ksrnet.image_quality import luma, psnr_y, ssim_y


def plate(b: int = 2, h: int = 32, w: int = 48, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g) * 1.6 - 0.8


def test_luma_spans_the_bt601_range():
    black, white = -torch.ones(1, 3, 2, 2), torch.ones(1, 3, 2, 2)
    assert torch.allclose(luma(black), torch.full((1, 1, 2, 2), 16.0, dtype=torch.float64))
    assert torch.allclose(luma(white), torch.full((1, 1, 2, 2), 235.0, dtype=torch.float64))


def test_identical_images_score_inf_and_one():
    x = plate()
    assert torch.isinf(psnr_y(x, x)).all()
    assert torch.allclose(ssim_y(x, x), torch.ones(2, dtype=torch.float64))


def test_psnr_of_a_uniform_luma_offset():
    x = plate(b=1)
    shift = 0.1  # every channel up by 0.1 in [-1, 1] = 0.05 of full scale: Y moves by 0.05 * 219
    got = psnr_y((x + shift).clamp(-1, 1), x)
    y_diff = (luma((x + shift).clamp(-1, 1)) - luma(x))
    expected = 10 * math.log10(255 ** 2 / float((y_diff ** 2).mean()))
    assert got.item() == pytest.approx(expected, rel=1e-9)
    assert 20 < got.item() < 30


def test_more_noise_scores_lower():
    x = plate(b=1)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(x.shape, generator=g)
    a, b = (x + 0.02 * noise).clamp(-1, 1), (x + 0.2 * noise).clamp(-1, 1)
    assert psnr_y(a, x) > psnr_y(b, x)
    assert 0 < ssim_y(b, x) < ssim_y(a, x) < 1


def test_crop_border_ignores_damage_on_the_border():
    x = plate()
    damaged = x.clone()
    damaged[..., :3, :] = 1.0
    damaged[..., :, -3:] = -1.0
    assert torch.isfinite(psnr_y(damaged, x)).all()
    assert torch.isinf(psnr_y(damaged, x, crop_border=3)).all()
    assert torch.allclose(ssim_y(damaged, x, crop_border=3), torch.ones(2, dtype=torch.float64))


def test_mask_ignores_pixels_without_a_target():
    x = plate()
    damaged = x.clone()
    damaged[..., :, 30:] = 0.0
    mask = torch.zeros(2, 1, 32, 48)
    mask[..., :, :30] = 1.0
    assert torch.isinf(psnr_y(damaged, x, mask)).all()
    # SSIM counts only windows wholly inside the mask, so damage next to its edge is not seen either.
    assert torch.allclose(ssim_y(damaged, x, mask), torch.ones(2, dtype=torch.float64))
    assert (ssim_y(damaged, x) < 1).all()


def test_an_empty_mask_gives_nan_not_a_number_that_looks_real():
    x = plate(b=1)
    empty = torch.zeros(1, 1, 32, 48)
    assert math.isnan(psnr_y(x, -x, empty).item())
    assert math.isnan(ssim_y(x, -x, empty).item())


def test_bad_inputs_are_clear_errors():
    x = plate()
    with pytest.raises(ValueError, match="differ in shape"):
        psnr_y(x, x[..., :40])
    with pytest.raises(ValueError, match="mask"):
        psnr_y(x, x, torch.ones(2, 3, 32, 48))
    with pytest.raises(ValueError, match="crop_border"):
        psnr_y(x, x, crop_border=16)
    with pytest.raises(ValueError, match="at least 11"):
        ssim_y(x, x, crop_border=11)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        luma(torch.zeros(3, 4, 4))
