"""Can the recognizer's decoder fuse the frames better than the product of per-frame readings?

Token fusion: encode each frame with the shipped recognizer's stem as usual, then let its decoder
cross-attend to the tokens of all F frames at once (memory (F x P) tokens instead of P; the
learned slot-position prior repeated per frame), so one decoding sees every frame. Reads a
development set of hard tracks (fusion_probe.DEV_SEED, not the test seed):

1. zero-shot: the shipped weights as they are, against product fusion and F=1;
2. after fine-tuning only the decoder (stem frozen) for --minutes on mix tracks of a training seed
   of its own, with F drawn from 1..5 in 30 % of the steps (else 5), PLM loss as in training;
3. the product plus w times the token-fusion reading (does it add evidence?).

Nothing here is kept in the package: it is a probe for issue #4 (see benchmarks/RESULTS.md).

Usage: python benchmarks/token_fusion_probe.py [--tracks 600] [--minutes 8] [--lr 2e-4]
(one training thread and one data worker: about 24 tracks/s of fine-tuning on this CPU)
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset

from fusion_probe import DEV_SEED, hard_tracks, per_frame_log_probs, recognition_rate
from ksrnet.models.parseq import Parseq, layout_log_probs, sample_permutations
from ksrnet.plates import LAYOUTS, Tokenizer, layout_masks
from ksrnet.preprocess import frames_to_tensor
from ksrnet.synth.dataset import generate_track
from ksrnet.weights import load_model

TRAIN_SEED = 777_000  # neither DEV_SEED nor the benchmark's or any training config's seed
DECODER = ("dec_layers", "pos_queries", "token_embed", "dec_norm", "head", "layout_head", "slot_prior_scale")
_MASKS = torch.from_numpy(layout_masks())
_TOKENIZER = Tokenizer()


class MixTracks(IterableDataset):
    def __init__(self, height: int, width: int):
        self.height, self.width = height, width

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        seed = TRAIN_SEED + (0 if info is None else info.id)
        index = 0
        while True:
            t = generate_track(seed, index, preset="mix")
            index += 1
            yield (frames_to_tensor(t.lr[:5], self.height, self.width),
                   torch.tensor(_TOKENIZER.encode(t.text)), LAYOUTS.index(t.layout))


def frame_tokens(model: Parseq, frames: torch.Tensor) -> torch.Tensor:
    """(B, F, 3, H, W) -> (B, F * P, D): every frame's encoder tokens, one after the other."""
    b, f = frames.shape[:2]
    with torch.no_grad():
        memory = model.encode(frames.flatten(0, 1))
    return memory.view(b, f * memory.shape[1], memory.shape[2])


def with_frames(model: Parseq, prior: torch.Tensor | None, frames: int) -> None:
    """Repeat the slot-position prior (slots x P) over ``frames`` frames' tokens."""
    model.slot_prior = None if prior is None else prior.repeat(1, frames)


def token_fusion_log_probs(model: Parseq, prior, tokens: torch.Tensor, frames: int):
    with_frames(model, prior, frames)
    with torch.no_grad():
        return layout_log_probs(model.decode_memory(tokens), model.layout_logits_from_memory(tokens), _MASKS)


def fine_tune(model: Parseq, prior, minutes: float, lr: float) -> tuple[int, float]:
    """Train the decoder only on token-fused mix tracks; returns (tracks seen, tracks/s)."""
    c = model.config
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(DECODER))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)
    loader = DataLoader(MixTracks(c.img_h, c.img_w), batch_size=32, num_workers=1)
    # Stays in eval mode: the frozen stem's batch norms must keep their running statistics (the
    # tiny config has no dropout, so the decoder trains the same either way).
    model.eval()
    start, seen = time.time(), 0
    for frames, targets, layouts in loader:
        elapsed = (time.time() - start) / 60
        if elapsed > minutes:
            break
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * elapsed / minutes))
        f = int(torch.randint(1, 6, (1,), generator=gen)) if torch.rand((), generator=gen) < 0.3 else 5
        first = int(torch.randint(0, 6 - f, (1,), generator=gen))
        tokens = frame_tokens(model, frames[:, first:first + f])
        with_frames(model, prior, f)
        logits = model.plm_decode(tokens, targets, sample_permutations(c.num_perms, c.num_slots, gen))
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.repeat(logits.shape[0], 1).reshape(-1)) \
            + 0.1 * F.cross_entropy(model.layout_logits_from_memory(tokens), layouts)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += frames.shape[0]
    return seen, seen / (time.time() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracks", type=int, default=600)
    ap.add_argument("--minutes", type=float, default=8.0)
    ap.add_argument("--lr", type=float, default=2e-4)
    args = ap.parse_args()
    torch.set_num_threads(1)

    shipped, _ = load_model(None)
    c, prior = shipped.config, shipped.slot_prior
    dev = hard_tracks(0, args.tracks)
    texts = [t.text for t in dev]
    n = len(dev)
    images = frames_to_tensor([f for t in dev for f in t.lr[:5]], c.img_h, c.img_w).view(n, 5, c.in_chans, c.img_h, c.img_w)
    tokens = torch.cat([frame_tokens(shipped, images[i:i + 100]) for i in range(0, n, 100)])
    per_frame = tokens.view(n * 5, -1, c.embed_dim)
    with torch.no_grad():
        chars = shipped.decode_memory(per_frame).view(n, 5, c.num_slots, -1)
        layouts = shipped.layout_logits_from_memory(per_frame).view(n, 5, -1)
    lp, llp = per_frame_log_probs(chars, layouts)
    print(f"{n} hard tracks of seed {DEV_SEED}, RR %:")
    print(f"  product F=5 {recognition_rate(lp.sum(1), llp.sum(1), texts):.2f}, last frame alone "
          f"{recognition_rate(lp[:, -1], llp[:, -1], texts):.2f}")

    tuned = copy.deepcopy(shipped)
    print(f"  fine-tuning the decoder for {args.minutes} min ...", flush=True)
    seen, rate = fine_tune(tuned, prior, args.minutes, args.lr)
    print(f"  ({seen} tracks, {rate:.1f} tracks/s)")
    p = tokens.shape[1] // 5
    for name, model in (("zero-shot", shipped), ("decoder fine-tuned", tuned)):
        tf5 = token_fusion_log_probs(model, prior, tokens, 5)
        tf1 = token_fusion_log_probs(model, prior, tokens[:, 4 * p:], 1)
        mixed = ", ".join(f"w {w}: {recognition_rate(lp.sum(1) + w * tf5[0], llp.sum(1) + w * tf5[1], texts):.2f}"
                          for w in (0.5, 1, 2, 3))
        print(f"  token fusion, {name}: F=5 {recognition_rate(*tf5, texts):.2f}, last frame alone "
              f"{recognition_rate(*tf1, texts):.2f}; product + w x token fusion: {mixed}")


if __name__ == "__main__":
    main()
