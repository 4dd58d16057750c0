"""Train the packaged LM from scratch on ShapeWorld QA with perfect perception: is the vision the bottleneck?

Each frame's visual token is replaced by an embedding bag of the kinds visible in it (a learnt
Linear(28 -> d_model) of the frame's multi-hot kinds), so the LM sees exactly what is on screen, with no
vision encoder and no rendering. Everything else is the `shapes` recipe's QA step: the time marker,
the chat template, questions branching from several moments, the curriculum.

    python results/oracle_frames/oracle_lab.py OUT --kinds when --lengths 16 --mlp 384 --minutes 35

A rerun of the same command resumes from OUT/checkpoint.pt. OUT/log.jsonl has the usual training log.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ma2mba import train  # noqa: E402
from ma2mba.data import shapeworld  # noqa: E402
from ma2mba.model import VideoMa2mba  # noqa: E402


class OracleModel(VideoMa2mba):
    """The packaged model plus `oracle`: visible kinds (multi-hot) -> one visual token."""

    tied = False  # True: the visual token is the sum of the visible kinds' own word embeddings (kind tokens)

    def __init__(self, config, tokenizer):
        super().__init__(config, tokenizer)
        self.oracle = torch.nn.Linear(len(shapeworld.KINDS), config.lm.d_model)

    def visual_token(self, visible: torch.Tensor) -> torch.Tensor:
        """visible (B, N, 28) multi-hot -> (B, N, 1, d)."""
        if not self.tied:
            return self.oracle(visible)[:, :, None]
        ids = [self.tokenizer.encode(shapeworld.kind_name(k)) for k in shapeworld.KINDS]
        if any(len(i) != 1 for i in ids):
            raise SystemExit("--tied needs --kind-tokens: each kind must be one token")
        rows = self.lm.backbone.embedding.weight[torch.tensor([i[0] for i in ids], device=visible.device)]
        return (visible @ rows)[:, :, None]


def visible_kinds(video: shapeworld.Video, times) -> np.ndarray:
    """The kinds visible at each time, multi-hot (N, 28): what the oracle shows instead of pixels."""
    visible = np.zeros((len(times), len(shapeworld.KINDS)), np.float32)
    for i, t in enumerate(times):
        visible[i, [shapeworld.KINDS.index(a.kind) for a in video.visible(t)]] = 1.0
    return visible


class OracleTrainer(train.Trainer):
    def _render(self, video, times, stage):
        return visible_kinds(video, times)

    def _visual(self, visible, stage):
        return self.model.visual_token(torch.from_numpy(visible).to(self.model.device))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--kinds", default=None, help="question kinds asked, comma-separated (default: all seven)")
    p.add_argument("--lengths", default="16,32,64,128", help="curriculum of clip lengths, seconds")
    p.add_argument("--mlp", type=int, default=0, help="give every LM block an MLP of this width")
    p.add_argument("--kind-tokens", action="store_true", help="each kind ('red star') is one token (train.join_kind_tokens)")
    p.add_argument("--tied", action="store_true", help="visual token = sum of the visible kinds' token embeddings")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--tokens", type=int, default=1024, help="video tokens per step")
    p.add_argument("--asks", type=int, default=128, help="questions per step")
    p.add_argument("--promote", type=float, default=0.7, help="running accuracy that promotes a length")
    p.add_argument("--minutes", type=float, default=None, help="pause (resumably) after this long")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    train.RECIPES["oracle"] = [train.Stage(
        "qa", "qa", steps=args.steps, lr=args.lr, lengths=tuple(int(x) for x in args.lengths.split(",")),
        promote_at=args.promote, min_steps=30, tokens_per_step=args.tokens, asks_per_step=args.asks, warmup=50,
        question_kinds=tuple(args.kinds.split(",")) if args.kinds else None)]
    train.VideoMa2mba = OracleModel  # the Trainer builds (and reloads) its model through this name
    model = train.new_packaged_model(0)
    if args.mlp:
        model.lm.add_mlp(args.mlp)
    if args.kind_tokens:
        train.join_kind_tokens(model)
    OracleModel.tied = args.tied
    trainer = OracleTrainer(args.out, recipe="oracle", model=model, bf16=False)  # fp32: faster here on short clips
    trainer.run(checkpoint_every=50, progress=False, max_minutes=args.minutes)


if __name__ == "__main__":
    main()
