"""Reading tracks through a multi-frame restoration model: KSR-Net or the MF-LPR²-style baseline.

Such a model turns all frames of a track into one super-resolved plate and reads that, so the
fusion happens in the image, not over per-frame readings. ``RestorationReader`` exposes the same
interface as ``infer.Reader`` (``read``, ``track_logits``) so predict, eval, calibrate and the
ablation treat it like any other reader: each track yields a single "frame" of logits, for which
every late-fusion rule gives the same reading.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from ksrnet.infer import Reader, select_frames
from ksrnet.preprocess import track_to_tensor


def pad_tracks(tracks: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Tracks ``(T_i, C, H, W)`` -> ``(B, T_max, C, H, W)`` zero-padded and the ``(B, T_max)`` mask
    of real frames (the restoration models ignore masked frames)."""
    if not tracks:
        raise ValueError("no tracks to pad")
    t_max = max(t.shape[0] for t in tracks)
    out = tracks[0].new_zeros((len(tracks), t_max, *tracks[0].shape[1:]))
    mask = torch.zeros(len(tracks), t_max, dtype=torch.bool)
    for i, t in enumerate(tracks):
        out[i, :t.shape[0]] = t
        mask[i, :t.shape[0]] = True
    return out, mask


def frames_used(tracks: list, frame_count: int | None) -> list[int]:
    """Frames each track contributes (not the one restored image the recognizer sees)."""
    return [len(select_frames(t.lr, frame_count)) for t in tracks]


class RestorationReader(Reader):
    def __init__(self, model: torch.nn.Module, *, device: str | torch.device = "cpu", mode: str = "nar",
                 refine_iters: int | None = None, batch_tracks: int = 32,
                 temperatures: dict[str, float] | None = None):
        """model: a ``KSRNet`` or ``MFLPR2Baseline`` (anything with ``config.lr_size`` whose forward
        takes ``(frames, frame_mask)`` and returns ``sr``, ``char_logits`` and ``layout_logits``)."""
        if batch_tracks < 1:
            raise ValueError(f"batch_tracks must be >= 1, got {batch_tracks}")
        # No TTA views: they are per frame, and a restored plate is not a frame of the track.
        super().__init__(model, device=device, mode=mode, refine_iters=refine_iters, temperatures=temperatures)
        self.batch_tracks = batch_tracks
        self.lr_size = tuple(model.config.lr_size)

    @torch.inference_mode()
    def restore_and_read(self, tracks: list, frame_count: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(sr (N, 3, sH, sW), char_logits (N, 7, C), layout_logits (N, L))`` on the CPU, one row per
        track in the order given, from its chosen frames (``infer.select_frames``).

        Tracks are batched with others of the same frame count, never padded: the STFT sizes its
        windows and shifts from the batch's T, so a 2-frame track padded to T=5 would be fused
        differently (its two frames split by the shifted windows) and its reading would depend on
        the tracks it happened to be batched with."""
        if not tracks:
            return torch.empty(0), torch.empty(0), torch.empty(0)
        chosen = [select_frames(t.lr, frame_count) for t in tracks]
        count = lambda i: len(chosen[i])  # noqa: E731
        order = sorted(range(len(tracks)), key=count)  # stable: input order within a count
        srs, chars, layouts = [], [], []
        for _, same_count in itertools.groupby(order, key=count):
            same_count = list(same_count)
            for start in range(0, len(same_count), self.batch_tracks):
                chunk = same_count[start:start + self.batch_tracks]
                frames, mask = pad_tracks([track_to_tensor(chosen[i], self.lr_size) for i in chunk])
                out = self.model(frames.to(self.device), mask.to(self.device), mode=self.mode,
                                 refine_iters=self.refine_iters)
                srs.append(out.sr.float().cpu())
                chars.append(out.char_logits.float().cpu())
                layouts.append(out.layout_logits.float().cpu())
        back = torch.argsort(torch.tensor(order))  # row of each track in the sorted results
        return torch.cat(srs)[back], torch.cat(chars)[back], torch.cat(layouts)[back]

    def frames_used(self, tracks: list, frame_count: int | None) -> list[int]:
        return frames_used(tracks, frame_count)

    def track_logits(self, tracks: list, frame_count: int | None = None) -> list[tuple[Tensor, Tensor]]:
        if not tracks:
            return []
        _, chars, layouts = self.restore_and_read(tracks, frame_count)
        return per_track(chars, layouts)


def per_track(chars: Tensor, layouts: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Batched (char_logits (N, 7, C), layout_logits (N, L)) as the per-track one-"frame" logits
    that ``Reader.readings_from_logits`` fuses."""
    return [(chars[i:i + 1], layouts[i:i + 1]) for i in range(chars.shape[0])]


def is_ksrnet_weights(name_or_path: str | Path | None) -> bool:
    """True for a KSR-Net ``.safetensors`` file or a run/stage dir holding one (not for recognizer
    weights or shipped recognizer names)."""
    import json

    from ksrnet.weights import config_path_for, resolve_ksrnet

    if name_or_path is None:
        return False
    try:
        return json.loads(config_path_for(resolve_ksrnet(name_or_path)).read_text()).get("kind") == "ksrnet"
    except (OSError, ValueError):  # FileNotFoundError is an OSError
        return False


def load_restoration_reader(path: str | Path, *, device: str | torch.device = "cpu", mode: str = "nar",
                            baseline: bool = False, batch_tracks: int = 32) -> tuple[RestorationReader, dict]:
    """A reader over saved KSR-Net weights, or (``baseline=True``) over the MF-LPR²-style baseline
    built from those weights' flow estimator and recognizer (the baseline has nothing else to learn).
    Temperatures stored in the metadata (``ksrnet calibrate``) are applied; the baseline's are kept
    under ``temperature_mflpr2``."""
    from ksrnet.weights import load_ksrnet

    model, meta = load_ksrnet(path, device=device)
    if baseline:
        return baseline_reader(model, meta, device=device, mode=mode, batch_tracks=batch_tracks), meta
    reader = RestorationReader(model, device=device, mode=mode, batch_tracks=batch_tracks,
                               temperatures=meta.get("temperature"))
    return reader, meta


def baseline_reader(ksrnet, meta: dict, *, device: str | torch.device = "cpu", mode: str = "nar",
                    batch_tracks: int = 32) -> RestorationReader:
    """The MF-LPR²-style reader on a loaded KSR-Net's flow estimator and recognizer (shared, not
    copied), with the temperatures stored for it (``temperature_mflpr2``)."""
    from ksrnet.models.ksrnet import MFLPR2Baseline, MFLPR2Config

    c = ksrnet.config
    config = MFLPR2Config(flow=c.flow, recognizer=c.recognizer, ref_index=c.ref_index, lr_size=c.lr_size,
                          upscale=c.upscale)
    model = MFLPR2Baseline(config, flow=ksrnet.flow, recognizer=ksrnet.recognizer)
    return RestorationReader(model, device=device, mode=mode, batch_tracks=batch_tracks,
                             temperatures=meta.get("temperature_mflpr2"))
