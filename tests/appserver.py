"""Run `python app.py` on a free local port for tests that talk to it over HTTP, as users do."""

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_S = 180  # importing torch and gradio on a busy 2-core machine is slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(**env):
    """Start app.py with extra environment variables; yield its URL; stop it."""
    port = free_port()
    env = {
        **os.environ,
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        **{k: str(v) for k, v in env.items()},
    }
    with tempfile.TemporaryFile("w+") as log:
        server = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while True:
                if server.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"app.py exited with {server.returncode}:\n{log.read()[-3000:]}")
                try:
                    urllib.request.urlopen(url, timeout=5)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"app.py did not answer on {url} within {STARTUP_TIMEOUT_S} s") from None
                    time.sleep(0.5)
            yield url
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            log.seek(0)
            tail = log.read()[-5000:]
            if "Traceback" in tail:  # an exception the app did not turn into a message
                print(f"--- app.py log ---\n{tail}")
