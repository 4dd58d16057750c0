"""Is one git revision of the engine faster than another? Both run in one process, in turns.

The package as committed at REV is unpacked next to the working tree's (as `ma2mba_<rev>`), the same
Mamba2LM (same seed, same weights) is built from each, and every round times one forward+backward of
each back to back. The speed-up is the median of the per-round ratios: on this shared machine the
load moves by ±10% between runs, and a ratio taken within one round cancels most of it.

    python benchmarks/compare_revisions.py --rev b071caf          # the working tree against b071caf
    python benchmarks/compare_revisions.py --rev b071caf --configs 130m_4_layers:fp32 --rounds 9
    python benchmarks/compare_revisions.py --rev b071caf --forward-only   # forward passes, no grad
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import torch

import ma2mba

ROOT = Path(__file__).resolve().parent.parent


def load_module(name: str, path: Path):
    """Import the file (or the package folder) at `path` under `name`, without touching the import path."""
    init = path / "__init__.py" if path.is_dir() else path
    search = [str(path)] if path.is_dir() else None
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=search)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it, so that its relative imports find it
    spec.loader.exec_module(module)
    return module


ssd_speed = load_module("ssd_speed", ROOT / "benchmarks" / "ssd_speed.py")
CONFIGS, VOCAB, lm_runner, timed_rounds = (
    ssd_speed.CONFIGS,
    ssd_speed.VOCAB,
    ssd_speed.lm_runner,
    ssd_speed.timed_rounds,
)


def import_revision(rev: str, into: Path):
    """The `ma2mba` package as committed at `rev`, imported under the name ma2mba_<rev>."""
    name = f"ma2mba_{rev.replace('-', '_').replace('~', '_').replace('^', '_')}"
    archive = subprocess.run(["git", "archive", rev, "ma2mba"], cwd=ROOT, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    (into / "ma2mba").rename(into / name)
    return load_module(name, into / name)


def build(package, config: str):
    torch.manual_seed(0)
    return package.Mamba2LM(package.Mamba2Config(vocab_size=VOCAB, **CONFIGS[config]))


def compare(old_package, config: str, dtype: str, tokens: int, rounds: int, backward: bool = True) -> dict:
    ids = torch.randint(0, VOCAB, (1, tokens))
    kind = "fwd_bwd" if backward else "fwd"
    runs = {
        name: lm_runner(lambda x, lm=lm: lm(x).logits, ids, dtype, backward)
        for name, lm in (("working_tree", build(ma2mba, config)), ("revision", build(old_package, config)))
    }
    seconds = timed_rounds(runs, rounds)  # one warm-up each, then rounds in turns
    ratios = [old / new for new, old in zip(seconds["working_tree"], seconds["revision"])]
    return dict(
        config=config,
        dtype=dtype,
        tokens=tokens,
        rounds=rounds,
        passes=kind,
        seconds_working_tree=statistics.median(seconds["working_tree"]),
        seconds_revision=statistics.median(seconds["revision"]),
        speedup=statistics.median(ratios),
        speedup_range=[min(ratios), max(ratios)],
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", required=True, help="the git revision to compare the working tree against")
    parser.add_argument(
        "--configs",
        default="130m_4_layers:fp32,256x8:fp32,256x8:bf16",
        help="config:dtype pairs (configs of ssd_speed.py)",
    )
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--forward-only", action="store_true", help="time forward passes (no grad) instead of fwd+bwd")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "results" / "compare_revisions.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        old = import_revision(args.rev, Path(tmp))
        print(
            f"{'forward' if args.forward_only else 'fwd+bwd'}, {args.tokens} tokens: working tree (HEAD {head}) against {args.rev}"
        )
        print("| config | dtype | working tree, s | revision, s | speed-up (rounds min–max) |")
        print("|---|---|---|---|---|")
        for pair in args.configs.split(","):
            config, dtype = pair.split(":")
            row = compare(old, config, dtype, args.tokens, args.rounds, backward=not args.forward_only)
            rows.append(row)
            print(
                f"| {config} | {dtype} | {row['seconds_working_tree']:.2f} | {row['seconds_revision']:.2f} | "
                f"{row['speedup']:.3f}× ({row['speedup_range'][0]:.2f}–{row['speedup_range'][1]:.2f}) |",
                flush=True,
            )
    out = Path(args.out)
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(dict(revision=args.rev, head=head, threads=args.threads, rows=rows), indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
