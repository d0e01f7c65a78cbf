"""Synthetic tracks end to end: plate render -> camera trajectory -> degradations -> 5 LR frames.

`generate_track(seed, index)` is a pure function of its arguments, so the same track comes out of
`ksrnet synth`, of the on-the-fly training dataset, and of any worker or DDP rank that draws it.

Ground truth written beside each synthetic track (`synth_gt.npz`, see `write_synthetic_dataset`):
  reference        ()          index of the reference frame the flows point to
  flow_to_ref_NNN  (h, w, 2)   for every pixel (x, y) of LR frame NNN (1-based, as lr-NNN), the
                               displacement (dx, dy) such that (x + dx, y + dy) is the same plate
                               point in the reference frame (pixel centres at integer coordinates)
  to_canonical_NNN (3, 3)      homography from LR frame NNN pixels to the canonical HR plate
  canonical_hr     (H, W, 3)   the rectified, undegraded HR plate (uint8 RGB)
  degradation      ()          a string: the track's drawn DegradationParams as JSON (blur, turbulence,
                               tone, noise, sharpening, codec and quality), to split results by them
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from torch.utils.data import IterableDataset

from ksrnet.plates import Layout, normalize_text, text_problems
from ksrnet.synth.camera import CameraParams, canonical_homography, flow_to_reference, render_frames, sample_trajectory
from ksrnet.synth.degrade import DegradationParams, make_lr_track, sample_degradation
from ksrnet.synth.fonts import FontFace, plate_faces
from ksrnet.synth.render import CANONICAL_SIZE, random_plate_text, render_plate, render_scene, sample_style
from ksrnet.track_dataset import my_indices

# The LRLPR-26 blind test is 80 % Mercosur; training sees Brazilian plates often enough to learn them.
MERCOSUR_FRACTION = 0.65
# The extra draw that picks SyntheticTrackDataset's plate-face tracks: a stream apart from each track's.
PLATE_FACE_STREAM = 0x706C6174


@dataclass
class SynthTrack:
    track_id: str
    lr: list[np.ndarray]
    text: str
    layout: Layout
    canonical_hr: np.ndarray
    corners: np.ndarray  # (T, 4, 2) plate corners per LR frame, TL TR BR BL
    reference: int
    preset: str
    scene: np.ndarray | None = None
    trajectory: object | None = None
    scenario: str = "Scenario-Synthetic"
    degradation: DegradationParams | None = None  # what the degradations drew for this track
    # The face the plate is printed in: its font file's name, "@weight" for a variable font; None
    # where a photograph took the rendered plate's place. Benchmarks break accuracy down by it.
    typeface: str | None = None

    def flows_to_reference(self) -> list[np.ndarray]:
        return [flow_to_reference(self.trajectory, t) for t in range(len(self.lr))]

    def to_canonical(self) -> list[np.ndarray]:
        h, w = self.canonical_hr.shape[:2]
        return [canonical_homography(self.trajectory, t, (w, h)) for t in range(len(self.lr))]


@dataclass(frozen=True)
class UndegradedTrack:
    """What generate_track draws before the degradations, with the random stream where they start.

    `lr_frames()` runs the degradations on a copy of the stream, so it can be called again and again:
    the legibility oracle replays one track's degradations under other noise without rendering its
    plate and scene each time.
    """

    index: int
    text: str
    layout: Layout
    preset: str
    canonical_hr: np.ndarray
    scene: np.ndarray
    trajectory: object
    degradation: DegradationParams
    rng: np.random.Generator
    typeface: str | None = None  # as SynthTrack.typeface

    def lr_frames(self) -> list[np.ndarray]:
        return make_lr_track(self.scene, self.trajectory, self.degradation, copy.deepcopy(self.rng))

    def finish(self, lr: list[np.ndarray]) -> SynthTrack:
        traj = self.trajectory
        return SynthTrack(
            track_id=f"track_{self.index + 1:05d}", lr=lr, text=self.text, layout=self.layout,
            canonical_hr=self.canonical_hr, corners=traj.corners.astype(np.float32), reference=traj.reference,
            preset=self.preset, scene=self.scene, trajectory=traj, degradation=self.degradation,
            typeface=self.typeface)


def undegraded_track(seed: int, index: int, *, preset: str = "mix", num_frames: int = 5,
                     layout: Layout | None = None, codec: str | None = None,
                     camera: CameraParams = CameraParams(), epoch: int = 0,
                     text: str | None = None, plate_image: np.ndarray | None = None,
                     fonts: Sequence[FontFace] | None = None) -> UndegradedTrack:
    """generate_track's draws up to the degradations (same arguments)."""
    rng = np.random.default_rng([seed, epoch, index])
    if layout is None:
        layout = Layout.MERCOSUR if rng.random() < MERCOSUR_FRACTION else Layout.BRAZILIAN
    drawn = random_plate_text(rng, layout)
    if text is None:
        text = drawn
    elif problems := text_problems(text, layout):
        raise ValueError(f"text {text!r} does not fit track {index}'s {layout.value} layout: " + "; ".join(problems))
    else:
        text = normalize_text(text)
    style = sample_style(rng, layout, fonts=fonts)
    plate = render_plate(text, style, size=CANONICAL_SIZE)
    typeface = Path(style.font_path).name + ("" if style.font_weight is None else f"@{style.font_weight}")
    if plate_image is not None:
        plate = dataclasses.replace(plate, image=as_canonical_plate(plate_image))
        typeface = None
    scene = render_scene(plate, rng)
    h, w = scene.image.shape[:2]
    traj = sample_trajectory(rng, (w, h), scene.plate_corners, num_frames, camera)
    params = sample_degradation(rng, preset, num_frames, codec=codec)
    return UndegradedTrack(index=index, text=text, layout=layout, preset=params.preset, canonical_hr=plate.image,
                           scene=scene.image, trajectory=traj, degradation=params, rng=rng, typeface=typeface)


