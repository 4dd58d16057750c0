"""Gradient checkpointing for the Mamba-2 backbone, and the MA-GC planner.

Every mode but "none" is one scheme, a grid of cells: the layers are cut into blocks of `l`,
the sequence into segments of `s` tokens, and each (layer block × segment) cell runs under
`torch.utils.checkpoint` (non-reentrant). Forward keeps only what enters each cell: the hidden
state and residual (from the block below) and each layer's (conv, ssm) state (from the segment
before). Backward recomputes one cell at a time and differentiates through it; the gradients of
the carried states flow into the previous segment's cells, down to the initial state.

    mode         l            s
    layer        1            S          per-layer checkpointing
    sqrt         round(√L)    S          the paper's √L baseline
    multi_axis   planned      planned    MA-GC (Video-Ma²mba, arXiv 2411.19460)

Order of the walk. Forward creates the cells segment by segment, bottom block to top. The
autograd engine runs the ready node created last first, so backward takes the last segment from
the top block down, then the segment before, and so on: one cell recomputed at a time.

In multi_axis mode each cell hands its parameter gradients straight to `.grad` (see _stand_ins),
so train with `loss.backward()`; `torch.autograd.grad` with respect to the parameters does not
see them. Gradients with respect to inputs, embeddings and initial states are plain autograd.

The cost model. The peak bytes of one training step (forward and backward, gradient buffers
already allocated, a loss on a few positions) at batch b, sequence S, L layers, blocks of l layers
and segments of s tokens (nb = ⌈L/l⌉ blocks, ns = ⌈S/s⌉ segments) are the larger of

    during backward, at the first cell:
    M(l, s) = b·[ (nb − 1)·S·C_L             hidden + residual entering every block but the first
                + (ns + [ns > 1])·L·C_S      the states entering every segment, and the state
                                             gradients passed to the previous segment
                + l·A(s) + W(s)              the one cell being recomputed: l layers' saved
                                             activations, and one layer's backward working memory
                + S·C_io ]                   the step's own tensors: embeddings, final hidden, its gradient
              + C_head                       a tied LM head's weight gradient, held until the embedding's
    when backward ends:
      b·2·S·d_model·bytes + C_end            the embedding's weight gradient is made, and summed
                                             with the head's when they are tied

The first line is the paper's M(l, s) = (L·S/l)·C_L + (L·S/s)·C_S + l·s·C_grid + s·C_state with the
counts made exact and the terms that every mode shares written out; A(s) ≈ s·C_grid and
W(s) ≈ s·C_state, affine in s. `layer` is M(1, S), `sqrt` is
M(round(√L), S), and `none` keeps everything: L·A(S) + W(S'), the initial states, and S·C_io, where
S' = min(S, 2048/b): without checkpointing the CPU backbone runs long inputs in pieces of 2048
positions (mamba2.CPU_SEGMENT_TOKENS), so a layer's backward works on one piece at a time. (On CUDA the
backbone does not split; there S' = S, and mamba_ssm's fused kernels have constants of their own.)
The final states are not counted: a training step that keeps them adds L·C_S.

The constants come from the config and the dtype: C_L = d_model·(bytes of the hidden + bytes of the
residual), C_S = the bytes of one layer's (conv, ssm) state, C_io = 3·d_model·bytes, C_head =
vocab·d_model·bytes when the head is tied (else 0), C_end = 3·C_head tied, vocab·d_model·bytes
untied. A(s) and W(s) are what OUR layer keeps and works with, so they are measured: the forward
and backward of one layer and of two are traced on fake tensors (shapes, no data; see meter.py),
at one, two, four and eight scan chunks (A from the first two; W with the steepest slope among
them). That takes a fraction of a second, once per config and dtype, and follows any change to the layer's implementation. Autocast is not modelled: under bf16 autocast
the prediction for float32 is an upper bound.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import NamedTuple

import numpy as np
import torch
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from ..engine.config import Mamba2Config
from ..engine.mamba2 import CPU_SEGMENT_TOKENS, Block
from ..engine.state import State
from .meter import LiveStorages, tensor_bytes, without_data

MODES = ("none", "layer", "sqrt", "multi_axis")
# The planner's own limits. Past them a plan is of no use (2^30 tokens is 2,000 hours of video at the
# paper's 145 tokens per frame; 2^50 bytes is a pebibyte), and the search would cost memory for nothing.
MAX_PLAN_SEQ_LEN = 2**30
MAX_PLAN_BUDGET_BYTES = 2**50
# The segment lengths the planner tries: every multiple of the scan chunk up to this many, then as many
# spread geometrically, so the search's memory stays bounded at any length.
MAX_SEGMENT_CANDIDATES = 4096


class CheckpointingError(ValueError):
    """A checkpointing setting that cannot work (unknown mode, bad segment length, ...)."""


def make_checkpointing(config, mode="none", layers_per_block=None, tokens_per_segment=None, budget_bytes=None):
    """The object `Mamba2Backbone` runs under grad: None for "none", else a GridCheckpointing."""
    if mode not in MODES:
        raise CheckpointingError(f"unknown checkpointing mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode != "multi_axis" and (layers_per_block, tokens_per_segment, budget_bytes) != (None, None, None):
        raise CheckpointingError(
            f"layers_per_block, tokens_per_segment and budget_bytes apply to mode 'multi_axis', not {mode!r}"
        )
    if mode == "none":
        return None
    L = config.n_layer
    if mode == "layer":
        return GridCheckpointing(config, layers_per_block=1, tokens_per_segment=math.inf)
    if mode == "sqrt":
        return GridCheckpointing(config, layers_per_block=sqrt_block(L), tokens_per_segment=math.inf)
    chunk = config.ssm.chunk_size
    if budget_bytes is not None and None not in (layers_per_block, tokens_per_segment):
        raise CheckpointingError(
            "with both layers_per_block and tokens_per_segment given, there is nothing "
            "left to fit to budget_bytes: leave one of them (or both) to the planner"
        )
    if layers_per_block is not None and not 1 <= layers_per_block <= L:
        raise CheckpointingError(f"layers_per_block={layers_per_block} must be between 1 and n_layer={L}")
    if tokens_per_segment is not None and (tokens_per_segment < 1 or tokens_per_segment % chunk):
        raise CheckpointingError(
            f"tokens_per_segment={tokens_per_segment} must be a positive multiple of the chunk size {chunk}, "
            "so that segments cut the scan where its chunks end"
        )
    return GridCheckpointing(config, layers_per_block, tokens_per_segment, budget_bytes)


def sqrt_block(n_layer: int) -> int:
    return max(1, round(math.sqrt(n_layer)))


def _cell(backbone, hidden, residual, states, layers: range, last: bool, params: list[dict]):
    """One (layer block × segment) cell: hidden, residual (b, s, d) -> the same after `layers`.

    `params` holds, per layer, stand-ins for its parameters (empty: the parameters themselves).
    The top block also applies the final norm, so its output is all that leaves the grid.
    """
    new_states = []
    for i, (conv, ssm), layer_params in zip(layers, states, params):
        state = (_CompactGradient.apply(conv), ssm)
        hidden, residual, new_state = functional_call(backbone.layers[i], layer_params, (hidden, residual, state))
        new_states.append(new_state)
    if last:
        return backbone.final_norm(hidden, residual), None, new_states
    return hidden, residual, new_states


class _CompactGradient(torch.autograd.Function):
    """Identity whose backward copies the gradient.

    The gradient of a conv state arrives as a slice of the gradient of the conv's whole input
    (s + d_conv - 1 positions); it waits for the previous segment's backward, and a copy keeps
    only its d_conv - 1 positions alive meanwhile.
    """

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.clone()


class _ZeroGradientsTo(torch.autograd.Function):
    """Identity on the grid's output whose backward also sends zero gradients to the final states.

    Otherwise, when the loss does not read the final states, the nodes that only compute them
    never run, and their checkpoint holders keep the last segment's recomputed tensors alive
    until the step's graph is freed (L·s positions of them).
    """

    @staticmethod
    def forward(ctx, hidden, *states):
        ctx.state_specs = [(t.shape, t.dtype, t.device) for t in states]
        return hidden.view_as(hidden)

    @staticmethod
    def backward(ctx, grad, *unused):
        return grad, *(
            torch.zeros((), dtype=dtype, device=device).expand(shape) for shape, dtype, device in ctx.state_specs
        )


def _stand_ins(layer) -> dict:
    """Leaves that share the storage of `layer`'s trainable parameters and hand their gradient
    straight to the parameter's .grad once the cell's backward is done.

    Without them, a parameter used by several segments gets one gradient that the autograd
    engine sums in a buffer until its last use is differentiated: a second copy of every
    parameter's gradient for the whole backward.
    """
    leaves = {}
    for name, p in layer.named_parameters():
        if p.requires_grad:
            leaves[name] = p.detach().requires_grad_()
            leaves[name].register_post_accumulate_grad_hook(partial(_pass_gradient, p))
    return leaves


def _pass_gradient(param, leaf):
    if param.grad is None:
        param.grad = leaf.grad
    else:
        param.grad += leaf.grad
    leaf.grad = None


class GridCheckpointing:
    def __init__(self, config, layers_per_block=None, tokens_per_segment=None, budget_bytes=None):
        self.config = config
        self.layers_per_block = layers_per_block  # None: planned for each call's shape
        self.tokens_per_segment = tokens_per_segment  # math.inf: the whole sequence
        self.budget_bytes = budget_bytes
        # With segments, parameters are used by several cells: pass their gradients on cell by cell.
        self.direct_gradients = tokens_per_segment != math.inf

    def grid(self, seq_len: int, batch: int, dtype) -> tuple[int, int]:
        """(l, s) for one call."""
        l, s = self.layers_per_block, self.tokens_per_segment
        if l is None or s is None:
            p = plan(
                self.config,
                seq_len,
                batch,
                dtype,
                self.budget_bytes,
                modes=("multi_axis",),
                layers_per_block=l,
                tokens_per_segment=s,
            )
            l, s = p.layers_per_block, p.tokens_per_segment
        return l, int(min(s, seq_len))

    def run(self, backbone, hidden, state: State):
        """hidden (b, S, d) embeddings -> final-normed hidden (b, S, d), new State."""
        b, S, _ = hidden.shape
        L = len(backbone.layers)
        l, s = self.grid(S, b, hidden.dtype)
        blocks = [range(i, min(i + l, L)) for i in range(0, L, l)]
        state = list(state)
        outputs = []
        for segment in hidden.split(s, dim=1):
            residual = None
            for block in blocks:
                params = [_stand_ins(backbone.layers[i]) if self.direct_gradients else {} for i in block]
                segment, residual, new = checkpoint(
                    _cell,
                    backbone,
                    segment,
                    residual,
                    [state[i] for i in block],
                    block,
                    block is blocks[-1],
                    params,
                    use_reentrant=False,
                    preserve_rng_state=False,  # the blocks draw no random numbers
                )
                state[block.start : block.stop] = new
            outputs.append(segment)
        state = State(state)
        return _ZeroGradientsTo.apply(torch.cat(outputs, dim=1), *(t for pair in state for t in pair)), state


# --- the planner ---


class MemoryBudgetError(CheckpointingError):
    """No checkpointing plan trains this sequence within the budget."""

    def __init__(self, message: str, longest_seq_len: int):
        super().__init__(message)
        self.longest_seq_len = longest_seq_len


@dataclass(frozen=True)
class Plan:
    mode: str
    layers_per_block: int
    tokens_per_segment: int
    peak_bytes: int  # predicted for this plan
    peak_bytes_by_mode: dict  # predicted for every mode; multi_axis at this plan's grid or its best one


def plan(
    config,
    seq_len: int,
    batch: int = 1,
    dtype=torch.float32,
    budget_bytes=None,
    *,
    modes=MODES,
    layers_per_block=None,
    tokens_per_segment=None,
) -> Plan:
    """Choose how to checkpoint a training step of `seq_len` tokens, among `modes`.

    Without a budget: the plan with the lowest predicted peak (on a tie, the least recomputation).
    With one: the plan with the least recomputation that fits. "none" recomputes nothing; every
    grid recomputes the forward once, and fewer, larger cells lose less time to per-cell
    overhead, so the fitting grid with the fewest cells wins, then the one with the lower peak.
    `layers_per_block` / `tokens_per_segment` fix that axis of the multi_axis grid.
    Raises MemoryBudgetError, naming the longest sequence that fits, when nothing does.
    """
    check_plan_limits(seq_len, budget_bytes)
    model = _CostModel(config, batch, dtype)
    S, L = seq_len, config.n_layer
    by_mode = {mode: model.baseline_peak(mode, S) for mode in ("none", "layer", "sqrt")}
    # (recomputes, cells, peak, mode, l, s) for every candidate
    candidates = [
        (0, 1, by_mode["none"], "none", L, S),
        (1, L, by_mode["layer"], "layer", 1, S),
        (1, math.ceil(L / sqrt_block(L)), by_mode["sqrt"], "sqrt", sqrt_block(L), S),
    ]
    candidates = [c for c in candidates if c[3] in modes]
    if "multi_axis" in modes:
        l_grid, s_grid = model.grids(S, layers_per_block, tokens_per_segment)
        peaks = model.peak(l_grid, s_grid, S)
        cells = np.ceil(L / l_grid) * np.ceil(S / s_grid)
        candidates += [
            (1, int(c), int(p), "multi_axis", int(l), int(s)) for c, p, l, s in zip(cells, peaks, l_grid, s_grid)
        ]
    if budget_bytes is None:
        best = min(candidates, key=lambda c: (c[2], c[0], c[1]))
    else:
        fitting = [c for c in candidates if c[2] <= budget_bytes]
        if not fitting:
            longest = max(max_seq_len(config, budget_bytes, m, batch, dtype) for m in modes)
            raise MemoryBudgetError(
                f"training {S} tokens at batch {batch} needs at least {_gib(min(c[2] for c in candidates))} "
                f"of activation memory, more than the {_gib(budget_bytes)} budget; at most {longest} tokens fit. "
                "Shorten the sequence, lower the batch, or raise the budget.",
                longest,
            )
        best = min(fitting, key=lambda c: (c[0], c[1], c[2]))
    _, _, peak, mode, l, s = best
    grid_peaks = [c[2] for c in candidates if c[3] == "multi_axis"]
    multi_axis = peak if mode == "multi_axis" else min(grid_peaks, default=None)
    return Plan(mode, l, s, peak, {**by_mode, "multi_axis": multi_axis})


def predict_peak_bytes(
    config, seq_len: int, mode: str, batch: int = 1, dtype=torch.float32, layers_per_block=None, tokens_per_segment=None
) -> int:
    """The cost model's peak for one mode (multi_axis: at the given grid, or its best one)."""
    check_plan_limits(seq_len)
    model = _CostModel(config, batch, dtype)
    if mode in ("none", "layer", "sqrt"):
        return model.baseline_peak(mode, seq_len)
    return int(model.peak(*model.grids(seq_len, layers_per_block, tokens_per_segment), seq_len).min())


