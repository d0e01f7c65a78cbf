"""The typicality reference: fitting, scoring, saving, and the readers carrying it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ksrnet.infer import Reader
from ksrnet.synth.dataset import generate_track
from ksrnet.typicality import (ATYPICAL, MIN_REFERENCE_TRACKS, TypicalityError, TypicalityReference, fit_reference,
                               load_for, pooled_features, reference_path)


def gaussian_tracks(n: int, frames: int = 5, dim: int = 6, shift: float = 0.0, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    scale = np.linspace(0.5, 2.0, dim)  # unequal variances: the covariance must matter
    return [rng.normal(shift, 1.0, (frames, dim)) * scale for _ in range(n)]


def test_pooled_features_are_the_tokens_mean_and_spread():
    memory = torch.arange(24, dtype=torch.float32).view(1, 4, 6)
    out = pooled_features(memory)
    assert out.shape == (1, 12)
    assert torch.equal(out[0, :6], memory[0].mean(0))
    assert torch.allclose(out[0, 6:], memory[0].std(0, unbiased=False))
    with pytest.raises(ValueError):
        pooled_features(memory[0])


def test_in_distribution_tracks_spread_over_the_reference_and_shifted_ones_are_flagged():
    reference = fit_reference(gaussian_tracks(800))
    assert sorted(reference.reference_scores) == [1, 2, 3, 4, 5]
    held = np.array([reference.atypicality(t) for t in gaussian_tracks(400, seed=1)])
    # A new track from the same distribution is as likely to fall anywhere among the reference tracks.
    assert 0.4 < held.mean() < 0.6
    assert (held >= ATYPICAL).mean() < 0.04
    shifted = [reference.atypicality(t) for t in gaussian_tracks(50, shift=2.0, seed=2)]
    assert min(shifted) >= ATYPICAL


def test_each_frame_count_has_its_own_reference():
    # The mean over five frames spreads less than one frame's distance: one reference would flag
    # single frames far too often and five-frame tracks hardly ever.
    reference = fit_reference(gaussian_tracks(800))
    one, five = reference.reference_scores[1], reference.reference_scores[5]
    assert np.percentile(one, 99) > np.percentile(five, 99)
    singles = np.array([reference.atypicality(t[-1:]) for t in gaussian_tracks(400, seed=3)])
    assert 0.4 < singles.mean() < 0.6
    # A count no reference was fitted for uses the nearest one.
    longer = gaussian_tracks(1, frames=8, seed=4)[0]
    assert reference.atypicality(longer) == float(
        np.searchsorted(five, reference.track_score(longer), side="left") / len(five))


def test_scores_come_from_tracks_the_gaussian_was_not_fitted_on():
    tracks = gaussian_tracks(100, dim=20)
    reference = fit_reference(tracks)
    # fitted on the even tracks: their in-sample distances are smaller than the odd tracks'
    in_sample = np.mean([reference.track_score(t) for t in tracks[0::2]])
    assert in_sample < np.mean(reference.reference_scores[5])


def test_save_and_load_round_trip(tmp_path):
    reference = fit_reference(gaussian_tracks(100), source="100 test tracks")
    weights = tmp_path / "run" / "model.safetensors"
    weights.parent.mkdir()
    assert load_for(weights) is None
    path = reference.save(reference_path(weights), {"tracks": 100})
    assert path == tmp_path / "run" / "model.typicality.safetensors"
    loaded = load_for(weights)
    assert loaded.source == "100 test tracks"
    assert np.allclose(loaded.mean, reference.mean) and np.allclose(loaded.precision, reference.precision, rtol=1e-5)
    assert sorted(loaded.reference_scores) == sorted(reference.reference_scores)
    track = gaussian_tracks(1, seed=9)[0]
    assert loaded.atypicality(track) == pytest.approx(reference.atypicality(track), abs=2 / 50)


def test_bad_inputs_are_refused(tmp_path):
    with pytest.raises(TypicalityError, match="at least"):
        fit_reference(gaussian_tracks(2 * MIN_REFERENCE_TRACKS - 2))
    bad = gaussian_tracks(100)
    bad[4][0, 0] = np.nan
    with pytest.raises(TypicalityError, match="finite"):
        fit_reference(bad)
    reference = fit_reference(gaussian_tracks(100))
    with pytest.raises(TypicalityError, match="model this reference"):
        reference.atypicality(np.zeros((5, 7)))
    with pytest.raises(TypicalityError, match="no frames"):
        reference.atypicality(np.zeros((0, 6)))
    corrupt = tmp_path / "m.typicality.safetensors"
    corrupt.write_bytes(b"not safetensors")
    with pytest.raises(TypicalityError, match="cannot read"):
        load_for(tmp_path / "m.safetensors")
    with pytest.raises(TypicalityError):
        TypicalityReference(np.zeros(3), np.eye(4), {5: np.ones(3)})


def synthetic(n: int, seed: int = 11) -> list:
    return [generate_track(seed, i, preset="easy") for i in range(n)]


def test_a_reader_with_a_reference_reads_the_same_and_scores_every_track(micro_parseq):
    model = micro_parseq()
    plain = Reader(model)
    reference = fit_reference([plain.frame_features(t.lr).numpy() for t in synthetic(40)])
    scored = Reader(model, typicality=reference)
    tracks = synthetic(6, seed=12)
    a = plain.read(tracks, ["product", "single"], frame_count=3)
    b = scored.read(tracks, ["product", "single"], frame_count=3)
    for rule in a:
        for x, y in zip(a[rule], b[rule]):
            assert (x.text, x.char_probs) == (y.text, y.char_probs)
            assert x.atypicality is None and not x.atypical
            assert 0.0 <= y.atypicality <= 1.0
    # each track is scored from the frames it was read from: the last three here
    expected = [reference.atypicality(plain.frame_features(t.lr[-3:]).numpy()) for t in tracks]
    assert [r.atypicality for r in b["product"]] == pytest.approx(expected, abs=1e-9)
    # the same features come with the logits, for callers that fuse themselves (the report)
    logits, features = scored.track_logits_and_features(tracks, 3)
    assert scored.atypicality_of(features) == pytest.approx(expected, abs=1e-9) and len(logits) == len(tracks)
    assert [f.shape for f in features] == [(3, 2 * model.config.embed_dim)] * len(tracks)
    assert plain.track_logits_and_features(tracks, 3)[1] is None


@pytest.mark.parametrize("views", [("identity", "gamma0.8"), ("scale0.9", "gamma1.2")])
def test_tta_readings_score_the_frames_as_they_are(micro_parseq, views):
    model = micro_parseq()
    plain = Reader(model)
    reference = fit_reference([plain.frame_features(t.lr).numpy() for t in synthetic(40)])
    tracks = synthetic(3, seed=13)
    expected = [r.atypicality for r in Reader(model, typicality=reference).read(tracks)["product"]]
    tta = Reader(model, typicality=reference, tta_views=views).read(tracks)["product"]
    assert [r.atypicality for r in tta] == pytest.approx(expected, abs=1e-9)


def test_frame_features_match_the_network_it_was_copied_from(micro_parseq):
    model = micro_parseq()
    tracks = synthetic(2)
    reader = Reader(model)
    from ksrnet.preprocess import frames_to_tensor

    with torch.no_grad():
        direct = pooled_features(model.encode(frames_to_tensor(tracks[0].lr, reader.height, reader.width)))
    # the reader's copy has its batch norms folded: equal to float rounding
    assert torch.allclose(reader.frame_features(tracks[0].lr), direct, atol=1e-4)


def test_only_a_pytorch_network_takes_a_reference(micro_parseq):
    reference = fit_reference(gaussian_tracks(100, dim=64))

    class NotAParseq(torch.nn.Module):
        config = micro_parseq().config

    with pytest.raises(ValueError, match="PyTorch network"):
        Reader(NotAParseq(), typicality=reference)