def generate_track(seed: int, index: int, *, preset: str = "mix", num_frames: int = 5,
                   layout: Layout | None = None, codec: str | None = None,
                   camera: CameraParams = CameraParams(), epoch: int = 0, text: str | None = None,
                   plate_image: np.ndarray | None = None, fonts: Sequence[FontFace] | None = None) -> SynthTrack:
    """Track `index` of the stream identified by (seed, epoch): deterministic in all arguments.

    `text` prints that text instead of the drawn one, on the same plate, camera and degradations
    (noise included): the random draws never depend on the text. It must fit the track's layout.

    `plate_image` (RGB uint8, any size; a photograph of a real plate, cropped to it) replaces the
    rendered plate's pixels, stretched to the canonical size, in the same scene, camera and
    degradations: the same track with a real plate in it. Pass the plate's text as `text` (and its
    layout), or the labels will not describe what is printed.

    `fonts` draws the plate's face from these faces instead of `plate_fonts()` (the draws after the
    face may then differ: a variable face takes a weight draw that a static one does not).
    """
    track = undegraded_track(seed, index, preset=preset, num_frames=num_frames, layout=layout, codec=codec,
                             camera=camera, epoch=epoch, text=text, plate_image=plate_image, fonts=fonts)
    # The stream itself, not a copy: nothing else uses this one.
    return track.finish(make_lr_track(track.scene, track.trajectory, track.degradation, track.rng))


