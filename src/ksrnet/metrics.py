"""Scoring of plate readings the way LRLPR-26 ranks them, plus the figures an analyst needs.

Recognition Rate (all 7 characters right) is the competition metric; the confidence gap (mean
confidence of right reads minus that of wrong reads) is its tie-breaker. A track with no prediction
counts as a wrong read with confidence 0, so leaving hard tracks out never helps the RR (it can still
raise the gap: a missing track pulls the wrong side's mean down to 0). The gap is None when either side
is empty (all right or all wrong): a mean confidence alone is not a gap.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field

CONFIDENT = 0.9


@dataclass(frozen=True)
class GroundTruth:
    track_id: str
    text: str
    layout: str | None = None
    scenario: str | None = None

    @classmethod
    def of_track(cls, track) -> "GroundTruth":
        """The label of a labelled track (``tracks.Track`` or a synthetic track)."""
        layout = track.layout.value if track.layout is not None else None
        return cls(track.track_id, track.text, layout, getattr(track, "scenario", None))


@dataclass(frozen=True)
class Reading:
    track_id: str
    text: str
    confidence: float


def levenshtein(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


@dataclass
class Scores:
    tracks: int
    recognition_rate: float
    cer: float
    char_accuracy: float
    confidence_gap: float | None
    mean_conf_right: float | None
    mean_conf_wrong: float | None
    confident_wrong: int
    missing: int

    def as_dict(self) -> dict:
        return asdict(self)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _score_group(pairs: list[tuple[GroundTruth, Reading | None]]) -> Scores:
    right_conf, wrong_conf = [], []
    edits = chars = char_hits = confident_wrong = missing = 0
    for truth, reading in pairs:
        if reading is None:
            missing += 1
            reading = Reading(truth.track_id, "", 0.0)
        correct = reading.text == truth.text
        (right_conf if correct else wrong_conf).append(reading.confidence)
        if not correct and reading.confidence >= CONFIDENT:
            confident_wrong += 1
        edits += levenshtein(reading.text, truth.text)
        chars += len(truth.text)
        # Positional accuracy: a reading of the wrong length still earns the slots it got right.
        char_hits += sum(p == t for p, t in zip(reading.text, truth.text))
    n = len(pairs)
    mean_right, mean_wrong = _mean(right_conf), _mean(wrong_conf)
    # Undefined when a side is empty, as calibration.confidence_gap has it: otherwise an all-right group
    # would show its mean confidence (say 90 points) as its "gap".
    gap = mean_right - mean_wrong if mean_right is not None and mean_wrong is not None else None
    return Scores(
        tracks=n,
        recognition_rate=len(right_conf) / n if n else 0.0,
        cer=edits / chars if chars else 0.0,
        char_accuracy=char_hits / chars if chars else 0.0,
        confidence_gap=gap,
        mean_conf_right=mean_right,
        mean_conf_wrong=mean_wrong,
        confident_wrong=confident_wrong,
        missing=missing,
    )


@dataclass
class Report:
    overall: Scores
    by_layout: dict[str, Scores] = field(default_factory=dict)
    by_scenario: dict[str, Scores] = field(default_factory=dict)
    extra_predictions: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "overall": self.overall.as_dict(),
            "by_layout": {k: v.as_dict() for k, v in self.by_layout.items()},
            "by_scenario": {k: v.as_dict() for k, v in self.by_scenario.items()},
            "extra_predictions": self.extra_predictions,
        }


def score(truths: list[GroundTruth], readings: dict[str, Reading]) -> Report:
    """Score readings (keyed by track id) against every ground-truth track."""
    if not truths:
        raise ValueError("no annotated tracks to score against")
    pairs = [(t, readings.get(t.track_id)) for t in truths]
    by_layout: dict[str, list] = defaultdict(list)
    by_scenario: dict[str, list] = defaultdict(list)
    for pair in pairs:
        if pair[0].layout:
            by_layout[pair[0].layout].append(pair)
        if pair[0].scenario:
            by_scenario[pair[0].scenario].append(pair)
    known = {t.track_id for t in truths}
    return Report(
        overall=_score_group(pairs),
        by_layout={k: _score_group(v) for k, v in sorted(by_layout.items())},
        by_scenario={k: _score_group(v) for k, v in sorted(by_scenario.items())},
        extra_predictions=sorted(set(readings) - known),
    )
