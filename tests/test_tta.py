"""Test-time augmentation: each view does what it says, the flip's reading is put back in slot order
before voting, voting is the mean of log-probabilities, and the Reader reads with views."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ksrnet.infer import Reader
from ksrnet.tta import VIEWS, check_views, make_view, vote


def frame(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (17, 48, 3), dtype=np.uint8)


def test_views_keep_size_and_change_what_they_should():
    f = frame()
    for view in VIEWS:
        out = make_view(f, view)
        if view.startswith("pad"):  # grows by its margin on every side; the reader resizes every view
            assert out.shape == (17 + 6, 48 + 6, 3) and np.array_equal(out[3:-3, 3:-3], f), view
        else:
            assert out.shape == f.shape and out.dtype == np.uint8, view
    assert make_view(f, "identity") is f
    assert np.array_equal(make_view(f, "hflip"), f[:, ::-1])
    assert np.array_equal(make_view(make_view(f, "hflip"), "hflip"), f)
    # Gamma < 1 brightens mid-tones, > 1 darkens them; black and white stay.
    grey = np.full((4, 4, 3), 128, np.uint8)
    assert make_view(grey, "gamma0.8")[0, 0, 0] > 128 > make_view(grey, "gamma1.2")[0, 0, 0]
    ends = np.array([[[0, 255, 0]]], np.uint8)
    assert np.array_equal(make_view(ends, "gamma1.2"), ends)
    # Zooming in by 1.1 moves an off-centre dot away from the centre; 0.9 moves it towards it.
    dot = np.zeros((21, 41, 3), np.uint8)
    dot[10, 30] = 255
    col = lambda img: int(np.argmax(img[10, :, 0]))  # noqa: E731
    assert col(make_view(dot, "scale1.1")) > 30 > col(make_view(dot, "scale0.9"))


def test_vote_unreverses_the_flipped_reading():
    g = torch.Generator().manual_seed(0)
    chars = torch.randn(1, 3, 7, 36, generator=g)
    layouts = torch.randn(1, 3, 2, generator=g)
    flipped = chars.flip(dims=[2])  # what a model reading the mirrored plate would say, slot-reversed
    merged, merged_layout = vote(torch.cat([chars, flipped]), torch.cat([layouts, layouts]), ["identity", "hflip"])
    expected = torch.log_softmax(chars[0], -1)
    torch.testing.assert_close(merged, expected)  # both views agree once the flip is undone
    torch.testing.assert_close(merged_layout, torch.log_softmax(layouts[0], -1))


def test_vote_is_the_mean_of_log_probabilities():
    a = torch.tensor([[[[2.0, 0.0]]]])  # (V=1, N=1, S=1, C=2)
    b = torch.tensor([[[[0.0, 2.0]]]])
    lay = torch.zeros(2, 1, 2)
    merged, _ = vote(torch.cat([a, b]), lay, ["identity", "gamma0.8"])
    la, lb = torch.log_softmax(a[0], -1), torch.log_softmax(b[0], -1)
    torch.testing.assert_close(merged, (la + lb) / 2)
    assert merged[0, 0, 0] == pytest.approx(merged[0, 0, 1].item())  # opposite views cancel


@pytest.mark.parametrize("views", [[], ["identity", "rot90"], ["identity", "identity"]])
def test_bad_view_lists_are_rejected(views):
    with pytest.raises(ValueError, match="TTA"):
        check_views(views)


def test_reader_with_tta_reads_and_identity_only_equals_no_tta(micro_parseq, noise_tracks):
    model, tracks = micro_parseq(), noise_tracks(frames=2)
    plain = Reader(model).read(tracks, ["product"])["product"]
    same = Reader(model, tta_views=["identity"]).read(tracks, ["product"])["product"]
    for a, b in zip(plain, same):
        assert a.text == b.text and a.confidence == pytest.approx(b.confidence, rel=1e-5)
    full = Reader(model, tta_views=VIEWS).read(tracks, ["product"])["product"]
    assert len(full) == 2 and all(len(r.text) == 7 and 0 <= r.confidence <= 1 for r in full)
