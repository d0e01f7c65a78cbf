"""LRLPR-26 tracks on disk: find them, read them (strictly), write them (atomically).

A track is a folder holding `lr-NNN.{png,jpg}` frames, optionally `hr-NNN.*` frames and an
`annotations.json`. Training data nests tracks as `Scenario-X/<Layout>/track_NNNNN/`; test data is
flat. The reader refuses anything it would otherwise have to guess about (a missing frame, a
truncated image, a label that is not a plate) with a TrackError naming the track and the problem,
and it turns harmless oddities (grayscale, alpha, 16-bit) into RGB uint8 with a warning.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from .plates import Layout, PlateTextError, normalize_text, text_problems, validate_text

# Written by `ksrnet synth` beside the frames (flows, canonical HR); readers of real data ignore it.
SYNTH_GROUND_TRUTH_NAME = "synth_gt.npz"
ANNOTATIONS_NAME = "annotations.json"
CORNER_KEYS = ("top-left", "top-right", "bottom-right", "bottom-left")
FRAME_KINDS = ("lr", "hr")
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg")
# Real LRLPR-26 crops of one track differ by a few pixels; only a gross mismatch hints at a mixed-up track.
MAX_AREA_RATIO = 4.0
# Frame names quoted in one error message, at most (a folder may hold thousands of stray frames).
MAX_NAMES_SHOWN = 8

_FRAME_RE = re.compile(r"^(lr|hr)-(\d+)\.(png|jpe?g)$", re.IGNORECASE)
_FRAME_LIKE_RE = re.compile(r"^(lr|hr)-\d+\.[^.]+$", re.IGNORECASE)
_SCENARIO_RE = re.compile(r"^scenario-.+$", re.IGNORECASE)
_SKIPPED_DIRS = {"__MACOSX"}


class TrackError(Exception):
    """One track cannot be used; says which one, where it is and why."""

    def __init__(self, track_id: str, path: Path | str, problem: str):
        self.track_id = track_id
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{track_id} ({self.path}): {problem}")

    def __reduce__(self):
        # Keeps the error picklable (worker processes hand it back to the parent).
        return (type(self), (self.track_id, self.path, self.problem))


class DatasetError(Exception):
    """The dataset as a whole cannot be used (root missing, nothing that looks like a track)."""


@dataclass
class Track:
    track_id: str
    lr: list[np.ndarray]
    hr: list[np.ndarray] = field(default_factory=list)
    lr_names: list[str] = field(default_factory=list)
    hr_names: list[str] = field(default_factory=list)
    text: str | None = None
    layout: Layout | None = None
    corners: dict[str, np.ndarray] = field(default_factory=dict)
    scenario: str | None = None
    path: Path | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return len(self.lr)


@dataclass(frozen=True)
class Annotation:
    """What a track folder says about its plate, without decoding a single image."""

    text: str | None
    layout: Layout | None
    corners: dict[str, np.ndarray]
    scenario: str | None
    warnings: tuple[str, ...] = ()


@dataclass
class DatasetReadResult:
    tracks: list[Track]
    failures: list[TrackError]

    def duplicate_track_ids(self) -> list[str]:
        """Track ids read from more than one folder (a submission could not tell them apart)."""
        return duplicate_ids(track.track_id for track in self.tracks)


# ---------------------------------------------------------------------------------------------
# Naming and discovery


def natural_key(text: str) -> tuple:
    """Sort key that orders embedded numbers by value: track_2 before track_10."""
    parts = re.split(r"(\d+)", str(text))
    return tuple((0, int(p), p) if p.isdigit() else (1, p.lower(), p) for p in parts if p)


def duplicate_ids(ids: Iterable[str]) -> list[str]:
    """The ids that occur more than once, in natural order (one line of predictions.txt names one track)."""
    counts = Counter(ids)
    return sorted((i for i, n in counts.items() if n > 1), key=natural_key)


def _path_key(relative: Path) -> tuple:
    return tuple(natural_key(part) for part in relative.parts)


def scenario_hint(path: Path | str) -> str | None:
    """The nearest `Scenario-*` folder above (or at) the path, as spelt on disk."""
    for part in reversed(Path(path).parts):
        if _SCENARIO_RE.match(part):
            return part
    return None


def layout_hint(path: Path | str) -> Layout | None:
    """The nearest folder named Brazilian or Mercosur above (or at) the path."""
    for part in reversed(Path(path).parts):
        with contextlib.suppress(PlateTextError):
            return Layout.parse(part)
    return None


def _has_lr_frames(directory: Path) -> bool:
    try:
        return any(_FRAME_RE.match(name) and name[:2].lower() == "lr" for name in os.listdir(directory))
    except OSError:
        return False


def _walked(name: str) -> bool:
    """Folders the search looks into: not hidden, not macOS/VCS debris."""
    return not name.startswith(".") and name not in _SKIPPED_DIRS


def _looks_like_track(directory: Path) -> bool:
    return directory.name.startswith("track_") or _has_lr_frames(directory)


def _is_track_dir(directory: Path) -> bool:
    return _looks_like_track(directory) and not _has_track_subdirs(directory)


def _has_track_subdirs(directory: Path) -> bool:
    """Tracks do not nest: a folder holding track folders is a dataset, even beside stray lr frames."""
    try:
        children = [Path(e.path) for e in os.scandir(directory) if e.is_dir() and _walked(e.name)]
    except OSError:
        return False
    return any(_looks_like_track(child) for child in children)


def _root_is_track(root: Path) -> bool:
    # A root named like "track_sets" that holds folders is a dataset, not a track.
    if _has_track_subdirs(root):
        return False
    if _has_lr_frames(root):
        return True
    if not root.name.startswith("track_"):
        return False
    return not any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir())


def discover_tracks(root: Path | str) -> list[Path]:
    """Track folders under root at any depth (root itself may be one), in natural path order; or,
    when root is a .txt file, the track folders it lists (see read_track_list)."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"dataset root {root} does not exist")
    if root.is_file() and root.suffix.lower() == TRACK_LIST_SUFFIX:
        return read_track_list(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} is neither a directory nor a {TRACK_LIST_SUFFIX} list of track folders")
    if _root_is_track(root):
        # "." or "..": the folder's own name is the track id
        return [Path(os.path.abspath(root)) if root.name in ("", "..") else root]
    found: list[Path] = []
    seen = {os.path.realpath(root)}
    # Symlinked folders are followed like symlinked tracks are; each real folder is walked once.
    for dirpath, dirnames, _ in os.walk(root, followlinks=True):
        here = Path(dirpath)
        keep = []
        for name in dirnames:
            if not _walked(name):
                continue
            if _is_track_dir(here / name):
                found.append(here / name)
                continue
            real = os.path.realpath(here / name)
            if real not in seen:  # a link back up would loop forever
                seen.add(real)
                keep.append(name)
        dirnames[:] = keep  # tracks do not nest, so their insides are never walked
    if not found:
        raise DatasetError(
            f"no tracks found under {root}: looked for folders named track_* or holding "
            f"lr-NNN.{{png,jpg,jpeg}} frames, at any depth"
        )
    return sorted(found, key=lambda p: _path_key(p.relative_to(root)))


