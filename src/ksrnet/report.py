"""Reading reports for analysts: for every track, what was read, how sure the model is of each
character and of the whole plate, what each frame says on its own, and which model and settings
produced it, in one self-contained HTML file (images embedded, no scripts, no network).

A reading is only as defensible as the evidence shown beside it, so the report shows the frames as
they are (their own pixels, enlarged by the browser with nearest-neighbour sampling: nothing is
sharpened or restored), and the per-frame readings, which tell whether the frames agree or one
frame carries the result.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np

from ksrnet.infer import TrackReading
from ksrnet.typicality import ATYPICAL, flagged

# Character probability bands of the report's colours (and of its words for them).
SURE, DOUBTFUL = 0.9, 0.5


@dataclass(frozen=True)
class FrameEvidence:
    """One frame read alone (its own calibrated single-frame confidence)."""

    name: str
    image: np.ndarray  # RGB uint8, as read from disk
    text: str
    confidence: float
    atypicality: float | None = None  # of the frame alone, among single calibration frames (ksrnet.typicality)


@dataclass(frozen=True)
class TrackReport:
    track_id: str
    reading: TrackReading
    frames: list[FrameEvidence]
    truth: str | None = None
    illegible: bool = False  # confidence below the report's threshold
    source: str | None = None  # the track's folder: two folders may share a track id
    notes: tuple[str, ...] = ()  # what reading the folder had to fix (tracks.read_track's warnings)


@dataclass(frozen=True)
class UnreadableTrack:
    track_id: str
    error: str


def software_versions() -> dict[str, str]:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    try:
        ksrnet_version = version("ksrnet")
    except PackageNotFoundError:  # run from a source tree that was never installed
        ksrnet_version = "unknown"
    return {"ksrnet": ksrnet_version, "torch": torch.__version__, "python": platform.python_version()}


def utc_now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Provenance:
    """What produced the readings: enough to reproduce them and to tell two reports apart."""

    models: list[dict]  # {"model", "kind", "sha256"} per model, optionally "temperatures" (those in use)
    fusion: str
    frames: int | None  # the last N frames of each track; None = all
    tta_views: list[str] | None
    min_confidence: float | None
    command: str
    versions: dict[str, str] = field(default_factory=software_versions)
    created_utc: str = field(default_factory=utc_now)


def frame_evidence(reader, tracks: list, track_logits: list, frame_count: int | None,
                   names: Sequence[Sequence[str]], features: list | None = None) -> list[list[FrameEvidence]]:
    """Each chosen frame of each track read on its own by the same reader (its temperature for one
    frame), as (frame name, image, text, confidence, atypicality); track_logits and features: the
    reader's ``track_logits_and_features`` (no atypicality without features)."""
    from ksrnet.infer import select_frames

    out = []
    for i, (track, logits, frame_names) in enumerate(zip(tracks, track_logits, names)):
        chars, layouts = logits
        images = select_frames(track.lr, frame_count)
        if chars.shape[0] != len(images):
            raise ValueError("the report needs one row of logits per frame (a late-fusion reader)")
        single = [(chars[f:f + 1], layouts[f:f + 1]) for f in range(chars.shape[0])]
        if getattr(reader, "rule", None) == "vote":  # a voting ensemble reads a frame by its members' vote
            from ksrnet.tracks import Track

            readings = reader.read([Track(track.track_id, [img]) for img in images], ["product"])["product"]
        else:
            readings = reader.readings_from_logits([track] * len(single), single, ["product"])["product"]
        alone = ([None] * len(images) if features is None
                 else [reader.typicality.atypicality(features[i][f:f + 1].numpy()) for f in range(len(images))])
        out.append([FrameEvidence(n, img, r.text, r.confidence, a)
                    for n, img, r, a in zip(frame_names, images, readings, alone)])
    return out


