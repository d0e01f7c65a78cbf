"""The `ksrnet` command line: check-data and score end to end on small fixture trees (tmp_path).

Rich wraps long lines (paths) at the console width, so text checks compare with all whitespace
removed; exact numbers come from `--json`, which is plain JSON on stdout.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ksrnet.cli import app
from ksrnet.submission import Prediction, write_predictions
from conftest import MICRO_PARSEQ

runner = CliRunner()

# ---------------------------------------------------------------------------------------------
# Helpers


def squash(text: str) -> str:
    """Text without ANSI codes and whitespace, so a wrapped line still matches."""
    return "".join(re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", text).split())


def mentions(text: str, needle: str) -> bool:
    return squash(needle) in squash(text)


def invoke(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])


def assert_exit(result, code: int) -> None:
    """Exit status as asked, and never a crash (an uncaught exception also exits 1 under CliRunner)."""
    detail = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}\nexception: {result.exception!r}"
    assert result.exit_code == code, detail
    assert result.exception is None or isinstance(result.exception, SystemExit), detail


def assert_failed(result) -> None:
    """A clean refusal: non-zero status through SystemExit, not an uncaught exception."""
    detail = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}\nexception: {result.exception!r}"
    assert result.exit_code != 0, detail
    assert isinstance(result.exception, SystemExit), detail


def make_track(path: Path, *, n: int = 5, lr_size: tuple[int, int] = (48, 17),
               hr_size: tuple[int, int] | None = None, text: str | None = "ABC1234",
               layout: str | None = "Brazilian", ext: str = "jpg", seed: int = 0) -> Path:
    """A track folder: n lr frames of lr_size (w, h), optional hr frames, optional annotations.json."""
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    fmt = "JPEG" if ext == "jpg" else "PNG"
    for i in range(1, n + 1):
        w, h = lr_size
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path / f"lr-{i:03d}.{ext}", fmt)
        if hr_size is not None:
            w, h = hr_size
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path / f"hr-{i:03d}.{ext}", fmt)
    if text is not None:
        doc = {"plate_text": text, "corners": {}}
        if layout is not None:
            doc["plate_layout"] = layout
        (path / "annotations.json").write_text(json.dumps(doc))
    return path


@pytest.fixture
def good_tree(tmp_path: Path) -> Path:
    """Nested train set (two scenarios, jpg) beside a flat, unlabelled test set."""
    root = tmp_path / "data"
    train = root / "train"
    make_track(train / "Scenario-A" / "Brazilian" / "track_00001", n=5, lr_size=(40, 19), hr_size=(87, 38),
               text="ABC1234", layout="Brazilian", seed=1)
    make_track(train / "Scenario-A" / "Brazilian" / "track_00002", n=3, lr_size=(42, 20),
               text="DEF5678", layout="Brazilian", seed=2)
    make_track(train / "Scenario-B" / "Mercosur" / "track_00003", n=5, lr_size=(48, 17), hr_size=(128, 45),
               text="ABC1D23", layout="Mercosur", seed=3)
    make_track(root / "test" / "track_00004", n=5, lr_size=(50, 16), text=None, seed=4)
    return root


GOOD_GROUPS = {"Scenario-A/Brazilian": 2, "Scenario-B/Mercosur": 1, "no scenario/unknown layout": 1}


# ---------------------------------------------------------------------------------------------
# check-data


def test_check_data_good_tree_json_counts_and_sizes(good_tree):
    result = invoke("check-data", good_tree, "--json")
    assert_exit(result, 0)
    stats = json.loads(result.stdout)
    assert stats["tracks_ok"] == 4
    assert stats["tracks_broken"] == 0
    assert stats["unlabelled"] == 1
    assert stats["per_scenario_layout"] == GOOD_GROUPS
    assert stats["lr_frames_per_track"] == {"3": 1, "5": 3}
    # 18 lr frames: 5 x 40x19, 3 x 42x20, 5 x 48x17, 5 x 50x16.
    assert stats["lr_width"] == {"min": 40, "mean": round(816 / 18, 2), "max": 50}
    assert stats["lr_height"] == {"min": 16, "mean": round(320 / 18, 2), "max": 20}
    # 10 hr frames: 5 x 87x38, 5 x 128x45.
    assert stats["hr_width"] == {"min": 87, "mean": 107.5, "max": 128}
    assert stats["hr_height"] == {"min": 38, "mean": 41.5, "max": 45}
    assert stats["failures"] == [] and stats["warnings"] == []


def test_check_data_notes_track_ids_in_two_folders_that_predict_would_refuse(good_tree):
    make_track(good_tree / "test" / "track_00001", n=5, lr_size=(50, 16), text=None, seed=5)
    result = invoke("check-data", good_tree, "--json")
    assert_exit(result, 0)  # a valid training set; only reading it as one set is refused
    assert json.loads(result.stdout)["tracks_ok"] == 5  # the note is not in the JSON
    assert mentions(result.output, "1 track id(s) occur in more than one folder (track_00001)")
    assert "more than one folder" not in invoke("check-data", good_tree / "train").output


def test_check_data_good_tree_table(good_tree):
    result = invoke("check-data", good_tree)
    assert_exit(result, 0)
    out = result.stdout
    for group, n in GOOD_GROUPS.items():
        assert re.search(rf"{re.escape(group)}\s*│\s*{n}\s*│", out), out
    assert mentions(out, "4 readable track(s); OK")
    assert mentions(out, "unlabelled tracks: 1")
    assert "broken" not in out


def _truncate_frame(track: Path) -> str:
    frame = track / "lr-003.jpg"
    data = frame.read_bytes()
    frame.write_bytes(data[: len(data) // 2])
    return "truncated"


def _break_json(track: Path) -> str:
    (track / "annotations.json").write_text('{"plate_layout": "Brazilian", "plate_text": "ABC1234", ')
    return "invalid JSON"


def _bad_label(track: Path) -> str:
    (track / "annotations.json").write_text(json.dumps({"plate_layout": "Brazilian", "plate_text": "AB12"}))
    return "invalid plate_text"


@pytest.mark.parametrize("breakage", [_truncate_frame, _break_json, _bad_label],
                         ids=["truncated-image", "broken-json", "invalid-label"])
def test_check_data_broken_track_fails_and_is_named(good_tree, breakage):
    bad = make_track(good_tree / "train" / "Scenario-A" / "Brazilian" / "track_00099", n=5, seed=9)
    problem = breakage(bad)

    result = invoke("check-data", good_tree, "--json")
    assert_exit(result, 1)
    stats = json.loads(result.stdout)
    assert stats["tracks_broken"] == 1
    (failure,) = stats["failures"]
    assert "track_00099" in failure and problem in failure
    # The good tracks are still read and counted.
    assert stats["tracks_ok"] == 4
    assert stats["per_scenario_layout"] == GOOD_GROUPS

    table = invoke("check-data", good_tree)
    assert_exit(table, 1)
    assert mentions(table.stdout, "broken: track_00099")
    assert mentions(table.stdout, problem)
    assert mentions(table.stdout, "4 readable track(s); 1 broken track(s)")


def test_check_data_reports_every_broken_track(good_tree):
    mercosur = good_tree / "train" / "Scenario-B" / "Mercosur"
    _truncate_frame(make_track(mercosur / "track_00010", text="ABC1D23", layout="Mercosur", seed=10))
    _break_json(make_track(mercosur / "track_00011", text="ABC1D23", layout="Mercosur", seed=11))
    result = invoke("check-data", good_tree, "--json")
    assert_exit(result, 1)
    stats = json.loads(result.stdout)
    assert stats["tracks_ok"] == 4 and stats["tracks_broken"] == 2
    assert ["track_00010" in stats["failures"][0], "track_00011" in stats["failures"][1]] == [True, True]


def test_check_data_prints_labels_and_paths_verbatim_not_as_markup(tmp_path):
    # A label or a folder name that looks like rich markup must be shown as is, never crash the report.
    root = tmp_path / "[old]" / "data"
    make_track(root / "Scenario-A" / "Brazilian" / "track_00001", n=1, text="ABC1234", seed=1)
    make_track(root / "Scenario-A" / "Brazilian" / "track_00002", n=1, text="[/b]", seed=2)
    result = invoke("check-data", root)
    assert_exit(result, 1)
    assert mentions(result.stdout, "[old]/data/Scenario-A/Brazilian/track_00002")
    assert mentions(result.stdout, "invalid plate_text '[/b]'")
    assert "\\[" not in result.stdout  # escaped once, not twice


def test_check_data_missing_folder(tmp_path):
    result = invoke("check-data", tmp_path / "nope")
    assert_failed(result)
    assert mentions(result.stderr, f"dataset root {tmp_path / 'nope'} does not exist")
    assert result.stdout == ""


def test_check_data_folder_without_tracks(tmp_path):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("nothing here")
    result = invoke("check-data", tmp_path / "empty")
    assert_failed(result)
    assert mentions(result.stderr, f"no tracks found under {tmp_path / 'empty'}")


def test_check_data_on_a_file(tmp_path):
    (tmp_path / "file.png").write_text("x")
    result = invoke("check-data", tmp_path / "file.png")
    assert_failed(result)
    assert mentions(result.stderr, "is neither a directory nor a .txt list of track folders")
    (tmp_path / "file.txt").write_text("x")  # a .txt is read as a list of track folders
    result = invoke("check-data", tmp_path / "file.txt")
    assert_failed(result)
    assert mentions(result.stderr, "1 of the 1 entries") and mentions(result.stderr, "not track folders")


# ---------------------------------------------------------------------------------------------
# score


@pytest.fixture
def scored_tree(tmp_path: Path) -> Path:
    """Four annotated tracks (layouts crossed with scenarios) and one unlabelled test track."""
    root = tmp_path / "data"
    train = root / "train"
    make_track(train / "Scenario-A" / "Brazilian" / "track_00001", n=1, text="ABC1234", layout="Brazilian")
    make_track(train / "Scenario-A" / "Mercosur" / "track_00003", n=1, text="ABC1D23", layout="Mercosur")
    make_track(train / "Scenario-B" / "Brazilian" / "track_00002", n=1, text="DEF5678", layout="Brazilian")
    make_track(train / "Scenario-B" / "Mercosur" / "track_00004", n=1, text="GHI2J45", layout="Mercosur")
    make_track(root / "test" / "track_00005", n=1, text=None)
    return root


PREDICTIONS = [
    Prediction("track_00001", "ABC1234", 0.9),    # right
    Prediction("track_00003", "ABC1D23", 0.8),    # right
    Prediction("track_00002", "DEF5679", 0.95),   # wrong (1 edit, 6/7 slots), confidently
    # track_00004: missing, counts wrong with confidence 0
    Prediction("track_99999", "XYZ9999", 0.5),    # unknown track: listed, not scored
]


def scores(tracks, rr, cer, acc, right, wrong, gap, confident_wrong, missing) -> dict:
    return {"tracks": tracks, "recognition_rate": rr, "cer": cer, "char_accuracy": acc,
            "confidence_gap": gap, "mean_conf_right": right, "mean_conf_wrong": wrong,
            "confident_wrong": confident_wrong, "missing": missing}


EXPECTED = {
    # edits 0 + 0 + 1 + 7 over 28 characters; slots right 7 + 7 + 6 + 0; conf right (.9, .8), wrong (.95, 0).
    "overall": scores(4, 0.5, 8 / 28, 20 / 28, 0.85, 0.475, 0.375, 1, 1),
    "by_layout": {
        "Brazilian": scores(2, 0.5, 1 / 14, 13 / 14, 0.9, 0.95, -0.05, 1, 0),
        "Mercosur": scores(2, 0.5, 7 / 14, 7 / 14, 0.8, 0.0, 0.8, 0, 1),
    },
    "by_scenario": {
        # No wrong read (A), no right read (B): no gap.
        "Scenario-A": scores(2, 1.0, 0.0, 1.0, 0.85, None, None, 0, 0),
        "Scenario-B": scores(2, 0.0, 8 / 14, 6 / 14, None, 0.475, None, 1, 1),
    },
    "extra_predictions": ["track_99999"],
    "skipped_tracks": [],
    "duplicate_track_ids": [],
    "normalised_readings": [],
}


def _approx(value):
    if isinstance(value, dict):
        return {k: _approx(v) for k, v in value.items()}
    if isinstance(value, float):
        return pytest.approx(value, abs=1e-12)
    return value


def test_score_json_matches_hand_computed_figures(scored_tree, tmp_path):
    preds = write_predictions(PREDICTIONS, tmp_path / "predictions.txt")
    result = invoke("score", scored_tree, preds, "--json")
    assert_exit(result, 0)
    report = json.loads(result.stdout)
    assert set(report) == set(EXPECTED)
    for key, expected in EXPECTED.items():
        assert report[key] == _approx(expected), key


def test_score_table_mentions_missing_and_unknown_tracks(scored_tree, tmp_path):
    preds = write_predictions(PREDICTIONS, tmp_path / "predictions.txt")
    result = invoke("score", scored_tree, preds)
    assert_exit(result, 0)
    out = squash(result.stdout)
    assert "missing" in out
    # The "all" row: 4 tracks, RR 50.00 %, CER 28.57 %, char acc 71.43 %, gap 37.50 points, 1 wrong, 1 missing.
    assert "│all│4│50.00│28.57│71.43│37.50│1│1│" in out, result.stdout
    assert re.search(r"\b1 tracks? ha(s|ve) no prediction", result.stderr), result.stderr
    assert re.search(r"\b1 predictions? names? unknown tracks?", result.stderr), result.stderr
    assert "track_99999" in result.stderr  # the help says they are listed; only their count was


def test_score_warns_about_readings_it_normalised(scored_tree, tmp_path):
    # Another tool's file may write "abc-1234": scored as ABC1234 here, but a scorer comparing the text
    # as written would count it wrong, so the user is told.
    preds = tmp_path / "predictions.txt"
    preds.write_text("track_00001,abc-1234;0.9\ntrack_00003,ABC1D23;0.8\n")
    result = invoke("score", scored_tree, preds)
    assert_exit(result, 0)
    assert mentions(result.stderr, "1 reading(s) normalised before scoring"), result.stderr
    assert "'abc-1234'" in result.stderr
    report = json.loads(invoke("score", scored_tree, preds, "--json").stdout)
    assert report["normalised_readings"] == [{"track_id": "track_00001", "written": "abc-1234", "scored_as": "ABC1234"}]
    assert report["overall"]["recognition_rate"] == 0.5


def test_score_reads_a_submission_zip(scored_tree, tmp_path):
    txt = write_predictions(PREDICTIONS, tmp_path / "predictions.txt", zip_path=tmp_path / "submission.zip")
    from_txt = invoke("score", scored_tree, txt, "--json")
    from_zip = invoke("score", scored_tree, tmp_path / "submission.zip", "--json")
    assert_exit(from_zip, 0)
    assert json.loads(from_zip.stdout) == json.loads(from_txt.stdout)
    assert json.loads(from_zip.stdout)["overall"]["recognition_rate"] == 0.5


@pytest.mark.parametrize("bad_line, problem", [
    ("track_00002 DEF5679 0.95", "no comma"),
    ("track_00002,DEF5679;1.5", "outside [0, 1]"),
    ("track_00001,ABC1234;0.1000", "duplicate track id track_00001"),
])
def test_score_malformed_predictions_names_the_line(scored_tree, tmp_path, bad_line, problem):
    preds = tmp_path / "predictions.txt"
    preds.write_text(f"track_00001,ABC1234;0.9000\ntrack_00003,ABC1D23;0.8000\n{bad_line}\n")
    result = invoke("score", scored_tree, preds)
    assert_failed(result)
    assert mentions(result.stderr, f"{preds}, line 3")
    assert mentions(result.stderr, problem)
    assert result.stdout == ""


def test_score_missing_predictions_file(scored_tree, tmp_path):
    result = invoke("score", scored_tree, tmp_path / "nothing.txt")
    assert_failed(result)
    assert mentions(result.stderr, f"{tmp_path / 'nothing.txt'}: file not found")


def test_score_folder_without_annotations(tmp_path):
    root = tmp_path / "test"
    make_track(root / "track_00001", n=1, text=None)
    make_track(root / "track_00002", n=1, text=None)
    preds = write_predictions([Prediction("track_00001", "ABC1234", 0.9)], tmp_path / "predictions.txt")
    result = invoke("score", root, preds)
    assert_failed(result)
    assert mentions(result.stderr, f"no annotated tracks under {root}")


def test_score_missing_tracks_folder(tmp_path):
    preds = write_predictions([Prediction("track_00001", "ABC1234", 0.9)], tmp_path / "predictions.txt")
    result = invoke("score", tmp_path / "nope", preds)
    assert_failed(result)
    assert mentions(result.stderr, "does not exist")


def test_score_skips_broken_annotations_and_says_so(scored_tree, tmp_path):
    bad = make_track(scored_tree / "train" / "Scenario-A" / "Brazilian" / "track_00006", n=1, text="[/b]")
    preds = write_predictions(PREDICTIONS, tmp_path / "predictions.txt")
    result = invoke("score", scored_tree, preds, "--json")
    assert_exit(result, 0)
    report = json.loads(result.stdout)
    assert report["overall"] == _approx(EXPECTED["overall"])  # the broken track is left out
    (skipped,) = report["skipped_tracks"]
    assert "track_00006" in skipped and str(bad) in skipped
    assert mentions(result.stderr, f"skipped: track_00006 ({bad})")
    assert mentions(result.stderr, "'[/b]'")


def test_score_warns_about_track_ids_annotated_twice(scored_tree, tmp_path):
    make_track(scored_tree / "val" / "track_00001", n=1, text="XYZ9876", layout="Brazilian")
    preds = write_predictions(PREDICTIONS, tmp_path / "predictions.txt")
    result = invoke("score", scored_tree, preds, "--json")
    assert_exit(result, 0)
    report = json.loads(result.stdout)
    assert report["duplicate_track_ids"] == ["track_00001"]
    assert report["overall"]["tracks"] == 5
    assert mentions(result.stderr, "1 track id(s) annotated in more than one folder")


# ---------------------------------------------------------------------------------------------
# help


def test_top_level_help_lists_the_commands():
    result = invoke("--help")
    assert_exit(result, 0)
    out = squash(result.stdout)
    assert squash("read license plates") in out
    for command in ("score", "check-data"):
        assert command in out


@pytest.mark.parametrize("command, summary, details", [
    ("score", "Score a predictions file against annotated tracks",
     ["--json", "tracks", "predictions", "predictions.txt or submission.zip"]),
    ("check-data", "Validate a dataset", ["--json", "tracks", "Exits with status 1 if any track is broken"]),
])
def test_command_help(command, summary, details):
    result = invoke(command, "--help")
    assert_exit(result, 0)
    assert mentions(result.stdout, summary)
    for detail in details:  # argument names are upper- or lower-cased depending on the typer version
        assert squash(detail).lower() in squash(result.stdout).lower(), detail


def test_predict_and_eval_reject_unknown_fusion_and_decode_before_reading(tmp_path):
    result = runner.invoke(app, ["predict", str(tmp_path), "--fusion", "vote"])
    assert result.exit_code == 2 and "unknown fusion vote" in " ".join(result.output.split())
    result = runner.invoke(app, ["eval", str(tmp_path), "--fusions", "product,median"])
    assert result.exit_code == 2 and "unknown fusion median" in " ".join(result.output.split())
    result = runner.invoke(app, ["predict", str(tmp_path), "--decode", "beam"])
    assert result.exit_code == 2 and "--decode must be nar or ar" in " ".join(result.output.split())


@pytest.mark.parametrize("args, named", [
    (["--ablation", "--frames", "1"], "--frames"),
    (["--ablation", "--fusions", "product", "--backend", "onnx"], "--fusions, --backend"),
    (["TRACKS", "--presets", "medium"], "--presets"),
    (["TRACKS", "--synth-tracks", "50"], "--synth-tracks"),
])
def test_eval_refuses_options_its_mode_would_ignore(tmp_path, args, named):
    # They were silently dropped: an ablation "at one frame" read all five, a non-ablation run ignored --presets.
    result = invoke("eval", *[tmp_path if a == "TRACKS" else a for a in args])
    assert_exit(result, 2)
    assert mentions(result.stderr, named), result.stderr


# ---------------------------------------------------------------------------------------------
# Output paths, track ids and messages a user can get wrong (refused in one line, before reading)


@pytest.fixture
def micro_model(micro_parseq, tmp_path: Path) -> Path:
    from ksrnet.weights import save_model

    model = micro_parseq()
    return save_model(model, model.config, tmp_path / "micro" / "model.safetensors")


@pytest.mark.parametrize("option", ["--out", "--details"])
def test_predict_refuses_unwritable_outputs_before_reading(good_tree, micro_model, tmp_path, option):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    a_folder = tmp_path / "a_folder"
    a_folder.mkdir()
    base = ["predict", good_tree, "--model", micro_model, "--out", tmp_path / "p.txt"]
    for target, why in ((a_folder, "is a folder"), (a_file / "p.txt", "is a file")):
        result = invoke(*base, option, target)
        assert_exit(result, 2)
        assert mentions(result.stderr, why), result.stderr
    assert not (tmp_path / "p.txt").exists()


def test_predict_refuses_track_ids_predictions_txt_cannot_hold(tmp_path, micro_model):
    dupes = tmp_path / "dupes"
    make_track(dupes / "Scenario-A" / "Brazilian" / "track_00001", n=1)
    make_track(dupes / "Scenario-B" / "Brazilian" / "track_00001", n=1)
    result = invoke("predict", dupes, "--model", micro_model, "--out", tmp_path / "p.txt")
    assert_exit(result, 2)
    assert mentions(result.stderr, "track_00001 in") and mentions(result.stderr, "Scenario-B")
    spaced = tmp_path / "spaced"
    make_track(spaced / "track 1", n=1)
    make_track(spaced / "track_2", n=1)
    result = invoke("predict", spaced, "--model", micro_model, "--out", tmp_path / "p.txt")
    assert_exit(result, 2)
    assert mentions(result.stderr, "whitespace")
    assert not (tmp_path / "p.txt").exists()


def test_predict_reads_a_track_whose_hr_frame_is_broken(tmp_path, micro_model):
    track = make_track(tmp_path / "data" / "track_00001", n=2, hr_size=(96, 34))
    (track / "hr-002.jpg").write_bytes(b"not an image")
    out = tmp_path / "p.txt"
    assert_exit(invoke("predict", tmp_path / "data", "--model", micro_model, "--out", out), 0)
    line = out.read_text().strip()
    assert line.startswith("track_00001,") and not line.startswith("track_00001,;"), line


def test_predict_refuses_out_named_like_the_zip(good_tree, tmp_path):
    result = invoke("predict", good_tree, "--out", tmp_path / "submission.zip", "--zip")
    assert_exit(result, 2)
    assert mentions(result.stderr, "would write the zip over the predictions file")


def test_eval_says_how_many_unlabelled_tracks_it_left_out(good_tree, micro_model):
    result = invoke("eval", good_tree, "--model", micro_model, "--fusions", "product", "--frames", "1")
    assert_exit(result, 0)
    assert mentions(result.stderr, "1 readable track(s) without a plate_text left out"), result.stderr


def test_eval_breaks_each_row_down_by_layout_and_scenario(good_tree, micro_model):
    result = invoke("eval", good_tree / "train", "--model", micro_model, "--fusions", "product,logit_mean",
                    "--frames", "1,3", "--json")
    assert_exit(result, 0)
    doc = json.loads(result.stdout)
    result = invoke("eval", good_tree / "train", "--model", micro_model, "--fusions", "product,logit_mean",
                    "--frames", "1,3")
    assert_exit(result, 0)
    out = " ".join(result.stdout.split())
    assert "by layout and scenario, RR % / CER % / conf gap (pts)" in out
    assert all(f"{name} ({n})" in out for name, n in
               (("Brazilian", 2), ("Mercosur", 1), ("Scenario-A", 2), ("Scenario-B", 1)))
    # Each cell holds the figures the JSON has for that group.
    brazilian = doc["product@F=3"]["by_layout"]["Brazilian"]
    cell = f"{100 * brazilian['recognition_rate']:.2f} / {100 * brazilian['cer']:.2f} / "
    assert cell in out
    # One layout and one scenario: nothing to break down, no second table.
    result = invoke("eval", good_tree / "train" / "Scenario-A", "--model", micro_model, "--fusions", "product",
                    "--frames", "1")
    assert_exit(result, 0)
    assert "by layout" not in result.stdout


@pytest.mark.parametrize("ablation", [False, True])
def test_eval_refuses_one_track_id_in_two_folders(tmp_path, micro_model, ablation):
    # Readings are keyed by track id: both folders would be scored against the one read last (a perfect
    # reader scored 50 % RR with one confident wrong read), so eval refuses them, as predict does.
    root = tmp_path / "data"
    make_track(root / "Scenario-A" / "Brazilian" / "track_00001", n=1, text="ABC1234", layout="Brazilian", seed=1)
    make_track(root / "Scenario-B" / "Brazilian" / "track_00001", n=1, text="DEF5678", layout="Brazilian", seed=2)
    args = ["--ablation", "--synth-tracks", "0"] if ablation else ["--fusions", "single", "--frames", "1"]
    result = invoke("eval", root, "--model", micro_model, *args)
    assert_failed(result)
    assert mentions(result.stderr, "1 track id(s) found in more than one folder"), result.stderr


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs a folder that takes no new files (/proc)")
def test_predict_refuses_an_unwritable_output_before_writing_any(tmp_path, micro_model):
    # --details in a place that takes no files used to fail only after predictions.txt and the zip
    # were written (and an unwritable --out only after every track was read).
    make_track(tmp_path / "data" / "track_00001", n=2)
    out = tmp_path / "out" / "predictions.txt"
    result = invoke("predict", tmp_path / "data", "--model", micro_model, "--out", out, "--zip",
                    "--details", "/proc/ksrnet-test/details.jsonl")
    assert_failed(result)
    assert mentions(result.stderr + result.stdout, "cannot write in /proc")
    assert not out.exists() and not (tmp_path / "out" / "submission.zip").exists()


def test_predict_reads_a_track_whose_annotations_are_broken(tmp_path, micro_model):
    track = make_track(tmp_path / "data" / "track_00001", n=2)
    (track / "annotations.json").write_text("{not json")
    out = tmp_path / "p.txt"
    assert_exit(invoke("predict", tmp_path / "data", "--model", micro_model, "--out", out), 0)
    line = out.read_text().strip()
    assert line.startswith("track_00001,") and not line.startswith("track_00001,;"), line  # labels are not needed


def test_messages_with_brackets_are_printed_verbatim_not_as_markup(tmp_path, micro_model):
    track = make_track(tmp_path / "data[old]" / "track_00001", n=1, text=None)
    (track / "annotations.json").write_text(json.dumps({"plate_text": "[/b]"}))
    out = tmp_path / "data[old]" / "p.txt"
    result = invoke("predict", tmp_path / "data[old]", "--model", micro_model, "--out", out)
    assert_exit(result, 0)
    assert mentions(result.stdout, "data[old]")
    result = invoke("eval", tmp_path / "data[old]", "--model", micro_model)  # needs the labels: reports them
    assert result.exception is None or isinstance(result.exception, SystemExit)  # was a rich MarkupError traceback
    assert mentions(result.stderr, "'[/b]'")
    result = invoke("predict", tmp_path / "nowhere[old]")
    assert_exit(result, 2)
    assert mentions(result.stderr, "nowhere[old]")


@pytest.mark.parametrize("verb", ["predict", "eval", "report", "calibrate"])
def test_batch_size_must_be_positive(tmp_path, verb):
    result = invoke(verb, tmp_path, "--batch-size", "0")
    assert_exit(result, 2)
    assert mentions(result.stderr, "--batch-size")


def test_synth_refuses_bad_codec_seed_and_a_used_folder(tmp_path):
    out = tmp_path / "synth"
    for args, why in ((["--codec", "mpeg"], "unknown codec"), (["--seed", "-1"], "--seed")):
        result = invoke("synth", out, "-n", "1", *args)
        assert_exit(result, 2)
        assert mentions(result.stderr, why), result.stderr
    assert not out.exists()
    assert_exit(invoke("synth", out, "-n", "1", "--seed", "1", "--no-hr"), 0)
    result = invoke("synth", out, "-n", "1", "--seed", "2", "--no-hr")  # would mix two sets, one id twice
    assert_exit(result, 2)
    assert mentions(result.stderr, "not empty")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert_exit(invoke("synth", a_file, "-n", "1"), 2)
    result = invoke("synth", a_file / "sub", "-n", "1")  # was a NotADirectoryError traceback
    assert_exit(result, 2)
    assert mentions(result.stderr, "cannot write under")


@pytest.mark.parametrize("device, message", [("foo", "not a device"), ("cuda:99", "cuda:99")])
def test_predict_refuses_a_device_it_cannot_use(good_tree, tmp_path, device, message):
    result = invoke("predict", good_tree, "--device", device, "--out", tmp_path / "p.txt")
    assert_exit(result, 2)  # was a torch RuntimeError / AssertionError traceback
    assert mentions(result.stderr, message), result.stderr


def test_calibrate_refuses_a_frame_count_longer_than_the_tracks(micro_model):
    # The tracks have 5 frames: "product@9" would be fitted on 5-frame readings, and never used.
    result = invoke("calibrate", "--model", micro_model, "--synth", "10", "--frames", "9", "--fusions", "product",
                    "--dry-run")
    assert_exit(result, 2)
    assert mentions(result.stderr, "--frames 9: only 0 of 10 tracks"), result.stderr


def test_score_names_a_folder_given_as_the_predictions_file(scored_tree, tmp_path):
    result = invoke("score", scored_tree, tmp_path)
    assert_exit(result, 2)
    assert mentions(result.stderr, "is a folder"), result.stderr


def test_calibrate_says_which_tracks_it_could_not_use(tmp_path, micro_model):
    root = tmp_path / "val"
    for i in range(1, 11):
        make_track(root / f"track_{i:05d}", n=2, seed=i)
    (make_track(root / "track_00011", n=2) / "lr-002.jpg").write_bytes(b"")
    make_track(root / "track_00012", n=2, text=None)
    result = invoke("calibrate", root, "--model", micro_model, "--fusions", "product", "--dry-run")
    assert_exit(result, 0)
    assert mentions(result.stderr, "unreadable, not used: track_00011"), result.stderr
    assert mentions(result.stderr, "1 unlabelled track(s) not used")
    assert mentions(result.stdout, "10 of 12 tracks usable")


def test_calibrate_fits_the_typicality_reference_beside_the_weights(micro_model):
    from ksrnet.cli import CALIBRATION_SEED
    from ksrnet.infer import Reader
    from ksrnet.synth.dataset import generate_track
    from ksrnet.typicality import fit_reference, load_for, reference_path
    from ksrnet.weights import load_model

    base = ["calibrate", "--model", micro_model, "--synth", "40", "--fusions", "product"]
    for skip in (["--dry-run"], ["--no-typicality"]):
        assert_exit(invoke(*base, *skip), 0)
        assert not reference_path(micro_model).exists()
    result = invoke(*base)
    assert_exit(result, 0)
    assert mentions(result.stdout, "typicality reference saved in"), result.stdout
    reference = load_for(micro_model)
    assert reference.source.startswith("40 synthetic tracks") and sorted(reference.reference_scores) == [1, 2, 3, 4, 5]
    # The features came from the reading pass; the encoder alone on the same frames gives the same reference.
    reader = Reader(load_model(micro_model)[0])
    alone = fit_reference([reader.frame_features(generate_track(CALIBRATION_SEED, i, preset="mix").lr).numpy()
                           for i in range(40)])
    assert np.allclose(alone.mean, reference.mean, atol=1e-6)
    assert all(np.allclose(alone.reference_scores[n], reference.reference_scores[n], rtol=1e-5) for n in range(1, 6))
    # Fitted per frame count (--frames), where no pass reads every frame, the reference is the same.
    assert_exit(invoke(*base, "--frames", "1,5"), 0)
    assert np.allclose(load_for(micro_model).mean, reference.mean, atol=1e-6)


def test_calibrate_leaves_the_reference_alone_when_too_few_tracks_to_fit_it(micro_model):
    from ksrnet.typicality import reference_path

    result = invoke("calibrate", "--model", micro_model, "--synth", "10", "--fusions", "product")
    assert_exit(result, 0)  # the temperatures are still fitted and saved
    assert mentions(result.stderr, "no typicality reference fitted"), result.stderr
    assert not reference_path(micro_model).exists()


def test_gap_temperatures_are_fitted_apart_and_read_with_confidence_gap(good_tree, micro_model, tmp_path):
    from ksrnet.typicality import reference_path

    meta_path = micro_model.with_suffix(".json")
    out = tmp_path / "p.txt"
    result = invoke("predict", good_tree, "--model", micro_model, "--out", out, "--confidence", "gap")
    assert_exit(result, 2)  # nothing fitted yet: refused before reading, with the command that fits them
    assert mentions(result.stderr, "has no gap temperatures: fit them with `ksrnet calibrate"), result.stderr
    assert_exit(invoke("calibrate", "--model", micro_model, "--synth", "40", "--fusions", "product",
                       "--no-typicality"), 0)
    calibrated = json.loads(meta_path.read_text())["temperature"]
    # The untrained micro model reads no synthetic plate right, and a gap needs right readings: a
    # validation folder labelled with its own readings of 8 tracks of 14 (and wrong texts for 6).
    val = tmp_path / "val"
    for i in range(14):
        make_track(val / f"track_{i:05d}", n=5, seed=100 + i)
    readings = tmp_path / "val.jsonl"
    assert_exit(invoke("predict", val, "--model", micro_model, "--out", tmp_path / "val.txt", "--details", readings), 0)
    for i, line in enumerate(readings.read_text().splitlines()):
        r = json.loads(line)
        text = r["text"] if i < 8 else ("ABC1234" if r["text"] != "ABC1234" else "XYZ9876")
        (val / r["track_id"] / "annotations.json").write_text(json.dumps(
            {"plate_text": text, "plate_layout": "Brazilian" if text[4].isdigit() else "Mercosur", "corners": {}}))
    result = invoke("calibrate", val, "--model", micro_model, "--fusions", "product", "--frames", "3,5",
                    "--objective", "gap")
    assert_exit(result, 0)
    assert mentions(result.stdout, "read with --confidence gap"), result.stdout
    meta = json.loads(meta_path.read_text())
    assert meta["temperature"] == calibrated  # the calibrated temperatures are left as they were
    assert set(meta["temperature_gap"]) == {"product@3", "product@5"}
    assert all(f["objective"] == "gap" for f in meta["calibration_gap"]["fits"])
    assert not reference_path(micro_model).exists()  # the typicality reference goes with calibrated fits only
    plain, gap = tmp_path / "plain.jsonl", tmp_path / "gap.jsonl"
    assert_exit(invoke("predict", good_tree, "--model", micro_model, "--out", tmp_path / "p.txt",
                       "--details", plain), 0)
    result = invoke("predict", good_tree, "--model", micro_model, "--out", out, "--confidence", "gap", "--details", gap)
    assert_exit(result, 0)
    assert mentions(result.stderr, "4 of 4 confidences come from the temperatures fitted to widen"), result.stderr
    rows = [[json.loads(line) for line in f.read_text().splitlines()] for f in (plain, gap)]
    assert [r["text"] for r in rows[0]] == [r["text"] for r in rows[1]]  # the same readings
    assert all(a["confidence"] != b["confidence"] for a, b in zip(*rows))  # other confidences
    result = invoke("eval", good_tree, "--model", micro_model, "--confidence", "gap", "--fusions", "product",
                    "--frames", "3")
    assert_exit(result, 0)
    assert mentions(result.stderr, "do not measure calibration here"), result.stderr


@pytest.mark.parametrize("args, message", [
    (["predict", "--confidence", "gap", "--tta"], "without TTA"),
    (["predict", "--confidence", "gap", "--min-confidence", "0.5"], "use it with --confidence calibrated"),
    (["predict", "--confidence", "sure"], "--confidence must be one of calibrated, gap"),
    (["eval", "--confidence", "gap", "--model", "a", "--model", "b"], "one recognizer"),
    (["calibrate", "--objective", "gap", "--tta"], "without TTA"),
    (["calibrate", "--objective", "auc"], "--objective must be one of nll, gap"),
])
def test_gap_confidences_refuse_what_they_were_not_fitted_for(good_tree, tmp_path, args, message):
    verb, *rest = args
    where = [good_tree, "--out", tmp_path / "p.txt"] if verb == "predict" else [good_tree] if verb == "eval" else []
    result = invoke(verb, *where, *rest)
    assert_exit(result, 2)
    assert mentions(result.stderr, message), result.stderr


@pytest.fixture
def flagging_model(micro_model):
    """The micro model with a typicality reference under which every track is atypical (every
    reference score 0), so that the commands' flags can be checked."""
    from ksrnet.typicality import TypicalityReference, reference_path

    features = 2 * MICRO_PARSEQ["embed_dim"]  # the tokens' mean and spread
    TypicalityReference(np.zeros(features), np.eye(features),
                        {n: np.zeros(20) for n in range(1, 6)}).save(reference_path(micro_model))
    return micro_model


