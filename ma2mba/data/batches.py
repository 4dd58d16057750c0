"""ShapeWorld videos -> model inputs, for training and evaluation.

The central trick is branching: a batch of videos goes through the LM once, its state is kept at a
few moments, and many questions are asked from each kept state in one batched call. Every
answer's gradient flows back through the state into the frames, so one pass over a video
supervises dozens of answers at several lengths (the paper's dense supervision, made cheap by a
recurrent state).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..lm import State
from ..model import IGNORE, VideoMa2mba
from ..vision import letterbox
from .shapeworld import Video

# Width:height of the frames videos are rendered at (letterboxed into the model's square input).
ASPECTS = ((1, 1), (16, 9), (4, 3), (9, 16), (3, 4))
UPLOAD_HEIGHT = 360  # "upload-like" frames are rendered at 360p and downscaled, as an upload travels


def render_letterboxed(video: Video, times, size: int, aspect=(1, 1), upload_like: bool = False) -> np.ndarray:
    """Frames at `times` as the model sees them: (N, size, size, 3) uint8, letterboxed.

    Direct rendering at the letterboxed size gives the same geometry as rendering large and
    shrinking; `upload_like` does the latter (softer edges), like a 360p upload.
    """
    w, h = aspect
    if upload_like:  # the shorter side is UPLOAD_HEIGHT pixels
        scale = UPLOAD_HEIGHT / min(w, h)
        big = video.render_many(times, round(w * scale), round(h * scale))
        return np.stack([letterbox(f, size) for f in big])
    scale = size / max(w, h)
    width, height = max(1, round(w * scale)), max(1, round(h * scale))
    frames = video.render_many(times, width, height)
    out = np.zeros((len(frames), size, size, 3), np.uint8)
    top, left = (size - height) // 2, (size - width) // 2
    out[:, top:top + height, left:left + width] = frames
    return out


def pixels(frames: np.ndarray, device=None) -> torch.Tensor:
    """(…, S, S, 3) uint8 -> (…, 3, S, S) float in [0, 1]."""
    return torch.from_numpy(frames).to(device).movedim(-1, -3).float().div_(255.0)


def visual_tokens(model: VideoMa2mba, frames: np.ndarray, train_vision: bool) -> torch.Tensor:
    """frames (B, N, S, S, 3) uint8 -> projected visual tokens (B, N, k, d).

    A frozen encoder sees each distinct frame once: long ShapeWorld videos are mostly a scene's
    empty background, the same pixels again and again.
    """
    b, n = frames.shape[:2]
    flat = frames.reshape(b * n, *frames.shape[2:])
    if train_vision and torch.is_grad_enabled():
        feats = model.vision(pixels(flat, model.device))  # (B*N, k, C)
    else:
        first: dict[bytes, int] = {}  # frame bytes -> index of its distinct frame
        inverse = np.array([first.setdefault(f.tobytes(), len(first)) for f in flat])
        distinct = flat[np.unique(inverse, return_index=True)[1]]  # first occurrences, in index order
        with torch.no_grad():
            feats = model.vision(pixels(distinct, model.device))[torch.from_numpy(inverse).to(model.device)]
    return model.projector(feats).unflatten(0, (b, n))


@dataclass
class Ask:
    """One question asked of one video after it has shown `moment`-th moment's frames."""

    video: int
    moment: int  # index into the list of moments
    question: str
    answer: str
    kind: str


