"""CPU time of one KSR-Net training sample, in one process: generating the synthetic track, then
turning it into training tensors (frames, flows, the SR target warped onto the reference grid).

On the lent GPU the data workers set the training's pace (benchmarks/RESULTS.md), so a KSR-Net run
gets as many steps as its workers make samples. This counts process CPU time per track for each
part, alternating the SR target's warp in float32 (what ships) and float64 (before session 22)
over the same tracks, and says how far the two targets and masks differ.

Usage: python benchmarks/ksr_sample_cost.py [--tracks 300] [--rounds 3] [--lr-size 20x48]
"""

from __future__ import annotations

import argparse
import time

import cv2
import torch

from ksrnet import ksr_targets
from ksrnet.synth.dataset import generate_track

SEED = 91_122  # no training run draws this stream


def per_track_ms(fn, items) -> tuple[float, list]:
    start = time.process_time()
    out = [fn(x) for x in items]
    return 1000 * (time.process_time() - start) / len(items), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracks", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3, help="alternating float32 / float64 rounds")
    ap.add_argument("--lr-size", default="20x48", help="the model's LR grid, HxW (configs: lr_size)")
    ap.add_argument("--upscale", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(1)  # as in a data worker
    cv2.setNumThreads(1)
    lr_size = tuple(int(v) for v in args.lr_size.lower().split("x"))
    for i in range(20):  # fill the glyph and font caches first
        ksr_targets.track_sample(generate_track(SEED + 1, i, preset="mix"), lr_size, args.upscale)
    gen_ms, tracks = per_track_ms(lambda i: generate_track(SEED, i, preset="mix"), range(args.tracks))
    print(f"generate_track: {gen_ms:.2f} ms per track ({args.tracks} mix tracks)")
    outputs = {}
    for r in range(args.rounds):
        for dtype in (torch.float32, torch.float64):
            ksr_targets.WARP_DTYPE = dtype
            ms, outputs[dtype] = per_track_ms(lambda t: ksr_targets.track_sample(t, lr_size, args.upscale), tracks)
            print(f"round {r + 1}: track_sample with the warp in {str(dtype).split('.')[-1]}: {ms:.2f} ms per track")
    ksr_targets.WARP_DTYPE = torch.float32
    a, b = outputs[torch.float32], outputs[torch.float64]
    target = max(float((x["sr_target"] - y["sr_target"]).abs().max()) for x, y in zip(a, b))
    masks = sum(int((x["sr_mask"] != y["sr_mask"]).sum()) for x, y in zip(a, b))
    pixels = sum(x["sr_mask"].numel() for x in a)
    print(f"float32 against float64: largest target difference {target:.2e} (targets in [-1, 1]); "
          f"mask pixels that differ: {masks} of {pixels}")


if __name__ == "__main__":
    main()
