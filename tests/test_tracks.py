"""Reader, discovery, batch reading and writer of LRLPR-26 track folders (fixtures built in tmp_path)."""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile

from ksrnet import tracks as tracks_mod
from ksrnet.plates import Layout
from ksrnet.tracks import (
    DatasetError,
    Track,
    TrackError,
    discover_tracks,
    iter_track_results,
    iter_tracks,
    read_annotations,
    read_dataset,
    read_track,
    track_dir,
    write_track,
)

# ---------------------------------------------------------------------------------------------
# Fixture helpers


def rand_rgb(h: int = 17, w: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save_image(path: Path, rgb: np.ndarray, **kwargs) -> None:
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    Image.fromarray(rgb).save(path, format=fmt, **kwargs)


def quad(x0: float, y0: float) -> dict:
    return {"top-left": [x0, y0], "top-right": [x0 + 30.5, y0], "bottom-right": [x0 + 30.5, y0 + 10],
            "bottom-left": [x0, y0 + 10.25]}


def make_track(path: Path, *, n: int = 5, ext: str = "png", hr: bool = True, text: str | None = "ABC1234",
               layout: str | None = "Brazilian", corners: dict | None = None, seed: int = 0) -> dict:
    """A track folder on disk; returns the arrays written so tests can compare pixels."""
    path.mkdir(parents=True, exist_ok=True)
    written = {"lr": [], "hr": []}
    for i in range(n):
        lr = rand_rgb(17 + i % 2, 48 - i % 3, seed * 100 + i)
        save_image(path / f"lr-{i + 1:03d}.{ext}", lr)
        written["lr"].append(lr)
        if hr:
            big = rand_rgb(45, 128, seed * 100 + 50 + i)
            save_image(path / f"hr-{i + 1:03d}.{ext}", big)
            written["hr"].append(big)
    if text is not None:
        doc = {"plate_text": text, "corners": corners if corners is not None else {}}
        if layout is not None:
            doc["plate_layout"] = layout
        (path / "annotations.json").write_text(json.dumps(doc, indent=2))
    return written


@pytest.fixture
def tree(tmp_path: Path) -> dict:
    """Nested train set (two scenarios, png and jpg) beside a flat test set."""
    root = tmp_path / "data"
    a = root / "train" / "Scenario-A" / "Brazilian" / "track_00001"
    b = root / "train" / "Scenario-B" / "Mercosur" / "track_00002"
    t = root / "test" / "track_00001"
    corners = {"lr-001.png": quad(1.5, 2), "lr-002.png": quad(3, 4), "hr-001.png": quad(10, 5)}
    arrays = {
        "a": make_track(a, ext="png", text="ABC1234", layout="Brazilian", corners=corners, seed=1),
        "b": make_track(b, ext="jpg", text="ABC1D23", layout="Mercosur", corners={}, seed=2),
        "t": make_track(t, n=1, ext="jpg", hr=False, text=None, seed=3),
    }
    return {"root": root, "a": a, "b": b, "t": t, "arrays": arrays, "corners": corners}


# ---------------------------------------------------------------------------------------------
# Discovery


def test_discover_finds_nested_and_flat_tracks_in_natural_order(tree):
    root = tree["root"]
    for n in (10, 2):
        make_track(root / "test" / f"track_{n}", n=1, hr=False, text=None, seed=n)
    found = [p.relative_to(root).as_posix() for p in discover_tracks(root)]
    assert found == [
        "test/track_00001",  # numbers compare by value: 00001 < 2 < 10
        "test/track_2",
        "test/track_10",
        "train/Scenario-A/Brazilian/track_00001",
        "train/Scenario-B/Mercosur/track_00002",
    ]


def test_discover_accepts_a_track_folder_as_root_and_unnamed_frame_folders(tmp_path):
    track = tmp_path / "track_00042"
    make_track(track, n=1, hr=False, text=None)
    assert discover_tracks(track) == [track]
    odd = tmp_path / "other" / "clip_a"
    make_track(odd, n=1, hr=False, text=None)
    assert discover_tracks(tmp_path / "other") == [odd]


def test_discover_ignores_stray_frames_beside_track_folders(tmp_path):
    # An lr-001.jpg copied into the test folder made the folder one track and dropped every real one.
    for n in (1, 2):
        make_track(tmp_path / "test" / f"track_{n}", n=1, hr=False, text=None)
    make_track(tmp_path / "test", n=1, hr=False, text=None)
    expected = [tmp_path / "test" / "track_1", tmp_path / "test" / "track_2"]
    assert discover_tracks(tmp_path / "test") == expected
    assert discover_tracks(tmp_path) == expected


def test_discover_names_a_dot_root_track_by_its_folder(tmp_path, monkeypatch):
    make_track(tmp_path / "track_7", n=1, hr=False, text=None)
    monkeypatch.chdir(tmp_path / "track_7")
    assert [p.name for p in discover_tracks(".")] == ["track_7"]


def test_discover_follows_symlinked_folders_once(tmp_path):
    make_track(tmp_path / "real" / "track_1", n=1, hr=False, text=None)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "test").symlink_to(tmp_path / "real", target_is_directory=True)
    (tmp_path / "real" / "loop").symlink_to(tmp_path / "real", target_is_directory=True)
    assert discover_tracks(tmp_path / "data") == [tmp_path / "data" / "test" / "track_1"]


