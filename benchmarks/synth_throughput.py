"""Tracks per second per core of on-the-fly synthetic generation (render + camera + degradations).

Usage: python benchmarks/synth_throughput.py [--tracks 300] [--preset mix] [--codec h264]
Runs in one process with OpenCV limited to one thread, so the figure is per core. Reports wall
time and the process's CPU time: on a loaded machine only the CPU figure measures the code.
Glyph distance fields and small-print bitmaps are cached per font, weight and size and fill over
the first ~1,500 tracks; `--warmup 2000` measures the steady state a long training run sees.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import cv2

from ksrnet.synth.dataset import generate_track


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tracks", type=int, default=300)
    ap.add_argument("--preset", default="mix")
    ap.add_argument("--codec", default=None, help="force none | jpeg | h264 | h264+jpeg (default: preset's draw)")
    ap.add_argument("--warmup", type=int, default=20, help="tracks generated before timing")
    ap.add_argument("--profile", action="store_true", help="print the 15 most expensive functions")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    for i in range(args.warmup):  # fonts, glyph caches and codec sessions warm up
        generate_track(1, i, preset=args.preset, codec=args.codec)
    profiler = cProfile.Profile() if args.profile else None
    start, cpu_start = time.perf_counter(), time.process_time()
    if profiler:
        profiler.enable()
    for i in range(args.tracks):
        generate_track(0, i, preset=args.preset, codec=args.codec)
    if profiler:
        profiler.disable()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    print(f"preset={args.preset} codec={args.codec or 'preset'} warmup={args.warmup}: "
          f"wall {args.tracks / elapsed:.1f} tracks/s ({1000 * elapsed / args.tracks:.2f} ms/track); "
          f"CPU {args.tracks / cpu:.1f} tracks/s per core ({1000 * cpu / args.tracks:.2f} ms/track)")
    if profiler:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(15)


if __name__ == "__main__":
    main()
