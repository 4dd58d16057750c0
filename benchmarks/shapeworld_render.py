"""ShapeWorld speed on one core: video generation, frame rendering, and mp4 encoding.

    python benchmarks/shapeworld_render.py [--repeats 5]

Prints a table of medians and writes results/shapeworld_render.json. Targets: >= 2000 frames/s
at 64x64 and >= 200 frames/s at 640x360.
"""

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from ma2mba.data import render
from ma2mba.data.render import write_mp4
from ma2mba.data.world import generate

TARGETS = {(64, 64): 2000, (640, 360): 200}
SIZES = [(64, 64), (224, 224), (640, 360), (1280, 720)]


def median_rate(fn, items, repeats):
    """Median over repeats of items processed per second."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        rates.append(items / (time.perf_counter() - start))
    return statistics.median(rates)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as the targets say

    rows = []
    for duration in (120, 600, 3600):
        n = max(3, 2400 // duration)
        rate = median_rate(lambda: [generate(s, duration) for s in range(n)], n, args.repeats)
        rows.append(dict(what="generate", size=f"{duration // 60} min video", per_s=rate, unit="videos/s"))

    video = generate(0, 120)
    times = [t + 0.5 * (t % 2) for t in range(120)]  # whole and half seconds, so objects move
    for width, height in SIZES:
        many = median_rate(lambda: render.render_many(video, times, width, height), len(times), args.repeats)
        single = median_rate(lambda: [render.render(video, t, width, height) for t in times], len(times), args.repeats)
        target = TARGETS.get((width, height))
        for what, rate in (("render_many", many), ("render", single)):
            rows.append(
                dict(
                    what=what,
                    size=f"{width}x{height}",
                    per_s=rate,
                    unit="frames/s",
                    target=target,
                    ratio_to_target=rate / target if target else None,
                )
            )

    short = generate(1, 20)
    with tempfile.TemporaryDirectory() as tmp:
        for codec, suffix in (("h264", "mp4"), ("vp9", "webm")):
            frames = 20 * 30
            rate = median_rate(lambda: write_mp4(short, Path(tmp) / f"v.{suffix}", fps=30, codec=codec), frames, 1)
            rows.append(dict(what=f"write_mp4 {codec}", size="640x360 @30fps", per_s=rate, unit="frames/s"))

    print(f"{'what':<18}{'size':<16}{'median':>12}  {'unit':<10}{'target':>8}{'ratio':>8}")
    for r in rows:
        target = f"{r['target']}" if r.get("target") else ""
        ratio = f"{r['ratio_to_target']:.1f}x" if r.get("ratio_to_target") else ""
        print(f"{r['what']:<18}{r['size']:<16}{r['per_s']:>12.1f}  {r['unit']:<10}{target:>8}{ratio:>8}")

    out = Path(__file__).resolve().parent.parent / "results" / "shapeworld_render.json"
    out.parent.mkdir(exist_ok=True)
    cpu = platform.processor() or platform.machine()
    meta = dict(repeats=args.repeats, cores=1, cpu=cpu, python=platform.python_version())
    out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
