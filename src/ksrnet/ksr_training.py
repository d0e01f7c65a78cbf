"""KSR-Net training, stage by stage as the seed describes it (DESIGN.md, "Training").

Stages (``ksrnet.ksr_config.STAGES``), each one Lightning run of :class:`KSRStageModule`:

====== ================================ ============================= ==========================================
stage  trains (everything else frozen)  losses                        schedule (defaults, ``stageN`` section)
====== ================================ ============================= ==========================================
``1``  flow                             endpoint error vs. synthetic  AdamW 1e-3, warm-up + cosine
                                        GT flow (masked: target
                                        inside frame t)
``1b`` flow                             photometric (Charbonnier of   AdamW 2e-4, cosine
                                        the warp, both directions)
                                        masked by valid_mask x soft
                                        FB reliability (detached) +
                                        edge-aware smoothness; no GT
``2``  extractor, fusion (STFT), head   Charbonnier + gradient        AdamW 5e-4, cosine
       (flow, HAM, recognizer frozen)   profile vs. the SR target,
                                        masked to the plate
``3``  flow, extractor, HAM, fusion,    by variant (``VARIANT_LOSSES``): CosineAnnealingWarmRestarts
       head (recognizer frozen: it is   v1/v2 Charbonnier + perceptual 2e-4 -> 1e-7
       the loss network)                (recognizer encoder); final
                                        Charbonnier + edge + semantic
                                        (frozen recognizer's CE)
====== ================================ ============================= ==========================================

Run directory::

    run_dir/config.yaml                      the KSRTrainConfig (checked on resume)
    run_dir/stage-<s>/checkpoints/last.ckpt  resumable Lightning checkpoint (+ best-*.ckpt with validation)
    run_dir/stage-<s>/logs/                  CSV logs
    run_dir/stage-<s>/ksrnet.safetensors     the stage's weights (+ ksrnet.json: config, stage, metrics)
    run_dir/ksrnet.safetensors               a copy of the latest stage's (in STAGES order; + ksrnet.json)

Stage ``s`` starts from the weights of the latest earlier stage found in the run dir (in ``STAGES``
order), else ``init_weights``, else random; then the recognizer is loaded from
``recognizer_weights``. An interrupted stage resumes from its own ``last.ckpt`` instead.

Data: :class:`KSRTrackDataset` turns ``synth.dataset.generate_track`` into tensors at the model's
``lr_size``: frames, exact ground-truth flows ref -> t (from the camera homographies, composed with
the resize), their validity, the SR target (the canonical HR plate warped onto the reference frame's
x``upscale`` grid), its plate mask, the text and the layout. ``data.lrlpr_root`` mixes in labelled
real tracks (:class:`KSRFolderDataset`): no flow ground truth (stage 1 learns nothing from them,
1b does), the HR capture rectified onto the reference grid by the annotated corners where both the
reference LR frame and an HR frame have them, otherwise an empty target mask, so that only the
semantic loss (stage 3 of ``final``) trains on the track.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from ksrnet.ksr_config import STAGES, KSRTrainConfig, StageConfig, stage_key
from ksrnet.atomic_files import atomic_write
from ksrnet.data_wait import DataWaitMeter
from ksrnet.weights import KSRNET_WEIGHTS_NAME, load_ksrnet_state, resolve_ksrnet, save_ksrnet
from ksrnet.losses import PerceptualLoss, charbonnier, gradient_profile_loss, semantic_loss
from ksrnet.models.flow import (endpoint_error, forward_backward_consistency, photometric_loss,
                                smoothness_loss, valid_mask)
from ksrnet.ksr_targets import folder_track_sample, track_sample
from ksrnet.models.ksrnet import KSRNet, KSRNetConfig, reference_indices
from ksrnet.models.parseq import ParseqConfig, decode_constrained, layout_log_probs
from ksrnet.plates import layout_masks
from ksrnet.synth.camera import CameraParams
from ksrnet.train_config import ConfigError, check_resumable, check_schedule_kept
from ksrnet.training import (WallClockLR, _EpochSetter, _precision, discard_checkpoints, previous_metadata,
                             write_validation_list)
from ksrnet.track_dataset import FolderTrackDataset, Interleave, ResumableEpoch, lrlpr_parts, my_indices, per_rank_count

# Parts trained in each stage (``KSRNet.parts()`` names; ``ham`` is absent for v1).
STAGE_TRAINABLE: dict[str, tuple[str, ...]] = {
    "1": ("flow",),
    "1b": ("flow",),
    "2": ("extractor", "fusion", "head"),
    "3": ("flow", "extractor", "ham", "fusion", "head"),
}


# --------------------------------------------------------------------------------------------------
# Data


class KSRTrackDataset(IterableDataset):
    """``num_tracks`` synthetic tracks per epoch as :func:`track_sample` dicts, sharded over
    DataLoader workers and DDP ranks (``track_dataset.my_indices``). ``fixed=True`` (validation)
    yields the same tracks every epoch; otherwise ``set_epoch`` draws new ones. The same
    (seed, epoch) gives the same tracks for any worker count."""

    def __init__(self, num_tracks: int, *, lr_size: tuple[int, int], upscale: int = 4,
                 ref_policy: str = "middle", seed: int = 0, preset: str = "mix", codec: str | None = None,
                 num_frames: int = 5, fixed: bool = False, supersample: int = 2,
                 camera: CameraParams = CameraParams()) -> None:
        if num_tracks < 1:
            raise ValueError("num_tracks must be >= 1")
        self.num_tracks, self.lr_size, self.upscale, self.ref_policy = num_tracks, tuple(lr_size), upscale, ref_policy
        self.seed, self.preset, self.codec, self.num_frames = seed, preset, codec, num_frames
        self.fixed, self.supersample, self.camera = fixed, supersample, camera
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return per_rank_count(self.num_tracks)

    def __iter__(self):
        import cv2

        from ksrnet.synth import dataset as synth  # looked up per call: tests may patch generate_track

        cv2.setNumThreads(1)
        epoch = 0 if self.fixed else self.epoch
        for i in my_indices(self.num_tracks):
            track = synth.generate_track(self.seed, i, preset=self.preset, num_frames=self.num_frames,
                                         codec=self.codec, camera=self.camera, epoch=epoch)
            yield track_sample(track, self.lr_size, self.upscale, self.ref_policy, self.supersample)


class KSRFolderDataset(IterableDataset):
    """The labelled tracks of an LRLPR-26 folder as :func:`ksr_targets.folder_track_sample` dicts,
    reshuffled every epoch, sharded like :class:`KSRTrackDataset`; unreadable tracks are skipped."""

    def __init__(self, root: str | Path, *, lr_size: tuple[int, int], upscale: int = 4, ref_policy: str = "middle",
                 num_frames: int = 5, supersample: int = 2, seed: int = 0, keep=None, part: str = "") -> None:
        self.tracks = FolderTrackDataset(root, seed=seed, require_labels=True, keep=keep, part=part)
        self.lr_size, self.upscale, self.ref_policy = tuple(lr_size), upscale, ref_policy
        self.num_frames, self.supersample = num_frames, supersample

    def set_epoch(self, epoch: int) -> None:
        self.tracks.set_epoch(epoch)

    def __len__(self) -> int:
        return per_rank_count(len(self.tracks))  # the folder's own len() counts every rank's tracks

    def __iter__(self):
        for track in self.tracks:
            if track.layout is None:
                continue  # labelled text without a layout cannot be scored per slot
            yield folder_track_sample(track, self.lr_size, self.upscale, self.ref_policy, self.num_frames,
                                      self.supersample)


# --------------------------------------------------------------------------------------------------
# Losses the stages need beyond ksrnet.losses


def _others(t: int, ref: int) -> list[int]:
    return [i for i in range(t) if i != ref]


def thinned_frame_mask(frame_mask: Tensor, policy: str, share: float,
                       generator: torch.Generator | None = None) -> Tensor:
    """A copy of ``frame_mask`` ``(B, T)`` bool in which each track, with probability ``share``, keeps
    a random subset of its supporting frames (possibly none or all of them) and always its reference.

    The reference must stay the frame the SR target was built on, and the model picks it from the
    valid frames by ``policy`` (``models.ksrnet.reference_indices``). So under ``"middle"`` a
    thinned track keeps ``k`` frames on each side of its reference, ``k`` drawn uniformly from 0 up
    to the fewer it has on one side (one frame alone when ``k`` is 0); under ``"last"`` it keeps ``k``
    of the frames before its reference, ``k`` drawn uniformly from 0 up to all of them. Which frames
    of a side are kept is drawn too."""
    if share <= 0:
        return frame_mask.to(torch.bool).clone()
    # Drawn track by track on the CPU, then moved once: per-track writes to a GPU tensor in a
    # Python loop would each be a kernel launch.
    mask = frame_mask.to("cpu", torch.bool).clone()
    refs = reference_indices(policy, mask).tolist()
    chosen = (torch.rand(mask.shape[0], generator=generator) < share).tolist()

    def keep_some(frames: list[int], k: int) -> list[int]:
        order = torch.randperm(len(frames), generator=generator)[:k].tolist()
        return [frames[i] for i in order]

    for b, (ref, thin) in enumerate(zip(refs, chosen)):
        if not thin:
            continue
        valid = torch.nonzero(mask[b]).flatten().tolist()
        before = [i for i in valid if i < ref]
        after = [i for i in valid if i > ref]
        if policy == "middle":
            k = int(torch.randint(0, min(len(before), len(after)) + 1, (1,), generator=generator))
            kept = keep_some(before, k) + keep_some(after, k)
        else:
            kept = keep_some(before, int(torch.randint(0, len(before) + 1, (1,), generator=generator)))
        mask[b] = False
        mask[b, kept + [ref]] = True
    return mask.to(frame_mask.device)


def _batch_reference(batch: dict[str, Tensor]) -> int:
    ref = batch["reference"]
    r = int(ref[0])
    if not bool((ref == r).all()):
        raise ValueError("every track of a batch must share its reference slot")
    return r


# --------------------------------------------------------------------------------------------------
# The Lightning module


def trainable_parts(model: KSRNet, stage: str) -> list[str]:
    if stage not in STAGE_TRAINABLE:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    return [name for name in STAGE_TRAINABLE[stage] if name in model.parts()]


def stage_losses_names(stage: str, variant: str) -> tuple[str, ...]:
    """The losses a stage trains with (the variant matters in stage 3 only)."""
    if stage == "1":
        return ("epe",)
    if stage == "1b":
        return ("photometric", "smoothness")
    if stage == "2":
        return ("charbonnier", "edge")
    from ksrnet.models.ksrnet import VARIANT_LOSSES

    return VARIANT_LOSSES[variant]


class KSRStageModule(WallClockLR, L.LightningModule):
    """One training stage of KSR-Net: what is trainable and which losses, per ``stage``.

    ``stage_losses(batch)`` returns ``{"loss": total, <name>: term, ...}`` (plain torch; used by
    ``training_step`` and by tests). Frozen parts have ``requires_grad=False``, are left out of the
    optimiser and kept in eval mode (``train()`` is overridden), so DDP needs no unused-parameter
    search and the recognizer's dropout stays off.
    """

    def __init__(self, config: KSRTrainConfig, stage: str, model_config: KSRNetConfig | None = None):
        super().__init__()
        stage_key(stage)  # validates
        self.config = config
        self.stage = stage
        self.model_config = model_config or config.model
        self.save_hyperparameters({"config": config.to_dict(), "stage": stage,
                                   "model_config": self.model_config.to_dict()})
        self.model = KSRNet(self.model_config)
        self.trainable = trainable_parts(self.model, stage)
        for name, part in self.model.parts().items():
            part.requires_grad_(name in self.trainable)
        self.loss_names = stage_losses_names(stage, self.model_config.variant)
        self._perceptual = None
        if "perceptual" in self.loss_names:
            blocks = config.losses.perceptual_blocks
            self._perceptual = PerceptualLoss.from_recognizer(self.model.recognizer, blocks)
        self.register_buffer("layout_masks", torch.from_numpy(layout_masks()), persistent=False)
        self._val: list[dict[str, float]] = []

    # -- modes -------------------------------------------------------------------------------------

    def train(self, mode: bool = True):
        super().train(mode)
        for name, part in self.model.parts().items():
            if name not in self.trainable:
                part.eval()
        return self

    # -- losses ------------------------------------------------------------------------------------

    def _flow_pairs(self, batch: dict[str, Tensor]):
        frames = batch["frames"]
        b, t = frames.shape[:2]
        r = _batch_reference(batch)
        others = _others(t, r)
        sup = frames[:, others].flatten(0, 1)
        ref = frames[:, r].unsqueeze(1).expand(-1, len(others), -1, -1, -1).flatten(0, 1)
        gt = batch["flows"][:, others].flatten(0, 1)
        gt_valid = batch["flow_valid"][:, others].flatten(0, 1)
        return ref, sup, gt, gt_valid

    def stage_losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.stage == "1":
            ref, sup, gt, gt_valid = self._flow_pairs(batch)
            if ref.shape[0] == 0:
                raise ValueError("stage 1 needs tracks of at least 2 frames")
            epe = endpoint_error(self.model.flow(ref, sup).float(), gt, gt_valid)
            return {"loss": epe, "epe": epe}
        if self.stage == "1b":
            return self._photometric_losses(batch)
        return self._restoration_losses(batch)

    def _photometric_losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        lc = self.config.losses
        ref, sup, gt, gt_valid = self._flow_pairs(batch)
        fw, bw = self.model.flow(torch.cat((ref, sup)), torch.cat((sup, ref))).float().chunk(2)
        with torch.no_grad():  # the masks are weights, not something to optimise
            rel_fw = valid_mask(fw).float() * forward_backward_consistency(
                fw, bw, lc.fb_alpha, lc.fb_beta, soft=True, check_bounds=False)
            rel_bw = valid_mask(bw).float() * forward_backward_consistency(
                bw, fw, lc.fb_alpha, lc.fb_beta, soft=True, check_bounds=False)
        ref32, sup32 = ref.float(), sup.float()
        photo = 0.5 * (photometric_loss(ref32, sup32, fw, rel_fw) + photometric_loss(sup32, ref32, bw, rel_bw))
        edge = lc.smoothness_edge_weight
        smooth = 0.5 * (smoothness_loss(fw, ref32, edge) + smoothness_loss(bw, sup32, edge))
        loss = photo + lc.smoothness_weight * smooth
        with torch.no_grad():
            epe = endpoint_error(fw.detach(), gt, gt_valid)  # monitored only: no GT in this stage
        return {"loss": loss, "photometric": photo, "smoothness": smooth, "epe": epe,
                "fb_reliability": rel_fw.mean()}

    def _restoration_losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        lc = self.config.losses
        mask_frames = batch["frame_mask"]
        if self.training and self.config.data.frame_dropout > 0:
            mask_frames = thinned_frame_mask(mask_frames, self.model_config.ref_index, self.config.data.frame_dropout)
        out = self.model.restore(batch["frames"], None if bool(mask_frames.all()) else mask_frames)
        if not bool((out.reference == batch["reference"]).all()):
            raise ValueError("the model's reference frame differs from the one the SR target was built on")
        sr = out.sr.float()
        target, mask = batch["sr_target"].float(), batch["sr_mask"].float()
        # Outside the plate the target is undefined: compare images whose surroundings are the
        # prediction's own (no gradient there), so edge and feature losses see only the plate.
        filled = torch.where(mask > 0, target, sr.detach())
        terms: dict[str, Tensor] = {"charbonnier": charbonnier(sr, target, lc.charbonnier_eps, mask)}
        loss = terms["charbonnier"]
        if "edge" in self.loss_names:
            terms["edge"] = gradient_profile_loss(sr, filled, mask)
            loss = loss + lc.edge_weight * terms["edge"]
        if "perceptual" in self.loss_names:
            terms["perceptual"] = self._perceptual(sr, filled)
            loss = loss + lc.perceptual_weight * terms["perceptual"]
        if "semantic" in self.loss_names:
            terms["semantic"] = semantic_loss(self.model.recognizer, sr, batch["text"],
                                              label_smoothing=lc.label_smoothing)
            loss = loss + lc.semantic_weight * terms["semantic"]
        return {"loss": loss, **terms}

    # -- Lightning hooks ---------------------------------------------------------------------------

    def training_step(self, batch, batch_idx):
        terms = self.stage_losses(batch)
        n = batch["frames"].shape[0]
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, prog_bar=False, batch_size=n)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=n, prog_bar=True)
        return terms["loss"]

    def validation_step(self, batch, batch_idx):
        if self.stage in ("1", "1b"):
            ref, sup, gt, gt_valid = self._flow_pairs(batch)
            epe = endpoint_error(self.model.flow(ref, sup).float(), gt, gt_valid)
            self._val.append({"epe": float(epe), "n": float(ref.shape[0])})
            return
        out = self.model.restore(batch["frames"])
        sr = out.sr.float()
        mask = batch["sr_mask"]
        mse = ((sr - batch["sr_target"]) ** 2).mean(1, keepdim=True)
        per_track = (mse * mask).sum((1, 2, 3)) / mask.sum((1, 2, 3)).clamp_min(1.0)
        psnr = 10.0 * torch.log10(4.0 / per_track.clamp_min(1e-10))  # [-1, 1] images: peak-to-peak 2
        reading = self.model.read(out.sr)
        lp, llp = layout_log_probs(reading.char_logits.float(), reading.layout_logits.float(), self.layout_masks)
        indices = decode_constrained(lp, llp)[0]
        right = (indices == batch["text"]).all(-1).float()
        has_target = (mask.sum((1, 2, 3)) > 0).tolist()
        for p, ok, scored in zip(psnr.tolist(), right.tolist(), has_target):
            # A real track without a rectified HR has no pixel target: its PSNR (over no pixel) is not one.
            self._val.append({"psnr": p, "rr": ok, "n": 1.0} if scored else {"rr": ok, "n": 1.0})

    def on_validation_epoch_end(self):
        if not self._val:
            return
        for k in dict.fromkeys(k for v in self._val for k in v if k != "n"):
            rows = [v for v in self._val if k in v]
            value = sum(v[k] * v["n"] for v in rows) / sum(v["n"] for v in rows)
            self.log(f"val/{k}", value, prog_bar=True, sync_dist=True)
        self._val.clear()

    def optim_settings(self):
        sc: StageConfig = self.config.stage(self.stage)
        return sc.lr, sc.weight_decay, sc.min_lr

    def wall_clock_plan(self):
        sc: StageConfig = self.config.stage(self.stage)
        return (sc.lr, sc.max_minutes, sc.warmup_fraction, sc.min_lr / sc.lr) if sc.schedule == "time_cosine" else None

    def configure_optimizers(self):
        sc: StageConfig = self.config.stage(self.stage)
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 else decay).append(p)
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": sc.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=sc.lr)
        if sc.schedule in ("constant", "time_cosine"):
            return opt  # time_cosine: WallClockLR sets the rate before every step
        if sc.schedule == "cosine_restarts":
            sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
                opt, T_0=sc.restart_steps, T_mult=sc.restart_mult, eta_min=sc.min_lr)
        else:
            total = max(1, int(self.trainer.estimated_stepping_batches))
            warm = int(total * sc.warmup_fraction)
            floor = sc.min_lr / sc.lr

            def lam(step: int) -> float:
                if step < warm:
                    return (step + 1) / warm
                frac = min(1.0, (step - warm) / max(1, total - warm))
                return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * frac))

            sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


# --------------------------------------------------------------------------------------------------
# Running stages


def stage_dir(run_dir: str | Path, stage: str) -> Path:
    stage_key(stage)
    return Path(run_dir) / f"stage-{stage}"


def resolve_model_config(config: KSRTrainConfig) -> tuple[KSRNetConfig, Any]:
    """The architecture to train and the recognizer to put in it: ``model`` with its recognizer
    config replaced by that of ``recognizer_weights`` (when set). Returns ``(config, Parseq | None)``."""
    if config.recognizer_weights is None:
        return config.model, None
    import dataclasses

    from ksrnet.weights import ModelLoadError, load_model

    try:
        recognizer, meta = load_model(config.recognizer_weights)
    except ModelLoadError as exc:
        raise ModelLoadError(f"recognizer_weights: {exc}") from None
    rc = ParseqConfig.from_dict(meta["config"])
    try:
        model_config = dataclasses.replace(config.model, recognizer=rc)
    except ValueError as exc:
        raise ConfigError(f"recognizer_weights {config.recognizer_weights} do not fit model: {exc}") from exc
    return model_config, recognizer


def _init_source(config: KSRTrainConfig, run_dir: Path, stage: str) -> Path | None:
    """Weights a fresh stage starts from: the latest earlier stage's of this run, else init_weights."""
    for earlier in reversed(STAGES[:STAGES.index(stage)]):
        p = stage_dir(run_dir, earlier) / KSRNET_WEIGHTS_NAME
        if p.is_file():
            return p
    return resolve_ksrnet(config.init_weights) if config.init_weights else None


