"""One PNG that puts synthetic LR tracks beside real LR frames, to judge realism by eye."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ksrnet.synth.dataset import generate_track

CELL_H, CELL_W = 21, 56  # a little above the largest LRLPR-26 LR crop, so nothing is shrunk


def _cell(frame: np.ndarray) -> np.ndarray:
    """Frame at native scale, centred on a mid-grey cell (sizes stay comparable across rows)."""
    cell = np.full((CELL_H, CELL_W, 3), 128, np.uint8)
    h, w = min(frame.shape[0], CELL_H), min(frame.shape[1], CELL_W)
    y, x = (CELL_H - h) // 2, (CELL_W - w) // 2
    cell[y:y + h, x:x + w] = frame[:h, :w]
    return cell


def _label(img: np.ndarray, text: str) -> np.ndarray:
    bar = np.full((14, img.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, text, (2, 11), cv2.FONT_HERSHEY_PLAIN, 0.8, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([bar, img])


def real_frames(folder: Path) -> list[tuple[str, np.ndarray]]:
    """LR frames of a folder of real samples (files with 'lr' in the name), RGB."""
    out = []
    for path in sorted(Path(folder).glob("*")):
        if "lr" in path.name.lower() and path.suffix.lower() in (".png", ".jpg", ".jpeg"):
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is not None:
                out.append((path.stem, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
    return out


def contact_sheet(num_tracks: int = 8, *, seed: int = 0, preset: str = "hard", real_dir: Path | None = None,
                  scale: int = 4) -> np.ndarray:
    """RGB image: one row per synthetic track (its 5 LR frames), then a row of real LR frames."""
    rows = []
    for i in range(num_tracks):
        track = generate_track(seed, i, preset=preset)
        row = np.hstack([_cell(f) for f in track.lr])
        rows.append(_label(cv2.resize(row, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST),
                           f"synthetic {preset} #{i}: {track.text}"))
    if real_dir is not None:
        reals = real_frames(real_dir)
        for start in range(0, len(reals), 5):
            chunk = reals[start:start + 5]
            row = np.hstack([_cell(f) for _, f in chunk] + [_cell(np.full((1, 1, 3), 128, np.uint8))] * (5 - len(chunk)))
            names = "  ".join(n.split("_lr")[0][-12:] for n, _ in chunk)
            rows.append(_label(cv2.resize(row, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST),
                               f"REAL: {names}"))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    return np.vstack(rows)


def write_contact_sheet(out: str | Path, **kwargs) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), cv2.cvtColor(contact_sheet(**kwargs), cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {out}")
    return out
