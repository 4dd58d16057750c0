"""Command line: `ma2mba {chat,train,eval,package,bench} …` (or `python -m ma2mba …`; see --help of each)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path


def chat(args) -> int:
    from tqdm import tqdm

    from .hub import ModelNotFoundError
    from .packaged import load_model
    from .serving.session import RewindError
    from .video.decode import VideoError, frame_source, probe, sample_frames
    from .video.tokenizer import QuestionTooLongError

    try:
        info = probe(args.video, max_seconds=args.max_seconds)
        model = load_model(args.model)
    except (VideoError, ModelNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # Rewinds past the cached frames decode them again.
    session = model.start_session(frame_source=frame_source(args.video, args.fps, max_seconds=args.max_seconds))
    total = math.ceil(info.duration * args.fps) if info.duration else None
    try:
        with tqdm(total=total, unit="frame", desc="watching") as bar:
            for t, frame in sample_frames(args.video, fps=args.fps, max_seconds=args.max_seconds):
                session.ingest(frame, t)
                bar.update(1)
    except VideoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nstopped after {session.frames} frames", file=sys.stderr)
    stats = session.stats()
    print(
        f"watched {stats['frames']} frames ({stats['tokens']} tokens); state {stats['state_bytes'] / 1024:.0f} KiB; "
        f"{stats['ms_per_frame'] or 0:.1f} ms/frame",
        file=sys.stderr,
    )
    at, note = session.as_of(args.at)
    if note:
        print(note, file=sys.stderr)
    for question in args.question:
        print(f"Q: {question}" + (f"  (as of {at:g}s)" if at is not None else ""))
        print("A: ", end="", flush=True)
        try:
            for piece in session.ask(question, at=at, temperature=args.temperature):
                print(piece, end="", flush=True)
        except (QuestionTooLongError, RewindError, VideoError) as e:
            print(f"\nerror: {e}", file=sys.stderr)
            return 2
        print()
    return 0


def train(args) -> int:
    import torch

    from .hub import ModelNotFoundError
    from .packaged import load_model
    from .packaged.recipe import RECIPES, new_model
    from .training.trainer import Trainer

    if args.recipe not in RECIPES:
        raise SystemExit(f"error: no recipe {args.recipe!r}; the recipes are {', '.join(RECIPES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if (args.init is None) != (args.start_stage is None):
        raise SystemExit("error: --init and --start-stage go together: a model, and the recipe stage it continues from")
    try:
        if args.init and not (Path(args.out) / "checkpoint.pt").exists():  # a resumed run reloads its own checkpoint
            model = load_model(args.init)
        else:
            model = new_model(args.seed, args.lm)
    except ModelNotFoundError as e:
        raise SystemExit(f"error: {e}") from None
    try:
        bf16 = False if args.fp32 else True if args.bf16 else None  # None: where it pays (trainer.bf16_pays)
        trainer = Trainer(
            args.out,
            RECIPES[args.recipe],
            model,
            seed=args.seed,
            bf16=bf16,
            device=args.device,
            start_stage=args.start_stage,
        )
    except ValueError as e:  # a stage the recipe lacks, a checkpoint of another recipe
        raise SystemExit(f"error: {e}") from None
    trainer.run(max_minutes=args.minutes, checkpoint_every=args.checkpoint_every)
    done = trainer.stage_index >= len(trainer.stages)
    print(
        f"{'finished' if done else 'paused'} after {trainer.seconds / 60:.1f} min of training; "
        f"{'model in ' + str(trainer.out / 'model') if done else 'rerun the same command to resume'}"
    )
    return 0


def evaluate(args) -> int:
    import json

    from .hub import ModelNotFoundError
    from .packaged import load_model
    from .training.evaluate import format_table, run

    try:
        model = load_model(args.model, device=args.device)
    except ModelNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    minutes = [float(m) if "." in m else int(m) for m in args.minutes.split(",")]
    report = run(model, minutes, videos=args.videos, baselines=args.baselines, mp4=args.mp4)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(report))
    return 0


def bench(args) -> int:
    """Run one of the benchmark scripts in benchmarks/ (they print a table and write results/*.json)."""
    import runpy

    from .packaged import REPO_ROOT

    folder = REPO_ROOT / "benchmarks"
    scripts = sorted(p.stem for p in folder.glob("*.py"))
    if args.name not in scripts:
        print(f"error: no benchmark {args.name!r}; the benchmarks are {', '.join(scripts)}", file=sys.stderr)
        return 2
    sys.argv = [str(folder / f"{args.name}.py"), *args.args]
    runpy.run_path(sys.argv[0], run_name="__main__")
    return 0


def package(args) -> int:
    from .packaged.card import package as write_package

    write_package(args.run, args.eval, args.out, args.train_command, args.eval_command, args.notes)
    print(f"wrote {args.out}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="ma2mba", description="Video-Ma²mba: every frame in a Mamba-2 state.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("chat", help="watch a video at 1 FPS, then answer questions about it")
    p.add_argument("video")
    p.add_argument("-q", "--question", action="append", required=True, help="a question (repeatable)")
    p.add_argument("--at", type=float, default=None, help="answer as of this many seconds into the video")
    p.add_argument("--model", default=None, help="model folder or Hub repo id (default: the packaged model)")
    p.add_argument("--fps", type=float, default=1.0)
    p.add_argument("--max-seconds", type=float, default=4 * 3600)
    p.add_argument("--temperature", type=float, default=0.0)
    p.set_defaults(fn=chat)

    p = sub.add_parser("train", help="train the packaged model (resumable)")
    p.add_argument("--recipe", default="shapes")
    p.add_argument("--out", default="runs/shapes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minutes", type=float, default=None, help="stop (resumably) after this long")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--checkpoint-every", type=int, default=25)
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    precision.add_argument(
        "--bf16",
        action="store_true",
        help="bf16 autocast even where it does not pay (default: on a GPU with bf16, or a CPU with "
        "native bf16 instructions)",
    )
    p.add_argument(
        "--lm",
        default="mamba2",
        choices=("mamba2", "transformer"),
        help="transformer: the baseline of ma2mba/engine/transformer.py, same size (the checkpoint remembers it)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (a checkpoint resumes on either)")
    p.add_argument("--init", default=None, help="a model folder (or Hub id) that a new run starts from …")
    p.add_argument("--start-stage", default=None, help="… at this stage of the recipe (the earlier stages made it)")
    p.set_defaults(fn=train)

    p = sub.add_parser("eval", help="accuracy on held-out ShapeWorld videos, with baselines")
    p.add_argument("--model", default=None)
    p.add_argument("--minutes", default="2,10,60", help="video lengths of the held-out sets")
    p.add_argument("--videos", type=int, default=40, help="videos per set")
    p.add_argument("--out", default="results/eval.json")
    p.add_argument("--baselines", action="store_true", help="also run the 16-frame and majority baselines")
    p.add_argument("--mp4", action="store_true", help="also run the sets as H.264 uploads through video.py")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.set_defaults(fn=evaluate)

    p = sub.add_parser("package", help="a finished training run + its evaluation -> the model folder with its card")
    p.add_argument("--run", default="runs/shapes")
    p.add_argument("--eval", nargs="+", required=True, help="eval JSON files (one per held-out set is fine)")
    p.add_argument("--out", default="assets/ma2mba-shapes")
    p.add_argument("--train-command", default="python -m ma2mba train --recipe shapes --out runs/shapes --threads 1")
    p.add_argument("--eval-command", default="python -m ma2mba eval --baselines --mp4")
    p.add_argument("--notes", default="", help="markdown appended to the card's training section")
    p.set_defaults(fn=package)

    p = sub.add_parser("bench", help="run a benchmark script of benchmarks/ (prints a table, writes results/*.json)")
    p.add_argument("name", help="the script's name without .py, e.g. ssd_speed, magc_memory, stream")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed on to the script")
    p.set_defaults(fn=bench)

    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
