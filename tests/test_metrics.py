import pytest

from ksrnet.metrics import GroundTruth, Reading, levenshtein, score


def test_levenshtein_known_values():
    assert levenshtein("ABC1234", "ABC1234") == 0
    assert levenshtein("ABC1234", "ABC1235") == 1
    assert levenshtein("", "ABC1234") == 7
    assert levenshtein("ABC123", "ABC1234") == 1
    assert levenshtein("BAC1234", "ABC1234") == 2


def test_hand_made_case_with_known_answers():
    truths = [
        GroundTruth("track_1", "ABC1234", "Brazilian", "Scenario-A"),
        GroundTruth("track_2", "BDE6E26", "Mercosur", "Scenario-B"),
        GroundTruth("track_3", "XYZ9876", "Brazilian", "Scenario-B"),
        GroundTruth("track_4", "QRS1A23", "Mercosur", "Scenario-B"),
    ]
    readings = {
        "track_1": Reading("track_1", "ABC1234", 0.8),  # right
        "track_2": Reading("track_2", "BDE6E28", 0.95),  # one char wrong, confidently
        "track_3": Reading("track_3", "XYZ9876", 1.0),  # right
        # track_4 missing: wrong with confidence 0 and 7 edits
        "track_9": Reading("track_9", "AAA0000", 0.5),  # unknown track
    }
    r = score(truths, readings)
    o = r.overall
    assert o.tracks == 4 and o.missing == 1
    assert o.recognition_rate == pytest.approx(0.5)
    assert o.cer == pytest.approx((0 + 1 + 0 + 7) / 28)
    assert o.char_accuracy == pytest.approx((7 + 6 + 7 + 0) / 28)
    assert o.mean_conf_right == pytest.approx(0.9)
    assert o.mean_conf_wrong == pytest.approx(0.475)
    assert o.confidence_gap == pytest.approx(0.425)
    assert o.confident_wrong == 1
    assert r.extra_predictions == ["track_9"]
    assert r.by_layout["Brazilian"].recognition_rate == 1.0
    assert r.by_layout["Mercosur"].recognition_rate == 0.0
    assert r.by_scenario["Scenario-A"].tracks == 1
    assert r.by_scenario["Scenario-B"].recognition_rate == pytest.approx(1 / 3)
    assert r.as_dict()["overall"]["tracks"] == 4


def test_gap_is_undefined_when_all_right_or_all_wrong():
    # Competition: gap = mean conf of right reads - mean conf of wrong ones; with one side empty there is
    # no gap (calibration.confidence_gap says None too), not the other side's mean.
    truths = [GroundTruth("t", "ABC1234", "Brazilian"), GroundTruth("u", "BDE6E26", "Mercosur")]
    r = score(truths, {"t": Reading("t", "ABC1234", 0.7), "u": Reading("u", "BDE6E28", 0.4)})
    assert r.overall.confidence_gap == pytest.approx(0.3)
    right_only, wrong_only = r.by_layout["Brazilian"], r.by_layout["Mercosur"]
    assert right_only.recognition_rate == 1.0 and right_only.mean_conf_right == pytest.approx(0.7)
    assert right_only.mean_conf_wrong is None and right_only.confidence_gap is None
    assert wrong_only.mean_conf_wrong == pytest.approx(0.4) and wrong_only.confidence_gap is None
    assert score(truths, {}).overall.confidence_gap is None  # nothing submitted: all wrong


def test_gap_counts_a_missing_track_at_confidence_zero():
    truths = [GroundTruth("t", "ABC1234"), GroundTruth("u", "BDE6E26"), GroundTruth("v", "XYZ9876")]
    submitted = {"t": Reading("t", "ABC1234", 0.9), "u": Reading("u", "BDE6E28", 0.3),
                 "v": Reading("v", "XYZ9875", 0.5)}
    assert score(truths, submitted).overall.confidence_gap == pytest.approx(0.9 - 0.4)
    del submitted["v"]
    assert score(truths, submitted).overall.confidence_gap == pytest.approx(0.9 - 0.15)


def test_no_truths_is_an_error():
    with pytest.raises(ValueError):
        score([], {})
