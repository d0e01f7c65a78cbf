"""Samples per second that the recognizer's training data pipeline delivers, per data worker.

On the lent H100 the data workers, not the GPU, set the training's pace (benchmarks/RESULTS.md,
"Stage Z"), so what one worker delivers decides how many steps a lease buys. This runs a config's
own pipeline (synthetic tracks, frame choice, re-cropping, echo, resize, collate, and the hand-over
from the worker process) through a DataLoader with `--workers` workers, skips the first batches
while the glyph caches fill, and times the next ones. `--float` makes the samples as they were
before session 21 (float32 in [-1, 1] in the worker, four times the bytes) for an A/B comparison.
Wall-clock rates swing by 10-30 % between runs on a shared machine; `--cpu-breakdown` instead
counts process CPU time per generated track in one process: generation, making the samples
(frame choice, re-crop, resize), collating, and moving each batch into shared memory (what a
worker's queue does with it), both ways, which is steadier.

Usage: python benchmarks/loader_throughput.py [--config configs/parseq-tiny-gpu-grow6b.yaml]
       [--workers 1] [--warmup 12] [--batches 24] [--float] [--seed 11]
       python benchmarks/loader_throughput.py --cpu-breakdown [--tracks 1000]
"""

from __future__ import annotations

import argparse
import time

import cv2
import torch
from torch.utils.data import DataLoader

from ksrnet.plates import LAYOUTS
from ksrnet.preprocess import frames_to_tensor
from ksrnet.synth.dataset import SyntheticTrackDataset
from ksrnet.train_config import TrainConfig
from ksrnet.training import RecognizerSamples, collate_tracks


class FloatSamples(RecognizerSamples):
    """Samples as the workers made them before session 21: float32 frames in [-1, 1]."""

    def sample(self, track, copy: int = 0):
        return (frames_to_tensor(self.frames_of(track, copy), self.height, self.width),
                torch.tensor(self.tokenizer.encode(track.text), dtype=torch.long), LAYOUTS.index(track.layout))


def cpu_breakdown(config: TrainConfig, tracks: int, seed: int) -> None:
    """CPU ms per generated track of each part of a worker's work, float and uint8 samples."""
    d, batch = config.data, config.trainer.batch_tracks
    source = iter(SyntheticTrackDataset(1500 + tracks, seed=seed, preset=d.synth_preset))
    for _ in range(1500):  # glyph caches fill over the first ~1,500 tracks
        next(source)
    start = time.process_time()
    made = [next(source) for _ in range(tracks)]
    generation = time.process_time() - start
    print(f"{tracks} tracks, echo {d.echo}, batches of {batch}: generation {1000 * generation / tracks:.2f} ms per track")
    for kind in (FloatSamples, RecognizerSamples):
        samples = kind(made, config, echo=d.echo, echo_buffer=min(d.echo_buffer_tracks, tracks // 4))
        start = time.process_time()
        out = list(samples)
        made_at = time.process_time()
        batches = [collate_tracks(out[i:i + batch]) for i in range(0, len(out), batch)]
        collated_at = time.process_time()
        for frames, *_ in batches:
            frames.share_memory_()
        shared_at = time.process_time()
        parts = [made_at - start, collated_at - made_at, shared_at - collated_at]
        print(f"{batches[0][0].dtype} samples: make {1000 * parts[0] / tracks:.2f}, collate {1000 * parts[1] / tracks:.2f}, "
              f"to shared memory {1000 * parts[2] / tracks:.2f}; with generation "
              f"{1000 * (generation + sum(parts)) / tracks:.2f} ms per generated track")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/parseq-tiny-gpu-grow6b.yaml")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=12, help="batches skipped while caches fill (and then each worker's two prefetched ones)")
    ap.add_argument("--batches", type=int, default=24, help="batches timed")
    ap.add_argument("--float", action="store_true", help="float32 samples, as before session 21")
    ap.add_argument("--seed", type=int, default=11, help="data seed (not a training run's)")
    ap.add_argument("--cpu-breakdown", action="store_true", help="CPU time per part, in one process")
    ap.add_argument("--tracks", type=int, default=1000, help="tracks generated for --cpu-breakdown")
    args = ap.parse_args()
    if args.cpu_breakdown:
        cv2.setNumThreads(1)  # as in a data worker
        torch.set_num_threads(1)
        cpu_breakdown(TrainConfig.load(args.config), args.tracks, args.seed)
        return
    if args.workers < 1:
        ap.error("--workers must be >= 1: the hand-over from a worker process is part of what is timed")
    config = TrainConfig.load(args.config)
    d, batch = config.data, config.trainer.batch_tracks
    # Lazy, so generous: a worker that ran out of tracks would empty its echo buffer without
    # generating anything, and the rate would be inflated.
    needed = batch * (args.warmup + args.batches + 2 * args.workers) // d.echo
    tracks = SyntheticTrackDataset(2 * (needed + args.workers * (d.echo_buffer_tracks + batch)),
                                   seed=args.seed, preset=d.synth_preset)
    samples = (FloatSamples if args.float else RecognizerSamples)(tracks, config, echo=d.echo,
                                                                  echo_buffer=d.echo_buffer_tracks)
    loader = iter(DataLoader(samples, batch_size=batch, collate_fn=collate_tracks, num_workers=args.workers))
    # Each worker keeps two batches ready (the DataLoader's prefetch): skip those too, or the timer
    # would count batches made before it started.
    for _ in range(args.warmup + 2 * args.workers):
        next(loader)
    start = time.perf_counter()
    for _ in range(args.batches):
        frames = next(loader)[0]
    elapsed = time.perf_counter() - start
    rate = args.batches * batch / elapsed
    print(f"{args.config}: {frames.dtype} samples, echo {d.echo}, batches of {batch} tracks, {args.workers} "
          f"worker(s): {rate:.0f} samples/s, {rate / args.workers:.0f} per worker "
          f"({rate / d.echo / args.workers:.0f} generated tracks/s per worker)")


if __name__ == "__main__":
    main()
