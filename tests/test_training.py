"""Training: config validation, a micro CLI run (train -> predict -> eval), resuming, model loading.

Every run is micro (an 8k-parameter PARSeq, a handful of synthetic tracks, 1-2 epochs) so the whole
file takes seconds of CPU. One trained run dir is shared by the tests of this module (each copies it
before changing anything).
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

import ksrnet.synth.dataset as synth_dataset
import ksrnet.training as training
from ksrnet.cli import app
from ksrnet.infer import CPU_BATCH_FRAMES, LARGE_BATCH_FRAMES, Reader, default_batch_frames, select_frames
from ksrnet.models.baselines import FUSIONS
from ksrnet.plates import LAYOUTS, infer_layout
from ksrnet.submission import read_predictions
from ksrnet.train_config import ConfigError, TrainConfig
from ksrnet.weights import ModelLoadError, load_model

runner = CliRunner()

MICRO = {
    "model": {"preset": "tiny", "embed_dim": 32, "enc_depth": 1, "enc_heads": 2, "dec_heads": 2,
              "stem": "patch"},
    "data": {"synth_tracks_per_epoch": 8, "val_tracks": 4, "num_workers": 0},
    "trainer": {"max_epochs": 1, "batch_tracks": 4, "checkpoint_every_n_steps": 1},
}
STEPS_PER_EPOCH = 2  # 8 tracks / 4 per batch


def micro(**sections) -> dict:
    """MICRO with some keys of some sections replaced: micro(data={"num_workers": 1})."""
    return {k: {**MICRO.get(k, {}), **sections.get(k, {})} for k in {**MICRO, **sections}}


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def plain(text: str) -> str:
    """Output without ANSI codes or whitespace (rich wraps long lines)."""
    return "".join(re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", text).split())


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_ok(result) -> None:
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"


def assert_refused(result, *needles: str) -> None:
    """Non-zero exit through typer.Exit (not a crash), with each needle in the output."""
    detail = f"{result.output}\n{result.exception!r}"
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit), detail
    for needle in needles:
        assert plain(needle) in plain(result.output), detail


def ckpt(run_dir: Path, name: str = "last.ckpt") -> dict:
    return torch.load(run_dir / "checkpoints" / name, weights_only=False, map_location="cpu")


@pytest.fixture
def counter(monkeypatch, step_recorder):
    """The real _EpochSetter, also recording the global step each fit starts from and the batches
    it trains; optionally raising (a simulated crash) once the global step reaches `fail_at`."""

    class StepCounter(step_recorder, training._EpochSetter):
        pass

    monkeypatch.setattr(training, "_EpochSetter", StepCounter)
    return StepCounter


# ---------------------------------------------------------------------------------------------
# (a) TrainConfig


def test_shipped_configs_load():
    recognizer_configs = [p for p in Path(__file__).parent.parent.joinpath("configs").glob("*.yaml")
                          if not p.name.startswith("ksrnet-")]  # KSR-Net configs: tests/test_ksr_training.py
    assert recognizer_configs
    for path in recognizer_configs:
        cfg = TrainConfig.load(path)
        assert cfg.trainer.max_epochs >= 1, path


def test_micro_config_values(tmp_path):
    cfg = TrainConfig.load(write_yaml(tmp_path / "c.yaml", MICRO))
    assert (cfg.model.embed_dim, cfg.model.enc_depth, cfg.model.enc_heads, cfg.model.dec_heads) == (32, 1, 2, 2)
    assert cfg.model.enc_heads == 2 and cfg.model.img_h == 32  # the rest from the tiny preset
    assert cfg.data.synth_tracks_per_epoch == 8 and cfg.data.num_workers == 0
    assert cfg.optim.schedule == "onecycle"  # a default


def test_save_load_round_trip(tmp_path):
    cfg = TrainConfig.from_dict(micro(optim={"lr": 0.001, "schedule": "cosine"},
                                      trainer={"max_minutes": 2.5, "precision": "32"}))
    cfg.save(tmp_path / "c.yaml")
    back = TrainConfig.load(tmp_path / "c.yaml")
    assert back == cfg
    assert back.optim.lr == 0.001 and back.trainer.max_minutes == 2.5 and back.model.embed_dim == 32
    # What is saved beside a run is a complete, explicit config (every key written out).
    saved = yaml.safe_load((tmp_path / "c.yaml").read_text())
    assert saved["model"]["embed_dim"] == 32 and "preset" not in saved["model"]
    assert saved["data"]["val_seed"] == cfg.data.val_seed


def test_replace_keeps_other_sections():
    cfg = TrainConfig.from_dict(MICRO).replace("trainer", max_epochs=5)
    assert cfg.trainer.max_epochs == 5 and cfg.trainer.batch_tracks == 4 and cfg.model.embed_dim == 32


@pytest.mark.parametrize("data, needles", [
    (micro(data={"synth_track_per_epoch": 8}), ["data", "synth_track_per_epoch", "synth_tracks_per_epoch"]),
    (micro(trainer={"max_epoch": 3}), ["trainer", "max_epoch", "allowed"]),
    (micro(model={"embed_dims": 64}), ["model", "embed_dims"]),
    ({**MICRO, "optimizer": {"lr": 0.1}}, ["unknown section", "optimizer"]),
    (micro(model={"preset": "huge"}), ["model", "huge", "tiny"]),
    (micro(model={"embed_dim": 33}), ["model", "embed_dim=33", "enc_heads=2"]),
    (micro(optim={"schedule": "linear"}), ["optim", "onecycle"]),
    (micro(optim={"lr": 2.0}), ["optim", "lr must be in (0, 1)"]),
    (micro(optim={"lr": "1e-3"}), ["optim.lr", "expected float", "'1e-3'", "0.001"]),
    (micro(trainer={"precision": 32}), ["trainer.precision", "expected str", "quote it: '32'"]),
    (micro(trainer={"max_epochs": 0}), ["trainer", "max_epochs"]),
    (micro(trainer={"max_epochs": "ten"}), ["trainer.max_epochs", "expected int", "'ten'"]),
    (micro(trainer={"max_epochs": True}), ["trainer.max_epochs", "expected int"]),
    (micro(trainer={"precision": "bf17"}), ["trainer", "precision"]),
    (micro(data={"synth_preset": "extreme"}), ["data", "synth_preset", "'extreme'"]),
    (micro(data={"frames_per_track": 0}), ["data", "frames_per_track in 1..16"]),
    (micro(data={"synth_tracks_per_epoch": 0}), ["data", "no training data"]),
    (micro(optim={"schedule": "time_cosine"}), ["time_cosine", "max_minutes"]),
    ({**MICRO, "data": [1, 2]}, ["data", "mapping"]),
    ({**MICRO, "model": "tiny"}, ["model", "mapping"]),
    # Accepted before, then a traceback at the first step, or no last.ckpt ever (a crash lost the run).
    (micro(optim={"label_smoothing": 2.0}), ["optim", "label_smoothing must be in [0, 1)"]),
    (micro(trainer={"checkpoint_every_n_steps": 0}), ["trainer", "checkpoint_every_n_steps must be >= 1"]),
    (micro(trainer={"gradient_clip": -1.0}), ["trainer", "gradient_clip must be >= 0"]),
    ({**MICRO, "init_weights": 5}, ["init_weights", "expected a path or name", "5"]),
    # Non-finite numbers: .inf crashed in Lightning's timer, .nan got a message about clip_gradients.
    (micro(trainer={"max_minutes": float("inf")}), ["trainer.max_minutes", "finite", "inf"]),
    (micro(trainer={"gradient_clip": float("nan")}), ["trainer.gradient_clip", "finite", "nan"]),
    (micro(data={"lrlpr_val_fraction": 0.1}), ["lrlpr_val_fraction", "set lrlpr_root too"]),
    (micro(data={"lrlpr_root": "x", "lrlpr_val_fraction": 1.0}), ["lrlpr_val_fraction must be in [0, 1)"]),
    (micro(data={"lrlpr_root": "x", "lrlpr_val_fraction": 0.2, "val_lrlpr_root": "y"}), ["not both"]),
])
def test_bad_configs_raise_config_error_naming_the_problem(tmp_path, data, needles):
    path = write_yaml(tmp_path / "bad.yaml", data)
    with pytest.raises(ConfigError) as info:
        TrainConfig.load(path)
    for needle in needles:
        assert needle in str(info.value), str(info.value)


@pytest.mark.parametrize("text, needle", [
    ("model: [unclosed", "not valid YAML"),
    ("- just\n- a list\n", "mapping at the top level"),
])
def test_malformed_yaml(tmp_path, text, needle):
    with pytest.raises(ConfigError, match=needle):
        TrainConfig.load(write_yaml(tmp_path / "bad.yaml", text))


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        TrainConfig.load(tmp_path / "nope.yaml")


def test_empty_yaml_is_all_defaults(tmp_path):
    assert TrainConfig.load(write_yaml(tmp_path / "empty.yaml", "")) == TrainConfig()


def test_cli_train_refuses_a_bad_config(tmp_path):
    path = write_yaml(tmp_path / "bad.yaml", micro(trainer={"max_epoch": 3}))
    result = invoke("train", path, "--run-dir", tmp_path / "run")
    assert_refused(result, "unknown key(s) ['max_epoch']")
    assert not (tmp_path / "run").exists()


def test_cli_train_max_minutes_overrides_the_config(tmp_path):
    # scripts/gpu_train.sh lowers the budget this way when the device call's limit would cut the run
    # before its own export.
    config = write_yaml(tmp_path / "c.yaml", MICRO)
    assert_refused(invoke("train", config, "--run-dir", tmp_path / "bad", "--max-minutes", 0),
                   "max_minutes must be positive")
    assert_ok(invoke("train", config, "--run-dir", tmp_path / "run", "--max-minutes", 0.5))
    assert TrainConfig.load(tmp_path / "run" / "config.yaml").trainer.max_minutes == 0.5


def _unusable(kind: str, tmp_path: Path) -> dict:
    """A config whose init_weights or lrlpr_root cannot be used (each was a Python traceback)."""
    if kind == "init_missing":
        return {**MICRO, "init_weights": str(tmp_path / "nope.safetensors")}
    if kind == "init_ksrnet":  # KSR-Net weights where recognizer weights are expected
        (tmp_path / "k.safetensors").write_bytes(b"")
        (tmp_path / "k.json").write_text(json.dumps({"kind": "ksrnet", "config": {"lr_size": [16, 48]}}))
        return {**MICRO, "init_weights": str(tmp_path / "k.safetensors")}
    root = tmp_path / "lrlpr"
    if kind == "root_empty":
        root.mkdir()
    elif kind == "root_unlabelled":  # e.g. the test split: every track skipped, 0 steps, "weights" written
        assert_ok(invoke("synth", root, "--tracks", 2, "--no-hr"))
        for ann in root.rglob("annotations.json"):
            ann.unlink()
    return micro(data={"synth_tracks_per_epoch": 0, "lrlpr_root": str(root)})


@pytest.mark.parametrize("kind, needles", [
    ("init_missing", ["init_weights", "no model at", "nope.safetensors"]),
    ("init_ksrnet", ["init_weights", "holds 'ksrnet' weights, not a recognizer"]),
    ("root_missing", ["dataset root", "does not exist"]),
    ("root_empty", ["no tracks found under"]),
    ("root_unlabelled", ["no labelled tracks under", "annotations.json"]),
])
def test_cli_train_refuses_unusable_weights_or_data_in_one_line(tmp_path, kind, needles):
    config = write_yaml(tmp_path / "c.yaml", _unusable(kind, tmp_path))
    result = invoke("train", config, "--run-dir", tmp_path / "run")
    assert_refused(result, *needles)
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_a_corrected_init_weights_reruns_in_the_same_run_dir(tmp_path):
    """A refused init_weights is not recorded in config.yaml: the corrected config's rerun was
    refused as "a run with another model config or init_weights" though nothing had trained."""
    run = tmp_path / "run"
    assert_refused(invoke("train", write_yaml(tmp_path / "bad.yaml", _unusable("init_missing", tmp_path)),
                          "--run-dir", run), "init_weights", "nope.safetensors")
    assert not (run / "config.yaml").exists()
    assert_ok(invoke("train", write_yaml(tmp_path / "good.yaml", MICRO), "--run-dir", run))
    assert (run / "model.safetensors").is_file()


def test_cli_train_refuses_a_run_dir_it_cannot_resume(tmp_path):
    from ksrnet.ksr_config import KSRTrainConfig

    config = write_yaml(tmp_path / "c.yaml", MICRO)
    ksr_run = tmp_path / "ksr-run"
    ksr_run.mkdir()
    KSRTrainConfig().save(ksr_run / "config.yaml")
    assert_refused(invoke("train", config, "--run-dir", ksr_run), str(ksr_run), "cannot resume", "new run dir")
    assert "recognizer_weights" in (ksr_run / "config.yaml").read_text()  # left as it was
    (tmp_path / "file").write_text("")
    assert_refused(invoke("train", config, "--run-dir", tmp_path / "file"), "is a file, not a folder")


def test_samples_length_is_per_ddp_rank(monkeypatch):
    """Lightning plans each rank's steps (and the one-cycle schedule) from len(dataset); the tracks
    are sharded over ranks, so the length must be the per-rank count."""
    from ksrnet.synth.dataset import SyntheticTrackDataset

    cfg = TrainConfig.from_dict(MICRO)
    samples = training.RecognizerSamples(SyntheticTrackDataset(10), cfg)
    assert len(samples) == 10
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 4)
    assert len(samples) == 2  # ranks get 2 tracks each; the 2 left over are dropped (equal batch counts)


def test_train_refuses_a_run_dir_of_another_model(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    TrainConfig.from_dict(micro(model={"embed_dim": 64})).save(run / "config.yaml")
    with pytest.raises(ValueError, match="another model config"):
        training.train(TrainConfig.from_dict(MICRO), run, progress=False)


def test_train_refuses_a_run_dir_started_from_other_init_weights(trained_run, tmp_path):
    """Resuming never reads init_weights: a config continuing a finished run's weights in the same
    run dir re-exported them untrained (its restored time budget was already spent)."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    cfg = TrainConfig.from_dict({**MICRO, "init_weights": str(trained_run / "model.safetensors")})
    with pytest.raises(ValueError, match="init_weights"):
        training.train(cfg, run, progress=False)


