"""KSR-Net assembled, its ablation variants, and the MF-LPR²-style multi-frame baseline.

KSR-Net reads a track of ``T`` low-resolution frames ``(B, T, 3, H, W)`` in [-1, 1]::

    features = FeatureExtractor(frames)                          (B, T, C, H, W)
    flows    = PyramidFlow.track_flows(frames, ref)              (B, T, 2, H, W), ref -> t
    aligned  = HAM.align_track(features, flows, ref)             v2/final (v1: plain flow warp)
    fused    = STFT(aligned, frame_mask).fused                   (B, C, H, W)
    sr       = SRHead(fused, frames[:, ref])                     (B, 3, s*H, s*W) in [-1, 1]
    logits   = Parseq(to_recognizer_input(sr))                   7 slots + layout

Variants (``KSRNetConfig.variant``), the rows of the ablation table:

* ``"v1"``: flow warp only (no deformable attention; no HAM module is even built), + STFT.
  Trained with pixel + perceptual losses.
* ``"v2"``: HAM (flow + flow-guided deformable attention) + STFT; pixel + perceptual losses.
* ``"final"``: **the same module as v2**; it differs only in its training losses (pixel + edge +
  semantic, see ``VARIANT_LOSSES``). The variant is kept in the config so a checkpoint says which
  recipe produced it; the network code does not branch on it beyond ``uses_ham``.

Fixed choices, and why:

* **One LR size per track.** Frames of a track differ in size (the detector's crop follows the
  plate), but the flow, the alignment and the fusion need one grid. The data pipeline resizes every
  frame to ``config.lr_size`` before the network (bilinear, area when shrinking, e.g.
  ``ksrnet.preprocess.frames_to_tensor(frames, *config.lr_size)`` or :func:`resize_track`). The
  default ``(16, 48)`` (H, W) is the LRLPR-26 test crops' mean size (~48x17), a whole number of
  the STFT's 8x8 windows and of the flow pyramid's stride (no padding), and at x4 gives a 64x192
  SR plate that the recognizer reads after an antialiased shrink to 32x128. The modules themselves
  accept any ``H, W`` (odd sizes included); the SR image lives on the *resized* reference frame's
  grid, ``upscale`` times finer (:func:`lr_resize_matrix` composes the resize into the
  homographies that build SR targets).
* **Reference frame.** ``ref_index="middle"`` uses frame ``T // 2``, ``"last"`` frame ``T - 1``,
  resolved per call from ``T`` (1..N). With a ``frame_mask`` the policy is applied to each track's
  *valid* frames (the middle / last valid one), and that frame is swapped into the batch-wide slot
  ``T // 2`` (or ``T - 1``) so the batched flow and alignment calls share one index; the aligned
  features go back to the caller's order before the STFT (whose temporal windows and bias assume
  consecutive frames), every per-frame output is in the caller's order, and
  ``KSRNetOutput.reference`` says which frame each SR image is registered to (the SR target must be
  built on that frame's grid).
* **Missing frames** (``frame_mask`` False) are replaced by zeros before anything looks at them,
  the STFT masks them out, and their flows, reliabilities and fusion weights are reported as 0, so
  no output depends on their pixels (NaN padding included).
* **Reliability.** ``KSRNetConfig.reliability`` (default on) also runs the backward flows to report
  the soft forward-backward consistency (B, T, 1, H, W) (twice the flow cost); KSR-Net itself does
  not consume it (HAM sees the warp error instead), it is there for losses and diagnostics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ksrnet.models.align import HAM, AlignConfig, FeatureExtractor
from ksrnet.models.flow import FlowConfig, PyramidFlow, warp
from ksrnet.models.fusion import STFT, FusionConfig
from ksrnet.models.parseq import Parseq, ParseqConfig, ParseqOutput
from ksrnet.models.restore import RestoreConfig, SRHead, to_recognizer_input

VARIANTS = ("v1", "v2", "final")
REF_POLICIES = ("middle", "last")
# Declarative: the losses each variant is trained with (for the trainer and the ablation table;
# the model never reads this).
VARIANT_LOSSES: dict[str, tuple[str, ...]] = {
    "v1": ("charbonnier", "perceptual"),
    "v2": ("charbonnier", "perceptual"),
    "final": ("charbonnier", "edge", "semantic"),
}
DEFAULT_LR_SIZE = (16, 48)


# --------------------------------------------------------------------------------------------------
# Shared helpers


def _check_size(owner: str, name: str, value: Any) -> tuple[int, int]:
    if isinstance(value, list):
        value = tuple(value)
    if (not isinstance(value, tuple) or len(value) != 2
            or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in value)):
        raise ValueError(f"{owner}.{name} must be (height, width), two positive ints, got {value!r}")
    return value


def _check_choice(owner: str, name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{owner}.{name} must be one of {tuple(choices)}, got {value!r}")


def _check_number(owner: str, name: str, value: Any, low: float, high: float | None = None,
                  low_inclusive: bool = True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = value >= low if low_inclusive else value > low
        ok = ok and (high is None or value <= high)
    if not ok:
        opening = "[" if low_inclusive else "("
        bound = f"{opening}{low}, {high}]" if high is not None else f"{opening}{low}, inf)"
        raise ValueError(f"{owner}.{name} must be a number in {bound}, got {value!r}")


def _unknown_keys(owner: str, cls: type, data: dict[str, Any]) -> None:
    unknown = sorted(set(data) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"unknown {owner} keys: {', '.join(unknown)}")


def batch_reference_index(policy: str, num_frames: int) -> int:
    """The batch-wide reference slot for ``num_frames`` frames: ``T // 2`` ("middle") or ``T - 1``."""
    _check_choice("ref_index", "policy", policy, REF_POLICIES)
    if num_frames < 1:
        raise ValueError(f"need at least one frame, got {num_frames}")
    return num_frames // 2 if policy == "middle" else num_frames - 1


