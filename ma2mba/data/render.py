"""ShapeWorld pixels: frames at any size and aspect ratio, the model's letterboxed input, and mp4 files.

Rendering is deterministic: the same video, time and size give the same bytes on any machine.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..video.vision import letterbox
from .world import COLOR_RGB, NOISE_CELLS, OUTLINES, Scene, ShapeWorldError, Video

# Width:height of the frames videos are rendered at for training (letterboxed into the model's square input).
ASPECTS = ((1, 1), (16, 9), (4, 3), (9, 16), (3, 4))
UPLOAD_HEIGHT = 360  # "upload-like" frames are rendered at 360p and downscaled, as an upload travels

_RGB_ARRAYS = {name: np.array(rgb, np.uint8) for name, rgb in COLOR_RGB.items()}


def render(video: Video, t: float, width: int = 64, height: int = 64) -> np.ndarray:
    """The frame at time t, (height, width, 3) uint8 RGB."""
    return render_many(video, [t], width, height)[0]


def render_many(video: Video, times, width: int = 64, height: int = 64) -> np.ndarray:
    """Frames at each of `times`, (N, height, width, 3) uint8."""
    times = list(times)
    _check_size(width, height)
    out = np.empty((len(times), height, width, 3), np.uint8)
    for frame, t in zip(out, times):
        if not 0 <= t < video.duration:
            raise ShapeWorldError(
                f"Time {t} s is outside this {video.duration} s video; use 0 <= t < {video.duration}."
            )
        frame[...] = _background(video.scene_at(t), width, height)
        _paint(video, frame, t)
    return out


def frames(video: Video, fps: float = 1.0, width: int = 64, height: int = 64, batch: int = 64):
    """Yield (t, frame) for t = k / fps over the whole video."""
    times = frame_times(video.duration, fps)
    for i in range(0, len(times), batch):
        chunk = times[i : i + batch]
        yield from zip(chunk, render_many(video, chunk, width, height))


def render_letterboxed(video: Video, times, size: int, aspect=(1, 1), upload_like: bool = False) -> np.ndarray:
    """Frames at `times` as the model sees them: (N, size, size, 3) uint8, letterboxed.

    Direct rendering at the letterboxed size gives the same geometry as rendering large and
    shrinking; `upload_like` does the latter (softer edges), like a 360p upload.
    """
    w, h = aspect
    if upload_like:  # the shorter side is UPLOAD_HEIGHT pixels
        scale = UPLOAD_HEIGHT / min(w, h)
        big = render_many(video, times, round(w * scale), round(h * scale))
        return np.stack([letterbox(f, size) for f in big])
    scale = size / max(w, h)
    width, height = max(1, round(w * scale)), max(1, round(h * scale))
    inner = render_many(video, times, width, height)
    out = np.zeros((len(inner), size, size, 3), np.uint8)
    top, left = (size - height) // 2, (size - width) // 2
    out[:, top : top + height, left : left + width] = inner
    return out


def frame_times(duration: float, fps: float) -> list[float]:
    """k / fps for every frame k with k / fps < duration."""
    rate = _rate(fps)
    n = math.ceil(duration * rate)
    return [float(k / rate) for k in range(n)]


@functools.lru_cache(maxsize=1024)
def shape_mask(shape: str, px: int) -> np.ndarray:
    """(px, px) bool mask of a shape whose bounding box is px pixels wide, sampled at pixel centres."""
    c = (np.arange(px) + 0.5) / px - 0.5
    y, x = c[:, None], c[None, :]
    mask = x * x + y * y <= 0.25 if shape == "circle" else _inside_polygon(x, y, OUTLINES[shape])
    mask.setflags(write=False)
    return mask


def _inside_polygon(x, y, points):
    """Even-odd rule, vectorised over the arrays x, y."""
    inside = np.zeros(np.broadcast(x, y).shape, bool)
    for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1]):
        if y0 == y1:
            continue
        crosses = (y0 > y) != (y1 > y)
        x_cross = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < x_cross)
    return inside


@functools.lru_cache(maxsize=16)
def _background(scene: Scene, width: int, height: int) -> np.ndarray:
    """A scene's background at one size (read-only: frames copy it). Frames come in time order, so a
    few entries serve a whole video."""
    image = np.empty((height, width, 3), np.uint8)
    image[...] = scene.color
    if scene.noise:
        # One texture per scene, stretched to the frame: the same pattern at every resolution.
        rng = np.random.Generator(np.random.PCG64(scene.noise_seed))
        cells = rng.integers(-scene.noise, scene.noise + 1, (NOISE_CELLS, NOISE_CELLS, 1))
        rows = np.arange(height) * NOISE_CELLS // height
        cols = np.arange(width) * NOISE_CELLS // width
        image = np.clip(image + cells[rows][:, cols], 0, 255).astype(np.uint8)
    image.setflags(write=False)
    return image


def _paint(video: Video, frame: np.ndarray, t: float) -> None:
    height, width = frame.shape[:2]
    short = min(width, height)
    for a in video.visible(t):
        px = max(1, int(a.size * short + 0.5))
        mask = shape_mask(a.shape, px)
        x, y = a.position(t)
        left = math.floor(x * width - px / 2 + 0.5)
        top = math.floor(y * height - px / 2 + 0.5)
        # Rounding may push the box a pixel past the edge: crop the mask to the frame.
        l, r = max(left, 0), min(left + px, width)
        u, d = max(top, 0), min(top + px, height)
        np.copyto(frame[u:d, l:r], _RGB_ARRAYS[a.color], where=mask[u - top : d - top, l - left : r - left, None])


def _check_size(width, height):
    whole = all(isinstance(v, (int, np.integer)) for v in (width, height))
    if not whole or width <= 0 or height <= 0:
        raise ShapeWorldError(f"Frame size must be positive whole pixels, got {width}x{height}.")


def _rate(fps) -> Fraction:
    rate = Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise ShapeWorldError(f"fps must be positive, got {fps}.")
    return rate


_CODECS = {  # name -> (encoder, options): good quality, fast enough to write long videos
    "h264": ("libx264", {"crf": "20", "preset": "veryfast"}),
    "vp9": ("libvpx-vp9", {"crf": "30", "b": "0", "deadline": "realtime", "cpu-used": "8"}),
}


def write_mp4(video: Video, path, fps: float = 30, width: int = 640, height: int = 360, codec: str = "h264") -> Path:
    """Encode the video as yuv420p H.264 (or VP9, e.g. into .webm); frame k of the file is render(k / fps)."""
    import av  # only needed for files

    if codec not in _CODECS:
        raise ShapeWorldError(f"Unknown codec {codec!r}; use one of {sorted(_CODECS)}.")
    _check_size(width, height)
    if width % 2 or height % 2:
        raise ShapeWorldError(f"yuv420p needs an even frame size, got {width}x{height}.")
    rate = _rate(fps)
    path = Path(path)
    encoder, options = _CODECS[codec]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=rate, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for _, image in frames(video, rate, width, height):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path
