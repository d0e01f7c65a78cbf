"""The competition's submission file: `track_00001,ABC1234;0.9876`, one line per track.

Writing is atomic (a crash never leaves a half-written predictions.txt or submission.zip behind) and
deterministic (natural track order, confidence with exactly four decimals). Reading is strict about
the format and lenient about the reading itself: a wrong or short plate is still a prediction.
"""

from __future__ import annotations

import io
import math
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .atomic_files import atomic_write_bytes
from .plates import normalize_text
from .tracks import duplicate_ids, natural_key

PREDICTIONS_NAME = "predictions.txt"
CONFIDENCE_DECIMALS = 4
_FORBIDDEN_IN_FIELDS = set(",;\r\n")


@dataclass(frozen=True)
class Prediction:
    track_id: str
    text: str  # may be empty when nothing could be read
    confidence: float


class PredictionsError(ValueError):
    """A predictions file that does not follow the format; names the file and line."""

    def __init__(self, path: Path | str, line: int | None, problem: str):
        self.path = Path(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}, line {line}" if line is not None else str(self.path)
        super().__init__(f"{where}: {problem}")


# ---------------------------------------------------------------------------------------------
# Writing


def _clamped_confidence(pred: Prediction) -> float:
    try:
        value = float(pred.confidence)
    except (TypeError, ValueError):
        raise ValueError(f"{pred.track_id}: confidence {pred.confidence!r} is not a number") from None
    if math.isnan(value):
        raise ValueError(f"{pred.track_id}: confidence is NaN")
    return min(1.0, max(0.0, value))


def _check_field(track_id: str, what: str, value: str) -> None:
    bad = _FORBIDDEN_IN_FIELDS & set(value)
    if bad:
        raise ValueError(f"{track_id!r}: {what} {value!r} contains {''.join(sorted(bad))!r}")


def format_line(pred: Prediction) -> str:
    track_id = str(pred.track_id).strip()
    if not track_id or any(c.isspace() for c in track_id):
        raise ValueError(f"track id {pred.track_id!r} is empty or contains whitespace")
    _check_field(track_id, "track id", track_id)
    text = normalize_text(pred.text)
    _check_field(track_id, "text", text)
    return f"{track_id},{text};{_clamped_confidence(pred):.{CONFIDENCE_DECIMALS}f}"


def format_predictions(preds: Iterable[Prediction] | Mapping[str, Prediction]) -> str:
    """The whole file as text, in natural track order; ValueError on duplicates or bad values."""
    items = list(preds.values()) if isinstance(preds, Mapping) else list(preds)
    dupes = duplicate_ids(str(p.track_id).strip() for p in items)
    if dupes:
        raise ValueError(f"duplicated track ids: {', '.join(dupes)}")
    ordered = sorted(items, key=lambda p: natural_key(str(p.track_id).strip()))
    return "".join(format_line(p) + "\n" for p in ordered)


def _zip_bytes(text: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        # fixed time stamp and mode: the same predictions give the same zip, byte for byte
        info = zipfile.ZipInfo(PREDICTIONS_NAME, date_time=(1980, 1, 1, 0, 0, 0))
        info.external_attr = 0o644 << 16
        zf.writestr(info, text, compress_type=zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def write_predictions(preds: Iterable[Prediction] | Mapping[str, Prediction], path: Path | str, *,
                      zip_path: Path | str | None = None) -> Path:
    """Write predictions.txt (and, if asked, a submission zip holding it); returns the txt path."""
    text = format_predictions(preds)
    # Both payloads exist before either file is touched, so a bad input or encoding error changes nothing.
    payloads = {Path(path): text.encode("utf-8")}
    if zip_path is not None:
        payloads[Path(zip_path)] = _zip_bytes(text)
    for target, data in payloads.items():
        atomic_write_bytes(target, data)
    return Path(path)


# ---------------------------------------------------------------------------------------------
# Reading


def _zip_member(zf: zipfile.ZipFile, path: Path) -> str:
    members = [m for m in zf.namelist() if not m.endswith("/") and not m.startswith("__MACOSX/")]
    exact = [m for m in members if m.rsplit("/", 1)[-1] == PREDICTIONS_NAME]
    if len(exact) == 1:
        return exact[0]
    texts = [m for m in members if m.lower().endswith(".txt")]
    if len(exact) > 1 or len(texts) != 1:
        found = ", ".join(members) or "nothing"
        raise PredictionsError(path, None, f"zip must hold one {PREDICTIONS_NAME} (found {found})")
    return texts[0]


def _read_raw(path: Path) -> bytes:
    if path.is_dir():
        raise PredictionsError(path, None, "is a folder, not a predictions file (predictions.txt or a zip)")
    if not path.is_file():
        raise PredictionsError(path, None, "file not found")
    if not zipfile.is_zipfile(path):
        if path.suffix.lower() == ".zip":
            raise PredictionsError(path, None, "not a valid zip file")
        return path.read_bytes()
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.read(_zip_member(zf, path))
    except (zipfile.BadZipFile, OSError) as exc:
        raise PredictionsError(path, None, f"cannot read zip ({exc})") from exc


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise PredictionsError(path, line, f"not UTF-8 text (bad byte at offset {exc.start})") from exc


def parse_line(line: str, rewritten: list[tuple[str, str, str]] | None = None) -> Prediction:
    """One `track_id,TEXT;confidence` line; ValueError says what is wrong with it. The text is
    normalised (plates.normalize_text); where that changed it, (track id, as written, as read) is
    appended to ``rewritten``."""
    if "," not in line:
        raise ValueError("expected 'track_id,TEXT;confidence' but there is no comma")
    track_id, rest = (s.strip() for s in line.split(",", 1))
    if ";" not in rest:
        raise ValueError("expected 'track_id,TEXT;confidence' but there is no semicolon")
    text, conf_str = (s.strip() for s in rest.rsplit(";", 1))
    if not track_id:
        raise ValueError("empty track id")
    if "," in text or ";" in text:
        raise ValueError(f"text {text!r} contains a separator")
    try:
        confidence = float(conf_str)
    except ValueError:
        raise ValueError(f"confidence {conf_str!r} is not a number") from None
    if not (0.0 <= confidence <= 1.0):  # also rejects NaN
        raise ValueError(f"confidence {conf_str} is outside [0, 1]")
    norm = normalize_text(text)
    if rewritten is not None and norm != text:
        rewritten.append((track_id, text, norm))
    return Prediction(track_id=track_id, text=norm, confidence=confidence)


def read_predictions(path: Path | str, rewritten: list[tuple[str, str, str]] | None = None) -> dict[str, Prediction]:
    """Predictions by track id, in file order, from predictions.txt or a submission zip. Readings
    are normalised (case, spaces and - . · separators); ``rewritten`` collects those that changed."""
    path = Path(path)
    content = _decode(path, _read_raw(path))
    preds: dict[str, Prediction] = {}
    first_line: dict[str, int] = {}
    # \r\n (Windows) and a lone \r (old Mac editors) end lines too; other separators stay inside a line
    for number, line in enumerate(content.replace("\r\n", "\n").replace("\r", "\n").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            pred = parse_line(line, rewritten)
        except ValueError as exc:
            raise PredictionsError(path, number, str(exc)) from None
        if pred.track_id in preds:
            raise PredictionsError(path, number, f"duplicate track id {pred.track_id} "
                                                f"(first on line {first_line[pred.track_id]})")
        preds[pred.track_id] = pred
        first_line[pred.track_id] = number
    return preds
