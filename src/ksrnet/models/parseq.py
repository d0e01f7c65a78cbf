"""PARSeq recognizer for fixed 7-slot plates, plus the syntax-constrained decoding helpers.

The model follows PARSeq (Bautista & Atienza, ECCV 2022): a ViT encoder over 4x8 patches and a
two-stream decoder trained with permutation language modeling (PLM). Plates always have exactly
``num_slots`` characters, so there is no EOS/PAD: the decoder always emits ``num_slots`` slots and a
separate head predicts the plate layout.

Attention-mask convention (everywhere in this module): a bool mask of shape ``(queries, 1 + slots)``
where **True means "may attend"** (the convention of ``F.scaled_dot_product_attention``). Rows are
query slots in slot order (row ``s`` is the query that predicts slot ``s``); column 0 is BOS and
column ``1 + t`` is the content (token) of slot ``t``.

Decoder design choices, and why:

* The content stream is ``[BOS] + token(slot t) + pos(slot t)`` for *all* slots ``t`` (not only
  slots 0..5 as a left-to-right decoder would need): with an arbitrary permutation, or with cloze
  refinement, the last slot's token is context for other queries.
* The content stream is never updated by the decoder layers (PARSeq skips the content update in its
  last layer, so with the paper's default depth of 1 it is never updated either). Keeping it fixed
  for any depth means queries never attend to each other or to an updated content that may have
  mixed in their own token: the only path from a token to a query is the query mask, which keeps the
  no-leak guarantee exact for cloze refinement at any depth. It also lets the K permutations of PLM
  be stacked along the query axis against one shared content (no K-fold copy of the memory).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ksrnet import plates
from ksrnet.models.init import init_linear_and_norm

# Log-prob given to a character a layout forbids. Finite, so sums over frames/views/models and
# differences of such sums never produce NaN (-inf - -inf); 1e4 stays exact enough in float32.
MASKED_LOGP = -1e4
# Allowed characters are clamped to at least this, so that any sum of F allowed log-probs
# (>= F * ALLOWED_LOGP_FLOOR) always beats the same sum of forbidden ones (F * MASKED_LOGP): a
# forbidden character can never win a slot however the frames disagree. e^-5000 is 0 anyway.
ALLOWED_LOGP_FLOOR = -5e3


# --------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class ParseqConfig:
    """Architecture of the recognizer; saved beside every checkpoint (see ``to_dict``).

    Defaults are the ``tiny`` preset. The plate spec (``num_slots``, ``num_classes``,
    ``num_layouts``) defaults to ``ksrnet.plates`` and is stored here so a checkpoint never depends
    on module constants.
    """

    img_h: int = 32
    img_w: int = 128
    in_chans: int = 3
    patch_h: int = 4
    patch_w: int = 8
    embed_dim: int = 128
    enc_depth: int = 4
    enc_heads: int = 4
    dec_depth: int = 1
    dec_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    num_perms: int = 6
    refine_iters: int = 1
    # "patch": ViT's single linear patch projection; "conv": a small strided conv stem with the same
    # output grid. On an H100, tiny with the patch stem stayed on the character prior for 3100 steps
    # (48 tracks a step) where the conv stem had started to learn (benchmarks/RESULTS.md).
    # "cnn": conv-BatchNorm-ReLU pairs (one strided, one not) to the same grid. On a 2-core CPU it
    # is the only encoder here that left the character prior within ~150 steps of 48 frames
    # (benchmarks/RESULTS.md, "Why the recognizer did not learn").
    stem: str = "conv"
    stem_channels: int = 32
    # "sincos": a learned position table that starts as a 2D sine-cosine code; "zero": starts at
    # zero, positions then come from the stem's padding and the slot prior until it is learned.
    # With the unit-variance sin-cos start, CPU probes (slot prior on) stayed on the character
    # prior; with a zero start the same encoder left it.
    pos_embed_init: str = "sincos"
    # Width (fraction of the image width) of a Gaussian bias on the decoder's cross-attention that
    # starts slot i looking at the i-th seventh of the plate; its strength is learned. 0 = off.
    # Plates are fixed-pitch and fill most of the crop, so this breaks the decoder's symmetry at
    # step 0 instead of after thousands of steps on the character prior.
    slot_prior_sigma: float = 0.0
    num_slots: int = plates.NUM_SLOTS
    num_classes: int = len(plates.CHARSET)
    num_layouts: int = len(plates.LAYOUTS)

    def __post_init__(self) -> None:
        positive = ("img_h", "img_w", "in_chans", "patch_h", "patch_w", "embed_dim",
                    "enc_heads", "dec_depth", "dec_heads", "num_perms", "num_slots", "num_layouts")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ParseqConfig.{name} must be a positive int, got {value!r}")
        # enc_depth 0: the stem's tokens go straight to the decoder (a CNN encoder, no ViT blocks).
        for name in ("refine_iters", "enc_depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"ParseqConfig.{name} must be an int >= 0, got {value!r}")
        if not isinstance(self.num_classes, int) or isinstance(self.num_classes, bool) or self.num_classes < 2:
            raise ValueError(f"ParseqConfig.num_classes must be an int >= 2, got {self.num_classes!r}")
        if self.img_h % self.patch_h or self.img_w % self.patch_w:
            raise ValueError(
                f"image {self.img_h}x{self.img_w} is not a whole number of {self.patch_h}x{self.patch_w} patches")
        for heads in ("enc_heads", "dec_heads"):
            if self.embed_dim % getattr(self, heads):
                raise ValueError(
                    f"embed_dim={self.embed_dim} is not divisible by {heads}={getattr(self, heads)}")
        if isinstance(self.mlp_ratio, bool) or not isinstance(self.mlp_ratio, (int, float)) or self.mlp_ratio <= 0:
            raise ValueError(f"ParseqConfig.mlp_ratio must be a positive number, got {self.mlp_ratio!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"ParseqConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.stem not in ("patch", "conv", "cnn"):
            raise ValueError(f"ParseqConfig.stem must be 'patch', 'conv' or 'cnn', got {self.stem!r}")
        if self.pos_embed_init not in ("sincos", "zero"):
            raise ValueError(f"ParseqConfig.pos_embed_init must be 'sincos' or 'zero', got {self.pos_embed_init!r}")
        if not isinstance(self.stem_channels, int) or self.stem_channels < 1:
            raise ValueError(f"ParseqConfig.stem_channels must be a positive int, got {self.stem_channels!r}")
        if self.stem != "patch" and (self.patch_h & (self.patch_h - 1) or self.patch_w & (self.patch_w - 1)):
            raise ValueError(f"the {self.stem} stem needs power-of-two patch sizes")
        if isinstance(self.slot_prior_sigma, bool) or not isinstance(self.slot_prior_sigma, (int, float)) \
                or self.slot_prior_sigma < 0:
            raise ValueError(f"ParseqConfig.slot_prior_sigma must be >= 0, got {self.slot_prior_sigma!r}")
        if self.num_perms % 2:
            raise ValueError(
                f"ParseqConfig.num_perms must be even (permutations come in mirrored pairs), got {self.num_perms}")

    @property
    def grid(self) -> tuple[int, int]:
        return self.img_h // self.patch_h, self.img_w // self.patch_w

    @property
    def num_patches(self) -> int:
        gh, gw = self.grid
        return gh * gw

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ParseqConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ParseqConfig keys: {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def tiny(cls, **overrides: Any) -> "ParseqConfig":
        """~1.1M parameters: trains on CPU."""
        return cls(**{**_PRESETS["tiny"], **overrides})

    @classmethod
    def small(cls, **overrides: Any) -> "ParseqConfig":
        """The paper's PARSeq-S widths (384, 12 encoder blocks, 6/12 heads)."""
        return cls(**{**_PRESETS["small"], **overrides})

    @classmethod
    def base(cls, **overrides: Any) -> "ParseqConfig":
        return cls(**{**_PRESETS["base"], **overrides})

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "ParseqConfig":
        if name not in _PRESETS:
            raise ValueError(f"unknown PARSeq preset {name!r} (expected one of {', '.join(_PRESETS)})")
        return cls(**{**_PRESETS[name], **overrides})


