"""Each arm's training accuracy against qa_mlp2's over the same steps (the same batches).

    python results/continued_training/compare.py RUN [RUN …]   # run folders, or their log.jsonl[.gz]
"""

import gzip
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CONTROL = HERE.parent / "qa_mlp2" / "train_log.jsonl.gz"
COLUMNS = ("count", "after", "when", "exists", "last", "loss")


def read_log(path: Path) -> list[dict]:
    if path.is_dir():
        path = path / "log.jsonl"
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return [json.loads(line) for line in f]


def means(rows: list[dict]) -> list[float]:
    return [float(np.mean([r["loss"] if k == "loss" else r["by_kind"][k] for r in rows if k == "loss" or k in r["by_kind"]]))
            for k in COLUMNS]


def main():
    control = read_log(CONTROL)
    print("| arm | steps | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    for arg in sys.argv[1:]:
        rows = read_log(Path(arg))
        rows = [r for r in rows if r["stage"] != "qa_mlp2"]
        if any(r["length"] != c["length"] for r, c in zip(rows, control)):
            print(f"warning: {arg} did not see qa_mlp2's batches")
        n = len(rows)
        print(f"| {rows[0]['stage']} | {n} | " + " | ".join(f"{v:.3f}" for v in means(rows)) + " |")
        print(f"| qa_mlp2, same steps | {n} | " + " | ".join(f"{v:.3f}" for v in means(control[:n])) + " |")


if __name__ == "__main__":
    main()
