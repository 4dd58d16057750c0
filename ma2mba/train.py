"""Train the packaged model: the paper's staged recipe, adapted to ShapeWorld on a CPU.

Stages (Video-Ma²mba §4, adapted):
  0    vision    the frame encoder learns which of the 28 kinds are visible (multi-label), standing
                 in for CLIP's pretraining: we have no pretrained vision tower.
  1    align     single frames -> "Describe the frame." -> "a red star and a blue circle".
                 Trains the projector and the LM on a frozen vision encoder.
  1.5  captions  long videos -> "Describe the recent events." -> dense timed captions.
  2    qa        long videos -> the seven ShapeWorld question types.
Stages 1.5 and 2 freeze the vision encoder, as the paper freezes CLIP, and climb a curriculum of
video lengths: a length is promoted once its running exact-match accuracy passes `promote_at`,
and earlier lengths are replayed now and then. Questions branch from the state at several moments
of each video (data/batches.py), so every pass supervises many answers at many lengths.

Everything is resumable: `checkpoint.pt` is written every `checkpoint_every` steps and on Ctrl-C,
and a rerun of the same command continues where it stopped. `log.jsonl` records loss, accuracy,
speed and memory per step.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import torch

from .baselines import matched_transformer_config
from .data import shapeworld
from .data.batches import (ASPECTS, Ask, answer_scores, collate, conversations, gather_states, pixels, prompt_state,
                           render_letterboxed, run_frames, visual_tokens)
from .lm import Mamba2LM
from .model import VideoMa2mba, packaged_config
from .tokenizer import build_word_tokenizer, with_phrase_tokens

TRAIN_SEED_BASE = 1 << 32  # training videos use seeds >= 2^32; evaluation sets use smaller ones
CAPTION_QUESTION = "Describe the recent events."
FRAME_QUESTION = "Describe the frame."
CAPTION_WINDOW_S = 20
CAPTION_MAX_EVENTS = 4
COUNTER_CLASSES = shapeworld.MAX_COUNT + 1  # running counts 0..20 (an appearance's own is 1..20)


@dataclass
class Stage:
    name: str
    task: str  # "kinds", "frames", "captions" or "qa"
    steps: int
    lr: float
    lengths: tuple = (1,)  # curriculum of video lengths in seconds (= frames at 1 FPS)
    promote_at: float = 0.85
    min_steps: int = 40  # steps at a length before it can be promoted
    replay: float = 0.25  # share of steps that revisit an earlier length
    tokens_per_step: int = 8192  # video tokens per step; the batch size follows from the length …
    max_videos: int = 64  # … up to this many videos
    frames_per_step: int = 96  # the "frames" task's batch
    moments: int = 4  # states per video that questions branch from
    asks_per_step: int = 384  # questions per step, spread over the videos and moments
    turns: int = 4  # questions per conversation (the paper's multi-turn template)
    caption_share: float = 0.0  # qa stage: share of timed-caption asks kept from stage 1.5
    upload_share: float = 0.25  # frames rendered at 360p and shrunk, as uploads are
    train_vision: bool = False
    checkpointing: str = "none"  # gradient checkpointing mode for the LM on long clips …
    checkpointing_from: int = 0  # … of at least this many seconds (shorter ones need none)
    warmup: int = 50
    question_kinds: tuple | None = None  # qa: the kinds asked, in turns; a kind listed twice comes twice as often
    grow_mlp: int = 0  # > 0: the stage first gives every LM block an MLP of this width, starting as the identity
    kind_tokens: bool = False  # the stage first gives each (colour, shape) kind one token (join_kind_tokens)
    grow_layers: tuple = ()  # the stage first inserts fresh identity-started LM blocks at these indices
    grow_state: int = 0  # > 0: the stage first widens every mixer's SSM state to this d_state
    grow_conv: int = 0  # > 0: the stage first widens every mixer's causal convolution to this many taps
    timescale_lr: float = 1.0  # learning-rate multiplier for A_log and dt_bias, the parameters of the memory's decay
    counter_loss: float = 0.0  # > 0: weight of the running-count loss at every appearance (Trainer.counter_head)


RECIPES = {
    "shapes": [
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
    ],
    # "shapes" at a budget the Transformer baseline is compared on (the accuracy section of
    # benchmarks/transformer_vs_mamba.py), about 30 min per model on one core: the same stages, data,
    # curriculum lengths and promotion threshold, with fewer steps (vision 2/3, align 1/4, captions 3/10,
    # qa 5/9, and a length can be promoted after 20 steps instead of 30), 1/4 of the video tokens and
    # 1/2 of the asks per qa step, and no gradient checkpointing (it changes memory, not the maths).
    "shapes_small": [
        Stage("vision", "kinds", steps=800, lr=2e-3, frames_per_step=128, train_vision=True, warmup=50),
        Stage("align", "frames", steps=150, lr=2e-3, warmup=20),
        Stage("captions", "captions", steps=60, lr=1e-3, lengths=(16, 32, 64, 128), moments=6,
              asks_per_step=24, tokens_per_step=1024, warmup=10),
        Stage("qa", "qa", steps=500, lr=1e-3, lengths=(16, 32, 64, 128, 256, 512), promote_at=0.6, min_steps=20,
              caption_share=0.1, asks_per_step=128, tokens_per_step=1024, warmup=20),
    ],
    # A few steps of everything: the tests and `--recipe smoke` use it to exercise the whole loop.
    "smoke": [
        Stage("vision", "kinds", steps=2, lr=1e-3, frames_per_step=8, train_vision=True, warmup=1),
        Stage("align", "frames", steps=3, lr=1e-3, frames_per_step=8, warmup=1),
        Stage("captions", "captions", steps=2, lr=1e-3, lengths=(6,), tokens_per_step=48, asks_per_step=8, warmup=1),
        Stage("qa", "qa", steps=3, lr=1e-3, lengths=(6, 10), min_steps=1, promote_at=0.0,
              tokens_per_step=64, asks_per_step=16, warmup=1, checkpointing="multi_axis"),
        Stage("qa_mlp", "qa", steps=3, lr=1e-3, lengths=(6, 10), min_steps=1, promote_at=0.0, replay=0.5,
              tokens_per_step=64, asks_per_step=16, warmup=1, grow_mlp=64, kind_tokens=True,
              grow_layers=(1,), grow_state=48, grow_conv=6, timescale_lr=10.0, counter_loss=1.0,
              question_kinds=("count", "count", "when")),
    ],
}


def vocabulary_texts() -> list[str]:
    """Every word the packaged model reads or writes (the tokenizer is built from these)."""
    texts = [packaged_config().system_prompt, FRAME_QUESTION, CAPTION_QUESTION, "nothing appeared", "nothing"]
    for seed in range(8):  # a few videos cover every template, kind and digit
        video = shapeworld.generate(seed, 240)
        texts += [f"{qa.question} {qa.answer}" for qas in video.all_questions().values() for qa in qas]
        texts += [text for _, text in video.timed_captions()]
        texts += [video.frame_caption(t) for t in range(0, 240, 3)]
    texts += [f"{c} {s}" for c in shapeworld.COLORS for s in shapeworld.SHAPES]
    return texts


LM_KINDS = ("mamba2", "transformer")  # the packaged Mamba-2, or the Transformer baseline of the same size


def new_packaged_model(seed: int = 0, lm: str = "mamba2") -> VideoMa2mba:
    if lm not in LM_KINDS:
        raise ValueError(f"lm={lm!r}: choose one of {', '.join(LM_KINDS)}")
    torch.manual_seed(seed)
    config = packaged_config()
    if lm == "transformer":
        config = dataclasses.replace(config, lm=matched_transformer_config(config.lm))
    return VideoMa2mba(config, build_word_tokenizer(vocabulary_texts()))


def has_kind_tokens(model: VideoMa2mba) -> bool:
    return len(model.tokenizer.encode(shapeworld.kind_name(shapeworld.KINDS[0]))) == 1


def join_kind_tokens(model: VideoMa2mba) -> None:
    """Read and write each of the 28 kinds ("red star") as one token instead of two words.

    Looking a kind up then needs no conjunction of a colour token and a shape token, which is the
    step the word-level model learns slowest (benchmarks/shapes_errors.py). The new tokens take
    unused rows of the (padded, tied) embedding, each starting as the mean of its two words, and
    every existing token keeps its id. A stage with kind_tokens=True calls it; the shipped model does
    not use it (a stage that did was measured and not shipped: results/kind_tokens/).
    """
    phrases = [shapeworld.kind_name(k) for k in shapeworld.KINDS]
    joined = with_phrase_tokens(model.tokenizer, phrases)
    if len(joined) > model.config.lm.padded_vocab_size:
        raise ValueError(f"{len(joined)} tokens do not fit the LM's vocabulary of {model.config.lm.padded_vocab_size}")
    embedding = model.lm.backbone.embedding.weight
    with torch.no_grad():
        for phrase in phrases:
            (new_id,) = joined.encode(phrase)
            embedding[new_id] = embedding[model.tokenizer.encode(phrase)].mean(0)
    model.tokenizer = joined


def caption_answer(video: shapeworld.Video, as_of: int) -> str:
    recent = [text for start, text in video.timed_captions(as_of) if start > as_of - CAPTION_WINDOW_S]
    return ". ".join(recent[-CAPTION_MAX_EVENTS:]) if recent else "nothing appeared"


def counter_targets(videos, length: int) -> tuple[torch.Tensor, ...]:
    """Every appearance in the first `length` seconds of each video, as four index tensors:
    video, frame (= second) where it appears, kind (index in KINDS), and its kind's running count then."""
    rows = [(b, a.start, shapeworld.KINDS.index(a.kind), min(n, COUNTER_CLASSES - 1))
            for b, video in enumerate(videos) for a, n in video.running_counts(length - 1)]
    return tuple(torch.tensor(x, dtype=torch.long) for x in zip(*rows)) if rows else (torch.zeros(0, dtype=torch.long),) * 4


