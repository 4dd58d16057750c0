"""Rewind anywhere in a two-hour video, without the file: time, exactness and memory.

    python benchmarks/rewind.py [--minutes 120] [--threads 1]

The packaged model watches a ShapeWorld video frame by frame, as the app does (frames rendered at
the model's input size, so decoding is not what is timed). Then it answers "as of" moments spread
over the whole video, each timed from the question to the last answer token, with no frame_source:
every rewind is served from the session's snapshots and kept frame tokens. A few of those moments
are checked against fresh sessions that watched only the frames up to them (same answers, states
equal to float rounding). Prints a table, writes results/rewind.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from ma2mba import load_model
from ma2mba.data import world
from ma2mba.data.render import render_letterboxed

QUESTION = "What was the last shape to appear?"
CHECKED = (20, 600, 3599)  # moments compared with fresh sessions (short enough to watch again)


def watch(model, video, frames: int, **kwargs):
    session = model.start_session(**kwargs)
    size = model.vision.cfg.image_size
    for start in range(0, frames, 256):
        times = range(start, min(frames, start + 256))
        for t, frame in zip(times, render_letterboxed(video, times, size)):
            session.ingest(frame, float(t))
    return session


def max_state_gap(a, b) -> float:
    return max(float((x - y).abs().max()) for la, lb in zip(a, b) for x, y in zip(la, lb))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, default=120)
    parser.add_argument("--moments", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "results" / "rewind.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model()
    seconds = 60 * args.minutes
    video = world.generate(31, seconds)
    started = time.perf_counter()
    session = watch(model, video, seconds)
    watch_s = time.perf_counter() - started
    stats = session.stats()
    moments = sorted({*CHECKED, *(round(i * (seconds - 2) / (args.moments - 1)) for i in range(args.moments))})
    rows = []
    for at in moments:
        started = time.perf_counter()
        answer = session.answer(QUESTION, at=float(at))
        rows.append({"as_of": at, "seconds": time.perf_counter() - started, "answer": answer})
    checks = []
    for at in CHECKED:
        fresh = watch(model, video, at + 1)
        checks.append(
            {
                "as_of": at,
                "same_answer": fresh.answer(QUESTION) == next(r["answer"] for r in rows if r["as_of"] == at),
                "max_state_gap": max_state_gap(session.state_at(float(at)), fresh.state),
            }
        )
    times = sorted(r["seconds"] for r in rows)
    report = {
        "minutes": args.minutes,
        "threads": args.threads,
        "watch_seconds": round(watch_s, 1),
        "snapshots": stats["snapshots"],
        "kept_frames": stats["kept_frames"],
        "rewind_bytes": stats["rewind_bytes"],
        "max_rewind_bytes": stats["max_rewind_bytes"],
        "rewind_answer_seconds": {
            "median": statistics.median(times),
            "p95": times[min(len(times) - 1, round(0.95 * (len(times) - 1)))],
            "max": times[-1],
        },
        "checks": checks,
        "moments": rows,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    mib = 2**20
    print(
        f"watched {args.minutes} min in {watch_s:.0f} s; {stats['snapshots']} snapshots and {stats['kept_frames']} "
        f"frames' tokens kept: {stats['rewind_bytes'] / mib:.1f} MiB of a {stats['max_rewind_bytes'] / mib:.0f} MiB cap"
    )
    print("\n| answers as of an earlier moment | median s | p95 s | max s |\n|---|---|---|---|")
    r = report["rewind_answer_seconds"]
    print(f"| {len(rows)} moments over the video | {r['median']:.3f} | {r['p95']:.3f} | {r['max']:.3f} |")
    print("\n| as of (s) | same answer as a fresh session | largest state difference |\n|---|---|---|")
    for c in checks:
        print(f"| {c['as_of']} | {c['same_answer']} | {c['max_state_gap']:.1e} |")


if __name__ == "__main__":
    main()
