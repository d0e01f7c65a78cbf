"""Calibrating the reading modes beyond one plain reader: TTA temperatures (their keys, the reader
picking them, the fallback) and ensembles (the isotonic map of the vote's confidence, the
calibration file bound to its members, the CLI around both)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from ksrnet.calibration import ConfidenceMap, expected_calibration_error, fit_confidence_map, isotonic_map
from ksrnet.cli import app
from ksrnet.ensemble_calibration import EnsembleCalibration, EnsembleCalibrationError, Member
from ksrnet.infer import (TTA_VIEWS_KEY, EnsembleReader, Reader, TrackReading, parse_temperature_key,
                          pick_calibration, pick_temperature, reader_temperatures, temperature_key)
from ksrnet.tracks import Track
from ksrnet.weights import save_model

runner = CliRunner()


def plain(text: str) -> str:
    return "".join(re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", text).split())


# --------------------------------------------------------------------------------------------------
# Keys


def test_tta_keys_round_trip_and_bad_keys_are_refused(micro_parseq):
    assert temperature_key("product", 5, tta=True) == "tta:product@5"
    assert temperature_key("logit_mean", None, tta=True) == "tta:logit_mean"
    for rule, frames, tta in (("product", 5, True), ("single", None, True), ("product", 1, False),
                              ("char_majority", None, False)):
        assert parse_temperature_key(temperature_key(rule, frames, tta)) == (rule, frames, tta)
    for bad in ("tta:", "tta:vote", "tta:product@0", "tta:product@x", "TTA:product", "tta:tta:product",
                "product@", "tta:product@", "product@5@1", "product@05", "tta:product@005", 3):
        assert parse_temperature_key(bad) is None, bad
    model = micro_parseq()
    Reader(model, temperatures={"tta:product@5": 2.0, "tta:product": 1.5, "product": 1.2})
    for bad in ({"tta:product@5": 0.0}, {"tta:vote": 1.0}, {"tta:product@0": 1.0}, {"product": float("inf")},
                {"product": float("nan")}):
        with pytest.raises(ValueError, match="temperatures"):
            Reader(model, temperatures=bad)


def test_tta_picks_its_own_temperature_then_falls_back_to_the_plain_one():
    temps = {"product": 2.0, "product@5": 3.0, "tta:product": 4.0, "tta:product@5": 5.0}
    assert pick_temperature(temps, "product", 5, tta=True) == 5.0
    assert pick_temperature(temps, "product", 1, tta=True) == 4.0  # TTA's general one before plain @1
    assert pick_temperature(temps, "product", 5) == 3.0  # plain reading never sees TTA keys
    assert pick_temperature({"product": 2.0, "product@1": 6.0}, "product", 1, tta=True) == 6.0  # fallback
    assert pick_temperature({}, "product", 1, tta=True) == 1.0
    assert pick_calibration({"tta:single": 7.0}, "single", 3) is None


def test_a_tta_reader_uses_the_tta_temperature(micro_parseq, noise_tracks):
    model, tracks = micro_parseq(), noise_tracks(frames=3)
    views = ["identity", "gamma0.8"]
    base = {"product": 1.0}
    raw = Reader(model, temperatures=base, tta_views=views).read(tracks, ["product"])["product"]
    hot = Reader(model, temperatures={**base, "tta:product@3": 4.0}, tta_views=views).read(tracks, ["product"])
    plain_reader = Reader(model, temperatures={**base, "tta:product@3": 4.0}).read(tracks, ["product"])["product"]
    untouched = Reader(model, temperatures=base).read(tracks, ["product"])["product"]
    assert [r.text for r in raw] == [r.text for r in hot["product"]]
    assert all(a.confidence != b.confidence for a, b in zip(raw, hot["product"]))
    # A reader without views ignores the TTA key entirely.
    assert [r.confidence for r in plain_reader] == [r.confidence for r in untouched]
    # The same temperature as a plain key gives the TTA reader the same confidences (the fallback).
    fallback = Reader(model, temperatures={"product@3": 4.0}, tta_views=views).read(tracks, ["product"])["product"]
    assert [r.confidence for r in fallback] == pytest.approx([r.confidence for r in hot["product"]])


def test_reader_temperatures_keeps_tta_ones_only_for_their_views():
    meta = {"temperature": {"product": 2.0, "tta:product": 3.0}, TTA_VIEWS_KEY: ["identity", "scale0.9"]}
    assert reader_temperatures(meta, None) == (meta["temperature"], None)
    temps, note = reader_temperatures(meta, ["scale0.9", "identity"])  # order does not matter
    assert temps == meta["temperature"] and note is None
    temps, note = reader_temperatures(meta, ["identity", "gamma0.8"])
    assert temps == {"product": 2.0} and "fitted for views" in note
    temps, note = reader_temperatures({"temperature": {"product": 2.0}}, ["identity"])
    assert temps == {"product": 2.0} and "calibrate --tta" in note
    assert reader_temperatures({}, None) == (None, None)


# --------------------------------------------------------------------------------------------------
# The monotone map


def test_isotonic_map_is_monotone_and_within_zero_one():
    rng = np.random.default_rng(0)
    conf = rng.random(400)
    right = rng.random(400) < conf ** 2  # rises with confidence, noisily
    m = isotonic_map(conf, right)
    grid = np.linspace(-0.5, 1.5, 2001)
    out = m(grid)
    assert (np.diff(out) >= -1e-12).all() and out.min() >= 0 and out.max() <= 1
    assert (np.diff(m.x) > 0).all() and (np.diff(m.y) >= 0).all()
    assert isinstance(m(0.3), float)
    assert 0 < out.min() and out.max() < 1  # the pseudo-readings at the ends: never certain
    # Hand-made, plain PAV: the violating middle pair is pooled to its mean.
    hand = isotonic_map([0.1, 0.2, 0.3, 0.9], [0, 1, 0, 1], end_weight=0)
    assert hand(0.1) == 0.0 and hand(0.2) == pytest.approx(0.5) and hand(0.3) == pytest.approx(0.5)
    assert hand(0.9) == 1.0 and hand(0.6) == pytest.approx(0.75)  # linear between blocks
    assert ConfidenceMap.from_dict(hand.as_dict()) == hand
    # With the pseudo-readings (right at 0, wrong at 1), the ends pool with them.
    ends = isotonic_map([0.1, 0.1, 0.9, 0.9], [0, 0, 1, 1])
    assert ends(0.1) == pytest.approx(1 / 3) and ends(0.9) == pytest.approx(2 / 3)
    assert isotonic_map([0.5] * 4, [1, 1, 1, 1], end_weight=0).y == (1.0,)  # equal rates: one block
    for bad in ({"x": [0.2, 0.1], "y": [0, 1]}, {"x": [0.1, 0.2], "y": [1, 0]}, {"x": [0.1], "y": [1.5]},
                {"x": [], "y": []}, {"x": [0.1]}, {"x": ["a"], "y": [0.1]}):
        with pytest.raises(ValueError):
            ConfidenceMap.from_dict(bad)
    with pytest.raises(ValueError):
        isotonic_map([1.2], [1])


def test_the_fitted_map_lowers_ece_of_an_overconfident_set():
    rng = np.random.default_rng(1)
    truth = rng.random(2000)  # the real probability of being right
    right = rng.random(2000) < truth
    stated = np.sqrt(truth)  # over-confident: states more than it knows
    fit = fit_confidence_map(stated[:1000], right[:1000], "product")
    assert fit.ece_after < fit.ece_before / 3
    held_out = expected_calibration_error(fit.confidence_map(stated[1000:]), right[1000:])
    assert held_out < expected_calibration_error(stated[1000:], right[1000:]) / 2
    assert fit.tracks == 1000 and json.dumps(fit.as_dict())  # storable


# --------------------------------------------------------------------------------------------------
# Ensembles


class FixedReader(Reader):
    """A member that reads every track as given (no model)."""

    def __init__(self, readings: list[tuple[str, float]]):
        self.readings, self.masks, self.temperatures = readings, None, {}

    def read(self, tracks, fusions=("product",), frame_count=None, topk=3):
        return {f: [TrackReading(t.track_id, text, conf, frames_used=5) for t, (text, conf) in
                    zip(tracks, self.readings)] for f in fusions}


def members(*digests: str, temperature=None) -> list[Member]:
    return [Member(f"m{i}", "parseq", d, dict(temperature or {})) for i, d in enumerate(digests)]


def test_vote_confidence_goes_through_the_map_of_its_rule_and_frame_count():
    readers = [FixedReader([("ABC1234", 0.9)]), FixedReader([("ABC1234", 0.5)])]
    halve = ConfidenceMap((0.0, 1.0), (0.0, 0.5))
    cal = EnsembleCalibration("vote", members("a", "b"), confidence_maps={"product@5": halve})
    tracks = [Track("t", [])]
    out = EnsembleReader(readers, "vote", calibration=cal).read(tracks, ["product", "single"])
    assert out["product"][0].confidence == pytest.approx(0.7 / 2)
    assert out["single"][0].confidence == pytest.approx(0.7)  # no map for this rule: as voted
    assert out["product"][0].calibrated and not out["single"][0].calibrated
    with pytest.raises(ValueError, match="'vote' rule"):
        EnsembleReader(readers, "logit", calibration=cal)


def test_logit_ensemble_applies_the_calibration_temperature(micro_parseq, noise_tracks):
    model, tracks = micro_parseq(), noise_tracks(frames=3)
    pair = [Reader(model), Reader(micro_parseq(seed=1))]
    raw = EnsembleReader(pair, "logit").read(tracks, ["product"])["product"]
    cal = EnsembleCalibration("logit", members("a", "b"), temperatures={"product@3": 3.0})
    hot = EnsembleReader(pair, "logit", calibration=cal).read(tracks, ["product"])["product"]
    assert [r.text for r in raw] == [r.text for r in hot]
    assert all(b.confidence < a.confidence for a, b in zip(raw, hot))
    assert not any(r.calibrated for r in raw) and all(r.calibrated for r in hot)


def test_a_reading_says_whether_a_fitted_calibration_set_its_confidence(micro_parseq, noise_tracks):
    """A confidence nothing was fitted for (this rule, this frame count) is a score, not a probability:
    the reading says so, for predict and the report to tell the user."""
    tracks = noise_tracks(frames=5)
    reader = Reader(micro_parseq(), temperatures={"product@5": 2.0, "single": 1.3})
    for rule, frames, fitted in (("product", 5, True), ("product", 3, False), ("single", 3, True),
                                 ("char_majority", 5, False)):
        readings = reader.read(tracks, [rule], frame_count=frames)[rule]
        assert all(r.calibrated == fitted for r in readings), (rule, frames)
    assert not any(r.calibrated for r in Reader(micro_parseq()).read(tracks, ["product"])["product"])
    # With TTA the plain temperature serves where no TTA one was fitted (pick_calibration's fallback).
    tta = Reader(micro_parseq(), temperatures={"product@5": 2.0}, tta_views=("identity", "gamma0.8"))
    assert all(r.calibrated for r in tta.read(tracks, ["product"])["product"])


def test_ensemble_calibration_file_round_trip_and_refusals(tmp_path):
    cal = EnsembleCalibration("vote", members("aa", "bb", temperature={"product": 2.0}),
                              tta_views=["scale0.9", "identity"],
                              confidence_maps={"product@5": ConfidenceMap((0.1, 0.8), (0.05, 0.9))},
                              fits=[{"fusion": "product", "frames": 5}], source="unit test")
    path = cal.save(tmp_path / "ens.json")
    back = EnsembleCalibration.load(path)
    assert back == cal and back.tta_views == ["identity", "scale0.9"]
    same = members("bb", "aa", temperature={"product": 2.0})  # any order
    back.check(same, "vote", ["identity", "scale0.9"])
    refusals = (
        (members("aa", "cc", temperature={"product": 2.0}), "vote", ["identity", "scale0.9"], "not fitted with: m1"),
        (members("aa", "bb", "cc", temperature={"product": 2.0}), "vote", ["identity", "scale0.9"], "members differ"),
        (members("aa", "aa", temperature={"product": 2.0}), "vote", ["identity", "scale0.9"], "fitted with but not"),
        (same, "logit", ["identity", "scale0.9"], "--ensemble vote"),
        (same, "vote", None, "TTA views"),
        (members("aa", "bb", temperature={"product": 3.0}), "vote", ["identity", "scale0.9"], "temperatures of"),
    )
    for given, rule, views, needle in refusals:
        with pytest.raises(EnsembleCalibrationError, match=needle):
            back.check(given, rule, views)
    # Broken or foreign files are refused with their name.
    for text in ("{", json.dumps({"format": "something"}), json.dumps({**cal.as_dict(), "version": 9}),
                 json.dumps({**cal.as_dict(), "members": [{"model": "x"}]}),
                 json.dumps({**cal.as_dict(), "confidence_map": {"vote@5": {"x": [0.1], "y": [0.1]}}}),
                 json.dumps({**cal.as_dict(), "temperature": {"product": 2.0}})):
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(EnsembleCalibrationError, match="bad.json"):
            EnsembleCalibration.load(tmp_path / "bad.json")


# --------------------------------------------------------------------------------------------------
# CLI


@pytest.fixture
def two_models(micro_parseq, tmp_path):
    paths = []
    for seed in (1, 2):
        m = micro_parseq(seed=seed)
        paths.append(save_model(m, m.config, tmp_path / f"rec{seed}" / "model.safetensors"))
    folder = tmp_path / "tracks"
    assert runner.invoke(app, ["synth", str(folder), "--tracks", "3", "--seed", "5", "--no-hr"]).exit_code == 0
    return paths, folder


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def ok(result):
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result


def refused(result, needle: str):
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit), result.output
    assert plain(needle) in plain(result.output), result.output


def test_cli_calibrate_tta_stores_its_own_keys_beside_the_plain_ones(two_models):
    (rec, _), folder = two_models
    ok(invoke("calibrate", "--model", rec, "--synth", 10, "--fusions", "product", "--frames", "1,5"))
    ok(invoke("calibrate", "--model", rec, "--synth", 10, "--fusions", "product", "--frames", "1,5",
              "--tta-views", "identity,gamma0.8"))
    meta = json.loads(rec.with_suffix(".json").read_text())
    assert set(meta["temperature"]) == {"product@1", "product@5", "tta:product@1", "tta:product@5"}
    assert meta[TTA_VIEWS_KEY] == ["gamma0.8", "identity"]
    assert sum(bool(f.get("tta_views")) for f in meta["calibration"]["fits"]) == 2
    # Other views: the old TTA keys are replaced, the plain ones kept.
    result = ok(invoke("calibrate", "--model", rec, "--synth", 10, "--fusions", "product", "--frames", "5",
                       "--tta-views", "identity,scale0.9"))
    assert "replaced" in result.output
    meta = json.loads(rec.with_suffix(".json").read_text())
    assert set(meta["temperature"]) == {"product@1", "product@5", "tta:product@5"}
    assert len(meta["calibration"]["fits"]) == 3
    # Reading with views they were not fitted for says so and still reads.
    result = ok(invoke("eval", folder, "--model", rec, "--frames", "5", "--fusions", "product",
                       "--tta-views", "identity,gamma0.8"))
    assert "fittedforviews" in plain(result.output)


def test_cli_ensemble_calibration_file_is_written_applied_and_bound_to_its_members(two_models, tmp_path):
    (a, b), folder = two_models
    for rule in ("logit", "vote"):
        out = tmp_path / f"ens-{rule}.json"
        ok(invoke("calibrate", "--model", a, "--model", b, "--ensemble", rule, "--synth", 10, "--fusions", "product",
                  "--frames", "5", "--out", out))
        data = json.loads(out.read_text())
        assert data["rule"] == rule and len(data["members"]) == 2 and len(data["members"][0]["sha256"]) == 64
        assert set(data["temperature" if rule == "logit" else "confidence_map"]) == {"product@5"}
        preds = tmp_path / "p.txt"
        ok(invoke("predict", folder, "--model", b, "--model", a, "--ensemble", rule, "--calibration", out,
                  "--out", preds))
        assert len(preds.read_text().splitlines()) == 3
        ok(invoke("eval", folder, "--model", a, "--model", b, "--ensemble", rule, "--calibration", out,
                  "--frames", "5", "--fusions", "product"))
        refused(invoke("eval", folder, "--model", a, "--model", a, "--ensemble", rule, "--calibration", out),
                "membersdiffer")
        other = "vote" if rule == "logit" else "logit"
        refused(invoke("predict", folder, "--model", a, "--model", b, "--ensemble", other, "--calibration", out,
                       "--out", preds), f"--ensemble {rule}")
    # The ablation's ensemble row takes the file too.
    result = ok(invoke("eval", "--ablation", "--model", a, "--model", b, "--ensemble", "logit", "--calibration",
                       tmp_path / "ens-logit.json", "--synth-tracks", 2, "--presets", "easy", "--json"))
    assert any("calibrated by" in n for n in json.loads(result.stdout)["notes"])
    refused(invoke("eval", "--ablation", "--model", a, "--model", b, "--ensemble", "vote", "--calibration",
                   tmp_path / "ens-logit.json", "--synth-tracks", 2, "--presets", "easy"), "--ensemble logit")
    refused(invoke("calibrate", "--model", a, "--model", b, "--synth", 10), "--out")
    refused(invoke("calibrate", "--model", a, "--synth", 10, "--out", tmp_path / "x.json"), "ensembles")
    refused(invoke("predict", folder, "--model", a, "--calibration", tmp_path / "ens-logit.json"), "ensembles")
    refused(invoke("predict", folder, "--model", a, "--model", b, "--calibration", tmp_path / "nope.json"),
            "nope.json")
    # Without a file, an ensemble still reads, with one note that its confidences are not calibrated and
    # how to fit them.
    said = plain(ok(invoke("eval", folder, "--model", a, "--model", b, "--frames", "5", "--fusions", "product")).output)
    assert said.count("note:") == 1 and "--ensemblelogit--outFILE,then--calibrationFILE" in said
    said = plain(ok(invoke("predict", folder, "--model", a, "--model", b, "--out", preds)).output)
    assert said.count("note:") == 1 and "confidencesarenotcalibrated" in said


def test_cli_a_new_fit_over_all_frames_is_the_one_five_frame_tracks_use(two_models):
    # Per-count temperatures take precedence over the general one: a later general fit must replace
    # those of the counts it was fitted on, or it is stored and never used.
    (rec, _), _ = two_models
    ok(invoke("calibrate", "--model", rec, "--synth", 10, "--fusions", "product", "--frames", "1,5"))
    result = ok(invoke("calibrate", "--model", rec, "--synth", 10, "--fusions", "product", "--preset", "hard"))
    assert "product@5" in plain(result.output)
    meta = json.loads(rec.with_suffix(".json").read_text())
    assert set(meta["temperature"]) == {"product", "product@1"}
    assert pick_temperature(meta["temperature"], "product", 5) == meta["temperature"]["product"]
    assert sorted((f["fusion"], f["frames"] or 0) for f in meta["calibration"]["fits"]) == [("product", 0),
                                                                                          ("product", 1)]
