"""Turn LR plate frames (uint8 RGB, any size) into the recognizer's input tensor."""

from __future__ import annotations

import cv2
import numpy as np
import torch


def resized_frame(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """(height, width, 3) uint8; bilinear upsampling keeps blur instead of inventing edges."""
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 frame (H, W, 3), got {frame.dtype} {frame.shape}")
    interp = cv2.INTER_AREA if frame.shape[0] > height else cv2.INTER_LINEAR
    return cv2.resize(frame, (width, height), interpolation=interp)


def frames_to_uint8_tensor(frames: list[np.ndarray], height: int, width: int) -> torch.Tensor:
    """(F, 3, height, width) uint8 (stored height, width, channel): the frames resized, before the scaling to [-1, 1].
    Training's data workers send this, a quarter of the float tensor's bytes, and the scaling
    (unit_range) runs where the batch lands, on the GPU when there is one."""
    if not frames:
        raise ValueError("no frames to preprocess")
    return torch.from_numpy(np.stack([resized_frame(f, height, width) for f in frames])).permute(0, 3, 1, 2)


def unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [-1, 1]; float ones are returned as they are."""
    return images.float() / 127.5 - 1.0 if images.dtype == torch.uint8 else images


def frames_to_tensor(frames: list[np.ndarray], height: int, width: int) -> torch.Tensor:
    """(F, 3, height, width) float tensor in [-1, 1] for a list of frames."""
    return unit_range(frames_to_uint8_tensor(frames, height, width))


def frame_to_unit_tensor(frame: np.ndarray) -> torch.Tensor:
    """uint8 (h, w, 3) RGB -> float (3, h, w) in [-1, 1] at its own size."""
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 frame (H, W, 3), got {frame.dtype} {frame.shape}")
    # A copy: frames decoded from files can be read-only arrays, which torch.from_numpy warns about.
    return unit_range(torch.from_numpy(np.array(frame)).permute(2, 0, 1))


def track_to_tensor(frames: list[np.ndarray], lr_size: tuple[int, int]) -> torch.Tensor:
    """(T, 3, H, W) in [-1, 1] at ``lr_size`` for the restoration models, which take every frame of
    a track on one grid (``models.ksrnet.resize_track``: bilinear, antialiased when shrinking)."""
    from ksrnet.models.ksrnet import resize_track

    if not frames:
        raise ValueError("no frames to preprocess")
    return resize_track([frame_to_unit_tensor(f) for f in frames], lr_size).float()
