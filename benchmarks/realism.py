"""How close are the synthetic LR frames to the real LRLPR-26 LR frames? Per-frame image statistics.

Usage: OMP_NUM_THREADS=1 python benchmarks/realism.py [--tracks 100] [--seed 0]
           [--presets easy,medium,hard,mix] [--real DIR] [--json]

Real frames: every ``*lr*.png`` of ``../shared/real-samples/lrlpr26_frames`` whose name has an
``_lr`` token (the HR frames there are left out). Synthetic frames: all 5 LR frames of tracks
0 .. --tracks-1 of `generate_track(--seed, i, preset=p)` for each preset p. The presets share each
track's plate, scene and camera path (the degradations are drawn after them), so the preset rows
differ by degradations alone and width/height/aspect are identical across them. Frames are
measured at native size, as uint8 RGB; Y is BT.601 luma, Y = 0.299 R + 0.587 G + 0.114 B, in 0..255.

Statistics (one value per frame):
  width, height  frame size in px.
  aspect         width / height.
  mean_luma      mean of Y.
  luma_contrast  p95 - p5 of Y: the spread between plate background and characters, robust to a few
                 outliers (a 20x45 frame has ~900 pixels, so each 5 % tail holds ~45 of them).
  rms_contrast   std(Y) / 255.
  sharpness      mean Sobel gradient magnitude of Y over the interior pixels, in luma levels per px
                 (the 3x3 Sobel response divided by 8, so a ramp of slope 1 gives 1), divided by
                 luma_contrast; 0 when luma_contrast < 1. Dividing by the contrast keeps it from
                 being a second contrast measure, but note what is left: the luma total variation
                 per pixel in units of the contrast, i.e. about (number of full-contrast edge
                 crossings per row) / width. A single isolated edge keeps its total variation
                 however blurred it is; the value drops with blur on plates only because strokes are
                 1-2 px wide at LR size, so blur merges their two edges and lowers the stroke
                 amplitude while the plate/surround step that sets luma_contrast survives. It also
                 rises with noise and with busy surroundings in the crop; edge_sharpness does not
                 have the isolated-edge blind spot.
  edge_sharpness sum(g^2) / sum(g) / luma_contrast with g the Sobel magnitude above: the gradient
                 of a typical edge pixel (weighted by its own gradient) as a fraction of the
                 contrast, about 1 / (edge width in px) and independent of how many edges the crop
                 holds. 0.5 for an ideal one-pixel step (the central difference spreads it over
                 2 px), 0.25 for a 4 px ramp. 0 when luma_contrast < 1.
  hf_ratio       mean((Y - box3x3(Y))^2) / var(Y), both over the interior pixels: the share of the
                 luma variance that lives at the finest scale (noise, aliasing, block edges, crisp
                 strokes). 0 for a constant image.
  saturation     mean HSV saturation, (max(R,G,B) - min(R,G,B)) / max(R,G,B), 0 where max is 0.
                 Dark pixels weigh as much as bright ones and their S is noisy (max is small), so a
                 tinted dark surround (e.g. night-time blue) raises it a lot.
  clipped        fraction of pixels with Y <= 5 or Y >= 250 (crushed blacks, blown whites).

Left out on purpose: JPEG 8x8 blockiness. The crops are not aligned to the codec grid, so it has to
be measured as the strongest of the 8 phases of the 8-periodic column/row difference, and with only
~5 block boundaries per phase in a 45 px wide frame that maximum is dominated by character strokes:
on 300 synthetic hard frames the phase-max ratio was 1.80 (codec none), 1.91 (jpeg) and 1.85
(h264) in the mean, with overlapping p10-p90 ranges, i.e. it does not see the codec.

Output: a markdown table, one row per real frame, the real mean, then one row per synthetic preset
(mean ± std over all its frames). A cell is marked † when the real mean lies outside that preset's
[p10, p90] range. A second table gives, per preset, the percentile of the real mean within the
synthetic distribution (50 = typical, < 10 or > 90 = the real frames are atypical for that preset).
With a handful of real frames (4 today) the real mean itself is uncertain: read the flags as hints, not tests.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REAL_LR = Path(__file__).resolve().parents[2] / "shared" / "real-samples" / "lrlpr26_frames"
STATS = ("width", "height", "aspect", "mean_luma", "luma_contrast", "rms_contrast", "sharpness",
         "edge_sharpness", "hf_ratio", "saturation", "clipped")
# Print precision per statistic: enough digits to tell presets apart, no more.
DIGITS = {"width": 1, "height": 1, "aspect": 2, "mean_luma": 1, "luma_contrast": 1, "rms_contrast": 3,
          "sharpness": 3, "edge_sharpness": 3, "hf_ratio": 3, "saturation": 3, "clipped": 3}
BT601 = np.array([0.299, 0.587, 0.114])


def luma(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64) @ BT601


def _sobel_magnitude(y: np.ndarray) -> np.ndarray:
    # Valid region only: at ~20 px height any padding rule would touch 10 % of the rows.
    gx = (y[:-2, 2:] + 2 * y[1:-1, 2:] + y[2:, 2:]) - (y[:-2, :-2] + 2 * y[1:-1, :-2] + y[2:, :-2])
    gy = (y[2:, :-2] + 2 * y[2:, 1:-1] + y[2:, 2:]) - (y[:-2, :-2] + 2 * y[:-2, 1:-1] + y[:-2, 2:])
    return np.hypot(gx, gy) / 8.0


def _box3_residual(y: np.ndarray) -> np.ndarray:
    h, w = y.shape
    box = sum(y[i:h - 2 + i, j:w - 2 + j] for i in range(3) for j in range(3)) / 9.0
    return y[1:-1, 1:-1] - box


def frame_stats(rgb: np.ndarray) -> dict[str, float]:
    """The statistics of the module docstring for one uint8 RGB frame (H, W, 3), H, W >= 3."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or min(rgb.shape[:2]) < 3:
        raise ValueError(f"expected an (H>=3, W>=3, 3) RGB frame, got shape {rgb.shape}")
    h, w = rgb.shape[:2]
    y = luma(rgb)
    p5, p95 = np.percentile(y, [5, 95])
    contrast = float(p95 - p5)
    grad = _sobel_magnitude(y)
    # All of a tiny frame's variation can sit on its border rows, out of the interior's reach.
    has_edges = contrast >= 1.0 and grad.sum() > 0
    interior = y[1:-1, 1:-1]
    var = float(interior.var())
    rgbf = rgb.astype(np.float64)
    vmax, vmin = rgbf.max(axis=2), rgbf.min(axis=2)
    sat = np.divide(vmax - vmin, vmax, out=np.zeros_like(vmax), where=vmax > 0)
    return {
        "width": float(w),
        "height": float(h),
        "aspect": w / h,
        "mean_luma": float(y.mean()),
        "luma_contrast": contrast,
        "rms_contrast": float(y.std() / 255.0),
        # Below one luma level there are no edges to speak of, only quantisation.
        "sharpness": float(grad.mean() / contrast) if contrast >= 1.0 else 0.0,
        "edge_sharpness": float((grad ** 2).sum() / grad.sum() / contrast) if has_edges else 0.0,
        # A variance this small is rounding noise; the ratio would be meaningless.
        "hf_ratio": float((_box3_residual(y) ** 2).mean() / var) if var > 1e-9 else 0.0,
        "saturation": float(sat.mean()),
        "clipped": float(((y <= 5) | (y >= 250)).mean()),
    }


