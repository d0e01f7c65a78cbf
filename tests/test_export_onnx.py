"""ONNX export: parity with PyTorch on a micro model (both stems), dynamic batch, NAR only."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("onnxruntime")

from ksrnet.export_onnx import OnnxParseq, check_parity, export_onnx, onnx_meta_path  # noqa: E402
from ksrnet.infer import LARGE_BATCH_FRAMES, Reader  # noqa: E402
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
    onnx_reader = Reader(runtime)
    b = onnx_reader.read(tracks, ["product"])["product"]
    assert onnx_reader.batch_frames == LARGE_BATCH_FRAMES  # onnxruntime is no faster in small chunks
    assert [r.text for r in a] == [r.text for r in b]
    assert [r.confidence for r in a] == pytest.approx([r.confidence for r in b], rel=1e-4)


def test_missing_metadata_is_a_clear_error(tmp_path):
    path = export_onnx(micro(), tmp_path / "m.onnx")
    onnx_meta_path(path).unlink()
    with pytest.raises(ValueError, match="ksrnet export"):
        OnnxParseq(path)


def test_metadata_of_another_export_is_refused(tmp_path):
    # What a crash between the two replacements of a re-export (or copying one file only) leaves behind.
    first = export_onnx(micro(), tmp_path / "a.onnx")
    second = export_onnx(micro(stem="cnn"), tmp_path / "b.onnx")
    second_meta = json.loads(onnx_meta_path(second).read_text())
    OnnxParseq(first)
    onnx_meta_path(first).write_text(json.dumps(second_meta))
    with pytest.raises(ValueError, match="sha256 differs"):
        OnnxParseq(first)
    # An export made before the digest was recorded still loads.
    onnx_meta_path(second).write_text(json.dumps({k: v for k, v in second_meta.items() if k != "onnx_sha256"}))
    assert OnnxParseq(second).config.stem == "cnn"


def test_bench_threads_reach_onnxruntime(tmp_path, monkeypatch):
    """`ksrnet bench --backend onnx --threads N` reports N threads: onnxruntime must run with N, not its default."""
    from ksrnet import cli_readers

    path = export_onnx(micro(), tmp_path / "m.onnx")
    reader = cli_readers.make_readers([str(path)], "cpu", "nar", None, "logit", "onnx", threads=1)
    assert reader.model.session.get_session_options().intra_op_num_threads == 1


# --- `ksrnet export` and `ksrnet bench --backend onnx` on a saved micro model ----------------------

def saved_micro(tmp_path):
    from ksrnet.weights import save_model

    model = micro()
    return save_model(model, model.config, tmp_path / "run" / "model.safetensors")


def invoke(*args):
    from typer.testing import CliRunner

    from ksrnet.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_export_refuses_a_name_without_the_onnx_suffix(tmp_path):
    # "run/model" would put its metadata in run/model.json: the metadata of run/model.safetensors.
    weights = saved_micro(tmp_path)
    source_meta = weights.with_suffix(".json").read_text()
    with pytest.raises(ValueError, match=".onnx"):
        export_onnx(micro(), tmp_path / "run" / "model")
    result = invoke("export", "--onnx", tmp_path / "run" / "model", "--model", weights, "--check-tracks", 1)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert ".onnx" in result.output
    assert weights.with_suffix(".json").read_text() == source_meta
    assert not (tmp_path / "run" / "model").exists()


def test_export_that_fails_its_parity_check_leaves_the_earlier_export(tmp_path, monkeypatch):
    from ksrnet import export_onnx as module

    weights, onnx = saved_micro(tmp_path), tmp_path / "out" / "m.onnx"
    result = invoke("export", "--onnx", onnx, "--model", weights, "--check-tracks", 1)
    assert result.exit_code == 0, result.output
    before = onnx.read_bytes(), onnx_meta_path(onnx).read_text()

    def failing(model, runtime, images):
        return module.Parity(1.0, 1.0, images.shape[0], readings_differ=1)

    monkeypatch.setattr(module, "check_parity", failing)
    result = invoke("export", "--onnx", onnx, "--model", weights, "--check-tracks", 1, "--refine-iters", 0)
    assert result.exit_code == 1 and "differ" in result.output
    assert (onnx.read_bytes(), onnx_meta_path(onnx).read_text()) == before
    assert sorted(p.name for p in onnx.parent.iterdir()) == ["m.onnx", "m.onnx.json"]  # no staged leftovers


def test_onnxruntime_runs_with_the_thread_count_bench_and_export_report(tmp_path, monkeypatch):
    """Without --threads, onnxruntime would take every core while the figures say torch's count."""
    from ksrnet import bench as bench_module
    from ksrnet import export_onnx as module

    weights, onnx = saved_micro(tmp_path), tmp_path / "m.onnx"
    sessions = []

    class Recorded(module.OnnxParseq):
        def __init__(self, path, threads=None):
            super().__init__(path, threads)
            sessions.append(self.session.get_session_options().intra_op_num_threads)

    monkeypatch.setattr(module, "OnnxParseq", Recorded)
    assert invoke("export", "--onnx", onnx, "--model", weights, "--check-tracks", 1).exit_code == 0
    monkeypatch.setattr(bench_module, "bench", lambda *args: [])  # only the reader it was given matters
    result = invoke("bench", "--model", onnx, "--backend", "onnx", "--batches", 1, "--json")
    assert result.exit_code == 0, result.output
    assert sessions == [torch.get_num_threads()] * 2 == [json.loads(result.stdout)["threads"]] * 2


