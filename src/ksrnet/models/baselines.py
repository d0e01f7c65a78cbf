"""Multi-frame late fusion over per-frame recognizer outputs (the baselines KSR-Net must beat).

Every rule takes one track's per-frame raw outputs, char_logits (F, 7, C) and layout_logits (F, L),
plus the per-layout syntax masks (L, 7, C), and returns a 7-slot reading that obeys one layout's
syntax. The track confidence is the product of the per-character probabilities of the fused reading
(uncalibrated; calibration is a separate step).
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
    char_probs: tuple[float, ...]
    confidence: float
    # (7, k) top-k class indices and their probabilities under the chosen layout
    topk_indices: tuple[tuple[int, ...], ...] = ()
    topk_probs: tuple[tuple[float, ...], ...] = ()


def _renormalise(per_layout_logp: torch.Tensor, layout_logp: torch.Tensor):
    """Sums of log-probs over frames are unnormalised; the fused distribution must sum to one again."""
    return torch.log_softmax(per_layout_logp, dim=-1), torch.log_softmax(layout_logp, dim=-1)


def _reading(indices: torch.Tensor, layout_index: int, char_logp: torch.Tensor, topk: int) -> FusedReading:
    """Build a FusedReading from chosen indices (7,) and that layout's char log-probs (7, C)."""
    probs = char_logp.exp()
    char_probs = probs.gather(-1, indices[:, None])[:, 0]
    top_p, top_i = probs.topk(min(topk, probs.shape[-1]), dim=-1)
    return FusedReading(
        indices=tuple(int(i) for i in indices),
        layout_index=int(layout_index),
        char_probs=tuple(float(p) for p in char_probs),
        confidence=float(char_probs.prod()),
        topk_indices=tuple(tuple(int(i) for i in row) for row in top_i),
        topk_probs=tuple(tuple(float(p) for p in row) for row in top_p),
    )


def _decode_one(per_layout_logp: torch.Tensor, layout_logp: torch.Tensor, topk: int) -> FusedReading:
    """Constrained decode of one (L, 7, C) / (L,) distribution."""
    indices, _, layout_index, _ = decode_constrained(per_layout_logp[None], layout_logp[None])
    li = int(layout_index[0])
    return _reading(indices[0], li, per_layout_logp[li], topk)


def fuse_product(char_logits, layout_logits, masks, topk: int = 3) -> FusedReading:
    """Product of per-frame probabilities = sum of per-frame log-probs (the organisers' best rule)."""
    lp, llp = layout_log_probs(char_logits, layout_logits, masks)
    return _decode_one(*_renormalise(lp.sum(0), llp.sum(0)), topk)


def fuse_logit_mean(char_logits, layout_logits, masks, topk: int = 3) -> FusedReading:
    lp, llp = layout_log_probs(char_logits.mean(0, keepdim=True), layout_logits.mean(0, keepdim=True), masks)
    return _decode_one(lp[0], llp[0], topk)


def _per_frame(char_logits, layout_logits, masks, topk):
    lp, llp = layout_log_probs(char_logits, layout_logits, masks)
    return lp, llp, [_decode_one(lp[f], llp[f], topk) for f in range(lp.shape[0])]


def fuse_single_best(char_logits, layout_logits, masks, topk: int = 3) -> FusedReading:
    """The reading of the frame the model is most sure of."""
    _, _, frames = _per_frame(char_logits, layout_logits, masks, topk)
    return max(frames, key=lambda r: r.confidence)


def _vote_layout(frames: list[FusedReading], layout_logp: torch.Tensor) -> int:
    votes = Counter(r.layout_index for r in frames)
    summed = layout_logp.sum(0)
    return max(votes, key=lambda li: (votes[li], float(summed[li])))


def fuse_char_majority(char_logits, layout_logits, masks, topk: int = 3) -> FusedReading:
    """Per-slot majority vote of the per-frame readings; ties go to the higher summed probability.

    The layout is voted first so the slot votes can be restricted to characters that layout allows.
    """
    lp, llp, frames = _per_frame(char_logits, layout_logits, masks, topk)
    li = _vote_layout(frames, llp)
    allowed = masks[li].bool()
    mean_probs = lp[:, li].exp().mean(0)  # (7, C): frame-averaged probabilities under that layout
    chosen = []
    for slot in range(lp.shape[2]):
        votes = Counter(r.indices[slot] for r in frames if allowed[slot, r.indices[slot]])
        if votes:
            best = max(votes, key=lambda c: (votes[c], float(mean_probs[slot, c])))
        else:
            best = int(mean_probs[slot].masked_fill(~allowed[slot], -1.0).argmax())
        chosen.append(best)
    return _reading(torch.tensor(chosen), li, mean_probs.clamp_min(1e-12).log(), topk)


def fuse_string_majority(char_logits, layout_logits, masks, topk: int = 3) -> FusedReading:
    """Whole-string majority of the per-frame readings; ties go to the more confident string."""
    lp, _, frames = _per_frame(char_logits, layout_logits, masks, topk)
    votes = Counter((r.indices, r.layout_index) for r in frames)
    conf = {}
    for r in frames:
        conf.setdefault((r.indices, r.layout_index), []).append(r.confidence)
    winner = max(votes, key=lambda k: (votes[k], sum(conf[k]) / len(conf[k])))
    indices, li = winner
    mean_probs = lp[:, li].exp().mean(0)
    return _reading(torch.tensor(indices), li, mean_probs.clamp_min(1e-12).log(), topk)


FUSION_RULES = {
    "single": fuse_single_best,
    "product": fuse_product,
    "logit_mean": fuse_logit_mean,
    "char_majority": fuse_char_majority,
    "string_majority": fuse_string_majority,
}


def fuse(rule: str, char_logits: torch.Tensor, layout_logits: torch.Tensor, masks: torch.Tensor, topk: int = 3):
    if rule not in FUSION_RULES:
        raise ValueError(f"unknown fusion {rule!r}; choose one of {', '.join(FUSIONS)}")
    if char_logits.ndim != 3 or layout_logits.ndim != 2 or char_logits.shape[0] != layout_logits.shape[0]:
        raise ValueError("expected char_logits (F, 7, C) and layout_logits (F, L) with the same F")
    if char_logits.shape[0] == 0:
        raise ValueError("a track needs at least one frame")
    return FUSION_RULES[rule](char_logits.float(), layout_logits.float(), masks, topk)
