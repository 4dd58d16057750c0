"""ma2mba Space: watch a video at 1 FPS and chat about it, rewind, and see where training memory goes.

    python app.py            # serves on 0.0.0.0:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT)

This file only wires widgets to the ma2mba API: decoding (ma2mba.video), streaming sessions
(ma2mba.serving), the example clips (ma2mba.packaged.examples) and the Memory lab (ma2mba.memory_lab).
Settings come from environment variables (see SETTINGS below and docs/app.md).
"""

from __future__ import annotations

import html
import os
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import pandas as pd
import torch

from ma2mba import memory_lab as lab
from ma2mba.engine.lm import count_parameters
from ma2mba.hub import ModelNotFoundError, looks_like_repo_id
from ma2mba.limited import ResourceLimitError, iterate_limited
from ma2mba.packaged import PACKAGED_MODEL_DIR, load_model
from ma2mba.packaged.examples import (
    DECODE_MAX_SIDE,
    EXAMPLES_DIR,
    UPLOAD_SUGGESTIONS,
    find_example,
    ground_truth,
    load_examples,
)
from ma2mba.serving.session import RewindError
from ma2mba.video.decode import VideoError, frame_source, probe, sample_frames
from ma2mba.video.model import MAX_QUESTION_CHARS
from ma2mba.video.novelty import THRESHOLD as NOVELTY_THRESHOLD
from ma2mba.video.novelty import Novelty, video_score
from ma2mba.video.tokenizer import QuestionTooLongError


def _env(name: str, default, kind=int):
    return kind(os.environ.get(name, default))


SETTINGS = dict(
    host=_env("GRADIO_SERVER_NAME", "0.0.0.0", str),
    port=_env("GRADIO_SERVER_PORT", 7860),
    max_video_seconds=_env("MA2MBA_MAX_VIDEO_SECONDS", 3600),  # longer uploads are refused
    max_upload_mb=_env("MA2MBA_MAX_UPLOAD_MB", 500),
    upload_max_age_s=_env("MA2MBA_UPLOAD_MAX_AGE_S", 3 * 3600),  # uploads and idle sessions older go away
    upload_clean_every_s=_env("MA2MBA_UPLOAD_CLEAN_EVERY_S", 600),
    watch_concurrency=_env("MA2MBA_WATCH_CONCURRENCY", 2),  # videos ingested at once, all users together
    chat_concurrency=_env("MA2MBA_CHAT_CONCURRENCY", 4),
    queue_size=_env("MA2MBA_QUEUE_SIZE", 64),
    # One intra-op thread per request: on a small shared CPU, OpenMP threads mostly wait on each
    # other (measured: 17 ms/frame with 1 thread, 180 ms with 2 on a busy 2-core machine).
    torch_threads=_env("MA2MBA_TORCH_THREADS", 1),
    # The lab's training steps and sweeps run in a child process with this much address space on top of
    # what it maps at start, and this long at most: no request can exhaust the Space.
    lab_memory_mb=_env("MA2MBA_LAB_MEMORY_MB", 6144),
    lab_timeout_s=_env("MA2MBA_LAB_TIMEOUT_S", 900),
    # A public Space loads the packaged model and Hub repo ids only; local folders would let anyone probe
    # the server's disk. `python app.py --allow-local-models` (or 1 here) allows them.
    allow_local_models=_env("MA2MBA_ALLOW_LOCAL_MODELS", 0) == 1,
)
UI_UPDATES_PER_SECOND = 8  # ingestion runs as fast as it can; the page is refreshed this often
PACES = {"fastest": 0.0, "10× real time": 0.1, "real time": 1.0}  # wall seconds per video second
N_SUGGESTIONS = 4
PAPER = lab.PRESETS["paper 2.7B"]
PAPER_STATE_BYTES = lab.state_bytes(PAPER.lm, PAPER.dtype)
LIMITS = lab.Limits.from_env()
NOVELTY = Novelty.load(PACKAGED_MODEL_DIR)  # the packaged model's fitted score (video/novelty.py), or None
NOVELTY_MIN_FRAMES = 8  # frames scored before the video's score is shown
LAB_CHILD = dict(limit_bytes=SETTINGS["lab_memory_mb"] << 20, timeout_s=SETTINGS["lab_timeout_s"])

torch.set_num_threads(SETTINGS["torch_threads"])
EXAMPLES = load_examples()


# --- models: the packaged one for everyone, plus the last one somebody loaded ---