def test_predict_eval_and_report_flag_atypical_tracks(good_tree, flagging_model, tmp_path):
    details = tmp_path / "d.jsonl"
    result = invoke("predict", good_tree, "--model", flagging_model, "--out", tmp_path / "p.txt", "--details", details)
    assert_exit(result, 0)
    assert mentions(result.stderr, "4 of 4 tracks look unlike the tracks this model was calibrated on"), result.stderr
    rows = [json.loads(line) for line in details.read_text().splitlines()]
    assert all(r["atypicality"] == 1.0 and r["atypical"] for r in rows)
    result = invoke("eval", good_tree, "--model", flagging_model, "--fusions", "product", "--frames", "1")
    assert_exit(result, 0)
    assert mentions(result.stdout, "tracks like the calibration tracks and atypical ones"), result.stdout
    assert mentions(result.stdout, "│product│1│-│3:"), result.stdout  # none typical, the 3 labelled ones atypical
    result = invoke("eval", good_tree, "--model", flagging_model, "--fusions", "product", "--frames", "1", "--json")
    assert_exit(result, 0)
    groups = json.loads(result.stdout)["product@F=1"]["by_typicality"]
    assert groups["typical"] is None and groups["atypical"]["tracks"] == 3
    page = tmp_path / "r.html"
    result = invoke("report", good_tree, "--model", flagging_model, "--out", page)
    assert_exit(result, 0)
    assert mentions(result.stderr, "the report marks them"), result.stderr
    html = page.read_text()
    assert "4 of 4 tracks are marked atypical input" in html and html.count("Atypical input: ") == 4


