"""Where the packaged model goes wrong: every "exists" and "count" question of held-out videos.

    python benchmarks/shapes_errors.py [--model assets/ma2mba-shapes] [--minutes 2] [--videos 16]

A kind is a (colour, shape) pair, so "Did a red star appear?" needs the pair, not its parts. The
"no" answers are split by what the video did show: neither part (no red thing, no star), one part,
or both parts in other kinds (a red circle and a blue star, but no red star). A model that keeps
colours and shapes apart, instead of their pairs, is right on the first and at chance on the last.
Counts are split by the true count, and "when" answers by how far off they are, also split by
whether the kind appeared in the video's last 30 s: a model that can read the time markers but
not keep them would get those recent ones right.

Prints a table and writes results/shapes_errors.json (or --out).
"""

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from ma2mba import load_model
from ma2mba.data import questions, world
from ma2mba.serving.frames import watch
from ma2mba.training.evaluate import answer_batch, heldout_videos, is_correct, parse_seconds, raw_frames


def exists_category(kind, counts) -> str:
    if counts[kind]:
        return "yes"
    colours = {k[0] for k, n in counts.items() if n}
    shapes = {k[1] for k, n in counts.items() if n}
    parts = (kind[0] in colours) + (kind[1] in shapes)
    return ("no: neither part shown", "no: one part shown", "no: both parts shown, apart")[parts]


def count_bucket(n: int) -> str:
    return "0" if n == 0 else "1" if n == 1 else "2-5" if n <= 5 else "6-10" if n <= 10 else "11-20"


RECENT_S = 30  # "when" answers are split by whether the kind appeared in the video's last RECENT_S seconds


def analyse(model, videos) -> dict:
    tally = defaultdict(lambda: [0, 0])  # (table, row) -> [right, asked]
    when_answers = []  # (when it appeared, when the model said it did or None, the video's length) in seconds
    frames = np.stack([raw_frames(model, v, range(v.duration)) for v in videos])
    state = watch(model, frames, np.arange(videos[0].duration))
    for row, video in enumerate(videos):
        counts = video.counts()
        everything = questions.all_questions(video)  # "exists" and "count": one question per kind, in KINDS order
        asked = {name: everything[name] for name in ("exists", "count", "when")}
        qas = [qa for group in asked.values() for qa in group]
        mine = state.map(lambda t: t[row : row + 1].expand(len(qas), *t.shape[1:]).contiguous())
        answers = iter(answer_batch(model, mine, [qa.question for qa in qas]))
        for name, split in (("exists", exists_category), ("count", lambda kind, c: count_bucket(c[kind]))):
            for kind, qa in zip(world.KINDS, asked[name]):
                cell = tally[(name, split(kind, counts))]
                cell[0] += is_correct(name, qa.answer, next(answers))
                cell[1] += 1
        for qa in asked["when"]:
            when_answers.append((parse_seconds(qa.answer), parse_seconds(next(answers)), video.duration))
    order = [
        "yes",
        "no: neither part shown",
        "no: one part shown",
        "no: both parts shown, apart",
        "0",
        "1",
        "2-5",
        "6-10",
        "11-20",
    ]
    ranked = sorted(tally.items(), key=lambda kv: (kv[0][0], order.index(kv[0][1])))
    report = {f"{table}: {row}": {"accuracy": right / asked, "asked": asked} for (table, row), (right, asked) in ranked}
    recent = [length - truth <= RECENT_S for truth, _, length in when_answers]
    report["when"] = when_summary(when_answers)
    report[f"when: appeared in the last {RECENT_S} s"] = when_summary([a for a, r in zip(when_answers, recent) if r])
    report["when: appeared earlier"] = when_summary([a for a, r in zip(when_answers, recent) if not r])
    return report


def when_summary(answers) -> dict:
    off = [abs(said - truth) for truth, said, _ in answers if said is not None]
    return {
        "asked": len(answers),
        "within_2s": sum(d <= 2 for d in off) / max(1, len(answers)),
        "median_seconds_off": float(np.median(off)) if off else None,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder (default: the packaged model)")
    parser.add_argument("--minutes", type=float, default=2)
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="results/shapes_errors.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    # Held-out seeds of the evaluation's own sets (offset past the ones `python -m ma2mba eval` uses).
    videos = heldout_videos(args.minutes, args.videos, offset=2000)
    report = analyse(model, videos)
    print(f"| question: split | accuracy | asked |   ({args.videos} videos of {args.minutes:g} min)")
    print("|---|---|---|")
    for name, row in report.items():
        if name.startswith("when"):
            print(
                f"| {name}: within 2 s | {100 * row['within_2s']:.1f} | {row['asked']} |"
                f"  (median {row['median_seconds_off']} s off)"
            )
        else:
            print(f"| {name} | {100 * row['accuracy']:.1f} | {row['asked']} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {"model": args.model or "packaged", "minutes": args.minutes, "videos": args.videos, "report": report},
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
