"""Eight users at once: each uploads its own video and asks ten questions, through gradio_client.

    python benchmarks/load.py [--users 8] [--questions 10]

Starts `python app.py` on a local port (as tests/appserver.py does), then runs every user in its own
thread, at the same moment. Each checks that every answer is about its own video (against a session
of its own in this process, run before the load). Reports p50 and p95 of ingest time (upload to the
last frame), of answer latency (question to the full answer) and the app's peak memory (RSS of the
app and its children, sampled every 0.2 s). Prints a table, writes results/load.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch
from gradio_client import Client, handle_file

from ma2mba import load_model
from ma2mba.data import world
from ma2mba.data.render import write_mp4
from ma2mba.packaged.examples import UPLOAD_SUGGESTIONS, load_examples, watched

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = (*UPLOAD_SUGGESTIONS, "What was the last shape to appear?", "Did a blue star appear?",
             "How many times did a white square appear?", "Did a green triangle appear?",
             "What appeared right after the red star?", "When did the yellow circle appear?")  # fmt: skip
MAX_NEW_TOKENS = 8


def appserver():
    spec = importlib.util.spec_from_file_location("appserver", ROOT / "tests" / "appserver.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def videos(folder: Path, n: int) -> list[Path]:
    """The example clips, then ShapeWorld clips of other seeds: a different video for each user."""
    paths = [Path(e["path"]) for e in load_examples()][:n]
    for i in range(n - len(paths)):
        paths.append(
            write_mp4(world.generate(900 + i, 30 + 10 * i), folder / f"user{i}.mp4", fps=10, width=320, height=180)
        )
    return paths


def percentile(values, q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


class PeakMemory(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.stop = 0, threading.Event()

    def run(self):
        me = psutil.Process()
        while not self.stop.is_set():
            apps = [p for p in me.children() if "app.py" in " ".join(p.cmdline())]
            rss = sum(q.memory_info().rss for p in apps for q in (p, *p.children(recursive=True)) if q.is_running())
            self.peak = max(self.peak, rss)
            time.sleep(0.2)


def user(url: str, path: Path, questions, expected: dict, end: int, out: dict) -> None:
    client = Client(url, verbose=False)
    started = time.perf_counter()
    job = client.submit(handle_file(str(path)), "fastest", api_name="/watch")
    job.result()
    out["ingest"] = time.perf_counter() - started
    out["answers"], out["latency"] = [], []
    for q in questions:
        started = time.perf_counter()
        chat = client.submit(q, end, False, 0.0, MAX_NEW_TOKENS, api_name="/ask").result()[0]
        out["latency"].append(time.perf_counter() - started)
        roles = [m["role"] for m in chat]
        last_user = len(roles) - 1 - roles[::-1].index("user")
        out["answers"].append(" ".join(p["text"] for p in chat[last_user + 1]["content"]))
    out["own"] = out["answers"] == [expected[q] for q in questions]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--questions", type=int, default=10)
    parser.add_argument("--out", default=str(ROOT / "results" / "load.json"))
    args = parser.parse_args()
    questions = QUESTIONS[: args.questions]
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        paths = videos(Path(tmp), args.users)
        model = load_model()
        expected, ends = [], []  # each user's answers, from a session of its own here, and its last second
        for path in paths:
            session = watched(model, path)
            expected.append({q: session.answer(q, max_new_tokens=MAX_NEW_TOKENS) for q in questions})
            ends.append(int(session.last_t))
        with appserver().running_app() as url:
            meter = PeakMemory()
            meter.start()
            results = [{} for _ in paths]
            threads = [threading.Thread(target=user, args=(url, p, questions, e, end, r))
                       for p, e, end, r in zip(paths, expected, ends, results)]  # fmt: skip
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - started
            meter.stop.set()
    ingest = [r["ingest"] for r in results]
    latency = [x for r in results for x in r["latency"]]
    report = {
        "users": args.users,
        "questions_per_user": len(questions),
        "wall_seconds": round(wall, 1),
        "every_user_got_its_own_answers": all(r["own"] for r in results),
        "ingest_seconds": {"p50": statistics.median(ingest), "p95": percentile(ingest, 0.95)},
        "answer_seconds": {"p50": statistics.median(latency), "p95": percentile(latency, 0.95)},
        "app_peak_rss_mb": round(meter.peak / 2**20, 1),
        "per_user": [{"video": p.name, **r} for p, r in zip(paths, results)],
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"{args.users} users at once, {len(questions)} questions each, in {wall:.0f} s; "
        f"every user got its own answers: {report['every_user_got_its_own_answers']}"
    )
    print("\n| | p50 s | p95 s |\n|---|---|---|")
    print(
        f"| ingest (upload to last frame) | {report['ingest_seconds']['p50']:.1f} | {report['ingest_seconds']['p95']:.1f} |"
    )
    print(
        f"| answer (question to full answer) | {report['answer_seconds']['p50']:.2f} | {report['answer_seconds']['p95']:.2f} |"
    )
    print(f"\napp peak memory: {report['app_peak_rss_mb']:.0f} MB RSS")


if __name__ == "__main__":
    main()
