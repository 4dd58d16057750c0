"""Probe a video file and sample its frames by timestamp (1 FPS by default).

    for t, frame in sample_frames("talk.mp4", fps=1.0, max_side=448):
        ...  # t: seconds from the first frame; frame: (H, W, 3) uint8 RGB

Frames are picked by presentation time, not by index: the frame yielded for t is the last one
shown at or before t, so variable-frame-rate files and browser recordings (webm with no duration
in the header) come out right. Two backends decode: PyAV (the default, see benchmarks/decode.py)
and decord. When one fails the other takes over from the last time yielded.

decord can loop forever or keep growing in memory on files whose header over-reports the frame
count (dmlc/decord#269, #373): it runs in a child process that is killed when a frame takes
longer than DECORD_FRAME_TIMEOUT_S or its memory passes DECORD_MAX_RSS_BYTES.

Every problem a user can cause raises VideoError with a sentence saying what to do.
"""

import bisect
import contextlib
import logging
import math
import os
import re
import select
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import av
import numpy as np
import psutil

log = logging.getLogger(__name__)

MAX_SECONDS = 3 * 3600  # default duration limit (sample_frames/probe max_seconds=)
MAX_BYTES = 4 * 1024**3  # default file-size limit (max_bytes=)
BACKENDS = ("pyav", "decord")  # the first is the default; the other is the fallback
DECORD_OPEN_TIMEOUT_S = 120.0  # decord reads every packet of the file before the first frame
DECORD_FRAME_TIMEOUT_S = 30.0  # one 1 FPS sample: at most one keyframe interval of decoding
DECORD_MAX_RSS_BYTES = 2 * 1024**3

# Only container formats people upload videos in. This keeps FFmpeg from following playlists
# (hls, concat) or URLs that a crafted upload could point at local files or the network.
_FORMATS = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,flv,mpegts,mpeg,ogg,asf,gif"
_OPEN_OPTIONS = {"format_whitelist": _FORMATS, "protocol_whitelist": "file"}
# First bytes of containers we accept, to tell a damaged video from a file that never was one.
_SIGNATURES = (
    (4, b"ftyp"),
    (4, b"moov"),
    (4, b"mdat"),
    (4, b"wide"),
    (4, b"free"),
    (0, b"\x1aE\xdf\xa3"),
    (0, b"RIFF"),
    (0, b"FLV"),
    (0, b"OggS"),
    (0, b"GIF8"),
)
_TIME_EPS = 1e-4  # seconds; timestamps from decord are float32
_TRUNCATION_SLACK_S = 2.0  # how far the frames may end before the header's duration


class VideoError(Exception):
    """A video that cannot be used; the message tells the person what to do about it."""


class _DecodeError(VideoError):
    """A backend failed on this file; the other backend may still succeed."""


@dataclass(frozen=True)
class VideoInfo:
    duration: float | None  # seconds; None when the header does not say (live webm)
    fps: float | None  # average frame rate
    width: int  # as displayed, i.e. after `rotation`
    height: int
    rotation: int  # 0, 90, 180 or 270: counter-clockwise turn that shows the frames upright
    codec: str
    frame_count: int | None  # from the header, None when unknown; may be wrong
    file_bytes: int


def probe(path, *, max_seconds=MAX_SECONDS, max_bytes=MAX_BYTES) -> VideoInfo:
    """Read the header and the first frame of a video; raise VideoError if it cannot be used or
    is over a limit."""
    path = os.fspath(path)
    name = os.path.basename(path)
    file_bytes = _check_file(path, max_bytes)
    with _open(path) as container:
        stream = _video_stream(container, name)
        first = _first_frame(container, stream, name)
        rotation = round(first.rotation / 90) % 4 * 90  # phones store portrait video sideways
        width, height = (first.height, first.width) if rotation % 180 else (first.width, first.height)
        if stream.duration is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / av.time_base
        else:
            duration = None
        rate = stream.average_rate or stream.guessed_rate
        info = VideoInfo(
            duration=duration,
            fps=float(rate) if rate else None,
            width=width,
            height=height,
            rotation=rotation,
            codec=stream.codec_context.name,
            frame_count=stream.frames or None,
            file_bytes=file_bytes,
        )
    if max_seconds is not None and duration is not None and duration > max_seconds:
        raise VideoError(
            f"'{name}' is {_clock(duration)} long, above the {_clock(max_seconds)} "
            f"limit. Trim it to {_clock(max_seconds)} or less and try again."
        )
    return info


