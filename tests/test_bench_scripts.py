"""Figures of the benchmark scripts checked against known values (benchmarks/ is not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

_BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, _BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(_BENCH))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(_BENCH))
    return module


class _TwoFrames(torch.nn.Module):
    """SR pixels a + b and a - b of frame 0 (a) and frame 1 (b): each SR pixel depends on both
    frames equally, but the second frame's effects have opposite signs on the two pixels."""

    def restore(self, x):
        a, b = x[:, 0, 0, 0, 0], x[:, 1, 0, 0, 0]
        return SimpleNamespace(sr=torch.stack([a + b, a - b], 1)[:, None, :, None])


def test_diagnostics_sensitivity_is_mean_abs_jacobian_not_cancelled():
    diag = _script("ksrnet_diagnostics")
    frames = torch.tensor([3.0, 1.0]).view(1, 2, 1, 1, 1).repeat(4, 1, 1, 1, 1)
    _, shares = diag.sensitivity_shares(_TwoFrames(), frames, 5, torch.Generator().manual_seed(0))
    # mean |d SR / d frame| is 1 for either frame; d sum|SR| / d b = 1 - 1 = 0 would give (1, 0).
    assert torch.allclose(shares, torch.tensor([0.5, 0.5]))


def test_legibility_oracle_replays_the_track_with_other_noise_only():
    oracle = _script("legibility_oracle")
    from ksrnet.synth import degrade
    from ksrnet.synth.dataset import generate_track, undegraded_track

    track = generate_track(oracle.TEST_SEED, 0, preset="easy")
    observed = np.stack([f.astype(np.float32) for f in track.lr])
    printed = undegraded_track(oracle.TEST_SEED, 0, preset="easy")
    clean = oracle._replay(printed, None)
    first, again, second = (oracle._replay(printed, k) for k in (0, 0, 1))
    assert degrade.sensor_noise is oracle._with_noise  # put back after every replay
    assert clean.shape == observed.shape and not np.array_equal(clean, observed)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, second) and not np.array_equal(first, observed)
    # Without noise the frames differ from the observed ones by the noise only: less than two noise
    # draws differ from each other (each carries its own), whatever the track's noise level.
    assert 0 < np.abs(clean - observed).mean() < np.abs(first - second).mean()


def test_legibility_oracle_reads_an_easy_track():
    oracle = _script("legibility_oracle")
    row = oracle.oracle_track((0, "easy", 1))
    assert set(row["readings"]) == {f"{rule}|{f}" for rule in oracle.RULES for f in oracle.FRAME_COUNTS}
    assert row["readings"]["mean template|5"] == row["text"]
    assert all(len(r) == 7 for r in row["readings"].values())


def test_legibility_confidence_table_splits_characters_by_the_oracle():
    oracle = _script("legibility_oracle")
    rows = [{"text": "ABC1234", "readings": {f"mean template|{f}": "ABD1234" for f in oracle.FRAME_COUNTS}}]
    # The model reads slot 3 wrong at 0.95 (where the oracle is wrong too) and the rest right at 0.5.
    reading = SimpleNamespace(text="ABX1234", char_probs=(0.5, 0.5, 0.95, 0.5, 0.5, 0.5, 0.5))
    table = oracle.confidence_table(rows, {f: [reading] for f in oracle.FRAME_COUNTS})
    assert "| 5 | right | 6 | 100.0 | 0.500 | 0.0 | - |" in table
    assert "| 5 | wrong | 1 | 0.0 | 0.950 | 100.0 | 100.0 |" in table


def test_real_plates_finds_labelled_crops_and_exposes_them_like_the_render(tmp_path):
    import cv2

    real = _script("real_plates")
    (tmp_path / "rodosol_hr").mkdir()
    (tmp_path / "pairs").mkdir()
    photo = np.full((40, 120, 3), 60, np.uint8)
    photo[10:30, 20:100] = 90  # a dim, low-contrast photo
    for name in ("rodosol_hr/r1c1_QRC6790.png", "pairs/1_LSE1695_hr.png", "pairs/notes.png", "pairs/ABC1234X.png"):
        cv2.imwrite(str(tmp_path / name), photo)
    found = real.real_plates(tmp_path)
    assert [(n, t) for n, t, _ in found] == [("rodosol_hr/r1c1_QRC6790", "QRC6790"), ("pairs/1_LSE1695_hr", "LSE1695")]
    rendered = np.full((64, 192, 3), 230, np.uint8)
    rendered[20:50, 30:160] = 20
    exposed = real.exposed_like(photo, rendered)
    assert exposed.shape == rendered.shape and exposed.dtype == np.uint8
    lo, hi = np.percentile(real._luma(exposed), [2, 98])
    assert abs(lo - 20) < 2 and abs(hi - 230) < 2  # the render's dark and light levels, the photo's pattern


def test_compare_readers_reads_tta_prefixed_models_with_the_default_views():
    from ksrnet.tta import DEFAULT_VIEWS

    compare = _script("compare_readers")
    assert compare.reader_spec("parseq-tiny") == ("parseq-tiny", None)
    assert compare.reader_spec("tta:runs/x") == ("runs/x", DEFAULT_VIEWS)


def test_compare_readers_reads_ensemble_specs_as_ensembles_of_their_members():
    from ksrnet.infer import EnsembleReader, Reader

    compare = _script("compare_readers")
    assert compare.ensemble_spec("vote:parseq-tiny+runs/x") == ("vote", ["parseq-tiny", "runs/x"])
    assert compare.ensemble_spec("logit:a+b+tta:c") == ("logit", ["a", "b", "tta:c"])
    assert compare.ensemble_spec("runs/x") is None and compare.ensemble_spec("vote:runs/x") is None
    reader = compare.reader_of("vote:parseq-tiny+parseq-tiny")
    assert isinstance(reader, EnsembleReader) and reader.rule == "vote" and len(reader.readers) == 2
    assert reader.calibration is None and all(type(m) is Reader and m.temperatures for m in reader.readers)


