"""ShapeWorld's language: the questions asked of a video, with their answers, and its captions.

Every answer is computed from the video's appearances as of a moment, so a question can be asked
(and checked) at any point of a video.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from .world import KINDS, ShapeWorldError, Video, format_time, generator, kind_name, shuffle

QUESTION_KINDS = ("first_shape", "first_color", "last", "count", "exists", "after", "when")
FRAME_QUESTION = "Describe the frame."  # the alignment stage's question, answered by frame_caption
CAPTION_QUESTION = "Describe the recent events."  # the dense timed captions of the paper's stage 1.5
CAPTION_WINDOW_S = 20  # … cover the appearances of the last 20 s,
CAPTION_MAX_EVENTS = 4  # … at most 4 of them


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    kind_of_question: str  # one of QUESTION_KINDS


def with_article(name: str) -> str:
    return ("an " if name[0] in "aeiou" else "a ") + name


def frame_caption(video: Video, t: float) -> str:
    """The objects visible at t in KINDS order, e.g. 'a red star and a blue circle', or 'nothing'."""
    names = [with_article(kind_name(k)) for k in sorted((a.kind for a in video.visible(t)), key=KINDS.index)]
    if not names:
        return "nothing"
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def timed_captions(video: Video, as_of: float | None = None) -> list[tuple[int, str]]:
    """One (start, 'at 0:12 a green square appears') per appearance that started by `as_of`."""
    return [(a.start, f"at {format_time(a.start)} {with_article(a.name)} appears") for a in video.seen(as_of)]


def all_questions(video: Video, as_of: float | None = None) -> dict[str, list[QA]]:
    """Every valid question of each kind, answered as if the video ended at second `as_of`."""
    seen = video.seen(as_of)
    counts = Counter(a.kind for a in seen)
    index = {a.kind: i for i, a in enumerate(seen) if counts[a.kind] == 1}
    qs = {kind: [] for kind in QUESTION_KINDS}
    if seen:
        qs["first_shape"].append(QA("What shape appeared first?", seen[0].shape, "first_shape"))
        qs["first_color"].append(QA("What color was the first shape?", seen[0].color, "first_color"))
        qs["last"].append(QA("What was the last shape to appear?", seen[-1].name, "last"))
    for kind in KINDS:
        name = kind_name(kind)
        n = counts[kind]
        qs["count"].append(QA(f"How many times did {with_article(name)} appear?", str(n), "count"))
        qs["exists"].append(QA(f"Did {with_article(name)} appear?", "yes" if n else "no", "exists"))
        if n == 1:
            i = index[kind]
            qs["when"].append(QA(f"When did the {name} appear?", f"at {format_time(seen[i].start)}", "when"))
            if i + 1 < len(seen):
                qs["after"].append(QA(f"What appeared right after the {name}?", seen[i + 1].name, "after"))
    return qs


def sample_questions(
    video: Video, rng_or_seed, n: int | None = None, kinds=None, as_of: float | None = None
) -> list[QA]:
    """A balanced sample of n distinct questions (default: one per question kind).

    `kinds` restricts the question kinds (names from QUESTION_KINDS). Kinds take turns in a
    random order, a kind listed twice taking two turns of each round. Within a kind, each
    distinct answer is equally likely (so 'yes' and 'no', or a count of 0 and a count of 7, come
    up equally often), then a question with that answer.
    """
    rng = rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else generator(rng_or_seed)
    kinds = QUESTION_KINDS if kinds is None else tuple(kinds)
    unknown = set(kinds) - set(QUESTION_KINDS)
    if unknown:
        raise ShapeWorldError(f"Unknown question kinds {sorted(unknown)}; choose from {QUESTION_KINDS}.")
    n = len(kinds) if n is None else n
    everything = all_questions(video, as_of)
    pools = {}  # question kind -> answer -> QAs left to draw
    for kind in kinds:
        by_answer = {}
        for qa in everything[kind]:
            by_answer.setdefault(qa.answer, []).append(qa)
        if by_answer:
            pools[kind] = by_answer
    out, turn = [], []
    while len(out) < n and pools:
        if not turn:
            turn = [k for k in kinds if k in pools]
            shuffle(rng, turn)
        kind = turn.pop()
        if kind not in pools:
            continue
        by_answer = pools[kind]
        answer = sorted(by_answer)[int(rng.integers(len(by_answer)))]
        group = by_answer[answer]
        out.append(group.pop(int(rng.integers(len(group)))))
        if not group:
            del by_answer[answer]
            if not by_answer:
                del pools[kind]
    return out


def caption_answer(video: Video, as_of: int) -> str:
    """The answer to CAPTION_QUESTION as of second `as_of`: the latest timed captions, or 'nothing appeared'."""
    recent = [text for start, text in timed_captions(video, as_of) if start > as_of - CAPTION_WINDOW_S]
    return ". ".join(recent[-CAPTION_MAX_EVENTS:]) if recent else "nothing appeared"
