"""The Space in a real browser: Playwright driving Debian's chromium (installed by .ci/run).

Loads the page, uploads a video, watches ingestion progress, asks questions and sees the answers,
rewinds a 10-minute upload, sees a refused question answered in the chat and the novelty warning,
stops a second video mid-way, runs the Memory lab for two modes and sees both curves (and the
length sweep), and saves screenshots of both tabs to assets/ (the README shows them).
"""

import shutil
import time
from pathlib import Path

import pytest
from appserver import ROOT, running_app

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
EXAMPLES = ROOT / "assets" / "examples"
SCREENSHOTS = {"watch": ROOT / "assets" / "screenshot-watch.png", "lab": ROOT / "assets" / "screenshot-lab.png"}
TIMEOUT_MS = 120_000

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).is_file() or shutil.which("chromium") is None,
    reason="needs Debian's chromium (apt-get install chromium; .ci/run installs it)",
)


@pytest.fixture(scope="module")
def page():
    from playwright.sync_api import sync_playwright

    with running_app(MA2MBA_LAB_MAX_SECONDS=64) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        page.wait_for_selector("#watch-progress")
        yield page
        browser.close()


def save_screenshot(page, path: Path) -> None:
    """A full-page PNG, reduced to a 256-colour palette so that it stays small in the repo."""
    from PIL import Image

    page.screenshot(path=str(path), full_page=True)
    Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)


def fresh_page(page):
    """Another user's page on the same app, with an empty player."""
    other = page.context.browser.new_page(viewport={"width": 1280, "height": 900})
    other.set_default_timeout(TIMEOUT_MS)
    other.goto(page.url)
    other.wait_for_selector("#watch-progress")
    return other


def frames_shown(page) -> int:
    return int(page.locator("#watch-progress").get_attribute("data-frames") or 0)


def test_upload_watch_and_chat(page):
    page.get_by_label("10× real time").check()  # slow enough to see the progress move
    page.locator("input[type=file]").first.set_input_files(str(EXAMPLES / "shapes-portrait-45s.mp4"))
    seen = set()
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while not (page.locator("#watch-progress").get_attribute("data-state") or "").startswith("Done"):
        seen.add(frames_shown(page))
        assert time.monotonic() < deadline, "ingestion did not finish"
        time.sleep(0.1)
    assert frames_shown(page) == 45
    assert len({n for n in seen if 0 < n < 45}) >= 3  # the count went up while we watched
    assert page.locator("#now-watching img").get_attribute("src")  # the current frame is shown
    assert "Mamba-2 state" in page.locator("#watch-memory").inner_text()

    page.get_by_role("button", name="What shape appeared first?").click()  # a suggested question
    page.wait_for_selector('#chat :text("ShapeWorld\'s answer")')
    page.locator("#question textarea").fill("How many times did a yellow star appear?")
    page.locator("#ask").click()
    page.wait_for_function("document.querySelector('#chat').innerText.split(\"ShapeWorld's answer\").length === 3")
    chat = page.locator("#chat").inner_text()
    assert "What shape appeared first?" in chat and "How many times did a yellow star appear?" in chat
    save_screenshot(page, SCREENSHOTS["watch"])


def test_stop_button_stops_ingestion(page):
    page.get_by_label("real time", exact=True).check()
    page.get_by_text("shapes-60s.mp4 · 640×360").click()  # an example: loads it into the player
    page.wait_for_function(
        "Number(document.querySelector('#watch-progress').dataset.frames) >= 3"
        " && document.querySelector('#watch-progress').dataset.state === 'Watching'"
    )
    page.locator("#stop-watch").click()
    page.wait_for_selector("#watch-progress[data-state^='Stopped at']")
    time.sleep(2.5)  # at real time, ingestion would have moved on by two frames
    stopped = frames_shown(page)
    time.sleep(2.5)
    assert frames_shown(page) == stopped < 60


def test_the_memory_bars_keep_their_width_on_a_phone(page):
    """At 390 px the label goes above its bar (the bars were about 12 px wide there)."""
    if not page.locator("#watch-memory .mem-track").count():  # run alone: watch an example first
        page.get_by_label("fastest").check()
        page.get_by_text("shapes-30s.mp4 · 640×360").click()
        page.wait_for_selector("#watch-progress[data-state^='Done']")
    assert page.locator("#watch-memory .mem-track").count() >= 2
    try:
        page.set_viewport_size({"width": 390, "height": 844})
        page.wait_for_timeout(300)
        widths = [box["width"] for box in (t.bounding_box() for t in page.locator("#watch-memory .mem-track").all())]
        assert min(widths) >= 200, widths
    finally:
        page.set_viewport_size({"width": 1280, "height": 900})


