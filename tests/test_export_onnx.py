"""ONNX export: parity with PyTorch on a micro model (both stems), dynamic batch, NAR only."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("onnxruntime")

from ksrnet.export_onnx import OnnxParseq, check_parity, export_onnx, onnx_meta_path  # noqa: E402
from ksrnet.infer import Reader  # noqa: E402
from ksrnet.models.parseq import Parseq, ParseqConfig  # noqa: E402


def micro(**overrides) -> Parseq:
    config = ParseqConfig(img_h=16, img_w=32, embed_dim=32, enc_depth=1, enc_heads=2, dec_depth=1, dec_heads=2,
                          mlp_ratio=2.0, dropout=0.0, slot_prior_sigma=0.07, **overrides)
    torch.manual_seed(0)
    model = Parseq(config)
    model.train()
    model(torch.randn(8, 3, 16, 32))  # move BatchNorm statistics off their start (cnn stem)
    return model.eval()


@pytest.mark.parametrize("stem", ["conv", "cnn"])
def test_export_matches_pytorch_for_any_batch(tmp_path, stem):
    model = micro(stem=stem, stem_channels=8)
    path = export_onnx(model, tmp_path / "m.onnx", {"temperature": {"product": 1.5}})
    meta = json.loads(onnx_meta_path(path).read_text())
    assert meta["refine_iters"] == model.config.refine_iters and meta["temperature"] == {"product": 1.5}
    runtime = OnnxParseq(path)
    for batch in (1, 5):
        parity = check_parity(model, runtime, torch.randn(batch, 3, 16, 32, generator=torch.Generator().manual_seed(batch)))
        assert parity.frames == batch and parity.readings_differ == 0
        assert parity.max_abs_char_logits < 1e-4 and parity.max_abs_layout_logits < 1e-4


def test_onnx_model_reads_like_the_torch_model_and_is_nar_only(tmp_path, noise_tracks):
    model = micro(refine_iters=2)
    runtime = OnnxParseq(export_onnx(model, tmp_path / "m.onnx"))
    assert runtime.refine_iters == 2
    with pytest.raises(ValueError, match="NAR"):
        runtime(torch.zeros(1, 3, 16, 32), mode="ar")
    with pytest.raises(ValueError, match="NAR"):
        runtime(torch.zeros(1, 3, 16, 32), refine_iters=0)

    tracks = noise_tracks()
    a = Reader(model).read(tracks, ["product"])["product"]
    b = Reader(runtime).read(tracks, ["product"])["product"]
    assert [r.text for r in a] == [r.text for r in b]
    assert [r.confidence for r in a] == pytest.approx([r.confidence for r in b], rel=1e-4)


def test_missing_metadata_is_a_clear_error(tmp_path):
    path = export_onnx(micro(), tmp_path / "m.onnx")
    onnx_meta_path(path).unlink()
    with pytest.raises(ValueError, match="ksrnet export"):
        OnnxParseq(path)


def test_bench_threads_reach_onnxruntime(tmp_path, monkeypatch):
    """`ksrnet bench --backend onnx --threads N` reports N threads: onnxruntime must run with N, not its default."""
    from ksrnet import cli_readers

    path = export_onnx(micro(), tmp_path / "m.onnx")
    reader = cli_readers.make_readers([str(path)], "cpu", "nar", None, "logit", "onnx", threads=1)
    assert reader.model.session.get_session_options().intra_op_num_threads == 1
