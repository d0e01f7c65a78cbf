"""What does resizing every frame to KSR-Net's input grid (config ``lr_size``) cost before any fusion?

KSR-Net reads each track on one grid: every frame is resized to ``lr_size`` (bilinear, antialiased
when shrinking; ``preprocess.track_to_tensor``), while the per-frame recognizer resizes each native
crop straight to its 32x128 input. This reads the reference frame (the middle one) of each hard test
track with the shipped recognizer, product fusion of one frame, along both paths:

- native: the crop as stored -> 32x128 (``preprocess.frames_to_tensor``, what late fusion reads);
- via HxW: the crop -> ``lr_size`` HxW -> 32x128 (what a perfect restoration of that one frame could
  at best keep of it, ignoring the other frames).

Rows are split by the crop's native height. Usage: python benchmarks/lr_grid_probe.py [--tracks 500]
[--sizes 16x48,20x48,24x64] (one thread, about a minute per 500 tracks).
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch

from ksrnet.infer import Reader
from ksrnet.preprocess import frame_to_unit_tensor, frames_to_tensor
from ksrnet.models.ksrnet import resize_track
from ksrnet.synth.dataset import generate_track
from ksrnet.weights import load_model

TEST_SEED = 20_261_126  # the recognizer benchmark's and the ablation's hard test tracks


def via_grid(frame, size: tuple[int, int], out_hw: tuple[int, int]) -> torch.Tensor:
    """(3, H, W) in [-1, 1]: the frame on the ``size`` grid, then resized to the recognizer's input."""
    on_grid = resize_track([frame_to_unit_tensor(frame)], size)
    return resize_track([on_grid[0]], out_hw)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracks", type=int, default=500)
    ap.add_argument("--sizes", default="16x48,20x48,24x64", help="comma-separated HxW grids")
    args = ap.parse_args()
    torch.set_num_threads(1)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    model, meta = load_model(None)
    reader = Reader(model, temperatures=meta.get("temperature"))
    net, hw = reader.model, (model.config.img_h, model.config.img_w)
    tracks = [generate_track(TEST_SEED, i, preset="hard") for i in range(args.tracks)]
    frames = [t.lr[t.reference] for t in tracks]
    inputs = {"native": frames_to_tensor(frames, *hw)}
    for size in sizes:
        inputs[f"via {size[0]}x{size[1]}"] = torch.stack([via_grid(f, size, hw) for f in frames])
    right = {}
    with torch.inference_mode():
        for name, images in inputs.items():
            out = net(images)
            logits = [(out.char_logits[i:i + 1], out.layout_logits[i:i + 1]) for i in range(len(tracks))]
            readings = reader.readings_from_logits(tracks, logits, ["product"])["product"]
            right[name] = [r.text == t.text for r, t in zip(readings, tracks)]
    groups = defaultdict(list)
    for i, f in enumerate(frames):
        h = f.shape[0]
        groups["all"].append(i)
        groups["height <= 17" if h <= 17 else "height 18" if h == 18 else "height >= 19"].append(i)
    heights = sorted(f.shape[0] for f in frames)
    print(f"{len(tracks)} hard tracks (seed {TEST_SEED}), reference frame read alone; native heights: median "
          f"{heights[len(heights) // 2]}, {sum(h >= 19 for h in heights)} of {len(heights)} at 19 px or more\n")
    names = ["all", "height <= 17", "height 18", "height >= 19"]
    print("| path | " + " | ".join(f"RR % {n} (n={len(groups[n])})" for n in names) + " |")
    print("| --- |" + " --- |" * len(names))
    for name, ok in right.items():
        cells = [f"{100 * sum(ok[i] for i in groups[n]) / max(1, len(groups[n])):.1f}" for n in names]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