def test_wall_clock_elapsed_survives_a_fit_that_trained_no_step():
    """A finished time_cosine run re-run re-saves last.ckpt without a step: the elapsed time must stay."""
    module = training.WallClockLR()
    module.on_load_checkpoint({"ksrnet_elapsed_s": 42.5, "global_step": 7})
    saved = {}
    module.on_save_checkpoint(saved)
    assert saved["ksrnet_elapsed_s"] == 42.5


# ---------------------------------------------------------------------------------------------
# (b) one micro CLI run, then predict and eval with it


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trained")
    config = write_yaml(root / "micro.yaml", MICRO)
    result = invoke("train", config, "--run-dir", root / "run")
    assert_ok(result)
    return root / "run"


@pytest.fixture(scope="module")
def synth_tracks(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "tracks"
    assert_ok(invoke("synth", out, "--tracks", 3, "--seed", 11, "--no-hr"))
    return out


def test_train_writes_the_run_dir(trained_run):
    for name in ("config.yaml", "checkpoints/last.ckpt", "model.safetensors", "model.json"):
        assert (trained_run / name).is_file(), name
    assert TrainConfig.load(trained_run / "config.yaml") == TrainConfig.from_dict(MICRO)
    state = ckpt(trained_run)
    assert state["global_step"] == STEPS_PER_EPOCH and state["epoch"] == 1
    # Besides last.ckpt, the best checkpoint by validation RR (one epoch: that epoch's end).
    assert [p.name for p in (trained_run / "checkpoints").glob("best-*.ckpt")] == [f"best-epoch=0-step={STEPS_PER_EPOCH}.ckpt"]
    assert state["hyper_parameters"]["config"]["model"]["embed_dim"] == 32
    meta = json.loads((trained_run / "model.json").read_text())
    assert meta["kind"] == "parseq" and meta["config"]["embed_dim"] == 32
    rr = meta["val_rr_track_product"]
    assert isinstance(rr, float) and 0.0 <= rr <= 1.0  # a number, not "tensor(0.)"
    # The exported weights are the checkpoint's final weights.
    weights = load_file(str(trained_run / "model.safetensors"))
    model_state = {k.removeprefix("model."): v for k, v in state["state_dict"].items()}
    assert set(weights) == set(model_state)
    assert all(torch.equal(weights[k], model_state[k]) for k in weights)
    # A CSV log with the validation figures of epoch 0.
    logs = list((trained_run / "logs").rglob("metrics.csv"))
    assert logs and "val/rr_track_product" in logs[0].read_text()


def test_load_model_from_run_dir(trained_run):
    model, meta = load_model(trained_run)
    assert not model.training
    assert model.config.embed_dim == 32 and meta["config"] == model.config.to_dict()
    assert sum(p.numel() for p in model.parameters()) < 50_000


PREDICTION_LINE = re.compile(r"^(track_\d{5}),([A-Z0-9]{7});(\d\.\d+)$")


def test_predict_with_the_run_dir(trained_run, synth_tracks, tmp_path):
    out = tmp_path / "predictions.txt"
    result = invoke("predict", synth_tracks, "--model", trained_run, "--out", out)
    assert_ok(result)
    lines = out.read_text().splitlines()
    assert len(lines) == 3
    ids = []
    for line in lines:
        m = PREDICTION_LINE.match(line)
        assert m, line
        ids.append(m.group(1))
        assert infer_layout(m.group(2)) is not None, line  # the 7 slots obey one layout's syntax
        assert 0.0 <= float(m.group(3)) <= 1.0
    assert sorted(ids) == ["track_00001", "track_00002", "track_00003"]
    preds = read_predictions(out)  # the project's own reader accepts it
    assert set(preds) == set(ids)
    # Deterministic: same model, same tracks, same file.
    again = tmp_path / "again.txt"
    assert_ok(invoke("predict", synth_tracks, "--model", trained_run, "--out", again))
    assert again.read_text() == out.read_text()


def test_calibrate_saves_temperatures_that_predict_uses_and_abstention(trained_run, synth_tracks, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    assert_ok(invoke("calibrate", "--model", run, "--synth", 10, "--fusions", "product,single", "--dry-run"))
    assert "temperature" not in json.loads((run / "model.json").read_text())
    result = invoke("calibrate", "--model", run, "--synth", 10, "--fusions", "product,single")
    assert_ok(result)
    meta = json.loads((run / "model.json").read_text())
    assert set(meta["temperature"]) == {"product", "single"} and all(t > 0 for t in meta["temperature"].values())
    assert [f["tracks"] for f in meta["calibration"]["fits"]] == [10, 10]
    _, loaded = load_model(run)
    assert loaded["temperature"] == meta["temperature"]
    # Per frame count: new keys beside the general ones, which are kept.
    assert_ok(invoke("calibrate", "--model", run, "--synth", 10, "--fusions", "product", "--frames", "1,5"))
    per_count = json.loads((run / "model.json").read_text())
    assert set(per_count["temperature"]) == {"product", "single", "product@1", "product@5"}
    assert per_count["temperature"]["product"] == meta["temperature"]["product"]
    assert sorted((f["fusion"], f["frames"] or 0) for f in per_count["calibration"]["fits"]) == \
        [("product", 0), ("product", 1), ("product", 5), ("single", 0)]  # 0: all frames
    assert_refused(invoke("calibrate", "--model", run, "--synth", 10, "--frames", "0"), "--frames")
    # Abstention: at --min-confidence 1.0 every reading is written empty (illegible) with confidence 0,
    # which is what an empty reading's chance of being right is; --details still holds the guess.
    out, details = tmp_path / "p.txt", tmp_path / "d.jsonl"
    result = invoke("predict", synth_tracks, "--model", run, "--out", out, "--min-confidence", 1.0, "--details", details)
    assert_ok(result)
    assert "not calibrated" not in plain(result.output)  # product has a general temperature
    lines = out.read_text().splitlines()
    assert len(lines) == 3 and all(re.match(r"^track_\d{5},;0\.0+$", line) for line in lines), lines
    rows = [json.loads(line) for line in details.read_text().splitlines()]
    assert all(r["illegible"] and len(r["text"]) == 7 and r["confidence"] > 0 and r["calibrated"] for r in rows)
    assert_ok(invoke("predict", synth_tracks, "--model", run, "--out", out, "--min-confidence", 0.0))
    assert all(PREDICTION_LINE.match(line) for line in out.read_text().splitlines())
    # A rule nothing was fitted for reads, and says its confidences are not probabilities.
    result = invoke("predict", synth_tracks, "--model", run, "--out", out, "--fusion", "char_majority",
                    "--details", details)
    assert_ok(result)
    assert plain("3 of 3 confidences are not calibrated") in plain(result.output)
    assert plain("--fusions char_majority --frames 5") in plain(result.output)
    assert not any(json.loads(line)["calibrated"] for line in details.read_text().splitlines())
    # A broken temperature in the JSON is a clear error, not a crash.
    meta["temperature"] = {"vote": 2.0}
    (run / "model.json").write_text(json.dumps(meta))
    assert_refused(invoke("predict", synth_tracks, "--model", run, "--out", out), "temperatures")


def test_predict_and_eval_with_tta(trained_run, synth_tracks, tmp_path):
    out = tmp_path / "p.txt"
    assert_ok(invoke("predict", synth_tracks, "--model", trained_run, "--out", out, "--tta"))
    assert len(out.read_text().splitlines()) == 3
    assert all(PREDICTION_LINE.match(line) for line in out.read_text().splitlines())
    assert_ok(invoke("eval", synth_tracks, "--model", trained_run, "--frames", "5", "--fusions", "product",
                     "--tta-views", "identity,gamma0.8"))
    assert_refused(invoke("predict", synth_tracks, "--model", trained_run, "--out", out, "--tta-views", "rot90"),
                   "rot90")


def test_predict_and_eval_with_an_ensemble(trained_run, synth_tracks, tmp_path):
    out = tmp_path / "p.txt"
    for rule in ("vote", "logit"):
        assert_ok(invoke("predict", synth_tracks, "--model", trained_run, "--model", trained_run, "--ensemble", rule,
                         "--out", out))
        assert all(PREDICTION_LINE.match(line) for line in out.read_text().splitlines())
    assert_ok(invoke("eval", synth_tracks, "--model", trained_run, "--model", trained_run, "--frames", "5",
                     "--fusions", "product"))
    assert_refused(invoke("predict", synth_tracks, "--model", trained_run, "--model", trained_run,
                          "--ensemble", "median", "--out", out), "--ensemble")


def test_export_onnx_then_predict_with_onnxruntime(trained_run, synth_tracks, tmp_path):
    pytest.importorskip("onnxruntime")
    onnx = tmp_path / "model.onnx"
    result = invoke("export", "--onnx", onnx, "--model", trained_run, "--check-tracks", 2)
    assert_ok(result)
    assert "readings that differ: 0" in result.output and "frames/s" in result.output
    a, b = tmp_path / "torch.txt", tmp_path / "onnx.txt"
    assert_ok(invoke("predict", synth_tracks, "--model", trained_run, "--out", a))
    assert_ok(invoke("predict", synth_tracks, "--model", onnx, "--backend", "onnx", "--out", b))
    texts = lambda path: [line.split(";")[0] for line in path.read_text().splitlines()]  # noqa: E731
    assert texts(a) == texts(b)
    assert_refused(invoke("predict", synth_tracks, "--model", trained_run, "--backend", "onnx", "--out", b), ".onnx")
    assert_refused(invoke("predict", synth_tracks, "--model", onnx, "--backend", "onnx", "--decode", "ar",
                          "--out", b), "NAR")


def test_calibrate_refuses_an_onnx_export(trained_run, synth_tracks, tmp_path):
    # Its temperatures are a copy made at export: calibrate the source, then export again.
    pytest.importorskip("onnxruntime")
    onnx = tmp_path / "model.onnx"
    assert_ok(invoke("export", "--onnx", onnx, "--model", trained_run, "--check-tracks", 1))
    assert_refused(invoke("calibrate", synth_tracks, "--model", onnx), "export it again")


def test_bench_reports_every_batch_size_and_component(trained_run):
    result = invoke("bench", "--model", trained_run, "--batches", "1,3", "--repeats", 1, "--threads", 1, "--json")
    assert_ok(result)
    rows = json.loads(result.stdout)["rows"]
    assert [r["batch_tracks"] for r in rows] == [1, 3]
    for r in rows:
        assert r["tracks_per_s"] > 0 and r["ms_per_track"] == pytest.approx(1000 / r["tracks_per_s"])
        assert all(r[k] > 0 for k in ("preprocess_ms", "network_ms", "encoder_ms", "decoder_ms", "fusion_ms"))
    assert_ok(invoke("bench", "--model", trained_run, "--batches", "2", "--repeats", 1))
    for asked, used in ((3, 3), (9, 5)):  # the tracks have 5 frames: asking for more reads them all, and says so
        result = invoke("bench", "--model", trained_run, "--batches", "1", "--repeats", 1, "--frames", asked, "--json")
        assert_ok(result)
        assert json.loads(result.stdout)["frames_per_track"] == used
    assert_refused(invoke("bench", "--model", trained_run, "--batches", "0"), "--batches")
    assert_refused(invoke("bench", "--model", trained_run, "--backend", "tf"), "--backend")


def test_bench_with_onnxruntime(trained_run, tmp_path):
    pytest.importorskip("onnxruntime")
    onnx = tmp_path / "model.onnx"
    assert_ok(invoke("export", "--onnx", onnx, "--model", trained_run, "--check-tracks", 1))
    result = invoke("bench", "--model", onnx, "--backend", "onnx", "--batches", "2", "--repeats", 1, "--json")
    assert_ok(result)
    data = json.loads(result.stdout)
    row = data["rows"][0]
    assert data["backend"] == "onnx" and row["network_ms"] > 0 and row["tracks_per_s"] > 0
    assert row["encoder_ms"] is None and row["decoder_ms"] is None  # one opaque graph


def test_eval_with_the_run_dir(trained_run, synth_tracks):
    result = invoke("eval", synth_tracks, "--model", trained_run, "--fusions", "single,product", "--frames", "1,5")
    assert_ok(result)
    assert "RR%" in plain(result.output) and "product" in result.output and "3tracks" in plain(result.output)
    # The run was never calibrated: every row says its confidences are raw scores.
    assert plain("no calibration is fitted for single@F=1, single@F=5, product@F=1, product@F=5") in plain(result.output)
    result = invoke("eval", synth_tracks, "--model", trained_run, "--fusions", "product,char_majority",
                    "--frames", "5", "--json")
    assert_ok(result)
    scores = json.loads(result.stdout)
    assert set(scores) == {"product@F=5", "char_majority@F=5", "unreadable"}
    for key in ("product@F=5", "char_majority@F=5"):
        overall = scores[key]["overall"]
        assert overall["tracks"] == 3 and overall["missing"] == 0
        assert overall["recognition_rate"] in (0.0, 1 / 3, 2 / 3, 1.0)
        assert 0.0 <= overall["cer"] <= 1.0
        chars = scores[key]["character_calibration"]
        assert chars["characters"] == 21 and 0.0 <= chars["ece"] <= 1.0  # 3 tracks x 7 characters
        assert scores[key]["calibrated"] is False


def test_reader_with_the_trained_model(trained_run):
    assert select_frames([1, 2, 3, 4, 5], 3) == [3, 4, 5]
    assert select_frames([1, 2], 5) == [1, 2] and select_frames([1, 2], None) == [1, 2]
    with pytest.raises(ValueError, match="frame count must be >= 1"):
        select_frames([1, 2, 3], 0)
    model, _ = load_model(trained_run)
    reader = Reader(model, batch_frames=3)  # 7 frames -> 3 batches, outputs concatenated in order
    rng = np.random.default_rng(0)
    tracks = [SimpleNamespace(track_id=f"t{i}", lr=[rng.integers(0, 255, (17, 48, 3), dtype=np.uint8)
                                                      for _ in range(n)]) for i, n in enumerate((5, 1, 1))]
    out = reader.read(tracks, FUSIONS)
    assert set(out) == set(FUSIONS)
    for rule, readings in out.items():
        assert [r.track_id for r in readings] == ["t0", "t1", "t2"]
        assert [r.frames_used for r in readings] == [5, 1, 1]
        for r in readings:
            assert infer_layout(r.text) is not None and r.layout == infer_layout(r.text).value
            assert 0.0 <= r.confidence <= 1.0 and len(r.alternatives) == 7
    # Batching does not change the per-frame outputs.
    frames = [f for t in tracks for f in t.lr]
    a, b = reader.frame_outputs(frames), Reader(model, batch_frames=256).frame_outputs(frames)
    assert torch.allclose(a[0], b[0], atol=1e-5) and torch.allclose(a[1], b[1], atol=1e-5)
    # Unasked, a PyTorch reader on a CPU calls the network in cache-sized chunks, onnxruntime and a
    # GPU in large ones; a chunk must hold a frame.
    assert Reader(model).batch_frames == CPU_BATCH_FRAMES
    assert default_batch_frames(torch.device("cuda")) == LARGE_BATCH_FRAMES > CPU_BATCH_FRAMES
    assert default_batch_frames(torch.device("cpu"), pytorch=False) == LARGE_BATCH_FRAMES
    with pytest.raises(ValueError, match="batch_frames must be >= 1"):
        Reader(model, batch_frames=0)
    assert out["product"][1].text == out["single"][1].text  # one frame: every rule reads the same
    with pytest.raises(ValueError, match="frame count"):
        reader.read(tracks, ["product"], frame_count=0)
    with pytest.raises(ValueError, match="unknown fusion"):
        reader.read(tracks, ["vote"])


# ---------------------------------------------------------------------------------------------
# (c) resuming


def test_resume_with_more_epochs_continues_the_run(trained_run, tmp_path, counter):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = ckpt(run)
    config = write_yaml(tmp_path / "micro.yaml", MICRO)
    with pytest.warns(UserWarning, match=r"changed config section\(s\) trainer"):  # said, not refused
        result = invoke("train", config, "--run-dir", run, "--max-epochs", 2)
    assert_ok(result)
    # The second fit started where the first stopped and trained exactly one more epoch.
    assert counter.started_at == [STEPS_PER_EPOCH]
    assert counter.batches == [STEPS_PER_EPOCH + 1, 2 * STEPS_PER_EPOCH]
    after = ckpt(run)
    assert after["global_step"] == 2 * STEPS_PER_EPOCH and after["epoch"] == 2
    # The one-cycle schedule continued (step count carried over) on the new, longer plan instead of
    # failing past the first run's total.
    sched = after["lr_schedulers"][0]
    assert sched["last_epoch"] == 2 * STEPS_PER_EPOCH and sched["total_steps"] == 2 * STEPS_PER_EPOCH
    assert before["lr_schedulers"][0]["total_steps"] == STEPS_PER_EPOCH
    # Optimizer state was carried over too (Adam's step counters keep counting).
    steps = [s["step"] for s in after["optimizer_states"][0]["state"].values()]
    assert steps and all(float(s) == 2 * STEPS_PER_EPOCH for s in steps)
    assert TrainConfig.load(run / "config.yaml").trainer.max_epochs == 2
    first, second = load_file(str(trained_run / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert any(not torch.equal(first[k], second[k]) for k in first)  # the extra epoch changed the weights
    # Re-running the finished run is a no-op: nothing trained, same weights.
    counter.started_at.clear(), counter.batches.clear()
    weights = load_file(str(run / "model.safetensors"))
    rr = json.loads((run / "model.json").read_text())["val_rr_track_product"]
    assert rr is not None
    assert_ok(invoke("train", config, "--run-dir", run, "--max-epochs", 2))
    assert counter.batches == []
    again = load_file(str(run / "model.safetensors"))
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    # It validated nothing: the figure saved beside the weights is kept (was overwritten with null).
    assert json.loads((run / "model.json").read_text())["val_rr_track_product"] == rr


def test_resume_trains_on_under_a_changed_lr_and_weight_decay(trained_run, tmp_path):
    """Lightning's restore put the checkpoint's lr and weight decay back: a resumed run trained on
    under the old ones while the warning and config.yaml said the new ones applied."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    cfg = TrainConfig.from_dict(micro(optim={"lr": 3e-4, "weight_decay": 0.05}, trainer={"max_epochs": 2}))
    with pytest.warns(UserWarning, match="changed config section"):
        training.train(cfg, run, progress=False)
    state = ckpt(run)
    assert state["global_step"] == 2 * STEPS_PER_EPOCH
    decay, no_decay = state["optimizer_states"][0]["param_groups"]
    assert decay["max_lr"] == pytest.approx(3e-4) and decay["weight_decay"] == 0.05
    assert no_decay["max_lr"] == pytest.approx(3e-4) and no_decay["weight_decay"] == 0.0


def test_resume_refuses_another_schedule_before_touching_the_run(trained_run, tmp_path):
    """The checkpoint's one-cycle state restored into a cosine scheduler (or back) failed at the
    first step with a traceback (KeyError 'max_lr'), after config.yaml had recorded the new schedule."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = (run / "config.yaml").read_text()
    config = write_yaml(tmp_path / "cosine.yaml", micro(optim={"schedule": "cosine"}, trainer={"max_epochs": 2}))
    assert_refused(invoke("train", config, "--run-dir", run), "optim.schedule cannot change", "new run dir")
    assert (run / "config.yaml").read_text() == before


def test_no_resume_starts_over(trained_run, tmp_path, counter):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = write_yaml(tmp_path / "micro.yaml", MICRO)
    assert_ok(invoke("train", config, "--run-dir", run, "--no-resume"))
    assert counter.started_at == [0] and len(counter.batches) == STEPS_PER_EPOCH
    assert ckpt(run)["global_step"] == STEPS_PER_EPOCH
    # The replaced run's best checkpoint is gone, not left beside the new one's (best-...-v1.ckpt).
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best-epoch=0-step=2.ckpt", "last.ckpt"]


def test_crashed_run_resumes_mid_epoch(tmp_path, counter):
    # 4 steps per epoch; the run dies after its 3rd step, before that step's checkpoint is written
    # (ModelCheckpoint runs after the other callbacks), so last.ckpt holds step 2.
    cfg = TrainConfig.from_dict(micro(data={"synth_tracks_per_epoch": 16, "val_tracks": 1}))
    run = tmp_path / "run"
    counter.fail_at = 3
    with pytest.raises(RuntimeError, match="simulated crash"):
        training.train(cfg, run, progress=False)
    assert ckpt(run)["global_step"] == 2
    assert not (run / "model.safetensors").exists()
    counter.fail_at = None
    counter.started_at.clear(), counter.batches.clear()
    crashed = list(counter.contents)
    out = training.train(cfg, run, progress=False)
    assert counter.started_at == [2] and counter.batches == [3, 4]  # the 2 missing steps, not 4 anew
    assert ckpt(run)["global_step"] == 4
    assert out == run / "model.safetensors" and out.is_file()
    # ... on the epoch's last tracks: the batches a run that never stopped trained (it was given its first two).
    resumed = counter.contents[len(crashed):]
    counter.reset()
    training.train(cfg, tmp_path / "whole", progress=False)
    assert crashed[:2] == counter.contents[:2] and resumed == counter.contents[2:4]



def test_a_run_resumed_in_a_later_epoch_with_workers_trains_that_epochs_remaining_tracks(tmp_path, counter):
    # 2 epochs of 4 batches, 2 data workers taking turns; the run dies in epoch 1 after its 2nd batch
    # there (step 6), so last.ckpt holds step 5: epoch 1 with one batch trained.
    cfg = TrainConfig.from_dict(micro(data={"synth_tracks_per_epoch": 16, "val_tracks": 1, "num_workers": 2},
                                      trainer={"max_epochs": 2}))
    resumed, whole = crash_resume_and_run_whole(cfg, tmp_path, counter, fail_at=6)
    # Epoch 1's last three batches, not epoch 0's first: the same batches, though a new loader asks its
    # workers in turn from the first, so their order can differ.
    assert len(whole) == 8 and sorted(resumed) == sorted(whole[5:])


def crash_resume_and_run_whole(cfg, tmp_path, counter, fail_at):
    """Trains cfg in tmp_path/run until step fail_at crashes it, resumes it, then trains it whole
    in tmp_path/whole: the batch contents (plate texts) of the resumed part and of the whole run."""
    counter.fail_at = fail_at
    with pytest.raises(RuntimeError, match="simulated crash"):
        training.train(cfg, tmp_path / "run", progress=False)
    counter.reset()
    training.train(cfg, tmp_path / "run", progress=False)
    resumed = counter.contents
    counter.reset()
    training.train(cfg, tmp_path / "whole", progress=False)
    return resumed, counter.contents


def test_every_epoch_draws_new_tracks_with_workers_and_last_ckpt_is_final(tmp_path, monkeypatch):
    """With DataLoader workers, epoch e must train on the tracks of (seed, epoch e): each worker
    holds a copy of the dataset, so a persistent worker would replay epoch 0 forever. And a finished
    run's last.ckpt holds its final step even when that is not a multiple of the checkpoint interval."""
    log = tmp_path / "drawn.txt"
    real = synth_dataset.generate_track

    def logged(seed, index, *, epoch=0, **kw):
        with open(log, "a") as f:  # workers are forked: they inherit this patch, and append here
            f.write(f"{seed} {epoch} {index}\n")
        return real(seed, index, epoch=epoch, **kw)

    monkeypatch.setattr(synth_dataset, "generate_track", logged)
    cfg = TrainConfig.from_dict(micro(data={"synth_tracks_per_epoch": 4, "val_tracks": 1, "num_workers": 1},
                                      trainer={"max_epochs": 2, "batch_tracks": 2, "checkpoint_every_n_steps": 3}))
    training.train(cfg, tmp_path / "run", progress=False)
    drawn = [tuple(map(int, line.split())) for line in log.read_text().splitlines()]
    train_seed = cfg.data.seed
    assert sorted(d for d in drawn if d[0] == train_seed) == [(train_seed, e, i) for e in (0, 1) for i in range(4)]
    assert sorted(d for d in drawn if d[0] == cfg.data.val_seed) == [(cfg.data.val_seed, 0, 0)] * 2
    # 2 epochs x 2 steps: checkpoints every 3 steps wrote step 3; the end of the run must write step 4.
    assert ckpt(tmp_path / "run")["global_step"] == 4


# ---------------------------------------------------------------------------------------------
# (d) loading models that are not there or do not fit


def model_dir_copy(trained_run: Path, dest: Path) -> Path:
    dest.mkdir()
    for name in ("model.safetensors", "model.json"):
        shutil.copy(trained_run / name, dest / name)
    return dest


def test_config_that_does_not_match_the_weights(trained_run, tmp_path, synth_tracks):
    bad = model_dir_copy(trained_run, tmp_path / "bad")
    meta = json.loads((bad / "model.json").read_text())
    meta["config"]["embed_dim"] = 64  # valid config (64 % 2 == 0), wrong shapes
    (bad / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="does not match its config") as info:
        load_model(bad)
    assert "size mismatch" in str(info.value)
    result = invoke("predict", synth_tracks, "--model", bad, "--out", tmp_path / "p.txt")
    assert_refused(result, "does not match its config")
    assert not (tmp_path / "p.txt").exists()


def test_one_layer_too_many(trained_run, tmp_path):
    bad = model_dir_copy(trained_run, tmp_path / "bad")
    meta = json.loads((bad / "model.json").read_text())
    meta["config"]["enc_depth"] = 2
    (bad / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="Missing key"):
        load_model(bad)


@pytest.mark.parametrize("meta_text, needle", [
    (None, "cannot read the config"),  # no model.json at all
    ("{not json", "cannot read the config"),
    ('{"kind": "parseq"}', "cannot read the config"),
    ('{"config": null}', "cannot read the config"),
    ('{"config": {"embed_dim": 32, "colour": "red"}}', "colour"),
    ('{"config": {"embed_dim": 33}}', "embed_dim"),
])
def test_broken_model_json(trained_run, tmp_path, meta_text, needle):
    bad = model_dir_copy(trained_run, tmp_path / "bad")
    if meta_text is None:
        (bad / "model.json").unlink()
    else:
        (bad / "model.json").write_text(meta_text)
    with pytest.raises(ModelLoadError, match=needle):
        load_model(bad)


def test_corrupt_weights(trained_run, tmp_path):
    bad = model_dir_copy(trained_run, tmp_path / "bad")
    (bad / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="does not match its config"):
        load_model(bad)


def test_model_pointing_nowhere(tmp_path, synth_tracks):
    nowhere = tmp_path / "no" / "such" / "run"
    with pytest.raises(ModelLoadError, match="no model at"):
        load_model(nowhere)
    result = invoke("predict", synth_tracks, "--model", nowhere, "--out", tmp_path / "p.txt")
    assert_refused(result, "no model at", str(nowhere))
    assert not (tmp_path / "p.txt").exists()
    result = invoke("eval", synth_tracks, "--model", nowhere)
    assert_refused(result, "no model at")


def test_run_dir_without_exported_weights(trained_run, tmp_path, synth_tracks):
    # A run killed before its end has checkpoints but no model.safetensors yet.
    run = tmp_path / "run"
    shutil.copytree(trained_run / "checkpoints", run / "checkpoints")
    result = invoke("predict", synth_tracks, "--model", run, "--out", tmp_path / "p.txt")
    assert_refused(result, "no model at", "model.safetensors")


def test_auxiliary_ctc_loss_trains_its_head_and_the_encoder():
    cfg = TrainConfig.from_dict({
        "model": {"preset": "tiny", "embed_dim": 32, "enc_depth": 1, "enc_heads": 2, "dec_heads": 2,
                  "stem_channels": 8},
        "optim": {"ctc_loss_weight": 1.0},
    })
    module = training.RecognizerModule(cfg)
    assert module.ctc_head is not None and module.ctc_head.out_features == 37
    targets = torch.randint(0, 36, (3, 7))
    memory = module.model.encode(torch.rand(3, 3, 32, 128) * 2 - 1)
    loss = module._ctc_loss(memory, targets)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert module.ctc_head.weight.grad.abs().sum() > 0
    assert module.model.pos_embed.grad.abs().sum() > 0
    # Without the weight there is no head at all: nothing training-only reaches the shipped weights.
    assert training.RecognizerModule(cfg.replace("optim", ctc_loss_weight=0.0)).ctc_head is None


def test_product_track_loss_scores_the_fused_reading_of_each_track():
    def logits(*probs):  # (1 permutation, frames, 1 slot, classes)
        return torch.tensor(probs).log()[None, :, None, :]

    one = torch.zeros(2, 1, dtype=torch.long)
    # Frames that contradict each other fuse to a coin flip, whatever each frame says alone.
    loss = training.product_track_loss(logits([0.8, 0.2], [0.2, 0.8]), one, torch.tensor([2]))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    # Frames that agree add up: 0.75 twice is 0.9 fused (0.75^2 against 0.25^2).
    loss = training.product_track_loss(logits([0.75, 0.25], [0.75, 0.25]), one, torch.tensor([2]))
    assert loss.item() == pytest.approx(-math.log(0.9), abs=1e-6)
    # Frames of different tracks are not summed: one-frame tracks give the per-frame loss.
    char_logits = torch.randn(3, 4, 7, 36)
    targets = torch.randint(0, 36, (4, 7))
    per_frame = F.cross_entropy(char_logits.reshape(-1, 36), targets.repeat(3, 1).reshape(-1))
    assert training.product_track_loss(char_logits, targets, torch.ones(4, dtype=torch.long)).item() \
        == pytest.approx(per_frame.item(), abs=1e-5)
    with pytest.raises(ValueError, match="counts add up to 3"):
        training.product_track_loss(char_logits, targets, torch.tensor([2, 1]))
    with pytest.raises(ValueError, match="loss weights"):
        TrainConfig.from_dict({"optim": {"track_loss_weight": -1.0}})


def test_eval_counts_an_unreadable_labelled_track_as_wrong(trained_run, synth_tracks, tmp_path):
    tracks = tmp_path / "tracks"
    shutil.copytree(synth_tracks, tracks)
    broken = sorted(tracks.rglob("track_*"))[0]
    (broken / "lr-002.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    result = invoke("eval", tracks, "--model", trained_run, "--fusions", "product", "--frames", "5", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    overall = data["product@F=5"]["overall"]
    assert overall["tracks"] == 3 and overall["missing"] == 1
    assert any(broken.name in u for u in data["unreadable"])


def test_time_cosine_scale_warms_up_then_decays_to_the_floor():
    from ksrnet.training import time_cosine_scale

    assert time_cosine_scale(0.0, 10, 0.1, 1e-3) == 1e-3  # floor, not 0, at the very first step
    assert time_cosine_scale(30.0, 10, 0.1, 1e-3) == pytest.approx(0.5)  # half way through warm-up
    assert time_cosine_scale(60.0, 10, 0.1, 1e-3) == pytest.approx(1.0)
    assert time_cosine_scale(330.0, 10, 0.1, 1e-3) == pytest.approx(0.5)  # cosine midpoint
    assert time_cosine_scale(600.0, 10, 0.1, 0.01) == 0.01
    assert time_cosine_scale(9999.0, 10, 0.0, 0.0) == pytest.approx(0.0)  # past the budget: stays at the end


def test_init_weights_from_another_input_size(trained_run, tmp_path, monkeypatch):
    # A 32x96 run starting from the 32x128 weights: every weight carried over, the position table
    # resampled to the narrower grid. Stop at the start of fit and look at the model it got.
    class Started(Exception):
        pass

    def fit(self, module, *args, **kwargs):
        raise Started(module.model)

    monkeypatch.setattr(training.L.Trainer, "fit", fit)
    config = TrainConfig.from_dict({**micro(model={"img_w": 96}), "init_weights": str(trained_run)})
    with pytest.raises(Started) as started:
        training.train(config, tmp_path / "narrow", progress=False)
    model = started.value.args[0]
    source, _ = load_model(trained_run)
    assert model.config.img_w == 96 and model.pos_embed.shape[1] == source.pos_embed.shape[1] * 96 // 128
    for (name, a), (_, b) in zip(source.state_dict().items(), model.state_dict().items()):
        if name != "pos_embed":
            assert torch.equal(a, b), name
    bad = TrainConfig.from_dict({**micro(model={"embed_dim": 64}), "init_weights": str(trained_run)})
    with pytest.raises(ValueError, match="only img_h / img_w may differ"):
        training.train(bad, tmp_path / "bad", progress=False)


# (c) validation on real (here: written) tracks


def test_validation_split_is_stable_disjoint_and_near_its_fraction(tmp_path):
    from ksrnet.track_dataset import in_validation_split

    root = tmp_path / "train"
    tracks = [root / "Scenario-A" / "Brazilian" / f"track_{i:05d}" for i in range(2000)]
    held = [t for t in tracks if in_validation_split(t, root, 0.1)]
    assert 160 <= len(held) <= 240
    # Where the folder lives does not matter, only each track's path under it.
    moved = tmp_path / "elsewhere"
    assert held == [t for t in tracks if in_validation_split(moved / t.relative_to(root), moved, 0.1)]
    # A larger fraction keeps the tracks a smaller one held out.
    assert set(held) <= {t for t in tracks if in_validation_split(t, root, 0.3)}


def test_train_validates_on_a_held_out_split_of_lrlpr_root_and_lists_it(tmp_path):
    from ksrnet.tracks import discover_tracks
    from ksrnet.training import build_datasets

    folder = tmp_path / "tracks"
    assert_ok(invoke("synth", folder, "--tracks", 12, "--seed", 5, "--no-hr"))
    config = micro(data={"synth_tracks_per_epoch": 0, "lrlpr_root": str(folder), "lrlpr_val_fraction": 0.4})
    train_samples, val_samples = build_datasets(TrainConfig.from_dict(config))
    train_paths, val_paths = set(train_samples.tracks.paths), set(val_samples.tracks.paths)
    assert train_paths and val_paths and not train_paths & val_paths
    assert train_paths | val_paths == set(discover_tracks(folder))
    run = tmp_path / "run"
    assert_ok(invoke("train", write_yaml(tmp_path / "c.yaml", config), "--run-dir", run))
    listed = (run / "val_tracks.txt").read_text().split()
    assert sorted(listed) == sorted(str(p.resolve()) for p in val_paths)
    assert json.loads((run / "model.json").read_text())["val_rr_track_product"] is not None
    # The list is a TRACKS argument: eval scores exactly the held-out tracks.
    result = invoke("eval", run / "val_tracks.txt", "--model", run, "--frames", "1", "--fusions", "product", "--json")
    assert_ok(result)
    assert json.loads(result.stdout)["product@F=1"]["overall"]["tracks"] == len(val_paths)
    # A separate folder validates too; a fraction that holds out nothing is refused in one line.
    other = micro(data={"synth_tracks_per_epoch": 8, "val_lrlpr_root": str(folder)})
    assert len(build_datasets(TrainConfig.from_dict(other))[1].tracks.paths) == 12
    tiny = micro(data={"synth_tracks_per_epoch": 0, "lrlpr_root": str(folder), "lrlpr_val_fraction": 1e-9})
    assert_refused(invoke("train", write_yaml(tmp_path / "t.yaml", tiny), "--run-dir", tmp_path / "run2"),
                   "validation split", "holds no track")


def test_training_takes_random_frames_of_a_track_and_validation_its_last():
    from types import SimpleNamespace

    from ksrnet.training import RecognizerSamples

    config = TrainConfig.from_dict(micro(data={"frames_per_track": 2}))
    frames = [np.full((17, 48, 3), i, np.uint8) for i in range(5)]  # frame i is all i
    tracks = [SimpleNamespace(track_id=f"track_{i:05d}", lr=frames) for i in range(40)]
    picked = lambda samples: [tuple(int(f[0, 0, 0]) for f in samples.frames_of(t)) for t in tracks]  # noqa: E731
    train, val = RecognizerSamples(tracks, config), RecognizerSamples(tracks, config, random_frames=False)
    first = picked(train)
    assert all(a < b for a, b in first) and len(set(first)) > 5  # two distinct frames in order, varying by track
    assert {f for pair in first for f in pair} == set(range(5))  # every frame position trains
    assert picked(train) == first  # the same per seed, epoch and track
    train.set_epoch(1)
    assert picked(train) != first
    assert set(picked(val)) == {(3, 4)}  # validation reads the last two, as predict --frames 2 does


def _echo_tracks(n, frames=5):
    lr = [np.full((17, 48, 3), i, np.uint8) for i in range(frames)]  # frame i is all i
    return [SimpleNamespace(track_id=f"track_{i:05d}", lr=lr, text="ABC1234", layout=LAYOUTS[0]) for i in range(n)]


def test_data_echo_trains_every_track_echo_times_spread_over_batches():
    from collections import Counter

    config = TrainConfig.from_dict(micro(data={"echo": 3, "echo_buffer_tracks": 64}))
    tracks = _echo_tracks(300)
    samples = training.RecognizerSamples(tracks, config, echo=3, echo_buffer=64)
    assert len(samples) == 900
    stream = [(t.track_id, copy) for t, copy in samples.echoed(tracks)]
    assert len(stream) == 900
    assert Counter(tid for tid, _ in stream) == {t.track_id: 3 for t in tracks}
    assert all(sorted(c for tid, c in stream if tid == t.track_id) == [0, 1, 2] for t in tracks)
    assert [(t.track_id, c) for t, c in samples.echoed(tracks)] == stream  # the same stream again (resume)
    # Batches of 16 consecutive draws from a 64-track buffer: copies of one track seldom meet.
    repeats = sum(16 - len({tid for tid, _ in stream[i:i + 16]}) for i in range(0, 896, 16))
    assert repeats < 0.1 * 896
    samples.set_epoch(1)
    assert [(t.track_id, c) for t, c in samples.echoed(tracks)] != stream  # reshuffled each epoch
    # The tracks held at once (taken from the source, not yet yielded `echo` times) stay near the
    # buffer's size, however long the epoch: memory is bounded.
    taken = []
    source = (taken.append(t) or t for t in _echo_tracks(3000))
    done, finished, held = Counter(), 0, []
    for t, _ in samples.echoed(source):
        done[t.track_id] += 1
        finished += done[t.track_id] == 3
        held.append(len(taken) - finished)
    assert max(held) <= 2 * 64 and min(held[:8000]) >= 32


def test_workers_send_uint8_frames_that_the_module_scales_to_what_the_readers_see():
    """A float batch of 128 tracks is 31 MB for a data worker to fill and hand over; uint8 is a
    quarter of it. The network must still get the values inference gives it (frames_to_tensor)."""
    from ksrnet.preprocess import frames_to_tensor
    from ksrnet.synth.dataset import SyntheticTrackDataset

    config = TrainConfig.from_dict(MICRO)
    tracks = list(SyntheticTrackDataset(3, seed=5, preset="hard"))
    samples = training.RecognizerSamples(tracks, config, random_frames=False)
    batch = training.collate_tracks([samples.sample(t) for t in tracks])
    assert batch[0].dtype == torch.uint8
    module = training.RecognizerModule(config)
    frames, targets, layouts, counts = module.on_after_batch_transfer(batch, 0)
    m = config.model
    assert torch.equal(frames, torch.cat([frames_to_tensor(list(t.lr), m.img_h, m.img_w) for t in tracks]))
    assert torch.equal(targets, batch[1]) and torch.equal(layouts, batch[2]) and torch.equal(counts, batch[3])


def test_data_echo_copies_draw_their_own_frames_and_off_changes_nothing():
    config = TrainConfig.from_dict(micro(data={"frames_per_track": 2}))
    tracks = _echo_tracks(40)
    plain = training.RecognizerSamples(tracks, config)
    echoed = training.RecognizerSamples(tracks, config, echo=2, echo_buffer=8)
    first = lambda t, copy: tuple(int(f[0, 0, 0]) for f in echoed.frames_of(t, copy))  # noqa: E731
    assert all(first(t, 0) == tuple(int(f[0, 0, 0]) for f in plain.frames_of(t)) for t in tracks)
    assert sum(first(t, 0) != first(t, 1) for t in tracks) > 10  # a copy is another pair of frames
    # echo 1 yields exactly the samples it did before echo existed
    for (fa, ta, la), t in zip(plain, tracks):
        fb, tb, lb = plain.sample(t)
        assert torch.equal(fa, fb) and torch.equal(ta, tb) and la == lb
    assert len(list(iter(echoed))) == 80


@pytest.mark.parametrize("data", [{"echo": 0}, {"echo": 17}, {"echo_buffer_tracks": 0}])
def test_data_echo_settings_out_of_range_are_refused(data):
    with pytest.raises(ValueError, match="echo"):
        TrainConfig.from_dict(micro(data=data))


def test_an_echoing_run_resumed_mid_epoch_with_workers_trains_the_batches_it_missed(tmp_path, counter):
    # 8 tracks x echo 2 = 4 batches of 4 from 2 workers; the run dies after its 3rd step (last.ckpt
    # holds step 2). Each worker's echoed stream is seeded, so the resumed run skips what was trained.
    cfg = TrainConfig.from_dict(micro(data={"synth_tracks_per_epoch": 8, "val_tracks": 1, "num_workers": 2,
                                            "echo": 2, "echo_buffer_tracks": 2}))
    resumed, whole = crash_resume_and_run_whole(cfg, tmp_path, counter, fail_at=3)
    assert len(whole) == 4 and sorted(resumed) == sorted(whole[2:])
