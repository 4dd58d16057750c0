"""Short probes of why the packaged model cannot answer "when": each resumes the finished `shapes`
run into one 150-step QA stage that also asks a clock question at every moment, with one change
to the model. They patch the library from outside, so the shipped code stays as it is.

    python results/time_marker_probes/probe.py OUT --variant V [--ask A] [--steps 150] [--threads 2]

OUT must hold a copy of the finished run's checkpoint.pt (what `python -m ma2mba train --recipe
shapes` leaves in its --out folder); the probe resumes it into the extra stage and logs to OUT/log.jsonl.

variants (the time marker is one token before each frame's visual token, unless said otherwise):
  onehot        as shipped: a learnt linear map of the one-hot m:ss digits
  copy_digits   plus the LM's own (tied) embeddings of the four digits, one random ±1 pattern per
                digit place, so the marker holds the very vectors the answer has to write
  fused         no marker token: the marker is added to the frame's visual token (1 token a frame)
  grow_state    every mixer's d_state 32 -> 128, function-preserving (the new C rows start at zero)
  dense_clock   as shipped, plus a training-only head that must read the m:ss digits from the LM's
                output at every frame's visual token (one label per frame, not a few asks per video)
asks (added to the stage's seven question types, at every moment questions branch from):
  last_appearance   "When did the last shape appear?" -> the newest appearance's time
  now               "When was the last frame?" -> the newest marker's time (pure reading)
"""

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from ma2mba import model as model_module  # noqa: E402
from ma2mba import train  # noqa: E402
from ma2mba.data import shapeworld  # noqa: E402
from ma2mba.data.batches import Ask  # noqa: E402

QUESTIONS = {"last_appearance": "When did the last shape appear?", "now": "When was the last frame?"}


def clock_answer(ask: str, video: shapeworld.Video, as_of: int) -> str | None:
    if ask == "now":
        return "at " + shapeworld.format_time(as_of)
    shown = [a.start for a in video.appearances if a.start <= as_of]
    return "at " + shapeworld.format_time(shown[-1]) if shown else None


def add_clock_asks(ask: str) -> None:
    """Every (video, moment) slot of a QA batch also gets the clock question."""
    make_batch = train.Trainer._video_batch

    def with_clock(self, stage, length):
        frames, times, moments, asks, videos = make_batch(self, stage, length)
        for b, j in sorted({(a.video, a.moment) for a in asks}):
            answer = clock_answer(ask, videos[b], moments[j] - 1)
            if answer:
                asks.append(Ask(b, j, QUESTIONS[ask], answer, "clock"))
        return frames, times, moments, asks, videos

    train.Trainer._video_batch = with_clock


def marker_digits(times) -> torch.Tensor:
    """times (N,) -> (N, 4) the digits the library's time markers encode, read back from time_features."""
    groups = model_module.time_features(times).split(list(model_module.TIME_DIGITS), dim=-1)
    return torch.stack([g.argmax(-1) for g in groups], -1)


def add_parameters(make) -> None:
    """Give every VideoMa2mba the modules make(model, config, tokenizer) attaches; the shipped
    checkpoint lacks them, so it loads without strict key matching."""
    V = model_module.VideoMa2mba
    init, load = V.__init__, V.load_state_dict

    def new_init(self, config, tokenizer):
        init(self, config, tokenizer)
        make(self, config, tokenizer)

    V.__init__ = new_init
    V.load_state_dict = lambda self, state, strict=True: load(self, state, strict=False)


def use_copyable_digits() -> None:
    def make(model, config, tokenizer):
        signs = torch.randint(0, 2, (4, config.lm.d_model), generator=torch.Generator().manual_seed(1234)) * 2 - 1
        model.digit_sign = nn.Parameter(signs.float())
        model.digit_ids = torch.tensor([tokenizer.token_id(str(d)) for d in range(10)])

    add_parameters(make)
    shipped = model_module.VideoMa2mba.frame_embeds

    def frame_embeds(self, visual, times):
        tokens = shipped(self, visual, times)  # (..., N, 1 + k, d): the marker first
        lead = visual.shape[:-2]
        times = np.broadcast_to(np.asarray(times, dtype=np.float64), lead).reshape(-1)
        digits = marker_digits(times).clamp(max=9)  # a digit token per place; minutes' tens stop at 9
        digit_embeds = self.lm.embed(self.digit_ids.to(self.device)[digits])  # (N, 4, d)
        copyable = (digit_embeds * self.digit_sign).sum(1).view(*lead, -1).to(tokens.dtype)
        return torch.cat([tokens[..., :1, :] + copyable[..., None, :], tokens[..., 1:, :]], dim=-2)

    model_module.VideoMa2mba.frame_embeds = frame_embeds


def use_fused_marker() -> None:
    shipped = model_module.VideoMa2mba.frame_embeds

    def frame_embeds(self, visual, times):
        tokens = shipped(self, visual, times)
        return tokens[..., 1:, :] + tokens[..., :1, :]  # the marker added to the frame's visual tokens

    model_module.VideoMa2mba.frame_embeds = frame_embeds
    model_module.VideoMa2mba.tokens_per_frame = property(lambda self: self.vision.tokens_per_frame)


