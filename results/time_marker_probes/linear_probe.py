"""Is the current time still readable from the packaged model's hidden state when a question is asked?

Streams held-out ShapeWorld videos through the frozen model and, at many moments, keeps two hidden
vectors (the LM's final, normed output): at the newest frame's visual token (just after its time
marker), and at the last token of a trained question asked from that moment's state. The time
marker's own embedding is the control: every digit is linearly readable there. A linear
classifier per m:ss digit, fitted on 3/4 of the videos and scored on the rest, says how much of
the newest time each vector still holds.

    python results/time_marker_probes/linear_probe.py [--model assets/ma2mba-shapes] [--videos 80]
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ma2mba.data import shapeworld  # noqa: E402
from ma2mba.data.batches import prompt_state  # noqa: E402
from ma2mba.evaluate import raw_frames  # noqa: E402
from ma2mba.model import load_model  # noqa: E402

QUESTION = "When did the red star appear?"
SEED_BASE = (1 << 27) + 90_000  # held out: training seeds start at 2^32, evaluation sets elsewhere
DIGITS = {"minutes": lambda t: t // 60, "seconds_tens": lambda t: (t % 60) // 10, "seconds_units": lambda t: t % 10}


@torch.inference_mode()
def collect(model, n_videos: int, rng: np.random.Generator):
    rows = []
    question = torch.tensor([model.question_ids(QUESTION)])
    for i in range(n_videos):
        length = int(rng.integers(60, 240))
        video = shapeworld.generate(SEED_BASE + i, length)
        frames = raw_frames(model, video, range(length))
        state = prompt_state(model, 1)
        done = 0
        for end in sorted(rng.choice(np.arange(5, length + 1), size=8, replace=False).tolist()):
            visual = model.encode_frames(frames[done:end])
            tokens = model.frame_embeds(visual, np.arange(done, end)).flatten(0, 1)[None]  # (1, frames·2, d)
            hidden, state = model.lm.backbone(tokens, state)
            asked = model.lm(input_ids=question, state=state, return_logits=False).hidden
            vectors = (tokens[0, -model.tokens_per_frame], hidden[0, -1], asked[0, -1])  # the newest marker, …
            rows.append((i, end - 1, *(v.float().numpy() for v in vectors)))
            done = end
    return rows


def fit_and_score(x_train, y_train, x_test, y_test, classes: int, steps: int = 500) -> float:
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    xt, xs = torch.tensor((x_train - mean) / std), torch.tensor((x_test - mean) / std)
    layer = torch.nn.Linear(xt.shape[1], classes)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2, weight_decay=1e-3)
    yt = torch.tensor(y_train)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(layer(xt), yt).backward()
        opt.step()
    return float((layer(xs).argmax(1).numpy() == y_test).mean())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--videos", type=int, default=80)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "linear_probe.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = load_model(args.model)
    rows = collect(model, args.videos, np.random.default_rng(0))
    video = np.array([r[0] for r in rows])
    t = np.array([r[1] for r in rows])
    test = video >= int(args.videos * 0.75)
    report = {"samples": len(rows), "test_samples": int(test.sum()), "question": QUESTION, "accuracy": {}}
    print(f"{len(rows)} moments, {test.sum()} held out; linear read-out accuracy of the newest time's digits")
    print(f"{'digit':14s} {'chance':>7s} {'marker':>7s} {'at frame':>9s} {'at question':>12s}")
    for name, digit in DIGITS.items():
        y = digit(t)
        classes = int(y.max()) + 1
        chance = float(np.mean(y[test] == np.bincount(y[~test]).argmax()))
        scores = {}
        for where, column in (("marker", 2), ("frame", 3), ("question", 4)):
            x = np.stack([r[column] for r in rows])
            scores[where] = fit_and_score(x[~test], y[~test], x[test], y[test], classes)
        report["accuracy"][name] = {"chance": chance, **scores}
        print(f"{name:14s} {chance:7.2f} {scores['marker']:7.2f} {scores['frame']:9.2f} {scores['question']:12.2f}")
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