class Models:
    def __init__(self, keep: int = 1):
        # A packaged model that cannot be loaded keeps the app up, saying why on every tab (never random weights).
        try:
            self.packaged, self.packaged_error = load_model(), None
        except ModelNotFoundError as e:
            self.packaged, self.packaged_error = None, str(e)
        self.loaded: OrderedDict = OrderedDict()
        self.keep = keep
        self.lock = threading.Lock()

    def get(self, name: str | None):
        if not name:
            if self.packaged is None:
                raise ModelNotFoundError(f"The packaged model could not be loaded: {self.packaged_error}")
            return self.packaged
        with self.lock:
            if name not in self.loaded:
                raise ModelNotFoundError(f"The model {name!r} is no longer loaded; load it again in the Model tab.")
            return self.loaded[name]

    def load(self, name: str):
        model = load_model(name)
        with self.lock:
            self.loaded[name] = model
            while len(self.loaded) > self.keep:  # a 16 GB Space holds few models
                self.loaded.popitem(last=False)
        return model


MODELS = Models()


def packaged_is_loaded() -> bool:
    return MODELS.packaged is not None


# --- formatting ---


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def fmt_clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def user_error(message) -> gr.Error:
    """A readable error for the page (and for API clients); the message may contain a file name."""
    return gr.Error(html.escape(str(message), quote=False), print_exception=False)


# --- Watch & chat ---


@dataclass
class Viewer:
    """One user's video: the streaming session and the chat about it (kept in a gr.State)."""

    session: object
    video_path: str
    duration: float | None
    example: dict | None
    model_name: str | None
    started: float = field(default_factory=time.perf_counter)  # when watching began, for the speed shown
    history: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)  # ingest and ask take turns
    novelty_scores: list = field(default_factory=list)  # of sampled frames, with the packaged model only

    def unfamiliar(self) -> float | None:
        """The video's novelty score once enough frames are scored and it is above the threshold, else None."""
        if len(self.novelty_scores) < NOVELTY_MIN_FRAMES:
            return None
        score = video_score(self.novelty_scores)
        return score if score > NOVELTY_THRESHOLD else None


def progress_html(viewer: Viewer, state: str) -> str:
    s = viewer.session.stats()
    watched = s["seconds_watched"] + 1 if s["frames"] else 0
    total = viewer.duration
    share = min(1.0, watched / total) if total else 0.0
    wall = max(time.perf_counter() - viewer.started, 1e-6)
    model_ms = s["ms_per_frame"] or 0.0
    speed = (
        f"{s['frames'] / wall:.0f} frames/s watched · {model_ms:.0f} ms per frame in the model"
        if s["frames"]
        else "starting…"
    )
    return (
        f"<div id='watch-progress' data-frames='{s['frames']}' data-state='{state}'>"
        f"<b>{html.escape(state)}</b> · <span class='clock'>{fmt_clock(s['seconds_watched'])}"
        f"{' / ' + fmt_clock(total) if total else ''}</span>"
        f"<progress value='{share:.3f}' max='1' style='width:100%'></progress>"
        f"<span class='frames'>{s['frames']} frames</span> · {s['tokens']} tokens · {speed}"
        f"{unfamiliar_html(viewer)}</div>"
    )


def unfamiliar_html(viewer: Viewer) -> str:
    score = viewer.unfamiliar()
    if score is None:
        return ""
    return (
        f"<div id='unfamiliar' style='margin-top:6px;color:#b45309'>⚠ This video looks unlike ShapeWorld, the only "
        f"world the packaged model knows (novelty {score:.1f}, above {NOVELTY_THRESHOLD:g}). Its answers will be in "
        "ShapeWorld's terms and mean nothing here.</div>"
    )


def memory_html(viewer: Viewer) -> str:
    """The session's state, constant, next to the KV cache a transformer of the same size would hold."""
    s = viewer.session.stats()
    lm = viewer.session.model.config.lm
    value_bytes = viewer.session.model.lm.lm_head.weight.element_size()
    state, kv = s["state_bytes"], lab.kv_cache_bytes(lm, s["tokens"], value_bytes)
    top = max(state, kv)
    frames = s["frames"]
    paper_tokens = frames * PAPER.tokens_per_frame
    paper_kv = lab.kv_cache_bytes(PAPER.lm, paper_tokens, bytes_per_value=2)

    def bar(label, n, color, note):
        return (
            f"<div class='mem-row'><span class='mem-label'>{label}<br><small>{note}</small></span>"
            f"<span class='mem-track'><span class='mem-bar' style='width:{max(0.5, 100 * n / top):.1f}%;"
            f"background:{color}'></span></span><span class='mem-value'>{fmt_bytes(n)}</span></div>"
        )

    return (
        f"<div id='watch-memory' data-state-bytes='{state}' data-kv-bytes='{kv}'>"
        + bar("Mamba-2 state", state, "#16a34a", "constant")
        + bar("Transformer KV cache", kv, "#dc2626", f"2 × {lm.n_layer} layers × {lm.d_model} × {s['tokens']} tokens")
        + f"<small>At the paper's scale (Mamba2-2.7B, {PAPER.tokens_per_frame} tokens per frame, bf16) these "
        f"{frames} frames would be a {fmt_bytes(PAPER_STATE_BYTES)} state, or a {fmt_bytes(paper_kv)} KV cache.</small></div>"
    )


