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


# ---------------------------------------------------------------------------------------------
# FolderTrackDataset on imperfect real-data folders


def _folder(tmp_path, n: int):
    from typer.testing import CliRunner

    from ksrnet.cli import app

    root = tmp_path / "tracks"
    result = CliRunner().invoke(app, ["synth", str(root), "--tracks", str(n), "--seed", "2"])
    assert result.exit_code == 0, result.output
    return root, sorted(root.rglob("track_*"))


def test_folder_length_counts_only_tracks_that_can_train(tmp_path):
    """Lightning plans an epoch's batches from len(): a dataset yielding fewer ends the epoch a batch
    early and never validates (no best checkpoint, val metric null) - as happened whenever some of an
    LRLPR-26 folder's tracks were unlabelled (a test split beside the train split) or broken."""
    import pytest

    root, tracks = _folder(tmp_path, 5)
    (tracks[0] / "annotations.json").unlink()  # unlabelled
    (tracks[1] / "annotations.json").write_text('{"plate_text": "NOT A PLATE"}')  # refused label
    (tracks[2] / "lr-002.png").write_bytes(b"\x89PNG\r\n")  # a frame that does not decode
    with pytest.warns(UserWarning, match="2 of 5 track"):
        ds = td.FolderTrackDataset(root)
    assert len(ds) == 3
    ids = [t.track_id for t in ds]
    assert len(ids) == len(ds)  # the broken frame's track is made up for by a repeat
    assert tracks[2].name not in ids and {tracks[3].name, tracks[4].name} <= set(ids)


def test_folder_tracks_with_unreadable_hr_still_train(tmp_path):
    """The recognizer never uses the HR frames, and KSR-Net can train a track on its text alone: a
    missing or broken HR frame must not drop the labelled track."""
    root, tracks = _folder(tmp_path, 2)
    (tracks[0] / "hr-003.png").unlink()
    (tracks[1] / "hr-002.png").write_bytes(b"not an image")
    lr_only = list(td.FolderTrackDataset(root, with_hr=False))
    assert sorted(t.track_id for t in lr_only) == sorted(p.name for p in tracks)
    assert all(not t.hr for t in lr_only)
    with_hr = list(td.FolderTrackDataset(root))
    assert sorted(t.track_id for t in with_hr) == sorted(p.name for p in tracks)
