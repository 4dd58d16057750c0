"""Lookup lab: can a fresh LM of the packaged size learn to look a kind up in a video it watched?

No vision: each second is one ideal "frame" token, the sum of a learnt vector per visible kind
(plus one for "a frame"), after the usual time marker. Everything else is the packaged model's:
its LM (with the per-block MLP the shipped one has), chat template, QA batches and loss. The lab
isolates the language model from the vision tower, so each run takes minutes, not hours.

    python results/kind_tokens/lookup_lab.py --ask exists --tokens words --steps 300 > log.txt

--ask     exists ("Did a red star appear?"), when ("When did the red star appear?") or now
          ("When was the last frame?": reading the newest time marker, no lookup)
--tokens  words: the shipped tokenizer, a kind is two words; kinds: join_kind_tokens, one token a kind,
          starting as the mean of its two words; kinds_random: the same tokens, started independently at
          random (N(0, 0.02²), like every other row) so that "red star" and "red circle" share nothing
--init    default (mamba_ssm's) or mimetic (mimetic_init: C starts as B, little decay)
--lr      peak learning rate (default 1e-3)
Prints, every 10 steps: steps, seconds, loss, and the training exact match of the last 10 steps.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ma2mba import train  # noqa: E402
from ma2mba.data import shapeworld  # noqa: E402
from ma2mba.data.batches import (Ask, answer_scores, collate, conversations, gather_states, prompt_state,  # noqa: E402
                                 states_at_moments)

NOW_QUESTION = "When was the last frame?"


@torch.no_grad()
def mimetic_init(lm):
    """Mimetic initialisation (Trockman et al., 2024): C reads what B writes, and the state barely decays.

    C's in_proj rows and conv taps copy B's, the current token's tap is raised by 1 in both, and A is
    drawn from [0.01, 0.1] instead of [1, 16]. The mixers have no inner MLP branch here, so in_proj's
    rows are [z, x, B, C, dt] and the conv's channels [x, B, C].
    """
    for layer in lm.backbone.layers:
        mixer, c = layer.mixer, layer.mixer.cfg
        n = c.ngroups * c.d_state
        b_row, b_channel = 2 * c.d_inner, c.d_ssm  # where B starts in in_proj's rows and in the conv's channels
        mixer.in_proj.weight[b_row + n:b_row + 2 * n] = mixer.in_proj.weight[b_row:b_row + n]
        taps = mixer.conv1d.weight
        taps[b_channel + n:b_channel + 2 * n] = taps[b_channel:b_channel + n]
        taps[b_channel:b_channel + 2 * n, 0, -1] += 1.0
        mixer.A_log.copy_(torch.log(torch.empty(c.nheads).uniform_(0.01, 0.1)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ask", choices=("exists", "when", "now"), default="exists")
    parser.add_argument("--tokens", choices=("words", "kinds", "kinds_random"), default="words")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--length", type=int, default=16, help="video seconds")
    parser.add_argument("--videos", type=int, default=32, help="videos per step")
    parser.add_argument("--seed", type=int, default=0, help="the random start (the videos and questions stay the same)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--init", choices=("default", "mimetic"), default="default")
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = train.new_packaged_model(args.seed)
    model.lm.add_mlp(384)
    if args.tokens != "words":
        train.join_kind_tokens(model)
    if args.tokens == "kinds_random":
        rows = [model.tokenizer.encode(shapeworld.kind_name(k))[0] for k in shapeworld.KINDS]
        own = torch.Generator().manual_seed(1 + args.seed)  # its own generator: every other draw stays as in the runs above
        with torch.no_grad():
            model.lm.backbone.embedding.weight[rows] = 0.02 * torch.randn(len(rows), model.config.lm.d_model, generator=own)
    if args.init == "mimetic":
        mimetic_init(model.lm)
    kind_vectors = torch.nn.Embedding(len(shapeworld.KINDS) + 1, model.config.lm.d_model)  # the last: "a frame"
    params = [*model.lm.named_parameters(), *model.time_embed.named_parameters("time_embed"),
              *kind_vectors.named_parameters("kinds")]
    optimizer = train.make_optimizer(params, args.lr)
    schedule = train.Stage("lab", "qa", steps=args.steps, lr=args.lr, warmup=20)
    rng = np.random.default_rng(0)
    length, batch, made, history, started = args.length, args.videos, 0, [], time.time()
    for step in range(args.steps):
        videos = [shapeworld.generate(10**9 + made + i, length) for i in range(batch)]
        made += batch
        visible = torch.zeros(batch, length, len(shapeworld.KINDS) + 1)
        visible[..., -1] = 1
        for b, video in enumerate(videos):
            for t in range(length):
                for a in video.visible(t):
                    visible[b, t, shapeworld.KINDS.index(a.kind)] = 1
        frames = (visible @ kind_vectors.weight)[:, :, None]  # (B, N, 1, d): one token a frame
        moments = sorted(set(rng.choice(np.arange(1, length), size=3, replace=False).tolist()) | {length})
        asks = []
        for b, video in enumerate(videos):
            for j, m in enumerate(moments):
                if args.ask == "now":
                    asks.append(Ask(b, j, NOW_QUESTION, "at " + shapeworld.format_time(m - 1), "now"))
                    continue
                for qa in video.questions(rng, n=2, kinds=[args.ask], as_of=m - 1):
                    asks.append(Ask(b, j, qa.question, qa.answer, qa.kind_of_question))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            tokens = model.frame_embeds(frames, np.arange(length))
            states = states_at_moments(model, tokens, moments, prompt_state(model, batch))
            groups = conversations(asks, 4)
            ids, labels, owner = collate(model, asks, groups)
            loss, correct = answer_scores(model, gather_states(states, asks, groups), ids, labels, owner, len(asks))
        optimizer.zero_grad()
        loss.mean().backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0)
        for group in optimizer.param_groups:
            group["lr"] = train.lr_at(schedule, step)
        optimizer.step()
        history.append(correct.float().mean().item())
        if step % 10 == 9:
            print(step + 1, round(time.time() - started), round(loss.mean().item(), 3),
                  round(float(np.mean(history[-10:])), 3), flush=True)


if __name__ == "__main__":
    main()
