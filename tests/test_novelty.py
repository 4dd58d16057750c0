"""The novelty score: its views are the encoder's own, it round-trips through its file, and it tells ShapeWorld
from videos made of photographs at the rates benchmarks/novelty.py measured."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from ma2mba import load_model
from ma2mba.data import world
from ma2mba.data.render import render_letterboxed
from ma2mba.packaged import PACKAGED_MODEL_DIR
from ma2mba.video.novelty import THRESHOLD, VIEWS, Novelty, video_score, views
from ma2mba.video.vision import frames_to_tensor

ROOT = Path(__file__).resolve().parent.parent


def load_benchmark():
    """benchmarks/novelty.py as a module: its photo videos and held-out seeds are the tests' too."""
    spec = importlib.util.spec_from_file_location("novelty_benchmark", ROOT / "benchmarks" / "novelty.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return load_model()


@pytest.fixture(scope="module")
def novelty():
    return Novelty.load(PACKAGED_MODEL_DIR)


def test_the_token_view_is_what_the_encoder_gives_the_lm(model):
    frames = render_letterboxed(world.generate(3, 30), range(0, 30, 3), 128)
    with torch.no_grad():
        tokens = model.vision(frames_to_tensor(frames, 128)).mean(1).double().numpy()
    seen = views(model, frames)
    np.testing.assert_allclose(seen["token"], tokens, rtol=1e-5, atol=1e-6)
    assert set(seen) == set(VIEWS) and all(len(v) == len(frames) for v in seen.values())


def test_the_fitted_score_round_trips_through_its_file(model, novelty, tmp_path):
    novelty.save(tmp_path)
    again = Novelty.load(tmp_path)
    frames = render_letterboxed(world.generate(5, 20), range(20), 128)
    np.testing.assert_array_equal(again.frame_scores(model, frames), novelty.frame_scores(model, frames))
    assert Novelty.load(tmp_path / "elsewhere") is None  # a model folder without one has no score


def test_shapeworld_is_familiar_and_photographs_are_not(model, novelty):
    """A sample of the benchmark's sets: 12 held-out ShapeWorld videos of 60 s (raw and 360p-shrunk), and the
    photographs the benchmark flags (all but one of 16: see docs/experiments.md)."""
    bench = load_benchmark()
    shapes = [
        video_score(novelty.frame_scores(model, render_letterboxed(v, range(60), 128, upload_like=i % 2 == 1)))
        for i, v in enumerate(world.generate(bench.NOVELTY_EVAL_SEEDS + 500 + i, 60) for i in range(12))
    ]
    assert max(shapes) < THRESHOLD
    import skimage.data

    photos = {n: video_score(novelty.frame_scores(model, bench.photo_video(getattr(skimage.data, n)(), 0)))
              for n in bench.PHOTOS}  # fmt: skip
    flagged = [n for n, s in photos.items() if s > THRESHOLD]
    assert len(flagged) >= len(photos) - 2, photos