def test_discover_skips_hidden_and_macos_folders(tmp_path):
    make_track(tmp_path / "track_1", n=1, hr=False, text=None)
    make_track(tmp_path / ".cache" / "track_2", n=1, hr=False, text=None)
    make_track(tmp_path / "__MACOSX" / "track_3", n=1, hr=False, text=None)
    assert discover_tracks(tmp_path) == [tmp_path / "track_1"]


def test_dataset_errors_for_missing_root_file_root_and_no_tracks(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        discover_tracks(tmp_path / "nope")
    (tmp_path / "file.json").write_text("x")
    with pytest.raises(DatasetError, match="neither a directory nor a .txt list"):
        discover_tracks(tmp_path / "file.json")
    (tmp_path / "file.txt").write_text("x")  # a .txt is a list of track folders: this one's entry is not one
    with pytest.raises(DatasetError, match="1 of the 1 entries .* are not track folders"):
        discover_tracks(tmp_path / "file.txt")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"no tracks found under .*track_\*.*lr-NNN"):
        discover_tracks(tmp_path / "empty")
    with pytest.raises(DatasetError):
        read_dataset(tmp_path / "empty")


# ---------------------------------------------------------------------------------------------
# Reading good tracks


def test_read_nested_png_track(tree):
    track = read_track(tree["a"])
    arrays = tree["arrays"]["a"]
    assert track.track_id == "track_00001"
    assert track.path == tree["a"]
    assert track.scenario == "Scenario-A"
    assert track.text == "ABC1234" and track.layout is Layout.BRAZILIAN
    assert track.lr_names == [f"lr-{i:03d}.png" for i in range(1, 6)]
    assert track.hr_names == [f"hr-{i:03d}.png" for i in range(1, 6)]
    assert track.num_frames == 5
    for got, want in zip(track.lr + track.hr, arrays["lr"] + arrays["hr"]):
        assert got.dtype == np.uint8 and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    assert set(track.corners) == {"lr-001.png", "lr-002.png", "hr-001.png"}
    c = track.corners["lr-001.png"]
    assert c.dtype == np.float32 and c.shape == (4, 2)
    np.testing.assert_array_equal(c, [[1.5, 2], [32, 2], [32, 12], [1.5, 12.25]])
    assert track.warnings == []


def test_read_mercosur_jpg_track_with_empty_corners(tree):
    track = read_track(tree["b"])
    assert (track.text, track.layout, track.scenario) == ("ABC1D23", Layout.MERCOSUR, "Scenario-B")
    assert track.corners == {}
    assert track.lr_names[0] == "lr-001.jpg" and len(track.hr) == 5
    diff = np.abs(track.lr[0].astype(int) - tree["arrays"]["b"]["lr"][0].astype(int)).mean()
    assert track.lr[0].shape == (17, 48, 3) and diff < 60  # lossy, but the same picture


def test_read_flat_test_track_without_annotations(tree):
    track = read_track(tree["t"])
    assert (track.text, track.layout, track.scenario) == (None, None, None)
    assert track.num_frames == 1 and track.hr == [] and track.corners == {}


def test_with_hr_false_skips_hr_frames(tree):
    track = read_track(tree["a"], with_hr=False)
    assert track.hr == [] and track.hr_names == [] and track.num_frames == 5


