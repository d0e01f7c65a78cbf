"""predictions.txt / submission.zip: exact format, natural order, atomic writes, strict reading."""

from __future__ import annotations

import os
import zipfile

import pytest

from ksrnet import atomic_files
from ksrnet import submission as sub
from ksrnet.submission import Prediction, PredictionsError, read_predictions, write_predictions

PREDS = [
    Prediction("track_10", "abc-1d23", 0.5),
    Prediction("track_2", "ABC1234", 0.98765),
    Prediction("track_00001", "", 0.0),  # nothing readable: still one line
    Prediction("track_3", "XY", 1.7),  # a short reading is still a reading; confidence clamped
    Prediction("track_4", "QRS5678", -0.2),
]

EXPECTED = (
    "track_00001,;0.0000\n"
    "track_2,ABC1234;0.9877\n"
    "track_3,XY;1.0000\n"
    "track_4,QRS5678;0.0000\n"
    "track_10,ABC1D23;0.5000\n"
)


def test_written_file_is_sorted_naturally_with_four_decimals(tmp_path):
    path = write_predictions(PREDS, tmp_path / "predictions.txt")
    assert path == tmp_path / "predictions.txt"
    assert path.read_text() == EXPECTED


def test_txt_round_trip(tmp_path):
    path = write_predictions(PREDS, tmp_path / "out" / "predictions.txt")
    back = read_predictions(path)
    assert list(back) == ["track_00001", "track_2", "track_3", "track_4", "track_10"]
    assert back["track_2"] == Prediction("track_2", "ABC1234", 0.9877)
    assert back["track_10"] == Prediction("track_10", "ABC1D23", 0.5)
    assert back["track_00001"].text == "" and back["track_3"].confidence == 1.0


def test_zip_round_trip_holds_predictions_txt(tmp_path):
    zpath = tmp_path / "submission.zip"
    write_predictions({p.track_id: p for p in PREDS}, tmp_path / "predictions.txt", zip_path=zpath)
    with zipfile.ZipFile(zpath) as zf:
        assert zf.namelist() == ["predictions.txt"]
        assert zf.read("predictions.txt").decode() == EXPECTED
    assert read_predictions(zpath) == read_predictions(tmp_path / "predictions.txt")


def test_zip_with_a_single_other_txt_member_is_read(tmp_path):
    zpath = tmp_path / "mine.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("results/out.txt", "track_1,ABC1234;0.5\n")
        zf.writestr("__MACOSX/results/._out.txt", "junk")
    assert read_predictions(zpath)["track_1"].text == "ABC1234"


@pytest.mark.parametrize("members", [{}, {"a.txt": "", "b.txt": ""}, {"readme.md": ""}])
def test_zip_without_one_clear_predictions_file_is_an_error(tmp_path, members):
    zpath = tmp_path / "s.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    with pytest.raises(PredictionsError, match="zip must hold one predictions.txt"):
        read_predictions(zpath)


def test_fake_zip_and_missing_file_are_errors(tmp_path):
    (tmp_path / "s.zip").write_text("track_1,ABC1234;0.5\n")
    with pytest.raises(PredictionsError, match="not a valid zip"):
        read_predictions(tmp_path / "s.zip")
    with pytest.raises(PredictionsError, match="file not found"):
        read_predictions(tmp_path / "nope.txt")