@torch.no_grad()
def grow_state(mixer, new: int) -> None:
    """d_state -> new. in_proj rows are [z0, x0, z, x, B, C, dt] and the conv's channels [x, B, C]:
    new B rows are random, new C rows and their conv bias zero, so C·h is unchanged at the start."""
    c = mixer.cfg
    old, add = c.d_state, new - c.d_state
    d_mlp = (c.d_in_proj - 2 * c.d_ssm - 2 * old - c.nheads) // 2
    b_end = 2 * d_mlp + 2 * c.d_ssm + old
    W = mixer.in_proj.weight
    new_B = (torch.rand(add, W.shape[1]) * 2 - 1) / W.shape[1] ** 0.5
    mixer.in_proj.weight = nn.Parameter(torch.cat(
        [W[:b_end], new_B.to(W.dtype), W[b_end:b_end + old], W.new_zeros(add, W.shape[1]), W[b_end + old:]]))
    w, bias = mixer.conv1d.weight, mixer.conv1d.bias
    x_end = c.d_ssm

    def taps():
        return (torch.rand(add, 1, w.shape[-1]) - 0.5).to(w.dtype)

    mixer.conv1d.weight = nn.Parameter(torch.cat(
        [w[:x_end + old], taps(), w[x_end + old:x_end + 2 * old], taps(), w[x_end + 2 * old:]]))
    mixer.conv1d.bias = nn.Parameter(torch.cat(
        [bias[:x_end + old], bias.new_zeros(add), bias[x_end + old:x_end + 2 * old], bias.new_zeros(add),
         bias[x_end + 2 * old:]]))
    mixer.cfg = dataclasses.replace(c, d_state=new)


def use_grown_state(new: int = 128) -> None:
    begin = train.Trainer._begin_stage

    def grow_then_begin(self):
        lm = self.model.lm
        if self.stage.name == "clock" and lm.config.ssm_cfg["d_state"] != new:
            for layer in lm.backbone.layers:
                grow_state(layer.mixer, new)
            lm.config.ssm_cfg["d_state"] = new
        begin(self)

    train.Trainer._begin_stage = grow_then_begin


def use_dense_clock(weight: float = 1.0) -> None:
    add_parameters(lambda model, config, tokenizer: setattr(
        model, "clock_head", nn.Linear(config.lm.d_model, model_module.N_TIME_FEATURES)))  # dropped after the probe
    run_frames = train.run_frames
    kept = {}

    def keeping_outputs(model, tokens, moments, state):
        """The library's run_frames, keeping its output at every frame for the clock head."""
        states, at_frame = run_frames(model, tokens, moments, state)
        kept["at_frame"] = at_frame
        return states, at_frame

    train.run_frames = keeping_outputs
    answer_step = train.Trainer._answer_step

    def with_dense_clock(self, stage):
        loss, correct, kinds, length, n_tokens = answer_step(self, stage)
        if stage.task == "frames":
            return loss, correct, kinds, length, n_tokens
        at_frame = kept.pop("at_frame")  # (B, N, d): the output at each frame's last visual token
        logits = self.model.clock_head(at_frame.float()).flatten(0, 1)
        target = marker_digits(np.arange(length)).repeat(at_frame.shape[0], 1)  # (B·N, 4)
        parts = logits.split(list(model_module.TIME_DIGITS), dim=-1)
        aux = sum(torch.nn.functional.cross_entropy(part, target[:, i]) for i, part in enumerate(parts)) / len(parts)
        right = torch.stack([part.argmax(-1) for part in parts], -1).eq(target).all(-1)
        self.clock_head_accuracy = float(right.float().mean())  # all four digits right, per frame
        return loss + weight * aux, correct, kinds, length, n_tokens

    train_step = train.Trainer.train_step

    def logged(self, stage):
        record = train_step(self, stage)
        record["clock_head_accuracy"] = round(getattr(self, "clock_head_accuracy", float("nan")), 4)
        return record

    train.Trainer._answer_step, train.Trainer.train_step = with_dense_clock, logged


VARIANTS = {"onehot": lambda: None, "copy_digits": use_copyable_digits, "fused": use_fused_marker,
            "grow_state": use_grown_state, "dense_clock": use_dense_clock}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="onehot")
    parser.add_argument("--ask", choices=sorted(QUESTIONS), default="last_appearance")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--more", type=int, default=0,
                        help="a second stage of this many steps (same settings), to continue a finished probe")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    probe_stage = train.Stage("clock", "qa", steps=args.steps, lr=6e-4, lengths=(32, 64, 128, 256), promote_at=0.0,
                              min_steps=1, replay=0.6, tokens_per_step=4096, asks_per_step=256, warmup=10)
    more = [dataclasses.replace(probe_stage, name="clock_more", steps=args.more)] if args.more else []
    train.RECIPES["shapes"] = train.RECIPES["shapes"] + [probe_stage, *more]
    add_clock_asks(args.ask)
    VARIANTS[args.variant]()
    torch.set_num_threads(args.threads)
    train.Trainer(args.out, recipe="shapes").run()


if __name__ == "__main__":
    main()
