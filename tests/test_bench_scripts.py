"""Figures of the benchmark scripts checked against known values (benchmarks/ is not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

_BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, _BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(_BENCH))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(_BENCH))
    return module


class _TwoFrames(torch.nn.Module):
    """SR pixels a + b and a - b of frame 0 (a) and frame 1 (b): each SR pixel depends on both
    frames equally, but the second frame's effects have opposite signs on the two pixels."""

    def restore(self, x):
        a, b = x[:, 0, 0, 0, 0], x[:, 1, 0, 0, 0]
        return SimpleNamespace(sr=torch.stack([a + b, a - b], 1)[:, None, :, None])


def test_diagnostics_sensitivity_is_mean_abs_jacobian_not_cancelled():
    diag = _script("ksrnet_diagnostics")
    frames = torch.tensor([3.0, 1.0]).view(1, 2, 1, 1, 1).repeat(4, 1, 1, 1, 1)
    _, shares = diag.sensitivity_shares(_TwoFrames(), frames, 5, torch.Generator().manual_seed(0))
    # mean |d SR / d frame| is 1 for either frame; d sum|SR| / d b = 1 - 1 = 0 would give (1, 0).
    assert torch.allclose(shares, torch.tensor([0.5, 0.5]))
