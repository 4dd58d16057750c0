"""Resume the finished `shapes` run into one more QA stage that changes the LM first: one arm of the
experiment in README.md. Every arm's stage is `qa_mlp2`'s (results/qa_mlp2/) with 450 steps: the same
batches, step for step, so its training log compares with qa_mlp2's row by row.

    python results/continued_training/arms.py --arm long_heads --run runs/shapes --out runs/arm_long_heads

--arm layers      two fresh blocks at depths 1 and 5 (Mamba2LM.insert_layers; start as the identity)
      state       every mixer's state widened from d_state 32 to 96 (Mamba2LM.grow_state; same function)
      timescale   A_log and dt_bias learn 30x faster (Stage.timescale_lr)
      long_heads  heads that keep 5-95% of their state over a 2-minute video get A / 30 (changes the function)
A rerun of the same command resumes; the finished model is written to OUT/model.
"""

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from head_memory import decay_over_video  # noqa: E402
from ma2mba import train  # noqa: E402

ARMS = {"layers": dict(grow_layers=(1, 5)), "state": dict(grow_state=96), "timescale": dict(timescale_lr=30.0),
        "long_heads": {}}
LONG_HEADS = (0.05, 0.95, 30.0)  # heads keeping this share of their state over 2 minutes get A / 30


def stage_name(arm: str) -> str:
    return "qa_long_heads" if arm == "long_heads" else f"qa_grow_{arm}"


def arm_stage(arm: str, steps: int) -> train.Stage:
    return train.Stage(stage_name(arm), "qa", steps=steps, lr=6e-4, lengths=(32, 64, 128, 256, 512), promote_at=0.0,
                       min_steps=1, replay=0.6, tokens_per_step=4096, asks_per_step=256,
                       checkpointing="multi_axis", checkpointing_from=512, warmup=20,
                       question_kinds=("first_shape", "first_color", "last", "exists", "after", "after", "after",
                                       "count", "count", "count", "when", "when", "when"), **ARMS[arm])


@torch.no_grad()
def lengthen_long_heads(model) -> list[list[int]]:
    low, high, factor = LONG_HEADS
    picked = []
    for left, layer in zip(decay_over_video(model), model.lm.backbone.layers):
        pick = (left > low) & (left < high)
        layer.mixer.A_log[pick] -= math.log(factor)
        picked.append(pick.nonzero().flatten().tolist())
    return picked


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arm", choices=tuple(ARMS), required=True)
    parser.add_argument("--run", default="runs/shapes", help="the finished shapes run (its checkpoint.pt)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=450)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    name = "shapes_" + stage_name(args.arm)[3:]
    train.RECIPES[name] = train.RECIPES["shapes"] + [arm_stage(args.arm, args.steps)]
    out = Path(args.out)
    fresh = not (out / "checkpoint.pt").exists()
    if fresh:
        out.mkdir(parents=True, exist_ok=True)
        ck = torch.load(Path(args.run) / "checkpoint.pt", map_location="cpu", weights_only=False)
        if ck["stage_index"] != len(train.RECIPES["shapes"]):
            raise SystemExit(f"{args.run} has not finished the shapes recipe")
        ck["recipe"] = name
        torch.save(ck, out / "checkpoint.pt")
    trainer = train.Trainer(out, recipe=name)
    if fresh and args.arm == "long_heads":
        print("heads given A / 30, per layer:", lengthen_long_heads(trainer.model), flush=True)
        trainer.save_checkpoint()
    trainer.run()


if __name__ == "__main__":
    main()