def max_seq_len(config, budget_bytes: int, mode: str = "multi_axis", batch: int = 1, dtype=torch.float32) -> int:
    """The longest sequence whose training step fits in `budget_bytes` with `mode` (0 if none does).

    MAX_PLAN_SEQ_LEN means "at least that long": the search stops there.
    """
    check_plan_limits(1, budget_bytes)

    def fits(S):
        return predict_peak_bytes(config, S, mode, batch, dtype) <= budget_bytes

    if not fits(1):
        return 0
    hi = 2
    while fits(hi):
        if hi == MAX_PLAN_SEQ_LEN:
            return hi
        hi *= 2
    lo = hi // 2  # fits(lo) and not fits(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def check_plan_limits(seq_len: int, budget_bytes=None) -> None:
    """Refuse, with a sentence, a length or a budget past the planner's limits."""
    if not 1 <= seq_len <= MAX_PLAN_SEQ_LEN:
        raise CheckpointingError(f"the planner takes sequences of 1 to {MAX_PLAN_SEQ_LEN:,} tokens, not {seq_len:,}")
    if budget_bytes is not None and not 0 < budget_bytes <= MAX_PLAN_BUDGET_BYTES:
        raise CheckpointingError(
            f"the planner takes memory budgets above 0 and up to {MAX_PLAN_BUDGET_BYTES / 2**30:,.0f} GiB, "
            f"not {budget_bytes / 2**30:,.3g} GiB"
        )