TRACK_LIST_SUFFIX = ".txt"


def read_track_list(path: Path | str) -> list[Path]:
    """The track folders a text file lists, one per line, in its order (e.g. the val_tracks.txt of a
    training run): blank lines and lines starting with # are skipped, relative paths are taken from
    the file's folder, and every entry must be a track folder."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read the track list {path}: {exc}") from None
    found, missing = [], []
    for line in lines:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        folder = Path(entry) if Path(entry).is_absolute() else path.parent / entry
        (found if folder.is_dir() and _is_track_dir(folder) else missing).append(folder)
    if missing:
        shown = ", ".join(str(m) for m in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DatasetError(f"{len(missing)} of the {len(found) + len(missing)} entries of {path} are not track "
                           f"folders: {shown}")
    if not found:
        raise DatasetError(f"{path} lists no track folders")
    return found


def track_dir(root: Path | str, track_id: str, scenario: str | None = None,
              layout: Layout | str | None = None) -> Path:
    """Where a track lives: root/scenario/layout/track_id, leaving out the parts not given."""
    for name, value in (("track_id", track_id), ("scenario", scenario)):
        if value is not None and not _is_plain_component(value):
            raise ValueError(f"{name} {value!r} is not a plain folder name")
    path = Path(root)
    if scenario:
        path /= scenario
    if layout is not None:
        path /= Layout.parse(layout).value
    return path / track_id


def _is_plain_component(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name


# ---------------------------------------------------------------------------------------------
# Annotations


def read_annotations(path: Path | str) -> Annotation:
    """Ground truth of one track folder from annotations.json and the folder names only."""
    path = Path(path)
    track_id = path.name
    scenario = scenario_hint(path)
    hint = layout_hint(path)
    ann_path = path / ANNOTATIONS_NAME
    if not ann_path.is_file():
        # Test folders carry no labels; a layout folder still tells the layout.
        return Annotation(text=None, layout=hint, corners={}, scenario=scenario)

    def fail(problem: str) -> TrackError:
        return TrackError(track_id, path, f"{ANNOTATIONS_NAME}: {problem}")

    data = _load_json(ann_path, fail)
    if not isinstance(data, dict):
        raise fail(f"expected a JSON object, found {type(data).__name__}")
    warnings: list[str] = []
    text = _parse_text(data, fail)
    layout = _parse_layout(data, text, hint, fail, warnings)
    corners = _parse_corners(data.get("corners"), fail)
    return Annotation(text=text, layout=layout, corners=corners, scenario=scenario,
                      warnings=tuple(warnings))


def _load_json(ann_path: Path, fail: Callable[[str], TrackError]):
    try:
        raw = ann_path.read_bytes()
    except OSError as exc:
        raise fail(f"cannot be read ({exc.strerror or exc})") from exc
    if not raw.strip():
        raise fail("file is empty")
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise fail(f"not UTF-8 text (bad byte at offset {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise fail(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc


def _parse_text(data: dict, fail: Callable[[str], TrackError]) -> str:
    if "plate_text" not in data:
        raise fail("no plate_text")
    raw = data["plate_text"]
    if not isinstance(raw, str):
        raise fail(f"plate_text must be a string, found {raw!r}")
    problems = text_problems(raw)
    if problems:
        raise fail(f"invalid plate_text {raw!r}: " + "; ".join(problems))
    return normalize_text(raw)


def _parse_layout(data: dict, text: str, hint: Layout | None, fail: Callable[[str], TrackError],
                  warnings: list[str]) -> Layout:
    raw = data.get("plate_layout")
    if raw is None:
        _, layout = validate_text(text)
        warnings.append(f"{ANNOTATIONS_NAME}: no plate_layout, {layout.value} inferred from the text")
    else:
        try:
            layout = Layout.parse(raw)
        except PlateTextError as exc:
            raise fail(str(exc)) from exc
        problems = text_problems(text, layout)
        if problems:
            raise fail(f"plate_layout {layout.value} contradicts plate_text: " + "; ".join(problems))
    if hint is not None and hint is not layout:
        raise fail(f"plate_layout {layout.value} contradicts the folder it is in ({hint.value})")
    return layout


def _parse_corners(raw, fail: Callable[[str], TrackError]) -> dict[str, np.ndarray]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise fail(f"corners must be an object keyed by frame name, found {type(raw).__name__}")
    return {str(name): _parse_quad(str(name), value, fail) for name, value in raw.items()}


def _parse_quad(name: str, value, fail: Callable[[str], TrackError]) -> np.ndarray:
    """4 corners as float32 (4, 2) in the order of CORNER_KEYS; also accepts a list of 4 points."""
    if isinstance(value, dict):
        missing = [k for k in CORNER_KEYS if k not in value]
        extra = sorted(set(value) - set(CORNER_KEYS))
        if missing or extra:
            detail = "; ".join(
                s for s in (f"missing {', '.join(missing)}" if missing else "",
                            f"unexpected {', '.join(map(str, extra))}" if extra else "") if s
            )
            raise fail(f"corners of {name}: {detail}")
        points = [value[k] for k in CORNER_KEYS]
    elif isinstance(value, list) and len(value) == 4:
        points = value
    else:
        raise fail(f"corners of {name}: expected 4 points, found {value!r}")
    out = np.zeros((4, 2), dtype=np.float32)
    for i, point in enumerate(points):
        if not (isinstance(point, list) and len(point) == 2 and all(_is_number(v) for v in point)):
            raise fail(f"corners of {name}: {CORNER_KEYS[i]} must be [x, y] numbers, found {point!r}")
        out[i] = point
    return out


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _is_number(value) -> bool:
    """A JSON number the float32 corners can hold: a corrupt 1e39 would become inf, and an integer of
    hundreds of digits does not even convert to a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value) and abs(value) <= _FLOAT32_MAX
    except OverflowError:
        return False


