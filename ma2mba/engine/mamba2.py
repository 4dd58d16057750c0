"""The Mamba-2 mixer and its pre-norm residual block.

Parameter names and shapes are mamba_ssm's (`mamba_ssm.modules.mamba2.Mamba2`,
`mamba_ssm.modules.block.Block`), so its checkpoints load with `load_state_dict` unchanged.

A layer's recurrent state is a pair:
    conv_state (b, conv_dim, d_conv - 1): the last inputs of the depthwise causal conv
    ssm_state  (b, nheads, headdim, d_state): the SSD state, float32
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .config import Mamba2Config, SSMConfig
from .ssd import gradient_will_flow, ssd_scan, ssd_step, state_dtype

# Elements (per tensor) in one block of the cache-blocked functions here: 512 KiB in float32, so that
# the few tensors a block touches stay in cache. Between 2**16 and 2**19 the time hardly changes on
# this machine; smaller blocks pay Python's per-op cost, larger ones stream from memory again.
CACHE_BLOCK_ELEMENTS = 2**17

# On a CPU the backbone (lm.py) runs long inputs in pieces of this many positions (over the batch),
# handing the state on; the checkpointing planner counts on it.
CPU_SEGMENT_TOKENS = 2048


def _blocks(length: int, numbers_per_index: int):
    """Slices of range(length), each about CACHE_BLOCK_ELEMENTS numbers when one index holds
    `numbers_per_index` of them."""
    step = max(1, CACHE_BLOCK_ELEMENTS // numbers_per_index)
    return [slice(start, min(start + step, length)) for start in range(0, length, step)]


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return RMSNormFunction.apply(x, self.weight, self.eps)


class RMSNormFunction(torch.autograd.Function):
    """x * rsqrt(mean(x²) + eps) * weight, computed in float32 or wider; keeps only x and
    the per-position scale for backward (autograd would keep two more (…, d) tensors)."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        xf = x.to(state_dtype(x.dtype))
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)  # (…, 1)
        ctx.save_for_backward(x, weight, rstd)
        return (xf * rstd * weight.to(xf.dtype)).to(x.dtype)

    @staticmethod
    def backward(ctx, dout):
        x, weight, rstd = ctx.saved_tensors
        xhat = x.to(rstd.dtype) * rstd
        dout = dout.to(rstd.dtype)
        dweight = (dout * xhat).flatten(0, -2).sum(0).to(weight.dtype)
        dxhat = dout * weight.to(rstd.dtype)
        dx = rstd * (dxhat - xhat * (dxhat * xhat).mean(-1, keepdim=True))
        return dx.to(x.dtype), dweight, None


class GatedRMSNorm(nn.Module):
    """RMSNorm(x * silu(z)) over groups of `group_size` channels (norm_before_gate=False)."""

    def __init__(self, d: int, group_size: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.group_size = group_size
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x, z):
        return GatedRMSNormFunction.apply(x, z, self.weight, self.group_size, self.eps)


