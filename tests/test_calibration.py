"""Calibration: ECE and risk/coverage on hand-made numbers, temperature fitting on a set that is
mis-calibrated by construction, and the Reader applying a temperature."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ksrnet.calibration import (character_calibration, confidence_gap, expected_calibration_error, fit_temperature, fused_confidences,
                                risk_coverage)
from ksrnet.infer import Reader
from ksrnet.plates import CHARSET, LAYOUTS, Layout, layout_masks

MASKS = torch.from_numpy(layout_masks())


def test_ece_of_hand_made_sets():
    assert expected_calibration_error([1.0, 1.0], [False, False]) == pytest.approx(1.0)
    assert expected_calibration_error([0.0, 0.0], [False, False]) == pytest.approx(0.0)
    # One bin at 0.5 confidence with half right: calibrated.
    assert expected_calibration_error([0.5] * 4, [True, False, True, False]) == pytest.approx(0.0)
    # Two bins: 0.9 confident, 1 of 2 right (gap 0.4); 0.1 confident, 0 of 2 right (gap 0.1).
    assert expected_calibration_error([0.9, 0.9, 0.1, 0.1], [1, 0, 0, 0]) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        expected_calibration_error([], [])
    with pytest.raises(ValueError, match="finite"):
        expected_calibration_error([0.9, float("nan")], [True, False])


def test_character_calibration_counts_each_read_character_against_the_truth():
    from types import SimpleNamespace as NS

    truths = [NS(track_id="a", text="ABC1234"), NS(track_id="b", text="XYZ9876"), NS(track_id="c", text="AAA1111")]
    readings = {"a": NS(text="ABC1284", char_probs=(0.95,) * 7, confidence=0.05),  # one sure miss
                "b": NS(text="XYZ9876", char_probs=(0.5,) * 7, confidence=0.01),
                "c": NS(text="", char_probs=(), confidence=0.0)}  # abstained: no characters
    got = character_calibration(truths, readings)
    assert got["characters"] == 14
    assert got["sure_share"] == pytest.approx(0.5) and got["sure_error"] == pytest.approx(1 / 7)
    assert (got["sure_characters"], got["sure_wrong"]) == (7, 1)
    # two bins of 7: conf 0.5 all right (0.5 off), conf 0.95 with 6 of 7 right (0.95 - 6/7 off)
    assert got["ece"] == pytest.approx((7 * 0.5 + 7 * (0.95 - 6 / 7)) / 14)
    bands = got["sure_error_by_reading"]
    assert bands[0]["sure_characters"] == 7 and bands[0]["sure_error"] == pytest.approx(1 / 7)  # reading at 0.05
    assert all(b["sure_characters"] == 0 and b["sure_error"] is None for b in bands[1:])
    assert character_calibration(truths, {})["ece"] is None


def test_gap_and_risk_coverage():
    conf, right = [0.9, 0.8, 0.3, 0.1], [True, True, False, True]
    assert confidence_gap(conf, right) == pytest.approx((0.9 + 0.8 + 0.1) / 3 - 0.3)
    assert confidence_gap([0.5], [True]) is None
    rows = {r["threshold"]: r for r in risk_coverage(conf, right, thresholds=(0.0, 0.5, 0.95))}
    assert rows[0.0]["coverage"] == 1.0 and rows[0.0]["risk"] == pytest.approx(0.25)
    assert rows[0.5]["coverage"] == 0.5 and rows[0.5]["risk"] == 0.0 and rows[0.5]["read"] == 2
    assert rows[0.95]["coverage"] == 0.0 and rows[0.95]["risk"] is None


def calibrated_tracks(n: int, seed: int = 0):
    """Single-frame Brazilian tracks whose true text is drawn from the softmax of their own logits,
    so the logits are calibrated at T = 1 by construction."""
    g = torch.Generator().manual_seed(seed)
    brazilian = LAYOUTS.index(Layout.BRAZILIAN)
    allowed = MASKS[brazilian]  # (7, C)
    logits, texts = [], []
    for _ in range(n):
        z = torch.randn(7, len(CHARSET), generator=g)
        boost = float(torch.rand(1, generator=g)) * 9  # from illegible (0) to clear (9) tracks
        for slot in range(7):
            choices = allowed[slot].nonzero()[:, 0]
            z[slot, choices[torch.randint(len(choices), (1,), generator=g)]] += boost
        z = z.masked_fill(~allowed, -40.0)
        text = "".join(CHARSET[int(torch.multinomial(torch.softmax(row, -1), 1, generator=g))] for row in z)
        layout = torch.full((len(LAYOUTS),), -40.0)
        layout[brazilian] = 40.0
        logits.append((z[None], layout[None]))
        texts.append(text)
    return logits, texts


def test_temperature_fit_recovers_the_overconfidence_and_lowers_ece():
    logits, texts = calibrated_tracks(100)
    overconfident = [(c * 3.0, l * 3.0) for c, l in logits]
    fit = fit_temperature(overconfident, texts, "product", MASKS)
    assert 2.0 < fit.temperature < 4.5
    assert fit.ece_after < fit.ece_before / 2
    assert fit.nll_after < fit.nll_before
    # The same fit on the calibrated logits keeps T near 1.
    assert 0.6 < fit_temperature(logits, texts, "product", MASKS).temperature < 1.6


def test_a_fit_says_when_it_found_no_best_temperature():
    logits, texts = calibrated_tracks(60, seed=2)
    inside = fit_temperature(logits, texts, "product", MASKS)
    assert not inside.unbounded
    # Every reading wrong: the cross-entropy keeps falling as T grows, until the confidences underflow.
    _, right = fused_confidences(logits, texts, "product", MASKS, 1.0)
    wrong = [i for i in range(len(texts)) if not right[i]]
    assert len(wrong) >= 10
    edge = fit_temperature([logits[i] for i in wrong], [texts[i] for i in wrong], "product", MASKS)
    assert edge.unbounded and edge.temperature > 4 and edge.recognition_rate == 0.0


def test_a_gap_fit_widens_the_confidence_gap_beyond_every_temperature_searched():
    logits, texts = calibrated_tracks(150, seed=3)
    nll = fit_temperature(logits, texts, "product", MASKS)
    gap = fit_temperature(logits, texts, "product", MASKS, objective="gap")
    assert gap.objective == "gap" and nll.objective == "nll"
    assert gap.recognition_rate == nll.recognition_rate  # a temperature moves confidences only
    assert gap.gap_after > nll.gap_after and gap.gap_after >= gap.gap_before
    # the best of a grid finer than the fit's coarse one, within the fit's resolution of 2^(1/8)
    grid = [confidence_gap(*fused_confidences(logits, texts, "product", MASKS, t)) for t in np.geomspace(0.25, 16, 49)]
    assert gap.gap_after >= max(grid) - 0.01
    # calibrated confidences are what the cross-entropy fit gives: the gap fit's are worse at that
    assert gap.nll_after > nll.nll_after
    with pytest.raises(ValueError, match="objective"):
        fit_temperature(logits, texts, "product", MASKS, objective="auc")


def test_a_gap_fit_needs_a_right_reading():
    logits, texts = calibrated_tracks(60, seed=2)
    _, right = fused_confidences(logits, texts, "product", MASKS, 1.0)
    wrong = [i for i in range(len(texts)) if not right[i]]
    with pytest.raises(ValueError, match="no validation reading is right"):
        fit_temperature([logits[i] for i in wrong], [texts[i] for i in wrong], "product", MASKS, objective="gap")


def test_temperature_changes_confidence_not_the_single_frame_reading():
    logits, texts = calibrated_tracks(20, seed=1)
    conf1, right1 = fused_confidences(logits, texts, "product", MASKS, 1.0)
    conf2, right2 = fused_confidences(logits, texts, "product", MASKS, 2.0)
    assert np.array_equal(right1, right2)
    assert (conf2 <= conf1 + 1e-9).all() and (conf2 < conf1).any()


def test_reader_applies_its_temperature_and_rejects_bad_ones(micro_parseq, noise_tracks):
    model, tracks = micro_parseq(), noise_tracks()
    plain = Reader(model).read(tracks, ["product", "single"])
    hot = Reader(model, temperatures={"product": 4.0}).read(tracks, ["product", "single"])
    for a, b in zip(plain["single"], hot["single"]):  # no temperature for "single": unchanged
        assert a.confidence == b.confidence
    assert any(a.confidence != b.confidence for a, b in zip(plain["product"], hot["product"]))
    logits = Reader(model).track_logits(tracks)
    assert [c.shape[0] for c, _ in logits] == [3, 3]
    for bad in ({"product": 0.0}, {"vote": 1.0}, {"product@0": 1.0}, {"product@x": 1.0}, {"vote@1": 1.0},
                {"product@": 2.0, "single": True}):
        with pytest.raises(ValueError, match="temperatures"):
            Reader(model, temperatures=bad)


def test_a_temperature_per_frame_count_serves_only_tracks_of_that_length(micro_parseq, noise_tracks):
    from ksrnet.infer import pick_temperature, temperature_key

    temps = {"product": 2.0, "product@1": 5.0}
    assert pick_temperature(temps, "product", 1) == 5.0 and pick_temperature(temps, "product", 5) == 2.0
    assert pick_temperature(temps, "single", 1) == 1.0
    assert temperature_key("product", 3) == "product@3" and temperature_key("product") == "product"
    model, tracks = micro_parseq(), noise_tracks(frames=5)
    general = Reader(model, temperatures={"product": 2.0})
    per_count = Reader(model, temperatures={"product": 2.0, "product@1": 5.0})
    for f, same in ((5, True), (1, False)):
        a = general.read(tracks, ["product"], frame_count=f)["product"]
        b = per_count.read(tracks, ["product"], frame_count=f)["product"]
        assert [x.text for x in a] == [x.text for x in b]
        assert ([x.confidence for x in a] == [x.confidence for x in b]) == same


def test_no_temperature_or_map_is_fitted_on_a_set_without_a_wrong_reading():
    # All right: the cross-entropy falls as T shrinks, so the grid's sharpest edge would be stored
    # and every later reading would come out near-certain, wrong ones included.
    from ksrnet.calibration import fit_confidence_map

    logits, texts = calibrated_tracks(40, seed=3)
    _, right = fused_confidences(logits, texts, "product", MASKS, 1.0)
    keep = [i for i in range(len(texts)) if right[i]]
    assert len(keep) >= 5
    with pytest.raises(ValueError, match="every validation reading is right"):
        fit_temperature([logits[i] for i in keep], [texts[i] for i in keep], "product", MASKS)
    with pytest.raises(ValueError, match="every validation reading is right"):
        fit_confidence_map(np.linspace(0.05, 0.95, 20), [True] * 20, "product")


def test_calibrate_notes_a_fit_without_optimum(capsys):
    from ksrnet.calibration import CalibrationFit
    from ksrnet.cli import note_doubtful_fits

    figures = dict(tracks=10, ece_before=0.1, ece_after=0.05, gap_before=None, gap_after=None, nll_before=1.0,
                   nll_after=0.5)
    fits = [(5, CalibrationFit(fusion="product", recognition_rate=0.5, temperature=2.0, **figures)),
            (None, CalibrationFit(fusion="product", recognition_rate=0.0, temperature=11.3, unbounded=True,
                                  **figures))]
    note_doubtful_fits(fits)
    err = " ".join(capsys.readouterr().err.split())
    assert "product at F=5" not in err
    assert "product at F=all: no best temperature was found" in err and "11.31" not in err