def test_predict_refuses_a_corrupt_typicality_reference_and_says_what_to_do(good_tree, micro_model, tmp_path):
    from ksrnet.typicality import reference_path

    reference_path(micro_model).write_bytes(b"not a reference")
    result = invoke("predict", good_tree, "--model", micro_model, "--out", tmp_path / "p.txt")
    assert_exit(result, 2)
    assert mentions(result.stderr, "delete it, or fit it again with `ksrnet calibrate`"), result.stderr
    assert not (tmp_path / "p.txt").exists()


def test_predict_says_nothing_of_typicality_without_a_reference(good_tree, micro_model, tmp_path):
    details = tmp_path / "d.jsonl"
    result = invoke("predict", good_tree, "--model", micro_model, "--out", tmp_path / "p.txt", "--details", details)
    assert_exit(result, 0)
    assert not mentions(result.stderr, "calibrated on")
    assert all(json.loads(line)["atypicality"] is None for line in details.read_text().splitlines())


# ---------------------------------------------------------------------------------------------
# contact-sheet


def test_contact_sheet_writes_one_row_per_track_and_the_real_frames(tmp_path):
    import cv2

    real = tmp_path / "real"
    real.mkdir()
    Image.fromarray(np.full((19, 45, 3), 90, np.uint8)).save(real / "x_lr_ABC1234_45x19.png")
    heights = []
    for n in (1, 3):
        out = tmp_path / f"sheet{n}.png"
        assert_exit(invoke("contact-sheet", out, "-n", n, "--real", real), 0)
        image = cv2.imread(str(out))
        assert image is not None and image.shape[1] > 5 * 48  # five frames side by side, zoomed
        heights.append(image.shape[0])
    assert heights[1] > heights[0]