def reference_indices(policy: str, frame_mask: Tensor) -> Tensor:
    """Per-track reference frame ``(B,)`` long: the policy applied to the valid frames of each row
    of ``frame_mask`` ``(B, T)`` bool (the ``n // 2``-th or the last of its ``n`` valid frames).
    Equals :func:`batch_reference_index` for a full mask."""
    mask = frame_mask.to(torch.bool)
    count = mask.sum(1)
    rank = mask.long().cumsum(1) - 1  # rank of each valid frame among the valid ones
    target = count // 2 if policy == "middle" else count - 1
    hit = mask & (rank == target.unsqueeze(1))
    return hit.long().argmax(1)


def _swap_permutation(ref: Tensor, slot: int, num_frames: int) -> Tensor:
    """``(B, T)`` long permutation swapping frame ``ref[b]`` with ``slot`` (an involution)."""
    idx = torch.arange(num_frames, device=ref.device).expand(ref.shape[0], -1)
    r = ref.unsqueeze(1)
    return torch.where(idx == slot, r, torch.where(idx == r, torch.full_like(idx, slot), idx))


def _gather_frames(x: Tensor, perm: Tensor) -> Tensor:
    """``x[b, perm[b]]`` for ``x`` ``(B, T, ...)``."""
    rows = torch.arange(x.shape[0], device=x.device).unsqueeze(1)
    return x[rows, perm]


class _Prepared(NamedTuple):
    frames: Tensor  # (B, T, C, H, W): reference at slot `slot`, missing frames zeroed
    mask: Tensor  # (B, T) bool, in the permuted order
    perm: Tensor | None  # (B, T) permutation applied (its own inverse), None when identity
    slot: int  # batch-wide reference slot
    reference: Tensor  # (B,) long: reference frame in the caller's order


def _prepare(frames: Tensor, frame_mask: Tensor | None, policy: str) -> _Prepared:
    if frames.dim() != 5:
        raise ValueError(f"frames must be (B, T, C, H, W), got {tuple(frames.shape)}")
    b, t = frames.shape[:2]
    slot = batch_reference_index(policy, t)
    if frame_mask is None:
        mask = torch.ones(b, t, dtype=torch.bool, device=frames.device)
        reference = torch.full((b,), slot, dtype=torch.long, device=frames.device)
        return _Prepared(frames, mask, None, slot, reference)
    if tuple(frame_mask.shape) != (b, t):
        raise ValueError(f"frame_mask must be (B, T) = {(b, t)}, got {tuple(frame_mask.shape)}")
    mask = frame_mask.to(device=frames.device, dtype=torch.bool)
    if not torch.jit.is_tracing() and not bool(mask.any(1).all()):
        raise ValueError("every track needs at least one valid frame in frame_mask")
    reference = reference_indices(policy, mask)
    perm = _swap_permutation(reference, slot, t)
    frames = _gather_frames(frames, perm)
    mask = _gather_frames(mask, perm)
    zero = torch.zeros((), dtype=frames.dtype, device=frames.device)
    frames = torch.where(mask.view(b, t, 1, 1, 1), frames, zero)
    return _Prepared(frames, mask, perm, slot, reference)


