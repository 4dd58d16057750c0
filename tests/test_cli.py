"""The command line: watches a video with a progress bar, streams answers, fails readably."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "assets" / "examples" / "shapes-30s.mp4"


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "ma2mba", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )


def test_chat_watches_and_answers_each_question():
    out = run_cli(
        "chat", str(EXAMPLE), "-q", "What shape appeared first?", "-q", "Did a red star appear?", "--at", "10"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("Q: ") == 2 and out.stdout.count("A: ") == 2
    assert "(as of 10s)" in out.stdout
    assert "watching" in out.stderr and "30/30" in out.stderr  # tqdm's bar reached every frame
    assert "state" in out.stderr and "KiB" in out.stderr


def test_chat_rejects_a_text_file_readably(tmp_path):
    fake = tmp_path / "notes.mp4"
    fake.write_text("not a video")
    out = run_cli("chat", str(fake), "-q", "What shape appeared first?")
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and "Traceback" not in out.stderr


def test_chat_rejects_an_overlong_question_readably():
    out = run_cli("chat", str(EXAMPLE), "-q", "star " * 300)
    assert out.returncode == 2
    assert "limit" in out.stderr and "Traceback" not in out.stderr


def test_train_continues_a_saved_model_from_a_named_stage(tmp_path):
    """`train --init MODEL --start-stage NAME`: a new run takes MODEL as the result of the stages before NAME."""
    import json

    import torch

    from ma2mba import load_model
    from ma2mba.packaged.recipe import SMOKE, new_model

    start = new_model(seed=3)
    start.save_pretrained(tmp_path / "start")
    last = SMOKE[-1]
    out = run_cli(
        "train",
        "--recipe",
        "smoke",
        "--fp32",
        "--init",
        str(tmp_path / "start"),
        "--start-stage",
        last.name,
        "--out",
        str(tmp_path / "run"),
    )
    assert out.returncode == 0, out.stderr
    log = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    assert [r["stage"] for r in log] == [last.name] * last.steps  # the earlier stages were not run
    final = load_model(tmp_path / "run" / "model")
    assert final.lm.config.d_intermediate == last.grow_mlp
    # it began from the given weights: the vision encoder, frozen in that stage, is exactly the start's
    for (name, a), b in zip(start.vision.state_dict().items(), final.vision.state_dict().values()):
        assert torch.equal(a, b), name
    wrong = run_cli(
        "train",
        "--recipe",
        "smoke",
        "--init",
        str(tmp_path / "start"),
        "--start-stage",
        "nope",
        "--out",
        str(tmp_path / "wrong"),
    )
    assert wrong.returncode != 0 and "no stage 'nope'" in wrong.stderr and "Traceback" not in wrong.stderr
    alone = run_cli("train", "--recipe", "smoke", "--start-stage", last.name, "--out", str(tmp_path / "alone"))
    assert alone.returncode != 0 and "go together" in alone.stderr


def test_the_console_script_runs_benchmarks_by_name_and_refuses_unknown_ones():
    import shutil

    script = shutil.which("ma2mba")
    assert script, "pip install -e . puts the ma2mba command on the PATH"
    out = subprocess.run([script, "bench", "nope"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "no benchmark 'nope'" in out.stderr and "ssd_speed" in out.stderr
    helped = subprocess.run(
        [script, "bench", "stream", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert helped.returncode == 0 and "--minutes" in helped.stdout  # the script's own arguments pass through
