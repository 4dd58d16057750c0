"""The Space through gradio_client, against `python app.py` running in a subprocess.

Answers are compared with a StreamingSession run here on the same frames: with the random
packaged model that checks the wiring (each user's video, rewind, no cross-talk) exactly. Whether
the answers are *right* needs the trained model; those tests skip until it is in assets/.
"""

import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from appserver import running_app
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from ma2mba.data import world
from ma2mba.data.render import write_mp4
from ma2mba.packaged.examples import load_examples

EXAMPLES = {e["file"]: e for e in load_examples()}
MAX_NEW_TOKENS = 8


@pytest.fixture(scope="module")
def url():
    with running_app(
        MA2MBA_MAX_UPLOAD_MB=3, MA2MBA_MAX_VIDEO_SECONDS=150, MA2MBA_LAB_MAX_SECONDS=64, MA2MBA_ALLOW_LOCAL_MODELS=1
    ) as url:
        yield url


@pytest.fixture(scope="module")
def reference():
    """Answers of a session run here, on the frames the app decodes, with the app's model."""
    import app  # the app's model and decoding settings (importing it starts no server)
    from ma2mba.video import sample_frames

    torch.set_num_threads(app.SETTINGS["torch_threads"])  # the same kernels, bit for bit
    sessions = {}

    def answer(example_file, question, at=None, frames=None, model=None):
        key = (example_file, frames, id(model))
        if key not in sessions:
            session = (model or app.MODELS.packaged).start_session()
            decoded = sample_frames(EXAMPLES[example_file]["path"], fps=1.0, max_side=app.DECODE_MAX_SIDE)
            for i, (t, frame) in enumerate(decoded):
                if frames is not None and i >= frames:
                    break
                session.ingest(frame, t)
            sessions[key] = session
        return sessions[key].answer(question, at=at, max_new_tokens=MAX_NEW_TOKENS)

    return answer


def is_update(value) -> bool:
    return isinstance(value, dict) and value.get("__type__") == "update"


def frames_in(progress_html: str) -> int:
    return int(re.search(r"data-frames='(\d+)'", progress_html).group(1))


def watch(client, example_file, pace="fastest"):
    """Upload an example; return the list of streamed outputs."""
    job = client.submit(handle_file(EXAMPLES[example_file]["path"]), pace, api_name="/watch")
    job.result()
    return job.outputs()


def ask(client, question, as_of, follow_up=False):
    """-> (answer, the chat's last messages as texts) once the answer has streamed."""
    job = client.submit(question, as_of, follow_up, 0.0, MAX_NEW_TOKENS, api_name="/ask")
    chat = job.result()[0]
    texts = [" ".join(part["text"] for part in m["content"]) for m in chat]
    roles = [m["role"] for m in chat]
    last_user = len(roles) - 1 - roles[::-1].index("user")
    return texts[last_user + 1], texts[last_user:]


def test_upload_streams_ingestion_and_answers_like_a_direct_session(url, reference):
    client = Client(url, verbose=False)
    name = "shapes-30s.mp4"
    outputs = watch(client, name)
    progress = [o[1] for o in outputs if not is_update(o[1])]
    counts = [frames_in(p) for p in progress]
    assert counts == sorted(counts) and counts[-1] == 30 and len(set(counts)) >= 3  # live, not all at once
    assert "Done" in progress[-1]
    memory = [o[2] for o in outputs if not is_update(o[2])]
    states = {int(re.search(r"data-state-bytes='(\d+)'", m).group(1)) for m in memory}
    kv = [int(re.search(r"data-kv-bytes='(\d+)'", m).group(1)) for m in memory]
    assert len(states) == 1 and kv == sorted(kv) and kv[-1] > kv[0]  # the state is constant, the KV cache grows
    thumbnails = [o[0] for o in outputs if isinstance(o[0], str)]
    assert thumbnails, "no frame thumbnail was streamed"
    slider = [o[3] for o in outputs if isinstance(o[3], dict) and "maximum" in o[3]][-1]
    assert slider["maximum"] == slider["value"] == 29  # the last frame is shown at 29 s

    suggested = EXAMPLES[name]["questions"][0]
    answer, messages = ask(client, suggested["question"], as_of=29)
    assert answer == reference(name, suggested["question"])
    verdict = "✓" if answer == suggested["answer"] else "✗"
    assert messages[-1] == f"{verdict} ShapeWorld's answer: **{suggested['answer']}**"


@pytest.mark.parametrize("name", ["shapes-30s.mp4", "shapes-2min.mp4"])  # frames cached / re-decoded
def test_asking_as_of_an_earlier_time_rewinds(url, reference, name):
    client = Client(url, verbose=False)
    watch(client, name)
    rewind = EXAMPLES[name]["rewind"]
    answer, messages = ask(client, rewind["question"], as_of=rewind["as_of"])
    assert messages[0] == f"{rewind['question']}  \n*(as of {world.format_time(rewind['as_of'])})*"  # m:ss
    # the answer of a session that saw only the frames up to then (0 … as_of, one per second)
    assert answer == reference(name, rewind["question"], frames=rewind["as_of"] + 1)
    assert messages[-1].endswith(f"ShapeWorld's answer: **{rewind['answer']}**")  # the truth then, not at the end
    assert rewind["answer"] != rewind["answer_at_end"]