def sample_frames(path, fps=1.0, *, max_seconds=MAX_SECONDS, max_bytes=MAX_BYTES, max_side=None, backend=None):
    """An iterator of (t, frame) for t = 0, 1/fps, 2/fps, ... while the video lasts.

    frame: (H, W, 3) uint8 RGB, the last frame shown at or before t; with max_side it is scaled
    down on decode so that its longer side is at most max_side pixels.
    max_seconds / max_bytes: limits (None: no limit). A video whose header says it is longer
    raises VideoError before decoding; one whose header does not say stops at max_seconds.
    backend: "pyav" or "decord" to use only that one; None tries BACKENDS in order.
    Problems found in the header raise here, the rest while iterating. Closing the iterator
    early (.close(), or dropping it) releases the file and any child process.
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    path = os.fspath(path)
    info = probe(path, max_seconds=max_seconds, max_bytes=max_bytes)
    return _sample(path, fps, max_seconds, max_side, [backend] if backend else BACKENDS, info)


def frame_source(path, fps=1.0, **kwargs):
    """For StreamingSession(frame_source=...): a function (after, until) -> the frames with
    after < t <= until, decoded again from `path` (rewinds past the session's cached frames).
    kwargs go to sample_frames, so the frames match those first ingested."""

    def frames(after, until):
        decoded = sample_frames(path, fps, **kwargs)
        try:
            for t, frame in decoded:
                if t > until:
                    break
                if t > after:
                    yield t, frame
        finally:
            decoded.close()

    return frames


def _sample(path, fps, max_seconds, max_side, backends, info):
    name = os.path.basename(path)
    last_t = -1.0
    failures = []
    for backend_name in backends:
        frames = _BACKEND_FRAMES[backend_name](path, name, fps, max_seconds, max_side, info)
        try:
            for t, frame in frames:
                if t > last_t:  # after a fallback, skip what the failed backend already gave
                    last_t = t
                    yield t, frame
            break
        except _DecodeError as error:
            log.warning("%s failed on %s: %s", backend_name, path, error)
            failures.append(error)
        finally:
            frames.close()
    else:
        raise failures[0]
    end = last_t + 1 / fps
    stopped_at_limit = max_seconds is not None and end >= max_seconds
    if not stopped_at_limit and info.duration is not None and end < info.duration - _TRUNCATION_SLACK_S:
        raise VideoError(
            f"'{name}' stops at {end:.1f} s although its header says it lasts "
            f"{info.duration:.1f} s: the file is truncated, probably by an upload or "
            "download that did not finish. Upload the complete file."
        )


def _check_file(path, max_bytes):
    name = os.path.basename(path)
    if not os.path.exists(path):
        raise VideoError(f"There is no file at '{path}'. Check the path and try again.")
    if not os.path.isfile(path):
        raise VideoError(f"'{path}' is a folder, not a video file. Choose a video file.")
    file_bytes = os.path.getsize(path)
    if file_bytes == 0:
        raise VideoError(f"'{name}' is empty (0 bytes); the upload or copy probably failed. Upload the file again.")
    if max_bytes is not None and file_bytes > max_bytes:
        raise VideoError(
            f"'{name}' is {_size(file_bytes)}, above the {_size(max_bytes)} limit. "
            "Compress or trim it (for example re-encode it at 720p) and try again."
        )
    return file_bytes


def _open(path):
    name = os.path.basename(path)
    try:
        container = av.open(path, container_options=_OPEN_OPTIONS)
    except av.error.FFmpegError as error:
        if _looks_like_video(path):
            raise VideoError(
                f"'{name}' looks like a video but FFmpeg cannot open it "
                f"({error.strerror}). The file is probably truncated or corrupt; "
                "export or upload it again."
            ) from error
        raise VideoError(
            f"'{name}' is not a video file FFmpeg can read ({error.strerror}). Upload a video such as MP4, WebM or MOV."
        ) from error
    if not container.streams:  # e.g. an MP4 cut before its index (moov box), which is at the end
        container.close()
        raise VideoError(
            f"'{name}' contains no video or audio that FFmpeg can find. The file is "
            "probably truncated or corrupt, e.g. an upload that did not finish; "
            "upload it again."
        )
    return container


def _looks_like_video(path):
    with open(path, "rb") as f:
        head = f.read(12)
    return any(head[at : at + len(magic)] == magic for at, magic in _SIGNATURES)


def _video_stream(container, name):
    """The first real video stream (cover art in a music file does not count)."""
    videos = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not videos:
        kinds = sorted({s.type for s in container.streams})
        what = "only audio" if kinds == ["audio"] else "only " + " and ".join(kinds)
        raise VideoError(f"'{name}' has no video stream (it contains {what}). Upload a file that has video in it.")
    stream = videos[0]
    if stream.codec_context is None:  # FFmpeg has no decoder for this codec
        raise VideoError(
            f"'{name}' uses a video codec that this FFmpeg cannot decode. Re-encode "
            "it to H.264 (e.g. ffmpeg -i IN -c:v libx264 OUT.mp4) and try again."
        )
    return stream


def _first_frame(container, stream, name):
    try:
        frame = next(container.decode(stream), None)
    except av.error.FFmpegError as error:
        raise VideoError(
            f"The first frame of '{name}' cannot be decoded ({error.strerror}). The "
            "file is probably corrupt; export or upload it again."
        ) from error
    if frame is None:
        raise VideoError(
            f"'{name}' has a video stream but no frame in it could be decoded. The "
            "file is probably damaged or was cut off right after it started; "
            "export it again."
        )
    return frame


def _output_size(width, height, max_side):
    """(width, height) scaled so the longer side is at most max_side; never scaled up."""
    if max_side is None or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _upright(rgb, rotation):
    """Turn a decoded (H, W, 3) frame the way the file says it is to be shown."""
    return np.ascontiguousarray(np.rot90(rgb, k=rotation // 90)) if rotation else rgb


def _pick_by_time(timed, fps, max_seconds):
    """Yield (t, item) for t = k / fps, k = 0, 1, ...: the last item shown at or before t.

    timed: (start, end, item) with increasing starts, seconds from the first frame; an item is on
    screen from its start to the next item's start (or its own end, for the last one). Before
    the first frame's start (t = 0 when the first frame is late) the first frame is used.
    """
    k, shown, end = 0, None, 0.0
    for start, stop, item in timed:
        while shown is not None and k / fps < start - _TIME_EPS:
            if max_seconds is not None and k / fps >= max_seconds:
                return
            yield k / fps, shown
            k += 1
        shown, end = item, max(end, stop)
    while shown is not None and k / fps < end - _TIME_EPS:
        if max_seconds is not None and k / fps >= max_seconds:
            return
        yield k / fps, shown
        k += 1


# --- PyAV ----------------------------------------------------------------------------------


def _pyav_frames(path, name, fps, max_seconds, max_side, info):
    keyframes = _keyframes(path, name)
    with _open(path) as container:
        stream = _video_stream(container, name)
        stream.thread_type = "AUTO"  # frame + slice threads; see benchmarks/decode.py
        timed = _pyav_timed(container, stream, name, info, fps, keyframes)
        for t, frame in _pick_by_time(timed, fps, max_seconds):
            width, height = _output_size(frame.width, frame.height, max_side)
            rgb = frame.to_ndarray(format="rgb24", width=width, height=height)  # (H, W, 3)
            yield t, _upright(rgb, info.rotation)


def _keyframes(path, name):
    """The keyframes' pts, sorted, read from the packets without decoding them (fast)."""
    with _open(path) as container:
        stream = _video_stream(container, name)
        if stream.start_time is None:  # no timestamps to seek by
            return []
        try:
            return sorted(p.pts for p in container.demux(stream) if p.is_keyframe and p.pts is not None)
        except av.error.FFmpegError:
            return []  # damaged: decode every frame and let decoding say where it breaks


def _pyav_timed(container, stream, name, info, fps, keyframes):
    """Decoded frames as (start, end, frame), seconds from the stream's start.

    Frames no sample can show are not decoded: when a keyframe comes after this frame but at or
    before the next sample time, decoding jumps to it. (The index in an MP4 gives decoding
    times, not presentation times, hence `keyframes`, the keyframes' pts; empty: no jumps.)
    """
    default_duration = 1 / info.fps if info.fps else 1 / 30
    origin = stream.start_time
    key_times = [float((pts - origin) * stream.time_base) for pts in keyframes]
    jumped = -1  # index of the last keyframe jumped to: jumps only go forward
    seen = None  # start of the last frame yielded
    try:
        for frame in container.decode(stream):
            if frame.pts is None:  # raw streams carry no timestamps: assume a constant rate
                start = 0.0 if seen is None else seen + default_duration
            else:
                origin = frame.pts if origin is None else origin
                start = float((frame.pts - origin) * frame.time_base)
            if seen is not None and start <= seen + _TIME_EPS:
                continue  # decoded before a jump took effect, or a broken timestamp
            seen = start
            duration = float(frame.duration * frame.time_base) if frame.duration else default_duration
            yield start, start + duration, frame
            next_sample = math.ceil((start - _TIME_EPS) * fps) / fps
            key = bisect.bisect_right(key_times, next_sample + _TIME_EPS) - 1
            if key > jumped and key_times[key] > start + _TIME_EPS:
                container.seek(keyframes[key], stream=stream)  # to the keyframe at or before
                jumped = key
    except av.error.FFmpegError as error:
        last = 0.0 if seen is None else seen
        raise _DecodeError(
            f"Decoding '{name}' failed after {last:.1f} s ({error.strerror}). "
            "The file is probably truncated or corrupt; export or upload it "
            "again."
        ) from error


# --- decord, in a child process ----------------------------------------------------------------


def _decord_frames(path, name, fps, max_seconds, max_side, info):
    # decord turns frames upright itself, but scrambles those turned by 90 degrees (decord 0.6.0).
    if info.rotation % 180:
        raise _DecodeError(
            f"decord cannot decode '{name}': it returns scrambled frames for video "
            "stored turned by 90 degrees, as phones record portrait video."
        )
    width, height = _output_size(info.width, info.height, max_side)
    shape = (height, width, 3)
    if (width, height) == (info.width, info.height):
        width = height = -1  # decord: no scaling
    with tempfile.TemporaryFile() as stderr:
        command = _decord_command(path, fps, max_seconds, width, height)
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, bufsize=0)
        try:
            yield from _receive_frames(child, stderr, name, shape)
        finally:
            child.kill()
            child.wait()
            child.stdout.close()


