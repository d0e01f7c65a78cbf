"""Reading tracks with a trained recognizer: batched per-frame inference, then multi-frame fusion."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

import torch

from ksrnet.models.baselines import FUSIONS, fuse
from ksrnet.models.inference import inference_copy
from ksrnet.models.parseq import Parseq
from ksrnet.plates import CHARSET, LAYOUTS, Tokenizer, layout_masks
from ksrnet.preprocess import frames_to_tensor
from ksrnet.recrop import pad_frame
from ksrnet.tta import check_views, make_view, vote
from ksrnet.typicality import TypicalityReference, flagged, gives_features, pooled_features, read_with_features


@dataclass
class TrackReading:
    track_id: str
    text: str
    confidence: float
    layout: str | None = None
    char_probs: tuple[float, ...] = ()
    # per slot: [(char, prob), ...] best first, for analysts who need the runner-up characters
    alternatives: list[list[tuple[str, float]]] = field(default_factory=list)
    frames_used: int = 0
    error: str | None = None
    # whether a fitted calibration (a temperature, or an ensemble's confidence map) for this fusion
    # rule and frame count set the confidence; if not, it is the raw one, a rank and not a probability
    calibrated: bool = False
    # share of the model's calibration tracks that look more typical than this one (ksrnet.typicality);
    # None when the model has no typicality reference
    atypicality: float | None = None

    @property
    def atypical(self) -> bool:
        return flagged(self.atypicality)


def select_frames(frames: Sequence, count: int | None) -> list:
    """The last `count` frames: the vehicle approaches, so later frames are usually the largest."""
    if count is not None and count < 1:
        # frames[len - 0:] would be empty: every track silently dropped (predict) or missing (eval)
        raise ValueError(f"frame count must be >= 1, got {count}")
    frames = list(frames)
    return frames if count is None or count >= len(frames) else frames[len(frames) - count:]


TTA_PREFIX = "tta:"
# Metadata key beside "temperature": the TTA views the "tta:" temperatures were fitted with.
TTA_VIEWS_KEY = "temperature_tta_views"
# Metadata key of the temperatures fitted for the confidence gap (calibration.OBJECTIVES), keyed
# like "temperature"; read with `--confidence gap`.
GAP_TEMPERATURE_KEY = "temperature_gap"


def temperature_key(rule: str, frames: int | None = None, tta: bool = False) -> str:
    """Key of a calibration temperature: "product" for any frame count, "product@1" for 1 frame;
    prefixed "tta:" ("tta:product@5") for reading with TTA views, whose voted log-probabilities
    are distributed differently from one view's."""
    return (TTA_PREFIX if tta else "") + (rule if frames is None else f"{rule}@{frames}")


def parse_temperature_key(key) -> tuple[str, int | None, bool] | None:
    """(rule, frames or None, tta) of a key written by temperature_key; None if it is not one."""
    if not isinstance(key, str):
        return None
    tta = key.startswith(TTA_PREFIX)
    rule, _, frames = key.removeprefix(TTA_PREFIX).partition("@")
    if rule not in FUSIONS:
        return None
    if not frames:
        return (rule, None, tta) if "@" not in key else None
    # Only the spelling temperature_key writes: "product@05" would be stored and never looked up.
    return (rule, int(frames), tta) if frames.isdigit() and int(frames) >= 1 and str(int(frames)) == frames else None


def checked_temperatures(temperatures: dict[str, float] | None) -> dict[str, float]:
    temperatures = dict(temperatures or {})
    bad = {k: v for k, v in temperatures.items()
           if parse_temperature_key(k) is None or isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf}
    if bad:
        raise ValueError("temperatures must map fusion rules (optionally rule@frames, and tta:rule[@frames] for "
                         f"TTA reading) to positive finite numbers, got {bad}")
    return temperatures


def pick_calibration(table: dict, rule: str, frames: int | None, tta: bool = False, default=None):
    """The entry of a calibration table (temperatures, confidence maps) for this rule and frame
    count: the one fitted at that count, else the rule's general one. Reading with TTA looks for
    the TTA entries first ("tta:rule@F", "tta:rule") and falls back to the plain ones, fitted for
    one view: the closest calibration there is."""
    keys = [temperature_key(rule, frames, True), temperature_key(rule, None, True)] if tta else []
    keys += [temperature_key(rule, frames), rule]
    return next((table[k] for k in keys if k in table), default)