def suggestion_updates(questions: list[str]):
    shown = questions[:N_SUGGESTIONS]
    return [gr.Button(value=q, visible=True) for q in shown] + [gr.Button(visible=False)] * (N_SUGGESTIONS - len(shown))


def watch(video_path, pace, model_name):
    """Decode at 1 FPS and stream every frame into a new session, refreshing the page as it goes."""
    if not video_path:
        yield (
            None,
            None,
            "<div id='watch-progress'>Upload a video or pick an example.</div>",
            "",
            gr.Slider(maximum=1, value=1),
            [],
            *suggestion_updates([]),
        )
        return
    try:
        info = probe(video_path, max_seconds=SETTINGS["max_video_seconds"], max_bytes=SETTINGS["max_upload_mb"] << 20)
        model = MODELS.get(model_name)
    except (VideoError, ModelNotFoundError) as e:
        raise user_error(e) from None
    example = find_example(video_path, EXAMPLES)
    session = model.start_session(
        frame_source=frame_source(video_path, max_seconds=SETTINGS["max_video_seconds"], max_side=DECODE_MAX_SIDE)
    )
    viewer = Viewer(session, video_path, info.duration, example, model_name)
    questions = [q["question"] for q in example["questions"]] if example else list(UPLOAD_SUGGESTIONS)
    yield (
        viewer,
        None,
        progress_html(viewer, "Watching"),
        memory_html(viewer),
        gr.Slider(maximum=1, value=1),
        [],
        *suggestion_updates(questions),
    )

    novelty = NOVELTY if model is MODELS.packaged else None
    frames = sample_frames(
        video_path,
        fps=1.0,
        max_seconds=SETTINGS["max_video_seconds"],
        max_bytes=SETTINGS["max_upload_mb"] << 20,
        max_side=DECODE_MAX_SIDE,
    )
    last_update = 0.0
    try:
        for i, (t, frame) in enumerate(frames):
            with viewer.lock:
                session.ingest(frame, t)
            if novelty is not None and (i < NOVELTY_MIN_FRAMES or i % 8 == 0):  # every frame at first, then 1 in 8
                viewer.novelty_scores.append(float(novelty.frame_scores(model, frame[None])[0]))
            delay = PACES.get(pace, 0.0) * (t + 1) - (time.perf_counter() - viewer.started)
            if delay > 0:
                time.sleep(delay)
            if time.perf_counter() - last_update >= 1 / UI_UPDATES_PER_SECOND:
                last_update = time.perf_counter()
                yield (
                    gr.skip(),
                    frame,
                    progress_html(viewer, "Watching"),
                    memory_html(viewer),
                    gr.Slider(maximum=max(1, t), value=t),
                    gr.skip(),
                    *[gr.skip()] * N_SUGGESTIONS,
                )
    except VideoError as e:
        raise user_error(f"Stopped after {session.frames} frames: {e}") from None
    finally:
        frames.close()
    end = max(1, session.last_t)
    yield (
        gr.skip(),
        gr.skip(),
        progress_html(viewer, "Done — ask away"),
        memory_html(viewer),
        gr.Slider(maximum=end, value=end),
        gr.skip(),
        *[gr.skip()] * N_SUGGESTIONS,
    )


def stopped(viewer):
    if viewer is None:
        return gr.skip(), gr.skip()
    end = max(1, viewer.session.last_t)
    return (
        progress_html(viewer, f"Stopped at {fmt_clock(viewer.session.last_t)} — ask about what was seen"),
        gr.Slider(maximum=end, value=end),
    )