def test_refine_context_probe_shipped_row_is_the_readers_decoding_and_its_context_the_fused_reading():
    from ksrnet.models.baselines import fuse_product
    from ksrnet.models.parseq import Parseq, ParseqConfig
    from ksrnet.plates import layout_masks

    probe = _script("refine_context_probe")
    torch.manual_seed(0)
    model = Parseq(ParseqConfig.tiny(embed_dim=32, enc_depth=1, enc_heads=2, dec_heads=2, stem="patch")).eval()
    images = torch.rand(6, 3, model.config.img_h, model.config.img_w) * 2 - 1
    with torch.inference_mode():
        rows, layouts = probe.decodings(model, images, tracks=2)  # two tracks of three frames
        shipped = model(images, mode="nar", refine_iters=1)
        assert torch.allclose(rows[probe.SHIPPED], shipped.char_logits, atol=1e-5)
        assert torch.allclose(layouts, shipped.layout_logits, atol=1e-5)
        # The context of a fused-context refinement: each track's product-fused reading, the one the
        # Reader would give, for every frame of it.
        nar = rows["nar (no refinement)"]
        context = probe.fused_context(nar, layouts, tracks=2)
        masks = torch.from_numpy(layout_masks())
        for track in range(2):
            frames = slice(3 * track, 3 * track + 3)
            fused = fuse_product(nar[frames], layouts[frames], masks)
            assert all(context[f].tolist() == list(fused.indices) for f in range(3 * track, 3 * track + 3))
    assert set(rows) == {"nar (no refinement)", probe.SHIPPED, "own refine x2", "fused-context refine x1",
                         "fused-context refine x2", "own refine, then fused-context refine"}


def test_recognizer_typeface_rows_split_every_track_once_by_kind_and_once_by_family(micro_parseq):
    from ksrnet.infer import Reader
    from ksrnet.synth.dataset import generate_track

    recognizer = _script("recognizer")
    tracks = [generate_track(3, i, preset="easy", num_frames=2) for i in range(24)]
    reader = Reader(micro_parseq())
    logits = {c: reader.track_logits(tracks, c) for c in (1, 2)}
    rows = recognizer.typeface_rows(reader, tracks, logits)
    kinds = [r for r in rows if not r["typeface"].endswith(")")]
    families = [r for r in rows if r["typeface"].endswith(")")]
    assert {r["typeface"] for r in kinds} <= {"our plate faces", "package faces", "user faces", "system faces"}
    assert sum(r["tracks"] for r in kinds) == sum(r["tracks"] for r in families) == len(tracks)
    assert rows.index(kinds[-1]) < rows.index(families[0])  # the two kinds first
    for row in rows:
        assert 0.0 <= row["rr@1"] <= 1.0 and 0.0 <= row["rr@2"] <= 1.0
    # An untrained reader: the RR of a group is that of its tracks read one by one.
    read = reader.readings_from_logits(tracks, logits[2], ["product"])["product"]
    everyone = sum(r.text == t.text for r, t in zip(read, tracks)) / len(tracks)
    assert sum(r["rr@2"] * r["tracks"] for r in kinds) / len(tracks) == pytest.approx(everyone)


def test_real_plates_auroc_counts_ties_half():
    auroc = _script("real_plates").auroc
    assert auroc([0.1, 0.2], [0.3, 0.4]) == 1.0
    assert auroc([0.3, 0.4], [0.1, 0.2]) == 0.0
    assert auroc([1.0, 1.0], [1.0]) == 0.5
    assert auroc([0.1, 0.5], [0.5, 0.9]) == 0.875  # pairs: 0.5>0.1, 0.5=0.5 (half), 0.9>0.1, 0.9>0.5


def _reading(text: str, confidence: float, atypicality: float | None):
    from ksrnet.infer import TrackReading

    return TrackReading("t", text, confidence, atypicality=atypicality)


def test_typicality_rows_split_tracks_by_the_flag():
    real = _script("real_plates")
    twin = {"atypicality": [0.2, 0.5, 0.995], "correct": [True, True, True], "confidence": [0.95, 0.95, 0.95]}
    mine = {"atypicality": [0.3, 1.0, 1.0], "correct": [False, True, False], "confidence": [0.95, 0.2, 0.95]}
    # flagged: twin 1 of 3, real 2 of 3; AUROC: 7 of the 9 (real, twin) pairs have the real one higher;
    # real not flagged: 0 of 1 right, its one sure reading wrong; flagged: 1 of 2 right, one read sure, wrong
    assert real.typicality_row("easy", 5, twin, mine) == \
        "| easy | 5 | 33.3 / 66.7 | 0.778 | 0 of 1 / 1 of 2 | 1 of 1 / 1 of 1 |"
    assert real.typicality_row("easy", 5, {**twin, "atypicality": [None] * 3}, mine) is None
    bench = _script("typicality")
    tracks = [SimpleNamespace(text="ABC1234")] * 3
    readings = [_reading("ABC1234", 0.95, 0.1), _reading("ABC1235", 0.95, 0.2), _reading("ABC1234", 0.3, 0.999)]
    assert bench.split_row("x", tracks, readings) == "| x | 33.33 | 1 of 2 / 1 of 2 | 1 of 1 / 0 of 0 |"
