"""Synthetic high-resolution Brazilian plates (old grey LLL-NNNN and Mercosur LLLNLNN) and their
surroundings on a car.

Everything a model learns comes from here, so the plates copy what real ones show: condensed,
tall, fixed-pitch characters filling about half the plate height; the old plates' city line, bolts,
embossed rim and letter/digit separator; the Mercosur blue "BRASIL" band with its flag and emblem;
and the ways paint ages (fading, dirt, glare, shadows). Characters are drawn from cached signed
distance fields of the glyphs, so any size, pitch and stroke weight is a resample plus a clip:
one plate and its scene take a few milliseconds on one core.

Coordinates: the canonical plate spans the continuous square [0, W] x [0, H] (pixel (i, j) covers
[j, j+1] x [i, i+1]); `char_boxes` use that frame. `Scene.plate_corners` use OpenCV's pixel-centre
convention (pixel (i, j) is the point (j, i)), the one cv2.warpPerspective and
cv2.getPerspectiveTransform expect, so the plate's outer corners sit half a pixel outside the
first and last pixel centres: rectifying a scene maps `plate_corners` onto
[[-0.5, -0.5], [W - 0.5, -0.5], [W - 0.5, H - 0.5], [-0.5, H - 0.5]].
"""

from __future__ import annotations

import enum
import functools
import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw

from ksrnet.plates import DIGITS, LETTERS, NUM_SLOTS, Layout, validate_text
from ksrnet.synth import npfast
from ksrnet.synth.fonts import FontFace, load_font, plate_fonts
from ksrnet.synth.rand import choice, choice_cdf, uniform

CANONICAL_SIZE: tuple[int, int] = (64, 192)  # (H, W) of the rectified HR plate
# Both plate generations measure 400 x 130 mm; the canonical frame (3.0:1) is close enough that a
# camera model needs no separate aspect correction beyond its own random scale jitter.
PLATE_MM: tuple[float, float] = (130.0, 400.0)

_REF_SIZE = 160  # font size (px) at which glyph distance fields are computed once and cached
_SDF_PAD = 14  # ref px of empty margin around a glyph: room for bolder strokes and the AA ramp
_SDF_DOWN = 2  # cached fields are this much coarser than the reference render
_MAX_DESCENT = 0.06  # of the character height
_FAR = -1.0e3  # distance value for "far outside any glyph" when resampling beyond the field

BRAZILIAN_STATES = (
    "AC", "AL", "AM", "AP", "BA", "CE", "DF", "ES", "GO", "MA", "MG", "MS", "MT", "PA", "PB",
    "PE", "PI", "PR", "RJ", "RN", "RO", "RR", "RS", "SC", "SE", "SP", "TO",
)
# Syllables and prefixes that make made-up names read like Brazilian towns ("SAO JOSE DO LIMA").
_CITY_PREFIXES = ("SAO", "SANTA", "SANTO", "PORTO", "NOVA", "BOA", "CAMPO", "RIO", "VILA", "ALTO")
_CITY_LINKS = ("DO", "DA", "DE", "DOS", "DAS")
_ONSETS = ("B", "C", "D", "F", "G", "J", "L", "M", "N", "P", "R", "S", "T", "V", "BR", "CR",
           "GU", "PR", "TR", "CH", "LH", "NH", "QU")
_INITIAL_ONSETS = tuple(o for o in _ONSETS if o not in ("LH", "NH"))  # never word-initial
_VOWELS = ("A", "A", "E", "I", "O", "U", "A", "O")
_CODAS = ("", "", "", "", "S", "R", "L", "N", "M")


class Scheme(str, enum.Enum):
    """Paint schemes. BR_* are the old plates, MS_* Mercosur (always a white plate, blue band)."""

    BR_GREY = "br_grey"  # private cars: dark characters on grey
    BR_RED = "br_red"  # commercial: white characters on red
    BR_WHITE = "br_white"  # official and faded grey plates that read as white
    MS_BLACK = "ms_black"  # private
    MS_RED = "ms_red"  # commercial
    MS_BLUE = "ms_blue"  # official
    MS_GREEN = "ms_green"  # special / dealer test
    MS_GREY = "ms_grey"  # collector (silver-grey characters)


# Frequencies roughly as seen in traffic; the rare schemes still show up often enough to learn.
SCHEME_PRIORS: dict[Layout, tuple[tuple[Scheme, float], ...]] = {
    Layout.BRAZILIAN: ((Scheme.BR_GREY, 0.78), (Scheme.BR_RED, 0.14), (Scheme.BR_WHITE, 0.08)),
    Layout.MERCOSUR: (
        (Scheme.MS_BLACK, 0.72), (Scheme.MS_RED, 0.14), (Scheme.MS_BLUE, 0.05),
        (Scheme.MS_GREEN, 0.04), (Scheme.MS_GREY, 0.05),
    ),
}

# (schemes, cumulative table) per layout for rand.choice, normalised as np.asarray(p) / sum(p).
_SCHEME_CDFS = {
    layout: (tuple(s for s, _ in priors), choice_cdf(np.asarray([p for _, p in priors]) / sum(p for _, p in priors)))
    for layout, priors in SCHEME_PRIORS.items()
}

_RGBRange = tuple[tuple[float, float, float], tuple[float, float, float]]  # (low, high), in [0, 1]
# Per scheme: background range, character range.
_SCHEME_COLOURS: dict[Scheme, tuple[_RGBRange, _RGBRange]] = {
    Scheme.BR_GREY: (((0.58, 0.60, 0.60), (0.84, 0.86, 0.87)), ((0.06, 0.07, 0.08), (0.24, 0.25, 0.27))),
    Scheme.BR_RED: (((0.55, 0.08, 0.07), (0.80, 0.22, 0.20)), ((0.84, 0.82, 0.80), (0.97, 0.96, 0.95))),
    Scheme.BR_WHITE: (((0.84, 0.85, 0.85), (0.97, 0.97, 0.97)), ((0.04, 0.05, 0.06), (0.18, 0.20, 0.24))),
    Scheme.MS_BLACK: (((0.84, 0.85, 0.86), (0.97, 0.97, 0.98)), ((0.03, 0.03, 0.04), (0.14, 0.14, 0.16))),
    Scheme.MS_RED: (((0.84, 0.85, 0.86), (0.97, 0.97, 0.98)), ((0.60, 0.06, 0.06), (0.82, 0.18, 0.16))),
    Scheme.MS_BLUE: (((0.84, 0.85, 0.86), (0.97, 0.97, 0.98)), ((0.04, 0.12, 0.42), (0.14, 0.26, 0.62))),
    Scheme.MS_GREEN: (((0.84, 0.85, 0.86), (0.97, 0.97, 0.98)), ((0.04, 0.34, 0.14), (0.14, 0.52, 0.26))),
    Scheme.MS_GREY: (((0.84, 0.85, 0.86), (0.97, 0.97, 0.98)), ((0.36, 0.37, 0.39), (0.55, 0.56, 0.58))),
}
_MERCOSUR_BLUE = ((0.0, 0.08, 0.30), (0.12, 0.32, 0.72))

