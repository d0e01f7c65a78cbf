"""The `ksrnet` command: one verb per job (see `ksrnet --help`)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ksrnet.cli_console import (check_output_path, console, err_console, fail, first_few, progress_bar,
                                write_text_or_fail)
from ksrnet.cli_readers import (
    CALIBRATION_HELP,
    CONFIDENCE_HELP,
    ENSEMBLE_HELP,
    PAD_MARGIN_HELP,
    RESTORATION_MODEL_HELP,
    TTA_HELP,
    TTA_VIEWS_HELP,
    check_fusions_and_mode,
    discover_or_fail,
    ensemble_members,
    make_ensemble_reader,
    make_reader,
    make_readers,
    model_label,
    parse_tta_views,
    read_track_batches,
    refuse_gap_beyond_one_recognizer,
    restoration_model,
    set_pad_margin,
    temperature_key_for,
    temperatures_for,
)

app = typer.Typer(
    help="ksrnet: read license plates from tracks of tiny low-resolution frames (LRLPR-26 layout).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fmt(value: Optional[float], pct: bool = True) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}" if pct else f"{value:.4f}"


def print_report(report, title: str) -> None:
    from rich.markup import escape  # titles and scenario names come from paths: never markup

    table = Table(title=escape(title))
    for col in ("group", "tracks", "RR %", "CER %", "char acc %", "conf gap (pts)", "wrong@>=0.9", "missing"):
        table.add_column(col, justify="right" if col != "group" else "left")
    rows = [("all", report.overall)]
    rows += [(f"layout {k}", v) for k, v in report.by_layout.items()]
    rows += [(escape(f"{k}"), v) for k, v in report.by_scenario.items()]
    for name, s in rows:
        table.add_row(
            name, str(s.tracks), _fmt(s.recognition_rate), _fmt(s.cer), _fmt(s.char_accuracy),
            _fmt(s.confidence_gap), str(s.confident_wrong), str(s.missing),
        )
    console.print(table)


def print_group_table(results: dict, title: str) -> None:
    """RR % / CER % / confidence gap of each row of eval's table (fusion rule @ frame count) per
    plate layout, and per scenario where the tracks come from more than one: a rule can trade one
    layout for the other, which the overall figures hide."""
    first = next(iter(results.values()))
    with_scenarios = len(first.by_scenario) > 1
    groups = [(name, lambda r, k=name: r.by_layout[k]) for name in first.by_layout]
    if with_scenarios:
        groups += [(name, lambda r, k=name: r.by_scenario[k]) for name in first.by_scenario]
    if len(groups) < 2:
        return
    by = "layout and scenario" if with_scenarios else "layout"
    table = Table(title=f"{title}: by {by}, RR % / CER % / conf gap (pts)")
    table.add_column("fusion")
    table.add_column("F", justify="right")
    for name, group_of in groups:
        table.add_column(f"{name} ({group_of(first).tracks})", justify="right")
    for key, report in results.items():
        rule, _, frames = key.partition("@F=")
        cells = [f"{_fmt(g.recognition_rate)} / {_fmt(g.cer)} / {_fmt(g.confidence_gap)}"
                 for g in (group_of(report) for _, group_of in groups)]
        table.add_row(rule, frames, *cells)
    console.print(table)


def typicality_groups(truths: list, full: dict) -> dict:
    """Per row of eval's table ("rule@F=c"), the scores (metrics.GroupScores) of the tracks that look
    like the model's calibration tracks ("typical") and of those flagged atypical ("atypical",
    ksrnet.typicality); a group without tracks is None. Rows without a scored reading are left out."""
    from ksrnet.metrics import Reading, score

    out = {}
    for (rule, c), rs in full.items():
        if not any(r.atypicality is not None for r in rs.values()):
            continue
        groups = {}
        for name, flag in (("typical", False), ("atypical", True)):
            group = [t for t in truths if t.track_id in rs and rs[t.track_id].atypical == flag]
            groups[name] = score(group, {t.track_id: Reading(t.track_id, rs[t.track_id].text, rs[t.track_id].confidence)
                                         for t in group}).overall if group else None
        out[f"{rule}@F={c}"] = groups
    return out


def print_typicality_table(groups: dict, title: str) -> None:
    """RR % and wrong readings at >= 0.9 of each row of eval's table on the tracks that look like
    the model's calibration tracks and on those flagged atypical (typicality_groups): whether the
    flag picks out footage the confidences do not hold on. Nothing without flagged tracks."""
    rows = [(key, g) for key, g in groups.items() if g["atypical"] is not None]
    if not rows:
        return
    table = Table(title=f"{title}: tracks like the calibration tracks and atypical ones, tracks: RR % / wrong@>=0.9")
    for col in ("fusion", "F", "typical", "atypical"):
        table.add_column(col, justify="left" if col == "fusion" else "right")
    for key, g in rows:
        rule, _, frames = key.partition("@F=")
        cells = ["-" if s is None else f"{s.tracks}: {_fmt(s.recognition_rate)} / {s.confident_wrong}"
                 for s in (g["typical"], g["atypical"])]
        table.add_row(rule, frames, *cells)
    console.print(table)


def annotated_truth(path: Path):
    """GroundTruth from a track's annotations.json (None when unlabelled); raises TrackError."""
    from ksrnet.metrics import GroundTruth
    from ksrnet.tracks import read_annotations

    ann = read_annotations(path)
    if ann.text is None:
        return None
    return GroundTruth(path.name, ann.text, ann.layout.value if ann.layout else None, ann.scenario)


def load_ground_truth(tracks_root: Path):
    """Ground truth of every annotated track under a root, with a progress bar; skips unlabelled ones."""
    from ksrnet.tracks import DatasetError, TrackError, discover_tracks

    try:
        paths = discover_tracks(tracks_root)
    except DatasetError as exc:
        fail(str(exc))
    truths, problems = [], []
    with progress_bar() as progress:
        task = progress.add_task("reading annotations", total=len(paths))
        for path in paths:
            try:
                truth = annotated_truth(path)
            except TrackError as exc:
                problems.append(str(exc))
            else:
                if truth is not None:
                    truths.append(truth)
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
    from rich.markup import escape  # messages carry paths and label text: never markup

    from ksrnet.metrics import Reading, score as score_readings
    from ksrnet.submission import PredictionsError, read_predictions
    from ksrnet.tracks import duplicate_ids

    truths, problems = load_ground_truth(tracks)
    for problem in problems:
        err_console.print(f"[yellow]skipped:[/yellow] {escape(problem)}", soft_wrap=True)
    if not truths:
        fail(f"no annotated tracks under {tracks}: nothing to score against")
    # A prediction names a track by id only: an id annotated in two folders is scored twice against it.
    dupes = duplicate_ids(t.track_id for t in truths)
    if dupes:
        err_console.print(f"[yellow]warning:[/yellow] {len(dupes)} track id(s) annotated in more than one "
                          f"folder, each scored against the same prediction: {escape(', '.join(dupes))}",
                          soft_wrap=True)
    rewritten: list[tuple[str, str, str]] = []
    try:
        preds = read_predictions(predictions, rewritten)
    except (PredictionsError, OSError) as exc:
        fail(str(exc))
    if rewritten:
        # ksrnet writes clean readings; another tool's file may not be scored this leniently elsewhere.
        track_id, written, read = rewritten[0]
        err_console.print(f"[yellow]warning:[/yellow] {len(rewritten)} reading(s) normalised before scoring "
                          f"(upper case; spaces, '-', '.', '·' removed), e.g. {escape(track_id)}: "
                          f"{escape(repr(written))} scored as {escape(read)}; a scorer comparing them as "
                          "written would count them wrong", soft_wrap=True)
    readings = {k: Reading(k, p.text, p.confidence) for k, p in preds.items()}
    report = score_readings(truths, readings)
    if as_json:
        out = report.as_dict()
        out["skipped_tracks"] = problems
        out["duplicate_track_ids"] = dupes
        out["normalised_readings"] = [{"track_id": t, "written": w, "scored_as": r} for t, w, r in rewritten]
        print(json.dumps(out, indent=2))
    else:
        print_report(report, f"{predictions} vs {tracks}")
        if report.overall.missing:
            err_console.print(f"[yellow]{report.overall.missing} tracks have no prediction (counted wrong)[/yellow]")
        if report.extra_predictions:
            # Named, as the help promises: usually an id spelt another way (track_1 for track_00001).
            extra = report.extra_predictions
            err_console.print(f"[yellow]{len(extra)} predictions name unknown tracks (not scored):[/yellow] "
                              f"{escape(first_few(extra))}", soft_wrap=True)


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
    note_duplicate_ids(paths)
    if stats.failures:
        raise typer.Exit(1)


def note_duplicate_ids(paths: list) -> None:
    """Warn of track ids found in more than one folder: fine for training, but predict and eval key
    their outputs by track id and refuse such a set (read one split or scenario at a time)."""
    from rich.markup import escape

    from ksrnet.tracks import duplicate_ids

    dupes = duplicate_ids(path.name for path in paths)
    if dupes:
        err_console.print(f"[yellow]note:[/yellow] {len(dupes)} track id(s) occur in more than one folder "
                          f"({escape(first_few(dupes))}): predict and eval "
                          "key their outputs by track id and refuse such a set; read one split or scenario at a time",
                          soft_wrap=True)


FONT_HELP = ("A folder of .ttf/.otf plate faces (e.g. the real Mandatory or FE-Schrift, which are not free) "
             "drawn beside the packaged free ones; repeatable. Same as listing it in $KSRNET_FONT_DIRS.")


