"""How does reading depend on how tightly the frames are cropped around the plate?

The generator's crops hold the plate with a margin (it fills 80-95 % of the crop's width), like
the LRLPR-26 crops we have seen. A detector with tight boxes, or an analyst cropping by hand, gives
tighter crops, or cuts into the plate. This reads the same synthetic tracks (the hard test seed)
as generated and re-cropped around each frame's plate (`ksrnet.recrop.plate_box_crop`, the plate
corners the generator knows) with each margin given, a fraction of the plate's width per side
(0 = the plate's own box, negative cuts into it), and reports RR, CER and the wrong readings at
>= 0.9 for each, at F=1 and F=5 (product fusion, the model's calibration). With --pad-margin, the
reader pads every frame first, as `ksrnet predict --pad-margin` does.

Usage: python benchmarks/crop_margin.py [--model parseq-tiny] [--tracks 1000] [--preset hard]
       [--margins 0.08,0.04,0.02,0,-0.02,-0.04] [--pad-margin 0.06] [--json F]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_readers import read_in_batches  # noqa: E402

from ksrnet.cli_readers import make_reader  # noqa: E402
from ksrnet.metrics import GroundTruth, Reading, score  # noqa: E402
from ksrnet.recrop import plate_box_crop  # noqa: E402
from ksrnet.synth.dataset import generate_track  # noqa: E402

TEST_SEED = 20_261_126  # the hard test set of benchmarks/recognizer.py
FRAME_COUNTS = (1, 5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="parseq-tiny", help="anything `ksrnet predict --model` takes (a recognizer)")
    ap.add_argument("--tracks", type=int, default=1000)
    ap.add_argument("--preset", default="hard")
    ap.add_argument("--margins", default="0.08,0.04,0.02,0,-0.02,-0.04",
                    help="comma-separated margins, fractions of the plate's width per side")
    ap.add_argument("--pad-margin", type=float, default=0.0,
                    help="pad every frame by this share of its width per side before reading (ksrnet.recrop.pad_frame)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.tracks < 1:
        ap.error("--tracks must be at least 1")
    try:
        margins = [float(m) for m in args.margins.split(",") if m.strip()]
    except ValueError:
        ap.error(f"--margins must be numbers, got {args.margins!r}")
    torch.set_num_threads(args.threads)
    if not 0 <= args.pad_margin <= 0.5:
        ap.error("--pad-margin must be in [0, 0.5]")
    reader = make_reader(args.model, "cpu", "nar")[0]
    reader.pad_margin = args.pad_margin
    start = time.perf_counter()
    tracks = [generate_track(TEST_SEED, i, preset=args.preset) for i in range(args.tracks)]
    fills = [float(np.ptp(q[:, 0])) / f.shape[1] for t in tracks for f, q in zip(t.lr, t.corners)]
    print(f"{args.tracks} {args.preset} tracks (seed {TEST_SEED}), model {args.model}, pad margin "
          f"{args.pad_margin}; the plate fills "
          f"{np.percentile(fills, 5):.2f} / {np.median(fills):.2f} / {np.percentile(fills, 95):.2f} of the "
          "generated crops' width (p5 / median / p95)\n")
    truths = [GroundTruth.of_track(t) for t in tracks]
    rows, out = [], {"model": args.model, "tracks": args.tracks, "preset": args.preset, "seed": TEST_SEED, "rows": []}
    for margin in [None] + margins:
        cropped = [SimpleNamespace(track_id=t.track_id, lr=[f if margin is None else plate_box_crop(f, q, margin)
                                                             for f, q in zip(t.lr, t.corners)]) for t in tracks]
        cells, row = [], {"margin": margin}
        for frames in FRAME_COUNTS:
            read = read_in_batches(reader, cropped, "product", frames)
            s = score(truths, {r.track_id: Reading(r.track_id, r.text, r.confidence) for r in read}).overall
            row[f"F{frames}"] = {"rr": s.recognition_rate, "cer": s.cer, "sure_wrong": s.confident_wrong}
            cells.append(f"{100 * s.recognition_rate:.1f} | {100 * s.cer:.1f} | {s.confident_wrong}")
        label = "as generated" if margin is None else f"plate box {100 * margin:+.0f} %"
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
        out["rows"].append(row)
    head = " | ".join(f"F={f}: RR % | CER % | wrong at >= 0.9" for f in FRAME_COUNTS)
    print(f"| crop | {head} |")
    print("| --- |" + " --- | --- | --- |" * len(FRAME_COUNTS))
    print("\n".join(rows))
    print(f"\n({time.perf_counter() - start:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
