"""Plate renderer and font discovery: syntax, determinism, geometry and visible content."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from ksrnet.plates import LAYOUTS, Layout, matches_layout
from ksrnet.synth import fonts as fontmod
from ksrnet.synth.render import (
    BUILTIN_FACE_WEIGHT,
    CANONICAL_SIZE,
    PlateStyle,
    Scheme,
    random_plate_text,
    render_plate,
    render_scene,
    sample_style,
)


@pytest.fixture(autouse=True)
def _fresh_font_cache():
    # Discovery is cached per folder list; tests that change folders or the env must not leak.
    fontmod.clear_cache()
    yield
    fontmod.clear_cache()


def _plate(seed: int, layout: Layout):
    rng = np.random.default_rng(seed)
    style = sample_style(rng, layout)
    return render_plate(random_plate_text(rng, layout), style)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_random_text_follows_layout(layout):
    rng = np.random.default_rng(0)
    texts = [random_plate_text(rng, layout) for _ in range(500)]
    assert all(matches_layout(t, layout) for t in texts)
    assert len(set(texts)) > 490  # uniform draws, not a handful of repeats


@pytest.mark.parametrize("layout", LAYOUTS)
def test_render_is_deterministic_per_seed(layout):
    a, b = _plate(11, layout), _plate(11, layout)
    assert a.style == b.style
    assert np.array_equal(a.image, b.image)
    scene_a = render_scene(a, np.random.default_rng(5))
    scene_b = render_scene(b, np.random.default_rng(5))
    assert np.array_equal(scene_a.image, scene_b.image)
    assert not np.array_equal(a.image, _plate(12, layout).image)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_plate_shapes_and_char_boxes(layout):
    H, W = CANONICAL_SIZE
    for seed in range(12):
        plate = _plate(seed, layout)
        assert plate.image.shape == (H, W, 3) and plate.image.dtype == np.uint8
        assert plate.text_mask.shape == (H, W) and plate.alpha.shape == (H, W)
        assert matches_layout(plate.text, layout) and plate.layout is layout
        boxes = plate.char_boxes
        assert boxes.shape == (7, 4) and boxes.dtype == np.float32
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= W).all()
        assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= H).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert (boxes[:-1, 2] <= boxes[1:, 0]).all(), "boxes overlap or are out of order"
        # Characters are tall: they fill a good part of the plate height.
        heights = boxes[:, 3] - boxes[:, 1]
        assert (heights > 0.4 * H).all() and (heights < 0.75 * H).all()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_text_is_visible(layout):
    for seed in range(8):
        plate = _plate(seed, layout)
        grey = plate.image.astype(np.float32).mean(axis=2)
        mask = plate.text_mask.astype(np.float32) / 255.0
        strokes = grey[mask > 0.9]
        x0, y0, x1, y1 = plate.char_boxes[0]
        # Background right beside the strokes, inside the character row.
        row = grey[int(y0):int(y1), int(x0):int(plate.char_boxes[-1, 2])]
        row_mask = mask[int(y0):int(y1), int(x0):int(plate.char_boxes[-1, 2])]
        paper = row[row_mask < 0.05]
        assert strokes.size > 100 and paper.size > 100
        assert abs(np.median(strokes) - np.median(paper)) > 40, (seed, plate.style.scheme)


def test_each_character_has_ink_inside_its_box():
    plate = _plate(3, Layout.MERCOSUR)
    for x0, y0, x1, y1 in plate.char_boxes:
        patch = plate.text_mask[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))]
        assert (patch > 128).mean() > 0.1


def test_mercosur_band_is_blue():
    for seed in range(6):
        plate = _plate(seed, Layout.MERCOSUR)
        H, W = plate.image.shape[:2]
        band_rows = int(plate.style.band_height * H)
        # Middle of the band, clear of the flag, emblem and the white BRASIL lettering.
        band = plate.image[1:band_rows - 1, int(0.15 * W):int(0.35 * W)].reshape(-1, 3).astype(float)
        r, g, b = np.median(band, axis=0)
        assert b > r + 40 and b > g + 15, (r, g, b)
        # The sheet below the band is not blue (shadows and dirt may darken it, not tint it).
        body = plate.image[int(0.3 * H):, :].reshape(-1, 3).astype(float)
        br, _, bb = np.median(body, axis=0)
        assert bb - br < (b - r) - 30


def test_brazilian_has_no_band_and_a_separator():
    plate = _plate(4, Layout.BRAZILIAN)
    assert plate.style.band_height == 0
    assert plate.style.separator in ("-", ".") and plate.style.city_line
    gap = plate.char_boxes[3, 0] - plate.char_boxes[2, 2]
    usual = np.median(plate.char_boxes[1:, 0] - plate.char_boxes[:-1, 2])
    assert gap > usual  # letters and digits are set apart


def test_scheme_mix():
    rng = np.random.default_rng(0)
    br = [sample_style(rng, Layout.BRAZILIAN, fonts=fontmod.plate_fonts()).scheme for _ in range(200)]
    ms = [sample_style(rng, Layout.MERCOSUR).scheme for _ in range(200)]
    assert br.count(Scheme.BR_GREY) > 100 and Scheme.BR_RED in br
    assert ms.count(Scheme.MS_BLACK) > 100 and Scheme.MS_RED in ms


def test_text_must_match_style_layout():
    rng = np.random.default_rng(0)
    style = sample_style(rng, Layout.BRAZILIAN)
    with pytest.raises(ValueError):
        render_plate("ABC1D23", style)
    assert render_plate("abc-1234", style).text == "ABC1234"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_scene_corners_map_back_onto_plate(layout):
    for seed in range(4):
        plate = _plate(seed, layout)
        scene = render_scene(plate, np.random.default_rng(seed))
        H, W = plate.image.shape[:2]
        c = scene.plate_corners
        assert c.shape == (4, 2) and c.dtype == np.float32
        Hs, Ws = scene.image.shape[:2]
        assert Hs >= H * 1.5 and Ws >= W * 1.5  # room for the camera model to move
        assert (c[:, 0] > 0).all() and (c[:, 0] < Ws).all() and (c[:, 1] > 0).all() and (c[:, 1] < Hs).all()
        outer = np.array([[-0.5, -0.5], [W - 0.5, -0.5], [W - 0.5, H - 0.5], [-0.5, H - 0.5]], np.float32)
        m = cv2.getPerspectiveTransform(c, outer)
        back = cv2.warpPerspective(scene.image, m, (W, H), flags=cv2.INTER_LINEAR)
        inner = (slice(3, H - 3), slice(3, W - 3))  # a frame lip may cover the outermost pixel
        diff = np.abs(back[inner].astype(int) - plate.image[inner].astype(int))
        assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 2


def test_style_is_frozen():
    style = sample_style(np.random.default_rng(0), Layout.MERCOSUR)
    assert isinstance(style, PlateStyle)
    with pytest.raises(Exception):
        style.glare = 1.0  # type: ignore[misc]


def test_other_canonical_size():
    rng = np.random.default_rng(2)
    style = sample_style(rng, Layout.MERCOSUR)
    plate = render_plate("ABC1D23", style, size=(32, 100))
    assert plate.image.shape == (32, 100, 3)
    assert (plate.char_boxes[:, 2] <= 100).all()


# ------------------------------------------------------------------------------- font discovery


def test_font_discovery_finds_fonts():
    faces = fontmod.plate_fonts()
    assert faces
    assert all(f.path.lower().endswith((".ttf", ".otf")) for f in faces)
    assert not any("italic" in f.path.lower() for f in faces)


def test_no_font_anywhere_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv(fontmod.FONT_DIRS_ENV, raising=False)
    monkeypatch.setattr(fontmod, "PACKAGE_PREFIX", "no_such_font_package_prefix_")
    monkeypatch.setattr(fontmod, "SYSTEM_FONT_ROOTS", ())
    monkeypatch.setattr(fontmod, "_builtin_font_files", lambda: [])  # as if the package lost its own faces
    with pytest.raises(fontmod.FontNotFoundError, match=fontmod.FONT_DIRS_ENV):
        fontmod.discover_fonts([tmp_path])
    with pytest.raises(fontmod.FontNotFoundError):
        fontmod.discover_fonts([], packages=False, system=False, builtin=False)


def _copy_some_font(dest_dir, name="Mandatory.ttf"):
    source = next(f for f in fontmod.discover_fonts(packages=True) if f.source == "package")
    dest_dir.mkdir(parents=True, exist_ok=True)
    return shutil.copy(source.path, dest_dir / name)


def test_user_font_dir_is_picked_up(monkeypatch, tmp_path):
    _copy_some_font(tmp_path / "argdir")
    faces = fontmod.plate_fonts([tmp_path / "argdir"])
    assert any(f.source == "user" and f.path.endswith("Mandatory.ttf") for f in faces)

    _copy_some_font(tmp_path / "envdir", "FE-Schrift.ttf")
    fontmod.clear_cache()
    monkeypatch.setenv(fontmod.FONT_DIRS_ENV, str(tmp_path / "envdir"))
    monkeypatch.setattr(fontmod, "PACKAGE_PREFIX", "no_such_font_package_prefix_")
    monkeypatch.setattr(fontmod, "SYSTEM_FONT_ROOTS", ())
    faces = fontmod.plate_fonts(builtin=False)
    assert [f.source for f in faces] == ["user"] and faces[0].path.endswith("FE-Schrift.ttf")
    # A user-supplied plate face is what the renderer then draws with.
    style = sample_style(np.random.default_rng(0), Layout.MERCOSUR, fonts=faces)
    assert style.font_path.endswith("FE-Schrift.ttf")
    assert render_plate("ABC1D23", style).image.shape[:2] == CANONICAL_SIZE


def _face_lacking(dest_dir, last: str = "Q"):
    """A copy of a packaged face whose Unicode cmaps no longer map `last` (nor the characters of its
    cmap segment before it): like a real font without those glyphs, it draws its missing-glyph box."""
    source = next(f for f in fontmod.discover_fonts() if f.source == "package" and "Barlow" in f.path)
    data = bytearray(Path(source.path).read_bytes())
    tables = {struct.unpack_from(">4s", data, 12 + 16 * i)[0]: struct.unpack_from(">I", data, 20 + 16 * i)[0]
              for i in range(struct.unpack_from(">H", data, 4)[0])}
    cmap = tables[b"cmap"]
    for j in range(struct.unpack_from(">H", data, cmap + 2)[0]):
        sub = cmap + struct.unpack_from(">I", data, cmap + 8 + 8 * j)[0]
        if struct.unpack_from(">H", data, sub)[0] != 4:
            continue
        seg2 = struct.unpack_from(">H", data, sub + 6)[0]
        ends, starts = sub + 14, sub + 16 + seg2
        ranges = starts + 2 * seg2
        for k in range(0, seg2, 2):
            start, end = struct.unpack_from(">H", data, starts + k)[0], struct.unpack_from(">H", data, ends + k)[0]
            if start <= ord(last) < end:
                # Start the segment after `last`; the characters it keeps keep their glyphs.
                shift = ord(last) + 1 - start
                struct.pack_into(">H", data, starts + k, start + shift)
                offset = struct.unpack_from(">H", data, ranges + k)[0]
                if offset:
                    struct.pack_into(">H", data, ranges + k, offset + 2 * shift)
    dest_dir.mkdir(parents=True, exist_ok=True)
    (dest_dir / "Mandatory.ttf").write_bytes(data)
    return dest_dir / "Mandatory.ttf"


def test_a_font_lacking_plate_glyphs_is_left_out_with_a_warning(tmp_path):
    from PIL import ImageFont

    path = _face_lacking(tmp_path / "fonts")
    assert "Q" in fontmod.missing_plate_glyphs(ImageFont.truetype(str(path), 32))
    assert "Z" not in fontmod.missing_plate_glyphs(ImageFont.truetype(str(path), 32))
    # Drawn with it, a plate reading "QQQ1Q23" would show boxes where its annotation says Q.
    with pytest.warns(RuntimeWarning, match="no glyph for .*Q"):
        faces = fontmod.plate_fonts([tmp_path / "fonts"])
    assert faces and not any(f.source == "user" for f in faces)
    fontmod.clear_cache()
    with pytest.warns(RuntimeWarning), pytest.raises(fontmod.FontNotFoundError):
        fontmod.plate_fonts([tmp_path / "fonts"], packages=False, system=False, builtin=False)
    assert not any(fontmod.missing_plate_glyphs(ImageFont.truetype(f.path, 32)) for f in fontmod.plate_fonts())


def test_load_font_is_cached():
    face = fontmod.plate_fonts()[0]
    assert fontmod.load_font(face.path, 20) is fontmod.load_font(face.path, 20)


def test_our_own_plate_faces_are_found_and_print_about_a_third_of_the_plates():
    faces = fontmod.plate_fonts()
    builtin = [f for f in faces if f.source == "builtin"]
    assert {f.family for f in builtin} == {"KSRNet Plate DIN", "KSRNet Plate FE"}
    assert all(f.weight == 700 and not f.variable for f in builtin)
    rng = np.random.default_rng(1)
    picked = [sample_style(rng, Layout.MERCOSUR, fonts=faces).font_path for _ in range(600)]
    share = np.mean(["KSRNetPlate" in p for p in picked])
    families = len({f.family for f in faces})
    expected = 2 * BUILTIN_FACE_WEIGHT / (families - 2 + 2 * BUILTIN_FACE_WEIGHT)
    assert abs(share - expected) < 0.06
    assert all(f.source != "builtin" for f in fontmod.plate_fonts(builtin=False))

