"""Calibrating the track confidence: a temperature on the per-frame logits, fitted per fusion rule.

The raw confidence (layout posterior x product of the fused characters' probabilities) compounds
every frame's over- or under-confidence; product fusion over five frames multiplies it. Dividing
the per-frame logits by a temperature T before fusion and choosing T so that the track confidence
best predicts whether the whole reading is right (minimum binary cross-entropy) calibrates it.
The fitted temperatures are stored in the model's JSON beside its weights (`temperature`), with the
figures of the fit (`calibration`), and the Reader applies them; reading with TTA views has its own
(`tta:` keys, see infer.temperature_key).

An ensemble's "vote" confidence (the agreeing members' confidences over the member count) is not a
softmax a temperature could sharpen or flatten, so it gets a monotone map instead: isotonic
regression of correctness on the confidence (pool-adjacent-violators), applied piecewise linearly
(``ConfidenceMap``). Ensemble calibrations live in their own file (ksrnet.ensemble_calibration).
"""

from __future__ import annotations

import math
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
    if not np.isfinite(conf).all():  # NaN falls in no bin but would still count in the denominator
        raise ValueError("confidences must be finite numbers")
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


SURE_CHARACTER = 0.9  # the report's "sure" band: how often such a character is wrong is what analysts rely on
READING_BANDS = ((0.0, 0.1), (0.1, 0.5), (0.5, 0.9), (0.9, 1.0 + 1e-9))  # whole-reading confidence bands


def character_calibration(truths, readings: dict) -> dict:
    """How far each character's probability can be trusted: the ECE of every read character's
    probability against whether that character is right, and how often a character read at
    >= SURE_CHARACTER is wrong. truths: objects with .track_id, .text; readings: track_id -> object
    with .text, .char_probs and .confidence (an infer.TrackReading). Tracks without a reading, or
    whose reading has no per-character probabilities, have no characters to count.
    "sure_error_by_reading": the same error rate of sure characters per band of the whole reading's
    confidence (READING_BANDS)."""
    probs, right, track_conf = [], [], []
    for truth in truths:
        r = readings.get(truth.track_id)
        if r is None or not r.text or len(r.char_probs) != len(r.text):
            continue
        probs += [float(p) for p in r.char_probs]
        right += [a == b for a, b in zip(r.text, truth.text.ljust(len(r.text)))]
        track_conf += [float(r.confidence)] * len(r.text)
    if not probs:
        return {"characters": 0, "ece": None, "sure_share": None, "sure_error": None, "sure_characters": 0,
                "sure_wrong": 0, "sure_error_by_reading": []}
    p, ok, conf = np.asarray(probs), np.asarray(right, dtype=bool), np.asarray(track_conf)
    sure = p >= SURE_CHARACTER
    # A sure character inside an unsure reading is less sure than it looks: by the reading's confidence.
    by_reading = []
    for lo, hi in READING_BANDS:
        sel = sure & (conf >= lo) & (conf < hi)
        by_reading.append({"from": lo, "to": hi, "sure_characters": int(sel.sum()),
                           "sure_error": float(1 - ok[sel].mean()) if sel.any() else None})
    return {"characters": int(p.size), "ece": expected_calibration_error(p, ok), "sure_share": float(sure.mean()),
            "sure_error": float(1 - ok[sure].mean()) if sure.any() else None, "sure_characters": int(sure.sum()),
            "sure_wrong": int((sure & ~ok).sum()), "sure_error_by_reading": by_reading}


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


NO_WRONG_READING = ("every validation reading is right: nothing bounds the fit, which would make every confidence "
                    "near-certain (confident guesses on harder tracks); fit on tracks with wrong readings too "
                    "(e.g. a harder --preset or more tracks)")


def _bce(confidence: np.ndarray, correct: np.ndarray) -> float:
    p = np.clip(confidence, 1e-6, 1 - 1e-6)
    return float(-(correct * np.log(p) + (1 - correct) * np.log(1 - p)).mean())


