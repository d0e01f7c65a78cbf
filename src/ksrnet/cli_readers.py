"""How the `ksrnet` verbs turn --model / --tta / --ensemble options into readers, with the user's
mistakes turned into one-line errors (ksrnet.cli_console.fail) instead of tracebacks."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from ksrnet.cli_console import err_console, fail, progress_bar


TRACK_NOTES_SHOWN = 5


def read_track_batches(paths, batch_tracks: int, description: str, labels: str = "strict"):
    """Yield lists of (path, Track | TrackError) with a progress bar over all tracks. Only the LR
    frames are read: every reader reads those, so a broken HR frame must not make a track unreadable.
    labels: "strict" where the labels are needed (eval, calibrate), "lenient" where a plate is only
    read (a bad annotations.json then costs the labels, not the reading; see tracks.read_track).
    Once every batch is taken, what the readable tracks needed fixing (frames converted to RGB,
    frame sizes far apart, files ignored: tracks.read_track's warnings) is noted, a few in full."""
    from ksrnet.tracks import iter_track_results

    noted = []
    with progress_bar() as progress:
        task = progress.add_task(description, total=len(paths))
        batch = []
        for item in iter_track_results(paths, with_hr=False, labels=labels):
            batch.append(item)
            warnings = getattr(item[1], "warnings", None)
            if warnings:  # the id and the notes only: a batch's frames are not kept past it
                noted.append((item[1].track_id, warnings))
            if len(batch) == batch_tracks:
                yield batch
                progress.advance(task, len(batch))
                batch = []
        if batch:
            yield batch
            progress.advance(task, len(batch))
    note_track_warnings(noted)


def note_track_warnings(tracks: list[tuple[str, list[str]]]) -> None:
    """One line per warning of the first few (track id, warnings) pairs, then how many more there are."""
    from rich.markup import escape

    for track_id, warnings in tracks[:TRACK_NOTES_SHOWN]:
        for warning in warnings:
            err_console.print(f"[yellow]note:[/yellow] {escape(track_id)}: {escape(warning)}", soft_wrap=True)
    if len(tracks) > TRACK_NOTES_SHOWN:
        err_console.print(f"[yellow]note:[/yellow] {len(tracks) - TRACK_NOTES_SHOWN} more track(s) with input "
                          "notes like these: `ksrnet check-data TRACKS` lists them all", soft_wrap=True)


def check_fusions_and_mode(fusions: list[str], mode: str) -> None:
    from ksrnet.models.baselines import FUSIONS

    unknown = [f for f in fusions if f not in FUSIONS]
    if unknown or not fusions:
        fail(f"unknown fusion {', '.join(unknown) or '(none given)'}; choose from {', '.join(FUSIONS)}")
    if mode not in ("nar", "ar"):
        fail(f"--decode must be nar or ar, got {mode!r}")


def parse_tta_views(tta: bool, views: Optional[str]):
    from ksrnet.tta import DEFAULT_VIEWS, check_views

    if views is None:
        return DEFAULT_VIEWS if tta else None
    try:
        return check_views(v.strip() for v in views.split(",") if v.strip())
    except ValueError as exc:
        fail(str(exc))


TTA_HELP = ("Test-time augmentation: average the log-probabilities of identity, zoom 0.9/1.1 and gamma 0.8/1.2 "
            "views of every frame (the flip hurt this model; add it with --tta-views).")
TTA_VIEWS_HELP = ("Comma-separated TTA views from identity, hflip, scale0.9, scale1.1, gamma0.8, gamma1.2, pad0.06 "
                  "(implies --tta). identity,pad0.06 suits crops of unknown tightness (see --pad-margin).")


RESTORATION_MODEL_HELP = ("KSR-Net weights (a train-ksrnet run dir or ksrnet.safetensors) read each track as "
                          "one restored image; mflpr2:RUN reads it through the MF-LPR²-style fusion built on "
                          "that run's flow estimator and recognizer.")
PAD_MARGIN_HELP = ("Pad every frame with its own edge pixels by this share of its width on each side before "
                   "reading: for plates cropped tight, or cut into (by hand, or by a tight detector box). The "
                   "model expects the plate inside a margin, as in LRLPR-26 crops; on such frames leave it at 0 "
                   "(0.06 costs them about 6 points). The shipped model reads tight crops nearly as well without "
                   "it; 0.06 pays on crops cutting about 4 % into the plate (58 -> 69 % at 5 frames; "
                   "benchmarks/RESULTS.md, \"Stages X and Y\").")
ENSEMBLE_HELP = ("With several --model: logit (average their per-frame log-probabilities) or vote (majority "
                 "of their readings).")


CALIBRATION_HELP = ("With several --model: the ensemble calibration file written by `ksrnet calibrate --model A "
                    "--model B --ensemble RULE --out FILE`; refused if its members, rule or TTA views differ.")


CONFIDENCES = ("calibrated", "gap")
CONFIDENCE_HELP = ("calibrated: the probability that the whole plate is right (temperatures fitted by `ksrnet "
                   "calibrate`). gap: from the temperatures `ksrnet calibrate --objective gap` fitted to widen the "
                   "confidence gap, the competition's tie-breaker: the same readings in the same order, but not "
                   "probabilities (one recognizer, no TTA, no --min-confidence).")


def refuse_gap_beyond_one_recognizer(models: Optional[List[str]], tta_views, message: str) -> None:
    """Gap temperatures (calibrate --objective gap) are fitted and read for one recognizer, frame by
    frame, without TTA: refuse, with ``message``, several --model, TTA views or restoration weights."""
    if len(models or []) > 1 or tta_views or any(restoration_model(m)[0] for m in models or []):
        fail(message)


def temperature_key_for(confidence: str, models: Optional[List[str]], tta_views, min_confidence=None) -> str:
    """The metadata key of the temperatures --confidence asks for, refusing what the gap ones do not
    cover (see calibrate --objective gap)."""
    from ksrnet.infer import GAP_TEMPERATURE_KEY

    if confidence not in CONFIDENCES:
        fail(f"--confidence must be one of {', '.join(CONFIDENCES)}, got {confidence!r}")
    if confidence == "calibrated":
        return "temperature"
    refuse_gap_beyond_one_recognizer(models, tta_views, "--confidence gap reads with one recognizer, frame by frame, "
                                     "without TTA: the gap temperatures are fitted for that alone")
    if min_confidence is not None:
        fail("--min-confidence abstains below a probability: use it with --confidence calibrated")
    return GAP_TEMPERATURE_KEY


def check_gap_temperatures(reader, model: Optional[str]) -> None:
    """Refuse, before reading, a --confidence gap reader whose model has no gap temperatures."""
    from ksrnet.export_onnx import is_onnx_path

    if not reader.temperatures:
        fit = "`ksrnet calibrate --model {} --objective gap --frames 1,3,5`"
        if is_onnx_path(model):
            fail(f"{model_label(model)} has no gap temperatures: fit them on the model it was exported from "
                 f"({fit.format('M')}), then export it again")
        fail(f"{model_label(model)} has no gap temperatures: fit them with {fit.format(model or 'parseq-tiny')} "
             "(and `--objective gap` alone for other frame counts)")


def make_readers(models: Optional[List[str]], device: str, mode: str, tta_views, ensemble: str,
                 backend: str = "torch", calibration: Optional[Path] = None, threads: Optional[int] = None,
                 temperature_key: str = "temperature"):
    """One Reader, or an EnsembleReader over several --model (calibrated by --calibration FILE).
    temperature_key: the metadata key of the temperatures to read with (temperature_key_for); a
    model without the gap ones is refused before anything is read."""
    from ksrnet.export_onnx import is_onnx_path
    from ksrnet.infer import ENSEMBLE_RULES, GAP_TEMPERATURE_KEY

    if ensemble not in ENSEMBLE_RULES:
        fail(f"--ensemble must be one of {', '.join(ENSEMBLE_RULES)}, got {ensemble!r}")
    if backend not in ("torch", "onnx"):
        fail(f"--backend must be torch or onnx, got {backend!r}")
    models = list(models or [None])
    onnx = [m for m in models if backend == "torch" and is_onnx_path(m)]
    if onnx:  # else the refusal is about a missing FILE.json, a name the user never wrote
        fail(f"--model {onnx[0]} is an ONNX export: read it with --backend onnx")
    if len(models) == 1 and calibration is not None:
        fail("--calibration is for ensembles (several --model); a single model's temperatures live in its JSON "
             "(`ksrnet calibrate --model M`)")
    if backend == "onnx":  # onnxruntime keeps its own thread pool: torch.set_num_threads does not reach it
        readers = [make_onnx_reader(m, device, mode, tta_views, threads, temperature_key)[0] for m in models]
    else:
        readers = [make_reader(m, device, mode, tta_views, temperature_key)[0] for m in models]
    if temperature_key == GAP_TEMPERATURE_KEY:
        check_gap_temperatures(readers[0], models[0])  # one model: refuse_gap_beyond_one_recognizer
    if len(readers) == 1:
        return readers[0]
    return make_ensemble_reader(readers, models, ensemble, backend, tta_views, calibration)


def make_ensemble_reader(readers: list, models: list, rule: str, backend: str, tta_views, calibration: Optional[Path]):
    """The EnsembleReader over loaded member readers, with the calibration file checked against them.
    Without one its confidences are raw: the commands say so after reading (TrackReading.calibrated)."""
    from ksrnet.ensemble_calibration import EnsembleCalibration, EnsembleCalibrationError
    from ksrnet.infer import EnsembleReader
    from ksrnet.restoration_reader import RestorationReader

    # "logit" averages the members' logits row by row: a restoration model gives one row per track,
    # a recognizer one per frame, so the two cannot be averaged (the vote compares readings only).
    if rule == "logit" and len({isinstance(r, RestorationReader) for r in readers}) > 1:
        fail("--ensemble logit averages per-frame log-probabilities, but KSR-Net and MF-LPR² read each track as one "
             "restored image: mix them with recognizers under --ensemble vote")
    fitted = None
    if calibration is not None:
        try:
            fitted = EnsembleCalibration.load(calibration)
            fitted.check(ensemble_members(models, readers, backend), rule, tta_views, name=str(calibration))
        except EnsembleCalibrationError as exc:
            fail(str(exc))
    return EnsembleReader(readers, rule, calibration=fitted)


def model_label(model: Optional[str]) -> str:
    """How a --model value is named to the user: the shipped model's name when none was given."""
    from ksrnet.weights import DEFAULT_MODEL

    return str(model or DEFAULT_MODEL)


def ensemble_members(models: list, readers: list, backend: str) -> list:
    """The identity of each ensemble member: which weights file, read how, with which temperatures."""
    from ksrnet.ensemble_calibration import Member, file_sha256
    from ksrnet.weights import ModelLoadError, resolve, resolve_ksrnet

    out = []
    for model, reader in zip(models, readers):
        restoration, baseline = restoration_model(model) if backend == "torch" else (None, False)
        try:
            if backend == "onnx":
                kind, path = "parseq-onnx", Path(model)
            elif restoration is not None:
                kind, path = ("mflpr2" if baseline else "ksrnet"), resolve_ksrnet(restoration)
            else:
                kind, path = "parseq", resolve(model)
            digest = file_sha256(path)
        except (ModelLoadError, OSError) as exc:
            fail(f"cannot identify the model {model}: {exc}")
        out.append(Member(model_label(model), kind, digest, dict(reader.temperatures)))
    return out


def temperatures_for(meta: dict, model: Optional[str], tta_views, key: str = "temperature"):
    """The temperatures to read with (see infer.reader_temperatures), telling the user when TTA falls
    back to the plain ones."""
    from rich.markup import escape

    from ksrnet.infer import reader_temperatures

    temperatures, note = reader_temperatures(meta, tta_views, key)
    if note:
        err_console.print(f"[yellow]note:[/yellow] {escape(model_label(model))}: {escape(note)}",
                          soft_wrap=True)
    return temperatures


def check_device(device: str) -> None:
    """Refuse a --device torch cannot parse, or a GPU this machine does not have, in one line."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        fail(f"--device {device!r} is not a device: use cpu, cuda, cuda:1 ...")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            fail(f"--device {device}: no CUDA GPU is available here (use --device cpu)")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            fail(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")


def make_onnx_reader(model: Optional[str], device: str, mode: str, tta_views=None, threads: Optional[int] = None,
                     temperature_key: str = "temperature"):
    from ksrnet.export_onnx import is_onnx_path
    from ksrnet.infer import Reader
    from ksrnet.typicality import load_for

    check_device(device)

    if model is None or not is_onnx_path(model):
        fail("--backend onnx needs --model FILE.onnx (written by `ksrnet export --onnx`)")
    if mode != "nar":
        fail("the ONNX backend decodes NAR only (--decode nar)")
    try:
        from ksrnet.export_onnx import OnnxParseq

        net = OnnxParseq(model, threads=threads)
        # An export made before the graph gave features cannot be scored; it reads as before.
        temperatures = temperatures_for(net.meta, model, tta_views, temperature_key)
        reader = Reader(net, device=device, temperatures=temperatures, tta_views=tta_views,
                        typicality=load_for(model) if net.has_features else None)
    except ImportError:
        fail("the ONNX backend needs onnxruntime: pip install 'ksrnet[onnx]'")
    except Exception as exc:  # onnxruntime raises its own types for a missing or corrupt file
        fail(f"cannot use {model} with onnxruntime: {exc}")
    return reader, net.meta


MFLPR2_PREFIX = "mflpr2:"


def restoration_model(model: Optional[str]) -> tuple[Optional[str], bool]:
    """(weights path, baseline?) when --model names a restoration reader: KSR-Net weights, or
    "mflpr2:PATH" for the MF-LPR²-style baseline built on those weights' flow and recognizer;
    (None, False) for a recognizer."""
    from ksrnet.restoration_reader import is_ksrnet_weights

    if model is not None and str(model).startswith(MFLPR2_PREFIX):
        path = str(model)[len(MFLPR2_PREFIX):]
        if not is_ksrnet_weights(path):
            fail(f"{model}: {path} holds no KSR-Net weights (ksrnet.safetensors from `ksrnet train-ksrnet`)")
        return path, True
    return (str(model), False) if is_ksrnet_weights(model) else (None, False)


def make_reader(model: Optional[str], device: str, mode: str, tta_views=None, temperature_key: str = "temperature"):
    from ksrnet.infer import Reader
    from ksrnet.typicality import load_for
    from ksrnet.weights import ModelLoadError, load_model, resolve

    check_device(device)
    restoration, baseline = restoration_model(model)
    if restoration is not None:
        from ksrnet.restoration_reader import load_restoration_reader

        if tta_views:
            fail("TTA reads frames one by one under each view; KSR-Net and MF-LPR² read one restored image")
        try:
            return load_restoration_reader(restoration, device=device, mode=mode, baseline=baseline)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            fail(f"cannot load the restoration model {restoration}: {exc}")
    try:
        net, meta = load_model(model, device=device)
        temperatures = temperatures_for(meta, model, tta_views, temperature_key)
        reader = Reader(net, device=device, mode=mode, temperatures=temperatures, tta_views=tta_views,
                        typicality=load_for(resolve(model)))
    except (ModelLoadError, ValueError, TypeError) as exc:  # TypeError: "temperature" not a mapping
        fail(str(exc))
    return reader, meta


def discover_or_fail(tracks: Path):
    from ksrnet.tracks import DatasetError, discover_tracks

    try:
        return discover_tracks(tracks)
    except DatasetError as exc:
        fail(str(exc))


def set_pad_margin(reader, margin: float) -> None:
    """--pad-margin on a reader, or on each member of an ensemble; restoration models refuse it."""
    if not margin:
        return
    from ksrnet.restoration_reader import RestorationReader

    members = getattr(reader, "readers", [reader])
    if any(isinstance(r, RestorationReader) for r in members):
        fail("--pad-margin pads the frames a recognizer reads one by one; a restoration model reads a track on "
             "its own grid: leave it out with KSR-Net or MF-LPR²")
    for r in members:
        r.pad_margin = margin
