"""Training configuration: frozen dataclasses loaded from YAML, validated, saved beside checkpoints.

The architecture lives in ParseqConfig (models/parseq.py); this file holds what the data, optimiser
and trainer need. Unknown keys are errors so a typo in a YAML file never silently does nothing.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ksrnet.models.parseq import ParseqConfig

PRESETS = ("easy", "medium", "hard", "mix")


class ConfigError(ValueError):
    pass


def mapping_section(data: Any, where: str) -> dict:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {data!r}")
    return dict(data)


def _has_type(value: Any, name: str) -> bool:
    if name in ("int", "float") and isinstance(value, bool):
        return False
    return isinstance(value, {"int": int, "float": (int, float), "str": str, "bool": bool,
                              "None": type(None)}.get(name, object))


def _check_types(cls, data: dict, where: str) -> None:
    """Name the field and the expected type (comparisons inside __post_init__ would only say
    "'<' not supported between 'int' and 'str'"). Annotations are strings here (postponed)."""
    for f in fields(cls):
        if f.name not in data:
            continue
        value, names = data[f.name], [t.strip() for t in str(f.type).split("|")]
        if not any(_has_type(value, n) for n in names):
            hint = ""
            if isinstance(value, str) and "float" in names:
                try:
                    float(value)
                    hint = " (YAML reads 1e-3 as text: write 1.0e-3 or 0.001)"
                except ValueError:
                    pass
            if names == ["str"] and isinstance(value, (int, float)) and not isinstance(value, bool):
                hint = f" (quote it: '{value}')"  # precision: 32 is read as a number
            raise ConfigError(f"{where}.{f.name}: expected {' or '.join(names)}, got {value!r}{hint}")
        # YAML's .inf / .nan pass every range check written as a comparison that fails (nan) or holds
        # (inf > 0): max_minutes: .inf crashed in Lightning's timer with a traceback.
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}.{f.name}: expected a finite number, got {value!r}")


def load_yaml_mapping(path: str | Path) -> dict:
    """The top-level mapping of a YAML config file ({} for an empty file); ConfigError otherwise."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return raw or {}


def build_section(cls, data: dict | None, where: str):
    data = mapping_section(data, where)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(names)}")
    _check_types(cls, data, where)
    try:
        return cls(**data)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def changed_sections(saved, config) -> list[str]:
    """The top-level fields (sections) in which two configs of one dataclass differ."""
    return [f.name for f in fields(config) if getattr(saved, f.name) != getattr(config, f.name)]


def check_resumable(config, run_dir: Path, fixed: tuple[str, ...], what: str):
    """Before a run continues in run_dir under config (a TrainConfig or KSRTrainConfig): refuse a run
    dir of the other kind, or one started with other `fixed` sections (`what` names them to the
    user); warn (not refuse: extending --max-epochs is a change too) of any other changed section,
    since config.yaml is then replaced by the new values. A run dir without config.yaml is fresh.
    Returns the saved config (None for a fresh run dir)."""
    import warnings

    config_path = Path(run_dir) / "config.yaml"
    if not config_path.exists():
        return None
    try:
        saved = type(config).load(config_path)
    except ConfigError as exc:  # e.g. a KSR-Net run dir: "unknown section(s)" alone blamed the user's config
        raise ConfigError(f"{run_dir} holds a run this command cannot resume ({exc}); use a new run dir") from None
    if any(getattr(saved, name) != getattr(config, name) for name in fixed):
        raise ValueError(f"{run_dir} holds a run with another {what}; use a new run dir")
    changed = changed_sections(saved, config)
    if changed:
        warnings.warn(f"resuming {run_dir} with changed config section(s) {', '.join(changed)}: training "
                      "continues under the new values, and its config.yaml now records them", stacklevel=3)
    return saved


def check_schedule_kept(saved: str, schedule: str, where: str, checkpoint: Path) -> None:
    """A checkpoint holds its schedule's state (or none): restored into another schedule's scheduler
    it failed at the first step (KeyError 'max_lr' for cosine -> onecycle) or was silently ignored."""
    if Path(checkpoint).exists() and saved != schedule:
        raise ValueError(f"{where}.schedule cannot change from {saved} to {schedule} in a run that resumes "
                         f"from {checkpoint}; use a new run dir (init_weights can start it from this run's weights)")


