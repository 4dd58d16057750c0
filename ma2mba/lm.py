"""Mamba2LM: embedding -> Mamba-2 blocks -> norm_f -> lm_head (tied), mamba_ssm's MambaLMHeadModel.

The recurrent state is exact: running a sequence in one call, in pieces that hand the state on,
or token by token with `step` gives the same logits and the same final state.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn

from .config import Mamba2Config
from .mamba2 import Block, make_norm

CPU_SEGMENT_TOKENS = 2048  # positions (over the batch) per piece of a long CPU forward; see Mamba2Backbone


class State(tuple):
    """Per-layer (conv_state, ssm_state) pairs: the whole memory of everything seen so far."""

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self for t in layer)

    def map(self, fn) -> "State":
        return State((fn(conv), fn(ssm)) for conv, ssm in self)

    def clone(self) -> "State":
        return self.map(torch.Tensor.clone)

    def detach(self) -> "State":
        return self.map(torch.Tensor.detach)

    def repeat(self, n: int) -> "State":
        """Repeat along the batch: a batch-1 state becomes n copies that can branch."""
        return self.map(lambda t: t.repeat_interleave(n, dim=0))

    def where(self, mask: torch.Tensor, other: "State") -> "State":
        """Rows where mask (B,) is True as in self, the others as in `other`."""
        pick = lambda a, b: torch.where(mask.view(-1, *[1] * (a.dim() - 1)), a, b)  # noqa: E731
        return State((pick(c1, c0), pick(s1, s0)) for (c1, s1), (c0, s0) in zip(self, other))

    @staticmethod
    def cat(states) -> "State":
        states = list(states)
        if type(states[0]) is not State:  # a subclass (the Transformer's KV cache) joins rows its own way
            return type(states[0]).cat(states)
        return State(
            (torch.cat([s[i][0] for s in states]), torch.cat([s[i][1] for s in states])) for i in range(len(states[0]))
        )


class LMOutput(NamedTuple):
    logits: torch.Tensor | None  # (b, l, vocab) from forward, (b, vocab) from step
    state: State
    hidden: torch.Tensor  # final-normed hidden states, (b, l, d) or (b, d)


class Mamba2Backbone(nn.Module):
    """mamba_ssm's MixerModel: `backbone.embedding`, `backbone.layers.{i}`, `backbone.norm_f`."""

    def __init__(self, config: Mamba2Config):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.padded_vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm_f = make_norm(config, config.d_model)
        self.checkpointing = None  # set by Mamba2LM.set_checkpointing
        # On CPU, long inputs run in segments of this many positions (over the batch), handing the
        # state on: exact, and every intermediate stays small. Whole 16k-token tensors made fresh
        # pages for every op (glibc maps allocations over 32 MB anew each time) and ran 1.5-2x slower.
        self.segment_tokens = CPU_SEGMENT_TOKENS

    def empty_state(self, batch: int, dtype=torch.float32, device=None) -> State:
        return State(layer.mixer.empty_state(batch, dtype, device) for layer in self.layers)

    def final_norm(self, hidden, residual):
        residual = hidden if residual is None else hidden + residual
        return self.norm_f(residual.to(self.norm_f.weight.dtype))

    def run_layers(self, hidden, residual, state, layers: range):
        """Run `layers` over hidden/residual (b, l, d); `state` holds one entry per layer run."""
        new_state = []
        for i, layer_state in zip(layers, state):
            hidden, residual, layer_state = self.layers[i](hidden, residual, layer_state)
            new_state.append(layer_state)
        return hidden, residual, new_state

    def forward(self, hidden, state: State | None = None):
        """hidden (b, l, d) embeddings -> normed hidden (b, l, d), new State."""
        if state is None:
            state = self.empty_state(hidden.shape[0], hidden.dtype, hidden.device)
        if self.checkpointing is not None and torch.is_grad_enabled():
            return self.checkpointing.run(self, hidden, state)
        b, l, _ = hidden.shape
        segment = l if hidden.is_cuda else max(1, self.segment_tokens // b)
        outputs = []
        for piece in hidden.split(segment, dim=1):
            piece, residual, state = self.run_layers(piece, None, state, range(len(self.layers)))
            outputs.append(self.final_norm(piece, residual))
        return (outputs[0] if len(outputs) == 1 else torch.cat(outputs, 1)), State(state)

    def step(self, hidden, state: State):
        """hidden (b, d), one position -> normed hidden (b, d), new State."""
        residual, new_state = None, []
        for layer, layer_state in zip(self.layers, state):
            hidden, residual, layer_state = layer.step(hidden, residual, layer_state)
            new_state.append(layer_state)
        return self.final_norm(hidden, residual), State(new_state)


class Mamba2LM(nn.Module):
    def __init__(self, config: Mamba2Config):
        super().__init__()
        self.config = config
        self.backbone = Mamba2Backbone(config)
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False)
        self.apply(self._init_module)
        self._rescale_residual_projections()
        if config.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    # --- initialisation (mamba_ssm's _init_weights) ---
    @staticmethod
    def _init_module(module):
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    @torch.no_grad()
    def _rescale_residual_projections(self):
        # Output projections feed the residual stream; scale them so its variance does not grow with depth.
        per_layer = 2 if self.config.d_intermediate > 0 else 1
        for name, p in self.named_parameters():
            if name.endswith(("out_proj.weight", "fc2.weight")):
                nn.init.kaiming_uniform_(p, a=math.sqrt(5))
                p /= math.sqrt(per_layer * self.config.n_layer)

    @torch.no_grad()
    def add_mlp(self, d_intermediate: int) -> None:
        """Give every block an MLP (mamba_ssm's d_intermediate) that starts as the identity.

        The new MLPs' output projections start at zero, so the model computes exactly what it did
        before; training then grows them. This lets a trained MLP-free model gain per-token
        capacity without starting over.
        """
        if self.config.d_intermediate > 0:
            raise ValueError(f"the blocks already have MLPs (d_intermediate={self.config.d_intermediate})")
        p = self.lm_head.weight
        for layer in self.backbone.layers:
            layer.attach_mlp(self.config, d_intermediate)
            for new in (layer.norm2, layer.mlp):  # only the new parts: the rest keeps its dtypes
                new.to(p.device, p.dtype)
            nn.init.zeros_(layer.mlp.fc2.weight)
        self.config.d_intermediate = d_intermediate

    def insert_layers(self, positions) -> None:
        """Insert fresh blocks so that they sit at `positions` of the grown stack, each starting as the identity.

        A new block's output projections (the mixer's out_proj and its MLP's fc2) start at zero, so the
        model computes exactly what it did before. Everything else in it has a fresh start, mamba_ssm's
        initialisation, so it can learn what the trained blocks, settled in their ways, learn slowly.
        """
        layers = list(self.backbone.layers)
        final = len(layers) + len(positions)
        if len(set(positions)) != len(positions) or not all(0 <= p < final for p in positions):
            raise ValueError(f"positions {positions} must be distinct indices into the grown stack of {final} blocks")
        p = self.lm_head.weight
        for position in sorted(positions):
            block = Block(self.config, position).to(p.device, p.dtype)
            nn.init.zeros_(block.mixer.out_proj.weight)
            if block.mlp is not None:
                nn.init.zeros_(block.mlp.fc2.weight)
            layers.insert(position, block)
        for i, block in enumerate(layers):
            block.mixer.layer_idx = i
        self.backbone.layers = nn.ModuleList(layers)
        self.config.n_layer = final

    def grow_state(self, d_state: int) -> None:
        """Widen every mixer's SSM state to `d_state`, computing exactly what it did before.

        The new state dimensions are written through fresh random B rows and read through C rows that
        start at zero (with a zero conv bias, so C's new entries are silu(0) = 0): the model's output is
        unchanged, and C's gradient is not, so training starts reading the new memory at once.
        """
        old = self.config.ssm
        if d_state <= old.d_state:
            raise ValueError(f"d_state={d_state} does not grow the state (it is {old.d_state})")
        self.config.ssm_cfg = {**self.config.ssm_cfg, "d_state": d_state}
        new = self.config.ssm
        for layer in self.backbone.layers:
            layer.mixer.widen_state(new)

    def widen_conv(self, d_conv: int) -> None:
        """Widen every mixer's causal convolution to `d_conv` taps, computing exactly what it did before.

        The convolution is the only place where a Mamba-2 token reads its neighbours directly; whatever
        lies further back must be carried in the state. A question's subject ("red star") sits 4-6 tokens
        before the answer, beyond the default 4 taps (results/oracle_frames/; what widening did on the
        whole task: results/conv_width/).
        """
        if d_conv <= self.config.ssm.d_conv:
            raise ValueError(f"d_conv={d_conv} does not widen the convolution (it is {self.config.ssm.d_conv})")
        self.config.ssm_cfg = {**self.config.ssm_cfg, "d_conv": d_conv}
        for layer in self.backbone.layers:
            layer.mixer.widen_conv(self.config.ssm)

    # --- running ---
    def empty_state(self, batch: int = 1, dtype=None, device=None) -> State:
        p = self.lm_head.weight
        return self.backbone.empty_state(batch, dtype or p.dtype, device or p.device)

    def embed(self, input_ids):
        return self.backbone.embedding(input_ids)

    def forward(self, input_ids=None, inputs_embeds=None, state: State | None = None, return_logits: bool = True):
        """input_ids (b, l) or inputs_embeds (b, l, d) -> LMOutput(logits (b, l, vocab), state, hidden).

        return_logits=False skips the LM head: training code applies `lm_head` only where labels are.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        hidden = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        hidden, state = self.backbone(hidden, state)
        return LMOutput(self.lm_head(hidden) if return_logits else None, state, hidden)

    def step(self, input_ids=None, state: State | None = None, inputs_embeds=None):
        """One token per sequence: input_ids (b,) or (b, 1) -> LMOutput(logits (b, vocab), state, hidden)."""
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids.reshape(-1))
        elif inputs_embeds.dim() == 3:
            inputs_embeds = inputs_embeds[:, 0]
        if state is None:
            state = self.empty_state(inputs_embeds.shape[0])
        hidden, state = self.backbone.step(inputs_embeds, state)
        return LMOutput(self.lm_head(hidden), state, hidden)

    def set_checkpointing(self, mode: str = "none", layers_per_block=None, tokens_per_segment=None, budget_bytes=None):
        """Choose how activations are kept for backward: "none", "layer", "sqrt" or "multi_axis"."""
        from .checkpointing import make_checkpointing

        self.backbone.checkpointing = make_checkpointing(
            self.config, mode, layers_per_block=layers_per_block,
            tokens_per_segment=tokens_per_segment, budget_bytes=budget_bytes,
        )
        return self

    # --- loading and saving (mamba_ssm's folder format) ---
    @classmethod
    def from_pretrained(cls, name_or_path, dtype=torch.float32, device=None) -> "Mamba2LM":
        """Load config.json + model.safetensors or pytorch_model.bin, from a folder or the Hub."""
        from .hub import find_weights, load_state_dict, resolve_model_dir

        folder = resolve_model_dir(name_or_path, files=("config.json", "model.safetensors", "pytorch_model.bin"))
        config = Mamba2Config.from_json(folder / "config.json")
        model = cls(config)
        model.load_state_dict(normalize_state_dict(load_state_dict(find_weights(folder)), config))
        return model.to(dtype=dtype, device=device)

    def save_pretrained(self, folder) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.save_json(folder / "config.json")
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        if self.config.tie_embeddings:
            tensors.pop("lm_head.weight")  # the same tensor as the embedding
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def normalize_state_dict(sd: dict, config: Mamba2Config) -> dict:
    """Accept mamba_ssm checkpoints with or without a (tied) lm_head.weight entry."""
    sd = dict(sd)
    if config.tie_embeddings:
        sd["lm_head.weight"] = sd["backbone.embedding.weight"]
    elif "lm_head.weight" not in sd:
        raise KeyError("untied checkpoint without lm_head.weight")
    return sd


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())

