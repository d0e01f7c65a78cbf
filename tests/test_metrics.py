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


def test_all_right_gap_uses_zero_for_the_empty_side():
    truths = [GroundTruth("t", "ABC1234")]
    r = score(truths, {"t": Reading("t", "ABC1234", 0.7)})
    assert r.overall.recognition_rate == 1.0 and r.overall.confidence_gap == pytest.approx(0.7)
    assert r.overall.mean_conf_wrong is None


def test_no_truths_is_an_error():
    with pytest.raises(ValueError):
        score([], {})