def real_label(path: Path) -> str:
    # Names look like ScenA_Mercosur_track_07539_lr-003_BDE6E26_51x20.png; keep what tells frames apart.
    m = re.match(r"Scen(\w+?)_(\w+?)_track_?(\w+?)_lr(?:-(\d+))?_([A-Z0-9]+)_", path.name)
    if not m:
        return path.stem
    scen, layout, track, frame, text = m.groups()
    return f"real {scen}/{layout}/{track}" + (f"/lr-{frame}" if frame else "") + f" {text}"


def load_real(folder: Path) -> list[tuple[str, np.ndarray]]:
    out = []
    for path in sorted(folder.glob("*lr*.png")):
        # The glob alone also catches HR files whose other tokens happen to contain "lr".
        if not re.search(r"_lr(?:-\d+)?_", path.name) or re.search(r"_hr(?:-\d+)?_", path.name):
            continue
        out.append((real_label(path), np.asarray(Image.open(path).convert("RGB"))))
    return out


def synthetic_stats(preset: str, tracks: int, seed: int) -> list[dict[str, float]]:
    from ksrnet.synth.dataset import generate_track  # heavy import (torch); only when needed

    return [frame_stats(f) for i in range(tracks) for f in generate_track(seed, i, preset=preset).lr]


def summarise(rows: list[dict[str, float]], reference: dict[str, float] | None = None) -> dict:
    out = {}
    for s in STATS:
        v = np.array([r[s] for r in rows])
        entry = {"mean": float(v.mean()), "std": float(v.std()), "p10": float(np.percentile(v, 10)),
                 "p90": float(np.percentile(v, 90)), "n": int(v.size)}
        if reference is not None:
            ref = reference[s]
            entry["real_in_p10_p90"] = bool(entry["p10"] <= ref <= entry["p90"])
            # Mid-rank percentile, so ties (integer sizes) do not push the real mean to an end.
            entry["real_percentile"] = float(100.0 * ((v < ref).mean() + 0.5 * (v == ref).mean()))
        out[s] = entry
    return out


