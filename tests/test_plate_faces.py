"""Our own plate faces: the shapes that set them apart, and that the shipped files are what the
stroke definitions build."""

from __future__ import annotations

import numpy as np
import pytest

from ksrnet.synth.plate_faces import ASCENT, CAP, FACES, FACES_DIR, GLYPH_CHARS, draw_glyph


def _column_ink_bottom(ch: str, face, x_fraction: float) -> float:
    """Lowest inked height (font units) of the glyph's column at `x_fraction` of its width."""
    ink, w = draw_glyph(ch, face)
    pad = (ink.shape[1] - w) // 2
    rows = np.flatnonzero(ink[:, pad + int(x_fraction * w)])
    return ASCENT - rows.max() - 1


@pytest.mark.parametrize("face", FACES, ids=lambda f: f.family)
def test_m_has_upright_stems_and_a_vertex_well_above_the_baseline(face):
    # Blurred, such an M looks like an H with a notch on top: what real plate M's look like.
    assert abs(_column_ink_bottom("M", face, 0.5) - face.m_vertex * CAP) < 0.06 * CAP
    for x in (0.05, 0.95):  # the stems reach the baseline
        assert _column_ink_bottom("M", face, x) == 0


@pytest.mark.parametrize("face", FACES, ids=lambda f: f.family)
def test_every_glyph_stays_inside_the_capital_band(face):
    for ch in GLYPH_CHARS:
        ink, _ = draw_glyph(ch, face)
        rows = np.flatnonzero(ink.any(axis=1))
        top, bottom = ASCENT - rows.min(), ASCENT - rows.max() - 1
        assert top <= CAP and bottom >= (-0.06 * CAP if ch == "Q" else 0), ch
        if ch not in "-.":
            assert top >= CAP - 1 and (bottom <= 1 or ch == "Q" and bottom < 0), ch  # full capital height


def test_the_two_faces_differ_where_the_plate_faces_do():
    din, fe = FACES
    assert din.k_leg_from_arm != fe.k_leg_from_arm
    k_din, _ = draw_glyph("K", din)
    k_fe, _ = draw_glyph("K", fe)
    assert (k_din != k_fe).mean() > 0.01
    zero_din, w_din = draw_glyph("0", din)
    zero_fe, w_fe = draw_glyph("0", fe)
    assert w_fe < w_din  # FE-Schrift's 0 is narrower than its O


def test_shipped_faces_are_what_the_definitions_build(tmp_path):
    pytest.importorskip("fontTools")
    from fontTools.ttLib import TTFont

    from ksrnet.synth.plate_faces import build_face

    for face in FACES:
        built = TTFont(build_face(face, tmp_path))
        shipped = TTFont(FACES_DIR / f"{face.file_stem}.ttf")
        assert built.getGlyphOrder() == shipped.getGlyphOrder()
        for name in built.getGlyphOrder():
            a, b = built["glyf"][name], shipped["glyf"][name]
            assert a.numberOfContours == b.numberOfContours, (face.family, name)
            if a.numberOfContours:
                assert list(a.coordinates) == list(b.coordinates), (face.family, name)
            assert built["hmtx"][name] == shipped["hmtx"][name]