def lr_at(stage: Stage, step: int) -> float:
    """Linear warmup, then cosine decay to a tenth of the peak."""
    if step < stage.warmup:
        return stage.lr * (step + 1) / stage.warmup
    progress = (step - stage.warmup) / max(1, stage.steps - stage.warmup)
    return stage.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class Curriculum:
    """Which video length to train on next."""

    def __init__(self, stage: Stage):
        self.stage = stage
        self.level = 0
        self.steps_at_level = 0
        self.recent = deque(maxlen=300)  # exact-match results at the current level

    def length(self, rng: np.random.Generator) -> int:
        if self.level > 0 and rng.random() < self.stage.replay:
            return self.stage.lengths[int(rng.integers(self.level))]
        return self.stage.lengths[self.level]

    def record(self, length: int, correct) -> None:
        if length == self.stage.lengths[self.level]:
            self.recent.extend(bool(c) for c in correct)
            self.steps_at_level += 1
        top = self.level + 1 == len(self.stage.lengths)
        if not top and self.steps_at_level >= self.stage.min_steps and self.accuracy() >= self.stage.promote_at:
            self.level += 1
            self.steps_at_level = 0
            self.recent.clear()

    def accuracy(self) -> float:
        return float(np.mean(self.recent)) if self.recent else 0.0

    def state_dict(self):
        return {"level": self.level, "steps_at_level": self.steps_at_level, "recent": list(self.recent)}

    def load_state_dict(self, d):
        self.level, self.steps_at_level = d["level"], d["steps_at_level"]
        self.recent.extend(d["recent"])