def test_memory_lab_shows_a_curve_for_each_mode(page):
    page.get_by_role("tab", name="Memory lab").click()
    page.get_by_role("checkbox", name="per-layer").uncheck()
    page.get_by_role("checkbox", name="√L").uncheck()
    page.locator("#lab-train").click()
    page.wait_for_selector("#lab-status :text('Done.')")
    for plot in ("#lab-timeline", "#lab-loss"):
        lines = page.locator(f"{plot} g.mark-line path")
        page.wait_for_function(f"document.querySelectorAll('{plot} g.mark-line path').length === 2")
        labels = [lines.nth(i).get_attribute("aria-label") for i in range(2)]
        assert labels[0].endswith("mode: none") and labels[1].endswith("mode: MA-GC")
        assert all(lines.nth(i).get_attribute("stroke") for i in range(2))  # both drawn, in colour
    assert "the same training step, up to float32 rounding" in page.locator("#lab-status").inner_text()
    summary = page.locator("#lab-summary").inner_text()
    assert "MA-GC" in summary and "l=6 (all)" in summary  # "none" runs the whole model as one cell

    page.locator("#lab-sweep").click()
    page.wait_for_selector("#lab-status :text('Sweep done')")
    page.wait_for_function("document.querySelectorAll('#lab-sweep-plot g.mark-line path').length === 4")
    series = page.locator("#lab-sweep-plot g.mark-line path")
    labels = {series.nth(i).get_attribute("aria-label").split("series: ")[1] for i in range(4)}
    assert labels == {"none · measured", "none · predicted", "MA-GC · measured", "MA-GC · predicted"}

    page.locator("#lab-reach-button").click()  # 16 GiB for Mamba2-2.7B at 145 tokens per frame
    page.wait_for_selector("#lab-reach :text('MA-GC')")
    save_screenshot(page, SCREENSHOTS["lab"])

    # At the limit that once took the app down: a 1,000,000 GiB budget is answered, and the app stays up.
    page.locator("#lab-budget input").fill("1000000")
    page.locator("#lab-reach-button").click()
    page.wait_for_function("document.querySelector('#lab-reach').innerText.includes('≥ 1,073,741,824')")
    page.locator("#lab-budget input").fill("16")
    page.locator("#lab-reach-button").click()
    page.wait_for_function("!document.querySelector('#lab-reach').innerText.includes('≥')")


def test_a_long_upload_rewinds_a_refused_question_stays_in_the_chat_and_photos_are_flagged(page, tmp_path):
    """A 10-minute upload is asked about as of 0:20 (rewound from its snapshots, without the file); a question
    past the limit is answered in the chat with the reason, the conversation still there; and a video of
    photographs gets the novelty warning."""
    from test_app_guards import write_video

    from ma2mba.data import world
    from ma2mba.data.render import write_mp4

    first_page, page = page, fresh_page(page)
    page.get_by_label("fastest").check()
    long = write_mp4(world.generate(4242, 600), tmp_path / "ten-minutes.mp4", fps=1, width=320, height=180)
    page.locator("input[type=file]").first.set_input_files(str(long))
    page.wait_for_selector("#watch-progress[data-state^='Done']")
    assert frames_shown(page) == 600 and not page.locator("#unfamiliar").count()
    page.locator("#as-of input[type=number]").fill("20")
    page.locator("#as-of input[type=number]").press("Enter")
    page.locator("#question textarea").fill("What shape appeared first?")
    page.locator("#ask").click()
    page.wait_for_selector("#chat :text('as of 0:20')")
    page.locator("#question textarea").fill("x" * 600)
    page.locator("#ask").click()
    page.wait_for_selector("#chat :text('600 characters long; the limit is 500')")
    chat = page.locator("#chat").inner_text()
    assert "What shape appeared first?" in chat  # the conversation is still there

    import skimage.data
    from test_novelty import load_benchmark

    bench = load_benchmark()
    photos = write_video(tmp_path / "photos.mp4", bench.photo_video(skimage.data.coffee(), 0))
    page.close()
    page = fresh_page(first_page)
    page.locator("input[type=file]").first.set_input_files(str(photos))
    page.wait_for_selector("#watch-progress[data-state^='Done']")
    assert "looks unlike ShapeWorld" in page.locator("#unfamiliar").inner_text()
    page.close()
