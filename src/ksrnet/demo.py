"""`make demo`: synthesise a few hard tracks, read them with the shipped model, score the readings."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

DEMO_TRACKS = 12
DEMO_SEED = 2026
REPORT_MIN_CONFIDENCE = 0.9  # the report's ILLEGIBLE verdict, as `ksrnet report` has it by default


def run_demo(out: Path, console: Console, *, num_tracks: int = DEMO_TRACKS, preset: str = "hard") -> dict:
    from ksrnet.ensemble_calibration import file_sha256
    from ksrnet.infer import Reader
    from ksrnet.metrics import GroundTruth, Reading, score
    from ksrnet.submission import Prediction, write_predictions
    from ksrnet.synth.dataset import write_synthetic_dataset
    from ksrnet.tracks import iter_tracks
    from ksrnet.report import Provenance, build_reports, render_html
    from ksrnet.atomic_files import atomic_write
    from ksrnet.typicality import ATYPICAL, load_for
    from ksrnet.weights import DEFAULT_MODEL, ModelLoadError, load_model, resolve

    out = Path(out)
    tracks_dir = out / "tracks"
    console.print(f"1/3 synthesising {num_tracks} '{preset}' tracks (seed {DEMO_SEED}) into {tracks_dir}")
    write_synthetic_dataset(tracks_dir, num_tracks, seed=DEMO_SEED, preset=preset, with_hr=False)
    tracks = list(iter_tracks(tracks_dir, with_hr=False))
    truths = [GroundTruth.of_track(t) for t in tracks]
    predictions_path = out / "predictions.txt"
    try:
        model, meta = load_model()
    except ModelLoadError as exc:
        console.print(f"[yellow]no model shipped yet ({exc}); writing empty readings[/yellow]")
        preds = [Prediction(t.track_id, "", 0.0) for t in tracks]
        write_predictions(preds, predictions_path)
        report = score(truths, {p.track_id: Reading(p.track_id, p.text, p.confidence) for p in preds})
        console.print(f"RR {100 * report.overall.recognition_rate:.1f}% (no model)")
        return report.as_dict()
    console.print(f"2/3 reading them with the shipped model ({meta['config']['embed_dim']}-dim PARSeq, "
                  "product fusion over 5 frames)")
    if meta.get("provenance"):
        console.print(f"    model: {meta['provenance']}")
    # The stored calibration and typicality reference, as predict applies them: what users get.
    reader = Reader(model, temperatures=meta.get("temperature"), typicality=load_for(resolve(DEFAULT_MODEL)))
    reports = build_reports(reader, tracks, "product", min_confidence=REPORT_MIN_CONFIDENCE)
    readings = [r.reading for r in reports]
    preds = [Prediction(r.track_id, r.text, r.confidence) for r in readings]
    write_predictions(preds, predictions_path)
    table = Table(title="demo readings")
    for col in ("track", "truth", "reading", "confidence", "least sure slot", "atypicality"):
        table.add_column(col)
    for t, r in zip(tracks, readings):
        ok = "[green]" if r.text == t.text else "[red]"
        slot = min(range(7), key=lambda i: r.char_probs[i])
        alts = ", ".join(f"{c} {p:.2f}" for c, p in r.alternatives[slot])
        typical = "-" if r.atypicality is None else f"{r.atypicality:.2f}" + (" [red]atypical[/]" if r.atypical else "")
        table.add_row(t.track_id, t.text, f"{ok}{r.text}[/]", f"{r.confidence:.4f}", f"#{slot + 1}: {alts}", typical)
    console.print(table)
    console.print("    atypicality: the share of the model's calibration tracks that look more typical than the track "
                  f"(flagged at {ATYPICAL}: its confidence was never checked on input like it)")
    report = score(truths, {p.track_id: Reading(p.track_id, p.text, p.confidence) for p in preds})
    o = report.overall
    gap = f"{100 * o.confidence_gap:.1f}" if o.confidence_gap is not None else "-"
    right = sum(r.text == t.text for t, r in zip(tracks, readings))
    console.print(f"3/3 scored: {right} of {len(tracks)} plates read whole, RR {100 * o.recognition_rate:.1f}%  "
                  f"CER {100 * o.cer:.1f}%  confidence gap {gap} points; "
                  f"predictions in {predictions_path}")
    report_path = out / "report.html"
    provenance = Provenance(models=[{"model": DEFAULT_MODEL, "kind": "parseq", "sha256": file_sha256(resolve(None)),
                                     "temperatures": dict(reader.temperatures)}],
                            fusion="product", frames=None, tta_views=None, min_confidence=REPORT_MIN_CONFIDENCE,
                            command=f"ksrnet demo --out {out}")
    atomic_write(report_path, lambda p: Path(p).write_text(render_html(reports, [], provenance), encoding="utf-8"))
    console.print(f"    the evidence behind each reading (frames, per-character probabilities): {report_path}")
    return report.as_dict()
