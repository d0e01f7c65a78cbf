"""KSR-Net assembly (v1 / v2 / final) and the MF-LPR²-style baseline: configs, shapes for any T and
LR size, the variants' structure, missing frames never reaching an output, the untrained model's
identity behaviour, gradient flow to every part, and the baseline's frame rejection."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from ksrnet.models.align import HAM, AlignConfig
from ksrnet.models.flow import FlowConfig
from ksrnet.models.fusion import FusionConfig
from ksrnet.models.ksrnet import (
    PRESET_NAMES,
    KSRNet,
    KSRNetConfig,
    MFLPR2Baseline,
    MFLPR2Config,
    batch_reference_index,
    count_parameters,
    lr_resize_matrix,
    reference_indices,
    resize_track,
    weighted_median,
)
from ksrnet.models.parseq import ParseqConfig
from ksrnet.models.restore import RestoreConfig

C = 8  # feature channels of the micro config


def recognizer_micro() -> ParseqConfig:
    return ParseqConfig(embed_dim=32, enc_depth=1, enc_heads=2, dec_depth=1, dec_heads=2, mlp_ratio=2.0,
                        dropout=0.0, stem_channels=8)


def micro(variant: str = "v2", **overrides) -> KSRNetConfig:
    parts = dict(
        flow=FlowConfig(base_channels=2, levels=2),
        align=AlignConfig(channels=C, extractor_blocks=1, num_points=2, groups=2, embed_channels=4,
                          hidden_channels=8, predictor_layers=1),
        fusion=FusionConfig(dim=C, depth=2, heads=2, window=(2, 4, 4), mlp_ratio=1.0),
        restore=RestoreConfig(in_channels=C, features=8, num_res_blocks=1, upscale=4),
        recognizer=recognizer_micro(),
    )
    return KSRNetConfig(variant=variant, **{**parts, **overrides})


def perturb(model: torch.nn.Module, skip: tuple[str, ...] = (), seed: int = 0) -> torch.nn.Module:
    """Give every zero-initialised parameter (SR head's last conv, flow nets' last convs, HAM's
    offset gain / attention logits / projection, STFT pooling, biases) small random values, so that
    every path carries signal and gradient."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(skip):
                continue
            if p.abs().max() == 0:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model


def frames(b: int, t: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, t, 3, h, w, generator=g) * 2 - 1


