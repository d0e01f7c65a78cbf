"""Turn LR plate frames (uint8 RGB, any size) into the recognizer's input tensor."""

from __future__ import annotations

import cv2
import numpy as np
import torch


def frame_to_array(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """(3, height, width) float32 in [-1, 1]; bilinear upsampling keeps blur instead of inventing edges."""
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 frame (H, W, 3), got {frame.dtype} {frame.shape}")
    interp = cv2.INTER_AREA if frame.shape[0] > height else cv2.INTER_LINEAR
    resized = cv2.resize(frame, (width, height), interpolation=interp)
    return (resized.astype(np.float32).transpose(2, 0, 1) / 127.5) - 1.0


def frames_to_tensor(frames: list[np.ndarray], height: int, width: int) -> torch.Tensor:
    """(F, 3, height, width) float tensor for a list of frames."""
    if not frames:
        raise ValueError("no frames to preprocess")
    return torch.from_numpy(np.stack([frame_to_array(f, height, width) for f in frames]))


def frame_to_unit_tensor(frame: np.ndarray) -> torch.Tensor:
    """uint8 (h, w, 3) RGB -> float (3, h, w) in [-1, 1] at its own size."""
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 frame (H, W, 3), got {frame.dtype} {frame.shape}")
    # A copy: frames decoded from files can be read-only arrays, which torch.from_numpy warns about.
    return torch.from_numpy(np.array(frame)).permute(2, 0, 1).float() / 127.5 - 1.0


def track_to_tensor(frames: list[np.ndarray], lr_size: tuple[int, int]) -> torch.Tensor:
    """(T, 3, H, W) in [-1, 1] at ``lr_size`` for the restoration models, which take every frame of
    a track on one grid (``models.ksrnet.resize_track``: bilinear, antialiased when shrinking)."""
    from ksrnet.models.ksrnet import resize_track

    if not frames:
        raise ValueError("no frames to preprocess")
    return resize_track([frame_to_unit_tensor(f) for f in frames], lr_size).float()