def fused_confidences(track_logits, texts, rule: str, masks, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, correct) per track for one fusion rule at one temperature."""
    conf, right = [], []
    for (char_logits, layout_logits), text in zip(track_logits, texts):
        r = fuse(rule, char_logits, layout_logits, masks, topk=1, temperature=temperature)
        conf.append(r.confidence)
        right.append(_TOKENIZER.decode(r.indices) == text)
    return np.asarray(conf), np.asarray(right, dtype=np.float64)


@dataclass(frozen=True)
class FitFigures:
    """How one fusion rule's confidences fared before and after a calibration fit."""

    fusion: str
    tracks: int
    recognition_rate: float
    ece_before: float
    ece_after: float
    gap_before: float | None
    gap_after: float | None
    nll_before: float
    nll_after: float

    @staticmethod
    def measure(rule: str, before: np.ndarray, after: np.ndarray, right: np.ndarray) -> dict:
        """The figures as keyword arguments, from confidences before and after the fit (a fit changes
        confidences, never readings)."""
        return dict(
            fusion=rule, tracks=int(np.size(right)), recognition_rate=float(np.mean(right)),
            ece_before=expected_calibration_error(before, right), ece_after=expected_calibration_error(after, right),
            gap_before=confidence_gap(before, right), gap_after=confidence_gap(after, right),
            nll_before=_bce(before, right), nll_after=_bce(after, right),
        )


@dataclass(frozen=True)
class CalibrationFit(FitFigures):
    temperature: float
    # No optimum was found: the set has no right reading (the cross-entropy then falls as T grows
    # until confidences underflow), or the best T is the searched range's end (confidences far off).
    unbounded: bool = False
    objective: str = "nll"  # what the temperature was fitted for (OBJECTIVES)

    def as_dict(self) -> dict:
        return asdict(self)


# What a temperature can be fitted for: "nll", calibrated confidences (the lowest cross-entropy
# against whole-reading correctness); "gap", the largest confidence gap, the competition's
# tie-breaker (mean confidence of right readings minus that of wrong ones). A gap-fitted temperature
# ranks readings as the calibrated one does but spreads them apart more: its confidences are not
# probabilities.
OBJECTIVES = ("nll", "gap")


def _objective_loss(objective: str, conf: np.ndarray, right: np.ndarray) -> float:
    if objective == "nll":
        return _bce(conf, right)
    gap = confidence_gap(conf, right)
    return -gap if gap is not None else math.inf


