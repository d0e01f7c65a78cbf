"""Does a trained KSR-Net use its supporting frames? What HAM, the STFT and the SR head have learned.

Usage: python benchmarks/ksrnet_diagnostics.py RUN [RUN ...] [--tracks 64] [--preset mix]

For each KSR-Net run (a train-ksrnet run dir or ksrnet.safetensors), on synthetic tracks of a seed no
training run uses:
- HAM (v2 / final): its offset gain, the size of the deformable offsets (px), and how far its
  attention weights are from uniform (the largest weight of K points; 1/K = uniform, its start);
- the STFT's pooling: the mean share of each frame in the fused features (0.2 each = a plain mean);
- the SR image's sensitivity to each input frame (mean |d SR / d frame| over SR pixels and frame
  pixels, as shares; rows of the Jacobian at --sensitivity-pixels random SR pixels per track, so
  that opposite-signed effects on different SR pixels do not cancel as in d sum|SR| / d frame);
- how the recognizer inside reads the SR image of the real track, of the reference frame repeated
  T times (no support from the other frames), and of each frame repeated, and the bilinear
  upsampled reference frame.
If the reference repeated reads as well as the real track, the restoration does not use the others.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from ksrnet.ksr_targets import track_sample
from ksrnet.synth.dataset import generate_track
from ksrnet.weights import load_ksrnet

DIAGNOSTIC_SEED = 31_337  # no training run or other benchmark draws from it


def batch_of(model, tracks: int, preset: str) -> dict[str, torch.Tensor]:
    c = model.config
    samples = [track_sample(generate_track(DIAGNOSTIC_SEED, i, preset=preset), c.lr_size, c.upscale, c.ref_index)
               for i in range(tracks)]
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


def whole_plates_right(model, sr: torch.Tensor, text: torch.Tensor) -> float:
    return float((model.read(sr).char_logits.argmax(-1) == text).all(1).float().mean())


def sensitivity_shares(model, frames: torch.Tensor, pixels: int, generator: torch.Generator):
    """(restore output, per-frame shares (T,) of mean |d SR_i / d frame pixel|): exact Jacobian rows
    of ``pixels`` SR pixels drawn at random per track, several tracks per backward pass (a track's SR
    depends on its own frames only)."""
    x = frames.detach().clone().requires_grad_(True)
    out = model.restore(x)
    sr = out.sr.flatten(1)
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    for _ in range(pixels):
        pick = torch.randint(0, sr.shape[1], (sr.shape[0], 1), generator=generator)
        (grad,) = torch.autograd.grad(sr.gather(1, pick).sum(), x, retain_graph=True)
        total += grad.abs().sum((0, 2, 3, 4)).double()
    return out, (total / total.sum()).float()


def ham_figures(model, frames: torch.Tensor, ref: int) -> dict[str, float] | None:
    if model.ham is None:
        return None
    flows = model.flow.track_flows(frames, ref)[0]
    feats = model.extractor(frames)
    t = frames.shape[1]
    support = [i for i in range(t) if i != ref]
    d = model.ham.details(feats[:, support].flatten(0, 1), feats[:, ref:ref + 1].expand(-1, len(support), -1, -1, -1)
                          .flatten(0, 1), flows[:, support].flatten(0, 1))
    k = d.weights.shape[2]
    return {"offset gain |mean|": float(model.ham.offset_gain.abs().mean()),
            "offset |mean| px": float(d.offsets.abs().mean()), "offset |max| px": float(d.offsets.abs().max()),
            f"largest of {k} weights (uniform {1 / k:.3f})": float(d.weights.max(2).values.mean())}


def diagnose(run: str, tracks: int, preset: str, pixels: int = 8) -> None:
    model, _ = load_ksrnet(run)
    batch = batch_of(model, tracks, preset)
    frames, text = batch["frames"], batch["text"]
    t = frames.shape[1]
    ref = int(batch["reference"][0])
    print(f"## {run} ({model.config.variant}, lr_size {tuple(model.config.lr_size)}; {tracks} {preset} tracks, "
          f"reference frame {ref + 1} of {t})")
    out, sensitivity = sensitivity_shares(model, frames, pixels, torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = frames.detach()
        ham = ham_figures(model, x, ref)
        if ham:
            print("HAM: " + "; ".join(f"{k} {v:.4f}" for k, v in ham.items()))
        share = out.fusion_weights.detach().mean((0, 2, 3))
        print("STFT pooling share per frame: " + " ".join(f"{float(s):.3f}" for s in share))
        print(f"SR sensitivity share per frame (mean |d SR / d frame|, {pixels} SR pixels a track): "
              + " ".join(f"{float(g):.3f}" for g in sensitivity))
        rows = [("real track", out.sr.detach())]
        rows += [(f"frame {i + 1} repeated {t}x" + (" (the reference)" if i == ref else ""),
                  model.restore(x[:, i:i + 1].expand(-1, t, -1, -1, -1).contiguous()).sr) for i in range(t)]
        rows.append(("bilinear reference frame", F.interpolate(x[:, ref], scale_factor=model.config.upscale,
                                                                mode="bilinear", align_corners=False)))
        print("| SR image of | whole plates right % |\n| --- | --- |")
        for name, sr in rows:
            print(f"| {name} | {100 * whole_plates_right(model, sr, text):.1f} |")
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--tracks", type=int, default=64)
    ap.add_argument("--preset", default="mix")
    ap.add_argument("--sensitivity-pixels", type=int, default=8,
                    help="SR pixels per track whose Jacobian rows are taken")
    args = ap.parse_args()
    torch.manual_seed(0)
    for run in args.runs:
        diagnose(run, args.tracks, args.preset, args.sensitivity_pixels)


if __name__ == "__main__":
    main()
