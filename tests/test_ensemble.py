"""Ensembles: the vote rule on hand-made member readings, logit averaging of identical members equals
one member, and bad ensembles are refused."""

from __future__ import annotations

import pytest

from ksrnet.infer import EnsembleReader, Reader, TrackReading
from ksrnet.tracks import Track


class FixedReader(Reader):
    """A member that reads every track as given (no model)."""

    def __init__(self, readings: list[tuple[str, float]]):
        self.readings = readings
        self.masks = None

    def read(self, tracks, fusions=("product",), frame_count=None, topk=3):
        return {f: [TrackReading(t.track_id, text, conf) for t, (text, conf) in zip(tracks, self.readings)]
                for f in fusions}


def test_vote_majority_with_known_answers():
    members = [FixedReader([("ABC1234", 0.9), ("AAA1111", 0.4)]),
               FixedReader([("ABC1234", 0.6), ("BBB2222", 0.7)]),
               FixedReader([("XYZ9876", 0.95), ("CCC3333", 0.2)])]
    out = EnsembleReader(members, "vote").read([Track("t1", []), Track("t2", [])], ["product"])["product"]
    assert out[0].text == "ABC1234" and out[0].confidence == pytest.approx((0.9 + 0.6) / 3)
    # No majority: the most confident member's reading, with only its own share of the confidence.
    assert out[1].text == "BBB2222" and out[1].confidence == pytest.approx(0.7 / 3)
    assert [r.track_id for r in out] == ["t1", "t2"]


def test_logit_average_of_identical_members_is_that_member(micro_parseq, noise_tracks):
    model, tracks = micro_parseq(), noise_tracks()
    single = Reader(model).read(tracks, ["product", "char_majority"])
    both = EnsembleReader([Reader(model), Reader(model)], "logit").read(tracks, ["product", "char_majority"])
    for rule in single:
        for a, b in zip(single[rule], both[rule]):
            assert a.text == b.text and a.confidence == pytest.approx(b.confidence, rel=1e-4)
    other = micro_parseq(seed=1)
    mixed = EnsembleReader([Reader(model), Reader(other)], "logit").read(tracks, ["product"])["product"]
    assert all(len(r.text) == 7 and 0 <= r.confidence <= 1 for r in mixed)


def test_bad_ensembles_are_refused():
    with pytest.raises(ValueError, match="at least two"):
        EnsembleReader([FixedReader([])], "vote")
    with pytest.raises(ValueError, match="ensemble rule"):
        EnsembleReader([FixedReader([]), FixedReader([])], "median")


def test_a_tied_vote_goes_to_the_text_with_the_higher_vote_confidence():
    # 2-2 split: ABC1234 has the single most confident member (0.9) but the lower share (0.95 / 4),
    # XYZ9876 the higher (1.2 / 4); the reading returned must be the one its own confidence ranks first.
    members = [FixedReader([("ABC1234", 0.9)]), FixedReader([("ABC1234", 0.05)]),
               FixedReader([("XYZ9876", 0.6)]), FixedReader([("XYZ9876", 0.6)])]
    out = EnsembleReader(members, "vote").read([Track("t1", [])], ["product"])["product"][0]
    assert out.text == "XYZ9876" and out.confidence == pytest.approx(1.2 / 4)


class OneRowReader(Reader):
    """A restoration-like member: one row of logits per track, whatever its frame count."""

    def __init__(self, seed: int):
        import torch

        from ksrnet.plates import layout_masks

        self.seed, self.tta_views, self.temperatures = seed, None, {}
        self.masks = torch.from_numpy(layout_masks())

    def frames_used(self, tracks, frame_count):
        return [len(t.lr) if frame_count is None else min(frame_count, len(t.lr)) for t in tracks]

    def track_logits(self, tracks, frame_count=None):
        import torch

        g = torch.Generator().manual_seed(self.seed)
        return [(3 * torch.randn(1, 7, len(self.masks[0, 0]), generator=g), torch.randn(1, 2, generator=g))
                for _ in tracks]


def test_a_logit_ensemble_of_restoration_members_picks_the_calibration_of_the_frames_read():
    from types import SimpleNamespace

    from ksrnet.ensemble_calibration import EnsembleCalibration, Member

    members = [OneRowReader(0), OneRowReader(1)]
    calibration = EnsembleCalibration(rule="logit", members=[Member("a", "ksrnet", "1"), Member("b", "ksrnet", "2")],
                                      temperatures={"product@5": 3.0, "product@1": 0.5})
    track = SimpleNamespace(track_id="t1", lr=[None] * 5)
    out = EnsembleReader(members, "logit", calibration=calibration).read([track], ["product"])["product"][0]
    assert out.frames_used == 5 and out.calibrated
    hot = EnsembleReader(members, "logit", calibration=EnsembleCalibration(
        rule="logit", members=calibration.members, temperatures={"product": 3.0})).read([track], ["product"])
    assert out.confidence == pytest.approx(hot["product"][0].confidence)  # T = 3, not product@1's 0.5


class DetailedReader(FixedReader):
    """A member whose readings carry per-character probabilities and alternatives."""

    def __init__(self, text: str, probs: list[float], alternatives: list[list[tuple[str, float]]]):
        self.text, self.probs, self.alts = text, probs, alternatives
        self.masks = None

    def read(self, tracks, fusions=("product",), frame_count=None, topk=3):
        conf = float(__import__("math").prod(self.probs))
        return {f: [TrackReading(t.track_id, self.text, conf, char_probs=tuple(self.probs), alternatives=self.alts)
                    for t in tracks] for f in fusions}


def test_a_voted_reading_carries_the_members_averaged_character_probabilities():
    sure = [1.0] * 6
    alts = lambda last: [[(c, 1.0)] for c in "ABC123"] + [last]  # noqa: E731
    members = [DetailedReader("ABC1234", sure + [0.99], alts([("4", 0.99), ("1", 0.01)])),
               DetailedReader("ABC1234", sure + [0.9], alts([("4", 0.9), ("7", 0.1)])),
               DetailedReader("ABC1237", sure + [0.8], alts([("7", 0.8), ("4", 0.15)]))]
    out = EnsembleReader(members, "vote").read([Track("t1", [])], ["product"])["product"][0]
    assert out.text == "ABC1234"
    # The last slot is not 0.99 (the most confident member's) but (0.99 + 0.9 + 0.15) / 3.
    assert out.char_probs[6] == pytest.approx((0.99 + 0.9 + 0.15) / 3)
    assert out.char_probs[:6] == pytest.approx(sure)
    assert [c for c, _ in out.alternatives[6]] == ["4", "7", "1"]
    assert out.alternatives[6][1][1] == pytest.approx((0.1 + 0.8) / 3)
    # A member that failed to read says nothing: it gives every character 0.
    failed = FixedReader([("", 0.0)])
    out = EnsembleReader(members[:2] + [failed], "vote").read([Track("t1", [])], ["product"])["product"][0]
    assert out.char_probs[6] == pytest.approx((0.99 + 0.9) / 3)
