"""DataConfig.plate_face_prob: a share of the training tracks printed in the plate faces alone."""

from pathlib import Path

import numpy as np
import pytest

from ksrnet.synth.dataset import SyntheticTrackDataset, generate_track
from ksrnet.synth.fonts import plate_faces, plate_fonts
from ksrnet.train_config import TrainConfig
from ksrnet.training import build_datasets


def _face_file(track) -> str:
    return track.typeface.split("@")[0]


def test_plate_faces_are_the_plate_fonts_without_the_package_faces():
    faces = plate_faces()
    assert faces, "our own plate faces ship with the package"
    assert all(f.source != "package" for f in faces)
    assert {f.path for f in faces} == {f.path for f in plate_fonts() if f.source != "package"}


def test_fonts_choose_the_face_and_default_keeps_the_stream():
    faces = plate_faces()
    names = {Path(f.path).name for f in faces}
    forced = [generate_track(5, i, preset="easy", fonts=faces) for i in range(12)]
    assert all(_face_file(t) in names for t in forced)
    plain = [generate_track(5, i, preset="easy") for i in range(12)]
    assert any(_face_file(t) not in names for t in plain)  # the generator's draw uses package faces too
    again = [generate_track(5, i, preset="easy", fonts=None) for i in range(12)]
    assert all(np.array_equal(a.lr[0], b.lr[0]) and a.text == b.text for a, b in zip(plain, again))


def test_a_share_of_the_tracks_in_plate_faces_the_rest_unchanged():
    names = {Path(f.path).name for f in plate_faces()}
    plain = list(SyntheticTrackDataset(40, seed=3, preset="easy"))
    mixed = list(SyntheticTrackDataset(40, seed=3, preset="easy", plate_face_prob=0.5))
    chosen = SyntheticTrackDataset(40, seed=3, preset="easy", plate_face_prob=0.5)
    picked = [chosen.fonts_for(i, 0, plate_faces()) is not None for i in range(40)]
    assert 10 <= sum(picked) <= 30  # about half
    for p, m, forced in zip(plain, mixed, picked):
        assert p.text == m.text and p.layout == m.layout  # the text is drawn before the face
        if forced:
            assert _face_file(m) in names
        else:  # not picked: the generator's own track, pixel for pixel
            assert m.typeface == p.typeface and all(np.array_equal(a, b) for a, b in zip(p.lr, m.lr))
    everything = list(SyntheticTrackDataset(10, seed=3, preset="easy", plate_face_prob=1.0))
    assert all(_face_file(t) in names for t in everything)


def test_the_config_passes_the_share_to_training_data_only():
    cfg = TrainConfig.from_dict({"model": {"preset": "tiny"},
                                 "data": {"plate_face_prob": 0.4, "synth_tracks_per_epoch": 8, "val_tracks": 4}})
    train, val = build_datasets(cfg)
    assert train.tracks.plate_face_prob == 0.4
    assert val.tracks.plate_face_prob == 0.0  # validation reads the generator's own draw
    with pytest.raises(ValueError, match="plate_face_prob"):
        TrainConfig.from_dict({"data": {"plate_face_prob": 1.5}})
    with pytest.raises(ValueError, match="plate_face_prob"):
        SyntheticTrackDataset(4, plate_face_prob=-0.1)
