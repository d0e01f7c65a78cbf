"""Whole-plate RR of a recognizer reading one frame of each track, by the frame's position (1 = the
first, farthest; 5 = the last, nearest), on the hard test tracks of benchmarks/recognizer.py.

Usage: python benchmarks/frame_positions.py [--model parseq-tiny] [--tracks 1000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recognizer import synthetic_tracks  # noqa: E402

from ksrnet.cli_readers import make_reader  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=None, help="anything `ksrnet predict --model` takes (default: shipped)")
    ap.add_argument("--tracks", type=int, default=1000)
    ap.add_argument("--preset", default="hard")
    args = ap.parse_args()
    torch.set_num_threads(1)
    reader = make_reader(args.model, "cpu", "nar", None)[0]
    tracks = synthetic_tracks(args.tracks, args.preset)
    for pos in range(min(len(t.lr) for t in tracks)):
        one = [SimpleNamespace(track_id=t.track_id, lr=[t.lr[pos]]) for t in tracks]
        readings = reader.read(one, ["product"])["product"]
        rr = sum(r.text == t.text for r, t in zip(readings, tracks)) / len(tracks)
        print(f"frame {pos + 1}: RR {100 * rr:.1f} %", flush=True)


if __name__ == "__main__":
    main()
