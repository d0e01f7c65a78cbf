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