def _restore_order(x: Tensor | None, prep: _Prepared) -> Tensor | None:
    """Per-frame output ``(B, T, ...)`` back to the caller's frame order, 0 for missing frames."""
    if x is None:
        return None
    m = prep.mask.view(*prep.mask.shape, *([1] * (x.dim() - 2)))
    x = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))
    return x if prep.perm is None else _gather_frames(x, prep.perm)


def warp_track(feats: Tensor, flows: Tensor, ref_index: int) -> Tensor:
    """KSR-Net v1's alignment: every supporting frame's features ``(B, T, C, H, W)`` warped onto the
    reference grid with its flow ``(B, T, 2, H, W)`` (ref -> t); the reference passes unchanged."""
    if feats.dim() != 5 or flows.dim() != 5 or flows.shape[2] != 2:
        raise ValueError(f"feats must be (B, T, C, H, W) and flows (B, T, 2, H, W), got "
                         f"{tuple(feats.shape)} and {tuple(flows.shape)}")
    b, t = feats.shape[:2]
    others = [i for i in range(t) if i != ref_index]
    if not others:
        return feats
    index = torch.tensor(others, device=feats.device)
    warped = warp(feats[:, index].flatten(0, 1), flows[:, index].flatten(0, 1))
    return feats.index_copy(1, index, warped.view(b, len(others), *warped.shape[1:]))


def resize_track(frames: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
    """Frames ``(C, h_t, w_t)`` of one track (sizes may differ) -> ``(T, C, H, W)`` at ``size``:
    bilinear, half-pixel centres, antialiased on an axis that shrinks."""
    if not frames:
        raise ValueError("no frames to resize")
    out = []
    for f in frames:
        if f.dim() != 3:
            raise ValueError(f"each frame must be (C, h, w), got {tuple(f.shape)}")
        if tuple(f.shape[-2:]) == tuple(size):
            out.append(f)
            continue
        shrink = f.shape[-2] > size[0] or f.shape[-1] > size[1]
        out.append(F.interpolate(f[None].float(), size=size, mode="bilinear", align_corners=False,
                                 antialias=shrink)[0].to(f.dtype))
    return torch.stack(out)


def lr_resize_matrix(src_size: tuple[int, int], dst_size: tuple[int, int]) -> Tensor:
    """3x3 float64 matrix taking pixel coordinates of a frame resized to ``dst_size`` (H, W) back to
    the original frame of ``src_size`` (half-pixel convention: ``x_src = (x_dst + 0.5) * w_src /
    w_dst - 0.5``). Compose a homography from original LR pixels as ``H_lr @ lr_resize_matrix``."""
    sy, sx = src_size[0] / dst_size[0], src_size[1] / dst_size[1]
    return torch.tensor([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]],
                        dtype=torch.float64)