_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(embed_dim=128, enc_depth=4, enc_heads=4, dec_depth=1, dec_heads=4),
    "small": dict(embed_dim=384, enc_depth=12, enc_heads=6, dec_depth=1, dec_heads=12),
    "base": dict(embed_dim=768, enc_depth=12, enc_heads=12, dec_depth=1, dec_heads=12),
}
PRESET_NAMES: tuple[str, ...] = tuple(_PRESETS)


# --------------------------------------------------------------------------------------------------
# Masks and permutations


def build_perm_attention_mask(perm: Tensor) -> Tensor:
    """Query-stream mask for a decoding order ``perm`` (a permutation of slot indices).

    ``perm`` is ``(S,)`` or ``(K, S)``; returns bool ``(S, S + 1)`` or ``(K, S, S + 1)`` where
    **True = may attend**. Row ``s`` is the query for slot ``s``; it may attend BOS (column 0) and
    the tokens of the slots that come strictly before ``s`` in ``perm`` (column ``1 + t``), never its
    own token nor those of slots decoded after it.
    """
    if perm.dim() not in (1, 2):
        raise ValueError(f"perm must be (S,) or (K, S), got shape {tuple(perm.shape)}")
    # rank[t] = position of slot t in the decoding order
    rank = torch.argsort(perm, dim=-1)
    sees = rank.unsqueeze(-2) < rank.unsqueeze(-1)  # [.., s, t]: t decoded before s
    bos = torch.ones(sees.shape[:-1] + (1,), dtype=torch.bool, device=perm.device)
    return torch.cat([bos, sees], dim=-1)


