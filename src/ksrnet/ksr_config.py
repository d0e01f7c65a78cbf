"""KSR-Net training configuration: frozen dataclasses loaded from YAML, validated, saved beside runs.

The architecture is a :class:`ksrnet.models.ksrnet.KSRNetConfig` (``model`` section: a preset, the
variant, and overrides of any of its fields or sub-config fields); the rest says what the data,
the trainer, the losses and each training stage need. Unknown keys are errors, as in
:mod:`ksrnet.train_config`, so a typo in a YAML file never silently does nothing.

Stages (see :mod:`ksrnet.ksr_training` for what each trains): ``"1"`` alignment pre-training on
synthetic flow ground truth, ``"1b"`` photometric fine-tuning of the flow, ``"2"`` restoration
warm-up, ``"3"`` end-to-end. Each has its own optimiser/schedule section (``stage1``, ``stage1b``,
``stage2``, ``stage3``); keys given in YAML override that stage's defaults (``STAGE_DEFAULTS``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ksrnet.models.ksrnet import KSRNetConfig, PRESET_NAMES, _SUBCONFIGS
from ksrnet.train_config import ConfigError, build_section, check_track_source, load_yaml_mapping, mapping_section

STAGES: tuple[str, ...] = ("1", "1b", "2", "3")
SCHEDULES = ("cosine", "cosine_restarts", "constant", "time_cosine")
PRECISIONS = ("auto", "32", "bf16-mixed", "16-mixed")


def stage_key(stage: str) -> str:
    """YAML section / attribute of a stage: ``"1b"`` -> ``"stage1b"``."""
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    return f"stage{stage}"


@dataclass(frozen=True)
class KSRDataConfig:
    """On-the-fly synthetic tracks (``ksrnet.synth.dataset.generate_track``); each stage draws its
    own stream (seed offset by the stage) and every epoch new tracks. ``lrlpr_root``: labelled
    LRLPR-26 tracks mixed in (or alone, with ``tracks_per_epoch: 0``); see
    ``ksr_targets.folder_track_sample`` for what each stage learns from them. Stage 3 (which keeps
    the checkpoint that reads best) validates on real tracks where given: ``val_lrlpr_root``, or an
    ``lrlpr_val_fraction`` of ``lrlpr_root`` held out of every stage's training (as in the
    recognizer's config; stage 3 lists them in the run dir's val_tracks.txt). The flow and warm-up
    stages keep the synthetic validation: real tracks have no flow ground truth, nor always a
    rectified HR. ``frame_dropout``: in stages 2 and 3, the share of training tracks whose
    supporting frames are thinned to a random, balanced subset, possibly none or all of them
    (``ksr_training.thinned_frame_mask``), so that the restoration also learns to work from fewer
    frames; validation always sees every frame."""

    tracks_per_epoch: int = 4000
    lrlpr_root: str | None = None
    val_lrlpr_root: str | None = None
    lrlpr_val_fraction: float = 0.0
    preset: str = "mix"
    codec: str | None = None  # force a codec ("none", "jpeg", ...); None = the preset's mix
    num_frames: int = 5
    seed: int = 0
    val_tracks: int = 64  # 0 = no validation
    val_preset: str = "hard"
    val_seed: int = 1_000_003
    num_workers: int = 1
    frame_dropout: float = 0.0
    # The SR target is rendered on a grid this many times finer than the SR grid and box-averaged
    # (the canonical plate is point-sampled; the plate's height shrinks up to ~3x under pitch).
    target_supersample: int = 2

    def __post_init__(self):
        check_track_source(self, tracks="tracks_per_epoch", preset="preset", frames="num_frames")
        if self.val_tracks < 0:
            raise ValueError("val_tracks must be >= 0")
        if self.target_supersample < 1:
            raise ValueError("target_supersample must be >= 1")
        if not 0.0 <= self.frame_dropout <= 1.0:
            raise ValueError(f"frame_dropout must be in [0, 1], got {self.frame_dropout}")
        from ksrnet.synth.degrade import CODECS

        if self.codec is not None and self.codec not in CODECS:  # else only refused once Lightning has started
            raise ValueError(f"codec must be one of {CODECS} or null, got {self.codec!r}")


@dataclass(frozen=True)
class KSRTrainerConfig:
    batch_tracks: int = 8
    precision: str = "auto"  # auto = bf16-mixed where the hardware supports it, else 32
    accumulate_grad_batches: int = 1
    devices: int = 1
    num_nodes: int = 1
    accelerator: str = "auto"
    checkpoint_every_n_steps: int = 100
    gradient_clip: float = 1.0
    log_every_n_steps: int = 10

    def __post_init__(self):
        if min(self.batch_tracks, self.accumulate_grad_batches, self.devices, self.num_nodes,
               self.checkpoint_every_n_steps, self.log_every_n_steps) < 1:
            raise ValueError("batch_tracks, accumulate_grad_batches, devices, num_nodes, "
                             "checkpoint_every_n_steps, log_every_n_steps must be >= 1")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}")
        if self.gradient_clip < 0:
            raise ValueError("gradient_clip must be >= 0 (0 = off)")


@dataclass(frozen=True)
class LossConfig:
    """Loss weights (the Charbonnier pixel loss and the stage-1 endpoint error have weight 1)."""

    charbonnier_eps: float = 1e-3
    edge_weight: float = 0.5  # gradient-profile loss: stage 2, and stage 3 of "final"
    perceptual_weight: float = 0.1  # recognizer-encoder features: stage 3 of v1 / v2
    perceptual_blocks: list | None = None  # encoder blocks compared (None = all)
    semantic_weight: float = 0.05  # frozen recognizer's CE on the SR image: stage 3 of "final"
    label_smoothing: float = 0.0  # of the semantic CE
    smoothness_weight: float = 0.1  # stage 1b
    smoothness_edge_weight: float = 10.0  # edge-aware smoothness (0 = plain)
    fb_alpha: float = 0.01  # forward-backward consistency (stage 1b's mask)
    fb_beta: float = 0.5

    def __post_init__(self):
        for name in ("edge_weight", "perceptual_weight", "semantic_weight", "label_smoothing",
                     "smoothness_weight", "smoothness_edge_weight", "fb_alpha"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if not self.charbonnier_eps > 0 or not self.fb_beta > 0:
            raise ValueError("charbonnier_eps and fb_beta must be > 0")
        if self.perceptual_blocks is not None:
            if (not isinstance(self.perceptual_blocks, list) or not self.perceptual_blocks
                    or any(not isinstance(b, int) or isinstance(b, bool) or b < 0 for b in self.perceptual_blocks)):
                raise ValueError("perceptual_blocks must be a non-empty list of block indices, or null")
        if self.label_smoothing >= 1:
            raise ValueError("label_smoothing must be < 1")


@dataclass(frozen=True)
class StageConfig:
    """Length, optimiser (AdamW) and schedule of one stage. Steps are optimiser steps.

    ``cosine``: linear warm-up over ``warmup_fraction`` of the planned steps, then a cosine from
    ``lr`` to ``min_lr``. ``cosine_restarts``: ``torch.optim.lr_scheduler.CosineAnnealingWarmRestarts``
    from ``lr`` to ``min_lr``, first period ``restart_steps``, each next one ``restart_mult`` times
    longer (the seed's stage 3: 2e-4 -> 1e-7). ``constant``: ``lr`` throughout. ``time_cosine``: like
    ``cosine`` but over the wall-clock budget ``max_minutes`` (needed when minutes, not epochs, end
    the stage: the planned step count is then unknown).
    """

    max_epochs: int = 10
    max_steps: int = -1  # -1: no step limit (max_epochs / max_minutes end the stage)
    max_minutes: float | None = None
    lr: float = 5e-4
    min_lr: float = 1e-7
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_fraction: float = 0.05
    restart_steps: int = 1000
    restart_mult: int = 1

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}")
        if self.max_epochs < 1 or (self.max_steps != -1 and self.max_steps < 1):
            raise ValueError("max_epochs must be >= 1 and max_steps >= 1 (or -1)")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError("max_minutes must be positive")
        if self.schedule == "time_cosine" and self.max_minutes is None:
            raise ValueError("schedule time_cosine needs max_minutes")
        if not 0 < self.lr < 1 or not 0 <= self.min_lr <= self.lr or self.weight_decay < 0:
            raise ValueError("need 0 < lr < 1, 0 <= min_lr <= lr and weight_decay >= 0")
        if not 0 <= self.warmup_fraction < 1 or self.restart_steps < 1 or self.restart_mult < 1:
            raise ValueError("need warmup_fraction in [0, 1), restart_steps >= 1, restart_mult >= 1")


STAGE_DEFAULTS: dict[str, StageConfig] = {
    "1": StageConfig(lr=1e-3, min_lr=1e-6),
    "1b": StageConfig(lr=2e-4, min_lr=1e-6, max_epochs=5),
    "2": StageConfig(lr=5e-4, min_lr=1e-6),
    "3": StageConfig(lr=2e-4, min_lr=1e-7, schedule="cosine_restarts", warmup_fraction=0.0),
}


def build_model_config(data: Any, where: str = "model") -> KSRNetConfig:
    """``{preset, variant, <KSRNetConfig field>: value, <sub-config>: {field: value}}`` -> config.

    Sub-config overrides are merged over the preset's (``flow: {base_channels: 4}`` changes only
    that field); a complete dict (what :meth:`KSRTrainConfig.save` writes) rebuilds it exactly."""
    model = mapping_section(data, where)
    preset = model.pop("preset", "tiny")
    variant = model.pop("variant", "final")
    allowed = {f.name for f in fields(KSRNetConfig)} - {"variant"}
    unknown = sorted(set(model) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed | {'preset', 'variant'})}")
    if preset not in PRESET_NAMES:
        raise ConfigError(f"{where}.preset must be one of {PRESET_NAMES}, got {preset!r}")
    try:
        base = KSRNetConfig.preset(preset, variant=variant)
        overrides: dict[str, Any] = {}
        for name, value in model.items():
            if name in _SUBCONFIGS:
                sub = mapping_section(value, f"{where}.{name}")
                overrides[name] = _SUBCONFIGS[name].from_dict({**getattr(base, name).to_dict(), **sub})
            else:
                overrides[name] = value
        return dataclasses.replace(base, **overrides)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


@dataclass(frozen=True)
class KSRTrainConfig:
    model: KSRNetConfig = field(default_factory=KSRNetConfig.tiny)
    # The PARSeq recognizer inside KSR-Net (``ksrnet.weights.load_model``: a shipped name, a
    # .safetensors file or a run dir). Its architecture replaces ``model.recognizer``. Loaded at
    # the start of every stage (it is never trained); stage 3 needs it (perceptual / semantic
    # losses); null keeps whatever the stage starts from (random for a fresh run).
    recognizer_weights: str | None = "parseq-tiny"
    # A KSR-Net weights file (or run dir) the first stage run in a fresh run dir starts from, when
    # no earlier stage of this run dir has written weights.
    init_weights: str | None = None
    data: KSRDataConfig = field(default_factory=KSRDataConfig)
    trainer: KSRTrainerConfig = field(default_factory=KSRTrainerConfig)
    losses: LossConfig = field(default_factory=LossConfig)
    stage1: StageConfig = STAGE_DEFAULTS["1"]
    stage1b: StageConfig = STAGE_DEFAULTS["1b"]
    stage2: StageConfig = STAGE_DEFAULTS["2"]
    stage3: StageConfig = STAGE_DEFAULTS["3"]

    def stage(self, name: str) -> StageConfig:
        return getattr(self, stage_key(name))

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "KSRTrainConfig":
        data = dict(data or {})
        sections = {"model", "recognizer_weights", "init_weights", "data", "trainer", "losses"}
        sections |= {stage_key(s) for s in STAGES}
        unknown = sorted(set(data) - sections)
        if unknown:
            raise ConfigError(f"unknown section(s) {unknown}; allowed: {sorted(sections)}")
        for key in ("recognizer_weights", "init_weights"):
            if key in data and data[key] is not None and not isinstance(data[key], str):
                raise ConfigError(f"{key}: expected a path or name, got {data[key]!r}")
        stages = {}
        for s in STAGES:
            key = stage_key(s)
            given = mapping_section(data.get(key), key)
            known = {f.name for f in fields(StageConfig)}
            if set(given) - known:
                raise ConfigError(f"{key}: unknown key(s) {sorted(set(given) - known)}; allowed: {sorted(known)}")
            stages[key] = build_section(StageConfig, {**dataclasses.asdict(STAGE_DEFAULTS[s]), **given}, key)
        return cls(
            model=build_model_config(data.get("model")),
            recognizer_weights=data.get("recognizer_weights", cls.recognizer_weights),
            init_weights=data.get("init_weights"),
            data=build_section(KSRDataConfig, data.get("data"), "data"),
            trainer=build_section(KSRTrainerConfig, data.get("trainer"), "trainer"),
            losses=build_section(LossConfig, data.get("losses"), "losses"),
            **stages,
        )

    @classmethod
    def load(cls, path: str | Path) -> "KSRTrainConfig":
        return cls.from_dict(load_yaml_mapping(path))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "model": self.model.to_dict(),
            "recognizer_weights": self.recognizer_weights,
            "init_weights": self.init_weights,
            "data": dataclasses.asdict(self.data),
            "trainer": dataclasses.asdict(self.trainer),
            "losses": dataclasses.asdict(self.losses),
        }
        for s in STAGES:
            d[stage_key(s)] = dataclasses.asdict(self.stage(s))
        return d

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def replace(self, section: str, **changes) -> "KSRTrainConfig":
        """A copy with some fields of one section changed: ``cfg.replace("trainer", devices=2)``."""
        return dataclasses.replace(self, **{section: dataclasses.replace(getattr(self, section), **changes)})
