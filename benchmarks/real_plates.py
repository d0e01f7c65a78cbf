"""Real plates through the synthetic camera and degradations: is our renderer the gap to real footage?

Only four real LR frames were available to us, too few to say how a reader trained on synthetic
plates does on real ones. ../shared/real-samples/ also holds 26 real HR plate crops (rodosol_hr/,
pairs/: grey, red, white and yellow Brazilian plates, Mercosur plates, by day and under IR). This
puts each of them, in place of the rendered plate, into synthetic tracks (`generate_track(...,
plate_image=...)`: the plate's pixels replaced, the scene, camera, blur, tone, noise and codec the
same draws) and reads every such track beside its synthetic twin, the same track with our rendered
plate of the same text and layout. The two differ only in the plate's appearance (fonts, paint,
wear, the photo's own lighting), so the paired difference measures the renderer's realism for a
reader, apart from the degradations; the confidences on the real plates say whether a misread of
a real plate's glyphs still comes out sure.

Limits: the crops are display-rescaled figure excerpts (already resampled and compressed once),
cut loosely (some show a little car around the plate, all of which is stretched to the canonical
plate), and their labels were read from the images. 26 plates are few: the per-plate table shows
which plates carry the difference. Never train or tune on them.

Usage: python benchmarks/real_plates.py [--model parseq-tiny] [--draws 20] [--presets easy,medium,hard]
       [--json F] [--sheet F.png]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_readers import mcnemar_exact, read_in_batches, reader_of  # noqa: E402

from ksrnet.calibration import (  # noqa: E402
    character_calibration,
    confidence_and_correct,
    expected_calibration_error,
)
from ksrnet.metrics import CONFIDENT, GroundTruth, Reading, score  # noqa: E402
from ksrnet.plates import infer_layout  # noqa: E402
from ksrnet.synth.contact_sheet import frame_rows  # noqa: E402
from ksrnet.synth.dataset import as_canonical_plate, generate_track  # noqa: E402
from ksrnet.typicality import ATYPICAL, flagged  # noqa: E402

REAL_SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "real-samples"
HR_FOLDERS = ("rodosol_hr", "pairs")
REAL_PLATE_SEED = 20_261_128  # no training run or other benchmark draws this stream
FRAME_COUNTS = (1, 5)


def real_plates(root: Path = REAL_SAMPLES) -> list[tuple[str, str, np.ndarray]]:
    """(name, text, RGB image) of every HR crop whose file name holds a valid plate text."""
    out = []
    for folder in HR_FOLDERS:
        for path in sorted((root / folder).glob("*.png")):
            m = re.search(r"(?:^|_)([A-Z]{3}[0-9][A-Z0-9][0-9]{2})(?:_|\.)", path.name)
            if m and infer_layout(m.group(1)) is not None:
                rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
                out.append((f"{folder}/{path.stem}", m.group(1), rgb))
    return out


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def exposed_like(photo: np.ndarray, rendered: np.ndarray, low: float = 2, high: float = 98) -> np.ndarray:
    """The photo with one gain and offset on all channels so that its luma's `low` and `high`
    percentiles equal the rendered plate's: each photo was taken under its own light (some under IR
    at night, nearly black), which the degradations would otherwise add to the light they model.
    Hue, paint, glyphs and wear stay the photo's."""
    photo = as_canonical_plate(photo)
    p_lo, p_hi = np.percentile(_luma(photo), [low, high])
    r_lo, r_hi = np.percentile(_luma(rendered), [low, high])
    gain = (r_hi - r_lo) / max(float(p_hi - p_lo), 1.0)
    return np.clip((photo.astype(np.float32) - p_lo) * gain + r_lo, 0, 255).round().astype(np.uint8)


def twin_tracks(plate: int, text: str, image: np.ndarray, draws: int, preset: str) -> tuple[list, list]:
    """`draws` tracks of our rendered plate of `text`, and the same tracks with the real plate in
    them, exposed like the rendered one (exposed_like)."""
    layout = infer_layout(text)
    synthetic, real = [], []
    for k in range(draws):
        index = plate * 1000 + k
        twin = generate_track(REAL_PLATE_SEED, index, preset=preset, layout=layout, text=text)
        photo = exposed_like(image, twin.canonical_hr)
        mine = generate_track(REAL_PLATE_SEED, index, preset=preset, layout=layout, text=text, plate_image=photo)
        for out, t in ((synthetic, twin), (real, mine)):
            t.scene = t.trajectory = None
            out.append(t)
    return synthetic, real


