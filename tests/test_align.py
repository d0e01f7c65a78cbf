"""HAM: flow warping + flow-guided deformable attention, feature extractor, track alignment."""

from __future__ import annotations

import pytest
import torch

from ksrnet.models.align import HAM, AlignConfig, FeatureExtractor, align_track
from ksrnet.models.flow import FlowConfig, PyramidFlow, warp

ODD_SIZES = [(17, 48), (19, 45), (21, 51)]
SMALL = dict(channels=8, groups=2, num_points=3, embed_channels=8, hidden_channels=8, extractor_blocks=1)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_config_validation_and_round_trip():
    for bad in (dict(channels=30, groups=4), dict(num_points=0), dict(kernel_size=2),
                dict(max_offset=0.0), dict(error_map="max"), dict(extractor_blocks=-1),
                dict(negative_slope=float("nan"))):
        with pytest.raises(ValueError):
            AlignConfig(**bad)
    cfg = AlignConfig(error_map="mean", num_points=9)
    assert AlignConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.error_channels == 1 and AlignConfig().error_channels == AlignConfig().channels
    with pytest.raises(ValueError):
        AlignConfig.from_dict({"points": 4})


@pytest.mark.parametrize("h,w", ODD_SIZES)
def test_feature_extractor_shapes(h, w):
    fe = FeatureExtractor(AlignConfig(**SMALL))
    assert fe(torch.rand(2, 3, h, w)).shape == (2, 8, h, w)
    assert fe(torch.rand(2, 5, 3, h, w)).shape == (2, 5, 8, h, w)
    with pytest.raises(ValueError):
        fe(torch.rand(3, h, w))


@pytest.mark.parametrize("cfg", [AlignConfig(), AlignConfig(**SMALL),
                                 AlignConfig(**{**SMALL, "error_map": "mean", "groups": 1})])
@pytest.mark.parametrize("h,w", [(17, 48), (19, 45)])
def test_ham_zero_offsets_equals_plain_flow_warping(cfg, h, w):
    torch.manual_seed(0)
    ham = HAM(cfg)
    feat, ref = torch.randn(2, cfg.channels, h, w), torch.randn(2, cfg.channels, h, w)
    flow = 2.0 * torch.randn(2, 2, h, w)
    out = ham.details(feat, ref, flow)
    assert out.offsets.shape == (2, cfg.groups, cfg.num_points, 2, h, w)
    assert out.weights.shape == (2, cfg.groups, cfg.num_points, h, w)
    assert (out.offsets == 0).all()
    torch.testing.assert_close(out.weights, torch.full_like(out.weights, 1.0 / cfg.num_points))
    plain = warp(feat, flow)
    torch.testing.assert_close(out.warped, plain)
    torch.testing.assert_close(out.aligned, plain, atol=1e-6, rtol=0)
    torch.testing.assert_close(ham(feat, ref, flow), out.aligned)


def _set_constant_offsets(ham: HAM, offsets: torch.Tensor) -> None:
    """Make the offset head output the constant ``offsets`` ``(G, K, 2)`` everywhere."""
    max_off = ham.config.max_offset
    with torch.no_grad():
        ham.offset_head.weight.zero_()
        ham.offset_head.bias.copy_(torch.atanh(offsets.flatten() / max_off))
        ham.offset_gain.fill_(1.0)


def test_ham_samples_each_group_at_flow_plus_its_offsets():
    torch.manual_seed(0)
    cfg = AlignConfig(**{**SMALL, "num_points": 2})
    ham = HAM(cfg)
    h, w = 17, 48
    feat, ref = torch.randn(1, 8, h, w), torch.randn(1, 8, h, w)
    flow = torch.randn(1, 2, h, w)
    offsets = torch.tensor([[[1.0, 0.0], [0.0, -1.0]],     # group 0: right, up
                            [[0.5, 0.5], [-2.0, 1.0]]])    # group 1
    _set_constant_offsets(ham, offsets)
    out = ham.details(feat, ref, flow)
    torch.testing.assert_close(out.offsets[0, ..., 0, 0], offsets)
    for g in range(2):
        chans = slice(4 * g, 4 * g + 4)
        expected = sum(0.5 * warp(feat[:, chans], flow + offsets[g, k].view(1, 2, 1, 1)) for k in range(2))
        torch.testing.assert_close(out.aligned[:, chans], expected, atol=1e-5, rtol=0)