def pick_temperature(temperatures: dict[str, float], rule: str, frames: int, tta: bool = False) -> float:
    """The temperature fitted for this rule at this frame count, else the rule's general one, else 1
    (TTA: its own first, see pick_calibration). Fusing more frames compounds over-confidence
    differently (product fusion multiplies per-frame probabilities), so one temperature cannot serve
    F=1 and F=5 alike."""
    return float(pick_calibration(temperatures, rule, frames, tta, 1.0))


def reader_temperatures(meta: dict, tta_views: Sequence[str] | None = None,
                        key: str = "temperature") -> tuple[dict[str, float] | None, str | None]:
    """The temperatures a Reader over a model with this metadata should use, and a note for the user
    when reading with TTA is not calibrated for these views: without "tta:" temperatures, or with
    ones fitted for other views (those are then dropped), the plain ones serve (pick_calibration)."""
    raw = meta.get(key)
    if not tta_views or not isinstance(raw, dict):
        return raw, None  # none, or a bad value the Reader refuses
    temperatures = dict(raw)
    tta_keys = [k for k in temperatures if isinstance(k, str) and k.startswith(TTA_PREFIX)]
    if not tta_keys:
        return temperatures, ("no TTA temperatures stored for this model: TTA readings use the plain "
                              "temperatures (fit them with `ksrnet calibrate --tta`)")
    fitted = meta.get(TTA_VIEWS_KEY)
    if fitted is not None and sorted(fitted) != sorted(tta_views):
        plain = {k: v for k, v in temperatures.items() if k not in tta_keys}
        return plain, (f"the TTA temperatures were fitted for views {','.join(fitted)}, not "
                       f"{','.join(tta_views)}: these readings use the plain temperatures")
    return temperatures, None


def _check_fusions(fusions: Iterable[str]) -> list[str]:
    fusions = list(fusions)
    for f in fusions:
        if f not in FUSIONS:
            raise ValueError(f"unknown fusion {f!r}; choose from {', '.join(FUSIONS)}")
    return fusions


_TOKENIZER = Tokenizer()

# Frames per network call. On a CPU, PyTorch reads the shipped model ~1.3x faster in chunks of 16-32
# frames than in calls of 256-320, where a call's activations no longer stay in cache; onnxruntime
# reads no faster in small chunks (slower in most runs), and a GPU wants the largest batch it is
# given (benchmarks/RESULTS.md, "PyTorch reads in cache-sized chunks").
CPU_BATCH_FRAMES = 32
LARGE_BATCH_FRAMES = 256


def default_batch_frames(device: torch.device, pytorch: bool = True) -> int:
    return CPU_BATCH_FRAMES if pytorch and device.type == "cpu" else LARGE_BATCH_FRAMES