CLEAN_MARGIN = 0.08  # of the plate's width, per side: inside the generator's crops (plate fills 80-95 %)


def with_margin(image: np.ndarray, margin: float = CLEAN_MARGIN) -> np.ndarray:
    """The plate image inside a mid-grey border of `margin` x its width on every side."""
    pad = int(round(margin * image.shape[1]))
    return cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(90, 90, 90))


def clean_reads(reader, plates: list) -> dict[str, list[dict]]:
    """Each real crop and its twin's rendered plate read one frame each, with no synthetic camera
    and no degradation, so a misread is the plate's look (glyphs, paint, the photo's own light and
    blur), never our degradations: as cropped (the twin's plate fills its image), and inside a
    grey margin, as the generator's crops hold a plate (the readers never saw a plate that fills its
    frame: ksrnet.recrop)."""
    renders = [generate_track(REAL_PLATE_SEED, j * 1000, preset="easy", layout=infer_layout(text),
                              text=text).canonical_hr for j, (_, text, _) in enumerate(plates)]
    out = {}
    for variant, frame in (("as cropped", lambda im: im), ("with margin", with_margin)):
        tracks = []
        for (name, _, image), rendered in zip(plates, renders):
            tracks += [SimpleNamespace(track_id=f"{name}|real", lr=[frame(image)]),
                       SimpleNamespace(track_id=f"{name}|twin", lr=[frame(rendered)])]
        read = reader.read(tracks, ["product"])["product"]
        out[variant] = [{"plate": name, "text": text, "real": read[2 * j].text,
                         "real_confidence": read[2 * j].confidence, "twin": read[2 * j + 1].text,
                         "twin_confidence": read[2 * j + 1].confidence} for j, (name, text, _) in enumerate(plates)]
    return out


def print_clean_reads(variant: str, rows: list[dict]) -> None:
    real = sum(r["real"] == r["text"] for r in rows)
    twin = sum(r["twin"] == r["text"] for r in rows)
    print(f"**clean plates {variant}, one frame each (no camera, no degradation): real {real} of {len(rows)} "
          f"right, twin {twin} of {len(rows)}**\n")
    wrong = [r for r in rows if r["real"] != r["text"] or r["twin"] != r["text"]]
    if wrong:
        print("| plate | truth | real read (confidence) | twin read (confidence) |")
        print("| --- | --- | --- | --- |")
        for r in wrong:
            print(f"| {r['plate']} | {r['text']} | {r['real']} ({r['real_confidence']:.2f}) "
                  f"| {r['twin']} ({r['twin_confidence']:.2f}) |")
    print()


def figures(tracks: list, readings: list) -> dict:
    """Whole-reading and character figures of one reader's readings of `tracks` (track ids unique)."""
    truths = [GroundTruth.of_track(t) for t in tracks]
    by_id = {r.track_id: r for r in readings}
    scores = score(truths, {k: Reading(k, r.text, r.confidence) for k, r in by_id.items()}).overall
    conf, right = confidence_and_correct(truths, by_id)
    chars = character_calibration(truths, by_id)
    return {
        "tracks": scores.tracks, "rr": scores.recognition_rate, "cer": scores.cer,
        "ece": expected_calibration_error(conf, right), "mean_confidence": float(np.mean(conf)),
        "sure_readings": sum(c >= CONFIDENT for c in conf), "sure_wrong": scores.confident_wrong,
        "sure_characters": chars["sure_characters"], "sure_characters_wrong": chars["sure_wrong"],
        "correct": right, "confidence": conf, "readings": [r.text for r in readings],
        "atypicality": [r.atypicality for r in readings],
    }


