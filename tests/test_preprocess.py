"""The recognizer's input: resized frames scaled to [-1, 1], made in one go or in two steps (uint8
in the data workers, scaled where the batch lands) with the same values."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from ksrnet.preprocess import frames_to_tensor, frames_to_uint8_tensor, unit_range


def _frames(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    # smaller and larger than the model's grid in each direction: upsampled and area-averaged
    sizes = [(17, 48), (40, 150), (12, 30), (33, 129)]
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def test_frames_scale_to_the_unit_range_from_their_resized_pixels():
    frames = _frames()
    got = frames_to_tensor(frames, 32, 128)
    assert got.shape == (4, 3, 32, 128) and got.dtype == torch.float32
    for frame, image in zip(frames, got):
        interp = cv2.INTER_AREA if frame.shape[0] > 32 else cv2.INTER_LINEAR
        resized = cv2.resize(frame, (128, 32), interpolation=interp).astype(np.float32)
        assert torch.equal(image, torch.from_numpy(resized.transpose(2, 0, 1) / 127.5 - 1.0))
    assert got.min() >= -1 and got.max() <= 1


def test_uint8_frames_scaled_later_equal_the_float_frames_bit_for_bit():
    frames = _frames(1)
    small = frames_to_uint8_tensor(frames, 32, 96)
    assert small.dtype == torch.uint8 and small.shape == (4, 3, 32, 96)
    batch = torch.cat([small, small.flip(0)])  # what collate_tracks does with a worker's samples
    want = torch.cat([frames_to_tensor(frames, 32, 96), frames_to_tensor(frames[::-1], 32, 96)])
    assert torch.equal(unit_range(batch), want)
    assert unit_range(batch).stride() == want.stride()  # the same memory layout reaches the network


def test_unit_range_leaves_float_images_alone():
    images = torch.rand(2, 3, 4, 5) * 2 - 1
    assert unit_range(images) is images


@pytest.mark.parametrize("bad", [np.zeros((17, 48), np.uint8), np.zeros((17, 48, 3), np.float32),
                                 np.zeros((17, 48, 4), np.uint8)])
def test_frames_that_are_not_rgb_uint8_are_refused(bad):
    with pytest.raises(ValueError, match="RGB uint8"):
        frames_to_uint8_tensor([bad], 32, 128)


def test_no_frames_is_refused():
    with pytest.raises(ValueError, match="no frames"):
        frames_to_tensor([], 32, 128)
