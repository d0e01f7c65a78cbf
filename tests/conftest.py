"""Shared test helpers: a micro PARSeq and tracks of random frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ksrnet.models.parseq import Parseq, ParseqConfig
from ksrnet.tracks import Track

# 16x32 images, 32-wide embedding: reads a track in milliseconds.
MICRO_PARSEQ = dict(img_h=16, img_w=32, embed_dim=32, enc_depth=1, enc_heads=2, dec_depth=1, dec_heads=2,
                    mlp_ratio=2.0, dropout=0.0)


@pytest.fixture
def micro_parseq():
    """make(seed=0, **config overrides) -> an untrained micro Parseq in eval mode."""

    def make(seed: int = 0, **overrides) -> Parseq:
        torch.manual_seed(seed)
        return Parseq(ParseqConfig(**{**MICRO_PARSEQ, **overrides})).eval()

    return make


@pytest.fixture
def noise_tracks():
    """make(n=2, frames=3, seed=0) -> tracks t0.. of random 48x17 RGB frames."""

    def make(n: int = 2, frames: int = 3, seed: int = 0) -> list[Track]:
        rng = np.random.default_rng(seed)
        return [Track(f"t{i}", [rng.integers(0, 256, (17, 48, 3), dtype=np.uint8) for _ in range(frames)])
                for i in range(n)]

    return make


@pytest.fixture
def micro_ksrnet():
    """make(variant="final", seed=0) -> an untrained micro KSR-Net in eval mode (8 feature channels,
    16x48 LR frames, a micro recognizer)."""
    from ksrnet.models.align import AlignConfig
    from ksrnet.models.flow import FlowConfig
    from ksrnet.models.fusion import FusionConfig
    from ksrnet.models.ksrnet import KSRNet, KSRNetConfig
    from ksrnet.models.restore import RestoreConfig

    def make(variant: str = "final", seed: int = 0) -> KSRNet:
        torch.manual_seed(seed)
        config = KSRNetConfig(
            variant=variant,
            flow=FlowConfig(base_channels=2, levels=2),
            align=AlignConfig(channels=8, extractor_blocks=1, num_points=2, groups=2, embed_channels=4,
                              hidden_channels=8, predictor_layers=1),
            fusion=FusionConfig(dim=8, depth=2, heads=2, window=(2, 4, 4), mlp_ratio=1.0),
            restore=RestoreConfig(in_channels=8, features=8, num_res_blocks=1, upscale=4),
            recognizer=ParseqConfig(**MICRO_PARSEQ),
        )
        return KSRNet(config).eval()

    return make


class _StepRecorder:
    """Lightning callback mixin recording, per class (so a class patched into the training code can
    be inspected afterwards), the global step each fit starts from and every step trained; it raises
    a simulated crash once the global step reaches ``fail_at``."""

    started_at: list[int] = []
    batches: list[int] = []
    contents: list = []  # the plate texts of each batch trained (which tracks it held)
    fail_at: int | None = None

    @classmethod
    def reset(cls, fail_at: int | None = None) -> None:
        cls.started_at, cls.batches, cls.contents, cls.fail_at = [], [], [], fail_at

    def on_train_start(self, trainer, pl_module):
        type(self).started_at.append(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        type(self).batches.append(trainer.global_step)
        texts = batch["text"] if isinstance(batch, dict) else batch[1]  # KSR-Net dicts, recognizer tuples
        type(self).contents.append(texts.tolist())
        if type(self).fail_at is not None and trainer.global_step >= type(self).fail_at:
            raise RuntimeError("simulated crash")


@pytest.fixture
def step_recorder():
    """A fresh Lightning callback mixin (see _StepRecorder): subclass it with the callback to wrap."""

    class Recorder(_StepRecorder):
        pass

    Recorder.reset()
    return Recorder