def as_canonical_plate(image: np.ndarray) -> np.ndarray:
    """An RGB uint8 plate photograph resized to CANONICAL_SIZE (area-averaged when shrinking)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or min(image.shape[:2]) < 2:
        raise ValueError(f"plate_image must be an RGB uint8 image (H, W, 3) of at least 2x2 pixels, "
                         f"got {image.dtype} {image.shape}")
    h, w = CANONICAL_SIZE
    interp = cv2.INTER_AREA if image.shape[0] > h or image.shape[1] > w else cv2.INTER_CUBIC
    return np.ascontiguousarray(cv2.resize(image, (w, h), interpolation=interp))


def _quiet_worker_threads() -> None:
    # OpenCV's own thread pool fights the DataLoader workers for the same cores.
    cv2.setNumThreads(1)


class SyntheticTrackDataset(IterableDataset):
    """`num_tracks` synthetic tracks per epoch, sharded over DataLoader workers and DDP ranks.

    With fixed=True (validation/test) every epoch yields the same tracks; otherwise each epoch draws
    new ones (call set_epoch). The same (seed, epoch) gives the same tracks for any worker count.
    """

    def __init__(self, num_tracks: int, *, seed: int = 0, preset: str = "mix", fixed: bool = False,
                 num_frames: int = 5, codec: str | None = None, plate_face_prob: float = 0.0):
        if num_tracks < 1:
            raise ValueError("num_tracks must be >= 1")
        if not 0 <= plate_face_prob <= 1:
            raise ValueError(f"plate_face_prob must be in [0, 1], got {plate_face_prob}")
        self.num_tracks, self.seed, self.preset, self.fixed = num_tracks, seed, preset, fixed
        self.num_frames, self.codec, self.plate_face_prob = num_frames, codec, plate_face_prob
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_tracks

    def __iter__(self):
        _quiet_worker_threads()
        epoch = 0 if self.fixed else self.epoch
        faces = plate_faces() if self.plate_face_prob > 0 else None
        for i in my_indices(self.num_tracks):
            track = generate_track(self.seed, i, preset=self.preset, num_frames=self.num_frames,
                                   codec=self.codec, epoch=epoch, fonts=self.fonts_for(i, epoch, faces))
            track.scene = track.trajectory = None  # large, and not needed by the recognizer
            yield track

    def fonts_for(self, index: int, epoch: int, faces: tuple | None) -> tuple | None:
        """The plate faces alone for a plate_face_prob share of the tracks (drawn on a stream of its
        own, so the other tracks are the generator's as they are), else None: the generator's fonts."""
        if not faces:
            return None
        draw = np.random.default_rng([self.seed, epoch, index, PLATE_FACE_STREAM]).random()
        return faces if draw < self.plate_face_prob else None


def hr_views(track: SynthTrack, factor: int = 4) -> list[np.ndarray]:
    """Clean, sharper views of each frame (the same geometry, `factor` x the LR size) for hr-NNN."""
    return render_frames(track.scene, track.trajectory, supersample=factor, downsample=False)


def to_track(track: SynthTrack, *, with_hr: bool = True):
    """The synthetic track as a `ksrnet.tracks.Track` ready for `write_track`."""
    from ksrnet.tracks import Track

    lr_names = [f"lr-{t + 1:03d}.png" for t in range(len(track.lr))]
    hr = hr_views(track) if with_hr and track.scene is not None else []
    return Track(
        track_id=track.track_id, lr=track.lr, hr=hr, lr_names=lr_names,
        hr_names=[f"hr-{t + 1:03d}.png" for t in range(len(hr))], text=track.text, layout=track.layout,
        corners={name: c for name, c in zip(lr_names, track.corners)}, scenario=track.scenario,
    )


def ground_truth_arrays(track: SynthTrack) -> dict[str, np.ndarray]:
    """The arrays of `synth_gt.npz` (documented at the top of this module)."""
    arrays = {"reference": np.array(track.reference), "canonical_hr": track.canonical_hr}
    if track.degradation is not None:
        # A unicode array, so np.load reads it without allow_pickle.
        arrays["degradation"] = np.array(json.dumps(dataclasses.asdict(track.degradation), sort_keys=True))
    for t, (flow, h) in enumerate(zip(track.flows_to_reference(), track.to_canonical())):
        arrays[f"flow_to_ref_{t + 1:03d}"] = flow.astype(np.float32)
        arrays[f"to_canonical_{t + 1:03d}"] = h.astype(np.float64)
    return arrays


def write_synthetic_dataset(out: str | Path, num_tracks: int, *, seed: int = 0, preset: str = "mix",
                            fmt: str = "png", with_hr: bool = True, codec: str | None = None,
                            progress=None) -> list[Path]:
    """Write tracks in the LRLPR-26 layout: out/Scenario-Synthetic/<Layout>/track_NNNNN/ + synth_gt.npz.

    progress(done, total) is called after each track. Deterministic in (seed, preset, codec).
    """
    from ksrnet.tracks import SYNTH_GROUND_TRUTH_NAME, track_dir, write_track

    out = Path(out)
    written = []
    for i in range(num_tracks):
        track = generate_track(seed, i, preset=preset, codec=codec)
        target = track_dir(out, track.track_id, scenario=track.scenario, layout=track.layout.value)
        path = write_track(to_track(track, with_hr=with_hr), target, fmt=fmt, overwrite=True)
        # Written after the atomic track write: a crash leaves at worst a track without its side file.
        tmp = path / f".{SYNTH_GROUND_TRUTH_NAME}.tmp.npz"
        np.savez_compressed(tmp, **ground_truth_arrays(track))
        tmp.replace(path / SYNTH_GROUND_TRUTH_NAME)
        written.append(path)
        if progress:
            progress(i + 1, num_tracks)
    return written