def segment_candidates(S: int, chunk: int) -> np.ndarray:
    """Segment lengths for S tokens: the chunk's multiples below S (spread geometrically when there are more
    than MAX_SEGMENT_CANDIDATES of them), and S itself."""
    n = -(-S // chunk) - 1  # multiples of the chunk below S
    if n <= MAX_SEGMENT_CANDIDATES:
        multiples = np.arange(1, n + 1)
    else:
        multiples = np.unique(np.geomspace(1, n, MAX_SEGMENT_CANDIDATES).round().astype(np.int64))
    return np.append(multiples * chunk, S)


def _gib(n) -> str:
    return f"{n / 2**30:.2f} GiB"


class _CostModel:
    """M(l, s) of the module docstring for one config, batch and dtype; l and s may be arrays."""

    def __init__(self, config, batch: int, dtype):
        self.config, self.batch, self.dtype = config, batch, dtype
        d, T = config.d_model, config.ssm.chunk_size
        self.B = torch.empty(0, dtype=dtype).element_size()
        R = 4 if config.residual_in_fp32 else self.B
        self.C_L = d * (self.B + R)
        self.C_S = _trace_layer(config, dtype, T).state
        self.C_io = 3 * d * self.B
        # The embedding's dense weight gradient is made when backward ends. A tied head's weight
        # gradient waits for it all through backward, and the two are summed into a third tensor.
        embedding = config.padded_vocab_size * d * self.B
        self.C_head = embedding if config.tie_embeddings else 0
        self.C_end = 3 * embedding if config.tie_embeddings else embedding

    def layer_bytes(self, s):
        """(A, W): one layer's saved activations and backward working memory over s tokens, batch 1."""
        T = self.config.ssm.chunk_size
        if np.max(s) <= T:  # a sequence of one chunk: the scan's chunk is the sequence
            one = _trace_layer(self.config, self.dtype, int(np.max(s)))
            return one.saved, one.work
        chunks = (1, 2, 4, 8)
        traces = [_trace_layer(self.config, self.dtype, k * T) for k in chunks]
        one, two = traces[:2]
        extra = (s - T) / T  # in chunks; the scan pads at most one short chunk of its own
        # The working memory is not quite affine at a few chunks: which moment of the backward is
        # the peak can change with the length. Its steepest slope up to 8 chunks keeps W an upper bound.
        work_slope = max((b.work - a.work) / (kb - ka) for a, b, ka, kb in zip(traces, traces[1:], chunks, chunks[1:]))
        return one.saved + extra * (two.saved - one.saved), one.work + extra * work_slope

    def peak(self, l, s, S, recompute=True, work_tokens=None):
        """work_tokens: the length one layer's backward works on at a time (default: the cell's s)."""
        L, b = self.config.n_layer, self.batch
        if recompute:  # nb - 1 block boundaries; the states into every segment, and their gradients
            ns = np.ceil(S / s)
            stored = (np.ceil(L / l) - 1) * S * self.C_L + (ns + (ns > 1)) * L * self.C_S
        else:  # plain autograd: the initial states
            stored = L * self.C_S
        A, W = self.layer_bytes(s)
        if work_tokens is not None:
            W = self.layer_bytes(work_tokens)[1]
        during = b * (stored + l * A + W + S * self.C_io) + self.C_head
        # When backward ends: the output, the embeddings' gradient, the head's.
        end = b * 2 * S * self.config.d_model * self.B + self.C_end
        return np.maximum(during, end).astype(np.int64)

    def baseline_peak(self, mode: str, S: int) -> int:
        """M for "none" (everything kept; a layer's backward works on one CPU piece at a time),
        "layer" (M(1, S)) or "sqrt" (M(round(√L), S))."""
        L = self.config.n_layer
        if mode == "none":
            piece = min(S, max(1, CPU_SEGMENT_TOKENS // self.batch))
            return int(self.peak(L, S, S, recompute=False, work_tokens=piece))
        return int(self.peak(1 if mode == "layer" else sqrt_block(L), S, S))

    def grids(self, S: int, l=None, s=None):
        """Every multi_axis grid (l, s) for S tokens, as two flat arrays."""
        L, T = self.config.n_layer, self.config.ssm.chunk_size
        ls = np.arange(1, L + 1) if l is None else np.array([l])
        if s is not None or S <= T:
            ss = np.array([min(s or S, S)])
        else:
            ss = segment_candidates(S, T)
        l_grid, s_grid = np.meshgrid(ls, ss, indexing="ij")
        return l_grid.ravel(), s_grid.ravel()


class LayerBytes(NamedTuple):
    saved: int  # what one more layer keeps for backward
    work: int  # the rest of one layer's peak during its backward: gradients in flight, temporaries
    state: int  # its (conv, ssm) state


@lru_cache(maxsize=256)
def _trace_layer_cached(config_json: str, dtype, n: int) -> LayerBytes:
    config = Mamba2Config.from_dict(json.loads(config_json))
    fake, default = without_data(), torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # fake parameters cannot be converted afterwards: make them in `dtype`
    try:
        with fake:
            blocks = [Block(config, i) for i in range(2)]
    finally:
        torch.set_default_dtype(default)
    # Traced as the dtype says, whatever the caller's grad mode and autocast (an upper bound under bf16 autocast).
    with fake, torch.enable_grad(), torch.autocast("cpu", enabled=False):
        state = blocks[0].mixer.empty_state(1, dtype)
        after_forward, peak = [], []
        for k in (1, 2):  # one layer and two: their difference is what a layer keeps, wherever it is
            hidden = torch.empty(1, n, config.d_model, dtype=dtype, requires_grad=True)
            residual = torch.empty(
                1, n, config.d_model, dtype=state[1].dtype if config.residual_in_fp32 else dtype, requires_grad=True
            )
            with LiveStorages() as meter:
                outputs = (hidden, residual)
                for block in blocks[:k]:
                    *outputs, _ = block(*outputs, state)
                after_forward.append(meter.live)
                sum(t.sum() for t in outputs).backward()
            peak.append(meter.peak)
    saved = after_forward[1] - after_forward[0]
    return LayerBytes(saved, peak[0] - saved, tensor_bytes(state))


def _trace_layer(config, dtype, n: int) -> LayerBytes:
    """One layer's memory over n tokens at batch 1, measured on fake tensors."""
    return _trace_layer_cached(json.dumps(config.to_dict(), sort_keys=True), dtype, n)
