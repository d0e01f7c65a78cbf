from types import SimpleNamespace

import torch

import ksrnet.track_dataset as td


def fake_world(monkeypatch, rank: int, world: int, worker: int = 0, workers: int = 1):
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: rank)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: world)
    info = SimpleNamespace(id=worker, num_workers=workers) if workers > 1 else None
    monkeypatch.setattr(td, "get_worker_info", lambda: info)


def test_single_process_gets_everything():
    assert list(td.my_indices(5)) == [0, 1, 2, 3, 4]


def test_workers_and_ranks_partition_the_items_and_ranks_get_equal_counts(monkeypatch):
    n, world, workers = 23, 3, 2
    per_rank, seen = [], []
    for rank in range(world):
        count = 0
        for worker in range(workers):
            fake_world(monkeypatch, rank, world, worker, workers)
            items = list(td.my_indices(n))
            seen += items
            count += len(items)
        per_rank.append(count)
    assert len(set(per_rank)) == 1  # no rank has an extra batch to wait on
    assert sorted(seen) == list(range(n - n % world))  # disjoint, and only the remainder left out