# --------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class KSRNetConfig:
    """Architecture of :class:`KSRNet`; saved beside every checkpoint (``to_dict`` / ``from_dict``).

    Sub-configs must agree: ``align.channels == fusion.dim == restore.in_channels`` (the feature
    width flows from the extractor through HAM and the STFT into the head), and the image channels
    ``flow.in_chans == align.in_chans == restore.image_channels == recognizer.in_chans``.
    """

    variant: str = "final"
    # Defaults: the tiny preset's parts.
    flow: FlowConfig = field(default_factory=lambda: _tiny_parts()["flow"])
    align: AlignConfig = field(default_factory=lambda: _tiny_parts()["align"])
    fusion: FusionConfig = field(default_factory=lambda: _tiny_parts()["fusion"])
    restore: RestoreConfig = field(default_factory=lambda: _tiny_parts()["restore"])
    recognizer: ParseqConfig = field(default_factory=lambda: _tiny_parts()["recognizer"])
    ref_index: str = "middle"
    lr_size: tuple[int, int] = DEFAULT_LR_SIZE
    reliability: bool = True

    def __post_init__(self) -> None:
        owner = "KSRNetConfig"
        _check_choice(owner, "variant", self.variant, VARIANTS)
        _check_choice(owner, "ref_index", self.ref_index, REF_POLICIES)
        object.__setattr__(self, "lr_size", _check_size(owner, "lr_size", self.lr_size))
        if not isinstance(self.reliability, bool):
            raise ValueError(f"{owner}.reliability must be a bool, got {self.reliability!r}")
        for name, cls in _SUBCONFIGS.items():
            if not isinstance(getattr(self, name), cls):
                got = type(getattr(self, name)).__name__
                raise ValueError(f"{owner}.{name} must be a {cls.__name__}, got {got}")
        widths = {"align.channels": self.align.channels, "fusion.dim": self.fusion.dim,
                  "restore.in_channels": self.restore.in_channels}
        if len(set(widths.values())) != 1:
            raise ValueError("feature channels disagree (they must be equal): "
                             + ", ".join(f"{k}={v}" for k, v in widths.items()))
        chans = {"flow.in_chans": self.flow.in_chans, "align.in_chans": self.align.in_chans,
                 "restore.image_channels": self.restore.image_channels,
                 "recognizer.in_chans": self.recognizer.in_chans}
        if len(set(chans.values())) != 1:
            raise ValueError("image channels disagree (they must be equal): "
                             + ", ".join(f"{k}={v}" for k, v in chans.items()))

    @property
    def uses_ham(self) -> bool:
        """v2 and final align with HAM; v1 with a plain flow warp."""
        return self.variant != "v1"

    @property
    def upscale(self) -> int:
        return self.restore.upscale

    @property
    def sr_size(self) -> tuple[int, int]:
        """SR image size for frames at ``lr_size``."""
        return self.lr_size[0] * self.upscale, self.lr_size[1] * self.upscale

    @property
    def losses(self) -> tuple[str, ...]:
        return VARIANT_LOSSES[self.variant]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"variant": self.variant}
        for name in _SUBCONFIGS:
            d[name] = getattr(self, name).to_dict()
        d.update(ref_index=self.ref_index, lr_size=list(self.lr_size), reliability=self.reliability)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "KSRNetConfig":
        _unknown_keys("KSRNetConfig", cls, data)
        kwargs = dict(data)
        for name, sub in _SUBCONFIGS.items():
            if name in kwargs and isinstance(kwargs[name], dict):
                kwargs[name] = sub.from_dict(kwargs[name])
        return cls(**kwargs)

    @classmethod
    def tiny(cls, variant: str = "final", **overrides: Any) -> "KSRNetConfig":
        """CPU-trainable (~1.7M parameters, 1.35M of them PARSeq tiny): 32 feature channels, 4 STFT
        blocks of 2 heads, a 2-block head."""
        return cls.preset("tiny", variant=variant, **overrides)

    @classmethod
    def small(cls, variant: str = "final", **overrides: Any) -> "KSRNetConfig":
        return cls.preset("small", variant=variant, **overrides)

    @classmethod
    def base(cls, variant: str = "final", **overrides: Any) -> "KSRNetConfig":
        return cls.preset("base", variant=variant, **overrides)

    @classmethod
    def preset(cls, name: str, variant: str = "final", **overrides: Any) -> "KSRNetConfig":
        if name not in _PRESETS:
            raise ValueError(f"unknown KSR-Net preset {name!r} (expected one of {', '.join(_PRESETS)})")
        parts = _PRESETS[name]()
        return cls(**{**parts, "variant": variant, **overrides})


_SUBCONFIGS: dict[str, type] = {
    "flow": FlowConfig,
    "align": AlignConfig,
    "fusion": FusionConfig,
    "restore": RestoreConfig,
    "recognizer": ParseqConfig,
}


def _tiny_parts() -> dict[str, Any]:
    c = 32
    return dict(
        flow=FlowConfig.preset("tiny"),
        align=AlignConfig(channels=c, extractor_blocks=2, num_points=4, groups=4, embed_channels=16,
                          hidden_channels=32, predictor_layers=2),
        # 2 heads of 16 channels: on CPU the attention cost grows with the number of heads (one
        # (N x N) softmax each), and 4 heads of 8 took twice the time (3.4 s vs 1.6 s for a
        # forward + backward of 8 five-frame tracks on one thread) for no gain in width.
        fusion=FusionConfig(dim=c, depth=4, heads=2, window=(2, 8, 8), mlp_ratio=2.0),
        restore=RestoreConfig(in_channels=c, features=32, num_res_blocks=2, upscale=4),
        recognizer=ParseqConfig.tiny(),
    )