class GatedRMSNormFunction(torch.autograd.Function):
    """u = x * silu(z); u * rsqrt(mean(u²) + eps) * weight per group, in float32 or wider.

    Walks the positions in blocks that stay in the core's cache through the ~15 elementwise steps
    of each pass (whole-tensor steps would each stream from memory), and keeps only x, z and the
    per-group scale for backward, where autograd would keep five (…, d) tensors."""

    @staticmethod
    def forward(ctx, x, z, weight, group_size, eps):
        acc = state_dtype(x.dtype)
        x2, z2 = x.reshape(-1, x.shape[-1]), z.reshape(-1, z.shape[-1])
        groups = x2.shape[-1] // group_size
        w = weight.to(acc)
        out = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
        rstd = torch.empty(x2.shape[0], groups, 1, dtype=acc, device=x.device)
        for rows in _blocks(*x2.shape):
            u = F.silu(z2[rows].to(acc)).mul_(x2[rows]).unflatten(-1, (groups, group_size))
            torch.mean(u.square(), -1, keepdim=True, out=rstd[rows]).add_(eps).rsqrt_()
            torch.mul(u.mul_(rstd[rows]).flatten(-2), w, out=out[rows])
        ctx.save_for_backward(x, z, weight, rstd)
        return out.view(x.shape)

    @staticmethod
    def backward(ctx, dout):
        x, z, weight, rstd = ctx.saved_tensors
        acc = rstd.dtype
        x2, z2, dout2 = (t.reshape(-1, t.shape[-1]) for t in (x, z, dout))
        groups = rstd.shape[1]
        w = weight.to(acc)
        dx, dz = (
            torch.empty(x2.shape, dtype=x.dtype, device=x.device),
            torch.empty(z2.shape, dtype=z.dtype, device=z.device),
        )
        dw = torch.zeros(w.shape, dtype=acc, device=w.device)
        for rows in _blocks(*x2.shape):
            xb, zb, db = x2[rows].to(acc), z2[rows].to(acc), dout2[rows].to(acc)
            sig = torch.sigmoid(zb)
            gate = zb * sig  # silu(z)
            uhat = (xb * gate).unflatten(-1, (groups, -1)).mul_(rstd[rows])  # normalised u
            dw += (db * uhat.flatten(-2)).sum(0)
            duhat = (db * w).unflatten(-1, (groups, -1))
            du = (duhat - uhat * (duhat * uhat).mean(-1, keepdim=True)).mul_(rstd[rows]).flatten(-2)
            torch.mul(du, gate, out=dx[rows])
            # d silu(z)/dz = sig * (1 + z * (1 - sig)); zb may be z itself, so not in place
            torch.mul(du.mul_(xb).mul_(sig), (1 - sig).mul_(zb).add_(1), out=dz[rows])
        return dx.view(x.shape), dz.view(z.shape), dw.to(weight.dtype), None, None


def causal_conv1d(x, weight, bias, conv_state, silu=False):
    """Depthwise causal conv continuing from `conv_state`, position-major, optionally followed by SiLU
    (mamba_ssm's causal_conv1d_fn with activation="silu").

    x (b, l, dim), weight (dim, 1, w), bias (dim,) or None, conv_state (b, dim, w - 1) as mamba_ssm stores it.
    Returns y (b, l, dim) and the new conv_state (the last w - 1 inputs, state included).
    """
    w = weight.shape[-1]
    xs = torch.cat([conv_state.transpose(1, 2).to(x.dtype), x], dim=1)  # (b, w - 1 + l, dim)
    new_state = xs[:, xs.shape[1] - (w - 1) :].transpose(1, 2).contiguous()  # a copy: xs is not kept alive
    return CausalConv1dFunction.apply(xs, weight[:, 0].t(), bias, silu, gradient_will_flow(xs, weight, bias)), new_state


