"""Can a smarter late fusion, or KSR-Net's restored image added to it, beat plain product fusion?

Reads a development set of hard synthetic tracks (DEV_SEED: neither the benchmark's TEST_SEED nor
any training or validation seed, so nothing here is tuned on the test set) once with the shipped
recognizer, keeps every frame's logits, and decodes them under several fusion rules:

- product: the sum of per-frame log-probabilities (the shipped rule), at temperature 1 and at the
  shipped product temperature. A temperature cannot change product's reading: each frame's
  log-softmax differs from its logits/T by a per-slot constant, so the per-slot argmax of the sum is
  that of the summed logits (only the clamped floor and the layout choice could differ);
- quality-weighted product: frame f weighted by softmax_f(beta * its own best joint log-prob);
- entropy-weighted product: slot s of frame f weighted by softmax_f(-g * its entropy);
- product without the least sure frame, floored per-frame log-probs, the sum rule (mean of
  probabilities), and the last k frames only;
- with --ksrnet RUN: KSR-Net's single restored-plate reading added to the product with weight w.

- with --every-reference besides: the track restored onto each of its frames in turn (that frame
  swapped into the middle slot KSR-Net restores onto), and the product of those readings.

Usage: python benchmarks/fusion_probe.py [--tracks 3000] [--ksrnet runs/ksr-cpu-final-f --ksr-tracks 1500
       [--every-reference]]
(one thread; ~1 min per 1,000 tracks for the recognizer, ~3 min per 1,000 for KSR-Net on this CPU)
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections import Counter

import torch
from compare_readers import mcnemar_exact  # the same directory: run from benchmarks/

from ksrnet.infer import Reader
from ksrnet.models.parseq import decode_constrained, layout_log_probs
from ksrnet.plates import Tokenizer, layout_masks
from ksrnet.synth.dataset import generate_track
from ksrnet.weights import load_model

DEV_SEED = 424_242
_TOKENIZER = Tokenizer()
_MASKS = torch.from_numpy(layout_masks())


def hard_tracks(start: int, stop: int) -> list:
    return [generate_track(DEV_SEED, i, preset="hard") for i in range(start, stop)]


def per_frame_log_probs(char_logits: torch.Tensor, layout_logits: torch.Tensor, temperature: float = 1.0):
    """(N, F, 7, C) / (N, F, L) logits -> (N, F, L, 7, C) per-layout char log-probs, (N, F, L)."""
    n, f = char_logits.shape[:2]
    lp, llp = layout_log_probs((char_logits / temperature).flatten(0, 1), (layout_logits / temperature).flatten(0, 1),
                               _MASKS)
    return lp.unflatten(0, (n, f)), llp.unflatten(0, (n, f))


def right_tracks(per_layout: torch.Tensor, layout: torch.Tensor, texts: list[str]) -> torch.Tensor:
    """(N,) bool: which tracks the constrained reading gets whole."""
    r = decode_constrained(per_layout, layout)
    return torch.tensor([_TOKENIZER.decode(tuple(int(x) for x in row)) == t for row, t in zip(r.indices, texts)])


def recognition_rate(per_layout: torch.Tensor, layout: torch.Tensor, texts: list[str]) -> float:
    return 100.0 * right_tracks(per_layout, layout, texts).float().mean().item()


def weighted(lp: torch.Tensor, llp: torch.Tensor, w: torch.Tensor):
    """Frame-weighted sums: w (N, F) per frame, or (N, F, L, 7) per frame and slot (layout term unweighted)."""
    if w.ndim == 2:
        return (lp * w[..., None, None, None]).sum(1), (llp * w[..., None]).sum(1)
    return (lp * w[..., None]).sum(1), llp.sum(1)


def fusion_rows(chars: torch.Tensor, layouts: torch.Tensor, texts: list[str], product_t: float) -> list[tuple[str, float]]:
    lp, llp = per_frame_log_probs(chars, layouts)
    frames = lp.shape[1]
    rr = lambda a, b: recognition_rate(a, b, texts)  # noqa: E731
    rows = [("product, T = 1", rr(lp.sum(1), llp.sum(1)))]
    lpt, llpt = per_frame_log_probs(chars, layouts, product_t)
    rows.append((f"product, shipped T = {product_t:.2f}", rr(lpt.sum(1), llpt.sum(1))))
    rows.append(("last frame only (F=1)", rr(lp[:, -1], llp[:, -1])))
    sure = (lp.max(-1).values.sum(-1) + llp).max(-1).values  # (N, F): each frame's best joint log-prob
    for beta in (0.25, 0.5, 1.0, 2.0):
        rows.append((f"quality-weighted, beta {beta}", rr(*weighted(lp, llp, torch.softmax(beta * sure, 1) * frames))))
    entropy = -(lp.exp() * lp.clamp(min=-30)).sum(-1)  # (N, F, L, 7)
    for g in (0.5, 1.0, 2.0):
        rows.append((f"entropy-weighted, g {g}", rr(*weighted(lp, llp, torch.softmax(-g * entropy, 1) * frames))))
    keep = torch.ones_like(sure).scatter_(1, sure.argmin(1, keepdim=True), 0.0)
    rows.append(("product without the least sure frame", rr(*weighted(lp, llp, keep))))
    for floor in (-2.0, -4.0, -6.0):
        rows.append((f"product of log-probs floored at {floor}", rr(lp.clamp(min=floor).sum(1), llp.clamp(min=floor).sum(1))))
    log_f = math.log(frames)
    rows.append(("sum rule (mean of probabilities)", rr(torch.logsumexp(lp, 1) - log_f, torch.logsumexp(llp, 1) - log_f)))
    for k in range(2, frames):
        rows.append((f"product of the last {k} frames", rr(lp[:, -k:].sum(1), llp[:, -k:].sum(1))))
    return rows


def confusions(chars: torch.Tensor, layouts: torch.Tensor, texts: list[str], top: int = 12) -> str:
    """What the product reading gets wrong: characters missed per wrong track, the most frequent
    (truth -> read) pairs, and wrong characters per position."""
    lp, llp = per_frame_log_probs(chars, layouts)
    r = decode_constrained(lp.sum(1), llp.sum(1))
    misses, pairs, positions = Counter(), Counter(), Counter()
    for row, truth in zip(r.indices, texts):
        read = _TOKENIZER.decode(tuple(int(x) for x in row))
        wrong = [(i, t, c) for i, (t, c) in enumerate(zip(truth, read)) if t != c]
        if wrong:
            misses[len(wrong)] += 1
        pairs.update((t, c) for _, t, c in wrong)
        positions.update(i for i, _, _ in wrong)
    return (f"wrong tracks by characters missed: {dict(sorted(misses.items()))}\n"
            f"wrong characters by position: {dict(sorted(positions.items()))}\n"
            "most frequent (truth -> read): " + ", ".join(f"{t}->{c} {n}" for (t, c), n in pairs.most_common(top)))


def with_reference(track, k: int):
    """The track with frame k swapped into the middle slot, the one KSR-Net restores onto."""
    lr = list(track.lr)
    mid = len(lr) // 2
    lr[k], lr[mid] = lr[mid], lr[k]
    return dataclasses.replace(track, lr=lr)


def restored_log_probs(reader, tracks: list, reference: int | None = None):
    """Per-layout log-probs (N, L, 7, C), (N, L) of KSR-Net's restored plate for each track, restored
    onto its own reference frame (None) or onto frame `reference`."""
    if reference is not None:
        tracks = [with_reference(t, reference) for t in tracks]
    chars, layouts = [], []
    for start in range(0, len(tracks), 50):
        _, c, l = reader.restore_and_read(tracks[start:start + 50])
        chars.append(c)
        layouts.append(l)
    return layout_log_probs(torch.cat(chars), torch.cat(layouts), _MASKS)


def ksrnet_rows(path: str, chars: torch.Tensor, layouts: torch.Tensor, texts: list[str],
                every_reference: bool = False) -> list[tuple[str, float, str]]:
    from ksrnet.restoration_reader import load_restoration_reader

    reader, _ = load_restoration_reader(path)
    tracks = hard_tracks(0, len(texts))  # generated once for every restoration below
    slp, sllp = restored_log_probs(reader, tracks)
    lp, llp = per_frame_log_probs(chars, layouts)
    product = right_tracks(lp.sum(1), llp.sum(1), texts)

    def row(name: str, a: torch.Tensor, b: torch.Tensor) -> tuple[str, float, str]:
        # Paired against the product of the frames: only the tracks the two read differently count.
        ok = right_tracks(a, b, texts)
        only_it, only_product = int((ok & ~product).sum()), int((product & ~ok).sum())
        return name, 100.0 * ok.float().mean().item(), f"{only_it} / {only_product} ({mcnemar_exact(only_it, only_product):.2g})"

    rows = [row("product of the frames (same tracks)", lp.sum(1), llp.sum(1)), row("KSR-Net restored plate alone", slp, sllp)]
    for w in (0.5, 1.0, 2.0, 3.0, 5.0):
        rows.append(row(f"product + {w} x restored plate", lp.sum(1) + w * slp, llp.sum(1) + w * sllp))
    if every_reference:
        # One restored plate per frame as the reference: do five restorations, each keeping its own
        # reference frame's detail, carry evidence that one restoration loses?
        refs = [restored_log_probs(reader, tracks, k) for k in range(chars.shape[1])]
        for k, (a, b) in enumerate(refs):
            rows.append(row(f"KSR-Net restored onto frame {k + 1}", a, b))
        rlp, rllp = sum(a for a, _ in refs), sum(b for _, b in refs)
        rows.append(row("product of the restored plates of every reference", rlp, rllp))
        for w in (0.5, 1.0):
            rows.append(row(f"product of the frames + {w} x that", lp.sum(1) + w * rlp, llp.sum(1) + w * rllp))
    return rows


def print_table(title: str, rows: list[tuple]) -> None:
    """Rows (rule, RR %) or (rule, RR %, paired counts against the product)."""
    paired = any(len(r) == 3 for r in rows)
    head = "| rule | RR % | only it / only the product right (McNemar p) |\n| --- | --- | --- |" if paired else \
        "| rule | RR % |\n| --- | --- |"
    print(f"\n**{title}**\n\n{head}")
    for name, value, *extra in rows:
        print(f"| {name} | {value:.2f} |" + (f" {extra[0]} |" if extra else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="recognizer (default: the shipped parseq-tiny)")
    ap.add_argument("--tracks", type=int, default=3000)
    ap.add_argument("--ksrnet", default=None, help="KSR-Net run or weights whose restored reading to add")
    ap.add_argument("--ksr-tracks", type=int, default=1500, help="the first N dev tracks for the KSR-Net rows")
    ap.add_argument("--every-reference", action="store_true",
                    help="with --ksrnet: also restore each track onto every frame in turn and fuse those readings (5x KSR-Net's time)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.tracks < 1 or not 1 <= args.ksr_tracks <= args.tracks:
        ap.error("need --tracks >= 1 and 1 <= --ksr-tracks <= --tracks")
    torch.set_num_threads(args.threads)
    model, meta = load_model(args.model)
    reader = Reader(model)
    texts, chars, layouts = [], [], []
    for start in range(0, args.tracks, 100):
        tracks = hard_tracks(start, min(args.tracks, start + 100))
        for track, (c, l) in zip(tracks, reader.track_logits(tracks)):
            texts.append(track.text)
            chars.append(c)
            layouts.append(l)
    chars, layouts = torch.stack(chars), torch.stack(layouts)
    temperatures = meta.get("temperature") or {}
    product_t = float(temperatures.get("product@5", temperatures.get("product", 1.0)))
    print_table(f"late fusion rules, {args.tracks} hard dev tracks (seed {DEV_SEED})",
                fusion_rows(chars, layouts, texts, product_t))
    print("\n" + confusions(chars, layouts, texts))
    if args.ksrnet:
        n = args.ksr_tracks
        print_table(f"adding KSR-Net's reading ({args.ksrnet}), first {n} dev tracks",
                    ksrnet_rows(args.ksrnet, chars[:n], layouts[:n], texts[:n], args.every_reference))


if __name__ == "__main__":
    main()
