"""Test-time augmentation: read each frame under several views and vote with their log-probabilities.

Views (the seed's): identity; horizontal flip, whose reading comes out in reverse slot order and is
flipped back before voting; zoom 0.9 / 1.1 about the centre (edges replicated when zooming out);
gamma 0.8 / 1.2. Beyond the seed's: pad0.06, the frame inside a border of its own edge pixels
(ksrnet.recrop.pad_frame), for crops of unknown tightness: `--tta-views identity,pad0.06` read tight
and edge-cut crops nearly as well as `--pad-margin 0.06` at 0.9 points of F=5 on normally cropped
ones (benchmarks/RESULTS.md, "Tight crops"). Voting averages the per-view log-probabilities of every slot and of the layout,
which is the product rule over views (renormalised by the fusion that follows).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from ksrnet.recrop import pad_frame

VIEWS = ("identity", "hflip", "scale0.9", "scale1.1", "gamma0.8", "gamma1.2", "pad0.06")
# What --tta uses: every view but the flip. A recognizer trained on plates as they are cannot read a
# mirrored one; adding the flipped view cut RR from 52.0 % to 30.3 % on 300 hard tracks at F=5
# (benchmarks/RESULTS.md). It stays available through --tta-views.
DEFAULT_VIEWS = ("identity", "scale0.9", "scale1.1", "gamma0.8", "gamma1.2")


def check_views(views) -> tuple[str, ...]:
    views = tuple(views)
    unknown = [v for v in views if v not in VIEWS]
    if unknown or not views:
        raise ValueError(f"unknown TTA view(s) {unknown or '(none given)'}; choose from {', '.join(VIEWS)}")
    if len(set(views)) != len(views):
        raise ValueError(f"TTA views repeat: {', '.join(views)}")
    return views


def _zoom(frame: np.ndarray, factor: float) -> np.ndarray:
    """Scale about the centre by `factor`, keeping the frame's size."""
    h, w = frame.shape[:2]
    matrix = np.array([[factor, 0, (1 - factor) * w / 2], [0, factor, (1 - factor) * h / 2]], dtype=np.float64)
    return cv2.warpAffine(frame, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _gamma(frame: np.ndarray, gamma: float) -> np.ndarray:
    table = np.clip(255.0 * (np.arange(256) / 255.0) ** gamma + 0.5, 0, 255).astype(np.uint8)
    return table[frame]


def make_view(frame: np.ndarray, view: str) -> np.ndarray:
    """The uint8 RGB frame as seen by `view`."""
    if view == "identity":
        return frame
    if view == "hflip":
        return np.ascontiguousarray(frame[:, ::-1])
    if view.startswith("scale"):
        return _zoom(frame, float(view[len("scale"):]))
    if view.startswith("gamma"):
        return _gamma(frame, float(view[len("gamma"):]))
    if view.startswith("pad"):
        return pad_frame(frame, float(view[len("pad"):]))
    raise ValueError(f"unknown TTA view {view!r}")


def vote(char_logits: torch.Tensor, layout_logits: torch.Tensor, views) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge per-view outputs char_logits (V, N, S, C), layout_logits (V, N, L) into per-frame
    log-probabilities (N, S, C), (N, L): flipped views are put back in slot order, then averaged."""
    views = check_views(views)
    if char_logits.shape[0] != len(views) or layout_logits.shape[0] != len(views):
        raise ValueError(f"expected outputs for {len(views)} views, got {char_logits.shape[0]}")
    chars = torch.log_softmax(char_logits.float(), dim=-1)
    flipped = torch.tensor([v == "hflip" for v in views])
    if flipped.any():
        chars = chars.clone()
        chars[flipped] = chars[flipped].flip(dims=[2])  # slot i of a mirrored plate is slot S-1-i
    layouts = torch.log_softmax(layout_logits.float(), dim=-1)
    return chars.mean(0), layouts.mean(0)
