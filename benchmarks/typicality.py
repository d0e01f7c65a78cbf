"""What the typicality check flags (ksrnet.typicality), on synthetic tracks like those the model was
calibrated on, on inputs no plate shows, and on the real LRLPR-26 frames we have.

A track is flagged atypical when it looks less typical than 99 % of the model's calibration tracks
(its reference, fitted by `ksrnet calibrate`). So on new tracks drawn like the calibration tracks
about 1 % should be flagged; on footage unlike them many more. benchmarks/real_plates.py measures
the other side: real plate photographs inside otherwise identical synthetic tracks.

Usage: python benchmarks/typicality.py [--model parseq-tiny] [--tracks 2000] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_readers import read_in_batches  # noqa: E402
from recognizer import REAL_LR, real_tracks, synthetic_tracks  # noqa: E402

from ksrnet.cli_readers import make_reader  # noqa: E402
from ksrnet.metrics import CONFIDENT  # noqa: E402
from ksrnet.synth.dataset import generate_track  # noqa: E402
from ksrnet.tracks import Track  # noqa: E402
from ksrnet.typicality import ATYPICAL  # noqa: E402


def split_row(label: str, tracks: list, readings: list) -> str:
    """Share flagged, and RR and sure mistakes of the tracks not flagged and of the flagged ones."""
    cells = []
    for flagged in (False, True):
        sel = [(t, r) for t, r in zip(tracks, readings) if r.atypical == flagged]
        right = sum(r.text == t.text for t, r in sel)
        sure = [(t, r) for t, r in sel if r.confidence >= CONFIDENT]
        wrong = sum(r.text != t.text for t, r in sure)
        cells.append(f"{right} of {len(sel)} / {wrong} of {len(sure)}")
    share = np.mean([r.atypical for r in readings])
    return f"| {label} | {100 * share:.2f} | {cells[0]} | {cells[1]} |"


def illegible_tracks() -> list[Track]:
    """Inputs no plate shows: as tests/test_shipped_model.py checks for confidence."""
    rng = np.random.default_rng(5)
    tracks = [Track("grey", [np.full((17, 48, 3), 128, np.uint8)] * 5),
              Track("black", [np.zeros((19, 44, 3), np.uint8)] * 5),
              Track("noise", [rng.integers(0, 256, (17, 48, 3), dtype=np.uint8) for _ in range(5)])]
    for i in range(4):
        t = generate_track(77, i, preset="easy")
        tracks.append(Track(f"blurred{i}", [cv2.GaussianBlur(f, (0, 0), 6.0) for f in t.lr]))
    return tracks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="anything `ksrnet predict --model` takes (one recognizer)")
    ap.add_argument("--tracks", type=int, default=2000, help="synthetic hard test tracks (easy: a quarter)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    reader = make_reader(args.model, "cpu", "nar")[0]
    if reader.typicality is None:
        sys.exit("this model has no typicality reference: fit one with `ksrnet calibrate --model M`")
    print(f"reference: {reader.typicality.source}; flagged at atypicality >= {ATYPICAL}\n")
    print("| tracks (product fusion) | flagged % | not flagged: right of tracks / wrong of read at >= 0.9 "
          "| flagged: right of tracks / wrong of read at >= 0.9 |")
    print("| --- | --- | --- | --- |")
    start = time.perf_counter()
    for preset, n in (("hard", args.tracks), ("easy", max(1, args.tracks // 4))):
        tracks = synthetic_tracks(n, preset)
        for frames in (1, 3, 5):
            read = read_in_batches(reader, tracks, "product", frames)
            print(split_row(f"synthetic {preset} test set, {n}, F={frames}", tracks, read), flush=True)
        if preset == "hard":
            reader.pad_margin = 0.06
            print(split_row("the same, F=5, read with --pad-margin 0.06", tracks,
                            read_in_batches(reader, tracks, "product", 5)))
            reader.pad_margin = 0.0
    print(f"\n({time.perf_counter() - start:.0f} s)\n")
    print("| input | atypicality | reading | confidence |")
    print("| --- | --- | --- | --- |")
    for t, r in zip(illegible := illegible_tracks(), read_in_batches(reader, illegible, "product", None)):
        print(f"| {t.track_id} | {r.atypicality:.3f} | {r.text} | {r.confidence:.3f} |")
    reals = real_tracks(REAL_LR) if REAL_LR.is_dir() else []
    for t, r in zip(reals, read_in_batches(reader, reals, "product", None)):
        print(f"| real LR frame {t.track_id} (truth {t.text}) | {r.atypicality:.3f} | {r.text} | {r.confidence:.3f} |")


if __name__ == "__main__":
    main()
