"""ShapeWorld: determinism, the scheduling rules, answers against a brute-force replay, rendering, mp4."""

import itertools
import math
from collections import Counter

import av
import numpy as np
import pytest

from ma2mba.data import questions, render
from ma2mba.data import world as sw
from ma2mba.data.questions import QUESTION_KINDS
from ma2mba.data.render import write_mp4
from ma2mba.data.world import COLOR_RGB, KINDS, ShapeWorldError, format_time, generate

# -- a reference replay, written independently of the module ----------------------------------


def visible_kinds(video, t):
    """Kinds on screen at whole second t, straight from the appearance intervals."""
    return [a.kind for a in video.appearances if a.start <= t < a.end]


def replay_events(video, horizon):
    """(second, kind) for every kind that becomes visible in seconds 0..horizon, sampled at 1 FPS."""
    events, before = [], set()
    for t in range(horizon + 1):
        now = set(visible_kinds(video, t))
        events += [(t, k) for k in sorted(now - before)]
        before = now
    return events


def name(kind):
    return f"{kind[0]} {kind[1]}"


def an(kind):
    return ("an " if kind[0] == "orange" else "a ") + name(kind)


def reference_answers(video, horizon):
    """{question kind: {question: answer}} recomputed from the 1 FPS replay up to `horizon`."""
    events = replay_events(video, horizon)
    assert len({t for t, _ in events}) == len(events), "two appearances started in one second"
    count = Counter(k for _, k in events)
    ref = {q: {} for q in QUESTION_KINDS}
    if events:
        ref["first_shape"]["What shape appeared first?"] = events[0][1][1]
        ref["first_color"]["What color was the first shape?"] = events[0][1][0]
        ref["last"]["What was the last shape to appear?"] = name(events[-1][1])
    for kind in KINDS:
        ref["count"][f"How many times did {an(kind)} appear?"] = str(count[kind])
        ref["exists"][f"Did {an(kind)} appear?"] = "yes" if count[kind] else "no"
        if count[kind] == 1:
            i = next(i for i, (_, k) in enumerate(events) if k == kind)
            t = events[i][0]
            ref["when"][f"When did the {name(kind)} appear?"] = f"at {t // 60}:{t % 60:02d}"
            if i + 1 < len(events):
                ref["after"][f"What appeared right after the {name(kind)}?"] = name(events[i + 1][1])
    return ref


def as_dict(all_questions):
    return {q: {qa.question: qa.answer for qa in qas} for q, qas in all_questions.items()}


# -- determinism -------------------------------------------------------------------------------


def test_same_seed_same_video_frames_and_questions():
    a, b = generate(11, 90), generate(11, 90)
    assert a.appearances == b.appearances and a.scenes == b.scenes
    times = np.arange(0, 90, 0.5)
    for w, h in [(64, 64), (160, 90)]:
        assert render.render_many(a, times, w, h).tobytes() == render.render_many(b, times, w, h).tobytes()
    assert questions.sample_questions(a, 5, n=30, as_of=40) == questions.sample_questions(b, 5, n=30, as_of=40)
    assert questions.all_questions(a) == questions.all_questions(b)
    c = generate(12, 90)
    assert c.appearances != a.appearances
    assert render.render_many(c, times, 64, 64).tobytes() != render.render_many(a, times, 64, 64).tobytes()
    assert questions.sample_questions(a, 5, n=30) != questions.sample_questions(a, 6, n=30)


# -- the scheduling rules ----------------------------------------------------------------------


