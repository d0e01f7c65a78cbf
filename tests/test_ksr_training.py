"""KSR-Net training stages: config, the track dataset and its geometry, each stage's freezing and
losses, running the four stages through Lightning, resuming.

Everything is micro (a 32-wide PARSeq of one block, a slimmed tiny KSR-Net, 2-4 synthetic tracks of
3 frames, 1-4 steps a stage) so the file runs in well under a minute on one CPU thread.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import numpy as np
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from ksrnet.ksr_config import STAGES, KSRTrainConfig
from ksrnet.ksr_targets import track_sample
from ksrnet.ksr_training import (KSRFolderDataset, KSRStageModule, KSRTrackDataset, resolve_model_config, run_stages,
                                 thinned_frame_mask, train_ksrnet)
from ksrnet.weights import load_ksrnet
from ksrnet.models.flow import resize_flow, warp
from ksrnet.models.ksrnet import reference_indices, resize_track
from ksrnet.models.parseq import Parseq, ParseqConfig
from ksrnet.preprocess import frame_to_unit_tensor
from ksrnet.synth.camera import CameraParams, flow_between, render_frames
from ksrnet.synth.dataset import generate_track
from ksrnet.train_config import ConfigError
from ksrnet.weights import save_model

ROOT = Path(__file__).parent.parent
LR = (16, 48)


@pytest.fixture(scope="module")
def recognizer_path(tmp_path_factory) -> Path:
    cfg = ParseqConfig.tiny(embed_dim=32, enc_depth=1, enc_heads=2, dec_heads=2)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("rec") / "micro.safetensors"
    save_model(Parseq(cfg), cfg, path)
    return path


def micro(recognizer_path: Path, **sections) -> KSRTrainConfig:
    base = {
        "model": {"preset": "tiny", "variant": "final", "flow": {"base_channels": 4},
                  "fusion": {"depth": 2}, "restore": {"features": 16, "num_res_blocks": 1}},
        "recognizer_weights": str(recognizer_path),
        "data": {"tracks_per_epoch": 2, "val_tracks": 0, "num_workers": 0, "num_frames": 3},
        "trainer": {"batch_tracks": 1, "checkpoint_every_n_steps": 1, "log_every_n_steps": 1, "precision": "32",
                    "accelerator": "cpu"},
        **{f"stage{s}": {"max_epochs": 1} for s in STAGES},
    }
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return KSRTrainConfig.from_dict(base)


def batch_of(samples: list[dict]) -> dict:
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


def clean_frames(track) -> torch.Tensor:
    """The track's frames rendered by the camera alone (no blur, noise, colour or codec), resized."""
    clean = render_frames(track.scene, track.trajectory, supersample=4)
    return resize_track([frame_to_unit_tensor(f) for f in clean], LR)


# ---------------------------------------------------------------------------------------------
# Config


def test_shipped_config_loads_and_round_trips(tmp_path):
    cfg = KSRTrainConfig.load(ROOT / "configs" / "ksrnet-tiny.yaml")
    assert cfg.model.variant == "final" and cfg.model.lr_size == (20, 48)
    s3 = cfg.stage("3")
    assert (s3.lr, s3.min_lr, s3.schedule) == (2e-4, 1e-7, "cosine_restarts")
    cfg.save(tmp_path / "c.yaml")
    assert KSRTrainConfig.load(tmp_path / "c.yaml") == cfg
    # Partial stage sections keep that stage's defaults.
    assert KSRTrainConfig.from_dict({"stage3": {"max_epochs": 2}}).stage("3").schedule == "cosine_restarts"


@pytest.mark.parametrize("bad", [
    {"stage4": {}}, {"stage2": {"lrr": 0.1}}, {"model": {"colour": 1}}, {"model": {"flow": {"levels_": 2}}},
    {"data": {"preset": "nope"}}, {"losses": {"edge_weight": -1.0}}, {"stage3": {"schedule": "step"}},
    {"stage1": {"lr": "1e-3"}}, {"stage2": {"schedule": "time_cosine"}},
])
def test_bad_configs_are_rejected(bad):
    with pytest.raises(ConfigError):
        KSRTrainConfig.from_dict(bad)


@pytest.mark.parametrize("data, needle", [
    ({"preset": "nope"}, "preset and val_preset must be one of"), ({"num_frames": 17}, "num_frames in 1..16"),
    ({"tracks_per_epoch": -1}, "tracks_per_epoch must be >= 0"), ({"val_tracks": -1}, "val_tracks must be >= 0"),
    ({"codec": "mpeg"}, "codec must be one of"), ({"frame_dropout": 1.5}, "frame_dropout must be in"),
])
def test_bad_data_sections_name_the_ksrnet_key(data, needle):
    with pytest.raises(ConfigError, match=needle):
        KSRTrainConfig.from_dict({"data": data})


# ---------------------------------------------------------------------------------------------
# Dataset and ground truth geometry


