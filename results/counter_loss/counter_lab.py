"""Do direct losses on the frames teach the lookups that count and "when" questions need?

`oracle_lab.py --kinds count --lengths 16` stays at "1" for everything (0.43 exact match) for 1,081
steps. One reason could be that two skills must appear together before either pays: keeping
something per kind in the state, and looking the asked kind up through the question. These losses
teach the first alone, with the frame itself as the query:

- `--counter W`: the library's `Stage.counter_loss`. Where a kind appears, a head on the LM's output
  at that frame says how many times the kind has appeared so far (1-20).
- `--recall W`: where a kind appears for the second time, a head says when it first appeared (the
  four digits of m:ss, as the time markers spell them). A "when" answer needs the same memory: the
  time a kind appeared, kept until it is asked about.

The heads are not part of the model. The QA loss and everything else are `oracle_lab.py`'s.

    python results/counter_loss/counter_lab.py OUT --kinds count --conv 8 --counter 1 --minutes 60

OUT/log.jsonl is the usual training log; `counter` and `recall` are the heads' accuracy at the frames.
A rerun of the same command resumes from OUT/checkpoint.pt, except with --recall (its head is not in the
checkpoint): use a fresh OUT then.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "oracle_frames"))

import torch  # noqa: E402

import oracle_lab  # noqa: E402
from ma2mba import train  # noqa: E402
from ma2mba.data import shapeworld  # noqa: E402
from ma2mba.model import N_TIME_FEATURES, TIME_DIGITS, packaged_config, time_features  # noqa: E402


def recall_targets(videos, length: int):
    """(video, frame, kind, first start) for every second appearance of a kind in the first `length` seconds."""
    rows = []
    for b, video in enumerate(videos):
        first = {}
        for a, n in video.running_counts(length - 1):
            first.setdefault(a.kind, a.start)
            if n == 2:
                rows.append((b, a.start, shapeworld.KINDS.index(a.kind), first[a.kind]))
    return rows


class LabTrainer(oracle_lab.OracleTrainer):
    recall_weight = 0.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        d = self.model.config.lm.d_model
        self.recall_head = torch.nn.Linear(d, len(shapeworld.KINDS) * N_TIME_FEATURES)
        if self.recall_weight:
            self.optimizer.add_param_group({"params": list(self.recall_head.parameters()), "weight_decay": 0.0,
                                            "lr_scale": 1.0})
        self._recall_accuracy = None

    def _frame_losses(self, stage, frame_outputs, videos):
        loss = super()._frame_losses(stage, frame_outputs, videos)
        rows = recall_targets(videos, frame_outputs.shape[1]) if self.recall_weight else []
        if not rows:
            return loss
        b, t, k, first = zip(*rows)
        logits = self.recall_head(frame_outputs[list(b), list(t)]).view(len(rows), len(shapeworld.KINDS), -1)
        logits = logits[torch.arange(len(rows)), list(k)]  # (rows, N_TIME_FEATURES): its own kind's
        target = time_features(first).split(list(TIME_DIGITS), -1)
        parts = logits.split(list(TIME_DIGITS), -1)
        recall = sum(torch.nn.functional.cross_entropy(p, y.argmax(-1)) for p, y in zip(parts, target)) / len(parts)
        right = torch.stack([p.argmax(-1) == y.argmax(-1) for p, y in zip(parts, target)], -1).all(-1)
        self._recall_accuracy = float(right.float().mean())
        return loss + self.recall_weight * recall

    def train_step(self, stage):
        record = super().train_step(stage)
        if self._recall_accuracy is not None:
            record["recall"] = round(self._recall_accuracy, 4)
        return record


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--kinds", default="count", help="question kinds asked, comma-separated")
    p.add_argument("--lengths", default="16", help="curriculum of clip lengths, seconds")
    p.add_argument("--mlp", type=int, default=384)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--counter", type=float, default=0.0, help="weight of the running-count loss")
    p.add_argument("--recall", type=float, default=0.0, help="weight of the first-appearance-time loss")
    p.add_argument("--conv", type=int, default=4, help="the mixers' causal convolution width")
    p.add_argument("--kind-tokens", action="store_true", help="each kind ('red star') is one token")
    p.add_argument("--tied", action="store_true", help="visual token = sum of the visible kinds' token embeddings")
    p.add_argument("--minutes", type=float, default=None)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if args.recall and (Path(args.out) / "checkpoint.pt").exists():
        raise SystemExit(f"{args.out} holds a run already: with --recall this lab does not resume, use a fresh folder")
    torch.set_num_threads(args.threads)
    train.RECIPES["oracle"] = [train.Stage(
        "qa", "qa", steps=args.steps, lr=args.lr, lengths=tuple(int(x) for x in args.lengths.split(",")),
        promote_at=0.7, min_steps=30, tokens_per_step=1024, asks_per_step=128, warmup=50,
        question_kinds=tuple(args.kinds.split(",")), counter_loss=args.counter)]
    torch.manual_seed(0)  # as train.new_packaged_model(0), with the convolution's width set
    config = packaged_config()
    config.lm.ssm_cfg = {**config.lm.ssm_cfg, "d_conv": args.conv}
    train.VideoMa2mba = oracle_lab.OracleModel
    model = oracle_lab.OracleModel(config, train.build_word_tokenizer(train.vocabulary_texts()))
    if args.mlp:
        model.lm.add_mlp(args.mlp)
    if args.kind_tokens:
        train.join_kind_tokens(model)
    oracle_lab.OracleModel.tied = args.tied
    LabTrainer.recall_weight = args.recall
    trainer = LabTrainer(args.out, recipe="oracle", model=model, bf16=False)
    trainer.run(checkpoint_every=50, progress=False, max_minutes=args.minutes)


if __name__ == "__main__":
    main()
