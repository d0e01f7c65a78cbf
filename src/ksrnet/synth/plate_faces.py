"""Our own plate typefaces, drawn from strokes, shipped as TrueType files in `synth/faces/`.

The real plate faces (Mandatory on the old Brazilian plates, FE-Schrift on Mercosur plates) are not
free, and the condensed sans faces of the font packages differ from them where a low-resolution
reader notices: their M has slanted sides and a V down to the baseline, where the plate faces have
upright stems and a V that stops near mid-height (blurred, it looks like an H with a notch); their
K joins both arms at the stem, where FE-Schrift springs the leg from the arm; their rounds are
ovals, where the plate faces, like DIN 1451, build O, 0, C, D, U from straight sides and half
circles. A reader trained only on the package faces read real M as H and K as X, sure of it
(benchmarks/real_plates.py). These faces are drawn after those published construction rules, not
after any sample image.

Each glyph is a union of strokes (bars, thick segments, rings of stadium shape, with openings cut
out of them) rasterised at one pixel per font unit; the outline is traced from that raster into a
TrueType glyph. Building needs fontTools (`python scripts/build_plate_faces.py`); rendering only
needs the shipped .ttf files, which `fonts.plate_fonts` finds as source "builtin".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

FACES_DIR = Path(__file__).resolve().parent / "faces"
UNITS_PER_EM = 1000
CAP = 700  # capital height, font units
ASCENT, DESCENT = 850, 150
WIDTH = 400  # the usual glyph width; M and W are wider, I narrower
SIDE_BEARING = 40
GLYPH_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-."


@dataclass(frozen=True)
class FaceDesign:
    """What sets one face apart: its name, stroke, and the shapes that differ between plate faces."""

    family: str
    file_stem: str  # ends in a weight name, which fonts._weight_from_name reads
    stroke: int  # font units, at the 700-unit capital height
    m_vertex: float  # height of M's middle vertex, of CAP
    k_leg_from_arm: bool  # FE-Schrift: K's leg springs from the arm, not from the stem
    zero_width: float  # of WIDTH: FE-Schrift's 0 is narrower than its O


FACES = (
    FaceDesign("KSRNet Plate DIN", "KSRNetPlateDIN-Bold", stroke=100, m_vertex=0.42,
               k_leg_from_arm=False, zero_width=0.94),
    FaceDesign("KSRNet Plate FE", "KSRNetPlateFE-Bold", stroke=112, m_vertex=0.34,
               k_leg_from_arm=True, zero_width=0.84),
)


class Canvas:
    """A glyph raster in font units (y up, baseline 0); strokes are drawn as separate layers and
    unioned, so cutting an opening out of one stroke never cuts another."""

    def __init__(self, width: int):
        self.width = width
        self.pad = 60
        self.ink = np.zeros((ASCENT + DESCENT, width + 2 * self.pad), np.uint8)
        rows, cols = np.mgrid[0:self.ink.shape[0], 0:self.ink.shape[1]]
        self.x = (cols - self.pad + 0.5).astype(np.float32)  # font coordinates of pixel centres
        self.y = (ASCENT - rows - 0.5).astype(np.float32)

    def layer(self) -> np.ndarray:
        return np.zeros_like(self.ink)

    def add(self, layer: np.ndarray) -> None:
        np.maximum(self.ink, layer, out=self.ink)

    def _pts(self, points) -> np.ndarray:
        return np.array([[x + self.pad, ASCENT - y] for x, y in points], np.float64)

    def polygon(self, layer: np.ndarray, points) -> np.ndarray:
        cv2.fillPoly(layer, [np.round(self._pts(points) * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
        return layer

    def rect(self, x0, y0, x1, y1, layer: np.ndarray | None = None, value: int = 1) -> np.ndarray:
        layer = self.layer() if layer is None else layer
        layer[(self.x >= x0) & (self.x < x1) & (self.y >= y0) & (self.y < y1)] = value
        return layer

    def segment(self, p, q, stroke: float) -> np.ndarray:
        """A straight stroke from p to q, `stroke` thick across it, with square ends."""
        (px, py), (qx, qy) = p, q
        d = np.array([qx - px, qy - py], np.float64)
        n = np.array([-d[1], d[0]]) / max(np.hypot(*d), 1e-9) * stroke / 2
        pts = [(px + n[0], py + n[1]), (qx + n[0], qy + n[1]), (qx - n[0], qy - n[1]), (px - n[0], py - n[1])]
        return self.polygon(self.layer(), pts)

    def ring(self, x0, y0, x1, y1, stroke: float, radius: float | None = None) -> np.ndarray:
        """The outline of a stadium (a rectangle with round ends) `stroke` thick, inside the box."""
        r = min(x1 - x0, y1 - y0) / 2 if radius is None else radius
        outer = _rounded_box_distance(self.x, self.y, x0, y0, x1, y1, r)
        inner = _rounded_box_distance(self.x, self.y, x0 + stroke, y0 + stroke, x1 - stroke, y1 - stroke,
                                      max(r - stroke, 0.0))
        return ((outer <= 0) & (inner > 0)).astype(np.uint8)

    def clip(self, y0: float = 0, y1: float = CAP) -> None:
        """Cut the whole glyph to the band [y0, y1): diagonal ends meet the baseline and the
        capital line flat, as the plate faces' do."""
        self.ink[(self.y < y0) | (self.y >= y1)] = 0


