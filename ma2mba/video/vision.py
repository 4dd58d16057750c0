"""Frame encoders: pixels -> a small grid of feature vectors per frame.

Every encoder letterboxes the frame to a fixed square, extracts a feature grid and applies the
paper's 2×2 pooling, giving `tokens_per_side ** 2` tokens per frame. The projector that maps
them into the language model lives in model.py.

- `ShapesFrameEncoder`: the packaged model's small CNN (CPU-fast: over a thousand 128×128 frames per second).
- `ClipFrameEncoder`: CLIP's vision tower through transformers, as in the paper (ViT-L/14-336,
  penultimate layer, 24×24 patches pooled 2×2 -> 12×12 = 144 tokens).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image


@dataclass
class VisionConfig:
    kind: str = "shapes"  # "shapes" (packaged CNN) or "clip"
    image_size: int = 128  # frames are letterboxed to image_size × image_size
    tokens_per_side: int = 1  # tokens per frame = tokens_per_side ** 2, after the 2×2 pooling
    channels: tuple = (16, 32, 64, 128)  # shapes CNN: one stride-2 3×3 conv per entry
    out_dim: int = 256  # shapes CNN: feature size per token
    clip_name: str | None = None  # e.g. "openai/clip-vit-large-patch14-336"
    clip_config: dict | None = field(default=None)  # a CLIPVisionConfig as a dict (random init)

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        d = dict(d)
        d["channels"] = tuple(d.get("channels", cls.channels))
        return cls(**d)


def letterbox(frame: np.ndarray, size: int) -> np.ndarray:
    """Fit an RGB uint8 (H, W, 3) frame into size × size, keeping its aspect ratio, padding with black."""
    h, w = frame.shape[:2]
    if h == w == size:
        return frame
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = np.asarray(Image.fromarray(frame).resize((nw, nh), Image.BILINEAR, reducing_gap=None))
    out = np.zeros((size, size, 3), dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = resized
    return out


def frames_to_tensor(frames, size: int, device=None) -> torch.Tensor:
    """A list (or (N, H, W, 3) array) of uint8 frames -> float (N, 3, size, size) in [0, 1]."""
    batch = np.stack([letterbox(np.asarray(f), size) for f in frames])
    return torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float().div_(255.0)


def pool_2x2(grid: torch.Tensor, tokens_per_side: int) -> torch.Tensor:
    """(N, C, G, G) -> (N, tokens_per_side², C): the strongest response in each of 2t × 2t regions
    (a detector's "is it anywhere here?"), then the paper's 2×2 average pooling."""
    g = 2 * tokens_per_side
    if grid.shape[-1] != g:
        grid = F.adaptive_max_pool2d(grid, g)
    grid = F.avg_pool2d(grid, 2)  # (N, C, t, t)
    return grid.flatten(2).transpose(1, 2)


def conv_bn(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.GELU()]


class ShapesFrameEncoder(nn.Module):
    """Stride-2 convs down to a 1/16 grid, one more 3×3 conv there, a 1×1 conv to out_dim: each grid
    cell becomes a detector of the objects near it; pooling then says which objects the frame shows."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        layers, c_in = [], 3
        for c_out in cfg.channels:
            layers += conv_bn(c_in, c_out, stride=2)
            c_in = c_out
        layers += [*conv_bn(c_in, c_in, stride=1), nn.Conv2d(c_in, cfg.out_dim, 1)]
        self.convs = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(cfg.out_dim)
        self.out_dim = cfg.out_dim
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1), persistent=False)

    @property
    def tokens_per_frame(self) -> int:
        return self.cfg.tokens_per_side**2

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (N, 3, S, S) in [0, 1] -> tokens (N, tokens_per_frame, out_dim)."""
        grid = self.convs(pixels - self.mean)  # (N, out_dim, S/16, S/16)
        return self.norm(pool_2x2(grid, self.cfg.tokens_per_side))


class ClipFrameEncoder(nn.Module):
    CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
    CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        try:
            from transformers import CLIPVisionConfig, CLIPVisionModel
        except ImportError as e:
            raise ImportError("CLIP frame encoders need `pip install transformers`.") from e
        if cfg.clip_config is not None:  # architecture only (weights come from the model folder)
            self.clip = CLIPVisionModel(CLIPVisionConfig(**cfg.clip_config))
        elif cfg.clip_name:
            self.clip = CLIPVisionModel.from_pretrained(cfg.clip_name)
        else:
            raise ValueError("a clip vision config needs clip_name or clip_config")
        grid = self.clip.config.image_size // self.clip.config.patch_size
        self.cfg = VisionConfig(
            **{**asdict(cfg), "image_size": self.clip.config.image_size, "tokens_per_side": grid // 2}
        )
        self.out_dim = self.clip.config.hidden_size
        self.register_buffer("mean", torch.tensor(self.CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.CLIP_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def tokens_per_frame(self) -> int:
        return self.cfg.tokens_per_side**2

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (N, 3, S, S) in [0, 1] -> tokens (N, (grid/2)², hidden)."""
        out = self.clip(pixel_values=(pixels - self.mean) / self.std, output_hidden_states=True)
        patches = out.hidden_states[-2][:, 1:]  # penultimate layer, without the CLS token: (N, grid², C)
        n, p, c = patches.shape
        g = int(round(p**0.5))
        grid = patches.transpose(1, 2).reshape(n, c, g, g)
        return (
            F.interpolate(grid, size=(g // 2, g // 2), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
        )


def make_frame_encoder(cfg: VisionConfig) -> nn.Module:
    if cfg.kind == "shapes":
        return ShapesFrameEncoder(cfg)
    if cfg.kind == "clip":
        return ClipFrameEncoder(cfg)
    raise ValueError(f"unknown vision encoder kind {cfg.kind!r}: expected 'shapes' or 'clip'")