def use_font_dirs(dirs: Optional[List[Path]]) -> None:
    """Put --font folders before those of $KSRNET_FONT_DIRS for the renderer (and any worker it starts),
    refusing one that holds no usable plate face and noting the faces it leaves out."""
    import os
    import warnings

    from rich.markup import escape

    from ksrnet.synth.fonts import FONT_DIRS_ENV, FontNotFoundError, clear_cache, faces_in

    for d in dirs or []:
        with warnings.catch_warnings(record=True) as left_out:
            warnings.simplefilter("always")
            try:
                faces = faces_in(d)
            except FontNotFoundError as exc:
                fail(f"--font {d}: {exc}")
        for w in left_out:
            err_console.print(f"[yellow]note:[/yellow] {escape(str(w.message))}", soft_wrap=True)
        console.print(f"--font {escape(str(d))}: {len(faces)} face(s): {escape(first_few([f.family for f in faces]))}",
                      highlight=False)
    if dirs:
        old = [e for e in os.environ.get(FONT_DIRS_ENV, "").split(os.pathsep) if e]
        os.environ[FONT_DIRS_ENV] = os.pathsep.join([str(d) for d in dirs] + old)
        clear_cache()


@app.command()
def synth(
    out: Path = typer.Argument(..., help="Folder to write (LRLPR-26 layout: OUT/Scenario-Synthetic/<Layout>/track_N)."),
    tracks: int = typer.Option(100, "--tracks", "-n", min=1, help="Number of tracks."),
    seed: int = typer.Option(0, "--seed", min=0, help="Same seed, same tracks."),
    preset: str = typer.Option("mix", "--preset", help="Degradation difficulty: easy | medium | hard | mix."),
    fmt: str = typer.Option("png", "--format", help="png (lossless) or jpg for the written frames."),
    codec: Optional[str] = typer.Option(None, "--codec", help="Force the simulated codec: none | jpeg | h264 | "
                                        "h264+jpeg (default: drawn per track by the preset)."),
    no_hr: bool = typer.Option(False, "--no-hr", help="Skip the hr-NNN views (faster, smaller)."),
    fonts: Optional[List[Path]] = typer.Option(None, "--font", help=FONT_HELP),
) -> None:
    """Generate synthetic tracks with known text, corners, flow to the reference frame and canonical HR.

    Each track folder holds lr-001..005.png, hr-001..005.png (.jpg with --format jpg), annotations.json (plate_text,
    plate_layout, corners) and synth_gt.npz (flows, homographies to the canonical plate, the
    canonical HR plate, the drawn degradations as JSON; see ksrnet/synth/dataset.py). The same seed gives the same tracks with the
    same fonts.
    """
    from ksrnet.synth.dataset import write_synthetic_dataset

    if preset not in ("easy", "medium", "hard", "mix"):
        fail(f"unknown preset {preset!r}: use easy, medium, hard or mix")
    if fmt not in ("png", "jpg"):
        fail("--format must be png or jpg")
    from ksrnet.synth.degrade import CODECS

    if codec is not None and codec not in CODECS:
        fail(f"unknown codec {codec!r}: use {', '.join(CODECS)}")
    use_font_dirs(fonts)
    # Tracks are named track_00001.. under a folder per layout: written over an earlier set, they would
    # replace some of its tracks, keep others and give one id two folders.
    if out.exists() and not out.is_dir():
        fail(f"{out} is a file: give a folder to write the tracks in")
    if out.is_dir() and any(out.iterdir()):
        fail(f"{out} is not empty: give a new or empty folder (an earlier synthetic set there would be mixed "
             "with this one)")
    try:
        # A path through a file, or in a place that takes no folders, is refused before any track is made.
        out.mkdir(parents=True, exist_ok=True)
        with progress_bar() as progress:
            task = progress.add_task("synthesising tracks", total=tracks)
            write_synthetic_dataset(out, tracks, seed=seed, preset=preset, fmt=fmt, with_hr=not no_hr, codec=codec,
                                    progress=lambda done, total: progress.update(task, completed=done))
    except OSError as exc:  # disk full midway: the tracks written so far are whole, but the set is not
        fail(f"cannot write under {out}: {exc.strerror or exc}")
    console.print(f"wrote {tracks} tracks under {out}", markup=False, highlight=False)


@app.command("contact-sheet")
def contact_sheet_cmd(
    out: Path = typer.Argument(Path("contact_sheet.png"), help="PNG to write."),
    tracks: int = typer.Option(8, "--tracks", "-n", min=1, help="Synthetic tracks (one row of 5 frames each)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Same seed, same synthetic rows (as in synth)."),
    preset: str = typer.Option("hard", "--preset", help="easy | medium | hard | mix"),
    real: Optional[Path] = typer.Option(None, "--real", help="Folder of real LR frames to show below "
                                        "(e.g. ../shared/real-samples/lrlpr26_frames)."),
    scale: int = typer.Option(4, "--scale", min=1, max=16, help="Nearest-neighbour zoom, so pixels stay visible."),
    fonts: Optional[List[Path]] = typer.Option(None, "--font", help=FONT_HELP),
) -> None:
    """Render synthetic tracks beside real LR frames in one PNG, at the same scale, to judge realism."""
    from ksrnet.synth.contact_sheet import write_contact_sheet

    from ksrnet.synth.degrade import PRESETS

    if real is not None and not real.is_dir():
        fail(f"--real {real} is not a folder")
    if preset not in (*PRESETS, "mix"):
        fail(f"unknown preset {preset!r}: use easy, medium, hard or mix")
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        fail(f"{out}: the contact sheet is an image; give a .png (or .jpg) file name")
    check_output_path(out, "OUT")
    use_font_dirs(fonts)
    try:
        path = write_contact_sheet(out, num_tracks=tracks, seed=seed, preset=preset, real_dir=real, scale=scale)
    except OSError as exc:
        fail(str(exc))
    console.print(f"wrote {path}", markup=False, highlight=False)


def _training_errors() -> tuple:
    """What `train` and `train-ksrnet` report in one line: config values (ValueError, ConfigError),
    weights that cannot be loaded (ModelLoadError), a dataset root without usable tracks
    (DatasetError), a run dir that cannot be made (OSError), settings Lightning refuses
    (MisconfigurationException: an accelerator this machine lacks)."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from ksrnet.tracks import DatasetError
    from ksrnet.weights import ModelLoadError

    return ValueError, ModelLoadError, DatasetError, OSError, MisconfigurationException


def _training_message(exc: Exception) -> str:
    """Lightning's own refusals ("No supported gpu backend found!") do not say which setting caused them."""
    if type(exc).__name__ == "MisconfigurationException":
        return f"the config's trainer section (accelerator, devices, precision) cannot run here: {exc}"
    return str(exc)


@app.command("train")
def train_cmd(
    config: Path = typer.Argument(..., help="YAML training config (see configs/parseq-tiny.yaml)."),
    run_dir: Path = typer.Option(None, "--run-dir", help="Where checkpoints, logs and the final weights go "
                                 "(default runs/<config name>). An existing run dir is resumed."),
    devices: Optional[int] = typer.Option(None, "--devices", help="Devices per node (overrides the config)."),
    num_nodes: Optional[int] = typer.Option(None, "--num-nodes", help="Nodes for DDP (overrides the config)."),
    max_epochs: Optional[int] = typer.Option(None, "--max-epochs", help="Overrides trainer.max_epochs."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Overrides trainer.max_minutes "
                                                "(the wall-clock budget, which a time_cosine schedule anneals over)."),
    no_resume: bool = typer.Option(False, "--no-resume", help="Start over even if run-dir holds a checkpoint "
                                   "(its checkpoints are deleted when training starts)."),
) -> None:
    """Train the PARSeq recognizer on on-the-fly synthetic tracks and/or an LRLPR-26 folder.

    Checkpoints go to RUN_DIR/checkpoints (last.ckpt is refreshed regularly, so a killed run resumes
    where it stopped); the config is saved as RUN_DIR/config.yaml and the final weights as
    RUN_DIR/model.safetensors (+ .json), loadable with `ksrnet predict --model RUN_DIR`.
    """
    from ksrnet.train_config import ConfigError, TrainConfig
    from ksrnet.training import train

    try:
        cfg = TrainConfig.load(config)
        overrides = {k: v for k, v in (("devices", devices), ("num_nodes", num_nodes), ("max_epochs", max_epochs),
                                       ("max_minutes", max_minutes)) if v is not None}
        if overrides:
            cfg = cfg.replace("trainer", **overrides)
    except (ConfigError, ValueError) as exc:
        fail(str(exc))
    run_dir = run_dir or Path("runs") / config.stem
    if run_dir.exists() and not run_dir.is_dir():
        fail(f"--run-dir {run_dir} is a file, not a folder")
    try:
        out = train(cfg, run_dir, resume=not no_resume)
    except _training_errors() as exc:
        fail(_training_message(exc))
    console.print(f"weights: {out}")