def test_dataset_shapes_and_epochs():
    ds = KSRTrackDataset(2, lr_size=LR, seed=5, preset="mix")
    items = list(ds)
    assert len(items) == 2
    s = items[0]
    assert s["frames"].shape == (5, 3, *LR) and s["frames"].dtype == torch.float32
    assert s["frames"].min() >= -1 and s["frames"].max() <= 1
    assert s["flows"].shape == (5, 2, *LR) and s["flow_valid"].shape == (5, 1, *LR)
    assert int(s["reference"]) == 2 and s["flows"][2].abs().max() == 0 and s["flow_valid"][2].min() == 1
    assert s["sr_target"].shape == (3, 64, 192) and s["sr_mask"].shape == (1, 64, 192)
    assert 0.1 < float(s["sr_mask"].mean()) < 0.9  # the plate, not the whole crop
    assert s["text"].shape == (7,) and s["text"].dtype == torch.long and int(s["layout"]) in (0, 1)
    assert s["frame_mask"].all()
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["frames"].shape == (2, 5, 3, *LR) and batch["text"].shape == (2, 7)
    ds.set_epoch(1)
    assert not torch.equal(next(iter(ds))["frames"], s["frames"])  # a new epoch draws new tracks
    fixed = KSRTrackDataset(1, lr_size=LR, seed=5, fixed=True)
    fixed.set_epoch(3)
    assert torch.equal(next(iter(fixed))["frames"], s["frames"])


def test_dataset_length_is_what_each_ddp_rank_yields(monkeypatch):
    # Lightning plans each rank's batches from len(); my_indices gives every rank n // world tracks.
    from ksrnet import ksr_training
    from ksrnet.synth import dataset as synth

    monkeypatch.setattr(synth, "generate_track", lambda seed, index, **kw: index)
    monkeypatch.setattr(ksr_training, "track_sample", lambda track, *args: track)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 4)
    ds = KSRTrackDataset(10, lr_size=LR, seed=5)
    for rank in range(4):
        monkeypatch.setattr(torch.distributed, "get_rank", lambda rank=rank: rank)
        assert len(list(ds)) == len(ds) == 2


def test_folder_dataset_length_is_what_each_ddp_rank_yields(tmp_path, monkeypatch):
    from ksrnet.synth.dataset import write_synthetic_dataset

    write_synthetic_dataset(tmp_path, 5, seed=3, with_hr=False)
    ds = KSRFolderDataset(tmp_path, lr_size=LR)
    assert len(ds) == len(list(ds)) == 5
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    for rank in range(2):
        monkeypatch.setattr(torch.distributed, "get_rank", lambda rank=rank: rank)
        assert len(list(ds)) == len(ds) == 2


@pytest.mark.parametrize("index", [0, 2, 3])
def test_gt_flow_aligns_frames_at_lr_size(index):
    track = generate_track(3, index, preset="easy", codec="none")
    s = track_sample(track, LR, 4)
    ref = int(s["reference"])
    for frames in (clean_frames(track), s["frames"]):  # camera only, then the degraded frames
        aligned, unaligned = [], []
        for t in range(len(track.lr)):
            if t == ref:
                continue
            v = s["flow_valid"][t, 0]
            warped = warp(frames[t][None], s["flows"][t][None])[0]
            aligned.append(float(((warped - frames[ref]).abs().mean(0) * v).sum() / v.sum()))
            unaligned.append(float(((frames[t] - frames[ref]).abs().mean(0) * v).sum() / v.sum()))
        assert np.mean(aligned) < 0.5 * np.mean(unaligned), (aligned, unaligned)
    # The exact flow is the native one resized with its values rescaled (equal native sizes).
    for t in range(len(track.lr)):
        native = torch.from_numpy(flow_between(track.trajectory, ref, t)).permute(2, 0, 1)[None]
        assert (resize_flow(native, LR)[0] - s["flows"][t]).abs().max() < 0.02


def test_sr_target_in_float32_is_the_float64_one_to_rounding(monkeypatch):
    from ksrnet import ksr_targets

    tracks = [generate_track(3, i, preset="hard") for i in range(3)]
    fast = [track_sample(t, LR, 4) for t in tracks]
    monkeypatch.setattr(ksr_targets, "WARP_DTYPE", torch.float64)
    exact = [track_sample(t, LR, 4) for t in tracks]
    for a, b in zip(fast, exact):
        assert a["sr_target"].dtype == torch.float32
        assert (a["sr_target"] - b["sr_target"]).abs().max() < 1e-4  # an 8-bit level is 7.8e-3
        assert (a["sr_mask"] != b["sr_mask"]).float().mean() < 1e-4


