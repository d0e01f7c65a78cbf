"""Image degradations that turn clean fine-grid frames into LR frames like LRLPR-26's.

Order, following the light's path: atmospheric turbulence (a smooth warp), then the exposure's
blur (motion path K_t convolved with the optics PSF, one kernel per frame), then the sensor's
sampling (area downsample to the LR size), exposure (gain, colour cast, contrast, gamma, low
light), sensor noise with variance ``a * y + b``, the camera's own sharpening (an unsharp mask on
luma, which also amplifies the noise), and last the codec (JPEG per frame, or H.264 over the
track, or H.264 then a JPEG re-save like Scenario B's files).

Blur sizes and turbulence are given in LR pixels; :func:`degrade_track` scales them by the fine
grid's factor. All blurs keep their kernel's centroid on the centre pixel, so blurring never
shifts the image and the camera's flow stays exact. Images in float stages are RGB float32 in
[0, 1]; frames come in and go out as uint8 RGB.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction

import cv2
import numpy as np

from ksrnet.synth import npfast
from ksrnet.synth.camera import Trajectory, render_frames
from ksrnet.synth.rand import choice, choice_cdf, uniform

Range = tuple[float, float]

PRESET_NAMES = ("easy", "medium", "hard")
CODECS = ("none", "jpeg", "h264", "h264+jpeg")
PSF_KINDS = ("gaussian", "defocus")
MOTION_KINDS = ("none", "linear", "curved")

# Smallest Gaussian the kernel builder draws path points with, in fine pixels. A sampled Gaussian's
# centroid is pulled towards the nearest pixel by ~exp(-2 pi^2 sigma^2) px: 0.09 px at sigma 0.35,
# 0.007 px at 0.5, so 0.5 keeps kernels of curved paths centred (flow stays exact).
MIN_KERNEL_SIGMA = 0.5


# ---------------------------------------------------------------------------------------------
# conversions


def to_float(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img.astype(np.float32) * np.float32(1.0 / 255.0)
    return img.astype(np.float32, copy=False)


def to_uint8(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.uint8:
        return x
    return npfast.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# blur kernels: a motion path (points visited during the exposure) drawn with the optics PSF


def _linear_paths(lengths: np.ndarray, angles_deg: np.ndarray) -> np.ndarray:
    """``(T, m, 2)`` points evenly spaced along centred segments, one per frame."""
    m = max(2, int(math.ceil(float(np.max(lengths)) * 4)) + 1)
    s = np.linspace(-0.5, 0.5, m)[None, :] * lengths[:, None]
    a = np.radians(angles_deg)[:, None]
    return np.stack([s * np.cos(a), -s * np.sin(a)], axis=-1)


def _curved_paths(
    rng: np.random.Generator,
    lengths: np.ndarray,
    angles_deg: np.ndarray,
    curvature: float,
    m: int = 48,
) -> np.ndarray:
    """``(T, m, 2)`` smooth random paths of arc length ``lengths``, centred on their mean."""
    n = len(lengths)
    tau = np.linspace(0.0, 1.0, m)[None, :]
    r = rng.normal(size=(3, n, 1))
    phase = rng.uniform(0, 2 * math.pi, size=(3, n, 1))
    freq = rng.uniform(0.5, 2.0, size=(n, 1))
    heading = -np.radians(angles_deg)[:, None] + curvature * (
        r[0] * np.sin(math.pi * tau + phase[0]) + 0.5 * r[1] * np.sin(2 * math.pi * tau + phase[1])
    )
    # Points are equally spaced in time, so slow stretches of a path collect more exposure.
    speed = np.exp(0.4 * r[2] * np.sin(math.pi * tau * freq + phase[2]))
    pts = np.cumsum(np.stack([np.cos(heading) * speed, np.sin(heading) * speed], axis=-1), axis=1)
    arc = np.sqrt((np.diff(pts, axis=1) ** 2).sum(-1)).sum(-1)
    pts = pts * (lengths / np.maximum(arc, 1e-9))[:, None, None]
    return pts - pts.mean(axis=1, keepdims=True)


def linear_motion_path(length: float, angle_deg: float) -> np.ndarray:
    """Points evenly spaced along a segment of ``length`` px, centred on 0; angle counter-clockwise
    from +x with image y pointing down (so 90 degrees points up)."""
    if length <= 0:
        return np.zeros((1, 2))
    return _linear_paths(np.array([length]), np.array([angle_deg]))[0]


def curved_motion_path(
    rng: np.random.Generator, length: float, angle_deg: float, curvature: float, n: int = 48
) -> np.ndarray:
    """A smooth random path of arc length ``length`` px along ``angle_deg``: the heading wanders by
    up to about ``curvature`` radians and the speed varies (shake, braking), which puts uneven
    weight along the path like real non-linear blur."""
    if length <= 0:
        return np.zeros((1, 2))
    return _curved_paths(rng, np.array([length]), np.array([angle_deg]), curvature, n)[0]


def _gaussian_axis(offsets: np.ndarray, centres: np.ndarray, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * ((offsets[None, :] - centres[:, None]) / sigma) ** 2)


def disc_kernel(radius: float) -> np.ndarray:
    """Defocus PSF: a uniform disc of ``radius`` px with anti-aliased rim, sum 1, odd size."""
    return _disc_kernel(radius).copy()


@functools.lru_cache(maxsize=16)
def _disc_kernel(radius: float) -> np.ndarray:
    # Cached (read-only): a defocused track asks for the same disc for each of its frames.
    r = int(math.ceil(radius)) + 1
    sub = 4
    ax = (np.arange((2 * r + 1) * sub) + 0.5) / sub - (r + 0.5)
    inside = (ax[None, :] ** 2 + ax[:, None] ** 2 <= radius * radius).astype(np.float32)
    k = inside.reshape(2 * r + 1, sub, 2 * r + 1, sub).mean(axis=(1, 3))
    if k.sum() <= 0:
        k[r, r] = 1.0
    k = k / k.sum()
    k.flags.writeable = False
    return k


def blur_kernel(path: np.ndarray, psf: str = "gaussian", psf_size: float = 0.0) -> np.ndarray:
    """One frame's blur kernel (float32, odd square, sum 1, centroid on the centre pixel).

    ``path``: motion points in px; ``psf``: "gaussian" (``psf_size`` = sigma) or "defocus"
    (``psf_size`` = disc radius, still drawn with a minimal Gaussian so points fall between pixels
    without shifting the centroid).
    """
    if psf not in PSF_KINDS:
        raise ValueError(f"unknown psf {psf!r}")
    pts = np.asarray(path, dtype=np.float64).reshape(-1, 2)
    pts = pts - pts.mean(axis=0)
    sigma = max(psf_size if psf == "gaussian" else 0.0, MIN_KERNEL_SIGMA)
    radius = int(math.ceil(np.abs(pts).max() + 3.0 * sigma)) + 1
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    gx = _gaussian_axis(offsets, pts[:, 0], sigma)
    gy = _gaussian_axis(offsets, pts[:, 1], sigma)
    k = gy.T @ gx  # rows are y, columns x: sum over path points of separable Gaussians
    if psf == "defocus" and psf_size > 0:
        disc = _disc_kernel(psf_size)
        pad = disc.shape[0] // 2
        k = np.pad(k, pad)
        k = cv2.filter2D(k, -1, disc, borderType=cv2.BORDER_CONSTANT)
    k = k.astype(np.float32)
    return k / k.sum()


def apply_kernel(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve (reflecting borders). Kernels here are centroid-centred, so nothing moves."""
    if kernel.shape == (1, 1):
        return img
    # filter2D correlates; flipping makes it a true convolution, which matters for curved paths.
    return cv2.filter2D(img, -1, kernel[::-1, ::-1], borderType=cv2.BORDER_REFLECT101)