def cloze_mask(num_slots: int, device: torch.device | None = None) -> Tensor:
    """Refinement mask ``(S, S + 1)``, True = may attend: every query sees BOS and all the other
    slots' tokens, never its own."""
    others = ~torch.eye(num_slots, dtype=torch.bool, device=device)
    bos = torch.ones(num_slots, 1, dtype=torch.bool, device=device)
    return torch.cat([bos, others], dim=-1)


def sample_permutations(num_perms: int, num_slots: int, generator: torch.Generator) -> Tensor:
    """``(num_perms, num_slots)`` long tensor of decoding orders for PLM training.

    Row 0 is left-to-right, row 1 right-to-left; the rest are random permutations added in mirrored
    pairs ``(p, p[::-1])`` (PARSeq's choice: every pair trains each slot against complementary
    contexts). Duplicates are avoided while distinct permutations remain.
    """
    if num_slots < 1:
        raise ValueError(f"num_slots must be >= 1, got {num_slots}")
    if num_perms < 2 or num_perms % 2:
        raise ValueError(f"num_perms must be an even number >= 2, got {num_perms}")
    identity = torch.arange(num_slots, dtype=torch.long)
    perms = [identity, identity.flip(0)]
    seen = {tuple(p.tolist()) for p in perms}
    total = math.factorial(num_slots)
    while len(perms) < num_perms:
        p = torch.randperm(num_slots, generator=generator)
        key, rkey = tuple(p.tolist()), tuple(p.flip(0).tolist())
        # Distinct permutations pair up with their mirrors, so while fewer than all are taken an
        # unseen pair exists and rejection sampling ends; past that, duplicates are unavoidable.
        if len(seen) + 2 <= total and key in seen:
            continue
        seen.update((key, rkey))
        perms.extend([p, p.flip(0)])
    return torch.stack(perms)


# --------------------------------------------------------------------------------------------------
# Building blocks


class Attention(nn.Module):
    """Multi-head attention whose key/value projection can be computed once and reused (the encoder
    memory is attended by every decoding step)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.dropout = dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def keys_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, n, _ = x.shape
        kv = self.kv(x).view(b, n, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return kv[0], kv[1]

    def attend(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
        b, n, d = x.shape
        q = self.q(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        if mask is not None and mask.is_floating_point():
            mask = mask.to(q.dtype)  # an additive bias must match q's dtype under autocast
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.out(y.transpose(1, 2).reshape(b, n, d))

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        k, v = self.keys_values(context)
        return self.attend(x, k, v, mask)


class Mlp(nn.Sequential):
    def __init__(self, dim: int, ratio: float, dropout: float) -> None:
        hidden = int(dim * ratio)
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))


class EncoderBlock(nn.Module):
    """Pre-norm ViT block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm1(x)
        x = x + self.drop(self.attn(h, h))
        return x + self.drop(self.mlp(self.norm2(x)))


