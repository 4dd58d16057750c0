"""How unlike its training world a video looks to the packaged frame encoder: a warning, not a verdict.

Three views of a frame from the encoder (the packaged CNN): its token, and the mean and spread over
the grid of its first and of its last block (the grid statistics keep the texture and brightness that
the token pools away). Each view has a Gaussian fitted to training-world frames; a frame's score is
the largest of its three Mahalanobis distances, each divided by its 99th percentile on other training
frames, so about 1% of familiar frames score above 1. A video's score is the median over its frames,
and above THRESHOLD it is flagged. docs/experiments.md has how the views were chosen and what the
score does on ShapeWorld and on photographs; packaged/novelty.py fits it for the packaged model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .vision import ShapesFrameEncoder, frames_to_tensor, pool_2x2

VIEWS = ("token", "last_block", "first_block")
THRESHOLD = 1.0  # a video whose median frame scores above this is flagged
SHRINKAGE = 0.05  # of the mean variance, added to the covariance's diagonal
FILE = "novelty.safetensors"


@torch.no_grad()
def views(model, frames) -> dict[str, np.ndarray]:
    """uint8 frames (N, H, W, 3), any size -> each view's features (N, D), float64."""
    vision = model.vision
    if not isinstance(vision, ShapesFrameEncoder):
        raise ValueError("the novelty score reads the packaged CNN's blocks; this model has another encoder")
    out = {name: [] for name in VIEWS}
    for i in range(0, len(frames), 256):
        pixels = frames_to_tensor(frames[i : i + 256], vision.cfg.image_size, model.device).to(vision.mean.dtype)
        first = vision.convs[:3](pixels - vision.mean)  # (n, c1, S/2, S/2): the first conv, norm and GELU
        last = vision.convs[3:-1](first)  # (n, c4, S/16, S/16): before the 1x1 projection
        tokens = vision.norm(pool_2x2(vision.convs[-1](last), vision.cfg.tokens_per_side))  # what vision(pixels) is
        out["token"].append(tokens.mean(1))
        out["last_block"].append(torch.cat([last.mean((2, 3)), last.std((2, 3))], 1))
        out["first_block"].append(torch.cat([first.mean((2, 3)), first.std((2, 3))], 1))
    return {name: torch.cat(parts).double().cpu().numpy() for name, parts in out.items()}


@dataclass
class Novelty:
    means: dict  # view -> (D,)
    precisions: dict  # view -> (D, D), the inverse of the shrunk covariance
    scales: dict  # view -> the 99th percentile of familiar frames' squared distance

    @classmethod
    def fit(cls, fit_views: dict, calibration_views: dict) -> Novelty:
        means, precisions, scales = {}, {}, {}
        for name in VIEWS:
            x = fit_views[name]
            mean = x.mean(0)
            cov = np.cov(x - mean, rowvar=False, bias=True)
            cov += SHRINKAGE * np.trace(cov) / len(cov) * np.eye(len(cov))
            means[name], precisions[name] = mean, np.linalg.inv(cov)
            scales[name] = float(np.quantile(_distance(calibration_views[name], mean, precisions[name]), 0.99))
        return cls(means, precisions, scales)

    def frame_scores(self, model, frames) -> np.ndarray:
        """(N,) scores: about 1% of frames like the training world's are above 1."""
        seen = views(model, frames)
        return np.max([_distance(seen[n], self.means[n], self.precisions[n]) / self.scales[n] for n in VIEWS], 0)

    def save(self, folder) -> None:
        from safetensors.numpy import save_file

        tensors = {f"{kind}.{n}": np.asarray(getattr(self, kind)[n]) for kind in ("means", "precisions", "scales")
                   for n in VIEWS}  # fmt: skip
        save_file(tensors, str(Path(folder) / FILE))

    @classmethod
    def load(cls, folder) -> Novelty | None:
        """The folder's fitted score, or None where it has none (only the packaged model has one)."""
        path = Path(folder) / FILE
        if not path.is_file():
            return None
        from safetensors.numpy import load_file

        t = load_file(str(path))
        return cls(*({n: t[f"{kind}.{n}"] for n in VIEWS} for kind in ("means", "precisions")),
                   {n: float(t[f"scales.{n}"]) for n in VIEWS})  # fmt: skip


def video_score(frame_scores) -> float:
    return float(np.median(frame_scores))


def _distance(x, mean, precision) -> np.ndarray:
    d = x - mean
    return np.einsum("ni,ij,nj->n", d, precision, d)