@app.command("train-ksrnet")
def train_ksrnet_cmd(
    config: Path = typer.Argument(..., help="YAML KSR-Net training config (see configs/ksrnet-tiny.yaml)."),
    run_dir: Path = typer.Option(None, "--run-dir", help="Run dir (default runs/<config name>); resumed if present."),
    stages: str = typer.Option("1,1b,2,3", "--stages", help="Comma-separated stages: 1 (flow on synthetic "
                               "ground truth), 1b (photometric flow fine-tuning), 2 (restoration warm-up), "
                               "3 (end to end)."),
    devices: Optional[int] = typer.Option(None, "--devices", help="Devices per node (overrides the config)."),
    num_nodes: Optional[int] = typer.Option(None, "--num-nodes", help="Nodes for DDP (overrides the config)."),
) -> None:
    """Train the KSR-Net restoration network stage by stage (the recognizer stays frozen).

    Each stage starts from the previous stage's weights in RUN_DIR and writes
    RUN_DIR/stage-<s>/ksrnet.safetensors; RUN_DIR/ksrnet.safetensors is a copy of the latest stage's
    (rerunning an earlier stage leaves it as it is).
    """
    from ksrnet.ksr_training import run_stages

    wanted = tuple(s.strip() for s in stages.split(",") if s.strip())
    if not wanted or any(s not in ("1", "1b", "2", "3") for s in wanted):
        fail(f"--stages takes 1, 1b, 2, 3 (comma-separated), got {stages!r}")
    overrides = {k: v for k, v in (("devices", devices), ("num_nodes", num_nodes)) if v is not None}
    run_dir = run_dir or Path("runs") / config.stem
    if run_dir.exists() and not run_dir.is_dir():
        fail(f"--run-dir {run_dir} is a file, not a folder")
    try:
        out = run_stages(config, run_dir, wanted, **overrides)
    except _training_errors() as exc:
        fail(_training_message(exc))
    console.print(f"weights: {out}")


@app.command()
def predict(
    tracks: Path = typer.Argument(..., help="LRLPR-26 folder (nested or flat test/track_N)."),
    out: Path = typer.Option(Path("predictions.txt"), "--out", "-o", help="Predictions file to write."),
    make_zip: bool = typer.Option(False, "--zip", help="Also write submission.zip beside it."),
    model: Optional[List[str]] = typer.Option(None, "--model", help="Shipped model name, .safetensors file or run "
                                              "dir (default: the shipped parseq-tiny); repeat for an ensemble. "
                                              + RESTORATION_MODEL_HELP),
    ensemble: str = typer.Option("logit", "--ensemble", help=ENSEMBLE_HELP),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help=CALIBRATION_HELP),
    fusion: str = typer.Option("product", "--fusion", help="single | product | logit_mean | char_majority | "
                               "string_majority."),
    frames: Optional[int] = typer.Option(None, "--frames", min=1, help="Use only the last N frames of each track."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Tracks per inference batch."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1 ..."),
    mode: str = typer.Option("nar", "--decode", help="nar (parallel + refinement) or ar (autoregressive)."),
    details: Optional[Path] = typer.Option(None, "--details", help="Also write per-character probabilities "
                                           "and top-3 alternatives per track as JSON lines."),
    backend: str = typer.Option("torch", "--backend", help="torch, or onnx with --model FILE.onnx."),
    tta: bool = typer.Option(False, "--tta", help=TTA_HELP),
    tta_views: Optional[str] = typer.Option(None, "--tta-views", help=TTA_VIEWS_HELP),
    min_confidence: Optional[float] = typer.Option(None, "--min-confidence", min=0.0, max=1.0,
                                                   help="Abstain below this (calibrated) confidence: the reading "
                                                   "is written empty, i.e. illegible, with confidence 0 (an empty "
                                                   "reading is never the plate); --details keeps the guess."),
    pad_margin: float = typer.Option(0.0, "--pad-margin", min=0.0, max=0.5, help=PAD_MARGIN_HELP),
    confidence: str = typer.Option("calibrated", "--confidence", help=CONFIDENCE_HELP),
) -> None:
    """Read every track and write predictions.txt (track_id,TEXT;confidence).

    Unreadable tracks are reported and written with an empty reading and confidence 0, never dropped.
    With --min-confidence, readings the model is not sure enough of are written empty (illegible)
    with confidence 0 instead of as a guess; --details still holds the guess, its confidence and
    its alternatives. A note says so when a confidence is not calibrated (no temperature fitted for
    the fusion rule at that frame count).
    """
    from rich.markup import escape

    from ksrnet.submission import Prediction, write_predictions

    check_fusions_and_mode([fusion], mode)
    views = parse_tta_views(tta, tta_views)
    zip_path = out.with_name("submission.zip") if make_zip else None
    if zip_path == out:
        fail("--out submission.zip with --zip would write the zip over the predictions file: give --out a .txt name")
    for path, option in ((out, "--out"), (zip_path, "--zip"), (details, "--details")):
        if path is not None:
            check_output_path(path, option)
    key = temperature_key_for(confidence, model, views, min_confidence)
    paths = discover_or_fail(tracks)
    check_submittable_ids(paths)
    reader = make_readers(model, device, mode, views, ensemble, backend, calibration, temperature_key=key)
    set_pad_margin(reader, pad_margin)
    preds, extra, readings, failures, abstained = [], [], [], [], 0
    for batch in read_track_batches(paths, batch_size, "reading plates", labels="lenient"):
        good = [t for _, t in batch if not isinstance(t, Exception)]
        for path, t in batch:
            if isinstance(t, Exception):
                failures.append(str(t))
                preds.append(Prediction(path.name, "", 0.0))
        if good:
            for r in reader.read(good, [fusion], frame_count=frames)[fusion]:
                illegible = min_confidence is not None and r.confidence < min_confidence
                abstained += illegible
                # The confidence of the line is that of what it says: an empty reading is never right,
                # and keeping the guess's confidence there would lower the confidence gap.
                preds.append(Prediction(r.track_id, "", 0.0) if illegible else Prediction(r.track_id, r.text, r.confidence))
                extra.append(r.__dict__ | {"illegible": illegible, "atypical": r.atypical})
                readings.append(r)
    try:
        write_predictions(preds, out, zip_path=zip_path)
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror or exc}")
    if details:
        write_text_or_fail(details, "".join(json.dumps(r) + "\n" for r in extra), "--details")
    for f in failures:
        err_console.print(f"[yellow]unreadable, written empty:[/yellow] {escape(f)}", soft_wrap=True)
    console.print(f"wrote {len(preds)} predictions to {escape(str(out))}" + (" (+ submission.zip)" if make_zip else ""))
    if min_confidence is not None:
        console.print(f"{abstained} of {len(extra)} readings below confidence {min_confidence} written as illegible")
    note_uncalibrated(readings, fusion, getattr(reader, "rule", None), min_confidence, confidence)
    note_atypical(readings, "--details holds each track's atypicality")


def note_atypical(readings: list, where: str) -> None:
    """Tell the user how many tracks look unlike the tracks the model was calibrated on (TrackReading.
    atypical, ksrnet.typicality): their confidences were never checked on such input. Nothing when
    the reader has no typicality reference."""
    from rich.markup import escape

    from ksrnet.typicality import ATYPICAL

    scored = [r for r in readings if r.atypicality is not None]
    flagged = sum(r.atypical for r in scored)
    if not flagged:
        return
    err_console.print("[yellow]note:[/yellow] " + escape(
        f"{flagged} of {len(scored)} tracks look unlike the tracks this model was calibrated on (less typical than "
        f"{ATYPICAL:.0%} of them, by its encoder's features): their confidences were never checked on such input "
        f"and may run high ({where}); calibrate on annotated tracks of this footage (`ksrnet calibrate FOLDER`) "
        "before relying on them"), soft_wrap=True, highlight=False)


def note_uncalibrated(readings: list, fusion: str, ensemble_rule: Optional[str] = None,
                      min_confidence: Optional[float] = None, confidence: str = "calibrated") -> None:
    """Tell the user which confidences no fitted calibration set (the fusion rule has no temperature,
    or confidence map, at that frame count): they rank readings but are not probabilities.
    ensemble_rule: the reader's, when it is an ensemble (calibrated into a file of its own).
    confidence "gap": the readings were scaled by the gap temperatures (--confidence gap), which
    are never probabilities; say so, and name the gap fit for the ones that lack one."""
    if confidence == "gap":
        fitted = sum(r.calibrated for r in readings)
        err_console.print(f"[yellow]note:[/yellow] {fitted} of {len(readings)} confidences come from the temperatures "
                          "fitted to widen the confidence gap (--confidence gap): they order the readings as "
                          "the calibrated ones do, but are not probabilities", soft_wrap=True, highlight=False)
        if fitted == len(readings):
            return
    from collections import Counter

    from rich.markup import escape

    raw = Counter(r.frames_used for r in readings if not r.calibrated)
    if not raw:
        return
    counts = ", ".join(f"{n} frame{'s' if n != 1 else ''}" for n in sorted(raw))
    err_console.print("[yellow]note:[/yellow] " + escape(
        f"{sum(raw.values())} of {len(readings)} confidences are not calibrated: nothing is "
        f"fitted for fusion {fusion} at {counts}, so they rank readings but are not probabilities"
        + (f" (and --min-confidence {min_confidence} compares them as they are)" if min_confidence is not None else "")
        + f"; fit it with `ksrnet calibrate --fusions {fusion} --frames {','.join(map(str, sorted(raw)))}`"
        + (" --objective gap" if confidence == "gap" else "") + " and the same --model options"
        + (f", --ensemble {ensemble_rule} --out FILE, then read with --calibration FILE" if ensemble_rule else "")),
        soft_wrap=True, highlight=False)


def check_submittable_ids(paths: list) -> None:
    """Refuse, before reading, track folders that predictions.txt cannot name: one line per track id,
    so two folders of the same name, or a name with whitespace, a comma or a semicolon."""
    from ksrnet.submission import Prediction, format_line

    for path in paths:
        try:
            format_line(Prediction(path.name, "", 0.0))
        except ValueError as exc:
            fail(f"{path}: the folder name cannot be a track id in predictions.txt ({exc}); rename the folder")
    refuse_duplicate_ids(paths, "predictions.txt", "point predict at one split (e.g. the test folder)")


def scorable_paths_or_fail(tracks: Path) -> list:
    """Track folders to score: readings are keyed by track id, so two folders of one name would both be
    scored against whichever was read last; refuse them, as predict does."""
    paths = discover_or_fail(tracks)
    refuse_duplicate_ids(paths, "the scores", "evaluate one split (or scenario) at a time")
    return paths