@pytest.mark.parametrize("name", ["m.onnx", "M.ONNX"])
def test_an_onnx_model_read_with_the_torch_backend_is_pointed_to_onnx(tmp_path, name):
    onnx = export_onnx(micro(), tmp_path / name)
    result = invoke("bench", "--model", onnx, "--batches", 1)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert "--backend onnx" in result.output


# --- the typicality check (ksrnet.typicality) through an export --------------------------------------

def _fitted_reference(model):
    from ksrnet.synth.dataset import generate_track
    from ksrnet.typicality import fit_reference

    reader = Reader(model)
    return fit_reference([reader.frame_features(generate_track(3, i, preset="easy").lr).numpy() for i in range(40)])


def test_an_export_carries_the_features_and_the_reference_and_scores_tracks_as_pytorch(tmp_path):
    from ksrnet.synth.dataset import generate_track
    from ksrnet.typicality import load_for, reference_path

    weights = saved_micro(tmp_path)
    model = micro()
    reference = _fitted_reference(model)
    reference.save(reference_path(weights))
    onnx = tmp_path / "out" / "m.onnx"
    result = invoke("export", "--onnx", onnx, "--model", weights, "--check-tracks", 1)
    assert result.exit_code == 0, result.output
    assert "m.onnx.typicality.safetensors" in result.output and "features" in result.output
    runtime = OnnxParseq(onnx)
    assert runtime.has_features
    # tracks like the reference's, whose atypicality is spread out (noise would score 1.0 either way)
    tracks = [generate_track(4, i, preset="easy") for i in range(6)]
    torch_read, onnx_read = ([r.atypicality for r in reader.read(tracks, frame_count=4)["product"]]
                             for reader in (Reader(model, typicality=reference),
                                            Reader(runtime, typicality=load_for(onnx))))
    # equal, or one of the 20 reference tracks apart where a score sits on a reference one
    assert len(set(torch_read)) > 2 and onnx_read == pytest.approx(torch_read, abs=0.051)
    # a model without a reference leaves none beside its export: the earlier one describes other tracks
    reference_path(weights).unlink()
    assert invoke("export", "--onnx", onnx, "--model", weights, "--check-tracks", 1).exit_code == 0
    assert not reference_path(onnx).exists()


def test_an_export_from_before_the_features_reads_as_before_without_a_flag(tmp_path, noise_tracks):
    import warnings

    import cv2

    from ksrnet.typicality import reference_path

    model = micro()
    path = export_onnx(model, tmp_path / "old.onnx")

    class LogitsOnly(torch.nn.Module):  # the graph exports wrote before they gave the features
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, images):
            out = self.model(images, mode="nar")
            return out.char_logits, out.layout_logits

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice, as export_onnx does
        torch.onnx.export(LogitsOnly().eval(), (torch.zeros(2, 3, 16, 32),), str(path), input_names=["images"],
                          output_names=["char_logits", "layout_logits"], dynamo=False,
                          dynamic_axes={n: {0: "batch"} for n in ("images", "char_logits", "layout_logits")})
    meta = json.loads(onnx_meta_path(path).read_text())
    meta.pop("onnx_sha256")
    onnx_meta_path(path).write_text(json.dumps(meta))
    runtime = OnnxParseq(path)
    assert not runtime.has_features
    reference = _fitted_reference(model)
    with pytest.raises(ValueError, match="export it again"):
        Reader(runtime, typicality=reference)
    reference.save(reference_path(path))
    out, details, root = tmp_path / "p.txt", tmp_path / "d.jsonl", tmp_path / "tracks"
    for t in noise_tracks(2):
        (root / t.track_id).mkdir(parents=True)
        for i, frame in enumerate(t.lr):
            cv2.imwrite(str(root / t.track_id / f"lr-{i + 1:03d}.png"), frame)
    result = invoke("predict", root, "--backend", "onnx", "--model", path, "--out", out, "--details", details)
    assert result.exit_code == 0, result.output
    assert all(json.loads(line)["atypicality"] is None for line in details.read_text().splitlines())


def test_gap_confidences_from_an_export_without_them_say_to_export_again(tmp_path, noise_tracks):
    import cv2

    onnx = tmp_path / "m.onnx"
    assert invoke("export", "--onnx", onnx, "--model", saved_micro(tmp_path), "--check-tracks", 1).exit_code == 0
    track = tmp_path / "tracks" / "t0"
    track.mkdir(parents=True)
    cv2.imwrite(str(track / "lr-001.png"), noise_tracks(1)[0].lr[0])
    result = invoke("predict", track.parent, "--backend", "onnx", "--model", onnx, "--confidence", "gap",
                    "--out", tmp_path / "p.txt")
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert "then export it again" in " ".join(result.output.split())
