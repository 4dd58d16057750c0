"""The packaged model's answers to "How many times did X appear?" for every kind that appeared (count >= 1),
against the true count and the seconds the kind was on screen, on fresh 2-minute videos.

    python results/continued_training/count_probe.py 120 24 > results/continued_training/count_probe_120s.txt
"""
import sys, collections, numpy as np, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
from ma2mba.model import load_model
from ma2mba.data import shapeworld
from ma2mba import evaluate as E
torch.set_num_threads(2)
m = load_model()
length, n = int(sys.argv[1]), int(sys.argv[2])
videos = [shapeworld.generate(6_000_000 + i, length) for i in range(n)]
rows = []
for i in range(0, n, 8):
    g = videos[i:i+8]
    st = E.watch(m, np.stack([E.raw_frames(m, v, range(length)) for v in g]), np.arange(length))
    asks = [(j, qa) for j, v in enumerate(g) for qa in v.all_questions()["count"] if qa.answer != "0"]
    idx = torch.tensor([j for j, _ in asks])
    pred = E.answer_batch(m, st.map(lambda t: t.index_select(0, idx)), [qa.question for _, qa in asks])
    for (j, qa), p in zip(asks, pred):
        kind = next(k for k in shapeworld.KINDS if shapeworld.kind_name(k) in qa.question)
        vis = sum(a.end - a.start for a in g[j].appearances if a.kind == kind)
        rows.append((int(qa.answer), p, vis))
for true, p, vis in sorted(rows)[:: max(1, len(rows) // 60)]:
    print(true, "|", p, "| visible s", vis)
ok = collections.defaultdict(list)
for true, p, vis in rows:
    ok[min(true, 12) // 3].append(p == str(true))
print({k * 3: (round(np.mean(v), 2), len(v)) for k, v in sorted(ok.items())})
off = [int(p) - t for t, p, _ in rows if p.isdigit()]
print("off", collections.Counter(np.clip(off, -6, 6)).most_common(13))