class DecoderLayer(nn.Module):
    """Query-stream update of PARSeq's two-stream decoder layer (pre-norm): attend the (fixed)
    content under the permutation mask, then the encoder memory, then an MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_c = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads, dropout)
        self.norm_x = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, heads, dropout)
        self.norm_m = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, query: Tensor, content: Tensor, memory_kv: tuple[Tensor, Tensor],
                mask: Tensor | None, memory_bias: Tensor | None = None) -> Tensor:
        query = query + self.drop(self.self_attn(self.norm_q(query), self.norm_c(content), mask))
        query = query + self.drop(self.cross_attn.attend(self.norm_x(query), *memory_kv, memory_bias))
        return query + self.drop(self.mlp(self.norm_m(query)))


def resize_pos_embed(pos_embed: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> Tensor:
    """Resample a learnt (1, rows * cols, dim) position embedding to another patch grid (bilinear
    over the grid), so a model trained at one input size can start training at another: the CNN
    and ViT weights do not depend on the image size, only the position table does."""
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    (r0, c0), (r1, c1) = old_grid, new_grid
    if pos_embed.ndim != 3 or pos_embed.shape[1] != r0 * c0:
        raise ValueError(f"pos_embed of shape {tuple(pos_embed.shape)} is not a {r0}x{c0} grid")
    table = pos_embed.reshape(1, r0, c0, -1).permute(0, 3, 1, 2)
    table = F.interpolate(table, size=(r1, c1), mode="bilinear", align_corners=False)
    return table.permute(0, 2, 3, 1).reshape(1, r1 * c1, -1).contiguous()


def adapt_to_config(model: "Parseq", config: "ParseqConfig") -> "Parseq":
    """A copy of ``model`` for ``config``, which may differ from the model's own config in the input
    size (img_h, img_w: the position embedding is resampled, resize_pos_embed), in more encoder
    blocks or decoder layers (enc_depth, dec_depth) and, for the "cnn" stem, in more stem channels
    (stem_channels), nothing else.

    What is added starts out computing nothing the model does not: added blocks and layers go after
    the model's own with the output projections of their residual branches zeroed (the identity),
    and added stem channels feed the next convolution through zero weights (widen_cnn_stem). Their
    inputs are not zero, so those weights get gradients from the first step. That lets a trained
    model grow without losing what it reads.
    """
    own = asdict(model.config)
    allowed = {"img_h", "img_w", "enc_depth", "dec_depth", "stem_channels"}
    if own | {k: v for k, v in asdict(config).items() if k in allowed} != asdict(config):
        raise ValueError("the model and the config differ in more than the input size, the depths and the stem's channels")
    if config.enc_depth < model.config.enc_depth or config.dec_depth < model.config.dec_depth:
        raise ValueError(f"the config has fewer encoder blocks or decoder layers ({config.enc_depth}, "
                         f"{config.dec_depth}) than the model ({model.config.enc_depth}, {model.config.dec_depth})")
    widen = config.stem_channels != model.config.stem_channels
    if widen and (config.stem != "cnn" or config.stem_channels < model.config.stem_channels):
        raise ValueError(f"stem_channels can only grow, and only for the cnn stem (model: {model.config.stem} stem, "
                         f"{model.config.stem_channels} channels; config: {config.stem_channels})")
    state = dict(model.state_dict())
    state["pos_embed"] = resize_pos_embed(state["pos_embed"], model.config.grid, config.grid)
    out = Parseq(config, syntax_masks=model.syntax_masks)
    if widen:
        widen_cnn_stem(model.patch_embed, out.patch_embed)
        state = {k: v for k, v in state.items() if not k.startswith("patch_embed.")}
    added = [*out.blocks[model.config.enc_depth:], *out.dec_layers[model.config.dec_depth:]]
    out.load_state_dict(state, strict=False)  # only the added blocks' (and widened stem's) weights are not in state
    with torch.no_grad():
        for module in added:
            for linear in _residual_outputs(module):
                linear.weight.zero_()
                linear.bias.zero_()
    return out


def widen_cnn_stem(narrow: nn.Sequential, wide: nn.Sequential) -> None:
    """Copy a trained cnn_stem into a freshly built one with at least as many channels per layer, so
    that ``wide`` computes ``narrow``'s output exactly.

    Each layer's first channels take the trained weights and batch-norm statistics. Its added output
    channels keep their fresh random weights (they see every input channel, so they start computing
    new features), and the next layer reads them through zero weights, so the output is unchanged
    until training moves those weights. Batch norm is per channel, so the added channels do not
    change the trained ones' normalisation, in training mode or not.
    """
    if len(narrow) != len(wide):
        raise ValueError(f"the stems differ in layer count ({len(narrow)} vs {len(wide)}): only channels may grow")
    with torch.no_grad():
        for small, big in zip(narrow, wide):
            small_conv = small[0] if isinstance(small, nn.Sequential) else small
            big_conv = big[0] if isinstance(big, nn.Sequential) else big
            o, i = small_conv.weight.shape[:2]
            if big_conv.weight.shape[0] < o or big_conv.weight.shape[1] < i \
                    or big_conv.weight.shape[2:] != small_conv.weight.shape[2:]:
                raise ValueError(f"stem layer {tuple(small_conv.weight.shape)} cannot widen to "
                                 f"{tuple(big_conv.weight.shape)}")
            big_conv.weight[:o, :i] = small_conv.weight
            big_conv.weight[:o, i:] = 0
            if small_conv.bias is not None:
                big_conv.bias[:o] = small_conv.bias
            if isinstance(small, nn.Sequential):
                small_bn, big_bn = small[1], big[1]
                for name in ("weight", "bias", "running_mean", "running_var"):
                    getattr(big_bn, name)[:o] = getattr(small_bn, name)
                big_bn.num_batches_tracked.copy_(small_bn.num_batches_tracked)


def _residual_outputs(module: nn.Module) -> list[nn.Linear]:
    """The last linear layer of each residual branch of an encoder block or decoder layer."""
    if isinstance(module, DecoderLayer):
        return [module.self_attn.out, module.cross_attn.out, module.mlp[-1]]
    return [module.attn.out, module.mlp[-1]]


def slot_position_prior(num_slots: int, rows: int, cols: int, sigma: float) -> Tensor:
    """(num_slots, rows * cols) additive attention bias: slot i prefers the columns around the centre
    of the i-th of num_slots equal cells spanning the middle 90 % of the width (any row)."""
    x = (torch.arange(cols, dtype=torch.float32) + 0.5) / cols
    centres = 0.05 + 0.9 * (torch.arange(num_slots, dtype=torch.float32) + 0.5) / num_slots
    bias = -((x[None] - centres[:, None]) ** 2) / (2 * sigma ** 2)  # (slots, cols)
    return bias[:, None, :].expand(num_slots, rows, cols).reshape(num_slots, rows * cols)


def sincos_2d(rows: int, cols: int, dim: int) -> Tensor:
    """(rows * cols, dim) fixed 2D sine-cosine position code: half the channels encode the row,
    half the column, at geometrically spaced frequencies (unit-variance entries)."""
    quarter = dim // 4
    freqs = 1.0 / (100.0 ** (torch.arange(quarter, dtype=torch.float32) / max(1, quarter)))
    ys, xs = torch.meshgrid(torch.arange(rows, dtype=torch.float32), torch.arange(cols, dtype=torch.float32),
                            indexing="ij")
    parts = []
    for coord in (ys.reshape(-1), xs.reshape(-1)):
        angles = coord[:, None] * freqs[None]
        parts += [angles.sin(), angles.cos()]
    code = torch.cat(parts, dim=1)
    return nn.functional.pad(code, (0, dim - code.shape[1]))


class GroupNorm1(nn.Module):
    """GroupNorm with one group (normalise over C, H, W), written out because nn.GroupNorm's batch
    size check is not traceable; same parameters and arithmetic."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        var = x.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
        x = (x - mean) * torch.rsqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


