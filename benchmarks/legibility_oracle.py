"""How much of the synthetic test set can be read at all? A reader that knows everything but the text.

A learned reader's errors mix two causes: the frames do not carry the character (no reader can
do better), or the model has not learned to read what they do carry (more training, data or
capacity would help). This separates the two with a reader given everything the generator knows
except the text: the plate's style, the scene, the camera's trajectory, the blur kernels, the tone
curve, the sharpening and the codec settings, but not the sensor noise.

For each slot of a test track (benchmarks/recognizer.py's TEST_SEED, the tracks every recognizer
figure uses) it prints every character the layout allows there in turn, the other six slots as in
the truth, and runs the same generator again (`generate_track(..., text=...)`: same plate, scene,
trajectory, blur, tone curve, sharpening and codec settings). The slot reads as the character whose
template lies nearest the observed frames (sum of squared differences of the RGB pixels over the
last F frames; a tie reads "?"). Templates, one rule each: the replay without sensor noise; the
mean of the replays under `--replays` noise draws (the same draws for every candidate, never the
observed track's own), which has in it what the codec makes of noisy frames; and the mean of half
those draws, which says whether the full mean has settled.

It is an optimistic reader (told the other six characters and every nuisance parameter) with a
least-squares rule that is not quite the likelihood under sharpened, compressed noise: its rate is
an estimate of how legible the tracks are, not a proof of a ceiling. A character it misreads is
one the frames hardly carry; a track it reads and a model misreads is one the model could learn.

Usage: python benchmarks/legibility_oracle.py [--tracks 300] [--preset hard] [--replays 8]
       [--workers 2] [--model parseq-tiny] [--out runs/oracle-hard.jsonl] [--rows FILE]
About 4 s of CPU per track at --replays 10 (session 12's machine, while a training run shared it;
the plate and scene are rendered once per candidate, only the degradations replayed). With --model, the model reads the same tracks (product
fusion, the last 1/3/5 frames): the first table splits its errors by whether the oracle read the
track, the second its characters' probabilities by whether the oracle read the character. --rows
reuses the oracle readings an earlier --out wrote.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recognizer import TEST_SEED, face_kind, face_of  # noqa: E402

import ksrnet.synth.degrade as degrade  # noqa: E402
from ksrnet.plates import DIGITS, LETTERS  # noqa: E402
from ksrnet.synth.dataset import UndegradedTrack, generate_track, undegraded_track  # noqa: E402

FRAME_COUNTS = (1, 3, 5)
RULES = ("noise-free template", "mean template, half the draws", "mean template")
_with_noise = degrade.sensor_noise


def _replay(track: UndegradedTrack, noise_stream: int | None) -> np.ndarray:
    """The track's degradations run again: (T, h, w, 3) float frames. The sensor noise is drawn as
    the generator draws it (so the codec's later draws stay the same) but replaced by noise from
    stream `noise_stream`, or by none."""
    alt = None if noise_stream is None else np.random.default_rng([4242, noise_stream])

    def other_noise(x, a, b, rng, channel_corr=0.0):
        _with_noise(x, a, b, rng, channel_corr)
        return x if alt is None else _with_noise(x, a, b, alt, channel_corr)

    degrade.sensor_noise = other_noise
    try:
        lr = track.lr_frames()
    finally:
        degrade.sensor_noise = _with_noise
    return np.stack([f.astype(np.float32) for f in lr])


def oracle_track(job: tuple[int, str, int]) -> dict:
    """Track `index`'s reading by each rule over the last F frames, for each F of FRAME_COUNTS."""
    index, preset, replays = job
    observed = generate_track(TEST_SEED, index, preset=preset)
    seen = np.stack([f.astype(np.float32) for f in observed.lr])
    truth = observed.text
    readings = {(rule, f): "" for rule in RULES for f in FRAME_COUNTS}
    for slot, kind in enumerate(observed.layout.pattern):
        choices = LETTERS if kind == "L" else DIGITS
        per_frame = {rule: [] for rule in RULES}  # per candidate: (T,) squared distances
        for c in choices:
            text = truth[:slot] + c + truth[slot + 1:]
            # Rendered once per candidate; only the degradations are replayed.
            printed = undegraded_track(TEST_SEED, index, preset=preset, text=text)
            clean = _replay(printed, None)
            # The mean over the same noise streams for every candidate (common random numbers):
            # what the generator makes of this text on average, codec and clipping included.
            draws = [_replay(printed, k) for k in range(replays)]
            # The half-draws template says whether the full one has settled: if the rates of the
            # two differ much, more draws would read better still.
            templates = (clean, np.mean(draws[:max(replays // 2, 1)], axis=0), np.mean(draws, axis=0))
            for rule, template in zip(RULES, templates):
                per_frame[rule].append(((template - seen) ** 2).sum(axis=(1, 2, 3)))
        for rule in RULES:
            dist = np.stack(per_frame[rule])
            for f in FRAME_COUNTS:
                total = dist[:, -f:].sum(axis=1)
                best = int(np.argmin(total))
                tie = np.count_nonzero(total == total[best]) > 1
                readings[rule, f] += "?" if tie else choices[best]  # a tie is no reading
    return {"index": index, "preset": preset, "replays": replays, "text": truth, "layout": observed.layout.value,
            "readings": {f"{rule}|{f}": readings[rule, f] for rule in RULES for f in FRAME_COUNTS}}


def _rate(flags: list[bool]) -> str:
    return f"{100 * sum(flags) / max(len(flags), 1):.1f}"


def confidence_table(rows: list[dict], readings: dict[int, list], rule: str = "mean template") -> str:
    """The model's character probabilities, split by whether the oracle read that character: a
    character the oracle misreads is one the frames hardly carry, and should not come out sure."""
    lines = [f"\nThe model's characters by the oracle's ({rule}) reading of the same character\n",
             "| frames | oracle | characters | model right % | mean model prob | prob >= 0.9 % | of those wrong % |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for f in FRAME_COUNTS:
        for oracle_right in (True, False):
            picked = [(m == t, p) for r, reading in zip(rows, readings[f])
                      for o, m, t, p in zip(r["readings"][f"{rule}|{f}"], reading.text, r["text"], reading.char_probs)
                      if (o == t) == oracle_right]
            sure = [right for right, p in picked if p >= 0.9]
            mean_p = sum(p for _, p in picked) / max(len(picked), 1)
            lines.append(f"| {f} | {'right' if oracle_right else 'wrong'} | {len(picked)} | "
                         f"{_rate([r for r, _ in picked])} | {mean_p:.3f} | {100 * len(sure) / max(len(picked), 1):.1f} | "
                         f"{_rate([not r for r in sure]) if sure else '-'} |")
    return "\n".join(lines)


def _conditions(track) -> dict[str, str]:
    """The track's group under each condition the condition table splits by."""
    d = track.degradation
    height = track.lr[-1].shape[0]
    motion = float(np.mean(d.motion_length)) if d.motion_kind != "none" else 0.0
    return {
        "codec": d.codec,
        "layout": track.layout.value,
        "LR height (last frame)": "< 18 px" if height < 18 else "18-19 px" if height < 20 else ">= 20 px",
        "noise_a": "< 0.003" if d.noise_a < 0.003 else "0.003-0.0045" if d.noise_a < 0.0045 else ">= 0.0045",
        "motion blur length": "< 0.6 px" if motion < 0.6 else "0.6-1.2 px" if motion < 1.2 else ">= 1.2 px",
        "low light": str(d.low_light),
        "typeface": face_kind(face_of(track.typeface)),
    }


def condition_table(rows: list[dict], tracks: list, model_right: list[bool], frames: int = 5,
                    rule: str = "mean template") -> str:
    """Model and oracle rates per group of each drawn condition: where the model lags the frames."""
    lines = [f"\nBy the track's drawn conditions (F = {frames})\n",
             "| condition | group | tracks | model RR % | oracle RR % | model wrong, oracle right % |",
             "| --- | --- | --- | --- | --- | --- |"]
    groups: dict[tuple[str, str], list[tuple[bool, bool]]] = {}
    for row, track, m in zip(rows, tracks, model_right):
        o = row["readings"][f"{rule}|{frames}"] == row["text"]
        for condition, group in _conditions(track).items():
            groups.setdefault((condition, group), []).append((m, o))
    for (condition, group), pairs in sorted(groups.items()):
        lines.append(f"| {condition} | {group} | {len(pairs)} | {_rate([m for m, _ in pairs])} | "
                     f"{_rate([o for _, o in pairs])} | {_rate([o and not m for m, o in pairs])} |")
    return "\n".join(lines)


def report(rows: list[dict], replays: int, model_right: dict[int, list[bool]] | None, model: str | None) -> str:
    lines = [f"{len(rows)} tracks; the oracle knows every nuisance parameter and the other six characters; "
             f"mean template over {replays} noise draws\n",
             "| frames | rule | oracle RR % | oracle char acc % |"
             + (" model RR % | model wrong, oracle right | both wrong | model right, oracle wrong |" if model_right else ""),
             "| --- | --- | --- | --- |" + (" --- | --- | --- | --- |" if model_right else "")]
    for f in FRAME_COUNTS:
        for rule in RULES:
            read = [r["readings"][f"{rule}|{f}"] for r in rows]
            ok = [a == r["text"] for a, r in zip(read, rows)]
            chars = [x == y for a, r in zip(read, rows) for x, y in zip(a, r["text"])]
            line = f"| {f} | {rule} | {_rate(ok)} | {_rate(chars)} |"
            if model_right:
                m = model_right[f]
                line += (f" {_rate(m)} | {sum(o and not k for o, k in zip(ok, m))} |"
                         f" {sum(not o and not k for o, k in zip(ok, m))} | {sum(k and not o for o, k in zip(ok, m))} |")
            lines.append(line)
    if model_right:
        lines.append(f"\nmodel: {model}, product fusion over the last F frames")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracks", type=int, default=300)
    ap.add_argument("--preset", default="hard")
    ap.add_argument("--replays", type=int, default=8, help="noise draws averaged into each candidate's template")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--model", default=None, help="also read the tracks with this model (any --model of predict)")
    ap.add_argument("--out", type=Path, default=None, help="write one JSON line per track here, as it is done")
    ap.add_argument("--rows", type=Path, default=None,
                    help="take the oracle readings of the first tracks from an earlier --out (same --replays), "
                         "computing only those beyond it")
    args = ap.parse_args()
    if args.tracks < 1 or args.replays < 1 or args.workers < 1:
        ap.error("--tracks, --replays and --workers must be >= 1")
    start = time.perf_counter()
    rows = [json.loads(line) for line in args.rows.read_text().splitlines()][:args.tracks] if args.rows else []
    if [r["index"] for r in rows] != list(range(len(rows))):
        ap.error(f"{args.rows} does not hold tracks 0, 1, 2, ... in order")
    # (Rows of the first runs name neither: they were hard tracks at 10 draws.)
    if any(r.get("preset", args.preset) != args.preset or r.get("replays", args.replays) != args.replays for r in rows):
        ap.error(f"{args.rows} was not computed with --preset {args.preset} --replays {args.replays}")
    jobs = [(i, args.preset, args.replays) for i in range(len(rows), args.tracks)]
    sink = None
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        sink = args.out.open("w")
        sink.writelines(json.dumps(r) + "\n" for r in rows)
    with multiprocessing.get_context("fork").Pool(args.workers, initializer=_one_thread) as pool:
        for row in pool.imap(oracle_track, jobs):  # nothing to do when --rows holds them all
            rows.append(row)
            if sink:
                sink.write(json.dumps(row) + "\n")
                sink.flush()
            if len(rows) % 10 == 0:
                print(f"oracle: {len(rows)}/{args.tracks} tracks, {time.perf_counter() - start:.0f} s", file=sys.stderr)
    if sink:
        sink.close()
    model_right = readings = None
    if args.model:
        from compare_readers import readings_of
        from recognizer import synthetic_tracks

        tracks = synthetic_tracks(args.tracks, args.preset)
        readings = {f: readings_of(args.model, tracks, "product", f) for f in FRAME_COUNTS}
        model_right = {f: [m.text == t.text for m, t in zip(readings[f], tracks)] for f in FRAME_COUNTS}
    print(report(rows, args.replays, model_right, args.model))
    if readings:
        print(confidence_table(rows, readings))
        print(condition_table(rows, tracks, model_right[5]))
    print(f"\n{time.perf_counter() - start:.0f} s", file=sys.stderr)


def _one_thread() -> None:
    import cv2

    cv2.setNumThreads(1)


if __name__ == "__main__":
    main()