def test_the_trained_model_answers_the_suggested_questions(url):
    client = Client(url, verbose=False)
    name = "shapes-30s.mp4"
    watch(client, name)
    suggested = EXAMPLES[name]["questions"][0]
    assert ask(client, suggested["question"], as_of=29)[0] == suggested["answer"]
    rewind = EXAMPLES[name]["rewind"]
    assert ask(client, rewind["question"], as_of=rewind["as_of"])[0] == rewind["answer"]


def test_two_users_at_once_each_get_answers_about_their_own_video(url, reference):
    question = "What shape appeared first?"
    names = ["shapes-30s.mp4", "shapes-portrait-45s.mp4"]
    expected = [reference(name, question) for name in names]
    assert expected[0] != expected[1]  # otherwise this test could not see a mix-up

    def user(name):
        client = Client(url, verbose=False)
        last_t = frames_in(watch(client, name)[-1][1]) - 1
        return [ask(client, question, as_of=last_t)[0] for _ in range(2)]

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(user, names))
    assert answers == [[e, e] for e in expected]


def test_stop_cancels_ingestion_and_keeps_what_was_seen(url, reference):
    client = Client(url, verbose=False)
    name = "shapes-60s.mp4"
    job = client.submit(handle_file(EXAMPLES[name]["path"]), "real time", api_name="/watch")
    deadline = time.monotonic() + 60
    while not any(not is_update(o[1]) and frames_in(o[1]) >= 3 for o in job.outputs()):
        assert time.monotonic() < deadline, "ingestion did not start"
        time.sleep(0.2)
    job.cancel()  # what the page's Stop button does (the browser test clicks it), then its handler
    status = client.predict(api_name="/stop")[0]
    assert "Stopped at" in status
    time.sleep(1.5)  # the frame being ingested when Stop came in finishes
    seen = frames_in(client.predict(api_name="/stop")[0])
    assert 3 <= seen < 20
    time.sleep(1.5)
    assert frames_in(client.predict(api_name="/stop")[0]) == seen  # nothing more was ingested
    question = "What shape appeared first?"
    assert ask(client, question, as_of=seen - 1)[0] == reference(name, question, frames=seen)


