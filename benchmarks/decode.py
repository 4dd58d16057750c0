"""Decoding at 1 FPS: PyAV against decord on a 10-minute 720p H.264 file, and the 1-hour 480p target.

    python benchmarks/decode.py              # ~25 min on 2 busy cores; writes results/decode.json
    python benchmarks/decode.py --rounds 1 --skip-hour   # a quick look

The test videos are encoded once with libx264 and cached in runs/bench_videos/ (gitignored).
To keep that fast, one minute is encoded and its packets are muxed again and again with shifted
timestamps: the decoder does exactly the work of a real encode of that length. The encode is
what uploads look like to a decoder: CABAC, deblocking, B-frames, a keyframe every 5 s, about
2.5 Mbit/s at 720p and 1.2 Mbit/s at 480p, moving texture plus a noisy band.

The machine is shared, so each configuration runs `--rounds` times, interleaved, and the
table shows medians of wall time and of CPU time (this process plus its children); ratios are
taken within the same round. CPU time is the steadier number when other jobs take the cores.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import time
from fractions import Fraction
from pathlib import Path

import av
import decord
import numpy as np
import psutil

from ma2mba.video import decode as video

ROOT = Path(__file__).resolve().parents[1]

CACHE = ROOT / "runs" / "bench_videos"
FPS = 30
GOP_SECONDS = 5


def make_video(path, width, height, minutes, kbps):
    """Encode one minute of synthetic footage, then repeat its packets `minutes` times."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    segment = path.with_suffix(".segment.mp4")
    _encode_minute(segment, width, height, kbps)
    partial = path.with_suffix(".partial.mp4")
    with av.open(str(segment)) as src, av.open(str(partial), "w") as dst:
        src_stream = src.streams.video[0]
        dst_stream = dst.add_stream_from_template(src_stream)
        packets = [p for p in src.demux(src_stream) if p.size]
        span = src_stream.duration  # in src_stream.time_base
        for k in range(minutes):
            for p in packets:
                copy = av.Packet(bytes(p))
                copy.pts, copy.dts, copy.duration = p.pts + k * span, p.dts + k * span, p.duration
                copy.is_keyframe, copy.time_base, copy.stream = p.is_keyframe, p.time_base, dst_stream
                dst.mux(copy)
    segment.unlink()
    partial.rename(path)
    return path


