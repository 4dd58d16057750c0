"""Configuration dataclasses.

`Mamba2Config` mirrors mamba_ssm's `MambaConfig` field for field, so a state-spaces/mamba2-*
`config.json` loads unchanged. The Mamba-2 mixer's own settings live in `ssm_cfg`, exactly as
there; `Mamba2Config.ssm` resolves them against mamba_ssm's `Mamba2` defaults.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

# mamba_ssm.modules.mamba2.Mamba2 defaults: the ones that change the math or the shapes, and
# use_mem_eff_path, which changes what training keeps (see Mamba2.forward).
MAMBA2_DEFAULTS = dict(
    d_state=128,
    d_conv=4,
    conv_init=None,
    expand=2,
    headdim=64,
    d_ssm=None,  # None: the SSM runs on all of d_inner
    ngroups=1,
    A_init_range=(1.0, 16.0),
    D_has_hdim=False,
    rmsnorm=True,
    norm_before_gate=False,
    dt_min=0.001,
    dt_max=0.1,
    dt_init_floor=1e-4,
    dt_limit=(0.0, float("inf")),
    bias=False,
    conv_bias=True,
    chunk_size=256,
    use_mem_eff_path=True,
)


@dataclass(frozen=True)
class SSMConfig:
    """The Mamba-2 mixer's settings with every size resolved."""

    d_model: int
    d_state: int
    d_conv: int
    expand: int
    headdim: int
    d_ssm: int
    ngroups: int
    A_init_range: tuple
    D_has_hdim: bool
    rmsnorm: bool
    norm_before_gate: bool
    dt_min: float
    dt_max: float
    dt_init_floor: float
    dt_limit: tuple
    bias: bool
    conv_bias: bool
    chunk_size: int
    use_mem_eff_path: bool

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def nheads(self) -> int:
        return self.d_ssm // self.headdim

    @property
    def conv_dim(self) -> int:  # channels that go through the depthwise conv: x, B, C
        return self.d_ssm + 2 * self.ngroups * self.d_state

    @property
    def d_in_proj(self) -> int:  # [z, x, B, C, dt]
        return 2 * self.d_inner + 2 * self.ngroups * self.d_state + self.nheads


@dataclass
class Mamba2Config:
    d_model: int = 256
    d_intermediate: int = 0
    n_layer: int = 8
    vocab_size: int = 1000
    ssm_cfg: dict = field(default_factory=dict)
    attn_layer_idx: list = field(default_factory=list)
    attn_cfg: dict = field(default_factory=dict)
    rms_norm: bool = True
    residual_in_fp32: bool = True
    fused_add_norm: bool = True  # a kernel choice in mamba_ssm; the math is the same here
    pad_vocab_size_multiple: int = 8
    tie_embeddings: bool = True
    norm_epsilon: float = 1e-5

    def __post_init__(self):
        layer = self.ssm_cfg.get("layer", "Mamba2")
        if layer != "Mamba2":
            raise ValueError(f"ssm_cfg.layer={layer!r}: only Mamba2 layers are supported")
        if self.attn_layer_idx:
            raise ValueError("hybrid attention layers (attn_layer_idx) are not supported")
        unknown = set(self.ssm_cfg) - set(MAMBA2_DEFAULTS) - {"layer"}
        if unknown:
            raise ValueError(f"unknown ssm_cfg fields: {sorted(unknown)}")
        s = self.ssm
        if s.d_ssm % s.headdim:
            raise ValueError(f"d_ssm={s.d_ssm} is not a multiple of headdim={s.headdim}")
        if s.nheads % s.ngroups:
            raise ValueError(f"nheads={s.nheads} is not a multiple of ngroups={s.ngroups}")

    @property
    def ssm(self) -> SSMConfig:
        cfg = {**MAMBA2_DEFAULTS, **{k: v for k, v in self.ssm_cfg.items() if k != "layer"}}
        cfg["A_init_range"] = tuple(cfg["A_init_range"])
        cfg["dt_limit"] = tuple(float(v) for v in cfg["dt_limit"])
        cfg.pop("conv_init")
        d_inner = cfg["expand"] * self.d_model
        cfg["d_ssm"] = d_inner if cfg["d_ssm"] is None else cfg["d_ssm"]
        return SSMConfig(d_model=self.d_model, **cfg)

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return int(math.ceil(self.vocab_size / m) * m)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["norm_epsilon"] == 1e-5:  # mamba_ssm's MambaConfig has no such field (it always uses 1e-5)
            del d["norm_epsilon"]
        # JSON has no infinity: store dt_limit the way mamba_ssm users write it.
        if "dt_limit" in d["ssm_cfg"]:
            d["ssm_cfg"]["dt_limit"] = [v if math.isfinite(v) else 1e30 for v in d["ssm_cfg"]["dt_limit"]]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Mamba2Config:
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        ssm_cfg = dict(d.get("ssm_cfg") or {})
        if "dt_limit" in ssm_cfg:
            ssm_cfg["dt_limit"] = [float("inf") if v >= 1e30 else v for v in ssm_cfg["dt_limit"]]
        d["ssm_cfg"] = ssm_cfg
        return cls(**d)

    @classmethod
    def from_json(cls, path: str | Path) -> Mamba2Config:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def save_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