@pytest.mark.parametrize("duration", [4, 16, 45, 120, 600, 3600])
def test_schedule_rules(duration):
    for seed in range(40 if duration <= 600 else 6):
        v = generate(seed, duration)
        apps = v.appearances
        assert [a.start for a in apps] == sorted({a.start for a in apps}), "starts must be unique and sorted"
        for a in apps:
            assert isinstance(a.start, int) and isinstance(a.end, int)
            assert a.start >= 0 and a.end <= duration and a.end - a.start >= 2
            assert 0.10 <= a.size <= 0.35
            for x, y in (a.path[:2], a.path[2:]):  # the whole box stays inside the frame
                assert a.size / 2 <= x <= 1 - a.size / 2 and a.size / 2 <= y <= 1 - a.size / 2
        for t in range(duration):
            kinds = visible_kinds(v, t)
            assert len(kinds) <= 3 and len(set(kinds)) == len(kinds)
        by_kind = {}
        for a in apps:
            by_kind.setdefault(a.kind, []).append(a)
        for runs in by_kind.values():
            assert len(runs) <= 20
            assert all(nxt.start >= prev.end + 2 for prev, nxt in zip(runs, runs[1:]))
        assert all(len(by_kind[k]) == 1 for k in v.rare_kinds)
        assert set(v.rare_kinds).isdisjoint(v.frequent_kinds)
        assert set(by_kind) == set(v.rare_kinds) | set(v.frequent_kinds)
        # Objects on screen together never overlap: check their centres every 1/8 s.
        for a, b in itertools.combinations(apps, 2):
            for t in np.arange(max(a.start, b.start), min(a.end, b.end), 0.125):
                (ax, ay), (bx, by) = a.position(t), b.position(t)
                assert math.hypot(ax - bx, ay - by) >= sw.EXTENT[a.shape] * a.size + sw.EXTENT[b.shape] * b.size
        # Scenes tile the video and the background changes at every cut.
        assert v.scenes[0].start == 0 and v.scenes[-1].end == duration
        assert all(p.end == n.start and p.color != n.color for p, n in zip(v.scenes, v.scenes[1:]))


def test_backgrounds_contrast_with_every_object_colour():
    for bg, obj in itertools.product(sw.BACKGROUND_RGB, COLOR_RGB.values()):
        worst = [max(0, c - sw.NOISE_AMPLITUDE) if o > c else c + sw.NOISE_AMPLITUDE for c, o in zip(bg, obj)]
        assert math.dist(worst, obj) > 130


def test_two_minute_videos_cover_every_count_and_needles():
    counts, needles = Counter(), 0
    for seed in range(150):
        v = generate(seed, 120)
        counts.update(qa.answer for qa in questions.all_questions(v)["count"])
        needles += len(v.rare_kinds)
    assert set(counts) == {str(n) for n in range(21)}
    assert counts["15"] + counts["16"] + counts["17"] + counts["18"] + counts["19"] + counts["20"] >= 50
    assert needles >= 150


# -- questions and captions --------------------------------------------------------------------


@pytest.mark.parametrize("duration", [16, 120, 900])
def test_answers_match_brute_force_replay(duration):
    rng = np.random.default_rng(duration)
    for seed in range(12):
        v = generate(seed + 100, duration)
        assert as_dict(questions.all_questions(v)) == reference_answers(v, duration - 1)
        for as_of in rng.integers(0, duration, 3):  # answers as if the video ended at second as_of
            assert as_dict(questions.all_questions(v, as_of=int(as_of))) == reference_answers(v, int(as_of))


def test_sampler_draws_valid_distinct_balanced_questions():
    answers, first_counts = {q: Counter() for q in QUESTION_KINDS}, Counter()
    for seed in range(60):
        v = generate(seed, 120)
        valid = {
            (qa.question, qa.answer, qa.kind_of_question) for qas in questions.all_questions(v).values() for qa in qas
        }
        drawn = questions.sample_questions(v, seed, n=21)
        assert len(drawn) == 21 and len(set(drawn)) == 21
        assert all((qa.question, qa.answer, qa.kind_of_question) in valid for qa in drawn)
        per_kind = Counter(qa.kind_of_question for qa in drawn)
        available = [q for q in QUESTION_KINDS if questions.all_questions(v)[q]]
        assert set(per_kind) == set(available)  # every kind with a valid question gets its turn
        for qa in drawn:
            answers[qa.kind_of_question][qa.answer] += 1
        first_counts.update(qa.answer for qa in questions.sample_questions(v, seed, n=2, kinds=["count"]))
        only = questions.sample_questions(v, seed, n=5, kinds=["when", "after"], as_of=60)
        assert {qa.kind_of_question for qa in only} <= {"when", "after"}
    assert 0.4 < answers["exists"]["yes"] / sum(answers["exists"].values()) < 0.6
    # Each distinct answer is equally likely, so the 20-odd absent kinds do not make "0" dominate.
    assert first_counts["0"] / sum(first_counts.values()) < 0.35
    with pytest.raises(ShapeWorldError):
        questions.sample_questions(generate(0, 30), 0, kinds=["colour"])


def test_captions():
    v = generate(3, 120)
    for t in range(120):
        kinds = sorted(visible_kinds(v, t), key=KINDS.index)
        words = [an(k) for k in kinds]
        if len(words) > 1:
            words = [", ".join(words[:-1]) + " and " + words[-1]]
        assert questions.frame_caption(v, t) == (words[0] if words else "nothing")
    events = replay_events(v, 119)
    assert questions.timed_captions(v) == [(t, f"at {t // 60}:{t % 60:02d} {an(k)} appears") for t, k in events]
    assert questions.timed_captions(v, as_of=50) == [(t, text) for t, text in questions.timed_captions(v) if t <= 50]