def auroc(negatives: list[float], positives: list[float]) -> float:
    """P(a positive scores above a negative), ties counting half: how well a score tells them apart."""
    neg, pos = np.asarray(negatives, float)[None, :], np.asarray(positives, float)[:, None]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


def typicality_row(preset: str, frames: int, twin: dict, mine: dict) -> str | None:
    """One row of the typicality table (ksrnet.typicality): how many tracks are flagged, how well the
    atypicality tells real plates from their twins, and how the real ones read flagged and not."""
    if any(a is None for a in twin["atypicality"] + mine["atypicality"]):
        return None  # the model has no typicality reference
    flag_twin = [flagged(a) for a in twin["atypicality"]]
    flag_real = [flagged(a) for a in mine["atypicality"]]
    cells = []
    for group in (False, True):
        sel = [i for i, f in enumerate(flag_real) if f == group]
        right = sum(mine["correct"][i] for i in sel)
        sure = [i for i in sel if mine["confidence"][i] >= CONFIDENT]
        cells.append((len(sel), right, len(sure), sum(not mine["correct"][i] for i in sure)))
    (n0, r0, s0, w0), (n1, r1, s1, w1) = cells
    return (f"| {preset} | {frames} | {pct(np.mean(flag_twin))} / {pct(np.mean(flag_real))} "
            f"| {auroc(twin['atypicality'], mine['atypicality']):.3f} "
            f"| {r0} of {n0} / {r1} of {n1} | {w0} of {s0} / {w1} of {s1} |")


def confusions(tracks: list, readings: list) -> dict[str, int]:
    """How often each true character was read as another ("M>H"), over same-length readings."""
    out: dict[str, int] = {}
    for r, t in zip(readings, tracks):
        if len(r.text) == len(t.text):
            for a, b in zip(t.text, r.text):
                if a != b:
                    out[f"{a}>{b}"] = out.get(f"{a}>{b}", 0) + 1
    return out