def ask(question, viewer, as_of, follow_up, temperature, max_new_tokens):
    """Stream the answer into the chat; the video state is never changed by asking."""
    question = (question or "").strip()
    if viewer is None or viewer.session.frames == 0:
        raise user_error("Upload a video (or pick an example) and let it play for a moment first.")
    if not question:
        raise user_error("Type a question about the video.")
    session = viewer.session
    at, note = session.as_of(as_of)
    shown = question if len(question) <= 300 else question[:300] + f"… ({len(question):,} characters)"
    asked = shown + (f"  \n*(as of {fmt_clock(at)})*" if at is not None else "") + (f"  \n*{note}*" if note else "")
    try:
        with viewer.lock:
            pieces = session.ask(
                question,
                at=at,
                follow_up=bool(follow_up),
                temperature=float(temperature),
                max_new_tokens=int(max_new_tokens),
            )
    except (QuestionTooLongError, RewindError, VideoError) as e:
        # The conversation stays on screen, with the reason as the reply.
        viewer.history += [{"role": "user", "content": asked}, {"role": "assistant", "content": f"⚠ {e}"}]
        yield viewer.history, gr.skip()
        return
    viewer.history += [{"role": "user", "content": asked}, {"role": "assistant", "content": ""}]
    answer = viewer.history[-1]
    yield viewer.history, ""
    try:
        for piece in pieces:
            answer["content"] += piece
            yield viewer.history, gr.skip()
    except (RewindError, VideoError) as e:
        answer["content"] += f"⚠ {e}"
        yield viewer.history, gr.skip()
        return
    answer["content"] = answer["content"].strip() or "(no answer)"
    if viewer.example:
        truth = ground_truth(viewer.example, question, session.last_t if at is None else at)
        if truth is not None:
            ok = answer["content"].lower() == truth
            viewer.history.append(
                {"role": "assistant", "content": f"{'✓' if ok else '✗'} ShapeWorld's answer: **{truth}**"}
            )
    yield viewer.history, gr.skip()


def clear_chat(viewer):
    if viewer is not None:
        viewer.history = []
    return []


# --- Memory lab ---

MODE_CHOICES = [(lab.MODE_LABELS[m], m) for m in lab.MODES]
TRAINABLE_PRESETS = [name for name, p in lab.PRESETS.items() if p.trainable]
# Fixed colours: the plots' colour scales then know every mode before its first point arrives.
MODE_COLORS = dict(zip(lab.MODE_LABELS.values(), ("#dc2626", "#f59e0b", "#2563eb", "#16a34a")))
PREDICTED_COLORS = dict(zip(lab.MODE_LABELS.values(), ("#fca5a5", "#fcd34d", "#93c5fd", "#86efac")))
SWEEP_COLORS = {
    **{f"{mode} · measured": c for mode, c in MODE_COLORS.items()},
    **{f"{mode} · predicted": c for mode, c in PREDICTED_COLORS.items()},
}


def legend_html(colors: dict, note: str = "") -> str:
    """The plots' legend, drawn here: gradio's LinePlot cuts its own legend off below the axis."""
    items = "".join(
        f"<span style='margin-right:14px'><span style='color:{c}'>■</span> {html.escape(label)}</span>"
        for label, c in colors.items()
    )
    return f"<div class='legend'>{items}{note}</div>"


def legend_only(x: str, y: str, color: str, labels) -> pd.DataFrame:
    """A plot's first value, with no points but every series: gradio's LinePlot fixes its colour scale
    from the first value it shows, so series that arrive later would otherwise be drawn without colour."""
    return pd.DataFrame({x: [float("nan")] * len(labels), y: float("nan"), color: list(labels)})


SUMMARY_COLUMNS = [
    "mode",
    "peak MiB (measured)",
    "peak MiB (planner)",
    "s / step",
    "recompute overhead",
    "planner (l, s)",
    "note",
]


NOISE = 0.10  # step times on a shared CPU move by about this much between runs: smaller overheads are noise


def overhead_text(overhead: float) -> str:
    return f"{overhead:+.0%}" if abs(overhead) > NOISE else f"≈ 0 (within ±{NOISE:.0%} noise)"


