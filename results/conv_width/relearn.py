"""Retrain the packaged LM from scratch with a wider causal convolution, reusing the shipped vision encoder.

The `shapes` recipe from its "align" stage on (stage 0 trains only the vision encoder, frozen afterwards, so
the shipped one stands in for it), with a fresh projector, time markers and Mamba-2 LM whose mixers'
convolution spans --conv tokens. Its log is compared step for step with the shipped run's
(results/train_shapes_log.jsonl.gz, d_conv 4) by compare.py.

    python results/conv_width/relearn.py OUT --conv 12 --threads 2 --minutes 100
    python results/conv_width/relearn.py OUT --conv 12 --counter-loss 1 --threads 2   # + Stage.counter_loss in QA

A rerun of the same command resumes from OUT/checkpoint.pt; `--export DIR` writes the checkpoint's model to DIR
(for `python -m ma2mba eval --model DIR`) instead of training. At a stage's step 0 that is the previous
stage's result: qa_mlp's added MLPs start by adding nothing. The counter head is made on a forked RNG, so the
runs with and without --counter-loss see the same batches and their logs pair step for step.
"""
import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from ma2mba import train  # noqa: E402
from ma2mba.model import VideoMa2mba, load_model, packaged_config  # noqa: E402

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("out")
p.add_argument("--vision-from", default="assets/ma2mba-shapes")
p.add_argument("--conv", type=int, default=12)
p.add_argument("--counter-loss", type=float, default=0.0, help="weight of Stage.counter_loss in the QA stages")
p.add_argument("--minutes", type=float, default=None, help="pause (resumably) after this long")
p.add_argument("--threads", type=int, default=2)
p.add_argument("--export", metavar="DIR", help="save the checkpoint's model to DIR and stop")
a = p.parse_args()
torch.set_num_threads(a.threads)
recipe = "shapes"
if a.counter_loss:
    recipe = "shapes_counter"
    train.RECIPES[recipe] = [dataclasses.replace(s, counter_loss=a.counter_loss) if s.task == "qa" else s
                             for s in train.RECIPES["shapes"]]
model = None
if not (Path(a.out) / "checkpoint.pt").exists():
    torch.manual_seed(0)
    config = packaged_config()
    config.lm.ssm_cfg = {**config.lm.ssm_cfg, "d_conv": a.conv}
    model = VideoMa2mba(config, train.build_word_tokenizer(train.vocabulary_texts()))
    shipped = load_model(a.vision_from)
    assert shipped.tokenizer.hf.to_str() == model.tokenizer.hf.to_str()
    model.vision.load_state_dict(shipped.vision.state_dict())
trainer = train.Trainer(a.out, recipe=recipe, model=model, start_stage="align", bf16=False)
if a.export:
    trainer.export(a.export)
    print(f"stage {trainer.stage.name}, step {trainer.step} -> {a.export}")
else:
    trainer.run(checkpoint_every=25, progress=False, max_minutes=a.minutes)