# Car paint in Brazilian traffic: mostly white, silver, grey and black.
_CAR_COLOURS: tuple[tuple[tuple[float, float, float], float], ...] = (
    ((0.88, 0.88, 0.88), 0.30), ((0.66, 0.67, 0.69), 0.20), ((0.38, 0.39, 0.41), 0.15),
    ((0.07, 0.07, 0.08), 0.16), ((0.62, 0.10, 0.09), 0.07), ((0.12, 0.20, 0.45), 0.05),
    ((0.55, 0.50, 0.42), 0.03), ((0.14, 0.28, 0.18), 0.02), ((0.85, 0.70, 0.15), 0.02),
)
_CAR_CDF = choice_cdf(np.asarray([w for _, w in _CAR_COLOURS]) / sum(w for _, w in _CAR_COLOURS))


# ---------------------------------------------------------------------------------------------
# Text


def random_plate_text(rng: np.random.Generator, layout: Layout) -> str:
    """A uniformly random 7-character reading that follows the layout's syntax."""
    layout = Layout.parse(layout)
    return "".join(
        LETTERS[rng.integers(len(LETTERS))] if kind == "L" else DIGITS[rng.integers(len(DIGITS))]
        for kind in layout.pattern
    )


def random_city_line(rng: np.random.Generator) -> str:
    """A made-up municipality line like 'SP - SAO JOSE DO PRETO' (state code + city-like name)."""
    words = []
    if rng.random() < 0.3:
        words.append(_CITY_PREFIXES[rng.integers(len(_CITY_PREFIXES))])
    words.append(_random_word(rng, int(rng.integers(2, 5))))
    if rng.random() < 0.2:
        words += [_CITY_LINKS[rng.integers(len(_CITY_LINKS))], _random_word(rng, int(rng.integers(2, 4)))]
    while len(" ".join(words)) > 18 and len(words) > 1:  # long names lose whole words, not halves
        words.pop()
        if words[-1] in _CITY_LINKS:
            words.pop()
    city = " ".join(words)[:18]
    state = BRAZILIAN_STATES[rng.integers(len(BRAZILIAN_STATES))]
    return f"{state} - {city}" if rng.random() < 0.75 else f"{city} - {state}"


def _random_word(rng: np.random.Generator, syllables: int) -> str:
    parts = []
    for i in range(syllables):
        onsets = _INITIAL_ONSETS if i == 0 else _ONSETS
        parts.append(onsets[rng.integers(len(onsets))] + _VOWELS[rng.integers(len(_VOWELS))])
        if i == syllables - 1:
            parts.append(_CODAS[rng.integers(len(_CODAS))])
    return "".join(parts)


# ---------------------------------------------------------------------------------------------
# Style


@dataclass(frozen=True)
class PlateStyle:
    """Every random choice behind one plate's look. Lengths are fractions of the plate height (H)
    or width (W); `render_plate` is a pure function of (text, style), textures included."""

    layout: Layout
    scheme: Scheme
    background_rgb: tuple[float, float, float]
    text_rgb: tuple[float, float, float]
    band_rgb: tuple[float, float, float]  # Mercosur band; unused on old plates
    font_path: str
    font_weight: int | None  # axis value for a variable font, None for a static file
    stroke_ratio: float  # stem thickness / character height (real plates: about 0.13-0.19)
    char_height: float  # of H
    text_width: float  # of W, the span from the first to the last character cell
    text_center_y: float  # of H, vertical centre of the character row
    text_shift_x: float  # of W, offset of the character row from centred
    glyph_fill: float  # typical glyph width / character pitch
    separator: str  # "-" or "." on old plates, "" on Mercosur
    separator_gap: float  # width of the separator slot in character pitches
    city_line: str  # old plates only
    city_height: float  # of H
    band_height: float  # of H; 0 on old plates
    flag: bool
    emblem: bool
    br_mark: bool  # the small "BR" at the left of Mercosur plates
    emboss: float  # shading of the stamped characters (old plates)
    border: float  # strength of the plate's own rim / printed outline
    corner_radius: float  # of H
    bolts: tuple[tuple[float, float], ...]  # centres (x of W, y of H)
    bolt_radius: float  # of H
    bolt_rgb: tuple[float, float, float]
    paint_variation: float  # amplitude of low-frequency paint colour change
    grain: float  # fine static texture of the reflective sheet
    wear: float  # share of character paint eroded or faded
    dirt: float  # opacity of dirt blotches
    shadow: float  # depth of a soft shadow across the plate
    shadow_angle: float  # radians, direction the shadow comes from
    shadow_offset: float  # where along that direction the shadow edge sits (-0.5..0.5)
    glare: float  # peak of a specular highlight (0 = none)
    glare_center: tuple[float, float]
    glare_size: tuple[float, float]
    seed: int  # texture noise


def sample_style(
    rng: np.random.Generator,
    layout: Layout | str,
    *,
    fonts: Sequence[FontFace] | None = None,
) -> PlateStyle:
    """Draw a random plate appearance for `layout` (fonts default to `plate_fonts()`)."""
    layout = Layout.parse(layout)
    mercosur = layout is Layout.MERCOSUR
    schemes, cdf = _SCHEME_CDFS[layout]
    scheme = schemes[choice(rng, cdf)]
    (bg_lo, bg_hi), (tx_lo, tx_hi) = _SCHEME_COLOURS[scheme]
    background = _colour(rng, bg_lo, bg_hi)
    text = _colour(rng, tx_lo, tx_hi)
    band = _colour(rng, *_MERCOSUR_BLUE)
    face, weight = _pick_font(rng, layout, fonts)

    if mercosur:
        band_height = float(uniform(rng, 0.17, 0.23))
        char_height = float(uniform(rng, 0.44, 0.52))
        free_top = band_height + 0.04
        text_center_y = free_top + (0.96 - free_top) / 2 + float(uniform(rng, -0.01, 0.03))
        text_width = float(uniform(rng, 0.84, 0.92))
        glyph_fill = float(uniform(rng, 0.78, 0.90))
        separator, separator_gap, city = "", 0.0, ""
        emboss = 0.0
        border = float(uniform(rng, 0.4, 1.0)) if rng.random() < 0.85 else 0.0
        bolt_y = band_height / 2 + float(uniform(rng, -0.02, 0.02))
        n_bolts = 2 if rng.random() < 0.55 else 0
    else:
        band_height = 0.0
        char_height = float(uniform(rng, 0.48, 0.58))
        text_center_y = float(uniform(rng, 0.58, 0.64))
        text_width = float(uniform(rng, 0.84, 0.92))
        glyph_fill = float(uniform(rng, 0.72, 0.86))
        separator = "." if rng.random() < 0.6 else "-"
        separator_gap = float(uniform(rng, 0.35, 0.6))
        city = random_city_line(rng)
        emboss = float(uniform(rng, 0.05, 0.35))
        border = float(uniform(rng, 0.25, 0.9)) if rng.random() < 0.8 else 0.0
        bolt_y = float(uniform(rng, 0.11, 0.16))
        n_bolts = 2 if rng.random() < 0.85 else 0
    bolt_dx = float(uniform(rng, 0.22, 0.34))
    bolts = tuple((0.5 + s * bolt_dx, bolt_y) for s in (-1, 1))[:n_bolts]
    bolt_kind = rng.random()
    if bolt_kind < 0.5:
        bolt = _colour(rng, (0.45, 0.45, 0.45), (0.80, 0.80, 0.82))  # bare metal
    elif bolt_kind < 0.8:
        bolt = _colour(rng, (0.05, 0.05, 0.05), (0.22, 0.22, 0.22))  # dark screw or empty hole
    else:
        bolt = tuple(min(max(c * uniform(rng, 0.85, 1.05), 0.0), 1.0) for c in background)  # cap

    glare = float(uniform(rng, 0.1, 0.6)) if rng.random() < 0.25 else 0.0
    return PlateStyle(
        layout=layout,
        scheme=scheme,
        background_rgb=background,
        text_rgb=text,
        band_rgb=band,
        font_path=face.path,
        font_weight=weight,
        # Measured on real crops: FE-Schrift (Mercosur) strokes are heavier than Mandatory's.
        stroke_ratio=float(uniform(rng, 0.145, 0.195) if mercosur else uniform(rng, 0.125, 0.17)),
        char_height=char_height,
        text_width=text_width,
        text_center_y=text_center_y,
        text_shift_x=float(uniform(rng, -0.015, 0.015)),
        glyph_fill=glyph_fill,
        separator=separator,
        separator_gap=separator_gap,
        city_line=city,
        city_height=float(uniform(rng, 0.08, 0.11)),
        band_height=band_height,
        flag=mercosur and rng.random() < 0.95,
        emblem=mercosur and rng.random() < 0.9,
        br_mark=mercosur and rng.random() < 0.8,
        emboss=emboss,
        border=border,
        corner_radius=float(uniform(rng, 0.03, 0.09)),
        bolts=bolts,
        bolt_radius=float(uniform(rng, 0.035, 0.055)),
        bolt_rgb=bolt,
        paint_variation=float(uniform(rng, 0.0, 0.08)),
        grain=float(uniform(rng, 0.0, 0.015)),
        wear=float(uniform(rng, 0.0, 0.5)) if rng.random() < 0.35 else 0.0,
        dirt=float(uniform(rng, 0.05, 0.5)) if rng.random() < 0.4 else 0.0,
        shadow=float(uniform(rng, 0.1, 0.55)) if rng.random() < 0.35 else 0.0,
        shadow_angle=float(rng.normal(-math.pi / 2, 0.8)),  # mostly from above (bumper overhang)
        shadow_offset=float(uniform(rng, -0.4, 0.3)),
        glare=glare,
        glare_center=(float(uniform(rng, 0.0, 1.0)), float(uniform(rng, 0.0, 1.0))),
        glare_size=(float(uniform(rng, 0.1, 0.5)), float(uniform(rng, 0.2, 0.8))),
        seed=int(rng.integers(2**31 - 1)),
    )


