"""StreamingSession: watch a video frame by frame, then answer questions about it.

The whole video lives in the LM's recurrent state (a few hundred KB, whatever the length).
Ingesting a frame costs the same time and memory at minute 1 and at hour 2. Asking a question
runs from that state and never changes it, so any number of questions can follow.

Rewind (`ask(q, at=t)`) answers exactly as a session that saw only the frames up to t. The
session keeps a state snapshot every few seconds and every frame's tokens (1.5 KiB a frame for the
packaged model), all under one memory cap (`max_rewind_bytes`, 64 MiB by default). A rewind
replays only the LM, from the nearest snapshot at or before t over the kept tokens, in one call.
Past the cap the snapshots are thinned (evenly, the oldest first), so rewinds get slower rather
than refused; only when the frames' tokens alone pass the cap are the oldest dropped, and a rewind
that far back re-decodes the file through `frame_source`, or says it needs it.
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from ..engine.state import State
from ..video.tokenizer import StreamDecoder
from .decoding import Decoder
from .frames import frame_tokens, prompt_state, run_frames


class RewindError(RuntimeError):
    """A rewind the session cannot serve (no snapshot or frames that far back)."""


@dataclass
class Snapshot:
    t: float  # time of the last frame in it (-inf: before the first frame)
    frames: int
    state: State


class StreamingSession:
    def __init__(
        self,
        model,
        snapshot_every: float = 2.0,
        max_rewind_bytes: int = 64 * 2**20,
        frame_source=None,
    ):
        """frame_source(t_after, t_until) -> iterable of (t, frame) re-decodes frames whose tokens were dropped."""
        self.model = model
        self.snapshot_every = snapshot_every
        self.frame_source = frame_source
        self.frames = 0
        self.last_t = -float("inf")
        with torch.inference_mode():
            self.state = prompt_state(model)
        self.tokens = len(model.prompt_ids())
        self.max_rewind_bytes = max_rewind_bytes
        self.snapshots = [Snapshot(-float("inf"), 0, self.state)]  # the first, before any frame, is never dropped
        self.kept = deque()  # (t, frame tokens (1 + k, d)) of every frame from the first_kept-th on
        self.first_kept = 0
        self.frame_ms = deque(maxlen=64)
        self.conversation: State | None = None  # state after the last full answer, for follow-ups
        self.last_answer_ids: list[int] = []

    # --- watching ---
    @torch.inference_mode()
    def _advance(self, state: State, tokens: torch.Tensor) -> State:
        return run_frames(self.model, tokens[None, None], state)[0][-1]

    @torch.inference_mode()
    def _embed(self, frame: np.ndarray, t: float) -> torch.Tensor:
        return frame_tokens(self.model, np.asarray(frame)[None, None], [t])[0, 0]  # (1 + k, d)

    def ingest(self, frame: np.ndarray, t: float) -> None:
        """Add one RGB uint8 (H, W, 3) frame shown at t seconds (frames must come in time order)."""
        if t <= self.last_t:
            raise ValueError(f"frame at t={t} is not after the previous frame (t={self.last_t})")
        start = time.perf_counter()
        embeds = self._embed(frame, t)
        self.state = self._advance(self.state, embeds)
        self.kept.append((t, embeds))
        self.frames += 1
        self.tokens += embeds.shape[0]
        self.last_t = t
        self.conversation = None  # a new frame starts a new conversation about the longer video
        if t - self.snapshots[-1].t >= self.snapshot_every:
            self.snapshots.append(Snapshot(self.last_t, self.frames, self.state))
        self._fit_cap()
        self.frame_ms.append(1000 * (time.perf_counter() - start))

    MIN_SNAPSHOTS = 8  # thinning stops here; past it the oldest frames' tokens go

    def rewind_bytes(self) -> int:
        """What rewinding costs in memory: the snapshots and the kept frame tokens."""
        frame_bytes = self.kept[0][1].numel() * self.kept[0][1].element_size() if self.kept else 0
        return sum(s.state.nbytes() for s in self.snapshots) + len(self.kept) * frame_bytes

    def _fit_cap(self) -> None:
        while self.rewind_bytes() > self.max_rewind_bytes:
            if len(self.snapshots) > self.MIN_SNAPSHOTS:
                # Drop the inner snapshot whose neighbours are closest (the oldest of equals): coverage stays even.
                ts = [s.t for s in self.snapshots]
                i = min(range(1, len(ts) - 1), key=lambda j: ts[j + 1] - ts[j - 1])
                del self.snapshots[i]
            elif self.kept:
                self.kept.popleft()
                self.first_kept += 1
            else:
                return

    def as_of(self, at) -> tuple[float | None, str]:
        """`at` (seconds, or None for the end) as a moment to answer as of, and a note when it had to be moved:
        before the first frame it becomes 0:00, past the last frame the end."""
        if at is None:
            return None, ""
        at = float(at)
        if at < 0:
            return 0.0, f"As of {at:g} s is before the video starts: asked as of 0:00."
        if at > self.last_t + 1:
            return None, (
                f"As of {_clock(at)} is past what was watched: asked as of the end ({_clock(max(self.last_t, 0))})."
            )
        return (None if at >= self.last_t else at), ""

    def state_at(self, t: float) -> State:
        """The state of a session that saw only the frames shown at or before t."""
        if t >= self.last_t:
            return self.state
        i = bisect.bisect_right([s.t for s in self.snapshots], t) - 1
        snap = self.snapshots[i]
        if snap.frames >= self.first_kept:
            start = snap.frames - self.first_kept
            gap = [tokens for ft, tokens in itertools.islice(self.kept, start, None) if ft <= t]
        elif self.frame_source is not None:
            gap = [self._embed(f, ft) for ft, f in self.frame_source(snap.t, t) if snap.t < ft <= t]
        else:
            raise RewindError(
                f"Cannot rewind to {t:.0f}s without the video: the frames between the nearest snapshot "
                f"({max(snap.t, 0):.0f}s) and then were dropped to keep the session under "
                f"{self.max_rewind_bytes / 2**20:.0f} MiB. Open the video again (pass frame_source) to rewind that far."
            )
        if not gap:
            return snap.state
        with torch.inference_mode():  # the LM alone, over every frame in between, in one call
            return run_frames(self.model, torch.stack(gap)[None], snap.state)[0][-1]

    # --- asking ---
    def ask(
        self,
        question: str,
        at: float | None = None,
        follow_up: bool = False,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ):
        """Stream the answer to `question` as text pieces.

        at: answer as of t seconds (rewind). follow_up: continue the last conversation instead of
        asking about the video afresh. The video state is never modified.
        """
        ids = self.model.question_ids(question)  # validates before anything streams
        if follow_up and self.conversation is not None:
            state = self.conversation
        else:
            state = self.state_at(at) if at is not None else self.state
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        return self._generate(state, ids, max_new_tokens, temperature, top_p, generator)

    def answer(self, question: str, **kwargs) -> str:
        return "".join(self.ask(question, **kwargs)).strip()

    def _generate(self, state, ids, max_new_tokens, temperature, top_p, generator):
        model, tok = self.model, self.model.tokenizer
        decoder = Decoder(model, state, [ids], max_new_tokens, temperature, top_p, generator)
        text = StreamDecoder(tok)
        self.last_answer_ids = text.ids
        for (token,) in decoder:
            piece = text.push(token) if token is not None else ""
            if piece:
                yield piece
        # "…answer<|endoftext|><|user|>": the state a follow-up question continues from
        closing = torch.tensor([[tok.eos_id, *model.next_turn_ids()]], device=model.device)
        with torch.inference_mode():
            self.conversation = model.lm(input_ids=closing, state=decoder.state, return_logits=False).state

    # --- reporting ---
    def stats(self) -> dict:
        import psutil

        return {
            "frames": self.frames,
            "tokens": self.tokens,
            "seconds_watched": max(0.0, self.last_t),
            "state_bytes": self.state.nbytes(),
            "snapshots": len(self.snapshots),
            "kept_frames": len(self.kept),
            "rewind_bytes": self.rewind_bytes(),
            "max_rewind_bytes": self.max_rewind_bytes,
            "ms_per_frame": float(np.median(self.frame_ms)) if self.frame_ms else None,
            "rss_bytes": psutil.Process().memory_info().rss,
        }


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