def check_track_source(data, *, tracks: str, preset: str, frames: str) -> None:
    """Checks shared by the recognizer's and KSR-Net's data sections, which name the same ideas
    differently (the field names are passed in, so the message names the user's key): known presets,
    some training data, workers and frames per track in range."""
    if getattr(data, preset) not in PRESETS or data.val_preset not in PRESETS:
        raise ValueError(f"{preset} and val_preset must be one of {PRESETS}, got {getattr(data, preset)!r} and "
                         f"{data.val_preset!r}")
    if getattr(data, tracks) < 0:
        raise ValueError(f"{tracks} must be >= 0")
    if getattr(data, tracks) == 0 and not data.lrlpr_root:
        raise ValueError(f"no training data: set {tracks} > 0 or lrlpr_root")
    if data.num_workers < 0 or not 1 <= getattr(data, frames) <= 16:
        raise ValueError(f"num_workers must be >= 0 and {frames} in 1..16")
    if not 0 <= data.lrlpr_val_fraction < 1:
        raise ValueError(f"lrlpr_val_fraction must be in [0, 1), got {data.lrlpr_val_fraction}")
    if data.lrlpr_val_fraction and not data.lrlpr_root:
        raise ValueError("lrlpr_val_fraction holds out tracks of lrlpr_root: set lrlpr_root too")
    if data.lrlpr_val_fraction and data.val_lrlpr_root:
        raise ValueError("validate on val_lrlpr_root or on an lrlpr_val_fraction of lrlpr_root, not both")


@dataclass(frozen=True)
class DataConfig:
    # Synthetic tracks are generated on the fly; an LRLPR-26 folder can be mixed in or used alone.
    synth_tracks_per_epoch: int = 20000
    synth_preset: str = "mix"
    lrlpr_root: str | None = None
    # Validation (which picks the best checkpoint) runs on synthetic tracks (val_tracks of val_preset)
    # unless real ones are given: a labelled folder of their own, or a fraction of lrlpr_root's tracks
    # held out of training (chosen by a hash of each track's path under it; listed in the run dir's
    # val_tracks.txt).
    val_lrlpr_root: str | None = None
    lrlpr_val_fraction: float = 0.0
    val_tracks: int = 500
    val_preset: str = "hard"
    val_seed: int = 1_000_003
    seed: int = 0
    num_workers: int = 1
    # Every frame of a generated track becomes a training image: generation is the costly part. Fewer
    # (on a CPU, where the network is the cost): training takes that many at random per track,
    # validation the last ones (training.RecognizerSamples).
    frames_per_track: int = 5
    # Data echoing: each training track is trained on `echo` times, drawn at random from a buffer of
    # `echo_buffer_tracks` tracks per worker, so that copies rarely share a batch. For a GPU that the
    # data workers cannot keep busy (both H100 runs of session 14: it sat idle between batches), it
    # gives more steps per generated track; a copy is worth less than a fresh track. 1 = off.
    echo: int = 1
    echo_buffer_tracks: int = 1024
    # Re-crop this share of training tracks around the plate (ksrnet.recrop), each frame with a margin
    # drawn from recrop_margin (fractions of the plate's width per side; negative cuts into the plate):
    # tight and edge-cutting crops, which the generator never makes. Tracks without corners (LRLPR-26
    # Scenario B) stay as they are. 0 = off.
    recrop_prob: float = 0.0
    recrop_margin: list = field(default_factory=lambda: [-0.02, 0.04])
    # Print this share of the synthetic training tracks in the plate faces alone (ours, the user's,
    # Open DIN: fonts.plate_faces). The other tracks keep the generator's own font draw, which prints
    # about 31 % of its plates in them and the rest in the package faces. Validation keeps the
    # generator's draw. 0 = off.
    plate_face_prob: float = 0.0

    def __post_init__(self):
        check_track_source(self, tracks="synth_tracks_per_epoch", preset="synth_preset", frames="frames_per_track")
        if self.val_tracks < 1:
            raise ValueError("val_tracks must be >= 1")
        for name in ("recrop_prob", "plate_face_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        m = self.recrop_margin
        if (not isinstance(m, list) or len(m) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in m)
                or not -0.1 <= m[0] <= m[1] <= 0.5):
            raise ValueError(f"recrop_margin must be [low, high] with -0.1 <= low <= high <= 0.5, got {m!r}")
        if not 1 <= self.echo <= 16 or self.echo_buffer_tracks < 1:
            raise ValueError(f"echo must be in 1..16 and echo_buffer_tracks >= 1, got {self.echo} and "
                             f"{self.echo_buffer_tracks}")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 7e-4
    weight_decay: float = 0.01
    # onecycle | cosine over the planned steps; time_cosine follows the wall-clock budget
    # (trainer.max_minutes) instead, so a run cut by its time limit still ends annealed.
    schedule: str = "onecycle"
    warmup_fraction: float = 0.075
    label_smoothing: float = 0.0
    layout_loss_weight: float = 0.5
    # Weight of an auxiliary CTC loss on the encoder's columns (a training-only head, not shipped):
    # it gives the encoder a direct, alignment-free reading signal from the first step.
    ctc_loss_weight: float = 0.0
    # Weight of a loss on each track's product-fused reading (the frames' per-slot log-probabilities
    # summed, as `ksrnet predict --fusion product` reads a track), beside the per-frame loss: it
    # trains frames on how their evidence adds up, which the per-frame loss never sees.
    track_loss_weight: float = 0.0

    def __post_init__(self):
        if self.schedule not in ("onecycle", "cosine", "time_cosine"):
            raise ValueError("schedule must be onecycle, cosine or time_cosine")
        if self.ctc_loss_weight < 0 or self.layout_loss_weight < 0 or self.track_loss_weight < 0:
            raise ValueError("loss weights must be >= 0")
        if not (0 < self.lr < 1) or self.weight_decay < 0 or not 0 <= self.warmup_fraction < 1:
            raise ValueError("lr must be in (0, 1), weight_decay >= 0, warmup_fraction in [0, 1)")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError("label_smoothing must be in [0, 1)")


