"""Cost of the KSR-Net variants and baselines: parameters per part, FLOPs per 5-frame track,
CPU latency and throughput, and the peak memory of one training step of the tiny config.

Usage: python benchmarks/ksrnet_cost.py [--preset tiny] [--threads 2] [--device cpu] [--recognizer parseq-tiny]
       [--lr-size 20x48]
Untrained weights: cost does not depend on them. The recognizer inside every model has the
architecture of --recognizer (the shipped model by default, as `train-ksrnet` puts it there).
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from ksrnet.models.ksrnet import KSRNet, KSRNetConfig, MFLPR2Baseline, MFLPR2Config, count_parameters
from ksrnet.models.parseq import Parseq


def flops_per_track(model, frames) -> float:
    # Counted with autograd on: FlopCounterMode's module tracker fails under no_grad in torch 2.13.
    with FlopCounterMode(display=False) as counter:
        model(frames)
    return counter.get_total_flops() / frames.shape[0]


def tracks_per_second(model, frames, repeats: int = 3) -> float:
    with torch.no_grad():
        model(frames)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            model(frames)
            if frames.is_cuda:
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
    return frames.shape[0] / best


def training_step_peak_mb(config: KSRNetConfig, batch: int) -> float:
    """Peak resident memory (CPU) while one forward+backward of `batch` tracks runs, above what the
    process held before. ru_maxrss is the process's high-water mark: run this before anything larger
    (main does it first), or a step below an earlier peak (the timed batches) reads as +0."""
    model = KSRNet(config).train()
    frames = torch.rand(batch, 5, 3, *config.lr_size) * 2 - 1
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = model(frames)
    (out.sr.square().mean() + out.char_logits.logsumexp(-1).mean()).backward()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max(after - before, 0) / 1024  # ru_maxrss is in KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--recognizer", default="parseq-tiny",
                    help="recognizer weights whose architecture the models use ('preset': the preset's own)")
    ap.add_argument("--lr-size", default=None, help="input grid HxW, e.g. 20x48 (default: the preset's)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print("| model | parameters | GFLOPs per track | tracks/s batch 1 | tracks/s batch "
          f"{args.batch} |\n| --- | --- | --- | --- | --- |")
    overrides = {}
    if args.recognizer != "preset":
        from ksrnet.weights import load_model

        overrides["recognizer"] = load_model(args.recognizer)[0].config
    if args.lr_size:
        overrides["lr_size"] = tuple(int(v) for v in args.lr_size.lower().split("x"))
    # First, while the process's high-water mark is still its baseline (see training_step_peak_mb).
    step_mb = None
    if args.device == "cpu":
        step_mb = training_step_peak_mb(KSRNetConfig.preset(args.preset, **overrides), 8)
    models = {}
    for variant in ("v1", "v2", "final"):
        cfg = KSRNetConfig.preset(args.preset, variant=variant, **overrides)
        models[f"KSR-Net {variant}"] = (KSRNet(cfg), cfg.lr_size)
    cfg = KSRNetConfig.preset(args.preset, **overrides)
    models["MF-LPR2-style"] = (MFLPR2Baseline(MFLPR2Config(recognizer=cfg.recognizer, lr_size=cfg.lr_size)), cfg.lr_size)
    recognizer = Parseq(cfg.recognizer)
    for name, (model, size) in models.items():
        model = model.eval().to(args.device)
        one = (torch.rand(1, 5, 3, *size) * 2 - 1).to(args.device)
        many = (torch.rand(args.batch, 5, 3, *size) * 2 - 1).to(args.device)
        params = count_parameters(model)["total"]
        print(f"| {name} | {params:,} | {flops_per_track(model, one) / 1e9:.2f} | "
              f"{tracks_per_second(model, one):.1f} | {tracks_per_second(model, many):.1f} |", flush=True)
    # Late fusion reads each of the 5 frames with the recognizer alone.
    rc = cfg.recognizer
    frames = (torch.rand(5 * args.batch, 3, rc.img_h, rc.img_w) * 2 - 1).to(args.device)
    recognizer = recognizer.eval().to(args.device)
    with FlopCounterMode(display=False) as counter:
        recognizer(frames[:5])
    tps = tracks_per_second(recognizer, frames) / 5
    print(f"| PARSeq per frame + late fusion (5 frames) | {sum(p.numel() for p in recognizer.parameters()):,} | "
          f"{counter.get_total_flops() / 1e9:.2f} | - | {tps:.1f} |")
    for name, size in count_parameters(models["KSR-Net final"][0]).items():
        if name != "total":
            print(f"  KSR-Net final / {name}: {size:,} parameters")
    if step_mb is not None:
        print(f"training step peak memory, {args.preset} final, batch 8 tracks: +{step_mb:.0f} MiB resident")


if __name__ == "__main__":
    main()
