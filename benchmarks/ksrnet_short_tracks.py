"""How a KSR-Net should read a track shorter than the 5 frames it was trained on: at its own length
(what `ksrnet predict` does), or padded to 5 with repeats of its last frame (what training does with
short real tracks, so that a batch shares its reference slot). The last 1, 2 or 3 frames of the hard
test tracks of benchmarks/recognizer.py, read both ways, paired (McNemar's exact test).

Usage: python benchmarks/ksrnet_short_tracks.py KSR_RUN [--tracks 500]
"""

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_readers import mcnemar_exact  # noqa: E402
from recognizer import synthetic_tracks  # noqa: E402

from ksrnet.restoration_reader import load_restoration_reader  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("run", help="KSR-Net run dir or weights")
ap.add_argument("--tracks", type=int, default=500)
args = ap.parse_args()
torch.set_num_threads(1)
n = args.tracks
reader, _ = load_restoration_reader(args.run, batch_tracks=32)
tracks = synthetic_tracks(n, "hard")
for count in (1, 2, 3):
    own = [SimpleNamespace(track_id=t.track_id, lr=t.lr[-count:]) for t in tracks]
    pad = [SimpleNamespace(track_id=t.track_id, lr=t.lr[-count:] + [t.lr[-1]] * (5 - count)) for t in tracks]
    r_own = reader.read(own, ["product"])["product"]
    r_pad = reader.read(pad, ["product"])["product"]
    a = [r.text == t.text for r, t in zip(r_own, tracks)]
    b = [r.text == t.text for r, t in zip(r_pad, tracks)]
    only_a = sum(x and not y for x, y in zip(a, b)); only_b = sum(y and not x for x, y in zip(a, b))
    print(f"F={count}: own length {100*sum(a)/n:.1f} %, padded to 5 {100*sum(b)/n:.1f} %, "
          f"only own {only_a}, only padded {only_b}, McNemar p {mcnemar_exact(only_a, only_b):.3f}", flush=True)
