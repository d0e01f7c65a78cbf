"""``ksrnet eval --ablation``: every way this project reads a track, on the same tracks, in one table.

Rows (those whose models are not given are left out and named in the notes):

* the recognizer alone: the last frame only (F=1), the most confident of 5 frames, and each late
  fusion of 5 frames (``models.baselines``); with ``--tta`` views voted (with the model's TTA
  temperatures where it has them); with several ``--model`` an ensemble (``--ensemble`` rule,
  calibrated by ``--calibration FILE`` when given);
* restoration then one reading: the reference frame upsampled bicubically (no fusion at all), the
  MF-LPR²-style robust fusion (built on the first KSR-Net's flow estimator and recognizer), and each
  KSR-Net given (labelled by its variant).

Per row: RR, CER, confidence gap, ECE (track confidence as stored calibration makes it), PSNR and
SSIM of the restored plate on Y against the canonical HR (synthetic tracks only: an LRLPR-26 HR is
a separate capture), and reading speed. The synthetic test set is fixed by its seed; PSNR/SSIM are
scored inside the plate (the canonical HR defines no car around it) after cropping ``CROP_BORDER``
pixels (the SR scale) on each side.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ksrnet.calibration import readings_ece
from ksrnet.image_quality import psnr_y, ssim_y
from ksrnet.infer import Reader
from ksrnet.metrics import GroundTruth, Reading, score
from ksrnet.models.baselines import FUSIONS
from ksrnet.models.ksrnet import batch_reference_index, reference_indices
from ksrnet.models.parseq import Parseq
from ksrnet.models.restore import to_recognizer_input
from ksrnet.restoration_reader import RestorationReader, per_track

ABLATION_SEED = 20261126  # the test-set seed of benchmarks/recognizer.py
CROP_BORDER = 4
TRACK_FRAMES = 5


# --------------------------------------------------------------------------------------------------
# The no-fusion restoration baseline


@dataclass(frozen=True)
class UpsampleConfig:
    lr_size: tuple[int, int] = (16, 48)
    upscale: int = 4
    ref_index: str = "middle"


class _Output(NamedTuple):
    sr: Tensor
    char_logits: Tensor
    layout_logits: Tensor


class ReferenceUpsample(nn.Module):
    """The reference frame alone, upsampled bicubically to the SR grid and read: what restoration
    must beat, on the same grid and with the same reference as KSR-Net."""

    def __init__(self, recognizer: Parseq, config: UpsampleConfig = UpsampleConfig()):
        super().__init__()
        self.config, self.recognizer = config, recognizer

    def forward(self, frames: Tensor, frame_mask: Tensor | None = None, *, mode: str = "nar",
                refine_iters: int | None = None) -> _Output:
        b, t = frames.shape[:2]
        mask = frame_mask if frame_mask is not None else torch.ones(b, t, dtype=torch.bool, device=frames.device)
        ref = reference_indices(self.config.ref_index, mask)
        reference = frames[torch.arange(b, device=frames.device), ref]
        sr = F.interpolate(reference, scale_factor=self.config.upscale, mode="bicubic", align_corners=False)
        sr = sr.clamp(-1.0, 1.0)
        rc = self.recognizer.config
        out = self.recognizer(to_recognizer_input(sr, (rc.img_h, rc.img_w)), mode=mode, refine_iters=refine_iters)
        return _Output(sr, out.char_logits, out.layout_logits)


# --------------------------------------------------------------------------------------------------
# Rows


@dataclass
class AblationRow:
    method: str
    dataset: str
    tracks: int
    rr: float | None
    cer: float | None
    confidence_gap: float | None
    ece: float | None
    psnr_y: float | None = None
    ssim_y: float | None = None
    tracks_per_s: float | None = None


@dataclass
class AblationResult:
    rows: list[AblationRow]
    notes: list[str] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"settings": self.settings, "rows": [asdict(r) for r in self.rows], "notes": self.notes}

    def to_json(self) -> str:
        def clean(v):  # JSON has no NaN
            return None if isinstance(v, float) and not math.isfinite(v) else v

        data = self.as_dict()
        data["rows"] = [{k: clean(v) for k, v in r.items()} for r in data["rows"]]
        return json.dumps(data, indent=2)

    def to_markdown(self) -> str:
        def pct(v):
            return "-" if v is None else f"{100 * v:.1f}"

        def num(v, fmt):
            return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)

        out = []
        for dataset in dict.fromkeys(r.dataset for r in self.rows):
            rows = [r for r in self.rows if r.dataset == dataset]
            out += [f"**{dataset}** ({rows[0].tracks} tracks)", "",
                    "| method | RR % | CER % | conf gap (pts) | ECE (pts) | PSNR-Y dB | SSIM-Y | tracks/s |",
                    "| --- | --- | --- | --- | --- | --- | --- | --- |"]
            out += [f"| {r.method} | {pct(r.rr)} | {pct(r.cer)} | {pct(r.confidence_gap)} | {pct(r.ece)} | "
                    f"{num(r.psnr_y, '.2f')} | {num(r.ssim_y, '.4f')} | {num(r.tracks_per_s, '.1f')} |" for r in rows]
            out.append("")
        out += [f"- {n}" for n in self.notes]
        return "\n".join(out).rstrip() + "\n"


def _scored(method: str, dataset: str, truths: list[GroundTruth], readings, seconds: float) -> AblationRow:
    by_id = {r.track_id: Reading(r.track_id, r.text, r.confidence) for r in readings}
    overall = score(truths, by_id).overall
    return AblationRow(method, dataset, len(truths), overall.recognition_rate, overall.cer, overall.confidence_gap,
                       readings_ece(truths, by_id) if truths else None,
                       tracks_per_s=len(truths) / seconds if seconds > 0 else None)


# Tracks read untimed before each timed reading: the first call of a reader pays for allocations and
# kernel selection that the rest of the run does not (115 tracks/s cold against 125-132 warm, 300 tracks).
WARMUP_TRACKS = 8


def _timed(fn: Callable):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def recognizer_rows(reader: Reader, tracks: list, truths: list[GroundTruth], dataset: str) -> list[AblationRow]:
    """Late-fusion rows of one recognizer: F=1 (last frame) and every fusion rule at F=5. Speed is
    that of the per-frame pass plus the rule (the pass is shared, so it is timed once and the rule's
    own time added)."""
    rows = []
    reader.read(tracks[:WARMUP_TRACKS], ["product"], frame_count=TRACK_FRAMES)
    one, secs = _timed(lambda: reader.read(tracks, ["product"], frame_count=1)["product"])
    rows.append(_scored("last frame only (F=1)", dataset, truths, one, secs))
    logits, pass_secs = _timed(lambda: reader.track_logits(tracks, TRACK_FRAMES))
    for rule in FUSIONS:
        readings, secs = _timed(lambda: reader.readings_from_logits(tracks, logits, [rule])[rule])
        name = "most confident frame (F=5)" if rule == "single" else f"late fusion: {rule} (F=5)"
        rows.append(_scored(name, dataset, truths, readings, pass_secs + secs))
    return rows


def reader_row(name: str, reader: Reader, tracks: list, truths: list[GroundTruth], dataset: str,
               fusion: str = "product") -> AblationRow:
    reader.read(tracks[:WARMUP_TRACKS], [fusion], frame_count=TRACK_FRAMES)
    readings, secs = _timed(lambda: reader.read(tracks, [fusion], frame_count=TRACK_FRAMES)[fusion])
    return _scored(name, dataset, truths, readings, secs)


def restoration_row(name: str, reader: RestorationReader, tracks: list, truths: list[GroundTruth], dataset: str,
                    targets: tuple[Tensor, Tensor] | None) -> AblationRow:
    """One restoration method: reading (timed, restoration included) and, given the SR targets
    ``(images (N, 3, sH, sW), masks (N, 1, sH, sW))``, PSNR/SSIM of its restored plates."""
    reader.restore_and_read(tracks[:WARMUP_TRACKS], TRACK_FRAMES)
    (sr, chars, layouts), secs = _timed(lambda: reader.restore_and_read(tracks, TRACK_FRAMES))
    readings = reader.readings_from_logits(tracks, per_track(chars, layouts), ["product"],
                                           frames_used=reader.frames_used(tracks, TRACK_FRAMES))["product"]
    row = _scored(name, dataset, truths, readings, secs)
    if targets is not None:
        target, mask = targets
        if tuple(sr.shape[-2:]) != tuple(target.shape[-2:]):
            raise ValueError(f"{name}: SR images {tuple(sr.shape[-2:])} and targets {tuple(target.shape[-2:])} differ")
        row.psnr_y = _finite_mean(psnr_y(sr, target, mask, CROP_BORDER))
        row.ssim_y = _finite_mean(ssim_y(sr, target, mask, CROP_BORDER))
    return row


def _finite_mean(values: Tensor) -> float | None:
    ok = values[torch.isfinite(values)]
    return float(ok.mean()) if ok.numel() else None


# --------------------------------------------------------------------------------------------------
# Test sets


def synthetic_test_set(num_tracks: int, preset: str, seed: int = ABLATION_SEED, progress=None) -> list:
    """The fixed synthetic tracks (``SynthTrack``, 5 frames, with their geometry) of one preset."""
    from ksrnet.synth.dataset import generate_track

    tracks = []
    for i in range(num_tracks):
        tracks.append(generate_track(seed, i, preset=preset, num_frames=TRACK_FRAMES))
        if progress is not None:
            progress()
    return tracks


def sr_targets(tracks: Sequence, lr_size: tuple[int, int], upscale: int, ref_policy: str = "middle") -> tuple[Tensor, Tensor]:
    """Canonical HR plates on each track's reference SR grid, and their plate masks."""
    from ksrnet.ksr_targets import sr_target

    images, masks = [], []
    for t in tracks:
        ref = batch_reference_index(ref_policy, len(t.lr))
        image, mask = sr_target(t.canonical_hr, t.trajectory, ref, lr_size, upscale)
        images.append(image)
        masks.append(mask)
    return torch.stack(images), torch.stack(masks)


