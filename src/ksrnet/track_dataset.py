"""Iterable track sources for training: worker- and rank-aware sharding, folders on disk, mixing."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path
from typing import Callable

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


def in_validation_split(track: Path, root: Path, fraction: float) -> bool:
    """Whether a track of `root` is held out for validation when a `fraction` of it is: decided by
    a hash of its path under root, so the same tracks on any machine, order or run."""
    try:
        relative = Path(track).relative_to(root).as_posix()
    except ValueError:  # root is a list of track folders (tracks.read_track_list), or itself the track
        relative = Path(track).resolve().as_posix()
    digest = int.from_bytes(hashlib.sha256(relative.encode()).digest()[:8], "big")
    return digest < fraction * 2 ** 64


def lrlpr_parts(root: str | None, fraction: float) -> tuple[dict, dict | None]:
    """FolderTrackDataset keyword arguments (keep, part) for the tracks of ``root`` that train and for
    the ``fraction`` held out to validate (None when none is); both empty-handed without a root."""
    if not root or not fraction:
        return {}, None

    def held_out(path: Path) -> bool:
        return in_validation_split(path, Path(root), fraction)

    return (dict(keep=lambda path: not held_out(path), part="training split"),
            dict(keep=held_out, part="validation split"))


def per_rank_count(n: int) -> int:
    """How many of n items each DDP rank gets from my_indices (all n without DDP): what a dataset's
    len() must say, since Lightning plans each rank's steps (and so its schedule) from it."""
    world = 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world = torch.distributed.get_world_size()
    return n // world


class FolderTrackDataset(IterableDataset):
    """Labelled tracks of an LRLPR-26 folder, reshuffled every epoch; unreadable tracks are skipped.

    Tracks without a usable label (no annotations.json, or one the reader refuses) are left out when
    the dataset is made, so ``len()`` counts only tracks that can train: Lightning plans the epoch's
    batches (and so the end-of-epoch validation and the LR schedule) from it, and an epoch that ends
    a batch early never validates. A track whose frames then fail to decode is replaced by a repeat of
    another track of the same shard for the same reason. ``with_hr=False`` never reads the HR frames
    (the recognizer does not use them); with ``with_hr=True`` a track whose HR frames cannot be read
    is still used without them (no pixel target, text only)."""

    def __init__(self, root: str | Path, seed: int = 0, require_labels: bool = True, with_hr: bool = True,
                 keep: Callable[[Path], bool] | None = None, part: str = ""):
        """keep: which track folders belong to this dataset (all by default); part: what they are
        (e.g. "validation split") for messages."""
        from ksrnet.tracks import ANNOTATIONS_NAME, DatasetError, TrackError, discover_tracks, read_annotations

        paths = discover_tracks(Path(root))
        if keep is not None:
            paths = [p for p in paths if keep(p)]
            if not paths:
                raise DatasetError(f"the {part or 'selection'} of {root} holds no track")
        where = f"{root} ({part})" if part else f"{root}"
        self.skipped: list[str] = []
        if require_labels:
            kept = []
            for p in paths:
                if not (p / ANNOTATIONS_NAME).is_file():
                    self.skipped.append(f"{p.name} ({p}): no {ANNOTATIONS_NAME}")
                    continue
                try:
                    read_annotations(p)
                except TrackError as exc:
                    self.skipped.append(str(exc))
                    continue
                kept.append(p)
            if not kept:
                # Every track would be skipped: an epoch of no steps, and "trained" weights never trained.
                raise DatasetError(f"no labelled tracks under {where}: none of its {len(paths)} track(s) "
                                   f"has a usable {ANNOTATIONS_NAME} (training needs plate_text)")
            if self.skipped:
                import warnings

                warnings.warn(f"{len(self.skipped)} of {len(paths)} track(s) under {where} left out of training "
                              f"(no or unusable labels; `ksrnet check-data` lists them), first: {self.skipped[0]}",
                              stacklevel=2)
            paths = kept
        self.paths = paths
        self.seed = seed
        self.epoch = 0
        self.require_labels = require_labels
        self.with_hr = with_hr

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.paths)

    def _read(self, path: Path):
        from ksrnet.tracks import TrackError, read_track

        try:
            return read_track(path, with_hr=self.with_hr)
        except TrackError:
            if not self.with_hr:
                return None
        try:  # the LR frames and the labels may still be whole: train on the text alone
            return read_track(path, with_hr=False)
        except TrackError:
            return None  # check-data reports these; training goes on without them

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.paths))
        good: list[Path] = []
        missing = 0
        for i in my_indices(len(order)):
            path = self.paths[order[i]]
            track = self._read(path)
            if track is None or (track.text is None and self.require_labels):
                missing += 1
                continue
            good.append(path)
            yield track
        # Yield as many tracks as __len__ promised (see the class docstring).
        for path in itertools.islice(itertools.cycle(good), missing if good else 0):
            track = self._read(path)
            if track is not None:
                yield track


class ResumableEpoch(IterableDataset):
    """A training source whose epoch can pick up where a checkpoint left it. Lightning resumes a run
    part-way through an epoch at the batch after the checkpoint, but the data start over: the
    epoch's first tracks came twice and its last ones never. ``set_epoch(epoch, done)`` says how many
    batches of the epoch were trained; each worker then skips the tracks of its share of them (the
    DataLoader takes batches from its workers in turn: batch k is worker k % W's). With several
    workers the remaining batches may come in another order (a new loader asks worker 0 first), but
    they are the same batches. Skipped tracks are still made (generated or read), a few seconds per
    thousand on resuming."""

    def __init__(self, dataset: IterableDataset, batch_size: int):
        self.dataset, self.batch_size, self.done = dataset, batch_size, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int, done: int = 0) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        self.done = done

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        mine = len(range(worker, self.done, workers))  # batches k < done with k % workers == worker
        return itertools.islice(iter(self.dataset), mine * self.batch_size, None)


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