def refuse_duplicate_ids(paths: list, keyed_by_id: str, advice: str) -> None:
    """End with one line naming (up to 5) track ids found in more than one folder, which `keyed_by_id`
    (an output keyed by track id) cannot tell apart."""
    from ksrnet.tracks import duplicate_ids

    dupes = duplicate_ids(path.name for path in paths)
    if dupes:
        shown = first_few((f"{k} in {', '.join(str(p.parent) for p in paths if p.name == k)}" for k in dupes), sep="; ")
        fail(f"{len(dupes)} track id(s) found in more than one folder, which {keyed_by_id} cannot tell apart: "
             f"{shown}; {advice}")


def refuse_given(ctx: typer.Context, names: tuple, why: str) -> None:
    """End with one line naming the options among `names` (parameter names) that the user gave,
    rather than run without them as if they had been honoured."""
    given = [p.opts[0] for p in ctx.command.params if p.name in names
             and ctx.get_parameter_source(p.name).name in ("COMMANDLINE", "ENVIRONMENT")]
    if given:
        fail(f"{', '.join(given)} {why}")


def _truth_of_unreadable(path: Path):
    """Ground truth of a track whose frames cannot be read, if its annotations can."""
    from ksrnet.tracks import TrackError

    try:
        return annotated_truth(path)
    except TrackError:
        return None


@app.command("eval")
def eval_cmd(
    ctx: typer.Context,
    tracks: Optional[Path] = typer.Argument(None, help="Annotated LRLPR-26 folder (or `ksrnet synth` output); "
                                            "optional with --ablation."),
    model: Optional[List[str]] = typer.Option(None, "--model", help="Model name, .safetensors file or run dir; "
                                              "repeat for an ensemble. " + RESTORATION_MODEL_HELP),
    ensemble: str = typer.Option("logit", "--ensemble", help=ENSEMBLE_HELP),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help=CALIBRATION_HELP),
    ablation: bool = typer.Option(False, "--ablation", help="One table of every reading method (late fusions, "
                                  "TTA, ensemble, bicubic reference, MF-LPR²-style, each --ksrnet) on fixed "
                                  "synthetic tracks per --presets and on TRACKS if given; see --markdown."),
    ksrnet_models: Optional[List[str]] = typer.Option(None, "--ksrnet", help="With --ablation: KSR-Net weights "
                                                      "(file or run dir), repeatable; the first also lends its "
                                                      "flow estimator and recognizer to the MF-LPR²-style row."),
    synth_tracks: int = typer.Option(500, "--synth-tracks", min=0, help="With --ablation: synthetic tracks per preset."),
    presets: str = typer.Option("hard", "--presets", help="With --ablation: comma-separated synthetic presets."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="With --ablation: also write the table here "
                                            "(and the JSON beside it, .json)."),
    fusions: str = typer.Option("single,product,logit_mean,char_majority,string_majority", "--fusions",
                                help="Comma-separated fusion rules to compare."),
    frame_counts: str = typer.Option("1,3,5", "--frames", help="Comma-separated frame counts F (last F frames)."),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    device: str = typer.Option("cpu", "--device"),
    mode: str = typer.Option("nar", "--decode"),
    backend: str = typer.Option("torch", "--backend", help="torch, or onnx with --model FILE.onnx."),
    tta: bool = typer.Option(False, "--tta", help=TTA_HELP),
    tta_views: Optional[str] = typer.Option(None, "--tta-views", help=TTA_VIEWS_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON."),
    pad_margin: float = typer.Option(0.0, "--pad-margin", min=0.0, max=0.5, help=PAD_MARGIN_HELP),
    confidence: str = typer.Option("calibrated", "--confidence", help=CONFIDENCE_HELP),
) -> None:
    """RR, CER, confidence gap and ECE per fusion rule and frame count on an annotated folder.

    With --ablation: every reading method on the same tracks instead, in one table (see --ablation).
    """
    from rich.markup import escape

    from ksrnet.calibration import character_calibration, readings_ece
    from ksrnet.metrics import GroundTruth, Reading, score as score_readings

    if ablation:
        # The ablation rows fix their own frames and fusions and read with torch: these would be ignored.
        refuse_given(ctx, ("fusions", "frame_counts", "backend", "pad_margin", "confidence"),
                     "do not apply to --ablation")
        _ablation(tracks, model, ksrnet_models, synth_tracks, presets, markdown, batch_size, device, mode,
                  parse_tta_views(tta, tta_views), ensemble, as_json, calibration)
        return
    if tracks is None:
        fail("eval needs TRACKS (an annotated folder) unless --ablation is given")
    if ksrnet_models or markdown is not None:
        fail("--ksrnet and --markdown belong to --ablation")
    refuse_given(ctx, ("synth_tracks", "presets"), "belong to --ablation")

    fusion_list = [f.strip() for f in fusions.split(",") if f.strip()]
    counts = _frame_counts(frame_counts)
    check_fusions_and_mode(fusion_list, mode)
    views = parse_tta_views(tta, tta_views)
    key = temperature_key_for(confidence, model, views)
    paths = scorable_paths_or_fail(tracks)
    reader = make_readers(model, device, mode, views, ensemble, backend, calibration, temperature_key=key)
    set_pad_margin(reader, pad_margin)
    # TrackReadings by (rule, F), then track id: scored as Readings, their per-character probabilities kept
    truths, full, failures = [], {(f, c): {} for f in fusion_list for c in counts}, []
    unlabelled = 0
    for batch in read_track_batches(paths, batch_size, "evaluating"):
        good = []
        for path, t in batch:
            if isinstance(t, Exception):
                failures.append(str(t))
                truth = _truth_of_unreadable(path)
                if truth is not None:
                    truths.append(truth)  # no reading: scored as wrong, never dropped
            elif t.text is not None:
                good.append(t)
                truths.append(GroundTruth.of_track(t))
            else:
                unlabelled += 1
        if not good:
            continue
        for c in counts:
            for rule, rs in reader.read(good, fusion_list, frame_count=c).items():
                full[(rule, c)].update({r.track_id: r for r in rs})
    for f in failures:  # before any refusal below: when no track could be used, these say why
        err_console.print(f"[yellow]unreadable, counted wrong where labelled:[/yellow] {escape(f)}", soft_wrap=True)
    if unlabelled:
        err_console.print(f"[yellow]note:[/yellow] {unlabelled} readable track(s) without a plate_text left out of "
                          "the scores", soft_wrap=True)
    if not truths:
        fail(f"no annotated, readable tracks under {tracks}")
    readings = {key: {k: Reading(k, r.text, r.confidence) for k, r in rs.items()} for key, rs in full.items()}
    results = {f"{rule}@F={c}": score_readings(truths, rs) for (rule, c), rs in readings.items()}
    eces = {f"{rule}@F={c}": readings_ece(truths, rs) for (rule, c), rs in readings.items()}
    chars = {f"{rule}@F={c}": character_calibration(truths, rs) for (rule, c), rs in full.items()}
    # Rows with a confidence no fitted calibration set: their ECE measures raw scores.
    calibrated = {f"{rule}@F={c}": all(r.calibrated for r in rs.values()) for (rule, c), rs in full.items()}
    typicality = typicality_groups(truths, full)
    if as_json:
        by_typicality = {k: {"by_typicality": {name: None if g is None else g.as_dict() for name, g in groups.items()}}
                         for k, groups in typicality.items()}
        print(json.dumps({k: v.as_dict() | {"ece": eces[k], "calibrated": calibrated[k], "character_calibration": chars[k]}
                          | by_typicality.get(k, {}) for k, v in results.items()} | {"unreadable": failures}, indent=2))
        return
    table = Table(title=escape(f"{tracks}: {len(truths)} tracks"))
    for col in ("fusion", "F", "RR %", "CER %", "conf gap (pts)", "ECE (pts)", "wrong@>=0.9", "char ECE (pts)",
                "chars@>=0.9 wrong %"):
        table.add_column(col, justify="left" if col == "fusion" else "right")
    for (rule, c) in readings:
        key = f"{rule}@F={c}"
        s = results[key].overall
        table.add_row(rule, str(c), _fmt(s.recognition_rate), _fmt(s.cer), _fmt(s.confidence_gap),
                      _fmt(eces[key]), str(s.confident_wrong), _fmt(chars[key]["ece"]), _fmt(chars[key]["sure_error"]))
    console.print(table)
    console.print("char ECE: each read character's probability against whether it is right; chars@>=0.9 wrong: "
                  "how often a character read at 0.9 or more is wrong (the report's green characters)", soft_wrap=True)
    print_group_table(results, escape(str(tracks)))
    print_typicality_table(typicality, escape(str(tracks)))
    if confidence == "gap":
        err_console.print("[yellow]note:[/yellow] --confidence gap: the confidences come from the temperatures fitted "
                          "to widen the confidence gap, not probabilities, so the ECE columns do not measure "
                          "calibration here", soft_wrap=True)
    raw = [k for k, ok in calibrated.items() if not ok]
    if raw:
        err_console.print("[yellow]note:[/yellow] " + escape(
            f"no {'gap temperature' if confidence == 'gap' else 'calibration'} is fitted for {', '.join(raw)}: those "
            "rows' confidences are raw scores, not probabilities (`ksrnet calibrate --fusions RULE --frames F`"
            + (" --objective gap)" if confidence == "gap" else
               f" with the same --model options and --ensemble {reader.rule} --out FILE, then --calibration FILE)"
               if getattr(reader, "rule", None) else ")")), soft_wrap=True)