@pytest.mark.parametrize("bad", ["{not json", '{"plate_text": null}', '{"plate_text": "ABC1234", "corners": 5}'])
def test_lenient_labels_keep_the_frames_of_a_track_with_bad_annotations(tmp_path, bad):
    path = tmp_path / "Mercosur" / "track_1"
    written = make_track(path, n=2, hr=False)
    (path / "annotations.json").write_text(bad)
    with pytest.raises(TrackError, match="annotations.json"):
        read_track(path)  # strict: scoring or training on it would need those labels
    track = read_track(path, labels="lenient")
    assert track.text is None and track.layout is Layout.MERCOSUR and track.corners == {}
    assert np.array_equal(track.lr[0], written["lr"][0])
    assert any(w.startswith("labels ignored: annotations.json") for w in track.warnings)
    with pytest.raises(ValueError, match="labels must be"):
        read_track(path, labels="none")


def test_frames_sorted_by_number_not_by_name(tmp_path):
    path = tmp_path / "track_1"
    path.mkdir()
    for i in range(1, 11):  # unpadded: lr-10 sorts before lr-2 as a string
        save_image(path / f"lr-{i}.png", np.full((4, 6, 3), i, np.uint8))
    track = read_track(path)
    assert track.lr_names == [f"lr-{i}.png" for i in range(1, 11)]
    assert [int(im[0, 0, 0]) for im in track.lr] == list(range(1, 11))


def test_extensions_are_case_insensitive(tmp_path):
    path = tmp_path / "track_1"
    path.mkdir()
    save_image(path / "lr-001.PNG", rand_rgb(seed=1))
    save_image(path / "lr-002.JPEG", rand_rgb(seed=2))
    assert read_track(path).lr_names == ["lr-001.PNG", "lr-002.JPEG"]


def test_text_is_normalised_and_missing_layout_inferred(tmp_path):
    path = tmp_path / "track_1"
    make_track(path, n=1, hr=False, text=" abc 1d23 ", layout=None)
    track = read_track(path)
    assert (track.text, track.layout) == ("ABC1D23", Layout.MERCOSUR)
    assert any("no plate_layout" in w for w in track.warnings)


def test_layout_folder_gives_layout_of_unlabelled_track(tmp_path):
    path = tmp_path / "Mercosur" / "track_1"
    make_track(path, n=1, hr=False, text=None)
    track = read_track(path)
    assert track.text is None and track.layout is Layout.MERCOSUR


def test_read_annotations_does_not_decode_images(tree):
    for name in os.listdir(tree["a"]):
        if name.startswith(("lr-", "hr-")):
            (tree["a"] / name).write_bytes(b"not an image")
    ann = read_annotations(tree["a"])
    assert (ann.text, ann.layout, ann.scenario) == ("ABC1234", Layout.BRAZILIAN, "Scenario-A")
    np.testing.assert_array_equal(ann.corners["hr-001.png"][0], [10, 5])
    assert read_annotations(tree["t"]).text is None


# ---------------------------------------------------------------------------------------------
# Bad tracks: each must fail with a message naming the track and the problem


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _write_json(text: str):
    return lambda p: (p / "annotations.json").write_text(text)


def _annotate(**doc):
    base = {"plate_layout": "Brazilian", "plate_text": "ABC1234", "corners": {}}
    base.update(doc)
    base = {k: v for k, v in base.items() if v is not _DROP}
    return lambda p: (p / "annotations.json").write_text(json.dumps(base))


_DROP = object()

