"""ma2mba.video against videos written here with PyAV, whose frames show their own index."""

import sys
from fractions import Fraction

import av
import numpy as np
import psutil
import pytest

from ma2mba.video import VideoError, probe, sample_frames
from ma2mba.video import decode as video

BITS = 10  # the index is drawn as 10 black/white blocks along the top half of the frame
BOTH = pytest.mark.parametrize("backend", ["pyav", "decord"])


def index_frame(i, width, height):
    rgb = np.full((height, width, 3), 128, np.uint8)
    for b in range(BITS):
        rgb[: height // 2, b * width // BITS : (b + 1) * width // BITS] = 255 if i >> (BITS - 1 - b) & 1 else 0
    return rgb


def read_index(rgb):
    """The index drawn by index_frame, at any scale: look at the middle of each block."""
    h, w = rgb.shape[:2]
    bits = ["1" if rgb[h // 4, int((b + 0.5) * w / BITS)].mean() > 128 else "0" for b in range(BITS)]
    return int("".join(bits), 2)


def write_video(path, times, codec="libx264", size=(64, 48), container_options=None, rotation=0, stream_options=None):
    """Frame i shows index i and starts at times[i] seconds."""
    with av.open(str(path), "w", container_options=container_options or {}) as out:
        stream = out.add_stream(codec, rate=30, options=stream_options or {})
        stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        if rotation:
            stream.set_display_rotation(rotation)
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(index_frame(i, *size), format="rgb24")
            frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def expected_samples(times, fps, last_duration=1 / 30):
    """Reference: for t = k / fps before the video ends, the last frame that starts at or before t."""
    end = times[-1] + last_duration
    samples, k = [], 0
    while k / fps < end:
        t = k / fps
        samples.append((t, max(i for i, start in enumerate(times) if start <= t + 1e-9)))
        k += 1
    return samples


def decoded(path, **kwargs):
    return [(t, read_index(frame)) for t, frame in sample_frames(path, **kwargs)]


CFR_30 = [i / 30 for i in range(136)]  # 4.53 s
VFR = [0, 0.1, 0.15, 1.0, 1.033, 2.5, 2.6, 3.999, 4.0, 5.2, 5.25, 6.4]  # gaps, bursts, frames on the second


SHORT_GOP = {"g": "7", "bf": "2"}  # keyframes often, B-frames: decoding jumps between keyframes


@BOTH
@pytest.mark.parametrize(
    "name,codec,times,options",
    [
        ("cfr.mp4", "libx264", CFR_30, None),
        ("cfr_short_gop.mp4", "libx264", CFR_30, SHORT_GOP),
        ("cfr.webm", "libvpx-vp9", [i / 10 for i in range(35)], {"g": "4"}),
        ("cfr.mov", "libx264", [i / 25 for i in range(80)], None),
        ("vfr.mp4", "libx264", VFR, None),
        ("vfr_short_gop.mp4", "libx264", VFR, {"g": "2", "bf": "2"}),
        ("vfr.webm", "libvpx-vp9", VFR, {"g": "3"}),
        ("one_frame.mp4", "libx264", [0.0], None),
    ],
)
def test_frames_are_sampled_by_timestamp(tmp_path, backend, name, codec, times, options):
    path = write_video(tmp_path / name, times, codec, stream_options=options)
    assert decoded(path, backend=backend) == expected_samples(times, fps=1.0)


@BOTH
@pytest.mark.parametrize("options", [None, SHORT_GOP])
def test_other_sampling_rates(tmp_path, backend, options):
    path = write_video(tmp_path / "cfr.mp4", CFR_30, stream_options=options)
    for fps in (2.5, 0.3, 7):
        assert decoded(path, fps=fps, backend=backend) == expected_samples(CFR_30, fps=fps)


def test_pyav_does_not_decode_frames_no_sample_shows(tmp_path, monkeypatch):
    times = [i / 30 for i in range(300)]  # 10 s with a keyframe every second
    path = write_video(tmp_path / "gop.mp4", times, stream_options={"g": "30", "x264-params": "scenecut=0"})
    starts = []

    def counting(timed):
        def wrapper(*args):
            for item in timed(*args):
                starts.append(item[0])
                yield item

        return wrapper

    monkeypatch.setattr(video, "_pyav_timed", counting(video._pyav_timed))
    assert decoded(path, backend="pyav") == expected_samples(times, fps=1.0)
    # Per second: the keyframe and the frame after it; all of the last second (to find the end).
    assert len(starts) < 300 / 4 and starts == sorted(starts)


def test_probe_reports_the_header(tmp_path):
    path = write_video(tmp_path / "cfr.mp4", CFR_30, size=(96, 64))
    info = probe(path)
    assert (info.width, info.height, info.rotation, info.codec) == (96, 64, 0, "h264")
    assert info.duration == pytest.approx(136 / 30, abs=0.02)
    assert info.fps == pytest.approx(30, rel=1e-3)
    assert info.frame_count == 136
    assert info.file_bytes == path.stat().st_size


def test_backends_give_the_same_pixels(tmp_path):
    path = write_video(tmp_path / "cfr.mp4", CFR_30)
    pyav = [f.astype(int) for _, f in sample_frames(path, backend="pyav")]
    decord = [f.astype(int) for _, f in sample_frames(path, backend="decord")]
    assert len(pyav) == len(decord) == 5
    assert all(np.abs(a - b).mean() < 2 for a, b in zip(pyav, decord))


@BOTH
def test_max_side_scales_down_on_decode(tmp_path, backend):
    path = write_video(tmp_path / "cfr.mp4", CFR_30, size=(128, 96))
    frames = list(sample_frames(path, max_side=64, backend=backend))
    assert {f.shape for _, f in frames} == {(48, 64, 3)}
    assert [(t, read_index(f)) for t, f in frames] == expected_samples(CFR_30, fps=1.0)
    assert next(iter(sample_frames(path, max_side=500, backend=backend)))[1].shape == (96, 128, 3)


def test_portrait_phone_video_comes_out_upright(tmp_path, monkeypatch):
    # Phones store portrait video as landscape frames plus "turn 90 degrees clockwise to show".
    path = write_video(tmp_path / "portrait.mp4", CFR_30[:40], size=(64, 48), rotation=-90)
    info = probe(path)
    assert (info.width, info.height, info.rotation) == (48, 64, 270)
    _, frame = next(iter(sample_frames(path, backend="pyav")))
    assert frame.shape == (64, 48, 3)
    # Frame 0 has a black top half; turned clockwise, that half is on the right.
    assert frame[:, -16:].mean() < 30 and abs(frame[:, :16].mean() - 128) < 10
    with pytest.raises(VideoError, match="decord cannot decode 'portrait.mp4': it returns scrambled"):
        list(sample_frames(path, backend="decord"))
    monkeypatch.setattr(video, "BACKENDS", ("decord", "pyav"))
    assert np.array_equal(next(iter(sample_frames(path)))[1], frame)


@BOTH
def test_upside_down_video_comes_out_upright(tmp_path, backend):
    path = write_video(tmp_path / "upside_down.mp4", CFR_30[:40], size=(64, 48), rotation=180)
    assert probe(path).rotation == 180
    _, frame = next(iter(sample_frames(path, backend=backend)))
    assert frame.shape == (48, 64, 3)
    assert frame[-16:].mean() < 30 and abs(frame[:16].mean() - 128) < 10  # black half at the bottom


def test_browser_recording_without_duration(tmp_path, monkeypatch):
    # MediaRecorder writes webm live: no duration and no index in the header.
    path = write_video(tmp_path / "live.webm", VFR, "libvpx-vp9", container_options={"live": "1"})
    assert probe(path).duration is None
    assert decoded(path, backend="pyav") == expected_samples(VFR, fps=1.0)
    with pytest.raises(VideoError, match="decord could not decode 'live.webm'"):
        list(sample_frames(path, backend="decord"))
    monkeypatch.setattr(video, "BACKENDS", ("decord", "pyav"))  # decord first: PyAV takes over
    assert decoded(path) == expected_samples(VFR, fps=1.0)


def test_no_duration_in_header_stops_at_max_seconds(tmp_path):
    path = write_video(tmp_path / "live.webm", VFR, "libvpx-vp9", container_options={"live": "1"})
    assert [t for t, _ in sample_frames(path, max_seconds=3.5)] == [0, 1, 2, 3]


def test_fallback_continues_where_the_failed_backend_stopped(tmp_path, monkeypatch):
    path = write_video(tmp_path / "cfr.mp4", CFR_30)
    real_pyav = video._BACKEND_FRAMES["pyav"]

    def pyav_that_breaks(*args):
        frames = real_pyav(*args)
        yield next(frames)
        yield next(frames)
        raise video._DecodeError("broken on purpose")

    monkeypatch.setitem(video._BACKEND_FRAMES, "pyav", pyav_that_breaks)
    assert decoded(path) == expected_samples(CFR_30, fps=1.0)  # 2 from PyAV, 3 from decord


def test_a_hung_decord_child_is_killed_and_pyav_takes_over(tmp_path, monkeypatch):
    path = write_video(tmp_path / "cfr.mp4", CFR_30)
    monkeypatch.setattr(video, "_decord_command", lambda *args: [sys.executable, "-c", "import time; time.sleep(600)"])
    monkeypatch.setattr(video, "DECORD_OPEN_TIMEOUT_S", 0.5)
    with pytest.raises(VideoError, match="decord stopped responding on 'cfr.mp4'"):
        list(sample_frames(path, backend="decord"))
    assert not psutil.Process().children()
    monkeypatch.setattr(video, "BACKENDS", ("decord", "pyav"))
    assert decoded(path) == expected_samples(CFR_30, fps=1.0)
    assert not psutil.Process().children()


def test_decord_child_over_its_memory_cap_is_stopped(tmp_path, monkeypatch):
    path = write_video(tmp_path / "cfr.mp4", CFR_30)
    monkeypatch.setattr(video, "DECORD_MAX_RSS_BYTES", 1024**2)
    with pytest.raises(VideoError, match="decord used more than 1.0 MB of memory"):
        list(sample_frames(path, backend="decord"))
    assert not psutil.Process().children()


@BOTH
def test_stopping_early_releases_the_file_and_the_child(tmp_path, backend):
    path = write_video(tmp_path / "cfr.mp4", CFR_30)
    me = psutil.Process()
    frames = sample_frames(path, backend=backend)
    next(frames)
    if backend == "pyav":
        assert str(path) in {f.path for f in me.open_files()}
    else:
        assert me.children()  # the decord process
    frames.close()  # the user pressed Stop
    assert str(path) not in {f.path for f in me.open_files()}
    assert not me.children()


# --- bad input: each raises VideoError with a sentence that says what is wrong -----------


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(VideoError, match="There is no file at"):
        probe(tmp_path / "nothing.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoError, match=r"'empty.mp4' is empty \(0 bytes\).*Upload the file again"):
        sample_frames(tmp_path / "empty.mp4")


def test_text_file_named_mp4(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("shopping list: eggs, milk\n" * 40)
    with pytest.raises(VideoError, match="'notes.mp4' is not a video file FFmpeg can read.*Upload a video"):
        sample_frames(path)


def test_audio_only(tmp_path):
    path = tmp_path / "song.m4a"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        for i in range(20):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    with pytest.raises(VideoError, match=r"'song.m4a' has no video stream \(it contains only audio\)"):
        sample_frames(path)


def test_truncated_mp4_without_its_index(tmp_path):
    path = write_video(tmp_path / "cut.mp4", CFR_30)  # the index (moov) is written at the end
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(VideoError, match="'cut.mp4' .*probably truncated"):
        sample_frames(path)


def test_truncated_mp4_with_its_index_first(tmp_path):
    times = [i / 30 for i in range(300)]  # 10 s
    path = write_video(tmp_path / "cut.mp4", times, container_options={"movflags": "faststart"})
    with av.open(str(path)) as container:  # the index comes first: keep it and half the frames
        frames_start = next(p.pos for p in container.demux(video=0) if p.size)
    path.write_bytes(path.read_bytes()[: (frames_start + path.stat().st_size) // 2])
    got = []
    with pytest.raises(
        VideoError, match=r"'cut.mp4' stops at .* its header says it lasts 10.0 s: the file is truncated"
    ):
        for t, frame in sample_frames(path):  # PyAV gives what is there, then the error
            got.append((t, read_index(frame)))
    assert 2 <= len(got) <= 8 and got == expected_samples(times, fps=1.0)[: len(got)]
    with pytest.raises(VideoError, match="decord could not decode 'cut.mp4': Error: av_read_frame failed"):
        list(sample_frames(path, backend="decord"))  # decord reads the whole file before it starts


def test_zero_frames(tmp_path):
    # H.264 whose only keyframe is dropped: the stream is there, no frame decodes.
    full = write_video(tmp_path / "full.mp4", CFR_30[:30], stream_options={"g": "1000"})
    path = tmp_path / "no_keyframe.mkv"
    with av.open(str(full)) as src, av.open(str(path), "w") as out:
        stream = out.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.size and not packet.is_keyframe:
                packet.stream = stream
                out.mux(packet)
    with pytest.raises(VideoError, match="'no_keyframe.mkv' has a video stream but no frame in it could be decoded"):
        sample_frames(path)


def test_unsupported_codec(tmp_path):
    path = write_video(tmp_path / "odd.mp4", CFR_30[:10])
    path.write_bytes(path.read_bytes().replace(b"avc1", b"zzzz"))  # a codec FFmpeg has never heard of
    with pytest.raises(VideoError, match="'odd.mp4' uses a video codec that this FFmpeg cannot decode. Re-encode"):
        sample_frames(path)


def test_longer_than_the_limit_fails_before_decoding(tmp_path, monkeypatch):
    path = write_video(tmp_path / "cfr.mp4", CFR_30)
    monkeypatch.setattr(video, "_BACKEND_FRAMES", {})  # any decoding would fail with KeyError
    with pytest.raises(VideoError, match="'cfr.mp4' is 0:00:05 long, above the 0:00:02 limit. Trim it"):
        sample_frames(path, max_seconds=2)
    with pytest.raises(VideoError, match="above the 0:00:02 limit"):
        probe(path, max_seconds=2)


def test_larger_than_the_limit(tmp_path):
    path = write_video(tmp_path / "cfr.mp4", CFR_30)
    with pytest.raises(VideoError, match=r"'cfr.mp4' is \d+\.\d KB, above the 1.0 KB limit. Compress"):
        sample_frames(path, max_bytes=1024)
    assert len(list(sample_frames(path, max_bytes=None, max_seconds=None))) == 5