def _encode_minute(path, width, height, kbps):
    rng = np.random.default_rng(0)
    texture = np.kron(
        rng.integers(0, 256, (height // 8 + 1, width // 8 + 41), dtype=np.uint8), np.ones((8, 8), np.uint8)
    )[:height]  # 8x8 blocks, wider than the frame
    chroma = np.full((height // 2, width), 128, np.uint8)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {
            "preset": "superfast",
            "g": str(GOP_SECONDS * FPS),
            "x264-params": f"bitrate={kbps}:vbv-maxrate={kbps * 6 // 5}:vbv-bufsize={kbps * 2}",
        }
        for i in range(60 * FPS):
            luma = texture[:, i % 320 : i % 320 + width].copy()  # pans 1 px per frame
            band = luma[: height // 6]
            band[:] = band // 2 + rng.integers(0, 16, band.shape, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(np.concatenate([luma, chroma]), format="yuv420p")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


# --- the configurations --------------------------------------------------------------------
# Each returns how many frames it produced; all sample at 1 FPS by timestamp.


def ma2mba_default(path):
    return sum(1 for _ in video.sample_frames(path))


def ma2mba_backend(name, max_side=None):
    return lambda path: sum(1 for _ in video.sample_frames(path, backend=name, max_side=max_side))


def pyav_variant(thread_type, jump_to_keyframes):
    """The module's PyAV path with another thread setting, or decoding every frame."""

    def run(path):
        info = video.probe(path)
        keyframes = video._keyframes(str(path), path.name) if jump_to_keyframes else []
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = thread_type
            timed = video._pyav_timed(container, stream, path.name, info, 1.0, keyframes)
            n = 0
            for _, frame in video._pick_by_time(timed, 1.0, None):
                frame.to_ndarray(format="rgb24")
                n += 1
            return n

    return run


def pyav_seek(path):
    """Seek to the keyframe before each sample time and decode up to it."""
    n = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        tb, origin = stream.time_base, stream.start_time
        duration = float(stream.duration * tb)
        while n < duration:
            container.seek(origin + int(Fraction(n) / tb), stream=stream, backward=True)
            shown = None
            for frame in container.decode(stream):
                if float((frame.pts - origin) * tb) > n + 1e-4:
                    break
                shown = frame
            shown.to_ndarray(format="rgb24")
            n += 1
    return n


def decord_in_process(path):
    """decord without the child process: what the isolation costs."""
    reader = decord.VideoReader(str(path))
    starts = reader.get_frame_timestamp(np.arange(len(reader)))[:, 0]
    picks = [int(np.searchsorted(starts, t + 1e-4, side="right")) - 1 for t in np.arange(0, starts[-1] + 1 / FPS, 1.0)]
    for i in picks:
        reader[i].asnumpy()
    return len(picks)


def measure(fn, path):
    wall0, cpu0 = time.perf_counter(), os.times()
    frames = fn(path)
    wall, cpu1 = time.perf_counter() - wall0, os.times()
    cpu = sum(cpu1[:4]) - sum(cpu0[:4])  # user + system, self + waited-for children
    return {"wall_s": wall, "cpu_s": cpu, "frames": frames}


def compare(path, configs, rounds):
    """configs: name -> (fn, how many rounds); the first is the baseline of the ratios.
    Rounds alternate the order of the configurations so that drift in load evens out."""
    runs = {name: [] for name in configs}
    for r in range(rounds):
        order = list(configs) if r % 2 == 0 else list(reversed(configs))
        for name in order:
            fn, n_rounds = configs[name]
            if r < n_rounds:
                runs[name].append(measure(fn, path))
                print(
                    f"  round {r + 1}/{rounds} {name:30s} {runs[name][-1]['wall_s']:7.1f} s wall "
                    f"{runs[name][-1]['cpu_s']:7.1f} s CPU",
                    flush=True,
                )
    baseline = runs[next(iter(configs))]
    rows = {}
    for name, rs in runs.items():
        rows[name] = {
            "wall_s": statistics.median(r["wall_s"] for r in rs),
            "cpu_s": statistics.median(r["cpu_s"] for r in rs),
            # within a round, against the baseline's run of the same round
            "wall_ratio": statistics.median(r["wall_s"] / b["wall_s"] for r, b in zip(rs, baseline)),
            "cpu_ratio": statistics.median(r["cpu_s"] / b["cpu_s"] for r, b in zip(rs, baseline)),
            "rounds": len(rs),
            "frames": rs[0]["frames"],
            "runs": rs,
        }
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--hour-rounds", type=int, default=2)
    parser.add_argument("--skip-hour", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "results" / "decode.json"))
    args = parser.parse_args()

    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_start": os.getloadavg(),
            "python": platform.python_version(),
            "av": av.__version__,
            "ffmpeg_libavcodec": ".".join(map(str, av.library_versions["libavcodec"])),
            "decord": decord.__version__,
        },
        "default_backend": video.BACKENDS[0],
    }
    t0 = time.perf_counter()
    clip = make_video(CACHE / "720p_10min.mp4", 1280, 720, minutes=10, kbps=2500)
    hour = None if args.skip_hour else make_video(CACHE / "480p_60min.mp4", 854, 480, minutes=60, kbps=1200)
    print(f"videos ready in {time.perf_counter() - t0:.0f} s")

    configs = {  # the seek variant is slow and clearly behind: one round
        "pyav (ma2mba default)": (ma2mba_backend("pyav"), args.rounds),
        "decord (ma2mba, child process)": (ma2mba_backend("decord"), args.rounds),
        "pyav, decoding every frame": (pyav_variant("AUTO", jump_to_keyframes=False), args.rounds),
        "pyav, no threads": (pyav_variant("NONE", jump_to_keyframes=True), args.rounds),
        "pyav, max_side=448": (ma2mba_backend("pyav", max_side=448), args.rounds),
        "decord, in-process": (decord_in_process, args.rounds),
        "pyav, seek to each sample": (pyav_seek, 1),
    }
    print(f"10-minute 720p H.264, 1 FPS, {args.rounds} rounds:")
    rows = compare(clip, configs, args.rounds)
    result["clip_720p_10min"] = {"file_mb": clip.stat().st_size / 1e6, "seconds": 600, "configs": rows}

    if hour is not None:
        print(f"1-hour 480p H.264, 1 FPS, default backend, {args.hour_rounds} rounds:")
        rss_before = psutil.Process().memory_info().rss
        runs = [measure(ma2mba_default, hour) for _ in range(args.hour_rounds)]
        wall = statistics.median(r["wall_s"] for r in runs)
        result["hour_480p"] = {
            "file_mb": hour.stat().st_size / 1e6,
            "seconds": 3600,
            "wall_s": wall,
            "cpu_s": statistics.median(r["cpu_s"] for r in runs),
            "times_real_time": 3600 / wall,
            "frames": runs[0]["frames"],
            "target_wall_s": 180,
            "meets_target": wall < 180,
            "runs": runs,
            "rss_growth_mb": (psutil.Process().memory_info().rss - rss_before) / 1e6,
        }
    result["machine"]["load_avg_end"] = os.getloadavg()
    result["decord_child_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    print(
        "\n| 10 min 720p, 1 FPS | wall s | CPU s | wall ratio | CPU ratio | rounds | frames |\n"
        "|---|---|---|---|---|---|---|"
    )
    for name, row in rows.items():
        print(
            f"| {name} | {row['wall_s']:.1f} | {row['cpu_s']:.1f} | {row['wall_ratio']:.2f} | "
            f"{row['cpu_ratio']:.2f} | {row['rounds']} | {row['frames']} |"
        )
    print(
        f"(medians; ratios to '{next(iter(rows))}' in the same round; "
        f"decord child peak RSS {result['decord_child_peak_rss_mb']:.0f} MB)"
    )
    if hour is not None:
        h = result["hour_480p"]
        print(
            f"\n1-hour 480p at 1 FPS: {h['wall_s']:.1f} s wall ({h['times_real_time']:.0f}x real "
            f"time), {h['cpu_s']:.1f} s CPU, {h['frames']} frames; target < 180 s: "
            f"{'met' if h['meets_target'] else 'MISSED'}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