def sr_targets_per_grid(tracks: Sequence) -> Callable[[RestorationReader], tuple[Tensor, Tensor]]:
    """The SR targets of a restoration reader, on its model's own grid (``lr_size``, ``upscale``,
    reference policy): KSR-Nets compared in one table may restore onto different grids (one trained
    at 20x48, say), and each is scored where it restores. Built once per grid."""
    cache: dict[tuple, tuple[Tensor, Tensor]] = {}

    def targets(reader: RestorationReader) -> tuple[Tensor, Tensor]:
        c = reader.model.config
        key = (tuple(c.lr_size), c.upscale, c.ref_index)
        if key not in cache:
            cache[key] = sr_targets(tracks, *key)
        return cache[key]

    return targets


def truths_of(tracks: Sequence) -> list[GroundTruth]:
    return [GroundTruth.of_track(t) for t in tracks]


# --------------------------------------------------------------------------------------------------
# The whole table


@dataclass
class Methods:
    """What to compare: the recognizer reader(s) and the restoration models by display name."""

    recognizer: Reader
    recognizer_name: str
    tta: Reader | None = None
    ensemble: Reader | None = None
    restorations: dict[str, RestorationReader] = field(default_factory=dict)


def ablation_rows(methods: Methods, tracks: list, dataset: str,
                  targets: Callable[[RestorationReader], tuple[Tensor, Tensor]] | None,
                  advance: Callable[[], None] = lambda: None) -> list[AblationRow]:
    """targets: each restoration reader's SR targets (``sr_targets_per_grid``); None: no PSNR/SSIM."""
    truths = truths_of(tracks)
    rows = recognizer_rows(methods.recognizer, tracks, truths, dataset)
    advance()
    if methods.tta is not None:
        rows.append(reader_row("late fusion: product (F=5) + TTA", methods.tta, tracks, truths, dataset))
        advance()
    if methods.ensemble is not None:
        rows.append(reader_row("late fusion: product (F=5) + ensemble", methods.ensemble, tracks, truths, dataset))
        advance()
    for name, reader in methods.restorations.items():
        rows.append(restoration_row(name, reader, tracks, truths, dataset, targets(reader) if targets else None))
        advance()
    return rows
