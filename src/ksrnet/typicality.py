"""How typical a track looks of the tracks a model's confidences were calibrated on.

A temperature fitted on one kind of footage says nothing about another: on real plate photographs
put into synthetic tracks, the shipped reader's characters read at >= 0.9 were wrong 8 % of the time
against 0.20 % on the same tracks with its own renders (benchmarks/RESULTS.md). A reader cannot see
its own mistakes there, but it can see that the input is unlike what it was calibrated on. This
module measures that from the recognizer's encoder: each frame becomes the mean and standard
deviation of its encoder tokens; a Gaussian (shared mean, shrunk covariance) is fitted to those of
the calibration tracks; a frame's Mahalanobis distance to it, averaged over the track's frames, is
the track's score.

The score of a track is then placed among the scores of held-out calibration tracks of the same
frame count (averaging over more frames narrows the spread, so each count has its own reference):
its *atypicality* is the share of those reference tracks that look more typical, in [0, 1]. At or
above ``ATYPICAL`` (0.99) a track is flagged as unlike the calibration tracks, where the confidence
has not been checked. It flags: it changes no reading and no confidence.

The reference is saved beside the model's weights (``<weights>.typicality.safetensors``) by
`ksrnet calibrate` and loaded with the model when present.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ksrnet.atomic_files import atomic_write
from ksrnet.models.parseq import Parseq, ParseqOutput

ATYPICAL = 0.99  # flag tracks more atypical than this share of the reference tracks
SHRINKAGE = 0.05  # covariance + SHRINKAGE x its mean variance x I: 256 dimensions from a few thousand frames
MIN_FIT_FRAMES = 64
MIN_REFERENCE_TRACKS = 20
SUFFIX = ".typicality.safetensors"


class TypicalityError(ValueError):
    pass


def flagged(atypicality: float | None) -> bool:
    """Whether an atypicality (of a track or of a frame alone) is flagged; None, unscored, is not."""
    return atypicality is not None and atypicality >= ATYPICAL


def read_with_features(model, images: torch.Tensor, mode: str = "nar",
                       refine_iters: int | None = None) -> tuple[ParseqOutput, torch.Tensor]:
    """A recognizer's outputs and its frames' pooled features, from one pass. ``model``: a Parseq
    (Parseq.forward's steps, keeping the encoder's memory) or an ONNX export that has the features
    among its outputs (export_onnx.OnnxParseq)."""
    if isinstance(model, Parseq):
        memory = model.encode(images)
        out = ParseqOutput(model.decode_memory(memory, mode=mode, refine_iters=refine_iters),
                           model.layout_logits_from_memory(memory))
        return out, pooled_features(memory)
    return model.read_with_features(images, mode=mode, refine_iters=refine_iters)


def gives_features(model) -> bool:
    """Whether read_with_features works with ``model``."""
    return isinstance(model, Parseq) or bool(getattr(model, "has_features", False))


def pooled_features(memory: torch.Tensor) -> torch.Tensor:
    """Per frame, the mean and the standard deviation over its encoder tokens ``(B, P, D)`` ->
    ``(B, 2D)`` float32: the mean says what the frame shows, the spread how much contrast it has."""
    if memory.dim() != 3:
        raise ValueError(f"expected encoder memory (B, tokens, dim), got {tuple(memory.shape)}")
    memory = memory.float()
    return torch.cat([memory.mean(dim=1), memory.std(dim=1, unbiased=False)], dim=1)


@dataclass(frozen=True)
class TypicalityReference:
    """A Gaussian over frame features and, per frame count, the sorted scores of reference tracks."""

    mean: np.ndarray  # (D,)
    precision: np.ndarray  # (D, D), the inverse of the shrunk covariance
    reference_scores: dict[int, np.ndarray]  # frame count -> sorted track scores
    source: str = ""

    def __post_init__(self) -> None:
        d = self.mean.shape
        if len(d) != 1 or self.precision.shape != (d[0], d[0]):
            raise TypicalityError(f"mean {self.mean.shape} and precision {self.precision.shape} do not match")
        if not self.reference_scores or any(n < 1 or len(s) == 0 for n, s in self.reference_scores.items()):
            raise TypicalityError("the reference needs track scores for at least one frame count")

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def frame_distances(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        """Squared Mahalanobis distance of each frame's features ``(N, D)`` to the fitted mean."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise TypicalityError(f"expected frame features (N, {self.dim}), got {x.shape}: "
                                  "were they made by the model this reference was fitted for?")
        d = x - self.mean
        return np.einsum("ij,jk,ik->i", d, self.precision, d)

    def track_score(self, features: np.ndarray | torch.Tensor) -> float:
        """Mean frame distance of one track's frames ``(F, D)``."""
        return float(self.frame_distances(features).mean())

    def atypicality(self, features: np.ndarray | torch.Tensor) -> float:
        """Share of the reference tracks with the same frame count (the nearest count fitted, for a
        count none was fitted for) whose score is below this track's, in [0, 1]."""
        n = len(features)
        if n == 0:
            raise TypicalityError("a track with no frames has no typicality")
        count = min(self.reference_scores, key=lambda c: (abs(c - n), -c))
        ref = self.reference_scores[count]
        return float(np.searchsorted(ref, self.track_score(features), side="left") / len(ref))

    def save(self, path: str | Path, extra: dict | None = None) -> Path:
        """safetensors with the arrays and, in its metadata, the source and any ``extra`` fields."""
        path = Path(path)
        tensors = {"mean": torch.from_numpy(self.mean.astype(np.float32)),
                   "precision": torch.from_numpy(self.precision.astype(np.float32))}
        for n, scores in self.reference_scores.items():
            tensors[f"scores_{n}"] = torch.from_numpy(np.asarray(scores, dtype=np.float32))
        meta = {"source": self.source, "extra": json.dumps(extra or {})}
        atomic_write(path, lambda p: save_file(tensors, p, metadata=meta))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "TypicalityReference":
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                arrays = {k: f.get_tensor(k).double().numpy() for k in f.keys()}
        except Exception as exc:  # safetensors raises several types for a corrupt file
            raise TypicalityError(f"cannot read the typicality reference {path} ({exc}): delete it, or fit it "
                                  "again with `ksrnet calibrate`") from exc
        try:
            scores = {int(k.split("_", 1)[1]): np.sort(v) for k, v in arrays.items() if k.startswith("scores_")}
            return cls(arrays["mean"], arrays["precision"], scores, meta.get("source", ""))
        except (KeyError, ValueError) as exc:
            raise TypicalityError(f"{path} is not a typicality reference ({exc}): delete it, or fit it again with "
                                  "`ksrnet calibrate`") from exc


