"""Ask a probe's model "When was the last frame?" at the end of 40 held-out videos of 20-249 s.

    python results/time_marker_probes/now_heldout.py OUT/model
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ma2mba.data import shapeworld  # noqa: E402
from ma2mba.evaluate import answer_batch, parse_seconds, raw_frames, watch  # noqa: E402
from ma2mba.model import load_model  # noqa: E402

torch.set_num_threads(2)
m = load_model(sys.argv[1])
rng = np.random.default_rng(1)
rows = []
for i in range(40):
    L = int(rng.integers(20, 250))
    v = shapeworld.generate((1 << 27) + 95000 + i, L)
    st = watch(m, raw_frames(m, v, range(L))[None], np.arange(L))
    a = answer_batch(m, st, ["When was the last frame?"])[0]
    rows.append((L - 1, parse_seconds(a), a))
err = np.array([(g - t) if g is not None else 999 for t, g, _ in rows])
print("exact", np.mean(err == 0), "within2", np.mean(np.abs(err) <= 2), "median abs", np.median(np.abs(err)))
print(rows[:20])