def _small_parts() -> dict[str, Any]:
    c = 96
    return dict(
        flow=FlowConfig.preset("small"),
        align=AlignConfig(channels=c, extractor_blocks=3, num_points=4, groups=6, embed_channels=48,
                          hidden_channels=96, predictor_layers=2),
        fusion=FusionConfig.preset("small"),
        restore=RestoreConfig(in_channels=c, features=64, num_res_blocks=6, upscale=4),
        recognizer=ParseqConfig.small(),
    )


def _base_parts() -> dict[str, Any]:
    c = 128
    return dict(
        flow=FlowConfig.preset("base"),
        align=AlignConfig(channels=c, extractor_blocks=4, num_points=8, groups=8, embed_channels=64,
                          hidden_channels=128, predictor_layers=3),
        fusion=FusionConfig.preset("base"),
        restore=RestoreConfig(in_channels=c, features=96, num_res_blocks=8, upscale=4),
        recognizer=ParseqConfig.base(),
    )


_PRESETS = {"tiny": _tiny_parts, "small": _small_parts, "base": _base_parts}
PRESET_NAMES: tuple[str, ...] = tuple(_PRESETS)


# --------------------------------------------------------------------------------------------------
# Outputs


class RestoreOutput(NamedTuple):
    sr: Tensor  # (B, 3, s*H, s*W) in [-1, 1], on the reference frame's grid
    flows: Tensor  # (B, T, 2, H, W): ref -> t, LR px; 0 for the reference and missing frames
    reliability: Tensor | None  # (B, T, 1, H, W) in [0, 1]; 0 for missing frames
    fusion_weights: Tensor  # (B, T, H, W): per-pixel share of each frame (sums to 1 over T)
    reference: Tensor  # (B,) long: the frame each SR image is registered to (caller's order)
    frame_accepted: Tensor  # (B, T) bool: frames that contributed


class KSRNetOutput(NamedTuple):
    sr: Tensor
    char_logits: Tensor  # (B, num_slots, num_classes), raw
    layout_logits: Tensor  # (B, num_layouts)
    flows: Tensor
    reliability: Tensor | None
    fusion_weights: Tensor
    reference: Tensor
    frame_accepted: Tensor


# --------------------------------------------------------------------------------------------------
# KSR-Net