# ---------------------------------------------------------------------------------------------
# Frames


@dataclass
class _FolderListing:
    frames: dict[str, list[tuple[int, str]]]  # kind -> [(number, file name)]
    warnings: list[str]


def _list_folder(path: Path, fail: Callable[[str], TrackError]) -> _FolderListing:
    try:
        entries = sorted(os.scandir(path), key=lambda e: natural_key(e.name))
    except OSError as exc:
        raise fail(f"cannot list folder ({exc.strerror or exc})") from exc
    frames: dict[str, list[tuple[int, str]]] = {kind: [] for kind in FRAME_KINDS}
    warnings = []
    for entry in entries:
        name = entry.name
        if name.startswith("."):
            continue
        match = _FRAME_RE.match(name)
        if match and entry.is_file():
            frames[match.group(1).lower()].append((int(match.group(2)), name))
        elif entry.is_dir():
            warnings.append(f"{name}/: unexpected folder ignored")
        elif _FRAME_LIKE_RE.match(name):
            warnings.append(f"{name}: frame in an unsupported format ignored (expected png/jpg)")
        elif name not in (ANNOTATIONS_NAME, SYNTH_GROUND_TRUTH_NAME):
            warnings.append(f"{name}: unexpected file ignored")
    return _FolderListing(frames, warnings)


