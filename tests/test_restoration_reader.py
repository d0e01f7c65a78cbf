"""Reading tracks through KSR-Net / the MF-LPR²-style baseline: RestorationReader and the CLI."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ksrnet.cli import app
from ksrnet.models.baselines import FUSIONS
from ksrnet.models.ksrnet import MFLPR2Baseline
from ksrnet.restoration_reader import RestorationReader, is_ksrnet_weights, load_restoration_reader, pad_tracks
from ksrnet.weights import save_ksrnet, save_model

runner = CliRunner()


def test_pad_tracks_zero_pads_and_masks():
    a, b = torch.ones(2, 3, 4, 5), torch.full((4, 3, 4, 5), 2.0)
    frames, mask = pad_tracks([a, b])
    assert frames.shape == (2, 4, 3, 4, 5)
    assert mask.tolist() == [[True, True, False, False], [True] * 4]
    assert torch.equal(frames[0, :2], a) and frames[0, 2:].abs().sum() == 0 and torch.equal(frames[1], b)
    with pytest.raises(ValueError):
        pad_tracks([])


def test_one_reading_per_track_that_every_fusion_shares(micro_ksrnet, noise_tracks):
    reader = RestorationReader(micro_ksrnet())
    tracks = noise_tracks(n=3, frames=5)
    out = reader.read(tracks, FUSIONS, topk=2)
    first = out[FUSIONS[0]]
    assert [r.track_id for r in first] == ["t0", "t1", "t2"]
    for rule in FUSIONS:  # a single restored image: late fusion has nothing to fuse
        assert [(r.text, r.confidence) for r in out[rule]] == [(r.text, r.confidence) for r in first]
    for r in first:
        assert len(r.text) == 7 and 0.0 <= r.confidence <= 1.0 and r.frames_used == 5
        assert len(r.alternatives) == 7 and all(len(a) == 2 for a in r.alternatives)
    assert [r.frames_used for r in reader.read(tracks, frame_count=2)["product"]] == [2, 2, 2]


def test_tracks_of_any_length_read_alike_alone_or_batched(micro_ksrnet, noise_tracks):
    reader = RestorationReader(micro_ksrnet(seed=3), batch_tracks=8)
    tracks = noise_tracks(n=3, frames=5)
    tracks[1].lr = tracks[1].lr[:2]  # padded and masked in the batch
    tracks[2].lr = [np.ascontiguousarray(f[:, :40]) for f in tracks[2].lr]  # another native size
    batched = reader.track_logits(tracks)
    for track, (chars, layouts) in zip(tracks, batched):
        alone_chars, alone_layouts = reader.track_logits([track])[0]
        assert chars.shape == (1, 7, chars.shape[-1])
        assert torch.allclose(chars, alone_chars, atol=1e-5) and torch.allclose(layouts, alone_layouts, atol=1e-5)


def test_a_short_track_reads_the_same_whatever_it_is_batched_with(micro_ksrnet, noise_tracks):
    # Untrained, the head's last convolution is zero (sr = upsampled reference, blind to the fusion)
    # and the STFT close to a plain mean: give both weights so how the frames were fused shows.
    model = micro_ksrnet(seed=3)
    with torch.no_grad():
        for p in [*model.fusion.parameters(), model.head.conv_out.weight]:
            p.add_(torch.randn_like(p) * 0.3)
    reader = RestorationReader(model, batch_tracks=8)
    tracks = noise_tracks(n=4, frames=5, seed=1)
    tracks[1].lr, tracks[3].lr = tracks[1].lr[:2], tracks[3].lr[:1]  # 2 frames: no shifted window alone
    sr, chars, _ = reader.restore_and_read(tracks)
    for i, track in enumerate(tracks):  # also: every row stays with its track
        alone_sr, alone_chars, _ = reader.restore_and_read([track])
        assert torch.allclose(sr[i], alone_sr[0], atol=1e-5) and torch.allclose(chars[i], alone_chars[0], atol=1e-5)


def test_temperatures_soften_the_confidence(micro_ksrnet, noise_tracks):
    model, tracks = micro_ksrnet(seed=1), noise_tracks(n=2, frames=3)
    plain = RestorationReader(model).read(tracks)["product"]
    hot = RestorationReader(model, temperatures={"product": 50.0}).read(tracks)["product"]
    assert [r.text for r in hot] == [r.text for r in plain]
    assert all(h.confidence < max(p.confidence, 1e-3) for h, p in zip(hot, plain))
    with pytest.raises(ValueError):
        RestorationReader(model, temperatures={"product": 0.0})
    with pytest.raises(ValueError):
        RestorationReader(model, batch_tracks=0)


@pytest.fixture
def saved_ksrnet(micro_ksrnet, micro_parseq, tmp_path):
    model = micro_ksrnet()
    path = save_ksrnet(model, model.config, tmp_path / "run" / "ksrnet.safetensors")
    recognizer = micro_parseq()
    save_model(recognizer, recognizer.config, tmp_path / "recognizer" / "model.safetensors")
    return path


def test_weights_are_told_apart_and_the_baseline_reuses_flow_and_recognizer(saved_ksrnet, tmp_path):
    assert is_ksrnet_weights(saved_ksrnet) and is_ksrnet_weights(saved_ksrnet.parent)
    assert not is_ksrnet_weights(tmp_path / "recognizer") and not is_ksrnet_weights("parseq-tiny")
    assert not is_ksrnet_weights(tmp_path / "nowhere") and not is_ksrnet_weights(None)
    reader, meta = load_restoration_reader(saved_ksrnet.parent)
    assert meta["kind"] == "ksrnet" and reader.lr_size == (16, 48)
    base, _ = load_restoration_reader(saved_ksrnet, baseline=True)
    assert isinstance(base.model, MFLPR2Baseline)
    for part in ("flow", "recognizer"):
        mine, theirs = getattr(base.model, part).state_dict(), getattr(reader.model, part).state_dict()
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


PREDICTION_LINE = re.compile(r"^(track_\d{5}),([A-Z0-9]{7});(\d\.\d+)$")


@pytest.fixture
def synth_tracks(tmp_path):
    out = tmp_path / "tracks"
    result = runner.invoke(app, ["synth", str(out), "--tracks", "3", "--seed", "5", "--no-hr"])
    assert result.exit_code == 0, result.stdout
    return out


@pytest.mark.parametrize("prefix", ["", "mflpr2:"])
def test_predict_and_eval_with_a_restoration_model(saved_ksrnet, synth_tracks, tmp_path, prefix):
    model = f"{prefix}{saved_ksrnet.parent}"
    out = tmp_path / "predictions.txt"
    result = runner.invoke(app, ["predict", str(synth_tracks), "--model", model, "--out", str(out)])
    assert result.exit_code == 0, result.stdout
    lines = out.read_text().splitlines()
    assert len(lines) == 3 and all(PREDICTION_LINE.match(line) for line in lines)
    result = runner.invoke(app, ["eval", str(synth_tracks), "--model", model, "--fusions", "product",
                                 "--frames", "1,5", "--json"])
    assert result.exit_code == 0, result.stdout
    scores = json.loads(result.stdout)
    assert {"product@F=1", "product@F=5"} <= set(scores)


def test_calibrate_writes_the_temperature_beside_the_restoration_weights(saved_ksrnet):
    for model, key in ((str(saved_ksrnet.parent), "temperature"), (f"mflpr2:{saved_ksrnet}", "temperature_mflpr2")):
        result = runner.invoke(app, ["calibrate", "--model", model, "--synth", "10", "--fusions", "product",
                                     "--batch-size", "5"])
        assert result.exit_code == 0, result.stdout
        meta = json.loads(saved_ksrnet.with_suffix(".json").read_text())
        assert meta[key]["product"] > 0
    assert len(meta["calibration"]["fits"]) == 1 and len(meta["calibration_mflpr2"]["fits"]) == 1
    reader, _ = load_restoration_reader(saved_ksrnet)
    assert reader.temperatures == {"product": meta["temperature"]["product"]}


def test_restoration_models_refuse_tta_and_a_baseline_needs_ksrnet_weights(saved_ksrnet, synth_tracks, tmp_path):
    result = runner.invoke(app, ["predict", str(synth_tracks), "--model", str(saved_ksrnet), "--tta",
                                 "--out", str(tmp_path / "p.txt")])
    assert result.exit_code != 0 and "TTA" in result.stdout + result.stderr
    result = runner.invoke(app, ["predict", str(synth_tracks), "--model", "mflpr2:parseq-tiny",
                                 "--out", str(tmp_path / "p.txt")])
    assert result.exit_code != 0 and "KSR-Net" in result.stdout + result.stderr


def test_a_logit_ensemble_refuses_to_mix_restoration_and_recognizer_models(saved_ksrnet, synth_tracks, tmp_path):
    # One row of logits per track against one per frame: nothing to average row by row.
    models = ["--model", str(saved_ksrnet.parent), "--model", str(tmp_path / "recognizer")]
    result = runner.invoke(app, ["predict", str(synth_tracks), *models, "--out", str(tmp_path / "p.txt")])
    assert isinstance(result.exception, SystemExit) and result.exit_code != 0
    assert "--ensemble vote" in " ".join((result.stdout + result.stderr).split())
    result = runner.invoke(app, ["predict", str(synth_tracks), *models, "--ensemble", "vote",
                                 "--out", str(tmp_path / "p.txt")])
    assert result.exit_code == 0, result.stdout
    assert len((tmp_path / "p.txt").read_text().splitlines()) == 3


def test_pad_margin_is_refused_for_a_restoration_model(saved_ksrnet, synth_tracks, tmp_path):
    result = runner.invoke(app, ["predict", str(synth_tracks), "--model", str(saved_ksrnet.parent),
                                 "--out", str(tmp_path / "p.txt"), "--pad-margin", "0.06"])
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit)
    assert "--pad-margin" in " ".join(result.output.split()) or "--pad-margin" in " ".join(result.stderr.split())
    assert not (tmp_path / "p.txt").exists()