def conv_stem(in_chans: int, channels: int, dim: int, patch_h: int, patch_w: int) -> nn.Sequential:
    """3x3 convolutions that halve height and width until the (patch_h, patch_w) stride is reached,
    then a 1x1 projection to the embedding width: the same token grid as the patch projection."""
    layers: list[nn.Module] = [nn.Conv2d(in_chans, channels, 3, padding=1), nn.GELU()]
    sh, sw, ch = patch_h, patch_w, channels
    while sh > 1 or sw > 1:
        stride = (2 if sh > 1 else 1, 2 if sw > 1 else 1)
        out = min(2 * ch, dim)
        layers += [nn.Conv2d(ch, out, 3, stride=stride, padding=1), GroupNorm1(out), nn.GELU()]
        sh, sw, ch = sh // stride[0], sw // stride[1], out
    layers.append(nn.Conv2d(ch, dim, 1))
    return nn.Sequential(*layers)


def _conv_bn_relu(cin: int, cout: int, stride: tuple[int, int]) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())


def cnn_stem(in_chans: int, channels: int, dim: int, patch_h: int, patch_w: int) -> nn.Sequential:
    """A small VGG-like CNN to the (patch_h, patch_w) grid: one unstrided block at full resolution,
    then per halving a strided block (channels doubled up to dim) followed by an unstrided one,
    except after the last halving."""
    layers: list[nn.Module] = [_conv_bn_relu(in_chans, channels, (1, 1))]
    sh, sw, ch = patch_h, patch_w, channels
    while sh > 1 or sw > 1:
        stride = (2 if sh > 1 else 1, 2 if sw > 1 else 1)
        out = min(2 * ch, dim)
        sh, sw = sh // stride[0], sw // stride[1]
        layers.append(_conv_bn_relu(ch, out, stride))
        if sh > 1 or sw > 1:
            layers.append(_conv_bn_relu(out, out, (1, 1)))
        ch = out
    if ch != dim:
        layers.append(nn.Conv2d(ch, dim, 1))
    return nn.Sequential(*layers)


class ParseqOutput(NamedTuple):
    char_logits: Tensor  # (B, num_slots, num_classes), raw (no syntax mask applied)
    layout_logits: Tensor  # (B, num_layouts)


# --------------------------------------------------------------------------------------------------
# The model


