"""Lightning wrappers that train the recognizer; the models themselves stay free of training code."""

from __future__ import annotations

import math
import time
import zlib
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ksrnet.data_wait import DataWaitMeter
from ksrnet.infer import select_frames
from ksrnet.models.baselines import fuse_product
from ksrnet.models.parseq import Parseq, ParseqConfig, adapt_to_config, layout_log_probs, decode_constrained, sample_permutations
from ksrnet.plates import LAYOUTS, Tokenizer, layout_masks
from ksrnet.preprocess import frames_to_uint8_tensor, unit_range
from ksrnet.recrop import frame_quads, recrop_frames
from ksrnet.train_config import TrainConfig, check_resumable, check_schedule_kept
from ksrnet.track_dataset import ResumableEpoch, per_rank_count
from ksrnet.tracks import Track


class RecognizerSamples(IterableDataset):
    """Tracks (synthetic or read from disk) as (frames, targets, layout) tensors for the recognizer.

    With fewer ``frames_per_track`` than a track has, training takes that many of its frames at
    random (per seed, epoch and track), validation the last ones, as ``ksrnet predict --frames N``
    reads. Always the first ones, as before, trained a 2-frame recipe on the two farthest frames
    only, which read worst (44.7 and 48.5 % against 53.8 % for the last; benchmarks/RESULTS.md)."""

    def __init__(self, tracks: IterableDataset, config: TrainConfig, *, random_frames: bool = True,
                 echo: int = 1, echo_buffer: int = 1024):
        self.tracks = tracks
        self.height = config.model.img_h
        self.width = config.model.img_w
        self.frames_per_track = config.data.frames_per_track
        self.tokenizer = Tokenizer()
        self.seed, self.epoch, self.random_frames = config.data.seed, 0, random_frames
        self.echo, self.echo_buffer = echo, echo_buffer
        # Re-cropping is a training augmentation: validation (random_frames=False) reads tracks as made.
        self.recrop_prob = config.data.recrop_prob if random_frames else 0.0
        self.recrop_margin = tuple(config.data.recrop_margin)

    def __len__(self) -> int:
        # Per DDP rank: the full count made a W-GPU run end at 1/W of its one-cycle schedule, never annealed.
        return per_rank_count(len(self.tracks)) * self.echo

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.tracks, "set_epoch"):
            self.tracks.set_epoch(epoch)

    def frames_of(self, track, copy: int = 0) -> list:
        """The frames a track trains on; each echoed copy of it draws its own (copy 0 as without echo),
        and with ``recrop_prob`` its own re-crop (ksrnet.recrop)."""
        k, frames = self.frames_per_track, list(track.lr)
        indices = list(range(len(frames)))
        key = [self.seed, self.epoch, zlib.crc32(track.track_id.encode())] + ([copy] if copy else [])
        if k >= len(frames) or not self.random_frames:
            indices = select_frames(indices, k)
        else:
            rng = np.random.default_rng(key)
            indices = sorted(int(i) for i in rng.choice(len(frames), k, replace=False))
        chosen = [frames[i] for i in indices]
        if self.recrop_prob > 0:
            # A stream of its own: the frame choice above stays what it was without re-cropping.
            rng = np.random.default_rng(key + [0x7EC0])
            quads = frame_quads(track)
            if quads is not None and rng.random() < self.recrop_prob:
                chosen = recrop_frames(chosen, [quads[i] for i in indices], rng, self.recrop_margin)
        return chosen

    def sample(self, track, copy: int = 0):
        """(frames, targets, layout index); the frames uint8, scaled by the module once the batch is
        on its device (RecognizerModule.on_after_batch_transfer): a float batch of 128 tracks was
        31 MB for every worker to fill and hand over, a uint8 one is 8 MB."""
        return (
            frames_to_uint8_tensor(self.frames_of(track, copy), self.height, self.width),
            torch.tensor(self.tokenizer.encode(track.text), dtype=torch.long),
            LAYOUTS.index(track.layout),
        )

    def __iter__(self):
        if self.echo == 1:
            for track in self.tracks:
                yield self.sample(track)
            return
        for track, copy in self.echoed(self.tracks):
            yield self.sample(track, copy)

    def echoed(self, tracks):
        """(track, copy) pairs: every track `echo` times, drawn at random from a buffer of about
        `echo_buffer` tracks, so that a batch (consecutive samples of one worker) rarely holds one
        track twice. Seeded per seed, epoch and worker: a resumed epoch replays the same stream, which
        ResumableEpoch relies on. Only what a sample needs is kept (frames, text, layout, and the plate
        corners when re-cropping)."""
        info = get_worker_info()
        rng = np.random.default_rng([self.seed, self.epoch, info.id if info else 0, 0xEC40])
        buffer: list[list] = []  # [slim track, copies yielded]

        def take():
            i = int(rng.integers(len(buffer)))
            entry = buffer[i]
            copy = entry[1]
            entry[1] += 1
            if entry[1] == self.echo:  # its last copy: drop it (swap with the last entry)
                buffer[i] = buffer[-1]
                buffer.pop()
            return entry[0], copy

        for track in tracks:
            quads = frame_quads(track) if self.recrop_prob > 0 else None
            names = [f"{i}" for i in range(len(track.lr))] if quads is not None else []
            slim = Track(track_id=track.track_id, lr=list(track.lr), text=track.text, layout=track.layout,
                         lr_names=names, corners=dict(zip(names, quads or [])))
            buffer.append([slim, 0])
            if len(buffer) >= self.echo_buffer:
                # As many draws as one track brings: the buffer stays near its size.
                for _ in range(self.echo):
                    yield take()
        while buffer:
            yield take()


