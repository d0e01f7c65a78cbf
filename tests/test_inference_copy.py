"""The reading copy of a network (models/inference.py): same outputs, batch norms folded, the
original untouched, and the Reader reads through it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ksrnet.infer import Reader
from ksrnet.models.inference import fold_batchnorms, inference_copy
from ksrnet.preprocess import frames_to_tensor


def _with_batch_statistics(model: nn.Module) -> nn.Module:
    """Give every batch norm running statistics and an affine map far from identity, so a wrong fold
    would show in the outputs."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen))
                m.running_var.copy_(torch.rand(n, generator=gen) * 3 + 0.2)
                m.weight.copy_(torch.randn(n, generator=gen))
                m.bias.copy_(torch.randn(n, generator=gen))
    return model.eval()


def _count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


def test_inference_copy_reads_like_the_model_and_leaves_it_untouched(micro_parseq):
    model = _with_batch_statistics(micro_parseq(stem="cnn"))
    norms = _count(model, nn.BatchNorm2d)
    assert norms > 0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.randn(6, 3, 16, 32)

    fast = inference_copy(model)

    assert _count(fast, nn.BatchNorm2d) == 0
    assert all(p.is_contiguous(memory_format=torch.channels_last)
               for m in fast.modules() if isinstance(m, nn.Conv2d) for p in [m.weight])
    assert not any(p.requires_grad for p in fast.parameters())
    with torch.no_grad():
        want, got = model(images), fast(images)
    assert torch.allclose(want.char_logits, got.char_logits, atol=1e-4)
    assert torch.allclose(want.layout_logits, got.layout_logits, atol=1e-4)
    # The original keeps its norms and weights (it may still be trained or saved).
    assert _count(model, nn.BatchNorm2d) == norms
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_fold_counts_and_is_idempotent(micro_parseq):
    model = _with_batch_statistics(micro_parseq(stem="cnn"))
    norms = _count(model, nn.BatchNorm2d)
    assert fold_batchnorms(model) == norms
    assert fold_batchnorms(model) == 0
    assert _count(inference_copy(model), nn.Conv2d) == _count(model, nn.Conv2d)


def test_fold_refuses_a_model_in_training_mode(micro_parseq):
    model = micro_parseq(stem="cnn").train()
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorms(model)


def test_fold_leaves_a_norm_without_running_statistics_alone():
    # Such a norm uses the batch's statistics even in eval mode: folding it would change the outputs.
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)).eval()
    assert fold_batchnorms(seq) == 0
    assert isinstance(seq[1], nn.BatchNorm2d)


def test_models_without_batch_norms_copy_unchanged(micro_parseq):
    model = micro_parseq(stem="conv")  # GroupNorm stem
    images = torch.randn(3, 3, 16, 32)
    with torch.no_grad():
        assert torch.allclose(model(images).char_logits, inference_copy(model)(images).char_logits, atol=1e-5)


def test_reader_reads_through_the_copy(micro_parseq, noise_tracks):
    model = _with_batch_statistics(micro_parseq(stem="cnn"))
    reader = Reader(model)
    assert reader.model is not model and _count(reader.model, nn.BatchNorm2d) == 0
    assert model.training is False and _count(model, nn.BatchNorm2d) > 0
    frames = [f for t in noise_tracks(n=2, frames=3) for f in t.lr]
    chars, layouts = reader.frame_outputs(frames)
    with torch.no_grad():
        want = model(frames_to_tensor(frames, 16, 32))
    assert torch.allclose(chars, want.char_logits, atol=1e-4)
    assert torch.allclose(layouts, want.layout_logits, atol=1e-4)
