"""The Memory lab: real training steps on ShapeWorld clips under each checkpointing mode.

What the Space's "Memory lab" tab shows, computed here (app.py only draws it):

- `train(...)` runs the same few training steps (same initial weights, same clips, AdamW) once per
  checkpointing mode and streams, per step, the loss, the time and, for the first step, the memory
  timeline of forward + backward from `ma2mba.memory`. Equal losses in every mode show that
  checkpointing recomputes exactly; the timelines show what each mode keeps.
- `summarize(...)` turns that into a table: peak memory measured and predicted, seconds per step,
  the recompute overhead against no checkpointing, and the planner's grid (l, s).
- `sweep(...)` measures the peak of one step against the clip length, next to the cost model's
  prediction (`checkpointing.predict_peak_bytes`).
- `longest_clips(...)` answers "how long a clip can each mode train within this budget?".
- `kv_cache_bytes` / `state_bytes`: what a transformer's KV cache and a Mamba-2 state weigh, for
  the Watch tab's comparison.

A training step here is the paper's: the video's frame tokens and a multi-turn conversation about
it in one sequence, the loss on answer tokens only. The frame encoder is frozen (as the paper
freezes CLIP), so its features are computed once per clip, outside the measured step.

Guardrails (`Limits`, overridable by environment variables) keep a 2-vCPU / 16 GB machine safe:
caps on clip length, tokens and steps, and any mode whose predicted peak is above
MA2MBA_LAB_MAX_PEAK_MB is skipped with the reason instead of run.
"""

from __future__ import annotations

import copy
import functools
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .data import world
from .data.batches import Ask, conversation_tokens
from .data.questions import sample_questions
from .data.render import render_letterboxed
from .engine.config import Mamba2Config
from .engine.mamba2 import Block
from .memory.checkpointing import MAX_PLAN_BUDGET_BYTES, MAX_PLAN_SEQ_LEN, MODES, max_seq_len, plan, predict_peak_bytes
from .memory.meter import peak_bytes, record_timeline
from .packaged.recipe import packaged_config, vocabulary_texts
from .video.model import IGNORE, VideoConfig, VideoMa2mba
from .video.tokenizer import build_word_tokenizer
from .video.vision import VisionConfig, frames_to_tensor

MODE_LABELS = {"none": "none", "layer": "per-layer", "sqrt": "√L", "multi_axis": "MA-GC"}
LAB_SEED_BASE = 1 << 40  # lab clips never coincide with training or evaluation videos
QUESTIONS_PER_CLIP = 4
LEARNING_RATE = 1e-3
TIMELINE_POINTS = 200


class LabError(ValueError):
    """A lab request outside what the lab can run; the message says what to change."""


@dataclass(frozen=True)
class Preset:
    """A model size for the lab: a Mamba-2 LM and how many tokens one frame becomes."""

    name: str
    lm: Mamba2Config
    tokens_per_side: int  # visual tokens per frame = tokens_per_side², plus one time marker
    dtype: torch.dtype = torch.float32
    trainable: bool = True  # False: only the planner runs (too large to train here)
    max_tokens: int = 4096  # training cap: bigger models get shorter sequences, so a run stays minutes long
    description: str = ""

    @property
    def tokens_per_frame(self) -> int:
        return 1 + self.tokens_per_side**2

    def video_config(self) -> VideoConfig:
        base = packaged_config()
        return VideoConfig(
            lm=self.lm,
            vision=VisionConfig(kind="shapes", image_size=base.vision.image_size, tokens_per_side=self.tokens_per_side),
        )


def _lm(d_model, n_layer, **ssm) -> Mamba2Config:
    return Mamba2Config(d_model=d_model, n_layer=n_layer, vocab_size=128, pad_vocab_size_multiple=8, ssm_cfg=ssm)


