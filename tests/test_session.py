"""Streaming sessions: exact state semantics, rewind, asking never disturbs the video state."""

import time

import numpy as np
import pytest
import torch
from tiny import random_frames, tiny_video_model

from ma2mba.serving.session import RewindError
from ma2mba.video.tokenizer import QuestionTooLongError
from ma2mba.video.vision import letterbox


def states_equal(a, b):
    return all(torch.equal(x, y) for la, lb in zip(a, b) for x, y in zip(la, lb))


def watch(model, frames, **kwargs):
    session = model.start_session(**kwargs)
    for t, f in enumerate(frames):
        session.ingest(f, float(t))
    return session


def test_streaming_equals_one_forward_over_all_frame_tokens():
    model = tiny_video_model(dtype=torch.float64)
    frames = random_frames(23)
    session = watch(model, frames)
    with torch.no_grad():
        prompt = torch.tensor([model.prompt_ids()])
        pixels = torch.from_numpy(np.stack([letterbox(f, model.vision.cfg.image_size) for f in frames]))
        visual = model.projector(model.vision((pixels.permute(0, 3, 1, 2).float() / 255).double()))
        tokens = model.frame_embeds(visual, list(range(23))).flatten(0, 1)  # (23·(1+k), d)
        embeds = torch.cat([model.lm.embed(prompt)[0], tokens])[None]
        full = model.lm(inputs_embeds=embeds).state
    for (c1, s1), (c2, s2) in zip(session.state, full):
        torch.testing.assert_close(c1, c2, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(s1, s2, rtol=1e-10, atol=1e-12)
    assert session.tokens == embeds.shape[1]


def test_asking_never_disturbs_the_video_state():
    model = tiny_video_model()
    frames = random_frames(12)
    session = watch(model, frames)
    before = session.state.clone()
    questions = ["How many times did a red star appear?", "Did a blue circle appear?", "What shape appeared first?"] * 3
    answers = [session.answer(q, max_new_tokens=6) for q in questions]
    assert states_equal(session.state, before)
    fresh = [watch(model, frames).answer(q, max_new_tokens=6) for q in questions[:3]]
    assert answers == fresh * 3


def states_close(a, b, **tolerance):
    tolerance = tolerance or dict(rtol=1e-10, atol=1e-12)  # float64 models: equal but for rounding
    for (c1, s1), (c2, s2) in zip(a, b):
        torch.testing.assert_close(c1, c2, **tolerance)
        torch.testing.assert_close(s1, s2, **tolerance)


@pytest.mark.parametrize("kept", [True, False])  # from the kept frame tokens, or by re-decoding the file
def test_rewind_equals_a_session_that_stopped_there(kept):
    model = tiny_video_model(dtype=torch.float64)
    frames = random_frames(30)
    source = lambda after, until: ((float(t), frames[t]) for t in range(len(frames)) if after < t <= until)
    state_bytes = model.start_session().state.nbytes()
    cap = 64 * 2**20 if kept else 8 * state_bytes  # room for the fewest snapshots only: every frame's tokens go
    session = watch(model, frames, snapshot_every=4, max_rewind_bytes=cap, frame_source=source)
    assert session.first_kept == (0 if kept else 30)
    for at in (-1.0, 0.0, 7.0, 13.0, 28.0):
        stopped = watch(model, frames[: int(at) + 1])
        states_close(session.state_at(at), stopped.state)
        q = "How many times did a red star appear?"
        assert session.answer(q, at=at, max_new_tokens=5) == stopped.answer(q, max_new_tokens=5)


def test_rewind_without_the_file_says_it_is_needed():
    model = tiny_video_model()
    state_bytes = model.start_session().state.nbytes()
    session = watch(model, random_frames(20), snapshot_every=8, max_rewind_bytes=3 * state_bytes)
    with pytest.raises(RewindError, match="without the video.*Open the video again"):
        session.state_at(5.0)


def test_past_the_cap_snapshots_are_thinned_evenly_before_any_frame_goes():
    model = tiny_video_model()
    session = watch(model, random_frames(4), snapshot_every=1)
    state_bytes, frame_bytes = session.state.nbytes(), session.kept[0][1].numel() * 4
    cap = 12 * state_bytes + 120 * frame_bytes  # 12 snapshots and the tokens of 120 frames
    session = watch(model, random_frames(120), snapshot_every=1, max_rewind_bytes=cap)
    times = [s.t for s in session.snapshots]
    assert len(times) == 12 and times[-1] == 119.0 and session.first_kept == 0
    assert session.rewind_bytes() <= cap == session.stats()["max_rewind_bytes"]
    gaps = [b - a for a, b in zip(times[1:], times[2:])]
    assert max(gaps) <= 2 * 119 / len(gaps)  # coverage stays spread over the whole video: no gap twice the mean


def test_rewind_anywhere_in_a_two_hour_video_without_the_file():
    """7,200 frames: rewinds need no file, replay the LM only, and the session stays under its cap."""
    torch.set_num_threads(1)
    model = tiny_video_model()
    frames = random_frames(16, h=16, w=16)
    session = model.start_session(max_rewind_bytes=4 * 2**20)
    for t in range(7200):
        session.ingest(frames[t % 16], float(t))
    assert session.rewind_bytes() <= 4 * 2**20 and session.first_kept == 0  # every frame's tokens are kept
    for at in (20.0, 3599.0, 7100.0):
        started = time.perf_counter()
        state = session.state_at(at)
        assert time.perf_counter() - started < 1.0
        if at == 20.0:
            states_close(state, watch(model, [frames[t % 16] for t in range(21)]).state, rtol=1e-5, atol=1e-6)


def test_follow_up_continues_the_conversation():
    model = tiny_video_model(dtype=torch.float64)
    session = watch(model, random_frames(5))
    session.answer("Did a blue circle appear?", max_new_tokens=4)
    with torch.no_grad():  # the paper's multi-turn template, built by hand
        ids = model.question_ids("Did a blue circle appear?") + session.last_answer_ids
        ids += [model.tokenizer.eos_id, *model.next_turn_ids()]
        expected = model.lm(input_ids=torch.tensor([ids]), state=session.state).state
    for (_c1, s1), (_c2, s2) in zip(session.conversation, expected):
        torch.testing.assert_close(s1, s2, rtol=1e-10, atol=1e-12)
    assert isinstance(session.answer("What shape appeared first?", follow_up=True, max_new_tokens=4), str)


def test_questions_are_validated_before_streaming():
    session = tiny_video_model().start_session()
    with pytest.raises(QuestionTooLongError, match="limit is"):
        session.ask("star " * 500)
    with pytest.raises(QuestionTooLongError, match="empty"):
        session.ask("   ")


def test_frames_must_come_in_time_order():
    session = tiny_video_model().start_session()
    session.ingest(random_frames(1)[0], 3.0)
    with pytest.raises(ValueError, match="not after"):
        session.ingest(random_frames(1)[0], 2.0)


def test_stats_report_the_stream():
    session = watch(tiny_video_model(), random_frames(6))
    s = session.stats()
    assert s["frames"] == 6 and s["tokens"] == len(session.model.prompt_ids()) + 6 * session.model.tokens_per_frame
    assert s["state_bytes"] == session.state.nbytes() > 0
    assert s["ms_per_frame"] > 0 and s["rss_bytes"] > 0


def test_as_of_outside_the_video_is_moved_with_a_note():
    session = watch(tiny_video_model(), random_frames(30))
    assert session.as_of(None) == (None, "") and session.as_of(12) == (12.0, "")
    assert session.as_of(29) == (None, "")  # the last frame: no rewind
    at, note = session.as_of(500)
    assert at is None and note == "As of 8:20 is past what was watched: asked as of the end (0:29)."
    at, note = session.as_of(-5)
    assert at == 0.0 and "before the video starts" in note
