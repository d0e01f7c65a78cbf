"""Inference speed of a recognizer, end to end and per component, for `ksrnet bench`.

Components of reading one batch of tracks: preprocessing (resize + normalise every frame), the
network (encoder, then decoder: NAR + the configured refinement, or AR; timed apart for a PyTorch
model, together for an ONNX graph, which is one call; in the reader's chunks of frames), and
fusion + syntax-constrained decoding per track. Each figure is the best of `repeats` passes after a
warm-up pass.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from ksrnet.infer import Reader, select_frames
from ksrnet.models.baselines import fuse
from ksrnet.preprocess import frames_to_tensor


@dataclass(frozen=True)
class BenchRow:
    batch_tracks: int
    tracks_per_s: float
    ms_per_track: float  # end-to-end wall time per track at this batch size
    ms_per_batch: float  # latency of one batch
    preprocess_ms: float  # per batch, each component
    network_ms: float  # encoder + decoder in one call
    encoder_ms: float | None  # None where the network is one opaque graph (ONNX)
    decoder_ms: float | None
    fusion_ms: float

    def as_dict(self) -> dict:
        return asdict(self)


def _sync(device: torch.device | None) -> None:
    # CUDA kernels run after the call that queues them returns: without waiting for them, a timing
    # measures the launches, not the work.
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, repeats: int, device: torch.device | None = None) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        out = fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best, out


@torch.inference_mode()
def bench_batch(reader: Reader, tracks: list, fusion: str, frame_count: int | None, repeats: int) -> BenchRow:
    """Time reading `tracks` as one batch: the whole path, then each component on its own."""
    model, device = reader.model, reader.device
    reader.read(tracks, [fusion], frame_count=frame_count)  # warm-up (allocations, thread pools)
    total, _ = _timed(lambda: reader.read(tracks, [fusion], frame_count=frame_count), repeats, device)
    chosen = [select_frames(t.lr, frame_count) for t in tracks]
    flat = [f for frames in chosen for f in frames]
    pre, images = _timed(lambda: frames_to_tensor(flat, reader.height, reader.width).to(device), repeats, device)
    # The network runs in the chunks the reader calls it with (Reader.batch_frames), each component too.
    chunks = images.split(reader.batch_frames)
    net, _ = _timed(lambda: [model(c, mode=reader.mode, refine_iters=reader.refine_iters) for c in chunks],
                    repeats, device)
    enc = dec = None
    if hasattr(model, "encode"):  # a PyTorch Parseq; an ONNX session has no separate halves
        enc, memories = _timed(lambda: [model.encode(c) for c in chunks], repeats, device)
        dec, _ = _timed(lambda: [model.decode_memory(m, mode=reader.mode, refine_iters=reader.refine_iters)
                                 for m in memories], repeats, device)
    logits = reader.track_logits(tracks, frame_count)

    def fuse_all():
        for char_logits, layout_logits in logits:
            fuse(fusion, char_logits, layout_logits, reader.masks)

    fus, _ = _timed(fuse_all, repeats)
    n = len(tracks)
    return BenchRow(batch_tracks=n, tracks_per_s=n / total, ms_per_track=1000 * total / n, ms_per_batch=1000 * total,
                    preprocess_ms=1000 * pre, network_ms=1000 * net, encoder_ms=None if enc is None else 1000 * enc,
                    decoder_ms=None if dec is None else 1000 * dec, fusion_ms=1000 * fus)


def bench(reader: Reader, tracks: list, batch_sizes: list[int], fusion: str = "product",
          frame_count: int | None = None, repeats: int = 3) -> list[BenchRow]:
    """One row per batch size (batches of the first `batch` tracks; sizes above len(tracks) are cut)."""
    if not tracks:
        raise ValueError("no tracks to benchmark")
    if not batch_sizes or min(batch_sizes) < 1:
        raise ValueError("batch sizes must be >= 1")
    return [bench_batch(reader, tracks[:b], fusion, frame_count, repeats) for b in batch_sizes]
