"""The analysts' reading report: the evidence it gathers, the HTML it writes, the `report` verb."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ksrnet.cli import app
from ksrnet.infer import Reader, TrackReading
from ksrnet.report import (
    FrameEvidence,
    Provenance,
    TrackReport,
    UnreadableTrack,
    build_reports,
    frames_agreeing,
    render_html,
    sort_reports,
)
from ksrnet.tracks import Track

runner = CliRunner()


def provenance(min_confidence=0.9) -> Provenance:
    return Provenance(models=[{"model": "m", "kind": "parseq", "sha256": "ab" * 32}], fusion="product", frames=None,
                      tta_views=None, min_confidence=min_confidence, command="ksrnet report x")


def reading(text: str, confidence: float, probs=(0.99,) * 7, calibrated: bool = True) -> TrackReading:
    return TrackReading("t", text, confidence, layout="Brazilian", char_probs=tuple(probs),
                        alternatives=[[(c, p), ("8", 0.01)] for c, p in zip(text, probs)], frames_used=2,
                        calibrated=calibrated)


def frame(text: str, confidence: float, name: str = "lr-001.png") -> FrameEvidence:
    return FrameEvidence(name, np.full((17, 48, 3), 128, np.uint8), text, confidence)


def test_each_frame_is_read_as_a_one_frame_track_would_be(micro_parseq, noise_tracks):
    reader = Reader(micro_parseq(), temperatures={"product@1": 0.7, "product": 2.0})
    tracks = noise_tracks(n=2, frames=4)
    reports = build_reports(reader, tracks, "product", frame_count=3)
    for track, report in zip(tracks, reports):
        assert report.reading == reader.read([track], ["product"], frame_count=3)["product"][0]
        assert [f.name for f in report.frames] == ["frame 2", "frame 3", "frame 4"]  # the last three
        for f, image in zip(report.frames, track.lr[1:]):
            alone = reader.read([Track(track.track_id, [image])], ["product"])["product"][0]
            assert (f.text, f.confidence) == (alone.text, pytest.approx(alone.confidence))
            assert f.image is image  # the frame's own pixels, untouched


def test_each_frame_gets_the_atypicality_it_would_have_alone(micro_parseq, noise_tracks):
    from ksrnet.synth.dataset import generate_track
    from ksrnet.typicality import fit_reference

    model = micro_parseq()
    plain = Reader(model)
    reference = fit_reference([plain.frame_features(generate_track(9, i, preset="easy").lr).numpy() for i in range(40)])
    reader = Reader(model, typicality=reference)
    tracks = [generate_track(10, 0, preset="easy"), *noise_tracks(n=1, frames=5)]
    reports = build_reports(reader, tracks, "product", frame_count=4)
    for track, report in zip(tracks, reports):
        assert report.reading == reader.read([track], ["product"], frame_count=4)["product"][0]
        for f, image in zip(report.frames, track.lr[1:]):
            alone = reader.read([Track(track.track_id, [image])], ["product"])["product"][0]
            assert f.atypicality == pytest.approx(alone.atypicality)
    page = render_html(reports, [], provenance())
    assert page.count("<th>atypicality alone</th>") == 2
    assert "atypicality alone" not in render_html(build_reports(plain, tracks, "product"), [], provenance())


@pytest.mark.parametrize("rule", ["logit", "vote"])
def test_an_ensemble_reports_the_reading_it_would_give(micro_parseq, noise_tracks, rule):
    from ksrnet.infer import EnsembleReader

    reader = EnsembleReader([Reader(micro_parseq(seed=1)), Reader(micro_parseq(seed=2))], rule)
    tracks = noise_tracks(n=2, frames=3)
    for track, report in zip(tracks, build_reports(reader, tracks, "product")):
        assert report.reading == reader.read([track], ["product"])["product"][0]
        assert len(report.frames) == 3


def test_illegible_follows_the_threshold_and_frame_names_come_from_the_track(micro_parseq, noise_tracks):
    reader = Reader(micro_parseq())
    track = noise_tracks(n=1, frames=2)[0]
    track.lr_names = ["lr-001.jpg", "lr-002.jpg"]
    track.text = "ABC1234"
    conf = reader.read([track])["product"][0].confidence
    below, = build_reports(reader, [track], "product", min_confidence=min(1.0, conf + 1e-6))
    above, = build_reports(reader, [track], "product", min_confidence=conf / 2)
    unset, = build_reports(reader, [track], "product")
    assert below.illegible and not above.illegible and not unset.illegible
    assert [f.name for f in below.frames] == ["lr-001.jpg", "lr-002.jpg"] and below.truth == "ABC1234"


def test_sort_puts_the_least_sure_first_and_counts_agreeing_frames():
    a = TrackReport("a", reading("ABC1234", 0.8), [frame("ABC1234", 0.5), frame("ABC1284", 0.2)])
    b = TrackReport("b", reading("XYZ9876", 0.3), [frame("XYZ9876", 0.4)])
    assert [r.track_id for r in sort_reports([a, b], "confidence")] == ["b", "a"]
    assert [r.track_id for r in sort_reports([a, b], "input")] == ["a", "b"]
    assert frames_agreeing(a) == 1 and frames_agreeing(b) == 1
    with pytest.raises(ValueError, match="input or confidence"):
        sort_reports([a], "name")


def test_html_escapes_names_marks_weak_characters_and_lists_unreadable_tracks():
    weak = reading("ABC1234", 0.2, probs=(0.99, 0.99, 0.3, 0.99, 0.7, 0.99, 0.99))
    reports = [TrackReport("<b>x</b>", weak, [frame("ABD1234", 0.1), frame("ABC1234", 0.15, "lr-002.png")],
                           truth="ABC1234", illegible=True)]
    page = render_html(reports, [UnreadableTrack("track_9", "lr-001.png: truncated")], provenance())
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert page.count('<img class="frame" src="data:image/png;base64,') == 2
    assert '<td class="plate weak">C' in page and '<td class="plate doubtful">2' in page
    assert '<td class="plate sure">' not in page  # the reading is below the threshold: no character looks sure
    assert '<td class="plate doubtful">A' in page  # 0.99, capped
    assert 'AB<span class="differs">D</span>1234' in page  # the frame that disagrees, marked where
    assert "ILLEGIBLE" in page and "best guess ABC1234" in page
    assert "track_9" in page and "unreadable: lr-001.png: truncated" in page
    assert "1 of 1 readings right" in page and "ab" * 32 in page
    assert "<script" not in page.lower()  # nothing runs when an analyst opens it


def test_no_threshold_means_no_illegible_verdicts():
    reports = [TrackReport("t", reading("ABC1234", 0.1), [frame("ABC1234", 0.1)])]
    page = render_html(reports, [], provenance(min_confidence=None))
    assert "ILLEGIBLE" not in page and "no threshold" in page
    assert page.count('<td class="plate sure">') == 7  # not in doubt: the probabilities speak


def test_a_confidence_no_calibration_set_is_marked_as_such():
    fitted, raw = reading("ABC1234", 0.95), reading("ABD1234", 0.95, calibrated=False)
    calibrated_page = render_html([TrackReport("t", fitted, [frame("ABC1234", 0.9)])], [], provenance())
    assert "uncalibrated" not in calibrated_page and "NOT calibrated" not in calibrated_page
    page = render_html([TrackReport("t", fitted, [frame("ABC1234", 0.9)]),
                        TrackReport("u", raw, [frame("ABD1234", 0.9)])], [], provenance())
    assert "1 of 2 confidences are NOT calibrated" in page and "the threshold below does not mean" in page
    assert page.count('0.950 <span class="illegible">uncalibrated</span>') == 2  # summary row and section


def synth_tree(tmp_path: Path, n: int = 2) -> Path:
    result = runner.invoke(app, ["synth", str(tmp_path / "data"), "--tracks", str(n), "--seed", "3", "--preset", "easy"])
    assert result.exit_code == 0, result.stdout
    return tmp_path / "data"


def test_report_cli_writes_every_track_and_the_unreadable_ones(tmp_path):
    root = synth_tree(tmp_path)
    broken = root / "test" / "track_00099"
    broken.mkdir(parents=True)
    (broken / "lr-001.png").write_bytes(b"not a png")
    out = tmp_path / "r" / "report.html"
    result = runner.invoke(app, ["report", str(root), "--out", str(out), "--frames", "3", "--sort", "confidence"])
    assert result.exit_code == 0, result.stdout
    page = out.read_text()
    assert len(re.findall(r"<h2>track_0000[12]</h2>", page)) == 2
    assert page.count('<img class="frame"') == 6  # the last three frames of each track
    assert "track_00099" in page and "unreadable" in page
    # the command as parsed, so it reruns the same: every option spelled out
    assert f"ksrnet report {root} --out {out}" in page and "--frames 3 --min-confidence 0.9 --sort confidence" in page
    assert "sha256" in page


@pytest.mark.parametrize("args, message", [
    (["--sort", "name"], "--sort must be input or confidence"),
    (["--fusion", "best"], "unknown fusion"),
])
def test_report_cli_refuses_bad_options(tmp_path, args, message):
    root = synth_tree(tmp_path, n=1)
    result = runner.invoke(app, ["report", str(root), "--out", str(tmp_path / "r.html"), *args])
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit)
    assert message in " ".join(result.stderr.split()) + " ".join(result.stdout.split())
    assert not (tmp_path / "r.html").exists()


def test_illegible_summary_never_shows_a_sure_character_and_numbers_never_round_up_to_a_threshold():
    probs = (0.999, 0.999, 0.897, 0.999, 0.999, 0.999, 0.999)
    sure = TrackReport("a", reading("ABC1234", 0.7, probs=(0.95,) * 7), [frame("ABC1234", 0.7)], illegible=True)
    near = TrackReport("b", reading("ABC1234", 0.8997, probs=probs), [frame("ABC1234", 0.8997)], illegible=True)
    page = render_html([sure, near], [], provenance())
    assert 'class="sure"' not in page and '<td class="doubtful">0.950</td>' in page
    assert "confidence 0.900" not in page and "confidence 0.899" in page
    assert "<small>0.89</small>" in page and "<small>0.90</small>" not in page


def test_tracks_sharing_an_id_get_their_own_anchor_and_folder():
    reports = [TrackReport("track_1", reading("ABC1234", 0.99), [frame("ABC1234", 0.99)], source=f"{s}/track_1")
               for s in ("A", "B")]
    page = render_html(reports, [], provenance())
    assert re.findall(r'<section id="([^"]+)"', page) == ["track-1", "track-2"]
    assert "A/track_1" in page and "B/track_1" in page


def test_a_folder_name_that_is_not_utf8_is_shown_not_fatal():
    name = b"track_caf\xe9".decode("utf-8", "surrogateescape")
    page = render_html([TrackReport(name, reading("ABC1234", 0.99), [frame("ABC1234", 0.99)])], [], provenance())
    page.encode("utf-8")
    assert "track_caf\\xe9" in page


def test_a_voting_ensemble_shows_what_it_reads_from_each_frame_alone(micro_parseq, noise_tracks):
    from ksrnet.infer import EnsembleReader

    reader = EnsembleReader([Reader(micro_parseq(seed=s)) for s in (1, 2, 3)], "vote")
    tracks = noise_tracks(n=3, frames=3)
    for track, report in zip(tracks, build_reports(reader, tracks, "product")):
        for f, image in zip(report.frames, track.lr):
            alone = reader.read([Track(track.track_id, [image])], ["product"])["product"][0]
            assert (f.text, f.confidence) == (alone.text, pytest.approx(alone.confidence))


def test_report_cli_refuses_to_overwrite_a_frame(tmp_path):
    root = synth_tree(tmp_path, n=1)
    frame_file = next(root.rglob("lr-001.png"))
    before = frame_file.read_bytes()
    result = runner.invoke(app, ["report", str(root), "--out", str(frame_file)])
    assert result.exit_code != 0 and frame_file.read_bytes() == before


def test_what_reading_a_folder_had_to_fix_is_noted_in_the_report_and_on_the_console(tmp_path):
    from PIL import Image

    root = synth_tree(tmp_path)
    frame_path = next(root.rglob("track_00002/lr-001.png"))
    rgb = np.asarray(Image.open(frame_path).convert("RGB"))
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)])).save(frame_path)  # RGBA now
    out = tmp_path / "report.html"
    result = runner.invoke(app, ["report", str(root), "--out", str(out)])
    assert result.exit_code == 0, result.stdout
    note = "lr-001.png: RGBA image converted to RGB uint8 (alpha dropped)"
    assert f"track_00002: {note}" in " ".join((result.stderr + result.stdout).split())
    page = out.read_text()
    section = page[page.index("<h2>track_00002</h2>"):]
    assert f'<p class="notes">Input notes: {note}</p>' in section[:section.index("</section>")]
    first = page[page.index("<h2>track_00001</h2>"):]
    assert "Input notes" not in first[:first.index("</section>")]  # a clean track has none


def test_console_notes_show_a_few_tracks_in_full_and_count_the_rest(capsys):
    from ksrnet.cli_readers import TRACK_NOTES_SHOWN, note_track_warnings

    tracks = [(f"track_{i:05d}", [f"lr-00{i % 9}.png: grayscale image converted to RGB uint8"])
              for i in range(TRACK_NOTES_SHOWN + 3)]
    note_track_warnings(tracks)
    err = " ".join(capsys.readouterr().err.split())
    assert all(f"track_{i:05d}" in err for i in range(TRACK_NOTES_SHOWN))
    assert f"track_{TRACK_NOTES_SHOWN:05d}" not in err
    assert "3 more track(s) with input notes like these: `ksrnet check-data TRACKS` lists them all" in err
