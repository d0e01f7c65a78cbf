"""The model shipped in the package: it loads by default, stays small, and never vouches for a plate
the frames do not show (no confidence >= 0.9 on tracks degraded past legibility)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ksrnet.infer import Reader
from ksrnet.models.parseq import ParseqConfig
from ksrnet.synth.dataset import generate_track
from ksrnet.tracks import Track
from ksrnet.weights import DEFAULT_MODEL, PACKAGE_WEIGHTS, load_model


@pytest.fixture(scope="module")
def shipped():
    model, meta = load_model()
    return Reader(model, temperatures=meta.get("temperature")), meta


def test_default_model_is_shipped_small_and_consistent(shipped):
    reader, meta = shipped
    weights = PACKAGE_WEIGHTS / f"{DEFAULT_MODEL}.safetensors"
    assert weights.stat().st_size < 30 * 2**20
    assert meta["kind"] == "parseq" and ParseqConfig.from_dict(meta["config"]) == reader.model.config


def illegible_tracks() -> list[Track]:
    rng = np.random.default_rng(5)
    tracks = [
        Track("grey", [np.full((17, 48, 3), 128, np.uint8)] * 5),
        Track("black", [np.zeros((19, 44, 3), np.uint8)] * 5),
        Track("noise", [rng.integers(0, 256, (17, 48, 3), dtype=np.uint8) for _ in range(5)]),
    ]
    # Real synthetic plates blurred far past legibility (sigma of 6 LR pixels: about one character).
    for i in range(4):
        t = generate_track(77, i, preset="easy")
        tracks.append(Track(f"blurred{i}", [cv2.GaussianBlur(f, (0, 0), 6.0) for f in t.lr]))
    return tracks


@pytest.mark.parametrize("fusion", ["product", "logit_mean", "single", "char_majority", "string_majority"])
def test_no_confident_reading_of_illegible_tracks(shipped, fusion):
    reader, _ = shipped
    for r in reader.read(illegible_tracks(), [fusion])[fusion]:
        assert r.confidence < 0.9, (r.track_id, r.text, r.confidence)


def test_demo_shows_the_confidences_predict_writes(tmp_path):
    import io

    from rich.console import Console
    from typer.testing import CliRunner

    from ksrnet.cli import app
    from ksrnet.demo import run_demo

    run_demo(tmp_path / "demo", Console(file=io.StringIO()), num_tracks=3)
    out = tmp_path / "predict.txt"
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "demo" / "tracks"), "--out", str(out)])
    assert result.exit_code == 0, result.stdout
    assert sorted(out.read_text().splitlines()) == sorted((tmp_path / "demo" / "predictions.txt").read_text().splitlines())


@pytest.mark.parametrize("recipe", ["parseq-tiny-gpu.yaml", "parseq-tiny-lrlpr.yaml"])
def test_recipes_that_continue_the_shipped_model_fit_it(recipe):
    # README's GPU and LRLPR-26 recipes start from the shipped weights; shipping a deeper model
    # without updating them made both fail at start-up (session 17).
    from pathlib import Path

    from ksrnet.train_config import TrainConfig
    from ksrnet.training import initial_model

    config = TrainConfig.load(Path(__file__).resolve().parents[1] / "configs" / recipe)
    assert config.init_weights == DEFAULT_MODEL
    _, meta = load_model()
    assert initial_model(config).config == ParseqConfig.from_dict(meta["config"]) == config.model


def test_the_shipped_reference_flags_illegible_tracks_and_few_like_the_calibration_ones():
    from ksrnet.cli_readers import make_reader

    reader = make_reader(None, "cpu", "nar")[0]  # as the commands load it, reference included
    assert reader.typicality is not None
    for r in reader.read(illegible_tracks())["product"]:
        assert r.atypical, (r.track_id, r.atypicality)
    # drawn like the calibration tracks (another seed): about 1 % flagged; 3 of 40 would be far off
    tracks = [generate_track(4242, i, preset="mix") for i in range(40)]
    assert sum(r.atypical for r in reader.read(tracks)["product"]) <= 2
