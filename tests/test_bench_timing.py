"""bench timings: on a GPU each figure waits for the queued kernels before the clock stops."""

from __future__ import annotations

import torch

from ksrnet import bench


def test_timed_waits_for_cuda_work_before_reading_the_clock(monkeypatch):
    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append("sync"))
    seconds, out = bench._timed(lambda: events.append("run") or 7, 2, torch.device("cuda"))
    assert out == 7 and seconds >= 0
    assert events == ["sync", "run", "sync"] * 2


def test_timed_on_the_cpu_needs_no_synchronisation(monkeypatch):
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: (_ for _ in ()).throw(AssertionError))
    assert bench._timed(lambda: 3, 1, torch.device("cpu"))[1] == 3
