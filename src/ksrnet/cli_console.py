"""Where the `ksrnet` command writes: results to stdout, progress and errors to stderr."""

from __future__ import annotations

import os
import sys

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

# Width of results written to a file or a pipe (a log, CI). Rich would cut them to 80 columns there,
# leaving tables with headers like "track…"; a terminal keeps its own width, and COLUMNS still rules.
PIPED_WIDTH = 160


def results_width() -> int | None:
    """PIPED_WIDTH where stdout is not a terminal and COLUMNS is unset; None (rich's own choice) otherwise."""
    isatty = getattr(sys.stdout, "isatty", None)
    piped = not (isatty and isatty()) and "COLUMNS" not in os.environ
    return PIPED_WIDTH if piped else None


console = Console(width=results_width())
err_console = Console(stderr=True)


def progress_bar(transient: bool = True) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=transient,
    )


def first_few(items, limit: int = 5, sep: str = ", ") -> str:
    """The first `limit` items joined, then " ..." when there are more (names in one message line).
    Only limit + 1 items are taken, so a generator's later items are never built."""
    from itertools import islice

    head = list(islice(items, limit + 1))
    return sep.join(head[:limit]) + (" ..." if len(head) > limit else "")


def fail(message: str, code: int = 2) -> None:
    """Print "error: MESSAGE" and exit. The message is plain text, never markup: it carries paths,
    labels and install hints ("ksrnet[onnx]") that rich would otherwise swallow or choke on."""
    from rich.text import Text

    err_console.print(Text.assemble(("error:", "red"), " ", str(message)))
    raise typer.Exit(code)


def check_output_path(path, option: str) -> None:
    """Refuse, before any costly work, an output file that cannot be written: an existing folder, one
    whose parent is a file, or one in a place that takes no new files (read-only, no permission):
    otherwise that is found only after every track was read, or after the other outputs were written."""
    import tempfile
    from pathlib import Path

    path = Path(path)
    if path.is_dir():
        fail(f"{option} {path} is a folder: give a file name")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                fail(f"{option} {path}: {parent} is a file, not a folder")
            try:  # the nearest existing folder must take a new file (or the folders to be made)
                with tempfile.TemporaryFile(dir=parent):
                    pass
            except OSError as exc:
                fail(f"{option} {path}: cannot write in {parent} ({exc.strerror or exc})")
            break


def write_text_or_fail(path, text: str, what: str = "") -> None:
    """Write a text output atomically (ksrnet.atomic_files), or end with one line saying why not."""
    from pathlib import Path

    from ksrnet.atomic_files import atomic_write

    try:
        atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    except OSError as exc:
        fail(f"cannot write {what + ' ' if what else ''}{path}: {exc.strerror or exc}")