class Parseq(nn.Module):
    """PARSeq with a fixed number of slots and a layout head.

    Images are float ``(B, in_chans, img_h, img_w)`` normalised to [-1, 1]. ``syntax_masks``
    ``(num_layouts, num_slots, num_classes)`` bool (True = allowed) defaults to
    ``plates.layout_masks()``; AR decoding feeds back only characters allowed by at least one layout.
    """

    def __init__(self, config: ParseqConfig, syntax_masks: np.ndarray | Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        c = config
        d = c.embed_dim
        # Encoder
        if c.stem == "conv":
            self.patch_embed = conv_stem(c.in_chans, c.stem_channels, d, c.patch_h, c.patch_w)
        elif c.stem == "cnn":
            self.patch_embed = cnn_stem(c.in_chans, c.stem_channels, d, c.patch_h, c.patch_w)
        else:
            self.patch_embed = nn.Conv2d(c.in_chans, d, kernel_size=(c.patch_h, c.patch_w),
                                         stride=(c.patch_h, c.patch_w))
        self.pos_embed = nn.Parameter(torch.zeros(1, c.num_patches, d))
        self.pos_drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(EncoderBlock(d, c.enc_heads, c.mlp_ratio, c.dropout)
                                    for _ in range(c.enc_depth))
        self.enc_norm = nn.LayerNorm(d)
        # Decoder: BOS is the extra last token id, never predicted.
        self.bos_id = c.num_classes
        self.token_embed = nn.Embedding(c.num_classes + 1, d)
        self.pos_queries = nn.Parameter(torch.zeros(1, c.num_slots, d))
        self.dec_drop = nn.Dropout(c.dropout)
        self.dec_layers = nn.ModuleList(DecoderLayer(d, c.dec_heads, c.mlp_ratio, c.dropout)
                                        for _ in range(c.dec_depth))
        self.dec_norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, c.num_classes)
        self.layout_head = nn.Linear(d, c.num_layouts)
        if c.slot_prior_sigma > 0:
            self.register_buffer("slot_prior", slot_position_prior(c.num_slots, *c.grid, c.slot_prior_sigma),
                                 persistent=False)
            self.slot_prior_scale = nn.Parameter(torch.ones(()))
        else:
            self.slot_prior = None

        masks = torch.as_tensor(plates.layout_masks() if syntax_masks is None else syntax_masks)
        expected = (c.num_layouts, c.num_slots, c.num_classes)
        if tuple(masks.shape) != expected:
            raise ValueError(f"syntax masks have shape {tuple(masks.shape)}, the config needs {expected}"
                             " (pass syntax_masks= when the plate spec differs from ksrnet.plates)")
        masks = masks.to(torch.bool)
        if not bool(masks.any(-1).all()):
            raise ValueError("every slot of every layout must allow at least one character")
        # Derived from the plate spec, not learned: kept out of the state dict.
        self.register_buffer("syntax_masks", masks, persistent=False)
        self.register_buffer("union_mask", masks.any(0), persistent=False)
        self.register_buffer("cloze_mask", cloze_mask(c.num_slots), persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        init_linear_and_norm(self)
        nn.init.trunc_normal_(self.token_embed.weight, std=0.02)
        # 2D sin-cos start (still learned): the slot queries need to tell patches apart by position
        # from the first step, which a near-zero random table does not give them.
        with torch.no_grad():
            if self.config.pos_embed_init == "sincos":
                self.pos_embed.copy_(sincos_2d(*self.config.grid, self.config.embed_dim)[None])
            else:
                self.pos_embed.zero_()
        nn.init.trunc_normal_(self.pos_queries, std=0.02)
        # ViT's patch-embed init: a linear layer over the flattened patch (conv stems keep torch's).
        if isinstance(self.patch_embed, nn.Conv2d):
            fan_in = self.patch_embed.in_channels * self.patch_embed.kernel_size[0] * self.patch_embed.kernel_size[1]
            nn.init.trunc_normal_(self.patch_embed.weight, std=1 / math.sqrt(fan_in))
            nn.init.zeros_(self.patch_embed.bias)

    # -- encoder ---------------------------------------------------------------------------------

    def encode(self, images: Tensor, *, return_intermediates: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Encoder memory ``(B, num_patches, embed_dim)``; with ``return_intermediates`` also every
        block's output (features for a perceptual loss)."""
        c = self.config
        # Under tracing, shapes are traced tensors; the traced graph is checked by its caller.
        if not torch.jit.is_tracing() and tuple(images.shape[1:]) != (c.in_chans, c.img_h, c.img_w):
            raise ValueError(f"expected images (B, {c.in_chans}, {c.img_h}, {c.img_w}), got {tuple(images.shape)}")
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        x = self.pos_drop(x + self.pos_embed)
        feats = [] if len(self.blocks) else [x]  # without blocks the stem's tokens are the features
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        memory = self.enc_norm(x)
        return (memory, feats) if return_intermediates else memory

    def layout_logits_from_memory(self, memory: Tensor) -> Tensor:
        return self.layout_head(memory.mean(dim=1))

    # -- decoder ---------------------------------------------------------------------------------

    def _memory_kv(self, memory: Tensor) -> list[tuple[Tensor, Tensor]]:
        return [layer.cross_attn.keys_values(memory) for layer in self.dec_layers]

    def _content(self, tokens: Tensor | None, batch: int, device: torch.device) -> Tensor:
        """``[BOS] + (token embedding + slot position)`` for the first ``tokens.shape[1]`` slots."""
        scale = math.sqrt(self.config.embed_dim)  # PARSeq scales token embeddings like a transformer LM
        bos = torch.full((batch, 1), self.bos_id, dtype=torch.long, device=device)
        content = scale * self.token_embed(bos)
        if tokens is not None:
            n = tokens.shape[1]
            slots = scale * self.token_embed(tokens) + self.pos_queries[:, :n]
            content = torch.cat([content, slots], dim=1)
        return self.dec_drop(content)

    def _decode(self, queries: Tensor, content: Tensor, memory_kv: list[tuple[Tensor, Tensor]],
                mask: Tensor | None, slots: slice, repeat: int = 1) -> Tensor:
        """Logits ``(B, Q, num_classes)`` for position queries ``(1 or B, Q, D)`` of the slots
        ``slots`` (repeated ``repeat`` times along Q)."""
        q = self.dec_drop(queries.expand(content.shape[0], -1, -1))
        bias = None
        if self.slot_prior is not None:
            bias = (self.slot_prior_scale * self.slot_prior[slots]).repeat(repeat, 1)
        for layer, kv in zip(self.dec_layers, memory_kv):
            q = layer(q, content, kv, mask, bias)
        return self.head(self.dec_norm(q))

    def _masked_argmax(self, logits: Tensor, slots: slice) -> Tensor:
        allowed = self.union_mask[slots]
        return logits.masked_fill(~allowed, float("-inf")).argmax(dim=-1)

    def decode_memory(self, memory: Tensor, *, mode: str = "nar", refine_iters: int | None = None) -> Tensor:
        """Char logits ``(B, num_slots, num_classes)`` from encoder memory (see ``forward``)."""
        if mode not in ("nar", "ar"):
            raise ValueError(f"mode must be 'nar' or 'ar', got {mode!r}")
        iters = self.config.refine_iters if refine_iters is None else refine_iters
        if not isinstance(iters, int) or iters < 0:
            raise ValueError(f"refine_iters must be an int >= 0, got {iters!r}")
        b, s = memory.shape[0], self.config.num_slots
        memory_kv = self._memory_kv(memory)
        if mode == "nar":
            logits = self._nar_logits(memory_kv, b, memory.device)
        else:
            # Left-to-right, one query per step; the content holds exactly the slots decoded so far,
            # which is row i of the identity-permutation mask, so no mask is needed.
            steps: list[Tensor] = []
            preds: list[Tensor] = []
            for i in range(s):
                tokens = torch.cat(preds, dim=1) if preds else None
                content = self._content(tokens, b, memory.device)
                step = self._decode(self.pos_queries[:, i:i + 1], content, memory_kv, None, slice(i, i + 1))
                steps.append(step)
                preds.append(self._masked_argmax(step, slice(i, i + 1)))
            logits = torch.cat(steps, dim=1)
        for _ in range(iters):
            logits = self._refined_logits(self._masked_argmax(logits, slice(0, s)), memory_kv)
        return logits

    def _nar_logits(self, memory_kv: list[tuple[Tensor, Tensor]], batch: int, device: torch.device) -> Tensor:
        """Every slot at once against BOS alone: the row of a mask with only column 0 True."""
        return self._decode(self.pos_queries, self._content(None, batch, device), memory_kv, None,
                            slice(0, self.config.num_slots))

    def _refined_logits(self, tokens: Tensor, memory_kv: list[tuple[Tensor, Tensor]]) -> Tensor:
        """One refinement pass: every slot again, with the cloze mask, given ``tokens`` (B, slots) as
        the reading of the other slots."""
        content = self._content(tokens, tokens.shape[0], tokens.device)
        return self._decode(self.pos_queries, content, memory_kv, self.cloze_mask, slice(0, self.config.num_slots))

    def forward(self, images: Tensor, *, mode: str = "nar", refine_iters: int | None = None) -> ParseqOutput:
        """Read ``images``: ``mode="ar"`` decodes greedily left to right feeding back the argmax
        allowed by the union of the layouts; ``mode="nar"`` predicts every slot from BOS alone. Both
        are then refined ``refine_iters`` times (default: config) with the cloze mask, the previous
        reading as context. Logits are returned raw; apply the syntax masks with
        ``layout_log_probs``."""
        memory = self.encode(images)
        char_logits = self.decode_memory(memory, mode=mode, refine_iters=refine_iters)
        return ParseqOutput(char_logits, self.layout_logits_from_memory(memory))

    def plm_decode(self, memory: Tensor, targets: Tensor, perms: Tensor) -> Tensor:
        """Teacher-forced logits ``(K, B, num_slots, num_classes)``, one set per permutation.

        The K permutations are stacked along the query axis against a shared content: queries never
        attend to each other, so this equals K separate decoder passes."""
        s = self.config.num_slots
        if targets.dim() != 2 or targets.shape[1] != s:
            raise ValueError(f"targets must be (B, {s}), got {tuple(targets.shape)}")
        if perms.dim() != 2 or perms.shape[1] != s:
            raise ValueError(f"perms must be (K, {s}), got {tuple(perms.shape)}")
        k, b = perms.shape[0], memory.shape[0]
        mask = build_perm_attention_mask(perms.to(memory.device)).reshape(k * s, s + 1)
        content = self._content(targets, b, memory.device)
        queries = self.pos_queries.repeat(1, k, 1)
        logits = self._decode(queries, content, self._memory_kv(memory), mask, slice(0, s), repeat=k)
        return logits.view(b, k, s, -1).transpose(0, 1)

    def plm_logits(self, images: Tensor, targets: Tensor, perms: Tensor) -> Tensor:
        """Encode once and return ``plm_decode`` logits ``(K, B, num_slots, num_classes)``. Training
        code that also needs the layout logits should call ``encode``, ``plm_decode`` and
        ``layout_logits_from_memory`` itself to encode only once."""
        return self.plm_decode(self.encode(images), targets, perms)


# --------------------------------------------------------------------------------------------------
# Syntax-constrained decoding (work on one frame's log-probs or on sums over frames/views/models)


def layout_log_probs(char_logits: Tensor, layout_logits: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    """Per-layout char log-probs ``(B, L, S, C)`` and layout log-probs ``(B, L)``.

    Each slot's log-softmax runs over the whole charset, then the characters layout ``l`` forbids
    get ``MASKED_LOGP`` (finite, -1e4, rather than -inf: fused sums and their differences stay NaN
    free). Allowed characters are not renormalised within the layout, on purpose: the probability
    mass a slot puts on letters versus digits is the evidence that tells the layouts apart
    (renormalising would make every layout's best reading equally sure and leave the choice to the
    layout head alone). Allowed log-probs are floored at ``ALLOWED_LOGP_FLOOR`` so a forbidden
    character never wins a slot, however many frames are summed. Computed in float32.

    Product fusion over frames/views/models = sum both outputs over them, then
    ``decode_constrained``.
    """
    masks = torch.as_tensor(masks, device=char_logits.device).to(torch.bool)
    logp = torch.log_softmax(char_logits.float(), dim=-1).unsqueeze(1)  # (B, 1, S, C)
    per_layout = torch.where(masks, logp.clamp(min=ALLOWED_LOGP_FLOOR), torch.full_like(logp, MASKED_LOGP))
    return per_layout, torch.log_softmax(layout_logits.float(), dim=-1)


class ConstrainedReading(NamedTuple):
    """``layout_posterior[layout_index] * char_probs.prod(-1)`` is the posterior probability of the
    reading when the char and layout heads are combined as a product of experts (and the frames'
    probabilities as a product, for summed inputs)."""

    indices: Tensor  # (B, S) long: the chosen reading
    char_probs: Tensor  # (B, S): p(char | slot, chosen layout), normalised over the layout's characters
    layout_index: Tensor  # (B,) long
    layout_posterior: Tensor  # (B, L): p(layout | evidence), marginalised over readings


def decode_constrained(per_layout_char_logp: Tensor, layout_logp: Tensor) -> ConstrainedReading:
    """Best reading under each layout (per-slot argmax), scored by the sum of its slot log-probs
    plus the layout log-prob; the best-scoring layout wins.

    Inputs need not be normalised (sums over frames are fine). ``char_probs`` normalises each slot
    of the chosen layout over the characters it allows; ``layout_posterior`` is
    ``softmax_l(layout_logp[l] + sum_s logsumexp_c per_layout[l, s, c])``. The chosen layout is
    the one holding the single most probable reading; it can differ from the posterior's argmax when
    one layout spreads its mass over many readings (the confidence then says so).
    """
    best_logp, best_idx = per_layout_char_logp.max(dim=-1)  # (B, L, S)
    joint = best_logp.sum(dim=-1) + layout_logp  # (B, L)
    layout_index = joint.argmax(dim=-1)
    chosen = _select_layout(per_layout_char_logp, layout_index)  # (B, S, C)
    indices = best_idx.gather(1, layout_index.view(-1, 1, 1).expand(-1, 1, best_idx.shape[-1])).squeeze(1)
    char_probs = torch.softmax(chosen, dim=-1).gather(-1, indices.unsqueeze(-1)).squeeze(-1)
    marginal = torch.logsumexp(per_layout_char_logp, dim=-1).sum(dim=-1) + layout_logp
    return ConstrainedReading(indices, char_probs, layout_index, torch.softmax(marginal, dim=-1))


def topk_alternatives(per_layout_char_logp: Tensor, layout_index: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per-slot top-``k`` characters ``(B, S, k)`` and their probabilities under the chosen layout
    (normalised over its allowed characters, as ``char_probs`` in ``decode_constrained``). Characters the layout forbids
    come last, with probability ~0, only when ``k`` exceeds the allowed count."""
    num_classes = per_layout_char_logp.shape[-1]
    if not 1 <= k <= num_classes:
        raise ValueError(f"k must be in [1, {num_classes}], got {k}")
    probs = torch.softmax(_select_layout(per_layout_char_logp, layout_index), dim=-1)
    top_probs, top_idx = probs.topk(k, dim=-1)
    return top_idx, top_probs


def _select_layout(per_layout: Tensor, layout_index: Tensor) -> Tensor:
    _, _, s, c = per_layout.shape
    return per_layout.gather(1, layout_index.view(-1, 1, 1, 1).expand(-1, 1, s, c)).squeeze(1)
