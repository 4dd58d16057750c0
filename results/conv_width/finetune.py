"""Fine-tune the packaged model on QA with its mixers' causal convolution widened (or not): does reaching the
question's subject directly unstick count, "after" and "when"?

    python results/conv_width/finetune.py OUT --conv 12 --lengths 32 --minutes 25

--conv 4 keeps the shipped width (the control). A rerun of the same command resumes from OUT/checkpoint.pt.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from ma2mba import train  # noqa: E402
from ma2mba.model import load_model  # noqa: E402

# count, after and when are the stalled types; the others are asked so they are not forgotten
STALLED_WEIGHTED = ("first_shape", "first_color", "last", "exists", "exists", "after", "after", "after",
                    "count", "count", "count", "when", "when", "when")

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("out")
p.add_argument("--model", default="assets/ma2mba-shapes")
p.add_argument("--conv", type=int, default=12, help="causal convolution taps (4: unchanged)")
p.add_argument("--lengths", default="32", help="clip lengths, seconds, visited in turn")
p.add_argument("--steps", type=int, default=1000)
p.add_argument("--lr", type=float, default=6e-4)
p.add_argument("--tokens", type=int, default=2048, help="video tokens per step")
p.add_argument("--asks", type=int, default=256, help="questions per step")
p.add_argument("--kind-tokens", action="store_true", help="each kind ('red star') becomes one token (train.join_kind_tokens)")
p.add_argument("--counter-loss", type=float, default=0.0, help="weight of the running-count loss (Stage.counter_loss)")
p.add_argument("--minutes", type=float, default=None, help="pause (resumably) after this long")
p.add_argument("--threads", type=int, default=1)
a = p.parse_args()
torch.set_num_threads(a.threads)
train.RECIPES["conv_width"] = [train.Stage(
    "qa_conv", "qa", steps=a.steps, lr=a.lr, lengths=tuple(int(x) for x in a.lengths.split(",")), promote_at=0.0,
    min_steps=1, replay=0.5, tokens_per_step=a.tokens, asks_per_step=a.asks, warmup=20,
    grow_conv=a.conv if a.conv > 4 else 0, question_kinds=STALLED_WEIGHTED, kind_tokens=a.kind_tokens,
    counter_loss=a.counter_loss,
    checkpointing="multi_axis", checkpointing_from=512)]
resuming = (Path(a.out) / "checkpoint.pt").exists()
trainer = train.Trainer(a.out, recipe="conv_width", model=None if resuming else load_model(a.model), bf16=False)
trainer.run(checkpoint_every=25, progress=False, max_minutes=a.minutes)
