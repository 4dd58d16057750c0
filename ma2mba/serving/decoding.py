"""Answers from a state: the one decoder, for one question streamed or many decoded together.

Each row of the state gets its own prompt (question tokens). Prompts may differ in length: the
common prefix runs in one call, the rest token by token, a row's state frozen once its prompt is
in. Then every row generates until <|endoftext|> or max_new_tokens, and `Decoder.state` holds each
row's state at its end (what a follow-up question continues from).
"""

from __future__ import annotations

import torch

from ..engine.state import State


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, generator=None) -> int:
    """Greedy at temperature 0, else nucleus sampling over the smallest set with mass >= top_p. logits (V,)."""
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_probs, order = probs.sort(descending=True)
    keep = sorted_probs.cumsum(0) - sorted_probs < top_p  # always keeps the most likely token
    sorted_probs = sorted_probs * keep
    choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
    return int(order[choice])


class Decoder:
    """Iterate to get, per generated position, a list with each row's new token id (None once it has ended)."""

    def __init__(
        self,
        model,
        state: State,
        prompts: list[list[int]],
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_p: float = 1.0,
        generator=None,
    ):
        self.model, self.state, self.prompts = model, state, prompts
        self.max_new_tokens, self.temperature, self.top_p, self.generator = (
            max_new_tokens,
            temperature,
            top_p,
            generator,
        )

    @torch.inference_mode()
    def _read_prompts(self) -> torch.Tensor:
        """Feed every prompt from its row of the state -> the logits after each prompt's last token (B, V)."""
        model, prompts, device = self.model, self.prompts, self.model.device
        common = min(map(len, prompts))
        ids = torch.tensor([p[:common] for p in prompts], device=device)
        out = model.lm(input_ids=ids, state=self.state)
        logits, self.state = out.logits[:, -1], out.state
        for i in range(common, max(map(len, prompts))):  # only where prompts differ in length
            active = torch.tensor([i < len(p) for p in prompts], device=device)
            step_ids = torch.tensor([p[i] if i < len(p) else 0 for p in prompts], device=device)
            out = model.lm.step(step_ids, self.state)
            self.state = out.state.where(active, self.state)
            logits = torch.where(active[:, None], out.logits, logits)
        return logits

    @torch.inference_mode()
    def __iter__(self):
        model = self.model
        eos, vocab = model.tokenizer.eos_id, len(model.tokenizer)
        logits = self._read_prompts()
        active = [True] * len(self.prompts)
        for _ in range(self.max_new_tokens):
            tokens = [
                sample_token(row[:vocab], self.temperature, self.top_p, self.generator) if on else None
                for row, on in zip(logits, active)
            ]
            active = [on and t != eos for on, t in zip(active, tokens)]
            yield [t if on else None for t, on in zip(tokens, active)]
            if not any(active):
                return
            mask = torch.tensor(active, device=model.device)
            out = model.lm.step(
                torch.tensor([t if on else eos for t, on in zip(tokens, active)], device=model.device), self.state
            )
            self.state = out.state.where(mask, self.state)
            logits = out.logits
