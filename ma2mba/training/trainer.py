"""Training: the paper's staged recipe as a list of Stage values, run by a resumable Trainer.

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
of each video (training/answers.py), so every pass supervises many answers at many lengths.

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

from ..data import world
from ..data.batches import Ask, collate, conversations
from ..data.questions import CAPTION_QUESTION, FRAME_QUESTION, caption_answer, frame_caption, sample_questions
from ..data.render import ASPECTS, render_letterboxed
from ..engine.lm import Mamba2LM
from ..serving.frames import frame_tokens, prompt_state, run_frames
from ..video.model import VideoConfig, VideoMa2mba
from ..video.tokenizer import Tokenizer
from ..video.vision import frames_to_tensor
from .answers import answer_scores, gather_states

TRAIN_SEED_BASE = 1 << 32  # training videos use seeds >= 2^32; evaluation sets use smaller ones


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


def bf16_pays(device) -> bool:
    """Whether bf16 autocast speeds training up on `device`: on a GPU that has bf16, and on a CPU with native
    bf16 instructions (AVX512-BF16 or AMX). On a plain AVX2 CPU the bf16 kernels emulate it, and a QA step
    of the shapes recipe ran 5.7x slower under autocast than in fp32 (benchmarks/train_precision.py)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def make_optimizer(named_params, lr: float) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only."""
    decay, other = [], []
    for name, p in named_params:
        (other if no_decay(name, p) else decay).append(p)
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


class Trainer:
    def __init__(
        self,
        out_dir,
        stages,
        model: VideoMa2mba,
        seed: int = 0,
        bf16: bool | None = None,
        device="cpu",
        start_stage: str | None = None,
    ):
        """bf16: autocast on or off; None turns it on where it pays (bf16_pays).
        start_stage: a new run begins at this stage of the recipe, taking `model` as the earlier stages'
        result (a run resumed from its checkpoint continues where it stopped instead)."""
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.stages = list(stages)
        self.seed = seed
        self.bf16 = bf16_pays(device) if bf16 is None else bf16
        self.device = torch.device(device)
        self.model = model.to(self.device)
        # Stage 0's temporary classifier: which of the 28 kinds a frame shows (not part of the model).
        self.kinds_head = torch.nn.Linear(self.model.vision.out_dim, len(world.KINDS)).to(self.device)
        names = [s.name for s in self.stages]
        if start_stage is not None and start_stage not in names:
            raise ValueError(f"the recipe has no stage {start_stage!r}: its stages are {', '.join(names)}")
        self.stage_index, self.step = (names.index(start_stage) if start_stage else 0), 0
        self.rng = np.random.default_rng(seed)
        self.seconds = 0.0  # training wall time, summed over resumed runs
        self.videos_made = 0
        self._stop = False
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
        return [(n, p) for n, p in self.model.named_parameters() if stage.train_vision or not n.startswith("vision.")]

    def _begin_stage(self) -> None:
        stage = self.stage
        lm = self.model.lm
        if stage.grow_mlp and isinstance(lm, Mamba2LM) and lm.config.d_intermediate == 0:  # not grown yet
            lm.add_mlp(stage.grow_mlp)
        self.curriculum = Curriculum(stage)
        self.optimizer = make_optimizer(self._trainable(stage), stage.lr)  # fresh moments for a new task

    # --- batches ---
    def _video(self, duration: int) -> world.Video:
        self.videos_made += 1
        return world.generate(TRAIN_SEED_BASE + self.seed * (1 << 24) + self.videos_made, duration)

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
            asks += [Ask(i + j, 0, FRAME_QUESTION, frame_caption(video, t), "frame") for j, t in enumerate(ts)]
            kinds += [[world.KINDS.index(a.kind) for a in video.visible(t)] for t in ts]
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
            for qa in sample_questions(
                video, self.rng, n=n - min(n_caption, 1), kinds=stage.question_kinds, as_of=as_of
            ):
                asks.append(Ask(b, j, qa.question, qa.answer, qa.kind_of_question))
        return frames, np.arange(length), moments, asks

    # --- steps ---
    def _optimise(self, stage: Stage, loss: torch.Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(stage, self.step)
        self.optimizer.step()
        return float(grad_norm)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def _kinds_step(self, stage: Stage):
        frames, _, _, _, kinds = self._frames_batch(stage)
        target = torch.zeros(len(kinds), len(world.KINDS), device=self.device)
        for i, ks in enumerate(kinds):
            target[i, ks] = 1.0
        with self._autocast():
            feats = self.model.vision(
                frames_to_tensor(frames[:, 0], self.model.vision.cfg.image_size, self.device)
            ).mean(1)  # (B, C)
            logits = self.kinds_head(feats).float()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        correct = ((logits > 0) == target.bool()).all(1).tolist()
        return loss, correct, ["kinds"] * len(kinds), 1, len(kinds)

    def _answer_step(self, stage: Stage):
        model = self.model
        if stage.task == "frames":
            length = 1
            frames, times, moments, asks, _ = self._frames_batch(stage)
        else:
            length = self.curriculum.length(self.rng)
            frames, times, moments, asks = self._video_batch(stage, length)
        model.lm.set_checkpointing(stage.checkpointing if length >= stage.checkpointing_from else "none")
        with self._autocast():
            tokens = frame_tokens(model, frames, times, train_vision=stage.train_vision)  # (B, N, 1 + k, d)
            states, _ = run_frames(model, tokens, prompt_state(model, tokens.shape[0]), moments)
            groups = conversations(asks, stage.turns)
            ids, labels, owner = collate(model, asks, groups)
            loss, correct = answer_scores(model, gather_states(states, asks, groups), ids, labels, owner, len(asks))
            loss = loss.mean()
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
            "stage": stage.name,
            "step": self.step,
            "length": length,
            "loss": round(loss.item(), 4),
            "accuracy": round(float(np.mean(correct)), 4),
            "by_kind": {k: round(float(np.mean(v)), 3) for k, v in sorted(by_kind.items())},
            "grad_norm": round(grad_norm, 3),
            "lr": lr_at(stage, self.step),
            "level": self.curriculum.level,
            "level_accuracy": round(self.curriculum.accuracy(), 4),
            "tokens": n_tokens,
            "seconds": round(time.perf_counter() - started, 3),
            "rss_mb": psutil.Process().memory_info().rss >> 20,
        }

    # --- the loop ---
    def run(
        self,
        checkpoint_every: int = 25,
        max_minutes: float | None = None,
        max_steps: int | None = None,
        progress: bool = True,
    ) -> None:
        """Train to the end of the recipe, or pause (resumably) after max_minutes or max_steps."""
        from tqdm import tqdm

        def request_stop(*_):
            self._stop = True

        previous = signal.signal(signal.SIGTERM, request_stop)
        deadline = time.time() + 60 * max_minutes if max_minutes else None
        log = open(self.out / "log.jsonl", "a")  # noqa: SIM115 - closed in the finally below, with the signal handler
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
                    bar.set_postfix(
                        len=record["length"],
                        loss=record["loss"],
                        acc=record["accuracy"],
                        lvl_acc=record["level_accuracy"],
                    )
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
        torch.save(
            {
                "model": self.model.state_dict(),
                "kinds_head": self.kinds_head.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "stage_index": self.stage_index,
                "step": self.step,
                "curriculum": self.curriculum.state_dict(),
                "rng": json.dumps(self.rng.bit_generator.state),
                "torch_rng": torch.get_rng_state(),
                "seconds": self.seconds,
                "videos_made": self.videos_made,
                "stages": [dataclasses.asdict(s) for s in self.stages],
                "tokenizer": self.model.tokenizer.hf.to_str(),
                "config": json.dumps(self.model.config.to_dict()),
            },
            tmp,
        )
        os.replace(tmp, path)  # never leave a half-written checkpoint

    def _load(self, path: Path) -> None:
        ck = torch.load(path, map_location="cpu", weights_only=True)
        names = [s.name for s in self.stages]
        written = [s["name"] for s in ck["stages"]]
        if names[: len(written)] != written:  # steps and rates may change, and stages be appended; no more
            raise ValueError(f"{path} was written by a recipe of stages {written}, which {names} does not continue")
        config = VideoConfig.from_dict(json.loads(ck["config"]))
        self.model = VideoMa2mba(config, Tokenizer.from_str(ck["tokenizer"]))
        self.model.load_state_dict(ck["model"])
        self.model.to(self.device)
        self.kinds_head.load_state_dict(ck["kinds_head"])
        self.stage_index, self.step = ck["stage_index"], ck["step"]
        self.seconds, self.videos_made = ck["seconds"], ck["videos_made"]
        self._begin_stage()
        if self.step > 0:  # mid-stage; at step 0 the fresh optimizer and curriculum are the right ones (a
            # checkpoint written when the recipe had ended holds its last stage's, and the recipe may have grown)
            self.curriculum.load_state_dict(ck["curriculum"])
            self.optimizer.load_state_dict(ck["optimizer"])
        self.rng.bit_generator.state = json.loads(ck["rng"])
        torch.set_rng_state(ck["torch_rng"])
