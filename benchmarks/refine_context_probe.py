"""Does the recognizer's refinement pass read better with the track's fused reading as its context?

The shipped reader decodes each frame non-autoregressively (every slot from BOS alone), then refines
it once: every slot again, with the cloze mask, given the frame's own first reading of the other six
slots. A blurred frame's own reading is wrong more often than the five frames' product (about 61
against 79 % of hard tracks), so its refinement conditions on a worse context than the track offers.
This probe refines every frame with the product-fused, syntax-constrained reading of the track as
the context instead (same number of decoder passes, so the same reading time), then fuses again:

- nar: no refinement;
- own refine x1: the shipped decoding; x2: refined twice;
- fused-context refine x1 / x2: the context is the track's fused reading (of the NAR pass, then of
  the first refinement);
- own, then fused-context: the shipped refinement, then one more with the fused context.

Each row is fused by product over the last 5, 3 and 1 frames and paired with the shipped decoding
(McNemar's exact p on the tracks only one of them reads right). Hard tracks of the development
seed (fusion_probe.DEV_SEED): nothing here is chosen on the test set.

Usage: cd benchmarks && python refine_context_probe.py [--tracks 3000] [--model parseq-tiny] [--threads 2]
(about 40 s per 1,000 tracks on this 2-core CPU)
"""

from __future__ import annotations

import argparse
import time

import torch
from compare_readers import mcnemar_exact  # the same directory: run from benchmarks/
from fusion_probe import DEV_SEED, per_frame_log_probs, right_tracks

from ksrnet.models.inference import inference_copy
from ksrnet.models.parseq import Parseq, decode_constrained
from ksrnet.preprocess import frames_to_tensor
from ksrnet.synth.dataset import generate_track
from ksrnet.weights import load_model

FRAME_COUNTS = (5, 3, 1)
SHIPPED = "own refine x1 (shipped)"


def fused_context(logits: torch.Tensor, layouts: torch.Tensor, tracks: int) -> torch.Tensor:
    """Each track's product-fused, syntax-constrained reading (tracks, 7), repeated for its frames."""
    frames = logits.shape[0] // tracks
    lp, llp = per_frame_log_probs(logits.unflatten(0, (tracks, frames)), layouts.unflatten(0, (tracks, frames)))
    return decode_constrained(lp.sum(1), llp.sum(1)).indices.repeat_interleave(frames, 0)


def decodings(model: Parseq, images: torch.Tensor, tracks: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Char logits (tracks x frames, 7, C) under every decoding of the probe, and the layout logits."""
    slots = model.config.num_slots
    memory = model.encode(images)
    layouts = model.layout_logits_from_memory(memory)
    kv = model._memory_kv(memory)
    own = lambda logits: model._masked_argmax(logits, slice(0, slots))  # noqa: E731
    fused = lambda logits: fused_context(logits, layouts, tracks)  # noqa: E731
    refined = lambda tokens: model._refined_logits(tokens, kv)  # noqa: E731
    nar = model._nar_logits(kv, images.shape[0], images.device)
    own1 = refined(own(nar))
    fused1 = refined(fused(nar))
    return {
        "nar (no refinement)": nar,
        SHIPPED: own1,
        "own refine x2": refined(own(own1)),
        "fused-context refine x1": fused1,
        "fused-context refine x2": refined(fused(fused1)),
        "own refine, then fused-context refine": refined(fused(own1)),
    }, layouts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracks", type=int, default=3000)
    ap.add_argument("--model", default="parseq-tiny")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = load_model(args.model)
    model = inference_copy(model).eval()
    if model.config.refine_iters != 1:
        raise SystemExit(f"the probe's shipped row assumes refine_iters 1; {args.model} has {model.config.refine_iters}")
    right: dict[tuple[str, int], list[torch.Tensor]] = {}
    started = time.time()
    with torch.inference_mode():
        for start in range(0, args.tracks, 50):
            tracks = [generate_track(DEV_SEED, i, preset="hard") for i in range(start, min(start + 50, args.tracks))]
            n, f = len(tracks), len(tracks[0].lr)
            texts = [t.text for t in tracks]
            images = torch.cat([frames_to_tensor(list(t.lr), model.config.img_h, model.config.img_w) for t in tracks])
            rows, layouts = decodings(model, images, n)
            for name, logits in rows.items():
                for frames in FRAME_COUNTS:
                    lp, llp = per_frame_log_probs(logits.unflatten(0, (n, f))[:, -frames:],
                                                  layouts.unflatten(0, (n, f))[:, -frames:])
                    right.setdefault((name, frames), []).append(right_tracks(lp.sum(1), llp.sum(1), texts))
    print(f"{args.tracks} hard tracks of the development seed {DEV_SEED}, model {args.model}, "
          f"{time.time() - started:.0f} s\n")
    print("| decoding | " + " | ".join(f"F={f} RR % (only it / only shipped right, p)" for f in FRAME_COUNTS) + " |")
    print("| --- |" + " --- |" * len(FRAME_COUNTS))
    shipped = {f: torch.cat(right[(SHIPPED, f)]) for f in FRAME_COUNTS}
    for name in dict.fromkeys(name for name, _ in right):
        cells = []
        for f in FRAME_COUNTS:
            r = torch.cat(right[(name, f)])
            only_it, only_shipped = int((r & ~shipped[f]).sum()), int((~r & shipped[f]).sum())
            cells.append(f"{100 * r.float().mean():.2f} ({only_it} / {only_shipped}, p {mcnemar_exact(only_it, only_shipped):.2g})")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