def _ablation(tracks: Optional[Path], models: Optional[List[str]], ksrnet_models: Optional[List[str]],
              synth_tracks: int, presets: str, markdown: Optional[Path], batch_size: int, device: str, mode: str,
              views, ensemble_rule: str, as_json: bool, calibration: Optional[Path] = None) -> None:
    from ksrnet.ablation import (ABLATION_SEED, CROP_BORDER, AblationResult, Methods, ReferenceUpsample,
                                 UpsampleConfig, ablation_rows, sr_targets_per_grid, synthetic_test_set)
    from ksrnet.infer import Reader
    from ksrnet.restoration_reader import (RestorationReader, baseline_reader, is_ksrnet_weights,
                                           load_restoration_reader)
    from ksrnet.synth.degrade import PRESETS

    preset_list = [p.strip() for p in presets.split(",") if p.strip()]
    bad = [p for p in preset_list if p not in (*PRESETS, "mix")]
    if bad:
        fail(f"--presets: unknown {', '.join(bad)}; choose from {', '.join((*PRESETS, 'mix'))}")
    if tracks is None and (synth_tracks == 0 or not preset_list):
        fail("--ablation needs tracks: --synth-tracks > 0 with --presets, or a TRACKS folder")
    if markdown is not None:
        check_output_path(markdown, "--markdown")
        check_output_path(markdown.with_suffix(".json"), "--markdown (its JSON)")
    models = list(models or [None])
    if any(restoration_model(m)[0] for m in models):
        fail("with --ablation, --model names recognizers; give KSR-Net weights with --ksrnet")
    if len(models) == 1 and calibration is not None:
        fail("--calibration is for the ensemble row (several --model)")
    recognizer, recognizer_meta = make_reader(models[0], device, mode)
    methods = Methods(recognizer, model_label(models[0]))
    notes = []
    if views:  # the same network, read under the views
        methods.tta = Reader(recognizer.model, device=device, mode=mode, tta_views=views,
                             temperatures=temperatures_for(recognizer_meta, models[0], views))
    else:
        notes.append("no TTA row: add --tta (or --tta-views)")
    if len(models) > 1:
        members = [recognizer] + [make_reader(m, device, mode)[0] for m in models[1:]]
        methods.ensemble = make_ensemble_reader(members, models, ensemble_rule, "torch", None, calibration)
        notes.append(f"ensemble row: rule {ensemble_rule}, " + (f"calibrated by {calibration}" if calibration
                                                                 else "uncalibrated (no --calibration)"))
    else:
        notes.append("no ensemble row: give --model two or more times")
    ksr_readers, first_meta = {}, None
    for path in ksrnet_models or []:
        if not is_ksrnet_weights(path):
            fail(f"--ksrnet {path}: no KSR-Net weights there (ksrnet.safetensors from `ksrnet train-ksrnet`)")
        reader, meta = load_restoration_reader(path, device=device, mode=mode, batch_tracks=batch_size)
        first_meta = first_meta or meta
        name = f"KSR-Net {reader.model.config.variant}"
        ksr_readers[name if name not in ksr_readers else f"{name} ({path})"] = reader
    first = next(iter(ksr_readers.values()), None)
    if first is not None:
        c = first.model.config
        up = UpsampleConfig(c.lr_size, c.upscale, c.ref_index)
        notes.append("restoration rows read with the recognizer inside the first KSR-Net's weights; the others "
                     f"with {methods.recognizer_name}")
    else:
        up = UpsampleConfig()
        notes.append("no MF-LPR²-style or KSR-Net rows: give KSR-Net weights with --ksrnet")
    upsample = ReferenceUpsample(first.model.recognizer if first else recognizer.model, up)
    methods.restorations = {"bicubic reference frame (no fusion)": RestorationReader(
        upsample, device=device, mode=mode, batch_tracks=batch_size)}
    if first is not None:
        methods.restorations["MF-LPR²-style fusion"] = baseline_reader(first.model, first_meta, device=device,
                                                                       mode=mode, batch_tracks=batch_size)
        methods.restorations.update(ksr_readers)
    notes.append(f"PSNR/SSIM: Y channel (BT.601), inside the plate, {CROP_BORDER} px cropped on every side of the "
                 "SR image, against the canonical HR on each method's own SR grid; synthetic tracks only")
    notes.append("ECE uses each model's stored temperature (`ksrnet calibrate`; with TTA its `--tta` ones) where it "
                 "has one, else none")
    notes.append(f"speed: tracks/s reading tracks already in memory, restoration rows in batches of {batch_size} "
                 f"tracks, the recognizer rows in batches of {recognizer.batch_frames} frames, "
                 f"{_torch_threads()} threads on {device}")
    rows = []
    steps = len(preset_list) * (synth_tracks + 1 + len(methods.restorations) + bool(methods.tta)
                                + bool(methods.ensemble)) + (1 if tracks is not None else 0)
    with progress_bar() as progress:
        task = progress.add_task("ablation", total=steps)
        advance = lambda: progress.advance(task)  # noqa: E731
        for preset in preset_list if synth_tracks else []:
            test_set = synthetic_test_set(synth_tracks, preset, progress=advance)
            targets = sr_targets_per_grid(test_set)  # each method on the grid it restores to
            rows += ablation_rows(methods, test_set, f"synthetic {preset}, seed {ABLATION_SEED}", targets, advance)
        if tracks is not None:
            folder = [t for batch in read_track_batches(scorable_paths_or_fail(tracks), batch_size, "loading tracks")
                      for _, t in batch if not isinstance(t, Exception) and t.text is not None]
            if not folder:
                fail(f"no annotated, readable tracks under {tracks}")
            rows += ablation_rows(methods, folder, str(tracks), None)
            progress.advance(task)
    result = AblationResult(rows, notes, {"recognizer": methods.recognizer_name, "ksrnet": list(ksrnet_models or []),
                                          "synth_tracks": synth_tracks, "presets": preset_list,
                                          "seed": ABLATION_SEED, "tracks": str(tracks) if tracks else None})
    if markdown is not None:
        write_text_or_fail(markdown, result.to_markdown())
        write_text_or_fail(markdown.with_suffix(".json"), result.to_json())
    if as_json:
        print(result.to_json())
    else:
        console.print(result.to_markdown(), markup=False, highlight=False)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


@app.command("bench")
def bench_cmd(
    model: Optional[str] = typer.Option(None, "--model", help="Model name, .safetensors file or run dir."),
    batches: str = typer.Option("1,64", "--batches", help="Comma-separated batch sizes (tracks per batch)."),
    fusion: str = typer.Option("product", "--fusion"),
    frames: Optional[int] = typer.Option(None, "--frames", min=1, help="Use the last N frames (default all 5)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1,
                                          help="CPU threads of torch, or of onnxruntime with --backend onnx "
                                               "(default: torch's)."),
    repeats: int = typer.Option(3, "--repeats", min=1, help="Timed passes per figure (the best is kept)."),
    device: str = typer.Option("cpu", "--device"),
    mode: str = typer.Option("nar", "--decode"),
    backend: str = typer.Option("torch", "--backend", help="torch, or onnx with --model FILE.onnx (onnxruntime)."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
) -> None:
    """Inference speed: tracks/s and latency per track at each batch size.

    Also the time of each component (preprocess, network = encoder + decoder, fusion) per batch, on
    fixed synthetic hard tracks. A PyTorch model also gets encoder and decoder timed apart."""
    import torch

    from ksrnet.bench import bench
    from ksrnet.synth.dataset import generate_track

    sizes = _positive_ints(batches, "--batches", "sizes")
    check_fusions_and_mode([fusion], mode)
    if restoration_model(model)[0] is not None:
        fail("bench times per-frame recognizers; for KSR-Net see benchmarks/ksrnet_cost.py or eval --ablation")
    previous = torch.get_num_threads()
    used = threads or previous
    # onnxruntime gets the thread count the table reports too: left to itself it takes every core.
    reader = make_readers([model] if model else None, device, mode, None, "logit", backend, threads=used)
    tracks = [generate_track(BENCH_SEED, i, preset="hard") for i in range(max(sizes))]
    torch.set_num_threads(used)
    try:
        rows = bench(reader, tracks, sizes, fusion, frames, repeats)
    finally:
        torch.set_num_threads(previous)  # the caller's setting, e.g. when run inside a test session
    from ksrnet.infer import select_frames

    per_track = len(select_frames(tracks[0].lr, frames))  # --frames beyond a track's length reads them all
    chunk = getattr(reader, "batch_frames", None)  # frames per network call (infer.default_batch_frames)
    if as_json:
        print(json.dumps({"threads": used, "device": device, "fusion": fusion, "backend": backend,
                          "frames_per_track": per_track, "batch_frames": chunk,
                          "rows": [r.as_dict() for r in rows]}, indent=2))
        return
    table = Table(title=f"{fusion} fusion of {per_track} frames a track, {backend}, {used} threads on {device}, "
                        f"network calls of <= {chunk} frames; per-batch ms by component")
    for col in ("batch", "tracks/s", "ms/track", "ms/batch", "preprocess", "network", "encoder", "decoder", "fusion"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r.batch_tracks), f"{r.tracks_per_s:.1f}", f"{r.ms_per_track:.2f}", f"{r.ms_per_batch:.1f}",
                      f"{r.preprocess_ms:.1f}", f"{r.network_ms:.1f}",
                      *("-" if v is None else f"{v:.1f}" for v in (r.encoder_ms, r.decoder_ms)), f"{r.fusion_ms:.1f}")
    console.print(table)


