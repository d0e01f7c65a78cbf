"""One PNG that puts synthetic LR tracks beside real LR frames, to judge realism by eye."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np

from ksrnet.synth.dataset import generate_track

CELL_H, CELL_W = 21, 56  # a little above the largest LRLPR-26 LR crop; grown for any larger frame
# "lr" as a word of a file name (track_00001_lr-005_..., ..._lr_ABC1234_...), not inside plate text.
_LR_NAME = re.compile(r"(^|[_\-. ])lr([_\-. ]|\d|$)", re.IGNORECASE)


def _cell(frame: np.ndarray, size: tuple[int, int] = (CELL_H, CELL_W)) -> np.ndarray:
    """Frame at native scale, centred on a mid-grey cell of `size` (h, w), which holds it whole
    (sizes stay comparable across rows)."""
    cell_h, cell_w = size
    cell = np.full((cell_h, cell_w, 3), 128, np.uint8)
    h, w = frame.shape[:2]
    y, x = (cell_h - h) // 2, (cell_w - w) // 2
    cell[y:y + h, x:x + w] = frame
    return cell


def _label(img: np.ndarray, text: str) -> np.ndarray:
    bar = np.full((14, img.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, text, (2, 11), cv2.FONT_HERSHEY_PLAIN, 0.8, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([bar, img])


def real_frames(folder: Path) -> list[tuple[str, np.ndarray]]:
    """LR frames of a folder of real samples (files with the word 'lr' in the name), RGB."""
    out = []
    for path in sorted(Path(folder).glob("*")):
        if _LR_NAME.search(path.stem) and path.suffix.lower() in (".png", ".jpg", ".jpeg"):
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is not None:
                out.append((path.stem, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
    return out


def frame_rows(rows: list[tuple[str, list[np.ndarray]]], scale: int = 4) -> np.ndarray:
    """RGB image: each (label, up to 5 frames) as one labelled row, every frame at native scale on
    a grey cell of one size for the whole sheet (so sizes compare across rows), zoomed `scale` x."""
    frames = [f for _, fs in rows for f in fs]
    size = (max([CELL_H] + [f.shape[0] for f in frames]), max([CELL_W] + [f.shape[1] for f in frames]))
    empty = np.full((*size, 3), 128, np.uint8)
    out = []
    for label, fs in rows:
        strip = np.hstack([_cell(f, size) for f in fs] + [empty] * (5 - len(fs)))
        out.append(_label(cv2.resize(strip, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST), label))
    width = max(r.shape[1] for r in out)
    return np.vstack([np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in out])


def contact_sheet(num_tracks: int = 8, *, seed: int = 0, preset: str = "hard", real_dir: Path | None = None,
                  scale: int = 4) -> np.ndarray:
    """RGB image: one row per synthetic track (its 5 LR frames), then a row of real LR frames."""
    tracks = [generate_track(seed, i, preset=preset) for i in range(num_tracks)]
    reals = real_frames(real_dir) if real_dir is not None else []
    rows = [(f"synthetic {preset} #{i}: {track.text}", list(track.lr)) for i, track in enumerate(tracks)]
    for start in range(0, len(reals), 5):
        chunk = reals[start:start + 5]
        names = "  ".join(n.split("_lr")[0][-12:] for n, _ in chunk)
        rows.append((f"REAL: {names}", [f for _, f in chunk]))
    return frame_rows(rows, scale)


def write_contact_sheet(out: str | Path, **kwargs) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), cv2.cvtColor(contact_sheet(**kwargs), cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {out}")
    return out