class KSRNet(nn.Module):
    """KSR-Net: ``forward(frames (B, T, 3, H, W) in [-1, 1], frame_mask (B, T) bool | None)``.

    ``restore`` runs everything up to the SR image, ``read`` runs the recognizer on SR images, and
    ``forward`` is both. Submodules: ``flow`` (PyramidFlow), ``extractor`` (FeatureExtractor),
    ``ham`` (HAM, ``None`` for v1), ``fusion`` (STFT), ``head`` (SRHead), ``recognizer`` (Parseq);
    ``parts()`` names them for per-stage freezing and optimiser groups.
    """

    def __init__(self, config: KSRNetConfig | None = None) -> None:
        super().__init__()
        config = config if config is not None else KSRNetConfig.tiny()
        self.config = config
        self.flow = PyramidFlow(config.flow)
        self.extractor = FeatureExtractor(config.align)
        self.ham = HAM(config.align) if config.uses_ham else None
        self.fusion = STFT(config.fusion)
        self.head = SRHead(config.restore)
        self.recognizer = Parseq(config.recognizer)

    def parts(self) -> dict[str, nn.Module]:
        """The trainable parts by name (``ham`` absent for v1)."""
        named = {"flow": self.flow, "extractor": self.extractor, "ham": self.ham,
                 "fusion": self.fusion, "head": self.head, "recognizer": self.recognizer}
        return {k: v for k, v in named.items() if v is not None}

    def align(self, feats: Tensor, flows: Tensor, ref_index: int) -> Tensor:
        if self.ham is None:
            return warp_track(feats, flows, ref_index)
        return self.ham.align_track(feats, flows, ref_index)

    def restore(self, frames: Tensor, frame_mask: Tensor | None = None) -> RestoreOutput:
        """Frames -> SR image (no recognizer). See the module docstring for the reference policy
        and the handling of missing frames."""
        c = self.config
        if frames.dim() != 5 or frames.shape[2] != c.align.in_chans:
            raise ValueError(f"frames must be (B, T, {c.align.in_chans}, H, W), got {tuple(frames.shape)}")
        prep = _prepare(frames, frame_mask, c.ref_index)
        x, r = prep.frames, prep.slot
        flows, reliability = self.flow.track_flows(x, r, with_reliability=c.reliability)
        feats = self.extractor(x)
        aligned = self.align(feats, flows, r)  # flows stay >= float32 (sampling positions)
        # The STFT sees the frames in their physical (caller's) order: its temporal windows and
        # relative temporal bias treat neighbouring slots as consecutive frames, and the swap of
        # the reference into the batch-wide slot would make non-consecutive frames neighbours.
        # Its pooling has no notion of the reference, so nothing else depends on the order.
        fusion_in, fusion_mask = aligned, prep.mask
        if prep.perm is not None:
            fusion_in, fusion_mask = _gather_frames(aligned, prep.perm), _gather_frames(prep.mask, prep.perm)
        fusion = self.fusion(fusion_in, fusion_mask)
        sr = self.head(fusion.fused, x[:, r])
        return RestoreOutput(
            sr=sr,
            flows=_restore_order(flows, prep),
            reliability=_restore_order(reliability, prep),
            fusion_weights=fusion.weights,  # caller's order already, 0 for missing frames
            reference=prep.reference,
            frame_accepted=_restore_order(prep.mask, prep),
        )

    def read(self, sr: Tensor, *, mode: str = "nar", refine_iters: int | None = None) -> ParseqOutput:
        """Recognizer on SR images (resized to its input with ``to_recognizer_input``)."""
        rc = self.config.recognizer
        return self.recognizer(to_recognizer_input(sr, (rc.img_h, rc.img_w)), mode=mode,
                               refine_iters=refine_iters)

    def forward(self, frames: Tensor, frame_mask: Tensor | None = None, *, mode: str = "nar",
                refine_iters: int | None = None) -> KSRNetOutput:
        out = self.restore(frames, frame_mask)
        reading = self.read(out.sr, mode=mode, refine_iters=refine_iters)
        return KSRNetOutput(out.sr, reading.char_logits, reading.layout_logits, out.flows,
                            out.reliability, out.fusion_weights, out.reference, out.frame_accepted)


# --------------------------------------------------------------------------------------------------
# MF-LPR²-style baseline


