"""HAM, the hybrid alignment module: flow warping corrected by flow-guided deformable attention.

For each supporting frame the flow (on the reference grid pointing into that frame, see
:mod:`ksrnet.models.flow` for the convention) gives a coarse alignment ``warped = warp(feat, flow)``.
Flow on 17 px tall, blurred, compressed crops is often off by a fraction of a pixel, and wrong where
it is occluded or leaves the frame, so HAM looks at what the warp got wrong,

    ``E = |warped - ref|`` (per channel by default, or its channel mean),
    ``offsets, logits = Conv(concat(Phi(warped), Phi(ref), E))``,

and resamples the *unwarped* supporting features at ``K`` points per location and per channel group,
``p + flow(p) + offset_k(p)``, combining them with ``softmax_k(logits)`` (deformable attention in the
manner of BasicVSR++'s flow-guided deformable alignment, with grid_sample and no compiled ops).
``Phi`` is one small conv shared by the warped and the reference features, so the predictor
compares like with like. Offsets are ``max_offset * tanh(gain * raw)``, in feature pixels.

Resolution: features live at the LR resolution (the grid of the frames and of the flow), so flows
from ``PyramidFlow`` apply to them unchanged; the reconstruction head upsamples later
(PixelShuffle), and the fusion transformer gets ``(B, T, C, H, W)`` from :meth:`HAM.align_track`.

Initialisation: at init the offsets are exactly zero and the attention weights exactly uniform, so
HAM's output equals ``warp(feat, flow)`` (up to float rounding of the K-way average). To make that
hold *and* let the K points become different (with zero-initialised offset convs all K points would
get identical gradients forever), the offset conv keeps its random init and its output is scaled by a
learnable per-channel ``offset_gain`` that starts at zero (like ReZero); the attention-logit conv
and the output projection (a residual 1x1 conv) start at zero.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ksrnet.models.flow import pixels_to_grid, resolve_frame_index, sample_at, sample_positions, warp

ERROR_MAPS = ("channel", "mean")


@dataclass(frozen=True)
class AlignConfig:
    """Architecture of :class:`FeatureExtractor` and :class:`HAM`; saved beside every checkpoint."""

    in_chans: int = 3
    channels: int = 32
    # Residual blocks of the feature extractor after its first conv.
    extractor_blocks: int = 2
    # K sampling points per location and group, and the channel groups that each get their own.
    num_points: int = 4
    groups: int = 4
    # Width of Phi (the shared embedding of warped and reference features) and of the predictor.
    embed_channels: int = 32
    hidden_channels: int = 64
    predictor_layers: int = 2
    kernel_size: int = 3
    # Largest offset from the flow target, in feature (LR) pixels.
    max_offset: float = 3.0
    # Starting value of the learnable offset gain. 0: HAM starts as the plain flow warp, but its K
    # points then coincide and the attention weights get no gradient until the gain moves (in the
    # CPU-trained final it never did; v2's did: benchmarks/ksrnet_diagnostics.py); > 0 starts the
    # points slightly apart.
    offset_gain_init: float = 0.0
    # "channel": E has C channels |warped - ref|; "mean": one channel, their mean over channels.
    error_map: str = "channel"
    negative_slope: float = 0.1

    def __post_init__(self) -> None:
        for name in ("in_chans", "channels", "num_points", "groups", "embed_channels",
                     "hidden_channels", "predictor_layers", "kernel_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"AlignConfig.{name} must be a positive int, got {value!r}")
        if (not isinstance(self.extractor_blocks, int) or isinstance(self.extractor_blocks, bool)
                or self.extractor_blocks < 0):
            raise ValueError(f"AlignConfig.extractor_blocks must be an int >= 0, got {self.extractor_blocks!r}")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"AlignConfig.kernel_size must be odd, got {self.kernel_size}")
        if self.channels % self.groups:
            raise ValueError(f"AlignConfig.channels={self.channels} is not divisible by groups={self.groups}")
        for name in ("max_offset", "negative_slope", "offset_gain_init"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"AlignConfig.{name} must be a finite number, got {value!r}")
        if self.max_offset <= 0:
            raise ValueError(f"AlignConfig.max_offset must be > 0, got {self.max_offset}")
        if self.offset_gain_init < 0:
            raise ValueError(f"AlignConfig.offset_gain_init must be >= 0, got {self.offset_gain_init}")
        if not 0 <= self.negative_slope < 1:
            raise ValueError(f"AlignConfig.negative_slope must be in [0, 1), got {self.negative_slope}")
        if self.error_map not in ERROR_MAPS:
            raise ValueError(f"AlignConfig.error_map must be one of {ERROR_MAPS}, got {self.error_map!r}")

    @property
    def error_channels(self) -> int:
        return self.channels if self.error_map == "channel" else 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AlignConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown AlignConfig keys: {', '.join(unknown)}")
        return cls(**data)


def _conv(cin: int, cout: int, k: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2)


class ResBlock(nn.Module):
    def __init__(self, channels: int, kernel_size: int, negative_slope: float) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv(channels, channels, kernel_size), nn.LeakyReLU(negative_slope),
                                  _conv(channels, channels, kernel_size))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class FeatureExtractor(nn.Module):
    """LR frames ``(B, in_chans, H, W)`` or ``(B, T, in_chans, H, W)`` in [-1, 1] -> features
    ``(B, channels, H, W)`` / ``(B, T, channels, H, W)`` at the same (LR) resolution."""

    def __init__(self, config: AlignConfig = AlignConfig()) -> None:
        super().__init__()
        c = config
        self.config = config
        self.body = nn.Sequential(
            _conv(c.in_chans, c.channels, c.kernel_size), nn.LeakyReLU(c.negative_slope),
            *(ResBlock(c.channels, c.kernel_size, c.negative_slope) for _ in range(c.extractor_blocks)),
        )

    def forward(self, frames: Tensor) -> Tensor:
        if frames.dim() == 5:
            return self.body(frames.flatten(0, 1)).unflatten(0, frames.shape[:2])
        if frames.dim() != 4:
            raise ValueError(f"frames must be (B, C, H, W) or (B, T, C, H, W), got {tuple(frames.shape)}")
        return self.body(frames)


class HamOutput(NamedTuple):
    aligned: Tensor  # (B, C, H, W): HAM's output (deformable samples + residual projection)
    warped: Tensor  # (B, C, H, W): plain flow warp, warp(feat, flow)
    offsets: Tensor  # (B, G, K, 2, H, W): (x, y) offsets from the flow target, feature px
    weights: Tensor  # (B, G, K, H, W): attention weights, softmax over K


class HAM(nn.Module):
    """Hybrid alignment of one supporting frame's features onto the reference grid.

    ``forward(feat, ref, flow)``: ``feat`` ``(B, C, Hf, Wf)`` features of the supporting frame
    (usually ``Hf, Wf == H, W``), ``ref`` ``(B, C, H, W)`` reference features, ``flow``
    ``(B, 2, H, W)`` on the reference grid pointing into the supporting frame, in feature pixels.
    Returns the aligned features ``(B, C, H, W)`` in ``feat``'s dtype; :meth:`details` also returns
    the plain warp, the offsets and the attention weights.
    """

    def __init__(self, config: AlignConfig = AlignConfig()) -> None:
        super().__init__()
        c = config
        self.config = config
        k = c.kernel_size
        self.phi = nn.Sequential(_conv(c.channels, c.embed_channels, k), nn.LeakyReLU(c.negative_slope))
        layers: list[nn.Module] = []
        cin = 2 * c.embed_channels + c.error_channels
        for _ in range(c.predictor_layers):
            layers += [_conv(cin, c.hidden_channels, k), nn.LeakyReLU(c.negative_slope)]
            cin = c.hidden_channels
        self.predictor = nn.Sequential(*layers)
        gk = c.groups * c.num_points
        self.offset_head = _conv(c.hidden_channels, 2 * gk, k)
        self.offset_gain = nn.Parameter(torch.full((2 * gk,), float(c.offset_gain_init)))
        self.weight_head = _conv(c.hidden_channels, gk, k)
        nn.init.zeros_(self.weight_head.weight)
        nn.init.zeros_(self.weight_head.bias)
        self.proj = nn.Conv2d(c.channels, c.channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def details(self, feat: Tensor, ref: Tensor, flow: Tensor) -> HamOutput:
        c = self.config
        if feat.dim() != 4 or feat.shape[1] != c.channels or ref.shape[1] != c.channels:
            raise ValueError(f"feat and ref must be (B, {c.channels}, H, W), got {tuple(feat.shape)} "
                             f"and {tuple(ref.shape)}")
        if ref.shape[-2:] != flow.shape[-2:] or ref.shape[0] != flow.shape[0]:
            raise ValueError(f"flow {tuple(flow.shape)} must be on the reference grid {tuple(ref.shape)}")
        b, _, h, w = ref.shape
        g, kp = c.groups, c.num_points

        warped = warp(feat, flow)
        err = (warped - ref).abs()
        if c.error_map == "mean":
            err = err.mean(1, keepdim=True)
        hidden = self.predictor(torch.cat((self.phi(warped), self.phi(ref), err), dim=1))
        raw = self.offset_head(hidden) * self.offset_gain.view(1, -1, 1, 1)
        offsets = (c.max_offset * torch.tanh(raw)).view(b, g, kp, 2, h, w)
        weights = torch.softmax(self.weight_head(hidden).view(b, g, kp, h, w), dim=2)

        # Absolute sample positions p + flow(p) + offset_k(p), per group and point (>= float32,
        # the same positions as warp() when the offsets are zero).
        px, py = sample_positions(flow)
        px = px[:, None, None] + offsets[:, :, :, 0].to(px.dtype)
        py = py[:, None, None] + offsets[:, :, :, 1].to(py.dtype)
        grid = pixels_to_grid(px, py, feat.shape[-2], feat.shape[-1])  # (B, G, K, H, W, 2)
        # One grid_sample for all points: the K point grids are stacked along the height axis.
        grid = grid.reshape(b * g, kp * h, w, 2)
        per_group = feat.reshape(b * g, c.channels // g, *feat.shape[-2:])
        samples = sample_at(per_group, grid).view(b, g, c.channels // g, kp, h, w)
        fused = (samples * weights.unsqueeze(2)).sum(3).reshape(b, c.channels, h, w)
        # In feat's dtype, as warp() returns: CUDA autocast runs softmax and sum in float32, so under
        # bf16 the sum would come out float32 and align_track's index_copy into the bf16 features
        # would fail (CPU autocast happens to promote index_copy, which hid this).
        aligned = (fused + self.proj(fused)).to(feat.dtype)
        return HamOutput(aligned, warped, offsets, weights)

    def forward(self, feat: Tensor, ref: Tensor, flow: Tensor) -> Tensor:
        return self.details(feat, ref, flow).aligned

    def align_track(self, feats: Tensor, flows: Tensor, ref_index: int) -> Tensor:
        """Align every frame of a track onto the reference, all supporting frames in one batch.

        ``feats`` ``(B, T, C, H, W)``, ``flows`` ``(B, T, 2, H, W)`` where ``flows[:, t]`` is on the
        reference grid pointing into frame t (as ``PyramidFlow.track_flows`` returns; the
        reference's own entry is ignored). Returns ``(B, T, C, H, W)``; the reference frame passes
        through unchanged.
        """
        return align_track(self, feats, flows, ref_index)


def align_track(ham: HAM, feats: Tensor, flows: Tensor, ref_index: int) -> Tensor:
    """Function form of :meth:`HAM.align_track`."""
    if feats.dim() != 5 or flows.dim() != 5 or flows.shape[2] != 2:
        raise ValueError(f"feats must be (B, T, C, H, W) and flows (B, T, 2, H, W), got "
                         f"{tuple(feats.shape)} and {tuple(flows.shape)}")
    if feats.shape[:2] != flows.shape[:2] or feats.shape[-2:] != flows.shape[-2:]:
        raise ValueError(f"feats {tuple(feats.shape)} and flows {tuple(flows.shape)} disagree")
    b, t = feats.shape[:2]
    ref_index = resolve_frame_index(ref_index, t)
    others = [i for i in range(t) if i != ref_index]
    if not others:
        return feats
    n = len(others)
    index = torch.tensor(others, device=feats.device)
    sup = feats[:, index].flatten(0, 1)
    ref = feats[:, ref_index].unsqueeze(1).expand(-1, n, -1, -1, -1).flatten(0, 1)
    aligned = ham(sup, ref, flows[:, index].flatten(0, 1))
    return feats.index_copy(1, index, aligned.view(b, n, *aligned.shape[1:]))