def build_reports(reader, tracks: list, fusion: str, frame_count: int | None = None,
                  min_confidence: float | None = None) -> list[TrackReport]:
    """Read a batch of tracks (objects with .track_id, .lr, optional .text and .lr_names) and gather
    the evidence the report shows."""
    from ksrnet.infer import select_frames

    logits, features = reader.track_logits_and_features(tracks, frame_count)
    if getattr(reader, "rule", None) == "vote":  # each member fuses alone: not a fusion of these logits
        fused = reader.read(tracks, [fusion], frame_count=frame_count)[fusion]
    else:  # what reader.read does, without running the network a second time
        atypicality = reader.atypicality_of(features)
        fused = reader.readings_from_logits(tracks, logits, [fusion], atypicality=atypicality)[fusion]
    names = []
    for t in tracks:
        all_names = list(getattr(t, "lr_names", None) or [f"frame {i + 1}" for i in range(len(t.lr))])
        names.append(select_frames(all_names, frame_count))
    evidence = frame_evidence(reader, tracks, logits, frame_count, names, features)
    return [TrackReport(track_id=t.track_id, reading=r, frames=e, truth=getattr(t, "text", None),
                        illegible=min_confidence is not None and r.confidence < min_confidence,
                        source=None if getattr(t, "path", None) is None else str(t.path),
                        notes=tuple(getattr(t, "warnings", None) or ()))
            for t, r, e in zip(tracks, fused, evidence)]


SORT_ORDERS = ("input", "confidence")


def sort_reports(reports: list[TrackReport], order: str) -> list[TrackReport]:
    """"input": as read; "confidence": least sure first (what an analyst should look at first)."""
    if order not in SORT_ORDERS:
        raise ValueError(f"sort order must be input or confidence, got {order!r}")
    return sorted(reports, key=lambda r: r.reading.confidence) if order == "confidence" else list(reports)


def frames_agreeing(report: TrackReport) -> int:
    return sum(f.text == report.reading.text for f in report.frames)


def _band(p: float, in_doubt: bool = False) -> str:
    """in_doubt: inside a reading below the threshold, where no character is shown as sure."""
    band = "sure" if p >= SURE else "doubtful" if p >= DOUBTFUL else "weak"
    return "doubtful" if in_doubt and band == "sure" else band


def _num(p: float, digits: int) -> str:
    """p rounded down to `digits` decimals: a value below a colour band or the ILLEGIBLE threshold
    never shows as that threshold (0.8997 as 0.900 beside "below 0.9")."""
    shown = f"{p:.{digits}f}"
    return f"{p - 0.5 * 10 ** -digits:.{digits}f}" if float(shown) > p else shown


def _png_data_uri(rgb: np.ndarray) -> str:
    ok, data = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("could not encode a frame as PNG")
    return "data:image/png;base64," + base64.b64encode(data.tobytes()).decode("ascii")


def _esc(value) -> str:
    # A folder name that is not UTF-8 reaches Python as lone surrogates, which the UTF-8 page cannot
    # hold: show its bytes as \\xNN instead of failing to write the report.
    text = str(value)
    try:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return html.escape(text, quote=True)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: middle; }
