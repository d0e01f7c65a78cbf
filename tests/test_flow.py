"""Flow: warping convention (agrees with the numpy camera model), pyramid estimator, FB check, losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ksrnet.models import flow as FL
from ksrnet.models.flow import FlowConfig, PyramidFlow, warp
from ksrnet.synth import camera as C

ODD_SIZES = [(17, 48), (19, 45), (21, 51)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny convs: thread start-up costs more than it saves on shared cores.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def sinusoids(xs: torch.Tensor, ys: torch.Tensor, seed: int = 0, terms: int = 6) -> torch.Tensor:
    """Smooth colour texture ``(1, 3, H, W)`` in [-1, 1] evaluated at arbitrary coordinates
    (periods of 6-20 px, so bilinear sampling is nearly exact)."""
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(3, *xs.shape, dtype=torch.float64)
    for c in range(3):
        for _ in range(terms):
            period, theta, phase = torch.rand(3, generator=g, dtype=torch.float64) * torch.tensor(
                [14.0, math.pi, 2 * math.pi], dtype=torch.float64)
            period = period + 6.0
            out[c] += torch.sin(2 * math.pi / period * (torch.cos(theta) * xs + torch.sin(theta) * ys) + phase)
    return (out / terms).float().unsqueeze(0)


def grid(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    return xs, ys


def affine_pair(h: int, w: int, seed: int = 0):
    """``ref`` and ``other`` with the exact flow on ref's grid into ``other``: the point seen at p in
    ``ref`` is at ``A p + b`` in ``other`` (so ``other(q) = f(A^-1 (q - b))``, ``ref = f``)."""
    a = torch.tensor([[1.03, 0.04], [-0.02, 0.98]], dtype=torch.float64)
    b = torch.tensor([1.3, -0.7], dtype=torch.float64)
    xs, ys = grid(h, w)
    ref = sinusoids(xs, ys, seed)
    inv = torch.linalg.inv(a)
    qx, qy = xs - b[0], ys - b[1]
    other = sinusoids(inv[0, 0] * qx + inv[0, 1] * qy, inv[1, 0] * qx + inv[1, 1] * qy, seed)
    fx = a[0, 0] * xs + a[0, 1] * ys + b[0] - xs
    fy = a[1, 0] * xs + a[1, 1] * ys + b[1] - ys
    return ref, other, torch.stack((fx, fy)).float().unsqueeze(0)


def translation_pair(h: int, w: int, d=(1.3, -0.6), seed: int = 0):
    xs, ys = grid(h, w)
    ref = sinusoids(xs, ys, seed)
    other = sinusoids(xs - d[0], ys - d[1], seed)
    gt = torch.tensor(d, dtype=torch.float32).view(1, 2, 1, 1).expand(1, 2, h, w).contiguous()
    return ref, other, gt


# --------------------------------------------------------------------------------------------------
# Config


def test_config_validation_and_round_trip():
    for bad in (dict(upsample=0), dict(levels=0), dict(kernel_size=4), dict(max_displacement=0.0),
                dict(negative_slope=1.0), dict(base_channels=2.5), dict(share_weights=1)):
        with pytest.raises(ValueError):
            FlowConfig(**bad)
    cfg = FlowConfig(upsample=4, levels=4)
    assert FlowConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError):
        FlowConfig.from_dict({"nope": 1})
    assert FlowConfig.preset("tiny") == FlowConfig()
    with pytest.raises(ValueError):
        FlowConfig.preset("huge")


def test_pyramid_levels_adapt_to_tiny_inputs():
    cfg = FlowConfig(upsample=2, levels=3, min_level_size=4)
    assert cfg.num_levels_for(17, 48) == 3  # 34 px tall -> 17 -> 8.5
    assert cfg.num_levels_for(5, 48) == 2  # 10 -> 5 (2.5 would be too small)
    assert cfg.num_levels_for(1, 1) == 1
    deep = FlowConfig(upsample=4, levels=6, min_level_size=4)
    n = deep.num_levels_for(17, 48)
    assert 17 * 4 / 2 ** (n - 1) >= 4 > 17 * 4 / 2 ** n


# --------------------------------------------------------------------------------------------------
# Warping


@pytest.mark.parametrize("h,w", ODD_SIZES)
def test_warp_zero_flow_is_identity(h, w):
    img = torch.randn(2, 5, h, w)
    # Not bit-exact: normalising to [-1, 1] and back in float32 moves samples by ~1e-6 px.
    torch.testing.assert_close(warp(img, torch.zeros(2, 2, h, w)), img, atol=1e-4, rtol=0)
    assert FL.valid_mask(torch.zeros(2, 2, h, w)).all()


def test_warp_integer_shift_convention():
    img = torch.arange(3 * 4 * 6, dtype=torch.float32).view(1, 3, 4, 6)
    flow = torch.zeros(1, 2, 4, 6)
    flow[:, 0] = 1.0  # out[y, x] = img[y, x + 1]
    out = warp(img, flow)
    torch.testing.assert_close(out[..., :-1], img[..., 1:])
    torch.testing.assert_close(out[..., -1], img[..., -1])  # border padding
    mask = FL.valid_mask(flow)
    assert mask[..., :-1].all() and not mask[..., -1].any()  # x = 6 is past the edge at 5.5
    flow[:, 0], flow[:, 1] = 0.0, -1.0  # out[y, x] = img[y - 1, x]
    torch.testing.assert_close(warp(img, flow)[..., 1:, :], img[..., :-1, :])
    # Half a pixel is the exact average of the two neighbours.
    flow[:, 0], flow[:, 1] = 0.5, 0.0
    torch.testing.assert_close(warp(img, flow)[..., :-1], 0.5 * (img[..., :-1] + img[..., 1:]))


def test_warp_between_grids_of_different_sizes():
    img = torch.randn(1, 2, 9, 13)
    flow = torch.zeros(1, 2, 5, 7)
    torch.testing.assert_close(warp(img, flow), img[..., :5, :7], atol=1e-4, rtol=0)
    flow[:, 0], flow[:, 1] = 6.0, 4.0
    torch.testing.assert_close(warp(img, flow), img[..., 4:, 6:], atol=1e-4, rtol=0)
    assert FL.valid_mask(flow, (9, 13)).all() and not FL.valid_mask(flow).all()


@pytest.mark.parametrize("h,w", ODD_SIZES)
def test_warp_with_true_flow_aligns_affine_pair(h, w):
    ref, other, flow = affine_pair(h, w)
    inside = FL.valid_mask(flow, border=1.0)
    inside[..., :2, :] = inside[..., -2:, :] = False
    err = (warp(other, flow) - ref).abs().mean(1, keepdim=True)[inside].mean()
    before = (other - ref).abs().mean(1, keepdim=True)[inside].mean()
    assert err < 0.1 * before
    assert err < 0.02


def test_resize_flow_scales_values():
    flow = torch.zeros(1, 2, 4, 6)
    flow[:, 0], flow[:, 1] = 1.5, -0.5
    big = FL.resize_flow(flow, (8, 18))
    assert big.shape == (1, 2, 8, 18)
    torch.testing.assert_close(big[:, 0], torch.full((1, 8, 18), 4.5))
    torch.testing.assert_close(big[:, 1], torch.full((1, 8, 18), -1.0))


# --------------------------------------------------------------------------------------------------
# Agreement with the numpy camera model (ksrnet.synth.camera)

SCENE_W, SCENE_H = 480, 240
PLATE = np.array([[139.5, 89.5], [339.5, 89.5], [339.5, 154.5], [139.5, 154.5]])


def smooth_scene(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SCENE_H, 0:SCENE_W].astype(np.float64)
    img = np.zeros((SCENE_H, SCENE_W, 3))
    for c in range(3):
        for _ in range(5):
            period = rng.uniform(40, 160)
            theta = rng.uniform(0, np.pi)
            img[..., c] += np.sin(
                2 * np.pi / period * (np.cos(theta) * xx + np.sin(theta) * yy) + rng.uniform(0, 6.3))
    return ((img - img.min()) / (img.max() - img.min()) * 200 + 25).astype(np.uint8)


def to_torch(frame: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frame.astype(np.float32)).permute(2, 0, 1).unsqueeze(0)


def flow_to_torch(flow: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(flow).permute(2, 0, 1).unsqueeze(0)


@pytest.mark.parametrize("seed", [0, 3])
def test_warp_agrees_with_camera_flow_convention(seed):
    traj = C.sample_trajectory(np.random.default_rng(seed), (SCENE_W, SCENE_H), PLATE, 5)
    frames = C.render_frames(smooth_scene(seed), traj, supersample=4)
    ref = traj.reference
    ref_img = to_torch(frames[ref])
    checked = 0
    for t in range(traj.num_frames):
        if t == ref:
            continue
        flow_np = C.flow_between(traj, ref, t)
        flow = flow_to_torch(flow_np)
        aligned = warp(to_torch(frames[t]), flow)
        mask = FL.valid_mask(flow, border=1.0)
        mask[..., :1, :] = mask[..., -1:, :] = False
        mask[..., :1] = mask[..., -1:] = False
        assert mask.sum() > 0.5 * mask.numel()
        err = (aligned - ref_img).abs().mean(1, keepdim=True)[mask].mean()
        before = (to_torch(frames[t]) - ref_img).abs().mean(1, keepdim=True)[mask].mean()
        assert err < 1.5, (t, err)  # grey levels out of 255 (bilinear vs area rendering)
        assert err < 0.35 * before, (t, err, before)
        # Same numbers as the numpy/cv2 warp.
        ref_cv2 = to_torch(C.warp_with_flow(frames[t].astype(np.float32), flow_np))
        assert (aligned - ref_cv2).abs().max() < 0.05
        # And the reverse direction: the reference warped by the flow on frame t's grid.
        back = C.flow_to_reference(traj, t)
        rebuilt = warp(ref_img, flow_to_torch(back))
        mask_t = FL.valid_mask(flow_to_torch(back), border=1.0)
        mask_t[..., :1, :] = mask_t[..., -1:, :] = False
        assert (rebuilt - to_torch(frames[t])).abs().mean(1, keepdim=True)[mask_t].mean() < 1.5
        checked += 1
    assert checked == traj.num_frames - 1


# --------------------------------------------------------------------------------------------------
# Forward-backward consistency


def test_forward_backward_consistency_flags_inconsistent_region():
    h, w = 17, 48
    fw = torch.zeros(1, 2, h, w)
    fw[:, 0] = 2.0  # ref pixel x lands at x + 2 in the other frame
    bw = torch.zeros(1, 2, h, w)
    bw[:, 0] = -2.0  # and comes back
    # An occluder in the other frame: its pixels there do not map back (their flow is something else).
    bw[:, :, 5:11, 20:30] = torch.tensor([3.0, 1.0]).view(1, 2, 1, 1)
    rel = FL.forward_backward_consistency(fw, bw)
    assert rel.shape == (1, 1, h, w) and rel.dtype == fw.dtype
    bad = torch.zeros(1, 1, h, w, dtype=torch.bool)
    bad[..., 5:11, 18:28] = True  # ref pixels whose target x + 2 falls in the occluder
    assert (rel[bad] == 0).all()
    leaves = ~FL.valid_mask(fw)  # the last 2 columns land past the right edge
    assert leaves[..., -2:].all() and not leaves[..., :-2].any()
    good = ~bad & ~leaves
    assert (rel[good] == 1).all()
    assert (rel[leaves] == 0).all()
    assert (FL.forward_backward_consistency(fw, bw, check_bounds=False)[leaves] == 1).all()
    occ = FL.occlusion_mask(fw, bw)
    assert occ.dtype == torch.bool and torch.equal(occ, rel < 0.5)

    soft = FL.forward_backward_consistency(fw, bw, soft=True)
    assert ((soft >= 0) & (soft <= 1)).all()
    assert (soft[good] == 1).all() and (soft[bad] < 0.1).all()
    # A small inconsistency (under the threshold) is tolerated, a larger one is not.
    slightly = torch.zeros(1, 2, h, w)
    slightly[:, 0] = -2.0 + 0.3
    assert (FL.forward_backward_consistency(fw, slightly, check_bounds=False) == 1).all()
    slightly[:, 0] += 0.6
    assert (FL.forward_backward_consistency(fw, slightly, check_bounds=False) == 0).all()


# --------------------------------------------------------------------------------------------------
# The estimator


@pytest.mark.parametrize("h,w", ODD_SIZES)
def test_pyramid_flow_shapes_any_size(h, w):
    torch.manual_seed(0)
    net = PyramidFlow(FlowConfig())
    ref, other = torch.rand(2, 3, h, w) * 2 - 1, torch.rand(2, 3, h, w) * 2 - 1
    flow = net(ref, other)
    assert flow.shape == (2, 2, h, w) and torch.isfinite(flow).all()
    assert (flow == 0).all()  # the level nets' last convs start at zero: identity alignment
    # Perturbed weights: nonzero, finite, bounded by the clamp.
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    flow = net(ref, other)
    assert torch.isfinite(flow).all() and flow.abs().max() <= net.config.max_displacement
    assert flow.abs().max() > 0


@pytest.mark.parametrize("t", [1, 3, 5])
def test_track_flows_shapes(t):
    torch.manual_seed(0)
    net = PyramidFlow(FlowConfig(base_channels=2, share_weights=True))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    frames = torch.rand(2, t, 3, 19, 45) * 2 - 1
    ref = t // 2
    flows, rel = net.track_flows(frames, ref, with_reliability=True)
    assert flows.shape == (2, t, 2, 19, 45) and rel.shape == (2, t, 1, 19, 45)
    assert (flows[:, ref] == 0).all() and (rel[:, ref] == 1).all()
    assert ((rel >= 0) & (rel <= 1)).all()
    for i in range(t):
        if i != ref:
            torch.testing.assert_close(flows[:, i], net(frames[:, ref], frames[:, i]), atol=1e-5, rtol=0)
    flows_only, none = net.track_flows(frames, -1)
    assert none is None and (flows_only[:, -1] == 0).all()
    with pytest.raises(ValueError):
        net.track_flows(frames, t)


def _fit(loss_fn, steps: int = 40, lr: float = 3e-3):
    torch.manual_seed(0)
    ref, other, gt = translation_pair(17, 48)
    net = PyramidFlow(FlowConfig(base_channels=4))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    before = FL.endpoint_error(net(ref, other), gt).item()
    for _ in range(steps):
        flow = net(ref, other)
        loss = loss_fn(ref, other, flow, gt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = FL.endpoint_error(net(ref, other), gt).item()
    return before, after


def test_pyramid_flow_learns_a_translation_supervised():
    before, after = _fit(lambda ref, other, flow, gt: FL.endpoint_error(flow, gt))
    assert before > 1.3  # zero flow at init: EPE = |(1.3, -0.6)|
    assert after < 0.3 * before


def test_pyramid_flow_learns_a_translation_photometric():
    before, after = _fit(lambda ref, other, flow, gt: FL.photometric_loss(ref, other, flow)
                         + 0.1 * FL.smoothness_loss(flow, ref))
    assert after < 0.3 * before


# --------------------------------------------------------------------------------------------------
# Losses


def test_endpoint_error():
    a = torch.randn(2, 2, 5, 7)
    assert FL.endpoint_error(a, a) == 0
    b = a.clone()
    b[:, 0] += 3.0
    b[:, 1] += 4.0
    torch.testing.assert_close(FL.endpoint_error(a, b), torch.tensor(5.0))
    mask = torch.zeros(2, 1, 5, 7, dtype=torch.bool)
    c = a.clone()
    c[..., 0, 0] += 1.0
    mask[..., 1:, :] = True
    assert FL.endpoint_error(a, c, mask) == 0 and FL.endpoint_error(a, c) > 0
    x = a.clone().requires_grad_(True)
    FL.endpoint_error(x, a).backward()
    assert torch.isfinite(x.grad).all()  # no NaN from sqrt at 0


def test_photometric_loss():
    img = torch.rand(2, 3, 9, 11) * 2 - 1
    zero = torch.zeros(2, 2, 9, 11)
    assert FL.photometric_loss(img, img, zero) == 0
    assert FL.photometric_loss(img, torch.rand(2, 3, 9, 11), zero) > 0
    ref, other, gt = translation_pair(17, 48, d=(2.0, 1.0))
    right = FL.photometric_loss(ref, other, gt, FL.valid_mask(gt))
    wrong = FL.photometric_loss(ref, other, torch.zeros(1, 2, 17, 48))
    assert right < 1e-4 < wrong
    assert FL.charbonnier(torch.zeros(3)).abs().max() == 0


def test_smoothness_loss():
    const = torch.zeros(2, 2, 6, 9)
    const[:, 0], const[:, 1] = 1.5, -2.0
    img = torch.rand(2, 3, 6, 9)
    assert FL.smoothness_loss(const) == 0 and FL.smoothness_loss(const, img) == 0
    ramp = const.clone()
    ramp[:, 0] += torch.arange(9.0)
    assert FL.smoothness_loss(ramp) > 0
    # Edge-aware: a flow jump along an image edge costs less than the same jump in a flat image.
    step = const.clone()
    step[..., 5:] += 2.0
    edge = torch.zeros(2, 3, 6, 9)
    edge[..., 5:] = 1.0
    assert 0 < FL.smoothness_loss(step, edge) < FL.smoothness_loss(step, torch.zeros_like(edge))
    assert FL.smoothness_loss(torch.zeros(1, 2, 1, 1)) == 0


def test_low_precision_inputs_sample_at_full_precision():
    ref, other, flow = affine_pair(17, 48)
    full = warp(other, flow)
    half = warp(other.bfloat16(), flow.bfloat16())
    assert half.dtype == torch.bfloat16
    # bf16 values are off by <= 2^-8 relative; a bf16 grid would be off by ~0.1 px (~0.05 here).
    assert (half.float() - full).abs().max() < 1e-2
    net = PyramidFlow(FlowConfig(base_channels=2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        est = net(ref, other)
    assert est.dtype == torch.float32 and torch.isfinite(est).all()
