"""The command line: watches a video with a progress bar, streams answers, fails readably."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "assets" / "examples" / "shapes-30s.mp4"


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "ma2mba", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})


def test_chat_watches_and_answers_each_question():
    out = run_cli("chat", str(EXAMPLE), "-q", "What shape appeared first?", "-q", "Did a red star appear?",
                  "--at", "10")
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
