"""Training exact match per question type, and the frame heads' accuracy, over windows of 50 steps.

    python results/counter_loss/summarize.py [LOG ...]   # default: every log_*.jsonl.gz here

`counter` and `recall` are the frame heads' accuracy (counter_lab.py); the others are QA exact match.
"""
import collections
import gzip
import json
import sys
from pathlib import Path

WINDOW = 50


def opened(path: Path):
    return gzip.open(path, "rt") if path.suffix == ".gz" else open(path)


def window_means(rows) -> str:
    values = collections.defaultdict(list)
    for r in rows:
        for kind, acc in r["by_kind"].items():
            values[kind].append(acc)
        for head in ("counter", "recall"):
            if head in r:
                values[head].append(r[head])
    return " ".join(f"{k}={sum(v) / len(v):.2f}" for k, v in sorted(values.items()))


paths = [Path(p) for p in sys.argv[1:]] or sorted(Path(__file__).parent.glob("log_*.jsonl.gz"))
for path in paths:
    rows = [json.loads(line) for line in opened(path)]
    print(f"{path.name}: {len(rows)} steps, lengths {sorted({r['length'] for r in rows})}")
    for lo in range(0, len(rows), WINDOW):
        print(f"  steps {lo:4d}-{min(lo + WINDOW, len(rows)):4d}: " + window_means(rows[lo:lo + WINDOW]))