def _check_numbering(kind: str, frames: list[tuple[int, str]], fail: Callable[[str], TrackError]) -> list[str]:
    """File names in frame order; frames must be numbered 1..N once each."""
    frames = sorted(frames)
    by_number: dict[int, str] = {}
    for number, name in frames:
        if number == 0:
            raise fail(f"{name}: frame numbers start at 1")
        if number in by_number:
            raise fail(f"two files for {kind} frame {number}: {by_number[number]} and {name}")
        by_number[number] = name
    last = max(by_number)
    if last > len(by_number):
        # Counted, never listed in full: a stray lr-20240101.png must not make a 20-million-name message.
        missing = itertools.islice((n for n in range(1, last + 1) if n not in by_number), MAX_NAMES_SHOWN)
        names = ", ".join(f"{kind}-{n:03d}" for n in missing)
        more = last - len(by_number) - MAX_NAMES_SHOWN
        found = list(by_number.values())
        raise fail(f"missing {names}{f' and {more} more' if more > 0 else ''} "
                   f"(found {', '.join(found[:MAX_NAMES_SHOWN])}{', ...' if len(found) > MAX_NAMES_SHOWN else ''})")
    return [name for _, name in frames]


@contextlib.contextmanager
def _strict_decoding():
    """Make PIL refuse truncated data, whatever another module set the global flag to."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _png_bit_depth(data: bytes) -> int | None:
    # PNG signature (8) + IHDR length and type (8) + width and height (8): the next byte is the depth.
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 24:
        return data[24]
    return None


def decode_image(data: bytes, name: str) -> tuple[np.ndarray, list[str]]:
    """Decode image bytes fully into RGB uint8; raises ValueError when they are not a whole image."""
    if not data:
        raise ValueError(f"{name} is empty (0 bytes)")
    try:
        with _strict_decoding():
            image = Image.open(io.BytesIO(data))
            image.load()
    except UnidentifiedImageError as exc:
        raise ValueError(f"{name} is not a valid image (content not recognised as an image)") from exc
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, zlib errors...
        raise ValueError(f"{name} is truncated or not a valid image ({exc})") from exc
    return _to_rgb8(image, data, name)


_GRAY_MODES = ("1", "L", "LA", "La", "I")


def _scale16(values: np.ndarray) -> np.ndarray:
    # (v + 128) // 257 rounds to the nearest 8-bit level and exactly inverts v8 * 257.
    return np.clip((values.astype(np.int64) + 128) // 257, 0, 255).astype(np.uint8)


def _decode_png16(data: bytes, name: str) -> np.ndarray:
    """All channels of a 16-bit PNG at full depth, scaled to RGB uint8."""
    import cv2  # PIL keeps only the high byte of 16-bit colour PNGs (a floor, not a rounding)

    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ValueError(f"{name} is not a valid image (16-bit PNG that cannot be decoded)")
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[2] in (1, 2):  # gray, gray + alpha
        array = np.repeat(array[..., :1], 3, axis=2)
    else:  # BGR or BGRA
        array = array[..., 2::-1]
    return _scale16(array) if array.dtype == np.uint16 else array.astype(np.uint8)


def _to_rgb8(image: Image.Image, data: bytes, name: str) -> tuple[np.ndarray, list[str]]:
    mode = image.mode
    wide = mode == "I" or mode.startswith("I;16")
    png16 = _png_bit_depth(data) == 16
    deep = png16 or wide
    if mode in _GRAY_MODES or wide:
        kind = "grayscale"
    elif mode in ("P", "PA"):
        kind = "palette"
    elif mode in ("RGB", "RGBA", "RGBa", "CMYK", "YCbCr"):
        kind = mode
    else:
        raise ValueError(f"{name}: unsupported image mode {mode}")
    alpha = "A" in mode or "a" in mode or (mode == "P" and "transparency" in image.info)
    if png16:
        rgb = _decode_png16(data, name)
    elif wide:
        rgb = np.repeat(_scale16(np.asarray(image))[..., None], 3, axis=2)
    else:
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    warnings = []
    if kind != "RGB" or deep:
        desc = f"{'16-bit ' if deep else ''}{kind}"
        warnings.append(f"{name}: {desc} image converted to RGB uint8{' (alpha dropped)' if alpha else ''}")
    return np.ascontiguousarray(rgb), warnings


def _read_frames(path: Path, kind: str, names: list[str], fail: Callable[[str], TrackError],
                 warnings: list[str]) -> list[np.ndarray]:
    images = []
    for name in names:
        try:
            data = (path / name).read_bytes()
        except OSError as exc:
            raise fail(f"cannot read {name} ({exc.strerror or exc})") from exc
        try:
            rgb, notes = decode_image(data, name)
        except ValueError as exc:
            raise fail(str(exc)) from exc
        images.append(rgb)
        warnings.extend(notes)
    _warn_on_size_spread(kind, images, warnings)
    return images


def _warn_on_size_spread(kind: str, images: list[np.ndarray], warnings: list[str]) -> None:
    if len(images) < 2:
        return
    areas = [im.shape[0] * im.shape[1] for im in images]
    small, large = images[int(np.argmin(areas))], images[int(np.argmax(areas))]
    ratio = max(areas) / min(areas)
    if ratio > MAX_AREA_RATIO:
        warnings.append(
            f"{kind} frame sizes vary widely: {small.shape[1]}x{small.shape[0]} to "
            f"{large.shape[1]}x{large.shape[0]} (area ratio {ratio:.1f})"
        )


def _corners_by_file_name(corners: dict[str, np.ndarray], frames: dict[str, list[tuple[int, str]]]
                          ) -> dict[str, np.ndarray]:
    """Corners keyed by the frame files as spelt on disk: a key naming a frame by another case or
    extension ("lr-001.png" for lr-001.PNG or lr-001.jpg) names the same frame (numbers are unique per
    kind), and the targets look frames up by their file names."""
    on_disk = {(kind, number): name for kind, items in frames.items() for number, name in items}
    out = {}
    for key, quad in corners.items():
        match = _FRAME_RE.match(key)
        name = on_disk.get((match.group(1).lower(), int(match.group(2)))) if match else None
        out[name if name is not None and name not in corners else key] = quad
    return out


LABEL_MODES = ("strict", "lenient")


def read_track(path: Path | str, *, with_hr: bool = True, labels: str = "strict") -> Track:
    """Read and check one track folder; TrackError names the track and the first problem found.

    labels "strict": a bad annotations.json makes the track unusable (scoring and training need its
    labels); "lenient": the labels are dropped with a warning and the frames still read (reading a
    plate does not need them)."""
    if labels not in LABEL_MODES:
        raise ValueError(f"labels must be one of {LABEL_MODES}, got {labels!r}")
    path = Path(path)
    track_id = path.name

    def fail(problem: str) -> TrackError:
        return TrackError(track_id, path, problem)

    if not path.is_dir():
        raise fail("not a directory")
    listing = _list_folder(path, fail)
    warnings = list(listing.warnings)
    if not listing.frames["lr"]:
        seen = sorted(os.listdir(path), key=natural_key)
        raise fail("no lr frames (folder is empty)" if not seen else
                   f"no lr frames (found {', '.join(seen[:8])}{', ...' if len(seen) > 8 else ''})")
    lr_names = _check_numbering("lr", listing.frames["lr"], fail)
    hr_names = _check_numbering("hr", listing.frames["hr"], fail) if with_hr and listing.frames["hr"] else []
    try:
        annotation = read_annotations(path)
    except TrackError as exc:
        if labels == "strict":
            raise
        warnings.append(f"labels ignored: {exc.problem}")
        annotation = Annotation(text=None, layout=layout_hint(path), corners={}, scenario=scenario_hint(path))
    warnings.extend(annotation.warnings)
    lr = _read_frames(path, "lr", lr_names, fail, warnings)
    hr = _read_frames(path, "hr", hr_names, fail, warnings)
    if hr and len(hr) != len(lr):
        warnings.append(f"{len(lr)} lr frames but {len(hr)} hr frames")
    present = set(lr_names) | {name for _, name in listing.frames["hr"]}
    corners = _corners_by_file_name(annotation.corners, listing.frames)
    for name in corners:
        if name not in present:
            warnings.append(f"{ANNOTATIONS_NAME}: corners given for {name}, which is not in the track")
    return Track(
        track_id=track_id, lr=lr, hr=hr, lr_names=lr_names, hr_names=hr_names,
        text=annotation.text, layout=annotation.layout, corners=corners,
        scenario=annotation.scenario, path=path, warnings=warnings,
    )


# ---------------------------------------------------------------------------------------------
# Batch reading


def iter_track_results(paths: Iterable[Path | str], *, with_hr: bool = True, labels: str = "strict"
                       ) -> Iterator[tuple[Path, Track | TrackError]]:
    """Each path with its Track or its TrackError; lets a caller show progress and keep going."""
    for path in paths:
        path = Path(path)
        try:
            yield path, read_track(path, with_hr=with_hr, labels=labels)
        except TrackError as exc:
            yield path, exc


def iter_tracks(root: Path | str, *, with_hr: bool = True,
                on_error: Callable[[TrackError], None] | None = None) -> Iterator[Track]:
    """Good tracks under root; a bad one goes to on_error, or is raised when on_error is None."""
    for _, result in iter_track_results(discover_tracks(root), with_hr=with_hr):
        if isinstance(result, TrackError):
            if on_error is None:
                raise result
            on_error(result)
        else:
            yield result


def read_dataset(root: Path | str, *, with_hr: bool = True,
                 progress: Callable[[int, int, Path], None] | None = None) -> DatasetReadResult:
    """Every readable track under root plus a TrackError for each one that was skipped.

    progress(done, total, path) is called after each track so a CLI can draw a bar.
    """
    paths = discover_tracks(root)
    result = DatasetReadResult(tracks=[], failures=[])
    for done, (path, item) in enumerate(iter_track_results(paths, with_hr=with_hr), start=1):
        if isinstance(item, TrackError):
            result.failures.append(item)
        else:
            result.tracks.append(item)
        if progress is not None:
            progress(done, len(paths), path)
    return result


# ---------------------------------------------------------------------------------------------
# Writing


def encode_image(rgb: np.ndarray, fmt: str = "png", jpeg_quality: int = 95) -> bytes:
    """PNG (lossless) or JPEG bytes of an RGB uint8 (H, W, 3) array."""
    if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3):
        desc = f"{rgb.dtype} {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise ValueError(f"frames must be RGB uint8 (H, W, 3) arrays, got {desc}")
    buf = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")
    if fmt == "png":
        image.save(buf, format="PNG")
    elif fmt == "jpg":
        image.save(buf, format="JPEG", quality=int(jpeg_quality))
    else:
        raise ValueError(f"unknown image format {fmt!r} (expected 'png' or 'jpg')")
    return buf.getvalue()


def _annotation_json(track: Track, renamed: dict[str, str]) -> str | None:
    if track.text is None:
        return None
    text, layout = validate_text(track.text, track.layout)
    corners = {}
    for name, quad in track.corners.items():
        quad = np.asarray(quad, dtype=np.float32)
        if quad.shape != (4, 2) or not np.isfinite(quad).all():
            raise ValueError(f"{track.track_id}: corners of {name} must be 4 finite (x, y) points")
        corners[renamed.get(name, name)] = {k: [float(x), float(y)] for k, (x, y) in zip(CORNER_KEYS, quad)}
    doc = {"plate_layout": layout.value, "plate_text": text, "corners": corners}
    return json.dumps(doc, indent=2) + "\n"


def _track_files(track: Track, fmt: str, jpeg_quality: int) -> dict[str, bytes]:
    """Every file of the track folder, encoded in memory, so nothing touches disk until all is valid."""
    if not track.lr:
        raise ValueError(f"{track.track_id}: a track needs at least one lr frame")
    files: dict[str, bytes] = {}
    renamed: dict[str, str] = {}
    for kind, frames, old_names in (("lr", track.lr, track.lr_names), ("hr", track.hr, track.hr_names)):
        for i, frame in enumerate(frames):
            name = f"{kind}-{i + 1:03d}.{fmt}"
            files[name] = encode_image(frame, fmt, jpeg_quality)
            if i < len(old_names):
                renamed[old_names[i]] = name
    annotation = _annotation_json(track, renamed)
    if annotation is not None:
        files[ANNOTATIONS_NAME] = annotation.encode("utf-8")
    return files


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform lets a directory be opened
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_track(track: Track, out_dir: Path | str, *, fmt: str = "png", jpeg_quality: int = 95,
                overwrite: bool = False) -> Path:
    """Write the track folder out_dir (lr-001.png.., hr-.., annotations.json) all at once or not at all.

    Files go to a hidden temporary folder beside out_dir which is renamed into place, so a reader never
    sees half a track. An existing non-empty out_dir is replaced only with overwrite=True.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory")
    occupied = out_dir.is_dir() and any(out_dir.iterdir())
    if occupied and not overwrite:
        raise FileExistsError(f"{out_dir} already holds a track (pass overwrite=True to replace it)")
    files = _track_files(track, fmt, jpeg_quality)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        for name, data in files.items():
            _write_file(tmp / name, data)
        _swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(out_dir.parent)
    return out_dir


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename tmp to out_dir; an old out_dir is set aside first and restored if the rename fails."""
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    backup = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
    backup.rmdir()
    os.replace(out_dir, backup)
    try:
        os.replace(tmp, out_dir)
    except BaseException:
        os.replace(backup, out_dir)
        raise
    shutil.rmtree(backup, ignore_errors=True)