@dataclass(frozen=True)
class MFLPR2Config:
    """The MF-LPR²-style baseline: flow, per-pixel reliability, frame rejection, robust mean.

    Per-pixel reliability of frame t (on the reference grid) is the product of

    * the soft forward-backward consistency of its flow (``fb_alpha``, ``fb_beta``; see
      ``flow.forward_backward_consistency``), and
    * a photometric check, ``exp(-(e / photo_sigma)^2)`` with ``e`` the 3x3 box-filtered,
      channel-mean ``|warp(frame_t) - reference|``. FB consistency alone cannot reject a frame
      whose flow is confidently zero (an untrained or fooled estimator on a noise frame is
      perfectly consistent); the photometric term catches what the warp failed to align.

    A pixel is accepted when its reliability is at least ``pixel_threshold``; a frame when its mean
    reliability is at least ``frame_threshold`` (the reference is always accepted). The fusion is a
    robust mean per pixel: the reliability-weighted median of the accepted samples (per channel),
    then the reliability-weighted mean of the samples within ``outlier_k`` robust standard
    deviations (1.4826 x the weighted median absolute deviation, at least ``outlier_floor``) of it.
    """

    flow: FlowConfig = field(default_factory=FlowConfig)
    recognizer: ParseqConfig = field(default_factory=ParseqConfig)
    ref_index: str = "middle"
    lr_size: tuple[int, int] = DEFAULT_LR_SIZE
    upscale: int = 4
    fb_alpha: float = 0.01
    fb_beta: float = 0.5
    photo_sigma: float = 0.2
    pixel_threshold: float = 0.5
    frame_threshold: float = 0.5
    outlier_k: float = 2.5
    outlier_floor: float = 0.05

    def __post_init__(self) -> None:
        owner = "MFLPR2Config"
        for name, cls in (("flow", FlowConfig), ("recognizer", ParseqConfig)):
            if not isinstance(getattr(self, name), cls):
                raise ValueError(f"{owner}.{name} must be a {cls.__name__}")
        _check_choice(owner, "ref_index", self.ref_index, REF_POLICIES)
        object.__setattr__(self, "lr_size", _check_size(owner, "lr_size", self.lr_size))
        if not isinstance(self.upscale, int) or isinstance(self.upscale, bool) or self.upscale < 1:
            raise ValueError(f"{owner}.upscale must be a positive int, got {self.upscale!r}")
        _check_number(owner, "fb_alpha", self.fb_alpha, 0.0)
        _check_number(owner, "fb_beta", self.fb_beta, 0.0, low_inclusive=False)
        _check_number(owner, "photo_sigma", self.photo_sigma, 0.0, low_inclusive=False)
        _check_number(owner, "pixel_threshold", self.pixel_threshold, 0.0, 1.0)
        _check_number(owner, "frame_threshold", self.frame_threshold, 0.0, 1.0)
        # k >= 1 keeps the inlier set non-empty (every sample within one MAD of the median is in).
        _check_number(owner, "outlier_k", self.outlier_k, 1.0)
        _check_number(owner, "outlier_floor", self.outlier_floor, 0.0, low_inclusive=False)
        if self.flow.in_chans != self.recognizer.in_chans:
            raise ValueError(f"image channels disagree: flow.in_chans={self.flow.in_chans}, "
                             f"recognizer.in_chans={self.recognizer.in_chans}")

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["flow"] = self.flow.to_dict()
        d["recognizer"] = self.recognizer.to_dict()
        d["lr_size"] = list(self.lr_size)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MFLPR2Config":
        _unknown_keys("MFLPR2Config", cls, data)
        kwargs = dict(data)
        if isinstance(kwargs.get("flow"), dict):
            kwargs["flow"] = FlowConfig.from_dict(kwargs["flow"])
        if isinstance(kwargs.get("recognizer"), dict):
            kwargs["recognizer"] = ParseqConfig.from_dict(kwargs["recognizer"])
        return cls(**kwargs)


class MFLPR2Fusion(NamedTuple):
    fused: Tensor  # (B, 3, H, W): robust mean on the reference grid
    warped: Tensor  # (B, T, 3, H, W): every frame warped to the reference (caller's order)
    flows: Tensor  # (B, T, 2, H, W)
    reliability: Tensor  # (B, T, 1, H, W): FB x photometric, 0 for missing frames
    pixel_accepted: Tensor  # (B, T, 1, H, W) bool
    frame_accepted: Tensor  # (B, T) bool
    weights: Tensor  # (B, T, H, W): each frame's share of the fused pixel (sums to 1 over T)
    reference: Tensor  # (B,) long


def weighted_median(values: Tensor, weights: Tensor, dim: int = 1) -> Tensor:
    """Weighted median along ``dim`` (lower median: the first sorted sample whose cumulative weight
    reaches half the total). ``weights`` broadcast to ``values``, non-negative, with a positive
    total along ``dim``; the result keeps ``dim`` with size 1."""
    weights = weights.expand_as(values)
    sorted_v, order = values.sort(dim=dim)
    sorted_w = weights.gather(dim, order)
    cum = sorted_w.cumsum(dim)
    half = 0.5 * cum.narrow(dim, -1, 1)
    # First index with cum >= half: count the entries strictly below.
    idx = (cum < half).sum(dim, keepdim=True).clamp_max(values.shape[dim] - 1)
    return sorted_v.gather(dim, idx)


