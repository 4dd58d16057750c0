"""Training exact match per question type over windows of steps, for every log here.
    python results/oracle_frames/summarize.py
"""
import collections
import gzip
import json
from pathlib import Path

WINDOWS = ((0, 50), (200, 250), (400, 450), (600, 650), (1000, 1050))


def accuracy_by_kind(window) -> str:
    by_kind = collections.defaultdict(list)
    for r in window:
        for kind, acc in r["by_kind"].items():
            by_kind[kind].append(acc)
    return " ".join(f"{k}={sum(v) / len(v):.2f}" for k, v in sorted(by_kind.items()))


for path in sorted(Path(__file__).parent.glob("log_*.jsonl.gz")):
    rows = [json.loads(line) for line in gzip.open(path)]
    print(f"{path.name[4:-9]}: {len(rows)} steps, lengths {sorted({r['length'] for r in rows})}")
    for lo, hi in WINDOWS:
        window = rows[lo:hi]
        if len(window) < hi - lo:
            break
        print(f"  steps {lo:4d}-{hi:4d}: " + accuracy_by_kind(window))
    print(f"  last 50 steps:   " + accuracy_by_kind(rows[-50:]))