def contact_sheet(pairs: list[tuple[str, object, object]], path: Path, scale: int = 4) -> None:
    """Rows of (label, synthetic twin, real-plate track): each track's five frames, enlarged."""
    rows = [(f"{label} - {kind}", list(t.lr)) for label, synthetic, real in pairs
            for kind, t in (("synthetic twin", synthetic), ("real plate", real))]
    path.parent.mkdir(parents=True, exist_ok=True)
    # 256 colours: a tenth of the bytes of a true-colour PNG of noisy frames, for the README.
    Image.fromarray(frame_rows(rows, scale)).quantize(256, Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        path, optimize=True)


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="parseq-tiny",
                    help="anything `ksrnet predict --model` takes (a recognizer), or an ensemble as "
                         "compare_readers.py names one (vote:A+B)")
    ap.add_argument("--draws", type=int, default=20, help="tracks per plate and preset (default 20)")
    ap.add_argument("--presets", default="easy,medium,hard")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="also write every figure here")
    ap.add_argument("--sheet", type=Path, default=None,
                    help="PNG of one track of every third plate, twin above real, at the middle preset given")
    args = ap.parse_args()
    if args.draws < 1:
        ap.error("--draws must be at least 1")
    torch.set_num_threads(args.threads)
    plates = real_plates()
    if not plates:
        sys.exit(f"no labelled HR plate crops under {REAL_SAMPLES} ({', '.join(HR_FOLDERS)})")
    reader = reader_of(args.model)
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    print(f"{len(plates)} real plates x {args.draws} draws x {len(presets)} presets, model {args.model}\n")
    clean = clean_reads(reader, plates)
    for variant, rows in clean.items():
        print_clean_reads(variant, rows)
    out = {"model": args.model, "draws": args.draws, "seed": REAL_PLATE_SEED,
           "plates": [name for name, _, _ in plates], "clean": clean, "results": {}}
    summary = ["| preset | F | twin RR % | real RR % | only twin / only real right (p) | CER twin / real % "
               "| ECE twin / real | readings >= 0.9: wrong of read, twin / real | characters >= 0.9 wrong, twin / real |",
               "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    typicality = ["| preset | F | flagged atypical, twin / real % | AUROC, real over twin "
                  "| real read right: not flagged / flagged | real readings >= 0.9 wrong of read: not flagged / flagged |",
                  "| --- | --- | --- | --- | --- | --- |"]
    per_plate, swaps = {}, {"twin": {}, "real": {}}
    for preset in presets:
        start = time.perf_counter()
        synthetic, real, owner = [], [], []
        for j, (name, text, image) in enumerate(plates):
            s, r = twin_tracks(j, text, image, args.draws, preset)
            synthetic += s
            real += r
            owner += [j] * len(s)
        if args.sheet and preset == presets[len(presets) // 2]:
            contact_sheet([(f"{plates[j][0].split('/')[-1]}, {preset}", synthetic[j * args.draws], real[j * args.draws])
                           for j in range(0, len(plates), 3)], args.sheet)
        for frames in FRAME_COUNTS:
            twin_read, real_read = (read_in_batches(reader, t, "product", frames) for t in (synthetic, real))
            twin, mine = figures(synthetic, twin_read), figures(real, real_read)
            if frames == max(FRAME_COUNTS):
                for kind, tracks, read in (("twin", synthetic, twin_read), ("real", real, real_read)):
                    for k, n in confusions(tracks, read).items():
                        swaps[kind][k] = swaps[kind].get(k, 0) + n
            only_twin = sum(a and not b for a, b in zip(twin["correct"], mine["correct"]))
            only_real = sum(b and not a for a, b in zip(twin["correct"], mine["correct"]))
            out["results"][f"{preset}@{frames}"] = {"twin": twin, "real": mine}
            summary.append(
                f"| {preset} | {frames} | {pct(twin['rr'])} | {pct(mine['rr'])} | {only_twin} / {only_real} "
                f"({mcnemar_exact(only_twin, only_real):.1g}) | {pct(twin['cer'])} / {pct(mine['cer'])} "
                f"| {pct(twin['ece'])} / {pct(mine['ece'])} "
                f"| {twin['sure_wrong']} of {twin['sure_readings']} / {mine['sure_wrong']} of {mine['sure_readings']} "
                f"| {twin['sure_characters_wrong']} of {twin['sure_characters']} / "
                f"{mine['sure_characters_wrong']} of {mine['sure_characters']} |")
            row = typicality_row(preset, frames, twin, mine)
            if row:
                typicality.append(row)
            if frames == max(FRAME_COUNTS):
                for j, (name, _, _) in enumerate(plates):
                    sel = [i for i, o in enumerate(owner) if o == j]
                    per_plate.setdefault(name, {})[preset] = (
                        np.mean([twin["correct"][i] for i in sel]), np.mean([mine["correct"][i] for i in sel]),
                        sum(mine["confidence"][i] >= CONFIDENT and not mine["correct"][i] for i in sel))
        print(f"{preset}: {2 * len(synthetic)} tracks generated and read at F={FRAME_COUNTS} "
              f"in {time.perf_counter() - start:.0f} s", flush=True)
    print("\n**product fusion; twin = our rendered plate, real = the photographed plate, same tracks otherwise**\n")
    print("\n".join(summary))
    if len(typicality) > 2:
        print(f"\n**typicality (ksrnet.typicality): tracks flagged atypical (less typical than {ATYPICAL:.0%} of the "
              "model's calibration tracks)**\n")
        print("\n".join(typicality))
    print(f"\n**per plate, F={max(FRAME_COUNTS)}: twin RR % / real RR % (real readings wrong at >= 0.9)**\n")
    print("| plate | " + " | ".join(presets) + " |")
    print("| --- |" + " --- |" * len(presets))
    for name, by_preset in per_plate.items():
        cells = [f"{pct(a)} / {pct(b)}" + (f" ({w})" if w else "") for a, b, w in (by_preset[p] for p in presets)]
        print(f"| {name} | " + " | ".join(cells) + " |")
    top = sorted(swaps["real"].items(), key=lambda kv: -kv[1])[:12]
    print(f"\n**the commonest character swaps on real plates, F={max(FRAME_COUNTS)}, all presets: "
          "real count (twin count)**\n")
    print(", ".join(f"{k} {n} ({swaps['twin'].get(k, 0)})" for k, n in top))
    out["confusions"] = swaps
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
