"""The shipped model (assets/ma2mba-shapes): it loads offline, keeps its measured accuracy on
videos generated now from fresh seeds, and answers the example clips' suggested questions."""

import json
import math
import os

import pytest
import torch

from ma2mba import load_model
from ma2mba.data import world
from ma2mba.packaged import PACKAGED_MODEL_DIR
from ma2mba.packaged.examples import UPLOAD_SUGGESTIONS, ground_truth, load_examples, watched
from ma2mba.training.evaluate import EVAL_SEED_BASE, evaluate_videos, raw_frames, summarize
from ma2mba.training.trainer import TRAIN_SEED_BASE

VIDEOS, MINUTES = 16, 2


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return load_model()


def test_the_packaged_folder_is_complete_and_small():
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md", "eval.json"):
        assert (PACKAGED_MODEL_DIR / name).is_file(), name
    assert (PACKAGED_MODEL_DIR / "model.safetensors").stat().st_size < 50 * 2**20
    card = (PACKAGED_MODEL_DIR / "README.md").read_text()
    assert "| 2min | raw |" in card and "python -m ma2mba train" in card


def test_fresh_heldout_videos_score_the_measured_accuracy(model):
    """New seeds each run (neither training's nor the evaluation's): the 2-minute accuracy must not
    fall more than three standard errors (plus 3 points) below what eval.json measured."""
    measured = json.loads((PACKAGED_MODEL_DIR / "eval.json").read_text())[f"{MINUTES}min"]["raw"]["overall"]
    first = int.from_bytes(os.urandom(3), "little") * 16  # seeds below both EVAL_SEED_BASE and TRAIN_SEED_BASE
    assert first + VIDEOS < min(EVAL_SEED_BASE, TRAIN_SEED_BASE)
    videos = [world.generate(first + i, MINUTES * 60) for i in range(VIDEOS)]
    score = summarize(evaluate_videos(model, videos, lambda v: raw_frames(model, v, range(v.duration))))
    margin = 3 * math.sqrt(measured * (1 - measured) / score["n"]) + 0.03
    print(f"seeds {first}..{first + VIDEOS - 1}: {score['overall']:.3f} (measured {measured:.3f}, margin {margin:.3f})")
    assert score["overall"] >= measured - margin, (first, score)


@pytest.mark.parametrize("example", load_examples(), ids=lambda e: e["file"])
def test_example_clips_suggested_questions_are_answered_correctly(model, example):
    session = watched(model, example["path"])
    assert example["questions"], "every example suggests at least one question"
    for qa in example["questions"]:
        assert session.answer(qa["question"]) == qa["answer"], qa
    # The rewind question is one the model answers right where examples.json says so, and wrong where it says not.
    rewind = example["rewind"]
    assert (session.answer(rewind["question"], at=rewind["as_of"]) == rewind["answer"]) == rewind["model_correct"], (
        rewind
    )


@pytest.mark.parametrize("example", load_examples(), ids=lambda e: e["file"])
def test_what_the_space_suggests_for_uploads_is_answered_correctly_on_every_example(model, example):
    session = watched(model, example["path"])
    for question in UPLOAD_SUGGESTIONS:
        assert session.answer(question) == ground_truth(example, question), question
