"""A training step of the shapes recipe in fp32 and under bf16 autocast, side by side.

On a CPU without native bf16 instructions (plain AVX2), PyTorch emulates bf16 and autocast slows training
down; `trainer.bf16_pays` decides the Trainer's default from this. Each round times one QA step of each
precision on the same fresh batch shape (the packaged architecture, untrained), alternating, and the
table gives medians and the median of the per-round ratios.

    python benchmarks/train_precision.py [--length 128] [--rounds 3] [--threads 2]

Prints a table and writes results/train_precision.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ma2mba.packaged.recipe import SHAPES, new_model
from ma2mba.training import trainer as train


def timed_step(trainer: train.Trainer, stage: train.Stage) -> float:
    started = time.perf_counter()
    trainer.train_step(stage)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=128, help="clip length in seconds (a QA stage's level)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="results/train_precision.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    stage = next(s for s in SHAPES if s.name == "qa")
    stage = dataclasses.replace(stage, replay=0.0)
    trainers = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, bf16 in (("fp32", False), ("bf16", True)):
            trainers[name] = train.Trainer(Path(tmp) / name, SHAPES, new_model(0), start_stage="qa", bf16=bf16)
            trainers[name].curriculum.level = stage.lengths.index(args.length)
            timed_step(trainers[name], stage)  # warm-up: first calls build kernels and caches
        seconds = {name: [] for name in trainers}
        for _ in range(args.rounds):
            for name, trainer in trainers.items():
                seconds[name].append(timed_step(trainer, stage))
    ratios = [b / f for f, b in zip(seconds["fp32"], seconds["bf16"])]
    result = {
        "length_s": args.length,
        "threads": args.threads,
        "rounds": args.rounds,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.machine(),
        "native_bf16": torch.ops.mkldnn._is_mkldnn_bf16_supported(),
        "bf16_pays": train.bf16_pays("cpu"),
        "seconds": seconds,
        "median_s": {k: statistics.median(v) for k, v in seconds.items()},
        "median_bf16_over_fp32": statistics.median(ratios),
    }
    print(
        f"QA step at {args.length}-s clips, {args.threads} threads, {torch.backends.cpu.get_cpu_capability()}, "
        f"native bf16: {result['native_bf16']}"
    )
    print("| precision | median s/step | rounds |")
    print("|---|---|---|")
    for name, values in seconds.items():
        print(f"| {name} | {result['median_s'][name]:.2f} | {', '.join(f'{v:.2f}' for v in values)} |")
    print(f"bf16 / fp32 time, median of per-round ratios: {result['median_bf16_over_fp32']:.2f}x")
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
