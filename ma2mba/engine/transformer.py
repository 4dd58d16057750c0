"""The Transformer baseline: a decoder-only LM with full causal attention, a drop-in for Mamba2LM.

Pre-norm blocks (RMSNorm -> multi-head attention with rotary positions -> residual, RMSNorm ->
SwiGLU MLP -> residual), a final norm and a tied LM head: nanoGPT with LLaMA's choices. Rotary
positions keep the length open, as Mamba's is.

Its "state" is the KV cache, a `State` whose per-layer pairs are (k, v), each (B, H, T, D), so the
video model streams, branches and batches it exactly as it does Mamba's state. The difference is
the point of the comparison: Mamba's state has a fixed size, the cache grows with every token.

Rows of one batch may have seen different numbers of tokens (questions branch from several
moments of a video, evaluation feeds questions of different lengths). The cache therefore carries
`valid` (B, T): which slots hold a token of that row. Padding slots are never attended, and a
row's positions count only its valid slots, so a padded row computes what it would alone.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .config import Mamba2Config
from .lm import Mamba2LM, count_parameters
from .state import State

ARCHITECTURE = "transformer"  # the "architecture" field of a TransformerConfig's dict


class CheckpointingModeError(ValueError):
    """A gradient-checkpointing mode the Transformer does not have."""


@dataclass
class TransformerConfig:
    d_model: int = 256
    n_layer: int = 8
    n_head: int = 4
    d_intermediate: int = 683  # SwiGLU hidden width
    vocab_size: int = 1000
    pad_vocab_size_multiple: int = 8
    rope_theta: float = 10000.0
    norm_epsilon: float = 1e-5
    tie_embeddings: bool = True

    def __post_init__(self):
        if self.d_model % self.n_head or (self.d_model // self.n_head) % 2:
            raise ValueError(f"d_model={self.d_model} must split into {self.n_head} heads of even width (rotary)")

    @property
    def headdim(self) -> int:
        return self.d_model // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return int(math.ceil(self.vocab_size / m) * m)

    def to_dict(self) -> dict:
        return {"architecture": ARCHITECTURE, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> TransformerConfig:
        return cls(**{k: v for k, v in d.items() if k != "architecture"})


def transformer_params(config: TransformerConfig) -> int:
    """Parameter count, by formula (the test checks it against the module)."""
    d, h = config.d_model, config.d_intermediate
    per_layer = 4 * d * d + 3 * d * h + 2 * d  # qkv + out_proj, fc1 (gate and value) + fc2, two norms
    head = 0 if config.tie_embeddings else config.padded_vocab_size * d
    return config.n_layer * per_layer + config.padded_vocab_size * d + d + head


def mamba_params(config: Mamba2Config) -> int:

    with torch.device("meta"):  # shapes only: counts a 2.7B config without allocating it
        return count_parameters(Mamba2LM(config))


def matched_transformer_config(mamba: Mamba2Config, headdim: int = 64) -> TransformerConfig:
    """A Transformer with the Mamba LM's width, vocabulary and (if it can) depth, and its parameter count.

    A Mamba-2 layer has about 6·d² parameters (in_proj 4·d², out_proj 2·d² at expand 2); attention
    takes 4·d², so the SwiGLU MLP gets the rest, about 2·d² (hidden width ≈ 2d/3). Where a Mamba
    layer is smaller than attention alone (expand 1), the Transformer has fewer layers instead.
    """
    target = mamba_params(mamba)
    d = mamba.d_model
    n_head = max(1, d // headdim)
    base = TransformerConfig(
        d_model=d,
        n_layer=mamba.n_layer,
        n_head=n_head,
        d_intermediate=0,
        vocab_size=mamba.vocab_size,
        pad_vocab_size_multiple=mamba.pad_vocab_size_multiple,
        norm_epsilon=mamba.norm_epsilon,
        tie_embeddings=mamba.tie_embeddings,
    )
    for n_layer in range(mamba.n_layer, 0, -1):
        without_mlp = transformer_params(dataclasses.replace(base, n_layer=n_layer))
        hidden = 8 * round((target - without_mlp) / (3 * d * n_layer) / 8)  # a multiple of 8
        if hidden >= 8:
            config = dataclasses.replace(base, n_layer=n_layer, d_intermediate=hidden)
            break
    else:
        raise ValueError(f"no Transformer of width {d} has as few parameters as this Mamba-2 ({target})")
    if abs(transformer_params(config) / target - 1) > 0.05:
        raise ValueError(f"closest Transformer has {transformer_params(config)} parameters, Mamba-2 {target}")
    return config


# --- the KV cache ---
class KVCache(State):
    """Per-layer (k, v), each (B, H, T, D), and `valid` (B, T): which slots hold a token of the row."""

    def __new__(cls, layers, valid: torch.Tensor):
        cache = super().__new__(cls, layers)
        cache.valid = valid
        return cache

    @property
    def length(self) -> int:
        return self.valid.shape[1]

    def positions(self) -> torch.Tensor:
        """(B,) the position of each row's next token: how many tokens it has seen."""
        return self.valid.sum(1)

    def nbytes(self) -> int:
        return super().nbytes() + self.valid.numel() * self.valid.element_size()

    def map(self, fn) -> KVCache:
        return KVCache(((fn(k), fn(v)) for k, v in self), fn(self.valid))

    def append(self, layers, n: int) -> KVCache:
        """The cache after n more tokens per row, whose keys and values are `layers`."""
        new = torch.ones(self.valid.shape[0], n, dtype=torch.bool, device=self.valid.device)
        return KVCache(layers, torch.cat([self.valid, new], 1))

    def where(self, mask: torch.Tensor, other: KVCache) -> KVCache:
        """Rows where mask (B,) is True as in self, the others as in `other`, an earlier cache of the
        same rows: the tokens they were fed since are marked invalid instead of removed."""
        valid = self.valid.clone()
        valid[~mask, other.length :] = False
        return KVCache(self, valid)

    @staticmethod
    def cat(caches) -> KVCache:
        """Join caches along the batch; shorter ones are padded at the end with invalid slots."""
        caches = list(caches)
        t = max(c.length for c in caches)
        pad = lambda x, dim: F.pad(x, (0, 0) * (x.dim() - 1 - dim) + (0, t - x.shape[dim]))
        layers = [
            (torch.cat([pad(c[i][0], 2) for c in caches]), torch.cat([pad(c[i][1], 2) for c in caches]))
            for i in range(len(caches[0]))
        ]
        return KVCache(layers, torch.cat([pad(c.valid, 1) for c in caches]))