def _decord_command(path, fps, max_seconds, width, height):
    # -P: run this file as a script without the ma2mba package (and torch) on the path
    cap = -1.0 if max_seconds is None else float(max_seconds)
    return [
        sys.executable,
        "-P",
        os.path.abspath(__file__),
        "--decord-worker",
        path,
        repr(float(fps)),
        repr(cap),
        str(width),
        str(height),
    ]


def _receive_frames(child, stderr, name, shape):
    header = _receive(child, bytearray(8), DECORD_OPEN_TIMEOUT_S, stderr, name)
    (count,) = struct.unpack("<q", header)
    picks = _receive(child, bytearray(count * _PICK_DTYPE.itemsize), DECORD_OPEN_TIMEOUT_S, stderr, name)
    picks = np.frombuffer(picks, _PICK_DTYPE)  # (count,) of (t, frame index)
    frame, shown = None, -1
    for t, index in picks.tolist():
        if index == shown:  # the same frame again (a still, or fps above the video's)
            yield t, frame.copy()
            continue
        if _rss(child.pid) > DECORD_MAX_RSS_BYTES:
            raise _DecodeError(
                f"decord used more than {_size(DECORD_MAX_RSS_BYTES)} of memory on '{name}' and was stopped."
            )
        got = struct.unpack("<iii", _receive(child, bytearray(12), DECORD_FRAME_TIMEOUT_S, stderr, name))
        if got != shape:
            raise _DecodeError(f"decord returned a frame of shape {got} for '{name}' instead of {shape}.")
        frame = np.empty(shape, np.uint8)
        _receive(child, memoryview(frame).cast("B"), DECORD_FRAME_TIMEOUT_S, stderr, name)
        shown = index
        yield t, frame