def collate_tracks(batch):
    """Keep the track structure: frames (N_frames, 3, H, W), per-frame targets, and track sizes."""
    frames = torch.cat([b[0] for b in batch])
    counts = [b[0].shape[0] for b in batch]
    targets = torch.cat([b[1][None].expand(n, -1) for b, n in zip(batch, counts)])
    layouts = torch.cat([torch.full((n,), b[2], dtype=torch.long) for b, n in zip(batch, counts)])
    return frames, targets, layouts, torch.tensor(counts)


def time_cosine_scale(elapsed_s: float, max_minutes: float, warmup_fraction: float, floor: float) -> float:
    """Learning-rate multiplier of the wall-clock schedule: linear warm-up over ``warmup_fraction``
    of the time budget, then a cosine that reaches ``floor`` when the budget is spent."""
    frac = min(1.0, elapsed_s / (60.0 * max_minutes))
    warm = warmup_fraction
    scale = frac / warm if frac < warm else 0.5 * (1 + math.cos(math.pi * (frac - warm) / (1 - warm)))
    return max(scale, floor)


class WallClockLR:
    """LightningModule mixin for runs bounded by minutes rather than steps: the step count is unknown
    in advance, so a step-based cosine would never decay (or never finish warming up). Subclasses
    say what to follow in ``wall_clock_plan``; the elapsed time travels in checkpoints so a killed
    run resumes where its schedule stood."""

    _t0: float | None = None
    _elapsed_at_resume: float = 0.0

    def wall_clock_plan(self) -> tuple[float, float, float, float] | None:
        """(peak lr, budget in minutes, warm-up fraction, floor as a fraction of the peak), or None
        when the learning rate follows a step-based scheduler instead."""
        raise NotImplementedError

    def optim_settings(self) -> tuple[float, float, float | None]:
        """(peak lr, weight decay, absolute lr floor or None) of the config, which a resumed run
        applies over the checkpoint's (see reapply_optim_settings)."""
        raise NotImplementedError

    def on_train_start(self):
        if self._restored_step is not None:  # resumed: the checkpoint's lr / weight decay were restored
            lr, weight_decay, min_lr = self.optim_settings()
            # A wall-clock plan sets the rate before every step from the config: only the decay is stale.
            reapply_optim_settings(self.trainer.optimizers[0], self.lr_schedulers(),
                                   None if self.wall_clock_plan() else lr, weight_decay, min_lr)

    def on_train_batch_start(self, batch, batch_idx):
        plan = self.wall_clock_plan()
        if plan is None:
            return
        lr, minutes, warm, floor = plan
        if self._t0 is None:
            self._t0 = time.monotonic() - self._elapsed_at_resume
        scale = time_cosine_scale(time.monotonic() - self._t0, minutes, warm, floor)
        for group in self.trainer.optimizers[0].param_groups:
            group["lr"] = lr * scale

    def on_save_checkpoint(self, checkpoint):
        # No step run in this fit (a finished run re-run only reloads and re-saves last.ckpt): keep the
        # restored figure; 0.0 made a later extension of the run warm up and anneal again from scratch.
        checkpoint["ksrnet_elapsed_s"] = (time.monotonic() - self._t0 if self._t0 is not None
                                          else self._elapsed_at_resume)

    def on_load_checkpoint(self, checkpoint):
        self._elapsed_at_resume = float(checkpoint.get("ksrnet_elapsed_s", 0.0))
        self._restored_step = int(checkpoint.get("global_step", -1))

    _restored_step: int | None = None

    def only_reloaded(self) -> bool:
        """True after a fit that resumed a checkpoint and trained no step (a finished run run again):
        it validated nothing, so the figures saved beside its weights are still those to keep."""
        return self._restored_step is not None and self._restored_step == self.trainer.global_step