class MFLPR2Baseline(nn.Module):
    """MF-LPR²-style multi-frame reading with no learned parts but the flow net and the recognizer.

    ``forward(frames, frame_mask)`` returns a :class:`KSRNetOutput` whose ``sr`` is the fused LR
    image bilinearly upsampled by ``upscale`` (on the reference grid, like KSR-Net's), whose
    ``fusion_weights`` are each frame's share of each fused pixel and whose ``frame_accepted`` flags
    the frames that passed the reliability test. ``fuse`` gives every intermediate.
    """

    def __init__(self, config: MFLPR2Config | None = None, *, flow: PyramidFlow | None = None,
                 recognizer: Parseq | None = None) -> None:
        super().__init__()
        config = config if config is not None else MFLPR2Config()
        self.config = config
        self.flow = flow if flow is not None else PyramidFlow(config.flow)
        self.recognizer = recognizer if recognizer is not None else Parseq(config.recognizer)

    def fuse(self, frames: Tensor, frame_mask: Tensor | None = None) -> MFLPR2Fusion:
        c = self.config
        prep = _prepare(frames, frame_mask, c.ref_index)
        x, r, mask = prep.frames, prep.slot, prep.mask
        b, t = x.shape[:2]
        flows, fb = self.flow.track_flows(x, r, with_reliability=True, alpha=c.fb_alpha, beta=c.fb_beta)
        ref = x[:, r]
        warped = warp_track(x, flows.to(x.dtype), r)
        err = (warped - ref.unsqueeze(1)).abs().mean(2, keepdim=True).flatten(0, 1)
        err = F.avg_pool2d(err, 3, stride=1, padding=1, count_include_pad=False).view_as(fb)
        photo = torch.exp(-(err / c.photo_sigma).square())
        rel = fb.to(x.dtype) * photo
        is_ref = torch.arange(t, device=x.device) == r
        rel = torch.where(is_ref.view(1, t, 1, 1, 1), torch.ones_like(rel), rel)
        rel = rel * mask.view(b, t, 1, 1, 1).to(rel.dtype)

        frame_ok = mask & (rel.mean(dim=(2, 3, 4)) >= c.frame_threshold)
        frame_ok = frame_ok | is_ref.view(1, t)
        pixel_ok = frame_ok.view(b, t, 1, 1, 1) & (rel >= c.pixel_threshold)
        w = rel * pixel_ok.to(rel.dtype)  # (B, T, 1, H, W); the reference always has weight 1

        median = weighted_median(warped, w, dim=1)  # (B, 1, C, H, W)
        dist = (warped - median).abs().mean(2, keepdim=True)  # (B, T, 1, H, W)
        mad = weighted_median(dist, w, dim=1)
        spread = (1.4826 * mad).clamp_min(c.outlier_floor)
        inlier = dist <= c.outlier_k * spread
        wi = w * inlier.to(w.dtype)
        total = wi.sum(1, keepdim=True)
        fused = (wi * warped).sum(1) / total.clamp_min(1e-12).squeeze(1)
        share = (wi / total.clamp_min(1e-12)).squeeze(2)  # (B, T, H, W)
        return MFLPR2Fusion(
            fused=fused,
            warped=_restore_order(warped, prep),
            flows=_restore_order(flows, prep),
            reliability=_restore_order(rel, prep),
            pixel_accepted=_restore_order(pixel_ok, prep),
            frame_accepted=_restore_order(frame_ok, prep),
            weights=_restore_order(share, prep),
            reference=prep.reference,
        )

    def read(self, sr: Tensor, *, mode: str = "nar", refine_iters: int | None = None) -> ParseqOutput:
        rc = self.config.recognizer
        return self.recognizer(to_recognizer_input(sr, (rc.img_h, rc.img_w)), mode=mode,
                               refine_iters=refine_iters)

    def forward(self, frames: Tensor, frame_mask: Tensor | None = None, *, mode: str = "nar",
                refine_iters: int | None = None) -> KSRNetOutput:
        f = self.fuse(frames, frame_mask)
        sr = f.fused
        if self.config.upscale > 1:
            sr = F.interpolate(sr, scale_factor=self.config.upscale, mode="bilinear", align_corners=False)
        sr = sr.clamp(-1.0, 1.0)
        reading = self.read(sr, mode=mode, refine_iters=refine_iters)
        return KSRNetOutput(sr, reading.char_logits, reading.layout_logits, f.flows, f.reliability,
                            f.weights, f.reference, f.frame_accepted)


def count_parameters(module: nn.Module) -> dict[str, int]:
    """Parameter counts per direct child and in total (for reports)."""
    counts = {name: sum(p.numel() for p in child.parameters()) for name, child in module.named_children()}
    counts["total"] = sum(p.numel() for p in module.parameters())
    return counts
