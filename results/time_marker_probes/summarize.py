"""Training accuracy of each probe's clock question and of "when", in windows of steps, from the
logs kept here (`<probe>.jsonl.gz`), as a table and as summary.json.

    python results/time_marker_probes/summarize.py
"""

import gzip
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
WINDOWS = ((0, 25), (60, 80), (125, 150), (275, 300), (425, 450))
KINDS = ("clock", "when", "count", "after", "last")
HEAD = "clock_head_accuracy"  # dense_clock's training-only head: all four m:ss digits right, per frame


def windows(rows):
    out = {}
    for lo, hi in WINDOWS:
        if len(rows) < hi:
            continue
        seg = rows[lo:hi]
        out[f"{lo}-{hi}"] = {k: round(float(np.mean([r["by_kind"][k] for r in seg if k in r["by_kind"]])), 3)
                             for k in KINDS}
        if HEAD in seg[0]:
            out[f"{lo}-{hi}"]["head"] = round(float(np.mean([r[HEAD] for r in seg])), 3)
    return out


def main():
    summary = {}
    for path in sorted(HERE.glob("*.jsonl.gz")):
        rows = [json.loads(line) for line in gzip.open(path, "rt") if '"stage": "clock' in line]  # clock, clock_more
        summary[path.name.removesuffix(".jsonl.gz")] = {
            "steps": len(rows), "median_step_seconds": float(np.median([r["seconds"] for r in rows])),
            "windows": windows(rows)}
    print(f"{'probe':28s} {'steps':>5s}  {'window':8s} " + " ".join(f"{k:>6s}" for k in (*KINDS, "head")))
    for name, s in summary.items():
        for window, acc in s["windows"].items():
            head = f" {acc['head']:6.2f}" if "head" in acc else ""
            print(f"{name:28s} {s['steps']:5d}  {window:8s} " + " ".join(f"{acc[k]:6.2f}" for k in KINDS) + head)
    (HERE / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