def summary_frame(summaries, preset) -> pd.DataFrame:
    overhead = lab.recompute_overhead(summaries)
    rows = []
    for s in summaries:
        grid = (
            f"l={s.layers_per_block}{' (all)' if s.layers_per_block >= preset.lm.n_layer else ''}, "
            f"s={s.tokens_per_segment}{' (all)' if s.tokens_per_segment >= s.tokens else ''}"
        )
        rows.append(
            [
                lab.MODE_LABELS[s.mode],
                round(s.peak_bytes / 2**20, 1) if s.peak_bytes else None,
                round(s.predicted_bytes / 2**20, 1),
                round(s.seconds_per_step, 3) if s.seconds_per_step else None,
                overhead_text(overhead[s.mode]) if s.mode in overhead else "—",
                grid,
                s.skipped or f"{s.tokens} tokens",
            ]
        )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def lab_train(modes, clip_seconds, preset_name, steps):
    """Train each mode in turn; stream timelines, losses and the summary."""
    modes = [m for m in lab.MODES if m in (modes or [])]  # a stable order, whatever was clicked first
    try:
        runs = iterate_limited(lab.train, preset_name, modes, int(clip_seconds), int(steps), limits=LIMITS, **LAB_CHILD)
        preset = lab.PRESETS[preset_name]
        timeline, losses, summaries = [], [], []
        for event in runs:
            label = lab.MODE_LABELS[event.mode]
            if isinstance(event, lab.StepResult):
                losses.append({"mode": label, "step": event.step + 1, "loss": event.loss})
                if event.timeline:
                    n = len(event.timeline)
                    timeline += [
                        {"mode": label, "step progress (%)": round(100 * i / max(1, n - 1), 2), "live MiB": b / 2**20}
                        for i, b in enumerate(event.timeline)
                    ]
                status = f"Training **{label}**: step {event.step + 1}/{int(steps)}, loss {event.loss:.4f}"
            else:
                summaries.append(event)
                status = f"**{label}** skipped: {event.skipped}" if event.skipped else f"**{label}** done"
            yield (
                pd.DataFrame(timeline, columns=["mode", "step progress (%)", "live MiB"]),
                pd.DataFrame(losses, columns=["mode", "step", "loss"]),
                summary_frame(summaries, preset),
                status,
            )
    except (lab.LabError, ResourceLimitError) as e:
        raise user_error(e) from None
    ran = [s for s in summaries if s.losses]
    if len(ran) > 1:
        gap = max(abs(a - b) for s in ran for a, b in zip(s.losses, ran[0].losses))
        relative = gap / max(ran[0].losses)
        # Recomputation runs the same operations in another grouping: float32 rounding, not a different step.
        verdict = (
            f"Done. Losses agree across modes to {gap:.1e} ({relative:.0e} of the loss): the same training step, "
            "up to float32 rounding."
            if relative <= 1e-4
            else f"Done. Losses differ by up to {gap:.2e} ({relative:.0e} of the loss)."
        )
    else:
        verdict = "Done."
    yield gr.skip(), gr.skip(), gr.skip(), verdict


def lab_sweep(modes, preset_name):
    modes = [m for m in lab.MODES if m in (modes or [])]
    rows = []
    try:
        for p in iterate_limited(lab.sweep, preset_name, modes, limits=LIMITS, **LAB_CHILD):
            label = lab.MODE_LABELS[p.mode]
            rows.append({"tokens": p.tokens, "MiB": p.predicted_bytes / 2**20, "series": f"{label} · predicted"})
            if p.measured_bytes is not None:
                rows.append({"tokens": p.tokens, "MiB": p.measured_bytes / 2**20, "series": f"{label} · measured"})
            yield pd.DataFrame(rows), f"Measured {p.seconds} s clips ({p.tokens} tokens) with {label}"
    except (lab.LabError, ResourceLimitError) as e:
        raise user_error(e) from None
    yield (
        gr.skip(),
        "Sweep done: one forward + backward per point, measured by ma2mba.memory; predicted by the planner.",
    )


def longest_lab_clip(preset_name: str) -> int:
    """The longest clip the lab trains at this model size (its token cap), in seconds."""
    return lab.longest_trainable_clip(lab.PRESETS[preset_name], LIMITS)


REACH_COLUMNS = ["mode", "longest sequence (tokens)", "longest clip at 1 FPS"]


def lab_budget(budget_gib, preset_name):
    try:
        reach = lab.longest_clips(preset_name, float(budget_gib or 0) * 2**30)
    except lab.LabError as e:
        raise user_error(e) from None
    at_least = lambda r, text: f"≥ {text}" if r.at_least else text
    return pd.DataFrame(
        [
            [
                lab.MODE_LABELS[r.mode],
                at_least(r, f"{r.tokens:,}"),
                at_least(r, fmt_clock(r.seconds)) if r.seconds else "—",
            ]
            for r in reach
        ],
        columns=REACH_COLUMNS,
    )


# --- Model tab ---


def model_card(model_name) -> str:
    if not model_name and not packaged_is_loaded():
        return f"### The packaged model (ma2mba-shapes)\n\n⚠ It could not be loaded: {MODELS.packaged_error}\n"
    model = MODELS.get(model_name)
    folder = Path(model_name) if model_name and Path(model_name).is_dir() else PACKAGED_MODEL_DIR
    card = folder / "README.md"
    cfg = model.config
    facts = (
        f"| | this model |\n|---|---|\n| language model | Mamba-2, {cfg.lm.n_layer} layers × d_model {cfg.lm.d_model}, "
        f"d_state {cfg.lm.ssm.d_state} |\n| frame encoder | {cfg.vision.kind}, {model.tokens_per_frame} tokens per frame "
        f"(time marker + {model.tokens_per_frame - 1}) |\n| parameters | {count_parameters(model) / 1e6:.2f} M |\n"
        f"| recurrent state | {fmt_bytes(lab.state_bytes(cfg.lm))}, whatever the video's length |\n"
    )
    if model_name:
        head = f"### {model_name}\n\n"
        body = card.read_text() if card.is_file() else "This model folder has no README.md model card."
    else:
        head, body = "### The packaged model (ma2mba-shapes)\n\n", card.read_text() if card.is_file() else ""
    return head + facts + "\n" + body