def test_ham_corrects_a_flow_error_when_told_the_offset():
    # An integer flow error of one pixel, undone by a matching offset: exact alignment.
    torch.manual_seed(0)
    cfg = AlignConfig(**{**SMALL, "num_points": 1, "groups": 1})
    ham = HAM(cfg)
    ref = torch.randn(1, 8, 9, 13)
    feat = torch.roll(ref, shifts=2, dims=-1)  # the ref pixel x is at x + 2 in the other frame
    flow = torch.zeros(1, 2, 9, 13)
    flow[:, 0] = 1.0  # the flow says x + 1
    _set_constant_offsets(ham, torch.tensor([[[1.0, 0.0]]]))
    out = ham(feat, ref, flow)
    torch.testing.assert_close(out[..., :-2], ref[..., :-2], atol=1e-5, rtol=0)
    assert (warp(feat, flow) - ref)[..., :-2].abs().mean() > 0.5


def test_ham_gradients_reach_the_offset_predictor_and_break_symmetry():
    torch.manual_seed(0)
    cfg = AlignConfig(**SMALL)
    ham = HAM(cfg)
    h, w = 17, 48
    feat, ref = torch.randn(2, 8, h, w), torch.randn(2, 8, h, w)
    flow = torch.randn(2, 2, h, w, requires_grad=True)

    def loss_step():
        ham.zero_grad()
        loss = (ham(feat, ref, flow) - ref).square().mean()
        loss.backward()
        return loss

    loss_step()
    # At init (offsets exactly 0) the zero-started gain, the flow and the projection get gradients;
    # the rest of the predictor waits one step (the gain is 0, and the K samples are all equal).
    assert ham.offset_gain.grad.abs().sum() > 0
    assert flow.grad.abs().sum() > 0
    assert ham.proj.weight.grad.abs().sum() > 0
    opt = torch.optim.SGD(ham.parameters(), lr=0.5)
    opt.step()
    loss_step()
    predictor = [ham.offset_head.weight, ham.offset_head.bias, ham.offset_gain, ham.weight_head.weight,
                 *ham.predictor.parameters(), *ham.phi.parameters()]
    for p in predictor:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    # One more step: the K points of a group no longer coincide, and the weights left uniform.
    opt.step()
    out = ham.details(feat, ref, flow)
    assert (out.offsets[:, :, 0] - out.offsets[:, :, 1]).abs().max() > 0
    assert out.offsets.abs().max() <= cfg.max_offset
    assert (out.weights - 1.0 / cfg.num_points).abs().max() > 0
    torch.testing.assert_close(out.weights.sum(2), torch.ones(2, cfg.groups, h, w))


def test_a_positive_offset_gain_init_starts_the_points_apart_so_the_weights_learn_at_once():
    torch.manual_seed(0)
    h, w = 17, 48
    feat, ref, flow = torch.randn(2, 8, h, w), torch.randn(2, 8, h, w), torch.zeros(2, 2, h, w)
    weight_grads = []
    for gain, apart in ((0.0, False), (0.1, True)):
        ham = HAM(AlignConfig(**SMALL, offset_gain_init=gain))
        out = ham.details(feat, ref, flow)
        assert bool((out.offsets[:, :, 0] - out.offsets[:, :, 1]).abs().max() > 0) == apart
        assert out.offsets.abs().max() < 0.5 * ham.config.max_offset  # a small start
        ham.zero_grad()
        (ham(feat, ref, flow) - ref).square().mean().backward()
        weight_grads.append(float(ham.weight_head.weight.grad.abs().sum()))
    # The attention weights get a gradient only where the K samples differ (at gain 0, float rounding).
    assert weight_grads[1] > 1e4 * weight_grads[0]
    with pytest.raises(ValueError, match="offset_gain_init"):
        AlignConfig(offset_gain_init=-0.1)


