"""Training exact match per question type, in windows of 50 steps: this relearn's QA stage against the shipped
run's first QA stage (d_conv 4, no MLP, no counter loss) and stop 18's 12-tap relearn, at the same step.

    python results/reach_relearn/compare.py [LOG]   (default: the log kept here)

The runs do not see the same batches, and this one asks count, "after" and "when" more often (qa_mlp's
weighting), so a window compares how far each has got, not paired answers. Held-out accuracy is in eval_*.json.
"""
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "conv_width"))

from compare import rows, table  # noqa: E402

log = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "log.jsonl.gz"
mine = rows(log, "qa")
table({  # the other runs up to the step this one reached
    "shipped, qa": rows(HERE.parent / "train_shapes_log.jsonl.gz", "qa")[:len(mine)],
    "conv 12 relearn": rows(HERE.parent / "conv_width" / "log_relearn_conv12.jsonl.gz", "qa")[:len(mine)],
    "this relearn": mine,
})