def fit_temperature(track_logits, texts, rule: str, masks, objective: str = "nll") -> CalibrationFit:
    """The temperature whose track confidences are best for ``objective`` (OBJECTIVES): by default
    the lowest binary cross-entropy against whole-reading correctness (coarse-to-fine search,
    resolution 2^(1/8)). track_logits: per track (char_logits (F, 7, C), layout_logits (F, L))."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if len(track_logits) != len(texts) or not texts:
        raise ValueError("need one text per track and at least one track")
    conf1, right1 = fused_confidences(track_logits, texts, rule, masks, 1.0)
    if right1.all():  # the cross-entropy then falls without bound as T shrinks: the grid's edge would win
        raise ValueError(f"{rule}: {NO_WRONG_READING}")
    if objective == "gap" and not right1.any():
        raise ValueError(f"{rule}: no validation reading is right, so there is no confidence gap to widen; fit on "
                         "tracks the model reads better")
    best = None

    def consider(t: float):
        nonlocal best
        conf, right = fused_confidences(track_logits, texts, rule, masks, t)
        loss = _objective_loss(objective, conf, right)
        if best is None or loss < best[0]:
            best = (loss, t, conf, right)

    for t in COARSE_GRID:
        consider(t)
    centre = best[1]
    for step in FINE_STEPS:
        consider(centre * step)
    loss, t, conf, right = best
    unbounded = not right.any() or not COARSE_GRID[0] < t < COARSE_GRID[-1]
    return CalibrationFit(temperature=float(t), unbounded=unbounded, objective=objective,
                          **FitFigures.measure(rule, conf1, conf, right))


# --------------------------------------------------------------------------------------------------
# A monotone map on the final track confidence (isotonic regression)


@dataclass(frozen=True)
class ConfidenceMap:
    """A non-decreasing map of [0, 1] into [0, 1]: linear between the knots (x strictly increasing,
    y non-decreasing, all in [0, 1]), flat beyond the first and last knot."""

    x: tuple[float, ...]
    y: tuple[float, ...]

    def __post_init__(self):
        x, y = np.asarray(self.x, dtype=np.float64), np.asarray(self.y, dtype=np.float64)
        if x.ndim != 1 or x.shape != y.shape or x.size == 0:
            raise ValueError("a confidence map needs equal-length, non-empty knot lists x and y")
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise ValueError("confidence map knots must be finite numbers")
        if x.min() < 0 or x.max() > 1 or y.min() < 0 or y.max() > 1:
            raise ValueError("confidence map knots must lie in [0, 1]")
        if (np.diff(x) <= 0).any() or (np.diff(y) < 0).any():
            raise ValueError("a confidence map needs strictly increasing x and non-decreasing y")

    def __call__(self, confidence):
        """The mapped confidence: a float for a number, an array for an array."""
        out = np.interp(np.asarray(confidence, dtype=np.float64), self.x, self.y)
        return float(out) if out.ndim == 0 else out

    def as_dict(self) -> dict:
        return {"x": list(self.x), "y": list(self.y)}

    @classmethod
    def from_dict(cls, data) -> "ConfidenceMap":
        if not isinstance(data, dict) or set(data) != {"x", "y"}:
            raise ValueError(f"a confidence map is {{\"x\": [...], \"y\": [...]}}, got {data!r}")
        try:
            return cls(tuple(float(v) for v in data["x"]), tuple(float(v) for v in data["y"]))
        except TypeError as exc:  # not lists of numbers
            raise ValueError(f"confidence map knots must be lists of numbers: {exc}") from exc


def isotonic_map(confidence, correct, end_weight: float = 1.0) -> ConfidenceMap:
    """Isotonic (non-decreasing) least-squares fit of correctness on confidence by
    pool-adjacent-violators: equal confidences are pooled first, then neighbouring blocks whose
    rates do not rise are merged into their weighted mean until every rate rises. Each block becomes
    two knots (its lowest and highest confidence) at its rate, so the map is flat over a block and
    linear between blocks.

    end_weight: the weight of two pseudo-readings, a right one at confidence 0 and a wrong one at 1,
    so that the map never says 0 or 1 (a finite validation set cannot show certainty; a held-out
    wrong reading mapped to 1 costs unbounded log-loss). 0 for plain PAV."""
    conf = np.asarray(confidence, dtype=np.float64)
    right = np.asarray(correct, dtype=np.float64)
    if conf.shape != right.shape or conf.ndim != 1 or conf.size == 0:
        raise ValueError("confidence and correct must be equal-length, non-empty 1-D sequences")
    if conf.min() < 0 or conf.max() > 1:
        raise ValueError("confidences must lie in [0, 1]")
    if end_weight < 0:
        raise ValueError(f"end_weight must be >= 0, got {end_weight}")
    weight = np.ones_like(conf)
    if end_weight > 0:
        conf, right = np.r_[0.0, conf, 1.0], np.r_[1.0, right, 0.0]
        weight = np.r_[end_weight, weight, end_weight]
    values, inverse = np.unique(conf, return_inverse=True)
    counts = np.bincount(inverse, weights=weight)
    sums = np.bincount(inverse, weights=weight * right)
    # blocks as [low x, high x, weight, weighted sum of correct]; a stack, merged while the last two do not rise
    blocks: list[list[float]] = []
    for x, n, s in zip(values, counts, sums):
        blocks.append([x, x, n, s])
        while len(blocks) > 1 and blocks[-2][3] / blocks[-2][2] >= blocks[-1][3] / blocks[-1][2]:
            low, _, n0, s0 = blocks[-2]
            _, high, n1, s1 = blocks.pop()
            blocks[-1] = [low, high, n0 + n1, s0 + s1]
    xs, ys = [], []
    for low, high, n, s in blocks:
        rate = min(max(s / n, 0.0), 1.0)
        xs.append(low)
        ys.append(rate)
        if high > low:
            xs.append(high)
            ys.append(rate)
    return ConfidenceMap(tuple(float(v) for v in xs), tuple(float(v) for v in ys))


@dataclass(frozen=True)
class MapFit(FitFigures):
    """The figures of a confidence-map fit, like CalibrationFit's (the map instead of a temperature)."""

    confidence_map: ConfidenceMap

    def as_dict(self) -> dict:
        return {**asdict(self), "confidence_map": self.confidence_map.as_dict()}


def fit_confidence_map(confidence, correct, rule: str) -> MapFit:
    """The isotonic map (isotonic_map, one pseudo-reading at each end) of final track confidences
    (one fusion rule) onto whole-reading correctness."""
    conf = np.asarray(confidence, dtype=np.float64)
    right = np.asarray(correct, dtype=np.float64)
    if right.size and right.all():  # the map would be flat near 1: a split vote read as near-certain
        raise ValueError(f"{rule}: {NO_WRONG_READING}")
    mapping = isotonic_map(conf, right)
    after = mapping(conf)
    return MapFit(confidence_map=mapping, **FitFigures.measure(rule, conf, after, right))