PRESETS = {
    p.name: p
    for p in (
        Preset(
            "packaged", packaged_config().lm, 1, description="the packaged model: 6 layers × 192, 2 tokens per frame"
        ),
        Preset(
            "medium",
            _lm(256, 12, d_state=32, headdim=32, chunk_size=64),
            2,
            max_tokens=2048,
            description="12 layers × 256, 5 tokens per frame",
        ),
        Preset(
            "large",
            _lm(384, 24, d_state=64, headdim=48, chunk_size=64),
            3,
            max_tokens=1024,
            description="24 layers × 384, 10 tokens per frame",
        ),
        # state-spaces/mamba2-2.7b with the paper's 144 CLIP tokens per frame, in bf16: the planner only.
        Preset(
            "paper 2.7B",
            Mamba2Config(d_model=2560, n_layer=64, vocab_size=50277, pad_vocab_size_multiple=16),
            12,
            dtype=torch.bfloat16,
            trainable=False,
            description="Mamba2-2.7B, 145 tokens per frame, bf16 (planner only: too large to train here)",
        ),
    )
}


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@dataclass(frozen=True)
class Limits:
    max_clip_seconds: int = 600
    max_steps: int = 10
    max_tokens: int = 4096
    max_peak_bytes: int = 2 * 2**30  # predicted activation peak above which a mode is skipped
    max_sweep_points: int = 8

    @classmethod
    def from_env(cls) -> Limits:
        return cls(
            max_clip_seconds=_env_int("MA2MBA_LAB_MAX_SECONDS", cls.max_clip_seconds),
            max_steps=_env_int("MA2MBA_LAB_MAX_STEPS", cls.max_steps),
            max_tokens=_env_int("MA2MBA_LAB_MAX_TOKENS", cls.max_tokens),
            max_peak_bytes=_env_int("MA2MBA_LAB_MAX_PEAK_MB", cls.max_peak_bytes >> 20) << 20,
        )


# --- the training step ---


@dataclass
class Clip:
    """One ShapeWorld clip, ready for the LM: frozen-encoder features and the conversation after it."""

    features: torch.Tensor  # (N, k, C) frame-encoder output
    times: list  # (N,) seconds
    prompt_ids: torch.Tensor  # (P,)
    qa_ids: torch.Tensor  # (Q,) the conversation, teacher-forced
    labels: torch.Tensor  # (P + N·(1 + k) + Q,) next token at answer positions, IGNORE elsewhere

    @property
    def tokens(self) -> int:
        return len(self.labels)


@functools.lru_cache(maxsize=1)
def _packaged_tokenizer():
    return build_word_tokenizer(vocabulary_texts())


def build_model(preset: Preset, seed: int = 0) -> VideoMa2mba:
    torch.manual_seed(seed)
    model = VideoMa2mba(preset.video_config(), _packaged_tokenizer())
    model.vision.eval().requires_grad_(False)  # frozen, as the paper freezes CLIP
    return model


@torch.no_grad()
def make_clip(model: VideoMa2mba, seconds: int, seed: int) -> Clip:
    video = world.generate(seed, seconds)
    frames = render_letterboxed(video, range(seconds), model.vision.cfg.image_size, aspect=(16, 9))
    features = model.vision(frames_to_tensor(frames, model.vision.cfg.image_size, model.device))
    asks = [
        Ask(0, 0, qa.question, qa.answer, qa.kind_of_question)
        for qa in sample_questions(video, seed, n=QUESTIONS_PER_CLIP)
    ]
    qa_ids, qa_labels, _ = conversation_tokens(model, asks)
    prompt_ids = model.prompt_ids()
    before = len(prompt_ids) + seconds * model.tokens_per_frame  # positions whose next token is no answer
    labels = [IGNORE] * before + qa_labels
    return Clip(features, list(range(seconds)), torch.tensor(prompt_ids), torch.tensor(qa_ids), torch.tensor(labels))


def clip_loss(model: VideoMa2mba, clip: Clip) -> torch.Tensor:
    """The answer loss of one clip: frame tokens and conversation in one sequence through the LM."""
    visual = model.projector(clip.features)  # (N, k, d)
    frames = model.frame_embeds(visual, clip.times).flatten(0, 1)  # (N·(1 + k), d)
    embeds = torch.cat([model.embed_ids(clip.prompt_ids), frames, model.embed_ids(clip.qa_ids)])[None]
    hidden = model.lm(inputs_embeds=embeds, return_logits=False).hidden
    return model.answer_loss(hidden, clip.labels[None])


def _trainable(model: VideoMa2mba) -> list[torch.nn.Parameter]:
    params = {id(p): p for p in model.parameters() if p.requires_grad}  # the tied head counts once
    return list(params.values())


