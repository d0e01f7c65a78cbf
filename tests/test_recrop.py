"""Re-cropping frames around their plate (ksrnet.recrop) and the training augmentation built on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ksrnet.infer import Reader
from ksrnet.recrop import MIN_CROP_PX, frame_quads, pad_frame, plate_box_crop, recrop_frames
from ksrnet.synth.dataset import SyntheticTrackDataset, generate_track
from ksrnet.train_config import TrainConfig
from ksrnet.training import RecognizerSamples
from ksrnet.tracks import Track

QUAD = np.array([[10.0, 5.0], [40.0, 5.0], [40.0, 15.0], [10.0, 15.0]])  # a 30 x 10 px plate


def test_plate_box_crop_margins():
    frame = np.arange(30 * 60 * 3, dtype=np.uint8).reshape(30, 60, 3)
    assert plate_box_crop(frame, QUAD, 0.0).shape == (10, 30, 3)
    assert np.array_equal(plate_box_crop(frame, QUAD, 0.0), frame[5:15, 10:40])
    # the margin is a share of the plate's width on every side: 0.1 x 30 = 3 px
    assert plate_box_crop(frame, QUAD, 0.1).shape == (16, 36, 3)
    assert plate_box_crop(frame, QUAD, -0.1).shape == (4, 24, 3)  # cut into the plate
    assert plate_box_crop(frame, QUAD, 1.0).shape == (30, 60, 3)  # clipped to the frame


def test_plate_box_crop_refuses_bad_quads_and_keeps_degenerate_frames():
    frame = np.zeros((20, 40, 3), np.uint8)
    with pytest.raises(ValueError, match="4 finite"):
        plate_box_crop(frame, np.zeros((3, 2)), 0.0)
    with pytest.raises(ValueError, match="4 finite"):
        plate_box_crop(frame, np.full((4, 2), np.nan), 0.0)
    tiny = np.array([[5.0, 5.0], [6.0, 5.0], [6.0, 6.0], [5.0, 6.0]])
    assert plate_box_crop(frame, tiny, 0.0) is frame  # under MIN_CROP_PX: left as it was
    assert MIN_CROP_PX > 1


def test_frame_quads_of_synthetic_and_folder_tracks():
    synth = generate_track(3, 0, preset="easy")
    quads = frame_quads(synth)
    assert len(quads) == len(synth.lr) and quads[0].shape == (4, 2)
    names = [f"lr-{i:03d}.png" for i in range(1, 3)]
    folder = Track("t", lr=[np.zeros((17, 48, 3), np.uint8)] * 2, lr_names=names,
                   corners={n: QUAD for n in names})
    assert len(frame_quads(folder)) == 2
    folder.corners.pop(names[1])  # one frame without corners: the track cannot be re-cropped
    assert frame_quads(folder) is None
    assert frame_quads(Track("b", lr=[np.zeros((17, 48, 3), np.uint8)])) is None  # Scenario B: no corners


def test_recrop_frames_draws_a_margin_per_frame_in_range():
    frame = np.zeros((40, 80, 3), np.uint8)
    quad = QUAD + 20
    out = recrop_frames([frame] * 50, [quad] * 50, np.random.default_rng(0), (-0.02, 0.04))
    widths = {f.shape[1] for f in out}
    assert len(widths) > 1  # margins differ between frames
    assert all(28 <= w <= 34 for w in widths)  # 30 px plate, -0.6..+1.2 px per side, rounded outwards


def _config(prob: float) -> TrainConfig:
    cfg = TrainConfig.from_dict({"model": {"preset": "tiny"}, "data": {"recrop_prob": prob, "seed": 4}})
    return cfg


def test_training_samples_recrop_some_tracks_and_validation_none():
    tracks = list(SyntheticTrackDataset(40, seed=2, preset="easy"))
    plain = RecognizerSamples(tracks, _config(0.0))
    recropped = RecognizerSamples(tracks, _config(0.5))
    changed = [not torch.equal(plain.sample(t)[0], recropped.sample(t)[0]) for t in tracks]
    assert 5 <= sum(changed) <= 35  # about half
    again = RecognizerSamples(tracks, _config(0.5))
    assert all(torch.equal(recropped.sample(t)[0], again.sample(t)[0]) for t in tracks)  # seeded
    validation = RecognizerSamples(tracks, _config(1.0), random_frames=False)
    assert all(torch.equal(plain.sample(t)[0], validation.sample(t)[0]) for t in tracks)


def test_echoed_copies_keep_the_corners_for_recropping():
    tracks = list(SyntheticTrackDataset(6, seed=2, preset="easy"))
    samples = RecognizerSamples(tracks, _config(1.0), echo=2, echo_buffer=4)
    slim = [t for t, _ in samples.echoed(tracks)]
    assert len(slim) == 12
    assert all(frame_quads(t) is not None for t in slim)
    by_id = {t.track_id: t for t in tracks}
    t = slim[0]
    assert torch.equal(samples.sample(t)[0], samples.sample(by_id[t.track_id])[0])


@pytest.mark.parametrize("margin", [[0.1, -0.1], [-0.2, 0.0], [0.0, 0.6], [0.0], "x"])
def test_bad_recrop_settings_are_refused(margin):
    with pytest.raises(ValueError, match="recrop_margin"):
        TrainConfig.from_dict({"data": {"recrop_margin": margin}})
    with pytest.raises(ValueError, match="recrop_prob"):
        TrainConfig.from_dict({"data": {"recrop_prob": 1.5}})


def test_pad_frame_replicates_the_edges():
    frame = np.arange(17 * 48 * 3, dtype=np.uint8).reshape(17, 48, 3)
    assert pad_frame(frame, 0.0) is frame
    padded = pad_frame(frame, 0.0625)  # 3 px on every side of a 48 px frame
    assert padded.shape == (23, 54, 3)
    assert np.array_equal(padded[3:20, 3:51], frame)
    assert np.array_equal(padded[0, 3:51], frame[0]) and np.array_equal(padded[10, 0], frame[7, 0])
    assert pad_frame(frame, 0.001).shape == (19, 50, 3)  # at least one pixel
    with pytest.raises(ValueError, match="pad margin"):
        pad_frame(frame, -0.1)


def test_reader_pads_every_frame_when_asked(micro_parseq, noise_tracks):
    model = micro_parseq()
    frames = [f for t in noise_tracks(2, 3) for f in t.lr]
    padded = Reader(model, pad_margin=0.06).frame_outputs(frames)
    by_hand = Reader(model).frame_outputs([pad_frame(f, 0.06) for f in frames])
    plain = Reader(model).frame_outputs(frames)
    assert torch.equal(padded[0], by_hand[0]) and torch.equal(padded[1], by_hand[1])
    assert not torch.allclose(padded[0], plain[0])
    with pytest.raises(ValueError, match="pad_margin"):
        Reader(model, pad_margin=-0.01)
    reader = Reader(model)
    with pytest.raises(ValueError, match="pad_margin"):
        reader.pad_margin = 0.7  # set after construction, as the CLI does: checked all the same
    assert reader.pad_margin == 0
