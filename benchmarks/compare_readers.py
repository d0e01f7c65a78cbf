"""Paired comparison of readers on the same synthetic test tracks: each one's recognition rate, and
how many tracks one reads right and the other wrong, with McNemar's exact test on those.

Two readers' rates on the same 2,000 tracks are not independent samples: most tracks are read right
(or wrong) by both, and only the tracks they disagree on tell them apart. A one-point gap can be
clear when they disagree on few tracks, and noise when they disagree on many; this says which.

Usage: python benchmarks/compare_readers.py --model A --model B [--model C ...] [--tracks 2000]
       [--preset hard] [--frames 5] [--fusion product]
A model is anything `ksrnet predict --model` takes (a shipped name, a .safetensors file, a run dir,
a KSR-Net run dir); `tta:MODEL` reads MODEL as `ksrnet predict --tta` does (the default TTA views,
with its TTA temperatures); `vote:A+B` (or `logit:A+B`, more members with more +) reads with an
ensemble of those models, as `ksrnet predict --model A --model B --ensemble vote` does without
--calibration. Every model after the first is compared with the first. The tracks are those of
benchmarks/recognizer.py (its TEST_SEED), never seen in training.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recognizer import synthetic_tracks  # noqa: E402  (the test set every recognizer figure uses)

from ksrnet.cli_readers import make_reader  # noqa: E402
from ksrnet.infer import ENSEMBLE_RULES, EnsembleReader  # noqa: E402
from ksrnet.tta import DEFAULT_VIEWS  # noqa: E402


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided exact p-value that two readers are equally accurate, from the tracks only one of
    them reads right (a binomial test of those at 1/2)."""
    n, k = only_first + only_second, min(only_first, only_second)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def read_in_batches(reader, tracks: list, fusion: str, frames: int | None, batch: int = 64) -> list:
    """`reader`'s readings of `tracks` by `fusion` over their last `frames`, `batch` tracks at a time."""
    out = []
    for start in range(0, len(tracks), batch):
        out += reader.read(tracks[start:start + batch], [fusion], frame_count=frames)[fusion]
    return out


# A model spec, not infer.TTA_PREFIX (the prefix of TTA temperature keys).
TTA_MODEL_PREFIX = "tta:"
ENSEMBLE_SEPARATOR = "+"


def reader_spec(model: str) -> tuple[str, tuple[str, ...] | None]:
    """(model, TTA views) of a --model argument: `tta:MODEL` asks for the default views."""
    if model.startswith(TTA_MODEL_PREFIX):
        return model[len(TTA_MODEL_PREFIX):], DEFAULT_VIEWS
    return model, None


def ensemble_spec(model: str) -> tuple[str, list[str]] | None:
    """(rule, member specs) of `vote:A+B[+C]` or `logit:A+B` (infer.ENSEMBLE_RULES), else None."""
    rule, _, members = model.partition(":")
    if rule in ENSEMBLE_RULES and ENSEMBLE_SEPARATOR in members:
        return rule, members.split(ENSEMBLE_SEPARATOR)
    return None


def reader_of(model: str):
    """The reader a --model argument names, as `ksrnet predict` reads with it (calibrated). An
    ensemble spec gives an infer.EnsembleReader of its members, each calibrated on its own, with no
    ensemble calibration: under `vote` a reading the members split on cannot come out sure."""
    ensemble = ensemble_spec(model)
    if ensemble is not None:
        rule, members = ensemble
        return EnsembleReader([reader_of(m) for m in members], rule)
    name, views = reader_spec(model)
    return make_reader(name, "cpu", "nar", views)[0]


def readings_of(model: str, tracks: list, fusion: str, frames: int | None, batch: int = 64) -> list:
    """The model's readings of `tracks` by `fusion` over their last `frames` (calibrated as `ksrnet
    predict` gives them), read `batch` tracks at a time."""
    return read_in_batches(reader_of(model), tracks, fusion, frames, batch)


def correct_per_track(model: str, tracks: list, fusion: str, frames: int | None, batch: int) -> list[bool]:
    return [r.text == t.text for r, t in zip(readings_of(model, tracks, fusion, frames, batch), tracks)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, help="repeat: the first is the reference")
    ap.add_argument("--tracks", type=int, default=2000)
    ap.add_argument("--preset", default="hard")
    ap.add_argument("--frames", type=int, default=None, help="the last N frames (default: all 5)")
    ap.add_argument("--fusion", default="product")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if len(args.model) < 2:
        ap.error("give at least two --model to compare")
    if args.threads:
        torch.set_num_threads(args.threads)
    tracks = synthetic_tracks(args.tracks, args.preset)
    results = {}
    for model in args.model:
        start = time.perf_counter()
        results[model] = correct_per_track(model, tracks, args.fusion, args.frames, args.batch_size)
        print(f"read {model}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    ref = args.model[0]
    frames = "all" if args.frames is None else args.frames
    print(f"{args.tracks} {args.preset} tracks, fusion {args.fusion}, frames {frames}; each row against {ref}\n")
    print("| model | RR % | right only here | right only in the reference | McNemar exact p |")
    print("| --- | --- | --- | --- | --- |")
    base = results[ref]
    print(f"| {ref} | {100 * sum(base) / len(base):.2f} | - | - | - |")
    for model in args.model[1:]:
        mine = results[model]
        only_mine = sum(m and not b for m, b in zip(mine, base))
        only_ref = sum(b and not m for m, b in zip(mine, base))
        print(f"| {model} | {100 * sum(mine) / len(mine):.2f} | {only_mine} | {only_ref} | "
              f"{mcnemar_exact(only_mine, only_ref):.3g} |")


if __name__ == "__main__":
    main()