def optics_blur(img: np.ndarray, psf: str, size: float) -> np.ndarray:
    """Lens PSF only: Gaussian of sigma ``size`` px, or defocus disc of radius ``size`` px."""
    if size <= 0:
        return img
    if psf == "gaussian":
        return cv2.GaussianBlur(img, (0, 0), size, borderType=cv2.BORDER_REFLECT101)
    return apply_kernel(img, disc_kernel(size))


def motion_blur(img: np.ndarray, length: float, angle_deg: float) -> np.ndarray:
    """Linear motion blur of ``length`` px along ``angle_deg`` (centroid-centred, sum 1)."""
    if length <= 0:
        return img
    return apply_kernel(img, blur_kernel(linear_motion_path(length, angle_deg), "gaussian", 0.0))


# ---------------------------------------------------------------------------------------------
# geometry and sampling


@functools.lru_cache(maxsize=64)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    xs.flags.writeable = ys.flags.writeable = False
    return xs, ys


def turbulence_field(
    shape: tuple[int, int], amplitude: float, scale: float, rng: np.random.Generator
) -> np.ndarray:
    """Smooth random displacement ``(h, w, 2)`` with RMS ``amplitude`` px per axis and correlation
    length about ``scale`` px (cubic interpolation of a coarse Gaussian grid)."""
    h, w = shape
    if amplitude <= 0:
        return np.zeros((h, w, 2), np.float32)
    gh = max(2, int(math.ceil(h / max(scale, 1e-6))) + 2)
    gw = max(2, int(math.ceil(w / max(scale, 1e-6))) + 2)
    coarse = rng.standard_normal((gh, gw, 2)).astype(np.float32)
    field = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    # numpy's per-axis reductions are slow on small arrays; OpenCV's per-channel stats are not.
    mean, std = cv2.meanStdDev(field)
    # A common shift would be camera motion, not turbulence: remove it, then set the RMS.
    scale_xy = (amplitude / np.maximum(std.ravel(), 1e-6)).tolist()
    field = cv2.subtract(field, tuple(mean.ravel().tolist()) + (0.0, 0.0))
    return cv2.multiply(field, tuple(scale_xy) + (0.0, 0.0))


def turbulence_warp(
    img: np.ndarray, amplitude: float, scale: float, rng: np.random.Generator
) -> np.ndarray:
    """Warp by a smooth random field (heat shimmer). Amplitude 0 returns the input untouched."""
    if amplitude <= 0:
        return img
    h, w = img.shape[:2]
    field = turbulence_field((h, w), amplitude, scale, rng)
    xs, ys = _grid(h, w)
    return cv2.remap(
        img, xs + field[..., 0], ys + field[..., 1], cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT101,
    )


