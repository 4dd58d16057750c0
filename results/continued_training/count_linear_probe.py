"""Is the exact count linearly readable where the packaged model picks a count's first digit?

Features: the LM's final hidden vector at the position that predicts the first digit (after the answer's
word-start token). Every nonzero count question of each video and three zero ones; a 21-way logistic
regression fitted on 120 videos, tested on 40 others (2-minute videos, seeds unused by training and evaluation).

    python results/continued_training/count_linear_probe.py 120 120 40 > results/continued_training/count_linear_probe_120s.txt
"""
import sys, numpy as np, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
from ma2mba.model import load_model
from ma2mba.data import shapeworld
from ma2mba import evaluate as E
torch.set_num_threads(1)
m = load_model()
tok = m.tokenizer
length = int(sys.argv[1]); n_train, n_test = int(sys.argv[2]), int(sys.argv[3])
WORD_START = tok.encode("7")[0]

def features(seed0, n):
    X, Y, P = [], [], []
    videos = [shapeworld.generate(seed0 + i, length) for i in range(n)]
    rng = np.random.default_rng(seed0)
    for i in range(0, n, 8):
        g = videos[i:i + 8]
        st = E.watch(m, np.stack([E.raw_frames(m, v, range(length)) for v in g]), np.arange(length))
        asks = []
        for j, v in enumerate(g):
            qs = v.all_questions()["count"]
            nz = [q for q in qs if q.answer != "0"]
            z = [q for q in qs if q.answer == "0"]
            asks += [(j, q) for q in nz + [z[k] for k in rng.choice(len(z), size=min(len(z), 3), replace=False)]]
        with torch.inference_mode():
            for j, q in asks:
                s = st.map(lambda t: t[j:j + 1])
                ids = m.question_ids(q.question) + [WORD_START]
                out = m.lm(input_ids=torch.tensor([ids]), state=s, return_logits=True)
                X.append(out.hidden[0, -1].float().numpy())
                Y.append(int(q.answer))
                d1 = out.logits[0, -1, :len(tok)].argmax().item()
                P.append(tok.hf.id_to_token(d1))
    return np.array(X), np.array(Y), P

Xtr, Ytr, _ = features(7_000_000, n_train)
Xte, Yte, Pte = features(8_000_000, n_test)
print("train", len(Ytr), "test", len(Yte), flush=True)
Xt, Yt = torch.tensor(Xtr), torch.tensor(Ytr)
mu, sd = Xt.mean(0), Xt.std(0) + 1e-6
W = torch.zeros(Xt.shape[1], 21, requires_grad=True); b = torch.zeros(21, requires_grad=True)
opt = torch.optim.LBFGS([W, b], max_iter=500, line_search_fn="strong_wolfe")
def closure():
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(((Xt - mu) / sd) @ W + b, Yt) + 1e-3 * W.pow(2).sum()
    loss.backward(); return loss
opt.step(closure)
pred = (((torch.tensor(Xte) - mu) / sd) @ W + b).argmax(-1).numpy()
first_digit_ok = np.array([p == str(y)[0] for p, y in zip(Pte, Yte)])
for lo, hi in ((0, 0), (1, 1), (2, 5), (6, 10), (11, 20)):
    sel = (Yte >= lo) & (Yte <= hi)
    print(f"count {lo}-{hi}: n={sel.sum()} probe exact {np.mean(pred[sel] == Yte[sel]):.2f} within1 {np.mean(np.abs(pred[sel] - Yte[sel]) <= 1):.2f}"
          f" | model first digit right {first_digit_ok[sel].mean():.2f}")
print("probe train acc", np.mean((((Xt - mu) / sd) @ W + b).argmax(-1).numpy() == Ytr))