BAD_CASES = {
    "empty folder": (lambda p: [f.unlink() for f in p.iterdir()], "no lr frames (folder is empty)"),
    "only hr frames": (lambda p: [f.unlink() for f in p.glob("lr-*")], "no lr frames (found"),
    "zero-byte frame": (lambda p: (p / "lr-002.png").write_bytes(b""), "lr-002.png is empty (0 bytes)"),
    "truncated png": (lambda p: _truncate(p / "lr-003.png"), "lr-003.png is truncated or not a valid image"),
    "truncated hr": (lambda p: _truncate(p / "hr-005.png"), "hr-005.png is truncated"),
    "text named like a frame": (lambda p: (p / "lr-001.png").write_text("hello"), "lr-001.png is not a valid image"),
    "gap in numbering": (lambda p: (p / "lr-003.png").unlink(), "missing lr-003"),
    "gap at the start": (lambda p: (p / "lr-001.png").unlink(), "missing lr-001"),
    "frame number zero": (lambda p: (p / "lr-001.png").rename(p / "lr-000.png"), "lr-000.png: frame numbers start at 1"),
    "two files for a frame": (lambda p: save_image(p / "lr-002.jpg", rand_rgb()), "two files for lr frame 2"),
    "broken json": (_write_json('{\n  "plate_text": "ABC1234",\n  "plate_layout": Brazilian\n}'),
                    "invalid JSON at line 3 column 19"),
    "empty json": (_write_json(""), "annotations.json: file is empty"),
    "json not an object": (_write_json("[1, 2]"), "expected a JSON object"),
    "no plate_text": (_annotate(plate_text=_DROP), "annotations.json: no plate_text"),
    "plate_text not a string": (_annotate(plate_text=1234567), "plate_text must be a string"),
    "invalid text": (_annotate(plate_text="AB12"), "invalid plate_text 'AB12'"),
    "text of no layout": (_annotate(plate_text="1234ABC"), "follows neither"),
    "unknown layout": (_annotate(plate_layout="Argentine"), "unknown plate layout 'Argentine'"),
    "layout contradicts text": (_annotate(plate_text="ABC1D23"), "plate_layout Brazilian contradicts plate_text"),
    "corners not a dict": (_annotate(corners=[1, 2]), "corners must be an object"),
    "three corners": (_annotate(corners={"lr-001.png": [[0, 0], [1, 0], [1, 1]]}), "corners of lr-001.png: expected 4 points"),
    "corner key missing": (_annotate(corners={"lr-001.png": {k: v for k, v in quad(0, 0).items() if k != "top-right"}}),
                           "corners of lr-001.png: missing top-right"),
    "corner with one number": (_annotate(corners={"lr-001.png": {**quad(0, 0), "bottom-left": [3]}}),
                               "bottom-left must be [x, y] numbers"),
    "corner not a number": (_annotate(corners={"lr-001.png": {**quad(0, 0), "top-left": ["a", 1]}}),
                            "top-left must be [x, y] numbers"),
    # Corrupt numbers: 1e39 was kept as an inf corner; an integer of 400 digits was an OverflowError traceback.
    "corner beyond float32": (_annotate(corners={"lr-001.png": {**quad(0, 0), "top-left": [1e39, 1]}}),
                              "top-left must be [x, y] numbers"),
    "corner of 400 digits": (_annotate(corners={"lr-001.png": {**quad(0, 0), "top-left": [10 ** 400, 1]}}),
                             "top-left must be [x, y] numbers"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_track_raises_track_error_naming_track_and_problem(tmp_path, case):
    path = tmp_path / "Brazilian" / "track_00007"
    make_track(path, n=5, ext="png", text="ABC1234", layout="Brazilian")
    damage, expected = BAD_CASES[case]
    damage(path)
    with pytest.raises(TrackError) as info:
        read_track(path)
    err = info.value
    assert err.track_id == "track_00007" and err.path == path
    assert expected in err.problem
    assert str(err).startswith(f"track_00007 ({path}): ")


def test_layout_contradicting_its_folder_is_an_error(tmp_path):
    path = tmp_path / "Scenario-A" / "Mercosur" / "track_00003"
    make_track(path, n=1, text="ABC1234", layout="Brazilian")
    with pytest.raises(TrackError, match=r"track_00003 .*contradicts the folder it is in \(Mercosur\)"):
        read_track(path)


def test_truncated_jpeg_fails_even_if_pil_was_told_to_accept_truncation(tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    path = tmp_path / "track_1"
    make_track(path, n=2, ext="jpg", hr=False, text=None)
    _truncate(path / "lr-002.jpg")
    with pytest.raises(TrackError, match="lr-002.jpg is truncated"):
        read_track(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is put back


def test_a_frame_numbered_far_out_is_refused_quickly_with_a_short_message(tmp_path):
    # A stray date-stamped frame (lr-20240101.png) once made the reader list 20 million missing names.
    path = tmp_path / "track_1"
    make_track(path, n=2, ext="png", hr=False, text=None)
    (path / "lr-002.png").rename(path / "lr-20240101.png")
    with pytest.raises(TrackError) as info:
        read_track(path)
    problem = info.value.problem
    assert problem.startswith("missing lr-002, lr-003,") and "lr-009 and 20240091 more" in problem
    assert len(problem) < 300


def test_track_error_survives_pickling():
    err = pickle.loads(pickle.dumps(TrackError("track_1", "/x/track_1", "missing lr-002")))
    assert (err.track_id, err.path, err.problem) == ("track_1", Path("/x/track_1"), "missing lr-002")


# ---------------------------------------------------------------------------------------------
# Conversions and warnings


def _png_bytes_cv2(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", array)
    assert ok
    return buf.tobytes()


def test_grayscale_palette_and_rgba_become_rgb_with_warnings(tmp_path):
    path = tmp_path / "track_1"
    path.mkdir()
    rgb = rand_rgb(seed=5)
    gray = rgb[..., 0]
    Image.fromarray(gray, mode="L").save(path / "lr-001.png")
    Image.fromarray(np.dstack([rgb, np.full(gray.shape, 7, np.uint8)]), mode="RGBA").save(path / "lr-002.png")
    palette = Image.fromarray(rgb).quantize(colors=16)
    palette.save(path / "lr-003.png")
    track = read_track(path)
    assert all(im.dtype == np.uint8 and im.shape == (17, 48, 3) for im in track.lr)
    np.testing.assert_array_equal(track.lr[0], np.repeat(gray[..., None], 3, axis=2))
    np.testing.assert_array_equal(track.lr[1], rgb)
    np.testing.assert_array_equal(track.lr[2], np.asarray(palette.convert("RGB")))
    assert track.warnings == [
        "lr-001.png: grayscale image converted to RGB uint8",
        "lr-002.png: RGBA image converted to RGB uint8 (alpha dropped)",
        "lr-003.png: palette image converted to RGB uint8",
    ]


def test_16_bit_images_scale_to_8_bit_exactly(tmp_path):
    path = tmp_path / "track_1"
    path.mkdir()
    rgb = rand_rgb(seed=6)
    gray16 = rgb[..., 0].astype(np.uint16) * 257  # 8-bit value v stored as v * 257
    # +100 sits below half a level: rounding gives v back where keeping the high byte gives v + 1.
    bgr = rgb[..., ::-1].astype(np.uint16)
    bgr16 = bgr * 257 + np.where(bgr < 255, 100, 0).astype(np.uint16)
    (path / "lr-001.png").write_bytes(_png_bytes_cv2(gray16))
    (path / "lr-002.png").write_bytes(_png_bytes_cv2(bgr16))
    (path / "lr-003.png").write_bytes(_png_bytes_cv2(np.dstack([bgr16, gray16])))
    track = read_track(path)
    np.testing.assert_array_equal(track.lr[0], np.repeat(rgb[..., :1], 3, axis=2))
    np.testing.assert_array_equal(track.lr[1], rgb)
    np.testing.assert_array_equal(track.lr[2], rgb)
    assert track.warnings == [
        "lr-001.png: 16-bit grayscale image converted to RGB uint8",
        "lr-002.png: 16-bit RGB image converted to RGB uint8",
        "lr-003.png: 16-bit RGBA image converted to RGB uint8 (alpha dropped)",
    ]


def test_small_size_differences_are_normal_but_large_ones_warn(tmp_path):
    path = tmp_path / "track_1"
    path.mkdir()
    for i, (h, w) in enumerate([(17, 48), (19, 45), (16, 50)], start=1):
        save_image(path / f"lr-{i:03d}.png", rand_rgb(h, w, i))
    assert read_track(path).warnings == []
    save_image(path / "lr-004.png", rand_rgb(40, 100, 9))
    assert read_track(path).warnings == ["lr frame sizes vary widely: 50x16 to 100x40 (area ratio 5.0)"]


def test_stray_files_are_ignored_with_warnings_except_hidden(tmp_path):
    path = tmp_path / "track_1"
    make_track(path, n=2, hr=False, text=None)
    (path / "notes.txt").write_text("x")
    (path / ".DS_Store").write_bytes(b"\0\1")
    (path / "lr-003.bmp").write_bytes(b"BM")
    (path / "extra").mkdir()
    track = read_track(path)
    assert track.num_frames == 2
    assert track.warnings == [
        "extra/: unexpected folder ignored",
        "lr-003.bmp: frame in an unsupported format ignored (expected png/jpg)",
        "notes.txt: unexpected file ignored",
    ]


def test_corners_for_absent_frames_and_uneven_hr_count_warn(tmp_path):
    path = tmp_path / "track_1"
    make_track(path, n=2, hr=True, corners={"lr-009.png": quad(0, 0)})
    (path / "hr-002.png").unlink()
    warnings = read_track(path).warnings
    assert "2 lr frames but 1 hr frames" in warnings
    assert "annotations.json: corners given for lr-009.png, which is not in the track" in warnings


def test_corners_follow_their_frame_whatever_the_case_or_extension_on_disk(tmp_path):
    """KSR-Net finds a frame's corners by its file name: corners keyed lr-001.png for a file saved as
    lr-001.PNG (or re-encoded to lr-001.jpg) were silently never used, so the track lost its pixel target."""
    path = tmp_path / "track_1"
    make_track(path, n=2, hr=True, corners={"lr-001.png": quad(1, 2), "hr-002.png": quad(3, 4)})
    for f in path.glob("lr-*.png"):
        f.rename(f.with_suffix(".PNG"))
    (path / "hr-002.png").rename(path / "hr-002.jpg")
    track = read_track(path)
    assert sorted(track.corners) == ["hr-002.jpg", "lr-001.PNG"]
    np.testing.assert_allclose(track.corners["lr-001.PNG"][0], [1, 2])
    assert not [w for w in track.warnings if "corners given" in w]


# ---------------------------------------------------------------------------------------------
# Batch reading


def _break(path: Path) -> None:
    (path / "lr-002.png").write_bytes(b"")


def test_read_dataset_skips_and_records_bad_tracks(tree):
    bad = tree["root"] / "train" / "Scenario-A" / "Brazilian" / "track_00009"
    make_track(bad, n=2, text="ABC1234")
    _break(bad)
    calls = []
    result = read_dataset(tree["root"], progress=lambda done, total, p: calls.append((done, total, p.name)))
    assert [t.path for t in result.tracks] == [tree["t"], tree["a"], tree["b"]]
    assert [(f.track_id, f.path) for f in result.failures] == [("track_00009", bad)]
    assert "lr-002.png is empty" in result.failures[0].problem
    assert [c[:2] for c in calls] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert result.duplicate_track_ids() == ["track_00001"]  # train and test both hold one


def test_iter_tracks_raises_by_default_and_reports_with_on_error(tree):
    _break(tree["a"])
    with pytest.raises(TrackError, match="track_00001"):
        list(iter_tracks(tree["root"]))
    errors = []
    good = list(iter_tracks(tree["root"], with_hr=False, on_error=errors.append))
    assert [t.path for t in good] == [tree["t"], tree["b"]]
    assert all(t.hr == [] for t in good)
    assert [e.path for e in errors] == [tree["a"]]


def test_iter_track_results_pairs_each_path_with_its_outcome(tree):
    _break(tree["b"])
    results = list(iter_track_results([tree["a"], tree["b"]]))
    assert [p for p, _ in results] == [tree["a"], tree["b"]]
    assert isinstance(results[0][1], Track) and isinstance(results[1][1], TrackError)


# ---------------------------------------------------------------------------------------------
# Writing


def _sample_track() -> Track:
    corners = {"lr-001.png": np.array([[0.5, 1], [40.25, 1], [40.25, 15.125], [0.5, 15]], np.float32),
               "hr-002.png": np.array([[1, 2], [3, 4], [5, 6], [7, 8]], np.float32)}
    return Track(
        track_id="track_00123",
        lr=[rand_rgb(17 + i, 48 - i, i) for i in range(3)],
        hr=[rand_rgb(45, 128, 10 + i) for i in range(3)],
        lr_names=[f"lr-{i:03d}.png" for i in range(1, 4)],
        hr_names=[f"hr-{i:03d}.png" for i in range(1, 4)],
        text="ABC1D23", layout=Layout.MERCOSUR, corners=corners, scenario="Scenario-B",
    )


def test_track_dir_nests_only_what_is_given(tmp_path):
    assert track_dir(tmp_path, "track_1") == tmp_path / "track_1"
    assert track_dir(tmp_path, "track_1", "Scenario-A", "mercosur") == tmp_path / "Scenario-A" / "Mercosur" / "track_1"
    assert track_dir(tmp_path, "track_1", layout=Layout.BRAZILIAN) == tmp_path / "Brazilian" / "track_1"
    with pytest.raises(ValueError, match="plain folder name"):
        track_dir(tmp_path, "../evil")


def test_png_round_trip_is_exact(tmp_path):
    original = _sample_track()
    out = track_dir(tmp_path, original.track_id, original.scenario, original.layout)
    assert write_track(original, out) == out
    back = read_track(out)
    assert (back.track_id, back.text, back.layout, back.scenario) == ("track_00123", "ABC1D23", Layout.MERCOSUR, "Scenario-B")
    assert back.lr_names == original.lr_names and back.hr_names == original.hr_names
    for got, want in zip(back.lr + back.hr, original.lr + original.hr):
        np.testing.assert_array_equal(got, want)
    assert set(back.corners) == set(original.corners)
    for name, value in original.corners.items():
        np.testing.assert_array_equal(back.corners[name], value)
    doc = json.loads((out / "annotations.json").read_text())
    assert doc["plate_layout"] == "Mercosur" and doc["plate_text"] == "ABC1D23"
    assert doc["corners"]["lr-001.png"]["bottom-right"] == [40.25, 15.125]
    assert back.warnings == []
    assert sorted(os.listdir(tmp_path / "Scenario-B" / "Mercosur")) == ["track_00123"]  # no temp leftovers


def test_jpg_writer_renames_frames_and_corner_keys(tmp_path):
    out = write_track(_sample_track(), tmp_path / "track_00123", fmt="jpg", jpeg_quality=90)
    back = read_track(out)
    assert back.lr_names == ["lr-001.jpg", "lr-002.jpg", "lr-003.jpg"]
    assert set(back.corners) == {"lr-001.jpg", "hr-002.jpg"}
    assert back.lr[1].shape == (18, 47, 3)


def test_unlabelled_track_is_written_without_annotations(tmp_path):
    track = _sample_track()
    track.text, track.layout, track.hr, track.hr_names = None, None, [], []
    out = write_track(track, tmp_path / "t" / "track_9")
    assert sorted(os.listdir(out)) == ["lr-001.png", "lr-002.png", "lr-003.png"]
    assert read_track(out).text is None


def test_writer_refuses_to_overwrite_unless_asked(tmp_path):
    out = tmp_path / "track_1"
    out.mkdir()  # an empty folder is fine to fill
    write_track(_sample_track(), out)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_track(_sample_track(), out)
    (out / "stale.txt").write_text("old")
    smaller = _sample_track()
    smaller.lr, smaller.lr_names, smaller.hr, smaller.hr_names = smaller.lr[:1], smaller.lr_names[:1], [], []
    write_track(smaller, out, overwrite=True)
    assert sorted(os.listdir(out)) == ["annotations.json", "lr-001.png"]
    assert sorted(os.listdir(tmp_path)) == ["track_1"]


def test_invalid_track_writes_nothing(tmp_path):
    bad_text = _sample_track()
    bad_text.text = "ABC1234"  # Brazilian text on a Mercosur track
    with pytest.raises(ValueError):
        write_track(bad_text, tmp_path / "track_1")
    bad_frame = _sample_track()
    bad_frame.lr[1] = bad_frame.lr[1].astype(np.float32)
    with pytest.raises(ValueError, match="RGB uint8"):
        write_track(bad_frame, tmp_path / "track_1")
    assert os.listdir(tmp_path) == []


def _fail_on_call(monkeypatch, n: int) -> None:
    real = tracks_mod._write_file
    calls = {"n": 0}

    def flaky(path, data):
        calls["n"] += 1
        if calls["n"] == n:
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(tracks_mod, "_write_file", flaky)


def test_failure_mid_write_leaves_no_partial_track(tmp_path, monkeypatch):
    _fail_on_call(monkeypatch, 4)
    with pytest.raises(OSError, match="No space"):
        write_track(_sample_track(), tmp_path / "track_1")
    assert os.listdir(tmp_path) == []


def test_failure_mid_overwrite_keeps_the_old_track(tmp_path, monkeypatch):
    out = write_track(_sample_track(), tmp_path / "track_1")
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    _fail_on_call(monkeypatch, 2)
    with pytest.raises(OSError):
        write_track(_sample_track(), out, fmt="jpg", overwrite=True)
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
    assert os.listdir(tmp_path) == ["track_1"]


def test_decode_image_reads_what_encode_image_wrote():
    rgb = rand_rgb(seed=11)
    png = tracks_mod.encode_image(rgb, "png")
    decoded, warnings = tracks_mod.decode_image(png, "x.png")
    np.testing.assert_array_equal(decoded, rgb)
    assert warnings == []
    assert Image.open(io.BytesIO(tracks_mod.encode_image(rgb, "jpg"))).format == "JPEG"
