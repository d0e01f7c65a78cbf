"""Calibrating the track confidence: a temperature on the per-frame logits, fitted per fusion rule.

The raw confidence (layout posterior x product of the fused characters' probabilities) compounds
every frame's over- or under-confidence; product fusion over five frames multiplies it. Dividing
the per-frame logits by a temperature T before fusion and choosing T so that the track confidence
best predicts whether the whole reading is right (minimum binary cross-entropy) calibrates it.
The fitted temperatures are stored in the model's JSON beside its weights (`temperature`), with the
figures of the fit (`calibration`), and the Reader applies them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ksrnet.models.baselines import fuse
from ksrnet.plates import Tokenizer

# Coarse search over 0.25..16 in steps of sqrt(2), then steps of 2^(1/8) around the best: 21 fusions
# per track instead of the 49 of an equally fine single grid (fusion is per-track Python).
COARSE_GRID = tuple(float(t) for t in np.geomspace(0.25, 16.0, 13))
FINE_STEPS = tuple(2.0 ** (k / 8) for k in (-3, -2, -1, 1, 2, 3))
ECE_BINS = 15
_TOKENIZER = Tokenizer()


def expected_calibration_error(confidence, correct, bins: int = ECE_BINS) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by bin size."""
    conf = np.asarray(confidence, dtype=np.float64)
    right = np.asarray(correct, dtype=np.float64)
    if conf.shape != right.shape or conf.ndim != 1 or conf.size == 0:
        raise ValueError("confidence and correct must be equal-length, non-empty 1-D sequences")
    which = np.minimum((conf * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            total += sel.sum() * abs(right[sel].mean() - conf[sel].mean())
    return float(total / conf.size)


def confidence_and_correct(truths, readings: dict) -> tuple[list[float], list[bool]]:
    """Per ground-truth track (objects with .track_id, .text): the reading's confidence and whether
    the whole plate is right; a missing reading is confidence 0, wrong (as metrics.score counts it)."""
    conf = [readings[t.track_id].confidence if t.track_id in readings else 0.0 for t in truths]
    right = [t.track_id in readings and readings[t.track_id].text == t.text for t in truths]
    return conf, right


def readings_ece(truths, readings: dict) -> float:
    """Expected calibration error of whole-reading confidence over the ground-truth tracks (see
    confidence_and_correct for missing readings)."""
    return expected_calibration_error(*confidence_and_correct(truths, readings))


def confidence_gap(confidence, correct) -> float | None:
    """Mean confidence of right readings minus that of wrong ones (None if either group is empty)."""
    conf = np.asarray(confidence, dtype=np.float64)
    right = np.asarray(correct, dtype=bool)
    if right.all() or not right.any():
        return None
    return float(conf[right].mean() - conf[~right].mean())


def risk_coverage(confidence, correct, thresholds=(0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)) -> list[dict]:
    """For each threshold: the share of tracks read (confidence >= threshold; the rest abstain as
    illegible) and the error rate among them."""
    conf = np.asarray(confidence, dtype=np.float64)
    right = np.asarray(correct, dtype=bool)
    rows = []
    for t in thresholds:
        kept = conf >= t
        rows.append({"threshold": float(t), "coverage": float(kept.mean()) if conf.size else 0.0,
                     "risk": float(1 - right[kept].mean()) if kept.any() else None, "read": int(kept.sum())})
    return rows


def _bce(confidence: np.ndarray, correct: np.ndarray) -> float:
    p = np.clip(confidence, 1e-6, 1 - 1e-6)
    return float(-(correct * np.log(p) + (1 - correct) * np.log(1 - p)).mean())


def fused_confidences(track_logits, texts, rule: str, masks, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, correct) per track for one fusion rule at one temperature."""
    conf, right = [], []
    for (char_logits, layout_logits), text in zip(track_logits, texts):
        r = fuse(rule, char_logits / temperature, layout_logits / temperature, masks, topk=1)
        conf.append(r.confidence)
        right.append(_TOKENIZER.decode(r.indices) == text)
    return np.asarray(conf), np.asarray(right, dtype=np.float64)


@dataclass(frozen=True)
class CalibrationFit:
    fusion: str
    temperature: float
    tracks: int
    recognition_rate: float
    ece_before: float
    ece_after: float
    gap_before: float | None
    gap_after: float | None
    nll_before: float
    nll_after: float

    def as_dict(self) -> dict:
        return asdict(self)


def fit_temperature(track_logits, texts, rule: str, masks) -> CalibrationFit:
    """The temperature whose track confidences have the lowest binary cross-entropy against
    whole-reading correctness (coarse-to-fine search, resolution 2^(1/8)).
    track_logits: per track (char_logits (F, 7, C), layout_logits (F, L))."""
    if len(track_logits) != len(texts) or not texts:
        raise ValueError("need one text per track and at least one track")
    conf1, right1 = fused_confidences(track_logits, texts, rule, masks, 1.0)
    best = None

    def consider(t: float):
        nonlocal best
        conf, right = fused_confidences(track_logits, texts, rule, masks, t)
        loss = _bce(conf, right)
        if best is None or loss < best[0]:
            best = (loss, t, conf, right)

    for t in COARSE_GRID:
        consider(t)
    centre = best[1]
    for step in FINE_STEPS:
        consider(centre * step)
    loss, t, conf, right = best
    return CalibrationFit(
        fusion=rule, temperature=float(t), tracks=len(texts), recognition_rate=float(right.mean()),
        ece_before=expected_calibration_error(conf1, right1), ece_after=expected_calibration_error(conf, right),
        gap_before=confidence_gap(conf1, right1), gap_after=confidence_gap(conf, right),
        nll_before=_bce(conf1, right1), nll_after=loss,
    )
