"""How soon the first token of an answer shows in the browser after pressing Ask.

    python benchmarks/first_token.py [--questions 20]

Starts `python app.py` on a local port (as tests/appserver.py does) and drives Debian's chromium with
Playwright: it watches an example clip, then asks questions one after another. Each is timed from the
click on Ask to the moment the chat's text has grown by the question and the first characters of the
answer. Prints median and p95, writes results/first_token.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = ("What shape appeared first?", "Did a red circle appear?")


def appserver():
    spec = importlib.util.spec_from_file_location("appserver", ROOT / "tests" / "appserver.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--out", default=str(ROOT / "results" / "first_token.json"))
    args = parser.parse_args()
    with appserver().running_app() as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(120_000)
        page.goto(url)
        page.locator("input[type=file]").first.set_input_files(str(ROOT / "assets" / "examples" / "shapes-30s.mp4"))
        page.wait_for_selector("#watch-progress[data-state^='Done']")
        seconds = []
        for i in range(args.questions):
            question = QUESTIONS[i % len(QUESTIONS)]
            before = page.evaluate("document.querySelector('#chat').innerText.length")
            page.locator("#question textarea").fill(question)
            started = time.perf_counter()
            page.locator("#ask").click()
            page.wait_for_function(
                f"document.querySelector('#chat').innerText.length > {before + len(question) + 2}", polling=10
            )
            seconds.append(time.perf_counter() - started)
            page.wait_for_timeout(1500)  # the answer finishes, and its ground-truth line
        browser.close()
    ordered = sorted(seconds)
    report = {
        "questions": len(seconds),
        "median_s": statistics.median(seconds),
        "p95_s": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
        "seconds": seconds,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"| first answer token after pressing Ask, {len(seconds)} questions | median | p95 |\n|---|---|---|")
    print(f"| browser (chromium), one user | {1000 * report['median_s']:.0f} ms | {1000 * report['p95_s']:.0f} ms |")


if __name__ == "__main__":
    main()
