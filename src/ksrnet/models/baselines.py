"""Multi-frame late fusion over per-frame recognizer outputs (the baselines KSR-Net must beat).

Every rule takes one track's per-frame raw outputs, char_logits (F, 7, C) and layout_logits (F, L),
plus the per-layout syntax masks (L, 7, C), and returns a 7-slot reading that obeys one layout's
syntax. The track confidence is the model's probability of the fused reading: the layout posterior
times the product of the per-character probabilities within that layout (uncalibrated).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from ksrnet.models.parseq import decode_constrained, layout_log_probs

FUSIONS = ("single", "product", "logit_mean", "char_majority", "string_majority")


@dataclass(frozen=True)
class FusedReading:
    indices: tuple[int, ...]  # class index per slot
    layout_index: int
    char_probs: tuple[float, ...]  # per slot, within the chosen layout's allowed characters
    layout_prob: float
    confidence: float
    # (7, k) top-k class indices and their probabilities under the chosen layout
    topk_indices: tuple[tuple[int, ...], ...] = ()
    topk_probs: tuple[tuple[float, ...], ...] = ()


def _reading(indices, layout_index: int, slot_probs: torch.Tensor, layout_prob: float, topk: int) -> FusedReading:
    """A FusedReading from chosen indices (7,) and the chosen layout's per-slot probabilities (7, C)."""
    indices = torch.as_tensor(indices)
    char_probs = slot_probs.gather(-1, indices[:, None])[:, 0]
    top_p, top_i = slot_probs.topk(min(topk, slot_probs.shape[-1]), dim=-1)
    return FusedReading(
        indices=tuple(int(i) for i in indices),
        layout_index=int(layout_index),
        char_probs=tuple(float(p) for p in char_probs),
        layout_prob=float(layout_prob),
        confidence=float(char_probs.prod()) * float(layout_prob),
        topk_indices=tuple(tuple(int(i) for i in row) for row in top_i),
        topk_probs=tuple(tuple(float(p) for p in row) for row in top_p),
    )


def _decode(per_layout_logp: torch.Tensor, layout_logp: torch.Tensor, topk: int) -> FusedReading:
    """Constrained decode of one (L, 7, C) / (L,) distribution, normalised or not (sums over frames)."""
    r = decode_constrained(per_layout_logp[None], layout_logp[None])
    li = int(r.layout_index[0])
    slot_probs = torch.softmax(per_layout_logp[li], dim=-1)
    return _reading(r.indices[0], li, slot_probs, float(r.layout_posterior[0, li]), topk)


def fuse_product(char_logits, layout_logits, masks, topk: int = 3) -> FusedReading:
    """Product of per-frame probabilities = sum of per-frame log-probs (the organisers' best rule)."""
    lp, llp = layout_log_probs(char_logits, layout_logits, masks)
    return _decode(lp.sum(0), llp.sum(0), topk)


def fuse_logit_mean(char_logits, layout_logits, masks, topk: int = 3) -> FusedReading:
    lp, llp = layout_log_probs(char_logits.mean(0, keepdim=True), layout_logits.mean(0, keepdim=True), masks)
    return _decode(lp[0], llp[0], topk)


def _per_frame(char_logits, layout_logits, masks, topk):
    lp, llp = layout_log_probs(char_logits, layout_logits, masks)
    return lp, [_decode(lp[f], llp[f], topk) for f in range(lp.shape[0])]


def fuse_single_best(char_logits, layout_logits, masks, topk: int = 3) -> FusedReading:
    """The reading of the frame the model is most sure of."""
    _, frames = _per_frame(char_logits, layout_logits, masks, topk)
    return max(frames, key=lambda r: r.confidence)


def _frame_mean(lp: torch.Tensor, frames: list[FusedReading], layout_index: int):
    """Frame-averaged per-slot probabilities (7, C) within a layout, and the mean layout probability."""
    slot_probs = torch.softmax(lp[:, layout_index], dim=-1).mean(0)
    layout_prob = sum(r.layout_prob if r.layout_index == layout_index else 1 - r.layout_prob for r in frames)
    return slot_probs, layout_prob / len(frames)


def fuse_char_majority(char_logits, layout_logits, masks, topk: int = 3) -> FusedReading:
    """Per-slot majority vote of the per-frame readings; ties go to the higher mean probability.

    The layout is voted first (ties to the more probable one) so the slot votes can be restricted
    to characters that layout allows.
    """
    lp, frames = _per_frame(char_logits, layout_logits, masks, topk)
    layout_votes = Counter(r.layout_index for r in frames)
    li = max(layout_votes, key=lambda l: (layout_votes[l], _frame_mean(lp, frames, l)[1]))
    slot_probs, layout_prob = _frame_mean(lp, frames, li)
    allowed = torch.as_tensor(masks)[li].bool()
    chosen = []
    for slot in range(lp.shape[2]):
        votes = Counter(r.indices[slot] for r in frames if allowed[slot, r.indices[slot]])
        if votes:
            chosen.append(max(votes, key=lambda c: (votes[c], float(slot_probs[slot, c]))))
        else:
            chosen.append(int(slot_probs[slot].masked_fill(~allowed[slot], -1.0).argmax()))
    return _reading(chosen, li, slot_probs, layout_prob, topk)


def fuse_string_majority(char_logits, layout_logits, masks, topk: int = 3) -> FusedReading:
    """Whole-string majority of the per-frame readings; ties go to the more confident string."""
    lp, frames = _per_frame(char_logits, layout_logits, masks, topk)
    groups: dict[tuple, list[FusedReading]] = {}
    for r in frames:
        groups.setdefault((r.indices, r.layout_index), []).append(r)
    indices, li = max(groups, key=lambda k: (len(groups[k]), sum(r.confidence for r in groups[k])))
    slot_probs, layout_prob = _frame_mean(lp, frames, li)
    return _reading(indices, li, slot_probs, layout_prob, topk)


FUSION_RULES = {
    "single": fuse_single_best,
    "product": fuse_product,
    "logit_mean": fuse_logit_mean,
    "char_majority": fuse_char_majority,
    "string_majority": fuse_string_majority,
}


def fuse(rule: str, char_logits: torch.Tensor, layout_logits: torch.Tensor, masks, topk: int = 3) -> FusedReading:
    if rule not in FUSION_RULES:
        raise ValueError(f"unknown fusion {rule!r}; choose one of {', '.join(FUSIONS)}")
    if char_logits.ndim != 3 or layout_logits.ndim != 2 or char_logits.shape[0] != layout_logits.shape[0]:
        raise ValueError("expected char_logits (F, 7, C) and layout_logits (F, L) with the same F")
    if char_logits.shape[0] == 0:
        raise ValueError("a track needs at least one frame")
    return FUSION_RULES[rule](char_logits.float(), layout_logits.float(), masks, topk)