def _colour(rng: np.random.Generator, lo, hi) -> tuple[float, float, float]:
    # One shared level plus a small per-channel tint keeps greys grey instead of going rainbow.
    t = rng.random()
    tint = rng.uniform(-0.25, 0.25, size=3).tolist()
    # Plain floats: the same IEEE arithmetic as numpy on 3-vectors, without its per-call overhead.
    rgb = (l + (h - l) * min(max(t + d * 0.3, 0.0), 1.0) for l, h, d in zip(lo, hi, tint))
    return tuple(min(max(c, 0.0), 1.0) for c in rgb)


@functools.lru_cache(maxsize=8)
def _font_families(fonts: tuple[FontFace, ...]) -> dict[str, tuple[FontFace, ...]]:
    families: dict[str, list[FontFace]] = {}
    for face in fonts:
        families.setdefault(face.family, []).append(face)
    return {k: tuple(v) for k, v in families.items()}


# Our own plate faces (synth/plate_faces.py) are drawn after the real ones' construction, which no
# package face follows: each counts as this many package families, so that together they print
# about a third of the plates while the package faces keep the variety of shapes.
BUILTIN_FACE_WEIGHT = 2.0
# Name fragments of the real plate faces; a user who supplies them gets them used for their layout.
_LAYOUT_FONT_HINTS = {
    Layout.BRAZILIAN: ("mandatory",),
    Layout.MERCOSUR: ("fe-schrift", "feschrift", "fe schrift", "fe-engschrift", "mercosul", "mercosur"),
}


def _pick_font(rng: np.random.Generator, layout: Layout, fonts: Sequence[FontFace] | None):
    fonts = tuple(fonts) if fonts is not None else plate_fonts()
    choices, cdf = _font_choices(fonts, layout)
    variable, preferred = choices[choice(rng, cdf)]
    if variable:
        face = variable[rng.integers(len(variable))]
        lo, hi = face.weight_range  # type: ignore[misc]
        lo, hi = max(lo, 500), min(hi, 800)
        # Whole steps of 50 keep the glyph cache small; the stroke adjustment does the fine tuning.
        weight = int(round(uniform(rng, lo, hi) / 50.0)) * 50 if hi > lo else hi
        return face, weight
    return preferred[rng.integers(len(preferred))], None


@functools.lru_cache(maxsize=16)
def _font_choices(fonts: tuple[FontFace, ...], layout: Layout):
    """Per family (sorted by name): its variable faces and its preferred static faces, and the
    cumulative table of the family weights. Fixed per font set, so built once, not per plate."""
    families = _font_families(fonts)
    names = sorted(families)
    weights = []
    choices = []
    for name in names:
        w = 1.0
        faces = families[name]
        if any(f.source == "builtin" for f in faces):
            w = BUILTIN_FACE_WEIGHT
        if any(f.source == "user" for f in faces):
            w = 3.0
            hints = _LAYOUT_FONT_HINTS[layout]
            if any(h in (name + " " + f.path).lower() for f in faces for h in hints):
                w = 12.0
        weights.append(w)
        variable = tuple(f for f in faces if f.variable)
        preferred = tuple(f for f in faces if 500 <= f.weight <= 800) or tuple(faces)
        choices.append((variable, preferred))
    return tuple(choices), choice_cdf(np.asarray(weights) / sum(weights))


# ---------------------------------------------------------------------------------------------
# Glyph distance fields


@dataclass(frozen=True)
class _Glyph:
    sdf: np.ndarray  # float32, ref px, > 0 inside the ink
    top: float  # row (edge coordinate) of the ink top
    bottom: float  # row of the ink bottom (below the baseline for Q's tail)
    baseline: float
    left: float
    right: float
    origin: float  # column of the pen position (for proportional small print)
    advance: float