HAM_UNTRAINED_STAGES = ("1", "1b", "2")


def _load_init(module: KSRStageModule, source: Path, skip_recognizer: bool) -> None:
    state, meta = load_ksrnet_state(source)
    saved_config = KSRNetConfig.from_dict(meta["config"])
    saved, mine = saved_config.to_dict(), module.model_config.to_dict()
    if saved_config.uses_ham == module.model_config.uses_ham:
        # The variant only picks stage 3's losses between v2 and final (same parts): either one's
        # earlier stages are a valid start, which is how the ablation compares their losses alone.
        saved.pop("variant"), mine.pop("variant")
    elif saved_config.uses_ham and meta.get("stage") in HAM_UNTRAINED_STAGES:
        # HAM is frozen at its initialisation before stage 3, where it equals the plain flow warp of
        # v1: a v2/final run's stage 1-2 weights without HAM are then exactly a v1 start.
        saved.pop("variant"), mine.pop("variant")
        state = {k: v for k, v in state.items() if not k.startswith("ham.")}
    # No weight depends on the input grid (convolutions, and attention within windows with relative
    # positions, padded to any size), so weights trained on one grid are a valid start on another;
    # load_state_dict still refuses any shape that differs.
    saved.pop("lr_size"), mine.pop("lr_size")
    if skip_recognizer:
        saved.pop("recognizer"), mine.pop("recognizer")
        state = {k: v for k, v in state.items() if not k.startswith("recognizer.")}
    if saved != mine:
        raise ValueError(f"{source} was built with another KSR-Net config than this run's model")
    missing, unexpected = module.model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (skip_recognizer and k.startswith("recognizer."))]
    if missing or unexpected:
        raise ValueError(f"{source} does not match the model: missing {missing}, unexpected {unexpected}")