class CausalConv1dFunction(torch.autograd.Function):
    """y_t = act(bias + Σ_k xs_{t+k} · weight_k) over w taps, act SiLU or none, in float32 or wider.
    (torch's grouped conv1d backward is ~50x slower than this on CPU for these shapes.)

    Both passes walk the positions in blocks that stay in the core's cache while all w taps and
    the activation are applied: w + 1 whole-tensor passes would each stream from memory (fwd+bwd
    68 -> 52 ms at the 130m shape's 2048 x 1792 here). With the SiLU it keeps the pre-activation,
    in the input's dtype, as autograd would for a separate SiLU."""

    @staticmethod
    def forward(ctx, xs, taps, bias, silu, for_backward=True):
        """xs (b, w - 1 + l, dim), taps (w, dim), bias (dim,) or None -> y (b, l, dim) in xs's dtype.
        Without for_backward (no gradient will be taken) the pre-activation is not kept."""
        l = xs.shape[1] - (taps.shape[0] - 1)
        acc = state_dtype(xs.dtype)
        taps_acc = taps.to(acc)
        shape = (xs.shape[0], l, xs.shape[2])
        y = torch.empty(shape, dtype=acc, device=xs.device)
        pre = (
            torch.empty(shape, dtype=xs.dtype, device=xs.device) if silu and for_backward else None
        )  # for the SiLU's backward
        for rows in _blocks(l, xs.shape[0] * xs.shape[2]):
            block = _conv_block(xs, taps_acc, bias, rows, out=y[:, rows])
            if pre is not None:
                pre[:, rows] = block
            if silu:
                F.silu(block, inplace=True)
        ctx.save_for_backward(xs, taps, bias, pre)
        ctx.silu = silu
        return y.to(xs.dtype)

    @staticmethod
    def backward(ctx, dy):
        xs, taps, bias, pre_all = ctx.saved_tensors
        w = taps.shape[0]
        acc = state_dtype(xs.dtype)
        dy, taps_acc = dy.to(acc), taps.to(acc)
        dxs = torch.zeros(xs.shape, dtype=acc, device=xs.device)
        dtaps = torch.zeros(taps.shape, dtype=acc, device=taps.device)
        dbias = torch.zeros(xs.shape[2], dtype=acc, device=xs.device)
        for rows in _blocks(dy.shape[1], dy.shape[0] * dy.shape[2]):
            dpre = dy[:, rows]
            if ctx.silu:  # d silu(u)/du = sig * (1 + u * (1 - sig)), u the pre-activation
                pre = pre_all[:, rows].to(acc)
                sig = torch.sigmoid(pre)
                dpre = dpre * sig * (1 - sig).mul_(pre).add_(1)
            dbias += dpre.sum((0, 1))
            window = _conv_window(xs, rows, taps_acc)
            for k in range(w):
                dxs[:, rows.start + k : rows.stop + k].addcmul_(dpre, taps_acc[k])
                dtaps[k] += (dpre * window[:, k : k + dpre.shape[1]]).sum((0, 1))
        return dxs.to(xs.dtype), dtaps.to(taps.dtype), None if bias is None else dbias.to(bias.dtype), None, None


def _conv_block(xs, taps, bias, rows, out):
    """The conv at output positions `rows`, (b, len(rows), dim), into `out`."""
    out.copy_(bias) if bias is not None else out.zero_()
    window = _conv_window(xs, rows, taps)
    for k in range(taps.shape[0]):
        out.addcmul_(window[:, k : k + out.shape[1]], taps[k])
    return out


def _conv_window(xs, rows, taps):
    """The inputs that output positions `rows` read, (b, len(rows) + w - 1, dim), in taps' dtype:
    converted once per block (w mixed-dtype multiply-adds would each convert it again)."""
    return xs[:, rows.start : rows.stop + taps.shape[0] - 1].to(taps.dtype)