def _allocate_gradients(params) -> None:
    """Gradient buffers exist before a measured step, as after any first step (and as the planner assumes)."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)


def sequence_tokens(preset: Preset, seconds: int) -> int:
    """Tokens of a lab sequence for a clip of `seconds` (the conversation's length is an estimate)."""
    return _fixed_tokens() + seconds * preset.tokens_per_frame


@functools.lru_cache(maxsize=1)
def _fixed_tokens() -> int:
    """Prompt plus a typical conversation: the lab's questions about a sample clip."""
    model = build_model(PRESETS["packaged"])
    return make_clip(model, 8, LAB_SEED_BASE).tokens - 8 * model.tokens_per_frame


# --- training runs ---


@dataclass
class StepResult:
    mode: str
    step: int
    loss: float
    seconds: float
    tokens: int
    peak_bytes: int | None = None  # measured on the recorded (first) step
    timeline: list | None = None  # live bytes over the recorded step, at most TIMELINE_POINTS values


@dataclass
class ModeSummary:
    mode: str
    tokens: int
    layers_per_block: int  # the planner's grid (l, s) for this mode
    tokens_per_segment: int
    predicted_bytes: int
    peak_bytes: int | None = None
    seconds_per_step: float | None = None
    losses: list = field(default_factory=list)
    skipped: str | None = None  # why the mode did not run


def _check(preset_name: str, modes, clip_seconds: int, steps: int, limits: Limits) -> Preset:
    if preset_name not in PRESETS:
        raise LabError(f"Unknown model size {preset_name!r}; choose one of {', '.join(PRESETS)}.")
    preset = PRESETS[preset_name]
    if not preset.trainable:
        raise LabError(
            f"The {preset.name} preset is too large to train on this machine; "
            "use it with the memory budget field, which only runs the planner."
        )
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise LabError(f"Choose one or more checkpointing modes among {', '.join(MODES)} (got {list(modes)}).")
    if not 4 <= clip_seconds <= limits.max_clip_seconds:
        raise LabError(f"Clip length must be between 4 and {limits.max_clip_seconds} seconds on this machine.")
    if not 1 <= steps <= limits.max_steps:
        raise LabError(f"Steps must be between 1 and {limits.max_steps}.")
    tokens, cap = sequence_tokens(preset, clip_seconds), token_cap(preset, limits)
    if tokens > cap:
        raise LabError(
            f"A {clip_seconds} s clip is about {tokens} tokens for the {preset.name} model, above its "
            f"{cap}-token cap on this machine: use at most {longest_trainable_clip(preset, limits)} s."
        )
    return preset


def token_cap(preset: Preset, limits: Limits) -> int:
    return min(limits.max_tokens, preset.max_tokens)


def longest_trainable_clip(preset: Preset, limits: Limits) -> int:
    """Seconds of the longest clip the guardrails let this preset train."""
    return min(limits.max_clip_seconds, (token_cap(preset, limits) - _fixed_tokens()) // preset.tokens_per_frame)


def planned_grid(lm: Mamba2Config, tokens: int, mode: str, dtype=torch.float32) -> tuple[int, int]:
    """The (layers per block, tokens per segment) a mode uses for a sequence of `tokens`."""
    p = plan(lm, tokens, dtype=dtype, modes=(mode,))
    return p.layers_per_block, min(p.tokens_per_segment, tokens)


def train(preset_name: str, modes, clip_seconds: int, steps: int, seed: int = 0, limits: Limits | None = None):
    """Yield a StepResult per step and a ModeSummary per mode, mode after mode.

    Every mode starts from the same weights and trains on the same clips, so their losses must agree.
    Raises LabError for requests outside `limits` before anything runs.
    """
    limits = limits or Limits()
    preset = _check(preset_name, modes, clip_seconds, steps, limits)
    model = build_model(preset, seed)
    initial = copy.deepcopy(model.state_dict())
    clips = [make_clip(model, clip_seconds, LAB_SEED_BASE + seed * 1000 + i) for i in range(steps)]
    tokens = clips[0].tokens
    try:
        for mode in modes:
            l, s = planned_grid(preset.lm, tokens, mode)
            summary = ModeSummary(mode, tokens, l, s, predict_peak_bytes(preset.lm, tokens, mode))
            if summary.predicted_bytes > limits.max_peak_bytes:
                summary.skipped = (
                    f"needs about {summary.predicted_bytes / 2**20:,.0f} MiB of activations, above "
                    f"this machine's {limits.max_peak_bytes / 2**20:,.0f} MiB cap"
                )
                yield summary
                continue
            yield from _train_mode(model, initial, clips, summary)
    finally:
        model.lm.set_checkpointing("none")


def _train_mode(model, initial, clips, summary: ModeSummary):
    model.load_state_dict(initial)
    model.lm.set_checkpointing(summary.mode)
    params = _trainable(model)
    optimizer = torch.optim.AdamW(params, lr=LEARNING_RATE)
    _allocate_gradients(params)
    times = []
    for step, clip in enumerate(clips):
        started = time.perf_counter()
        losses = []

        def forward_backward():
            loss = clip_loss(model, clip)
            loss.backward()
            losses.append(loss.item())

        result = StepResult(summary.mode, step, 0.0, 0.0, clip.tokens)
        if step == 0:  # the recorder costs time: record one step, time the others
            timeline = record_timeline(forward_backward)
            result.peak_bytes, result.timeline = timeline.peak, timeline.downsample(TIMELINE_POINTS)
            summary.peak_bytes = timeline.peak
        else:
            forward_backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        result.loss, result.seconds = losses[0], time.perf_counter() - started
        times.append(result.seconds)
        summary.losses.append(result.loss)
        yield result
    summary.seconds_per_step = float(np.median(times[1:] if len(times) > 1 else times))
    yield summary


def recompute_overhead(summaries: list[ModeSummary]) -> dict:
    """Extra time per step against no checkpointing (0.3 = 30 % slower), for modes that ran along
    with "none"; empty without a "none" run to compare with."""
    ran = {s.mode: s for s in summaries if s.seconds_per_step}
    if "none" not in ran:
        return {}
    base = ran["none"].seconds_per_step
    return {mode: s.seconds_per_step / base - 1 for mode, s in ran.items()}


# --- peak memory against length ---


@dataclass
class SweepPoint:
    mode: str
    seconds: int
    tokens: int
    predicted_bytes: int
    measured_bytes: int | None  # None where the guardrails do not allow running it


def sweep_lengths(preset: Preset, limits: Limits) -> list[int]:
    """Clip lengths that double from 8 s up to what the limits allow."""
    longest = longest_trainable_clip(preset, limits)
    lengths = [8 * 2**i for i in range(limits.max_sweep_points) if 8 * 2**i <= longest]
    return lengths or [min(8, longest)]


def sweep(preset_name: str, modes, seed: int = 0, limits: Limits | None = None):
    """Yield a SweepPoint per (length, mode): one forward + backward measured, next to the prediction."""
    limits = limits or Limits()
    preset = _check(preset_name, modes, 8, 1, limits)
    model = build_model(preset, seed)
    params = _trainable(model)
    _allocate_gradients(params)
    try:
        for seconds in sweep_lengths(preset, limits):
            clip = make_clip(model, seconds, LAB_SEED_BASE + seed * 1000)
            for mode in modes:
                predicted = predict_peak_bytes(preset.lm, clip.tokens, mode)
                measured = None
                if predicted <= limits.max_peak_bytes:
                    model.lm.set_checkpointing(mode)
                    measured = peak_bytes(lambda: clip_loss(model, clip).backward())
                yield SweepPoint(mode, seconds, clip.tokens, predicted, measured)
    finally:
        model.lm.set_checkpointing("none")


# --- budgets ---


@dataclass
class Reach:
    mode: str
    tokens: int  # the longest training sequence within the budget
    seconds: int  # the longest clip at 1 FPS
    at_least: bool = False  # the planner's search stopped at its longest sequence: it may be longer still


def longest_clips(preset_name: str, budget_bytes: int, modes=MODES) -> list[Reach]:
    """The longest clip each mode can train within `budget_bytes` of activation memory (cost model)."""
    if preset_name not in PRESETS:
        raise LabError(f"Unknown model size {preset_name!r}; choose one of {', '.join(PRESETS)}.")
    if not 0 < budget_bytes <= MAX_PLAN_BUDGET_BYTES:
        raise LabError(f"The memory budget must be positive and at most {MAX_PLAN_BUDGET_BYTES / 2**30:,.0f} GiB.")
    preset = PRESETS[preset_name]
    out = []
    for mode in modes:
        tokens = max_seq_len(preset.lm, int(budget_bytes), mode, dtype=preset.dtype)
        seconds = max(0, (tokens - _fixed_tokens()) // preset.tokens_per_frame)
        out.append(Reach(mode, tokens, seconds, at_least=tokens >= MAX_PLAN_SEQ_LEN))
    return out


# --- inference memory: a recurrent state against a KV cache ---


def kv_cache_bytes(lm: Mamba2Config, tokens: int, bytes_per_value: int = 4) -> int:
    """A transformer of the same depth and width caches a key and a value of d_model numbers per
    layer for every token it has seen."""
    return 2 * lm.n_layer * lm.d_model * tokens * bytes_per_value


def state_bytes(lm: Mamba2Config, dtype=torch.float32) -> int:
    """Bytes of the Mamba-2 recurrent state (conv + SSM state of every layer), whatever the length."""
    with torch.device("meta"):
        conv, ssm = Block(lm, 0).mixer.empty_state(1, dtype)
    return lm.n_layer * sum(t.numel() * t.element_size() for t in (conv, ssm))