def _rounded_box_distance(x, y, x0, y0, x1, y1, r):
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    hx, hy = (x1 - x0) / 2 - r, (y1 - y0) / 2 - r
    qx, qy = np.abs(x - cx) - hx, np.abs(y - cy) - hy
    return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0) - r


def draw_glyph(ch: str, face: FaceDesign) -> tuple[np.ndarray, int]:
    """The glyph raster of `ch` (rows: font y from ASCENT down to -DESCENT) and its ink width."""
    s, W = face.stroke, WIDTH
    widths = {"I": s, "1": int(W * 0.62), "M": int(W * 1.12), "W": int(W * 1.3), "-": int(W * 0.6), ".": s,
              "0": int(W * face.zero_width)}
    w = widths.get(ch, W)
    c = Canvas(w)
    mid = CAP / 2

    def ring(x0, y0, x1, y1, radius=None):
        return c.ring(x0, y0, x1, y1, s, radius)

    def stem(x, y0=0, y1=CAP):
        c.add(c.rect(x, y0, x + s, y1))

    def bar(y, x0, x1, thick=None):
        c.add(c.rect(x0, y, x1, y + (thick or s)))

    def seg(p, q):
        c.add(c.segment(p, q, s * 1.04))  # diagonals look thinner than stems at the same width

    def cut(layer, x0, y0, x1, y1):
        c.rect(x0, y0, x1, y1, layer, 0)
        return layer

    def bowl(y0, y1, x1):  # a stem's round-backed bowl: B, P, R, D
        c.add(ring(0, y0, x1, y1))
        bar(y1 - s, 0, x1 / 2)
        bar(y0, 0, x1 / 2)

    if ch == "A":
        seg((s / 2, 0), (w / 2, CAP + s / 2))
        seg((w - s / 2, 0), (w / 2, CAP + s / 2))
        bar(CAP * 0.26, w * 0.24, w * 0.76, s * 0.9)
    elif ch == "B":
        stem(0)
        bowl(CAP * 0.44, CAP, w * 0.9)
        bowl(0, CAP * 0.44 + s, w)
    elif ch in "CG":
        layer = ring(0, 0, w, CAP)
        c.add(cut(layer, w / 2, CAP * (0.32 if ch == "C" else 0.45), w + 1, CAP * 0.68))
        if ch == "G":
            bar(CAP * 0.45 - s, w * 0.5, w)
    elif ch == "D":
        stem(0)
        bowl(0, CAP, w)
    elif ch in "EF":
        stem(0)
        bar(CAP - s, 0, w * 0.94)
        bar(mid - s / 2 - (CAP * 0.04 if ch == "F" else 0), 0, w * 0.82)
        if ch == "E":
            bar(0, 0, w * 0.96)
    elif ch == "H":
        stem(0)
        stem(w - s)
        bar(mid - s / 2, 0, w)
    elif ch == "I":
        stem(0)
    elif ch == "J":
        stem(w - s, w / 2, CAP)
        c.add(cut(ring(0, 0, w, CAP * 0.7), -1, CAP * 0.34, w + 1, CAP + 1))
    elif ch == "K":
        stem(0)
        if face.k_leg_from_arm:
            seg((s / 2, CAP * 0.25), (w - s * 0.45, CAP + s / 2))
            seg((w * 0.42, CAP * 0.56), (w - s * 0.45, -s / 2))
        else:
            seg((s * 0.6, CAP * 0.36), (w - s * 0.45, CAP + s / 2))
            seg((s * 1.1, CAP * 0.56), (w - s * 0.45, -s / 2))
    elif ch == "L":
        stem(0)
        bar(0, 0, w * 0.92)
    elif ch == "M":
        stem(0)
        stem(w - s)
        v = CAP * face.m_vertex
        seg((s / 2, CAP + s / 4), (w / 2, v))
        seg((w - s / 2, CAP + s / 4), (w / 2, v))
    elif ch == "N":
        stem(0)
        stem(w - s)
        seg((s / 2, CAP + s / 4), (w - s / 2, -s / 4))
    elif ch in "O0":
        c.add(ring(0, 0, w, CAP))
    elif ch in "PR":
        stem(0)
        bowl(CAP * 0.4, CAP, w * (0.96 if ch == "P" else 0.92))
        if ch == "R":
            seg((w * 0.42, CAP * 0.4 + s / 2), (w - s / 2, -s / 2))
    elif ch == "Q":
        c.add(ring(0, 0, w, CAP))
        seg((w * 0.55, CAP * 0.26), (w * 0.98, -CAP * 0.04))
    elif ch == "S":
        spine = CAP * 0.48 - s / 2  # the middle stroke's bottom: the upper bowl's, then the lower's
        c.add(cut(ring(w * 0.03, spine, w * 0.97, CAP), w * 0.5, -1, w + 1, CAP * 0.72))
        c.add(cut(ring(0, 0, w, spine + s), -1, CAP * 0.25, w * 0.5, CAP + 1))
    elif ch == "T":
        bar(CAP - s, 0, w)
        stem((w - s) / 2)
    elif ch == "U":
        c.add(cut(ring(0, 0, w, CAP * 0.8), -1, CAP * 0.4, w + 1, CAP + 1))
        stem(0, CAP * 0.38, CAP)
        stem(w - s, CAP * 0.38, CAP)
    elif ch == "V":
        seg((s / 2, CAP + s / 2), (w / 2, -s / 2))
        seg((w - s / 2, CAP + s / 2), (w / 2, -s / 2))
    elif ch == "W":
        xs = (s / 2, w * 0.27, w / 2, w * 0.73, w - s / 2)
        ys = (CAP + s / 2, -s / 2, CAP * 0.72, -s / 2, CAP + s / 2)
        for a in range(4):
            seg((xs[a], ys[a]), (xs[a + 1], ys[a + 1]))
    elif ch == "X":
        seg((s / 2, CAP + s / 2), (w - s / 2, -s / 2))
        seg((w - s / 2, CAP + s / 2), (s / 2, -s / 2))
    elif ch == "Y":
        seg((s / 2, CAP + s / 2), (w / 2, CAP * 0.42))
        seg((w - s / 2, CAP + s / 2), (w / 2, CAP * 0.42))
        stem((w - s) / 2, 0, CAP * 0.45)
    elif ch == "Z":
        bar(CAP - s, w * 0.04, w)
        bar(0, 0, w)
        seg((w - s * 0.55, CAP - s * 0.6), (s * 0.55, s * 0.6))
    elif ch == "1":
        stem(w - s)
        seg((w - s / 2, CAP - s * 0.3), (0, CAP * 0.66))
    elif ch == "2":
        top = cut(ring(0, CAP * 0.4, w, CAP), -1, -1, w + 1, CAP * 0.62)
        c.add(cut(top, -1, -1, w * 0.5, CAP * 0.76))
        seg((w - s * 0.5, CAP * 0.64), (s * 0.5, s * 0.5))
        bar(0, 0, w)
    elif ch == "3":
        c.add(cut(ring(w * 0.04, CAP * 0.44, w * 0.96, CAP), -1, -1, w * 0.35, CAP * 0.78))
        c.add(cut(ring(0, 0, w, CAP * 0.44 + s), -1, CAP * 0.24, w * 0.35, CAP + 1))
    elif ch == "4":
        stem(w * 0.62)
        seg((w * 0.62 + s / 2, CAP + s / 4), (s * 0.4, CAP * 0.27))
        bar(CAP * 0.24, s * 0.2, w)
    elif ch == "5":
        bar(CAP - s, w * 0.06, w * 0.94)
        stem(w * 0.06, CAP * 0.5, CAP)
        c.add(cut(ring(0, 0, w, CAP * 0.6), -1, CAP * 0.22, w * 0.3, CAP * 0.5))
    elif ch in "69":
        c.add(ring(0, 0, w, CAP * 0.6))
        c.add(cut(ring(0, 0, w, CAP), w / 2, -1, w + 1, CAP * 0.74))
    elif ch == "7":
        bar(CAP - s, 0, w)
        seg((w - s * 0.55, CAP - s * 0.5), (w * 0.28, -s / 2))
    elif ch == "8":
        c.add(ring(w * 0.05, CAP * 0.44, w * 0.95, CAP))
        c.add(ring(0, 0, w, CAP * 0.44 + s))
    elif ch == "-":
        bar(mid - s / 2, 0, w)
    elif ch == ".":
        c.add(c.rect(0, 0, s, s))
    else:
        raise ValueError(f"no glyph for {ch!r}")
    c.clip(-CAP * 0.06 if ch == "Q" else 0, CAP)
    if ch == "9":  # a 6 turned about the glyph's centre
        box = c.ink[ASCENT - CAP:ASCENT, c.pad:c.pad + w]
        box[:] = box[::-1, ::-1].copy()
    return c.ink, w


