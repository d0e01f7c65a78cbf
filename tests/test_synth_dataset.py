"""The synthetic track stream: determinism, worker independence, and what `ksrnet synth` writes."""

import dataclasses
import json

import numpy as np
import pytest
from torch.utils.data import DataLoader

from ksrnet.plates import infer_layout
from ksrnet.synth.camera import warp_with_flow
from ksrnet.synth.dataset import SyntheticTrackDataset, generate_track, undegraded_track, write_synthetic_dataset
from ksrnet.tracks import SYNTH_GROUND_TRUTH_NAME, discover_tracks, read_track


def test_same_seed_same_track_and_other_seed_other_track():
    a, b = generate_track(7, 3, preset="hard"), generate_track(7, 3, preset="hard")
    assert a.text == b.text and all(np.array_equal(x, y) for x, y in zip(a.lr, b.lr))
    c = generate_track(8, 3, preset="hard")
    assert c.text != a.text or not all(np.array_equal(x, y) for x, y in zip(a.lr, c.lr))
    assert generate_track(7, 3, epoch=1).text != a.text or generate_track(7, 4).text != a.text


@pytest.mark.parametrize("preset", ["hard", "easy"])
def test_the_undegraded_track_degrades_to_the_generated_one_as_often_as_asked(preset):
    track = generate_track(7, 3, preset=preset)
    undegraded = undegraded_track(7, 3, preset=preset)
    for _ in range(2):  # each call degrades a copy of the stream, so the second is the same
        assert all(np.array_equal(x, y) for x, y in zip(undegraded.lr_frames(), track.lr))
    again = undegraded.finish(undegraded.lr_frames())
    assert (again.track_id, again.text, again.layout, again.preset) == (track.track_id, track.text, track.layout,
                                                                        track.preset)
    assert again.degradation == track.degradation
    np.testing.assert_array_equal(again.corners, track.corners)
    np.testing.assert_array_equal(again.canonical_hr, track.canonical_hr)


def test_track_text_follows_its_layout_and_frames_are_lrlpr_sized():
    for i in range(6):
        t = generate_track(1, i, preset="mix")
        assert infer_layout(t.text) is t.layout
        assert len(t.lr) == 5 and t.corners.shape == (5, 4, 2)
        for f in t.lr:
            assert f.dtype == np.uint8 and f.shape[2] == 3
            assert 14 <= f.shape[0] <= 22 and 34 <= f.shape[1] <= 58