class Reader:
    def __init__(self, model: Parseq, *, device: str | torch.device = "cpu", mode: str = "nar",
                 refine_iters: int | None = None, batch_frames: int | None = None,
                 temperatures: dict[str, float] | None = None, tta_views: Sequence[str] | None = None,
                 pad_margin: float = 0.0, typicality: TypicalityReference | None = None):
        """temperatures: per fusion rule (or "rule@F" for tracks of F frames; see pick_temperature), the
        calibration temperature dividing the per-frame logits for the readings' probabilities
        (ksrnet.calibration; never the readings themselves, see baselines.fuse; rules without one
        use 1). tta_views: read every frame under these views (ksrnet.tta.VIEWS) and vote; None =
        the frame as it is. With views, the "tta:" temperatures are used where present, else the
        plain ones (pick_calibration; reader_temperatures drops "tta:" ones fitted for other views).
        pad_margin: pad every frame with its edge pixels by this share of its width per side before
        reading (ksrnet.recrop.pad_frame; 0 to 0.5), for frames cropped tight to the plate; 0 = as they are.
        typicality: the model's reference (ksrnet.typicality); each reading then carries its track's
        atypicality, from the encoder pass the reading makes anyway. A PyTorch network, or an ONNX
        export with the features among its outputs."""
        if mode not in ("nar", "ar"):
            raise ValueError("mode must be 'nar' or 'ar'")
        if typicality is not None and not gives_features(model):
            raise ValueError("a typicality reference needs the encoder's features: the PyTorch network, or an ONNX "
                             "export that outputs them (export it again with `ksrnet export --onnx`)")
        self.typicality = typicality
        self.tta_views = check_views(tta_views) if tta_views else None
        self.temperatures = checked_temperatures(temperatures)
        # A PyTorch network is read through a faster copy (models/inference.py); an ONNX session as is.
        self.model = inference_copy(model).to(device) if isinstance(model, torch.nn.Module) else model.to(device).eval()
        self.device = torch.device(device)
        self.mode = mode
        self.refine_iters = refine_iters
        if batch_frames is not None and batch_frames < 1:
            raise ValueError(f"batch_frames must be >= 1, got {batch_frames}")
        self.batch_frames = batch_frames or default_batch_frames(self.device, isinstance(model, torch.nn.Module))
        self.pad_margin = pad_margin
        self.masks = torch.from_numpy(layout_masks())

    @property
    def pad_margin(self) -> float:
        return self._pad_margin

    @pad_margin.setter
    def pad_margin(self, margin: float) -> None:
        # A setter, not a check in __init__ alone: the CLI sets the margin on readers it has built.
        if not 0 <= margin <= 0.5:
            raise ValueError(f"pad_margin must be in [0, 0.5], got {margin}")
        self._pad_margin = margin

    @property
    def height(self) -> int:
        return self.model.config.img_h

    @property
    def width(self) -> int:
        return self.model.config.img_w

    @torch.inference_mode()
    def frame_outputs(self, frames: list, features: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw (char_logits (N, 7, C), layout_logits (N, L)) on the CPU for a list of frames; with
        TTA, the views' voted log-probabilities in their place. features: a list that receives the
        frames' pooled encoder features (ksrnet.typicality), of the frames as they are, also with TTA."""
        if self.tta_views is None:
            return self._model_outputs(frames, features)
        plain = features if "identity" in self.tta_views else None
        per_view = [self._model_outputs([make_view(f, v) for f in frames], plain if v == "identity" else None)
                    for v in self.tta_views]
        if features is not None and plain is None:
            features.append(self.frame_features(frames))
        return vote(torch.stack([c for c, _ in per_view]), torch.stack([l for _, l in per_view]), self.tta_views)

    def _images(self, frames: list) -> torch.Tensor:
        if self.pad_margin:
            frames = [pad_frame(f, self.pad_margin) for f in frames]
        return frames_to_tensor(frames, self.height, self.width)

    def _model_outputs(self, frames: list, features: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        images = self._images(frames)
        chars, layouts = [], []
        for start in range(0, images.shape[0], self.batch_frames):
            x = images[start:start + self.batch_frames].to(self.device)
            if features is None:
                out = self.model(x, mode=self.mode, refine_iters=self.refine_iters)
            else:
                out, feats = read_with_features(self.model, x, self.mode, self.refine_iters)
                features.append(feats.float().cpu())
            chars.append(out.char_logits.float().cpu())
            layouts.append(out.layout_logits.float().cpu())
        return torch.cat(chars), torch.cat(layouts)

    @torch.inference_mode()
    def frame_features(self, frames: list) -> torch.Tensor:
        """Pooled encoder features ``(N, 2 x embed_dim)`` of frames as this reader sees them (padded
        if it pads): what ksrnet.typicality fits and scores. A PyTorch network runs its encoder alone."""
        if not gives_features(self.model):
            raise ValueError("frame features need the PyTorch network or an ONNX export that outputs them")
        images = self._images(frames)
        out = []
        for s in range(0, images.shape[0], self.batch_frames):
            x = images[s:s + self.batch_frames].to(self.device)
            feats = (pooled_features(self.model.encode(x)) if isinstance(self.model, Parseq)
                     else read_with_features(self.model, x, self.mode, self.refine_iters)[1])
            out.append(feats.float().cpu())
        return torch.cat(out)

    def read(self, tracks: list, fusions: Iterable[str] = ("product",), frame_count: int | None = None,
             topk: int = 3) -> dict[str, list[TrackReading]]:
        """Read a batch of tracks (objects with .track_id and .lr) with each fusion rule."""
        fusions = _check_fusions(fusions)  # before the costly pass
        logits, features = self.track_logits_and_features(tracks, frame_count)
        return self.readings_from_logits(tracks, logits, fusions, topk,
                                         frames_used=self.frames_used(tracks, frame_count),
                                         atypicality=self.atypicality_of(features))

    def track_logits_and_features(self, tracks: list, frame_count: int | None = None,
                                  with_features: bool | None = None) -> tuple[list, list | None]:
        """track_logits, and each track's frames' pooled encoder features ``(F, D)`` from the same
        network pass; with_features None: when the reader has a typicality reference (else None is
        returned for them). calibrate asks for them to fit the reference."""
        if not (self.typicality is not None if with_features is None else with_features):
            return self.track_logits(tracks, frame_count), None
        return self._track_outputs(tracks, frame_count, with_features=True)

    def atypicality_of(self, features: list | None) -> list[float] | None:
        """Each track's atypicality (ksrnet.typicality) from its frames' features; None for None."""
        return None if features is None else [self.typicality.atypicality(f.numpy()) for f in features]

    def frames_used(self, tracks: list, frame_count: int | None) -> list[int] | None:
        """Frames behind each track's logits where that is not their row count (see
        readings_from_logits); None: the row count."""
        return None

    def readings_from_logits(self, tracks: list, logits: list[tuple[torch.Tensor, torch.Tensor]],
                             fusions: Iterable[str] = ("product",), topk: int = 3,
                             frames_used: Sequence[int] | None = None,
                             atypicality: Sequence[float] | None = None) -> dict[str, list[TrackReading]]:
        """The fusion half of ``read``, for per-track logits already computed (``track_logits``).
        frames_used: frames behind each track's logits when that is not their row count (a
        restoration model reads all its frames as one image); it picks the temperature.
        atypicality: each track's (``atypicality_of``), carried into its readings."""
        fusions = _check_fusions(fusions)
        results: dict[str, list[TrackReading]] = {f: [] for f in fusions}
        counts = list(frames_used) if frames_used is not None else [c.shape[0] for c, _ in logits]
        scores = list(atypicality) if atypicality is not None else [None] * len(tracks)
        for track, (char_logits, layout_logits), n, score in zip(tracks, logits, counts, scores):
            for rule in fusions:
                fitted = pick_calibration(self.temperatures, rule, n, self.tta_views is not None)
                t = 1.0 if fitted is None else float(fitted)  # as pick_temperature
                r = fuse(rule, char_logits, layout_logits, self.masks, topk, temperature=t)
                results[rule].append(TrackReading(
                    track_id=track.track_id,
                    text=_TOKENIZER.decode(r.indices),
                    confidence=r.confidence,
                    layout=LAYOUTS[r.layout_index].value,
                    char_probs=r.char_probs,
                    alternatives=[[(CHARSET[i], p) for i, p in zip(ids, ps)]
                                  for ids, ps in zip(r.topk_indices, r.topk_probs)],
                    frames_used=n,
                    calibrated=fitted is not None,
                    atypicality=score,
                ))
        return results

    def track_logits(self, tracks: list, frame_count: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per track, the raw (char_logits (F, 7, C), layout_logits (F, L)) of its chosen frames,
        computed in one batched pass."""
        return self._track_outputs(tracks, frame_count)[0]

    def _track_outputs(self, tracks: list, frame_count: int | None, with_features: bool = False
                       ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[torch.Tensor]]:
        """track_logits, and with_features each track's frames' pooled features (else [])."""
        chosen = [select_frames(t.lr, frame_count) for t in tracks]
        flat = [frame for frames in chosen for frame in frames]
        if not flat:
            return [], []
        features: list | None = [] if with_features else None
        char_logits, layout_logits = self.frame_outputs(flat, features)
        feats = torch.cat(features) if with_features else None
        out, per_track, start = [], [], 0
        for frames in chosen:
            end = start + len(frames)
            out.append((char_logits[start:end], layout_logits[start:end]))
            if feats is not None:
                per_track.append(feats[start:end])
            start = end
        return out, per_track


ENSEMBLE_RULES = ("logit", "vote")


class EnsembleReader(Reader):
    """Several recognizers read the same tracks (the seed's three-member ensemble).

    rule "logit": every member's per-frame log-probabilities are averaged, then fused like one
    model's. rule "vote": each member fuses on its own; the reading most members give wins (ties go
    to the higher confidence), with confidence = the agreeing members' confidences summed over all
    members, so a split vote cannot come out confident. Its characters' probabilities and alternatives
    are the members' averaged the same way (a member that does not list a character gives it 0), so
    a character the members disagree on cannot come out sure either.

    calibration (ksrnet.ensemble_calibration.EnsembleCalibration, fitted for these members and this
    rule): "logit" divides the averaged log-probabilities by its temperatures before fusion; "vote"
    passes the vote's confidence through its monotone maps. Keys are "rule" / "rule@F" (see
    pick_calibration); without one, a rule or frame count is left as it is.
    """

    def __init__(self, readers: Sequence[Reader], rule: str = "logit", calibration=None):
        if len(readers) < 2:
            raise ValueError("an ensemble needs at least two models")
        if rule not in ENSEMBLE_RULES:
            raise ValueError(f"ensemble rule must be one of {', '.join(ENSEMBLE_RULES)}, got {rule!r}")
        if calibration is not None and calibration.rule != rule:
            raise ValueError(f"this ensemble calibration was fitted for the {calibration.rule!r} rule, not {rule!r}")
        self.readers, self.rule, self.calibration = list(readers), rule, calibration
        self.typicality = None  # each member's reference describes its own calibration tracks, not the ensemble's
        self.temperatures = checked_temperatures(calibration.temperatures if calibration else None)
        self.confidence_maps = dict(calibration.confidence_maps) if calibration else {}
        # The ensemble's own keys are plain: its calibration file records the TTA views it was fitted with.
        self.tta_views = None
        self.masks = self.readers[0].masks

    def frames_used(self, tracks: list, frame_count: int | None) -> list[int] | None:
        """The members' own count: restoration members give one row of logits per track, and without
        this a 5-frame track would pick the "rule@1" calibration (or none) instead of "rule@5"."""
        counts = [r.frames_used(tracks, frame_count) for r in self.readers]
        return next((c for c in counts if c is not None), None)

    def track_logits(self, tracks: list, frame_count: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        per_member = [r.track_logits(tracks, frame_count) for r in self.readers]
        out = []
        for parts in zip(*per_member):
            chars = torch.stack([torch.log_softmax(c.float(), -1) for c, _ in parts]).mean(0)
            layouts = torch.stack([torch.log_softmax(l.float(), -1) for _, l in parts]).mean(0)
            out.append((chars, layouts))
        return out

    def read(self, tracks: list, fusions: Iterable[str] = ("product",), frame_count: int | None = None,
             topk: int = 3) -> dict[str, list[TrackReading]]:
        if self.rule == "logit":
            return super().read(tracks, fusions, frame_count, topk)
        fusions = list(fusions)
        members = [r.read(tracks, fusions, frame_count, topk) for r in self.readers]
        results: dict[str, list[TrackReading]] = {}
        for rule in fusions:
            rows = []
            for i in range(len(tracks)):
                readings = [m[rule][i] for m in members]
                votes = Counter(r.text for r in readings)
                # The vote's confidence of each text; a tie in votes goes to the higher one, so the
                # reading returned is never less confident (by the confidence reported) than a tied rival.
                share = {text: sum(r.confidence for r in readings if r.text == text) / len(readings) for text in votes}
                text = max(votes, key=lambda t: (votes[t], share[t]))
                best = max((r for r in readings if r.text == text), key=lambda r: r.confidence)
                confidence = share[text]
                mapping = pick_calibration(self.confidence_maps, rule, best.frames_used)
                char_probs, alternatives = _voted_characters(text, readings, topk)
                rows.append(replace(best, confidence=mapping(confidence) if mapping else confidence,
                                    calibrated=mapping is not None, char_probs=char_probs or best.char_probs,
                                    alternatives=alternatives or best.alternatives))
            results[rule] = rows
        return results


def _voted_characters(text: str, readings: list[TrackReading], topk: int):
    """Per slot, each character's probability averaged over all members: the voted reading's
    char_probs and top-k alternatives. A member gives its own reading's characters their char_probs,
    the others it lists among its alternatives theirs, and 0 to the rest (a member that failed to
    read gives 0 to all, as it does to the vote's confidence). Empty when no member says anything."""
    if not text or not any(r.alternatives or r.char_probs for r in readings):
        return (), []
    probs, alternatives = [], []
    for slot, ch in enumerate(text):
        mass: Counter = Counter()
        for r in readings:
            said = dict(r.alternatives[slot]) if slot < len(r.alternatives) else {}
            if slot < min(len(r.text), len(r.char_probs)):
                said[r.text[slot]] = r.char_probs[slot]
            for c, p in said.items():
                mass[c] += p / len(readings)
        probs.append(mass[ch])
        alternatives.append(sorted(mass.items(), key=lambda cp: -cp[1])[:topk])
    return tuple(probs), alternatives