def glyph_contours(ch: str, face: FaceDesign) -> tuple[list[list[tuple[int, int]]], int]:
    """TrueType contours of `ch` in font units (outer clockwise, holes counter-clockwise) and its
    advance width."""
    ink, w = draw_glyph(ch, face)
    pad = (ink.shape[1] - w) // 2
    found, hierarchy = cv2.findContours(ink, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    contours = []
    for k, contour in enumerate(found):
        poly = cv2.approxPolyDP(contour, 0.8, True)[:, 0, :]
        if len(poly) < 3:
            continue
        pts = [(int(col) - pad + SIDE_BEARING, ASCENT - int(row)) for col, row in poly]
        area = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1])) / 2
        is_hole = hierarchy[0][k][3] >= 0
        if (area > 0) != is_hole:  # y-up: positive area is counter-clockwise
            pts.reverse()
        contours.append(pts)
    return contours, w + 2 * SIDE_BEARING


def build_face(face: FaceDesign, out_dir: Path = FACES_DIR) -> Path:
    """Write `face` as a TrueType file; needs fontTools (a build-time tool, not a runtime need)."""
    from fontTools.fontBuilder import FontBuilder
    from fontTools.pens.ttGlyphPen import TTGlyphPen

    names = {ch: ("hyphen" if ch == "-" else "period" if ch == "." else ch) for ch in GLYPH_CHARS}
    order = [".notdef", "space"] + [names[ch] for ch in GLYPH_CHARS]
    glyphs, metrics = {}, {}
    pen = TTGlyphPen(None)
    pen.moveTo((50, 0))
    for corner in ((50, CAP), (350, CAP), (350, 0)):  # the missing-glyph box
        pen.lineTo(corner)
    pen.closePath()
    glyphs[".notdef"], metrics[".notdef"] = pen.glyph(), (400, 50)
    glyphs["space"], metrics["space"] = TTGlyphPen(None).glyph(), (WIDTH // 2, 0)
    for ch in GLYPH_CHARS:
        contours, advance = glyph_contours(ch, face)
        pen = TTGlyphPen(None)
        for pts in contours:
            pen.moveTo(pts[0])
            for p in pts[1:]:
                pen.lineTo(p)
            pen.closePath()
        glyphs[names[ch]] = pen.glyph()
        metrics[names[ch]] = (advance, min(x for pts in contours for x, _ in pts))
    fb = FontBuilder(UNITS_PER_EM, isTTF=True)
    fb.setupGlyphOrder(order)
    fb.setupCharacterMap({ord(" "): "space"} | {ord(ch): names[ch] for ch in GLYPH_CHARS})
    fb.setupGlyf(glyphs)
    fb.setupHorizontalMetrics(metrics)
    fb.setupHorizontalHeader(ascent=ASCENT, descent=-DESCENT)
    fb.setupNameTable({"familyName": face.family, "styleName": "Bold"})
    fb.setupOS2(sTypoAscender=ASCENT, sTypoDescender=-DESCENT, usWinAscent=ASCENT, usWinDescent=DESCENT,
                sCapHeight=CAP, usWeightClass=700)
    fb.setupPost()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{face.file_stem}.ttf"
    fb.save(str(path))
    return path
