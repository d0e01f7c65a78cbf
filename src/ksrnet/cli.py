"""The `ksrnet` command: one verb per job (see `ksrnet --help`)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

app = typer.Typer(
    help="ksrnet: read license plates from tracks of tiny low-resolution frames (LRLPR-26 layout).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
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


def fail(message: str, code: int = 2) -> None:
    err_console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


def _fmt(value: Optional[float], pct: bool = True) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}" if pct else f"{value:.4f}"


def print_report(report, title: str) -> None:
    table = Table(title=title)
    for col in ("group", "tracks", "RR %", "CER %", "char acc %", "conf gap (pts)", "wrong@>=0.9", "missing"):
        table.add_column(col, justify="right" if col != "group" else "left")
    rows = [("all", report.overall)]
    rows += [(f"layout {k}", v) for k, v in report.by_layout.items()]
    rows += [(f"{k}", v) for k, v in report.by_scenario.items()]
    for name, s in rows:
        table.add_row(
            name, str(s.tracks), _fmt(s.recognition_rate), _fmt(s.cer), _fmt(s.char_accuracy),
            _fmt(s.confidence_gap), str(s.confident_wrong), str(s.missing),
        )
    console.print(table)


def load_ground_truth(tracks_root: Path):
    """Ground truth of every annotated track under a root, with a progress bar; skips unlabelled ones."""
    from ksrnet.metrics import GroundTruth
    from ksrnet.tracks import DatasetError, TrackError, discover_tracks, read_annotations

    try:
        paths = discover_tracks(tracks_root)
    except DatasetError as exc:
        fail(str(exc))
    truths, problems = [], []
    with progress_bar() as progress:
        task = progress.add_task("reading annotations", total=len(paths))
        for path in paths:
            try:
                ann = read_annotations(path)
            except TrackError as exc:
                problems.append(str(exc))
            else:
                if ann.text is not None:
                    layout = ann.layout.value if ann.layout else None
                    truths.append(GroundTruth(path.name, ann.text, layout, ann.scenario))
            progress.advance(task)
    return truths, problems


@app.command()
def score(
    tracks: Path = typer.Argument(..., help="LRLPR-26 folder with annotations.json per track (nested or flat)."),
    predictions: Path = typer.Argument(..., help="predictions.txt or submission.zip to score."),
    as_json: bool = typer.Option(False, "--json", help="Print the scores as JSON instead of a table."),
) -> None:
    """Score a predictions file against annotated tracks: RR, CER, per-char accuracy, confidence gap.

    Tracks without a prediction count as wrong with confidence 0; predictions for unknown tracks are
    listed but do not change the scores.
    """
    from ksrnet.metrics import Reading, score as score_readings
    from ksrnet.submission import PredictionsError, read_predictions

    truths, problems = load_ground_truth(tracks)
    for problem in problems:
        err_console.print(f"[yellow]skipped:[/yellow] {problem}")
    if not truths:
        fail(f"no annotated tracks under {tracks}: nothing to score against")
    try:
        preds = read_predictions(predictions)
    except (PredictionsError, OSError) as exc:
        fail(str(exc))
    readings = {k: Reading(k, p.text, p.confidence) for k, p in preds.items()}
    report = score_readings(truths, readings)
    if as_json:
        out = report.as_dict()
        out["skipped_tracks"] = problems
        print(json.dumps(out, indent=2))
    else:
        print_report(report, f"{predictions} vs {tracks}")
        if report.overall.missing:
            err_console.print(f"[yellow]{report.overall.missing} tracks have no prediction (counted wrong)[/yellow]")
        if report.extra_predictions:
            err_console.print(f"[yellow]{len(report.extra_predictions)} predictions name unknown tracks[/yellow]")


@app.command("check-data")
def check_data(
    tracks: Path = typer.Argument(..., help="LRLPR-26 folder (nested train/Scenario-X/Layout/track_N or flat)."),
    as_json: bool = typer.Option(False, "--json", help="Print the statistics as JSON."),
) -> None:
    """Validate a dataset: counts per scenario/layout, frame counts and sizes, label problems.

    Exits with status 1 if any track is broken (unreadable image, bad label, broken JSON...).
    """
    from ksrnet.dataset_stats import DatasetStats
    from ksrnet.tracks import DatasetError, discover_tracks, iter_track_results

    try:
        paths = discover_tracks(tracks)
    except DatasetError as exc:
        fail(str(exc))
    stats = DatasetStats()
    with progress_bar() as progress:
        task = progress.add_task("checking tracks", total=len(paths))
        for _path, result in iter_track_results(paths):
            stats.add(result)
            progress.advance(task)
    if as_json:
        print(json.dumps(stats.as_dict(), indent=2))
    else:
        stats.print(console)
    if stats.failures:
        raise typer.Exit(1)


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-out"), help="Folder for the demo tracks and predictions."),
) -> None:
    """Generate a few tracks, read them with the shipped model, print readings and the score."""
    from ksrnet.demo import run_demo

    run_demo(out, console)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