th { background: #f2f2f2; }
.plate { font-family: ui-monospace, monospace; font-size: 1.15em; letter-spacing: 0.1em; }
.sure { background: #d9f2d9; } .doubtful { background: #fff0c2; } .weak { background: #f7c9c9; }
.illegible { color: #a00; font-weight: bold; }
.differs { background: #f7c9c9; }
.notes { color: #8a5a00; }
img.frame { image-rendering: pixelated; image-rendering: crisp-edges; height: 68px; border: 1px solid #999; }
section { border-top: 2px solid #888; margin-top: 1.5em; padding-top: 0.5em; }
.alt { color: #555; font-size: 0.85em; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dt { font-weight: bold; }
"""


def _verdict(report: TrackReport, threshold: float | None) -> str:
    if report.illegible:
        return f'<span class="illegible">ILLEGIBLE</span> (below {threshold:g}; best guess {_esc(report.reading.text)})'
    return f'<span class="plate">{_esc(report.reading.text) or "(none)"}</span>'


def _confidence(reading: TrackReading) -> str:
    """The confidence as shown; one no fitted calibration set is marked, since it is a score that
    orders readings, not the probability the page says confidences are."""
    shown = _num(reading.confidence, 3)
    if not reading.calibrated:
        shown += ' <span class="illegible">uncalibrated</span>'
    if reading.atypical:
        shown += ' <span class="illegible">atypical input</span>'
    return shown


def _typicality(reading: TrackReading) -> str:
    """How the track's input compares with the tracks the model was calibrated on (ksrnet.typicality)."""
    if reading.atypicality is None:
        return ""
    share = f"{100 * reading.atypicality:.1f} %"
    if reading.atypical:
        return (f'<p class="notes">Atypical input: this track looks less typical than {share} of the tracks the '
                "model was calibrated on (by its recognizer's encoder features), so its confidence was never checked "
                "on input like it and may be too high.</p>")
    return f"<p>Typicality: less typical than {share} of the tracks the model was calibrated on.</p>"


def _truth_cell(report: TrackReport) -> str:
    if report.truth is None:
        return "-"
    right = report.reading.text == report.truth
    return f'<span class="plate">{_esc(report.truth)}</span> ({"right" if right else "WRONG"})'


def _summary(reports: list[TrackReport], unreadable: list[UnreadableTrack], provenance: Provenance) -> str:
    has_truth = any(r.truth is not None for r in reports)
    head = "<tr><th>track</th><th>reading</th><th>confidence</th><th>least sure character</th><th>frames that read the same</th>"
    rows = [head + ("<th>annotation</th>" if has_truth else "") + "</tr>"]
    for i, r in enumerate(reports):
        weakest = min(r.reading.char_probs, default=0.0)
        rows.append(
            f'<tr><td><a href="#{_anchor(i)}">{_esc(r.track_id)}</a></td>'
            f"<td>{_verdict(r, provenance.min_confidence)}</td><td>{_confidence(r.reading)}</td>"
            f'<td class="{_band(weakest, r.illegible)}">{_num(weakest, 3)}</td><td>{frames_agreeing(r)} of {len(r.frames)}</td>'
            + (f"<td>{_truth_cell(r)}</td>" if has_truth else "") + "</tr>")
    for u in unreadable:
        rows.append(f"<tr><td>{_esc(u.track_id)}</td><td colspan=\"4\" class=\"illegible\">unreadable: {_esc(u.error)}</td>"
                    + ("<td></td>" if has_truth else "") + "</tr>")
    return "<table>" + "".join(rows) + "</table>"


def _characters(reading: TrackReading, in_doubt: bool) -> str:
    """The reading's characters, coloured by probability; inside a reading below the threshold
    (in_doubt) none is shown as sure: there a 0.9+ character is wrong several times as often as in a
    confident reading (benchmarks/recognizer.py, by the reading's confidence)."""
    cells, alts = [], []
    for ch, p, options in zip(reading.text, reading.char_probs, reading.alternatives or [[]] * len(reading.text)):
        cells.append(f'<td class="plate {_band(p, in_doubt)}">{_esc(ch)}<br><small>{_num(p, 2)}</small></td>')
        others = ", ".join(f"{_esc(c)} {_num(q, 2)}" for c, q in options if c != ch)
        alts.append(f'<td class="alt">{others or "-"}</td>')
    return ("<table><tr><th>character</th>" + "".join(cells) + "</tr>"
            "<tr><th>alternatives</th>" + "".join(alts) + "</tr></table>")


def _frames(report: TrackReport) -> str:
    # A frame unlike every calibration frame stands out here even when the track as a whole does not.
    scored = any(f.atypicality is not None for f in report.frames)
    rows = ["<tr><th>frame</th><th>pixels (w x h)</th><th>image</th><th>read alone</th><th>confidence</th>"
            + ("<th>atypicality alone</th>" if scored else "") + "</tr>"]
    for f in report.frames:
        marked = "".join(c if c == r else f'<span class="differs">{_esc(c)}</span>'
                         for c, r in zip(f.text, report.reading.text.ljust(len(f.text))))
        h, w = f.image.shape[:2]
        typical = ""
        if scored:
            flag = ' class="weak"' if flagged(f.atypicality) else ""
            typical = f"<td{flag}>{'-' if f.atypicality is None else _num(f.atypicality, 3)}</td>"
        rows.append(f"<tr><td>{_esc(f.name)}</td><td>{w} x {h}</td>"
                    f'<td><img class="frame" src="{_png_data_uri(f.image)}" alt="{_esc(f.name)}"></td>'
                    f'<td class="plate">{marked}</td><td>{_num(f.confidence, 3)}</td>{typical}</tr>')
    return "<table>" + "".join(rows) + "</table>"


def _anchor(index: int) -> str:
    return f"track-{index + 1}"  # not the track id: two folders may share one


def _track_section(index: int, report: TrackReport, provenance: Provenance) -> str:
    r = report.reading
    layout = f"{_esc(r.layout)}" if r.layout else "-"
    source = f"<p>folder <code>{_esc(report.source)}</code></p>" if report.source else ""
    # An analyst must see that the pixels read are not exactly the files' (converted to RGB, alpha
    # dropped) or that something in the folder was left out.
    notes = ("<p class=\"notes\">Input notes: " + "; ".join(_esc(n) for n in report.notes) + "</p>"
             if report.notes else "")
    return (f'<section id="{_anchor(index)}"><h2>{_esc(report.track_id)}</h2>{source}{notes}'
            f"<p>Reading: {_verdict(report, provenance.min_confidence)}, confidence {_confidence(r)} "
            f"(layout {layout}; {r.frames_used} frame{'s' if r.frames_used != 1 else ''} fused by "
            f"{_esc(provenance.fusion)})"
            + (f"; annotation {_truth_cell(report)}" if report.truth is not None else "") + "</p>"
            + _typicality(r) + _characters(r, report.illegible) + _frames(report) + "</section>")


def _provenance(p: Provenance) -> str:
    # The temperatures live in the model's JSON, not in the hashed weights: `ksrnet calibrate` changes
    # every confidence (and verdict) with the same sha256, so they are part of what produced the readings.
    models = "<br>".join(f"{_esc(m['model'])} ({_esc(m['kind'])}, sha256 {_esc(m['sha256'])}"
                         + (f"; temperatures {_esc(json.dumps(m['temperatures'], sort_keys=True))}"
                            if "temperatures" in m else "") + ")" for m in p.models)
    items = [("models", models), ("fusion", _esc(p.fusion)),
             ("frames", "all" if p.frames is None else f"the last {p.frames} (all of a shorter track)"),
             ("TTA views", _esc(", ".join(p.tta_views)) if p.tta_views else "none"),
             ("illegible below", "no threshold" if p.min_confidence is None else f"{p.min_confidence:g}"),
             ("software", _esc(", ".join(f"{k} {v}" for k, v in p.versions.items()))),
             ("created (UTC)", _esc(p.created_utc)), ("command", f"<code>{_esc(p.command)}</code>")]
    return "<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def render_html(reports: list[TrackReport], unreadable: list[UnreadableTrack], provenance: Provenance) -> str:
    read = [r for r in reports if not r.illegible]
    lines = [f"{len(reports) + len(unreadable)} tracks: {len(read)} read, {len(reports) - len(read)} illegible"
             + (f", {len(unreadable)} unreadable" if unreadable else "") + "."]
    with_truth = [r for r in reports if r.truth is not None]
    if with_truth:
        right = sum(r.reading.text == r.truth for r in with_truth)
        lines.append(f"Against the annotations: {right} of {len(with_truth)} readings right (illegible ones included "
                     "with their best guess).")
    raw = [r for r in reports if not r.reading.calibrated]
    if raw:
        lines.append(f"{len(raw)} of {len(reports)} confidences are NOT calibrated (marked uncalibrated): nothing "
                     f"was fitted for fusion {provenance.fusion} at their frame count, so they rank readings but are "
                     "not probabilities" + ("" if provenance.min_confidence is None else
                                            ", and the threshold below does not mean for them what it says")
                     + ". Fit a calibration with `ksrnet calibrate`.")
    atypical = [r for r in reports if r.reading.atypical]
    if atypical:
        lines.append(f"{len(atypical)} of {len(reports)} tracks are marked atypical input: they look less typical "
                     f"than {ATYPICAL:.0%} of the tracks the model was calibrated on, so their confidences were never "
                     "checked on input like them and may be too high. Calibrating on annotated tracks of this footage "
                     "(`ksrnet calibrate FOLDER`) refits both the confidences and this check.")
    explain = (
        "The confidence of a reading is the model's calibrated probability that all seven characters are right. "
        f"Character colours: green at least {SURE:g}, yellow at least {DOUBTFUL:g}, red below: a red character "
        "is not supported by the frames, whatever the reading shows there. Judge the whole reading first: "
        "inside a reading below the threshold no character is shown green, because there a character at 0.9 "
        "or more is wrong several times as often as in a confident reading (and on real frames such characters "
        "have been wrong; the probabilities were calibrated on synthetic tracks). Frames are shown with their own pixels, "
        "enlarged by the browser without smoothing; nothing is restored or sharpened. Each frame's own reading "
        "(its differing characters in red) shows whether the frames agree.")
    body = ("<h1>ksrnet reading report</h1>" + "".join(f"<p>{_esc(x)}</p>" for x in lines)
            + f"<p>{_esc(explain)}</p>" + _provenance(provenance)
            + _summary(reports, unreadable, provenance) + "".join(_track_section(i, r, provenance) for i, r in enumerate(reports)))
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>ksrnet reading report</title>'
            f"<style>{_STYLE}</style></head><body>{body}</body></html>\n")
