"""Answers scored from branched states, the training maths of the QA stages.

The central trick is branching: a batch of videos goes through the LM once, its state is kept at a
few moments, and many questions are asked from each kept state in one batched call. Every
answer's gradient flows back through the state into the frames, so one pass over a video
supervises dozens of answers at several lengths (the paper's dense supervision, made cheap by a
recurrent state).
"""

from __future__ import annotations

import torch

from ..data.batches import Ask
from ..engine.state import State
from ..video.model import IGNORE, VideoMa2mba


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
    logits[:, len(model.tokenizer) :] = -float("inf")  # never predict the vocabulary's padding
    token_loss = torch.nn.functional.cross_entropy(logits, labels[keep], reduction="none")
    token_wrong = (logits.argmax(-1) != labels[keep]).float()
    who = owner[keep]
    zeros = torch.zeros(n_asks, device=ids.device)
    counts = zeros.index_add(0, who, torch.ones_like(token_loss))
    loss = zeros.index_add(0, who, token_loss) / counts
    return loss, zeros.index_add(0, who, token_wrong) == 0