@dataclass(frozen=True)
class TrainerConfig:
    max_epochs: int = 10
    batch_tracks: int = 32
    precision: str = "auto"  # auto = bf16-mixed where the hardware supports it, else 32
    accumulate_grad_batches: int = 1
    devices: int = 1
    num_nodes: int = 1
    accelerator: str = "auto"
    checkpoint_every_n_steps: int = 200
    gradient_clip: float = 1.0
    max_minutes: float | None = None

    def __post_init__(self):
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError("max_minutes must be positive")
        if min(self.max_epochs, self.batch_tracks, self.accumulate_grad_batches, self.devices, self.num_nodes) < 1:
            raise ValueError("max_epochs, batch_tracks, accumulate_grad_batches, devices, num_nodes must be >= 1")
        if self.precision not in ("auto", "32", "bf16-mixed", "16-mixed"):
            raise ValueError("precision must be auto, 32, bf16-mixed or 16-mixed")
        if self.checkpoint_every_n_steps < 1:  # 0 would write no last.ckpt at all: a crash lost the run
            raise ValueError("checkpoint_every_n_steps must be >= 1")
        if self.gradient_clip < 0:
            raise ValueError("gradient_clip must be >= 0 (0 = off)")


@dataclass(frozen=True)
class TrainConfig:
    model: ParseqConfig = field(default_factory=ParseqConfig.tiny)
    # Weights (a .safetensors with its .json, or a run dir) to start from instead of random init;
    # ignored when the run resumes from its own checkpoint.
    init_weights: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        data = dict(data or {})
        unknown = sorted(set(data) - {"model", "data", "optim", "trainer", "init_weights"})
        if unknown:
            raise ConfigError(f"unknown section(s) {unknown}")
        if data.get("init_weights") is not None and not isinstance(data["init_weights"], str):
            raise ConfigError(f"init_weights: expected a path or name, got {data['init_weights']!r}")
        model = mapping_section(data.get("model"), "model")
        preset = model.pop("preset", "tiny")
        try:
            unknown = sorted(set(model) - set(ParseqConfig().to_dict()))
            if unknown:
                raise ValueError(f"unknown key(s) {unknown}")
            model_cfg = ParseqConfig.preset(preset, **model)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"model: {exc}") from exc
        return cls(
            model=model_cfg,
            data=build_section(DataConfig, data.get("data"), "data"),
            optim=build_section(OptimConfig, data.get("optim"), "optim"),
            trainer=build_section(TrainerConfig, data.get("trainer"), "trainer"),
            init_weights=data.get("init_weights"),
        )

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(load_yaml_mapping(path))

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.to_dict(),
            "data": dataclasses.asdict(self.data),
            "optim": dataclasses.asdict(self.optim),
            "trainer": dataclasses.asdict(self.trainer),
            "init_weights": self.init_weights,
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def __post_init__(self):
        if self.optim.schedule == "time_cosine" and self.trainer.max_minutes is None:
            raise ConfigError("optim.schedule time_cosine needs trainer.max_minutes")

    def replace(self, section: str, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **{section: dataclasses.replace(getattr(self, section), **changes)})
