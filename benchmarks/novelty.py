"""How often the novelty score flags ShapeWorld videos (false alarms) and videos made from photographs.

    python benchmarks/novelty.py [--videos 60]

ShapeWorld: held-out seeds, 60 s each, three ways: rendered straight at the model's input, rendered
at 360p and shrunk, and written as H.264 at 640x360 and decoded at 1 FPS as uploads are.
Photographs: scikit-image's bundled images (offline), each as three 20-frame videos that pan and zoom
over it at 640x360. Prints a table, writes results/novelty.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ma2mba import load_model
from ma2mba.data import world
from ma2mba.data.render import ASPECTS, render_letterboxed, write_mp4
from ma2mba.packaged import PACKAGED_MODEL_DIR
from ma2mba.packaged.examples import DECODE_MAX_SIDE
from ma2mba.training.evaluate import EVAL_SEED_BASE
from ma2mba.video import sample_frames
from ma2mba.video.novelty import THRESHOLD, Novelty, video_score

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "camera", "coins", "moon", "grass", "gravel", "brick", "clock", "cell", "page")  # fmt: skip
NOVELTY_EVAL_SEEDS = EVAL_SEED_BASE + 900_000  # held-out seeds of no other set


def photo_video(image: np.ndarray, variant: int, frames: int = 20) -> np.ndarray:
    """A pan and zoom over a photograph, 640x360 frames."""
    if image.ndim == 2:
        image = np.stack([image] * 3, -1)
    image = np.ascontiguousarray(image[..., :3]).astype(np.uint8)
    h_full, w_full = image.shape[:2]
    out = []
    for k in range(frames):
        f = k / (frames - 1)
        zoom = (0.5 + 0.5 * f) if variant != 1 else (1.0 - 0.5 * f)
        h = max(16, int(h_full * zoom * 0.9))
        w = min(w_full, int(h * 16 / 9))
        y = int((h_full - h) * (f if variant != 2 else 1 - f))
        x = int((w_full - w) * (1 - f))
        out.append(np.asarray(Image.fromarray(image[y : y + h, x : x + w]).resize((640, 360))))
    return np.stack(out)


def shapeworld_scores(model, novelty, videos: int) -> dict[str, list[float]]:
    scores = {"raw": [], "360p": [], "h264": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(videos):
            video = world.generate(NOVELTY_EVAL_SEEDS + i, 60)
            aspect = ASPECTS[i % len(ASPECTS)]
            for name, upload_like in (("raw", False), ("360p", True)):
                frames = render_letterboxed(video, range(60), 128, aspect, upload_like=upload_like)
                scores[name].append(video_score(novelty.frame_scores(model, frames)))
            path = write_mp4(video, Path(tmp) / "v.mp4", fps=2, width=640, height=360)
            frames = np.stack([f for _, f in sample_frames(path, fps=1.0, max_side=DECODE_MAX_SIDE)])
            scores["h264"].append(video_score(novelty.frame_scores(model, frames)))
    return scores


def photo_scores(model, novelty) -> dict[str, list[float]]:
    import skimage.data

    return {name: [video_score(novelty.frame_scores(model, photo_video(getattr(skimage.data, name)(), v)))
                   for v in range(3)] for name in PHOTOS}  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=60, help="ShapeWorld videos per way")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "results" / "novelty.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model()
    novelty = Novelty.load(PACKAGED_MODEL_DIR)
    shapes = shapeworld_scores(model, novelty, args.videos)
    photos = photo_scores(model, novelty)
    flagged = lambda scores: sum(s > THRESHOLD for s in scores)
    rows = [(f"ShapeWorld, {name}", len(s), flagged(s), max(s)) for name, s in shapes.items()]
    every_photo = [s for scores in photos.values() for s in scores]
    rows.append(("photographs", len(every_photo), flagged(every_photo), min(every_photo)))
    report = {
        "threshold": THRESHOLD,
        "shapeworld": shapes,
        "photographs": photos,
        "false_alarm_rate": sum(flagged(s) for s in shapes.values()) / sum(len(s) for s in shapes.values()),
        "photo_flag_rate": flagged(every_photo) / len(every_photo),
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print("| videos | count | flagged | highest (ShapeWorld) / lowest (photographs) score |\n|---|---|---|---|")
    for name, n, k, extreme in rows:
        print(f"| {name} | {n} | {k} ({100 * k / n:.1f}%) | {extreme:.2f} |")
    missed = [f"{name} ({', '.join(f'{s:.2f}' for s in scores)})" for name, scores in photos.items()
              if min(scores) <= THRESHOLD]  # fmt: skip
    print(f"\nphotographs not flagged every time: {', '.join(missed) or 'none'}")


if __name__ == "__main__":
    main()