def conversations(asks: list[Ask], turns: int) -> list[list[int]]:
    """Group asks of the same video and moment into conversations of at most `turns` questions."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, a in enumerate(asks):
        groups.setdefault((a.video, a.moment), []).append(i)
    return [g[i:i + turns] for g in groups.values() for i in range(0, len(g), turns)]


def conversation_tokens(model: VideoMa2mba, asks: list[Ask]):
    """The paper's multi-turn template after the video: q1 a1 <|user|> q2 a2 …

    Returns input ids, next-token labels (IGNORE outside answers) and, per position, the index
    into `asks` whose answer that label belongs to (-1 elsewhere).
    """
    stream, owner = [], []
    for i, a in enumerate(asks):
        turn = (model.next_turn_ids() if i else []) + model.question_ids(a.question)
        answer = model.answer_ids(a.answer)
        stream += turn + answer
        owner += [-1] * len(turn) + [i] * len(answer)
    ids, targets, owner = stream[:-1], stream[1:], owner[1:]
    labels = [t if o >= 0 else IGNORE for t, o in zip(targets, owner)]
    return ids, labels, owner


def collate(model: VideoMa2mba, asks: list[Ask], groups: list[list[int]]):
    """-> ids, labels, owner (n_conversations, L), right-padded (padding is never labelled)."""
    seqs = []
    for g in groups:
        ids, labels, owner = conversation_tokens(model, [asks[i] for i in g])
        seqs.append((ids, labels, [g[o] if o >= 0 else -1 for o in owner]))
    width = max(len(s[0]) for s in seqs)
    out = [torch.full((len(seqs), width), fill, dtype=torch.long) for fill in (model.tokenizer.eos_id, IGNORE, -1)]
    for row, seq in enumerate(seqs):
        for tensor, values in zip(out, seq):
            tensor[row, :len(values)] = torch.tensor(values)
    return [t.to(model.device) for t in out]


def prompt_state(model: VideoMa2mba, batch: int) -> State:
    ids = torch.tensor([model.prompt_ids()], device=model.device)
    return model.lm(input_ids=ids, return_logits=False).state.repeat(batch)


def states_at_moments(model: VideoMa2mba, tokens: torch.Tensor, moments: list[int], state: State) -> list[State]:
    """Run frame tokens (B, N, 1 + k, d) through the LM, keeping the state after each moment.

    moments: increasing frame counts; the last one is usually N.
    """
    return run_frames(model, tokens, moments, state)[0]


def run_frames(model: VideoMa2mba, tokens: torch.Tensor, moments: list[int], state: State):
    """states_at_moments, also returning the LM's output at each frame's last token (B, moments[-1], d)."""
    states, outputs, done = [], [], 0
    for m in moments:
        chunk = tokens[:, done:m].flatten(1, 2)  # (B, (m - done)(1 + k), d)
        if chunk.shape[1]:
            hidden, state = model.lm.backbone(chunk, state)
            outputs.append(hidden.unflatten(1, (m - done, -1))[:, :, -1])
        states.append(state)
        done = m
    return states, torch.cat(outputs, 1)


def gather_states(states: list[State], asks: list[Ask], groups: list[list[int]]) -> State:
    """One state per conversation: the state of its video at its moment."""
    batch = states[0][0][0].shape[0]
    stacked = State.cat(states)  # moment-major: row j * batch + b
    first = [asks[g[0]] for g in groups]
    index = torch.tensor([a.moment * batch + a.video for a in first], device=stacked[0][0].device)
    return stacked.map(lambda t: t.index_select(0, index))


def answer_scores(model: VideoMa2mba, state: State, ids, labels, owner, n_asks: int):
    """-> mean cross-entropy per ask (n_asks,) and exact match per ask under teacher forcing (n_asks,) bool.

    Teacher-forced exact match equals greedy decoding's: if every answer token is the argmax given
    the correct prefix, greedy decoding produces exactly that answer.
    """
    out = model.lm(input_ids=ids, state=state, return_logits=False)
    keep = labels != IGNORE
    logits = model.lm.lm_head(out.hidden[keep]).float()  # the LM head runs only where labels are
    logits[:, len(model.tokenizer):] = -float("inf")  # never predict the vocabulary's padding
    token_loss = torch.nn.functional.cross_entropy(logits, labels[keep], reduction="none")
    token_wrong = (logits.argmax(-1) != labels[keep]).float()
    who = owner[keep]
    zeros = torch.zeros(n_asks, device=ids.device)
    counts = zeros.index_add(0, who, torch.ones_like(token_loss))
    loss = zeros.index_add(0, who, token_loss) / counts
    return loss, zeros.index_add(0, who, token_wrong) == 0