@pytest.mark.parametrize("index", [0, 1, 3])
def test_sr_target_lies_on_the_reference_grid(index):
    """The SR target must be the reference frame's plate, x4: compared with the camera-only render
    of the reference frame (the frames' degradations are not geometry), no shift fits better."""
    track = generate_track(3, index, preset="easy", codec="none")
    s = track_sample(track, LR, 4)
    ref = int(s["reference"])
    target, mask = s["sr_target"], s["sr_mask"]

    def error(a, b, m):
        return float(((a - b).abs().mean(0) * m[0]).sum() / m.sum())

    def shifted(img, dx, dy):
        flow = torch.tensor([dx, dy], dtype=torch.float32).view(1, 2, 1, 1).expand(1, 2, *img.shape[-2:])
        return warp(img[None], flow)[0]

    # SR grid: the fine (x4) camera render of the reference frame resized like the LR frame.
    fine = render_frames(track.scene, track.trajectory, supersample=4, downsample=False)[ref]
    sr_ref = resize_track([frame_to_unit_tensor(fine)], (64, 192))[0]
    inner = -F.max_pool2d(-mask[None], 5, 1, 2)[0]
    e0 = error(target, sr_ref, inner)
    assert e0 < 0.06, e0
    for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):  # a quarter of an LR pixel
        assert error(shifted(target, dx, dy), sr_ref, inner) > e0 + 0.003

    # LR grid: the target downscaled x4 against the reference LR frame (camera render). Crops of
    # another size are aliased differently by the resize than the target is by the box filter (no
    # optics blur in a camera-only render), so this check uses crops already at lr_size.
    native = generate_track(3, index, preset="easy", codec="none",
                            camera=CameraParams(crop_width=(48.0, 48.0), crop_height=(16.0, 16.0)))
    s = track_sample(native, LR, 4)
    down = F.avg_pool2d(s["sr_target"][None], 4)[0]
    lr_mask = -F.max_pool2d(-(F.avg_pool2d(s["sr_mask"][None], 4) > 0.999).float(), 3, 1, 1)[0]
    lr_ref = clean_frames(native)[ref]
    e_lr = error(down, lr_ref, lr_mask)
    assert e_lr < 0.03, e_lr
    for dx, dy in ((0.25, 0), (-0.25, 0), (0, 0.25), (0, -0.25)):
        assert error(shifted(down, dx, dy), lr_ref, lr_mask) > e_lr + 0.005


# ---------------------------------------------------------------------------------------------
# Stages: freezing, gradients, losses, schedules


@pytest.fixture(scope="module")
def small_batch():
    return batch_of([track_sample(generate_track(11, i, preset="easy", num_frames=3), LR, 4) for i in range(2)])


@pytest.mark.parametrize("stage,variant", [("1", "final"), ("1b", "final"), ("2", "final"), ("2", "v1"),
                                           ("3", "final"), ("3", "v2"), ("3", "v1")])
def test_stage_trains_exactly_its_parts(stage, variant, recognizer_path, small_batch):
    cfg = micro(recognizer_path, model={"variant": variant})
    model_config, recognizer = resolve_model_config(cfg)
    module = KSRStageModule(cfg, stage, model_config)
    module.model.recognizer.load_state_dict(recognizer.state_dict())
    module.train()
    assert not module.model.recognizer.training and module.model.head.training == (stage in ("2", "3"))
    terms = module.stage_losses(small_batch)
    expected = {"1": {"epe"}, "1b": {"photometric", "smoothness"}, "2": {"charbonnier", "edge"},
                "3": {"charbonnier", "edge", "semantic"} if variant == "final" else {"charbonnier", "perceptual"}}
    assert expected[stage] <= set(terms)
    assert torch.isfinite(terms["loss"]) and terms["loss"] > 0
    terms["loss"].backward()
    trained = set(module.trainable)
    for name, part in module.model.parts().items():
        for pname, p in part.named_parameters():
            if name in trained:
                assert p.requires_grad and p.grad is not None and torch.isfinite(p.grad).all(), (name, pname)
            else:
                assert not p.requires_grad and p.grad is None, (name, pname)
    assert ("ham" in trained) == (stage == "3" and variant != "v1")
    assert "recognizer" not in trained


