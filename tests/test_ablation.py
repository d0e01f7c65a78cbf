"""The ablation table: its no-fusion restoration baseline, its rows and the CLI around it."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from ksrnet.ablation import AblationResult, AblationRow, ReferenceUpsample, UpsampleConfig, sr_targets, synthetic_test_set
from ksrnet.cli import app
from ksrnet.weights import save_ksrnet, save_model

runner = CliRunner()


def test_reference_upsample_is_bicubic_of_the_middle_valid_frame(micro_parseq):
    model = ReferenceUpsample(micro_parseq(), UpsampleConfig((16, 48), 4, "middle")).eval()
    frames = torch.rand(2, 5, 3, 16, 48) * 2 - 1
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    with torch.no_grad():
        out = model(frames, mask)
    expected = F.interpolate(frames[:, [2, 1]].diagonal(dim1=0, dim2=1).permute(3, 0, 1, 2), scale_factor=4,
                             mode="bicubic", align_corners=False).clamp(-1, 1)
    assert out.sr.shape == (2, 3, 64, 192) and torch.allclose(out.sr, expected)
    assert out.char_logits.shape[:2] == (2, 7)


def test_sr_targets_of_the_synthetic_test_set_are_fixed_by_the_seed():
    a, b = synthetic_test_set(2, "easy"), synthetic_test_set(2, "easy")
    assert [t.text for t in a] == [t.text for t in b]
    images, masks = sr_targets(a, (16, 48), 4)
    assert images.shape == (2, 3, 64, 192) and masks.shape == (2, 1, 64, 192)
    assert 0.2 < float(masks.mean()) <= 1.0  # the plate fills much of the crop
    assert torch.equal(images, sr_targets(b, (16, 48), 4)[0])


def test_markdown_and_json_show_missing_figures_as_such():
    rows = [AblationRow("late fusion: product (F=5)", "synthetic hard", 10, 0.5, 0.1, 0.3, 0.05, tracks_per_s=12.0),
            AblationRow("KSR-Net final", "synthetic hard", 10, 0.6, 0.08, 0.2, None, psnr_y=21.234, ssim_y=math.nan)]
    result = AblationResult(rows, ["a note"])
    md = result.to_markdown()
    assert "| late fusion: product (F=5) | 50.0 | 10.0 | 30.0 | 5.0 | - | - | 12.0 |" in md
    assert "| KSR-Net final | 60.0 | 8.0 | 20.0 | - | 21.23 | - | - |" in md
    assert "**synthetic hard** (10 tracks)" in md and md.rstrip().endswith("- a note")
    data = json.loads(result.to_json())
    assert data["rows"][1]["ssim_y"] is None and data["rows"][1]["psnr_y"] == pytest.approx(21.234)


@pytest.fixture
def models(micro_ksrnet, micro_parseq, tmp_path):
    ksr = micro_ksrnet()
    ksr_path = save_ksrnet(ksr, ksr.config, tmp_path / "ksr" / "ksrnet.safetensors")
    rec = micro_parseq(seed=1)
    rec_path = save_model(rec, rec.config, tmp_path / "rec" / "model.safetensors")
    rec2 = micro_parseq(seed=2)
    rec2_path = save_model(rec2, rec2.config, tmp_path / "rec2" / "model.safetensors")
    return rec_path, rec2_path, ksr_path


def test_cli_ablation_table_has_every_method(models, tmp_path):
    rec, rec2, ksr = models
    md = tmp_path / "out" / "ablation.md"
    result = runner.invoke(app, ["eval", "--ablation", "--model", str(rec), "--model", str(rec2), "--ksrnet",
                                 str(ksr.parent), "--synth-tracks", "3", "--presets", "easy", "--tta",
                                 "--markdown", str(md), "--json", "--batch-size", "2"])
    assert result.exit_code == 0, result.stdout + str(result.exception)
    data = json.loads(md.with_suffix(".json").read_text())
    names = [r["method"] for r in data["rows"]]
    assert names == ["last frame only (F=1)", "most confident frame (F=5)", "late fusion: product (F=5)",
                     "late fusion: logit_mean (F=5)", "late fusion: char_majority (F=5)",
                     "late fusion: string_majority (F=5)", "late fusion: product (F=5) + TTA",
                     "late fusion: product (F=5) + ensemble", "bicubic reference frame (no fusion)",
                     "MF-LPR²-style fusion", "KSR-Net final"]
    for row in data["rows"]:
        assert row["tracks"] == 3 and 0 <= row["rr"] <= 1 and row["tracks_per_s"] > 0
        restores = row["method"] in names[-3:]
        assert (row["psnr_y"] is not None) == restores and (row["ssim_y"] is not None) == restores
    assert "| KSR-Net final |" in md.read_text()
    assert json.loads(result.stdout)["rows"] == data["rows"]


def test_cli_ablation_on_a_folder_and_bad_requests(models, tmp_path):
    rec, _, ksr = models
    folder = tmp_path / "tracks"
    assert runner.invoke(app, ["synth", str(folder), "--tracks", "2", "--seed", "3", "--no-hr"]).exit_code == 0
    result = runner.invoke(app, ["eval", str(folder), "--ablation", "--model", str(rec), "--synth-tracks", "0",
                                 "--json"])
    assert result.exit_code == 0, result.stdout + str(result.exception)
    data = json.loads(result.stdout)
    assert {r["dataset"] for r in data["rows"]} == {str(folder)}
    assert all(r["psnr_y"] is None for r in data["rows"])  # no canonical HR for a folder
    assert any("--ksrnet" in n for n in data["notes"])
    for args, needle in ((["eval"], "TRACKS"), (["eval", "--ablation", "--synth-tracks", "0"], "--ablation needs"),
                         (["eval", "--ablation", "--presets", "nope"], "nope"),
                         (["eval", "--ablation", "--model", str(ksr)], "--ksrnet"),
                         (["eval", "--ablation", "--ksrnet", str(rec)], "no KSR-Net weights"),
                         (["eval", str(folder), "--ksrnet", str(ksr)], "--ablation")):
        result = runner.invoke(app, args)
        said = "".join((result.stdout + result.stderr).split())  # rich wraps long lines
        assert result.exit_code != 0 and "".join(needle.split()) in said, (args, said)


def test_cli_ablation_scores_each_ksrnet_on_its_own_lr_grid(models, micro_ksrnet, tmp_path):
    import dataclasses

    from ksrnet.models.ksrnet import KSRNet

    rec, _, ksr = models
    torch.manual_seed(0)
    tall = KSRNet(dataclasses.replace(micro_ksrnet().config, lr_size=(20, 48))).eval()  # SR 80x192, not 64x192
    tall_path = save_ksrnet(tall, tall.config, tmp_path / "tall" / "ksrnet.safetensors")
    result = runner.invoke(app, ["eval", "--ablation", "--model", str(rec), "--ksrnet", str(ksr.parent), "--ksrnet",
                                 str(tall_path.parent), "--synth-tracks", "2", "--presets", "easy", "--json"])
    assert result.exit_code == 0, result.stdout + str(result.exception)
    rows = {r["method"]: r for r in json.loads(result.stdout)["rows"]}
    ours = [r for name, r in rows.items() if name.startswith("KSR-Net final")]
    assert len(ours) == 2 and all(r["psnr_y"] is not None and r["ssim_y"] is not None for r in ours)
