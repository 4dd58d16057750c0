"""Held-out evaluation: accuracy per question type on ShapeWorld videos of 2, 10 and 60 minutes.

Answers are generated greedily, exactly as the app does, and scored by exact match, except that
"when" answers count within ±2 s. The same videos can also travel as H.264 mp4 files through
`video.sample_frames`, exactly as an upload does. Baselines, in the same run:
  - majority: the most frequent answer per question type (counted on other videos of the same length);
  - 16 frames: the same model fed 16 uniformly sampled frames, as transformer video LMMs are.

Streaming a batch through the LM in one call gives the state a session reaches frame by frame
(tests/test_session.py proves the identity), so evaluation batches videos for speed.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data import world
from ..data.questions import QA, QUESTION_KINDS, sample_questions
from ..data.render import render_letterboxed, write_mp4
from ..engine.state import State
from ..serving.decoding import Decoder
from ..serving.frames import watch
from ..video.decode import sample_frames
from ..video.model import VideoMa2mba
from ..video.vision import letterbox

EVAL_SEED_BASE = 1 << 28  # held-out seeds: far below the training seeds (>= 2^32)
QUESTIONS_PER_KIND = 2  # per video
WHEN_TOLERANCE_S = 2


@dataclass
class Result:
    kind: str
    question: str
    answer: str
    predicted: str
    correct: bool


def heldout_videos(minutes: float, n: int, offset: int = 0) -> list[world.Video]:
    base = EVAL_SEED_BASE + int(minutes * 60) * 10_000 + offset
    return [world.generate(base + i, int(minutes * 60)) for i in range(n)]


def heldout_questions(video: world.Video) -> list[QA]:
    rng = np.random.default_rng(video.seed)
    qas = []
    for kind in QUESTION_KINDS:
        qas += sample_questions(video, rng, n=QUESTIONS_PER_KIND, kinds=[kind])
    return qas


def parse_seconds(text: str) -> int | None:
    m = re.search(r"(\d+):(\d\d)", text)
    return int(m.group(1)) * 60 + int(m.group(2)) if m else None


def is_correct(kind: str, answer: str, predicted: str) -> bool:
    predicted = predicted.strip().lower()
    if kind == "when":
        want, got = parse_seconds(answer), parse_seconds(predicted)
        return got is not None and abs(got - want) <= WHEN_TOLERANCE_S
    return predicted == answer


# --- frames ---
def raw_frames(model: VideoMa2mba, video: world.Video, times) -> np.ndarray:
    """Rendered straight at the model's input size (square)."""
    return render_letterboxed(video, times, model.vision.cfg.image_size)


def mp4_frames(model: VideoMa2mba, video: world.Video, size: tuple[int, int], fps: float, folder: Path) -> np.ndarray:
    """Written as H.264 mp4 at `size`, decoded at 1 FPS by video.py and letterboxed, as uploads are."""
    path = write_mp4(video, folder / f"{video.seed}.mp4", fps=fps, width=size[0], height=size[1])
    frames = [letterbox(f, model.vision.cfg.image_size) for _, f in sample_frames(path, fps=1.0)]
    path.unlink()
    return np.stack(frames)


@torch.inference_mode()
def answer_batch(model: VideoMa2mba, state: State, questions: list[str], max_new_tokens: int = 10) -> list[str]:
    """Greedy answers to questions[i] from state row i, decoded together."""
    answers = [[] for _ in questions]
    for step in Decoder(model, state, [model.question_ids(q) for q in questions], max_new_tokens):
        for row, token in zip(answers, step):
            if token is not None:
                row.append(token)
    return [model.tokenizer.decode(a).strip() for a in answers]