@pytest.mark.parametrize("index", [0, 1, 2, 5])
def test_another_text_on_the_same_track_changes_only_the_print(index):
    base = generate_track(3, index, preset="hard")
    again = generate_track(3, index, preset="hard", text=base.text.lower())
    assert again.text == base.text and all(np.array_equal(x, y) for x, y in zip(base.lr, again.lr))
    other_text = ("B" if base.text[0] != "B" else "C") + base.text[1:]
    other = generate_track(3, index, preset="hard", text=other_text)
    assert other.text == other_text and other.layout is base.layout
    np.testing.assert_array_equal(other.corners, base.corners)
    assert other.degradation == base.degradation and base.degradation.preset == "hard"
    assert [f.shape for f in other.lr] == [f.shape for f in base.lr]
    assert any(not np.array_equal(x, y) for x, y in zip(base.lr, other.lr))
    # The plate's right half, far from the first character, is printed as before.
    w = base.canonical_hr.shape[1]
    np.testing.assert_array_equal(other.canonical_hr[:, w // 2:], base.canonical_hr[:, w // 2:])
    wrong_layout = "ABC1234" if base.layout.value == "Mercosur" else "ABC1D23"
    with pytest.raises(ValueError, match="layout.*does not follow the .* syntax"):
        generate_track(3, index, preset="hard", text=wrong_layout)
    with pytest.raises(ValueError, match="characters outside A-Z0-9"):
        generate_track(3, index, preset="hard", text="AB?1234")


def test_a_track_names_the_face_its_plate_is_printed_in():
    from pathlib import Path

    from ksrnet.synth.fonts import plate_fonts

    files = {Path(f.path).name: f for f in plate_fonts()}
    faces = [generate_track(3, i, preset="hard").typeface for i in range(40)]
    for face in faces:
        name, _, weight = face.partition("@")
        assert name in files and (weight == "") == (not files[name].variable)
    assert len(set(faces)) > 5  # drawn per plate
    assert generate_track(3, 7, preset="hard").typeface == faces[7]  # from the track's own draws
    photo = np.full((30, 100, 3), 128, np.uint8)
    assert generate_track(3, 7, preset="hard", plate_image=photo).typeface is None  # a photo, not our print


def test_a_photographed_plate_takes_the_rendered_ones_place_in_the_same_track():
    base = generate_track(3, 5, preset="easy")
    # A plate "photo" of another size: left half dark, right half light, so where it lands shows.
    photo = np.zeros((30, 100, 3), np.uint8)
    photo[:, 50:] = 230
    real = generate_track(3, 5, preset="easy", text=base.text, plate_image=photo)
    assert real.text == base.text and real.degradation == base.degradation
    np.testing.assert_array_equal(real.corners, base.corners)
    assert real.canonical_hr.shape == base.canonical_hr.shape
    w = real.canonical_hr.shape[1]
    assert real.canonical_hr[:, : w // 2 - 2].max() < 10 and real.canonical_hr[:, w // 2 + 2:].min() > 220
    # In the frames, the plate's left half is now darker than its right half.
    ref = real.lr[real.reference]
    (x0, y0), (x1, y1) = real.corners[real.reference][0], real.corners[real.reference][2]
    ym = int(round((y0 + y1) / 2))
    left, right = ref[ym, int(x0) + 2: int((x0 + x1) / 2) - 1], ref[ym, int((x0 + x1) / 2) + 2: int(x1) - 1]
    assert left.mean() + 60 < right.mean()
    with pytest.raises(ValueError, match="RGB uint8"):
        generate_track(3, 5, preset="easy", plate_image=np.zeros((30, 100), np.uint8))


def _texts(loader):
    return [t.text for t in loader]


def test_dataset_yields_the_same_tracks_for_any_worker_count():
    ds = SyntheticTrackDataset(6, seed=5, preset="easy")
    single = _texts(DataLoader(ds, batch_size=None, num_workers=0))
    double = _texts(DataLoader(ds, batch_size=None, num_workers=2))
    assert len(single) == 6 and sorted(single) == sorted(double)
    assert single == [generate_track(5, i, preset="easy").text for i in range(6)]
    ds.set_epoch(1)
    assert _texts(DataLoader(ds, batch_size=None, num_workers=0)) != single
    fixed = SyntheticTrackDataset(6, seed=5, preset="easy", fixed=True)
    fixed.set_epoch(3)
    assert _texts(DataLoader(fixed, batch_size=None, num_workers=0)) == single


def test_written_tracks_read_back_with_text_corners_and_ground_truth(tmp_path):
    paths = write_synthetic_dataset(tmp_path, 3, seed=2, preset="medium", codec="jpeg")
    assert sorted(discover_tracks(tmp_path)) == sorted(paths)
    for i, path in enumerate(sorted(paths, key=lambda p: p.name)):
        source = generate_track(2, int(path.name.split("_")[1]) - 1, preset="medium", codec="jpeg")
        track = read_track(path)
        assert track.text == source.text and track.layout is source.layout
        assert track.scenario == "Scenario-Synthetic" and not track.warnings
        assert all(np.array_equal(x, y) for x, y in zip(track.lr, source.lr))  # png: lossless
        assert len(track.hr) == 5 and track.hr[0].shape[0] > 3 * track.lr[0].shape[0]
        np.testing.assert_allclose(track.corners["lr-001.png"], source.corners[0], atol=1e-4)
        gt = np.load(path / SYNTH_GROUND_TRUTH_NAME)
        ref = int(gt["reference"])
        assert gt["canonical_hr"].shape == source.canonical_hr.shape
        for t in range(5):
            flow = gt[f"flow_to_ref_{t + 1:03d}"]
            assert flow.shape == track.lr[t].shape[:2] + (2,)
            assert gt[f"to_canonical_{t + 1:03d}"].shape == (3, 3)
        np.testing.assert_allclose(gt[f"flow_to_ref_{ref + 1:03d}"], 0, atol=1e-4)  # the reference maps to itself
        drawn = json.loads(str(gt["degradation"]))  # read without allow_pickle
        assert drawn["codec"] == "jpeg" and drawn["preset"] == "medium"
        assert drawn == json.loads(json.dumps(dataclasses.asdict(source.degradation)))


def test_flow_side_file_rebuilds_a_frame_from_the_reference():
    track = generate_track(4, 0, preset="easy", codec="none")
    ref = track.reference
    flows = track.flows_to_reference()
    errors = []
    for t in range(5):
        if t == ref:
            continue
        rebuilt = warp_with_flow(track.lr[ref].astype(np.float32), flows[t])
        inner = (slice(4, -4), slice(6, -6))
        warped = np.abs(rebuilt[inner] - track.lr[t][inner].astype(np.float32)).mean()
        plain = np.abs(track.lr[ref][inner].astype(np.float32) - track.lr[t][inner].astype(np.float32)).mean()
        errors.append((warped, plain))
    # Blur and noise differ per frame, so the match is not exact; but the geometry must help.
    assert np.mean([w for w, _ in errors]) < 0.8 * np.mean([p for _, p in errors])
