"""Finding plate-like fonts and loading them once.

The real plate faces (Mandatory for the old Brazilian plates, FE-Schrift for Mercosur) are not
freely licensed, so the renderer trains on a spread of condensed sans faces shipped as
``fontpkg_*`` wheels, plus Debian's Open DIN if installed, and on our own faces drawn after the
plate faces' construction (``synth/faces/``, built by ``plate_faces``; source "builtin"). A user
who owns the real faces can add them with ``extra_dirs`` or the ``KSRNET_FONT_DIRS`` environment
variable; they are then preferred.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pkgutil
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from PIL import Image, ImageDraw, ImageFont

from ksrnet.plates import DIGITS, LETTERS
from ksrnet.synth.plate_faces import FACES_DIR

FONT_DIRS_ENV = "KSRNET_FONT_DIRS"
FONT_SUFFIXES = (".ttf", ".otf")
PACKAGE_PREFIX = "fontpkg_"
# Debian's fonts-opendin: a DIN 1451 revival, the closest free relative of the plate faces.
SYSTEM_FONT_ROOTS: tuple[Path, ...] = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"))
SYSTEM_FONT_NAME_KEYS: tuple[str, ...] = ("opendin",)

# Plate characters are heavy; hairline and light cuts would teach the model strokes no plate has.
MIN_PLATE_WEIGHT = 400
MAX_PLATE_WEIGHT = 900

_WEIGHT_NAMES = (
    ("extralight", 200), ("ultralight", 200), ("semibold", 600), ("demibold", 600),
    ("extrabold", 800), ("ultrabold", 800), ("thin", 100), ("hairline", 100), ("light", 300),
    ("regular", 400), ("book", 400), ("normal", 400), ("medium", 500), ("bold", 700),
    ("heavy", 900), ("black", 900),
)


class FontNotFoundError(RuntimeError):
    """No usable font file was found anywhere the renderer looks."""


@dataclass(frozen=True)
class FontFace:
    """One font file. Variable fonts carry their weight axis range; static files a fixed weight."""

    path: str
    family: str
    weight: int
    source: str  # "user", "builtin", "package" or "system"
    weight_range: tuple[int, int] | None = None

    @property
    def variable(self) -> bool:
        return self.weight_range is not None


def _weight_from_name(stem: str) -> int:
    # Strip the family part first so "Barlow" in "BarlowCondensed-Bold" cannot be misread.
    style = stem.rsplit("-", 1)[-1].lower() if "-" in stem else stem.lower()
    for name, weight in _WEIGHT_NAMES:
        if name in style:
            return weight
    return 400


def _is_italic(stem: str) -> bool:
    return bool(re.search(r"italic|oblique", stem, re.IGNORECASE))


# A code point no font maps (Unicode private use): FreeType draws the font's missing-glyph box.
_UNMAPPED = "\U0010FFFD"


def _ink(font: ImageFont.FreeTypeFont, ch: str) -> bytes | None:
    """The bitmap `font` draws for `ch`, or None when it draws no ink at all."""
    l, t, r, b = font.getbbox(ch)
    if r <= l or b <= t:
        return None
    img = Image.new("L", (r - l, b - t), 0)
    ImageDraw.Draw(img).text((-l, -t), ch, font=font, fill=255)
    return img.tobytes() if img.getbbox() else None


def missing_plate_glyphs(font: ImageFont.FreeTypeFont) -> str:
    """The plate characters (A-Z, 0-9) `font` has no glyph for: drawn as its missing-glyph box or
    as nothing. A plate drawn with such a face would not show the text its annotation gives."""
    notdef = _ink(font, _UNMAPPED)
    return "".join(ch for ch in LETTERS + DIGITS if (ink := _ink(font, ch)) is None or ink == notdef)


def _describe(path: Path, source: str) -> FontFace | None:
    """Open the file once to learn its family and weight axis; None if FreeType rejects it or it
    lacks a plate character (with a warning that names them: its plates would not read as annotated)."""
    try:
        font = ImageFont.truetype(str(path), 32)
    except OSError:
        return None
    missing = missing_plate_glyphs(font)
    if missing:
        warnings.warn(f"font {path} left out: it has no glyph for {missing!r}", RuntimeWarning, stacklevel=2)
        return None
    family = (font.getname()[0] or path.stem).strip()
    weight_range = None
    try:
        for axis in font.get_variation_axes():
            name = axis.get("name")
            if name in (b"Weight", "Weight"):
                weight_range = (int(axis["minimum"]), int(axis["maximum"]))
    except OSError:
        pass  # static font: FreeType raises instead of returning no axes
    return FontFace(str(path), family, _weight_from_name(path.stem), source, weight_range)


def _package_font_files() -> list[Path]:
    files = []
    for module in sorted(pkgutil.iter_modules(), key=lambda m: m.name):
        if not module.name.startswith(PACKAGE_PREFIX):
            continue
        spec = importlib.util.find_spec(module.name)
        for location in (spec.submodule_search_locations or []) if spec else []:
            folder = Path(location) / "files"
            if folder.is_dir():
                files.extend(p for p in sorted(folder.iterdir()) if p.suffix.lower() in FONT_SUFFIXES)
    return files


def _builtin_font_files() -> list[Path]:
    return sorted(p for p in FACES_DIR.glob("*") if p.suffix.lower() in FONT_SUFFIXES) if FACES_DIR.is_dir() else []


def _system_font_files() -> list[Path]:
    files = []
    for root in SYSTEM_FONT_ROOTS:
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            lowered = str(path).lower()
            if path.suffix.lower() in FONT_SUFFIXES and any(k in lowered for k in SYSTEM_FONT_NAME_KEYS):
                files.append(path)
    return files


def _dir_font_files(folder: Path) -> list[Path]:
    if folder.is_file():
        return [folder] if folder.suffix.lower() in FONT_SUFFIXES else []
    if not folder.is_dir():
        return []
    return [p for p in sorted(folder.rglob("*")) if p.suffix.lower() in FONT_SUFFIXES]


def user_font_dirs(extra_dirs: Iterable[str | os.PathLike] | None = None) -> tuple[Path, ...]:
    """Folders named by the caller, then those in $KSRNET_FONT_DIRS (os.pathsep separated)."""
    dirs = [Path(d).expanduser() for d in (extra_dirs or [])]
    env = os.environ.get(FONT_DIRS_ENV, "")
    dirs += [Path(d).expanduser() for d in env.split(os.pathsep) if d.strip()]
    return tuple(dirs)


def discover_fonts(
    extra_dirs: Iterable[str | os.PathLike] | None = None,
    *,
    packages: bool = True,
    system: bool = True,
    builtin: bool = True,
) -> tuple[FontFace, ...]:
    """Every upright font the renderer may use: user folders first, then our own plate faces,
    then packages, then system.

    Raises FontNotFoundError, listing where it looked, when nothing usable is found.
    """
    dirs = user_font_dirs(extra_dirs)
    return _discover(dirs, packages, system, builtin)


@functools.lru_cache(maxsize=32)
def _discover(dirs: tuple[Path, ...], packages: bool, system: bool, builtin: bool) -> tuple[FontFace, ...]:
    candidates: list[tuple[Path, str]] = []
    for folder in dirs:
        candidates += [(p, "user") for p in _dir_font_files(folder)]
    if builtin:
        candidates += [(p, "builtin") for p in _builtin_font_files()]
    if packages:
        candidates += [(p, "package") for p in _package_font_files()]
    if system:
        candidates += [(p, "system") for p in _system_font_files()]
    faces, seen = [], set()
    for path, source in candidates:
        key = path.resolve()
        if key in seen or _is_italic(path.stem):
            continue
        seen.add(key)
        face = _describe(path, source)
        if face is not None:
            faces.append(face)
    if not faces:
        looked = [f"user folders {[str(d) for d in dirs] or '(none)'} (argument or ${FONT_DIRS_ENV})"]
        if builtin:
            looked.append("ksrnet's own plate faces (ksrnet/synth/faces/*.ttf)")
        if packages:
            looked.append(f"installed '{PACKAGE_PREFIX}*' packages (files/*.ttf|otf)")
        if system:
            looked.append(f"{', '.join(map(str, SYSTEM_FONT_ROOTS))} (names containing {SYSTEM_FONT_NAME_KEYS})")
        raise FontNotFoundError(
            "no usable font found for plate rendering; looked in " + "; ".join(looked)
            + ". Install a font package (e.g. pip install fontpkg-barlow-condensed) or point "
            f"${FONT_DIRS_ENV} at a folder of .ttf/.otf files."
        )
    return tuple(faces)


def faces_in(folder: str | os.PathLike) -> tuple[FontFace, ...]:
    """The usable faces of one user folder (or file) alone; FontNotFoundError when it has none."""
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise FontNotFoundError(f"{folder} does not exist")
    try:
        faces = _discover((folder,), False, False, False)
    except FontNotFoundError:
        faces = ()
    if not faces:
        raise FontNotFoundError(f"no usable {'/'.join(FONT_SUFFIXES)} font in {folder} (a face must have "
                                "every plate character, A-Z and 0-9)")
    return faces


def plate_fonts(
    extra_dirs: Iterable[str | os.PathLike] | None = None,
    *,
    packages: bool = True,
    system: bool = True,
    builtin: bool = True,
) -> tuple[FontFace, ...]:
    """The faces fit for plate characters: heavy enough, or variable so a weight can be chosen.

    User faces are always kept (a real plate font may be named anything, weight included).
    """
    faces = discover_fonts(extra_dirs, packages=packages, system=system, builtin=builtin)
    kept = tuple(
        f for f in faces
        if f.source == "user" or f.variable or MIN_PLATE_WEIGHT <= f.weight <= MAX_PLATE_WEIGHT
    )
    return kept or faces


def plate_faces(extra_dirs: Iterable[str | os.PathLike] | None = None) -> tuple[FontFace, ...]:
    """The faces of plate_fonts() drawn after the real plate faces: ours, the user's and Open DIN if
    installed; none of the package faces, which only vary the shapes the reader sees."""
    return tuple(f for f in plate_fonts(extra_dirs) if f.source != "package")


def clear_cache() -> None:
    """Forget discovered and loaded fonts (after installing fonts or changing $KSRNET_FONT_DIRS)."""
    _discover.cache_clear()
    load_font.cache_clear()


@functools.lru_cache(maxsize=2048)
def load_font(path: str, size: int, weight: int | None = None) -> ImageFont.FreeTypeFont:
    """A FreeType font at a pixel size; `weight` sets the axis of a variable font, clamped to range."""
    font = ImageFont.truetype(path, size)
    if weight is not None:
        try:
            axes = font.get_variation_axes()
        except OSError:
            axes = []
        if axes:
            values = []
            for axis in axes:
                if axis.get("name") in (b"Weight", "Weight"):
                    values.append(min(max(weight, axis["minimum"]), axis["maximum"]))
                else:
                    values.append(axis.get("default", axis["minimum"]))
            font.set_variation_by_axes(values)
    return font