@pytest.mark.parametrize("stage", ["1b", "3"])
def test_stage_losses_under_bf16_autocast(stage, recognizer_path, small_batch):
    module = KSRStageModule(micro(recognizer_path, recognizer_weights=None), stage)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = module.stage_losses(small_batch)
    assert terms["loss"].dtype == torch.float32 and torch.isfinite(terms["loss"])
    terms["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in module.parameters() if p.requires_grad)


def losses_while_training(module, batch, steps: int) -> list[float]:
    """The stage loss at each of `steps` Adam steps (lr 3e-3) on one batch, trainable parameters only."""
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(steps):
        loss = module.stage_losses(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_stage1_endpoint_error_decreases(recognizer_path, small_batch):
    torch.manual_seed(0)
    module = KSRStageModule(micro(recognizer_path, recognizer_weights=None), "1")
    epes = losses_while_training(module, small_batch, 30)
    assert np.mean(epes[-3:]) < 0.7 * epes[0], epes


def test_stage2_restoration_loss_decreases(recognizer_path, small_batch):
    torch.manual_seed(0)
    module = KSRStageModule(micro(recognizer_path, recognizer_weights=None), "2").train()
    # Adam at lr 3e-3 wobbles over the first dozen steps on these two tracks; 30 steps show the trend.
    losses = losses_while_training(module, small_batch, 30)
    assert np.mean(losses[-3:]) < 0.95 * losses[0], losses


def test_stage3_uses_cosine_warm_restarts(recognizer_path):
    cfg = micro(recognizer_path, recognizer_weights=None, stage3={"restart_steps": 10, "restart_mult": 1})
    module = KSRStageModule(cfg, "3")
    out = module.configure_optimizers()
    opt, sched = out["optimizer"], out["lr_scheduler"]["scheduler"]
    assert isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingWarmRestarts)
    lrs = []
    for _ in range(21):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(2e-4) and lrs[10] == pytest.approx(2e-4) and lrs[20] == pytest.approx(2e-4)
    assert lrs[9] < 1e-5 and min(lrs) >= 1e-7
    # Only trainable parameters are optimised (no recognizer).
    optimised = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not optimised & {id(p) for p in module.model.recognizer.parameters()}


def test_time_cosine_stage_follows_the_wall_clock(recognizer_path, monkeypatch):
    import ksrnet.training as training

    cfg = micro(recognizer_path, recognizer_weights=None,
                stage2={"schedule": "time_cosine", "max_minutes": 10, "lr": 1e-3, "min_lr": 1e-5})
    module = KSRStageModule(cfg, "2")
    opt = module.configure_optimizers()
    assert isinstance(opt, torch.optim.Optimizer)  # no step-based scheduler to fight the clock
    monkeypatch.setattr(module, "_trainer", type("T", (), {"optimizers": [opt]})(), raising=False)
    clock = iter([100.0, 100.0, 100.0 + 330.0, 100.0 + 600.0])  # the first call also sets the start
    monkeypatch.setattr(training.time, "monotonic", lambda: next(clock))
    seen = []
    for _ in range(2):
        module.on_train_batch_start(None, 0)
        seen.append(opt.param_groups[0]["lr"])
    assert seen[0] == pytest.approx(1e-5)  # the floor min_lr / lr at t = 0 (warm-up starts there)
    assert seen[1] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * (0.55 - 0.05) / 0.95)))
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["ksrnet_elapsed_s"] == pytest.approx(600.0)


# ---------------------------------------------------------------------------------------------
# Running stages through Lightning


def _weights(run: Path, stage: str) -> dict[str, torch.Tensor]:
    return load_file(str(run / f"stage-{stage}" / "ksrnet.safetensors"))


def _part(state: dict, prefix: str) -> dict:
    return {k: v for k, v in state.items() if k.startswith(prefix + ".")}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_all_stages_run_chain_and_freeze(tmp_path, recognizer_path):
    run = tmp_path / "run"
    cfg = micro(recognizer_path, data={"val_tracks": 1})
    out = run_stages(cfg, run, progress=False)
    assert out == run / "ksrnet.safetensors" and out.is_file()
    saved = KSRTrainConfig.load(run / "config.yaml")
    assert saved == cfg
    w = {s: _weights(run, s) for s in STAGES}
    for s in STAGES:
        meta = json.loads((run / f"stage-{s}" / "ksrnet.json").read_text())
        assert meta["kind"] == "ksrnet" and meta["stage"] == s and meta["global_step"] == 2
        ckpt = torch.load(run / f"stage-{s}" / "checkpoints" / "last.ckpt", weights_only=False)
        assert ckpt["global_step"] == 2
        logs = list((run / f"stage-{s}" / "logs").rglob("metrics.csv"))
        with logs[0].open(newline="") as f:
            waits = [float(r["perf/data_wait"]) for r in csv.DictReader(f) if r.get("perf/data_wait")]
        assert waits and all(0.0 <= w < 1.0 for w in waits)  # the share of wall time spent waiting for data
        assert list((run / f"stage-{s}" / "checkpoints").glob("best-*.ckpt"))  # validated and monitored
        expected = {"val/epe"} if s in ("1", "1b") else {"val/psnr", "val/rr"}
        assert set(meta["metrics"]) == expected and all(np.isfinite(v) for v in meta["metrics"].values())
    # The recognizer is the one from recognizer_weights, untouched in every stage.
    rec = load_file(str(recognizer_path))
    for s in STAGES:
        assert _same({k.removeprefix("recognizer."): v for k, v in _part(w[s], "recognizer").items()}, rec)
    # 1 and 1b train the flow only; each stage starts where the previous one ended.
    assert not _same(_part(w["1"], "flow"), _part(w["1b"], "flow"))
    assert _same(_part(w["1"], "head"), _part(w["1b"], "head"))
    # Stage 2: flow, HAM and recognizer frozen; extractor, STFT and head trained.
    for frozen in ("flow", "ham", "recognizer"):
        assert _same(_part(w["1b"], frozen), _part(w["2"], frozen)), frozen
    for trained in ("extractor", "fusion", "head"):
        assert not _same(_part(w["1b"], trained), _part(w["2"], trained)), trained
    # Stage 3: end to end (flow and HAM move too).
    for trained in ("flow", "ham", "head"):
        assert not _same(_part(w["2"], trained), _part(w["3"], trained)), trained
    assert _same(load_file(str(out)), w["3"])
    model, meta = load_ksrnet(run)
    assert meta["config"] == model.config.to_dict() and model.config.recognizer.embed_dim == 32
    with torch.no_grad():
        y = model(torch.zeros(1, 3, 3, *LR))
    assert y.sr.shape == (1, 3, 64, 192) and y.char_logits.shape[:2] == (1, 7)