LIMITS_MD = """
**Honest limits.** The packaged model is tiny and has only ever seen ShapeWorld: coloured circles,
squares, triangles and stars on dark backgrounds. It answers ShapeWorld's questions (what appeared
first or last, how many times, whether, when, what came right after) and nothing else; on real-world
videos its answers are meaningless. For real videos, load a real Video-Ma²mba checkpoint (a CLIP
vision tower and a Mamba-2 language model) below. The Space runs on a CPU: a 2.7B model would be
slow here.
"""


def load_other(name):
    name = (name or "").strip()
    local = SETTINGS["allow_local_models"]
    if not name:
        return (
            gr.skip(),
            f"Type a Hugging Face repo id (owner/name){' or the path of a model folder' if local else ''}.",
            gr.skip(),
        )
    if not local and (Path(name).expanduser().exists() or not looks_like_repo_id(name)):
        return (
            gr.skip(),
            "⚠ This Space loads the packaged model and Hugging Face repo ids (owner/name) only. Local folders "
            "work when the app is started with `python app.py --allow-local-models`.",
            gr.skip(),
        )
    try:
        MODELS.load(name)
    except ModelNotFoundError as e:
        return gr.skip(), f"⚠ {e}", gr.skip()
    except (RuntimeError, ValueError, OSError, KeyError) as e:  # a folder that is not a Video-Ma²mba model
        return gr.skip(), f"⚠ {name!r} could not be loaded as a Video-Ma²mba model: {e}", gr.skip()
    return name, f"Loaded **{name}**. Watch & chat now uses it for your next video (only for you).", model_card(name)


def use_packaged():
    return None, "Using the packaged model.", model_card(None)


# --- layout ---

CSS = """
#watch-memory .mem-row {display:flex; align-items:center; gap:10px; margin:6px 0}
#watch-memory .mem-label {width:190px; flex:none; line-height:1.2}
#watch-memory .mem-track {flex:1; height:14px; border-radius:3px; background:rgba(128,128,128,.15)}
#watch-memory .mem-bar {display:block; height:100%; border-radius:3px; transition:width .2s}
#watch-memory .mem-value {width:80px; flex:none; text-align:right; font-weight:600; white-space:nowrap}
.suggestion button {font-size: 0.85em}
@media (max-width: 560px) {  /* a phone: the label above its bar, so the bar keeps the row's width */
  #watch-memory .mem-row {flex-wrap:wrap; gap:2px 10px}
  #watch-memory .mem-label {width:100%}
}
"""

INTRO = """
# ma²mba · every frame in a Mamba-2 state
Video-Ma²mba ([arXiv 2411.19460](https://arxiv.org/abs/2411.19460)) reads a video **one frame per second, every
frame**, into the fixed-size recurrent state of a Mamba-2 language model. Memory does not grow with the video,
so you can then ask any number of questions, or rewind and ask about an earlier moment.
"""


WHAT_IT_KNOWS = """
**What the packaged model knows.** It was trained only on ShapeWorld videos: coloured circles, squares,
triangles and stars appearing on dark backgrounds. It answers which shape or colour came first, which came
last, whether and how many times a kind (say, a red star) appeared, when a kind that appeared once did, and
what came right after it. On any other video its answers are in ShapeWorld's terms and mean nothing; load a
real Video-Ma²mba checkpoint in the Model tab for those.
"""


def packaged_error_note() -> str:
    return (
        f"\n**⚠ The packaged model could not be loaded**, so Watch & chat has no model until one is loaded in the "
        f"Model tab: {html.escape(MODELS.packaged_error or '')}\n"
    )


def line_plot(x: str, y: str, color: str, colors: dict, elem_id: str, label: str) -> gr.LinePlot:
    return gr.LinePlot(
        legend_only(x, y, color, colors),
        x=x,
        y=y,
        color=color,
        color_map=colors,
        colors_in_legend=[],
        height=360,
        label=label,
        elem_id=elem_id,
    )


