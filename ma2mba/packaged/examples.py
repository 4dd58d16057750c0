"""The demo's example videos: short ShapeWorld clips with questions whose answers are known.

    python -m ma2mba.packaged.examples                    # (re)writes assets/examples/*.mp4 and examples.json
    python -m ma2mba.packaged.examples --model packaged   # … suggesting questions the packaged model gets right

Every clip is generated from a seed, so its ground truth can be recomputed for any question at
any moment (`ground_truth`), which lets the app tell a right answer from a wrong one, also when
the user rewinds. The JSON lists, per clip, a few suggested questions (one per question kind)
with their answers for the whole clip, and one rewind question whose answer is different at an
earlier moment.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..data import world
from ..data.questions import all_questions, sample_questions, with_article
from ..data.render import write_mp4
from ..video.decode import frame_source, sample_frames
from . import REPO_ROOT, load_model

EXAMPLES_DIR = REPO_ROOT / "assets" / "examples"
INDEX_FILE = "examples.json"
MAX_FILE_BYTES = 2 * 2**20
DECODE_MAX_SIDE = 320  # uploads are decoded this small (the model letterboxes to 128 px anyway); app.py uses it too


@dataclass(frozen=True)
class ClipSpec:
    name: str
    seed: int
    seconds: int
    width: int
    height: int
    fps: int = 30


# Seeds below 2^32 never occur in training (training.trainer.TRAIN_SEED_BASE). Landscape 16:9 and portrait 9:16.
CLIPS = (
    ClipSpec("shapes-30s.mp4", seed=101, seconds=30, width=640, height=360),
    ClipSpec("shapes-60s.mp4", seed=102, seconds=60, width=640, height=360),
    ClipSpec("shapes-2min.mp4", seed=103, seconds=120, width=640, height=360),
    ClipSpec("shapes-portrait-45s.mp4", seed=104, seconds=45, width=360, height=640),
)
# What the Space suggests for an upload that is not an example: questions the packaged model answers
# correctly on every example clip (tests/test_packaged.py checks each one).
UPLOAD_SUGGESTIONS = (
    "What shape appeared first?",
    "What color was the first shape?",
    "Did a red circle appear?",
    "How many times did a red circle appear?",
)
# One suggestion per kind, in this order (first_shape first: the app tests ask the first one).
SUGGESTED_KINDS = ("first_shape", "count", "exists", "last")


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def suggested_questions(video: world.Video, seed: int, session=None, candidates: int = 8) -> list[dict]:
    """One question per kind in SUGGESTED_KINDS. With a session that has watched the clip, the first
    of a few candidates per kind that the model answers correctly, and no question of a kind it gets
    wrong each time (the Space suggests questions the packaged model gets right; the evaluation,
    not this list, says how often it is right)."""
    out = []
    for kind in SUGGESTED_KINDS:
        qas = sample_questions(video, seed, n=candidates if session else 1, kinds=[kind])
        if session is not None:  # a kind the model gets wrong every time is not suggested
            qas = [qa for qa in qas if session.answer(qa.question) == qa.answer]
        out += [{"question": qa.question, "answer": qa.answer, "kind": qa.kind_of_question} for qa in qas[:1]]
    return out


def rewind_question(video: world.Video, session=None) -> dict:
    """A count question asked just before the middle appearance of its kind, so that the answer as of
    then differs from the answer at the end: the most frequent kind, or with a session the most
    frequent one whose rewound answer the model gets right ("model_correct" says whether it does)."""
    counts = video.counts()
    fallback = None
    for kind in [k for k in sorted(world.KINDS, key=lambda k: -counts[k]) if counts[k] >= 2][:6]:
        starts = [a.start for a in video.appearances if a.kind == kind]
        as_of = starts[len(starts) // 2] - 1  # just before its middle appearance
        question = f"How many times did {with_article(world.kind_name(kind))} appear?"
        entry = {
            "question": question,
            "as_of": as_of,
            "answer": str(video.counts(as_of)[kind]),
            "answer_at_end": str(counts[kind]),
        }
        if session is None:
            return entry
        entry["model_correct"] = session.answer(question, at=as_of) == entry["answer"]
        if entry["model_correct"]:
            return entry
        fallback = fallback or entry
    return fallback


def watched(model, path):
    """A session that has watched the clip as the app does (1 FPS, frames shrunk like uploads)."""
    session = model.start_session(frame_source=frame_source(path, max_side=DECODE_MAX_SIDE))
    for t, frame in sample_frames(path, fps=1.0, max_side=DECODE_MAX_SIDE):
        session.ingest(frame, t)
    return session


def write_examples(folder: Path = EXAMPLES_DIR, model=None) -> dict:
    """Writes the clips and examples.json; with `model`, suggests questions it answers correctly."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for spec in CLIPS:
        video = world.generate(spec.seed, spec.seconds)
        path = write_mp4(video, folder / spec.name, fps=spec.fps, width=spec.width, height=spec.height)
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise RuntimeError(f"{path} is {size} bytes, above the {MAX_FILE_BYTES}-byte budget for examples")
        session = watched(model, path) if model is not None else None
        entries.append(
            {
                "file": spec.name,
                "seed": spec.seed,
                "seconds": spec.seconds,
                "width": spec.width,
                "height": spec.height,
                "fps": spec.fps,
                "bytes": size,
                "sha256": sha256(path),
                "questions": suggested_questions(video, spec.seed, session),
                "rewind": rewind_question(video, session),
            }
        )
    generator = "python -m ma2mba.packaged.examples" + (" --model packaged" if model is not None else "")
    index = {"generator": generator, "examples": entries}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return index


def load_examples(folder: Path = EXAMPLES_DIR) -> list[dict]:
    """The entries of examples.json, each with "path" added; [] if the examples are missing."""
    index = folder / INDEX_FILE
    if not index.is_file():
        return []
    entries = json.loads(index.read_text())["examples"]
    return [{**e, "path": str(folder / e["file"])} for e in entries if (folder / e["file"]).is_file()]


def find_example(path, examples: list[dict]) -> dict | None:
    """The example whose file has the same bytes as `path` (uploads are renamed copies)."""
    digest = sha256(path)
    return next((e for e in examples if e["sha256"] == digest), None)


def ground_truth(example: dict, question: str, as_of: float | None = None) -> str | None:
    """ShapeWorld's answer to `question` about the example as of second `as_of` (None: the end);
    None when the question is not one ShapeWorld asks."""
    video = world.generate(example["seed"], example["seconds"])
    wanted = " ".join(question.lower().split())
    for qas in all_questions(video, as_of).values():
        for qa in qas:
            if qa.question.lower() == wanted:
                return qa.answer
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=EXAMPLES_DIR)
    parser.add_argument(
        "--model", default=None, help="suggest questions this model (e.g. the packaged one) answers correctly"
    )
    args = parser.parse_args(argv)
    model = None
    if args.model:
        model = load_model(None if args.model == "packaged" else args.model)
    for e in write_examples(args.out, model)["examples"]:
        print(f"{e['file']}: {e['seconds']} s, {e['width']}x{e['height']}, {e['bytes'] / 2**20:.2f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
