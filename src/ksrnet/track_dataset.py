"""Iterable track sources for training: worker- and rank-aware sharding, folders on disk, mixing."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info


def my_indices(n: int) -> range:
    """The item indices 0..n-1 this process should produce: split over DDP ranks, then over workers.

    Under DDP the last n % world_size items are left out, so every rank gets the same number of
    items: a rank with one batch more than the others would wait forever in its extra all-reduce.
    """
    rank, world = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info else (0, 1)
    return range(rank, n - n % world, world)[worker::workers]


class FolderTrackDataset(IterableDataset):
    """Labelled tracks of an LRLPR-26 folder, reshuffled every epoch; unreadable tracks are skipped."""

    def __init__(self, root: str | Path, seed: int = 0, require_labels: bool = True):
        from ksrnet.tracks import ANNOTATIONS_NAME, DatasetError, discover_tracks

        self.paths = discover_tracks(Path(root))
        if require_labels and not any((p / ANNOTATIONS_NAME).is_file() for p in self.paths):
            # Every track would be skipped: an epoch of no steps, and "trained" weights never trained.
            raise DatasetError(f"no labelled tracks under {root}: none of its {len(self.paths)} track(s) "
                               f"has an {ANNOTATIONS_NAME} (training needs plate_text)")
        self.seed = seed
        self.epoch = 0
        self.require_labels = require_labels

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self):
        from ksrnet.tracks import TrackError, read_track

        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.paths))
        for i in my_indices(len(order)):
            try:
                track = read_track(self.paths[order[i]])
            except TrackError:
                continue  # check-data reports these; training goes on without them
            if track.text is None and self.require_labels:
                continue
            yield track


class Interleave(IterableDataset):
    """Round-robin over several track sources until all are exhausted."""

    def __init__(self, sources: list[IterableDataset]):
        self.sources = sources

    def set_epoch(self, epoch: int) -> None:
        for s in self.sources:
            if hasattr(s, "set_epoch"):
                s.set_epoch(epoch)

    def __len__(self) -> int:
        return sum(len(s) for s in self.sources)

    def __iter__(self):
        sentinel = object()
        for group in itertools.zip_longest(*self.sources, fillvalue=sentinel):
            for item in group:
                if item is not sentinel:
                    yield item