def no_decay(name: str, p: torch.nn.Parameter) -> bool:
    return p.dim() < 2 or getattr(p, "_no_weight_decay", False) or "embedding" in name or "time_embed" in name


def is_timescale(name: str) -> bool:
    """A Mamba-2 head's decay per token is exp(-softplus(dt_bias + …) * exp(A_log))."""
    return name.endswith(("A_log", "dt_bias"))


def bf16_pays(device) -> bool:
    """Whether bf16 autocast speeds training up on `device`: on a GPU that has bf16, and on a CPU with native
    bf16 instructions (AVX512-BF16 or AMX). On a plain AVX2 CPU the bf16 kernels emulate it, and a QA step
    of the shapes recipe ran 5.7x slower under autocast than in fp32 (benchmarks/train_precision.py)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def make_optimizer(named_params, lr: float, timescale_lr: float = 1.0) -> torch.optim.Optimizer:
    """AdamW; each group's "lr_scale" multiplies the schedule's learning rate (train_step applies it)."""
    decay, other, timescale = [], [], []
    for name, p in named_params:
        if timescale_lr != 1.0 and is_timescale(name):
            timescale.append(p)
        else:
            (other if no_decay(name, p) else decay).append(p)
    groups = [{"params": decay, "weight_decay": 0.1, "lr_scale": 1.0},
              {"params": other, "weight_decay": 0.0, "lr_scale": 1.0}]
    if timescale:
        groups.append({"params": timescale, "weight_decay": 0.0, "lr_scale": timescale_lr})
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


class Trainer:
    def __init__(self, out_dir, recipe: str = "shapes", seed: int = 0, bf16: bool | None = None, model=None,
                 lm: str = "mamba2", device="cpu", start_stage: str | None = None):
        """bf16: autocast on or off; None turns it on where it pays (bf16_pays).
        start_stage: a new run begins at this stage of the recipe, taking `model` as the earlier stages'
        result (a run resumed from its checkpoint continues where it stopped instead)."""
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.recipe_name = recipe
        self.stages = RECIPES[recipe]
        self.seed = seed
        self.bf16 = bf16_pays(device) if bf16 is None else bf16
        self.device = torch.device(device)
        self.model = (model if model is not None else new_packaged_model(seed, lm)).to(self.device)
        # Stage 0's temporary classifier: which of the 28 kinds a frame shows (not part of the model).
        self.kinds_head = torch.nn.Linear(self.model.vision.out_dim, len(shapeworld.KINDS)).to(self.device)
        # The head of a stage's counter_loss: the LM's output at a frame -> each kind's running count (not part of
        # the model). Made on a forked RNG, so that recipes without it draw the same random numbers as before.
        with torch.random.fork_rng(devices=[]):
            self.counter_head = torch.nn.Linear(self.model.config.lm.d_model, len(shapeworld.KINDS) * COUNTER_CLASSES)
        self.counter_head.to(self.device)
        self._counter_accuracy = None
        names = [s.name for s in self.stages]
        if start_stage is not None and start_stage not in names:
            raise ValueError(f"recipe {recipe!r} has no stage {start_stage!r}: its stages are {', '.join(names)}")
        self.stage_index, self.step = (names.index(start_stage) if start_stage else 0), 0
        self.rng = np.random.default_rng(seed)
        self.seconds = 0.0  # training wall time, summed over resumed runs
        self.videos_made = 0
        self._stop = False
        self.grown = set()  # stages whose growth (grow_layers) the model has had
        self._begin_stage()
        if (self.out / "checkpoint.pt").exists():
            self._load(self.out / "checkpoint.pt")

    @property
    def stage(self) -> Stage:
        return self.stages[min(self.stage_index, len(self.stages) - 1)]

    def _trainable(self, stage: Stage):
        """(name, parameter) pairs a stage trains: the vision encoder only while it is being taught."""
        if stage.task == "kinds":
            return [*self.model.vision.named_parameters("vision"), *self.kinds_head.named_parameters("kinds_head")]
        params = [(n, p) for n, p in self.model.named_parameters() if stage.train_vision or not n.startswith("vision.")]
        return params + (list(self.counter_head.named_parameters("counter_head")) if stage.counter_loss else [])

    def _begin_stage(self) -> None:
        stage = self.stage
        lm = self.model.lm
        if stage.grow_mlp and isinstance(lm, Mamba2LM) and lm.config.d_intermediate == 0:  # not grown yet
            lm.add_mlp(stage.grow_mlp)
        if stage.kind_tokens and not has_kind_tokens(self.model):  # not joined yet
            join_kind_tokens(self.model)
        if stage.grow_layers and isinstance(lm, Mamba2LM) and stage.name not in self.grown:
            lm.insert_layers(stage.grow_layers)
        if stage.grow_state and isinstance(lm, Mamba2LM) and lm.config.ssm.d_state < stage.grow_state:
            lm.grow_state(stage.grow_state)
        if stage.grow_conv and isinstance(lm, Mamba2LM) and lm.config.ssm.d_conv < stage.grow_conv:
            lm.widen_conv(stage.grow_conv)
        self.grown.add(stage.name)
        self.curriculum = Curriculum(stage)
        self.optimizer = make_optimizer(self._trainable(stage), stage.lr, stage.timescale_lr)  # fresh moments for a new task

    # --- batches ---
    def _video(self, duration: int) -> shapeworld.Video:
        self.videos_made += 1
        return shapeworld.generate(TRAIN_SEED_BASE + self.seed * (1 << 24) + self.videos_made, duration)

    def _render(self, video, times, stage: Stage) -> np.ndarray:
        aspect = ASPECTS[int(self.rng.integers(len(ASPECTS)))]
        upload_like = self.rng.random() < stage.upload_share
        return render_letterboxed(video, times, self.model.vision.cfg.image_size, aspect, upload_like)

    def _frames_batch(self, stage: Stage):
        """Single frames at random moments of short (busy) videos, with their captions and kinds."""
        frames, times, asks, kinds = [], [], [], []
        per_video = 8
        for i in range(0, stage.frames_per_step, per_video):
            video = self._video(int(self.rng.integers(16, 120)))
            ts = sorted(self.rng.choice(video.duration, size=per_video, replace=False).tolist())
            frames.append(self._render(video, ts, stage))
            times += ts
            asks += [Ask(i + j, 0, FRAME_QUESTION, video.frame_caption(t), "frame") for j, t in enumerate(ts)]
            kinds += [[shapeworld.KINDS.index(a.kind) for a in video.visible(t)] for t in ts]
        frames = np.concatenate(frames)[:, None]  # (B, 1, S, S, 3): B one-frame videos
        return frames, np.array(times)[:, None], [1], asks, kinds

    def _video_batch(self, stage: Stage, length: int):
        """Videos of `length` seconds, with questions asked at several moments of each."""
        batch = max(1, min(stage.max_videos, stage.tokens_per_step // (length * self.model.tokens_per_frame)))
        inner = self.rng.choice(np.arange(1, length), size=min(stage.moments - 1, length - 1), replace=False)
        moments = sorted(set(inner.tolist()) | {length})
        # asks_per_step questions, spread evenly over (video, moment) slots
        slots = [(b, j) for b in range(batch) for j in range(len(moments))]
        per_slot = np.zeros(len(slots), dtype=int)
        order = self.rng.permutation(len(slots))
        np.add.at(per_slot, order[np.arange(stage.asks_per_step) % len(slots)], 1)
        videos = [self._video(length) for _ in range(batch)]
        frames = np.stack([self._render(v, range(length), stage) for v in videos])
        asks = []
        for (b, j), n in zip(slots, per_slot):
            video, as_of = videos[b], moments[j] - 1  # the moment's last frame is shown at second m - 1
            n_caption = n if stage.task == "captions" else int(self.rng.binomial(n, stage.caption_share))
            asks += [Ask(b, j, CAPTION_QUESTION, caption_answer(video, as_of), "caption")] * min(n_caption, 1)
            for qa in video.questions(self.rng, n=n - min(n_caption, 1), kinds=stage.question_kinds, as_of=as_of):
                asks.append(Ask(b, j, qa.question, qa.answer, qa.kind_of_question))
        return frames, np.arange(length), moments, asks, videos

    # --- steps ---
    def _optimise(self, stage: Stage, loss: torch.Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(stage, self.step) * group.get("lr_scale", 1.0)
        self.optimizer.step()
        return float(grad_norm)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def _kinds_step(self, stage: Stage):
        frames, _, _, _, kinds = self._frames_batch(stage)
        target = torch.zeros(len(kinds), len(shapeworld.KINDS), device=self.device)
        for i, ks in enumerate(kinds):
            target[i, ks] = 1.0
        with self._autocast():
            feats = self.model.vision(pixels(frames[:, 0], self.model.device)).mean(1)  # (B, C)
            logits = self.kinds_head(feats).float()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        correct = ((logits > 0) == target.bool()).all(1).tolist()
        return loss, correct, ["kinds"] * len(kinds), 1, len(kinds)

    def _visual(self, frames, stage: Stage) -> torch.Tensor:
        """What _render made -> visual tokens (B, N, k, d); a subclass may feed the LM something else."""
        return visual_tokens(self.model, frames, train_vision=stage.train_vision)

    def _frame_losses(self, stage: Stage, frame_outputs: torch.Tensor, videos) -> torch.Tensor:
        """Auxiliary losses on the LM's outputs at the frames themselves (B, N, d); a subclass may add its own."""
        if not stage.counter_loss:
            return frame_outputs.new_zeros(())
        return stage.counter_loss * self._counter_loss(frame_outputs, videos)

    def _counter_loss(self, frame_outputs: torch.Tensor, videos) -> torch.Tensor:
        """Cross-entropy of each appearance's running count, read by counter_head at the frame where it appears.

        The question is in the frame itself, so this teaches the LM to keep a count per kind in its state
        without having to look a kind up through a question first (results/counter_loss/).
        """
        b, t, k, n = (x.to(frame_outputs.device) for x in counter_targets(videos, frame_outputs.shape[1]))
        if not len(b):
            self._counter_accuracy = None
            return frame_outputs.new_zeros(())
        logits = self.counter_head(frame_outputs[b, t].float()).view(len(b), len(shapeworld.KINDS), -1)
        logits = logits[torch.arange(len(b), device=logits.device), k]  # (appearances, COUNTER_CLASSES): its own kind
        self._counter_accuracy = float((logits.argmax(-1) == n).float().mean())
        return torch.nn.functional.cross_entropy(logits, n)

    def _answer_step(self, stage: Stage):
        model = self.model
        if stage.task == "frames":
            length = 1
            frames, times, moments, asks, _ = self._frames_batch(stage)
            videos = []
        else:
            length = self.curriculum.length(self.rng)
            frames, times, moments, asks, videos = self._video_batch(stage, length)
        model.lm.set_checkpointing(stage.checkpointing if length >= stage.checkpointing_from else "none")
        with self._autocast():
            tokens = model.frame_embeds(self._visual(frames, stage), times)  # (B, N, 1 + k, d)
            states, frame_outputs = run_frames(model, tokens, moments, prompt_state(model, tokens.shape[0]))
            groups = conversations(asks, stage.turns)
            ids, labels, owner = collate(model, asks, groups)
            loss, correct = answer_scores(model, gather_states(states, asks, groups), ids, labels, owner, len(asks))
            loss = loss.mean()
            if videos:
                loss = loss + self._frame_losses(stage, frame_outputs, videos)
        n_tokens = int(frames.shape[0] * frames.shape[1] * model.tokens_per_frame + ids.numel())
        return loss, correct.tolist(), [a.kind for a in asks], length, n_tokens

    def train_step(self, stage: Stage) -> dict:
        started = time.perf_counter()
        step = self._kinds_step if stage.task == "kinds" else self._answer_step
        loss, correct, kinds, length, n_tokens = step(stage)
        grad_norm = self._optimise(stage, loss)
        if stage.task in ("captions", "qa"):
            self.curriculum.record(length, correct)
        by_kind = {}
        for k, c in zip(kinds, correct):
            by_kind.setdefault(k, []).append(c)
        return {
            "stage": stage.name, "step": self.step, "length": length, "loss": round(loss.item(), 4),
            "accuracy": round(float(np.mean(correct)), 4),
            "by_kind": {k: round(float(np.mean(v)), 3) for k, v in sorted(by_kind.items())},
            "grad_norm": round(grad_norm, 3), "lr": lr_at(stage, self.step),
            "level": self.curriculum.level, "level_accuracy": round(self.curriculum.accuracy(), 4),
            "tokens": n_tokens, "seconds": round(time.perf_counter() - started, 3),
            "rss_mb": psutil.Process().memory_info().rss >> 20,
            **({"counter": round(self._counter_accuracy, 4)} if stage.counter_loss and self._counter_accuracy is not None
               else {}),
        }

    # --- the loop ---
    def run(self, checkpoint_every: int = 25, max_minutes: float | None = None, max_steps: int | None = None,
            progress: bool = True) -> None:
        """Train to the end of the recipe, or pause (resumably) after max_minutes or max_steps."""
        from tqdm import tqdm

        def request_stop(*_):
            self._stop = True

        previous = signal.signal(signal.SIGTERM, request_stop)
        deadline = time.time() + 60 * max_minutes if max_minutes else None
        log = open(self.out / "log.jsonl", "a")
        steps_done = 0
        try:
            while self.stage_index < len(self.stages) and not self._stop:
                stage = self.stage
                self.model.train()
                self.model.vision.train(stage.train_vision)
                bar = tqdm(total=stage.steps, initial=self.step, desc=f"stage {stage.name}", disable=not progress)
                while self.step < stage.steps and not self._stop:
                    record = self.train_step(stage)
                    self.seconds += record["seconds"]
                    record["wall_seconds"] = round(self.seconds, 1)
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    self.step += 1
                    bar.update(1)
                    bar.set_postfix(len=record["length"], loss=record["loss"], acc=record["accuracy"],
                                    lvl_acc=record["level_accuracy"])
                    if self.step % checkpoint_every == 0:
                        self.save_checkpoint()
                    steps_done += 1
                    if (deadline and time.time() > deadline) or (max_steps and steps_done >= max_steps):
                        self._stop = True
                bar.close()
                if self.step >= stage.steps:
                    self.stage_index += 1
                    self.step = 0
                    if self.stage_index < len(self.stages):
                        self._begin_stage()
                    self.save_checkpoint()
        except KeyboardInterrupt:
            pass
        finally:
            self.save_checkpoint()
            log.close()
            signal.signal(signal.SIGTERM, previous)
        if self.stage_index >= len(self.stages):
            self.export(self.out / "model")

    def export(self, folder) -> None:
        """Save the model as it stands (mid-recipe too) as a model folder, for `ma2mba eval --model`."""
        self.model.lm.set_checkpointing("none")
        self.model.eval().save_pretrained(folder)

    # --- checkpoints ---
    def save_checkpoint(self) -> None:
        path = self.out / "checkpoint.pt"
        tmp = path.with_suffix(".tmp")
        torch.save({
            "model": self.model.state_dict(), "kinds_head": self.kinds_head.state_dict(),
            "counter_head": self.counter_head.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "stage_index": self.stage_index, "step": self.step, "curriculum": self.curriculum.state_dict(),
            "rng": json.dumps(self.rng.bit_generator.state), "torch_rng": torch.get_rng_state(),
            "seconds": self.seconds, "videos_made": self.videos_made, "recipe": self.recipe_name,
            "tokenizer": self.model.tokenizer.hf.to_str(), "config": json.dumps(self.model.config.to_dict()),
            "grown": sorted(self.grown),
        }, tmp)
        os.replace(tmp, path)  # never leave a half-written checkpoint

    def _load(self, path: Path) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        from .model import VideoConfig
        from .tokenizer import Tokenizer

        ck = torch.load(path, map_location="cpu", weights_only=True)
        if ck["recipe"] != self.recipe_name:
            raise ValueError(f"{path} was written by recipe {ck['recipe']!r}, not {self.recipe_name!r}")
        config = VideoConfig.from_dict(json.loads(ck["config"]))
        self.model = VideoMa2mba(config, Tokenizer(HFTokenizer.from_str(ck["tokenizer"])))
        self.model.load_state_dict(ck["model"])
        self.model.to(self.device)
        self.kinds_head.load_state_dict(ck["kinds_head"])
        if "counter_head" in ck:  # older checkpoints have none
            self.counter_head.load_state_dict(ck["counter_head"])
        self.stage_index, self.step = ck["stage_index"], ck["step"]
        self.seconds, self.videos_made = ck["seconds"], ck["videos_made"]
        self.grown = set(ck.get("grown", []))  # absent: written before grow_layers, so no layers were grown
        self._begin_stage()
        if self.step > 0:  # mid-stage; at step 0 the fresh optimizer and curriculum are the right ones (a
            # checkpoint written when the recipe had ended holds its last stage's, and the recipe may have grown)
            self.curriculum.load_state_dict(ck["curriculum"])
            self.optimizer.load_state_dict(ck["optimizer"])
        self.rng.bit_generator.state = json.loads(ck["rng"])
        torch.set_rng_state(ck["torch_rng"])


def describe_recipe(recipe: str) -> list[dict]:
    return [dataclasses.asdict(s) for s in RECIPES[recipe]]
