"""How fast does a recognizer variant leave the character prior? Short CPU training probes on a
cached pool of synthetic frames, so that variants are compared on the same images, step for step.

A model that only learned the character distribution sits at a loss of about 2.8 (the entropy of
the prior given the layout) with ~7 % character accuracy; a model that reads goes below it. Each
probe prints one JSON line per evaluation: steps, images seen, mean loss, and held-out character
accuracy / whole-plate RR (first frame, NAR, syntax-constrained) per validation preset.

Usage (one probe per process; run two side by side on a 2-core machine with --threads 1):
  python benchmarks/learning_probe.py --cache /tmp/probe --minutes 6 \
      --set stem=cnn --set enc_depth=1 --set pos_embed_init=zero --set slot_prior_sigma=0.06
The cache (train pool: --train-tracks of --train-preset; validation: 500 easy + 500 hard tracks)
is built on first use and reused by later probes with the same cache dir.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from multiprocessing import Pool
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ksrnet.models.parseq import Parseq, ParseqConfig, decode_constrained, layout_log_probs, sample_permutations
from ksrnet.plates import LAYOUTS, Tokenizer, layout_masks
from ksrnet.synth.dataset import generate_track

TRAIN_SEED, VAL_SEEDS = 1, {"easy": 2, "hard": 3}


def _one_track(args):
    seed, index, preset, height, width = args
    cv2.setNumThreads(1)
    track = generate_track(seed, index, preset=preset)
    frames = np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_LINEAR) for f in track.lr])
    return frames, Tokenizer().encode(track.text), LAYOUTS.index(track.layout)


def cached_pool(path: Path, seed: int, tracks: int, preset: str, height: int, width: int) -> dict:
    """(tracks, 5, H, W, 3) uint8 frames resized to the model input, targets, layout indices."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with Pool(2) as pool:
            rows = pool.map(_one_track, [(seed, i, preset, height, width) for i in range(tracks)], chunksize=64)
        np.savez(path, frames=np.stack([r[0] for r in rows]), targets=np.array([r[1] for r in rows]),
                 layouts=np.array([r[2] for r in rows]))
    with np.load(path) as data:
        return {"frames": data["frames"], "targets": torch.as_tensor(data["targets"]),
                "layouts": torch.as_tensor(data["layouts"])}


def to_input(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames).float().permute(0, 3, 1, 2) / 127.5 - 1


def parse_overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                continue
        out[key] = value
    return out


@torch.no_grad()
def evaluate(model: Parseq, pools: dict, masks: torch.Tensor) -> dict:
    model.eval()
    out = {}
    for name, pool in pools.items():
        o = model(to_input(pool["frames"][:, 0]), mode="nar")
        indices = decode_constrained(*layout_log_probs(o.char_logits, o.layout_logits, masks))[0]
        right = indices == pool["targets"]
        out[name] = {"char_acc": round(float(right.float().mean()), 3), "rr": round(float(right.all(-1).float().mean()), 3)}
    model.train()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, required=True, help="folder for the cached frame pools")
    p.add_argument("--train-preset", default="easy")
    p.add_argument("--train-tracks", type=int, default=12000)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="ParseqConfig override")
    p.add_argument("--minutes", type=float, default=6.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--warmup-steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=48, help="frames per step, each from a random track")
    p.add_argument("--eval-every", type=float, default=45.0, help="seconds")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = ParseqConfig.tiny(**{"dropout": 0.0, **parse_overrides(args.set)})
    model = Parseq(config)
    size = (config.img_h, config.img_w)
    train = cached_pool(args.cache / f"{args.train_preset}-{args.train_tracks}.npz", TRAIN_SEED,
                        args.train_tracks, args.train_preset, *size)
    vals = {name: cached_pool(args.cache / f"val-{name}.npz", seed, 500, name, *size) for name, seed in VAL_SEEDS.items()}
    masks = torch.from_numpy(layout_masks())
    optimizer = torch.optim.AdamW(model.parameters(), args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    perm_gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    start = last = time.time()
    step, losses = 0, []

    def report(**extra):
        print(json.dumps({"set": args.set, "minutes": round((time.time() - start) / 60, 1), "step": step,
                          "images": step * args.batch, "loss": round(float(np.mean(losses[-50:])), 3),
                          **evaluate(model, vals, masks), **extra}), flush=True)

    while time.time() - start < args.minutes * 60:
        progress = (time.time() - start) / (args.minutes * 60)
        lr = args.lr * min(1.0, (step + 1) / args.warmup_steps) * 0.5 * (1 + math.cos(math.pi * progress))
        for group in optimizer.param_groups:
            group["lr"] = lr
        tracks = rng.integers(0, len(train["targets"]), args.batch)
        frames = rng.integers(0, train["frames"].shape[1], args.batch)
        targets = train["targets"][tracks]
        memory = model.encode(to_input(train["frames"][tracks, frames]))
        logits = model.plm_decode(memory, targets, sample_permutations(config.num_perms, config.num_slots, perm_gen))
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.repeat(logits.shape[0], 1).reshape(-1))
        loss = loss + 0.1 * F.cross_entropy(model.layout_logits_from_memory(memory), train["layouts"][tracks])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        losses.append(loss.item())
        if time.time() - last > args.eval_every:
            last = time.time()
            report()
    report(final=True)


if __name__ == "__main__":
    main()
