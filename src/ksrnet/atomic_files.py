"""Files replaced in one rename: readers never see half a file, and a crash or a bad input before
the rename leaves the old file as it was. Light on imports, so that `score` and `predict` can use it
without loading torch."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def atomic_write(target: str | Path, write: Callable[[str], object]) -> None:
    """write(temporary path) fills a file beside target, which then replaces target."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:  # on disk before the rename makes it the file
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; results and weights must be readable like any other
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(target: str | Path, data: bytes) -> None:
    atomic_write(target, lambda tmp: Path(tmp).write_bytes(data))