@app.command("export")
def export_cmd(
    onnx: Path = typer.Option(..., "--onnx",
                              help="ONNX file to write, named *.onnx (its metadata goes to FILE.onnx.json)."),
    model: Optional[str] = typer.Option(None, "--model", help="Model name, .safetensors file or run dir."),
    refine_iters: Optional[int] = typer.Option(None, "--refine-iters", min=0,
                                               help="Refinement steps baked into the graph (default: the model's)."),
    check_tracks: int = typer.Option(32, "--check-tracks", min=1, help="Synthetic tracks for the parity check."),
) -> None:
    """Export the recognizer to ONNX (NAR + fixed refinement, dynamic batch), checked against PyTorch.

    The check reads synthetic frames with both: it prints the largest logit difference and fails if
    any reading differs, leaving FILE.onnx as it was (absent, or an earlier export).

    Read with it: `ksrnet predict TRACKS --backend onnx --model FILE.onnx`. FILE.onnx.json holds a copy of
    the model's temperatures as they are now, and FILE.onnx.typicality.safetensors of its typicality
    reference: after `ksrnet calibrate`, export again."""
    import shutil
    import time

    import torch
    from rich.markup import escape

    from ksrnet.atomic_files import atomic_write
    from ksrnet.infer import default_batch_frames
    from ksrnet.models.inference import inference_copy
    from ksrnet.preprocess import frames_to_tensor
    from ksrnet.synth.dataset import generate_track
    from ksrnet.typicality import reference_path
    from ksrnet.weights import ModelLoadError, load_model, resolve

    try:
        from ksrnet.export_onnx import OnnxParseq, check_onnx_path, check_parity, export_onnx, onnx_meta_path
    except ImportError:
        fail("export needs onnx and onnxruntime: pip install 'ksrnet[onnx]'")
    try:
        check_onnx_path(onnx)
    except ValueError as exc:
        fail(f"--onnx {exc}")
    check_output_path(onnx, "--onnx")
    try:
        net, meta = load_model(model)
    except ModelLoadError as exc:
        fail(str(exc))
    # Written beside FILE.onnx under another name and moved there only once the parity check passed.
    staged = onnx.with_name(f".{onnx.name}.checking.onnx")
    try:
        try:
            export_onnx(net, staged, meta, refine_iters)
        except OSError as exc:
            fail(f"cannot write {onnx}: {exc.strerror or exc}")
        # The thread count the speed line reports, for onnxruntime too (its default is every core).
        runtime = OnnxParseq(staged, threads=torch.get_num_threads())
        frames = [f for i in range(check_tracks) for f in generate_track(BENCH_SEED, i, preset="mix").lr]
        images = frames_to_tensor(frames, net.config.img_h, net.config.img_w)
        parity = check_parity(net, runtime, images)
        if not parity.readings_differ:
            staged.replace(onnx)
            onnx_meta_path(staged).replace(onnx_meta_path(onnx))
            reference = reference_path(resolve(model))
            try:  # the copy beside the graph, or none: an earlier export's would describe another model
                if reference.exists():
                    atomic_write(reference_path(onnx), lambda p: shutil.copyfile(reference, p))
                else:
                    reference_path(onnx).unlink(missing_ok=True)
            except OSError as exc:
                fail(f"cannot write {reference_path(onnx)}: {exc.strerror or exc}")
    finally:
        for leftover in (staged, onnx_meta_path(staged)):
            leftover.unlink(missing_ok=True)
    written = "did not write" if parity.readings_differ else "wrote"
    beside = f"{onnx.name}.json" + (f", {reference_path(onnx).name}" if reference_path(onnx).exists() else "")
    console.print(f"{written} {escape(str(onnx))} (+ {escape(beside)}); parity on {parity.frames} frames: "
                  "max |diff| char logits "
                  f"{parity.max_abs_char_logits:.2e}, layout logits {parity.max_abs_layout_logits:.2e}"
                  + ("" if parity.max_abs_features is None else f", features {parity.max_abs_features:.2e}")
                  + f"; readings that differ: {parity.readings_differ}")
    timings = {}
    fast = inference_copy(net)  # what `ksrnet predict` reads through with the PyTorch backend
    # Each backend in the network calls `ksrnet predict` makes on this CPU (infer.default_batch_frames).
    cpu = torch.device("cpu")
    sizes = {"pytorch": default_batch_frames(cpu, pytorch=True),
             "onnxruntime": default_batch_frames(cpu, pytorch=False)}
    for name, run in (("pytorch", lambda c: fast(c, mode="nar", refine_iters=runtime.refine_iters)),
                      ("onnxruntime", runtime)):
        with torch.inference_mode():
            for _ in range(2):  # the first pass warms up
                start = time.perf_counter()
                for chunk in images.split(sizes[name]):
                    run(chunk)
                timings[name] = images.shape[0] / (time.perf_counter() - start)
    console.print(f"speed, {images.shape[0]} frames, {torch.get_num_threads()} threads: " +
                  ", ".join(f"{k} {v:.0f} frames/s in calls of <= {sizes[k]} frames" for k, v in timings.items()))
    if parity.readings_differ:
        fail(f"{parity.readings_differ} of {parity.frames} readings differ between PyTorch and ONNX", code=1)


BENCH_SEED = 9_000_001  # synthetic tracks for speed only
CALIBRATION_SEED = 7_000_001  # synthetic validation tracks: no training run or benchmark uses this seed


