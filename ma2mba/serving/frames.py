"""Frames to a state: the one path that the session, training and evaluation all take.

    frames (B, N, H, W, 3) uint8 --vision--> features --projector--> visual tokens (B, N, k, d)
    + a time marker before each frame                                 -> frame tokens (B, N, 1 + k, d)
    --LM, state in, state out-->                                      -> State (and the LM's outputs)

Streaming a video frame by frame and running it through in one call reach the same State (the
LM's state is exact), so a session, a training batch and an evaluation batch agree.
"""

from __future__ import annotations

import numpy as np
import torch

from ..engine.state import State
from ..video.vision import frames_to_tensor


def frame_tokens(model, frames, times, train_vision: bool = False) -> torch.Tensor:
    """frames (B, N, H, W, 3) uint8 of any size (letterboxed to the model's input), shown at `times` (N,)
    -> (B, N, 1 + k, d): each frame's time marker, then its visual tokens.

    A frozen encoder sees each distinct frame once: long ShapeWorld videos are mostly a scene's empty
    background, the same pixels again and again. With train_vision (and gradients on) every frame goes
    through it, so its gradient reaches every frame.
    """
    frames = np.asarray(frames)
    b, n = frames.shape[:2]
    flat = frames.reshape(b * n, *frames.shape[2:])
    size, device, dtype = model.vision.cfg.image_size, model.device, model.projector[0].weight.dtype
    pixels = lambda f: frames_to_tensor(f, size, device).to(dtype)
    if train_vision and torch.is_grad_enabled():
        features = model.vision(pixels(flat))  # (B*N, k, C)
    else:
        first: dict[bytes, int] = {}  # frame bytes -> index of its distinct frame
        inverse = np.array([first.setdefault(f.tobytes(), len(first)) for f in flat])
        distinct = flat[np.unique(inverse, return_index=True)[1]]  # first occurrences, in index order
        with torch.no_grad():
            features = model.vision(pixels(distinct))[torch.from_numpy(inverse).to(device)]
    visual = model.projector(features)
    return model.frame_embeds(visual.unflatten(0, (b, n)), times)


def prompt_state(model, batch: int = 1) -> State:
    """The state after the chat template's opening (system prompt, then <|user|>), for `batch` rows."""
    ids = torch.tensor([model.prompt_ids()], device=model.device)
    return model.lm(input_ids=ids, return_logits=False).state.repeat(batch)


def run_frames(model, tokens: torch.Tensor, state: State, moments=None) -> tuple[list[State], torch.Tensor]:
    """Frame tokens (B, N, 1 + k, d) through the LM from `state`.

    Returns the state after each of `moments` (increasing frame counts; default: [N]) and the LM's
    output at each frame's last token, (B, moments[-1], d), which training may put a loss on.
    """
    moments = [tokens.shape[1]] if moments is None else moments
    states, outputs, done = [], [], 0
    for m in moments:
        chunk = tokens[:, done:m].flatten(1, 2)  # (B, (m - done)(1 + k), d)
        if chunk.shape[1]:
            hidden, state = model.lm.backbone(chunk, state)
            outputs.append(hidden.unflatten(1, (m - done, -1))[:, :, -1])
        states.append(state)
        done = m
    return states, torch.cat(outputs, 1) if outputs else tokens.new_zeros(tokens.shape[0], 0, tokens.shape[-1])


@torch.inference_mode()
def watch(model, frames, times, state: State | None = None, chunk_frames: int = 512) -> State:
    """Every frame of (B, N, H, W, 3) shown at `times` (N,) into the state (default: a fresh prompt state).

    Chunks of `chunk_frames` keep the memory of hour-long videos bounded.
    """
    frames = np.asarray(frames)
    times = np.asarray(times)
    state = prompt_state(model, frames.shape[0]) if state is None else state
    for i in range(0, frames.shape[1], chunk_frames):
        tokens = frame_tokens(model, frames[:, i : i + chunk_frames], times[i : i + chunk_frames])
        state = run_frames(model, tokens, state)[0][-1]
    return state
