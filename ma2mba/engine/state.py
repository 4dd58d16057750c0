"""State: the whole memory of a Mamba-2 LM, one (conv_state, ssm_state) pair per layer.

It is exact: a sequence run in one call, in pieces that hand the state on, or token by token
reaches the same State. Everything that branches, rewinds or batches questions rests on that.
"""

from __future__ import annotations

import torch


class State(tuple):
    """Per-layer (conv_state, ssm_state) pairs: the whole memory of everything seen so far."""

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self for t in layer)

    def map(self, fn) -> State:
        return State((fn(conv), fn(ssm)) for conv, ssm in self)

    def clone(self) -> State:
        return self.map(torch.Tensor.clone)

    def detach(self) -> State:
        return self.map(torch.Tensor.detach)

    def repeat(self, n: int) -> State:
        """Repeat along the batch: a batch-1 state becomes n copies that can branch."""
        return self.map(lambda t: t.repeat_interleave(n, dim=0))

    def where(self, mask: torch.Tensor, other: State) -> State:
        """Rows where mask (B,) is True as in self, the others as in `other`."""
        pick = lambda a, b: torch.where(mask.view(-1, *[1] * (a.dim() - 1)), a, b)
        return State((pick(c1, c0), pick(s1, s0)) for (c1, s1), (c0, s0) in zip(self, other))

    @staticmethod
    def cat(states) -> State:
        states = list(states)
        if type(states[0]) is not State:  # a subclass (the Transformer's KV cache) joins rows its own way
            return type(states[0]).cat(states)
        return State(
            (torch.cat([s[i][0] for s in states]), torch.cat([s[i][1] for s in states])) for i in range(len(states[0]))
        )
