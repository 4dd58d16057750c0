"""Time markers: one token before each frame that says when it was shown.

The paper has none; "when did X appear?" needs one. Its embedding is a linear map of the one-hot
digits of m:ss, so the model can read minutes and seconds apart.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

# Minute tens (0-15, so up to 2h39m), minute ones, second tens, second ones.
TIME_DIGITS = (16, 10, 6, 10)
N_TIME_FEATURES = sum(TIME_DIGITS)


def time_features(times) -> torch.Tensor:
    """times (N,) in seconds -> (N, N_TIME_FEATURES) one-hot digits of m:ss."""
    t = np.asarray(times, dtype=np.float64).reshape(-1).astype(np.int64)
    minutes, seconds = t // 60, t % 60
    digits = [np.minimum(minutes // 10, TIME_DIGITS[0] - 1), minutes % 10, seconds // 10, seconds % 10]
    feats = np.zeros((len(t), N_TIME_FEATURES), dtype=np.float32)
    offset = 0
    for d, width in zip(digits, TIME_DIGITS):
        feats[np.arange(len(t)), offset + d] = 1.0
        offset += width
    return torch.from_numpy(feats)


class TimeMarker(nn.Linear):
    """times (N,) -> marker embeddings (N, d_model)."""

    def __init__(self, d_model: int):
        super().__init__(N_TIME_FEATURES, d_model)

    def forward(self, times) -> torch.Tensor:
        return super().forward(time_features(times).to(self.weight.device, self.weight.dtype))
