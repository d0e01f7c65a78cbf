"""Multi-frame late fusion over per-frame recognizer outputs (the baselines KSR-Net must beat).

Every rule takes one track's per-frame raw outputs, char_logits (F, 7, C) and layout_logits (F, L),
plus the per-layout syntax masks (L, 7, C), and returns a 7-slot reading that obeys one layout's
syntax. The track confidence is the model's probability of the fused reading: the layout posterior
times the product of the per-character probabilities within that layout, at the calibration
temperature `fuse` is given (1: uncalibrated), which never changes the reading.
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
    indices = torch.as_tensor(indices, device=slot_probs.device)  # a list or tuple from the votes lands on the CPU
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


def _decode(per_layout_logp: torch.Tensor, layout_logp: torch.Tensor, topk: int, scored_by=None) -> FusedReading:
    """Constrained decode of one (L, 7, C) / (L,) distribution, normalised or not (sums over frames).

    scored_by: another such pair (the same evidence under a calibration temperature) that gives the
    chosen reading's probabilities; the reading itself is always this distribution's."""
    r = decode_constrained(per_layout_logp[None], layout_logp[None])
    li = int(r.layout_index[0])
    if scored_by is None:
        return _reading(r.indices[0], li, torch.softmax(per_layout_logp[li], dim=-1),
                        float(r.layout_posterior[0, li]), topk)
    return _scored(r.indices[0], li, *scored_by, topk)


def _scored(indices, layout_index: int, per_layout_logp: torch.Tensor, layout_logp: torch.Tensor, topk: int) -> FusedReading:
    """A given reading with its probabilities under one (L, 7, C) / (L,) distribution."""
    posterior = decode_constrained(per_layout_logp[None], layout_logp[None]).layout_posterior[0, layout_index]
    return _reading(indices, layout_index, torch.softmax(per_layout_logp[layout_index], dim=-1),
                    float(posterior), topk)


def _calibrated(char_logits, layout_logits, masks, temperature: float):
    """Per-frame per-layout log-probs (F, L, 7, C), (F, L) at the temperature; None at T = 1."""
    if temperature == 1.0:
        return None
    return layout_log_probs(char_logits / temperature, layout_logits / temperature, masks)


def fuse_product(char_logits, layout_logits, masks, topk: int = 3, temperature: float = 1.0) -> FusedReading:
    """Product of per-frame probabilities = sum of per-frame log-probs (the organisers' best rule)."""
    lp, llp = layout_log_probs(char_logits, layout_logits, masks)
    cal = _calibrated(char_logits, layout_logits, masks, temperature)
    return _decode(lp.sum(0), llp.sum(0), topk, None if cal is None else (cal[0].sum(0), cal[1].sum(0)))


def fuse_logit_mean(char_logits, layout_logits, masks, topk: int = 3, temperature: float = 1.0) -> FusedReading:
    mean_chars, mean_layouts = char_logits.mean(0, keepdim=True), layout_logits.mean(0, keepdim=True)
    lp, llp = layout_log_probs(mean_chars, mean_layouts, masks)
    cal = _calibrated(mean_chars, mean_layouts, masks, temperature)
    return _decode(lp[0], llp[0], topk, None if cal is None else (cal[0][0], cal[1][0]))


def _per_frame(char_logits, layout_logits, masks, topk):
    lp, llp = layout_log_probs(char_logits, layout_logits, masks)
    return lp, llp, [_decode(lp[f], llp[f], topk) for f in range(lp.shape[0])]


def fuse_single_best(char_logits, layout_logits, masks, topk: int = 3, temperature: float = 1.0) -> FusedReading:
    """The reading of the frame the model is most sure of."""
    lp, llp, frames = _per_frame(char_logits, layout_logits, masks, topk)
    best = max(range(len(frames)), key=lambda f: frames[f].confidence)
    cal = _calibrated(char_logits, layout_logits, masks, temperature)
    if cal is None:
        return frames[best]
    return _scored(frames[best].indices, frames[best].layout_index, cal[0][best], cal[1][best], topk)


def _frame_mean(lp: torch.Tensor, llp: torch.Tensor, layout_index: int):
    """Frame-averaged per-slot probabilities (7, C) within a layout, and the frames' mean posterior
    of that layout."""
    slot_probs = torch.softmax(lp[:, layout_index], dim=-1).mean(0)
    posterior = decode_constrained(lp, llp).layout_posterior[:, layout_index]
    return slot_probs, float(posterior.mean())


def _majority_reading(indices, layout_index: int, lp, llp, cal, topk: int) -> FusedReading:
    """A voted reading with the frame-averaged probabilities, at the temperature if there is one."""
    slot_probs, layout_prob = _frame_mean(*(cal if cal is not None else (lp, llp)), layout_index)
    return _reading(indices, layout_index, slot_probs, layout_prob, topk)


def fuse_char_majority(char_logits, layout_logits, masks, topk: int = 3, temperature: float = 1.0) -> FusedReading:
    """Per-slot majority vote of the per-frame readings; ties go to the higher mean probability.

    The layout is voted first (ties to the more probable one) so the slot votes can be restricted
    to characters that layout allows.
    """
    lp, llp, frames = _per_frame(char_logits, layout_logits, masks, topk)
    layout_votes = Counter(r.layout_index for r in frames)
    li = max(layout_votes, key=lambda l: (layout_votes[l], _frame_mean(lp, llp, l)[1]))
    slot_probs, _ = _frame_mean(lp, llp, li)
    allowed = torch.as_tensor(masks, device=lp.device)[li].bool()
    chosen = []
    for slot in range(lp.shape[2]):
        votes = Counter(r.indices[slot] for r in frames if allowed[slot, r.indices[slot]])
        if votes:
            chosen.append(max(votes, key=lambda c: (votes[c], float(slot_probs[slot, c]))))
        else:
            chosen.append(int(slot_probs[slot].masked_fill(~allowed[slot], -1.0).argmax()))
    cal = _calibrated(char_logits, layout_logits, masks, temperature)
    return _majority_reading(chosen, li, lp, llp, cal, topk)


def fuse_string_majority(char_logits, layout_logits, masks, topk: int = 3, temperature: float = 1.0) -> FusedReading:
    """Whole-string majority of the per-frame readings; ties go to the more confident string."""
    lp, llp, frames = _per_frame(char_logits, layout_logits, masks, topk)
    groups: dict[tuple, list[FusedReading]] = {}
    for r in frames:
        groups.setdefault((r.indices, r.layout_index), []).append(r)
    indices, li = max(groups, key=lambda k: (len(groups[k]), sum(r.confidence for r in groups[k])))
    cal = _calibrated(char_logits, layout_logits, masks, temperature)
    return _majority_reading(indices, li, lp, llp, cal, topk)


FUSION_RULES = {
    "single": fuse_single_best,
    "product": fuse_product,
    "logit_mean": fuse_logit_mean,
    "char_majority": fuse_char_majority,
    "string_majority": fuse_string_majority,
}


def fuse(rule: str, char_logits: torch.Tensor, layout_logits: torch.Tensor, masks, topk: int = 3,
         temperature: float = 1.0) -> FusedReading:
    """One track's reading under a fusion rule. A calibration temperature divides the logits for
    the reading's probabilities (its confidence, per-character probabilities and alternatives) but
    never changes the reading itself, which is always the rule's choice at T = 1: for rules that
    pick a frame or vote, a temperature would otherwise move the choice and so the RR."""
    if rule not in FUSION_RULES:
        raise ValueError(f"unknown fusion {rule!r}; choose one of {', '.join(FUSIONS)}")
    if char_logits.ndim != 3 or layout_logits.ndim != 2 or char_logits.shape[0] != layout_logits.shape[0]:
        raise ValueError("expected char_logits (F, 7, C) and layout_logits (F, L) with the same F")
    if char_logits.shape[0] == 0:
        raise ValueError("a track needs at least one frame")
    if not 0 < temperature < float("inf"):
        raise ValueError(f"temperature must be a positive finite number, got {temperature}")
    return FUSION_RULES[rule](char_logits.float(), layout_logits.float(), masks, topk, float(temperature))