def reapply_optim_settings(optimizer, scheduler, lr: float | None, weight_decay: float,
                           min_lr: float | None = None) -> None:
    """Put the config's peak learning rate and weight decay back after Lightning restored a checkpoint.

    The restore replaces the param groups (lr, weight_decay and the anchors the schedulers read:
    initial_lr, max_lr, min_lr) and the schedulers' base_lrs with the checkpoint's, so a run resumed
    with a changed lr or weight_decay trained on under the old ones while config.yaml recorded the new.
    The schedule keeps its position; its learning rates are rescaled by new peak / old peak.
    ``lr`` None: the rate is set from the wall clock before every step (time_cosine). Group 0 is the
    decayed group (both modules' configure_optimizers), the others are never decayed.
    """
    groups = optimizer.param_groups
    groups[0]["weight_decay"] = weight_decay
    if lr is not None:
        old = groups[0].get("max_lr", groups[0].get("initial_lr", groups[0]["lr"]))  # onecycle / others / none
        ratio = lr / old
        for group in groups:
            for key in ("lr", "initial_lr", "max_lr", "min_lr"):
                if key in group:
                    group[key] *= ratio
        if scheduler is not None:
            scheduler.base_lrs = [b * ratio for b in scheduler.base_lrs]
    if min_lr is not None and hasattr(scheduler, "eta_min"):  # warm restarts: an absolute floor
        scheduler.eta_min = min_lr
    if scheduler is not None:
        scheduler._last_lr = [group["lr"] for group in groups]


def discard_checkpoints(ckpt_dir: Path) -> None:
    """Delete the checkpoints of the run a fresh start (resume off) replaces: its last.ckpt is
    overwritten anyway, and its best-*.ckpt stayed beside the new run's (named -v1), two runs mixed
    under one config.yaml."""
    for path in Path(ckpt_dir).glob("*.ckpt"):
        path.unlink(missing_ok=True)  # under DDP every rank runs this, on a shared folder