def build_stage_data(config: KSRTrainConfig, model_config: KSRNetConfig, stage: str):
    d = config.data
    common = dict(lr_size=model_config.lr_size, upscale=model_config.upscale, ref_policy=model_config.ref_index,
                  num_frames=d.num_frames, supersample=d.target_supersample)
    # Each stage draws its own stream of tracks.
    sources = []
    if d.tracks_per_epoch:
        sources.append(KSRTrackDataset(d.tracks_per_epoch, seed=d.seed + 7919 * STAGES.index(stage),
                                       preset=d.preset, codec=d.codec, **common))
    train_part, val_part = lrlpr_parts(d.lrlpr_root, d.lrlpr_val_fraction)
    if d.lrlpr_root:
        sources.append(KSRFolderDataset(d.lrlpr_root, seed=d.seed, **common, **train_part))
    train = sources[0] if len(sources) == 1 else Interleave(sources)
    if stage == "3" and val_part is not None:
        return train, KSRFolderDataset(d.lrlpr_root, seed=d.seed, **common, **val_part)
    if stage == "3" and d.val_lrlpr_root:
        return train, KSRFolderDataset(d.val_lrlpr_root, seed=d.seed, **common)
    val = (KSRTrackDataset(d.val_tracks, seed=d.val_seed, preset=d.val_preset, fixed=True, **common)
           if d.val_tracks else None)
    return train, val