def evaluate_videos(model: VideoMa2mba, videos, frames_of, frame_times_of=None, batch: int = 8) -> list[Result]:
    """Ask every held-out question of every video; `frames_of(video)` gives its frames."""
    results = []
    for i in range(0, len(videos), batch):
        group = videos[i : i + batch]
        times = frame_times_of(group[0]) if frame_times_of else np.arange(group[0].duration)
        frames = np.stack([frames_of(v) for v in group])
        state = watch(model, frames, times)
        asks = [(j, qa) for j, v in enumerate(group) for qa in heldout_questions(v)]
        index = torch.tensor([j for j, _ in asks], device=model.device)
        predicted = answer_batch(model, state.map(lambda t: t.index_select(0, index)), [qa.question for _, qa in asks])
        results += [
            Result(qa.kind_of_question, qa.question, qa.answer, p, is_correct(qa.kind_of_question, qa.answer, p))
            for (_, qa), p in zip(asks, predicted)
        ]
    return results


def majority_answers(minutes: float, n: int = 40) -> dict[str, str]:
    """The most frequent answer per question type, on videos outside the held-out sets."""
    answers = defaultdict(Counter)
    for video in heldout_videos(minutes, n, offset=5000):
        for qa in heldout_questions(video):
            answers[qa.kind_of_question][qa.answer] += 1
    return {kind: c.most_common(1)[0][0] for kind, c in answers.items()}


def summarize(results: list[Result]) -> dict:
    by_kind = defaultdict(list)
    for r in results:
        by_kind[r.kind].append(r.correct)
    return {
        "overall": float(np.mean([r.correct for r in results])),
        "n": len(results),
        "by_kind": {k: float(np.mean(v)) for k, v in sorted(by_kind.items())},
    }


def run(
    model: VideoMa2mba,
    minutes=(2, 10, 60),
    videos: int = 40,
    baselines: bool = True,
    mp4: bool = False,
    mp4_videos: int | None = None,
    progress=print,
) -> dict:
    report = {}
    for m in minutes:
        vids = heldout_videos(m, videos)
        entry = {}
        started = time.perf_counter()
        entry["raw"] = summarize(evaluate_videos(model, vids, lambda v: raw_frames(model, v, range(v.duration))))
        entry["raw"]["seconds"] = round(time.perf_counter() - started, 1)
        progress(f"{m} min, raw frames: {entry['raw']['overall']:.3f}")
        if baselines:
            majority = majority_answers(m)
            res = [
                Result(
                    qa.kind_of_question,
                    qa.question,
                    qa.answer,
                    majority[qa.kind_of_question],
                    is_correct(qa.kind_of_question, qa.answer, majority[qa.kind_of_question]),
                )
                for v in vids
                for qa in heldout_questions(v)
            ]
            entry["majority"] = summarize(res)
            sparse = lambda v: np.linspace(0, v.duration - 1, 16).round().astype(int)
            entry["16_frames"] = summarize(
                evaluate_videos(model, vids, lambda v: raw_frames(model, v, sparse(v)), frame_times_of=sparse)
            )
            progress(
                f"{m} min, majority {entry['majority']['overall']:.3f}, 16 frames {entry['16_frames']['overall']:.3f}"
            )
        if mp4:
            sub = vids[: mp4_videos or len(vids)]
            with tempfile.TemporaryDirectory() as tmp:
                for name, size in (("mp4_360p_16x9", (640, 360)), ("mp4_360p_3x4", (360, 480))):
                    fps = 2.0  # few frames per second keep hour-long encodes short; decoding still samples by time
                    entry[name] = summarize(
                        evaluate_videos(model, sub, lambda v: mp4_frames(model, v, size, fps, Path(tmp)))
                    )
                    entry[name]["videos"] = len(sub)
                    progress(f"{m} min, {name}: {entry[name]['overall']:.3f}")
            entry["raw_same_videos"] = summarize(
                evaluate_videos(model, sub, lambda v: raw_frames(model, v, range(v.duration)))
            )
        report[f"{m}min"] = entry
    return report


def format_table(report: dict) -> str:
    kinds = QUESTION_KINDS
    lines = ["| set | frames | overall | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 3) + "|"]
    for length, entry in report.items():
        for name, s in entry.items():
            cells = " | ".join(f"{100 * s['by_kind'].get(k, float('nan')):.0f}" for k in kinds)
            lines.append(f"| {length} | {name} | **{100 * s['overall']:.1f}** | {cells} |")
    return "\n".join(lines)
