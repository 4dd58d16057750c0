"""Questions asked of a batch of videos -> token tensors: the paper's multi-turn template after the video.

A training batch asks many questions of each video, at several moments: an `Ask` names its video
and moment; asks of the same video and moment are grouped into conversations, and the
conversations are collated into right-padded id and label tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..video.model import IGNORE, VideoMa2mba


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
    return [g[i : i + turns] for g in groups.values() for i in range(0, len(g), turns)]


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
            tensor[row, : len(values)] = torch.tensor(values)
    return [t.to(model.device) for t in out]