def previous_metadata(weights: Path) -> dict:
    """The JSON beside weights written earlier ({} when absent or unreadable)."""
    import json

    try:
        meta = json.loads(weights.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def product_track_loss(char_logits: torch.Tensor, targets: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each track's product-fused reading: per permutation, the per-slot
    log-probabilities of a track's frames (consecutive in the batch, ``counts`` per track) are
    summed and renormalised. char_logits (K, frames, slots, classes); targets (frames, slots), the
    same for every frame of a track."""
    k, n, s, c = char_logits.shape
    counts = counts.to(char_logits.device)
    track_of_frame = torch.repeat_interleave(torch.arange(len(counts), device=char_logits.device), counts)
    if track_of_frame.numel() != n:
        raise ValueError(f"counts add up to {track_of_frame.numel()} frames, the batch has {n}")
    logp = torch.log_softmax(char_logits.float(), dim=-1)
    summed = logp.new_zeros(k, len(counts), s, c).index_add_(1, track_of_frame, logp)
    first_frames = torch.cumsum(counts, 0) - counts
    track_targets = targets[first_frames].repeat(k, 1).reshape(-1)
    return F.cross_entropy(summed.reshape(-1, c), track_targets)  # cross_entropy renormalises the sum


class RecognizerModule(WallClockLR, L.LightningModule):
    def __init__(self, config: TrainConfig):
        super().__init__()
        self.config = config
        self.save_hyperparameters({"config": config.to_dict()})
        self.model = Parseq(config.model)
        self.register_buffer("masks", torch.from_numpy(layout_masks()), persistent=False)
        self._perm_gen = torch.Generator().manual_seed(config.data.seed)
        # Training-only head (blank = last class) read off the encoder's columns for the CTC loss.
        self.ctc_head = nn.Linear(config.model.embed_dim, config.model.num_classes + 1) \
            if config.optim.ctc_loss_weight > 0 else None
        self._val = []

    def on_after_batch_transfer(self, batch, dataloader_idx):
        frames, *rest = batch
        return (unit_range(frames), *rest)

    def training_step(self, batch, batch_idx):
        frames, targets, layouts, counts = batch
        perms = sample_permutations(self.config.model.num_perms, self.config.model.num_slots, self._perm_gen)
        memory = self.model.encode(frames)
        char_logits = self.model.plm_decode(memory, targets, perms.to(frames.device))
        layout_logits = self.model.layout_logits_from_memory(memory)
        k = char_logits.shape[0]
        char_loss = F.cross_entropy(
            char_logits.reshape(-1, char_logits.shape[-1]).float(),
            targets.repeat(k, 1).reshape(-1),
            label_smoothing=self.config.optim.label_smoothing,
        )
        layout_loss = F.cross_entropy(layout_logits.float(), layouts)
        loss = char_loss + self.config.optim.layout_loss_weight * layout_loss
        if self.config.optim.track_loss_weight > 0:
            track_loss = product_track_loss(char_logits, targets, counts)
            loss = loss + self.config.optim.track_loss_weight * track_loss
            self.log("train/track_loss", track_loss, batch_size=frames.shape[0])
        if self.ctc_head is not None:
            ctc_loss = self._ctc_loss(memory, targets)
            loss = loss + self.config.optim.ctc_loss_weight * ctc_loss
            self.log("train/ctc_loss", ctc_loss, batch_size=frames.shape[0])
        self.log_dict({"train/loss": loss, "train/char_loss": char_loss, "train/layout_loss": layout_loss},
                      prog_bar=True, batch_size=frames.shape[0])
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=frames.shape[0])
        return loss

    def _ctc_loss(self, memory: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        gh, gw = self.config.model.grid
        columns = memory.view(memory.shape[0], gh, gw, -1).mean(dim=1)  # (B, gw, D)
        logp = torch.log_softmax(self.ctc_head(columns).float(), dim=-1).transpose(0, 1)  # (gw, B, C+1)
        b, s = targets.shape
        return F.ctc_loss(logp, targets, torch.full((b,), gw, dtype=torch.long),
                          torch.full((b,), s, dtype=torch.long), blank=self.config.model.num_classes,
                          zero_infinity=True)

    def validation_step(self, batch, batch_idx):
        frames, targets, _, counts = batch
        out = self.model(frames, mode="nar")
        lp, llp = layout_log_probs(out.char_logits.float(), out.layout_logits.float(), self.masks)
        indices, _, _, _ = decode_constrained(lp, llp)
        frame_right = (indices == targets).all(-1)
        start = 0
        for n in counts.tolist():
            fused = fuse_product(out.char_logits[start:start + n], out.layout_logits[start:start + n], self.masks)
            track_right = bool((torch.tensor(fused.indices, device=targets.device) == targets[start]).all())
            self._val.append((frame_right[start:start + n].float().mean().item(), float(track_right)))
            start += n

    def on_validation_epoch_end(self):
        if not self._val:
            return
        arr = np.asarray(self._val)
        self.log("val/rr_frame", float(arr[:, 0].mean()), prog_bar=True, sync_dist=True)
        self.log("val/rr_track_product", float(arr[:, 1].mean()), prog_bar=True, sync_dist=True)
        self._val.clear()

    def optim_settings(self):
        o = self.config.optim
        return o.lr, o.weight_decay, None

    def wall_clock_plan(self):
        o = self.config.optim
        return (o.lr, self.config.trainer.max_minutes, o.warmup_fraction, 1e-3) if o.schedule == "time_cosine" else None

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            (no_decay if p.ndim < 2 or "pos" in name or "embed" in name else decay).append(p)
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.config.optim.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=self.config.optim.lr, betas=(0.9, 0.98),
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        if self.config.optim.schedule == "time_cosine":
            return opt  # the learning rate is set per step from the wall clock
        if self.config.optim.schedule == "onecycle":
            sched = _ResumableOneCycleLR(
                opt, max_lr=self.config.optim.lr, total_steps=total,
                pct_start=max(self.config.optim.warmup_fraction, 1e-3), anneal_strategy="cos",
            )
        else:
            warm = max(1, int(total * self.config.optim.warmup_fraction))
            lam = lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total)))
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class _ResumableOneCycleLR(torch.optim.lr_scheduler.OneCycleLR):
    """OneCycleLR that keeps the current run's plan when a checkpoint is restored.

    The stock load_state_dict also restores total_steps (and the phase boundaries derived from it)
    from the checkpoint, so a run resumed with more epochs (`ksrnet train --max-epochs N` on a
    finished run) failed at the first step past the old total. Only the position is restored here.
    """

    def load_state_dict(self, state_dict):
        super().load_state_dict({k: v for k, v in state_dict.items() if k not in ("total_steps", "_schedule_phases")})


class _EpochSetter(L.Callback):
    """Give every epoch fresh synthetic tracks (the track seeds depend on the epoch), and an epoch
    resumed part-way its remaining ones (the training source of either trainer, as ResumableEpoch)."""

    def __init__(self, dataset: ResumableEpoch):
        self.dataset = dataset

    def on_train_epoch_start(self, trainer, pl_module):
        self._set(trainer.current_epoch, 0)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        # The one hook between restoring a run and Lightning making the epoch's data iterator (and
        # starting its workers): on_train_epoch_start comes after that, and not at all for an epoch
        # resumed part-way, whose tracks were epoch 0's from the first one.
        progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress", {})
        done = progress.get("current", {}).get("processed", 0)
        if progress.get("is_last_batch", False):
            self._set(checkpoint["epoch"] + 1, 0)
        else:
            self._set(checkpoint["epoch"], done)

    def _set(self, epoch: int, done: int) -> None:
        self.dataset.set_epoch(epoch, done)


def _precision(setting: str, accelerator: str) -> str:
    if setting != "auto":
        return setting
    if torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32"


def build_datasets(config: TrainConfig):
    """Training and validation track sources as the config describes them."""
    from ksrnet.synth.dataset import SyntheticTrackDataset
    from ksrnet.track_dataset import FolderTrackDataset, Interleave, lrlpr_parts

    d = config.data
    sources = []
    if d.synth_tracks_per_epoch:
        sources.append(SyntheticTrackDataset(d.synth_tracks_per_epoch, seed=d.seed, preset=d.synth_preset,
                                             plate_face_prob=d.plate_face_prob))
    # The recognizer reads LR frames only: a track's HR frames must not decide whether it trains.
    folder = dict(seed=d.seed, require_labels=True, with_hr=False)
    train_part, val_part = lrlpr_parts(d.lrlpr_root, d.lrlpr_val_fraction)
    if d.lrlpr_root:
        sources.append(FolderTrackDataset(d.lrlpr_root, **folder, **train_part))
    train = sources[0] if len(sources) == 1 else Interleave(sources)
    if val_part is not None:
        val = FolderTrackDataset(d.lrlpr_root, **folder, **val_part)
    elif d.val_lrlpr_root:
        val = FolderTrackDataset(d.val_lrlpr_root, **folder)
    else:
        val = SyntheticTrackDataset(d.val_tracks, seed=d.val_seed, preset=d.val_preset, fixed=True)
    return (RecognizerSamples(train, config, echo=d.echo, echo_buffer=d.echo_buffer_tracks),
            RecognizerSamples(val, config, random_frames=False))


def write_validation_list(run_dir: Path, val_samples) -> None:
    """List real validation tracks in run_dir/val_tracks.txt (absolute paths), which every command
    that takes TRACKS reads as those tracks: `ksrnet eval runs/R/val_tracks.txt` scores them."""
    from ksrnet.track_dataset import FolderTrackDataset

    tracks = getattr(val_samples, "tracks", None)
    if isinstance(tracks, FolderTrackDataset):
        (run_dir / "val_tracks.txt").write_text("".join(f"{p.resolve()}\n" for p in tracks.paths), encoding="utf-8")


def initial_model(config: TrainConfig) -> Parseq | None:
    """The recognizer config.init_weights holds, fitted to config.model (None without init_weights)."""
    if not config.init_weights:
        return None
    from ksrnet.weights import ModelLoadError, load_model

    try:
        start, meta = load_model(config.init_weights)
    except ModelLoadError as exc:
        raise ModelLoadError(f"init_weights: {exc}") from None
    if ParseqConfig.from_dict(meta["config"]) != config.model:
        # Another input size resamples the position table; more blocks or layers start as the identity.
        try:
            start = adapt_to_config(start, config.model)
        except ValueError as exc:
            raise ValueError(f"init_weights {config.init_weights} were built with another model config: "
                             f"{exc} (only img_h / img_w may differ, and enc_depth / dec_depth / stem_channels may grow)") from None
    return start


def train(config: TrainConfig, run_dir: Path, *, resume: bool = True, progress: bool = True) -> Path:
    """Train the recognizer into run_dir; resumes from run_dir/checkpoints/last.ckpt when present.

    Returns the path of the exported weights (safetensors) of the final model.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from ksrnet.weights import save_model

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.yaml"
    # init_weights too: a run resumed from its last.ckpt never reads them, so a config meant to
    # continue the finished run's weights trained nothing (its time budget was spent) and exported them.
    saved = check_resumable(config, run_dir, ("model", "init_weights"), "model config or init_weights") \
        if resume else None
    last = run_dir / "checkpoints" / "last.ckpt"
    if saved is not None:
        check_schedule_kept(saved.optim.schedule, config.optim.schedule, "optim", last)
    # Before config.yaml is written: init_weights is a fixed section of the run dir, so a mistyped or
    # unfitting one saved there made the corrected config's rerun refused as "another init_weights".
    start = None if resume and last.exists() else initial_model(config)
    config.save(config_path)
    L.seed_everything(config.data.seed, workers=True, verbose=False)
    train_samples, val_samples = build_datasets(config)
    write_validation_list(run_dir, val_samples)
    t = config.trainer
    train_samples = ResumableEpoch(train_samples, t.batch_tracks)
    # No persistent workers: each worker holds its own copy of the dataset, made when it starts, so
    # persistent ones would never see _EpochSetter's set_epoch and replay epoch 0's tracks forever.
    loader_args = dict(batch_size=t.batch_tracks, collate_fn=collate_tracks, num_workers=config.data.num_workers,
                       persistent_workers=False)
    train_loader = DataLoader(train_samples, **loader_args)
    val_loader = DataLoader(val_samples, **loader_args)
    module = RecognizerModule(config)
    ckpt_dir = run_dir / "checkpoints"
    # Two callbacks: one monitored callback with a step trigger defers every save until the metric
    # exists, i.e. wrote nothing before the first validation (a run killed in epoch 0 lost it all).
    # last.ckpt: every N steps, always that name (no last-v1 when a run dir was moved or copied).
    periodic = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0,
                               every_n_train_steps=t.checkpoint_every_n_steps, enable_version_counter=False)
    best = ModelCheckpoint(dirpath=ckpt_dir, save_top_k=1, monitor="val/rr_track_product", mode="max",
                           filename="best-{epoch}-{step}")  # after each validation
    trainer = L.Trainer(
        max_epochs=t.max_epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy="ddp" if t.devices * t.num_nodes > 1 else "auto",
        precision=_precision(t.precision, t.accelerator),
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip,
        callbacks=[periodic, best, _EpochSetter(train_samples), DataWaitMeter()],
        logger=CSVLogger(run_dir, name="logs"),
        default_root_dir=run_dir,
        enable_progress_bar=progress,
        log_every_n_steps=10,
        max_time={"minutes": t.max_minutes} if t.max_minutes else None,
        num_sanity_val_steps=0,
    )
    if start is not None:
        module.model.load_state_dict(start.state_dict())
    if not resume:
        discard_checkpoints(ckpt_dir)
    trainer.fit(module, train_loader, val_loader, ckpt_path=str(last) if resume and last.exists() else None)
    if not trainer.interrupted:
        # ModelCheckpoint refreshes last.ckpt only every checkpoint_every_n_steps: without this, a
        # finished run's last.ckpt may predate its final steps, and re-running (or extending) it
        # would redo them on other data and overwrite model.safetensors.
        trainer.save_checkpoint(last)
    out = run_dir / "model.safetensors"
    if trainer.is_global_zero:
        rr = trainer.callback_metrics.get("val/rr_track_product")  # a tensor: str() gave "tensor(0.)"
        rr = None if rr is None else float(rr)
        if rr is None and module.only_reloaded():  # a finished run re-exported: keep its figure (was null)
            rr = previous_metadata(out).get("val_rr_track_product")
        save_model(module.model, config.model, out, extra={"val_rr_track_product": rr})
    return out