def area_downsample(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Sensor sampling: box-average to exactly ``size = (width, height)``."""
    if (img.shape[1], img.shape[0]) == tuple(size):
        return img
    return cv2.resize(img, tuple(int(s) for s in size), interpolation=cv2.INTER_AREA)


# ---------------------------------------------------------------------------------------------
# exposure and noise (float RGB in [0, 1])


def adjust_brightness(x: np.ndarray, gain: float) -> np.ndarray:
    """Exposure gain: multiplies intensities (before gamma)."""
    return x * np.float32(gain)


def _scale_channels(x: np.ndarray, gains: tuple[float, ...]) -> np.ndarray:
    # numpy broadcasting over a 3-long last axis is ~4x slower than OpenCV's per-channel scalar.
    if x.dtype == np.float32 and x.ndim >= 3 and x.shape[-1] == len(gains) <= 4:
        flat = np.ascontiguousarray(x).reshape(-1, x.shape[-2], x.shape[-1])
        scalar = tuple(float(g) for g in gains) + (0.0,) * (4 - len(gains))
        return cv2.multiply(flat, scalar).reshape(x.shape)
    return x * np.asarray(gains, dtype=np.float32)


def apply_color_cast(x: np.ndarray, rgb_gains: tuple[float, float, float]) -> np.ndarray:
    """White-balance error: one gain per channel (R, G, B)."""
    return _scale_channels(x, tuple(rgb_gains))


def adjust_contrast(x: np.ndarray, contrast: float) -> np.ndarray:
    """Scale deviations from the mean of ``x`` (haze, flat ISP curves): the mean stays put. On a
    stack of frames the pivot is the track's mean, so all frames get the same tone curve."""
    if contrast == 1.0:
        return x
    m = npfast.mean(x, dtype=np.float64)
    return (x - np.float32(m)) * np.float32(contrast) + np.float32(m)


def adjust_gamma(x: np.ndarray, gamma: float) -> np.ndarray:
    """``y = x ** gamma`` on [0, 1]: gamma < 1 brightens mid-tones, > 1 darkens them."""
    y = npfast.clip(x, 0.0, 1.0).astype(np.float32, copy=False)
    if gamma == 1.0:
        return y
    # cv2.pow is ~5x faster than np.power on float32; it wants at most 2-D with <= 4 channels.
    channels = y.shape[-1] if y.ndim > 2 and y.shape[-1] <= 4 else 1
    flat = np.ascontiguousarray(y).reshape(-1, channels)
    return cv2.pow(flat, float(gamma)).reshape(y.shape)


def adjust_saturation(x: np.ndarray, saturation: float) -> np.ndarray:
    """Blend each RGB pixel toward its luma: 1 keeps the colours, 0 gives grey (IR/flash cameras
    and cheap ISPs render desaturated colours)."""
    if saturation == 1.0 or x.ndim < 3 or x.shape[-1] != 3:
        return x
    flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, x.shape[-2], 3)
    grey = cv2.cvtColor(cv2.cvtColor(flat, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    return cv2.addWeighted(flat, float(saturation), grey, 1.0 - float(saturation), 0.0).reshape(x.shape)


def apply_black_level(x: np.ndarray, black_level: float) -> np.ndarray:
    """Crush the shadows: ``(x - b) / (1 - b)``, so everything under ``b`` goes to 0."""
    if black_level <= 0:
        return x
    return (x - np.float32(black_level)) * np.float32(1.0 / (1.0 - black_level))


def plate_mask(size: tuple[int, int], corners: np.ndarray) -> np.ndarray:
    """Anti-aliased float32 ``(h, w)`` mask of the plate quad (pixel-centre coordinates)."""
    w, h = size
    m = np.zeros((h, w), np.uint8)
    c = np.asarray(corners, np.float64).reshape(4, 2)
    # OpenCV fills polygons inclusively through their vertices' pixels: pull the outer boundary
    # in by half a pixel so the filled area matches the quad's.
    c = c - 0.5 * np.sign(c - npfast.mean(c, axis=0))
    pts = np.rint(c * 16).astype(np.int32)
    cv2.fillConvexPoly(m, pts, 255, cv2.LINE_AA, 4)
    return m.astype(np.float32) * np.float32(1.0 / 255.0)


def apply_surround_gain(x: np.ndarray, mask: np.ndarray, surround_gain: float) -> np.ndarray:
    """Light the plate and its surround differently: a retro-reflective plate under a flash or IR
    illuminator returns far more light than the paint around it. ``mask`` is 1 on the plate."""
    if surround_gain == 1.0:
        return x
    f = np.float32(surround_gain) + np.float32(1.0 - surround_gain) * mask
    if x.ndim == 3:
        f = cv2.cvtColor(f, cv2.COLOR_GRAY2RGB) if x.shape[-1] == 3 else f[..., None]
    return x * f


def apply_exposure(
    x: np.ndarray,
    *,
    gain: float = 1.0,
    gamma: float = 1.0,
    contrast: float = 1.0,
    color_cast: tuple[float, float, float] = (1.0, 1.0, 1.0),
    saturation: float = 1.0,
    black_level: float = 0.0,
) -> np.ndarray:
    """Linear scalings first (they act on light), then the ISP: saturation, contrast, black
    level and the tone curve; result clipped to [0, 1]."""
    if x.ndim >= 3:
        y = _scale_channels(x, tuple(gain * c for c in color_cast))
    else:
        y = x * np.float32(gain)
    y = adjust_saturation(y, saturation)
    y = adjust_contrast(y, contrast)
    y = apply_black_level(y, black_level)
    return adjust_gamma(y, gamma)


_NOISE_BANK_SIZE = 1 << 20
_noise_bank: np.ndarray | None = None


def standard_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """N(0, 1) float32 samples: a slice of a fixed 1M-sample bank at an rng-drawn offset.

    Drawing fresh normals costs ~0.2 ms per track, a tenth of the whole budget; a random window
    into a bank is as good for training noise (every window is i.i.d. normal) and deterministic
    in ``rng``. Shapes over a quarter of the bank are drawn fresh.
    """
    global _noise_bank
    size = math.prod(shape)
    if size > _NOISE_BANK_SIZE // 4:
        return rng.standard_normal(shape, dtype=np.float32)
    if _noise_bank is None:
        bank = np.random.default_rng(0x5EED).standard_normal(_NOISE_BANK_SIZE, dtype=np.float32)
        bank.flags.writeable = False
        _noise_bank = bank
    start = int(rng.integers(0, _NOISE_BANK_SIZE - size + 1))
    return _noise_bank[start : start + size].reshape(shape)


def sensor_noise(
    x: np.ndarray, a: float, b: float, rng: np.random.Generator, channel_corr: float = 0.0
) -> np.ndarray:
    """Gaussian approximation of Poisson-Gaussian noise: variance ``a * y + b`` at intensity y.

    ``channel_corr`` correlates the noise across channels (demosaicing and luma denoising make
    colour noise partly shared) without changing each channel's variance. No clipping here.
    """
    if a <= 0 and b <= 0:
        return x
    std = np.sqrt(np.maximum(np.float32(a) * npfast.clip(x, 0.0, 1.0) + np.float32(b), 0.0))
    noise = standard_normal(rng, x.shape)
    if channel_corr > 0 and x.ndim >= 3 and x.shape[-1] == 3:
        shared = standard_normal(rng, (math.prod(x.shape[:-2]), x.shape[-2]))
        # GRAY2RGB replicates channels ~3x faster than numpy broadcasting over a 3-long axis.
        shared = cv2.cvtColor(shared, cv2.COLOR_GRAY2RGB).reshape(x.shape)
        own = np.float32(math.sqrt(1.0 - channel_corr**2))
        noise = own * noise + np.float32(channel_corr) * shared
    return x + std * noise


def sharpen(x: np.ndarray, amount: float, sigma: float) -> np.ndarray:
    """In-camera sharpening: an unsharp mask on luma, ``x + amount * (Y - blur_sigma(Y))`` added
    to every channel, per frame of an ``(h, w, 3)`` or ``(T, h, w, 3)`` float image, or of one
    ``(h, w)`` grey frame.

    Surveillance ISPs sharpen after demosaicing and denoising, at the sensor's own pixel grid,
    which is the crop's grid here: edges get a dark/bright halo and the noise is amplified too.
    Luma only (as ISPs do), so the chroma of each pixel is untouched. No clipping here.
    """
    if amount <= 0:
        return x
    if x.ndim == 2:
        return x + _luma_detail(x, x.shape[0], amount, sigma)
    # Colour frames: the colour conversions and the arithmetic run once over the stack seen as one
    # tall image; only the blur runs per frame (its borders are each frame's own).
    stack = np.ascontiguousarray(x if x.ndim == 4 else x[None], dtype=np.float32)
    t, h, w, _ = stack.shape
    y = cv2.cvtColor(stack.reshape(t * h, w, 3), cv2.COLOR_RGB2GRAY)
    out = stack + cv2.cvtColor(_luma_detail(y, h, amount, sigma), cv2.COLOR_GRAY2RGB).reshape(stack.shape)
    return out if x.ndim == 4 else out[0]


def _luma_detail(y: np.ndarray, frame_h: int, amount: float, sigma: float) -> np.ndarray:
    """``amount * (y - blur_sigma(y))`` of a float32 luma image made of frames ``frame_h`` rows tall
    stacked vertically, each blurred with its own borders."""
    blurred = np.empty_like(y)
    for top in range(0, y.shape[0], frame_h):
        cv2.GaussianBlur(y[top:top + frame_h], (0, 0), float(sigma), dst=blurred[top:top + frame_h],
                         borderType=cv2.BORDER_REFLECT101)
    detail = y - blurred
    detail *= np.float32(amount)
    return detail


# ---------------------------------------------------------------------------------------------
# codecs (uint8 RGB)


def _pad(img: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
    h, w = img.shape[:2]
    return cv2.copyMakeBorder(
        img, top, height - h - top, left, width - w - left, cv2.BORDER_REPLICATE
    )


def jpeg_roundtrip(img: np.ndarray, quality: int, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Encode and decode one RGB frame as JPEG (4:2:0, OpenCV/libjpeg quantisation tables).

    ``offset = (dx, dy)`` shifts the frame inside the 16x16 MCU grid, as a crop out of a larger
    compressed picture would be; the padding is cropped away again.
    """
    dx, dy = int(offset[0]), int(offset[1])
    h, w = img.shape[:2]
    padded = _pad(img, dy, dx, h + dy, w + dx) if (dx or dy) else img
    ok, buf = cv2.imencode(".jpg", padded[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("cv2.imencode failed for JPEG")
    out = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    return np.ascontiguousarray(out[dy : dy + h, dx : dx + w])


def _libx264_available() -> bool:
    try:
        import av
    except ImportError:
        return False
    return "libx264" in av.codecs_available and "h264" in av.codecs_available


H264_AVAILABLE = _libx264_available()
_warned_no_h264 = False


def _warn_no_h264() -> None:
    global _warned_no_h264
    if not _warned_no_h264:
        warnings.warn(
            "PyAV with libx264 is not available: H.264 compression falls back to JPEG",
            RuntimeWarning,
            stacklevel=3,
        )
        _warned_no_h264 = True


class _H264Session:
    """An open libx264 encoder and h264 decoder for one canvas size and QP.

    Opening x264 costs ~3 ms, three times the cost of coding a whole 5-frame track, so sessions
    are kept and each track starts with a forced IDR frame: the stream restarts from scratch and
    the output does not depend on earlier tracks (constant QP has no rate-control memory).
    """

    def __init__(self, width: int, height: int, qp: int, deblock: bool) -> None:
        import av

        self._av = av
        enc = av.CodecContext.create("libx264", "w")
        enc.width, enc.height = width, height
        enc.pix_fmt = "yuv420p"
        enc.time_base = Fraction(1, 25)
        options = {
            "preset": "ultrafast",
            "tune": "zerolatency",  # no lookahead, no B-frames: one packet out per frame in
            "qp": str(int(qp)),
            "threads": "1",  # determinism and one core per data worker
            "forced-idr": "1",
        }
        if deblock:
            # ultrafast switches the in-loop deblocking filter off; camera encoders keep it on.
            options["x264-params"] = "deblock=0,0"
        enc.options = options
        enc.open()
        dec = av.CodecContext.create("h264", "r")
        dec.thread_count = 1  # frame threading would delay output by a frame
        dec.open()
        self.enc, self.dec, self.pts = enc, dec, 0
        self.width, self.height = width, height
        # One input frame, refilled for every picture: VideoFrame.from_ndarray costs 3x as much as
        # copying into existing planes, and x264 copies each picture in before encode() returns.
        # Only when the planes have no row padding (true of the usual 64 x 32 canvas).
        frame = av.VideoFrame(width, height, "yuv420p")
        self._frame = frame if self._unpadded(frame) else None

    def _unpadded(self, frame) -> bool:
        w, h = self.width, self.height
        planes = [(p.line_size, p.buffer_size) for p in frame.planes]
        return planes == [(w, w * h), (w // 2, w * h // 4), (w // 2, w * h // 4)]

    def _to_frame(self, yuv: np.ndarray):
        """An encoder input frame holding the I420 picture `yuv` ((3 h / 2, w) uint8)."""
        if self._frame is None:
            return self._av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        h = self.height
        planes = self._frame.planes
        planes[0].update(yuv[:h])
        planes[1].update(yuv[h:h + h // 4])
        planes[2].update(yuv[h + h // 4:])
        return self._frame

    def roundtrip(self, frames: list[np.ndarray]) -> list[np.ndarray] | None:
        av = self._av
        out: list[np.ndarray] = []
        for i, f in enumerate(frames):
            # Colour conversion with OpenCV: PyAV's own reformat builds a new swscale context for
            # every frame, which cost ~13x the whole encode-decode at these sizes.
            vf = self._to_frame(cv2.cvtColor(f, cv2.COLOR_RGB2YUV_I420))
            vf.pts = self.pts
            self.pts += 1
            # Set on every frame: a reused frame must not keep the first frame's forced I type.
            vf.pict_type = av.video.frame.PictureType.I if i == 0 else av.video.frame.PictureType.NONE
            for packet in self.enc.encode(vf):
                out.extend(cv2.cvtColor(self._i420(d), cv2.COLOR_YUV2RGB_I420) for d in self.dec.decode(packet))
        return out if len(out) == len(frames) else None

    def _i420(self, frame) -> np.ndarray:
        """A decoded yuv420p picture as one (3 h / 2, w) I420 array, the layout
        ``VideoFrame.to_ndarray()`` returns; copied plane by plane here, which costs a third of
        to_ndarray's generic path at this size."""
        w, h = self.width, self.height
        out = np.empty((h * 3 // 2, w), np.uint8)
        flat = out.reshape(-1)
        start = 0
        for plane, (pw, ph) in zip(frame.planes, ((w, h), (w // 2, h // 2), (w // 2, h // 2))):
            # Rows of a plane may be padded for alignment: take the first pw bytes of each.
            rows = np.ndarray((ph, pw), np.uint8, buffer=plane, strides=(plane.line_size, 1))
            flat[start:start + pw * ph].reshape(ph, pw)[:] = rows
            start += pw * ph
        return out


_SESSIONS: OrderedDict[tuple, _H264Session] = OrderedDict()
# Sessions are keyed by canvas, QP and deblocking: ~40 in practice, ~0.2 MB each.
_MAX_SESSIONS = 128
H264_CANVAS = (64, 32)


def _session(width: int, height: int, qp: int, deblock: bool) -> _H264Session:
    # Keyed by pid too: a forked data-loader worker must not share its parent's codec state.
    key = (os.getpid(), width, height, qp, deblock)
    s = _SESSIONS.get(key)
    if s is None:
        s = _H264Session(width, height, qp, deblock)
        _SESSIONS[key] = s
        while len(_SESSIONS) > _MAX_SESSIONS:
            _SESSIONS.popitem(last=False)
    else:
        _SESSIONS.move_to_end(key)
    return s


def h264_roundtrip(
    frames: list[np.ndarray],
    qp: int,
    offsets: list[tuple[int, int]] | None = None,
    *,
    deblock: bool = True,
) -> list[np.ndarray]:
    """Encode the frames as one H.264 stream (IDR then P frames, yuv420p, constant QP) and decode.

    Frames may differ in size: each is placed at its ``offsets[t] = (dx, dy)`` on a canvas of whole
    16x16 macroblocks (at least ``H264_CANVAS``, edges replicated), so the block grid falls
    anywhere on the plate, then cropped back. Falls back to JPEG (with a warning) without libx264.
    """
    if not frames:
        return []
    if offsets is None:
        offsets = [(0, 0)] * len(frames)
    if not H264_AVAILABLE:
        _warn_no_h264()
        q = int(np.clip(100 - 1.6 * qp, 5, 95))
        return [jpeg_roundtrip(f, q, o) for f, o in zip(frames, offsets)]
    # One canvas size for every LRLPR-sized track keeps the number of open sessions small;
    # offsets that would not fit are pulled back inside.
    cw = max(H264_CANVAS[0], 16 * math.ceil(max(f.shape[1] for f in frames) / 16))
    ch = max(H264_CANVAS[1], 16 * math.ceil(max(f.shape[0] for f in frames) / 16))
    offsets = [
        (min(max(int(o[0]), 0), cw - f.shape[1]), min(max(int(o[1]), 0), ch - f.shape[0]))
        for f, o in zip(frames, offsets)
    ]
    canvases = [_pad(np.ascontiguousarray(f), o[1], o[0], ch, cw) for f, o in zip(frames, offsets)]
    decoded = _session(cw, ch, int(qp), deblock).roundtrip(canvases)
    if decoded is None:
        # An encoder that held packets back would desynchronise the session: rebuild it.
        _SESSIONS.pop((os.getpid(), cw, ch, int(qp), deblock), None)
        decoded = _session(cw, ch, int(qp), deblock).roundtrip(canvases)
        if decoded is None:
            raise RuntimeError("H.264 round trip lost frames")
    return [
        np.ascontiguousarray(d[o[1] : o[1] + f.shape[0], o[0] : o[0] + f.shape[1]])
        for d, f, o in zip(decoded, frames, offsets)
    ]


# ---------------------------------------------------------------------------------------------
# parameters


@dataclass(frozen=True)
class DegradationParams:
    """Concrete degradations for one track. Sizes in LR pixels; per-frame values are tuples."""

    preset: str = "custom"
    psf: str = "gaussian"
    psf_size: float = 0.0  # Gaussian sigma or defocus disc radius
    motion_kind: str = "none"
    motion_length: tuple[float, ...] = ()  # path length during each frame's exposure
    motion_angle: tuple[float, ...] = ()  # degrees, counter-clockwise from +x, y down
    motion_curvature: float = 0.0  # radians the heading of a "curved" path wanders
    turbulence_amplitude: float = 0.0  # RMS displacement per axis
    turbulence_scale: float = 4.0  # correlation length
    gain: float = 1.0
    gamma: float = 1.0
    contrast: float = 1.0
    color_cast: tuple[float, float, float] = (1.0, 1.0, 1.0)
    low_light: bool = False
    # Flash/IR look: the plate lit far more than its surround (surround_gain < 1 multiplies
    # everything outside the plate before the blur), strong gain, crushed shadows, grey colours.
    flash: bool = False
    surround_gain: float = 1.0
    saturation: float = 1.0
    black_level: float = 0.0
    noise_a: float = 0.0  # variance = noise_a * y + noise_b, y in [0, 1]
    noise_b: float = 0.0
    noise_channel_corr: float = 0.0
    sharpen_amount: float = 0.0  # in-camera unsharp mask on luma, after the noise
    sharpen_sigma: float = 1.0  # its Gaussian radius in LR px
    codec: str = "none"
    jpeg_quality: int = 90  # per-frame JPEG, or the re-save quality of "h264+jpeg"
    h264_qp: int = 28
    h264_deblock: bool = True

    def __post_init__(self) -> None:
        if self.psf not in PSF_KINDS:
            raise ValueError(f"psf must be one of {PSF_KINDS}, got {self.psf!r}")
        if self.motion_kind not in MOTION_KINDS:
            raise ValueError(f"motion_kind must be one of {MOTION_KINDS}, got {self.motion_kind!r}")
        if len(self.motion_length) != len(self.motion_angle):
            raise ValueError("motion_length and motion_angle need one value per frame each")
        if self.motion_kind != "none" and not self.motion_length:
            raise ValueError("motion blur needs per-frame motion_length/motion_angle")
        if self.codec not in CODECS:
            raise ValueError(f"codec must be one of {CODECS}, got {self.codec!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError("jpeg_quality must be in 1..100")
        if not 0 <= self.h264_qp <= 51:
            raise ValueError("h264_qp must be in 0..51")
        if min(self.psf_size, self.turbulence_amplitude, self.noise_a, self.noise_b) < 0:
            raise ValueError("sizes, amplitudes and noise parameters must be >= 0")
        if self.gain <= 0 or self.gamma <= 0 or self.contrast <= 0:
            raise ValueError("gain, gamma and contrast must be > 0")
        if not 0 < self.surround_gain <= 1 or not 0 <= self.saturation <= 1.5:
            raise ValueError("surround_gain must be in (0, 1] and saturation in [0, 1.5]")
        if not 0 <= self.black_level < 0.5:
            raise ValueError("black_level must be in [0, 0.5)")
        if not 0 <= self.noise_channel_corr <= 1:
            raise ValueError("noise_channel_corr must be in [0, 1]")
        if not 0 <= self.sharpen_amount <= 3 or not self.sharpen_sigma > 0:
            raise ValueError("sharpen_amount must be in [0, 3] and sharpen_sigma > 0")


@dataclass(frozen=True)
class DegradationRanges:
    """What one difficulty preset draws from. ``noise_a``/``noise_b`` are drawn log-uniformly."""

    psf_sigma: Range
    defocus_prob: float
    defocus_radius: Range
    motion_prob: float
    motion_length: Range
    curved_prob: float
    curvature: Range
    motion_length_jitter: float  # relative std of a frame's length around the track's
    motion_angle_jitter_deg: float
    turbulence_prob: float
    turbulence_amplitude: Range
    turbulence_scale: Range
    gain: Range
    gamma: Range
    contrast: Range
    color_cast: float  # max relative deviation of a channel gain (daylight look)
    saturation: Range  # daylight look
    flash_prob: float  # share of tracks with the flash/IR look (bright plate, dark surround)
    flash_gain: Range
    flash_contrast: Range
    flash_gamma: Range
    flash_surround_gain: Range
    flash_saturation: Range
    flash_black_level: Range
    flash_cool: Range  # the flash look's blue tint: R gain 1 - v, B gain 1 + v
    low_light_prob: float
    low_light_gain: Range  # multiplies gain
    low_light_noise: Range  # multiplies noise_a and noise_b
    noise_a: Range
    noise_b: Range
    noise_channel_corr: Range
    sharpen_prob: float  # share of tracks whose camera sharpens (most surveillance ISPs do)
    sharpen_amount: Range
    sharpen_sigma: Range
    codec_weights: tuple[tuple[str, float], ...]
    jpeg_quality: Range
    h264_qp: Range
    resave_quality: Range  # JPEG quality of the re-save after H.264
    deblock_prob: float


# The flash/IR look is the same in every preset: presets differ by blur, codec and noise.
_FLASH: dict[str, Range] = dict(
    flash_gain=(1.05, 1.35), flash_contrast=(1.05, 1.3), flash_gamma=(0.9, 1.2),
    flash_surround_gain=(0.12, 0.5), flash_saturation=(0.15, 0.6), flash_black_level=(0.02, 0.12),
    flash_cool=(0.0, 0.2),
)

# In-camera sharpening is a property of the camera, not of the difficulty: the same in every
# preset. Amounts are those of a moderate-to-strong default ISP setting.
_SHARPEN: dict = dict(sharpen_prob=0.75, sharpen_amount=(0.3, 1.5), sharpen_sigma=(0.6, 1.3))

PRESETS: dict[str, DegradationRanges] = {
    "easy": DegradationRanges(
        psf_sigma=(0.25, 0.5), defocus_prob=0.1, defocus_radius=(0.3, 0.7),
        motion_prob=0.4, motion_length=(0.2, 1.0), curved_prob=0.2, curvature=(0.2, 0.6),
        motion_length_jitter=0.15, motion_angle_jitter_deg=5.0,
        turbulence_prob=0.1, turbulence_amplitude=(0.03, 0.1), turbulence_scale=(3.0, 8.0),
        gain=(0.9, 1.15), gamma=(0.9, 1.1), contrast=(0.95, 1.1), color_cast=0.03,
        saturation=(0.7, 1.25), **_FLASH, flash_prob=0.5,
        low_light_prob=0.0, low_light_gain=(0.3, 0.5), low_light_noise=(1.5, 3.0),
        noise_a=(2e-4, 2e-3), noise_b=(1e-5, 2e-4), noise_channel_corr=(0.3, 0.8), **_SHARPEN,
        codec_weights=(("jpeg", 0.45), ("h264", 0.45), ("none", 0.1)),
        jpeg_quality=(50, 80), h264_qp=(18, 25), resave_quality=(85, 95), deblock_prob=0.8,
    ),
    "medium": DegradationRanges(
        psf_sigma=(0.3, 0.6), defocus_prob=0.15, defocus_radius=(0.4, 0.8),
        motion_prob=0.7, motion_length=(0.3, 1.3), curved_prob=0.3, curvature=(0.2, 0.8),
        motion_length_jitter=0.2, motion_angle_jitter_deg=6.0,
        turbulence_prob=0.25, turbulence_amplitude=(0.05, 0.2), turbulence_scale=(3.0, 8.0),
        gain=(0.8, 1.2), gamma=(0.85, 1.15), contrast=(0.85, 1.1), color_cast=0.05,
        saturation=(0.6, 1.25), **_FLASH, flash_prob=0.55,
        low_light_prob=0.04, low_light_gain=(0.6, 0.85), low_light_noise=(1.5, 2.5),
        noise_a=(1e-3, 5e-3), noise_b=(1e-4, 1e-3), noise_channel_corr=(0.3, 0.8), **_SHARPEN,
        codec_weights=(("jpeg", 0.4), ("h264", 0.45), ("h264+jpeg", 0.15)),
        jpeg_quality=(30, 55), h264_qp=(23, 30), resave_quality=(75, 95), deblock_prob=0.7,
    ),
    "hard": DegradationRanges(
        psf_sigma=(0.35, 0.65), defocus_prob=0.2, defocus_radius=(0.5, 0.9),
        motion_prob=0.85, motion_length=(0.4, 1.5), curved_prob=0.35, curvature=(0.2, 0.7),
        motion_length_jitter=0.25, motion_angle_jitter_deg=8.0,
        turbulence_prob=0.35, turbulence_amplitude=(0.1, 0.3), turbulence_scale=(3.0, 8.0),
        gain=(0.75, 1.2), gamma=(0.85, 1.2), contrast=(0.8, 1.05), color_cast=0.07,
        saturation=(0.5, 1.25), **_FLASH, flash_prob=0.6,
        low_light_prob=0.1, low_light_gain=(0.6, 0.85), low_light_noise=(1.3, 2.0),
        noise_a=(1.5e-3, 6e-3), noise_b=(1e-4, 1.5e-3), noise_channel_corr=(0.3, 0.8), **_SHARPEN,
        codec_weights=(("jpeg", 0.35), ("h264", 0.45), ("h264+jpeg", 0.2)),
        # Down to quality 10, the bottom of the 10-50 range issue #3 asks the generator to cover
        # (18 until session 13, so the hard tracks of earlier figures never went below 18).
        jpeg_quality=(10, 40), h264_qp=(26, 33), resave_quality=(70, 90), deblock_prob=0.6,
    ),
}


def _u(rng: np.random.Generator, r: Range) -> float:
    return float(uniform(rng, r[0], r[1])) if r[1] > r[0] else float(r[0])


def _log_u(rng: np.random.Generator, r: Range) -> float:
    if r[0] <= 0 or r[1] <= r[0]:
        return float(r[0])
    return float(math.exp(uniform(rng, math.log(r[0]), math.log(r[1]))))


def _ar1(rng: np.random.Generator, n: int, std: float, rho: float = 0.7) -> np.ndarray:
    """Stationary AR(1) sequence: consecutive frames of one track blur alike."""
    out = np.empty(n)
    out[0] = rng.normal(0.0, std)
    for i in range(1, n):
        out[i] = rho * out[i - 1] + math.sqrt(1 - rho * rho) * rng.normal(0.0, std)
    return out


def _motion_angle(rng: np.random.Generator) -> float:
    # Plates move mostly sideways or diagonally across a roadside camera's view.
    u = rng.random()
    if u < 0.55:
        return float(rng.normal(0.0, 8.0))
    if u < 0.9:
        return float(rng.choice((-45.0, 45.0)) + rng.normal(0.0, 8.0))
    return float(uniform(rng, -90.0, 90.0))


@functools.lru_cache(maxsize=64)
def _codec_cdf(codec_weights: tuple[tuple[str, float], ...]) -> tuple[tuple[str, ...], tuple[float, ...]]:
    weights = np.array([w for _, w in codec_weights], dtype=np.float64)
    return tuple(c for c, _ in codec_weights), choice_cdf(weights / weights.sum())


def sample_degradation(
    rng: np.random.Generator,
    preset: str = "mix",
    num_frames: int = 5,
    *,
    codec: str | None = None,
) -> DegradationParams:
    """Draw one track's degradations from a preset ("easy", "medium", "hard", or "mix": one of
    the three uniformly per track). ``codec`` forces the codec (e.g. "jpeg" when timing matters)."""
    if preset == "mix":
        preset = PRESET_NAMES[int(rng.integers(len(PRESET_NAMES)))]
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; use one of {PRESET_NAMES + ('mix',)}")
    r = PRESETS[preset]

    if rng.random() < r.defocus_prob:
        psf, psf_size = "defocus", _u(rng, r.defocus_radius)
    else:
        psf, psf_size = "gaussian", _u(rng, r.psf_sigma)

    motion_kind, lengths, angles, curvature = "none", (), (), 0.0
    if rng.random() < r.motion_prob:
        motion_kind = "curved" if rng.random() < r.curved_prob else "linear"
        base = _u(rng, r.motion_length)
        jitter = np.exp(_ar1(rng, num_frames, r.motion_length_jitter))
        lengths = tuple(float(v) for v in base * jitter)
        base_angle = _motion_angle(rng)
        wobble = _ar1(rng, num_frames, r.motion_angle_jitter_deg)
        angles = tuple(float(v) for v in base_angle + wobble)
        curvature = _u(rng, r.curvature) if motion_kind == "curved" else 0.0

    turb_amp, turb_scale = 0.0, 4.0
    if rng.random() < r.turbulence_prob:
        turb_amp, turb_scale = _u(rng, r.turbulence_amplitude), _u(rng, r.turbulence_scale)

    flash = bool(rng.random() < r.flash_prob)
    cast = 1.0 + rng.uniform(-r.color_cast, r.color_cast, size=3)
    if flash:
        gain, contrast, gamma = _u(rng, r.flash_gain), _u(rng, r.flash_contrast), _u(rng, r.flash_gamma)
        surround, saturation = _u(rng, r.flash_surround_gain), _u(rng, r.flash_saturation)
        black_level = _u(rng, r.flash_black_level)
        cool = _u(rng, r.flash_cool)
        cast = cast * np.array([1.0 - cool, 1.0, 1.0 + cool])
    else:
        gain, contrast, gamma = _u(rng, r.gain), _u(rng, r.contrast), _u(rng, r.gamma)
        surround, saturation, black_level = 1.0, _u(rng, r.saturation), 0.0
    cast = tuple(float(c) for c in cast / cast.mean())
    noise_a, noise_b = _log_u(rng, r.noise_a), _log_u(rng, r.noise_b)
    low_light = bool(not flash and rng.random() < r.low_light_prob)
    if low_light:
        gain *= _u(rng, r.low_light_gain)
        boost = _u(rng, r.low_light_noise)
        noise_a, noise_b = noise_a * boost, noise_b * boost

    if codec is None:
        names, cdf = _codec_cdf(r.codec_weights)
        codec = names[choice(rng, cdf)]
    elif codec not in CODECS:
        raise ValueError(f"codec must be one of {CODECS}, got {codec!r}")
    quality_range = r.resave_quality if codec == "h264+jpeg" else r.jpeg_quality
    noise_channel_corr = _u(rng, r.noise_channel_corr)
    jpeg_quality = int(round(_u(rng, quality_range)))
    h264_qp = int(round(_u(rng, r.h264_qp)))
    h264_deblock = bool(rng.random() < r.deblock_prob)
    sharpen_amount, sharpen_sigma = 0.0, 1.0
    if rng.random() < r.sharpen_prob:
        sharpen_amount, sharpen_sigma = _u(rng, r.sharpen_amount), _u(rng, r.sharpen_sigma)

    return DegradationParams(
        preset=preset,
        psf=psf,
        psf_size=psf_size,
        motion_kind=motion_kind,
        motion_length=lengths,
        motion_angle=angles,
        motion_curvature=curvature,
        turbulence_amplitude=turb_amp,
        turbulence_scale=turb_scale,
        gain=gain,
        gamma=gamma,
        contrast=contrast,
        color_cast=cast,
        low_light=low_light,
        flash=flash,
        surround_gain=surround,
        saturation=saturation,
        black_level=black_level,
        noise_a=noise_a,
        noise_b=noise_b,
        noise_channel_corr=noise_channel_corr,
        sharpen_amount=sharpen_amount,
        sharpen_sigma=sharpen_sigma,
        codec=codec,
        jpeg_quality=jpeg_quality,
        h264_qp=h264_qp,
        h264_deblock=h264_deblock,
    )


# ---------------------------------------------------------------------------------------------
# the whole chain


def _motion_path(
    params: DegradationParams, t: int, factor: float, rng: np.random.Generator
) -> np.ndarray:
    if params.motion_kind == "none":
        return np.zeros((1, 2))
    length = params.motion_length[t] * factor
    if params.motion_kind == "curved":
        return curved_motion_path(rng, length, params.motion_angle[t], params.motion_curvature)
    return linear_motion_path(length, params.motion_angle[t])


def frame_kernel(
    params: DegradationParams, t: int, factor: float, rng: np.random.Generator
) -> np.ndarray:
    """Full blur kernel of frame t on a grid ``factor`` x finer than LR (motion path drawn with
    the PSF). :func:`degrade_track` applies the same blur faster (:func:`track_motion_kernels`)."""
    return blur_kernel(_motion_path(params, t, factor, rng), params.psf, params.psf_size * factor)


def track_motion_kernels(
    params: DegradationParams, num_frames: int, factor: float, rng: np.random.Generator
) -> list[np.ndarray] | None:
    """Motion-only kernels (drawn with the minimal Gaussian) for every frame, built in one
    vectorised pass: per-frame numpy calls on 48-point paths cost more than the filtering."""
    if params.motion_kind == "none":
        return None
    n = num_frames
    lengths = np.asarray(params.motion_length[:n], dtype=np.float64) * factor
    angles = np.asarray(params.motion_angle[:n], dtype=np.float64)
    if params.motion_kind == "linear":
        pts = _linear_paths(lengths, angles)
    else:
        pts = _curved_paths(rng, lengths, angles, params.motion_curvature)
    sigma = MIN_KERNEL_SIGMA
    reach = np.abs(pts).reshape(n, -1).max(axis=1)
    radii = np.ceil(reach + 3.0 * sigma).astype(int) + 1
    big = int(radii.max())
    offsets = np.arange(-big, big + 1, dtype=np.float64)
    gx = np.exp(-0.5 * ((offsets - pts[..., 0:1]) / sigma) ** 2)  # (n, m, K)
    gy = np.exp(-0.5 * ((offsets - pts[..., 1:2]) / sigma) ** 2)
    k = np.matmul(gy.transpose(0, 2, 1), gx).astype(np.float32)  # (n, K, K), rows are y
    k /= k.reshape(n, -1).sum(axis=1)[:, None, None]
    # Each frame keeps only its own support: filter2D's cost grows with the kernel area.
    return [k[t, big - r : big + r + 1, big - r : big + r + 1] for t, r in enumerate(radii)]


def blur_frame(
    x: np.ndarray,
    params: DegradationParams,
    t: int,
    factor: float,
    rng: np.random.Generator,
    motion_kernel: np.ndarray | None = None,
) -> np.ndarray:
    """Frame t's exposure blur (motion path and PSF) on a grid ``factor`` x finer than LR.

    A Gaussian PSF goes through the separable GaussianBlur and only the short motion kernel
    through filter2D: one combined kernel is large enough to push filter2D onto its slow DFT
    path. The split is exact: the motion kernel is drawn with a minimal Gaussian, which the PSF
    pass leaves out (variances add).
    """
    size = params.psf_size * factor
    if params.psf == "defocus":
        if params.motion_kind == "none":
            kernel = _still_defocus_kernel(size)  # every frame of the track has this one
        else:
            kernel = blur_kernel(_motion_path(params, t, factor, rng), "defocus", size)
        return apply_kernel(x, kernel)
    if motion_kernel is None and params.motion_kind != "none":
        motion_kernel = blur_kernel(_motion_path(params, t, factor, rng), "gaussian", 0.0)
    rest = size * size - (MIN_KERNEL_SIGMA**2 if motion_kernel is not None else 0.0)
    if rest > 1e-6:
        x = cv2.GaussianBlur(x, (0, 0), math.sqrt(rest), borderType=cv2.BORDER_REFLECT101)
    if motion_kernel is not None:
        x = apply_kernel(x, motion_kernel)
    return x


@functools.lru_cache(maxsize=16)
def _still_defocus_kernel(size: float) -> np.ndarray:
    """``blur_kernel`` of a still camera (no motion path) with a defocus disc of radius ``size``,
    kept read-only: building it costs several times the filtering."""
    k = blur_kernel(np.zeros((1, 2)), "defocus", size)
    k.flags.writeable = False
    return k


def compress_track(
    frames: list[np.ndarray], params: DegradationParams, rng: np.random.Generator
) -> list[np.ndarray]:
    """Apply the track's codec. Block-grid offsets are random (a crop out of a bigger picture)
    and drift a little between frames as the crop follows the plate."""
    if params.codec == "none":
        return frames
    bx, by = rng.integers(0, 16, size=2).tolist()
    # One draw for all frames: numpy keeps the 32-bit draws' buffer in the bit generator, so this
    # is the same stream as one size-2 draw per frame, at a fifth of the call overhead.
    drift = rng.integers(-2, 3, size=(len(frames), 2)).tolist()
    offsets = [(min(max(bx + dx, 0), 15), min(max(by + dy, 0), 15)) for dx, dy in drift]
    if params.codec == "jpeg":
        return [jpeg_roundtrip(f, params.jpeg_quality, o) for f, o in zip(frames, offsets)]
    out = h264_roundtrip(frames, params.h264_qp, offsets, deblock=params.h264_deblock)
    if params.codec == "h264+jpeg":
        # Scenario B stores frames as JPEG after they were cut out of the decoded video.
        out = [jpeg_roundtrip(f, params.jpeg_quality) for f in out]
    return out


def degrade_track(
    frames_hi: list[np.ndarray],
    params: DegradationParams,
    rng: np.random.Generator,
    *,
    factor: int = 2,
    lr_sizes: list[tuple[int, int]] | None = None,
    plate_corners: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Turn fine-grid frames (``camera.render_frames(..., supersample=factor, downsample=False)``)
    into uint8 RGB LR frames of ``lr_sizes`` (default: each fine size divided by ``factor``).

    ``plate_corners`` (``(T, 4, 2)`` in LR pixels, e.g. ``Trajectory.corners``) lets the flash
    look dim the surround and not the plate; without it ``surround_gain`` is ignored."""
    n = len(frames_hi)
    if params.motion_kind != "none" and len(params.motion_length) < n:
        raise ValueError(f"params carry motion for {len(params.motion_length)} frames, got {n}")
    if lr_sizes is None:
        lr_sizes = []
        for f in frames_hi:
            h, w = f.shape[:2]
            if h % factor or w % factor:
                raise ValueError(f"fine frame {w}x{h} is not a multiple of factor {factor}")
            lr_sizes.append((w // factor, h // factor))
    kernels = None
    if params.psf == "gaussian":
        kernels = track_motion_kernels(params, n, factor, rng)
    lr = []
    for t, frame in enumerate(frames_hi):
        x = to_float(frame)
        if params.surround_gain != 1.0 and plate_corners is not None:
            # LR pixel centre c sits at fine coordinate factor * c + (factor - 1) / 2.
            fine_corners = np.asarray(plate_corners[t], np.float64) * factor + (factor - 1) / 2
            mask = plate_mask((x.shape[1], x.shape[0]), fine_corners)
            x = apply_surround_gain(x, mask, params.surround_gain)
        x = turbulence_warp(
            x, params.turbulence_amplitude * factor, params.turbulence_scale * factor, rng
        )
        x = blur_frame(x, params, t, factor, rng, None if kernels is None else kernels[t])
        lr.append(area_downsample(x, lr_sizes[t]))
    # Exposure and noise are per pixel, but the contrast pivot is the mean of what they are given:
    # one pass over the whole track gives every frame the same tone curve. Frames of different sizes
    # go in as one row of all their pixels (a frame on its own would get its own pivot).
    same = all(f.shape == lr[0].shape for f in lr)
    x = np.array(lr) if same else np.concatenate([f.reshape(-1, f.shape[-1]) for f in lr])[None]
    x = apply_exposure(
        x, gain=params.gain, gamma=params.gamma, contrast=params.contrast,
        color_cast=params.color_cast, saturation=params.saturation,
        black_level=params.black_level,
    )
    x = sensor_noise(x, params.noise_a, params.noise_b, rng, params.noise_channel_corr)
    if not same:
        ends = np.cumsum([f.shape[0] * f.shape[1] for f in lr])[:-1]
        x = [part.reshape(f.shape) for part, f in zip(np.split(x[0], ends), lr)]
    # Sharpening is spatial: on the stack (each frame its own borders) or frame by frame.
    out = to_uint8(sharpen(x, params.sharpen_amount, params.sharpen_sigma)) if same else [
        to_uint8(sharpen(f, params.sharpen_amount, params.sharpen_sigma)) for f in x]
    return compress_track(list(out), params, rng)


def make_lr_track(
    scene_image: np.ndarray,
    traj: Trajectory,
    params: DegradationParams,
    rng: np.random.Generator,
    *,
    supersample: int = 2,
) -> list[np.ndarray]:
    """Camera + degradations in one call: scene image and trajectory to uint8 RGB LR frames."""
    fine = render_frames(scene_image, traj, supersample=supersample, downsample=False)
    return degrade_track(
        fine, params, rng, factor=supersample, lr_sizes=list(traj.sizes), plate_corners=traj.corners
    )