def build_demo() -> gr.Blocks:
    with gr.Blocks(
        title="ma²mba", delete_cache=(SETTINGS["upload_clean_every_s"], SETTINGS["upload_max_age_s"])
    ) as demo:
        viewer = gr.State(None, time_to_live=SETTINGS["upload_max_age_s"])
        model_name = gr.State(None)
        gr.Markdown(INTRO if packaged_is_loaded() else INTRO + packaged_error_note())
        with gr.Tab("Watch & chat"):
            with gr.Row():
                with gr.Column(scale=5):
                    video = gr.Video(sources=["upload"], label="Video (mp4, webm, mov)", height=300)
                    if EXAMPLES:
                        gr.Examples(
                            [[e["path"]] for e in EXAMPLES],
                            inputs=[video],
                            cache_examples=False,
                            label="ShapeWorld examples (the packaged model's world)",
                            example_labels=[f"{e['file']} · {e['width']}×{e['height']}" for e in EXAMPLES],
                        )
                    gr.Markdown(WHAT_IT_KNOWS, elem_id="what-it-knows")
                    with gr.Row():
                        pace = gr.Radio(list(PACES), value="fastest", label="Pace", scale=3)
                        stop = gr.Button("■ Stop", variant="stop", scale=1, elem_id="stop-watch")
                with gr.Column(scale=4):
                    frame = gr.Image(
                        label="Now watching", height=200, interactive=False, format="jpeg", elem_id="now-watching"
                    )
                    progress = gr.HTML("<div id='watch-progress'>Upload a video or pick an example.</div>")
                    memory = gr.HTML("")
            with gr.Row():
                with gr.Column(scale=5):
                    chatbot = gr.Chatbot(label="Chat", height=360, elem_id="chat", buttons=["copy"])
                    with gr.Row():
                        question = gr.Textbox(
                            placeholder=f"Ask about the video… (up to {MAX_QUESTION_CHARS} characters)",
                            show_label=False,
                            scale=5,
                            elem_id="question",
                        )
                        send = gr.Button("Ask", variant="primary", scale=1, elem_id="ask")
                with gr.Column(scale=3):
                    gr.Markdown("**Suggested questions** (one click each)")
                    suggestions = [
                        gr.Button(visible=False, size="sm", elem_classes="suggestion") for _ in range(N_SUGGESTIONS)
                    ]
                    as_of = gr.Slider(
                        0, 1, value=1, step=1, label="As of (seconds): drag back to rewind", elem_id="as-of"
                    )
                    follow_up = gr.Checkbox(False, label="Follow-up: continue the conversation")
                    with gr.Accordion("Sampling", open=False):
                        temperature = gr.Slider(0, 1.5, value=0, step=0.05, label="Temperature (0: greedy)")
                        max_new_tokens = gr.Slider(4, 64, value=24, step=1, label="Max new tokens")
                    clear = gr.Button("Clear chat", size="sm")

            watch_event = video.change(
                watch,
                [video, pace, model_name],
                [viewer, frame, progress, memory, as_of, chatbot, *suggestions],
                api_name="watch",
                concurrency_limit=SETTINGS["watch_concurrency"],
                concurrency_id="watch",
                show_progress="hidden",
            )
            stop.click(stopped, [viewer], [progress, as_of], cancels=[watch_event], api_name="stop")
            ask_inputs = [viewer, as_of, follow_up, temperature, max_new_tokens]
            chat_args = dict(
                concurrency_limit=SETTINGS["chat_concurrency"], concurrency_id="chat", show_progress="hidden"
            )
            send.click(ask, [question, *ask_inputs], [chatbot, question], api_name="ask", **chat_args)
            question.submit(ask, [question, *ask_inputs], [chatbot, question], api_visibility="private", **chat_args)
            for button in suggestions:
                button.click(ask, [button, *ask_inputs], [chatbot, question], api_visibility="private", **chat_args)
            clear.click(clear_chat, [viewer], [chatbot], api_visibility="private")

        with gr.Tab("Memory lab"):
            gr.Markdown(
                "Train the model for a few real steps on ShapeWorld clips under each gradient-checkpointing mode "
                "and watch where the memory goes. **none** keeps every activation; **per-layer** keeps each layer's "
                "input; **√L** every √L-th; **MA-GC** (the paper's multi-axis checkpointing) also cuts the sequence "
                "into segments and keeps each layer's recurrent state between them. Same weights, same clips: "
                "identical loss curves show that checkpointing changes memory, never the result."
            )
            with gr.Row():
                lab_modes = gr.CheckboxGroup(MODE_CHOICES, value=list(lab.MODES), label="Modes to compare")
                lab_preset = gr.Radio(TRAINABLE_PRESETS, value="packaged", label="Model size")
            with gr.Row():
                lab_seconds = gr.Slider(
                    8,
                    longest_lab_clip("packaged"),
                    value=60,
                    step=1,
                    label="Clip length (seconds at 1 FPS)",
                    elem_id="lab-seconds",
                )
                lab_steps = gr.Slider(1, LIMITS.max_steps, value=3, step=1, label="Training steps")
            with gr.Row():
                train_btn = gr.Button("Train", variant="primary", elem_id="lab-train")
                sweep_btn = gr.Button("Sweep lengths", elem_id="lab-sweep")
                cancel = gr.Button("Cancel", variant="stop", elem_id="lab-cancel")
            caps = ", ".join(
                f"{lab.longest_trainable_clip(lab.PRESETS[name], LIMITS)} s ({name})" for name in TRAINABLE_PRESETS
            )
            lab_status = gr.Markdown(
                f"Guardrails for a small CPU Space: clips up to {caps}, {LIMITS.max_steps} steps; a mode predicted "
                f"to need more than {fmt_bytes(LIMITS.max_peak_bytes)} of activations is skipped; one lab run at a "
                "time.",
                elem_id="lab-status",
            )
            gr.HTML(legend_html(MODE_COLORS))
            with gr.Row():
                timeline_plot = line_plot(
                    "step progress (%)",
                    "live MiB",
                    "mode",
                    MODE_COLORS,
                    "lab-timeline",
                    "Memory over one training step (forward, then backward)",
                )
                loss_plot = line_plot(
                    "step",
                    "loss",
                    "mode",
                    MODE_COLORS,
                    "lab-loss",
                    "Loss per mode (the lines lie on top of each other when checkpointing is exact)",
                )
            summary = gr.Dataframe(summary_frame([], None), label="Summary", interactive=False, elem_id="lab-summary")
            gr.HTML(legend_html(MODE_COLORS, " · dark: measured, light: predicted by the planner"))
            sweep_plot = line_plot(
                "tokens",
                "MiB",
                "series",
                SWEEP_COLORS,
                "lab-sweep-plot",
                "Peak memory of a training step against sequence length",
            )
            with gr.Row(equal_height=True):
                budget = gr.Number(
                    16,
                    label="Memory budget for activations (GiB)",
                    minimum=0.001,
                    maximum=lab.MAX_PLAN_BUDGET_BYTES / 2**30,
                    elem_id="lab-budget",
                )
                budget_preset = gr.Dropdown(list(lab.PRESETS), value="paper 2.7B", label="Model size")
                reach_btn = gr.Button("Longest clip per mode", elem_id="lab-reach-button")
            reach = gr.Dataframe(
                pd.DataFrame(columns=REACH_COLUMNS),
                label="Longest clip each mode can train within the budget (planner)",
                interactive=False,
                elem_id="lab-reach",
            )

            lab_args = dict(concurrency_limit=1, concurrency_id="lab", show_progress="minimal", time_limit=600)
            train_event = train_btn.click(
                lab_train,
                [lab_modes, lab_seconds, lab_preset, lab_steps],
                [timeline_plot, loss_plot, summary, lab_status],
                api_name="lab_train",
                **lab_args,
            )
            lab_preset.change(  # the slider offers what the size can train, no more
                lambda name, seconds: gr.Slider(
                    maximum=longest_lab_clip(name), value=min(seconds, longest_lab_clip(name))
                ),
                [lab_preset, lab_seconds],
                [lab_seconds],
                api_visibility="private",
            )
            sweep_event = sweep_btn.click(
                lab_sweep, [lab_modes, lab_preset], [sweep_plot, lab_status], api_name="lab_sweep", **lab_args
            )
            cancel.click(
                lambda: "Cancelled.", None, [lab_status], cancels=[train_event, sweep_event], api_visibility="private"
            )
            # The planner traces a layer once per model size (seconds), then answers in milliseconds.
            reach_btn.click(lab_budget, [budget, budget_preset], [reach], api_name="lab_budget")
            for trigger in (budget.submit, budget_preset.change):
                trigger(lab_budget, [budget, budget_preset], [reach], api_visibility="private")

        with gr.Tab("Model"):
            card = gr.Markdown(model_card(None), elem_id="model-card")
            gr.Markdown(LIMITS_MD)
            with gr.Row():
                other = gr.Textbox(
                    label="Load another model: a Hub repo id (owner/name)"
                    + (" or a local folder" if SETTINGS["allow_local_models"] else ""),
                    scale=4,
                )
                load_btn = gr.Button("Load", scale=1)
                reset_btn = gr.Button("Use the packaged model", scale=1)
            load_status = gr.Markdown("")
            load_btn.click(
                load_other, [other], [model_name, load_status, card], api_name="load_model", concurrency_limit=1
            )
            reset_btn.click(use_packaged, None, [model_name, load_status, card], api_visibility="private")
    return demo


demo = build_demo()

if __name__ == "__main__":
    if "--allow-local-models" in sys.argv[1:]:
        SETTINGS["allow_local_models"] = True
    demo.queue(max_size=SETTINGS["queue_size"], default_concurrency_limit=2).launch(
        server_name=SETTINGS["host"],
        server_port=SETTINGS["port"],
        max_file_size=f"{SETTINGS['max_upload_mb']}mb",
        allowed_paths=[str(EXAMPLES_DIR)],
        css=CSS,
        theme=gr.themes.Soft(),
        show_error=True,
    )