@pytest.mark.parametrize(
    "bad, match",
    [
        ([Prediction("track_1", "ABC1234", float("nan"))], "confidence is NaN"),
        ([Prediction("track_1", "ABC1234", 0.1), Prediction("track_1 ", "ABC1235", 0.2)],
         "duplicated track ids: track_1"),
        ([Prediction("track_1", "AB,C", 0.1)], "contains ','"),
        ([Prediction("track_1", "AB;C", 0.1)], "contains ';'"),
        ([Prediction("track 1", "ABC1234", 0.1)], "whitespace"),
        ([Prediction("", "ABC1234", 0.1)], "empty"),
        ([Prediction("track_1", "ABC1234", "high")], "not a number"),
    ],
)
def test_invalid_predictions_raise_before_anything_is_written(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        write_predictions(bad, tmp_path / "predictions.txt", zip_path=tmp_path / "s.zip")
    assert os.listdir(tmp_path) == []


def test_failure_while_writing_keeps_the_old_file(tmp_path, monkeypatch):
    path = write_predictions(PREDS, tmp_path / "predictions.txt")

    def broken_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(atomic_files.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="Input/output"):
        write_predictions([Prediction("track_9", "ABC1234", 0.1)], path)
    assert path.read_text() == EXPECTED
    assert os.listdir(tmp_path) == ["predictions.txt"]  # the temporary file is gone too


def test_written_files_are_readable_by_others_like_any_file(tmp_path):
    # the temporary file is created 0600; a predictions file a colleague cannot read is a bug
    write_predictions(PREDS, tmp_path / "predictions.txt", zip_path=tmp_path / "s.zip")
    assert {oct((tmp_path / n).stat().st_mode & 0o777) for n in ("predictions.txt", "s.zip")} == {oct(0o644)}


def test_failure_while_building_the_zip_changes_neither_file(tmp_path, monkeypatch):
    txt, zpath = tmp_path / "predictions.txt", tmp_path / "submission.zip"
    write_predictions(PREDS, txt, zip_path=zpath)
    old_zip = zpath.read_bytes()

    def broken_zip(text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sub, "_zip_bytes", broken_zip)
    with pytest.raises(OSError):
        write_predictions(PREDS[:1], txt, zip_path=zpath)
    assert txt.read_text() == EXPECTED and zpath.read_bytes() == old_zip
    assert sorted(os.listdir(tmp_path)) == ["predictions.txt", "submission.zip"]


def test_reader_takes_a_lone_cr_as_a_line_end(tmp_path):
    path = tmp_path / "predictions.txt"
    path.write_bytes(b"track_1,ABC1234;0.5\rtrack_2,DEF5678;0.25\r")
    got = read_predictions(path)
    assert [(p.track_id, p.text) for p in got.values()] == [("track_1", "ABC1234"), ("track_2", "DEF5678")]


def test_reader_tolerates_blank_lines_crlf_spaces_and_bom(tmp_path):
    path = tmp_path / "p.txt"
    path.write_bytes(b"\xef\xbb\xbftrack_2 , abc 1234 ;0.25  \r\n\r\n   \ntrack_1,zz;1\r\n")
    back = read_predictions(path)
    assert back == {"track_2": Prediction("track_2", "ABC1234", 0.25), "track_1": Prediction("track_1", "ZZ", 1.0)}


@pytest.mark.parametrize(
    "line, problem",
    [
        ("track_3 ABC1234;0.5", "no comma"),
        ("track_3,ABC1234 0.5", "no semicolon"),
        ("track_3,ABC1234;", "confidence '' is not a number"),
        ("track_3,ABC1234;high", "confidence 'high' is not a number"),
        ("track_3,ABC1234;1.5", "outside [0, 1]"),
        ("track_3,ABC1234;nan", "outside [0, 1]"),
        ("track_3,AB,C;0.5", "contains a separator"),
        (",ABC1234;0.5", "empty track id"),
        ("track_1,ABC1234;0.5", "duplicate track id track_1 (first on line 1)"),
    ],
)
def test_read_errors_name_the_line_and_the_problem(tmp_path, line, problem):
    path = tmp_path / "predictions.txt"
    path.write_text(f"track_1,ABC1234;0.1\n\ntrack_2,ABC1235;0.2\n{line}\n")
    with pytest.raises(PredictionsError) as info:
        read_predictions(path)
    err = info.value
    assert err.line == 4 and problem in err.problem
    assert str(err).startswith(f"{path}, line 4: ")


def test_non_utf8_error_names_the_line(tmp_path):
    path = tmp_path / "predictions.txt"
    path.write_bytes(b"track_1,ABC1234;0.1\ntrack_2,AB\xff;0.2\n")
    with pytest.raises(PredictionsError, match="line 2: not UTF-8"):
        read_predictions(path)


def test_empty_file_reads_as_no_predictions(tmp_path):
    path = tmp_path / "predictions.txt"
    write_predictions([], path)
    assert path.read_text() == "" and read_predictions(path) == {}


def test_zip_is_byte_identical_for_the_same_predictions(tmp_path):
    write_predictions(PREDS, tmp_path / "a.txt", zip_path=tmp_path / "a.zip")
    write_predictions(PREDS, tmp_path / "b.txt", zip_path=tmp_path / "b.zip")
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()
    with zipfile.ZipFile(tmp_path / "a.zip") as zf:
        (info,) = zf.infolist()
        # a fixed stamp, not the clock's (which differs between runs a second or more apart)
        assert info.filename == "predictions.txt" and info.date_time == (1980, 1, 1, 0, 0, 0)
        assert info.external_attr >> 16 == 0o644