@pytest.mark.parametrize("t", [1, 3, 5])
@pytest.mark.parametrize("h,w", ODD_SIZES)
def test_align_track_shapes_and_reference_passthrough(t, h, w):
    torch.manual_seed(0)
    cfg = AlignConfig(**SMALL)
    ham = HAM(cfg)
    with torch.no_grad():
        ham.offset_gain.fill_(1.0)
        ham.proj.weight.normal_(0, 0.1)
    feats = torch.randn(2, t, 8, h, w)
    flows = torch.randn(2, t, 2, h, w)
    ref = t // 2
    out = ham.align_track(feats, flows, ref)
    assert out.shape == (2, t, 8, h, w) and torch.isfinite(out).all()
    assert torch.equal(out[:, ref], feats[:, ref])
    for i in range(t):
        if i != ref:
            torch.testing.assert_close(out[:, i], ham(feats[:, i], feats[:, ref], flows[:, i]),
                                       atol=1e-5, rtol=0)
    torch.testing.assert_close(align_track(ham, feats, flows, ref - t), out)
    with pytest.raises(ValueError):
        ham.align_track(feats, flows, t)
    with pytest.raises(ValueError):
        ham.align_track(feats, flows[:, :, :1], ref)


def test_ham_keeps_the_feature_dtype_when_autocast_runs_softmax_in_float32(monkeypatch):
    # CUDA autocast runs softmax (and sum) in float32 and does not promote index_copy: HAM's output
    # must stay in the features' dtype or align_track's index_copy into bf16 features fails on a
    # GPU. CPU autocast keeps softmax in bf16, so emulate CUDA's rule here.
    softmax = torch.softmax
    monkeypatch.setattr(torch, "softmax", lambda x, dim, **kw: softmax(x.float(), dim, **kw))
    torch.manual_seed(0)
    fe, ham = FeatureExtractor(AlignConfig(**SMALL)), HAM(AlignConfig(**SMALL))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = fe(torch.rand(1, 3, 3, 17, 48))
        assert ham.details(feats[:, 0], feats[:, 1], torch.zeros(1, 2, 17, 48)).weights.dtype == torch.float32
        out = ham(feats[:, 0], feats[:, 1], torch.zeros(1, 2, 17, 48))
        aligned = ham.align_track(feats, torch.zeros(1, 3, 2, 17, 48), 1)
    assert feats.dtype == out.dtype == aligned.dtype == torch.bfloat16


@pytest.mark.parametrize("t", [1, 3, 5])
def test_flow_features_and_ham_compose_on_a_track(t):
    torch.manual_seed(0)
    flow_net = PyramidFlow(FlowConfig(base_channels=2, share_weights=True))
    fe = FeatureExtractor(AlignConfig(**SMALL))
    ham = HAM(AlignConfig(**SMALL))
    frames = torch.rand(1, t, 3, 17, 48) * 2 - 1
    flows, rel = flow_net.track_flows(frames, t // 2, with_reliability=True)
    aligned = ham.align_track(fe(frames), flows, t // 2)
    assert aligned.shape == (1, t, 8, 17, 48) and rel.shape == (1, t, 1, 17, 48)
    aligned.mean().backward()
    assert all(p.grad is not None for p in fe.parameters())


def test_default_sizes_stay_cpu_trainable():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(FeatureExtractor()) < 100_000
    assert count(HAM()) < 300_000
    assert count(PyramidFlow()) < 200_000
