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

from .lm import State
from .tokenizer import StreamDecoder


class RewindError(RuntimeError):
    """A rewind the session cannot serve (no snapshot or frames that far back)."""


@dataclass
class Snapshot:
    t: float  # time of the last frame in it (-inf: before the first frame)
    frames: int
    state: State


class StreamingSession:
    def __init__(self, model, snapshot_every: float = 2.0, max_snapshot_bytes: int = 32 * 2**20,
                 cached_frames: int = 64, frame_source=None):
        """frame_source(t_after, t_until) -> iterable of (t, frame) re-decodes frames for long rewinds."""
        self.model = model
        self.snapshot_every = snapshot_every
        self.frame_source = frame_source
        self.frames = 0
        self.last_t = -float("inf")
        prompt = model.prompt_ids()
        with torch.inference_mode():
            self.state = model.lm(input_ids=torch.tensor([prompt], device=model.device), return_logits=False).state
        self.tokens = len(prompt)
        self.max_snapshots = max(2, max_snapshot_bytes // max(1, self.state.nbytes()))
        self.snapshots = [Snapshot(-float("inf"), 0, self.state)]
        self.cache = deque(maxlen=cached_frames)  # (t, frame embeddings (1 + k, d)) of the latest frames
        self.frame_ms = deque(maxlen=64)
        self.conversation: State | None = None  # state after the last full answer, for follow-ups
        self.last_answer_ids: list[int] = []

    # --- watching ---
    @torch.inference_mode()
    def _advance(self, state: State, frame_embeds: torch.Tensor) -> State:
        return self.model.lm(inputs_embeds=frame_embeds[None], state=state, return_logits=False).state

    @torch.inference_mode()
    def _embed(self, frame: np.ndarray, t: float) -> torch.Tensor:
        return self.model.frame_embeds(self.model.encode_frames([frame]), [t])[0]  # (1 + k, d)

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
    def ask(self, question: str, at: float | None = None, follow_up: bool = False, max_new_tokens: int = 32,
            temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None):
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

    @torch.inference_mode()
    def _generate(self, state, ids, max_new_tokens, temperature, top_p, generator):
        model, tok = self.model, self.model.tokenizer
        vocab = len(tok)
        out = model.lm(input_ids=torch.tensor([ids], device=model.device), state=state)
        logits, state = out.logits[0, -1, :vocab], out.state
        decoder = StreamDecoder(tok)
        self.last_answer_ids = decoder.ids
        for _ in range(max_new_tokens):
            token = sample_token(logits, temperature, top_p, generator)
            if token == tok.eos_id:
                break
            piece = decoder.push(token)
            if piece:
                yield piece
            out = model.lm.step(torch.tensor([token], device=model.device), state)
            logits, state = out.logits[0, :vocab], out.state
        # "…answer<|endoftext|><|user|>": the state a follow-up question continues from
        closing = torch.tensor([[tok.eos_id, *model.next_turn_ids()]], device=model.device)
        self.conversation = model.lm(input_ids=closing, state=state, return_logits=False).state

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


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, generator=None) -> int:
    """Greedy at temperature 0, else nucleus sampling over the smallest set with mass >= top_p."""
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_probs, order = probs.sort(descending=True)
    keep = sorted_probs.cumsum(0) - sorted_probs < top_p  # always keeps the most likely token
    sorted_probs = sorted_probs * keep
    choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
    return int(order[choice])
