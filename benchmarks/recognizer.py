"""Accuracy of every late fusion at F=1/3/5 on a fixed synthetic test set, on the real LR samples,
and inference speed (CPU, or --device cuda). Prints markdown tables for benchmarks/RESULTS.md.

Usage: python benchmarks/recognizer.py [--model parseq-tiny] [--tracks 2000] [--preset hard]
The test tracks use a seed no training run uses (TEST_SEED), so they are never seen in training.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from ksrnet.calibration import character_calibration, confidence_and_correct, expected_calibration_error, risk_coverage
from ksrnet.infer import Reader
from ksrnet.metrics import GroundTruth, Reading, score
from ksrnet.models.baselines import FUSIONS
from ksrnet.synth.dataset import generate_track
from ksrnet.tracks import Track
from ksrnet.weights import load_model

TEST_SEED = 20_261_126
REAL_LR = Path(__file__).resolve().parents[2] / "shared" / "real-samples" / "lrlpr26_frames"


def synthetic_tracks(n: int, preset: str) -> list:
    tracks = []
    for i in range(n):
        t = generate_track(TEST_SEED, i, preset=preset)
        t.scene = t.trajectory = None
        tracks.append(t)
    return tracks


def real_tracks(folder: Path) -> list[Track]:
    """Single-frame tracks from files named like ..._lr-005_AVL5215_36x20.png (text before the size)."""
    out = []
    for path in sorted(folder.glob("*lr*.png")):
        m = re.search(r"_([A-Z0-9]{7})_\d+x\d+", path.name)
        if m:
            rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
            out.append(Track(track_id=path.stem, lr=[rgb], text=m.group(1)))
    return out


def evaluate(reader: Reader, tracks, fusions, counts, batch=64) -> tuple[dict, dict]:
    """Scores per (rule, F), and per F every track's per-frame logits (what reader.read fuses; kept
    so frame_agreement needs no second pass)."""
    truths = [GroundTruth.of_track(t) for t in tracks]
    results, logits_at = {}, {}
    for c in counts:
        full = {f: {} for f in fusions}  # TrackReadings, with their per-character probabilities
        logits_at[c] = []
        for s in range(0, len(tracks), batch):
            chunk = tracks[s:s + batch]
            logits = reader.track_logits(chunk, c)
            logits_at[c] += logits
            read = reader.readings_from_logits(chunk, logits, fusions, frames_used=reader.frames_used(chunk, c))
            for rule, rs in read.items():
                full[rule].update({r.track_id: r for r in rs})
        for rule in fusions:
            readings = {k: Reading(k, r.text, r.confidence) for k, r in full[rule].items()}
            conf, right = confidence_and_correct(truths, readings)
            results[(rule, c)] = (score(truths, readings), expected_calibration_error(conf, right),
                                  risk_coverage(conf, right), character_calibration(truths, full[rule]))
    return results, logits_at


def frame_agreement(reader: Reader, tracks, logits: list, rule: str = "product") -> list[dict]:
    """The fused reading's characters grouped by how many of the track's frames, each read alone,
    give that character in that slot: is a character the frames disagree on still as right as its
    probability says? One row per count: characters, accuracy, mean probability, and those read at
    >= 0.9 with how often they are wrong. logits: each track's per-frame logits (evaluate's)."""
    groups: dict[int, list[tuple[float, bool]]] = {}
    fused_all = reader.readings_from_logits(tracks, logits, [rule])[rule]
    for t, (chars, layouts), fused in zip(tracks, logits, fused_all):
        frames = [(chars[f:f + 1], layouts[f:f + 1]) for f in range(chars.shape[0])]
        alone = [a.text for a in reader.readings_from_logits([t] * len(frames), frames, [rule])[rule]]
        for i, (c, p) in enumerate(zip(fused.text, fused.char_probs)):
            k = sum(len(a) > i and a[i] == c for a in alone)
            groups.setdefault(k, []).append((p, c == t.text[i]))
    rows = []
    for k in sorted(groups):
        p, right = (np.array(x, dtype=float) for x in zip(*groups[k]))
        sure = p >= 0.9
        rows.append({"frames_agreeing": k, "characters": int(p.size), "accuracy": float(right.mean()),
                     "mean_probability": float(p.mean()), "sure_characters": int(sure.sum()),
                     "sure_error": float(1 - right[sure].mean()) if sure.any() else None})
    return rows


@functools.lru_cache(maxsize=1)
def _faces_by_file() -> dict:
    from ksrnet.synth.fonts import plate_fonts

    return {Path(f.path).name: f for f in plate_fonts()}


def face_of(typeface: str | None):
    """The FontFace a SynthTrack.typeface names (its file name, "@weight" dropped); None if unknown."""
    return _faces_by_file().get((typeface or "").partition("@")[0])


def face_kind(face) -> str:
    """"our plate faces" (drawn after the real plates' faces) or "<source> faces" (package, user...)."""
    if face is None:
        return "unknown faces"
    return "our plate faces" if face.source == "builtin" else f"{face.source} faces"


def typeface_rows(reader: Reader, tracks, logits_at: dict, rule: str = "product") -> list[dict]:
    """RR by the face each plate is printed in (SynthTrack.typeface), from evaluate's logits: our
    two plate faces (drawn after the real plates' faces) together, the package faces together, then
    each family. The real plates' faces are not free, so the renderer prints most plates in package
    faces, whose look-alikes (6/8, D/O) differ from the plates' own."""
    right = {c: [r.text == t.text for r, t in zip(reader.readings_from_logits(tracks, logits_at[c], [rule])[rule], tracks)]
             for c in sorted(logits_at)}
    groups: dict[str, list[int]] = {}
    for i, t in enumerate(tracks):
        face = face_of(t.typeface)
        if face is None:
            continue
        groups.setdefault(face_kind(face), []).append(i)
        groups.setdefault(f"{face.family} ({face.source})", []).append(i)
    rows = []
    for name, members in sorted(groups.items(), key=lambda kv: (kv[0].endswith(")"), -len(kv[1]))):
        rows.append({"typeface": name, "tracks": len(members),
                     **{f"rr@{c}": float(np.mean([right[c][i] for i in members])) for c in right}})
    return rows


def speed(reader: Reader, tracks, batch: int, repeats: int = 3) -> float:
    reader.read(tracks[:batch], ["product"])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for s in range(0, len(tracks), batch):
            reader.read(tracks[s:s + batch], ["product"])
        best = min(best, time.perf_counter() - start)
    return len(tracks) / best


def table(results: dict, title: str) -> str:
    lines = [f"**{title}**", "",
             "| fusion | F | RR % | CER % | conf gap (pts) | ECE (pts) | wrong with conf >= 0.9 | char ECE (pts) "
             "| chars >= 0.9: share / wrong % |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (rule, c), (r, ece, _, chars) in results.items():
        o = r.overall
        gap = f"{100 * o.confidence_gap:.1f}" if o.confidence_gap is not None else "-"
        sure = (f"{100 * chars['sure_share']:.1f} / {100 * chars['sure_error']:.2f}"
                if chars["sure_error"] is not None else "-")
        lines.append(f"| {rule} | {c} | {100 * o.recognition_rate:.2f} | {100 * o.cer:.2f} | {gap} | {100 * ece:.1f} "
                     f"| {o.confident_wrong} | {100 * chars['ece']:.2f} | {sure} |")
    return "\n".join(lines)


def risk_table(rows: list[dict], title: str) -> str:
    lines = [f"**{title}**", "", "| min confidence | coverage % | error among read % |", "| --- | --- | --- |"]
    for r in rows:
        risk = f"{100 * r['risk']:.1f}" if r["risk"] is not None else "-"
        lines.append(f"| {r['threshold']:.2f} | {100 * r['coverage']:.1f} | {risk} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=None)
    ap.add_argument("--tracks", type=int, default=2000)
    ap.add_argument("--preset", default="hard")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (the speed figures say which)")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers as JSON here")
    ap.add_argument("--no-frame-agreement", action="store_true",
                    help="skip the characters-by-frame-agreement table (each frame fused alone once more)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, meta = load_model(args.model)
    temperatures = meta.get("temperature") or {}
    reader = Reader(model, temperatures=temperatures, device=args.device)
    print(f"calibration temperatures: {temperatures or 'none (raw confidences)'}")
    start = time.perf_counter()
    tracks = synthetic_tracks(args.tracks, args.preset)
    print(f"generated {len(tracks)} '{args.preset}' tracks (seed {TEST_SEED}) in {time.perf_counter() - start:.0f} s")
    synth, synth_logits = evaluate(reader, tracks, list(FUSIONS), [1, 3, 5])
    print(table(synth, f"synthetic {args.preset}, {len(tracks)} tracks"))
    p1 = synth[("product", 1)][0].overall.recognition_rate
    p5 = synth[("product", 5)][0].overall.recognition_rate
    print(f"\nF=5 product error / F=1 error = {(1 - p5) / max(1e-9, 1 - p1):.3f}\n")
    print(risk_table(synth[("product", 5)][2], "abstention (--min-confidence), product F=5"))
    print("\n**characters read at >= 0.9: how often wrong, by the whole reading's confidence (product)**\n")
    bands = synth[("product", 5)][3]["sure_error_by_reading"]
    print("| F | " + " | ".join(f"reading {b['from']:.1f}-{min(b['to'], 1.0):.1f}" for b in bands) + " |")
    print("| --- |" + " --- |" * len(bands))
    for c in (1, 3, 5):
        cells = [f"{100 * b['sure_error']:.2f} % of {b['sure_characters']}" if b["sure_error"] is not None else "-"
                 for b in synth[("product", c)][3]["sure_error_by_reading"]]
        print(f"| {c} | " + " | ".join(cells) + " |")
    by_face = typeface_rows(reader, tracks, synth_logits)
    print("\n**product RR by the face the plate is printed in**\n")
    print("| typeface | tracks | " + " | ".join(f"F={c} RR %" for c in sorted(synth_logits)) + " |")
    print("| --- | --- |" + " --- |" * len(synth_logits))
    for row in by_face:
        print(f"| {row['typeface']} | {row['tracks']} | "
              + " | ".join(f"{100 * row[f'rr@{c}']:.1f}" for c in sorted(synth_logits)) + " |")
    agreement = [] if args.no_frame_agreement else frame_agreement(reader, tracks, synth_logits[5])
    if agreement:
        print("\n**characters of the product reading at F=5, by how many frames read them alone**\n")
        print("| frames agreeing | characters | right % | mean probability % | read at >= 0.9: count / wrong % |")
        print("| --- | --- | --- | --- | --- |")
    for a in agreement:
        sure = f"{a['sure_characters']} / {100 * a['sure_error']:.2f}" if a["sure_error"] is not None else "0 / -"
        print(f"| {a['frames_agreeing']} of 5 | {a['characters']} | {100 * a['accuracy']:.1f} "
              f"| {100 * a['mean_probability']:.1f} | {sure} |")
    out = {"temperatures": temperatures, "frame_agreement": agreement, "by_typeface": by_face,
           "synthetic": {f"{k[0]}@{k[1]}": v[0].as_dict() | {"ece": v[1], "risk_coverage": v[2],
                                                             "character_calibration": v[3]}
                         for k, v in synth.items()}}
    reals = real_tracks(REAL_LR) if REAL_LR.is_dir() else []
    if reals:
        real, _ = evaluate(reader, reals, ["single"], [1])
        r = real[("single", 1)][0]
        print(f"\nreal LRLPR-26 LR frames ({len(reals)}, single frame): RR {100 * r.overall.recognition_rate:.1f}% "
              f"CER {100 * r.overall.cer:.1f}%")
        for t in reals:
            got = reader.read([t], ["single"])["single"][0]
            print(f"  {t.track_id}: truth {t.text} read {got.text} conf {got.confidence:.3f}")
        out["real_single_frame"] = r.as_dict()
    for batch in (1, 64):
        n = min(len(tracks), 256 if batch > 1 else 64)
        tps = speed(reader, tracks[:n], batch)
        where = f"{args.threads} threads" if args.device == "cpu" else args.device
        print(f"speed, batch {batch} tracks x 5 frames, {where}: {tps:.1f} tracks/s")
        out[f"tracks_per_s_batch{batch}"] = tps
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
