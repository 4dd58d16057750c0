"""StreamingSession: watch a video frame by frame, then answer questions about it.

The whole video lives in the LM's recurrent state (a few hundred KB, whatever the length).
Ingesting a frame costs the same time and memory at minute 1 and at hour 2. Asking a question
runs from that state and never changes it, so any number of questions can follow.

Rewind (`ask(q, at=t)`) answers as a session that saw only the frames up to t: it restarts from
the last state snapshot at or before t and re-ingests the frames in between, from a small cache of
frame embeddings or, further back, by re-decoding through `frame_source`. Snapshots are thinned
under a memory cap, so memory stays bounded too.
"""

from __future__ import annotations

import bisect
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
        max_snapshot_bytes: int = 32 * 2**20,
        cached_frames: int = 64,
        frame_source=None,
    ):
        """frame_source(t_after, t_until) -> iterable of (t, frame) re-decodes frames for long rewinds."""
        self.model = model
        self.snapshot_every = snapshot_every
        self.frame_source = frame_source
        self.frames = 0
        self.last_t = -float("inf")
        with torch.inference_mode():
            self.state = prompt_state(model)
        self.tokens = len(model.prompt_ids())
        self.max_snapshots = max(2, max_snapshot_bytes // max(1, self.state.nbytes()))
        self.snapshots = [Snapshot(-float("inf"), 0, self.state)]
        self.cache = deque(maxlen=cached_frames)  # (t, frame embeddings (1 + k, d)) of the latest frames
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
        self.cache.append((t, embeds))
        self.frames += 1
        self.tokens += embeds.shape[0]
        self.last_t = t
        self.conversation = None  # a new frame starts a new conversation about the longer video
        if t - self.snapshots[-1].t >= self.snapshot_every:
            self._snapshot()
        self.frame_ms.append(1000 * (time.perf_counter() - start))

    def _snapshot(self) -> None:
        self.snapshots.append(Snapshot(self.last_t, self.frames, self.state))
        if len(self.snapshots) > self.max_snapshots:
            # Drop the inner snapshot whose neighbours are closest: coverage stays as even as possible.
            ts = [s.t for s in self.snapshots]
            i = min(range(1, len(ts) - 1), key=lambda j: ts[j + 1] - ts[j - 1])
            del self.snapshots[i]

    def state_at(self, t: float) -> State:
        """The state of a session that saw only the frames shown at or before t."""
        if t >= self.last_t:
            return self.state
        i = bisect.bisect_right([s.t for s in self.snapshots], t) - 1
        snap = self.snapshots[i]
        state = snap.state
        first_cached = self.frames - len(self.cache)  # index of the oldest frame still cached
        if snap.frames >= first_cached:
            gap = [e for ft, e in self.cache if snap.t < ft <= t]
        elif self.frame_source is not None:
            gap = [self._embed(f, ft) for ft, f in self.frame_source(snap.t, t) if snap.t < ft <= t]
        else:
            raise RewindError(
                f"Cannot rewind to {t:.0f}s: the nearest snapshot is at {snap.t:.0f}s and the frames in "
                "between are no longer cached. Re-open the video to rewind that far."
            )
        for embeds in gap:
            state = self._advance(state, embeds)
        return state

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
            "snapshot_bytes": sum(s.state.nbytes() for s in self.snapshots[1:]),
            "cached_frames": len(self.cache),
            "ms_per_frame": float(np.median(self.frame_ms)) if self.frame_ms else None,
            "rss_bytes": psutil.Process().memory_info().rss,
        }
