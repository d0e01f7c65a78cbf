"""STFT: the spatio-temporal fusion transformer of KSR-Net.

Input: per-frame features already aligned to the reference frame, ``(B, T, C, H, W)`` at LR
resolution (any ``T >= 1``, any ``H, W``, odd sizes included), with an optional frame validity mask
``(B, T)`` for tracks that have fewer frames than ``T`` (padded). Output: the refined per-frame
features ``(B, T, C, H, W)`` and one fused map ``(B, C, H, W)`` for the restoration head.

How it works (Video Swin / VRT style, written for this project):

* Every feature vector at ``(t, h, w)`` is a token. A block attends within non-overlapping 3D
  windows of ``window = (wt, wh, ww)`` tokens, with a learned relative position bias indexed by the
  displacement ``(dt, dh, dw)`` between query and key. Blocks are pre-norm residual
  (``x + attn(norm(x))``, ``x + mlp(norm(x))``).
* Odd blocks (1, 3, ...) shift the windows by half a window: the token grid is rolled cyclically by
  ``-shift`` on each axis, attended in the regular window grid, and rolled back. A window at the end
  of an axis then holds tokens from both ends of the grid; an attention mask forbids attention
  between tokens that wrapped around and tokens that did not (on any axis), so no token ever attends
  to a token that was not its neighbour. (Swin labels three regions per axis; two, "wrapped or not",
  give the same mask since the boundary between Swin's first two regions is itself a window edge.)
* The window is clamped to the actual grid on each axis (``min(window, size)``); an axis whose
  grid fits in one window is not shifted. The grid is padded (at the end) to a whole number of
  windows; padded tokens, and every token of a frame the validity mask marks missing, are masked
  out *as keys* in every block, so they never influence a real token. Masks are additive and
  finite (``MASK_VALUE``) rather than ``-inf``: a query whose keys are all masked (a padded or
  missing token, whose output is discarded anyway) gets a harmless finite average instead of NaN,
  and for real queries the masked keys' weights underflow to exactly 0 (a real query can always
  attend to itself).
* Temporal aggregation: attention-weighted pooling over frames, per location. Each token gets a
  scalar score from ``Linear(LayerNorm(token))``; a softmax over the valid frames of each ``(h, w)``
  gives the weights, and the fused map is the weighted sum of the refined tokens. The pooling has no
  notion of which frame is the reference and is invariant to the order of the frames, so the fused
  map depends on frame order only through the temporal windows and the relative temporal bias of
  the blocks (consecutive frames are neighbours; that order is physical and kept). A missing frame
  gets weight exactly 0. We prefer this to "take the reference frame's tokens": it lets every
  location draw on the frames that see it best (occlusion, blur, misalignment) instead of routing
  all evidence through one frame's tokens, and it degrades gracefully to ``T = 1``.

Missing frames are zeroed on entry (``torch.where``, so even NaN content cannot leak) and returned
as zeros in the per-frame output. At least one frame per track must be valid.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ksrnet.models.init import init_linear_and_norm

# Additive attention mask for forbidden keys (and pooling score of missing frames). Finite so that
# a row with every key masked gives a finite average instead of NaN; 1e4 below any real score makes
# the weight of a masked key underflow to exactly 0 in float32, bfloat16 and float16 softmax.
MASK_VALUE = -1e4


# --------------------------------------------------------------------------------------------------
# Configuration


def _check_positive_int(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{owner}.{name} must be a positive int, got {value!r}")


def _check_number(owner: str, name: str, value: Any, low: float, high: float | None, *,
                  low_inclusive: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = value >= low if low_inclusive else value > low
        ok = ok and (high is None or value < high)
    if not ok:
        bound = f"{'[' if low_inclusive else '('}{low}, {high if high is not None else 'inf'})"
        raise ValueError(f"{owner}.{name} must be a number in {bound}, got {value!r}")


@dataclass(frozen=True)
class FusionConfig:
    """Architecture of the STFT; saved beside every checkpoint (see ``to_dict``).

    ``dim`` is the channel count of the aligned features (input and output). ``depth`` blocks
    alternate regular and shifted windows (block 0 regular). ``window = (t, h, w)`` is the largest
    window; it is clamped to the input grid at run time, and the relative position bias table is
    sized for it. Defaults are the ``tiny`` preset.
    """

    dim: int = 64
    depth: int = 4
    heads: int = 4
    window: tuple[int, int, int] = (2, 8, 8)
    mlp_ratio: float = 2.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        owner = "FusionConfig"
        for name in ("dim", "depth", "heads"):
            _check_positive_int(owner, name, getattr(self, name))
        window = self.window
        if isinstance(window, list):  # from JSON/YAML
            window = tuple(window)
            object.__setattr__(self, "window", window)
        if not isinstance(window, tuple) or len(window) != 3:
            raise ValueError(f"{owner}.window must be a (t, h, w) tuple of 3 ints, got {window!r}")
        for axis, size in zip("thw", window):
            _check_positive_int(owner, f"window[{axis}]", size)
        if self.dim % self.heads:
            raise ValueError(f"{owner}.dim={self.dim} is not divisible by heads={self.heads}")
        _check_number(owner, "mlp_ratio", self.mlp_ratio, 0.0, None, low_inclusive=False)
        _check_number(owner, "dropout", self.dropout, 0.0, 1.0, low_inclusive=True)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["window"] = list(self.window)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FusionConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown FusionConfig keys: {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "FusionConfig":
        if name not in _PRESETS:
            raise ValueError(f"unknown fusion preset {name!r} (expected one of {', '.join(_PRESETS)})")
        return cls(**{**_PRESETS[name], **overrides})


_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(dim=64, depth=4, heads=4, mlp_ratio=2.0),
    "small": dict(dim=96, depth=6, heads=6, mlp_ratio=2.0),
    "base": dict(dim=128, depth=8, heads=8, mlp_ratio=2.0),
}
PRESET_NAMES: tuple[str, ...] = tuple(_PRESETS)


# --------------------------------------------------------------------------------------------------
# Window geometry (pure functions of sizes; exposed for tests)

Size3 = tuple[int, int, int]


def window_and_shift(grid: Size3, window: Size3, shifted: bool) -> tuple[Size3, Size3]:
    """Run-time window (clamped to ``grid``) and shift (half the window on axes with more than one
    window's worth of tokens, 0 elsewhere or when not ``shifted``)."""
    win = tuple(min(w, g) for w, g in zip(window, grid))
    shift = tuple((w // 2 if shifted and g > w else 0) for w, g in zip(win, grid))
    return win, shift  # type: ignore[return-value]


def padded_grid(grid: Size3, window: Size3) -> Size3:
    return tuple(-(-g // w) * w for g, w in zip(grid, window))  # type: ignore[return-value]


def window_partition(x: Tensor, window: Size3) -> Tensor:
    """``(B, T, H, W, *rest)`` with ``T, H, W`` multiples of ``window`` -> ``(B, nWin, N, *rest)``
    with ``N = wt * wh * ww`` tokens per window, windows in (t, h, w) raster order."""
    b, t, h, w = x.shape[:4]
    rest = x.shape[4:]
    wt, wh, ww = window
    x = x.reshape(b, t // wt, wt, h // wh, wh, w // ww, ww, *rest)
    perm = (0, 1, 3, 5, 2, 4, 6) + tuple(range(7, 7 + len(rest)))
    return x.permute(perm).reshape(b, -1, wt * wh * ww, *rest)


def window_merge(x: Tensor, window: Size3, grid: Size3) -> Tensor:
    """Inverse of ``window_partition``: ``(B, nWin, N, *rest)`` -> ``(B, T, H, W, *rest)``."""
    b = x.shape[0]
    rest = x.shape[3:]
    wt, wh, ww = window
    t, h, w = grid
    x = x.reshape(b, t // wt, h // wh, w // ww, wt, wh, ww, *rest)
    perm = (0, 1, 4, 2, 5, 3, 6) + tuple(range(7, 7 + len(rest)))
    return x.permute(perm).reshape(b, t, h, w, *rest)


def shift_region_mask(grid: Size3, window: Size3, shift: Size3, device: torch.device | None = None) -> Tensor:
    """Bool ``(nWin, N, N)``, True = may attend, for the rolled grid of a shifted block.

    ``grid`` is the padded grid (a multiple of ``window``). After rolling by ``-shift``, the last
    ``shift`` positions of each axis hold tokens that wrapped around from the start; two tokens may
    attend to each other only if they wrapped on exactly the same axes. All True when ``shift`` is 0.
    """
    region = torch.zeros(grid, dtype=torch.long, device=device)
    for axis, (size, s) in enumerate(zip(grid, shift)):
        if s == 0:
            continue
        wrapped = (torch.arange(size, device=device) >= size - s).long()
        view = [1, 1, 1]
        view[axis] = size
        region = region + wrapped.view(view) * (1 << axis)
    ids = window_partition(region.unsqueeze(0), window)[0]  # (nWin, N)
    return ids.unsqueeze(-1) == ids.unsqueeze(-2)


def relative_position_index(window: Size3, table_window: Size3, device: torch.device | None = None) -> Tensor:
    """Long ``(N, N)``: row of the bias table (sized for ``table_window``) for each query/key pair of
    a ``window`` (which is at most ``table_window`` on every axis), from the displacement
    ``(dt, dh, dw)``. The same displacement maps to the same row whatever the clamped window."""
    coords = torch.stack(torch.meshgrid(*(torch.arange(w, device=device) for w in window), indexing="ij"))
    coords = coords.flatten(1)  # (3, N)
    rel = coords[:, :, None] - coords[:, None, :]  # (3, N, N): query minus key
    _, th, tw = table_window
    rel = rel + torch.tensor([w - 1 for w in table_window], device=device).view(3, 1, 1)
    return (rel[0] * (2 * th - 1) + rel[1]) * (2 * tw - 1) + rel[2]


# --------------------------------------------------------------------------------------------------
# Blocks


class WindowAttention3D(nn.Module):
    """Multi-head self-attention within 3D windows with a relative position bias."""

    def __init__(self, dim: int, heads: int, table_window: Size3, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.dropout = dropout
        self.table_window = table_window
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        table_rows = (2 * table_window[0] - 1) * (2 * table_window[1] - 1) * (2 * table_window[2] - 1)
        self.bias_table = nn.Parameter(torch.zeros(table_rows, heads))
        # Index tensors per (run-time window, device): derived from sizes, not state.
        self._index_cache: dict[tuple[Size3, str], Tensor] = {}

    def relative_bias(self, window: Size3) -> Tensor:
        """``(heads, N, N)`` bias for a (clamped) run-time window."""
        device = self.bias_table.device
        key = (window, str(device))
        index = self._index_cache.get(key)
        if index is None:
            index = relative_position_index(window, self.table_window, device)
            self._index_cache[key] = index
        n = index.shape[0]
        return self.bias_table[index.flatten()].view(n, n, self.heads).permute(2, 0, 1)

    def forward(self, x: Tensor, window: Size3, mask: Tensor | None) -> Tensor:
        """``x``: ``(B, nWin, N, C)``; ``mask``: additive, broadcastable to ``(B, nWin, 1, N, N)``."""
        b, nw, n, c = x.shape
        qkv = self.qkv(x).view(b * nw, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B * nWin, heads, N, hd)
        bias = self.relative_bias(window).to(q.dtype)  # (heads, N, N)
        if mask is None:
            attn_mask = bias
        else:
            attn_mask = (mask.to(q.dtype) + bias).reshape(b * nw, self.heads, n, n)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        return self.proj(y.transpose(1, 2).reshape(b, nw, n, c))


class Mlp(nn.Sequential):
    def __init__(self, dim: int, ratio: float, dropout: float) -> None:
        hidden = int(dim * ratio)
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))


class STFTBlock(nn.Module):
    """Pre-norm (shifted) 3D window transformer block on ``(B, T, H, W, C)`` tokens whose grid is
    already padded to a multiple of the run-time window."""

    def __init__(self, config: FusionConfig, shifted: bool) -> None:
        super().__init__()
        self.shifted = shifted
        self.window = config.window
        self.norm1 = nn.LayerNorm(config.dim)
        self.attn = WindowAttention3D(config.dim, config.heads, config.window, config.dropout)
        self.norm2 = nn.LayerNorm(config.dim)
        self.mlp = Mlp(config.dim, config.mlp_ratio, config.dropout)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, key_valid: Tensor, grid: Size3) -> Tensor:
        """``x``: ``(B, Tp, Hp, Wp, C)`` padded tokens; ``key_valid``: bool ``(B, Tp, Hp, Wp)``;
        ``grid``: the unpadded ``(T, H, W)`` (sets the clamped window and the shift)."""
        win, shift = window_and_shift(grid, self.window, self.shifted)
        padded = tuple(x.shape[1:4])
        dims = (1, 2, 3)
        h = self.norm1(x)
        valid = key_valid
        if any(shift):
            h = torch.roll(h, shifts=tuple(-s for s in shift), dims=dims)
            valid = torch.roll(valid, shifts=tuple(-s for s in shift), dims=dims)
        windows = window_partition(h, win)  # (B, nWin, N, C)
        allowed = window_partition(valid, win).unsqueeze(2).unsqueeze(3)  # (B, nWin, 1, 1, N)
        if any(shift):
            region = shift_region_mask(padded, win, shift, x.device)  # (nWin, N, N)
            allowed = allowed & region.unsqueeze(1)  # (B, nWin, 1, N, N)
        mask = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device).masked_fill(~allowed, MASK_VALUE)
        y = window_merge(self.attn(windows, win, mask), win, padded)
        if any(shift):
            y = torch.roll(y, shifts=shift, dims=dims)
        x = x + self.drop(y)
        return x + self.drop(self.mlp(self.norm2(x)))


class FusionOutput(NamedTuple):
    frames: Tensor  # (B, T, C, H, W): refined per-frame features (zeros for missing frames)
    fused: Tensor  # (B, C, H, W): attention-pooled over valid frames
    weights: Tensor  # (B, T, H, W): the pooling weights (sum to 1 over T; 0 for missing frames)


class STFT(nn.Module):
    """Spatio-temporal fusion transformer: ``forward(features (B, T, C, H, W), frame_mask=None)``."""

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.config = config
        self.blocks = nn.ModuleList(STFTBlock(config, shifted=bool(i % 2)) for i in range(config.depth))
        self.pool_norm = nn.LayerNorm(config.dim)
        self.pool_score = nn.Linear(config.dim, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        init_linear_and_norm(self)
        for block in self.blocks:
            nn.init.trunc_normal_(block.attn.bias_table, std=0.02)
        # Uniform pooling at initialisation: the fused map starts as the mean of the valid frames.
        nn.init.zeros_(self.pool_score.weight)

    def forward_tokens(self, x: Tensor, key_valid: Tensor, grid: Size3) -> Tensor:
        """The blocks on already padded tokens ``(B, Tp, Hp, Wp, C)`` with a token validity mask
        ``(B, Tp, Hp, Wp)``; ``grid`` is the unpadded size. ``forward`` pads with zeros and builds
        the mask; this entry point lets a test fill the padding with anything."""
        for block in self.blocks:
            x = block(x, key_valid, grid)
        return x

    def forward(self, features: Tensor, frame_mask: Tensor | None = None) -> FusionOutput:
        """``features``: ``(B, T, C, H, W)`` aligned to the reference frame; ``frame_mask``: optional
        bool ``(B, T)``, True = real frame (default: all real)."""
        if features.dim() != 5:
            raise ValueError(f"features must be (B, T, C, H, W), got shape {tuple(features.shape)}")
        b, t, c, h, w = features.shape
        if c != self.config.dim:
            raise ValueError(f"features have {c} channels, FusionConfig.dim is {self.config.dim}")
        if frame_mask is None:
            frame_mask = torch.ones(b, t, dtype=torch.bool, device=features.device)
        else:
            if tuple(frame_mask.shape) != (b, t):
                raise ValueError(f"frame_mask must be (B, T) = {(b, t)}, got {tuple(frame_mask.shape)}")
            frame_mask = frame_mask.to(device=features.device, dtype=torch.bool)
            if not torch.jit.is_tracing() and not bool(frame_mask.any(dim=1).all()):
                raise ValueError("every track needs at least one valid frame in frame_mask")
        grid = (t, h, w)
        # Largest window any block uses: shifted and regular blocks clamp the same way, so one
        # padding fits all blocks.
        win, _ = window_and_shift(grid, self.config.window, shifted=False)
        tp, hp, wp = padded_grid(grid, win)
        frame_keep = frame_mask.view(b, t, 1, 1, 1)
        x = torch.where(frame_keep, features, torch.zeros((), dtype=features.dtype, device=features.device))
        x = x.permute(0, 1, 3, 4, 2)  # (B, T, H, W, C)
        x = F.pad(x, (0, 0, 0, wp - w, 0, hp - h, 0, tp - t))
        key_valid = torch.zeros(b, tp, hp, wp, dtype=torch.bool, device=features.device)
        key_valid[:, :t, :h, :w] = frame_mask.view(b, t, 1, 1)
        x = self.forward_tokens(x, key_valid, grid)[:, :t, :h, :w]  # (B, T, H, W, C)

        scores = self.pool_score(self.pool_norm(x)).squeeze(-1)  # (B, T, H, W)
        scores = scores.masked_fill(~frame_mask.view(b, t, 1, 1), MASK_VALUE)
        weights = scores.softmax(dim=1)
        frames = torch.where(frame_keep, x.permute(0, 1, 4, 2, 3), torch.zeros((), dtype=x.dtype, device=x.device))
        fused = (weights.unsqueeze(2) * frames).sum(dim=1)
        return FusionOutput(frames.contiguous(), fused, weights)
