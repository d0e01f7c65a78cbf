"""Calibration of an ensemble: a file of its own, bound to its members.

An ensemble is a combination of models chosen when reading (``--model A --model B``), so its
calibration cannot go unannounced into one member's JSON. ``ksrnet calibrate --model A --model B
--ensemble logit|vote --out FILE`` writes FILE (JSON)::

    {"format": "ksrnet-ensemble-calibration", "version": 1,
     "rule": "logit" | "vote",
     "tta_views": null | ["identity", ...],        # the views the members read with
     "members": [{"model": "parseq-tiny", "kind": "parseq", "sha256": "<of the weights file>",
                  "temperature": {<the member's own temperatures when fitted>}}, ...],
     "temperature": {"product@5": 1.7, ...},          # rule "logit": divides the averaged log-probs
     "confidence_map": {"product@5": {"x": [...], "y": [...]}},  # rule "vote": isotonic map
     "fits": [{<figures of each fit>}], "source": "<what it was fitted on>"}

Keys are those of the per-model temperatures ("rule" or "rule@F", infer.temperature_key).
``ksrnet predict/eval --calibration FILE`` applies it and refuses, naming the difference, when the
members (the sha256 of their weights, in any order), the rule or the TTA views are not those it was
fitted for, and for "vote" when a member's own temperatures changed since (they make the
confidences that are voted on; "logit" averages the members' raw log-probabilities).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from ksrnet.calibration import ConfidenceMap
from ksrnet.infer import ENSEMBLE_RULES, checked_temperatures, parse_temperature_key

FORMAT = "ksrnet-ensemble-calibration"
VERSION = 1


class EnsembleCalibrationError(ValueError):
    pass


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Member:
    model: str  # as the user named it (informational)
    kind: str  # "parseq", "parseq-onnx", "ksrnet", "mflpr2": the same file read two ways is two members
    sha256: str  # of the weights file: the identity
    temperature: dict = field(default_factory=dict)  # the member's own temperatures in use

    @property
    def identity(self) -> tuple[str, str]:
        return self.kind, self.sha256


def _views(views) -> list[str] | None:
    return sorted(views) if views else None  # voting averages the views: their order does not matter


@dataclass
class EnsembleCalibration:
    rule: str
    members: list[Member]
    tta_views: list[str] | None = None
    temperatures: dict[str, float] = field(default_factory=dict)
    confidence_maps: dict[str, ConfidenceMap] = field(default_factory=dict)
    fits: list[dict] = field(default_factory=list)
    source: str = ""

    def __post_init__(self):
        if self.rule not in ENSEMBLE_RULES:
            raise EnsembleCalibrationError(f"ensemble rule must be one of {', '.join(ENSEMBLE_RULES)}, "
                                           f"got {self.rule!r}")
        if len(self.members) < 2:
            raise EnsembleCalibrationError("an ensemble calibration needs at least two members")
        if self.rule == "logit" and self.confidence_maps:
            raise EnsembleCalibrationError("the logit rule is calibrated by temperatures, not confidence maps")
        if self.rule == "vote" and self.temperatures:
            raise EnsembleCalibrationError("the vote rule is calibrated by confidence maps, not temperatures")
        try:
            self.temperatures = checked_temperatures(self.temperatures)
        except ValueError as exc:
            raise EnsembleCalibrationError(str(exc)) from exc
        bad = [k for k in self.confidence_maps if parse_temperature_key(k) is None or k.startswith("tta:")]
        bad += [k for k in self.temperatures if k.startswith("tta:")]
        if bad:
            raise EnsembleCalibrationError(f"ensemble calibration keys are rule or rule@F, got {bad}")
        self.tta_views = _views(self.tta_views)

    # ----------------------------------------------------------------------------------------------

    def as_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "rule": self.rule, "tta_views": self.tta_views,
                "members": [asdict(m) for m in self.members], "temperature": self.temperatures,
                "confidence_map": {k: m.as_dict() for k, m in self.confidence_maps.items()},
                "fits": self.fits, "source": self.source}

    def save(self, path: str | Path) -> Path:
        from ksrnet.atomic_files import atomic_write

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.as_dict(), indent=2)
        atomic_write(path, lambda p: Path(p).write_text(text))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "EnsembleCalibration":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise EnsembleCalibrationError(f"cannot read the ensemble calibration {path}: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise EnsembleCalibrationError(f"{path} is not an ensemble calibration (written by `ksrnet calibrate "
                                           "--model A --model B --out FILE`)")
        if data.get("version") != VERSION:
            raise EnsembleCalibrationError(f"{path}: unsupported ensemble calibration version {data.get('version')!r}")
        try:
            members = [Member(str(m["model"]), str(m["kind"]), str(m["sha256"]), dict(m.get("temperature") or {}))
                       for m in data["members"]]
            maps = {k: ConfidenceMap.from_dict(v) for k, v in (data.get("confidence_map") or {}).items()}
            return cls(rule=data["rule"], members=members, tta_views=data.get("tta_views"),
                       temperatures=dict(data.get("temperature") or {}), confidence_maps=maps,
                       fits=list(data.get("fits") or []), source=str(data.get("source", "")))
        except EnsembleCalibrationError as exc:
            raise EnsembleCalibrationError(f"{path}: {exc}") from exc
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise EnsembleCalibrationError(f"{path} is a broken ensemble calibration: {exc!r}") from exc

    # ----------------------------------------------------------------------------------------------

    def check(self, members: Sequence[Member], rule: str, tta_views, name: str = "the calibration") -> None:
        """Refuse (EnsembleCalibrationError) unless this calibration was fitted for these members,
        this rule and these TTA views."""
        problems = []
        if rule != self.rule:
            problems.append(f"it was fitted for --ensemble {self.rule}, not {rule}")
        if _views(tta_views) != self.tta_views:
            fitted = ",".join(self.tta_views) if self.tta_views else "none"
            now = ",".join(_views(tta_views)) if tta_views else "none"
            problems.append(f"it was fitted with TTA views {fitted}, these readings use {now}")
        want = sorted(m.identity for m in self.members)
        have = sorted(m.identity for m in members)
        if want != have:
            extra = [f"{m.model} ({m.kind}, sha256 {m.sha256[:12]})" for m in members if m.identity not in want]
            missing = [f"{m.model} ({m.kind}, sha256 {m.sha256[:12]})" for m in self.members
                       if m.identity not in have]
            text = "its members differ"
            if extra:
                text += f"; not fitted with: {', '.join(extra)}"
            if missing:
                text += f"; fitted with but not given: {', '.join(missing)}"
            if not extra and not missing:
                text += f" in number ({len(self.members)} fitted, {len(members)} given)"
            problems.append(text)
        elif rule == self.rule == "vote":
            fitted = {m.identity: m.temperature for m in self.members}
            changed = [m.model for m in members if fitted[m.identity] != m.temperature]
            if changed:
                problems.append(f"the stored temperatures of {', '.join(changed)} changed since (the vote rule "
                                "calibrates the members' calibrated confidences)")
        if problems:
            raise EnsembleCalibrationError(f"{name} does not fit this ensemble: " + "; ".join(problems)
                                           + ". Refit it with `ksrnet calibrate` and the same --model, "
                                           "--ensemble and --tta options.")