@functools.lru_cache(maxsize=8192)
def _glyph(path: str, weight: int | None, ch: str) -> _Glyph:
    """A glyph's distance field, in units of field pixels (`_SDF_DOWN` times coarser than the
    FreeType render, which keeps several thousand cached glyphs to a few tens of MB)."""
    font = load_font(path, _REF_SIZE, weight)
    advance = float(font.getlength(ch))
    l, t, r, b = font.getbbox(ch, anchor="ls")
    pad, down = _SDF_PAD, _SDF_DOWN
    w, h = max(r - l, 1) + 2 * pad, max(b - t, 1) + 2 * pad
    w, h = w + (-w) % down, h + (-h) % down  # whole field pixels
    img = Image.new("L", (w, h), 0)
    ImageDraw.Draw(img).text((pad - l, pad - t), ch, font=font, fill=255, anchor="ls")
    ink = np.asarray(img) > 127
    if not ink.any():
        return _Glyph(np.full((h // down, w // down), _FAR, np.float32), 0.0, 0.0, (pad - t) / down,
                      0.0, 0.0, (pad - l) / down, advance / down)
    rows = np.flatnonzero(ink.any(axis=1))
    cols = np.flatnonzero(ink.any(axis=0))
    inside = cv2.distanceTransform(ink.astype(np.uint8), cv2.DIST_L2, 5)
    outside = cv2.distanceTransform((~ink).astype(np.uint8), cv2.DIST_L2, 5)
    # Adjacent inside/outside pixels read +1/-1, so the ink edge sits at 0 (shifted by half a pixel).
    sdf = (inside - outside).astype(np.float32)
    sdf[sdf > 0] -= 0.5
    sdf[sdf < 0] += 0.5
    # A distance field is smooth, so averaging it down loses next to nothing of the outline.
    field = cv2.resize(sdf, (w // down, h // down), interpolation=cv2.INTER_AREA) * np.float32(1.0 / down)
    return _Glyph(field, rows[0] / down, (rows[-1] + 1) / down, (pad - t) / down, cols[0] / down,
                  (cols[-1] + 1) / down, (pad - l) / down, advance / down)


@functools.lru_cache(maxsize=512)
def _face_metrics(path: str, weight: int | None) -> tuple[float, float]:
    """(stem thickness / glyph height, typical glyph width / glyph height) of a face.

    The stem is read across the upper part of 'H' (clear of the crossbar), as the ink coverage of
    its first stroke; the typical width is the median over the plate charset minus the narrow
    I, J and 1, which on plates still get a full cell.
    """
    g = _glyph(path, weight, "H")
    row = int(g.top + 0.25 * (g.baseline - g.top))
    coverage = np.clip(g.sdf[row] + 0.5, 0.0, 1.0)
    inked = np.flatnonzero(coverage > 0)
    stem = 0.0
    if inked.size:
        gaps = np.flatnonzero(coverage[inked[0]:] == 0)
        end = inked[0] + (gaps[0] if gaps.size else coverage.size)
        stem = float(coverage[inked[0]:end].sum())
    height = g.baseline - g.top
    widths = []
    for ch in LETTERS + DIGITS:
        if ch in "I1J":
            continue
        gc = _glyph(path, weight, ch)
        widths.append((gc.right - gc.left) / max(gc.baseline - gc.top, 1.0))
    return stem / max(height, 1.0), float(np.median(widths))


def _stamp_glyph(
    canvas: np.ndarray, g: _Glyph, x_left: float, y_top: float, kx: float, ky: float, grow: float
) -> tuple[float, float, float, float]:
    """Draw glyph `g` into `canvas` (max-composited coverage) so its ink box starts at
    (x_left, y_top) with scales (kx, ky) target px per ref px; `grow` thickens strokes by that many
    target px per side. Returns the ink box (x0, y0, x1, y1) in canvas edge coordinates."""
    H, W = canvas.shape
    X0 = x_left - kx * g.left  # canvas coordinate of the field's left edge
    Y0 = y_top - ky * g.top
    fh, fw = g.sdf.shape
    c0, c1 = max(int(math.floor(X0)), 0), min(int(math.ceil(X0 + kx * fw)), W)
    r0, r1 = max(int(math.floor(Y0)), 0), min(int(math.ceil(Y0 + ky * fh)), H)
    if c1 > c0 and r1 > r0:
        # Inverse map (target -> field): pixel centres line up with the edge-coordinate frame above.
        m = np.array(
            [[1.0 / kx, 0.0, (c0 + 0.5 - X0) / kx - 0.5], [0.0, 1.0 / ky, (r0 + 0.5 - Y0) / ky - 0.5]],
            dtype=np.float64,
        )
        field = cv2.warpAffine(
            g.sdf, m, (c1 - c0, r1 - r0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT, borderValue=_FAR,
        )
        scale = math.sqrt(kx * ky)
        alpha = _clip(field * scale + (0.5 + grow), 0.0, 1.0)
        np.maximum(canvas[r0:r1, c0:c1], alpha, out=canvas[r0:r1, c0:c1])
    return (x_left - grow, y_top - grow, x_left + kx * (g.right - g.left) + grow,
            Y0 + ky * max(g.bottom, g.baseline) + grow)


@functools.lru_cache(maxsize=512)
def _cap_ratio(path: str, weight: int | None) -> float:
    """Capital height / font size."""
    g = _glyph(path, weight, "H")
    return max(g.baseline - g.top, 0.5) * _SDF_DOWN / _REF_SIZE


@functools.lru_cache(maxsize=16384)
def _print_glyph(path: str, weight: int | None, size: int, ch: str) -> tuple[np.ndarray, int, float]:
    """Bitmap of one small-print character on the font's line box (baseline at row `ascent`),
    its left offset from the pen and its advance, at an integer font size."""
    font = load_font(path, size, weight)
    ascent, descent = font.getmetrics()
    advance = float(font.getlength(ch))
    l, _, r, _ = font.getbbox(ch, anchor="ls")
    if r <= l:
        return np.zeros((ascent + descent, 0), np.float32), 0, advance
    img = Image.new("L", (r - l, ascent + descent), 0)
    ImageDraw.Draw(img).text((-l, ascent), ch, font=font, fill=255, anchor="ls")
    return np.asarray(img, np.float32) * np.float32(1 / 255), l, advance


def _print_line(path: str, weight: int | None, size: int, text: str, tracking: float) -> tuple[np.ndarray, int, float]:
    """`text` laid out at an integer font size: (line bitmap, ascent, capital height), all px."""
    font = load_font(path, size, weight)
    ascent, descent = font.getmetrics()
    cap = _cap_ratio(path, weight) * size
    glyphs = [_print_glyph(path, weight, size, ch) for ch in text]
    pens, pen = [], 0.0
    for _, _, advance in glyphs:
        pens.append(pen)
        pen += advance + tracking * cap
    width = int(math.ceil(pen - tracking * cap)) + 2
    line = np.zeros((ascent + descent, max(width, 1)), np.float32)
    for (bitmap, left, _), x in zip(glyphs, pens):
        c0 = int(round(x)) + left
        c0, c1 = max(c0, 0), min(c0 + bitmap.shape[1], line.shape[1])
        if c1 > c0:
            np.maximum(line[:, c0:c1], bitmap[:, : c1 - c0], out=line[:, c0:c1])
    line.flags.writeable = False
    return line, ascent, cap


# "BRASIL" and "BR" recur on every Mercosur plate at a few sizes per face: their lines are kept
# (read-only; ~10 KB each). Random city lines would only fill the cache.
_print_line_cached = functools.lru_cache(maxsize=1024)(_print_line)


def _draw_small_print(
    canvas: np.ndarray, text: str, path: str, weight: int | None, *, center_x: float, top: float,
    height: float, squeeze: float = 1.0, tracking: float = 0.0, max_width: float | None = None,
    cache: bool = False,
) -> Region | None:
    """Small print (city line, BRASIL, BR) with capitals `height` px tall, centred at `center_x`,
    squeezed further when it would be wider than `max_width`.

    A handful of pixels tall, it needs no sub-pixel care: cached character bitmaps at about twice
    the size are laid on a line, which one area resize brings down (smoother than hinting at 5 px).
    `tracking` adds letter spacing in capital heights. `cache` keeps the laid-out line of a text
    that recurs (never the random city names). Returns the canvas region written (None if none):
    the print covers nothing outside it.
    """
    H, W = canvas.shape
    ratio = _cap_ratio(path, weight)
    size = max(int(round(2.0 * height / ratio)), 6)
    line, ascent, cap = (_print_line_cached if cache else _print_line)(path, weight, size, text, tracking)
    k = height / cap
    if max_width is not None and line.shape[1] * k * squeeze > max_width:
        squeeze = max_width / (line.shape[1] * k)
    tw, th = max(int(round(line.shape[1] * k * squeeze)), 1), max(int(round(line.shape[0] * k)), 1)
    small = cv2.resize(line, (tw, th), interpolation=cv2.INTER_AREA)
    # Capitals start at row (ascent - cap) of the line box; map that row onto `top`.
    x0 = int(round(center_x - tw / 2))
    y0 = int(round(top - (ascent - cap) * k))
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x0 + tw, W), min(y0 + th, H)
    if cx1 > cx0 and cy1 > cy0:
        dst = canvas[cy0:cy1, cx0:cx1]
        np.maximum(dst, small[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0], out=dst)
        return slice(cy0, cy1), slice(cx0, cx1)
    return None


def _clip(x: np.ndarray, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    # One fused pass (minimum(maximum()) takes two and a temporary); float32 bounds keep float32.
    return npfast.clip(x, np.float32(lo), np.float32(hi))


# ---------------------------------------------------------------------------------------------
# Raster helpers. Shapes get analytic anti-aliased coverage (no supersampling) and are computed
# only over their bounding box: full-canvas passes are what would make rendering slow.

Region = tuple[slice, slice]


def _region(h: int, w: int, x0: float, y0: float, x1: float, y1: float) -> Region | None:
    c0, c1 = max(int(math.floor(x0)) - 1, 0), min(int(math.ceil(x1)) + 1, w)
    r0, r1 = max(int(math.floor(y0)) - 1, 0), min(int(math.ceil(y1)) + 1, h)
    if c1 <= c0 or r1 <= r0:
        return None
    return slice(r0, r1), slice(c0, c1)


def _centres(region: Region) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = region
    xs = np.arange(cols.start, cols.stop, dtype=np.float32)[None, :] + np.float32(0.5)
    ys = np.arange(rows.start, rows.stop, dtype=np.float32)[:, None] + np.float32(0.5)
    return xs, ys


def _round_box_dist(xs, ys, x0: float, y0: float, x1: float, y1: float, r: float) -> np.ndarray:
    """Signed distance (px, < 0 inside) to a rounded rectangle given in edge coordinates."""
    cx, cy, bx, by = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    r = max(min(r, bx, by), 0.0)
    qx = np.abs(xs - np.float32(cx)) - np.float32(bx - r)
    qy = np.abs(ys - np.float32(cy)) - np.float32(by - r)
    outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
    return outside + np.minimum(np.maximum(qx, qy), 0) - np.float32(r)


def _round_box(h: int, w: int, x0: float, y0: float, x1: float, y1: float, r: float):
    """(coverage, region) of a rounded rectangle, or (None, None) when it misses the canvas."""
    region = _region(h, w, x0, y0, x1, y1)
    if region is None:
        return None, None
    xs, ys = _centres(region)
    return _clip(0.5 - _round_box_dist(xs, ys, x0, y0, x1, y1, r), 0.0, 1.0), region


def _ring(h: int, w: int, inset: float, thick: float, r: float) -> np.ndarray:
    """Coverage of a rounded-rectangle outline `thick` px wide, `inset` px inside an h x w frame.

    Cached on tenth-of-a-pixel rounded sizes: the result is read-only.
    """
    return _ring_cached(h, w, round(inset, 1), round(thick, 1), round(r, 1))


@functools.lru_cache(maxsize=1024)
def _ring_cached(h: int, w: int, inset: float, thick: float, r: float) -> np.ndarray:
    xs, ys = _centres((slice(0, h), slice(0, w)))
    d = _round_box_dist(xs, ys, inset, inset, w - inset, h - inset, r)
    ring = _clip(thick / 2 + 0.5 - np.abs(d + np.float32(thick / 2)))
    ring.flags.writeable = False
    return ring


def _ellipse(h: int, w: int, cx: float, cy: float, rx: float, ry: float):
    region = _region(h, w, cx - rx, cy - ry, cx + rx, cy + ry)
    if region is None:
        return None, None
    xs, ys = _centres(region)
    d = np.sqrt(((xs - np.float32(cx)) / np.float32(rx)) ** 2 + ((ys - np.float32(cy)) / np.float32(ry)) ** 2)
    return _clip((1.0 - d) * np.float32(min(rx, ry)) + 0.5, 0.0, 1.0), region


def _view(img: np.ndarray, region: Region | None) -> np.ndarray:
    """A writable view of a channel-first image's region."""
    return img if region is None else img[:, region[0], region[1]]


def _blend(img: np.ndarray, cov: np.ndarray | None, rgb, opacity: float = 1.0, region: Region | None = None) -> None:
    """Paint `rgb` over channel-first `img` (or its `region`) with coverage `cov` times `opacity`."""
    if cov is None:
        return
    target = _view(img, region)
    a = cov * np.float32(opacity) if opacity != 1.0 else cov  # x * 1 == x: skip the pass
    colour = np.asarray(rgb, np.float32).reshape(-1, 1, 1)
    target -= a * (target - colour)


def _noise(rng: np.random.Generator, h: int, w: int, cells: tuple[int, int]) -> np.ndarray:
    """Smooth value noise in [0, 1] with `cells` (rows, cols) random knots across the image.

    Bilinear, not bicubic: upscaling a handful of knots bicubically costs ten times more, and
    after a camera's blur nobody can tell the two apart.
    """
    knots = rng.random((cells[0] + 1, cells[1] + 1), dtype=np.float32)
    return cv2.resize(knots, (w, h), interpolation=cv2.INTER_LINEAR)


@functools.lru_cache(maxsize=1)
def _grain_texture() -> np.ndarray:
    # One fixed field of white noise, read at random offsets: drawing fresh Gaussian noise for
    # every plate would cost more than the rest of the plate's texture work.
    return np.random.default_rng(20260).standard_normal((512, 1024), dtype=np.float32)


def _grain(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    tex = _grain_texture()
    if h > tex.shape[0] or w > tex.shape[1]:
        return rng.standard_normal((h, w), dtype=np.float32)
    y = int(rng.integers(tex.shape[0] - h + 1))
    x = int(rng.integers(tex.shape[1] - w + 1))
    return tex[y:y + h, x:x + w]


# ---------------------------------------------------------------------------------------------
# Plate


@dataclass(frozen=True, eq=False)
class RenderedPlate:
    """A rectified plate: the HR target a restoration model should reproduce, with its labels."""

    image: np.ndarray  # (H, W, 3) uint8 RGB, the rectified plate
    alpha: np.ndarray  # (H, W) uint8 coverage of the plate (rounded corners are outside)
    text_mask: np.ndarray  # (H, W) uint8 coverage of the seven characters as printed, before wear
    text: str
    layout: Layout
    char_boxes: np.ndarray  # (7, 4) float32 x0, y0, x1, y1 ink boxes, edge coordinates, left to right
    style: PlateStyle


def render_plate(text: str, style: PlateStyle, *, size: tuple[int, int] = CANONICAL_SIZE) -> RenderedPlate:
    """Draw `text` on a rectified plate of `size` (H, W) pixels. Deterministic in (text, style)."""
    text, layout = validate_text(text, style.layout)
    H, W = int(size[0]), int(size[1])
    rng = np.random.default_rng(style.seed)
    fg = np.asarray(style.text_rgb, np.float32)

    # Channel-first float image: per-pixel blends then run along whole rows, several times faster
    # in numpy than broadcasting over a trailing axis of 3.
    img = np.empty((3, H, W), np.float32)
    img[:] = np.asarray(style.background_rgb, np.float32).reshape(3, 1, 1)
    if style.paint_variation > 0:
        # Paint colour drifts slowly across the sheet.
        drift = _noise(rng, H, W, (2, 5)) - np.float32(0.5)
        img *= 1.0 + np.float32(style.paint_variation * 2) * drift

    radius = style.corner_radius * H
    overlay = np.zeros((H, W), np.float32)  # small print and rims painted in the character colour
    if layout is Layout.MERCOSUR:
        _draw_mercosur_band(img, style, H, W, radius)
        if style.border > 0:
            ring = _ring(H, W, 0.035 * H, max(0.018 * H, 0.9), radius * 0.8)
            _blend(img, ring, (0.08, 0.08, 0.1), style.border)
    else:
        if style.border > 0:
            ring = _ring(H, W, 0.03 * H, max(0.03 * H, 1.2), radius)
            np.maximum(overlay, ring * np.float32(style.border), out=overlay)
        if style.city_line:
            ch = style.city_height * H
            # The city line sits between the two bolts, which it must not run into.
            room = 0.8 * W
            if style.bolts:
                room = 2 * abs(style.bolts[0][0] - 0.5) * W - 3.0 * style.bolt_radius * H
            _draw_small_print(overlay, style.city_line, style.font_path, style.font_weight,
                              center_x=W / 2, top=max(0.12 * H - ch / 2, 0.05 * H), height=ch, squeeze=0.9,
                              tracking=0.1, max_width=room)

    chars, boxes = _draw_characters(text, style, H, W)
    letters = chars.copy()
    if style.separator:
        _draw_separator(chars, style, boxes)

    if style.wear > 0:
        # Paint comes off in patches: lower the character coverage where a noise field is high.
        erosion = _noise(rng, H, W, (3, 10)) * 0.6 + _noise(rng, H, W, (8, 28)) * 0.4
        keep = _clip(1.0 - np.float32(style.wear * 1.6) * _clip(erosion - 0.35, 0, 1) / 0.65, 0.25, 1.0)
        chars *= keep
        overlay *= keep

    ink = np.maximum(chars, overlay)
    if style.emboss > 0:
        # Stamped characters: the lower-right rim of each stroke shades the paint beside it.
        relief = -ink
        relief[1:, 1:] += ink[:-1, :-1]
        img *= 1.0 - np.float32(style.emboss) * _clip(relief, 0, 1)
        img += np.float32(style.emboss * 0.5) * _clip(-relief, 0, 1)
    _blend(img, ink, fg)

    room = boxes[0][0] - 0.05 * H  # between the printed outline and the first character
    if layout is Layout.MERCOSUR and style.br_mark and room > 0.025 * W:
        mark = np.zeros((H, W), np.float32)
        # The box written, not the ink's: outside the ink the coverage is 0, which blends as a no-op.
        region = _draw_small_print(mark, "BR", style.font_path, style.font_weight, center_x=0.05 * H + room / 2,
                                   top=0.80 * H, height=0.075 * H, max_width=room - 1.0, cache=True)
        if region is not None:
            _blend(img, mark[region], (0.1, 0.1, 0.12), 0.9, region)

    for bx, by in style.bolts:
        _draw_bolt(img, bx * W, by * H, style.bolt_radius * H, style.bolt_rgb)

    if style.grain > 0:
        img += _grain(rng, H, W) * np.float32(style.grain)
    if style.dirt > 0:
        # Road grime: a soft brownish haze thickest near the bottom edge, plus a few darker smudges.
        haze = _noise(rng, H, W, (2, 4))
        smudge = _clip((_noise(rng, H, W, (5, 14)) - 0.6) * 2.5, 0, 1)
        _, ys = _centres((slice(0, H), slice(0, W)))
        cover = (0.35 * haze + 0.65 * smudge) * (0.4 + 0.6 * ys / H) * np.float32(style.dirt)
        _blend(img, cover, (0.32, 0.28, 0.22))
    if style.shadow > 0:
        xs, ys = _centres((slice(0, H), slice(0, W)))
        dx, dy = math.cos(style.shadow_angle), math.sin(style.shadow_angle)
        # Position along the direction the shadow comes from, in plate heights.
        t = ((xs - W / 2) * np.float32(dx) + (ys - H / 2) * np.float32(dy)) / np.float32(H)
        lit = _clip((np.float32(style.shadow_offset) - t) / 0.25 + 0.5, 0, 1)
        img *= 1.0 - np.float32(style.shadow) * lit
    if style.glare > 0:
        xs, ys = _centres((slice(0, H), slice(0, W)))
        gx = np.exp(-(((xs[0] / W) - style.glare_center[0]) / style.glare_size[0]) ** 2)
        gy = np.exp(-(((ys[:, 0] / H) - style.glare_center[1]) / style.glare_size[1]) ** 2)
        img += np.float32(style.glare) * np.outer(gy, gx).astype(np.float32)

    # Outside the rounded corners the rectified frame shows a dark gap (bumper recess or frame).
    plate_cov = _plate_coverage(H, W, radius)
    corner = int(math.ceil(radius)) + 1
    for rows in (slice(0, corner), slice(H - corner, H)):
        for cols in (slice(0, corner), slice(W - corner, W)):
            _blend(img, 1.0 - plate_cov[rows, cols], (0.12, 0.12, 0.13), region=(rows, cols))
    return RenderedPlate(
        image=_to_hwc_uint8(img),
        alpha=_plate_alpha(H, W, radius),
        text_mask=_to_uint8(letters),
        text=text,
        layout=layout,
        char_boxes=np.asarray(boxes, np.float32),
        style=style,
    )


def _to_uint8(x: np.ndarray) -> np.ndarray:
    # convertScaleAbs rounds and saturates at 255; negatives are floored first since it takes |x|.
    flat = np.maximum(x, np.float32(0.0)).reshape(-1, x.shape[-1])
    return cv2.convertScaleAbs(flat, alpha=255.0).reshape(x.shape)


def _to_hwc_uint8(img: np.ndarray) -> np.ndarray:
    return cv2.merge(list(_to_uint8(img)))


def _plate_coverage(H: int, W: int, radius: float) -> np.ndarray:
    return _plate_coverage_cached(H, W, round(radius, 1))


def _plate_alpha(H: int, W: int, radius: float) -> np.ndarray:
    """`_plate_coverage` as uint8 (read-only, cached with it: plates share a few radii)."""
    return _plate_alpha_cached(H, W, round(radius, 1))


@functools.lru_cache(maxsize=1024)
def _plate_alpha_cached(H: int, W: int, radius: float) -> np.ndarray:
    alpha = _to_uint8(_plate_coverage_cached(H, W, radius))
    alpha.flags.writeable = False
    return alpha


@functools.lru_cache(maxsize=1024)
def _plate_coverage_cached(H: int, W: int, radius: float) -> np.ndarray:
    xs, ys = _centres((slice(0, H), slice(0, W)))
    cov = _clip(0.5 - _round_box_dist(xs, ys, 0.0, 0.0, float(W), float(H), radius))
    cov.flags.writeable = False
    return cov


def _draw_characters(text: str, style: PlateStyle, H: int, W: int) -> tuple[np.ndarray, list]:
    """The seven characters on a fixed pitch, every glyph scaled to the same height."""
    canvas = np.zeros((H, W), np.float32)
    stem_ratio, typical_w = _face_metrics(style.font_path, style.font_weight)
    char_h = style.char_height * H
    n_slots = NUM_SLOTS + style.separator_gap
    pitch = style.text_width * W / n_slots
    x = W / 2 + style.text_shift_x * W - style.text_width * W / 2
    top = style.text_center_y * H - char_h / 2
    target_w = style.glyph_fill * pitch
    condense = target_w / max(typical_w * char_h, 1e-3)  # horizontal / vertical scale ratio
    # Thicken or thin every face towards the plate stroke weight. Stems are vertical, so they scale
    # with the horizontal factor; a distance field can move an edge a few pixels at most.
    stem_px = stem_ratio * char_h * condense
    grow = float(np.clip((style.stroke_ratio * char_h - stem_px) / 2, -0.08 * char_h, 0.08 * char_h))
    boxes = []
    for i, ch in enumerate(text):
        if style.separator and i == 3:
            x += style.separator_gap * pitch
        g = _glyph(style.font_path, style.font_weight, ch)
        # Plate characters never descend: a long Q tail or a J below the baseline is pulled up so
        # that no glyph reaches more than _MAX_DESCENT below the row.
        ky = char_h / max(g.baseline - g.top, (g.bottom - g.top) / (1.0 + _MAX_DESCENT), 1.0)
        kx = ky * condense
        width = (g.right - g.left) * kx
        limit = pitch * 0.94 - 2 * max(grow, 0)
        if width > limit:  # W, M and friends are squeezed into the cell as on real plates
            kx *= limit / width
            width = limit
        boxes.append(_stamp_glyph(canvas, g, x + (pitch - width) / 2, top, kx, ky, grow))
        x += pitch
    return canvas, boxes


def _draw_separator(canvas: np.ndarray, style: PlateStyle, boxes: list) -> None:
    H, W = canvas.shape
    gap_x0, gap_x1 = boxes[2][2], boxes[3][0]
    cx = (gap_x0 + gap_x1) / 2
    char_h = style.char_height * H
    cy = style.text_center_y * H
    stem = style.stroke_ratio * char_h
    if style.separator == ".":
        half = 0.55 * stem
        cov, region = _round_box(H, W, cx - half, cy - half, cx + half, cy + half, half * 0.4)
    else:
        half_w = min(0.16 * char_h, 0.4 * (gap_x1 - gap_x0))
        cov, region = _round_box(H, W, cx - half_w, cy - stem * 0.4, cx + half_w, cy + stem * 0.4, stem * 0.2)
    if cov is not None:
        np.maximum(canvas[region], cov, out=canvas[region])


def _draw_mercosur_band(img: np.ndarray, style: PlateStyle, H: int, W: int, radius: float) -> None:
    band_h = style.band_height * H
    rows = (slice(0, min(int(math.ceil(band_h)) + 1, H)), slice(0, W))
    xs, ys = _centres(rows)
    # Rounded at the plate's top corners, square at its lower edge.
    d = np.maximum(_round_box_dist(xs, ys, 0.0, 0.0, float(W), band_h + radius, radius), ys - np.float32(band_h))
    band = _clip(0.5 - d, 0.0, 1.0)
    _blend(img, band, style.band_rgb, region=rows)
    # The printed band lightens towards its lower edge and carries a faint wave pattern.
    shade = (0.07 * (ys / max(band_h, 1.0)) + 0.02 * np.sin(xs * 0.9 + ys * 1.7)) * band
    _view(img, rows)[:] += shade

    white = np.zeros((H, W), np.float32)
    word_h = band_h * 0.42
    word = _draw_small_print(white, "BRASIL", style.font_path, style.font_weight,
                             center_x=W / 2, top=band_h / 2 - word_h / 2, height=word_h, tracking=0.25, cache=True)
    # Blended over the word's box within the band only: elsewhere its coverage is 0, a no-op.
    if word is not None and word[0].start < rows[0].stop:
        region = (slice(word[0].start, min(word[0].stop, rows[0].stop)), word[1])
        _blend(img, white[region], (0.95, 0.95, 0.97), region=region)

    patch_h = band_h * 0.62
    patch_w = patch_h * 1.45
    cy = band_h / 2
    if style.flag:
        x1 = W - 0.04 * W
        x0 = x1 - patch_w
        cov, region = _round_box(H, W, x0, cy - patch_h / 2, x1, cy + patch_h / 2, 0.5)
        _blend(img, cov, (0.0, 0.55, 0.25), region=region)
        fx, fy = (x0 + x1) / 2, cy
        if region is not None:
            fxs, fys = _centres(region)
            diamond = 1.0 - (np.abs(fxs - fx) / (patch_w * 0.42) + np.abs(fys - fy) / (patch_h * 0.40))
            _blend(img, _clip(diamond * patch_h * 0.6, 0, 1) * cov, (0.98, 0.85, 0.10), region=region)
        cov, region = _ellipse(H, W, fx, fy, patch_h * 0.22, patch_h * 0.22)
        _blend(img, cov, (0.05, 0.15, 0.55), region=region)
    if style.emblem:
        ex = 0.04 * W + patch_h / 2
        cov, region = _ellipse(H, W, ex, cy, patch_h * 0.5, patch_h * 0.5)
        _blend(img, cov, (0.85, 0.90, 0.97), 0.85, region)
        cov, region = _ellipse(H, W, ex, cy, patch_h * 0.3, patch_h * 0.3)
        _blend(img, cov, (0.10, 0.35, 0.75), 0.9, region)


def _draw_bolt(img: np.ndarray, cx: float, cy: float, r: float, rgb) -> None:
    H, W = img.shape[1:]
    base = np.asarray(rgb, np.float32)
    cov, region = _ellipse(H, W, cx + 0.3, cy + 0.4, r * 1.15, r * 1.15)  # recess around the head
    _blend(img, cov, base * 0.35, 0.6, region)
    cov, region = _ellipse(H, W, cx, cy, r, r)
    _blend(img, cov, base, 1.0, region)
    cov, region = _ellipse(H, W, cx - r * 0.3, cy - r * 0.3, r * 0.35, r * 0.35)
    _blend(img, cov, npfast.clip(base + 0.25, 0, 1), 0.7, region)


# ---------------------------------------------------------------------------------------------
# Scene


@dataclass(frozen=True, eq=False)
class Scene:
    """A plate on its car, for a camera model to move, warp and crop."""

    image: np.ndarray  # (Hs, Ws, 3) uint8 RGB: the plate on its car
    plate_corners: np.ndarray  # (4, 2) float32 TL, TR, BR, BL, OpenCV pixel-centre convention
    plate: RenderedPlate


def _outer_corners(h: int, w: int) -> np.ndarray:
    """(4, 2) outer corners TL, TR, BR, BL of an h x w image in OpenCV pixel-centre coordinates
    (the same convention as camera.canonical_corners, which takes (width, height))."""
    return np.array([[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]], np.float32)


def render_scene(
    plate: RenderedPlate,
    rng: np.random.Generator,
    *,
    margin: tuple[float, float] = (0.3, 0.6),
) -> Scene:
    """Place the plate on a car: body paint, bumper shading, recess, grille, licence frame.

    Each side's margin is drawn from `margin` (fractions of the plate's width for left/right and of
    its height for top/bottom), so camera motion and crops have real context to move into.
    """
    H, W = plate.image.shape[:2]
    lo, hi = margin
    ml, mr = (int(round(uniform(rng, lo, hi) * W)) for _ in range(2))
    mt, mb = (int(round(uniform(rng, lo, hi) * H)) for _ in range(2))
    Hs, Ws = H + mt + mb, W + ml + mr
    x0, y0 = ml, mt

    car = np.asarray(_CAR_COLOURS[choice(rng, _CAR_CDF)][0], np.float32)
    car = np.clip(car * uniform(rng, 0.85, 1.1) + rng.uniform(-0.03, 0.03, 3).astype(np.float32), 0, 1)
    if rng.random() < 0.5:
        # Plates are retroreflective: under a camera's flash or IR light they return far more light
        # than the paint around them, which real low-resolution crops show as a bright plate in a
        # dark surround.
        car = car * np.float32(uniform(rng, 0.15, 0.7))
    # A bumper is curved mostly about a horizontal axis, so its shading varies by row: one bright
    # sheen, darker far edges and a few thin creases. Built as a column and broadcast across.
    ys = np.arange(Hs, dtype=np.float32)[:, None] + np.float32(0.5)
    gain = 1.0 - uniform(rng, 0.0, 0.35) * np.abs(ys / Hs - uniform(rng, 0.3, 0.7)) * 2
    for _ in range(int(rng.integers(0, 3))):
        y = uniform(rng, 0, mt) if rng.random() < 0.5 else uniform(rng, mt + H, Hs)
        gain = gain * (1.0 - uniform(rng, -0.15, 0.4) * np.exp(-((ys - y) / uniform(rng, 0.6, 2.5)) ** 2))
    sheen = np.exp(-((ys - uniform(rng, 0, Hs)) / (uniform(rng, 0.1, 0.4) * Hs)) ** 2)
    sheen = sheen * uniform(rng, 0.0, 0.25) * (1.0 - 0.5 * float(car.mean()))
    column = (car[None, :] * gain + sheen).astype(np.float32)  # (Hs, 3)
    img = np.empty((3, Hs, Ws), np.float32)
    img[:] = column.T[:, :, None]

    if rng.random() < 0.3:
        _draw_grille(img, rng, mt, H, mb)
    # Plate recess: a slightly darker pocket around the plate.
    if rng.random() < 0.6:
        pad = uniform(rng, 0.05, 0.18) * H
        cov, region = _round_box(Hs, Ws, x0 - pad * 1.5, y0 - pad, x0 + W + pad * 1.5, y0 + H + pad, pad)
        _blend(img, cov, (0.0, 0.0, 0.0), uniform(rng, 0.15, 0.5), region)
    # The plate's shadow on the body, offset down and sideways, with a soft edge.
    sdx, sdy, soft = uniform(rng, -1, 2), uniform(rng, 0.5, 3), uniform(rng, 1.0, 3.0)
    region = _region(Hs, Ws, x0 + sdx - 2 * soft, y0 + sdy - 2 * soft,
                     x0 + W + sdx + 2 * soft, y0 + H + sdy + 2 * soft)
    if region is not None:
        xs_r, ys_r = _centres(region)
        d = _round_box_dist(xs_r, ys_r, x0 + sdx, y0 + sdy, x0 + W + sdx, y0 + H + sdy, 2.0)
        _blend(img, _clip(0.5 - d / soft, 0, 1), (0.0, 0.0, 0.0), uniform(rng, 0.2, 0.6), region)

    frame = rng.random()
    has_frame = frame < 0.55
    if has_frame:
        _draw_frame(img, rng, x0, y0, H, W, chrome=frame < 0.12)

    # The plate itself, pasted pixel for pixel so its canonical image stays the exact HR target.
    # Where the plate is not opaque (rounded corners, and a frame's lip that some frames have over
    # the plate's outermost pixel) what was drawn beneath shows through.
    image = _to_hwc_uint8(img)
    a = plate.alpha.astype(np.float32) * np.float32(1 / 255)
    if has_frame and rng.random() < 0.4:
        a = a * (1.0 - np.float32(0.8) * _ring(H, W, 0.0, 1.0, plate.style.corner_radius * H))
    under = image[y0:y0 + H, x0:x0 + W]
    under[:] = cv2.blendLinear(plate.image, np.ascontiguousarray(under), a, 1.0 - a)

    corners = _outer_corners(H, W) + np.array([x0, y0], np.float32)
    return Scene(image=image, plate_corners=corners.astype(np.float32), plate=plate)


def _draw_grille(img: np.ndarray, rng: np.random.Generator, mt: int, H: int, mb: int) -> None:
    Hs, Ws = img.shape[1:]
    if rng.random() < 0.6 and mb > 4:
        g0, g1 = mt + H + uniform(rng, 0.15, 0.4) * mb, float(Hs)
    elif mt > 4:
        g0, g1 = 0.0, mt - uniform(rng, 0.15, 0.4) * mt
    else:
        return
    cov, region = _round_box(Hs, Ws, uniform(rng, 0, 0.2) * Ws, g0, Ws - uniform(rng, 0, 0.2) * Ws, g1, 3.0)
    if cov is None:
        return
    xs, ys = _centres(region)
    period = uniform(rng, 3.0, 7.0)
    if rng.random() < 0.5:  # horizontal slats
        pattern = 0.5 + 0.5 * np.sin(np.float32(2 * np.pi / period) * ys) + 0 * xs
    else:  # honeycomb-like mesh
        pattern = 0.5 + 0.25 * (np.sin(np.float32(2 * np.pi / period) * xs)
                                + np.sin(np.float32(2 * np.pi / period * 1.15) * ys))
    colour = np.float32(uniform(rng, 0.04, 0.15)) + pattern * np.float32(uniform(rng, 0.05, 0.15))
    target = _view(img, region)
    target -= cov * (target - colour)


def _draw_frame(img: np.ndarray, rng: np.random.Generator, x0: int, y0: int, H: int, W: int, *, chrome: bool) -> None:
    Hs, Ws = img.shape[1:]
    t = uniform(rng, 0.04, 0.12) * H
    bottom = t * uniform(rng, 1.0, 2.5)  # many frames carry a dealer strip at the bottom
    cov, region = _round_box(Hs, Ws, x0 - t, y0 - t, x0 + W + t, y0 + H + bottom, t * 1.5)
    if cov is None:
        return
    if chrome:
        _, ys = _centres(region)
        shine = np.float32(0.55) + np.float32(0.35) * np.sin(ys / np.float32(H) * 6.0 + np.float32(uniform(rng, 0, 6)))
        target = _view(img, region)
        target -= cov * (target - shine)
    else:
        grey = uniform(rng, 0.03, 0.18)
        _blend(img, cov, (grey, grey, grey * 1.05), 1.0, region)