def _rss(pid):
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:  # it has just exited
        return 0


_PICK_DTYPE = np.dtype([("t", "<f8"), ("index", "<i8")])


def _receive(child, buffer, timeout, stderr, name):
    """Fill buffer from the child's stdout, or raise _DecodeError if it stalls or dies."""
    view, got = memoryview(buffer), 0
    while got < len(view):
        if not select.select([child.stdout], [], [], timeout)[0]:
            raise _DecodeError(f"decord stopped responding on '{name}' (no data for {timeout:.0f} s) and was stopped.")
        n = child.stdout.readinto(view[got:])
        if not n:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)  # let it finish writing its error message
            stderr.seek(0)
            lines = stderr.read().decode(errors="replace").strip().splitlines() or ["no message"]
            # "decord._ffi.base.DECORDError: [12:00:00] /src/video_reader.cc:270: msg" -> "msg"
            message = re.sub(r"^[\w.]+: (\[[\d:]+\] \S+:\d+: )?", "", lines[-1])
            raise _DecodeError(f"decord could not decode '{name}': {message}")
        got += n
    return buffer


def _decord_worker(path, fps, max_seconds, width, height):
    """Child process: write the picks, then the RGB frames, to stdout (see _receive_frames)."""
    import decord
    from decord.video_reader import _CAPI_VideoReaderGetFramePTS

    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever decord or FFmpeg prints goes to stderr, not into the frames
    reader = decord.VideoReader(path, width=width, height=height)
    # len(reader) trusts the header's frame count, which can be wrong (dmlc/decord#373), and
    # asking for a frame that is not there never returns. These timestamps come from the
    # packets that are in the file.
    times = _CAPI_VideoReaderGetFramePTS(reader._handle).asnumpy()[: len(reader)]  # (N, 2) start, end
    times = times.astype(np.float64) - times[:, 0].min()
    timed = ((start, end, i) for i, (start, end) in enumerate(times.tolist()))
    picks = np.array(list(_pick_by_time(timed, fps, max_seconds)), _PICK_DTYPE)
    out.write(struct.pack("<q", len(picks)) + picks.tobytes())
    out.flush()
    shown = -1
    for index in picks["index"].tolist():
        if index != shown:
            frame = reader[index].asnumpy()  # (H, W, 3) uint8
            out.write(struct.pack("<iii", *frame.shape) + frame.tobytes())
            out.flush()
            shown = index


_BACKEND_FRAMES = {"pyav": _pyav_frames, "decord": _decord_frames}


def _clock(seconds):
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _size(n_bytes):
    for unit, scale in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes} bytes"


if __name__ == "__main__" and sys.argv[1:2] == ["--decord-worker"]:
    path, fps, cap, width, height = sys.argv[2:]
    _decord_worker(path, float(fps), None if float(cap) < 0 else float(cap), int(width), int(height))
