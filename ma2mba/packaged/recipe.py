"""The packaged model, defined in one place: its architecture, its vocabulary and its training recipe.

`load_model()` loads what this recipe trained (assets/ma2mba-shapes); the model card is written
from these values; `ma2mba train --recipe NAME` runs one of RECIPES.
"""

from __future__ import annotations

import dataclasses

import torch

from ..data import world
from ..data.questions import CAPTION_QUESTION, FRAME_QUESTION, all_questions, frame_caption, timed_captions
from ..engine.config import Mamba2Config
from ..engine.transformer import matched_transformer_config
from ..training.trainer import Stage
from ..video.model import VideoConfig, VideoMa2mba
from ..video.tokenizer import build_word_tokenizer
from ..video.vision import VisionConfig

# fmt: off
SHAPES = (
    Stage("vision", "kinds", steps=1200, lr=2e-3, frames_per_step=128, train_vision=True, warmup=50),
    Stage("align", "frames", steps=600, lr=2e-3, warmup=50),
    Stage("captions", "captions", steps=200, lr=1e-3, lengths=(16, 32, 64, 128), moments=6, asks_per_step=192),
    # Sized to ~1.5 h on one CPU thread (~6 s a step); a GPU run can afford longer lengths and more steps.
    Stage("qa", "qa", steps=900, lr=1e-3, lengths=(16, 32, 64, 128, 256, 512), promote_at=0.6, min_steps=30,
          tokens_per_step=4096, asks_per_step=256, caption_share=0.1,
          checkpointing="multi_axis", checkpointing_from=512),
    # Stage 2 again, longer, on an LM grown by a per-block MLP (zero-initialised, so the trained model
    # is unchanged at the start). The first QA stage learnt first/last but stalled on counts, "after"
    # and "when": questions that look up one of 28 (colour, shape) kinds, a conjunction of two words
    # that an MLP-free Mamba-2 forms slowly. Those kinds are asked more often here.
    Stage("qa_mlp", "qa", steps=1200, lr=1e-3, lengths=(32, 64, 128, 256, 512), promote_at=0.0, min_steps=1,
          replay=0.6, tokens_per_step=4096, asks_per_step=256,
          checkpointing="multi_axis", checkpointing_from=512, warmup=30, grow_mlp=384,
          question_kinds=("first_shape", "first_color", "last", "exists", "exists", "after", "after",
                          "count", "count", "count", "when", "when", "when")),
)
# fmt: on

# SHAPES at the budget the Transformer baseline is compared on (benchmarks/transformer_vs_mamba.py), about
# 30 min per model on one core: the same stages, data, curriculum lengths and promotion threshold, with
# fewer steps (vision 2/3, align 1/4, captions 3/10, qa 5/9, promotion after 20 steps instead of 30), 1/4 of
# the video tokens and 1/2 of the asks per qa step, and no gradient checkpointing (it changes memory, not
# the maths).
SHAPES_SMALL = (
    dataclasses.replace(SHAPES[0], steps=800),
    dataclasses.replace(SHAPES[1], steps=150, warmup=20),
    dataclasses.replace(SHAPES[2], steps=60, asks_per_step=24, tokens_per_step=1024, warmup=10),
    dataclasses.replace(
        SHAPES[3],
        steps=500,
        min_steps=20,
        asks_per_step=128,
        tokens_per_step=1024,
        warmup=20,
        checkpointing="none",
        checkpointing_from=0,
    ),
)

# A few steps of every task, checkpointing and growth: the tests use it to exercise the whole loop.
_SMOKE_QA = Stage(
    "qa", "qa", steps=3, lr=1e-3, lengths=(6, 10), min_steps=1, promote_at=0.0, tokens_per_step=64, asks_per_step=16,
    warmup=1,
)  # fmt: skip
SMOKE = (
    Stage("vision", "kinds", steps=2, lr=1e-3, frames_per_step=8, train_vision=True, warmup=1),
    Stage("align", "frames", steps=3, lr=1e-3, frames_per_step=8, warmup=1),
    Stage("captions", "captions", steps=2, lr=1e-3, lengths=(6,), tokens_per_step=48, asks_per_step=8, warmup=1),
    dataclasses.replace(_SMOKE_QA, checkpointing="multi_axis"),
    dataclasses.replace(_SMOKE_QA, name="qa_mlp", replay=0.5, grow_mlp=64, question_kinds=("count", "count", "when")),
)

RECIPES = {"shapes": SHAPES, "shapes_small": SHAPES_SMALL, "smoke": SMOKE}  # the names `ma2mba train --recipe` takes
LM_KINDS = ("mamba2", "transformer")  # the packaged Mamba-2, or the Transformer baseline of the same size


def packaged_config() -> VideoConfig:
    """The packaged model's architecture (before qa_mlp gives every block its MLP)."""
    lm = Mamba2Config(
        d_model=192,
        n_layer=6,
        vocab_size=128,
        pad_vocab_size_multiple=8,
        ssm_cfg=dict(d_state=32, headdim=48, chunk_size=64),
    )
    return VideoConfig(lm=lm, vision=VisionConfig(kind="shapes", image_size=128, tokens_per_side=1))


def vocabulary_texts() -> list[str]:
    """Every word the packaged model reads or writes (the tokenizer is built from these)."""
    texts = [packaged_config().system_prompt, FRAME_QUESTION, CAPTION_QUESTION, "nothing appeared", "nothing"]
    for seed in range(8):  # a few videos cover every template, kind and digit
        video = world.generate(seed, 240)
        texts += [f"{qa.question} {qa.answer}" for qas in all_questions(video).values() for qa in qas]
        texts += [text for _, text in timed_captions(video)]
        texts += [frame_caption(video, t) for t in range(0, 240, 3)]
    texts += [f"{c} {s}" for c in world.COLORS for s in world.SHAPES]
    return texts


def new_model(seed: int = 0, lm: str = "mamba2") -> VideoMa2mba:
    """The packaged architecture with seeded random weights, where training starts."""
    if lm not in LM_KINDS:
        raise ValueError(f"lm={lm!r}: choose one of {', '.join(LM_KINDS)}")
    torch.manual_seed(seed)
    config = packaged_config()
    if lm == "transformer":
        config = dataclasses.replace(config, lm=matched_transformer_config(config.lm))
    return VideoMa2mba(config, build_word_tokenizer(vocabulary_texts()))