def test_format_time():
    assert [format_time(s) for s in (0, 9, 83, 600, 4504)] == ["0:00", "0:09", "1:23", "10:00", "75:04"]
    with pytest.raises(ShapeWorldError):
        format_time(-1)


# -- rendering ---------------------------------------------------------------------------------


def object_colours_in(frame):
    return {c for c, rgb in COLOR_RGB.items() if (frame == rgb).all(-1).any()}


def test_frames_show_exactly_the_visible_objects():
    v = next(v for v in map(generate, range(50), [120] * 50) if {s.noise > 0 for s in v.scenes} == {True, False})
    frames = render.render_many(v, range(120), 64, 64)
    for t, frame in enumerate(frames):
        assert object_colours_in(frame) == {k[0] for k in visible_kinds(v, t)}
        assert (frame[0, 0] == v.scene_at(t).color).all() or v.scene_at(t).noise


@pytest.mark.parametrize("seed", [1, 2])
def test_positions_and_sizes_agree_across_aspect_ratios(seed):
    v = generate(seed, 120)
    busy = [t for t in range(120) if len(v.visible(t + 0.5)) >= 2][:4]
    assert busy
    for t in busy:
        t = t + 0.5
        for w, h in [(640, 360), (360, 640), (480, 480), (96, 64)]:
            frame, short = render.render(v, t, w, h), min(w, h)
            assert (frame == render.render_many(v, [t], w, h)[0]).all()
            for a in v.visible(t):
                x, y = a.position(t)
                assert tuple(frame[int(y * h), int(x * w)]) == COLOR_RGB[a.color]  # the centre is inside
                if w < 200 or sum(b.color == a.color for b in v.visible(t)) > 1:
                    continue
                ys, xs = np.nonzero((frame == COLOR_RGB[a.color]).all(-1))
                # Same normalised centre and same size relative to the shorter side at every shape.
                box = (xs.max() - xs.min() + 1) / short, (ys.max() - ys.min() + 1) / short
                assert abs((xs.min() + xs.max() + 1) / 2 / w - x) < 0.5 * a.size
                assert abs((ys.min() + ys.max() + 1) / 2 / h - y) < 0.5 * a.size
                assert a.size * 0.8 < max(box) < a.size * 1.05


def test_bad_arguments_raise():
    for args in [(-1, 60), (0, 3), (0, 60.5), ("7", 60), (0, "60")]:
        with pytest.raises(ShapeWorldError):
            generate(*args)
    v = generate(0, 20)
    with pytest.raises(ShapeWorldError):
        render.render(v, 20)
    with pytest.raises(ShapeWorldError):
        render.render(v, 1, 0, 64)
    with pytest.raises(ShapeWorldError):
        write_mp4(v, "x.mp4", width=65, height=64)


# -- files -------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec, suffix", [("h264", ".mp4"), ("vp9", ".webm")])
def test_write_mp4_round_trips_through_a_decoder(tmp_path, codec, suffix):
    v = generate(4, 10)
    path = write_mp4(v, tmp_path / f"v{suffix}", fps=4, width=160, height=96, codec=codec)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if codec == "h264":
            assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        decoded = [(f.time, f.to_ndarray(format="rgb24")) for f in container.decode(stream)]
    assert len(decoded) == 40 and decoded[0][1].shape == (96, 160, 3)
    assert [t for t, _ in decoded] == pytest.approx([k / 4 for k in range(40)])
    checked = 0
    for k, (_, frame) in enumerate(decoded):
        t = k / 4
        for a in v.visible(t):
            if a.size * 96 < 16:
                continue
            x, y = a.position(t)
            patch = frame[int(y * 96) - 1 : int(y * 96) + 2, int(x * 160) - 1 : int(x * 160) + 2]
            assert np.abs(patch.reshape(-1, 3).mean(0) - COLOR_RGB[a.color]).max() < 40
            checked += 1
    assert checked >= 10


def test_frame_times_at_any_fps():
    assert render.frame_times(3, 2) == [0, 0.5, 1, 1.5, 2, 2.5]
    assert len(render.frame_times(10, 29.97)) == math.ceil(10 * 29.97)
