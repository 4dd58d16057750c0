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

from ..hub import ModelFileError, find_weights, load_checked, read_weights, resolve_model_dir
from ..memory.checkpointing import make_checkpointing
from .config import Mamba2Config
from .mamba2 import CPU_SEGMENT_TOKENS, Block, make_norm
from .state import State


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
        self.backbone.checkpointing = make_checkpointing(
            self.config,
            mode,
            layers_per_block=layers_per_block,
            tokens_per_segment=tokens_per_segment,
            budget_bytes=budget_bytes,
        )
        return self

    # --- loading and saving (mamba_ssm's folder format) ---
    @classmethod
    def from_pretrained(cls, name_or_path, dtype=torch.float32, device=None) -> Mamba2LM:
        """Load config.json + model.safetensors or pytorch_model.bin, from a folder or the Hub."""
        folder = resolve_model_dir(name_or_path, files=("config.json", "model.safetensors", "pytorch_model.bin"))
        try:
            config = Mamba2Config.from_json(folder / "config.json")
        except (ValueError, TypeError) as e:  # JSONDecodeError is a ValueError
            raise ModelFileError(f"{folder / 'config.json'} is not a Mamba-2 config: {e}") from e
        model = cls(config)
        weights = find_weights(folder)
        state = read_weights(weights)
        if config.tie_embeddings and "backbone.embedding.weight" in state:
            state["lm_head.weight"] = state["backbone.embedding.weight"]  # mamba_ssm saves the tied head or not
        load_checked(model, state, weights)
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


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
