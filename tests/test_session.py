"""Streaming sessions: exact state semantics, rewind, asking never disturbs the video state."""

import pytest
import torch
from tiny import random_frames, tiny_video_model

from ma2mba.serving.session import RewindError
from ma2mba.video.tokenizer import QuestionTooLongError


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
        tokens = model.frame_embeds(model.encode_frames(frames), list(range(23))).flatten(0, 1)  # (23·(1+k), d)
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


@pytest.mark.parametrize("cached_frames", [64, 2])  # from cached embeddings, or by re-decoding
def test_rewind_equals_a_session_that_stopped_there(cached_frames):
    model = tiny_video_model()
    frames = random_frames(30)
    source = lambda after, until: ((float(t), frames[t]) for t in range(len(frames)) if after < t <= until)
    session = watch(model, frames, snapshot_every=4, cached_frames=cached_frames, frame_source=source)
    for at in (0.0, 7.0, 13.0, 28.0):
        stopped = watch(model, frames[: int(at) + 1])
        assert states_equal(session.state_at(at), stopped.state)
        q = "How many times did a red star appear?"
        assert session.answer(q, at=at, max_new_tokens=5) == stopped.answer(q, max_new_tokens=5)


def test_rewind_without_frames_says_why():
    model = tiny_video_model()
    session = watch(model, random_frames(20), snapshot_every=8, cached_frames=2)
    with pytest.raises(RewindError, match="Cannot rewind"):
        session.state_at(5.0)


def test_snapshots_are_thinned_under_the_cap():
    model = tiny_video_model()
    state_bytes = model.start_session().state.nbytes()
    session = watch(model, random_frames(60), snapshot_every=1, max_snapshot_bytes=10 * state_bytes)
    times = [s.t for s in session.snapshots]
    assert len(times) == 10 and times[-1] == 59.0
    gaps = [b - a for a, b in zip(times[1:], times[2:])]
    assert max(gaps) <= 3 * min(gaps)  # coverage stays spread over the whole video


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