def fit_reference(track_features: Sequence[np.ndarray], source: str = "",
                  shrinkage: float = SHRINKAGE) -> TypicalityReference:
    """Fit on one half of the tracks (every other one, so that tracks listed in some order, by
    scenario or layout say, fall in both halves) and score the other half at each frame count from 1
    to the longest track, using each track's last frames as the readers do (infer.select_frames): a
    reference scored on the tracks the Gaussian was fitted to would look more typical than any new
    track. ``track_features``: per track, its frames' pooled features ``(F, D)``."""
    tracks = [np.asarray(f, dtype=np.float64) for f in track_features if len(f)]
    fit, held = tracks[0::2], tracks[1::2]
    frames = np.concatenate(fit) if fit else np.zeros((0, 0))
    if len(frames) < MIN_FIT_FRAMES or len(held) < MIN_REFERENCE_TRACKS:
        raise TypicalityError(f"a typicality reference needs at least {MIN_FIT_FRAMES} frames to fit and "
                              f"{MIN_REFERENCE_TRACKS} tracks to score, from {2 * MIN_REFERENCE_TRACKS} or more "
                              f"tracks; got {len(tracks)} tracks")
    if not np.isfinite(frames).all():
        raise TypicalityError("frame features must be finite")
    mean = frames.mean(axis=0)
    cov = np.cov(frames, rowvar=False)
    cov = cov + shrinkage * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0]) + 1e-9 * np.eye(cov.shape[0])
    precision = np.linalg.inv(cov)
    provisional = TypicalityReference(mean, precision, {1: np.zeros(1)}, source)
    longest = max(len(t) for t in held)
    scores = {n: np.sort([provisional.track_score(t[-n:]) for t in held if len(t) >= n])
              for n in range(1, longest + 1)}
    scores = {n: s for n, s in scores.items() if len(s) >= MIN_REFERENCE_TRACKS}
    return TypicalityReference(mean, precision, scores, source)


def reference_path(weights: str | Path) -> Path:
    """Where the reference of the model whose weights are at ``weights`` lives. An ONNX export keeps
    its own copy, FILE.onnx.typicality.safetensors, as it keeps its metadata in FILE.onnx.json: model.onnx
    and model.safetensors may sit side by side, and the copy is the one checked at export."""
    weights = Path(weights)
    if weights.suffix.lower() == ".onnx":
        return Path(str(weights) + SUFFIX)
    return weights.with_name(weights.stem + SUFFIX)


def load_for(weights: str | Path) -> TypicalityReference | None:
    """The reference saved beside ``weights``, or None when there is none."""
    path = reference_path(weights)
    return TypicalityReference.load(path) if path.exists() else None
