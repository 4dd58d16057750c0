"""Training exact match per question type, in windows of 50 steps, for the runs here and their controls.
    python results/conv_width/compare.py [RELEARN_LOG [COUNTER_LOG]]   (default: the logs kept here)

COUNTER_LOG is the relearn with `--counter-loss` (../counter_loss/); `counter` is its head's accuracy.
"""
import collections
import gzip
import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
KINDS = ("count", "after", "when", "exists", "last", "first_color", "caption")


def rows(path, stage=None):
    """The log's rows, one per step: a resumed run logs again the steps after its last checkpoint; the rerun wins."""
    lines = gzip.open(path, "rt") if str(path).endswith(".gz") else open(path)
    by_step = {}
    for r in map(json.loads, lines):
        if stage is None or r["stage"] == stage:
            by_step[r["stage"], r["step"]] = r
    return list(by_step.values())


def table(runs: dict, window=50):
    """runs: name -> rows; one line per (window, run)."""
    longest = max(len(r) for r in runs.values())
    kinds = [k for k in KINDS if any(k in r["by_kind"] for rs in runs.values() for r in rs)]
    for lo in range(0, longest, window):
        for name, rs in runs.items():
            w = rs[lo:lo + window]
            if len(w) < window:
                continue
            acc = collections.defaultdict(list)
            for r in w:
                for k, v in r["by_kind"].items():
                    acc[k].append(v)
            cells = " ".join(f"{k}={sum(acc[k]) / len(acc[k]):.2f}" if acc[k] else f"{k}=  - " for k in kinds)
            heads = [r["counter"] for r in w if "counter" in r]
            if heads:
                cells += f" counter={sum(heads) / len(heads):.2f}"
            lengths = sorted({r["length"] for r in w})
            loss = sum(r["loss"] for r in w) / len(w)
            print(f"  steps {lo:4d}-{lo + window:4d} {name:>17}: {cells} loss={loss:.3f} lengths {lengths}")


def main():
    print("Fine-tuning the shipped model on 32-s clips (lr 6e-4), its convolution kept at 4 or widened to 12:")
    table({"conv 4": rows(HERE / "log_finetune_conv4.jsonl.gz"), "conv 12 (grown)": rows(HERE / "log_finetune_conv12.jsonl.gz")})
    relearn = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "log_relearn_conv12.jsonl.gz"
    counter = Path(sys.argv[2]) if len(sys.argv) > 2 else HERE.parent / "counter_loss" / "log_relearn_conv12_counter.jsonl.gz"
    if relearn.exists():
        shipped = HERE.parent / "train_shapes_log.jsonl.gz"
        for stage in ("captions", "qa"):
            print(f"\nStage {stage} of the shapes recipe, the shipped run (conv 4) and the LM relearnt with conv 12"
                  + (", without and with the counter loss:" if counter.exists() else ":"))
            runs = {"shipped, conv 4": rows(shipped, stage), "relearnt, conv 12": rows(relearn, stage)}
            if counter.exists():
                runs["+ counter loss"] = rows(counter, stage)
            table(runs)


if __name__ == "__main__":
    main()
