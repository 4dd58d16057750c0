"""Tiny models for fast tests."""

import numpy as np
import torch

from ma2mba import Mamba2Config
from ma2mba.video.model import VideoConfig, VideoMa2mba
from ma2mba.video.tokenizer import build_word_tokenizer
from ma2mba.video.vision import VisionConfig

WORDS = [
    "You are a helpful assistant.",
    "How many times did a red star appear?",
    "Did a blue circle appear?",
    "What shape appeared first?",
    "at 1:23",
    "yes no star circle square triangle",
]


def tiny_video_model(seed=0, dtype=torch.float32, tokens_per_side=1) -> VideoMa2mba:
    torch.manual_seed(seed)
    lm = Mamba2Config(d_model=32, n_layer=2, vocab_size=64, ssm_cfg=dict(d_state=8, headdim=8, chunk_size=8))
    vision = VisionConfig(kind="shapes", image_size=32, channels=(4, 8), out_dim=16, tokens_per_side=tokens_per_side)
    model = VideoMa2mba(VideoConfig(lm=lm, vision=vision), build_word_tokenizer(WORDS))
    return model.to(dtype).eval()


def random_frames(n, seed=0, h=24, w=40):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def check_split_and_step_identity(lm, ids, cuts_list, full, states_close, **tol):
    """lm over pieces of `ids` (state handed on) and token by token both equal `full = lm(ids)`."""
    length = ids.shape[1]
    for cuts in cuts_list:
        state, logits = None, []
        for start, stop in zip([0, *cuts], [*cuts, length]):
            out = lm(ids[:, start:stop], state=state)
            state = out.state
            logits.append(out.logits)
        torch.testing.assert_close(torch.cat(logits, 1), full.logits, **tol)
        states_close(state, full.state, **tol)
    state, logits = lm.empty_state(ids.shape[0]), []
    for t in range(length):
        out = lm.step(ids[:, t], state)
        state = out.state
        logits.append(out.logits)
    torch.testing.assert_close(torch.stack(logits, 1), full.logits, **tol)
    states_close(state, full.state, **tol)