def smooth_plate(h: int = 16, w: int = 48, seed: int = 0) -> torch.Tensor:
    """(3, h, w) smooth image in [-0.8, 0.8] (a stand-in plate)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, h // 4, w // 4, generator=g) * 1.6 - 0.8
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0]


# -- config ---------------------------------------------------------------------------------------


def test_config_round_trip_and_presets():
    for variant in ("v1", "v2", "final"):
        cfg = micro(variant)
        assert KSRNetConfig.from_dict(cfg.to_dict()) == cfg
        assert KSRNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert KSRNetConfig() == KSRNetConfig.tiny()
    for name in PRESET_NAMES:
        cfg = KSRNetConfig.preset(name, variant="v1")
        assert cfg.variant == "v1" and not cfg.uses_ham
        assert KSRNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    cfg = KSRNetConfig.tiny(lr_size=[20, 56], ref_index="last")
    assert cfg.lr_size == (20, 56) and cfg.sr_size == (80, 224)
    assert KSRNetConfig.tiny("final").losses != KSRNetConfig.tiny("v2").losses


def test_config_channel_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="feature channels disagree.*fusion.dim=16"):
        micro(fusion=FusionConfig(dim=16, depth=2, heads=2, window=(2, 4, 4)))
    with pytest.raises(ValueError, match="restore.in_channels"):
        micro(restore=RestoreConfig(in_channels=16))
    with pytest.raises(ValueError, match="image channels disagree"):
        micro(recognizer=ParseqConfig(in_chans=1, embed_dim=32, enc_heads=2, dec_heads=2))
    bad = micro().to_dict()
    bad["align"]["channels"] = 16
    bad["align"]["embed_channels"] = 4
    with pytest.raises(ValueError, match="channels disagree"):
        KSRNetConfig.from_dict(bad)


@pytest.mark.parametrize("bad", [dict(variant="v3"), dict(ref_index="first"), dict(lr_size=(16,)),
                                 dict(lr_size=(0, 48)), dict(reliability=1),
                                 dict(flow={"base_channels": 2})])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        micro(**bad)


def test_from_dict_rejects_unknown_keys():
    d = micro().to_dict()
    with pytest.raises(ValueError, match="unknown KSRNetConfig keys"):
        KSRNetConfig.from_dict({**d, "heads": 3})
    d["fusion"]["dims"] = 3
    with pytest.raises(ValueError, match="unknown FusionConfig keys"):
        KSRNetConfig.from_dict(d)


# -- shapes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["v1", "final"])
@pytest.mark.parametrize("t,h,w", [(1, 16, 48), (3, 13, 37), (5, 17, 47), (5, 16, 48)])
def test_output_shapes(variant, t, h, w):
    torch.manual_seed(0)
    cfg = micro(variant)
    model = perturb(KSRNet(cfg)).eval()
    with torch.no_grad():
        out = model(frames(2, t, h, w))
    rc = cfg.recognizer
    assert out.sr.shape == (2, 3, 4 * h, 4 * w)
    assert out.sr.min() >= -1 and out.sr.max() <= 1
    assert out.char_logits.shape == (2, rc.num_slots, rc.num_classes)
    assert out.layout_logits.shape == (2, rc.num_layouts)
    assert out.flows.shape == (2, t, 2, h, w)
    assert out.reliability.shape == (2, t, 1, h, w)
    assert out.fusion_weights.shape == (2, t, h, w)
    assert torch.allclose(out.fusion_weights.sum(1), torch.ones(2, h, w), atol=1e-5)
    ref = batch_reference_index("middle", t)
    assert out.reference.tolist() == [ref, ref]
    assert out.frame_accepted.all()
    assert torch.equal(out.flows[:, ref], torch.zeros_like(out.flows[:, ref]))
    assert all(torch.isfinite(x).all() for x in out if x.is_floating_point())


def test_tiny_preset_runs_and_reliability_can_be_off():
    model = KSRNet(KSRNetConfig.tiny(reliability=False)).eval()
    with torch.no_grad():
        out = model(frames(1, 5, *KSRNetConfig.tiny().lr_size))
    assert out.sr.shape == (1, 3, 64, 192) and out.reliability is None
    counts = count_parameters(model)
    assert 1_000_000 < counts["total"] < 3_000_000


def test_forward_is_restore_then_read():
    model = perturb(KSRNet(micro())).eval()
    x = frames(2, 3, 16, 48)
    with torch.no_grad():
        out = model(x)
        restored = model.restore(x)
        reading = model.read(restored.sr)
    assert torch.equal(out.sr, restored.sr)
    assert torch.allclose(out.char_logits, reading.char_logits)
    assert torch.allclose(out.layout_logits, reading.layout_logits)


# -- variants -------------------------------------------------------------------------------------


def test_v1_has_no_deformable_attention_and_v2_calls_ham():
    v1, v2, final = KSRNet(micro("v1")), KSRNet(micro("v2")), KSRNet(micro("final"))
    assert v1.ham is None and "ham" not in v1.parts()
    assert not any(isinstance(m, HAM) for m in v1.modules())
    assert not any(n.startswith("ham.") for n, _ in v1.named_parameters())
    assert isinstance(v2.ham, HAM)
    # final is the same module as v2 (only its training losses differ).
    shapes = [(n, p.shape) for n, p in v2.named_parameters()]
    assert shapes == [(n, p.shape) for n, p in final.named_parameters()]
    calls = []
    v2.ham.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        v2.eval()(frames(1, 3, 16, 48))
    assert calls
    # With one frame there is nothing to align: HAM is not called.
    calls.clear()
    with torch.no_grad():
        v2(frames(1, 1, 16, 48))
    assert not calls


def test_v2_at_init_equals_v1_and_departs_when_ham_learns():
    """HAM starts as the plain flow warp, so v2 with v1's weights gives v1's outputs; non-zero
    offsets and attention logits make it differ."""
    torch.manual_seed(0)
    v2 = perturb(KSRNet(micro("v2")), skip=("ham",)).eval()
    v1 = KSRNet(micro("v1")).eval()
    state = {k: v for k, v in v2.state_dict().items() if not k.startswith("ham.")}
    v1.load_state_dict(state)
    x = frames(2, 5, 16, 48)
    with torch.no_grad():
        a, b = v1(x), v2(x)
        assert a.flows.abs().max() > 1e-3  # the (perturbed) flow is not trivially zero
        assert torch.allclose(a.sr, b.sr, atol=1e-5)
        assert torch.allclose(a.char_logits, b.char_logits, atol=1e-4)
        perturb(v2.ham, seed=1)
        torch.nn.init.constant_(v2.ham.offset_gain, 1.0)
        c = v2(x)
    assert (c.sr - a.sr).abs().max() > 1e-3


# -- identity at init -----------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["v1", "final"])
@pytest.mark.parametrize("policy", ["middle", "last"])
def test_untrained_sr_is_bilinear_upsample_of_reference(variant, policy):
    model = KSRNet(micro(variant, ref_index=policy)).eval()
    assert model.head.conv_out.weight.abs().max() == 0 and model.head.conv_out.bias.abs().max() == 0
    x = frames(2, 5, 17, 47) * 0.9
    with torch.no_grad():
        out = model(x)
    ref = batch_reference_index(policy, 5)
    expected = F.interpolate(x[:, ref], scale_factor=4, mode="bilinear", align_corners=False)
    assert torch.allclose(out.sr, expected, atol=1e-6)
    # Untrained flow nets output zero flow (identity alignment), reliability 1 inside the frame.
    assert out.flows.abs().max() == 0
    assert torch.allclose(out.reliability, torch.ones_like(out.reliability))


# -- missing frames -------------------------------------------------------------------------------


def test_reference_policy_on_valid_frames():
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 1, 1, 1], [1, 0, 0, 0, 0],
                         [1, 0, 1, 0, 1]], dtype=torch.bool)
    assert reference_indices("middle", mask).tolist() == [2, 1, 3, 0, 2]
    assert reference_indices("last", mask).tolist() == [4, 1, 4, 0, 4]
    assert [batch_reference_index("middle", t) for t in (1, 2, 3, 4, 5)] == [0, 1, 1, 2, 2]
    assert [batch_reference_index("last", t) for t in (1, 2, 5)] == [0, 1, 4]


@pytest.mark.parametrize("variant", ["v1", "final"])
@pytest.mark.parametrize("policy", ["middle", "last"])
def test_masked_frames_do_not_affect_outputs(variant, policy):
    torch.manual_seed(0)
    model = perturb(KSRNet(micro(variant, ref_index=policy))).eval()
    x = frames(3, 5, 16, 48)
    # Row 0: full; row 1: the last three missing (the batch-wide middle slot is missing); row 2: a hole.
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 0, 1, 1]], dtype=torch.bool)
    y = x.clone()
    y[~mask] = torch.rand(int((~mask).sum()), 3, 16, 48) * 2 - 1
    z = x.clone()
    z[~mask] = float("nan")
    with torch.no_grad():
        a, b, c = model(x, mask), model(y, mask), model(z, mask)
    for name, va, vb, vc in zip(a._fields, a, b, c):
        assert torch.equal(va, vb), name
        assert torch.equal(va, vc), name
    assert a.frame_accepted.tolist() == mask.tolist()
    assert (a.fusion_weights[~mask] == 0).all()
    assert (a.flows[~mask] == 0).all() and (a.reliability[~mask] == 0).all()
    expected_ref = reference_indices(policy, mask)
    assert a.reference.tolist() == expected_ref.tolist()
    assert all(bool(mask[i, r]) for i, r in enumerate(a.reference.tolist()))
    # The SR image is registered to each track's own (valid) reference frame: at init it is its
    # bilinear upsample.
    fresh = KSRNet(micro(variant, ref_index=policy)).eval()
    with torch.no_grad():
        sr = fresh(z, mask).sr
    expected = F.interpolate(x[torch.arange(3), expected_ref], scale_factor=4, mode="bilinear",
                             align_corners=False).clamp(-1, 1)
    assert torch.allclose(sr, expected, atol=1e-6)
    # A full row is unaffected by the other rows' masks.
    with torch.no_grad():
        alone = model(x[:1])
    assert torch.allclose(alone.sr, a.sr[:1], atol=1e-5)
    assert torch.allclose(alone.char_logits, a.char_logits[:1], atol=1e-4)


@pytest.mark.parametrize("variant", ["v1", "final"])
def test_partial_track_keeps_physical_frame_order_in_the_stft(variant):
    """A 3-frame track padded to T=5 (last two missing) restores exactly like the 3-frame track.
    Its reference (frame 1) is swapped into the batch-wide slot 2 for the flow and HAM calls; the
    STFT must still see frames 0, 1, 2 in that order (its temporal windows and relative temporal
    bias treat adjacent slots as consecutive frames), not 0, 2, 1."""
    torch.manual_seed(0)
    model = perturb(KSRNet(micro(variant))).eval()
    with torch.no_grad():  # a temporal bias strong enough that frame order visibly matters
        for block in model.fusion.blocks:
            block.attn.bias_table.normal_(0.0, 2.0)
    x3 = frames(1, 3, 16, 48)
    x5 = torch.cat([x3, frames(1, 2, 16, 48, seed=1)], 1)
    mask = torch.tensor([[1, 1, 1, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        a, b = model.restore(x3), model.restore(x5, mask)
    assert a.reference.tolist() == b.reference.tolist() == [1]
    torch.testing.assert_close(b.sr, a.sr, atol=1e-6, rtol=0)
    torch.testing.assert_close(b.fusion_weights[:, :3], a.fusion_weights, atol=1e-6, rtol=0)
    assert (b.fusion_weights[:, 3:] == 0).all()


def test_mask_validation():
    model = KSRNet(micro()).eval()
    with pytest.raises(ValueError, match="at least one valid frame"):
        model(frames(1, 3, 16, 48), torch.zeros(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="frame_mask"):
        model(frames(1, 3, 16, 48), torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="frames must be"):
        model(torch.zeros(1, 3, 16, 48))


# -- gradients ------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["v1", "final"])
def test_gradients_reach_every_part_from_char_logits(variant):
    torch.manual_seed(0)
    model = perturb(KSRNet(micro(variant))).train()
    out = model(frames(2, 3, 16, 48))
    target = torch.randint(0, model.config.recognizer.num_classes, (2, 7))
    F.cross_entropy(out.char_logits.flatten(0, 1), target.flatten()).backward()
    expected = ["flow", "extractor", "fusion", "head", "recognizer"] + (["ham"] if variant != "v1" else [])
    assert sorted(model.parts()) == sorted(expected)
    for name, part in model.parts().items():
        grads = [p.grad for p in part.parameters() if p.grad is not None]
        assert grads, name
        assert all(torch.isfinite(g).all() for g in grads), name
        assert sum(g.abs().sum() for g in grads) > 0, name
    if variant != "v1":
        assert model.ham.offset_gain.grad.abs().sum() > 0  # the deformable offsets learn


def test_untrained_model_gradient_starts_at_the_head_output():
    """Zero-initialised SR output conv: at init the char loss reaches the head's last conv (and the
    recognizer); the rest of the restoration path gets exactly zero until that conv moves."""
    model = KSRNet(micro()).train()
    out = model(frames(2, 3, 16, 48))
    out.char_logits.sum().backward()
    assert model.head.conv_out.weight.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.fusion.parameters())


# -- helpers --------------------------------------------------------------------------------------


def test_resize_track_and_resize_matrix():
    track = [torch.rand(3, 17, 49), torch.rand(3, 15, 40), torch.rand(3, 16, 48)]
    out = resize_track(track, (16, 48))
    assert out.shape == (3, 3, 16, 48)
    assert torch.equal(out[2], track[2])
    m = lr_resize_matrix((17, 49), (16, 48))
    # Outer pixel edges coincide: -0.5 -> -0.5 and 47.5 -> 48.5 (x), 15.5 -> 16.5 (y).
    corner = m @ torch.tensor([47.5, 15.5, 1.0], dtype=torch.float64)
    assert torch.allclose(corner, torch.tensor([48.5, 16.5, 1.0], dtype=torch.float64))
    origin = m @ torch.tensor([-0.5, -0.5, 1.0], dtype=torch.float64)
    assert torch.allclose(origin, torch.tensor([-0.5, -0.5, 1.0], dtype=torch.float64))


def test_weighted_median():
    v = torch.tensor([[5.0], [1.0], [3.0], [100.0]])
    assert weighted_median(v, torch.ones(4, 1), dim=0).item() == 3.0
    assert weighted_median(v, torch.tensor([[0.0], [0.0], [0.0], [1.0]]), dim=0).item() == 100.0
    assert weighted_median(v, torch.tensor([[1.0], [0.0], [1.0], [3.0]]), dim=0).item() == 100.0
    assert weighted_median(v, torch.tensor([[3.0], [1.0], [1.0], [0.0]]), dim=0).item() == 5.0


# -- MF-LPR² baseline -----------------------------------------------------------------------------


def baseline(**overrides) -> MFLPR2Baseline:
    cfg = MFLPR2Config(flow=FlowConfig(base_channels=2, levels=2), recognizer=recognizer_micro(), **overrides)
    return MFLPR2Baseline(cfg).eval()


def test_baseline_config_round_trip_and_validation():
    cfg = baseline().config
    assert MFLPR2Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    for bad in (dict(outlier_k=0.5), dict(pixel_threshold=1.5), dict(photo_sigma=0), dict(ref_index="x")):
        with pytest.raises(ValueError):
            baseline(**bad)
    with pytest.raises(ValueError, match="unknown MFLPR2Config keys"):
        MFLPR2Config.from_dict({**cfg.to_dict(), "sigma": 1})


def test_baseline_has_no_learned_parts_but_flow_and_recognizer():
    model = baseline()
    assert set(dict(model.named_children())) == {"flow", "recognizer"}


def test_baseline_identical_frames_return_the_frame():
    model = baseline()
    plate = smooth_plate(17, 47)
    x = plate.expand(2, 5, -1, -1, -1).clone()
    with torch.no_grad():
        fused = model.fuse(x)
        out = model(x)
    assert torch.allclose(fused.fused, plate.expand(2, -1, -1, -1), atol=1e-6)
    assert fused.frame_accepted.all() and fused.pixel_accepted.all()
    assert torch.allclose(fused.weights, torch.full_like(fused.weights, 0.2), atol=1e-6)
    expected = F.interpolate(plate[None], scale_factor=4, mode="bilinear", align_corners=False)
    assert out.sr.shape == (2, 3, 68, 188)
    assert torch.allclose(out.sr, expected.expand(2, -1, -1, -1), atol=1e-5)
    assert out.char_logits.shape == (2, 7, model.config.recognizer.num_classes)


def test_baseline_rejects_a_noise_frame():
    model = baseline()
    g = torch.Generator().manual_seed(1)
    plate = smooth_plate()
    x = plate + 0.02 * torch.randn(1, 5, 3, 16, 48, generator=g)
    x[0, 1] = torch.rand(3, 16, 48, generator=g) * 2 - 1  # a frame of pure noise
    with torch.no_grad():
        fused = model.fuse(x)
        out = model(x)
    assert fused.frame_accepted.tolist() == [[True, False, True, True, True]]
    assert out.frame_accepted.tolist() == fused.frame_accepted.tolist()
    rel = fused.reliability.mean(dim=(2, 3, 4))[0]
    assert rel[1] < 0.2 and (rel[[0, 2, 3, 4]] > 0.8).all()
    assert (fused.weights[0, 1] == 0).all() and not fused.pixel_accepted[0, 1].any()
    clean = x[0, [0, 2, 3, 4]].mean(0)
    assert (fused.fused[0] - clean).abs().max() < 0.05
    assert (fused.fused[0] - plate).abs().mean() < 0.02


def test_baseline_outlier_pixels_are_excluded_and_masked_frames_ignored():
    model = baseline(photo_sigma=10.0)  # accept everything photometrically: test the robust mean alone
    plate = smooth_plate()
    x = plate.expand(1, 5, -1, -1, -1).clone()
    x[0, 4, :, 5, 10] = torch.tensor([1.0, -1.0, 1.0])  # one frame's pixel far off
    mask = torch.tensor([[True, True, True, True, True]])
    with torch.no_grad():
        fused = model.fuse(x, mask)
    assert torch.allclose(fused.fused[0], plate, atol=1e-6)
    assert fused.weights[0, 4, 5, 10] == 0
    mask = torch.tensor([[True, False, True, True, False]])
    y = x.clone()
    y[0, 1] = float("nan")
    with torch.no_grad():
        a, b = model(x, mask), model(y, mask)
    for name, va, vb in zip(a._fields, a, b):
        assert torch.equal(va, vb), name
    assert a.frame_accepted.tolist() == mask.tolist() and a.reference.tolist() == [2]