def _fmt(x: float, s: str) -> str:
    return f"{x:.{DIGITS[s]}f}"


def markdown(real: list[tuple[str, dict]], real_summary: dict, synth: dict[str, dict], tracks: int) -> str:
    head = "| source | " + " | ".join(STATS) + " |"
    lines = [head, "|" + "---|" * (len(STATS) + 1)]
    for label, st in real:
        lines.append(f"| {label} | " + " | ".join(_fmt(st[s], s) for s in STATS) + " |")
    lines.append(f"| **real mean ± std** (n={len(real)}) | "
                 + " | ".join(f"{_fmt(real_summary[s]['mean'], s)} ± {_fmt(real_summary[s]['std'], s)}"
                              for s in STATS) + " |")
    for preset, summ in synth.items():
        cells = [f"{_fmt(summ[s]['mean'], s)} ± {_fmt(summ[s]['std'], s)}"
                 + ("" if summ[s]["real_in_p10_p90"] else " †") for s in STATS]
        n = summ[STATS[0]]["n"]
        lines.append(f"| synth {preset} (n={n}) | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"† real mean outside the preset's [p10, p90]; synthetic n = frames ({tracks} tracks x 5 "
                 "frames).")
    lines.append("")
    lines.append("Percentile of the real mean within each preset's per-frame distribution "
                 "(and how many statistics fall inside [p10, p90]):")
    lines.append("")
    lines.append("| preset | " + " | ".join(STATS) + " | inside |")
    lines.append("|" + "---|" * (len(STATS) + 2))
    for preset, summ in synth.items():
        inside = sum(summ[s]["real_in_p10_p90"] for s in STATS)
        lines.append(f"| {preset} | " + " | ".join(f"{summ[s]['real_percentile']:.0f}" for s in STATS)
                     + f" | {inside}/{len(STATS)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracks", type=int, default=100, help="synthetic tracks per preset (5 frames each)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--presets", default="easy,medium,hard,mix")
    ap.add_argument("--real", type=Path, default=REAL_LR, help="folder of real LRLPR-26 frames")
    ap.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    args = ap.parse_args()

    import cv2  # the synthetic pipeline uses OpenCV; one thread keeps the numbers per core and polite
    cv2.setNumThreads(1)

    real = [(label, frame_stats(rgb)) for label, rgb in load_real(args.real)]
    if not real:
        sys.exit(f"no real LR frames found in {args.real}")
    real_summary = summarise([st for _, st in real])
    real_mean = {s: real_summary[s]["mean"] for s in STATS}
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    synth = {p: summarise(synthetic_stats(p, args.tracks, args.seed), real_mean) for p in presets}

    if args.json:
        print(json.dumps({"tracks": args.tracks, "seed": args.seed, "real_dir": str(args.real),
                          "real": dict(real), "real_summary": real_summary, "synthetic": synth}, indent=1))
    else:
        print(markdown(real, real_summary, synth, args.tracks))


if __name__ == "__main__":
    main()