class Mamba2(nn.Module):
    def __init__(self, cfg: SSMConfig, layer_idx: int | None = None):
        super().__init__()
        self.cfg = cfg
        self.layer_idx = layer_idx
        self.in_proj = nn.Linear(cfg.d_model, cfg.d_in_proj, bias=cfg.bias)
        self.conv1d = nn.Conv1d(
            cfg.conv_dim, cfg.conv_dim, cfg.d_conv, groups=cfg.conv_dim, padding=cfg.d_conv - 1, bias=cfg.conv_bias
        )
        self.dt_bias = nn.Parameter(torch.empty(cfg.nheads))
        self.A_log = nn.Parameter(torch.empty(cfg.nheads))
        self.D = nn.Parameter(torch.ones(cfg.d_ssm if cfg.D_has_hdim else cfg.nheads))
        if cfg.rmsnorm:
            self.norm = GatedRMSNorm(cfg.d_ssm, group_size=cfg.d_ssm // cfg.ngroups)
        self.out_proj = nn.Linear(cfg.d_inner, cfg.d_model, bias=cfg.bias)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self):
        """mamba_ssm's initialisation: dt log-uniform in [dt_min, dt_max], A uniform in A_init_range."""
        c = self.cfg
        dt = torch.exp(torch.rand(c.nheads) * (math.log(c.dt_max) - math.log(c.dt_min)) + math.log(c.dt_min))
        dt = dt.clamp(min=c.dt_init_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus
        self.A_log.copy_(torch.log(torch.empty(c.nheads).uniform_(*c.A_init_range)))
        self.D.fill_(1.0)
        self.dt_bias._no_reinit = True
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True

    def empty_state(self, batch: int, dtype=torch.float32, device=None):
        c = self.cfg
        conv = torch.zeros(batch, c.conv_dim, c.d_conv - 1, dtype=dtype, device=device)
        ssm = torch.zeros(batch, c.nheads, c.headdim, c.d_state, dtype=state_dtype(dtype), device=device)
        return conv, ssm

    def _split(self, zxbcdt):
        c = self.cfg
        d_mlp = (zxbcdt.shape[-1] - 2 * c.d_ssm - 2 * c.ngroups * c.d_state - c.nheads) // 2
        return torch.split(zxbcdt, [d_mlp, d_mlp, c.d_ssm, c.conv_dim, c.nheads], dim=-1)

    def _gate(self, y, z, z0, x0):
        """The scan's output (b, …, d_ssm) -> out_proj's input (b, …, d_inner)."""
        if self.cfg.rmsnorm:
            y = self.norm(y, z)
        if z0.shape[-1] > 0:  # d_ssm < d_inner: the rest of d_inner is a gated MLP branch
            y = torch.cat([F.silu(z0) * x0, y], dim=-1)
        return y

    def forward(self, u, state=None):
        """u (b, l, d_model) -> out (b, l, d_model), new (conv_state, ssm_state)."""
        b, l, _ = u.shape
        conv_state, ssm_state = state if state is not None else self.empty_state(b, u.dtype, u.device)
        zxbcdt = self.in_proj(u)  # (b, l, d_in_proj)
        if torch.is_grad_enabled() and self.cfg.use_mem_eff_path:
            # Keep only zxbcdt for backward and recompute the conv, the scan and the norm there
            # (as mamba_ssm's fused kernel does). A layer then keeps per token its input, in_proj's
            # input and output and out_proj's input: 6.4k numbers at the mamba2-130m shape, ~38k without.
            # use_mem_eff_path=False keeps them all instead, as mamba_ssm's unfused path does: fwd+bwd
            # 10-25% faster, 2-2.5x the peak memory at 4k tokens (benchmarks/ssd_speed.py --only hf).
            y, conv_state, ssm_state = checkpoint(self._mix, zxbcdt, conv_state, ssm_state, use_reentrant=False)
        else:
            y, conv_state, ssm_state = self._mix(zxbcdt, conv_state, ssm_state)
        return self.out_proj(y), (conv_state, ssm_state)

    def _mix(self, zxbcdt, conv_state, ssm_state):
        """zxbcdt (b, l, d_in_proj) -> out_proj's input (b, l, d_inner), new conv and ssm states."""
        z0, x0, z, xBC, dt = self._split(zxbcdt)
        xBC, conv_state = causal_conv1d(xBC, self.conv1d.weight, self.conv1d.bias, conv_state, silu=True)
        y, ssm_state = ssd_scan(
            dt=dt, chunk_size=self.cfg.chunk_size, initial_state=ssm_state, **self._scan_inputs(xBC, z)
        )
        return self._gate(y.flatten(-2), z, z0, x0), conv_state, ssm_state

    def step(self, u, state):
        """u (b, d_model), one position -> out (b, d_model), new state."""
        conv_state, ssm_state = state
        z0, x0, z, xBC, dt = self._split(self.in_proj(u))
        xBC, conv_state = causal_conv1d(xBC[:, None], self.conv1d.weight, self.conv1d.bias, conv_state, silu=True)
        y, ssm_state = ssd_step(ssm_state, dt=dt, **self._scan_inputs(xBC[:, 0], z))
        return self.out_proj(self._gate(y.flatten(-2), z, z0, x0)), (conv_state, ssm_state)

    def _scan_inputs(self, xBC, z):
        """The activated conv output (…, conv_dim) and the gate -> the SSD's x, A, B, C, D, z, dt settings."""
        c = self.cfg
        x, B, C = torch.split(xBC, [c.d_ssm, c.ngroups * c.d_state, c.ngroups * c.d_state], dim=-1)
        return dict(
            x=x.unflatten(-1, (c.nheads, c.headdim)),
            A=-torch.exp(self.A_log.to(state_dtype(self.A_log.dtype))),
            B=B.unflatten(-1, (c.ngroups, c.d_state)),
            C=C.unflatten(-1, (c.ngroups, c.d_state)),
            D=self.D.unflatten(-1, (c.nheads, c.headdim)) if c.D_has_hdim else self.D,
            z=None if c.rmsnorm else z.unflatten(-1, (c.nheads, c.headdim)),
            dt_bias=self.dt_bias,
            dt_softplus=True,
            dt_limit=c.dt_limit,
        )


class GatedMLP(nn.Module):
    """mamba_ssm's GatedMLP (used when d_intermediate > 0): fc2(y * silu(gate)).

    Like mamba_ssm, the hidden width is d_intermediate rounded up to a multiple of 128.
    """

    def __init__(self, d_model: int, d_intermediate: int, multiple_of: int = 128):
        super().__init__()
        hidden = -(-d_intermediate // multiple_of) * multiple_of
        self.fc1 = nn.Linear(d_model, 2 * hidden, bias=False)
        self.fc2 = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x):
        y, gate = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(y * F.silu(gate))


def make_norm(config: Mamba2Config, d: int) -> nn.Module:
    return RMSNorm(d, config.norm_epsilon) if config.rms_norm else nn.LayerNorm(d, eps=config.norm_epsilon)


class Block(nn.Module):
    """Pre-norm residual block: residual += hidden; hidden = mixer(norm(residual)) [; then the MLP]."""

    def __init__(self, config: Mamba2Config, layer_idx: int):
        super().__init__()
        self.residual_in_fp32 = config.residual_in_fp32
        self.norm = make_norm(config, config.d_model)
        self.mixer = Mamba2(config.ssm, layer_idx)
        self.mlp = None
        if config.d_intermediate > 0:
            self.attach_mlp(config, config.d_intermediate)

    def attach_mlp(self, config: Mamba2Config, d_intermediate: int) -> None:
        """The MLP after the mixer, with its own pre-norm (mamba_ssm's Block with d_intermediate > 0)."""
        self.norm2 = make_norm(config, config.d_model)
        self.mlp = GatedMLP(config.d_model, d_intermediate)

    def _add_norm(self, norm, hidden, residual):
        residual = hidden if residual is None else hidden + residual
        hidden = norm(residual.to(norm.weight.dtype))
        return hidden, residual.to(state_dtype(residual.dtype)) if self.residual_in_fp32 else residual  # fp32, or wider

    def _finish(self, hidden, residual):
        if self.mlp is not None:
            hidden, residual = self._add_norm(self.norm2, hidden, residual)
            hidden = self.mlp(hidden)
        return hidden, residual

    def forward(self, hidden, residual=None, state=None):
        """hidden, residual (b, l, d) -> hidden, residual, new layer state."""
        hidden, residual = self._add_norm(self.norm, hidden, residual)
        hidden, state = self.mixer(hidden, state)
        hidden, residual = self._finish(hidden, residual)
        return hidden, residual, state

    def step(self, hidden, residual, state):
        """One position: hidden, residual (b, d)."""
        hidden, residual = self._add_norm(self.norm, hidden, residual)
        hidden, state = self.mixer.step(hidden, state)
        hidden, residual = self._finish(hidden, residual)
        return hidden, residual, state