@app.command()
def calibrate(
    tracks: Optional[Path] = typer.Argument(None, help="Annotated LRLPR-26 folder to fit on (default: fresh "
                                            "synthetic tracks, see --synth)."),
    model: Optional[List[str]] = typer.Option(None, "--model", help="Model name, .safetensors file or run dir; its "
                                              "JSON receives the temperatures. Repeat for an ensemble, whose "
                                              "calibration goes to its own file (--out). " + RESTORATION_MODEL_HELP),
    ensemble: str = typer.Option("logit", "--ensemble", help="With several --model, the rule to calibrate: logit "
                                 "(a temperature on the averaged log-probabilities) or vote (a monotone, isotonic "
                                 "map of the vote's confidence)."),
    out: Optional[Path] = typer.Option(None, "--out", help="With several --model: the ensemble calibration file to "
                                       "write (JSON: members' sha256, rule, TTA views, fitted parameters), for "
                                       "predict/eval --calibration FILE. Replaced if it exists."),
    fusions: str = typer.Option("product,logit_mean,single", "--fusions", help="Comma-separated fusion rules."),
    synth: int = typer.Option(1000, "--synth", min=10, help="Synthetic validation tracks when no folder is given."),
    preset: str = typer.Option("mix", "--preset", help="Degradation preset of the synthetic tracks."),
    frames: Optional[str] = typer.Option(None, "--frames", help="Comma-separated frame counts (e.g. 1,3,5): one "
                                         "temperature per rule and count, used for tracks of that many frames. "
                                         "Default: one per rule over all frames of each track."),
    tta: bool = typer.Option(False, "--tta", help="Fit the temperatures of reading with TTA views (stored as "
                             "tta:RULE[@F] beside the plain ones, with the views)."),
    tta_views: Optional[str] = typer.Option(None, "--tta-views", help=TTA_VIEWS_HELP),
    write: bool = typer.Option(True, "--write/--dry-run", help="Store the temperatures in the model's JSON "
                               "(ensembles: write --out)."),
    objective: str = typer.Option("nll", "--objective", help="nll: calibrated confidences (probabilities; what "
                                  "predict, eval and report use). gap: the temperatures that widen the confidence "
                                  "gap most, the competition's tie-breaker, stored apart and read with predict/eval "
                                  "--confidence gap (one recognizer, no TTA); they rank readings the same way but "
                                  "are not probabilities."),
    typicality: bool = typer.Option(True, "--typicality/--no-typicality", help="Also fit, on the same tracks, "
                                    "the reference that predict, eval and report use to flag tracks unlike "
                                    "them (one recognizer read with PyTorch; saved as MODEL.typicality."
                                    "safetensors beside its weights, replacing the one there)."),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    device: str = typer.Option("cpu", "--device"),
    mode: str = typer.Option("nar", "--decode"),
) -> None:
    """Fit one temperature per fusion rule so the track confidence is calibrated, and save it.

    The confidence of a reading should be the probability that the whole plate is right; this fits
    the temperature that divides the per-frame logits before fusion, on a validation split (never the
    test set), and prints ECE and confidence gap before and after. predict and eval then use it. A
    temperature changes confidences only: every rule's reading is the one it gives at T = 1.
    With --frames 1,3,5 each frame count gets its own temperature (fusing more frames compounds
    confidence), used for tracks of exactly that many frames; temperatures fitted before for other
    rules or counts are kept. A fit without --frames replaces its rule's per-count temperatures for
    the frame counts of the tracks it was fitted on (they would take precedence over it).

    With --tta the temperatures of reading under the TTA views are fitted and stored as tta:RULE@F
    with the views; a reader with those views uses them, else (none stored, or stored for other
    views) the plain ones. With several --model the ensemble is calibrated (--ensemble logit: a
    temperature on the averaged log-probabilities; vote: an isotonic map of the vote's confidence)
    into the file --out, which predict and eval apply with --calibration FILE.

    --objective gap fits, apart from these, the temperatures that widen the confidence gap (mean
    confidence of right readings minus that of wrong ones) the most, for predict/eval --confidence gap.

    A temperature holds on footage like the tracks it was fitted on. So the same tracks also give
    the model a typicality reference (ksrnet/typicality.py): predict, eval and report then flag each
    track whose recognizer features are unlike those of 99 % of them, where the confidence was never
    checked. Calibrating on annotated tracks of your own footage refits both.
    """
    import numpy as np
    import torch
    from rich.markup import escape

    from ksrnet.calibration import OBJECTIVES, fit_confidence_map, fit_temperature
    from ksrnet.export_onnx import is_onnx_path
    from ksrnet.infer import Reader
    from ksrnet.plates import layout_masks

    fusion_list = [f.strip() for f in fusions.split(",") if f.strip()]
    check_fusions_and_mode(fusion_list, mode)
    if objective not in OBJECTIVES:
        fail(f"--objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if objective == "gap":
        refuse_gap_beyond_one_recognizer(model, tta or tta_views, "--objective gap fits one recognizer read frame by "
                                         "frame without TTA: leave out --tta, --tta-views, a second --model and "
                                         "KSR-Net or MF-LPR² weights")
    onnx = [m for m in model or [] if is_onnx_path(m)]
    if onnx:
        # An exported graph reads with the copy of the temperatures made at export: calibrating the
        # source does not reach it, so re-export after calibrating.
        fail(f"--model {onnx[0]}: calibrate the .safetensors model it was exported from, then export it again "
             "(`ksrnet export --onnx`), which copies the new temperatures")
    counts = _frame_counts(frames) if frames is not None else [None]
    views = parse_tta_views(tta, tta_views)
    models = list(model or [None])
    if len(models) > 1 and out is None and write:
        fail("an ensemble's calibration goes into a file of its own: give --out FILE (or --dry-run)")
    if len(models) == 1 and out is not None:
        fail("--out is for ensembles (several --model); a single model's temperatures go into its JSON")
    if out is not None and write:
        check_output_path(out, "--out")
    reader = make_readers(models, device, mode, views, ensemble)
    # Only a recognizer read by PyTorch has encoder features, and only one model owns a reference;
    # it describes the tracks the calibrated (not the gap) temperatures were fitted on.
    fit_typicality = typicality and write and type(reader) is Reader and objective == "nll"
    track_features: list = []
    # The vote's confidence is not a softmax of logits: it is mapped as read. Everything else: logits.
    by_reading = len(models) > 1 and ensemble == "vote"
    logits = {c: [] for c in counts}
    confidences = {(c, rule): [] for c in counts for rule in fusion_list}
    texts: list[str] = []
    texts_at = {c: [] for c in counts}  # the tracks behind each count's fit
    seen_counts: set[int] = set()  # frame counts of the tracks fitted on (a general fit covers these)

    def take(batch: list) -> None:
        for c in counts:
            # A track of fewer than c frames reads with its own count's temperature (rule@n, n < c):
            # its logits must not be fitted under rule@c.
            chosen = batch if c is None else [t for t in batch if len(t.lr) >= c]
            if not chosen:
                continue
            if by_reading:
                for rule, rows in reader.read(chosen, fusion_list, frame_count=c).items():
                    confidences[(c, rule)] += [(r.confidence, r.text == t.text) for r, t in zip(rows, chosen)]
            else:
                # Read with all frames (c None), every track gives the typicality reference its
                # features from the same pass; otherwise they take an encoder pass of their own below.
                read, features = reader.track_logits_and_features(chosen, c, fit_typicality and c is None)
                logits[c] += read
                if features is not None:
                    track_features.extend(f.numpy() for f in features)
            texts_at[c].extend(t.text for t in chosen)
        if fit_typicality and None not in counts:
            flat = reader.frame_features([f for t in batch for f in t.lr]).numpy()
            starts = np.cumsum([0] + [len(t.lr) for t in batch])
            track_features.extend(flat[a:b] for a, b in zip(starts[:-1], starts[1:]))
        texts.extend(t.text for t in batch)
        seen_counts.update(len(t.lr) for t in batch)

    if tracks is not None:
        source = str(tracks)
        skipped, unlabelled = [], 0
        for batch in read_track_batches(discover_or_fail(tracks), batch_size, "reading validation tracks"):
            skipped += [str(t) for _, t in batch if isinstance(t, Exception)]
            unlabelled += sum(1 for _, t in batch if not isinstance(t, Exception) and t.text is None)
            good = [t for _, t in batch if not isinstance(t, Exception) and t.text is not None]
            if good:
                take(good)
        for problem in skipped:
            err_console.print(f"[yellow]unreadable, not used:[/yellow] {escape(problem)}", soft_wrap=True)
        if unlabelled:
            err_console.print(f"[yellow]note:[/yellow] {unlabelled} unlabelled track(s) not used")
        if skipped or unlabelled:
            source += f" ({len(texts)} of {len(texts) + len(skipped) + unlabelled} tracks usable)"
    else:
        from ksrnet.synth.dataset import generate_track
        from ksrnet.synth.degrade import PRESETS

        if preset not in (*PRESETS, "mix"):
            fail(f"--preset must be one of {', '.join((*PRESETS, 'mix'))}, got {preset!r}")
        source = f"{synth} synthetic tracks, preset {preset}, seed {CALIBRATION_SEED}"
        with progress_bar() as progress:
            task = progress.add_task("synthesising and reading", total=synth)
            for start in range(0, synth, batch_size):
                batch = [generate_track(CALIBRATION_SEED, i, preset=preset)
                         for i in range(start, min(synth, start + batch_size))]
                take(batch)
                progress.advance(task, len(batch))
    if len(texts) < 10:
        fail(f"need at least 10 labelled, readable tracks to fit on, got {len(texts)}")
    short = [c for c in counts if c is not None and len(texts_at[c]) < 10]
    if short:
        fail(f"--frames {short[0]}: only {len(texts_at[short[0]])} of {len(texts)} tracks have {short[0]} frames or "
             "more; a temperature for F frames is fitted on tracks read with F frames (need at least 10)")
    try:
        if by_reading:
            pairs = {k: tuple(zip(*v)) for k, v in confidences.items()}  # (confidences, correct) per count and rule
            fits = [(c, fit_confidence_map(*pairs[(c, rule)], rule)) for c in counts for rule in fusion_list]
        else:
            masks = torch.from_numpy(layout_masks())
            fits = [(c, fit_temperature(logits[c], texts_at[c], rule, masks, objective))
                    for c in counts for rule in fusion_list]
    except ValueError as exc:
        fail(f"cannot calibrate on {source}: {exc}")
    what = ("ensemble " + ensemble + " of " + ", ".join(model_label(m) for m in models)
            if len(models) > 1 else model_label(models[0])) + (f", TTA {','.join(views)}" if views else "")
    fitted_for = "calibration" if objective == "nll" else "gap-widening temperatures"
    table = Table(title=escape(f"{fitted_for} of {what} on {source}"))
    for col in ("fusion", "F", "T / map", "RR %", "ECE before", "ECE after", "gap before", "gap after"):
        table.add_column(col, justify="left" if col == "fusion" else "right")
    for c, f in fits:
        fitted = f"{f.temperature:.2f}" if hasattr(f, "temperature") else f"{len(f.confidence_map.x)} knots"
        table.add_row(f.fusion, "all" if c is None else str(c), fitted, _fmt(f.recognition_rate),
                      _fmt(f.ece_before), _fmt(f.ece_after), _fmt(f.gap_before), _fmt(f.gap_after))
    console.print(table)
    note_doubtful_fits(fits)
    if by_reading:
        console.print("isotonic maps of the vote's confidence: ECE after is in-sample, where such a map fits its own "
                      "bins; judge it on other tracks (`ksrnet eval ... --calibration FILE`)")
    if not write:
        return
    if len(models) > 1:
        _write_ensemble_calibration(out, reader, models, views, fits, source)
    else:
        _store_temperatures(models[0], views, fits, source, seen_counts, objective)
    if fit_typicality:
        _store_typicality(models[0], track_features, source)


def _store_typicality(model: Optional[str], track_features: list, source: str) -> None:
    """Fit the typicality reference on the calibration tracks' features and save it beside the weights."""
    from ksrnet.typicality import ATYPICAL, TypicalityError, fit_reference, reference_path
    from ksrnet.weights import resolve

    try:
        reference = fit_reference(track_features, source)
        path = reference.save(reference_path(resolve(model)), {"tracks": len(track_features)})
    except TypicalityError as exc:
        err_console.print(f"[yellow]note:[/yellow] no typicality reference fitted: {exc}", soft_wrap=True)
        return
    except OSError as exc:
        fail(f"cannot write the typicality reference: {exc}")
    console.print(f"typicality reference saved in {path}: predict, eval and report flag tracks less typical than "
                  f"{ATYPICAL:.0%} of these (frame counts {', '.join(map(str, sorted(reference.reference_scores)))})")


def note_doubtful_fits(fits: list) -> None:
    """Say where a fitted temperature should not be trusted as it is: the fit found no optimum (no
    right reading, or the end of the range searched)."""
    for c, f in fits:
        where = f"{f.fusion} at F={'all' if c is None else c}"
        if getattr(f, "unbounded", False):
            err_console.print(f"[yellow]note:[/yellow] {where}: no best temperature was found (no validation reading "
                              f"is right, or the confidences are far off), so {f.temperature:.2f} is where the search "
                              "stopped; fit on tracks the model reads better before relying on it", soft_wrap=True)


def _write_ensemble_calibration(out: Path, reader, models: list, views, fits: list, source: str) -> None:
    from ksrnet.calibration import MapFit
    from ksrnet.ensemble_calibration import EnsembleCalibration
    from ksrnet.infer import temperature_key

    params = {temperature_key(f.fusion, c): (f.confidence_map if isinstance(f, MapFit) else f.temperature)
              for c, f in fits}
    calibration = EnsembleCalibration(
        rule=reader.rule, members=ensemble_members(models, reader.readers, "torch"), tta_views=views,
        temperatures={} if reader.rule == "vote" else params,
        confidence_maps=params if reader.rule == "vote" else {},
        fits=[{**f.as_dict(), "frames": c} for c, f in fits], source=source)
    try:
        path = calibration.save(out)
    except OSError as exc:
        fail(f"cannot write {out}: {exc}")
    console.print(f"ensemble calibration saved in {path}; read with --calibration {path}")


def _store_temperatures(model: Optional[str], views, fits: list, source: str, covered=(),
                        objective: str = "nll") -> None:
    """Merge fitted temperatures (and their figures) into the model's JSON, keeping the other rules,
    counts and reading modes; TTA ones fitted for other views than these are replaced. A general fit
    (all frames of each track) replaces its rule's per-count temperatures for the frame counts it
    was fitted on (covered): those would otherwise take precedence and leave it unused. Temperatures
    fitted for the gap (objective "gap") go to keys of their own, beside the calibrated ones."""
    from ksrnet.infer import GAP_TEMPERATURE_KEY, TTA_PREFIX, TTA_VIEWS_KEY, temperature_key
    from ksrnet.weights import ModelLoadError, resolve, update_metadata

    restoration, baseline = restoration_model(model)
    # The MF-LPR²-style reader lives in its KSR-Net's weights file: its own keys there.
    key, record_key = ("temperature_mflpr2", "calibration_mflpr2") if baseline else ("temperature", "calibration")
    if objective == "gap":
        key, record_key = GAP_TEMPERATURE_KEY, "calibration_gap"
    tta = views is not None
    dropped: list[str] = []
    superseded: list[str] = []
    fitted = {temperature_key(f.fusion, c, tta): (c, f) for c, f in fits}
    # Per-count keys a general fit replaces (it was fitted on tracks of those counts), unless refitted too.
    shadowed = [k for c, f in fits if c is None for n in sorted(covered)
                if (k := temperature_key(f.fusion, n, tta)) not in fitted]

    def merged(meta: dict) -> dict:  # into what the JSON holds: other rules, counts and modes are kept
        temperatures = dict(meta.get(key) or {})
        earlier = (meta.get(record_key) or {}).get("fits", [])
        record = {temperature_key(r["fusion"], r.get("frames"), bool(r.get("tta_views"))): r for r in earlier}
        extra = {}
        if tta:
            if meta.get(TTA_VIEWS_KEY) is not None and sorted(meta[TTA_VIEWS_KEY]) != sorted(views):
                dropped.extend(k for k in temperatures if k.startswith(TTA_PREFIX))
                temperatures = {k: v for k, v in temperatures.items() if k not in dropped}
                record = {k: r for k, r in record.items() if not k.startswith(TTA_PREFIX)}
            extra[TTA_VIEWS_KEY] = sorted(views)
        superseded[:] = [k for k in shadowed if k in temperatures]
        temperatures = {k: v for k, v in temperatures.items() if k not in superseded}
        record = {k: r for k, r in record.items() if k not in superseded}
        temperatures.update({k: f.temperature for k, (c, f) in fitted.items()})
        record.update({k: {**f.as_dict(), "frames": c, "source": source, "tta_views": sorted(views) if tta else None}
                       for k, (c, f) in fitted.items()})
        return {key: temperatures, record_key: {"fits": list(record.values())}, **extra}

    try:
        if restoration is not None:
            from ksrnet.weights import resolve_ksrnet

            target = resolve_ksrnet(restoration)
        else:
            target = resolve(model)
        meta_path = update_metadata(target, merged)
    except (ModelLoadError, OSError, ValueError) as exc:
        fail(str(exc))
    if dropped:
        console.print(f"replaced the TTA temperatures fitted for other views: {', '.join(sorted(dropped))}")
    if superseded:
        console.print(f"replaced by the new fit over all frames (they would take precedence over it): "
                      f"{', '.join(sorted(superseded))}")
    console.print(f"temperatures saved in {meta_path}" + ("; read with --confidence gap" if objective == "gap" else ""))


def _positive_ints(text: str, option: str, what: str) -> list[int]:
    """A comma-separated option of integers >= 1, or a clear refusal naming the option."""
    try:
        values = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        fail(f"{option} must be comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        fail(f"{option} needs {what} >= 1")
    return values


def _frame_counts(text: str) -> list[int]:
    return _positive_ints(text, "--frames", "frame counts")


def command_line(ctx: typer.Context) -> str:
    """The command as parsed, every option spelled out (defaults too), so that it reruns the same
    way whatever the shell, aliases or test harness that started it."""
    import shlex

    words = ["ksrnet", ctx.info_name or ""]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.param_type_name == "argument":
            words.append(str(value))
        elif isinstance(value, bool):
            flag = param.opts[0] if value else (param.secondary_opts or [None])[0]
            words += [flag] if flag else []
        elif isinstance(value, (list, tuple)):
            for item in value:
                words += [param.opts[0], str(item)]
        elif value is not None:
            words += [param.opts[0], str(value)]
    return shlex.join(words)


@app.command()
def report(
    ctx: typer.Context,
    tracks: Path = typer.Argument(..., help="A track folder or any LRLPR-26 folder (nested or flat)."),
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="HTML file to write (self-contained)."),
    model: Optional[List[str]] = typer.Option(None, "--model", help="Shipped model name, .safetensors file or run "
                                              "dir (default: the shipped parseq-tiny); repeat for an ensemble."),
    ensemble: str = typer.Option("logit", "--ensemble", help=ENSEMBLE_HELP),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help=CALIBRATION_HELP),
    fusion: str = typer.Option("product", "--fusion", help="single | product | logit_mean | char_majority | "
                               "string_majority."),
    frames: Optional[int] = typer.Option(None, "--frames", min=1, help="Use only the last N frames of each track."),
    min_confidence: Optional[float] = typer.Option(0.9, "--min-confidence", min=0.0, max=1.0,
                                                   help="Mark readings below this confidence ILLEGIBLE (their "
                                                   "best guess is still shown); 0 marks none."),
    sort: str = typer.Option("input", "--sort", help="input (as found) or confidence (least sure first)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Report only the first N tracks found."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Tracks per inference batch."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1 ..."),
    mode: str = typer.Option("nar", "--decode", help="nar (parallel + refinement) or ar (autoregressive)."),
    tta: bool = typer.Option(False, "--tta", help=TTA_HELP),
    tta_views: Optional[str] = typer.Option(None, "--tta-views", help=TTA_VIEWS_HELP),
    pad_margin: float = typer.Option(0.0, "--pad-margin", min=0.0, max=0.5, help=PAD_MARGIN_HELP),
) -> None:
    """Write an HTML reading report for analysts: per track, the reading with each character's
    probability and alternatives, every frame with what it reads alone, and which model and
    settings produced it.

    Frames are embedded with their own pixels (the browser enlarges them without smoothing). Tracks
    whose frames cannot be read are listed with the reason, never dropped.
    """
    from ksrnet.ensemble_calibration import file_sha256
    from ksrnet.report import SORT_ORDERS, Provenance, UnreadableTrack, build_reports, render_html, sort_reports

    check_fusions_and_mode([fusion], mode)
    if sort not in SORT_ORDERS:
        fail(f"--sort must be input or confidence, got {sort!r}")
    if any(restoration_model(m)[0] is not None for m in model or []):
        fail("the report shows what each frame reads alone; KSR-Net and MF-LPR² read one restored image, so they "
             "have no per-frame readings to show: report with a recognizer (the default)")
    views = parse_tta_views(tta, tta_views)
    check_output_path(out, "--out")
    paths = discover_or_fail(tracks)[:limit]
    target = out.resolve()
    if target.exists() and any(p.resolve() in target.parents for p in paths):
        fail(f"--out {out} is a file of the track {target.parent}: the report would replace the evidence it shows")
    reader = make_readers(model, device, mode, views, ensemble, "torch", calibration)
    set_pad_margin(reader, pad_margin)
    members = ensemble_members(list(model or [None]), getattr(reader, "readers", [reader]), "torch")
    reports, unreadable = [], []
    for batch in read_track_batches(paths, batch_size, "reading plates", labels="lenient"):
        good = [t for _, t in batch if not isinstance(t, Exception)]
        unreadable += [UnreadableTrack(path.name, str(t)) for path, t in batch if isinstance(t, Exception)]
        if good:
            reports += build_reports(reader, good, fusion, frames, min_confidence)
    provenance = Provenance(
        models=[{"model": m.model, "kind": m.kind, "sha256": m.sha256, "temperatures": m.temperature} for m in members]
        + ([{"model": str(calibration), "kind": "ensemble calibration", "sha256": file_sha256(calibration)}]
           if calibration is not None else []),
        fusion=fusion + (f" (ensemble of {len(members)}, {ensemble})" if len(members) > 1 else ""),
        frames=frames, tta_views=list(views) if views else None, min_confidence=min_confidence,
        command=command_line(ctx))
    page = render_html(sort_reports(reports, sort), unreadable, provenance)
    write_text_or_fail(out, page)
    illegible = sum(r.illegible for r in reports)
    console.print(f"wrote {out}: {len(reports)} tracks read ({illegible} below {min_confidence} marked illegible)"
                  + (f", {len(unreadable)} unreadable" if unreadable else ""), markup=False, highlight=False)
    note_uncalibrated([r.reading for r in reports], fusion, getattr(reader, "rule", None), min_confidence)
    note_atypical([r.reading for r in reports], "the report marks them")


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-out"), help="Folder for the demo tracks and predictions."),
) -> None:
    """Generate a few tracks, read them with the shipped model, print readings and the score."""
    from ksrnet.demo import run_demo

    run_demo(out, console)


def unwrapped_help(doc: str) -> str:
    """A docstring with each paragraph on one line. Typer keeps the line breaks of every paragraph
    after the first, which a terminal narrower than the source then wraps into ragged lines."""
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


for _command in app.registered_commands:
    _command.help = unwrapped_help(_command.help or _command.callback.__doc__ or "")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
