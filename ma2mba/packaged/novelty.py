"""Fit the novelty score (video/novelty.py) of the packaged model on ShapeWorld frames.

    python -m ma2mba.packaged.novelty      # writes assets/ma2mba-shapes/novelty.safetensors

The frames are rendered from training seeds (never the evaluation's or the examples'), at the five
aspect ratios of training, a third of them at 360p and shrunk, as uploads are.
"""

from __future__ import annotations

import numpy as np

from ..data import world
from ..data.render import ASPECTS, render_letterboxed
from ..training.trainer import TRAIN_SEED_BASE
from ..video.novelty import Novelty, views
from . import PACKAGED_MODEL_DIR, load_model

NOVELTY_SEED_BASE = TRAIN_SEED_BASE + (1 << 30)  # training-range seeds no training run reaches


def shapeworld_frames(first_seed: int, videos: int, per_video: int, seconds: int = 120) -> np.ndarray:
    rng = np.random.default_rng(first_seed)
    out = []
    for i in range(videos):
        video = world.generate(first_seed + i, seconds)
        times = sorted(rng.choice(seconds, per_video, replace=False).tolist())
        out.append(render_letterboxed(video, times, 128, ASPECTS[i % len(ASPECTS)], upload_like=i % 3 == 0))
    return np.concatenate(out)


def fit(model) -> Novelty:
    fit_frames = shapeworld_frames(NOVELTY_SEED_BASE, 120, 25)
    calibration = shapeworld_frames(NOVELTY_SEED_BASE + 1000, 40, 25)
    return Novelty.fit(views(model, fit_frames), views(model, calibration))


def main() -> int:
    model = load_model()
    fit(model).save(PACKAGED_MODEL_DIR)
    print(f"wrote {PACKAGED_MODEL_DIR / 'novelty.safetensors'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