def test_bad_uploads_get_readable_errors_and_the_app_keeps_working(url, tmp_path):
    client = Client(url, verbose=False)
    text = tmp_path / "notes.mp4"
    text.write_text("These are my notes, not a video.\n")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    source = EXAMPLES["shapes-60s.mp4"]["path"]
    truncated = tmp_path / "truncated.mp4"
    data = open(source, "rb").read()
    truncated.write_bytes(data[: len(data) // 2])  # the index (moov) is at the end: cut off
    big = tmp_path / "big.mp4"
    big.write_bytes(data * (4 * 2**20 // len(data) + 1))  # above the 3 MB upload limit of this server
    too_long = tmp_path / "long.mp4"  # 160 s, above this server's 150 s limit; tiny, so quick to write
    write_mp4(world.generate(7, 160), too_long, fps=1, width=64, height=64)
    cases = [
        (text, "is not a video file"),
        (empty, "is empty (0 bytes)"),
        (truncated, "truncated or corrupt"),
        (too_long, "is 0:02:40 long, above the 0:02:30 limit"),
    ]
    for path, message in cases:
        with pytest.raises(AppError) as error:
            client.predict(handle_file(str(path)), "fastest", api_name="/watch")
        assert message in str(error.value) and "Traceback" not in str(error.value)
    with pytest.raises(ValueError, match="exceeds the maximum file size of 3145728 bytes"):  # the client checks
        client.predict(handle_file(str(big)), "fastest", api_name="/watch")
    with open(big, "rb") as f:  # and the server refuses it too, whatever client sends it
        refused = httpx.post(f"{url}/gradio_api/upload", files={"files": ("big.mp4", f)})
    assert refused.status_code == 413 and "maximum allowed size" in refused.text
    # the same user, and the server, carry on
    watch(client, "shapes-30s.mp4")
    # Questions too long, in tokens or in characters, are refused in the chat, which keeps the conversation
    answer, texts = ask(client, "what " * 100, as_of=29)
    assert answer == "⚠ The question is 100 tokens long; the limit is 64. Ask a shorter question."
    answer, texts = ask(client, "x" * 10_000, as_of=29)
    assert answer.startswith("⚠ The question is 10,000 characters long; the limit is 500.")
    assert len(texts[0]) < 400  # the pasted text is not echoed in full
    with pytest.raises(AppError, match="Type a question"):
        ask(client, "   ", as_of=29)
    # "As of" outside the video is refused by the slider, with its bounds (the library moves it, with a note)
    with pytest.raises(AppError, match="greater than maximum value 29"):
        ask(client, "What shape appeared first?", as_of=500)
    with pytest.raises(AppError, match="less than minimum value 0"):
        ask(client, "What shape appeared first?", as_of=-5)


def test_model_tab_loads_a_local_folder_and_explains_what_it_cannot_load(url, tmp_path, reference):
    from tiny import tiny_video_model

    client = Client(url, verbose=False)
    status = client.predict("someone/no-such-model", api_name="/load_model")[0]
    assert status.startswith("⚠ Cannot reach the Hugging Face Hub")  # this server runs with HF_HUB_OFFLINE=1
    assert "is a folder but has no config.json" in client.predict(str(tmp_path), api_name="/load_model")[0]
    assert "No model folder at" in client.predict(str(tmp_path / "missing"), api_name="/load_model")[0]

    model = tiny_video_model()
    model.save_pretrained(tmp_path / "tiny", model_card="# tiny\nA test model.\n")
    status, card = client.predict(str(tmp_path / "tiny"), api_name="/load_model")
    assert status.startswith("Loaded") and "A test model." in card
    watch(client, "shapes-30s.mp4")  # now with the tiny model, for this user only
    question = "What shape appeared first?"
    assert ask(client, question, as_of=29)[0] == reference("shapes-30s.mp4", question, model=model)


def test_memory_lab_yields_a_curve_per_mode_with_equal_losses(url):
    client = Client(url, verbose=False)
    modes = ["none", "sqrt", "multi_axis"]
    job = client.submit(modes, 16, "packaged", 2, api_name="/lab_train")
    job.result()
    outputs = job.outputs()
    timeline, losses, summary = (next(o[i] for o in reversed(outputs) if not is_update(o[i])) for i in range(3))
    assert "Losses agree" in outputs[-1][3]
    labels = ["none", "√L", "MA-GC"]
    curves = {label: [row for row in timeline["data"] if row[0] == label] for label in labels}
    assert all(len(rows) > 10 for rows in curves.values())
    peaks = {label: max(row[2] for row in rows) for label, rows in curves.items()}
    assert peaks["MA-GC"] < peaks["√L"] < peaks["none"]
    by_step = {}
    for mode, step, loss in losses["data"]:
        by_step.setdefault(step, {})[mode] = loss
    assert sorted(by_step) == [1, 2]
    for per_mode in by_step.values():
        assert set(per_mode) == set(labels)
        assert max(per_mode.values()) - min(per_mode.values()) <= 1e-5 * per_mode["none"]
    assert [row[0] for row in summary["data"]] == labels

    job = client.submit(["none", "multi_axis"], "packaged", api_name="/lab_sweep")
    job.result()
    sweep = next(o[0] for o in reversed(job.outputs()) if not is_update(o[0]))
    series = {row[2] for row in sweep["data"]}
    assert series == {"none · measured", "none · predicted", "MA-GC · measured", "MA-GC · predicted"}
    reach = client.predict(16, "paper 2.7B", api_name="/lab_budget")
    assert [row[0] for row in reach["data"]] == ["none", "per-layer", "√L", "MA-GC"]


def test_the_memory_lab_at_its_limits_answers_and_stays_up(url):
    """A 1,000,000 GiB budget for the 2.7B model once grew the app past the machine's memory."""
    client = Client(url, verbose=False)
    client.predict(16, "paper 2.7B", api_name="/lab_budget")  # the first query of a size traces its layer once
    started = time.monotonic()
    reach = client.predict(1_000_000, "paper 2.7B", api_name="/lab_budget")
    assert time.monotonic() - started < 30
    by_mode = {row[0]: row[1] for row in reach["data"]}
    assert by_mode["MA-GC"] == "≥ 1,073,741,824" and not by_mode["none"].startswith("≥")
    for budget in (2_000_000, 0, -1):  # past the planner's largest budget, and nonsense
        with pytest.raises(AppError, match="(greater than maximum value 1048576|less than minimum value|positive)"):
            client.predict(budget, "paper 2.7B", api_name="/lab_budget")
    assert client.predict(16, "packaged", api_name="/lab_budget")["data"]  # and it goes on serving


def test_old_uploads_are_deleted(tmp_path):
    uploads = tmp_path / "gradio"
    upload = tmp_path / "my-notes.mp4"
    upload.write_text("not a video\n")
    names = lambda: {p.name for p in uploads.rglob("*") if p.is_file()}
    with running_app(GRADIO_TEMP_DIR=uploads, MA2MBA_UPLOAD_MAX_AGE_S=2, MA2MBA_UPLOAD_CLEAN_EVERY_S=1) as url:
        client = Client(url, verbose=False)
        with pytest.raises(AppError, match="is not a video file"):
            client.predict(handle_file(str(upload)), "fastest", api_name="/watch")
        assert "my-notes.mp4" in names()
        deadline = time.monotonic() + 30
        while "my-notes.mp4" in names():
            assert time.monotonic() < deadline, "the upload was not deleted"
            time.sleep(0.5)
        assert {e["file"] for e in EXAMPLES.values()} <= names()  # the examples' copies stay