def train_ksrnet(config: KSRTrainConfig, run_dir: str | Path, stage: str, *, resume: bool = True,
                 progress: bool = True, callbacks: Sequence[L.Callback] = ()) -> Path:
    """Run one stage into ``run_dir/stage-<stage>``; returns the path of its exported weights.

    Resumes from the stage's ``last.ckpt`` when ``resume`` and it exists; otherwise starts from the
    latest earlier stage's weights in ``run_dir`` (or ``config.init_weights``). Writes the stage's
    ``ksrnet.safetensors`` + ``ksrnet.json`` and copies them to ``run_dir`` unless a later stage has
    weights there (``run_dir``'s copy stays that of the latest stage). ``callbacks`` are added
    to the Trainer's."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    sc = config.stage(stage)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.yaml"
    if resume:
        saved = check_resumable(config, run_dir, ("model", "recognizer_weights"), "model or recognizer")
        if saved is not None:
            check_schedule_kept(saved.stage(stage).schedule, sc.schedule, stage_key(stage),
                                stage_dir(run_dir, stage) / "checkpoints" / "last.ckpt")
    if stage == "3" and config.recognizer_weights is None:
        raise ConfigError("stage 3 needs recognizer_weights (its perceptual / semantic losses read the SR image)")
    # Before config.yaml is written: a mistyped recognizer_weights saved there made the corrected
    # config's rerun refused as "another model or recognizer".
    model_config, recognizer = resolve_model_config(config)
    blocks, depth = config.losses.perceptual_blocks, max(model_config.recognizer.enc_depth, 1)
    if blocks and max(blocks) >= depth:  # else refused only when stage 3 starts, after the other stages
        raise ConfigError(f"losses.perceptual_blocks {blocks}: the recognizer's encoder has {depth} block(s), "
                          f"indices 0..{depth - 1}")
    sdir = stage_dir(run_dir, stage)
    L.seed_everything(config.data.seed + STAGES.index(stage), workers=True, verbose=False)
    module = KSRStageModule(config, stage, model_config)
    ckpt_dir = sdir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    resuming = resume and last.exists()
    if not resuming:
        source = _init_source(config, run_dir, stage)
        if source is not None:
            _load_init(module, source, skip_recognizer=recognizer is not None)
    if recognizer is not None:
        module.model.recognizer.load_state_dict(recognizer.state_dict())
    # Only now: a model refused by init_weights, saved as the run's, made the corrected rerun refused.
    config.save(config_path)
    sdir.mkdir(parents=True, exist_ok=True)

    train_data, val_data = build_stage_data(config, model_config, stage)
    write_validation_list(run_dir, val_data)
    t = config.trainer
    train_data = ResumableEpoch(train_data, t.batch_tracks)
    loader_args = dict(batch_size=t.batch_tracks, num_workers=config.data.num_workers, persistent_workers=False)
    train_loader = DataLoader(train_data, **loader_args)
    val_loader = DataLoader(val_data, **loader_args) if val_data is not None else None

    periodic = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0,
                               every_n_train_steps=t.checkpoint_every_n_steps, enable_version_counter=False)
    cbs: list[L.Callback] = [periodic, _EpochSetter(train_data), DataWaitMeter(), *callbacks]
    if val_loader is not None:
        monitor, mode = {"1": ("val/epe", "min"), "1b": ("val/epe", "min"),
                         "2": ("val/psnr", "max"), "3": ("val/rr", "max")}[stage]
        cbs.append(ModelCheckpoint(dirpath=ckpt_dir, save_top_k=1, monitor=monitor, mode=mode,
                                   filename="best-{epoch}-{step}"))
    world = t.devices * t.num_nodes
    trainer = L.Trainer(
        max_epochs=sc.max_epochs,
        max_steps=sc.max_steps,
        max_time={"minutes": sc.max_minutes} if sc.max_minutes else None,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy="ddp" if world > 1 else "auto",
        precision=_precision(t.precision, t.accelerator),
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip or None,
        callbacks=cbs,
        logger=CSVLogger(sdir, name="logs"),
        default_root_dir=sdir,
        enable_progress_bar=progress,
        enable_model_summary=progress,
        log_every_n_steps=t.log_every_n_steps,
        num_sanity_val_steps=0,
        limit_val_batches=1.0 if val_loader is not None else 0,
    )
    if not resume:
        discard_checkpoints(ckpt_dir)
    trainer.fit(module, train_loader, val_loader, ckpt_path=str(last) if resuming else None)
    if trainer.interrupted:
        raise RuntimeError(f"stage {stage} was interrupted; run it again to resume from {last}")
    trainer.save_checkpoint(last)  # a finished stage's last.ckpt holds its final step
    out = sdir / KSRNET_WEIGHTS_NAME
    if trainer.is_global_zero:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if not metrics and module.only_reloaded():  # a finished stage re-exported: keep its figures
            metrics = previous_metadata(out).get("metrics") or {}
        extra = {"stage": stage, "global_step": int(trainer.global_step), "metrics": metrics,
                 "recognizer_weights": config.recognizer_weights}
        save_ksrnet(module.model, model_config, out, extra)
        if not _later_stage_weights(run_dir, stage):  # rerunning stage 1 replaced a finished run's stage 3
            for src in (out, out.with_suffix(".json")):
                atomic_write(run_dir / src.name, lambda p, src=src: shutil.copyfile(src, p))
    return out


def _later_stage_weights(run_dir: Path, stage: str) -> list[str]:
    """Stages after ``stage`` (in ``STAGES`` order) whose weights are in ``run_dir``."""
    return [s for s in STAGES[STAGES.index(stage) + 1:] if (stage_dir(run_dir, s) / KSRNET_WEIGHTS_NAME).is_file()]


def run_stages(config: KSRTrainConfig | str | Path, run_dir: str | Path,
               stages: Sequence[str] = STAGES, *, resume: bool = True, progress: bool = True,
               **trainer_overrides: Any) -> Path:
    """Run ``stages`` in order (each starts from the previous one's weights in ``run_dir``) and
    return the final weights (``run_dir/ksrnet.safetensors``; the last stage run's own file when a
    later stage's weights are in ``run_dir``). ``config``: a KSRTrainConfig or a
    YAML path; ``trainer_overrides`` replace fields of its ``trainer`` section (``devices=2,
    num_nodes=1``, ...) for the CLI's flags. A finished stage rerun with ``resume`` only reloads its
    last checkpoint and re-exports the same weights."""
    cfg = config if isinstance(config, KSRTrainConfig) else KSRTrainConfig.load(config)
    if trainer_overrides:
        cfg = cfg.replace("trainer", **trainer_overrides)
    stages = tuple(stages)
    for s in stages:
        stage_key(s)
    if list(stages) != sorted(stages, key=STAGES.index):
        raise ConfigError(f"stages must be in the order {STAGES}, got {stages}")
    out = None
    for s in stages:
        out = train_ksrnet(cfg, run_dir, s, resume=resume, progress=progress)
    if out is None:
        raise ConfigError("no stage to run")
    return out if _later_stage_weights(Path(run_dir), stages[-1]) else Path(run_dir) / KSRNET_WEIGHTS_NAME
