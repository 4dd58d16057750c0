"""Resume the finished shapes run into a QA stage at one short length: can count/after/when be mastered there?"""
import argparse, sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import torch
from ma2mba import train
p = argparse.ArgumentParser()
p.add_argument("--run", default="runs/shapes"); p.add_argument("--out", required=True)
p.add_argument("--steps", type=int, default=1000); p.add_argument("--lr", type=float, default=6e-4)
p.add_argument("--length", type=int, default=32); p.add_argument("--threads", type=int, default=1)
p.add_argument("--tokens", type=int, default=2048); p.add_argument("--asks", type=int, default=256)
p.add_argument("--minutes", type=float, default=None)
a = p.parse_args()
torch.set_num_threads(a.threads)
stage = train.Stage("qa_short", "qa", steps=a.steps, lr=a.lr, lengths=(a.length,), promote_at=1.0, min_steps=1,
                    tokens_per_step=a.tokens, asks_per_step=a.asks, warmup=20,
                    question_kinds=("first_shape", "first_color", "last", "exists", "exists", "after", "after", "after",
                                    "count", "count", "count", "when", "when", "when"))
name = "shapes_short"
train.RECIPES[name] = train.RECIPES["shapes"] + [stage]
out = Path(a.out)
if not (out / "checkpoint.pt").exists():
    out.mkdir(parents=True, exist_ok=True)
    ck = torch.load(Path(a.run) / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert ck["stage_index"] == len(train.RECIPES["shapes"])
    ck["recipe"] = name
    torch.save(ck, out / "checkpoint.pt")
train.Trainer(out, recipe=name).run(progress=False, max_minutes=a.minutes)