# --- modules ---
def rotate(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary position embedding. x (B, H, L, D), positions (B, L) -> x rotated, (B, H, L, D)."""
    half = x.shape[-1] // 2
    dtype = torch.promote_types(x.dtype, torch.float32)  # angles of long positions need at least float32
    inv_freq = theta ** (-torch.arange(half, device=x.device, dtype=dtype) / half)
    angles = positions[:, None, :, None].to(dtype) * inv_freq  # (B, 1, L, D/2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)


class Attention(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.out_proj = nn.Linear(config.d_model, config.d_model, bias=False)

    def forward(self, x, positions, cache_kv, mask):
        """x (B, L, d), positions (B, L), cache_kv: the layer's (k, v) so far, mask (B, 1, L, T + L)
        or None for plain causal attention -> (B, L, d) and the layer's new (k, v)."""
        b, l, _ = x.shape
        q, k, v = self.qkv(x).view(b, l, 3, self.config.n_head, self.config.headdim).permute(2, 0, 3, 1, 4)
        q, k = rotate(q, positions, self.config.rope_theta), rotate(k, positions, self.config.rope_theta)
        k, v = torch.cat([cache_kv[0], k], 2), torch.cat([cache_kv[1], v], 2)  # (B, H, T + L, D)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)  # (B, H, L, D)
        return self.out_proj(y.transpose(1, 2).reshape(b, l, self.config.d_model)), (k, v)


class SwiGLU(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.d_model, 2 * config.d_intermediate, bias=False)  # value and gate
        self.fc2 = nn.Linear(config.d_intermediate, config.d_model, bias=False)

    def forward(self, x):
        value, gate = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(value * F.silu(gate))


class TransformerBlock(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.norm1 = nn.RMSNorm(config.d_model, eps=config.norm_epsilon)
        self.attn = Attention(config)
        self.norm2 = nn.RMSNorm(config.d_model, eps=config.norm_epsilon)
        self.mlp = SwiGLU(config)

    def forward(self, x, positions, cache_kv, mask):
        y, kv = self.attn(self.norm1(x), positions, cache_kv, mask)
        x = x + y
        return x + self.mlp(self.norm2(x)), kv


class TransformerBackbone(nn.Module):
    """Same attribute names as Mamba2Backbone (`embedding`, `layers`, `norm_f`), so the video model's
    saving and loading work unchanged."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.padded_vocab_size, config.d_model)
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layer))
        self.norm_f = nn.RMSNorm(config.d_model, eps=config.norm_epsilon)
        self.checkpoint_layers = False  # set by TransformerLM.set_checkpointing

    def empty_state(self, batch: int, dtype=torch.float32, device=None) -> KVCache:
        c = self.config
        empty = lambda: torch.zeros(batch, c.n_head, 0, c.headdim, dtype=dtype, device=device)
        return KVCache(
            [(empty(), empty()) for _ in range(c.n_layer)], torch.zeros(batch, 0, dtype=torch.bool, device=device)
        )

    def forward(self, hidden, state: KVCache | None = None):
        """hidden (b, l, d) embeddings -> normed hidden (b, l, d), the cache with these tokens added."""
        b, l, _ = hidden.shape
        hidden = hidden.to(
            self.norm_f.weight.dtype
        )  # the residual stream stays in the weights' precision under autocast
        if state is None:
            state = self.empty_state(b, hidden.dtype, hidden.device)
        positions = state.positions()[:, None] + torch.arange(l, device=hidden.device)  # (B, L)
        mask = None  # plain causal attention when there is nothing before
        if state.length:
            causal = torch.ones(l, l, dtype=torch.bool, device=hidden.device).tril()
            mask = torch.cat([state.valid[:, None, :].expand(b, l, -1), causal.expand(b, l, l)], 2)[:, None]
        new_kv = []
        for layer, cache_kv in zip(self.layers, state):
            if self.checkpoint_layers and torch.is_grad_enabled():
                hidden, kv = checkpoint(layer, hidden, positions, cache_kv, mask, use_reentrant=False)
            else:
                hidden, kv = layer(hidden, positions, cache_kv, mask)
            new_kv.append(kv)
        return self.norm_f(hidden), state.append(new_kv, l)

    def step(self, hidden, state: KVCache):
        """hidden (b, d), one position -> normed hidden (b, d), the cache one token longer."""
        hidden, state = self(hidden[:, None], state)
        return hidden[:, 0], state


class TransformerLM(nn.Module):
    """Mamba2LM's interface: forward, step, embed, backbone, lm_head, empty_state, set_checkpointing."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.backbone = TransformerBackbone(config)
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False)
        self.apply(self._init_module)
        with torch.no_grad():  # residual projections: keep the residual stream's variance flat with depth
            for name, p in self.named_parameters():
                if name.endswith(("out_proj.weight", "fc2.weight")):
                    p /= math.sqrt(2 * config.n_layer)
        if config.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    @staticmethod
    def _init_module(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    # Running is Mamba2LM's, line for line: a backbone that takes and returns a state (here the
    # KV cache), then the tied head. Sharing the functions keeps the two models' contracts identical.
    empty_state = Mamba2LM.empty_state
    embed = Mamba2LM.embed
    forward = Mamba2LM.forward
    step = Mamba2LM.step

    def set_checkpointing(self, mode: str = "none"):
        """ "none" keeps every activation for backward; "layer" keeps each layer's input and recomputes the rest.

        Mamba's "sqrt" and "multi_axis" modes checkpoint the recurrent state along the sequence; a
        Transformer has no such state (each token attends to all earlier keys), so it has neither.
        """
        if mode not in ("none", "layer"):
            raise CheckpointingModeError(
                f"The Transformer baseline supports checkpointing 'none' or 'layer', not {mode!r}."
            )
        self.backbone.checkpoint_layers = mode == "layer"
        return self
