"""Statistics `ksrnet check-data` prints about a dataset, gathered one track at a time."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ksrnet.tracks import Track, TrackError


def _summary(values: list[float]) -> dict | None:
    if not values:
        return None
    arr = np.asarray(values, dtype=float)
    return {"min": float(arr.min()), "mean": round(float(arr.mean()), 2), "max": float(arr.max())}


@dataclass
class DatasetStats:
    groups: Counter = field(default_factory=Counter)
    frame_counts: Counter = field(default_factory=Counter)
    lr_widths: list[int] = field(default_factory=list)
    lr_heights: list[int] = field(default_factory=list)
    hr_widths: list[int] = field(default_factory=list)
    hr_heights: list[int] = field(default_factory=list)
    tracks: int = 0
    unlabelled: int = 0
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(self, result: Track | TrackError) -> None:
        if isinstance(result, TrackError):
            self.failures.append(str(result))
            return
        self.tracks += 1
        layout = result.layout.value if result.layout else "unknown layout"
        self.groups[(result.scenario or "no scenario", layout)] += 1
        self.frame_counts[len(result.lr)] += 1
        if result.text is None:
            self.unlabelled += 1
        for frame in result.lr:
            self.lr_heights.append(frame.shape[0])
            self.lr_widths.append(frame.shape[1])
        for frame in result.hr:
            self.hr_heights.append(frame.shape[0])
            self.hr_widths.append(frame.shape[1])
        self.warnings.extend(f"{result.track_id}: {w}" for w in result.warnings)

    def as_dict(self) -> dict:
        return {
            "tracks_ok": self.tracks,
            "tracks_broken": len(self.failures),
            "unlabelled": self.unlabelled,
            "per_scenario_layout": {f"{s}/{l}": n for (s, l), n in sorted(self.groups.items())},
            "lr_frames_per_track": {str(k): v for k, v in sorted(self.frame_counts.items())},
            "lr_width": _summary(self.lr_widths),
            "lr_height": _summary(self.lr_heights),
            "hr_width": _summary(self.hr_widths),
            "hr_height": _summary(self.hr_heights),
            "failures": self.failures,
            "warnings": self.warnings,
        }

    def print(self, console: Console) -> None:
        # Track names, paths and label text come from the data: escaped, never read as markup, and
        # kept on one line each (soft wrap) so a log can be grepped for a path.
        d = self.as_dict()
        table = Table(title="tracks per scenario / layout")
        table.add_column("scenario / layout")
        table.add_column("tracks", justify="right")
        for key, n in d["per_scenario_layout"].items():
            table.add_row(escape(key), str(n))
        console.print(table)
        console.print(f"frames per track: {d['lr_frames_per_track']}")
        for name in ("lr_width", "lr_height", "hr_width", "hr_height"):
            if d[name]:
                console.print(f"{name.replace('_', ' ')} px: {d[name]}")
        console.print(f"unlabelled tracks: {self.unlabelled}")
        for w in self.warnings[:50]:
            console.print(f"[yellow]warning:[/yellow] {escape(w)}", soft_wrap=True)
        if len(self.warnings) > 50:
            console.print(f"[yellow]... and {len(self.warnings) - 50} more warnings (see --json)[/yellow]")
        for f in self.failures:
            console.print(f"[red]broken:[/red] {escape(f)}", soft_wrap=True)
        verdict = "[green]OK[/green]" if not self.failures else f"[red]{len(self.failures)} broken track(s)[/red]"
        console.print(f"{self.tracks} readable track(s); {verdict}")