def test_interrupted_stage_resumes(tmp_path, recognizer_path, step_recorder):
    # 4 steps; the run dies after its 3rd, before that step's checkpoint (ModelCheckpoint runs after
    # the other callbacks), so last.ckpt holds step 2 and no weights are exported.
    cfg = micro(recognizer_path, data={"tracks_per_epoch": 4})
    run = tmp_path / "run"
    class Crash(step_recorder, L.Callback):
        pass

    Crash.reset(fail_at=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_ksrnet(cfg, run, "2", progress=False, callbacks=[Crash()])
    last = run / "stage-2" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 2
    assert not (run / "stage-2" / "ksrnet.safetensors").exists()
    Crash.reset()
    out = train_ksrnet(cfg, run, "2", progress=False, callbacks=[Crash()])
    assert Crash.started_at == [2] and Crash.batches == [3, 4]  # the missing steps, not 4 anew
    assert torch.load(last, weights_only=False)["global_step"] == 4
    assert out.is_file() and json.loads(out.with_suffix(".json").read_text())["global_step"] == 4
    # A different model in the same run dir is refused.
    other = micro(recognizer_path, data={"tracks_per_epoch": 4}, model={"variant": "v1"})
    with pytest.raises(ValueError, match="another model"):
        train_ksrnet(other, run, "2", progress=False)


def test_resumed_stage_takes_the_changed_lr_floor_and_weight_decay(tmp_path, recognizer_path):
    """The checkpoint's optimizer and scheduler states used to override a changed stage lr, min_lr
    and weight_decay, though the resume warning said training continued under the new values."""
    run = tmp_path / "run"
    stage = {"schedule": "cosine_restarts", "restart_steps": 10, "lr": 1e-3, "min_lr": 1e-6, "weight_decay": 1e-4}
    train_ksrnet(micro(recognizer_path, stage1=stage), run, "1", progress=False)
    changed = {**stage, "max_epochs": 2, "lr": 1e-4, "min_lr": 1e-7, "weight_decay": 0.05}
    with pytest.warns(UserWarning, match="changed config section"):
        train_ksrnet(micro(recognizer_path, stage1=changed), run, "1", progress=False)
    state = torch.load(run / "stage-1" / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["global_step"] == 4
    # Another schedule cannot take over the checkpoint's scheduler state: refused, not a traceback.
    with pytest.raises(ValueError, match="stage1.schedule cannot change"):
        train_ksrnet(micro(recognizer_path, stage1={**changed, "schedule": "cosine"}), run, "1", progress=False)
    sched = state["lr_schedulers"][0]
    assert sched["base_lrs"] == pytest.approx([1e-4, 1e-4]) and sched["eta_min"] == 1e-7
    decay, no_decay = state["optimizer_states"][0]["param_groups"]
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert decay["lr"] <= 1e-4


def test_bad_recognizer_or_foreign_run_dir_leave_the_run_dir_usable(tmp_path, recognizer_path):
    from ksrnet.train_config import TrainConfig
    from ksrnet.weights import ModelLoadError

    run = tmp_path / "run"
    # A mistyped recognizer_weights was saved in config.yaml first: the corrected config's rerun was
    # then refused as "another model or recognizer".
    with pytest.raises(ModelLoadError, match="recognizer_weights: no model at"):
        train_ksrnet(micro(recognizer_path, recognizer_weights=str(tmp_path / "typo")), run, "1", progress=False)
    assert not (run / "config.yaml").exists()
    # A recognizer run dir: named as such, not "unknown section(s) ['optim']" alone.
    other = tmp_path / "recognizer-run"
    other.mkdir()
    TrainConfig().save(other / "config.yaml")
    with pytest.raises(ConfigError, match="holds a run this command cannot resume"):
        train_ksrnet(micro(recognizer_path), other, "1", progress=False)


def test_a_model_refused_by_init_weights_is_not_recorded_as_the_runs(tmp_path, recognizer_path):
    """config.yaml was written before init_weights were loaded: after a model they do not fit, the
    corrected config's rerun was refused as "a run with another model"."""
    train_ksrnet(micro(recognizer_path), tmp_path / "first", "1", progress=False)
    start, run = str(tmp_path / "first"), tmp_path / "run"
    wrong = micro(recognizer_path, init_weights=start, model={"flow": {"base_channels": 8}})
    with pytest.raises(ValueError, match="another KSR-Net config"):
        train_ksrnet(wrong, run, "1", progress=False)
    assert not (run / "config.yaml").exists()
    assert train_ksrnet(micro(recognizer_path, init_weights=start), run, "1", progress=False).is_file()


def test_rerunning_an_earlier_stage_keeps_the_run_dirs_latest_weights(tmp_path, recognizer_path):
    run = tmp_path / "run"
    cfg = micro(recognizer_path, data={"val_tracks": 1})
    run_stages(cfg, run, ["1", "1b"], progress=False)
    stage1_meta = json.loads((run / "stage-1" / "ksrnet.json").read_text())
    assert stage1_meta["metrics"]
    out = run_stages(cfg, run, ["1"], progress=False)  # finished: reloaded and re-exported, nothing trained
    assert out == run / "stage-1" / "ksrnet.safetensors"
    assert json.loads((run / "ksrnet.json").read_text())["stage"] == "1b"  # was replaced by stage 1's
    assert json.loads((run / "stage-1" / "ksrnet.json").read_text())["metrics"] == stage1_meta["metrics"]


def test_perceptual_blocks_beyond_the_recognizer_are_refused_before_stage_1(tmp_path, recognizer_path):
    cfg = micro(recognizer_path, losses={"perceptual_blocks": [99]})
    with pytest.raises(ConfigError, match=r"perceptual_blocks \[99\]: the recognizer's encoder has"):
        train_ksrnet(cfg, tmp_path / "run", "1", progress=False)


def test_stage3_requires_a_recognizer(tmp_path, recognizer_path):
    with pytest.raises(ConfigError, match="recognizer_weights"):
        train_ksrnet(micro(recognizer_path, recognizer_weights=None), tmp_path / "run", "3", progress=False)


def test_cli_train_ksrnet_runs_stages_and_rejects_bad_ones(tmp_path, recognizer_path):
    from typer.testing import CliRunner

    from ksrnet.cli import app

    config = tmp_path / "ksrnet-micro.yaml"
    micro(recognizer_path).save(config)
    runner = CliRunner()
    result = runner.invoke(app, ["train-ksrnet", str(config), "--run-dir", str(tmp_path / "run"),
                                 "--stages", "1,2"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "stage-1" / "ksrnet.safetensors").is_file()
    assert (tmp_path / "run" / "stage-2" / "ksrnet.safetensors").is_file()
    assert not (tmp_path / "run" / "stage-3").exists()
    assert (tmp_path / "run" / "ksrnet.safetensors").is_file()
    result = runner.invoke(app, ["train-ksrnet", str(config), "--stages", "1,4"])
    assert result.exit_code == 2 and "--stages takes" in " ".join(result.output.split())


# ---------------------------------------------------------------------------------------------
# Real (LRLPR-26-style) tracks: HR rectified by corners, or the semantic loss alone


def _with_hr_corners(synth_track, keep_hr: slice):
    """The synthetic track as a folder track whose HR views carry corners (the HR view is the frame
    rendered 4x finer: x_hr = 4 (x_lr + 0.5) - 0.5), keeping only the HR frames ``keep_hr``."""
    from ksrnet.synth.dataset import to_track

    track = to_track(synth_track)
    for lr_name, hr_name in zip(track.lr_names, track.hr_names):
        track.corners[hr_name] = (track.corners[lr_name] + 0.5) * 4 - 0.5
    track.hr, track.hr_names = track.hr[keep_hr], track.hr_names[keep_hr]
    return track


@pytest.mark.parametrize("index", [0, 1])
def test_folder_target_from_corners_matches_the_synthetic_ground_truth(index):
    from ksrnet.ksr_targets import folder_track_sample

    synth = generate_track(5, index, preset="easy")
    truth = track_sample(synth, LR, 4)
    # Another frame's HR capture than the reference's: only the corner homography relates them.
    real = folder_track_sample(_with_hr_corners(synth, slice(4, 5)), LR, 4)
    assert real["sr_target"].shape == truth["sr_target"].shape and real["sr_mask"].shape == truth["sr_mask"].shape
    both = (truth["sr_mask"] * real["sr_mask"]) > 0
    assert both.sum() > 0.9 * truth["sr_mask"].sum()  # the plate quadrilateral covers the plate
    diff = (truth["sr_target"] - real["sr_target"]).abs().mean(0, keepdim=True)[both]
    assert float(diff.mean()) < 0.06  # on [-1, 1]: the rectified HR is the plate the synthetic GT shows
    assert torch.equal(real["frames"], truth["frames"]) and torch.equal(real["text"], truth["text"])
    assert real["flow_valid"].sum() == 0 and real["flows"].abs().sum() == 0  # no flow ground truth


def test_folder_track_without_corners_trains_on_text_only_and_pads_frames():
    from ksrnet.ksr_targets import folder_track_sample

    track = _with_hr_corners(generate_track(5, 2, preset="easy", num_frames=3), slice(0, 3))
    track.corners = {}
    s = folder_track_sample(track, LR, 4, num_frames=5)
    assert s["frames"].shape == (5, 3, *LR) and s["frame_mask"].all() and int(s["reference"]) == 2
    assert torch.equal(s["frames"][3], s["frames"][2]) and torch.equal(s["frames"][4], s["frames"][2])
    assert s["sr_mask"].sum() == 0 and s["sr_target"].abs().sum() == 0
    track.text = None
    with pytest.raises(ValueError, match="text"):
        folder_track_sample(track, LR, 4)


def test_stage_3_validates_on_a_held_out_split_that_no_stage_trains_on(tmp_path, recognizer_path):
    from ksrnet.ksr_training import build_stage_data, resolve_model_config
    from ksrnet.synth.dataset import write_synthetic_dataset
    from ksrnet.tracks import discover_tracks

    folder = tmp_path / "tracks"
    write_synthetic_dataset(folder, 6, seed=8)
    cfg = micro(recognizer_path, data={"tracks_per_epoch": 0, "lrlpr_root": str(folder), "num_frames": 5,
                                       "lrlpr_val_fraction": 0.5, "val_tracks": 2})
    model_config, _ = resolve_model_config(cfg)
    held_out = None
    for stage in ("1", "2", "3"):
        train, val = build_stage_data(cfg, model_config, stage)
        if stage != "3":
            assert isinstance(val, KSRTrackDataset)  # flow and warm-up stages: synthetic ground truth
        else:
            held_out = set(val.tracks.paths)
        assert held_out is None or not set(train.tracks.paths) & held_out
    assert held_out and len(held_out) < 6 and set(train.tracks.paths) | held_out == set(discover_tracks(folder))
    run = tmp_path / "run"
    out = train_ksrnet(cfg, run, "3", progress=False)
    assert sorted((run / "val_tracks.txt").read_text().split()) == sorted(str(p.resolve()) for p in held_out)
    assert json.loads(out.with_suffix(".json").read_text())["global_step"] >= 1
    # Real tracks without corners (Scenario B) have no pixel target: validation reads them, and reports
    # no PSNR rather than one over no pixel (which came out as 106 dB).
    for track in held_out:
        doc = json.loads((track / "annotations.json").read_text())
        (track / "annotations.json").write_text(json.dumps({**doc, "corners": {}}))
    train_ksrnet(cfg, tmp_path / "run-b", "3", progress=False)
    header, *rows = next((tmp_path / "run-b").rglob("metrics.csv")).read_text().splitlines()
    names = header.split(",")
    values = [dict(zip(names, row.split(","))) for row in rows]
    assert any(v.get("val/rr") for v in values) and not any(v.get("val/psnr") for v in values)


def test_stages_train_on_a_folder_alone(tmp_path, recognizer_path):
    from typer.testing import CliRunner

    from ksrnet.cli import app

    folder = tmp_path / "tracks"
    result = CliRunner().invoke(app, ["synth", str(folder), "--tracks", "2", "--seed", "4"])
    assert result.exit_code == 0, result.stdout
    cfg = micro(recognizer_path, data={"tracks_per_epoch": 0, "lrlpr_root": str(folder), "num_frames": 5})
    run = tmp_path / "run"
    for stage in ("1b", "3"):
        out = train_ksrnet(cfg, run, stage, progress=False)
        assert out.is_file() and json.loads(out.with_suffix(".json").read_text())["global_step"] == 2
    with pytest.raises(ConfigError, match="no training data"):
        micro(recognizer_path, data={"tracks_per_epoch": 0})


def test_variants_start_from_each_others_weights_where_the_parts_agree(tmp_path, recognizer_path):
    first = train_ksrnet(micro(recognizer_path), tmp_path / "final", "2", progress=False)
    v2 = micro(recognizer_path, model={"variant": "v2"}, init_weights=str(first.parent))
    out = train_ksrnet(v2, tmp_path / "v2", "3", progress=False)
    assert json.loads(out.with_suffix(".json").read_text())["config"]["variant"] == "v2"
    # Up to stage 2 HAM is still at rest (= v1's plain warp), so v1 may start there without it ...
    v1 = micro(recognizer_path, model={"variant": "v1"}, init_weights=str(first.parent))
    out = train_ksrnet(v1, tmp_path / "v1", "3", progress=False)
    assert not any(k.startswith("ham.") for k in load_file(str(out)))
    # ... but not after stage 3 trained HAM.
    v1_late = micro(recognizer_path, model={"variant": "v1"}, init_weights=str(tmp_path / "v2" / "stage-3"))
    with pytest.raises(ValueError, match="another KSR-Net config"):
        train_ksrnet(v1_late, tmp_path / "v1-late", "3", progress=False)


def test_a_run_on_another_input_grid_starts_from_weights_trained_on_this_one(tmp_path, recognizer_path):
    """No weight depends on lr_size, so a 16x48 run's weights start a 20x48 run (how the CPU runs moved to
    the taller grid most crops have); other config differences are still refused."""
    first = train_ksrnet(micro(recognizer_path), tmp_path / "grid16", "3", progress=False)
    taller = micro(recognizer_path, model={"lr_size": [20, 48]}, init_weights=str(first.parent))
    out = train_ksrnet(taller, tmp_path / "grid20", "3", progress=False)
    assert json.loads(out.with_suffix(".json").read_text())["config"]["lr_size"] == [20, 48]
    wider = micro(recognizer_path, model={"restore": {"features": 8, "num_res_blocks": 1}}, init_weights=str(first.parent))
    with pytest.raises(ValueError, match="another KSR-Net config"):
        train_ksrnet(wider, tmp_path / "other", "3", progress=False)


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("ksrnet-*.yaml")), ids=lambda p: p.name)
def test_every_ksrnet_config_in_the_repo_loads(path):
    cfg = KSRTrainConfig.load(path)
    # 16x48 in the CPU runs' records; 20x48 for new runs (most crops are 19-21 px tall).
    assert cfg.model.lr_size in (LR, (20, 48))


def test_corner_target_mask_holds_no_background_of_the_hr_capture():
    """A white plate on a black HR capture: every pixel the mask keeps must be plate. OpenCV's
    anti-aliased polygon fill paints the pixel row and column just past the bottom/right edges
    as plate, which let 1-2 SR px of background into the masked target."""
    from ksrnet.ksr_targets import hr_target_from_corners

    hr = np.zeros((60, 140, 3), np.uint8)
    hr[15:45, 10:130] = 255  # plate pixels 10..129 x 15..44: outer edges at 9.5 / 129.5, 14.5 / 44.5
    hr_corners = np.array([[9.5, 14.5], [129.5, 14.5], [129.5, 44.5], [9.5, 44.5]])
    for lr_corners in ([[3.5, 2.5], [43.5, 2.5], [43.5, 13.5], [3.5, 13.5]],
                       [[3.2, 2.7], [43.9, 3.1], [43.6, 13.8], [3.1, 13.3]]):
        target, mask = hr_target_from_corners(hr, hr_corners, np.array(lr_corners), (16, 48), LR, 4)
        kept = target.mean(0)[mask[0] > 0]
        assert kept.numel() > 0.9 * 4 * 40 * 4 * 11 and float(kept.min()) > 0.99


@pytest.mark.parametrize("bad", ["duplicate", "collinear", "twisted", "mirrored"])
def test_degenerate_or_misordered_corners_give_no_pixel_target(bad):
    """Corners that are not a proper TL TR BR BL quadrilateral (an annotation error) give a
    singular or folding homography: the track must train on its text alone, not on a smeared or
    mirrored HR; a later HR frame with proper corners is used instead when there is one."""
    from ksrnet.ksr_targets import folder_track_sample, hr_target_from_corners

    good = np.array([[3.0, 3.0], [44.0, 3.0], [44.0, 14.0], [3.0, 14.0]], np.float32)
    quad = {"duplicate": good[[0, 1, 2, 2]], "collinear": np.array([[0, 0], [10, 0], [20, 0], [30, 0]], np.float32),
            "twisted": good[[0, 1, 3, 2]], "mirrored": good[[1, 0, 3, 2]]}[bad]
    hr = np.full((45, 128, 3), 200, np.uint8)
    with pytest.raises(ValueError, match="corners"):
        hr_target_from_corners(hr, good * 2.7, quad, (17, 48), LR, 4)
    with pytest.raises(ValueError, match="corners"):
        hr_target_from_corners(hr, quad * 2.7, good, (17, 48), LR, 4)
    track = _with_hr_corners(generate_track(5, 2, preset="easy", num_frames=3), slice(0, 3))
    ref_name = track.lr_names[2]
    track.corners[track.hr_names[0]] = quad * 4
    assert folder_track_sample(track, LR, 4)["sr_mask"].sum() > 0  # hr-002 stands in for hr-001
    track.corners[ref_name] = quad
    assert folder_track_sample(track, LR, 4)["sr_mask"].sum() == 0


# ---------------------------------------------------------------------------------------------
# Frame dropout


@pytest.mark.parametrize("policy, counts", [("middle", {1, 3, 5}), ("last", {1, 2, 3, 4, 5})])
def test_thinned_frame_masks_keep_the_reference_and_draw_every_frame_count(policy, counts):
    full = torch.ones(400, 5, dtype=torch.bool)
    thinned = thinned_frame_mask(full, policy, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(reference_indices(policy, thinned), reference_indices(policy, full))
    assert set(thinned.sum(1).tolist()) == counts
    kept_sets = {tuple(row.nonzero().flatten().tolist()) for row in thinned}
    assert len(kept_sets) > len(counts)  # which frames are kept is drawn, not only how many
    assert torch.equal(thinned_frame_mask(full, policy, 0.0), full)


def test_thinning_a_short_track_keeps_its_reference_and_never_revives_a_missing_frame():
    short = torch.tensor([[True, True, True, False, False]]).expand(200, -1)
    thinned = thinned_frame_mask(short, "middle", 1.0, torch.Generator().manual_seed(1))
    assert (reference_indices("middle", thinned) == 1).all()
    assert not (thinned & ~short).any()
    assert set(thinned.sum(1).tolist()) == {1, 3}


def test_frame_dropout_thins_the_frames_in_training_only(recognizer_path, small_batch, monkeypatch):
    module = KSRStageModule(micro(recognizer_path, recognizer_weights=None, data={"frame_dropout": 1.0}), "2")
    masks = []
    restore = module.model.restore

    def recording_restore(frames, frame_mask=None):
        masks.append(frame_mask)
        return restore(frames, frame_mask)

    monkeypatch.setattr(module.model, "restore", recording_restore)
    torch.manual_seed(0)
    module.train()
    for _ in range(8):
        assert torch.isfinite(module.stage_losses(small_batch)["loss"])
    thinned = [m for m in masks if m is not None]
    assert thinned, "frame_dropout 1 never thinned a track of 3 frames in 8 batches"
    assert all(bool(m[:, 1].all()) and int(m.sum()) < m.numel() for m in thinned)  # the reference, frame 1, stays
    masks.clear()
    module.eval()
    for _ in range(4):
        module.stage_losses(small_batch)
    assert masks == [None] * 4
