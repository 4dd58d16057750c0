"""Streaming cost as a video grows from 1 minute to 2 hours, for the packaged model.

Ingestion (vision encoder + projector + one LM call per frame, as the app does) and decoding
(video.sample_frames at 1 FPS) are measured separately. Ingestion is fed ShapeWorld frames
rendered at 640×360, so letterboxing is included; decoding reads a 480p H.264 file.

    python benchmarks/stream.py [--minutes 120] [--decode-minutes 10]

Prints a table and writes results/stream.json. Targets (issue 4): ingestion >= 50 frames/s,
RSS growth from 10 minutes to 2 hours < 2%, a 1-hour 480p video decoded in < 3 minutes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import psutil
import torch

from ma2mba import load_model
from ma2mba.data import render, world
from ma2mba.video import sample_frames

CHECKPOINTS_MIN = (1, 10, 30, 60, 120)


def ingest_curve(minutes: int, threads: int) -> list[dict]:
    torch.set_num_threads(threads)
    model = load_model()
    session = model.start_session()
    video = world.generate(7, minutes * 60)
    proc = psutil.Process()
    rows, window = [], []
    marks = {m * 60 for m in CHECKPOINTS_MIN if m <= minutes}
    for t, frame in render.frames(video, fps=1.0, width=640, height=360):
        start = time.perf_counter()
        session.ingest(frame, t)
        window.append(time.perf_counter() - start)
        if t + 1 in marks:
            ms = 1000 * statistics.median(window)
            rows.append(
                {
                    "minutes": (t + 1) / 60,
                    "frames": session.frames,
                    "tokens": session.tokens,
                    "ms_per_frame": round(ms, 2),
                    "frames_per_s": round(1000 / ms, 1),
                    "state_bytes": session.state.nbytes(),
                    "rss_mb": round(proc.memory_info().rss / 2**20, 1),
                }
            )
            print(rows[-1], flush=True)
            window = []
    return rows


def decode_speed(minutes: int) -> dict:
    video = world.generate(11, minutes * 60)
    with tempfile.TemporaryDirectory() as tmp:
        path = render.write_mp4(video, Path(tmp) / "v.mp4", fps=10, width=854, height=480)
        start = time.perf_counter()
        n = sum(1 for _ in sample_frames(path, fps=1.0))
        seconds = time.perf_counter() - start
    return {
        "video_minutes": minutes,
        "encoded_fps": 10,
        "size": "854x480",
        "frames": n,
        "seconds": round(seconds, 1),
        "frames_per_s": round(n / seconds, 1),
        "projected_seconds_for_1h": round(seconds * 60 / minutes, 1),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, default=120)
    parser.add_argument("--decode-minutes", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="results/stream.json")
    args = parser.parse_args()

    curve = ingest_curve(args.minutes, args.threads)
    decode = decode_speed(args.decode_minutes)
    ten = next((r for r in curve if r["minutes"] == 10), None)
    last = curve[-1]
    summary = {
        "ingest_frames_per_s_median": statistics.median(r["frames_per_s"] for r in curve),
        "rss_growth_10min_to_end_pct": round(100 * (last["rss_mb"] / ten["rss_mb"] - 1), 2) if ten else None,
        "state_bytes_constant": len({r["state_bytes"] for r in curve}) == 1,
        "decode": decode,
    }
    print("\n| minutes | frames | ms/frame | frames/s | state KiB | RSS MB |\n|---|---|---|---|---|---|")
    for r in curve:
        print(
            f"| {r['minutes']:g} | {r['frames']} | {r['ms_per_frame']} | {r['frames_per_s']} | "
            f"{r['state_bytes'] / 1024:.0f} | {r['rss_mb']} |"
        )
    print(
        f"\ndecoding {decode['size']} H.264 at 1 FPS: {decode['frames_per_s']} frames/s "
        f"(1 hour would take {decode['projected_seconds_for_1h']} s); RSS growth 10 min -> {last['minutes']:g} min: "
        f"{summary['rss_growth_10min_to_end_pct']}%"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"curve": curve, "summary": summary, "threads": args.threads}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