def test_contact_sheet_shows_real_frames_whole_and_only_lr_ones(tmp_path):
    from ksrnet.synth.contact_sheet import contact_sheet, real_frames

    real = tmp_path / "real"
    real.mkdir()
    big = np.zeros((30, 70, 3), np.uint8)
    big[0, 0] = big[-1, -1] = 255  # corners a cropped cell would lose
    Image.fromarray(big).save(real / "track_00001_lr-001_ABC1234_70x30.png")
    Image.fromarray(np.zeros((40, 90, 3), np.uint8)).save(real / "track_00001_hr-001_LRX1D23.png")  # LR in the text
    assert [name for name, _ in real_frames(real)] == ["track_00001_lr-001_ABC1234_70x30"]
    sheet = contact_sheet(1, real_dir=real, scale=1)
    # Every cell grows to 30x70: a label bar of 14 rows, the cells, 4 rows of padding, per row of the sheet.
    assert sheet.shape[:2] == (2 * (14 + 30 + 4), 5 * 70)
    top = 14 + 30 + 4 + 14
    assert np.array_equal(sheet[top:top + 30, :70], big)  # the real frame, whole


@pytest.mark.parametrize("args, message", [
    (["sheet.txt"], "give a .png"),
    (["sheet.png", "--preset", "foo"], "unknown preset 'foo'"),
    (["sheet.png", "--real", "nowhere"], "is not a folder"),
    (["sheet.png", "--seed", "-1"], "--seed"),  # was a numpy traceback (seeds must be >= 0)
])
def test_contact_sheet_refuses_bad_options(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = invoke("contact-sheet", *args)
    assert_exit(result, 2)
    assert mentions(result.stderr, message), result.stderr


def test_synth_font_adds_a_folder_of_plate_faces_and_refuses_one_without(tmp_path, monkeypatch):
    import shutil

    from ksrnet.synth import fonts

    # setenv records the variable's state, so it is put back after the test (delenv of an unset one records nothing).
    monkeypatch.setenv(fonts.FONT_DIRS_ENV, "")
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder, why in ((tmp_path / "nowhere", "does not exist"), (empty, "no usable")):
        result = invoke("synth", tmp_path / "out", "-n", "1", "--font", folder)
        assert_exit(result, 2)
        assert mentions(result.stderr, why), result.stderr
    own = tmp_path / "own"
    own.mkdir()
    package_face = next(f for f in fonts.discover_fonts() if f.source == "package")
    shutil.copy(package_face.path, own / "Mandatory.ttf")
    try:
        result = invoke("synth", tmp_path / "out", "-n", "1", "--no-hr", "--font", own)
        assert_exit(result, 0)
        assert mentions(result.stdout, "1 face(s)")
        assert os.environ[fonts.FONT_DIRS_ENV] == str(own)
        assert any(f.source == "user" and f.path.endswith("Mandatory.ttf") for f in fonts.plate_fonts())
    finally:
        os.environ.pop(fonts.FONT_DIRS_ENV, None)
        fonts.clear_cache()


def test_a_txt_list_of_track_folders_is_a_tracks_argument(tmp_path):
    tracks = tmp_path / "tracks"
    assert_exit(invoke("synth", tracks, "-n", "3", "--seed", "2", "--no-hr"), 0)
    from ksrnet.tracks import discover_tracks

    first, _, third = discover_tracks(tracks)
    listing = tmp_path / "some.txt"
    listing.write_text(f"# two of three\n\n{first.relative_to(tmp_path)}\n{third.resolve()}\n")
    out = tmp_path / "p.txt"
    assert_exit(invoke("predict", listing, "--out", out), 0)
    assert [line.split(",")[0] for line in out.read_text().splitlines()] == [first.name, third.name]
    listing.write_text(f"{first}\n{tmp_path / 'nowhere'}\n{tracks}\n")  # a missing folder, and a folder of tracks
    result = invoke("predict", listing, "--out", out)
    assert_exit(result, 2)
    assert mentions(result.stderr, "2 of the 3 entries") and mentions(result.stderr, "not track folders")
    listing.write_text("# nothing\n")
    assert mentions(invoke("predict", listing, "--out", out).stderr, "lists no track folders")


def test_predict_pads_tight_crops_on_request(tmp_path):
    make_track(tmp_path / "tracks" / "track_00001", text=None, layout=None)
    out = tmp_path / "p.txt"
    assert_exit(invoke("predict", tmp_path / "tracks", "--out", out, "--pad-margin", "0.06"), 0)
    assert out.read_text().startswith("track_00001,")
    assert_failed(invoke("predict", tmp_path / "tracks", "--out", out, "--pad-margin", "0.9"))
    assert_failed(invoke("predict", tmp_path / "tracks", "--out", out, "--pad-margin", "-0.1"))


def test_command_help_paragraphs_are_unwrapped_for_the_terminal_to_wrap():
    from ksrnet.cli import unwrapped_help

    assert unwrapped_help("""First line
    goes on.

    Second paragraph,
        indented in the source.""") == "First line goes on.\n\nSecond paragraph, indented in the source."
    for command in app.registered_commands:
        assert command.help and all("\n" not in p for p in command.help.split("\n\n")), command.callback.__name__
